package guix

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/p2pstore/p2pstore/narview/sexp"
)

// Signature is a Guix signature:
//
//	(signature
//	 (data (flags rfc6979) (hash sha256 #<SHA-256 of the signed text>#))
//	 (sig-val (ecdsa (r #..#) (s #..#)))
//	 (public-key (ecc (curve Ed25519) (q #..#))))
type Signature struct {
	Hash [sha256.Size]byte // what was signed: the SHA-256 of the text
	R, S []byte            // big-endian
	Key  PublicKey         // the signer, as the signature names it
	expr sexp.List
}

// The ways a signature fails, in the order Guix checks them.
var (
	ErrUnsigned     = errors.New("no signature")
	ErrCorrupt      = errors.New("corrupt signature")
	ErrUntrusted    = errors.New("signature by an untrusted key")
	ErrHashMismatch = errors.New("signature is for other text")
	ErrInvalid      = errors.New("signature does not verify")
)

// ParseSignature parses a signature expression. Only ECDSA signatures of
// SHA-256 hashes, the kind Guix makes, are accepted.
func ParseSignature(text []byte) (*Signature, error) {
	l, err := sexp.Parse(text)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	sig, err := signatureFrom(l)
	if err != nil {
		return nil, fmt.Errorf("%w: %s", ErrCorrupt, err)
	}
	return sig, nil
}

func signatureFrom(l sexp.List) (*Signature, error) {
	if l.Name() != "signature" {
		return nil, fmt.Errorf("%q is not a signature", l.Name())
	}
	data, ok := l.Sub("data")
	if !ok {
		return nil, errors.New("no (data ...)")
	}
	if flags, ok := data.Sub("flags"); ok {
		atoms, _ := flags.Atoms()
		for _, f := range atoms {
			if string(f) != "rfc6979" {
				return nil, fmt.Errorf("data flag %q (Guix signs with flags rfc6979)", f)
			}
		}
	}
	hashList, _ := data.Sub("hash")
	hash, ok := hashList.Atoms()
	if !ok || len(hash) != 2 || string(hash[0]) != "sha256" || len(hash[1]) != sha256.Size {
		return nil, errors.New("no (hash sha256 #<32 bytes>#)")
	}
	sigVal, ok := l.Sub("sig-val")
	if !ok {
		return nil, errors.New("no (sig-val ...)")
	}
	ecdsa, ok := sigVal.Sub("ecdsa")
	if !ok {
		return nil, errors.New("not an (ecdsa ...) signature")
	}
	r, ok1 := ecdsa.Value("r")
	s, ok2 := ecdsa.Value("s")
	if !ok1 || !ok2 {
		return nil, errors.New("no (r ...) or (s ...)")
	}
	keyExpr, ok := l.Sub("public-key")
	if !ok {
		return nil, errors.New("no (public-key ...)")
	}
	key, err := publicKeyFrom(keyExpr)
	if err != nil {
		return nil, err
	}
	sig := &Signature{R: r, S: s, Key: key, expr: l}
	copy(sig.Hash[:], hash[1])
	return sig, nil
}

// Verify checks that the signature is by a key of trusted, of the hash h,
// and verifies, in Guix's order. The error wraps ErrUntrusted,
// ErrHashMismatch or ErrInvalid.
func (s *Signature) Verify(h [sha256.Size]byte, trusted []PublicKey) error {
	if !slices.ContainsFunc(trusted, s.Key.Equal) {
		return fmt.Errorf("%w (q %s)", ErrUntrusted, s.Key.Short())
	}
	if s.Hash != h {
		return ErrHashMismatch
	}
	if !s.Valid() {
		return ErrInvalid
	}
	return nil
}

// Valid reports whether the signature's r and s sign its hash under its
// key. Whether that key is trusted is the caller's question.
func (s *Signature) Valid() bool { return ecdsaVerify(s.Key.point, s.Hash, s.R, s.S) }

// String returns the signature in libgcrypt's advanced notation, as Guix
// puts it in a narinfo.
func (s *Signature) String() string { return string(sexp.Advanced(s.expr)) }

// SignHash signs a SHA-256 hash as Guix's `guix publish` does, with
// libgcrypt's deterministic nonce: the same key and hash give the same
// signature. k must come from GenerateKey or ParseSecretKey.
func (k SecretKey) SignHash(h [sha256.Size]byte) *Signature {
	r, s := ecdsaSign(k.d, k.scalar, h)
	expr := sexp.List{sexp.Atom("signature"),
		sexp.List{sexp.Atom("data"),
			sexp.List{sexp.Atom("flags"), sexp.Atom("rfc6979")},
			sexp.List{sexp.Atom("hash"), sexp.Atom("sha256"), sexp.Atom(h[:])}},
		sexp.List{sexp.Atom("sig-val"),
			sexp.List{sexp.Atom("ecdsa"),
				sexp.List{sexp.Atom("r"), sexp.Atom(r)},
				sexp.List{sexp.Atom("s"), sexp.Atom(s)}}},
		k.pub.expr,
	}
	return &Signature{Hash: h, R: r, S: s, Key: k.pub, expr: expr}
}

// SignatureField returns the value of a narinfo's Signature field:
// 1;<host>;<base64 of the signature's advanced text>. The host names the
// signer for people; nothing checks it.
func SignatureField(host string, sig *Signature) string {
	return "1;" + host + ";" + base64.StdEncoding.EncodeToString([]byte(sig.String()))
}

// ParseSignatureField parses the value of a narinfo's Signature field.
func ParseSignatureField(v string) (host string, sig *Signature, err error) {
	parts := strings.Split(v, ";")
	if len(parts) != 3 {
		return "", nil, fmt.Errorf("%w: the field is not 1;<host>;<base64>", ErrCorrupt)
	}
	if parts[0] != "1" {
		return "", nil, fmt.Errorf("%w: version %q (only 1 exists)", ErrCorrupt, parts[0])
	}
	text, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil {
		return "", nil, fmt.Errorf("%w: bad base64", ErrCorrupt)
	}
	sig, err = ParseSignature(text)
	if err != nil {
		return "", nil, err
	}
	return parts[1], sig, nil
}

func validHost(host string) error {
	for _, c := range []byte(host) {
		if c == ';' || c <= ' ' || c == 0x7f {
			return fmt.Errorf("signer host %q: must have no ';', spaces or control characters", host)
		}
	}
	return nil
}
