package castore

import (
	"bytes"
	"testing"
)

// BenchmarkCut measures content-defined chunking alone.
func BenchmarkCut(b *testing.B) {
	data := pseudoRandom(7, 64<<20)
	b.SetBytes(int64(len(data)))
	for i := 0; i < b.N; i++ {
		for rest := data; len(rest) > 0; {
			rest = rest[Cut(rest):]
		}
	}
}

// BenchmarkPutBlob measures chunking, BLAKE3 of chunks and blob, and pack
// writes into a store on $TMPDIR (use tmpfs).
func BenchmarkPutBlob(b *testing.B) {
	data := pseudoRandom(7, 64<<20)
	b.SetBytes(int64(len(data)))
	for i := 0; i < b.N; i++ {
		s, err := Open(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		w := s.NewWriter()
		if _, _, err := w.PutBlob(bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
		if err := w.Commit(); err != nil {
			b.Fatal(err)
		}
		s.Close()
	}
}
