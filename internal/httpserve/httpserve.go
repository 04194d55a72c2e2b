// Package httpserve serves HTTP/1.1 from an http.Handler with one goroutine
// per connection and no other per request: the binary cache's server.
//
// Why not net/http's server: Nix (2.8, Debian's) asks a binary cache for
// a closure one request at a time on one keep-alive connection, narinfos
// and NARs alike (`nix path-info -r` and `nix copy` of 421 paths each open
// one connection), and net/http pays for every request with a background
// read that watches for the client going away, and the goroutine
// hand-offs that go with it: twice the futex calls, and a quarter to a
// half more of the node's CPU per request. Measured side by side
// (bench/run.sh closure with BENCH_BASE_REV, BENCHMARKS.md), a node on
// net/http took 13-32% longer for `nix path-info -r` of the closure
// (outside the noise of about 10%) and 1-16% longer for `nix copy`; 1,000
// narinfos pipelined on one connection (as Guix asks) took the same on
// both. Requests are parsed by net/http (http.ReadRequest), handlers are
// ordinary http.Handlers, and the control socket keeps net/http's server;
// what is here is the response side and the connection loop, for GET and
// HEAD (a request body is read only by the handler, and a connection
// whose body is left unread is closed).
//
// What a handler sees: a ResponseWriter that is also an http.Flusher and
// an io.ReaderFrom (a body of known length goes out by the connection's
// ReadFrom: sendfile for files), the connection in the request's context
// through ConnContext, and a context cancelled when the handler returns.
// A client that goes away is noticed when a write fails, not before. As
// http.ResponseWriter says, a handler may not use its ResponseWriter once
// it has returned: the writer and its header map serve the connection's
// next request.
//
// Timeouts: ReadHeaderTimeout bounds the reading of each request header
// (and the wait for the first), IdleTimeout the wait for the next one.
// WriteProgressTimeout is a deadline that moves with progress: a response
// that gets no byte out for that long (up to a quarter more) fails and its
// connection closes, so a client that stops reading holds its connection
// (and what its handler holds) for a bounded time; a slow client that
// keeps reading is never cut off, however long its response takes. A request body that the
// handler leaves unread is skipped if it is already in, and otherwise
// closes the connection after the answer: the server never waits for a
// body (a GET that announces one and sends none is answered at once).
// Responses are HTTP/1.1; an HTTP/1.0 request gets its answer and the
// connection is closed. A body without a Content-Length is buffered up to
// 4 KiB, so small answers get one, and larger ones go chunked.
//
// Pipelined requests (Guix asks for up to 1,000 narinfos at once on one
// connection) get their answers in as few writes as the write buffer
// allows: an answer waits while the next request is already in, and what
// waits goes out when the buffer fills, before the server would wait for
// the client (for the next request, or the rest of one), and when the
// connection ends. A write each took a fifth of the Guix listener's time
// per narinfo; nginx, which sends an answer a writev and a sendfile, has
// TCP_CORK (tcp_nopush) gather them into full segments instead. A handler
// that takes long holds the answers before it, as any pipelined answer
// waits for those before it.
package httpserve

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Server serves HTTP/1.1 on listeners.
type Server struct {
	Handler           http.Handler
	ReadHeaderTimeout time.Duration // to read a request's header, and the first one's start (0: none)
	IdleTimeout       time.Duration // to wait for the next request on a connection (0: none)
	// WriteProgressTimeout: a response whose writes send nothing for this
	// long ends its connection (0: none). See the package doc.
	WriteProgressTimeout time.Duration
	MaxHeaderBytes       int // 0: 64 KiB
	// ConnContext, if set, derives each connection's context.
	ConnContext func(ctx context.Context, c net.Conn) context.Context
	Log         *slog.Logger // nil: discard

	mu        sync.Mutex
	listeners map[net.Listener]bool
	conns     map[*conn]bool
	closing   bool
	done      chan struct{} // closed when the last connection is gone, after Shutdown
}

// ErrServerClosed is what Serve returns after Shutdown.
var ErrServerClosed = http.ErrServerClosed

// Serve accepts connections on l and serves each in a goroutine, until l
// fails or Shutdown is called.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	if s.listeners == nil {
		s.listeners, s.conns = map[net.Listener]bool{}, map[*conn]bool{}
	}
	s.listeners[l] = true
	s.mu.Unlock()
	var delay time.Duration
	for {
		rw, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Out of file descriptors and the like: wait, and try again.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log().Warn("http: accept", "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		c := &conn{s: s, rw: rw}
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			rw.Close()
			return ErrServerClosed
		}
		s.conns[c] = true
		s.mu.Unlock()
		go c.serve()
	}
}

// Shutdown stops accepting, closes idle connections, and waits for the
// others to finish the request they are on; when ctx ends first, it
// closes them too and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for l := range s.listeners {
		l.Close()
	}
	if s.done == nil { // a second Shutdown waits on the same
		s.done = make(chan struct{})
		if len(s.conns) == 0 {
			close(s.done)
		}
	}
	s.closeIdleLocked()
	done := s.done
	s.mu.Unlock()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.conns {
			c.rw.Close()
		}
		s.mu.Unlock()
		return ctx.Err()
	}
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

func (s *Server) closeIdleLocked() {
	for c := range s.conns {
		if c.idle {
			c.rw.Close()
		}
	}
}

func (s *Server) log() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

// conn is one client connection.
type conn struct {
	s          *Server
	rw         net.Conn
	remoteAddr string
	out        io.Writer // rw's write side, with the write-progress deadline
	idle       bool      // waiting for a request (s.mu)
	lr         limitedReader
	linger     bool // the server ends the connection: close gently
	// What each response of the connection uses, one after the other:
	// a handler may not use its ResponseWriter once it has returned.
	resp   response
	header http.Header
	head   []byte // the response header being written
}

// limitedReader caps the bytes a request header may take: bufio reads
// through it, and it is lifted once the header is in. Before it reads the
// connection it sends the answers still buffered (pending), so that the
// server never waits on the client while holding answers back.
type limitedReader struct {
	r       io.Reader
	n       int64
	pending *bufio.Writer
}

var errHeaderTooLarge = errors.New("request header too large")

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errHeaderTooLarge
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	if err := l.pending.Flush(); err != nil {
		return 0, err
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

const noLimit = 1<<63 - 1

// writeBuf is a connection's write buffer, which pipelined answers fill
// before they go out: a dozen Guix narinfos. (4 KiB took a write every
// three; 64 KiB saved little more.)
const writeBuf = 16 << 10

// setIdle marks the connection idle or busy; it reports false when the
// server is shutting down and the connection should go.
func (c *conn) setIdle(idle bool) bool {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	c.idle = idle
	return !c.s.closing
}

func (c *conn) close() {
	if c.linger {
		// The server ends the connection while the client may still be
		// sending (a request it refused, a body it did not read): closing
		// with unread bytes would reset the connection and could destroy
		// the answer before the client reads it. Send FIN, and drain for
		// a moment.
		if cw, ok := c.rw.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
			c.rw.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			io.CopyN(io.Discard, c.rw, 1<<20)
		}
	}
	c.rw.Close()
	c.s.mu.Lock()
	delete(c.s.conns, c)
	if c.s.closing && len(c.s.conns) == 0 && c.s.done != nil {
		select {
		case <-c.s.done:
		default:
			close(c.s.done)
		}
	}
	c.s.mu.Unlock()
}

func (c *conn) serve() {
	defer c.close()
	ctx := context.Background()
	if c.s.ConnContext != nil {
		ctx = c.s.ConnContext(ctx, c.rw)
	}
	maxHeader := int64(c.s.MaxHeaderBytes)
	if maxHeader <= 0 {
		maxHeader = 64 << 10
	}
	c.remoteAddr = c.rw.RemoteAddr().String()
	c.header = http.Header{}
	c.out = c.rw
	if c.s.WriteProgressTimeout > 0 {
		c.out = &progressWriter{c: c.rw, timeout: c.s.WriteProgressTimeout}
	}
	bw := bufio.NewWriterSize(c.out, writeBuf)
	c.lr = limitedReader{r: c.rw, n: noLimit, pending: bw}
	br := bufio.NewReaderSize(&c.lr, 4<<10)
	// Answers wait in bw while the next request is already in br
	// (pipelined): they go out together, in one write, when bw fills or
	// the server would wait for the client (the loop's top, lr's reads),
	// and when the connection ends.
	defer bw.Flush()
	for first := true; ; first = false {
		pipelined := br.Buffered() > 0
		if !pipelined && bw.Flush() != nil {
			return
		}
		// A connection with a request in hand is not idle: Shutdown lets
		// it finish the answers it holds.
		if !c.setIdle(!pipelined) {
			c.linger = !first // it may have sent another request already
			return
		}
		wait := c.s.IdleTimeout // for a next request
		if first && c.s.ReadHeaderTimeout > 0 {
			wait = c.s.ReadHeaderTimeout
		}
		if wait > 0 {
			c.rw.SetReadDeadline(time.Now().Add(wait))
		}
		if _, err := br.Peek(1); err != nil {
			return // the client is done, or idle too long
		}
		if !c.setIdle(false) {
			return
		}
		if c.s.ReadHeaderTimeout > 0 {
			c.rw.SetReadDeadline(time.Now().Add(c.s.ReadHeaderTimeout))
		}
		c.lr.n = maxHeader
		req, err := http.ReadRequest(br)
		tooLarge := c.lr.n <= 0
		c.lr.n = noLimit
		if err != nil {
			c.linger = c.badRequest(bw, err, tooLarge)
			return
		}
		if req.Host == "" && req.ProtoAtLeast(1, 1) {
			// HTTP/1.1 requires a Host (ReadRequest moves it there).
			c.linger = c.answerAndClose(bw, http.StatusBadRequest, req.Method)
			return
		}
		if req.ProtoMajor != 1 {
			c.linger = c.answerAndClose(bw, http.StatusHTTPVersionNotSupported, req.Method)
			return
		}
		if exp := req.Header.Get("Expect"); exp != "" && !strings.EqualFold(exp, "100-continue") {
			c.linger = c.answerAndClose(bw, http.StatusExpectationFailed, req.Method)
			return
		}
		c.rw.SetReadDeadline(time.Time{})
		if !c.serveOne(ctx, req, bw) {
			c.linger = true
			return
		}
	}
}

// badRequest answers a request that could not be read, unless the
// connection simply ended; it reports whether it answered.
func (c *conn) badRequest(bw *bufio.Writer, err error, tooLarge bool) bool {
	if !tooLarge && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isTimeout(err)) {
		return false
	}
	code := http.StatusBadRequest
	if tooLarge {
		code = http.StatusRequestHeaderFieldsTooLarge
	}
	return c.answerAndClose(bw, code, "")
}

// answerAndClose sends a short error answer that closes the connection (a
// HEAD gets no body); it reports true.
func (c *conn) answerAndClose(bw *bufio.Writer, code int, method string) bool {
	msg := strconv.Itoa(code) + " " + http.StatusText(code)
	body := msg
	if method == http.MethodHead {
		body = ""
	}
	c.rw.SetWriteDeadline(time.Now().Add(time.Second))
	fmt.Fprintf(bw, "HTTP/1.1 %s\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s",
		msg, len(msg), body)
	bw.Flush()
	return true
}

// serveOne runs the handler for one request and finishes its response; it
// reports whether the connection can take another request.
func (c *conn) serveOne(ctx context.Context, req *http.Request, bw *bufio.Writer) (keep bool) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req = req.WithContext(ctx)
	req.RemoteAddr = c.remoteAddr
	// A client that asked to be told to send its body (Expect:
	// 100-continue) is never told, and the connection ends after the
	// answer: neither side then mistakes a body for a request. The binary
	// cache takes no bodies.
	expects := req.Header.Get("Expect") != "" && req.ContentLength != 0
	clear(c.header)
	w := &c.resp
	*w = response{c: c, bw: bw, req: req, header: c.header, declared: -1,
		closeAfter: req.Close || !req.ProtoAtLeast(1, 1) || expects}
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				keep = false
				return
			}
			c.s.log().Error("http: handler panic", "url", req.URL.String(), "panic", p, "stack", string(debug.Stack()))
			keep = false
		}
	}()
	c.s.Handler.ServeHTTP(w, req)
	if !w.closeAfter && req.Body != nil && req.Body != http.NoBody {
		// Whatever the handler left unread of the body must go before the
		// next request can be read. What has arrived with the header is
		// skipped; for more the connection closes rather than wait for a
		// body nobody needs (a GET with a Content-Length and no body
		// would hold its answer until a timeout). This happens before the
		// answer goes out when it has not yet, so that the answer says
		// whether the connection stays: a client that finds it closed
		// after an answer without "Connection: close" may have sent its
		// next request on it. The deadline in the past stops any read of
		// the connection itself; only buffered bytes are skipped.
		c.rw.SetReadDeadline(time.Now())
		if _, err := io.CopyN(io.Discard, req.Body, 256<<10+1); err != io.EOF {
			w.closeAfter = true
		}
		c.rw.SetReadDeadline(time.Time{})
	}
	if err := w.finish(); err != nil {
		return false
	}
	return !w.closeAfter
}

// response is the http.ResponseWriter of one request.
type response struct {
	c      *conn
	bw     *bufio.Writer
	req    *http.Request
	header http.Header // what the handler sets

	// The header as WriteHeader found it, less the framing (written out
	// in c.head with the status line; what sendHeader adds depends on it).
	hasType, hasDate bool
	connection       []string // the handler's Connection values

	status     int   // 0 until WriteHeader or the first write
	sent       bool  // status line and header written (into bw)
	chunked    bool  // body in chunked encoding
	declared   int64 // Content-Length the handler set, or -1
	written    int64 // body bytes the handler wrote
	buf        []byte
	closeAfter bool
	err        error // the first write error: the connection is done
}

const bufferBody = 4 << 10 // body bytes held back to find a Content-Length

func (w *response) Header() http.Header { return w.header }

func (w *response) WriteHeader(code int) {
	if w.status != 0 || code < 200 { // informational answers are not sent
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	w.status = code
	// What goes out is the header as it is now, as with net/http: later
	// changes to the map are not sent. It is written out now, after the
	// status line, in the order of its keys (as Header.Write does), but
	// for the framing, which is the server's (sendHeader).
	keys := make([]string, 0, 16)
	for k := range w.header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b := strconv.AppendInt(append(w.c.head[:0], "HTTP/1.1 "...), int64(code), 10)
	b = append(append(append(b, ' '), http.StatusText(code)...), "\r\n"...)
	for _, k := range keys {
		vs := w.header[k]
		switch k {
		case "Transfer-Encoding":
			continue
		case "Connection":
			w.connection = vs
			continue
		case "Content-Length":
			if len(vs) == 0 {
				continue
			}
			n, err := strconv.ParseInt(vs[0], 10, 64)
			if err != nil || n < 0 {
				continue
			}
			w.declared = n
		case "Content-Type":
			w.hasType = true
		case "Date":
			w.hasDate = true
		}
		for _, v := range vs {
			b = appendField(b, k, v)
		}
	}
	w.c.head = b
}

// appendField appends a header line, its value made one line and trimmed
// as Header.Write does.
func appendField(b []byte, key, value string) []byte {
	if strings.ContainsAny(value, "\r\n") {
		value = newlineToSpace.Replace(value)
	}
	b = append(b, key...)
	b = append(b, ": "...)
	b = append(b, textproto.TrimString(value)...)
	return append(b, "\r\n"...)
}

var newlineToSpace = strings.NewReplacer("\n", " ", "\r", " ")

// httpDate is a Date header's value, made once a second (date).
type httpDate struct {
	unix int64
	text string
}

var lastDate atomic.Pointer[httpDate]

func date() string {
	t := time.Now()
	d := lastDate.Load()
	if d == nil || d.unix != t.Unix() {
		d = &httpDate{unix: t.Unix(), text: t.UTC().Format(http.TimeFormat)}
		lastDate.Store(d)
	}
	return d.text
}

// bodyAllowed reports whether the response may have a body on the wire.
func (w *response) bodyAllowed() bool {
	return w.req.Method != http.MethodHead && w.status != http.StatusNoContent && w.status != http.StatusNotModified
}

func (w *response) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.declared >= 0 && w.written+int64(len(p)) > w.declared {
		return 0, http.ErrContentLength
	}
	w.written += int64(len(p))
	if !w.bodyAllowed() {
		return len(p), nil
	}
	if !w.sent {
		if w.declared < 0 && len(w.buf)+len(p) <= bufferBody {
			w.buf = append(w.buf, p...)
			return len(p), nil
		}
		sniff := w.buf
		if len(sniff) == 0 {
			sniff = p[:min(len(p), 512)]
		}
		if err := w.sendHeader(false, sniff); err != nil {
			return 0, err
		}
	}
	return w.writeBody(p)
}

func (w *response) writeBody(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if w.chunked {
		fmt.Fprintf(w.bw, "%x\r\n", len(p))
	}
	n, err := w.bw.Write(p)
	if err == nil && w.chunked {
		_, err = w.bw.WriteString("\r\n")
	}
	if err != nil {
		w.err = err
	}
	return n, err
}

// ReadFrom sends a body of known length by the connection's ReadFrom
// (sendfile for a file), after the header.
func (w *response) ReadFrom(r io.Reader) (int64, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return 0, w.err
	}
	if lr, ok := r.(*io.LimitedReader); ok && w.declared < 0 && w.bodyAllowed() && w.req.ProtoAtLeast(1, 1) && isFile(lr.R) && lr.N > bufferBody {
		return w.sendChunk(lr)
	}
	if !w.bodyAllowed() || w.declared < 0 {
		return io.Copy(struct{ io.Writer }{w}, r) // through Write: discarded, buffered or chunked
	}
	if !w.sent {
		if err := w.sendHeader(false, w.buf); err != nil {
			return 0, err
		}
	}
	// The connection's ReadFrom copies to the end of r: it must not run
	// past the declared length. A file, or a LimitedReader of one, within
	// the length still goes by sendfile.
	left := w.declared - w.written
	rf, ok := w.c.out.(io.ReaderFrom)
	switch lr, isLR := r.(*io.LimitedReader); {
	case !ok:
		return io.Copy(struct{ io.Writer }{w}, r)
	case isLR && lr.N <= left:
	case isFile(r):
		r = &io.LimitedReader{R: r, N: left}
	default:
		return io.Copy(struct{ io.Writer }{w}, r)
	}
	if err := w.bw.Flush(); err != nil {
		w.err = err
		return 0, err
	}
	n, err := rf.ReadFrom(r)
	w.written += n
	if err != nil {
		w.err = err
	} else if w.written > w.declared {
		w.err = http.ErrContentLength
		return n, w.err
	}
	return n, err
}

// sendChunk sends a range of a file as one chunk of a chunked body, by the
// connection's ReadFrom (sendfile): a .nar.zst's stored frames go out so,
// with no copy and no buffer held.
func (w *response) sendChunk(lr *io.LimitedReader) (int64, error) {
	if !w.sent {
		if err := w.sendHeader(false, w.buf); err != nil {
			return 0, err
		}
	}
	rf, ok := w.c.out.(io.ReaderFrom)
	if !w.chunked || !ok {
		return io.Copy(struct{ io.Writer }{w}, lr)
	}
	size := lr.N
	fmt.Fprintf(w.bw, "%x\r\n", size)
	if err := w.bw.Flush(); err != nil {
		w.err = err
		return 0, err
	}
	n, err := rf.ReadFrom(lr)
	w.written += n
	if err == nil && n != size {
		err = io.ErrUnexpectedEOF // the chunk is cut: the connection must end
	}
	if err != nil {
		w.err = err
		return n, err
	}
	w.bw.WriteString("\r\n")
	return n, nil
}

func isFile(r io.Reader) bool {
	_, ok := r.(*os.File)
	return ok
}

// Flush sends the header and what is buffered.
func (w *response) Flush() {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return
	}
	if !w.sent {
		if w.sendHeader(false, w.buf) != nil {
			return
		}
	}
	if err := w.bw.Flush(); err != nil {
		w.err = err
	}
}

// sendHeader writes the status line and header into bw, and the body held
// back; final says the handler is done, so that body is all of it. first
// is the body's start, if known, for a Content-Type to be guessed from.
func (w *response) sendHeader(final bool, first []byte) error {
	w.sent = true
	if w.c.s.isClosing() {
		w.closeAfter = true // shutting down: no next request
	}
	h := w.c.head // the status line and the handler's fields (WriteHeader), then the server's
	switch {
	case w.req.Method == http.MethodHead:
		if w.declared < 0 && final && w.written > 0 { // the length a GET would get
			h = strconv.AppendInt(append(h, "Content-Length: "...), w.written, 10)
			h = append(h, "\r\n"...)
		}
	case !w.bodyAllowed():
	default:
		switch {
		case w.declared >= 0:
		case final:
			h = strconv.AppendInt(append(h, "Content-Length: "...), int64(len(w.buf)), 10)
			h = append(h, "\r\n"...)
		case w.req.ProtoAtLeast(1, 1):
			w.chunked = true
			h = append(h, "Transfer-Encoding: chunked\r\n"...)
		default:
			w.closeAfter = true // the end of the body is the end of the connection
		}
		if !w.hasType && len(first) > 0 {
			h = appendField(h, "Content-Type", http.DetectContentType(first))
		}
	}
	if len(w.connection) > 0 && w.connection[0] == "close" {
		w.closeAfter = true
	}
	if w.closeAfter {
		h = append(h, "Connection: close\r\n"...)
	} else {
		for _, v := range w.connection {
			h = appendField(h, "Connection", v)
		}
	}
	if !w.hasDate {
		h = appendField(h, "Date", date())
	}
	w.c.head = append(h, "\r\n"...)
	w.bw.Write(w.c.head)
	buf := w.buf
	w.buf = nil
	_, err := w.writeBody(buf)
	return err
}

// finish completes the response once the handler has returned.
func (w *response) finish() error {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return w.err
	}
	if !w.sent {
		if err := w.sendHeader(true, w.buf); err != nil {
			return err
		}
	}
	if w.chunked {
		w.bw.WriteString("0\r\n\r\n")
	}
	if w.bodyAllowed() && w.declared >= 0 && w.written != w.declared {
		// A body shorter than its Content-Length: the client must not
		// take the next response for the rest of it.
		w.bw.Flush()
		return http.ErrContentLength
	}
	return w.err // the answer goes out with those after it (conn.serve)
}

// progressWriter writes to a connection under a deadline that moves with
// progress. A write that blocks wakes every quarter of the timeout to see
// whether it sent anything since; it fails once it has gone a whole
// timeout without, so a client that stops reading fails its response
// between one and one and a quarter timeouts after its last byte, and one
// that reads slowly never does.
type progressWriter struct {
	c       net.Conn
	timeout time.Duration
	armed   time.Time // when the deadline was last set
}

// arm sets the deadline a quarter of the timeout from now. Unless forced,
// a deadline set less than a 64th of the timeout ago is left: moving the
// runtime's timer on every write of a NAR cost about 1% of the CPU of
// serving it.
func (p *progressWriter) arm(now time.Time, force bool) {
	if force || now.Sub(p.armed) > p.timeout/64 {
		p.c.SetWriteDeadline(now.Add(p.timeout / 4))
		p.armed = now
	}
}

// stalled is called when a write timed out having sent k bytes since the
// deadline was set, with progress the last time it sent something: it
// reports whether the write has now gone a timeout without progress, and
// re-arms if not.
func (p *progressWriter) stalled(progress *time.Time, k int64) bool {
	now := time.Now()
	if k > 0 {
		*progress = now
	}
	if now.Sub(*progress) >= p.timeout {
		return true
	}
	p.arm(now, true)
	return false
}

func (p *progressWriter) Write(b []byte) (int, error) {
	progress := time.Now() // the last write completed: progress
	p.arm(progress, false)
	var n int
	for {
		k, err := p.c.Write(b[n:])
		n += k
		if !isTimeout(err) || p.stalled(&progress, int64(k)) {
			return n, err
		}
	}
}

// ReadFrom sends r by the connection's ReadFrom (sendfile for a range of a
// file) under the same deadline. It goes on after a timeout only when the
// bytes taken from r were all sent, as sendfile leaves them: a copying
// fallback may have read bytes that it could not write.
func (p *progressWriter) ReadFrom(r io.Reader) (int64, error) {
	rf, ok := p.c.(io.ReaderFrom)
	if !ok {
		return io.Copy(struct{ io.Writer }{p}, r)
	}
	lr, _ := r.(*io.LimitedReader)
	progress := time.Now()
	p.arm(progress, false)
	var n int64
	for {
		var left int64
		if lr != nil {
			left = lr.N
		}
		k, err := rf.ReadFrom(r)
		n += k
		if !isTimeout(err) || lr == nil || left-lr.N != k || p.stalled(&progress, k) {
			return n, err
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
