package daemon

import (
	"errors"
	"io"
	"os"
	"time"
)

// What one client may make the server hold and wait for.

// Limits checked before anything is allocated: a client cannot make the
// server reserve more than these by sending a large length.
const (
	MaxStringLen = 64 << 10 // store paths, signatures, option values, messages
	MaxListLen   = 1 << 20  // entries of a list (paths of a closure)
	MaxFrameLen  = 8 << 20  // one frame of a framed stream
)

// Limits on what the arguments of one operation may make the server hold,
// all strings and lists together. The largest requests real clients send
// are path lists: a QueryValidPaths over a closure of tens of thousands of
// paths, some 80 bytes each, is a few MB. Half a million entries or 32 MiB
// of strings is many times that, and bounds one request's memory to some
// 50 MB. Data that is streamed (NARs, framed data) does not count.
const (
	MaxOpBytes = 32 << 20
	MaxOpItems = 1 << 19
)

// ErrTooLarge marks a length over the limits above.
var ErrTooLarge = errors.New("daemon: length over the limit")

// Connection timeouts. A Nix client keeps its connection for as long as
// its process lives and may leave it idle between operations for long (a
// nix-daemon worker that substitutes from the node, between builds), so
// the bound between requests is hours; a client that wants its connections
// recycled sooner sets the store URL's max-connection-age below it. Inside
// a request (and the handshake), a client that sends nothing, or reads
// nothing of a reply, for longer than Nix itself waits on a stalled
// download (300 s) is given up.
const (
	DefaultIdleTimeout    = 4 * time.Hour
	DefaultRequestTimeout = 10 * time.Minute
)

// idle waits for the next request; busy is inside one.
func (c *conn) idle() {
	c.rd.timeout = c.srv.IdleTimeout
	c.wd.timeout = c.srv.RequestTimeout
}

func (c *conn) busy() {
	c.rd.timeout = c.srv.RequestTimeout
	c.wd.timeout = c.srv.RequestTimeout
}

type readDeadliner interface{ SetReadDeadline(time.Time) error }
type writeDeadliner interface{ SetWriteDeadline(time.Time) error }

// withDeadlines wraps a connection's two ends so that the timeouts apply
// where they have deadlines; elsewhere (a byte stream in a test, a
// terminal) they pass reads and writes through.
func withDeadlines(r io.Reader, w io.Writer) (*deadlineReader, *deadlineWriter) {
	rd := &deadlineReader{r: r}
	if d, ok := r.(readDeadliner); ok && d.SetReadDeadline(time.Time{}) == nil {
		rd.set = d.SetReadDeadline
	}
	wd := &deadlineWriter{w: w}
	if d, ok := w.(writeDeadliner); ok && d.SetWriteDeadline(time.Time{}) == nil {
		wd.set = d.SetWriteDeadline
	}
	return rd, wd
}

// deadlineReader moves the read deadline ahead before each read, so that
// timeout bounds the wait for progress, not a whole transfer. stalled
// tells that a read ran out of time.
type deadlineReader struct {
	r       io.Reader
	set     func(time.Time) error
	timeout time.Duration
	stalled bool
}

func (d *deadlineReader) Read(p []byte) (int, error) {
	if d.set != nil && d.timeout > 0 {
		d.set(time.Now().Add(d.timeout))
	}
	n, err := d.r.Read(p)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		d.stalled = true
	}
	return n, err
}

// deadlineWriter does the same for writes; it keeps the destination's
// ReadFrom (sendfile for NARs).
type deadlineWriter struct {
	w       io.Writer
	set     func(time.Time) error
	timeout time.Duration
}

func (d *deadlineWriter) extend() {
	if d.set != nil && d.timeout > 0 {
		d.set(time.Now().Add(d.timeout))
	}
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	d.extend()
	return d.w.Write(p)
}

func (d *deadlineWriter) ReadFrom(r io.Reader) (int64, error) {
	d.extend()
	if rf, ok := d.w.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{d}, r)
}
