package node

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/p2pstore/p2pstore/internal/splice"

	"github.com/p2pstore/p2pstore/narview/daemon"
)

// The daemon socket carries two protocols: the Nix worker protocol, for Nix
// clients, and HTTP, for the control API the commands use. A Nix client
// opens with the worker magic, "cxin" on the wire; anything else is HTTP.
// Each connection is sorted by its first bytes.
//
// `p2pstore daemon --stdio` (what ssh-ng runs) opens with "p2pf" instead
// and hands its stdin and stdout over (SCM_RIGHTS): the node then speaks
// the worker protocol on them itself, so NARs go from the page cache to
// ssh's pipe without a hop through the bridge process.

var (
	workerMagic = []byte("cxin")
	stdioMagic  = []byte("p2pf")
)

// serveSocket accepts connections on ln, runs the worker protocol on those
// that start with the magic and hands the others to httpLn.
func (n *Node) serveSocket(ctx context.Context, ln net.Listener, srv *daemon.Server, httpLn *connListener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			httpLn.Close()
			return
		}
		go func() {
			br := bufio.NewReaderSize(c, 64<<10)
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			head, err := br.Peek(len(workerMagic))
			c.SetReadDeadline(time.Time{})
			if err != nil {
				c.Close()
				return
			}
			pc := &peekedConn{Conn: c, r: br}
			switch string(head) {
			case string(workerMagic):
				srv.ServeConn(ctx, pc, pc)
				return
			case string(stdioMagic):
				n.serveStdio(ctx, c, br, srv)
				return
			}
			if !httpLn.put(pc) {
				c.Close()
			}
		}()
	}
}

// serveDaemon runs srv's protocol on every connection ln accepts: the
// Guix daemon socket, which carries nothing else.
func serveDaemon(ctx context.Context, ln net.Listener, srv *daemon.Server) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go srv.ServeConn(ctx, c, c)
	}
}

// serveStdio receives the bridge's stdin and stdout and serves the worker
// protocol on them; closing c at the end lets the bridge exit.
func (n *Node) serveStdio(ctx context.Context, c net.Conn, br *bufio.Reader, srv *daemon.Server) {
	defer c.Close()
	uc, ok := c.(*net.UnixConn)
	br.Discard(len(stdioMagic))
	// The descriptors come with the next message, after our ack: nothing
	// may be buffered past the magic, or its rights were dropped.
	if !ok || br.Buffered() != 0 {
		return
	}
	if _, err := uc.Write([]byte{'k'}); err != nil {
		return
	}
	uc.SetReadDeadline(time.Now().Add(30 * time.Second))
	var one [1]byte
	oob := make([]byte, syscall.CmsgSpace(2*4))
	_, oobn, _, _, err := uc.ReadMsgUnix(one[:], oob)
	uc.SetReadDeadline(time.Time{})
	if err != nil {
		return
	}
	var fds []int
	if msgs, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil && len(msgs) == 1 {
		fds, _ = syscall.ParseUnixRights(&msgs[0])
	}
	if len(fds) != 2 {
		for _, fd := range fds {
			syscall.Close(fd)
		}
		n.log.Debug("daemon --stdio handed over no stdin and stdout")
		return
	}
	// Pipes and sockets (what ssh gives a remote program) are made
	// non-blocking, so that Go's poller takes them: reads and writes then
	// have deadlines, which the server's timeouts need. Only the bridge
	// shares them, and it exits with the session. A terminal is left as
	// it is.
	for _, fd := range fds {
		if pollable(fd) {
			syscall.SetNonblock(fd, true)
		}
	}
	in, out := os.NewFile(uintptr(fds[0]), "bridge stdin"), os.NewFile(uintptr(fds[1]), "bridge stdout")
	defer in.Close()
	srv.ServeConn(ctx, in, &fileWriter{out}) // closes out
}

// pollable reports whether fd is a pipe or a socket (what ssh gives a
// remote program), not a terminal or a file.
func pollable(fd int) bool {
	var st syscall.Stat_t
	if syscall.Fstat(fd, &st) != nil {
		return false
	}
	return st.Mode&syscall.S_IFMT == syscall.S_IFIFO || st.Mode&syscall.S_IFMT == syscall.S_IFSOCK
}

// fileWriter writes to the bridge's stdout (a pipe) and sends file ranges
// into it with sendfile.
type fileWriter struct{ *os.File }

func (w *fileWriter) ReadFrom(r io.Reader) (int64, error) {
	if n, handled, err := splice.SendFile(w.File, r); handled {
		return n, err
	}
	return io.Copy(struct{ io.Writer }{w.File}, r)
}

// peekedConn reads through the reader that peeked at its first bytes.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// ReadFrom sends file ranges with sendfile, as a TCP connection does on
// its own (a NAR going out over the worker protocol).
func (c *peekedConn) ReadFrom(r io.Reader) (int64, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		if n, handled, err := splice.SendFile(sc, r); handled {
			return n, err
		}
	}
	return io.Copy(c.Conn, r)
}

// connListener is a net.Listener fed with connections by serveSocket.
type connListener struct {
	addr  net.Addr
	conns chan net.Conn
	once  sync.Once
	done  chan struct{}
}

func newConnListener(addr net.Addr) *connListener {
	return &connListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *connListener) put(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return l.addr }
