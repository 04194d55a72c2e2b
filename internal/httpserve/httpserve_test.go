package httpserve

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// start serves h on a loopback port; it returns the base URL and a client
// that counts the connections it opens.
func start(t *testing.T, h http.Handler) (*Server, string, *http.Client, *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 10 * time.Second, MaxHeaderBytes: 8 << 10}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	t.Cleanup(func() {
		s.Shutdown(context.Background())
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	})
	var dials atomic.Int32
	tr := &http.Transport{DisableCompression: true, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return s, "http://" + ln.Addr().String(), &http.Client{Transport: tr}, &dials
}

func get(t *testing.T, c *http.Client, method, url string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, url, err)
	}
	return resp, body
}

// The ways a handler writes a body, each read back by net/http's client on
// one kept-alive connection.
func TestBodies(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 10000) // past the held-back 4 KiB
	file := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(file, big, 0o644); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/small", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "small answer") })
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) { w.Write(big[:5000]); w.Write(big[5000:]) })
	mux.HandleFunc("/declared", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(big)))
		w.Write(big)
	})
	mux.HandleFunc("/sendfile", func(w http.ResponseWriter, r *http.Request) {
		f, _ := os.Open(file)
		defer f.Close()
		w.Header().Set("Content-Length", strconv.Itoa(len(big)+3))
		io.WriteString(w, "hdr")
		if _, err := w.(io.ReaderFrom).ReadFrom(f); err != nil {
			t.Errorf("ReadFrom a file: %v", err)
		}
	})
	mux.HandleFunc("/limited", func(w http.ResponseWriter, r *http.Request) {
		f, _ := os.Open(file)
		defer f.Close()
		w.Header().Set("Content-Length", "1000")
		w.(io.ReaderFrom).ReadFrom(&io.LimitedReader{R: f, N: 1000})
	})
	mux.HandleFunc("/chunked-file", func(w http.ResponseWriter, r *http.Request) {
		f, _ := os.Open(file)
		defer f.Close()
		io.WriteString(w, "hdr")
		if _, err := w.(io.ReaderFrom).ReadFrom(&io.LimitedReader{R: f, N: int64(len(big))}); err != nil {
			t.Errorf("ReadFrom a file into a chunked body: %v", err)
		}
		io.WriteString(w, "end")
	})
	mux.HandleFunc("/flushed", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "part one, ")
		w.(http.Flusher).Flush()
		io.WriteString(w, "part two")
	})
	mux.HandleFunc("/late-length", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.Header().Set("Content-Length", "3") // too late: ignored
		w.Write(big)
	})
	mux.HandleFunc("/longer-file", func(w http.ResponseWriter, r *http.Request) {
		f, _ := os.Open(file)
		defer f.Close()
		w.Header().Set("Content-Length", "1000") // the file is longer: 1000 go out
		w.(io.ReaderFrom).ReadFrom(f)
	})
	mux.HandleFunc("/snapshot", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "10")
		w.Header().Set("Transfer-Encoding", "chunked") // the framing is the server's
		w.WriteHeader(http.StatusOK)
		w.Header().Set("Content-Length", "2") // after WriteHeader: not sent
		w.Header().Set("X-Late", "1")
		io.WriteString(w, "0123456789")
	})
	mux.HandleFunc("/big-html", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("<html>" + strings.Repeat(" ", 8000) + "</html>"))
	})
	mux.HandleFunc("/nocontent", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("/missing", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no such thing", http.StatusNotFound) })
	_, url, c, dials := start(t, mux)

	for _, tc := range []struct {
		path     string
		code     int
		body     []byte
		length   int64 // -1: chunked
		chunked  bool
		typ      string
		headOnly bool
	}{
		{path: "/small", code: 200, body: []byte("small answer"), length: 12, typ: "text/plain; charset=utf-8"},
		{path: "/big", code: 200, body: big, length: -1, chunked: true},
		{path: "/declared", code: 200, body: big, length: int64(len(big))},
		{path: "/sendfile", code: 200, body: append([]byte("hdr"), big...), length: int64(len(big) + 3)},
		{path: "/limited", code: 200, body: big[:1000], length: 1000},
		{path: "/chunked-file", code: 200, body: append(append([]byte("hdr"), big...), "end"...), length: -1, chunked: true},
		{path: "/flushed", code: 200, body: []byte("part one, part two"), length: -1, chunked: true},
		{path: "/late-length", code: 200, body: big, length: -1, chunked: true},
		{path: "/longer-file", code: 200, body: big[:1000], length: 1000},
		{path: "/snapshot", code: 200, body: []byte("0123456789"), length: 10},
		{path: "/big-html", code: 200, body: []byte("<html>" + strings.Repeat(" ", 8000) + "</html>"), length: -1, chunked: true, typ: "text/html; charset=utf-8"},
		{path: "/nocontent", code: 204, body: nil, length: 0},
		{path: "/missing", code: 404, body: []byte("no such thing\n"), length: 14},
	} {
		resp, body := get(t, c, "GET", url+tc.path)
		if resp.StatusCode != tc.code || !bytes.Equal(body, tc.body) || resp.ContentLength != tc.length {
			t.Errorf("GET %s: %d, %d bytes (length %d); want %d, %d bytes (length %d)",
				tc.path, resp.StatusCode, len(body), resp.ContentLength, tc.code, len(tc.body), tc.length)
		}
		if got := len(resp.TransferEncoding) > 0; got != tc.chunked {
			t.Errorf("GET %s: chunked %v", tc.path, got)
		}
		if tc.typ != "" && resp.Header.Get("Content-Type") != tc.typ {
			t.Errorf("GET %s: Content-Type %q", tc.path, resp.Header.Get("Content-Type"))
		}
		if resp.Header.Get("Date") == "" {
			t.Errorf("GET %s: no Date", tc.path)
		}
		if resp.Header.Get("X-Late") != "" {
			t.Errorf("GET %s: a header set after WriteHeader was sent", tc.path)
		}
	}
	// HEAD: the header a GET gets, no body.
	for path, length := range map[string]int64{"/declared": int64(len(big)), "/small": 12} {
		resp, body := get(t, c, "HEAD", url+path)
		if resp.StatusCode != 200 || len(body) != 0 || resp.ContentLength != length {
			t.Errorf("HEAD %s: %d, %d bytes, length %d", path, resp.StatusCode, len(body), resp.ContentLength)
		}
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("%d connections for all the requests, want 1 kept alive", n)
	}
}

// A body shorter than its Content-Length ends the connection, so that the
// client sees the short body and does not read a next answer as its rest.
func TestShortBodyClosesConnection(t *testing.T) {
	_, url, c, dials := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/short" {
			w.Header().Set("Content-Length", "100")
			io.WriteString(w, "only this")
			return
		}
		io.WriteString(w, "fine")
	}))
	resp, err := c.Get(url + "/short")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(resp.Body); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("reading a short body: %v, want unexpected EOF", err)
	}
	resp.Body.Close()
	if _, body := get(t, c, "GET", url+"/ok"); string(body) != "fine" {
		t.Fatalf("next request: %q", body)
	}
	if n := dials.Load(); n != 2 {
		t.Errorf("%d connections, want 2 (the first closed after the short body)", n)
	}
}

// A file shorter than the chunk it was to fill ends the connection: the
// client sees a broken chunked body, never a short one that looks whole.
func TestShortFileChunkClosesConnection(t *testing.T) {
	file := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(file, make([]byte, 100<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	_, url, c, _ := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, _ := os.Open(file)
		defer f.Close()
		w.(io.ReaderFrom).ReadFrom(&io.LimitedReader{R: f, N: 200 << 10})
	}))
	resp, err := c.Get(url + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.ReadAll(resp.Body); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("reading a cut chunked body: %v, want unexpected EOF", err)
	}
}

// rawExchange sends raw bytes on a new connection and returns everything
// the server sends back until it closes the connection.
func rawExchange(t *testing.T, url, request string) string {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	go io.WriteString(conn, request)
	out, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("the server did not close the connection: %v (got %q)", err, out)
	}
	return string(out)
}

// Bad requests get one clear answer and the connection closed; an HTTP/1.0
// request gets its answer and the connection closed.
func TestBadRequestsAndOldClients(t *testing.T) {
	_, url, _, _ := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") }))
	for name, tc := range map[string]struct{ req, status string }{
		"garbage":     {"GARBAGE\r\n\r\n", "HTTP/1.1 400 "},
		"bad header":  {"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", "HTTP/1.1 400 "},
		"huge header": {"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 20<<10) + "\r\n\r\n", "HTTP/1.1 431 "},
		"no Host":     {"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 400 "},
		"HTTP/2.0":    {"GET / HTTP/2.0\r\nHost: x\r\n\r\n", "HTTP/1.1 505 "},
		"odd Expect":  {"GET / HTTP/1.1\r\nHost: x\r\nExpect: x-magic\r\n\r\n", "HTTP/1.1 417 "},
		// The body of an Expect: 100-continue request is never asked for:
		// the answer closes the connection, so neither the body nor the
		// request after it is read as a request.
		"100-continue":   {"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 17\r\n\r\nGET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 200 "},
		"HTTP/1.0":       {"GET / HTTP/1.0\r\n\r\n", "HTTP/1.1 200 "},
		"close":          {"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "HTTP/1.1 200 "},
		"two, then shut": {"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "HTTP/1.1 200 "},
	} {
		out := rawExchange(t, url, tc.req)
		if !strings.HasPrefix(out, tc.status) {
			t.Errorf("%s: answer %q, want %q...", name, out, tc.status)
		}
		if tc.status == "HTTP/1.1 200 " {
			want := 1 + strings.Count(tc.req, "\r\n\r\nGET")
			if name == "100-continue" {
				want = 1
			}
			if got := strings.Count(out, "hello"); got != want {
				t.Errorf("%s: %d answers in %q, want %d", name, got, out, want)
			}
		}
	}
}

// A handler that panics loses its connection, not the server.
func TestHandlerPanic(t *testing.T) {
	_, url, c, _ := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/panic" {
			panic("handler bug")
		}
		io.WriteString(w, "still here")
	}))
	if resp, err := c.Get(url + "/panic"); err == nil {
		resp.Body.Close()
		t.Fatalf("a panicking handler answered %d", resp.StatusCode)
	}
	if _, body := get(t, c, "GET", url+"/after"); string(body) != "still here" {
		t.Fatalf("after the panic: %q", body)
	}
}

// A request body the handler leaves unread is skipped when small (the
// connection stays), and closes the connection when large.
func TestUnreadRequestBody(t *testing.T) {
	_, url, c, dials := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "GET or HEAD only", http.StatusMethodNotAllowed)
	}))
	for i, size := range []int{100, 100, 1 << 20, 100} {
		resp, err := c.Post(url+"/", "application/octet-stream", bytes.NewReader(make([]byte, size)))
		if err != nil {
			t.Fatalf("POST %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Fatalf("POST %d: %d", i, resp.StatusCode)
		}
	}
	if n := dials.Load(); n != 2 {
		t.Errorf("%d connections, want 2 (one closed after the large body)", n)
	}
}

// Shutdown closes idle connections at once and lets a running request
// finish.
func TestShutdown(t *testing.T) {
	release, entered := make(chan struct{}), make(chan struct{})
	s, url, c, _ := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(entered)
			<-release
		}
		io.WriteString(w, "done")
	}))
	get(t, c, "GET", url+"/warm") // leaves an idle kept-alive connection
	idle, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	answered := make(chan string, 1)
	go func() {
		resp, err := http.Get(url + "/slow")
		if err != nil {
			answered <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		answered <- string(b)
	}()
	select {
	case <-entered:
	case got := <-answered:
		t.Fatalf("the slow request was answered before its handler ran: %q", got)
	case <-time.After(10 * time.Second):
		t.Fatal("the slow request never reached its handler")
	}
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := bufio.NewReader(idle).ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("idle connection during shutdown: %v, want EOF", err)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) while a request was running", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if got := <-answered; got != "done" {
		t.Errorf("the running request got %q", got)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Errorf("a second Shutdown: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(ln); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve after Shutdown: %v", err)
	}
	if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Error("Serve after Shutdown left its listener open")
	}
}

// Two Shutdowns at once both return once the last request is done.
func TestShutdownTwice(t *testing.T) {
	release, entered := make(chan struct{}), make(chan struct{})
	s, url, _, _ := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
	}))
	go http.Get(url + "/")
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the request never reached its handler")
	}
	shut := make(chan error, 2)
	for i := 0; i < 2; i++ {
		go func() { shut <- s.Shutdown(context.Background()) }()
	}
	time.Sleep(50 * time.Millisecond)
	close(release)
	for i := 0; i < 2; i++ {
		select {
		case err := <-shut:
			if err != nil {
				t.Errorf("Shutdown: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a Shutdown never returned")
		}
	}
}

// FuzzServe: whatever bytes a client sends, the server answers with
// well-formed HTTP/1.1 responses (or nothing) and closes or keeps the
// connection; it never panics or hangs.
func FuzzServe(f *testing.F) {
	for _, seed := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"HEAD /x.narinfo HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
		"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET / HTTP/9.9\r\n\r\n",
		"\r\n\r\n",
	} {
		f.Add([]byte(seed))
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			io.Copy(io.Discard, io.LimitReader(r.Body, 10))
		}
		io.WriteString(w, r.URL.Path)
	}), ReadHeaderTimeout: time.Second, IdleTimeout: time.Second}
	go s.Serve(ln)
	f.Cleanup(func() { s.Shutdown(context.Background()) })
	f.Fuzz(func(t *testing.T, in []byte) {
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		conn.Write(in)
		conn.(*net.TCPConn).CloseWrite()
		// The requests as the server reads them, so that each answer is
		// parsed as the answer to its request (HEAD has no body).
		var reqs []*http.Request
		for rr := bufio.NewReader(bytes.NewReader(in)); len(reqs) < 100; {
			req, err := http.ReadRequest(rr)
			if err != nil {
				break
			}
			io.Copy(io.Discard, req.Body)
			reqs = append(reqs, req)
		}
		br := bufio.NewReader(conn)
		for i := 0; i < 100; i++ { // every answer parses as a response
			if _, err := br.Peek(1); err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Fatalf("the server neither answered nor closed: %v", err)
				}
				return // closed
			}
			var req *http.Request
			if i < len(reqs) {
				req = reqs[i]
			}
			resp, err := http.ReadResponse(br, req)
			if err != nil {
				t.Fatalf("an answer that does not parse: %v", err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}

// A connection that sends nothing, half a header, or nothing after an
// answer is closed once its timeout passes.
func TestTimeouts(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hi") }),
		ReadHeaderTimeout: 200 * time.Millisecond, IdleTimeout: 300 * time.Millisecond}
	go s.Serve(ln)
	defer s.Shutdown(context.Background())
	for name, send := range map[string]string{
		"silent":      "",
		"half header": "GET / HTTP/1.1\r\nHo",
		"idle after":  "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
	} {
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		start := time.Now()
		io.WriteString(conn, send)
		out, err := io.ReadAll(conn) // until the server closes
		took := time.Since(start)
		conn.Close()
		if err != nil {
			t.Errorf("%s: the server did not close the connection: %v", name, err)
			continue
		}
		if took < 150*time.Millisecond {
			t.Errorf("%s: closed after %v, before its timeout", name, took)
		}
		if answered := strings.Contains(string(out), "hi"); answered != (name == "idle after") {
			t.Errorf("%s: answer %q", name, out)
		}
	}
}

// A GET or HEAD that announces a body and sends none is answered at once,
// and its connection closed after the answer, rather than held until a
// timeout waiting for the body.
func TestAnnouncedBodyNeverSent(t *testing.T) {
	_, url, _, _ := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") }))
	for _, method := range []string{"GET", "HEAD"} {
		conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		conn.SetDeadline(start.Add(2 * time.Second)) // the server's timeouts are 5 s
		io.WriteString(conn, method+" / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
		out, err := io.ReadAll(conn) // the answer, then the server closes
		conn.Close()
		if err != nil {
			t.Errorf("%s: no answer and close within 2 s: %v (got %q)", method, err, out)
			continue
		}
		if !strings.HasPrefix(string(out), "HTTP/1.1 200 ") || !strings.Contains(string(out), "Connection: close\r\n") {
			t.Errorf("%s: answer %q", method, out)
		}
		t.Logf("%s answered and closed in %v", method, time.Since(start))
	}
}

// slowConns makes the server's send buffers small, so that a client that
// stops reading stalls the server's writes after a few hundred kilobytes.
func slowConns(ctx context.Context, c net.Conn) context.Context {
	c.(*net.TCPConn).SetWriteBuffer(64 << 10)
	return ctx
}

// dialSmall connects with a small receive buffer.
func dialSmall(t *testing.T, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(network, address string, rc syscall.RawConn) error {
		rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 64<<10) })
		return nil
	}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

// A response whose client stops reading fails once its writes make no
// progress for WriteProgressTimeout, and the connection closes; a client
// that reads slowly gets its whole response, however long it takes. Both
// for bodies written by Write and sent by sendfile.
func TestWriteProgressTimeout(t *testing.T) {
	const size = 3 << 20
	big := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	file := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(file, big, 0o644); err != nil {
		t.Fatal(err)
	}
	handlerDone := make(chan error, 1)
	mux := http.NewServeMux()
	mux.HandleFunc("/write", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(size))
		var err error
		for off := 0; off < size && err == nil; off += 64 << 10 {
			_, err = w.Write(big[off : off+64<<10])
		}
		handlerDone <- err
	})
	mux.HandleFunc("/sendfile", func(w http.ResponseWriter, r *http.Request) {
		f, _ := os.Open(file)
		defer f.Close()
		w.Header().Set("Content-Length", strconv.Itoa(size))
		_, err := w.(io.ReaderFrom).ReadFrom(&io.LimitedReader{R: f, N: size})
		handlerDone <- err
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	const timeout = 300 * time.Millisecond
	s := &Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 10 * time.Second,
		WriteProgressTimeout: timeout, ConnContext: slowConns}
	go s.Serve(ln)
	defer s.Shutdown(context.Background())

	for _, path := range []string{"/write", "/sendfile"} {
		// A client that reads 64 KiB and stops.
		conn := dialSmall(t, ln.Addr().String())
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path)
		if _, err := io.ReadFull(conn, make([]byte, 64<<10)); err != nil {
			t.Fatal(err)
		}
		stopped := time.Now()
		select {
		case err := <-handlerDone:
			if err == nil {
				t.Errorf("%s: the stalled response completed", path)
			}
			t.Logf("%s: stalled response failed %v after the client stopped: %v", path, time.Since(stopped), err)
		case <-time.After(10 * time.Second):
			t.Errorf("%s: the stalled response still runs 10 s after the client stopped reading", path)
			conn.Close()
			<-handlerDone
		}
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, conn); isTimeout(err) {
			t.Errorf("%s: the server did not close the stalled connection", path)
		}
		conn.Close()

		// A client that reads slowly, for several timeouts in all.
		conn = dialSmall(t, ln.Addr().String())
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path)
		conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		began := time.Now()
		var got int64
		buf := make([]byte, 64<<10)
		for {
			n, err := io.ReadFull(resp.Body, buf)
			got += int64(n)
			if err != nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		conn.Close()
		if err := <-handlerDone; err != nil || got != size {
			t.Errorf("%s: slow client got %d of %d bytes in %v; handler: %v", path, got, size, time.Since(began), err)
		} else if took := time.Since(began); took < 3*timeout {
			t.Logf("%s: the slow read took only %v; the test proves little", path, took)
		}
	}
}

// ReadHeaderTimeout bounds a whole request header, not each read: a client
// that trickles one byte at a time is closed once it has passed.
func TestHeaderTrickle(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hi") }),
		ReadHeaderTimeout: 300 * time.Millisecond, IdleTimeout: time.Second}
	go s.Serve(ln)
	defer s.Shutdown(context.Background())
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for _, b := range []byte("GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + strings.Repeat("a", 200)) {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if _, err := conn.Write([]byte{b}); err != nil {
				return
			}
		}
	}()
	start := time.Now()
	conn.SetReadDeadline(start.Add(5 * time.Second))
	io.Copy(io.Discard, conn)
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("a trickled header held its connection for %v (timeout 300 ms)", took)
	}
}

// countingListener counts the writes of the connections it accepts.
type countingListener struct {
	net.Listener
	writes atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, writes: &l.writes}, nil
}

type countingConn struct {
	net.Conn
	writes *atomic.Int32
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// serveCounting serves h and returns the listener's address and its count
// of writes.
func serveCounting(t *testing.T, h http.Handler) (*Server, string, *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: ln}
	s := &Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 10 * time.Second}
	go s.Serve(cl)
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	return s, ln.Addr().String(), &cl.writes
}

// readAnswers reads n answers from br and checks that answer i is
// "answer <path i>".
func readAnswers(t *testing.T, br *bufio.Reader, paths []string) {
	t.Helper()
	for i, p := range paths {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(body) != "answer "+p {
			t.Fatalf("answer %d: %q %v, want %q", i, body, err, "answer "+p)
		}
	}
}

func echoPath(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "answer "+r.URL.Path) }

// dialBounded connects to addr for a test that must not hang: reads and
// writes fail after 10 s (a bound, not a measure).
func dialBounded(t *testing.T, addr string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	return conn
}

// Answers to pipelined requests (as Guix asks for narinfos) go out
// together, a buffer at a time, not in a write each.
func TestPipelinedAnswersShareWrites(t *testing.T) {
	_, addr, writes := serveCounting(t, http.HandlerFunc(echoPath))
	conn := dialBounded(t, addr)
	var reqs strings.Builder
	var paths []string
	for i := range 100 {
		paths = append(paths, fmt.Sprintf("/%d", i))
		fmt.Fprintf(&reqs, "GET /%d HTTP/1.1\r\nHost: x\r\n\r\n", i)
	}
	if _, err := io.WriteString(conn, reqs.String()); err != nil {
		t.Fatal(err)
	}
	readAnswers(t, bufio.NewReader(conn), paths)
	// 100 answers of about 130 bytes; a write per read of the requests
	// (4 KiB at a time) at most.
	if n := writes.Load(); n > 10 {
		t.Errorf("100 pipelined answers took %d writes, want at most 10", n)
	}
}

// An answer is not held back while the server waits for the rest of the
// next request: a client may send half of it, and wait.
func TestAnswerNotHeldForPartialRequest(t *testing.T) {
	_, addr, _ := serveCounting(t, http.HandlerFunc(echoPath))
	conn := dialBounded(t, addr)
	io.WriteString(conn, "GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTT")
	br := bufio.NewReader(conn)
	readAnswers(t, br, []string{"/first"})
	io.WriteString(conn, "P/1.1\r\nHost: x\r\n\r\n")
	readAnswers(t, br, []string{"/second"})
}

// Answers held for pipelining go out when Shutdown ends their connection
// after the request in hand.
func TestShutdownSendsHeldAnswers(t *testing.T) {
	release, entered := make(chan struct{}), make(chan struct{})
	s, addr, _ := serveCounting(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(entered)
			<-release
		}
		echoPath(w, r)
	}))
	conn := dialBounded(t, addr)
	io.WriteString(conn, "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n")
	<-entered
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	for !s.isClosing() {
		time.Sleep(time.Millisecond)
	}
	close(release)
	br := bufio.NewReader(conn)
	readAnswers(t, br, []string{"/a", "/slow"})
	if rest, err := io.ReadAll(br); err != nil || len(rest) > 0 {
		t.Errorf("after the answer in hand: %q %v, want the connection closed", rest, err)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// The header goes out as the handler set it, in the order of its keys
// with every value on one line, the framing the server's: a Content-Length
// that is no number gives way to the body's own, a handler's Date and
// Connection stay, and Connection: close closes.
func TestHeaderLines(t *testing.T) {
	_, url, _, _ := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Zeta", "last")
		h.Set("Alpha", " first\r\nInjected: no ")
		h["Multi"] = []string{"one", "two"}
		h.Set("Content-Length", "lots")
		h.Set("Content-Type", "text/x-test")
		h.Set("Date", "Tue, 01 Dec 2026 00:00:00 GMT")
		if r.URL.Path == "/close" {
			h.Set("Connection", "close")
		}
		io.WriteString(w, "body")
	}))
	out := rawExchange(t, url, "GET /close HTTP/1.1\r\nHost: x\r\n\r\n")
	head, body, _ := strings.Cut(out, "\r\n\r\n")
	lines := strings.Split(head, "\r\n")
	slices.Sort(lines[1:]) // any order
	want := []string{"HTTP/1.1 200 OK", "Alpha: first  Injected: no", "Connection: close", "Content-Length: 4",
		"Content-Type: text/x-test", "Date: Tue, 01 Dec 2026 00:00:00 GMT", "Multi: one", "Multi: two", "Zeta: last"}
	if !slices.Equal(lines, want) || body != "body" {
		t.Errorf("got\n%q\nwant the lines\n%q", out, want)
	}
	out = rawExchange(t, url, "GET /open HTTP/1.1\r\nHost: x\r\n\r\nGET /close HTTP/1.1\r\nHost: x\r\n\r\n")
	if strings.Count(out, "HTTP/1.1 200 OK\r\n") != 2 || strings.Count(out, "Connection: close\r\n") != 1 {
		t.Errorf("a kept connection, then a closed one:\n%q", out)
	}
}
