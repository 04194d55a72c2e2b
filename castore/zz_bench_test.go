package castore

import (
	"bytes"
	"testing"
)

func BenchmarkPutBlob(b *testing.B) {
	data := pseudoRandom(7, 64<<20)
	b.SetBytes(int64(len(data)))
	for i := 0; i < b.N; i++ {
		s, _ := Open(b.TempDir())
		w := s.NewWriter()
		w.PutBlob(bytes.NewReader(data))
		w.Commit()
		s.Close()
	}
}
