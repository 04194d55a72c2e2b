package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/p2pstore/p2pstore/internal/nixtest"
)

// storedPeak polls a node's bytes_stored until stop is called, and
// returns the largest it saw.
func storedPeak(n *nodeProc) (stop func() uint64) {
	var peak atomic.Uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			if s, err := n.client.Status(context.Background()); err == nil && s.BytesStored > peak.Load() {
				peak.Store(s.BytesStored)
			}
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	return func() uint64 {
		close(done)
		wg.Wait()
		return peak.Load()
	}
}

// slowClient is an HTTP client whose connections take little into their
// receive buffer, so that a server streaming to it waits for its reads.
func slowClient() *http.Client {
	d := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 32<<10)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	return &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{DialContext: d.DialContext, DisableCompression: true}}
}

// TestDiskLimit: node B, whose storage.max_bytes holds three and a half of
// the paths, fetches paths from A one after another. Its store never
// passes the limit; the least recently used unpinned paths go, the path
// imported on B (pinned) and those used lately stay; a removed path is
// substituted again by a Nix client through B; a NAR that a slow client
// reads while the limit needs room is not removed under it and arrives
// whole; pin and unpin change what the limit may take.
func TestDiskLimit(t *testing.T) {
	nixtest.Require(t)
	const mb = 8 // each path: 8 files of 1 MiB of random bytes
	const pathBytes = mb << 20
	const limit = 3*pathBytes + pathBytes/2
	a := newNodeAt(t, "127.0.0.61", "node-a-1")
	a.start()
	pub := a.status().PublicKey
	b := newNodeAt(t, "127.0.0.62", "", "--bootstrap", a.p2pAddr(), "--trusted-public-key", pub, "--max-bytes", fmt.Sprint(limit))
	b.start()
	b.waitPeers(1)

	var ps []string
	for i := range 7 {
		p := randomTree(t, fmt.Sprintf("limit%d", i), mb)
		a.run("import", "--sign", p)
		ps = append(ps, p)
	}
	q := randomTree(t, "pinned", mb)
	b.run("import", q)

	has := func(paths ...string) string {
		var out []string
		for _, p := range paths {
			out = append(out, fmt.Sprint(b.hasPath(hashPart(p))))
		}
		return strings.Join(out, " ")
	}
	use := func(p string) {
		if code, _ := b.get("/" + hashPart(p) + ".narinfo"); code != 200 {
			t.Fatalf("narinfo of %s from B: %d", p, code)
		}
	}
	peak := storedPeak(b)
	b.run("fetch", ps[0])
	b.run("fetch", ps[1])
	use(ps[0])
	b.run("fetch", ps[2]) // ps[1] is the least recently used: it goes
	if got, want := has(ps[0], ps[1], ps[2]), "true false true"; got != want {
		t.Fatalf("B holds ps[0..2]: %s, want %s\n%s", got, want, b.log)
	}
	b.checkServedNAR(ps[0])
	b.run("fetch", ps[3]) // then ps[2]
	if got, want := has(q, ps[0], ps[1], ps[2], ps[3]), "true true false false true"; got != want {
		t.Fatalf("B holds q, ps[0..3]: %s, want %s\n%s", got, want, b.log)
	}
	if s := b.status(); s.PinnedPaths != 1 || s.UnpinnedPaths != 2 || s.MaxBytes != limit {
		t.Fatalf("status: %d pinned, %d unpinned, limit %d", s.PinnedPaths, s.UnpinnedPaths, s.MaxBytes)
	}
	if out := b.run("status"); !strings.Contains(out, "1 paths pinned, 2 unpinned") {
		t.Fatalf("status output:\n%s", out)
	}
	b.run("verify")

	// A removed path comes back through B for a real Nix client.
	client := filepath.Join(t.TempDir(), "client")
	nixtest.Output(t, "nix", "copy", "--from", b.url, "--to", client, "--option", "trusted-public-keys", pub, ps[1])
	if got, want := pathInfo(t, client, ps[1])[ps[1]].NarHash, pathInfo(t, "", ps[1])[ps[1]].NarHash; got != want {
		t.Fatalf("%s through B after its removal: %s, want %s", ps[1], got, want)
	}
	b.checkServedNAR(ps[1])
	if s := b.status(); s.BytesStored > limit {
		t.Fatalf("B stores %d bytes, over its limit of %d", s.BytesStored, limit)
	}

	// A slow client reads ps[3]'s NAR; meanwhile two fetches need room.
	// The render's start counts as a use, so ps[1] goes first; then ps[3]
	// would be the least recently used, but it is being read: ps[4] goes.
	_, body := b.get("/" + hashPart(ps[3]) + ".narinfo")
	resp, err := slowClient().Get(b.url + "/" + narinfoField(string(body), "URL"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	h := sha256.New()
	if _, err := io.CopyN(h, resp.Body, 64<<10); err != nil {
		t.Fatalf("NAR of %s: %v", ps[3], err)
	}
	b.run("fetch", ps[4])
	b.run("fetch", ps[5])
	if got, want := has(q, ps[1], ps[3], ps[4], ps[5]), "true false true false true"; got != want {
		t.Fatalf("B holds q, ps[1], ps[3..5] with ps[3] being read: %s, want %s\n%s", got, want, b.log)
	}
	if _, err := io.Copy(h, resp.Body); err != nil || resp.StatusCode != 200 {
		t.Fatalf("rest of the NAR of %s: status %d, %v", ps[3], resp.StatusCode, err)
	}
	if [32]byte(h.Sum(nil)) != sha256.Sum256(nixtest.Output(t, "nix-store", "--dump", ps[3])) {
		t.Fatalf("the NAR of %s read during the removals differs from nix-store --dump", ps[3])
	}
	p := peak()
	if p > limit {
		t.Fatalf("B stored up to %d bytes, over its limit of %d", p, limit)
	}
	t.Logf("B stored at most %d bytes under a limit of %d during six fetches", p, limit)
	b.run("verify")

	// Unpinned, the imported path can go; pinned again, it stays.
	if out := b.run("unpin", q); !strings.Contains(out, "unpinned 1 path;") {
		t.Fatalf("unpin: %s", out)
	}
	if s := b.status(); s.PinnedPaths != 0 || s.UnpinnedPaths != 3 {
		t.Fatalf("after unpin: %d pinned, %d unpinned", s.PinnedPaths, s.UnpinnedPaths)
	}
	if out := b.run("pin", q, ps[5]); !strings.Contains(out, "pinned 2 paths") {
		t.Fatalf("pin: %s", out)
	}
	out, err := b.try("pin", ps[6])
	if err == nil || strings.Count(strings.TrimSpace(out), "\n") != 0 || !strings.Contains(out, ps[6]) {
		t.Fatalf("pin of a path B lacks: %v, %q", err, out)
	}
	b.run("fetch", ps[6]) // ps[3], unpinned and least recently used, goes
	if got, want := has(q, ps[3], ps[5], ps[6]), "true false true true"; got != want {
		t.Fatalf("B holds q, ps[3], ps[5], ps[6] after pinning q and ps[5]: %s, want %s\n%s", got, want, b.log)
	}
	if out := b.run("gc"); !strings.Contains(out, "removed") {
		t.Fatalf("gc: %s", out)
	}
	b.run("verify")
}
