package narinfo

import (
	"crypto/rand"
	"fmt"
	"os"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
)

// SecretKey signs fingerprints. Its text form, <name>:<base64 of the
// 64-byte ed25519 private key>, is that of `nix key generate-secret`.
type SecretKey struct{ k signature.SecretKey }

// PublicKey verifies signatures: <name>:<base64 of 32 bytes>, as in Nix's
// trusted-public-keys.
type PublicKey struct{ k signature.PublicKey }

// GenerateKey makes a new key pair named name.
func GenerateKey(name string) (SecretKey, error) {
	if name == "" || strings.ContainsAny(name, ": \n") {
		return SecretKey{}, fmt.Errorf("key name %q: must be non-empty, without ':' or spaces", name)
	}
	sk, _, err := signature.GenerateKeypair(name, rand.Reader)
	return SecretKey{sk}, err
}

// ParseSecretKey parses the text form of a secret key.
func ParseSecretKey(s string) (SecretKey, error) {
	sk, err := signature.LoadSecretKey(strings.TrimSpace(s))
	if err != nil {
		return SecretKey{}, fmt.Errorf("secret key: %w", err)
	}
	return SecretKey{sk}, nil
}

// LoadSecretKeyFile reads a secret key file.
func LoadSecretKeyFile(path string) (SecretKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return SecretKey{}, err
	}
	sk, err := ParseSecretKey(string(b))
	if err != nil {
		return SecretKey{}, fmt.Errorf("%s: %w", path, err)
	}
	return sk, nil
}

// String returns the text form.
func (k SecretKey) String() string { return k.k.String() }

// Name returns the key's name.
func (k SecretKey) Name() string { return strings.SplitN(k.k.String(), ":", 2)[0] }

// Public returns the matching public key.
func (k SecretKey) Public() PublicKey { return PublicKey{k.k.ToPublicKey()} }

// Sign signs a fingerprint and returns the signature as <name>:<base64>.
func (k SecretKey) Sign(fingerprint string) string {
	sig, err := k.k.Sign(nil, fingerprint)
	if err != nil {
		panic(err) // ed25519 signing cannot fail with a valid key
	}
	return sig.String()
}

// ParsePublicKey parses the text form of a public key.
func ParsePublicKey(s string) (PublicKey, error) {
	pk, err := signature.ParsePublicKey(strings.TrimSpace(s))
	if err != nil {
		return PublicKey{}, fmt.Errorf("public key %q: %w", s, err)
	}
	return PublicKey{pk}, nil
}

// String returns the text form.
func (k PublicKey) String() string { return k.k.String() }

// Name returns the key's name.
func (k PublicKey) Name() string { return k.k.Name }

// Verify reports whether sig (<name>:<base64>) is this key's signature of
// the fingerprint.
func (k PublicKey) Verify(fingerprint, sig string) bool {
	s, err := signature.ParseSignature(sig)
	if err != nil || s.Name != k.k.Name {
		return false
	}
	return k.k.Verify(fingerprint, s)
}

// VerifyAny reports whether any of sigs is a valid signature of the
// fingerprint by any of keys.
func VerifyAny(fingerprint string, sigs []string, keys []PublicKey) bool {
	for _, sig := range sigs {
		for _, k := range keys {
			if k.Verify(fingerprint, sig) {
				return true
			}
		}
	}
	return false
}
