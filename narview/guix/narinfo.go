package guix

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/p2pstore/p2pstore/narview/storepath"
)

// NarInfo is a Guix narinfo.
type NarInfo struct {
	StorePath  string
	NarHash    storepath.NarHash
	NarSize    uint64
	References []string // basenames, in the file's order
	Deriver    string   // basename, "" for none
	System     string   // "" for none (guix publish no longer writes it)
	// NARs are the URL/Compression/FileSize entries, one per offered
	// compression. The first SignedNARs() of them lie in Signed.
	NARs []NAR
	// Signature is the Signature field's value, "" when unsigned.
	Signature string
	// Signed is the text above the Signature line exactly as its signer
	// hashed it (nil when unsigned). Append writes it unchanged, so the
	// fields it holds come from it, not from the struct.
	Signed []byte

	signedNARs int
	signedKeys []string // the single-valued fields Signed holds
}

// NAR is one way to download the NAR.
type NAR struct {
	URL         string // relative URLs resolve against the substitute URL
	Compression string
	FileSize    uint64 // 0 for unknown
	FileHash    string // "" for unknown; guix publish never writes it
}

// Compressions Guix's client knows; a narinfo naming another is refused.
var Compressions = []string{"none", "gzip", "lzip", "zstd", "xz", "bzip2"}

// MaxSize bounds a narinfo that Parse accepts; references dominate real
// ones, a few KiB.
const MaxSize = 1 << 20

// The fields Guix requires above the Signature line.
var mandatorySigned = []string{"StorePath", "NarHash", "References"}

type narField struct {
	key, value string
	at         int // offset of the line in the text
}

// readFields splits a narinfo into fields as Guix's recutils reader does:
// "Key: value" lines with the value trimmed, '#' comment lines, and an
// empty line ending the record. It returns the fields and the length of
// text they came from. Continuation lines ('+'), which recutils has and
// narinfos never use, are refused: a value stays one line.
func readFields(text []byte) ([]narField, int, error) {
	var fields []narField
	at := 0
	for at < len(text) {
		end := bytes.IndexByte(text[at:], '\n')
		next := at + end + 1
		if end < 0 {
			end, next = len(text)-at, len(text)
		}
		line := strings.TrimSuffix(string(text[at:at+end]), "\r")
		switch {
		case line == "":
			if len(fields) > 0 {
				return fields, at, nil
			}
		case line[0] == '#':
		case line[0] == '+':
			return nil, 0, fmt.Errorf("continuation line %q", line)
		default:
			key, value, ok := strings.Cut(line, ":")
			c := line[0]
			if !ok || !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '%') {
				return nil, 0, fmt.Errorf("unmatched line %q", line)
			}
			fields = append(fields, narField{key: key, value: strings.TrimSpace(value), at: at})
		}
		at = next
	}
	return fields, len(text), nil
}

// Parse parses a Guix narinfo. Fields may come in any order and unknown
// ones are ignored; a single-valued field counts at its first
// occurrence (so the signed one wins); the URL, Compression, FileSize and
// FileHash lines are paired by position, as Guix does. The store
// directory is the caller's to check (Guix ignores narinfos outside its
// own).
func Parse(text []byte) (*NarInfo, error) {
	ni, err := parse(text)
	if err != nil {
		return nil, fmt.Errorf("guix narinfo: %w", err)
	}
	return ni, nil
}

func parse(text []byte) (*NarInfo, error) {
	if len(text) > MaxSize {
		return nil, fmt.Errorf("%d bytes is too large", len(text))
	}
	fields, bodyLen, err := readFields(text)
	if err != nil {
		return nil, err
	}
	ni := &NarInfo{}
	sigAt := bytes.Index(text[:bodyLen], []byte("Signature:"))
	if sigAt > 0 && text[sigAt-1] != '\n' {
		return nil, errors.New(`"Signature:" inside a line`)
	}
	var urls, comps, sizes, fileHashes []string
	var narLinesSigned, narLinesUnsigned int
	seen := map[string]bool{}
	var haveHash, haveSize, haveRefs bool
	for _, f := range fields {
		signed := sigAt >= 0 && f.at < sigAt
		switch f.key {
		case "URL", "Compression", "FileSize", "FileHash":
			if signed {
				narLinesSigned++
			} else {
				narLinesUnsigned++
			}
		}
		switch f.key {
		case "URL":
			urls = append(urls, f.value)
			continue
		case "Compression":
			comps = append(comps, f.value)
			continue
		case "FileSize":
			sizes = append(sizes, f.value)
			continue
		case "FileHash":
			fileHashes = append(fileHashes, f.value)
			continue
		}
		if seen[f.key] {
			continue
		}
		seen[f.key] = true
		if signed {
			ni.signedKeys = append(ni.signedKeys, f.key)
		}
		var err error
		switch f.key {
		case "StorePath":
			ni.StorePath = f.value
			if !path.IsAbs(f.value) {
				err = fmt.Errorf("%q is not an absolute path", f.value)
			} else {
				_, err = storepath.Parse(path.Dir(f.value), f.value)
			}
		case "NarHash":
			ni.NarHash, err = parseNarHash(f.value)
			haveHash = true
		case "NarSize":
			ni.NarSize, err = strconv.ParseUint(f.value, 10, 64)
			haveSize = err == nil && ni.NarSize > 0
		case "References":
			ni.References = strings.Fields(f.value)
			for _, r := range ni.References {
				if _, err = storepath.ParseBase(r); err != nil {
					break
				}
			}
			haveRefs = true
		case "Deriver":
			ni.Deriver = f.value
			if f.value != "" {
				_, err = storepath.ParseBase(f.value)
			}
		case "System":
			ni.System = f.value
		case "Signature":
			ni.Signature = f.value
			if f.value == "" {
				err = errors.New("empty")
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.key, err)
		}
	}
	switch {
	case ni.StorePath == "":
		return nil, errors.New("no StorePath")
	case !haveHash:
		return nil, errors.New("no NarHash")
	case !haveSize:
		return nil, errors.New("no NarSize (or 0)")
	case !haveRefs:
		return nil, errors.New("no References")
	case len(urls) == 0:
		return nil, errors.New("no URL")
	case len(comps) != len(urls):
		return nil, fmt.Errorf("%d URL lines but %d Compression lines", len(urls), len(comps))
	case len(sizes) > len(urls) || len(fileHashes) > len(urls):
		return nil, errors.New("more FileSize or FileHash lines than URL lines")
	case narLinesSigned > 0 && narLinesUnsigned > 0:
		// Old narinfos sign them all, new ones none.
		return nil, errors.New("NAR lines (URL, Compression, FileSize) both above and below the Signature line")
	}
	if narLinesSigned > 0 {
		ni.signedNARs = len(urls)
	}
	for i, u := range urls {
		n := NAR{URL: u, Compression: comps[i]}
		if !slices.Contains(Compressions, n.Compression) {
			return nil, fmt.Errorf("unknown compression %q (Guix knows %s)", n.Compression, strings.Join(Compressions, ", "))
		}
		if i < len(sizes) {
			var err error
			if n.FileSize, err = strconv.ParseUint(sizes[i], 10, 64); err != nil {
				return nil, fmt.Errorf("FileSize: %w", err)
			}
		}
		if i < len(fileHashes) {
			n.FileHash = fileHashes[i]
		}
		ni.NARs = append(ni.NARs, n)
	}
	if sigAt >= 0 {
		ni.Signed = bytes.Clone(text[:sigAt])
	}
	return ni, nil
}

// parseNarHash takes the one form Guix reads: sha256:<nix-base32>.
func parseNarHash(s string) (storepath.NarHash, error) {
	if !strings.HasPrefix(s, "sha256:") || len(s) != len("sha256:")+52 {
		return storepath.NarHash{}, fmt.Errorf("%q is not sha256:<52 nix-base32 characters>", s)
	}
	return storepath.ParseNarHash(s)
}

// SignedNARs returns how many of NARs lie in Signed: all of them in
// narinfos from before 2022, when guix publish signed the URLs too; none
// in newer ones.
func (ni *NarInfo) SignedNARs() int { return min(ni.signedNARs, len(ni.NARs)) }

// normativeKeys are the single-valued fields in the order guix publish
// writes them.
var normativeKeys = []string{"StorePath", "NarHash", "NarSize", "References", "Deriver", "System"}

func (ni *NarInfo) appendField(b []byte, key string) []byte {
	var v string
	switch key {
	case "StorePath":
		v = ni.StorePath
	case "NarHash":
		v = ni.NarHash.String()
	case "NarSize":
		v = strconv.FormatUint(ni.NarSize, 10)
	case "References":
		v = strings.Join(ni.References, " ")
	case "Deriver":
		if v = ni.Deriver; v == "" {
			return b
		}
	case "System":
		if v = ni.System; v == "" {
			return b
		}
	}
	b = append(b, key...)
	b = append(b, ": "...)
	b = append(b, v...)
	return append(b, '\n')
}

// Append appends the narinfo's text to b in guix publish's layout:
// StorePath, NarHash, NarSize, References, Deriver, System, Signature,
// then URL, Compression and FileSize for each NAR. With Signed set, it
// comes first, unchanged, and the Signature line, the fields it lacks
// and the NARs outside it follow.
func (ni *NarInfo) Append(b []byte) []byte {
	keys := normativeKeys
	if ni.Signed != nil {
		b = append(b, ni.Signed...)
		keys = nil
		for _, k := range normativeKeys {
			if !slices.Contains(ni.signedKeys, k) {
				keys = append(keys, k)
			}
		}
	} else {
		for _, k := range keys {
			b = ni.appendField(b, k)
		}
		keys = nil
	}
	if ni.Signature != "" {
		b = append(b, "Signature: "...)
		b = append(b, ni.Signature...)
		b = append(b, '\n')
	}
	for _, k := range keys {
		b = ni.appendField(b, k)
	}
	// Readers pair FileSize and FileHash lines with URLs by position, so
	// once one is unknown none after it can be written.
	sizes, hashes := true, true
	for _, n := range ni.NARs[ni.SignedNARs():] {
		b = append(b, "URL: "...)
		b = append(b, n.URL...)
		b = append(b, "\nCompression: "...)
		b = append(b, n.Compression...)
		b = append(b, '\n')
		if sizes = sizes && n.FileSize != 0; sizes {
			b = strconv.AppendUint(append(b, "FileSize: "...), n.FileSize, 10)
			b = append(b, '\n')
		}
		if hashes = hashes && n.FileHash != ""; hashes {
			b = append(b, "FileHash: "...)
			b = append(b, n.FileHash...)
			b = append(b, '\n')
		}
	}
	return b
}

// String returns the narinfo's text.
func (ni *NarInfo) String() string { return string(ni.Append(nil)) }

// Sign signs the narinfo as guix publish does: Signed becomes its
// StorePath, NarHash, NarSize, References, Deriver and System lines and
// every NAR entry follows the Signature line, unsigned, so that mirrors
// may change them. host names the signer in the field.
func (ni *NarInfo) Sign(k SecretKey, host string) error {
	if err := validHost(host); err != nil {
		return err
	}
	if k.scalar == nil {
		return errors.New("guix narinfo: no secret key")
	}
	var signed []byte
	for _, key := range normativeKeys {
		signed = ni.appendField(signed, key)
	}
	ni.Signed = signed
	ni.signedKeys = slices.Clone(normativeKeys)
	ni.signedNARs = 0
	ni.Signature = SignatureField(host, k.SignHash(sha256.Sum256(signed)))
	return nil
}

// Verify checks the narinfo's signature as `guix substitute` does, in
// its order: the signed text holds StorePath, NarHash and References, the
// signature parses, its key is one of trusted, its hash is the signed
// text's, and it verifies. The error wraps ErrUnsigned, ErrCorrupt,
// ErrUntrusted, ErrHashMismatch or ErrInvalid.
func (ni *NarInfo) Verify(trusted []PublicKey) error {
	if err := ni.verify(trusted); err != nil {
		return fmt.Errorf("guix narinfo %s: %w", ni.StorePath, err)
	}
	return nil
}

func (ni *NarInfo) verify(trusted []PublicKey) error {
	if ni.Signature == "" {
		return ErrUnsigned
	}
	if ni.Signed == nil {
		return fmt.Errorf("%w: no signed text", ErrCorrupt)
	}
	fields, _, err := readFields(ni.Signed)
	if err != nil {
		return fmt.Errorf("%w: signed text: %w", ErrCorrupt, err)
	}
	for _, want := range mandatorySigned {
		if !slices.ContainsFunc(fields, func(f narField) bool { return f.key == want }) {
			return fmt.Errorf("%w: %s is not above the Signature line", ErrCorrupt, want)
		}
	}
	_, sig, err := ParseSignatureField(ni.Signature)
	if err != nil {
		return err
	}
	return sig.Verify(sha256.Sum256(ni.Signed), trusted)
}

// Equivalent reports whether two narinfos describe the same NAR as Guix
// judges it: the same StorePath, NarHash, NarSize and References in the
// same order. Guix downloads from a server whose key it does not trust
// when its narinfo is equivalent to a trusted one.
func Equivalent(a, b *NarInfo) bool {
	return a.StorePath == b.StorePath && a.NarHash == b.NarHash &&
		a.NarSize == b.NarSize && slices.Equal(a.References, b.References)
}

// NARURL returns the URL guix publish gives a NAR, relative to the
// substitute URL: nar/<compression>/<basename>, or nar/<basename>
// uncompressed, with the basename percent-encoded.
func NARURL(compression, base string) string {
	const unreserved = "-._~"
	var b strings.Builder
	b.WriteString("nar/")
	if compression != "none" {
		b.WriteString(compression)
		b.WriteByte('/')
	}
	for _, c := range []byte(base) {
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte(unreserved, c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}
