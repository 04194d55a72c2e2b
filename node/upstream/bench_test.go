package upstream

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/p2pstore/p2pstore/narview/pathinfo"
)

// BenchmarkLzipOpen measures Open of an lzip NAR from a loopback HTTP
// server, read to the end: decoded by the lzip command (as the node does
// where it is installed) and by internal/lzip, in NAR bytes per second.
// $P2PSTORE_BENCH_LZIP is the file (bench/lzip.sh makes them from the
// go1.25.0 toolchain's NAR); without it the benchmark is skipped.
func BenchmarkLzipOpen(b *testing.B) {
	name := os.Getenv("P2PSTORE_BENCH_LZIP")
	if name == "" {
		b.Skip("set P2PSTORE_BENCH_LZIP to an lzip file (bench/lzip.sh makes them)")
	}
	file, err := os.ReadFile(name)
	if err != nil {
		b.Fatal(err)
	}
	narSize := lzipDataSize(b, file)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(file))
	}))
	defer srv.Close()
	c, err := New(Config{URLs: []string{srv.URL}, StoreDir: storeDir})
	if err != nil {
		b.Fatal(err)
	}
	p := &Path{Info: &pathinfo.Info{NarSize: uint64(narSize)}, URL: srv.URL + "/nar", Compression: "lzip"}
	for _, command := range []bool{true, false} {
		name := "command"
		if !command {
			name = "go"
		}
		b.Run(name, func(b *testing.B) {
			if !command {
				old := lzipCommand
				lzipCommand = "p2pstore-bench-no-lzip"
				defer func() { lzipCommand = old }()
			}
			b.SetBytes(narSize)
			for b.Loop() {
				r, err := c.Open(context.Background(), p)
				if err != nil {
					b.Fatal(err)
				}
				n, err := io.Copy(io.Discard, r)
				r.Close()
				if err != nil || n != narSize {
					b.Fatalf("%d bytes of %d: %v", n, narSize, err)
				}
			}
		})
	}
}

// lzipDataSize adds up the data sizes of an lzip file's members, walking
// back through their trailers (data size, then member size, at the end
// of each).
func lzipDataSize(b *testing.B, file []byte) int64 {
	var size int64
	for end := len(file); end > 0; {
		if end < 26 {
			b.Fatal("not an lzip file")
		}
		size += int64(binary.LittleEndian.Uint64(file[end-16 : end-8]))
		member := int(binary.LittleEndian.Uint64(file[end-8 : end]))
		if member < 26 || member > end {
			b.Fatal("not an lzip file")
		}
		end -= member
	}
	return size
}
