package main

// Hostile clients on the daemon socket, against a real node: requests of a
// gigabyte and lengths no client sends are refused with the protocol's
// error, and the node's peak memory stays bounded.

import (
	"bufio"
	le "encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// rawDaemon is a worker-protocol client that writes whatever it is told.
// The first read error sticks in err; reads after it return zeros.
type rawDaemon struct {
	c   net.Conn
	r   *bufio.Reader
	err error
}

func appendU64(b []byte, v uint64) []byte { return le.LittleEndian.AppendUint64(b, v) }

func appendStr(b []byte, s string) []byte {
	b = appendU64(b, uint64(len(s)))
	b = append(b, s...)
	return append(b, make([]byte, (8-len(s)%8)%8)...)
}

// dialRaw shakes hands at protocol 1.34.
func dialRaw(t *testing.T, sock string) *rawDaemon {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	d := &rawDaemon{c: c, r: bufio.NewReader(c)}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	c.Write(appendU64(nil, 0x6e697863))
	d.u64()
	d.u64()
	c.Write(appendU64(appendU64(appendU64(nil, 1<<8|34), 0), 0))
	d.str() // Nix version
	if tag := d.u64(); tag != 0x616c7473 || d.err != nil {
		t.Fatalf("handshake ended with %#x, %v", tag, d.err)
	}
	c.SetDeadline(time.Time{})
	return d
}

func (d *rawDaemon) u64() uint64 {
	var b [8]byte
	if d.err == nil {
		_, d.err = io.ReadFull(d.r, b[:])
	}
	return le.LittleEndian.Uint64(b[:])
}

func (d *rawDaemon) str() string {
	n := d.u64()
	if n > 1<<20 && d.err == nil {
		d.err = fmt.Errorf("string of %d bytes from the node", n)
	}
	if d.err != nil {
		return ""
	}
	b := make([]byte, (n+7)&^7)
	_, d.err = io.ReadFull(d.r, b)
	return string(b[:n])
}

// attack sends head, then elem until total bytes are sent or the node
// hangs up, and returns the node's error message, which must come within
// bound, short, and be followed by the node hanging up.
func (d *rawDaemon) attack(head, elem []byte, total int64, bound time.Duration) (string, error) {
	go func() {
		w := bufio.NewWriterSize(d.c, 1<<20)
		if _, err := w.Write(head); err != nil {
			return
		}
		for sent := int64(len(head)); sent < total; sent += int64(len(elem)) {
			if _, err := w.Write(elem); err != nil {
				return
			}
		}
		w.Flush() // and then wait, the connection open
	}()
	d.c.SetReadDeadline(time.Now().Add(bound))
	if tag := d.u64(); tag != 0x63787470 {
		return "", fmt.Errorf("the node answered %#x (%v), want STDERR_ERROR", tag, d.err)
	}
	d.str() // "Error"
	d.u64() // level
	d.str() // name
	msg := d.str()
	d.u64() // no position
	d.u64() // no traces
	if d.err != nil {
		return "", d.err
	}
	if len(msg) > 200 {
		return "", fmt.Errorf("error of %d bytes: %.200s...", len(msg), msg)
	}
	// Unread data makes the node's close a reset.
	if _, err := d.r.ReadByte(); err == nil {
		return "", fmt.Errorf("after %q the connection is still open", msg)
	}
	return msg, nil
}

// peakRSS returns the process's peak and current resident set, in MiB.
func peakRSS(t *testing.T, pid int) (hwm, rss int) {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && (f[0] == "VmHWM:" || f[0] == "VmRSS:") {
			kb, _ := strconv.Atoi(f[1])
			if f[0] == "VmHWM:" {
				hwm = kb >> 10
			} else {
				rss = kb >> 10
			}
		}
	}
	return hwm, rss
}

// TestDaemonHostileClients sends a node the requests of a hostile client:
// lists of a gigabyte (the limits of one string and one list allow 64 GiB)
// and a frame of 2^60 bytes inside AddToStoreNar. Each gets an error at
// once, and the node's peak RSS stays far below what it was sent.
func TestDaemonHostileClients(t *testing.T) {
	n := newNode(t)
	n.start()
	pid := n.cmd.Process.Pid
	base, _ := peakRSS(t, pid)
	str64k := appendStr(nil, strings.Repeat("x", 64<<10))
	longPath := appendStr(nil, "/nix/store/"+strings.Repeat("0", 32)+"-"+strings.Repeat("n", 211))
	const gib = 1 << 30
	for _, a := range []struct {
		name       string
		head, elem []byte
		total      int64
	}{
		{"QueryValidPaths of 1 GiB", appendU64(appendU64(nil, 31), uint64(gib/len(str64k))), str64k, gib},
		{"QueryMissing of 1 GiB", appendU64(appendU64(nil, 40), uint64(gib/len(str64k))), str64k, gib},
		{"QueryValidPaths of 400k paths", appendU64(appendU64(nil, 31), 400000), longPath, 400000 * int64(len(longPath))},
		{"QueryValidPaths of 1M paths", appendU64(appendU64(nil, 31), 1<<20), longPath, (1 << 20) * int64(len(longPath))},
	} {
		start := time.Now()
		msg, err := dialRaw(t, n.socket()).attack(a.head, a.elem, a.total, 60*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", a.name, err)
		}
		hwm, rss := peakRSS(t, pid)
		t.Logf("%s: refused after %v (%q); node peak RSS %d MiB, now %d MiB (%d MiB at start)",
			a.name, time.Since(start).Round(time.Millisecond), msg, hwm, rss, base)
	}

	// Four at once.
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		d := dialRaw(t, n.socket())
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := d.attack(appendU64(appendU64(nil, 40), uint64(gib/len(str64k))), str64k, gib, 60*time.Second); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	hwm, _ := peakRSS(t, pid)
	t.Logf("four QueryMissing of 1 GiB at once: node peak RSS %d MiB", hwm)
	if hwm > base+300 {
		t.Errorf("node peak RSS %d MiB after the attacks, %d MiB at start", hwm, base)
	}

	// AddToStoreNar whose NAR starts with a frame of 2^60 bytes, from a
	// client that then waits.
	head := appendStr(appendU64(nil, 39), "/nix/store/"+strings.Repeat("0", 32)+"-x")
	head = appendStr(head, "")                              // deriver
	head = appendStr(head, strings.Repeat("0", 64))         // narHash
	head = appendU64(appendU64(appendU64(head, 0), 0), 100) // references, registration time, narSize
	head = appendU64(appendU64(head, 0), 0)                 // ultimate, sigs
	head = appendStr(head, "")                              // ca
	head = appendU64(appendU64(appendU64(head, 0), 0), 1<<60)
	msg, err := dialRaw(t, n.socket()).attack(head, nil, 0, 10*time.Second)
	if err != nil {
		t.Fatalf("2^60 frame: %v", err)
	}
	if !strings.Contains(msg, "frame of") {
		t.Errorf("2^60 frame: %q", msg)
	}
	t.Logf("AddToStoreNar with a frame of 2^60 bytes: %q", msg)

	// The node serves on.
	dialRaw(t, n.socket())
	n.status()
}
