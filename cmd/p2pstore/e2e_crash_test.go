package main

import (
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/p2pstore/p2pstore/internal/nixtest"
	"github.com/p2pstore/p2pstore/internal/tmpfs"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

// crashIterations is how often each crash test kills its node.
const crashIterations = 20

// crashTrees adds k trees of a few files each (about 6 MiB, with small
// files and files of several chunks) to the local Nix store, and returns
// them with the NarHash Nix recorded for each.
func crashTrees(t *testing.T, name string, k int) ([]string, map[string]string) {
	t.Helper()
	var seed [32]byte
	copy(seed[:], fmt.Sprint(name, time.Now().UnixNano()))
	r := randReader(seed)
	var out []string
	for i := range k {
		files := map[string][]byte{}
		for j, size := range []int{3 << 20, 2 << 20, 700 << 10, 40 << 10, 300, 0} {
			b := make([]byte, size)
			r.Read(b)
			files[fmt.Sprintf("d%d/f%d", j%2, j)] = b
		}
		out = append(out, addTree(t, fmt.Sprintf("%s%d", name, i), files))
	}
	narHash := map[string]string{}
	for p, info := range pathInfo(t, "", out...) {
		narHash[p] = info.NarHash
	}
	return out, narHash
}

// checkHeld checks that the node's store verifies and that every path it
// holds among paths serves a NAR with the NarHash Nix recorded (in
// narHash); it returns the paths held.
func checkHeld(t *testing.T, n *nodeProc, paths []string, narHash map[string]string) map[string]bool {
	t.Helper()
	if out, err := n.try("verify"); err != nil {
		t.Fatalf("verify after a crash: %v\n%s", err, out)
	}
	held := map[string]bool{}
	for _, p := range paths {
		has, err := n.client.HasPath(t.Context(), hashPart(p))
		if err != nil {
			t.Fatal(err)
		}
		if !has {
			continue
		}
		held[p] = true
		code, body := n.get("/" + hashPart(p) + ".narinfo")
		if code != 200 {
			t.Fatalf("narinfo of a held path %s: %d", p, code)
		}
		_, nar := n.get("/" + narinfoField(string(body), "URL"))
		want, err := storepath.ParseNarHash(narHash[p])
		if err != nil {
			t.Fatal(err)
		}
		if got := storepath.NarHash(sha256.Sum256(nar)); got != want {
			t.Fatalf("%s: the node serves a NAR of hash %s, Nix recorded %s", p, got, want)
		}
	}
	return held
}

// TestCrashDuringImport kills the node at random points of imports (and
// of the background work that follows them), then checks the store:
// every path is there whole or not at all, and the next import of a
// missing one succeeds.
func TestCrashDuringImport(t *testing.T) {
	nixtest.Require(t)
	n := newNode(t)
	n.start()
	paths, narHash := crashTrees(t, "crash", crashIterations)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	midway := 0 // kills that left the path absent
	for i, p := range paths {
		done := make(chan error, 1)
		go func() { _, err := n.try("import", "--sign", p); done <- err }()
		time.Sleep(time.Duration(rng.IntN(400)) * time.Millisecond)
		n.kill()
		<-done
		n.start()
		held := checkHeld(t, n, paths[:i+1], narHash)
		if !held[p] {
			midway++
			n.run("import", "--sign", p)
		}
	}
	t.Logf("%d kills, %d of them before the import was done", len(paths), midway)
	held := checkHeld(t, n, paths, narHash)
	if len(held) != len(paths) {
		t.Fatalf("the node holds %d of the %d paths", len(held), len(paths))
	}
	if s := n.status(); s.Paths != len(paths) {
		t.Fatalf("status counts %d paths, want %d", s.Paths, len(paths))
	}
}

// TestCrashDuringFetch kills a node at random points of fetches from a
// peer, with the same checks.
func TestCrashDuringFetch(t *testing.T) {
	nixtest.Require(t)
	a := newNodeAt(t, "127.0.0.30", "node-a-1")
	a.start()
	paths, narHash := crashTrees(t, "fetchcrash", crashIterations)
	a.run(append([]string{"import", "--sign"}, paths...)...)
	c := newNodeAt(t, "127.0.0.31", "", "--bootstrap", a.p2pAddr(), "--trusted-public-key", a.status().PublicKey)
	c.start()
	c.waitPeers(1)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 2))
	midway := 0
	for i, p := range paths {
		done := make(chan error, 1)
		go func() { _, err := c.try("fetch", p); done <- err }()
		time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
		c.kill()
		<-done
		c.start()
		c.waitPeers(1)
		held := checkHeld(t, c, paths[:i+1], narHash)
		if !held[p] {
			midway++
			c.run("fetch", p)
			c.checkServedNAR(p)
		}
	}
	t.Logf("%d kills, %d of them before the fetch was done", len(paths), midway)
	if held := checkHeld(t, c, paths, narHash); len(held) != len(paths) {
		t.Fatalf("the node holds %d of the %d paths", len(held), len(paths))
	}
}

// TestFullDiskFetch: a fetch that runs out of disk fails with one clear
// line, leaves the node up and no half path; once space is back the
// fetch succeeds.
func TestFullDiskFetch(t *testing.T) {
	nixtest.Require(t)
	a := newNodeAt(t, "127.0.0.32", "node-a-1")
	a.start()
	big := randomTree(t, "fetchbig", 12)
	a.run("import", "--sign", big)
	c := newNodeAt(t, "127.0.0.33", "", "--bootstrap", a.p2pAddr(), "--trusted-public-key", a.status().PublicKey)
	mnt := filepath.Join(c.dir, "data")
	tmpfs.MountAt(t, mnt, 48<<20)
	c.start()
	c.waitPeers(1)
	free := tmpfs.Fill(t, mnt, 3<<20)
	out, err := c.try("fetch", big)
	if err == nil {
		t.Fatalf("a fetch onto a full disk succeeded:\n%s", out)
	}
	msg := strings.TrimSpace(out)
	if !strings.Contains(msg, "no space left on device") || strings.Count(msg, "\n") > 0 {
		t.Fatalf("a fetch onto a full disk said:\n%s", out)
	}
	if s := c.status(); s.Paths != 0 {
		t.Fatalf("%d paths after the failed fetch", s.Paths)
	}
	if code, _ := c.get("/" + hashPart(big) + ".narinfo"); code != 200 && code != 404 {
		t.Fatalf("narinfo after the failed fetch: %d", code)
	}
	free()
	c.run("fetch", big)
	c.run("verify")
	c.checkServedNAR(big)
}
