package guix

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"filippo.io/edwards25519"

	"github.com/p2pstore/p2pstore/narview/sexp"
)

// PublicKey is a Guix public key, (public-key (ecc (curve Ed25519) (q
// #..#))), as in signing-key.pub and the ACL.
type PublicKey struct {
	expr  sexp.List // as read: Guix compares keys by their expressions
	point *edwards25519.Point
}

// SecretKey is a Guix secret key, (private-key (ecc (curve Ed25519) (q
// #..#) (d #..#))), as in signing-key.sec.
type SecretKey struct {
	expr   sexp.List
	d      []byte // as stored, big-endian: RFC 6979 takes it so
	scalar *edwards25519.Scalar
	pub    PublicKey
}

// MaxKeySize bounds a key file; real ones are under 300 bytes.
const MaxKeySize = 4096

// ParsePublicKey parses a public key in any S-expression notation.
func ParsePublicKey(text []byte) (PublicKey, error) {
	if len(text) > MaxKeySize {
		return PublicKey{}, fmt.Errorf("guix public key: %d bytes is too large", len(text))
	}
	l, err := sexp.Parse(text)
	if err != nil {
		return PublicKey{}, fmt.Errorf("guix public key: %w", err)
	}
	k, err := publicKeyFrom(l)
	if err != nil {
		return PublicKey{}, fmt.Errorf("guix public key: %w", err)
	}
	return k, nil
}

// LoadPublicKeyFile reads a public key file, such as signing-key.pub.
func LoadPublicKeyFile(path string) (PublicKey, error) {
	b, err := readKeyFile(path)
	if err != nil {
		return PublicKey{}, err
	}
	k, err := ParsePublicKey(b)
	if err != nil {
		return PublicKey{}, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

func readKeyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxKeySize+1))
	if err != nil {
		return nil, err
	}
	return b, nil
}

// eccParams checks the (ecc ...) list of a key named name and returns
// its decoded point and the q atom.
func eccParams(l sexp.List, name string) (sexp.List, *edwards25519.Point, error) {
	if l.Name() != name {
		return nil, nil, fmt.Errorf("not a %s but %q", name, l.Name())
	}
	ecc, ok := l.Sub("ecc")
	if !ok {
		if _, rsa := l.Sub("rsa"); rsa {
			return nil, nil, errors.New("an RSA key; only Ed25519 keys are supported")
		}
		return nil, nil, errors.New("no (ecc ...) parameters")
	}
	curve, ok := ecc.Value("curve")
	if !ok || !strings.EqualFold(string(curve), "Ed25519") {
		return nil, nil, fmt.Errorf("curve %q; only Ed25519 is supported", curve)
	}
	if flags, ok := ecc.Sub("flags"); ok {
		atoms, _ := flags.Atoms()
		for _, f := range atoms {
			if string(f) == "eddsa" {
				return nil, nil, errors.New("an EdDSA key (flags eddsa); Guix keys sign with ECDSA")
			}
		}
	}
	q, ok := ecc.Value("q")
	if !ok {
		return nil, nil, errors.New("no (q ...) point")
	}
	if len(q) == 33 && q[0] == 0x40 { // libgcrypt's prefix for a compressed point
		q = q[1:]
	}
	if len(q) != 32 {
		return nil, nil, fmt.Errorf("q has %d bytes, not 32", len(q))
	}
	p, err := new(edwards25519.Point).SetBytes(q)
	if err != nil {
		return nil, nil, errors.New("q is not a point on Ed25519")
	}
	if p.Equal(edwards25519.NewIdentityPoint()) == 1 {
		return nil, nil, errors.New("q is the identity point")
	}
	return ecc, p, nil
}

func publicKeyFrom(l sexp.List) (PublicKey, error) {
	_, p, err := eccParams(l, "public-key")
	if err != nil {
		return PublicKey{}, err
	}
	return PublicKey{expr: l, point: p}, nil
}

// String returns the key as `guix archive --generate-key` writes
// signing-key.pub (libgcrypt's advanced notation, ending in a newline).
func (k PublicKey) String() string { return string(sexp.Advanced(k.expr)) }

// Expr returns the key's expression.
func (k PublicKey) Expr() sexp.List { return k.expr }

// Equal reports whether two keys are the same expression, which is how
// Guix matches a signature's key against its ACL.
func (k PublicKey) Equal(o PublicKey) bool { return sexp.Equal(k.expr, o.expr) }

// Short names the key in messages: the hex of its point.
func (k PublicKey) Short() string {
	if k.point == nil {
		return "(no key)"
	}
	return fmt.Sprintf("%X", k.point.Bytes())
}

// GenerateKey makes a key pair as libgcrypt does for Guix's
// (genkey (ecdsa (curve Ed25519) (flags rfc6979))): d is 32 random
// bytes with the top bit clear, the next one set and the low three clear.
func GenerateKey() (SecretKey, error) {
	d := make([]byte, 32)
	if _, err := io.ReadFull(rand.Reader, d); err != nil {
		return SecretKey{}, err
	}
	d[0] = d[0]&0x7f | 0x40
	d[31] &= 0xf8
	scalar := scalarFromBigEndian(d)
	q := new(edwards25519.Point).ScalarBaseMult(scalar).Bytes()
	ecc := func(extra ...sexp.Expr) sexp.List {
		return append(sexp.List{sexp.Atom("ecc"),
			sexp.List{sexp.Atom("curve"), sexp.Atom("Ed25519")},
			sexp.List{sexp.Atom("q"), sexp.Atom(q)}}, extra...)
	}
	pub, err := publicKeyFrom(sexp.List{sexp.Atom("public-key"), ecc()})
	if err != nil {
		return SecretKey{}, err
	}
	return SecretKey{
		expr:   sexp.List{sexp.Atom("private-key"), ecc(sexp.List{sexp.Atom("d"), sexp.Atom(d)})},
		d:      d,
		scalar: scalar,
		pub:    pub,
	}, nil
}

// ParseSecretKey parses a secret key in any S-expression notation and
// checks that its d gives its q.
func ParseSecretKey(text []byte) (SecretKey, error) {
	if len(text) > MaxKeySize {
		return SecretKey{}, fmt.Errorf("guix secret key: %d bytes is too large", len(text))
	}
	l, err := sexp.Parse(text)
	if err != nil {
		return SecretKey{}, fmt.Errorf("guix secret key: %w", err)
	}
	ecc, p, err := eccParams(l, "private-key")
	if err != nil {
		return SecretKey{}, fmt.Errorf("guix secret key: %w", err)
	}
	d, ok := ecc.Value("d")
	if !ok {
		return SecretKey{}, errors.New("guix secret key: no (d ...) scalar")
	}
	d = bytes.TrimLeft(d, "\x00")
	if len(d) == 0 || len(d) > 32 {
		return SecretKey{}, errors.New("guix secret key: d is zero or longer than 32 bytes")
	}
	scalar := scalarFromBigEndian(d)
	if new(edwards25519.Point).ScalarBaseMult(scalar).Equal(p) != 1 {
		return SecretKey{}, errors.New("guix secret key: d does not give q (not a key pair)")
	}
	// The public half is what the .pub file next to it holds: the same
	// parameters without d.
	pubECC := sexp.List{}
	for _, e := range ecc {
		if s, ok := e.(sexp.List); ok && s.Name() == "d" {
			continue
		}
		pubECC = append(pubECC, e)
	}
	pub, err := publicKeyFrom(sexp.List{sexp.Atom("public-key"), pubECC})
	if err != nil {
		return SecretKey{}, fmt.Errorf("guix secret key: %w", err)
	}
	return SecretKey{expr: l, d: d, scalar: scalar, pub: pub}, nil
}

// LoadSecretKeyFile reads a secret key file, such as signing-key.sec.
func LoadSecretKeyFile(path string) (SecretKey, error) {
	b, err := readKeyFile(path)
	if err != nil {
		return SecretKey{}, err
	}
	k, err := ParseSecretKey(b)
	if err != nil {
		return SecretKey{}, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// String returns the key as `guix archive --generate-key` writes
// signing-key.sec.
func (k SecretKey) String() string { return string(sexp.Advanced(k.expr)) }

// Public returns the public half.
func (k SecretKey) Public() PublicKey { return k.pub }
