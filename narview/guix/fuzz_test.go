package guix

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse: no input may panic Parse or Verify; what Parse accepts is
// written to a text that parses to the same narinfo, with the signed
// text unchanged, and writes the same again.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.narinfo")
	for _, file := range files {
		if b, err := os.ReadFile(file); err == nil {
			f.Add(b)
		}
	}
	ci, err := LoadPublicKeyFile("testdata/ci.guix.gnu.org.pub")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, text []byte) {
		ni, err := Parse(text)
		if err != nil {
			return
		}
		_ = ni.Verify([]PublicKey{ci})
		once := ni.String()
		again, err := Parse([]byte(once))
		if err != nil {
			t.Fatalf("a written narinfo does not parse: %v\n%s", err, once)
		}
		if !bytes.Equal(again.Signed, ni.Signed) || (again.Signed == nil) != (ni.Signed == nil) {
			t.Fatalf("signed text changed:\n%q\n%q", ni.Signed, again.Signed)
		}
		if !Equivalent(ni, again) || again.Signature != ni.Signature || len(again.NARs) != len(ni.NARs) {
			t.Fatalf("fields changed:\n%s\n%s", text, once)
		}
		if twice := again.String(); twice != once {
			t.Fatalf("writing is not stable:\n%s\n%s", once, twice)
		}
	})
}
