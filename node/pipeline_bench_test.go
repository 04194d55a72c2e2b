package node

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/p2pstore/p2pstore/config"
	"github.com/p2pstore/p2pstore/internal/httpserve"
	"github.com/p2pstore/p2pstore/narview/guix"
	"github.com/p2pstore/p2pstore/narview/narinfo"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

// BenchmarkPipelinedNarinfos is bench/run.sh's pipelined row inside one
// process, for profiles: 1,000 narinfo GETs of 373 signed tiny paths,
// written at once on one connection to the node's listener (httpserve, as
// Run serves it), then every answer read. guix is the Guix listener (guix
// substitute's way of asking), nix the binary cache's listener.
//
//	TMPDIR=/dev/shm go test -run '^$' -bench Pipelined -cpuprofile cpu.out ./node/
func BenchmarkPipelinedNarinfos(b *testing.B) {
	n := pipelineNode(b)
	for _, side := range []struct {
		name        string
		first       int // the number of its first path
		handler     http.Handler
		connContext func(context.Context, net.Conn) context.Context
	}{
		{"guix", guixFirst, n.GuixHandler(), withMissBudget},
		{"nix", 0, n.Handler(), withConn},
	} {
		b.Run(side.name, func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			srv := &httpserve.Server{Handler: side.handler, ReadHeaderTimeout: 30 * time.Second,
				IdleTimeout: 2 * time.Minute, WriteProgressTimeout: httpWriteProgressTimeout, ConnContext: side.connContext}
			go srv.Serve(ln)
			defer srv.Shutdown(context.Background())
			var reqs bytes.Buffer
			for i := range 1000 {
				fmt.Fprintf(&reqs, "GET /%032d.narinfo HTTP/1.1\r\nHost: %s\r\n\r\n", side.first+i%pipelinePaths, ln.Addr())
			}
			b.ReportAllocs()
			for b.Loop() {
				pipeline(b, ln.Addr().String(), reqs.Bytes(), 1000)
			}
		})
	}
}

const (
	pipelinePaths = 373
	guixFirst     = 1000 // the hash parts of the Guix paths start here
)

// pipelineNode returns a node holding pipelinePaths tiny paths in each
// store, signed: the Nix ones with its key, the Guix ones with its Guix
// key. A hash part is its path's number, the Guix ones from guixFirst
// (the index is keyed by hash part).
func pipelineNode(b *testing.B) *Node {
	dir := b.TempDir()
	nixKey, err := narinfo.GenerateKey("bench-1")
	if err != nil {
		b.Fatal(err)
	}
	guixKey, err := guix.GenerateKey()
	if err != nil {
		b.Fatal(err)
	}
	cfg := &config.Config{DataDir: filepath.Join(dir, "data"), StoreDir: "/nix/store", GuixStoreDir: "/gnu/store",
		DaemonSocket: filepath.Join(dir, "s.sock"), SignKeyFile: filepath.Join(dir, "nix.sec"), GuixSignKeyFile: filepath.Join(dir, "guix.sec")}
	for f, k := range map[string]string{cfg.SignKeyFile: nixKey.String(), cfg.GuixSignKeyFile: guixKey.String()} {
		if err := os.WriteFile(f, []byte(k), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	n, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { n.Close() })
	for first, storeDir := range map[int]string{0: "/nix/store", guixFirst: "/gnu/store"} {
		for i := first; i < first+pipelinePaths; i++ {
			nar := fileNAR(b, fmt.Appendf(nil, "%s %d", storeDir, i))
			info := &pathinfo.Info{StorePath: path.Join(storeDir, fmt.Sprintf("%032d-tiny-%d", i, i)),
				NarHash: storepath.NarHash(sha256.Sum256(nar)), NarSize: uint64(len(nar))}
			if _, err := n.Import(context.Background(), info, bytes.NewReader(nar), ShareSigned); err != nil {
				b.Fatal(err)
			}
		}
	}
	return n
}

// pipeline writes reqs on a new connection to addr and reads count
// answers, each a 200 with a Content-Length.
func pipeline(b *testing.B, addr string, reqs []byte, count int) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	wrote := make(chan error, 1)
	go func() {
		_, err := conn.Write(reqs)
		wrote <- err
	}()
	br := bufio.NewReaderSize(conn, 64<<10)
	for i := range count {
		status, err := br.ReadSlice('\n')
		if err != nil || !bytes.HasPrefix(status, []byte("HTTP/1.1 200 ")) {
			b.Fatalf("answer %d: %q %v", i, status, err)
		}
		length := -1
		for {
			line, err := br.ReadSlice('\n')
			if err != nil {
				b.Fatalf("answer %d: %v", i, err)
			}
			if len(line) <= 2 {
				break
			}
			if v, ok := bytes.CutPrefix(line, []byte("Content-Length: ")); ok {
				length, _ = strconv.Atoi(strings.TrimSpace(string(v)))
			}
		}
		if length < 0 {
			b.Fatalf("answer %d: no Content-Length", i)
		}
		if _, err := br.Discard(length); err != nil {
			b.Fatalf("answer %d: %v", i, err)
		}
	}
	if err := <-wrote; err != nil && err != io.EOF {
		b.Fatal(err)
	}
}
