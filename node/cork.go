package node

import (
	"context"
	"net"
	"net/http"
	"strings"
	"syscall"
)

// TCP_CORK while a NAR goes out, as nginx's tcp_nopush does: the NAR
// framing written between sendfile calls then shares segments with file
// data instead of leaving as a small packet each time.

type connKey struct{}

// withConn stores the connection in the request context (the server's
// ConnContext).
func withConn(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// corkNARs corks the connection for the length of a NAR response.
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

func setCork(c *net.TCPConn, v int) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_CORK, v)
	})
}
