package upstream

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/p2pstore/p2pstore/internal/lzip"
	"github.com/p2pstore/p2pstore/narview/narinfo"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

const storeDir = "/nix/store"

// fixture is one path an upstream offers: its NAR (any bytes do: the
// client does not parse them) and a narinfo signed by key.
type fixture struct {
	hash, path string
	nar        []byte
	key        narinfo.SecretKey
}

func newFixture(t *testing.T, seed uint64, size int) *fixture {
	t.Helper()
	const alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
	r := rand.New(rand.NewPCG(seed, 1))
	var h [32]byte
	for i := range h {
		h[i] = alphabet[r.IntN(len(alphabet))]
	}
	nar := make([]byte, size)
	for i := range nar {
		nar[i] = byte(r.IntN(16)) // compressible, not trivially
	}
	key, err := narinfo.GenerateKey("upstream-1")
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{hash: string(h[:]), path: storeDir + "/" + string(h[:]) + "-hello", nar: nar, key: key}
}

func (f *fixture) narHash() storepath.NarHash { return sha256.Sum256(f.nar) }

func (f *fixture) sig() string {
	return f.key.Sign(narinfo.Fingerprint(f.path, f.narHash(), uint64(len(f.nar)), nil))
}

// narinfo is the fixture's narinfo text, fields in Nix's order, with the
// given URL and Compression lines (omitted when empty) and extra lines.
func (f *fixture) narinfo(url, compression string, extra ...string) string {
	lines := []string{"StorePath: " + f.path, "URL: " + url}
	if compression != "" {
		lines = append(lines, "Compression: "+compression)
	}
	lines = append(lines, "NarHash: "+f.narHash().String(), "NarSize: "+strconv.Itoa(len(f.nar)), "References: ", "Sig: "+f.sig())
	lines = append(lines, extra...)
	return strings.Join(lines, "\n") + "\n"
}

func compress(t *testing.T, c string, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	var w io.WriteCloser
	var err error
	switch c {
	case "none":
		return data
	case "xz":
		w, err = xz.NewWriter(&b)
	case "zstd":
		w, err = zstd.NewWriter(&b)
	case "gzip":
		w = gzip.NewWriter(&b)
	case "br":
		w = brotli.NewWriter(&b)
	case "bzip2", "":
		// The standard library reads bzip2 but cannot write it.
		return compressCommand(t, data, "bzip2", "-c")
	case "lzip":
		// Nothing here writes lzip.
		return compressCommand(t, data, "lzip", "-c")
	default:
		t.Fatalf("compression %q", c)
	}
	if err != nil {
		t.Fatal(err)
	}
	w.Write(data)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// compressCommand is data compressed by a command, or skips t when the
// command is not installed (scripts/test.sh installs them).
func compressCommand(t *testing.T, data []byte, command string, args ...string) []byte {
	t.Helper()
	if _, err := exec.LookPath(command); err != nil {
		t.Skipf("%s not installed: this case needs the %s command to make its NAR", command, command)
	}
	cmd := exec.Command(command, args...)
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// routes is a test upstream: exact paths to handlers, 404 otherwise; it
// counts requests by path.
type routes struct {
	m     map[string]http.HandlerFunc
	count map[string]*atomic.Int64
}

func newRoutes() *routes {
	return &routes{m: map[string]http.HandlerFunc{}, count: map[string]*atomic.Int64{}}
}

func (r *routes) handle(path string, h http.HandlerFunc) {
	r.m[path] = h
	r.count[path] = new(atomic.Int64)
}

func (r *routes) text(path, body string) {
	r.handle(path, func(w http.ResponseWriter, req *http.Request) { io.WriteString(w, body) })
}

// file serves body with ranges (http.ServeContent).
func (r *routes) file(path string, body []byte) {
	r.handle(path, func(w http.ResponseWriter, req *http.Request) {
		http.ServeContent(w, req, "", time.Time{}, bytes.NewReader(body))
	})
}

func (r *routes) hits(path string) int64 { return r.count[path].Load() }

func (r *routes) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	h, ok := r.m[req.URL.Path]
	if !ok {
		http.NotFound(w, req)
		return
	}
	r.count[req.URL.Path].Add(1)
	h(w, req)
}

func serve(t *testing.T, h http.Handler) *httptest.Server {
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s
}

func newClient(t *testing.T, keys []narinfo.PublicKey, urls ...string) *Client {
	t.Helper()
	c, err := New(Config{URLs: urls, Keys: keys, StoreDir: storeDir, IdleTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// fetchNAR looks the fixture up and reads its NAR through the client.
func fetchNAR(t *testing.T, c *Client, f *fixture) ([]byte, *Path) {
	t.Helper()
	ctx := ctxTimeout(t, 10*time.Second)
	p, err := c.Lookup(ctx, f.hash)
	if err != nil {
		t.Fatalf("lookup: %v", err)
	}
	r, err := c.Open(ctx, p)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("reading the NAR: %v", err)
	}
	return got, p
}

func TestCompressions(t *testing.T) {
	for _, c := range []string{"none", "xz", "zstd", "bzip2", "gzip", "br", "lzip", ""} {
		name := c
		if c == "" {
			name = "missing=bzip2"
		}
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, 1, 300<<10)
			rt := newRoutes()
			body := compress(t, c, f.nar)
			rt.text("/"+f.hash+".narinfo", f.narinfo("nar/x.nar.any", c))
			rt.file("/nar/x.nar.any", body)
			s := serve(t, rt)
			cl := newClient(t, []narinfo.PublicKey{f.key.Public()}, s.URL)
			got, p := fetchNAR(t, cl, f)
			if !bytes.Equal(got, f.nar) {
				t.Fatalf("NAR of %d bytes differs from the %d sent", len(got), len(f.nar))
			}
			if p.Info.NarHash != f.narHash() || p.Info.NarSize != uint64(len(f.nar)) || p.Info.StorePath != f.path {
				t.Fatalf("info %+v", p.Info)
			}
			if cl.BytesReceived() < uint64(len(body)) {
				t.Fatalf("BytesReceived %d, want at least the %d compressed bytes", cl.BytesReceived(), len(body))
			}
			if hits, misses := cl.Lookups(); hits != 1 || misses != 0 {
				t.Fatalf("%d hits and %d misses counted, want 1 and 0", hits, misses)
			}
		})
	}
}

func TestNarinfoFieldsAnyOrderUnknownIgnored(t *testing.T) {
	f := newFixture(t, 2, 1000)
	text := f.narinfo("nar/a.nar", "none", "Unknown: whatever", "System: x86_64-linux", "FileSize: 1000")
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	for i, j := 0, len(lines)-1; i < j; i, j = i+1, j-1 {
		lines[i], lines[j] = lines[j], lines[i]
	}
	rt := newRoutes()
	rt.text("/"+f.hash+".narinfo", strings.Join(lines, "\n")+"\n")
	rt.file("/nar/a.nar", f.nar)
	s := serve(t, rt)
	got, _ := fetchNAR(t, newClient(t, []narinfo.PublicKey{f.key.Public()}, s.URL), f)
	if !bytes.Equal(got, f.nar) {
		t.Fatal("NAR differs")
	}
}

func TestURLsAndRedirects(t *testing.T) {
	f := newFixture(t, 3, 5000)
	other := newRoutes()
	other.file("/elsewhere/b.nar", f.nar)
	os := serve(t, other)
	cases := map[string]func(rt *routes){
		"relative": func(rt *routes) {
			rt.text("/cache/"+f.hash+".narinfo", f.narinfo("nar/a.nar", "none"))
			rt.file("/cache/nar/a.nar", f.nar)
		},
		"absolute": func(rt *routes) {
			rt.text("/cache/"+f.hash+".narinfo", f.narinfo(os.URL+"/elsewhere/b.nar", "none"))
		},
		"redirects": func(rt *routes) {
			rt.handle("/cache/"+f.hash+".narinfo", func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, "/moved/"+f.hash+".narinfo", http.StatusFound)
			})
			rt.text("/moved/"+f.hash+".narinfo", f.narinfo("nar/a.nar", "none"))
			rt.handle("/cache/nar/a.nar", func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, os.URL+"/elsewhere/b.nar", http.StatusMovedPermanently)
			})
		},
	}
	for name, setup := range cases {
		t.Run(name, func(t *testing.T) {
			rt := newRoutes()
			setup(rt)
			s := serve(t, rt)
			got, _ := fetchNAR(t, newClient(t, []narinfo.PublicKey{f.key.Public()}, s.URL+"/cache"), f)
			if !bytes.Equal(got, f.nar) {
				t.Fatal("NAR differs")
			}
		})
	}
}

func TestNotThere(t *testing.T) {
	for _, code := range []int{http.StatusNotFound, http.StatusGone, http.StatusForbidden} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			f := newFixture(t, 4, 100)
			rt := newRoutes()
			rt.handle("/"+f.hash+".narinfo", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(code) })
			s := serve(t, rt)
			c := newClient(t, []narinfo.PublicKey{f.key.Public()}, s.URL)
			for range 2 {
				if _, err := c.Lookup(ctxTimeout(t, 5*time.Second), f.hash); !errors.Is(err, pathinfo.ErrNotFound) {
					t.Fatalf("got %v, want not found", err)
				}
			}
			if n := rt.hits("/" + f.hash + ".narinfo"); n != 1 {
				t.Fatalf("the upstream was asked %d times; the miss should be remembered", n)
			}
			if hits, misses := c.Lookups(); hits != 0 || misses != 1 {
				t.Fatalf("%d hits and %d misses counted, want 0 and 1 (the remembered miss asked no upstream)", hits, misses)
			}
		})
	}
}

func TestSignatures(t *testing.T) {
	f := newFixture(t, 5, 100)
	// A stale key under the trusted key's name (a rotated key), and a key
	// nobody trusts.
	stale, _ := narinfo.GenerateKey("upstream-1")
	stranger, _ := narinfo.GenerateKey("stranger-1")
	fp := narinfo.Fingerprint(f.path, f.narHash(), uint64(len(f.nar)), nil)
	badSig, strangerSig := stale.Sign(fp), stranger.Sign(fp)

	rt := newRoutes()
	rt.text("/"+f.hash+".narinfo", f.narinfo("nar/a.nar", "none", "Sig: "+badSig, "Sig: "+strangerSig))
	s := serve(t, rt)
	c := newClient(t, []narinfo.PublicKey{f.key.Public()}, s.URL)
	p, err := c.Lookup(ctxTimeout(t, 5*time.Second), f.hash)
	if err != nil {
		t.Fatalf("a bad extra signature beside a good one: %v", err)
	}
	// The upstream's signatures unchanged but for the stale one under a
	// trusted key's name: the stranger's is not ours to drop.
	if want := []string{f.sig(), strangerSig}; !slices.Equal(p.Info.Sigs, want) {
		t.Fatalf("kept signatures %q, want %q", p.Info.Sigs, want)
	}

	// Only signatures that do not verify: not trusted, not there.
	g := newFixture(t, 6, 100)
	rt.text("/"+g.hash+".narinfo", strings.Replace(g.narinfo("nar/a.nar", "none"), "Sig: "+g.sig(), "Sig: "+stale.Sign(fp), 1))
	c = newClient(t, []narinfo.PublicKey{g.key.Public()}, s.URL)
	if _, err := c.Lookup(ctxTimeout(t, 5*time.Second), g.hash); !errors.Is(err, pathinfo.ErrNotFound) {
		t.Fatalf("an unsigned path: got %v, want not found", err)
	}
}

// hungListener accepts connections and never answers.
func hungListener(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	return "http://" + ln.Addr().String()
}

func TestHungUpstream(t *testing.T) {
	f := newFixture(t, 7, 100)
	hung := hungListener(t)

	// Alone: the caller's deadline holds.
	c := newClient(t, []narinfo.PublicKey{f.key.Public()}, hung)
	start := time.Now()
	_, err := c.Lookup(ctxTimeout(t, 500*time.Millisecond), f.hash)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want the deadline", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("answered after %v", d)
	}

	// Beside a working one: the working one's answer comes at once.
	rt := newRoutes()
	rt.text("/"+f.hash+".narinfo", f.narinfo("nar/a.nar", "none"))
	s := serve(t, rt)
	c = newClient(t, []narinfo.PublicKey{f.key.Public()}, hung, s.URL)
	start = time.Now()
	p, err := c.Lookup(ctxTimeout(t, 5*time.Second), f.hash)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second || p.Upstream != s.URL {
		t.Fatalf("answered by %s after %v", p.Upstream, d)
	}
}

// breakingNAR serves body, but cuts the connection after half of it on
// the first request; later requests get ranges when ranges is set, the
// whole body otherwise.
func breakingNAR(body []byte, ranges bool) http.HandlerFunc {
	var first atomic.Bool
	first.Store(true)
	return func(w http.ResponseWriter, r *http.Request) {
		if first.Swap(false) {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			w.Write(body[:len(body)/2])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
		if !ranges {
			r.Header.Del("Range")
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
	}
}

func TestBodyBreaksAndResumes(t *testing.T) {
	for _, ranges := range []bool{true, false} {
		t.Run(fmt.Sprintf("ranges=%v", ranges), func(t *testing.T) {
			f := newFixture(t, 8, 2<<20)
			body := compress(t, "zstd", f.nar)
			var gotRange atomic.Value
			gotRange.Store("")
			rt := newRoutes()
			rt.text("/"+f.hash+".narinfo", f.narinfo("nar/a.nar.zst", "zstd"))
			brk := breakingNAR(body, ranges)
			rt.handle("/nar/a.nar.zst", func(w http.ResponseWriter, r *http.Request) {
				if h := r.Header.Get("Range"); h != "" {
					gotRange.Store(h)
				}
				brk(w, r)
			})
			s := serve(t, rt)
			c := newClient(t, []narinfo.PublicKey{f.key.Public()}, s.URL)
			p, err := c.Lookup(ctxTimeout(t, 10*time.Second), f.hash)
			if err != nil {
				t.Fatal(err)
			}
			r, err := c.Open(ctxTimeout(t, 10*time.Second), p)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			got, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(got, f.nar) {
				t.Fatalf("NAR differs after the resume (%v)", err)
			}
			// What the NAR read: the whole body, and without ranges the
			// part read again up to where it broke.
			received := r.(interface{ BytesReceived() uint64 }).BytesReceived()
			if ranges && received != uint64(len(body)) || !ranges && received <= uint64(len(body)) {
				t.Fatalf("the NAR counts %d bytes received for a body of %d (ranges %v)", received, len(body), ranges)
			}
			if all := c.BytesReceived(); all != received+uint64(len(f.narinfo("nar/a.nar.zst", "zstd"))) {
				t.Fatalf("the client counts %d bytes, the NAR %d", all, received)
			}
			if n := rt.hits("/nar/a.nar.zst"); n != 2 {
				t.Fatalf("%d requests for the NAR, want 2", n)
			}
			if h := gotRange.Load().(string); !strings.HasPrefix(h, "bytes=") || h == "bytes=0-" {
				t.Fatalf("the second request asked for range %q, want one from where the body broke", h)
			}
		})
	}
}

func TestBodyBreaksForGood(t *testing.T) {
	f := newFixture(t, 9, 1<<20)
	rt := newRoutes()
	rt.text("/"+f.hash+".narinfo", f.narinfo("nar/a.nar", "none"))
	rt.handle("/nar/a.nar", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(f.nar)))
		w.Write(f.nar[:1000])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	})
	s := serve(t, rt)
	c := newClient(t, []narinfo.PublicKey{f.key.Public()}, s.URL)
	ctx := ctxTimeout(t, 20*time.Second)
	p, err := c.Lookup(ctx, f.hash)
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.Open(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := io.ReadAll(r); err == nil {
		t.Fatal("a NAR that always breaks read without error")
	}
	if n := rt.hits("/nar/a.nar"); n != int64(defaultRetries)+1 {
		t.Fatalf("%d requests, want %d", n, defaultRetries+1)
	}
}

func TestBreakerSkipsFailingUpstream(t *testing.T) {
	rt := newRoutes()
	var hits atomic.Int64
	h := func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.Error(w, "down", http.StatusInternalServerError)
	}
	fixtures := make([]*fixture, 6)
	for i := range fixtures {
		fixtures[i] = newFixture(t, uint64(100+i), 10)
		rt.handle("/"+fixtures[i].hash+".narinfo", h)
	}
	s := serve(t, rt)
	c := newClient(t, nil, s.URL)
	for _, f := range fixtures {
		if _, err := c.Lookup(ctxTimeout(t, 5*time.Second), f.hash); !errors.Is(err, pathinfo.ErrNotFound) {
			t.Fatalf("got %v, want not found", err)
		}
	}
	if n := hits.Load(); n != breakerFails {
		t.Fatalf("a failing upstream was asked %d times, want %d before its breaker opens", n, breakerFails)
	}
}

// openServed serves the fixture with body as its NAR, so compressed, and
// opens it through a client: Open's answer.
func openServed(t *testing.T, f *fixture, compression string, body []byte) (io.ReadCloser, error) {
	t.Helper()
	rt := newRoutes()
	rt.text("/"+f.hash+".narinfo", f.narinfo("nar/x", compression))
	rt.file("/nar/x", body)
	s := serve(t, rt)
	c := newClient(t, []narinfo.PublicKey{f.key.Public()}, s.URL)
	ctx := ctxTimeout(t, 20*time.Second)
	p, err := c.Lookup(ctx, f.hash)
	if err != nil {
		t.Fatal(err)
	}
	return c.Open(ctx, p)
}

// withoutCommand makes the decoding command of compression c (xz, lzip)
// one that is not installed, for the rest of t: the Go decoder decodes.
func withoutCommand(t *testing.T, c string) {
	v := map[string]*string{"xz": &xzCommand, "lzip": &lzipCommand}[c]
	old := *v
	*v = "p2pstore-test-no-such-" + c
	t.Cleanup(func() { *v = old })
}

// TestWithoutCommand: without the xz or lzip command, ulikunitz/xz and
// internal/lzip decode.
func TestWithoutCommand(t *testing.T) {
	for _, c := range []string{"xz", "lzip"} {
		t.Run(c, func(t *testing.T) {
			withoutCommand(t, c)
			f := newFixture(t, 10, 300<<10)
			rt := newRoutes()
			rt.text("/"+f.hash+".narinfo", f.narinfo("nar/x.nar."+c, c))
			rt.file("/nar/x.nar."+c, compress(t, c, f.nar))
			s := serve(t, rt)
			got, _ := fetchNAR(t, newClient(t, []narinfo.PublicKey{f.key.Public()}, s.URL), f)
			if !bytes.Equal(got, f.nar) {
				t.Fatal("NAR differs")
			}
		})
	}
}

// TestLzipTrailingData: an lzip NAR with bytes after its last member
// fails with either decoder, the command's with what it said on stderr.
func TestLzipTrailingData(t *testing.T) {
	for _, command := range []bool{true, false} {
		t.Run(fmt.Sprintf("command=%v", command), func(t *testing.T) {
			if !command {
				withoutCommand(t, "lzip")
			}
			f := newFixture(t, 14, 100<<10)
			r, err := openServed(t, f, "lzip", append(compress(t, "lzip", f.nar), "appended"...))
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			_, err = io.ReadAll(r)
			switch {
			case err == nil:
				t.Fatal("a NAR with trailing data read without error")
			case command && !strings.HasPrefix(err.Error(), "lzip: exit status") || command && !strings.Contains(strings.ToLower(err.Error()), "trailing data"):
				t.Fatalf("the lzip command's error does not carry its stderr: %v", err)
			case !command && !errors.Is(err, lzip.ErrCorrupt):
				t.Fatalf("got %v, want lzip.ErrCorrupt", err)
			}
		})
	}
}

// TestCorruptCompressed: a compressed NAR damaged in its middle fails to
// read, whichever decoder reads it, and closing it ends its decoder.
func TestCorruptCompressed(t *testing.T) {
	for _, c := range []string{"xz", "zstd", "gzip", "bzip2", "lzip", "lzip-in-go"} {
		t.Run(c, func(t *testing.T) {
			if c == "lzip-in-go" {
				c = "lzip"
				withoutCommand(t, c)
			}
			f := newFixture(t, 11, 1<<20)
			body := bytes.Clone(compress(t, c, f.nar))
			for i := len(body) / 2; i < len(body)/2+64; i++ {
				body[i] ^= 0x55
			}
			r, err := openServed(t, f, c, body)
			if err != nil {
				return // refused at once: fine
			}
			got, err := io.ReadAll(r)
			r.Close()
			if err == nil && bytes.Equal(got, f.nar) {
				t.Fatal("a damaged stream decoded to the NAR")
			}
			if err == nil {
				t.Fatalf("a damaged stream read without error (%d bytes)", len(got))
			}
		})
	}
}

// TestCloseMidStream: closing a NAR half read ends the decoding command
// (xz, lzip) even while the upstream holds the rest back: killed, and
// waited for.
func TestCloseMidStream(t *testing.T) {
	for _, c := range []string{"xz", "lzip"} {
		t.Run(c, func(t *testing.T) {
			f := newFixture(t, 12, 1<<20)
			body := compress(t, c, f.nar)
			if c == "lzip" {
				// The lzip command writes its output a dictionary at a
				// time (8 MiB at its default level): half of this NAR
				// would give nothing to read before the stall. -0 has a
				// 64 KiB one.
				body = compressCommand(t, f.nar, "lzip", "-c", "-0")
			}
			release := make(chan struct{})
			rt := newRoutes()
			rt.text("/"+f.hash+".narinfo", f.narinfo("nar/x.nar", c))
			rt.handle("/nar/x.nar", func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", strconv.Itoa(len(body)))
				w.Write(body[:len(body)/2])
				w.(http.Flusher).Flush()
				select {
				case <-release:
				case <-r.Context().Done():
				}
			})
			s := serve(t, rt)
			defer close(release)
			cl := newClient(t, []narinfo.PublicKey{f.key.Public()}, s.URL)
			ctx := ctxTimeout(t, 20*time.Second)
			p, err := cl.Lookup(ctx, f.hash)
			if err != nil {
				t.Fatal(err)
			}
			r, err := cl.Open(ctx, p)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(r, make([]byte, 1000)); err != nil {
				t.Fatal(err)
			}
			d, ok := r.(*decompressed).Reader.(*decoderProcess)
			if !ok {
				t.Skipf("the %s command is not installed", c)
			}
			closed := make(chan struct{})
			go func() {
				r.Close()
				close(closed)
			}()
			select {
			case <-closed:
			case <-time.After(10 * time.Second):
				t.Fatal("Close hung on a stalled upstream")
			}
			if st := d.cmd.ProcessState; st == nil || st.Success() {
				t.Fatalf("the %s command was not killed and waited for: %v", c, st)
			}
		})
	}
}

// TestBreakerReprobes: an upstream whose breaker opened is asked again
// once a probe of its nix-cache-info succeeds.
func TestBreakerReprobes(t *testing.T) {
	var down atomic.Bool
	down.Store(true)
	var probes atomic.Int64
	f := newFixture(t, 13, 100)
	rt := newRoutes()
	rt.handle("/nix-cache-info", func(w http.ResponseWriter, r *http.Request) {
		probes.Add(1)
		if down.Load() {
			http.Error(w, "down", http.StatusBadGateway)
			return
		}
		io.WriteString(w, "StoreDir: /nix/store\n")
	})
	rt.handle("/"+f.hash+".narinfo", func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			http.Error(w, "down", http.StatusInternalServerError)
			return
		}
		io.WriteString(w, f.narinfo("nar/a.nar", "none"))
	})
	s := serve(t, rt)
	c, err := New(Config{URLs: []string{s.URL}, Keys: []narinfo.PublicKey{f.key.Public()}, StoreDir: storeDir,
		ErrorTTL: time.Nanosecond, MissTTL: time.Nanosecond, FoundTTL: time.Nanosecond, BreakerOpen: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	lookup := func() error {
		_, err := c.Lookup(ctxTimeout(t, 5*time.Second), f.hash)
		return err
	}
	for range breakerFails {
		if err := lookup(); err == nil {
			t.Fatal("a failing upstream answered")
		}
	}
	before := rt.hits("/" + f.hash + ".narinfo")
	down.Store(false)
	// Skipped while the breaker is open; asked again once a probe finds
	// it back (bounded wait: the pause is 50 ms).
	deadline := time.Now().Add(10 * time.Second)
	for lookup() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("the upstream was not asked again (%d probes)", probes.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if probes.Load() == 0 {
		t.Fatal("no probe of nix-cache-info")
	}
	if rt.hits("/"+f.hash+".narinfo") != before+1 {
		t.Fatalf("narinfo asked %d times after the breaker opened, want once (after the probe)", rt.hits("/"+f.hash+".narinfo")-before)
	}
}

// An upstream that ignores ranges and stalls while the body is read again
// up to where it broke: the idle timeout ends that read too.
func TestStallWhileSkippingToResume(t *testing.T) {
	f := newFixture(t, 12, 1<<20)
	released := make(chan struct{})
	var first atomic.Bool
	first.Store(true)
	rt := newRoutes()
	rt.text("/"+f.hash+".narinfo", f.narinfo("nar/a.nar", "none"))
	rt.handle("/nar/a.nar", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(f.nar)))
		if first.Swap(false) {
			w.Write(f.nar[:len(f.nar)/2])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
		w.Write(f.nar[:1000]) // Range ignored; then nothing
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-released:
		}
	})
	s := serve(t, rt)
	t.Cleanup(func() { close(released) }) // before the server closes
	c, err := New(Config{URLs: []string{s.URL}, Keys: []narinfo.PublicKey{f.key.Public()}, StoreDir: storeDir,
		IdleTimeout: 300 * time.Millisecond, Retries: 1})
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.Lookup(ctxTimeout(t, 5*time.Second), f.hash)
	if err != nil {
		t.Fatal(err)
	}
	// The context of a pull job: it never ends.
	r, err := c.Open(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	read := make(chan error, 1)
	go func() {
		_, err := io.ReadAll(r)
		read <- err
	}()
	select {
	case err := <-read:
		if err == nil {
			t.Fatal("a NAR whose upstream stalled read without error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("still reading 10 s after the upstream stalled (idle timeout 300 ms)")
	}
}

// An upstream that Skip names for a path (its NAR came broken) is not
// asked for it: the lookup takes another's answer, even a slower one.
func TestSkipUpstreamForPath(t *testing.T) {
	f := newFixture(t, 13, 100)
	fast, slow := newRoutes(), newRoutes()
	fast.text("/"+f.hash+".narinfo", f.narinfo("nar/a.nar", "none"))
	slow.handle("/"+f.hash+".narinfo", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(300 * time.Millisecond) // the fast one would win
		io.WriteString(w, f.narinfo("nar/a.nar", "none"))
	})
	fs, ss := serve(t, fast), serve(t, slow)
	var skipped atomic.Bool
	c, err := New(Config{URLs: []string{fs.URL, ss.URL}, Keys: []narinfo.PublicKey{f.key.Public()}, StoreDir: storeDir,
		Skip: func(upstream, hash string) bool { return skipped.Load() && upstream == fs.URL && hash == f.hash }})
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.Lookup(ctxTimeout(t, 5*time.Second), f.hash)
	if err != nil || p.Upstream != fs.URL {
		t.Fatalf("before the skip: %v, %+v; want the fast upstream's answer", err, p)
	}
	skipped.Store(true) // its NAR came broken
	for range 2 {       // a lookup, then the path it found
		p, err = c.Lookup(ctxTimeout(t, 5*time.Second), f.hash)
		if err != nil || p.Upstream != ss.URL {
			t.Fatalf("skipping the fast upstream: %v, %+v; want the slow one's answer", err, p)
		}
	}
	if n := fast.hits("/" + f.hash + ".narinfo"); n != 1 {
		t.Fatalf("the skipped upstream was asked %d times, want once", n)
	}
}
