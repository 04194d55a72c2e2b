package node

import (
	"bufio"
	"context"
	"net"
	"sync"
	"time"

	"github.com/p2pstore/p2pstore/narview/daemon"
)

// The daemon socket carries two protocols: the Nix worker protocol, for Nix
// clients (and `p2pstore daemon --stdio`), and HTTP, for the control API the
// commands use. A Nix client opens with the worker magic, "cxin" on the
// wire; anything else is HTTP. Each connection is sorted by its first bytes.

var workerMagic = []byte("cxin")

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
			if string(head) == string(workerMagic) {
				srv.ServeConn(ctx, pc, pc)
				return
			}
			if !httpLn.put(pc) {
				c.Close()
			}
		}()
	}
}

// peekedConn reads through the reader that peeked at its first bytes.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

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
