package node

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"
)

// The binary cache's connections, under net/http's server: each is a
// progressConn, whose writes fail only once they have sent nothing for a
// timeout; a NAR response corks its connection; and a request that comes
// with a body closes its connection after the answer.

type connKey struct{}

// withConn stores the TCP connection in the request context (the server's
// ConnContext), for corkNARs.
func withConn(ctx context.Context, c net.Conn) context.Context {
	if pc, ok := c.(*progressConn); ok {
		c = pc.TCPConn
	}
	return context.WithValue(ctx, connKey{}, c)
}

// corkNARs sets TCP_CORK while a NAR goes out, as nginx's tcp_nopush does:
// the NAR framing written between sendfile calls then shares segments with
// file data instead of leaving as a small packet each time.
func corkNARs(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tc, ok := r.Context().Value(connKey{}).(*net.TCPConn)
		if !ok || r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/nar/") {
			h.ServeHTTP(w, r)
			return
		}
		setCork(tc, 1)
		defer setCork(tc, 0) // uncorking sends what is pending at once
		h.ServeHTTP(w, r)
	})
}

// closeOnBody answers a request that announces a body (the binary cache
// takes none) and closes the connection after it, without waiting for the
// body. net/http would otherwise read what the handler left of the body,
// before the answer and again after it, with no deadline but ReadTimeout:
// a GET that announces a body and sends none would hold its connection.
func closeOnBody(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength != 0 {
			w.Header().Set("Connection", "close")
			if c, ok := r.Context().Value(connKey{}).(net.Conn); ok {
				c.SetReadDeadline(time.Now()) // what is buffered is all it reads
			}
		}
		h.ServeHTTP(w, r)
	})
}

func setCork(c *net.TCPConn, v int) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_CORK, v)
	})
}

// progressListener hands out its TCP connections as progressConns.
type progressListener struct {
	net.Listener
	timeout time.Duration
}

func (l progressListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok && l.timeout > 0 {
		return &progressConn{TCPConn: tc, timeout: l.timeout}, nil
	}
	return c, nil
}

// progressConn writes under a deadline that moves with progress, so that
// a client that stops reading holds its connection (and what its handler
// holds: a NAR renderer and its buffers, an xz encoder) for a bounded
// time, while a slow client that keeps reading is never cut off however
// long its response takes. net/http's WriteTimeout bounds a whole
// response instead, and a deadline it sees pass ends the connection; here
// a blocked write wakes every quarter of the timeout to see whether it
// sent anything since, and fails only once it has gone a whole timeout
// without: between one and one and a quarter timeouts after the last byte
// the client took.
type progressConn struct {
	*net.TCPConn
	timeout time.Duration
	armed   time.Time // when the deadline was last set
}

// arm sets the deadline a quarter of the timeout from now. Unless forced,
// a deadline set less than a 64th of the timeout ago is left: moving the
// runtime's timer on every write of a NAR cost about 1% of the CPU of
// serving it.
func (c *progressConn) arm(now time.Time, force bool) {
	if force || now.Sub(c.armed) > c.timeout/64 {
		c.TCPConn.SetWriteDeadline(now.Add(c.timeout / 4))
		c.armed = now
	}
}

// stalled is called when a write timed out having sent k bytes since the
// deadline was set, with progress the last time it sent something: it
// reports whether the write has now gone a timeout without progress, and
// re-arms if not.
func (c *progressConn) stalled(progress *time.Time, k int64) bool {
	now := time.Now()
	if k > 0 {
		*progress = now
	}
	if now.Sub(*progress) >= c.timeout {
		return true
	}
	c.arm(now, true)
	return false
}

func (c *progressConn) Write(b []byte) (int, error) {
	progress := time.Now() // the last write completed: progress
	c.arm(progress, false)
	var n int
	for {
		k, err := c.TCPConn.Write(b[n:])
		n += k
		if !isTimeout(err) || c.stalled(&progress, int64(k)) {
			return n, err
		}
	}
}

// ReadFrom sends r by the connection's ReadFrom (sendfile for a range of a
// file) under the same deadline. It goes on after a timeout only when the
// bytes taken from r were all sent, as sendfile leaves them: a copying
// fallback may have read bytes that it could not write.
func (c *progressConn) ReadFrom(r io.Reader) (int64, error) {
	lr, _ := r.(*io.LimitedReader)
	progress := time.Now()
	c.arm(progress, false)
	var n int64
	for {
		var left int64
		if lr != nil {
			left = lr.N
		}
		k, err := c.TCPConn.ReadFrom(r)
		n += k
		if !isTimeout(err) || lr == nil || left-lr.N != k || c.stalled(&progress, k) {
			return n, err
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
