package sexp

import (
	"os"
	"testing"
)

// FuzzParse: no input may panic Parse, and what it accepts is written in
// both forms to texts that parse back to the same expression.
func FuzzParse(f *testing.F) {
	if real, err := os.ReadFile("testdata/hello-signature.sexp"); err == nil {
		f.Add(real)
	}
	f.Add([]byte(`(a "b\x20c" #00FF# |QUI=| 3:d:e ())`))
	f.Fuzz(func(t *testing.T, text []byte) {
		l, err := Parse(text)
		if err != nil {
			return
		}
		for name, form := range map[string][]byte{"canonical": Canonical(l), "advanced": Advanced(l)} {
			back, err := Parse(form)
			if err != nil {
				t.Fatalf("the %s form does not parse: %v\n%q", name, err, form)
			}
			if !Equal(back, l) {
				t.Fatalf("the %s form parses to something else:\n%q\n%q", name, Canonical(back), Canonical(l))
			}
		}
	})
}
