// Package sexp reads and writes S-expressions in the forms libgcrypt
// knows, which are what Guix keeps its keys, ACL and narinfo signatures
// in.
//
// An expression is a List of atoms (byte strings) and lists. Parse takes
// the canonical (3:abc), transport and advanced notations mixed, as
// gcry_sexp_new does: tokens, "quoted strings", #hex#, |base64| and
// length-prefixed verbatim strings; display hints are refused. Canonical
// writes the one unique form (for comparing keys); Advanced writes the
// indented text gcry_sexp_sprint makes and Guix stores in its key files
// and signatures, byte for byte. Parse bounds nesting, never the size:
// callers bound what they read.
package sexp

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
)

// Expr is an Atom or a List.
type Expr interface{ isExpr() }

// Atom is a byte string.
type Atom []byte

// List is a parenthesised sequence of expressions.
type List []Expr

func (Atom) isExpr() {}
func (List) isExpr() {}

// MaxDepth bounds nesting; keys and signatures nest four deep.
const MaxDepth = 64

// Parse parses text holding one list, optionally surrounded by white
// space.
func Parse(text []byte) (List, error) {
	p := &parser{in: text}
	p.space()
	if p.pos >= len(p.in) {
		return nil, errors.New("s-expression: empty")
	}
	if p.in[p.pos] != '(' {
		return nil, p.errorf("expected '('")
	}
	l, err := p.list(0)
	if err != nil {
		return nil, err
	}
	p.space()
	if p.pos < len(p.in) {
		return nil, p.errorf("text after the closing ')'")
	}
	return l, nil
}

type parser struct {
	in  []byte
	pos int
}

func (p *parser) errorf(format string, args ...any) error {
	return fmt.Errorf("s-expression: at byte %d: %s", p.pos, fmt.Sprintf(format, args...))
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isAlpha(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// tokenSpecials are the characters besides letters and digits that a
// token may hold (libgcrypt's set).
const tokenSpecials = "-./_:*+="

func isTokenChar(c byte) bool {
	return isAlpha(c) || isDigit(c) || bytes.IndexByte([]byte(tokenSpecials), c) >= 0
}

func (p *parser) space() {
	for p.pos < len(p.in) && isSpace(p.in[p.pos]) {
		p.pos++
	}
}

// list parses from an opening '(' to its ')'.
func (p *parser) list(depth int) (List, error) {
	if depth >= MaxDepth {
		return nil, p.errorf("nested deeper than %d", MaxDepth)
	}
	p.pos++ // '('
	l := List{}
	for {
		p.space()
		if p.pos >= len(p.in) {
			return nil, p.errorf("missing ')'")
		}
		switch c := p.in[p.pos]; {
		case c == ')':
			p.pos++
			return l, nil
		case c == '(':
			sub, err := p.list(depth + 1)
			if err != nil {
				return nil, err
			}
			l = append(l, sub)
		default:
			a, err := p.atom()
			if err != nil {
				return nil, err
			}
			l = append(l, a)
		}
	}
}

func (p *parser) atom() (Atom, error) {
	c := p.in[p.pos]
	switch {
	case isDigit(c):
		return p.verbatim()
	case isAlpha(c) || bytes.IndexByte([]byte(tokenSpecials), c) >= 0:
		start := p.pos
		for p.pos < len(p.in) && isTokenChar(p.in[p.pos]) {
			p.pos++
		}
		return Atom(p.in[start:p.pos]), nil
	case c == '"':
		return p.quoted()
	case c == '#':
		return p.hex()
	case c == '|':
		return p.base64()
	case c == '[':
		return nil, p.errorf("display hints are not supported")
	default:
		return nil, p.errorf("unexpected character %q", c)
	}
}

// verbatim parses <decimal length>:<bytes>.
func (p *parser) verbatim() (Atom, error) {
	start := p.pos
	for p.pos < len(p.in) && isDigit(p.in[p.pos]) {
		p.pos++
	}
	if p.pos >= len(p.in) || p.in[p.pos] != ':' {
		return nil, p.errorf("a length must be followed by ':' (tokens cannot start with a digit)")
	}
	n, err := strconv.Atoi(string(p.in[start:p.pos]))
	if err != nil || n > len(p.in)-p.pos-1 {
		return nil, p.errorf("length %s runs past the end", p.in[start:p.pos])
	}
	p.pos++ // ':'
	a := Atom(p.in[p.pos : p.pos+n])
	p.pos += n
	return a, nil
}

func hexValue(c byte) (byte, bool) {
	switch {
	case isDigit(c):
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// hex parses #<hex digits>#, white space allowed between digits.
func (p *parser) hex() (Atom, error) {
	p.pos++
	var out []byte
	var half byte
	odd := false
	for ; p.pos < len(p.in); p.pos++ {
		c := p.in[p.pos]
		if c == '#' {
			if odd {
				return nil, p.errorf("odd number of hex digits")
			}
			p.pos++
			return Atom(out), nil
		}
		if isSpace(c) {
			continue
		}
		v, ok := hexValue(c)
		if !ok {
			return nil, p.errorf("%q in a hex string", c)
		}
		if odd {
			out = append(out, half<<4|v)
		} else {
			half = v
		}
		odd = !odd
	}
	return nil, p.errorf("missing '#' at the end of a hex string")
}

// base64 parses |<base64>|, white space allowed.
func (p *parser) base64() (Atom, error) {
	p.pos++
	var clean []byte
	for ; p.pos < len(p.in); p.pos++ {
		c := p.in[p.pos]
		if c == '|' {
			p.pos++
			out, err := base64.StdEncoding.DecodeString(string(clean))
			if err != nil {
				return nil, p.errorf("bad base64: %v", err)
			}
			return Atom(out), nil
		}
		if !isSpace(c) {
			clean = append(clean, c)
		}
	}
	return nil, p.errorf("missing '|' at the end of a base64 string")
}

// quoted parses a C-like "string": \b \t \v \n \f \r \" \' \\, \ooo
// octal, \xHH, and a backslash before a line break continues the line.
func (p *parser) quoted() (Atom, error) {
	p.pos++
	out := []byte{}
	for p.pos < len(p.in) {
		c := p.in[p.pos]
		p.pos++
		switch c {
		case '"':
			return Atom(out), nil
		case '\\':
		default:
			out = append(out, c)
			continue
		}
		if p.pos >= len(p.in) {
			break
		}
		e := p.in[p.pos]
		p.pos++
		switch e {
		case 'b':
			out = append(out, '\b')
		case 't':
			out = append(out, '\t')
		case 'v':
			out = append(out, '\v')
		case 'n':
			out = append(out, '\n')
		case 'f':
			out = append(out, '\f')
		case 'r':
			out = append(out, '\r')
		case '"', '\'', '\\':
			out = append(out, e)
		case '\n', '\r':
			// A line continuation; \r\n and \n\r count as one break.
			if p.pos < len(p.in) && (p.in[p.pos] == '\n' || p.in[p.pos] == '\r') && p.in[p.pos] != e {
				p.pos++
			}
		case 'x':
			if p.pos+2 > len(p.in) {
				return nil, p.errorf("short \\x escape")
			}
			hi, ok1 := hexValue(p.in[p.pos])
			lo, ok2 := hexValue(p.in[p.pos+1])
			if !ok1 || !ok2 {
				return nil, p.errorf("bad \\x escape")
			}
			out = append(out, hi<<4|lo)
			p.pos += 2
		default:
			if e < '0' || e > '7' || p.pos+2 > len(p.in) {
				return nil, p.errorf("unknown escape \\%c", e)
			}
			v := int(e - '0')
			for _, d := range p.in[p.pos : p.pos+2] {
				if d < '0' || d > '7' {
					return nil, p.errorf("bad octal escape")
				}
				v = v*8 + int(d-'0')
			}
			if v > 255 {
				return nil, p.errorf("octal escape over 255")
			}
			out = append(out, byte(v))
			p.pos += 2
		}
	}
	return nil, p.errorf("missing '\"' at the end of a string")
}

// Canonical returns the canonical encoding: no white space, every atom
// as <length>:<bytes>. Two expressions are equal when these are.
func Canonical(e Expr) []byte { return appendCanonical(nil, e) }

func appendCanonical(b []byte, e Expr) []byte {
	switch e := e.(type) {
	case Atom:
		b = strconv.AppendInt(b, int64(len(e)), 10)
		b = append(b, ':')
		return append(b, e...)
	case List:
		b = append(b, '(')
		for _, x := range e {
			b = appendCanonical(b, x)
		}
		return append(b, ')')
	}
	return b
}

// Equal reports whether two expressions are the same.
func Equal(a, b Expr) bool { return bytes.Equal(Canonical(a), Canonical(b)) }

// Advanced returns the text libgcrypt's gcry_sexp_sprint writes in its
// advanced mode: a list that follows an element starts on a new line,
// indented one space per level; a closing parenthesis that follows a
// list goes on its own line; elements are separated by one space; the
// text ends with a newline. Atoms are written as tokens where they can
// be, as quoted strings where they are text, and as #HEX# otherwise.
func Advanced(l List) []byte {
	b := appendAdvanced(nil, l, 0)
	return append(b, '\n')
}

func appendAdvanced(b []byte, l List, indent int) []byte {
	if indent > 0 {
		b = append(b, '\n')
		b = append(b, bytes.Repeat([]byte{' '}, indent)...)
	}
	b = append(b, '(')
	for i, e := range l {
		switch e := e.(type) {
		case Atom:
			b = appendAtom(b, e)
			if i < len(l)-1 {
				b = append(b, ' ')
			}
		case List:
			b = appendAdvanced(b, e, indent+1)
			// After a list, an atom or this list's ')' starts a new line
			// at the level of the list's elements; a list starts its own.
			if _, nextIsList := nextExpr(l, i).(List); !nextIsList {
				b = append(b, '\n')
				b = append(b, bytes.Repeat([]byte{' '}, indent+1)...)
			}
		}
	}
	return append(b, ')')
}

func nextExpr(l List, i int) Expr {
	if i+1 < len(l) {
		return l[i+1]
	}
	return nil
}

// Encoding choices for an atom in advanced mode.
const (
	asHex = iota
	asString
	asToken
)

func encodingOf(a Atom) int {
	if len(a) == 0 {
		return asString
	}
	// A leading high bit would read as a negative number, a leading zero
	// as binary: both stay hex.
	if a[0]&0x80 != 0 || a[0] == 0 {
		return asHex
	}
	token := true
	for _, c := range a {
		if (c < 0x20 || c >= 0x7f && c <= 0xa0) && bytes.IndexByte([]byte("\b\t\v\n\f\r\"'\\"), c) < 0 {
			return asHex
		}
		if token && !isTokenChar(c) {
			token = false
		}
	}
	if token && !isDigit(a[0]) {
		return asToken
	}
	return asString
}

func appendAtom(b []byte, a Atom) []byte {
	switch encodingOf(a) {
	case asToken:
		return append(b, a...)
	case asString:
		b = append(b, '"')
		for _, c := range a {
			switch c {
			case '\b':
				b = append(b, `\b`...)
			case '\t':
				b = append(b, `\t`...)
			case '\v':
				b = append(b, `\v`...)
			case '\n':
				b = append(b, `\n`...)
			case '\f':
				b = append(b, `\f`...)
			case '\r':
				b = append(b, `\r`...)
			case '"', '\'', '\\':
				b = append(b, '\\', c)
			default:
				b = append(b, c)
			}
		}
		return append(b, '"')
	default:
		b = append(b, '#')
		const digits = "0123456789ABCDEF"
		for _, c := range a {
			b = append(b, digits[c>>4], digits[c&15])
		}
		return append(b, '#')
	}
}

// String returns the advanced text.
func (l List) String() string { return string(Advanced(l)) }

// Name returns the list's first element when it is an atom (the "type"
// of the list, such as public-key), else "".
func (l List) Name() string {
	if len(l) == 0 {
		return ""
	}
	if a, ok := l[0].(Atom); ok {
		return string(a)
	}
	return ""
}

// Sub returns the first element of l that is a list named name.
func (l List) Sub(name string) (List, bool) {
	for _, e := range l {
		if s, ok := e.(List); ok && s.Name() == name {
			return s, true
		}
	}
	return nil, false
}

// Value returns the atom after the name in l's sub-list name, as in
// (curve Ed25519) or (q #..#): present only when that list has exactly
// one atom after its name.
func (l List) Value(name string) (Atom, bool) {
	s, ok := l.Sub(name)
	if !ok || len(s) != 2 {
		return nil, false
	}
	a, ok := s[1].(Atom)
	return a, ok
}

// Atoms returns the atoms after a list's name, as in (flags rfc6979) or
// (hash sha256 #..#), and false if any element is a list.
func (l List) Atoms() ([]Atom, bool) {
	var out []Atom
	for _, e := range l[min(1, len(l)):] {
		a, ok := e.(Atom)
		if !ok {
			return nil, false
		}
		out = append(out, a)
	}
	return out, true
}
