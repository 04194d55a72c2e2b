package daemon

// Hostile and stalled clients: what one request may make the server hold,
// length prefixes it must refuse at once, and the connection timeouts.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// wireBytes encodes what fn writes.
func wireBytes(fn func(w *wireWriter)) []byte {
	var b bytes.Buffer
	w := newWireWriter(&b)
	fn(w)
	w.Flush()
	return b.Bytes()
}

// longPath is a valid store path of the longest name: 255 bytes.
func longPath(i int) string {
	return fmt.Sprintf("%s/%032d-%s", storeDir, i, strings.Repeat("n", 211))
}

// floodReader is a client that sends head, then elem over and over up to
// limit bytes in all, and counts what the server read of it.
type floodReader struct {
	head, elem []byte
	limit      int64
	read       int64
}

func (f *floodReader) Read(p []byte) (int, error) {
	if f.read >= f.limit {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && f.read < f.limit {
		var src []byte
		if f.read < int64(len(f.head)) {
			src = f.head[f.read:]
		} else {
			src = f.elem[(f.read-int64(len(f.head)))%int64(len(f.elem)):]
		}
		m := copy(p[n:], src[:min(int64(len(src)), f.limit-f.read)])
		n += m
		f.read += int64(m)
	}
	return n, nil
}

// replyError reads the server's answers to a 1.34 handshake and one op,
// and returns the op's error.
func replyError(t *testing.T, out []byte) error {
	t.Helper()
	c := &Client{r: newWireReader(bytes.NewReader(out)), version: 1<<8 | 34}
	for i := 0; i < 2; i++ { // magic, version
		if _, err := c.r.Uint64(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.r.String(); err != nil { // Nix version
		t.Fatal(err)
	}
	if err := c.stderr(nil); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	return c.stderr(nil)
}

// TestOpBudget floods the server with requests of 256 MiB (the limits of
// one string and one list allow 64 GiB): each is refused with the
// protocol's error once its strings or entries pass the budget of one
// operation, before the server has read much more than that budget.
func TestOpBudget(t *testing.T) {
	str64k := wireBytes(func(w *wireWriter) { w.String(strings.Repeat("s", MaxStringLen)) })
	pathElem := wireBytes(func(w *wireWriter) { w.String(longPath(1)) })
	for _, tc := range []struct {
		name       string
		head, elem []byte
	}{
		// Valid paths, as many as the list limit allows: refused on
		// the count alone.
		{"QueryValidPaths count", wireBytes(func(w *wireWriter) { w.Uint64(opQueryValidPaths); w.Uint64(MaxListLen) }), pathElem},
		// Fewer valid paths, but too many bytes of them.
		{"QueryValidPaths bytes", wireBytes(func(w *wireWriter) { w.Uint64(opQueryValidPaths); w.Uint64(MaxOpItems) }), pathElem},
		{"QueryMissing", wireBytes(func(w *wireWriter) { w.Uint64(opQueryMissing); w.Uint64(1 << 14) }), str64k},
		{"BuildPaths", wireBytes(func(w *wireWriter) { w.Uint64(opBuildPaths); w.Uint64(1 << 14) }), str64k},
		{"AddSignatures", wireBytes(func(w *wireWriter) {
			w.Uint64(opAddSignatures)
			w.String(samplePath(1))
			w.Uint64(1 << 14)
		}), str64k},
		{"SetOptions overrides", wireBytes(func(w *wireWriter) {
			w.Uint64(opSetOptions)
			for i := 0; i < 12; i++ {
				w.Uint64(0)
			}
			w.Uint64(1 << 13)
		}), str64k},
		{"AddToStoreNar references", wireBytes(func(w *wireWriter) {
			w.Uint64(opAddToStoreNar)
			w.String(samplePath(1))
			w.String("")                      // deriver
			w.String(strings.Repeat("0", 64)) // narHash
			w.Uint64(1 << 14)
		}), str64k},
	} {
		t.Run(tc.name, func(t *testing.T) {
			flood := &floodReader{head: append(handshakeBytes(), tc.head...), elem: tc.elem, limit: 256 << 20}
			var out bytes.Buffer
			NewServer(newMemStore(), storeDir, nil).ServeConn(context.Background(), flood, &out)
			if flood.read > MaxOpBytes+4<<20 {
				t.Errorf("the server read %d MiB before it refused the request", flood.read>>20)
			}
			var de *DaemonError
			if err := replyError(t, out.Bytes()); !errors.As(err, &de) || !strings.Contains(de.Msg, "over the limit") {
				t.Errorf("reply %v, want an error about the limit", err)
			}
		})
	}
}

// TestLargeQueryValidPaths: what a real client sends for a large closure
// is well within the limits.
func TestLargeQueryValidPaths(t *testing.T) {
	store := newMemStore()
	narBytes := narOf(t, "x")
	store.AddPath(context.Background(), infoFor(longPath(7), narBytes), bytes.NewReader(narBytes))
	c, err := NewClient(pipeServer(t, store), ProtocolVersion)
	if err != nil {
		t.Fatal(err)
	}
	ps := make([]string, 100000) // 25 MB of the longest paths
	for i := range ps {
		ps[i] = longPath(i)
	}
	valid, err := c.QueryValidPaths(ps, false)
	if err != nil || len(valid) != 1 || valid[0] != longPath(7) {
		t.Fatalf("QueryValidPaths of %d paths: %v %v", len(ps), len(valid), err)
	}
	if ok, err := c.IsValidPath(longPath(7)); !ok || err != nil {
		t.Fatalf("after: %v %v", ok, err)
	}
}

// stalledClient sends a request up to a point and then nothing, keeping
// the connection open; it returns the server's answer once the server
// hangs up, or fails if it does not within the bound.
func stalledClient(t *testing.T, srv *Server, minor uint64, req []byte, bound time.Duration) error {
	t.Helper()
	client, server := net.Pipe()
	defer client.Close()
	done := make(chan struct{})
	go func() {
		srv.ServeConn(context.Background(), server, server)
		close(done)
	}()
	c, err := NewClient(client, 1<<8|minor)
	if err != nil {
		t.Fatal(err)
	}
	go client.Write(req) // a pipe has no buffer: the server may stop reading half-way
	client.SetReadDeadline(time.Now().Add(bound))
	if minor < 23 {
		// A NAR upload pulled by the server: answer with more than it
		// asks for.
		if tag, err := c.r.Uint64(); err != nil || tag != stderrRead {
			t.Fatalf("server sent %#x %v, want STDERR_READ", tag, err)
		}
		c.r.Uint64()
		go client.Write(binary.LittleEndian.AppendUint64(nil, 1<<60))
	}
	opErr := c.stderr(nil)
	if errors.Is(opErr, os.ErrDeadlineExceeded) {
		t.Fatalf("no answer from the server within %v", bound)
	}
	if _, err := c.r.Uint64(); !errors.Is(err, io.EOF) {
		t.Errorf("connection still open after the error: %v", err)
	}
	select {
	case <-done:
	case <-time.After(bound):
		t.Fatal("the server still holds the connection")
	}
	return opErr
}

// lengthCase is a request with a length no client sends, and what the
// error about it names.
type lengthCase struct {
	name  string
	minor uint64
	req   func(w *wireWriter)
	want  string
}

// lengthCases puts a length of 2^60 wherever the server reads one.
func lengthCases(narBytes []byte) []lengthCase {
	huge := uint64(1 << 60)
	nar := func(w *wireWriter, p string) {
		w.String(p)
		writePathInfo(w, infoFor(p, narBytes), false, true)
		w.Uint64(0) // repair
		w.Uint64(0) // dontCheckSigs
	}
	return []lengthCase{
		{"AddToStoreNar first frame", 38, func(w *wireWriter) {
			w.Uint64(opAddToStoreNar)
			nar(w, samplePath(1))
			w.Uint64(huge)
		}, "frame of"},
		{"AddToStoreNar later frame", 38, func(w *wireWriter) {
			w.Uint64(opAddToStoreNar)
			nar(w, samplePath(1))
			w.Uint64(16)
			w.write(narBytes[:16])
			w.Uint64(huge)
		}, "frame of"},
		{"AddToStoreNar pulled", 22, func(w *wireWriter) {
			w.Uint64(opAddToStoreNar)
			nar(w, samplePath(1))
		}, "asked for"},
		{"AddToStoreNar references", 38, func(w *wireWriter) {
			w.Uint64(opAddToStoreNar)
			w.String(samplePath(1))
			w.String("")
			w.String(strings.Repeat("0", 64))
			w.Uint64(huge)
		}, "list of"},
		{"AddMultipleToStore frame", 38, func(w *wireWriter) {
			w.Uint64(opAddMultipleToStore)
			w.Uint64(0)
			w.Uint64(0)
			w.Uint64(huge)
		}, "frame of"},
		{"AddMultipleToStore count", 38, func(w *wireWriter) {
			w.Uint64(opAddMultipleToStore)
			w.Uint64(0)
			w.Uint64(0)
			w.Uint64(8)
			w.Uint64(huge)
		}, "paths"},
		{"AddMultipleToStore references", 38, func(w *wireWriter) {
			w.Uint64(opAddMultipleToStore)
			w.Uint64(0)
			w.Uint64(0)
			inner := wireBytes(func(iw *wireWriter) {
				iw.Uint64(1)
				iw.String(samplePath(1))
				iw.String("")
				iw.String(strings.Repeat("0", 64))
				iw.Uint64(huge)
			})
			w.Uint64(uint64(len(inner)))
			w.write(inner)
		}, "list of"},
		{"AddToStore frame", 38, func(w *wireWriter) {
			w.Uint64(opAddToStore)
			w.String("name")
			w.String("fixed:r:sha256")
			w.Strings(nil)
			w.Uint64(0)
			w.Uint64(huge)
		}, "frame of"},
		{"AddBuildLog frame", 38, func(w *wireWriter) {
			w.Uint64(opAddBuildLog)
			w.String("x.drv")
			w.Uint64(huge)
		}, "frame of"},
		{"AddTextToStore contents", 38, func(w *wireWriter) {
			w.Uint64(opAddTextToStore)
			w.String("name")
			w.Uint64(huge)
		}, "string of"},
		{"path", 38, func(w *wireWriter) {
			w.Uint64(opIsValidPath)
			w.Uint64(huge)
		}, "string of"},
		{"QueryValidPaths", 38, func(w *wireWriter) {
			w.Uint64(opQueryValidPaths)
			w.Uint64(huge)
		}, "list of"},
		{"SetOptions", 38, func(w *wireWriter) {
			w.Uint64(opSetOptions)
			for i := 0; i < 12; i++ {
				w.Uint64(0)
			}
			w.Uint64(1)
			w.Uint64(huge)
		}, "string of"},
		{"BuildDerivation outputs", 38, func(w *wireWriter) {
			w.Uint64(opBuildDerivation)
			w.String(samplePath(1) + ".drv")
			w.Uint64(huge)
		}, "list of"},
	}
}

// TestLengthPrefixes: a length no client sends, wherever the server reads
// one, is refused at once with an error, and the connection is closed
// (what follows it cannot be read), even when the client then waits.
func TestLengthPrefixes(t *testing.T) {
	for _, tc := range lengthCases(narOf(t, "framed")) {
		t.Run(tc.name, func(t *testing.T) {
			err := stalledClient(t, NewServer(newMemStore(), storeDir, nil), tc.minor, wireBytes(tc.req), 5*time.Second)
			var de *DaemonError
			if !errors.As(err, &de) || !strings.Contains(de.Msg, "over the limit") || !strings.Contains(de.Msg, tc.want) {
				t.Errorf("reply %v, want an error about a %s over the limit", err, tc.want)
			}
		})
	}
}

// TestNarSizeLie: a NarSize of 2^60 with a short NAR is refused as a
// mismatch once the NAR has ended, and the connection goes on.
func TestNarSizeLie(t *testing.T) {
	for _, m := range []uint64{22, 38} {
		c, err := NewClient(pipeServer(t, newMemStore()), 1<<8|m)
		if err != nil {
			t.Fatal(err)
		}
		narBytes := narOf(t, "short")
		info := infoFor(samplePath(1), narBytes)
		info.NarSize = 1 << 60
		if err := c.AddToStoreNar(info, bytes.NewReader(narBytes), false); err == nil {
			t.Fatalf("1.%d: a NAR shorter than its NarSize was accepted", m)
		}
		if ok, err := c.IsValidPath(samplePath(1)); ok || err != nil {
			t.Fatalf("1.%d: after the refusal: %v %v", m, ok, err)
		}
	}
}

// TestStalledRequest: a client that sends half a request and stops is
// told and dropped after RequestTimeout; one that sends nothing at all
// after its magic, too.
func TestStalledRequest(t *testing.T) {
	srv := NewServer(newMemStore(), storeDir, nil)
	srv.RequestTimeout = 200 * time.Millisecond
	half := wireBytes(func(w *wireWriter) {
		w.Uint64(opQueryValidPaths)
		w.Uint64(3)
		w.String(samplePath(1))
	})
	start := time.Now()
	err := stalledClient(t, srv, 38, half, 10*time.Second)
	var de *DaemonError
	if !errors.As(err, &de) || !strings.Contains(de.Msg, "no progress") {
		t.Errorf("reply %v, want an error about the stalled request", err)
	}
	if d := time.Since(start); d < srv.RequestTimeout {
		t.Errorf("dropped after %v, before the timeout", d)
	}

	// The same over pipes, as ssh-ng gives the node.
	inR, inW, _ := os.Pipe()
	outR, outW, _ := os.Pipe()
	defer inW.Close()
	defer outR.Close()
	done := make(chan struct{})
	go func() {
		defer inR.Close()
		srv.ServeConn(context.Background(), inR, outW)
		close(done)
	}()
	inW.Write(binary.LittleEndian.AppendUint64(nil, workerMagic1))
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("a stalled handshake over pipes is held")
	}
}

// TestIdle: an idle connection outlives RequestTimeout; past IdleTimeout
// the server hangs up.
func TestIdle(t *testing.T) {
	store := newMemStore()
	srv := NewServer(store, storeDir, nil)
	srv.RequestTimeout = 100 * time.Millisecond
	srv.IdleTimeout = 600 * time.Millisecond
	client, server := net.Pipe()
	defer client.Close()
	go srv.ServeConn(context.Background(), server, server)
	c, err := NewClient(client, ProtocolVersion)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * srv.RequestTimeout) // idle is what is tested here
	if _, err := c.IsValidPath(samplePath(1)); err != nil {
		t.Fatalf("after %v idle: %v", 3*srv.RequestTimeout, err)
	}
	start := time.Now()
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.r.Uint64(); !errors.Is(err, io.EOF) {
		t.Fatalf("idle connection: %v, want the server to hang up", err)
	}
	if d := time.Since(start); d < srv.IdleTimeout/2 {
		t.Errorf("hung up after %v idle", d)
	}
}

// TestStalledReader: a client that stops reading a NAR is dropped after
// RequestTimeout.
func TestStalledReader(t *testing.T) {
	store := newMemStore()
	narBytes := narOf(t, strings.Repeat("big", 1<<20))
	p := samplePath(1)
	store.AddPath(context.Background(), infoFor(p, narBytes), bytes.NewReader(narBytes))
	srv := NewServer(store, storeDir, nil)
	srv.RequestTimeout = 200 * time.Millisecond
	client, server := net.Pipe()
	defer client.Close()
	done := make(chan struct{})
	go func() {
		srv.ServeConn(context.Background(), server, server)
		close(done)
	}()
	c, err := NewClient(client, ProtocolVersion)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.call(opNarFromPath, func() { c.w.String(p) }); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the server still waits on a client that does not read")
	}
}
