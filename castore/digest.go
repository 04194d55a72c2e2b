package castore

import (
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/zeebo/blake3"
)

// DigestSize is the length of every castore address: a BLAKE3-256 digest.
const DigestSize = 32

// Digest addresses a chunk, a blob or a directory by the BLAKE3-256 of its
// bytes (for a directory, of its canonical encoding).
type Digest [DigestSize]byte

// Sum returns the digest of b.
func Sum(b []byte) Digest { return blake3.Sum256(b) }

// String returns the digest in lower-case hex.
func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// IsZero reports whether d is the zero value (no digest at all).
func (d Digest) IsZero() bool { return d == Digest{} }

// ParseDigest parses a 64-character hex digest.
func ParseDigest(s string) (Digest, error) {
	var d Digest
	if len(s) != 2*DigestSize {
		return d, fmt.Errorf("castore: digest %q: want %d hex characters", s, 2*DigestSize)
	}
	if _, err := hex.Decode(d[:], []byte(s)); err != nil {
		return d, fmt.Errorf("castore: digest %q: %w", s, err)
	}
	return d, nil
}

// DigestFromBytes converts a 32-byte slice (as found in encoded directories).
func DigestFromBytes(b []byte) (Digest, error) {
	var d Digest
	if len(b) != DigestSize {
		return d, fmt.Errorf("castore: digest has %d bytes, want %d", len(b), DigestSize)
	}
	copy(d[:], b)
	return d, nil
}

// ErrNotFound is returned when the store lacks an object.
var ErrNotFound = errors.New("castore: not found")

// missing is ErrNotFound naming the object: planning a fetch checks
// thousands of objects the store lacks, so the message is made only if
// someone reads it.
type missing struct {
	what string
	d    Digest
}

func (m *missing) Error() string { return m.what + " " + m.d.String() + ": " + ErrNotFound.Error() }
func (m *missing) Unwrap() error { return ErrNotFound }

// ErrDigestMismatch is returned when bytes do not hash to the digest that
// names them: corruption on disk or a lying peer.
var ErrDigestMismatch = errors.New("castore: digest mismatch")
