// Package storepath parses and formats Nix store paths and the hash
// notations around them (nix-base32, "sha256:" prefixes, SRI).
//
// A store path is <store dir>/<hash>-<name>: the hash part is 32
// characters of nix-base32 (160 bits), the name at most 211 characters of
// [A-Za-z0-9+-._?=], not starting with a dot. The store dir is a setting
// (/nix/store for Nix, /gnu/store for Guix), never a constant here.
package storepath

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// HashLen is the length of a store path's hash part.
const HashLen = 32

// MaxNameLen is the longest name Nix accepts in a store path.
const MaxNameLen = 211

// StorePath is a parsed store path.
type StorePath struct {
	Dir  string // the store directory, such as /nix/store
	Hash string // the 32-character nix-base32 hash part
	Name string
}

// Base returns <hash>-<name>.
func (p StorePath) Base() string { return p.Hash + "-" + p.Name }

// String returns the absolute path.
func (p StorePath) String() string { return p.Dir + "/" + p.Base() }

// ErrInvalid marks a string that is not a store path.
var ErrInvalid = errors.New("not a store path")

// Parse parses an absolute store path under storeDir.
func Parse(storeDir, s string) (StorePath, error) {
	dir, base := path.Split(s)
	if strings.TrimSuffix(dir, "/") != storeDir || base == "" {
		return StorePath{}, fmt.Errorf("%q: %w under %s", s, ErrInvalid, storeDir)
	}
	p, err := ParseBase(base)
	if err != nil {
		return StorePath{}, fmt.Errorf("%q: %w", s, err)
	}
	p.Dir = storeDir
	return p, nil
}

// ParseBase parses <hash>-<name> (the Dir of the result is empty).
func ParseBase(base string) (StorePath, error) {
	if len(base) < HashLen+2 || base[HashLen] != '-' {
		return StorePath{}, fmt.Errorf("%w: %q has no <hash>-<name> form", ErrInvalid, base)
	}
	hash, name := base[:HashLen], base[HashLen+1:]
	if err := ValidateHash(hash); err != nil {
		return StorePath{}, err
	}
	if err := ValidateName(name); err != nil {
		return StorePath{}, err
	}
	return StorePath{Hash: hash, Name: name}, nil
}

// ValidateHash checks a 32-character nix-base32 hash part.
func ValidateHash(h string) error {
	if len(h) != HashLen {
		return fmt.Errorf("%w: hash part %q is not %d characters", ErrInvalid, h, HashLen)
	}
	for i := 0; i < len(h); i++ {
		if !nixbase32.Is(h[i]) {
			return fmt.Errorf("%w: hash part %q has a character outside nix-base32", ErrInvalid, h)
		}
	}
	return nil
}

// ValidateName checks the name part of a store path.
func ValidateName(name string) error {
	if name == "" || len(name) > MaxNameLen {
		return fmt.Errorf("%w: name %q is empty or longer than %d", ErrInvalid, name, MaxNameLen)
	}
	if name[0] == '.' {
		return fmt.Errorf("%w: name %q starts with a dot", ErrInvalid, name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("+-._?=", c) >= 0
		if !ok {
			return fmt.Errorf("%w: name %q has the character %q", ErrInvalid, name, c)
		}
	}
	return nil
}

// NarHash is the SHA-256 of a NAR.
type NarHash [sha256.Size]byte

// String returns the form narinfo files use: sha256:<nix-base32>.
func (h NarHash) String() string { return "sha256:" + nixbase32.EncodeToString(h[:]) }

// Hex returns lower-case hex, the form the daemon protocol sends.
func (h NarHash) Hex() string { return hex.EncodeToString(h[:]) }

// SRI returns sha256-<base64>, the form `nix path-info --json` prints.
func (h NarHash) SRI() string { return "sha256-" + base64.StdEncoding.EncodeToString(h[:]) }

// ParseNarHash accepts every notation Nix accepts for a SHA-256: with or
// without "sha256:", in nix-base32, hex or base64, or SRI.
func ParseNarHash(s string) (NarHash, error) {
	var h NarHash
	body := s
	switch {
	case strings.HasPrefix(s, "sha256:"):
		body = s[len("sha256:"):]
	case strings.HasPrefix(s, "sha256-"):
		b, err := base64.StdEncoding.DecodeString(s[len("sha256-"):])
		if err != nil || len(b) != len(h) {
			return h, fmt.Errorf("invalid SRI hash %q", s)
		}
		copy(h[:], b)
		return h, nil
	case strings.Contains(s, ":") || strings.Contains(s, "-"):
		return h, fmt.Errorf("hash %q is not SHA-256", s)
	}
	var b []byte
	var err error
	switch len(body) {
	case 52:
		b, err = nixbase32.DecodeString(body)
	case 64:
		b, err = hex.DecodeString(body)
	case 44:
		b, err = base64.StdEncoding.DecodeString(body)
	default:
		err = errors.New("wrong length")
	}
	if err != nil || len(b) != len(h) {
		return h, fmt.Errorf("invalid SHA-256 hash %q", s)
	}
	copy(h[:], b)
	return h, nil
}
