package sexp

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// TestAdvancedMatchesLibgcrypt: a signature as ci.guix.gnu.org made it
// (libgcrypt's advanced text, taken from a real narinfo) parses and is
// written back byte for byte.
func TestAdvancedMatchesLibgcrypt(t *testing.T) {
	real, err := os.ReadFile("testdata/hello-signature.sexp")
	if err != nil {
		t.Fatal(err)
	}
	l, err := Parse(real)
	if err != nil {
		t.Fatal(err)
	}
	if got := Advanced(l); !bytes.Equal(got, real) {
		t.Fatalf("advanced form differs:\n%q\nwant\n%q", got, real)
	}
	if l.Name() != "signature" {
		t.Fatalf("name %q", l.Name())
	}
	data, ok := l.Sub("data")
	if !ok {
		t.Fatal("no data")
	}
	hash, _ := data.Sub("hash")
	atoms, ok := hash.Atoms()
	if !ok || len(atoms) != 2 || string(atoms[0]) != "sha256" || len(atoms[1]) != 32 || atoms[1][0] != 0x05 {
		t.Fatalf("hash %q", atoms)
	}
	pk, _ := l.Sub("public-key")
	ecc, _ := pk.Sub("ecc")
	if c, ok := ecc.Value("curve"); !ok || string(c) != "Ed25519" {
		t.Fatalf("curve %q", c)
	}

	// Canonical form: unique, and it parses back to the same.
	canon := Canonical(l)
	if !bytes.HasPrefix(canon, []byte("(9:signature(4:data(5:flags7:rfc6979)(4:hash6:sha25632:")) {
		t.Fatalf("canonical %q", canon[:60])
	}
	back, err := Parse(canon)
	if err != nil || !Equal(back, l) {
		t.Fatalf("canonical round trip: %v", err)
	}
}

// TestNotations: every notation libgcrypt reads gives the same atoms.
func TestNotations(t *testing.T) {
	want := List{Atom("a"), Atom("hello world"), Atom{0, 1, 0xfe}, Atom("AB"), List{Atom("x-y.z")}, Atom("")}
	for _, text := range []string{
		`(a "hello world" #0001FE# |QUI=| (x-y.z) "")`,
		"(1:a11:hello world3:\x00\x01\xfe2:AB(5:x-y.z)0:)",
		" \n(a\t\"hello\\x20world\"  # 00 01 fe #  \"\\101\\102\"(x-y.z)\"\")\n",
		"(a \"hello \\\nworld\" #0001fe# | Q U I = | (x-y.z) 0:)",
	} {
		l, err := Parse([]byte(text))
		if err != nil {
			t.Errorf("%q: %v", text, err)
			continue
		}
		if !Equal(l, want) {
			t.Errorf("%q parsed to %q", text, Canonical(l))
		}
	}
	// Atoms are written as tokens, strings or hex as libgcrypt chooses.
	got := Advanced(List{Atom("tok-1"), Atom("2x"), Atom("a b\n"), Atom{0x8d, 1}, Atom{0, 'a'}, Atom("q\"'\\"), Atom(""), Atom("\x01z")})
	if want := "(tok-1 \"2x\" \"a b\\n\" #8D01# #0061# \"q\\\"\\'\\\\\" \"\" #017A#)\n"; string(got) != want {
		t.Errorf("advanced atoms %q, want %q", got, want)
	}
	// Nesting layout: lists after lists, atoms after lists.
	got = Advanced(List{Atom("a"), List{Atom("b")}, List{Atom("c"), List{Atom("d")}}, Atom("e")})
	if want := "(a \n (b)\n (c \n  (d)\n  )\n e)\n"; string(got) != want {
		t.Errorf("advanced layout %q, want %q", got, want)
	}
}

func TestBadInput(t *testing.T) {
	for name, text := range map[string]string{
		"empty":             "  ",
		"atom":              "abc",
		"unclosed":          "(a (b)",
		"extra close":       "(a))",
		"after":             "(a) (b)",
		"long length":       "(5:ab)",
		"digit token":       "(12ab)",
		"odd hex":           "(#ABC#)",
		"bad hex":           "(#zz#)",
		"open hex":          "(#AB",
		"bad base64":        "(|!!|)",
		"open base64":       "(|QUI=",
		"open string":       `("abc`,
		"bad escape":        `("\q")`,
		"big octal":         `("\777")`,
		"short hex escape":  `("\x4")`,
		"display hint":      "([text/plain]abc)",
		"stray character":   "(a @)",
		"too deep":          strings.Repeat("(", MaxDepth+1) + strings.Repeat(")", MaxDepth+1),
		"huge length":       "(99999999999999999999:a)",
		"control character": "(a \x00)",
	} {
		_, err := Parse([]byte(text))
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if !strings.HasPrefix(err.Error(), "s-expression: ") || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error %q is not one s-expression line", name, err)
		}
	}
}
