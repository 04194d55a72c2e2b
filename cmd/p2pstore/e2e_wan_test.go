package main

// Pull-through over a WAN and a LAN made of network namespaces
// (internal/netlab): the upstream, nginx serving a `nix copy` cache, is
// a host behind a link limited by tc tbf; the nodes are hosts on the
// uncapped LAN side, and the Nix clients run in the test's own
// namespace, also on the LAN. This kernel has no netem, so the WAN link
// has a rate and no added delay.

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/p2pstore/p2pstore/internal/netlab"
	"github.com/p2pstore/p2pstore/internal/nixtest"
)

// wanRate is the WAN link's rate in the tests, bits/s: slow enough that
// a NAR of a few megabytes takes a second over it.
const wanRate = 40_000_000

// nodeOn starts a node on a host of a test network: listening on the
// host's address, run in its namespace, with no signing key.
func nodeOn(t *testing.T, h *netlab.Host, extra ...string) *nodeProc {
	t.Helper()
	n := newNodeAt(t, h.IP, "", extra...)
	n.wrap = h.Exec()
	n.start()
	return n
}

// nginxOn serves a binary cache directory with nginx on a test network's
// host.
func nginxOn(t *testing.T, h *netlab.Host, root string) *nginxCache {
	t.Helper()
	return startNginxOn(t, h.Exec(), h.IP+":80", root)
}

// TestWANPullThroughOnce: a client on the LAN gets two paths through
// node A, which pulls them from the upstream over the limited WAN link
// (its time says the NARs crossed that link); a second client gets them
// through node B, which has the same upstream and gets them from A over
// the LAN. B was asked for the first path's narinfo before A had it, as
// when two machines evaluate the same update: B remembers the upstream's
// answer and that no peer had the path, and must still take it from A.
// For the second path, B's upstream and peer A answer the narinfo about
// as fast. Each NAR crosses the WAN link once: one NAR request each in
// nginx's log, and the link's byte counters.
func TestWANPullThroughOnce(t *testing.T) {
	nixtest.Require(t)
	lab := netlab.New(t)
	wan, lan1, lan2 := lab.Host("wan"), lab.Host("lan1"), lab.Host("lan2")
	wan.Limit(wanRate)
	key, pub := upstreamKey(t)
	paths := []string{
		addTree(t, "asked-early", map[string][]byte{"f": bigPayload(4 << 20)}),
		addTree(t, "asked-late", map[string][]byte{"f": bigPayload(4 << 20)}),
	}
	want := pathInfo(t, "", paths...)
	up := nginxOn(t, wan, staticCache(t, key, "zstd", paths...))
	var fileSize int64 // of both .nar.zst
	for _, p := range paths {
		_, text := getBody(t, up.url+"/"+hashPart(p)+".narinfo")
		var n int64
		if _, err := fmt.Sscan(narinfoField(text, "FileSize"), &n); err != nil || n < 4<<20 {
			t.Fatalf("upstream narinfo: FileSize %d (%v):\n%s", n, err, text)
		}
		fileSize += n
	}
	a := nodeOn(t, lan1, "--upstream", up.url, "--upstream-public-key", pub)
	b := nodeOn(t, lan2, "--bootstrap", a.p2pAddr(), "--upstream", up.url, "--upstream-public-key", pub)
	b.waitPeers(1)
	if code, text := b.get("/" + hashPart(paths[0]) + ".narinfo"); code != http.StatusOK {
		t.Fatalf("B's narinfo before A had the path: %d %s", code, text)
	}

	before := wan.Counters()
	start := time.Now()
	for _, p := range paths {
		store, out, err := substitute(t, pub, p, a.url)
		if err != nil {
			t.Fatalf("nix-store -r through A: %v\n%s\nA's log:\n%s", err, out, a.log)
		}
		if got := pathInfo(t, store, p)[p]; got.NarHash != want[p].NarHash || got.NarSize != want[p].NarSize {
			t.Fatalf("through A: %s/%d, want %s/%d", got.NarHash, got.NarSize, want[p].NarHash, want[p].NarSize)
		}
	}
	took := time.Since(start)
	// At the link's rate the NARs take fileSize*8/wanRate; a little less
	// is the burst of the token bucket.
	if least := time.Duration(float64(fileSize*8) / wanRate * 0.8 * float64(time.Second)); took < least {
		t.Errorf("the client got %d bytes in %v, faster than the WAN link allows (%v)", fileSize, took, least)
	}
	sent := wan.Counters().Sent - before.Sent
	t.Logf("through A: %d bytes of .nar.zst in %v, %d bytes on the WAN link", fileSize, took, sent)
	if sent < uint64(fileSize) || sent > uint64(fileSize)*11/10 {
		t.Errorf("the WAN link carried %d bytes from the upstream for %d bytes of .nar.zst", sent, fileSize)
	}

	for deadline := time.Now().Add(30 * time.Second); a.status().Paths != len(paths); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("A did not record the paths:\n%s", a.log)
		}
	}
	before = wan.Counters()
	for _, p := range paths {
		store, out, err := substitute(t, pub, p, b.url)
		if err != nil {
			t.Fatalf("nix-store -r through B: %v\n%s\nB's log:\n%s", err, out, b.log)
		}
		if got := pathInfo(t, store, p)[p]; got.NarHash != want[p].NarHash {
			t.Fatalf("through B: %s, want %s", got.NarHash, want[p].NarHash)
		}
	}
	// B may ask the upstream for narinfos; the NARs come from A.
	sent = wan.Counters().Sent - before.Sent
	t.Logf("through B: %d bytes on the WAN link", sent)
	if sent > 64<<10 {
		t.Errorf("the WAN link carried %d bytes from the upstream while B served the paths", sent)
	}
	if n, bytes := up.served(t, "/nar/"); n != len(paths) || bytes != fileSize {
		t.Errorf("the upstream served %d NAR requests, %d bytes; want %d of %d bytes", n, bytes, len(paths), fileSize)
	}
	s := b.status()
	for deadline := time.Now().Add(10 * time.Second); s.Paths != len(paths) && time.Now().Before(deadline); s = b.status() {
		time.Sleep(20 * time.Millisecond)
	}
	if s.Paths != len(paths) || s.P2PBytesReceived < 4<<20 || s.UpstreamBytesReceived > 64<<10 {
		t.Errorf("B: %d paths, %d bytes from peers, %d from the upstream; want the paths from A", s.Paths, s.P2PBytesReceived, s.UpstreamBytesReceived)
	}
}

// TestWANCutNeverStalls: the WAN link goes dead (cut: packets lost, no
// error to either side). A narinfo request for a path only the upstream
// has is answered within 2 s, by a node that had a connection open to the
// upstream and by one started after the cut, and a Nix client with the
// node first among its substituters goes on to the next one, a cache on
// the LAN, and gets the path.
func TestWANCutNeverStalls(t *testing.T) {
	nixtest.Require(t)
	lab := netlab.New(t)
	wan, lan, cache := lab.Host("wan"), lab.Host("lan"), lab.Host("cache")
	wan.Limit(wanRate)
	key, pub := upstreamKey(t)
	var paths []string
	for i := range 3 {
		paths = append(paths, addTree(t, fmt.Sprint("cut", i), map[string][]byte{"f": []byte(fmt.Sprint("behind the WAN ", i, time.Now().UnixNano()))}))
	}
	up := nginxOn(t, wan, staticCache(t, key, "zstd", paths...))
	local := nginxOn(t, cache, staticCache(t, key, "zstd", paths[1:]...))
	warm := nodeOn(t, lan, "--upstream", up.url, "--upstream-public-key", pub)
	// The warm node has asked the upstream before: its connection stays
	// open for the next request.
	if code, text := warm.get("/" + hashPart(paths[0]) + ".narinfo"); code != http.StatusOK {
		t.Fatalf("narinfo over the WAN before the cut: %d %s\n%s", code, text, warm.log)
	}

	wan.Cut()
	cold := nodeOn(t, lan, "--upstream", up.url, "--upstream-public-key", pub)
	for i, n := range []*nodeProc{warm, cold} {
		p := paths[1+i]
		start := time.Now()
		code, _ := n.get("/" + hashPart(p) + ".narinfo")
		if d := time.Since(start); d > 2*time.Second || (code != http.StatusNotFound && code != http.StatusOK) {
			t.Errorf("node %d: narinfo with the WAN cut: %d after %v, want 404 or 200 within 2 s", i, code, d)
		}
		start = time.Now()
		store, out, err := substitute(t, pub, p, n.url, local.url)
		if err != nil {
			t.Fatalf("node %d: nix-store -r with the node, then the LAN cache: %v\n%s\nnode log:\n%s", i, err, out, n.log)
		}
		if got, want := pathInfo(t, store, p)[p], pathInfo(t, "", p)[p]; got.NarHash != want.NarHash {
			t.Errorf("node %d: the client got %s, want %s", i, got.NarHash, want.NarHash)
		}
		// Nix asks the node, gets 404 within its deadline, then the
		// cache: seconds, not Nix's own stall timeouts (minutes).
		if d := time.Since(start); d > 20*time.Second {
			t.Errorf("node %d: the client took %v past the node", i, d)
		}
		if ok, err := n.client.HasPath(context.Background(), hashPart(p)); err != nil || ok {
			t.Errorf("node %d holds %s with the WAN cut (%v)", i, p, err)
		}
	}
	if n, _ := local.served(t, "/nar/"); n != 2 {
		t.Errorf("the LAN cache served %d NARs, want 2", n)
	}
	if n, _ := up.served(t, "/nar/"); n != 0 {
		t.Errorf("the upstream served %d NARs across a cut link", n)
	}
}
