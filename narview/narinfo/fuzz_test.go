package narinfo

import "testing"

// FuzzParse: no input may panic Parse, and what it accepts formats to a
// text that parses to the same narinfo. Seeds are in
// testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, text string) {
		ni, err := Parse(text)
		if err != nil {
			return
		}
		once := ni.String()
		again, err := Parse(once)
		if err != nil {
			t.Fatalf("a formatted narinfo does not parse: %v\n%s", err, once)
		}
		if twice := again.String(); twice != once {
			t.Fatalf("formatting is not stable:\n%s\n%s", once, twice)
		}
		_ = ni.Fingerprint()
	})
}
