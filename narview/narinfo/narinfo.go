// Package narinfo reads and writes narinfo files, the per-path metadata of
// the binary cache protocol, and signs and verifies their fingerprints.
//
// A Nix narinfo is "Key: value" lines. Nix signs a fingerprint, not the
// text: 1;<store path>;<NarHash>;<NarSize>;<comma-separated reference
// paths>, with ed25519 keys written as <name>:<base64>. Parse is strict
// about the fields a client relies on and, like Nix, ignores unknown keys.
package narinfo

import (
	"bufio"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/p2pstore/p2pstore/narview/storepath"
)

// NarInfo is one narinfo file.
type NarInfo struct {
	StorePath   string
	URL         string
	Compression string
	FileHash    string
	FileSize    uint64
	NarHash     storepath.NarHash
	NarSize     uint64
	References  []string // basenames, as in the file
	Deriver     string   // basename, "" for none
	System      string
	Sigs        []string
	CA          string
}

// MaxSize bounds a narinfo that Parse accepts; real ones are a few KiB
// (references dominate).
const MaxSize = 1 << 20

// Parse parses a narinfo file.
func Parse(text string) (*NarInfo, error) {
	if len(text) > MaxSize {
		return nil, fmt.Errorf("narinfo: %d bytes is too large", len(text))
	}
	ni := &NarInfo{}
	var haveHash bool
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 0, 4096), MaxSize)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		key, value, ok := strings.Cut(line, ": ")
		if !ok {
			return nil, fmt.Errorf("narinfo: bad line %q", line)
		}
		var err error
		switch key {
		case "StorePath":
			ni.StorePath = value
		case "URL":
			ni.URL = value
		case "Compression":
			ni.Compression = value
		case "FileHash":
			ni.FileHash = value
		case "FileSize":
			ni.FileSize, err = strconv.ParseUint(value, 10, 64)
		case "NarHash":
			ni.NarHash, err = storepath.ParseNarHash(value)
			haveHash = true
		case "NarSize":
			ni.NarSize, err = strconv.ParseUint(value, 10, 64)
		case "References":
			ni.References = strings.Fields(value)
		case "Deriver":
			if value != "unknown-deriver" {
				ni.Deriver = value
			}
		case "System":
			ni.System = value
		case "Sig":
			ni.Sigs = append(ni.Sigs, value)
		case "CA":
			ni.CA = value
		}
		if err != nil {
			return nil, fmt.Errorf("narinfo: %s: %w", key, err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("narinfo: %w", err)
	}
	switch {
	case ni.StorePath == "":
		return nil, errors.New("narinfo: no StorePath")
	case !haveHash:
		return nil, errors.New("narinfo: no NarHash")
	case ni.NarSize == 0:
		return nil, errors.New("narinfo: no NarSize")
	case ni.URL == "":
		return nil, errors.New("narinfo: no URL")
	}
	return ni, nil
}

// Append appends the narinfo's text to b, its fields in the order Nix
// writes them, the optional ones only when set.
func (ni *NarInfo) Append(b []byte) []byte {
	line := func(k, v string) {
		b = append(b, k...)
		b = append(b, ": "...)
		b = append(b, v...)
		b = append(b, '\n')
	}
	line("StorePath", ni.StorePath)
	line("URL", ni.URL)
	if ni.Compression != "" {
		line("Compression", ni.Compression)
	}
	if ni.FileHash != "" {
		line("FileHash", ni.FileHash)
	}
	if ni.FileSize != 0 {
		b = strconv.AppendUint(append(b, "FileSize: "...), ni.FileSize, 10)
		b = append(b, '\n')
	}
	line("NarHash", ni.NarHash.String())
	b = strconv.AppendUint(append(b, "NarSize: "...), ni.NarSize, 10)
	b = append(b, "\nReferences: "...)
	for i, r := range ni.References {
		if i > 0 {
			b = append(b, ' ')
		}
		b = append(b, r...)
	}
	b = append(b, '\n')
	if ni.Deriver != "" {
		line("Deriver", ni.Deriver)
	}
	if ni.System != "" {
		line("System", ni.System)
	}
	for _, s := range ni.Sigs {
		line("Sig", s)
	}
	if ni.CA != "" {
		line("CA", ni.CA)
	}
	return b
}

// String is the narinfo's text.
func (ni *NarInfo) String() string { return string(ni.Append(nil)) }

// Fingerprint returns what Nix signs for a path: 1;<path>;<NarHash in
// nix-base32>;<NarSize>;<reference paths joined by commas>.
func Fingerprint(storePath string, narHash storepath.NarHash, narSize uint64, refPaths []string) string {
	return "1;" + storePath + ";" + narHash.String() + ";" + strconv.FormatUint(narSize, 10) + ";" + strings.Join(refPaths, ",")
}

// Fingerprint returns the narinfo's fingerprint; references are resolved
// against the store directory of its StorePath.
func (ni *NarInfo) Fingerprint() string {
	dir := ni.StorePath[:strings.LastIndexByte(ni.StorePath, '/')+1]
	refs := make([]string, len(ni.References))
	for i, r := range ni.References {
		refs[i] = dir + r
	}
	return Fingerprint(ni.StorePath, ni.NarHash, ni.NarSize, refs)
}
