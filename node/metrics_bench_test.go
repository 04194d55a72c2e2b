package node

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/p2pstore/p2pstore/config"
	"github.com/p2pstore/p2pstore/narview/nar"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

// fileNAR returns the NAR of a single regular file.
func fileNAR(tb testing.TB, contents []byte) []byte {
	tb.Helper()
	var buf bytes.Buffer
	w := nar.NewWriter(&buf)
	if err := w.WriteHeader(&nar.Header{Type: nar.TypeRegular, Size: int64(len(contents))}); err != nil {
		tb.Fatal(err)
	}
	if _, err := w.Write(contents); err != nil {
		tb.Fatal(err)
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// importTiny imports count tiny paths (a file of a few bytes each, its
// own chunk) through the node's import, numbered from first.
func importTiny(tb testing.TB, n *Node, first, count int) {
	tb.Helper()
	for i := first; i < first+count; i++ {
		b := fileNAR(tb, fmt.Appendf(nil, "tiny path %d", i))
		info := &pathinfo.Info{StorePath: fmt.Sprintf("/nix/store/%032d-tiny", i),
			NarHash: storepath.NarHash(sha256.Sum256(b)), NarSize: uint64(len(b))}
		if _, err := n.Import(context.Background(), info, bytes.NewReader(b), ShareDefault); err != nil {
			tb.Fatal(err)
		}
	}
}

// benchNodes are the nodes the benchmarks scrape, by number of paths:
// made once per process (10,000 imports take seconds), in a directory of
// their own that the last benchmark's cleanup does not remove.
var benchNodes = struct {
	sync.Mutex
	dir   string
	nodes map[int]*Node
}{nodes: map[int]*Node{}}

func benchNode(b *testing.B, paths int) *Node {
	benchNodes.Lock()
	defer benchNodes.Unlock()
	if n := benchNodes.nodes[paths]; n != nil {
		return n
	}
	if benchNodes.dir == "" {
		dir, err := os.MkdirTemp("", "p2pstore-bench-")
		if err != nil {
			b.Fatal(err)
		}
		benchNodes.dir = dir
	}
	dir := filepath.Join(benchNodes.dir, fmt.Sprint(paths))
	cfg := &config.Config{DataDir: filepath.Join(dir, "data"), StoreDir: "/nix/store", DaemonSocket: filepath.Join(dir, "s.sock")}
	n, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	importTiny(b, n, 0, paths)
	benchNodes.nodes[paths] = n
	return n
}

func TestMain(m *testing.M) {
	code := m.Run()
	for _, n := range benchNodes.nodes {
		n.Close()
	}
	if benchNodes.dir != "" {
		os.RemoveAll(benchNodes.dir)
	}
	os.Exit(code)
}

// get answers one GET from h and fails unless it is a 200.
func get(tb testing.TB, h http.Handler, path string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	if rec.Code != http.StatusOK {
		tb.Fatalf("GET %s: %d %s", path, rec.Code, rec.Body)
	}
	return rec
}

// benchPaths are the sizes of the nodes the benchmarks scrape:
// P2PSTORE_BENCH_PATHS (numbers separated by commas), else 1,000 and
// 10,000.
func benchPaths(b *testing.B) []int {
	s := os.Getenv("P2PSTORE_BENCH_PATHS")
	if s == "" {
		return []int{1000, 10000}
	}
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			b.Fatalf("P2PSTORE_BENCH_PATHS=%q: want numbers separated by commas", s)
		}
		out = append(out, n)
	}
	return out
}

// BenchmarkScrape is a Prometheus scrape of a node holding 1,000 and
// 10,000 paths (tiny ones, imported through the node's import);
// BenchmarkStatus the status of the same nodes. Neither should grow with
// the paths (BENCHMARKS.md, issue 19):
//
//	TMPDIR=/dev/shm go test -run '^$' -bench 'Scrape|Status' -benchtime 200x -count 5 ./node/
func BenchmarkScrape(b *testing.B) {
	for _, paths := range benchPaths(b) {
		b.Run(fmt.Sprintf("paths=%d", paths), func(b *testing.B) {
			h := benchNode(b, paths).Handler()
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				io.Copy(io.Discard, get(b, h, "/metrics").Body)
			}
		})
	}
}

func BenchmarkStatus(b *testing.B) {
	for _, paths := range benchPaths(b) {
		b.Run(fmt.Sprintf("paths=%d", paths), func(b *testing.B) {
			h := benchNode(b, paths).controlHandler()
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				io.Copy(io.Discard, get(b, h, "/api/v1/status").Body)
			}
		})
	}
}
