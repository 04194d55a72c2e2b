package guix

import (
	"crypto/hmac"
	"crypto/sha256"
	"hash"
	"slices"

	"filippo.io/edwards25519"
	"filippo.io/edwards25519/field"
)

// This file is ECDSA on the Ed25519 curve as libgcrypt does it when a key
// has no eddsa flag, which is how Guix keys are made: the hash is taken
// as a big-endian integer and shifted right to the 253 bits of the group
// order n; r is the affine x of k·G reduced mod n; s = k⁻¹(e + d·r) mod
// n; k comes from RFC 6979 with HMAC-SHA-256, fed the secret d as the key
// file stores it, so that our signatures are libgcrypt's, bit for bit.
// Scalars use edwards25519's constant-time arithmetic mod n.

// orderBits is the bit length of n = 2^252 + 27742317777372353535851937790883648493.
const orderBits = 253

// scalarFromBigEndian reads a value in [0, 2^512) big-endian and reduces
// it mod n (bytes past the low 64 are ignored; callers pass at most 32).
func scalarFromBigEndian(b []byte) *edwards25519.Scalar {
	b = b[max(0, len(b)-64):]
	var wide [64]byte
	for i, c := range b {
		wide[len(b)-1-i] = c
	}
	s, err := new(edwards25519.Scalar).SetUniformBytes(wide[:])
	if err != nil {
		panic(err) // 64 bytes are always accepted
	}
	return s
}

// canonicalScalar reads a big-endian value that must lie in [1, n).
func canonicalScalar(b []byte) (*edwards25519.Scalar, bool) {
	for len(b) > 0 && b[0] == 0 {
		b = b[1:]
	}
	if len(b) == 0 || len(b) > 32 {
		return nil, false
	}
	var le [32]byte
	for i, c := range b {
		le[len(b)-1-i] = c
	}
	s, err := new(edwards25519.Scalar).SetCanonicalBytes(le[:])
	return s, err == nil
}

// bigEndian returns a scalar's value big-endian without leading zeros,
// as libgcrypt writes an unsigned MPI.
func bigEndian(s *edwards25519.Scalar) []byte {
	b := s.Bytes()
	slices.Reverse(b)
	for len(b) > 1 && b[0] == 0 {
		b = b[1:]
	}
	return b
}

// hashInt returns the hash as the integer libgcrypt signs: its 256 bits
// shifted right by 256-253, big-endian.
func hashInt(h [sha256.Size]byte) []byte {
	out := make([]byte, sha256.Size)
	shift := 8*sha256.Size - orderBits
	for i := len(h) - 1; i >= 0; i-- {
		out[i] = h[i] >> shift
		if i > 0 {
			out[i] |= h[i-1] << (8 - shift)
		}
	}
	return out
}

// affineXModN returns the affine x of p reduced mod n.
func affineXModN(p *edwards25519.Point) *edwards25519.Scalar {
	X, _, Z, _ := p.ExtendedCoordinates()
	x := new(field.Element).Multiply(X, new(field.Element).Invert(Z))
	le := x.Bytes()
	slices.Reverse(le)
	return scalarFromBigEndian(le)
}

var zeroScalar = edwards25519.NewScalar()

// ecdsaVerify reports whether (r, s), big-endian, is a signature of the
// hash by the key q.
func ecdsaVerify(q *edwards25519.Point, h [sha256.Size]byte, r, s []byte) bool {
	rs, ok1 := canonicalScalar(r)
	ss, ok2 := canonicalScalar(s)
	if !ok1 || !ok2 {
		return false
	}
	w := new(edwards25519.Scalar).Invert(ss)
	e := scalarFromBigEndian(hashInt(h))
	u1 := new(edwards25519.Scalar).Multiply(e, w)
	u2 := new(edwards25519.Scalar).Multiply(rs, w)
	p := new(edwards25519.Point).VarTimeDoubleScalarBaseMult(u2, q, u1)
	return affineXModN(p).Equal(rs) == 1
}

// ecdsaSign signs the hash with the secret d (as stored, big-endian) and
// returns r and s big-endian.
func ecdsaSign(dStored []byte, d *edwards25519.Scalar, h [sha256.Size]byte) (r, s []byte) {
	e := scalarFromBigEndian(hashInt(h))
	k := newRFC6979(dStored, h)
	for {
		ks := k.next()
		rs := affineXModN(new(edwards25519.Point).ScalarBaseMult(ks))
		if rs.Equal(zeroScalar) == 1 {
			continue
		}
		ss := new(edwards25519.Scalar).MultiplyAdd(d, rs, e) // e + d·r
		ss.Multiply(ss, new(edwards25519.Scalar).Invert(ks))
		if ss.Equal(zeroScalar) == 1 {
			continue
		}
		return bigEndian(rs), bigEndian(ss)
	}
}

// rfc6979 yields the nonces of RFC 6979 §3.2 for n (253 bits, so the
// octet length is 32) with HMAC-SHA-256.
type rfc6979 struct {
	k, v  []byte
	first bool
}

func (g *rfc6979) mac(parts ...[]byte) []byte {
	m := hmac.New(func() hash.Hash { return sha256.New() }, g.k)
	for _, p := range parts {
		m.Write(p)
	}
	return m.Sum(nil)
}

func newRFC6979(x []byte, h [sha256.Size]byte) *rfc6979 {
	const olen = 32
	// int2octets(x): x left-padded to the octet length.
	xo := make([]byte, olen)
	copy(xo[olen-len(x):], x)
	// bits2octets(h): the hash as an integer of n's bit length, mod n.
	ho := bigEndian(scalarFromBigEndian(hashInt(h)))
	ho = append(make([]byte, olen-len(ho)), ho...)
	g := &rfc6979{k: make([]byte, sha256.Size), v: make([]byte, sha256.Size), first: true}
	for i := range g.v {
		g.v[i] = 1
	}
	g.k = g.mac(g.v, []byte{0}, xo, ho)
	g.v = g.mac(g.v)
	g.k = g.mac(g.v, []byte{1}, xo, ho)
	g.v = g.mac(g.v)
	return g
}

// next returns the next candidate k in [1, n).
func (g *rfc6979) next() *edwards25519.Scalar {
	for {
		if !g.first {
			g.k = g.mac(g.v, []byte{0})
			g.v = g.mac(g.v)
		}
		g.first = false
		g.v = g.mac(g.v) // one HMAC gives the 32 octets needed
		var t [sha256.Size]byte
		copy(t[:], g.v)
		if k, ok := canonicalScalar(hashInt(t)); ok {
			return k
		}
	}
}
