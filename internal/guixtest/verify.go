// Package guixtest checks Guix narinfo signatures for tests, apart from
// package guix: an independent judge of what guix signs and what the
// node serves.
package guixtest

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"regexp"
	"strings"
)

// Verify checks a narinfo's Guix signature without package guix's code:
// the signature text is picked apart with regular expressions instead of
// the sexp parser, and the ECDSA check runs on
// the affine twisted Edwards curve in math/big (textbook formulas, a
// square root for point decoding) instead of edwards25519's extended
// coordinates and scalar arithmetic. It trusts only the key q given (the
// 32-byte point), and errs on a narinfo it cannot pick apart.
func Verify(narinfo []byte, q []byte) (bool, error) {
	at := bytes.Index(narinfo, []byte("Signature:"))
	if at < 0 {
		return false, errors.New("no Signature")
	}
	line, _, _ := strings.Cut(string(narinfo[at+len("Signature:"):]), "\n")
	parts := strings.Split(strings.TrimSpace(line), ";")
	if len(parts) != 3 || parts[0] != "1" {
		return false, fmt.Errorf("signature field %q", line)
	}
	text, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil {
		return false, err
	}
	return VerifyHash(text, sha256.Sum256(narinfo[:at]), q)
}

// VerifyHash checks a Guix signature (its S-expression text, as an export
// carries it) of the SHA-256 h, as Verify does a narinfo's.
func VerifyHash(text []byte, h [sha256.Size]byte, q []byte) (bool, error) {
	var missing error
	field := func(re string) []byte {
		m := regexp.MustCompile(re).FindSubmatch(text)
		if m == nil {
			missing = fmt.Errorf("no %s in %s", re, text)
			return nil
		}
		b, err := hex.DecodeString(string(m[1]))
		if err != nil {
			missing = err
		}
		return b
	}
	hash, key := field(`\(hash sha256 #([0-9A-F]+)#\)`), field(`\(q #([0-9A-F]+)#\)`)
	r := new(big.Int).SetBytes(field(`\(r #([0-9A-F]+)#\)`))
	s := new(big.Int).SetBytes(field(`\(s #([0-9A-F]+)#\)`))
	if missing != nil {
		return false, missing
	}
	if !bytes.Equal(hash, h[:]) || !bytes.Equal(key, q) { // another text, or another key
		return false, nil
	}
	if r.Sign() <= 0 || r.Cmp(curveN) >= 0 || s.Sign() <= 0 || s.Cmp(curveN) >= 0 {
		return false, nil
	}
	Q, ok := decodeAffine(q)
	if !ok {
		return false, nil
	}
	e := new(big.Int).Rsh(new(big.Int).SetBytes(h[:]), 256-253)
	w := new(big.Int).ModInverse(s, curveN)
	u1 := new(big.Int).Mod(new(big.Int).Mul(e, w), curveN)
	u2 := new(big.Int).Mod(new(big.Int).Mul(r, w), curveN)
	X := affineAdd(affineMul(u1, baseAffine), affineMul(u2, Q))
	return new(big.Int).Mod(X.x, curveN).Cmp(r) == 0, nil
}

type affinePoint struct{ x, y *big.Int }

var (
	curveP, _ = new(big.Int).SetString("7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffed", 16)
	curveN, _ = new(big.Int).SetString("1000000000000000000000000000000014def9dea2f79cd65812631a5cf5d3ed", 16)
	// d = -121665/121666 mod p.
	curveD = new(big.Int).Mod(new(big.Int).Mul(big.NewInt(-121665), new(big.Int).ModInverse(big.NewInt(121666), curveP)), curveP)
	// The base point: y = 4/5, x the even root.
	baseAffine = func() affinePoint {
		y := new(big.Int).Mod(new(big.Int).Mul(big.NewInt(4), new(big.Int).ModInverse(big.NewInt(5), curveP)), curveP)
		x, _ := recoverX(y, 0)
		return affinePoint{x, y}
	}()
)

func mod(x *big.Int) *big.Int { return x.Mod(x, curveP) }

// recoverX solves -x² + y² = 1 + d·x²·y² for x with the given parity.
func recoverX(y *big.Int, sign uint) (*big.Int, bool) {
	y2 := mod(new(big.Int).Mul(y, y))
	u := mod(new(big.Int).Sub(y2, big.NewInt(1)))
	v := mod(new(big.Int).Add(new(big.Int).Mul(curveD, y2), big.NewInt(1)))
	x2 := mod(new(big.Int).Mul(u, new(big.Int).ModInverse(v, curveP)))
	x := new(big.Int).ModSqrt(x2, curveP)
	if x == nil {
		return nil, false
	}
	if x.Sign() == 0 && sign == 1 {
		return nil, false
	}
	if x.Bit(0) != sign {
		x.Sub(curveP, x)
	}
	return x, true
}

// decodeAffine reads RFC 8032's 32-byte little-endian encoding.
func decodeAffine(b []byte) (affinePoint, bool) {
	if len(b) != 32 {
		return affinePoint{}, false
	}
	be := make([]byte, 32)
	for i := range b {
		be[31-i] = b[i]
	}
	sign := uint(be[0] >> 7)
	be[0] &= 0x7f
	y := new(big.Int).SetBytes(be)
	if y.Cmp(curveP) >= 0 {
		return affinePoint{}, false
	}
	x, ok := recoverX(y, sign)
	return affinePoint{x, y}, ok
}

// affineAdd: x3 = (x1y2 + y1x2)/(1 + d·x1x2y1y2), y3 = (y1y2 + x1x2)/(1 - d·x1x2y1y2).
func affineAdd(p, q affinePoint) affinePoint {
	t := mod(new(big.Int).Mul(curveD, mod(new(big.Int).Mul(mod(new(big.Int).Mul(p.x, q.x)), mod(new(big.Int).Mul(p.y, q.y))))))
	xn := mod(new(big.Int).Add(new(big.Int).Mul(p.x, q.y), new(big.Int).Mul(p.y, q.x)))
	yn := mod(new(big.Int).Add(new(big.Int).Mul(p.y, q.y), new(big.Int).Mul(p.x, q.x)))
	xd := new(big.Int).ModInverse(mod(new(big.Int).Add(big.NewInt(1), t)), curveP)
	yd := new(big.Int).ModInverse(mod(new(big.Int).Sub(big.NewInt(1), t)), curveP)
	return affinePoint{mod(xn.Mul(xn, xd)), mod(yn.Mul(yn, yd))}
}

func affineMul(k *big.Int, p affinePoint) affinePoint {
	acc := affinePoint{big.NewInt(0), big.NewInt(1)} // the identity
	for i := k.BitLen() - 1; i >= 0; i-- {
		acc = affineAdd(acc, acc)
		if k.Bit(i) == 1 {
			acc = affineAdd(acc, p)
		}
	}
	return acc
}
