package httpcache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/p2pstore/p2pstore/narview/nar"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

const testHash = "0a8dxr1ivgbz2ambz6ymxy4nbz1gjzfy"

// fakePaths holds one path whose NAR is nar; xz NARs wait for release.
type fakePaths struct {
	nar     []byte
	info    *pathinfo.Info
	release chan struct{}
	started chan struct{} // an xz NAR has begun
	zstSize int64         // the .nar.zst's size when known (NARSize), else 0
}

func newFakePaths(narBytes []byte) *fakePaths {
	return &fakePaths{nar: narBytes, release: make(chan struct{}), started: make(chan struct{}, 100),
		info: &pathinfo.Info{StorePath: "/nix/store/" + testHash + "-x", NarHash: storepath.NarHash{1}, NarSize: uint64(len(narBytes))}}
}

func (f *fakePaths) Info(ctx context.Context, hash string) (*pathinfo.Info, error) {
	if hash != testHash {
		return nil, pathinfo.ErrNotFound
	}
	return f.info, nil
}

func (f *fakePaths) NAR(ctx context.Context, info *pathinfo.Info, compression nar.Compression, w io.Writer) error {
	if compression == nar.CompressionXz {
		f.started <- struct{}{}
		select {
		case <-f.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	_, err := w.Write(f.nar)
	return err
}

func (f *fakePaths) NARRange(ctx context.Context, info *pathinfo.Info, off, n int64, w io.Writer) error {
	_, err := w.Write(f.nar[off : off+n])
	return err
}

func (f *fakePaths) NARSize(info *pathinfo.Info, c nar.Compression) (int64, bool) {
	switch {
	case c == nar.CompressionNone:
		return int64(len(f.nar)), true
	case c == nar.CompressionZstd && f.zstSize > 0:
		return f.zstSize, true
	}
	return 0, false
}

func (f *fakePaths) url(suffix string) string {
	return "/nar/" + testHash + "-" + f.info.NarHash.String()[len("sha256:"):] + suffix
}

// A NAR answers a single byte range with its slice (206), one past the
// end with 416, and anything else with the whole NAR (200), always with
// Accept-Ranges; compressed NARs are never ranged.
func TestRange(t *testing.T) {
	narBytes := make([]byte, 1000)
	for i := range narBytes {
		narBytes[i] = byte(i * 7)
	}
	f := newFakePaths(narBytes)
	h := New(f, Options{StoreDir: "/nix/store"})
	for _, tc := range []struct {
		header   string
		code     int
		from, to int // the slice expected, for 200 and 206
	}{
		{"", 200, 0, 1000},
		{"bytes=0-99", 206, 0, 100},
		{"bytes=500-", 206, 500, 1000},
		{"bytes=999-999", 206, 999, 1000},
		{"bytes=-1", 206, 999, 1000},
		{"bytes=-300", 206, 700, 1000},
		{"bytes=-5000", 206, 0, 1000},
		{"bytes=990-2000", 206, 990, 1000},
		{"bytes= 10-19", 206, 10, 20},
		{"bytes=1000-", 416, 0, 0},
		{"bytes=5000-6000", 416, 0, 0},
		{"bytes=-0", 416, 0, 0},
		{"bytes=0-1,5-6", 200, 0, 1000},
		{"bytes=5-1", 200, 0, 1000},
		{"bytes=abc", 200, 0, 1000},
		{"bytes=-", 200, 0, 1000},
		{"bytes=+1-2", 200, 0, 1000},
		{"items=0-1", 200, 0, 1000},
		{"bytes=99999999999999999999-", 200, 0, 1000},
	} {
		for _, method := range []string{"GET", "HEAD"} {
			req := httptest.NewRequest(method, f.url(".nar"), nil)
			if tc.header != "" {
				req.Header.Set("Range", tc.header)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			res := rec.Result()
			if res.StatusCode != tc.code || res.Header.Get("Accept-Ranges") != "bytes" {
				t.Errorf("%s Range %q: %d, Accept-Ranges %q; want %d", method, tc.header, res.StatusCode, res.Header.Get("Accept-Ranges"), tc.code)
				continue
			}
			switch tc.code {
			case 206:
				want := fmt.Sprintf("bytes %d-%d/1000", tc.from, tc.to-1)
				if cr := res.Header.Get("Content-Range"); cr != want {
					t.Errorf("%s Range %q: Content-Range %q, want %q", method, tc.header, cr, want)
				}
			case 416:
				if cr := res.Header.Get("Content-Range"); cr != "bytes */1000" {
					t.Errorf("%s Range %q: Content-Range %q", method, tc.header, cr)
				}
				continue
			}
			if cl := res.Header.Get("Content-Length"); cl != strconv.Itoa(tc.to-tc.from) {
				t.Errorf("%s Range %q: Content-Length %s, want %d", method, tc.header, cl, tc.to-tc.from)
			}
			if method == "GET" && !bytes.Equal(rec.Body.Bytes(), narBytes[tc.from:tc.to]) {
				t.Errorf("GET Range %q: %d bytes, not the NAR's %d-%d", tc.header, rec.Body.Len(), tc.from, tc.to)
			}
		}
	}
	// An If-Range names a validator this server never sent: the whole NAR.
	req := httptest.NewRequest("GET", f.url(".nar"), nil)
	req.Header.Set("Range", "bytes=0-9")
	req.Header.Set("If-Range", `"x"`)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != 200 || rec.Body.Len() != 1000 {
		t.Errorf("Range with If-Range: %d, %d bytes", rec.Code, rec.Body.Len())
	}
	// Compressed NARs: no ranges.
	close(f.release)
	for _, suffix := range []string{".nar.zst", ".nar.xz"} {
		req := httptest.NewRequest("GET", f.url(suffix), nil)
		req.Header.Set("Range", "bytes=0-9")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 200 || rec.Header().Get("Accept-Ranges") != "" || rec.Header().Get("Content-Range") != "" {
			t.Errorf("%s with a Range: %d, Accept-Ranges %q", suffix, rec.Code, rec.Header().Get("Accept-Ranges"))
		}
	}
}

// At most MaxXz .nar.xz responses run at once: one more gets 503 with
// Retry-After at once and no NAR; other NARs are not held up; once one
// ends, the next xz request is served.
func TestXzBound(t *testing.T) {
	f := newFakePaths([]byte("nar bytes"))
	srv := httptest.NewServer(New(f, Options{StoreDir: "/nix/store", MaxXz: 2}))
	defer srv.Close()
	release := sync.OnceFunc(func() { close(f.release) })
	defer release()
	client := &http.Client{Timeout: 5 * time.Second}
	var wg sync.WaitGroup
	results := make(chan int, 2)
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(srv.URL + f.url(".nar.xz"))
			if err != nil {
				t.Error(err)
				results <- 0
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			results <- resp.StatusCode
		}()
	}
	for i := 0; i < 2; i++ {
		select {
		case <-f.started:
		case <-time.After(10 * time.Second):
			t.Fatal("the xz NARs did not start")
		}
	}
	resp, err := client.Get(srv.URL + f.url(".nar.xz"))
	if err != nil {
		t.Fatalf("a third xz NAR: %v; want 503 at once", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || strings.Contains(string(body), "nar bytes") {
		t.Errorf("a third xz NAR: %d, Retry-After %q, body %q; want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	for _, suffix := range []string{".nar", ".nar.zst"} {
		resp, err := http.Get(srv.URL + f.url(suffix))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s while the xz slots are taken: %d", suffix, resp.StatusCode)
		}
	}
	release()
	wg.Wait()
	for i := 0; i < 2; i++ {
		if code := <-results; code != 200 {
			t.Errorf("a running xz NAR ended with %d", code)
		}
	}
	resp, err = http.Get(srv.URL + f.url(".nar.xz"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("an xz NAR once the others ended: %d", resp.StatusCode)
	}
}

// readFromRecorder is a ResponseWriter that, like the server's, takes a
// body by ReadFrom; it counts the calls.
type readFromRecorder struct {
	*httptest.ResponseRecorder
	readFroms int
}

func (r *readFromRecorder) ReadFrom(src io.Reader) (int64, error) {
	r.readFroms++
	return io.Copy(r.ResponseRecorder, src)
}

// readFromPaths sends its NAR by the writer's ReadFrom, as castore's
// ranges of pack files go (sendfile underneath).
type readFromPaths struct{ *fakePaths }

func (f readFromPaths) NAR(ctx context.Context, info *pathinfo.Info, compression nar.Compression, w io.Writer) error {
	rf, ok := w.(io.ReaderFrom)
	if !ok {
		return fmt.Errorf("the NAR's writer %T has no ReadFrom", w)
	}
	_, err := rf.ReadFrom(bytes.NewReader(f.nar))
	return err
}

// The writer a NAR is rendered to keeps the ResponseWriter's ReadFrom,
// and the status goes out with the first byte.
func TestNARWriterKeepsReadFrom(t *testing.T) {
	f := newFakePaths([]byte("nix-archive-1 and the rest"))
	h := New(readFromPaths{f}, Options{StoreDir: "/nix/store"})
	rec := &readFromRecorder{ResponseRecorder: httptest.NewRecorder()}
	h.ServeHTTP(rec, httptest.NewRequest("GET", f.url(".nar"), nil))
	if rec.Code != http.StatusOK || rec.Body.String() != string(f.nar) {
		t.Fatalf("GET: %d %q", rec.Code, rec.Body.String())
	}
	if rec.readFroms != 1 {
		t.Errorf("%d ReadFrom calls reached the ResponseWriter, want 1", rec.readFroms)
	}
}

// failingPaths fails every NAR before its first byte, as a node does when
// a path it announced cannot be delivered after all.
type failingPaths struct{ *fakePaths }

func (f failingPaths) NAR(ctx context.Context, info *pathinfo.Info, compression nar.Compression, w io.Writer) error {
	return errors.New("disk on fire")
}

// TestNARFailureIsNotFound: a NAR the node cannot deliver is a 404, which
// sends Nix to its next substituter, never a 5xx, which fails the
// substitution.
func TestNARFailureIsNotFound(t *testing.T) {
	f := newFakePaths([]byte("nix-archive-1 and the rest"))
	h := New(failingPaths{f}, Options{StoreDir: "/nix/store"})
	for _, suffix := range []string{".nar", ".nar.zst"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", f.url(suffix), nil))
		if rec.Code != http.StatusNotFound || rec.Header().Get("Content-Length") == fmt.Sprint(len(f.nar)) {
			t.Errorf("GET %s of a NAR that fails: %d, Content-Length %q", suffix, rec.Code, rec.Header().Get("Content-Length"))
		}
	}
}

// TestKnownCompressedSize: a .nar.zst whose size the node knows (a NAR
// kept as a file) gets FileSize in the /zstd narinfo and a Content-Length;
// one it does not know gets neither.
func TestKnownCompressedSize(t *testing.T) {
	// Large enough that net/http does not buffer the whole body and
	// count it itself.
	f := newFakePaths(bytes.Repeat([]byte("a NAR of some bytes"), 10000))
	srv := httptest.NewServer(New(f, Options{StoreDir: "/nix/store", Log: slog.New(slog.DiscardHandler)}))
	defer srv.Close()
	for _, known := range []int64{0, int64(len(f.nar))} {
		f.zstSize = known
		resp, err := http.Get(srv.URL + "/zstd/" + testHash + ".narinfo")
		if err != nil {
			t.Fatal(err)
		}
		text, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		hasSize := strings.Contains(string(text), fmt.Sprintf("\nFileSize: %d\n", known))
		if hasSize != (known > 0) || known == 0 && strings.Contains(string(text), "FileSize:") {
			t.Errorf("known size %d: narinfo\n%s", known, text)
		}
		resp, err = http.Get(srv.URL + f.url(".nar.zst"))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if want := map[bool]int64{true: known, false: -1}[known > 0]; resp.ContentLength != want {
			t.Errorf("known size %d: Content-Length %d", known, resp.ContentLength)
		}
	}
}
