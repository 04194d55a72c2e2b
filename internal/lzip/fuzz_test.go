package lzip

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// FuzzReader: any input decodes or fails without a panic, within the size
// bound, and the same however the input and the output are read in
// pieces. The seeds in testdata/fuzz/FuzzReader were made by the lzip
// command (one member, two members, an empty member).
func FuzzReader(f *testing.F) {
	f.Add([]byte("LZIP\x01\x0c"))
	f.Add([]byte("LZIP\x01\x0c\x00"))
	f.Add([]byte("not lzip at all"))
	f.Fuzz(func(t *testing.T, file []byte) {
		const maxSize = 1 << 20
		whole, err := decode(file, maxSize)
		if len(whole) > maxSize {
			t.Fatalf("%d bytes decoded past the bound of %d", len(whole), maxSize)
		}
		var pieces []byte
		z, err2 := NewReader(iotest.OneByteReader(bytes.NewReader(file)), maxSize)
		if err2 == nil {
			pieces, err2 = io.ReadAll(iotest.HalfReader(z))
		}
		if (err == nil) != (err2 == nil) || !bytes.Equal(whole, pieces) {
			t.Fatalf("read whole: %d bytes, %v; read in pieces: %d bytes, %v", len(whole), err, len(pieces), err2)
		}
		if err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("an error that is not ErrCorrupt from an input that cannot fail: %v", err)
		}
	})
}
