package netlab

import (
	"errors"
	"io"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// serveBytes serves n bytes to every connection on ln.
func serveBytes(t *testing.T, ln net.Listener, n int) {
	t.Cleanup(func() { ln.Close() })
	go func() {
		buf := make([]byte, n)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.Write(buf)
			}()
		}
	}()
}

// download reads everything addr sends and returns its size and the time
// it took.
func download(t *testing.T, addr string) (int64, time.Duration) {
	t.Helper()
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	n, err := io.Copy(io.Discard, c)
	if err != nil {
		t.Fatal(err)
	}
	return n, time.Since(start)
}

// TestLab: hosts reach each other and the test over the bridge, a
// limited link runs at its rate and counts what crossed it, a cut link
// carries nothing until mended, the hosts have no way out of the lab,
// and nothing of the lab is left after its test.
func TestLab(t *testing.T) {
	var names []string
	t.Run("lab", func(t *testing.T) {
		l := New(t)
		slow, fast := l.Host("slow"), l.Host("fast")
		names = append(names, slow.Name, fast.Name, slow.link, fast.link, l.bridge)
		const size = 3 << 20
		const rate = 16_000_000 // 2 MB/s: the download takes 1.5 s
		slow.Limit(rate)
		var addrs []string
		for _, h := range []*Host{slow, fast} {
			ln, err := h.Listen(0)
			if err != nil {
				t.Fatal(err)
			}
			serveBytes(t, ln, size)
			addrs = append(addrs, ln.Addr().String())
		}
		slowAddr, fastAddr := addrs[0], addrs[1]

		before := slow.Counters()
		n, d := download(t, slowAddr)
		after := slow.Counters()
		if n != size || d < 1200*time.Millisecond || d > 20*time.Second {
			t.Errorf("%d bytes over a %d bit/s link in %v; want %d in about 1.5 s", n, rate, d, size)
		}
		if sent := after.Sent - before.Sent; sent < size || sent > size*11/10 {
			t.Errorf("the link counted %d bytes sent for %d bytes of data", sent, size)
		}
		if n, d := download(t, fastAddr); n != size || d > time.Second {
			t.Errorf("%d bytes over an unlimited link in %v", n, d)
		}

		// From one host to the other, across the bridge; nowhere else.
		err := fast.in(func() error {
			c, err := net.DialTimeout("tcp", slowAddr, 5*time.Second)
			if err != nil {
				return err
			}
			c.Close()
			_, err = net.DialTimeout("tcp", "192.0.2.1:80", 5*time.Second)
			if !errors.Is(err, syscall.ENETUNREACH) {
				t.Errorf("a host dialled outside the lab: %v, want network unreachable", err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}

		slow.Cut()
		if c, err := net.DialTimeout("tcp", slowAddr, 500*time.Millisecond); err == nil {
			c.Close()
			t.Fatal("dialled a host whose link is cut")
		}
		slow.Mend()
		var c net.Conn
		for deadline := time.Now().Add(10 * time.Second); c == nil; {
			if c, err = net.DialTimeout("tcp", slowAddr, 500*time.Millisecond); err != nil && time.Now().After(deadline) {
				t.Fatalf("the mended link: %v", err)
			}
		}
		c.Close()
	})
	if len(names) == 0 {
		return // skipped
	}
	netns, _ := exec.Command("ip", "netns", "list").Output()
	links, _ := exec.Command("ip", "-o", "link", "show").Output()
	for _, name := range names {
		if strings.Contains(string(netns), name) || strings.Contains(string(links), name+":") || strings.Contains(string(links), name+"@") {
			t.Errorf("%s is left after the test", name)
		}
	}
}
