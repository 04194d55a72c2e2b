package node

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/p2pstore/p2pstore/narview/daemon"
)

// TestStdioTimeout: the stdin and stdout that `daemon --stdio` hands over
// are blocking pipes, as ssh gives them; a client that stops half-way
// through its handshake is still dropped after the request timeout.
func TestStdioTimeout(t *testing.T) {
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srv := daemon.NewServer(nil, "/nix/store", nil)
	srv.RequestTimeout = 200 * time.Millisecond
	n := &Node{log: slog.New(slog.DiscardHandler)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		br := bufio.NewReader(c)
		if _, err := br.Peek(len(stdioMagic)); err != nil {
			c.Close()
			return
		}
		n.serveStdio(context.Background(), c, br, srv)
	}()

	// The bridge's side: blocking pipes for stdin and stdout.
	var in, out [2]int
	if err := syscall.Pipe2(in[:], syscall.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Pipe2(out[:], syscall.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	client := os.NewFile(uintptr(in[1]), "client to node")
	fromNode := os.NewFile(uintptr(out[0]), "node to client")
	defer client.Close()
	defer fromNode.Close()
	c, err := net.DialUnix("unix", nil, ln.Addr().(*net.UnixAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(stdioMagic)
	var ack [1]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil || ack[0] != 'k' {
		t.Fatalf("no ack: %v", err)
	}
	if _, _, err := c.WriteMsgUnix([]byte{0}, syscall.UnixRights(in[0], out[1]), nil); err != nil {
		t.Fatal(err)
	}
	syscall.Close(in[0])
	syscall.Close(out[1])

	// The magic, and then nothing.
	client.Write(binary.LittleEndian.AppendUint64(nil, 0x6e697863))
	hello := make([]byte, 16)
	if _, err := io.ReadFull(fromNode, hello); err != nil {
		t.Fatalf("no answer to the magic: %v", err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the node still holds a client that stopped in its handshake")
	}
}
