package nar

import (
	"bytes"
	"context"
	"io"
	"os"
	"testing"

	"github.com/p2pstore/p2pstore/castore"
)

// benchNAR returns the NAR of $P2PSTORE_BENCH_PATH (a store path, such as
// the go1.25.0 toolchain from scripts/corpus.sh), or skips.
func benchNAR(b *testing.B) []byte {
	p := os.Getenv("P2PSTORE_BENCH_PATH")
	if p == "" {
		b.Skip("set P2PSTORE_BENCH_PATH to a store path (scripts/corpus.sh makes some)")
	}
	f, err := os.CreateTemp(b.TempDir(), "nar")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := Dump(context.Background(), NewWriter(f), p); err != nil {
		b.Fatal(err)
	}
	narBytes, err := os.ReadFile(f.Name())
	if err != nil {
		b.Fatal(err)
	}
	return narBytes
}

// BenchmarkIngest measures NAR -> castore: parsing, SHA-256 of the NAR,
// content-defined chunking, BLAKE3 of chunks and blobs, and pack writes,
// into a store on $TMPDIR (use tmpfs). Run with -cpu 1 for one core.
func BenchmarkIngest(b *testing.B) {
	narBytes := benchNAR(b)
	b.SetBytes(int64(len(narBytes)))
	b.ReportAllocs()
	// Making the NAR (a dump of the path and a read of the file) is not
	// ingest: without this reset it was charged to every run, a third of
	// a 3-iteration run's time.
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		// A fresh store each time, and the last one deleted: tmpfs pages
		// are reused rather than new guest memory touched (which, on these
		// VMs, makes writes several times slower after a GB or two).
		dir, err := os.MkdirTemp("", "ingest")
		if err != nil {
			b.Fatal(err)
		}
		s, err := castore.Open(dir)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		w := s.NewWriter()
		if _, err := Ingest(context.Background(), NewReader(bytes.NewReader(narBytes)), w); err != nil {
			b.Fatal(err)
		}
		if err := w.Commit(); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		s.Close()
		os.RemoveAll(dir)
		b.StartTimer()
	}
}

// BenchmarkRender measures castore -> NAR into io.Discard.
func BenchmarkRender(b *testing.B) {
	narBytes := benchNAR(b)
	s, err := castore.Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	w := s.NewWriter()
	root, err := Ingest(context.Background(), NewReader(bytes.NewReader(narBytes)), w)
	if err != nil {
		b.Fatal(err)
	}
	w.Commit()
	b.SetBytes(int64(len(narBytes)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r := s.NewReader()
		if err := Render(context.Background(), io.Discard, root, r); err != nil {
			b.Fatal(err)
		}
		r.Close()
	}
}
