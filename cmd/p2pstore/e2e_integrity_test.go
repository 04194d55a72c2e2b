package main

// End-to-end tests of damage on disk: a byte flipped in a node's pack is
// found by verify, by the background scrub and by a peer's request, the
// store paths it hurts are named, and they are repaired from a peer or,
// when no source has them, no longer served.

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/internal/nixtest"
	"github.com/p2pstore/p2pstore/node/transfer"
)

// flipPackByte flips the byte at off in the node's first raw pack, while
// the node runs (it reads the same page cache).
func (n *nodeProc) flipPackByte(off int64) {
	n.t.Helper()
	f, err := os.OpenFile(filepath.Join(n.dir, "data", "castore", "packs", "00000001.pack"), os.O_RDWR, 0)
	if err != nil {
		n.t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		n.t.Fatal(err)
	}
	b[0] ^= 0x20
	if _, err := f.WriteAt(b, off); err != nil {
		n.t.Fatal(err)
	}
}

// waitLog waits, bounded, until the node's log holds a line with all of
// words, and returns it.
func (n *nodeProc) waitLog(within time.Duration, words ...string) string {
	n.t.Helper()
	deadline := time.Now().Add(within)
	for {
		for _, line := range strings.Split(n.log.String(), "\n") {
			if containsAll(line, words) {
				return line
			}
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("no log line with %q after %s:\n%s", words, within, n.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func containsAll(s string, words []string) bool {
	for _, w := range words {
		if !strings.Contains(s, w) {
			return false
		}
	}
	return true
}

// TestVerifyRepairFromPeer: a byte flipped in B's pack is named by
// `verify` with the store path that uses it (exit 1, nothing changed);
// `verify --repair` gets the chunk again from A and proves the path whole,
// after which B serves the NAR of nix-store --dump, with its own signature
// kept, and verify finds nothing.
func TestVerifyRepairFromPeer(t *testing.T) {
	nixtest.Require(t)
	a := newNodeAt(t, "127.0.0.110", "node-a-1", "--scrub-interval=0")
	a.start()
	pubA := a.status().PublicKey
	b := newNodeAt(t, "127.0.0.111", "node-b-1", "--bootstrap", a.p2pAddr(), "--trusted-public-key", pubA, "--scrub-interval=0")
	b.start()
	p := addTree(t, "damaged", secretFiles("damaged"))
	q := addTree(t, "sound", secretFiles("sound"))
	a.run("import", "--sign", p)
	b.run("import", "--sign", p) // B's pack begins with p's chunks
	b.run("import", "--sign", q)
	b.waitPeers(1)
	b.flipPackByte(5000)

	out, err := b.try("verify")
	if err == nil {
		t.Fatalf("verify of a damaged store succeeded:\n%s", out)
	}
	if !strings.Contains(out, p+": damaged") || strings.Contains(out, q) || !strings.Contains(out, "digest mismatch") {
		t.Fatalf("verify did not name the damaged path (and only it):\n%s", out)
	}
	if code, _ := b.get("/" + hashPart(p) + ".narinfo"); code != 200 {
		t.Fatalf("verify without --repair changed the store: narinfo %d", code)
	}

	sentBefore := a.status().P2PBytesSent
	out = b.run("verify", "--repair")
	if !strings.Contains(out, p+": repaired") {
		t.Fatalf("verify --repair:\n%s", out)
	}
	if a.status().P2PBytesSent == sentBefore {
		t.Error("the repair took nothing from the peer")
	}
	if out, err := b.try("verify"); err != nil || strings.Contains(out, p) {
		t.Fatalf("verify after the repair: %v\n%s", err, out)
	}
	b.checkServedNAR(p)
	b.checkServedNAR(q)
	if _, body := b.get("/" + hashPart(p) + ".narinfo"); !strings.Contains(string(body), "Sig: node-b-1:") {
		t.Errorf("the repaired path lost B's signature:\n%s", body)
	}
}

// TestVerifyRepairWithoutSource: with no peer or upstream holding the
// damaged path, `verify --repair` reports it not repaired and marks it
// invalid: its narinfo and NAR are 404s, a peer gets no record, verify
// keeps naming it, and importing it again makes it valid.
func TestVerifyRepairWithoutSource(t *testing.T) {
	nixtest.Require(t)
	n := newNodeAt(t, "127.0.0.112", "node-a-1", "--scrub-interval=0")
	n.start()
	p := addTree(t, "lost", secretFiles("lost"))
	n.run("import", "--sign", p)
	url := n.narURL(p)
	n.flipPackByte(5000)

	out, err := n.try("verify", "--repair")
	if err == nil || !strings.Contains(out, p+": ") || !strings.Contains(out, "not repaired") {
		t.Fatalf("verify --repair with no source: %v\n%s", err, out)
	}
	if code, _ := n.get("/" + hashPart(p) + ".narinfo"); code != 404 {
		t.Fatalf("narinfo of an invalid path: %d", code)
	}
	if code, _ := n.get(strings.TrimPrefix(url, n.url)); code != 404 {
		t.Fatalf("NAR of an invalid path: %d", code)
	}
	if s := n.status(); s.Paths != 0 {
		t.Errorf("status counts %d paths", s.Paths)
	}
	c, id := anonymousPeer(t, n, "127.0.0.113")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Record(ctx, id, hashPart(p)); !errors.Is(err, transfer.ErrNotFound) {
		t.Fatalf("a peer asking for an invalid path's record: %v", err)
	}
	if out, err := n.try("verify"); err == nil || !strings.Contains(out, p+": invalid") {
		t.Fatalf("verify of a store with an invalid path: %v\n%s", err, out)
	}

	n.run("import", "--sign", p)
	n.checkServedNAR(p)
	if out, err := n.try("verify"); err != nil {
		t.Fatalf("verify after the import: %v\n%s", err, out)
	}
}

// TestScrubRepairsFromPeer: with a short storage.scrub_interval, B's
// background scrub finds a byte flipped in its pack by itself, logs the
// path, and repairs it from A.
func TestScrubRepairsFromPeer(t *testing.T) {
	nixtest.Require(t)
	a := newNodeAt(t, "127.0.0.114", "node-a-1", "--scrub-interval=0")
	a.start()
	pubA := a.status().PublicKey
	b := newNodeAt(t, "127.0.0.115", "", "--bootstrap", a.p2pAddr(), "--trusted-public-key", pubA, "--scrub-interval=1s")
	b.start()
	p := addTree(t, "scrubbed", secretFiles("scrubbed"))
	a.run("import", "--sign", p)
	b.run("import", p)
	b.waitPeers(1)
	b.waitLog(30*time.Second, "scrubbed the store", "damaged_objects=0")
	b.flipPackByte(5000)

	if line := b.waitLog(60*time.Second, "a stored path is damaged", p); !strings.Contains(line, "digest mismatch") {
		t.Errorf("the scrub's line does not say what is wrong: %s", line)
	}
	b.waitLog(60*time.Second, "repaired a damaged path", p)
	b.checkServedNAR(p)
	if out, err := b.try("verify"); err != nil {
		t.Fatalf("verify after the scrub: %v\n%s", err, out)
	}
}

// TestPeerGetsNoDamagedChunk: a peer that asks for the chunks of a path
// one of which is damaged on disk gets the others and "not found" for it,
// never its bytes; the node takes the chunk out of service, names the path
// in its log, and, no source having it, stops serving it.
func TestPeerGetsNoDamagedChunk(t *testing.T) {
	nixtest.Require(t)
	n := newNodeAt(t, "127.0.0.116", "node-a-1", "--scrub-interval=0")
	n.start()
	files := secretFiles("asked")
	p := addTree(t, "asked", files)
	n.run("import", "--sign", p)
	// The compressor reads the new chunks after the import: done before
	// the flip, it cannot find the damage before the peer's request does.
	n.waitCompressed()
	n.flipPackByte(5000)

	c, id := anonymousPeer(t, n, "127.0.0.117")
	_, chunks := fileDigests(t, files)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	refused := 0
	for _, d := range chunks {
		err := c.Chunks(ctx, id, []castore.Digest{d}, false, nil, func(castore.Digest, []byte, []byte) error { return nil })
		switch {
		case errors.Is(err, transfer.ErrNotFound):
			refused++
		case err != nil:
			t.Fatalf("chunk %s: %v", d, err)
		}
	}
	if refused != 1 {
		t.Fatalf("%d of %d chunks refused, want the damaged one", refused, len(chunks))
	}
	n.waitLog(30*time.Second, "a stored object is damaged", "found_by=\"a peer's request\"")
	n.waitLog(30*time.Second, "a stored path is damaged", p)
	n.waitNarinfo(p, 404, 30*time.Second)
}

// TestVerifyRepairFromUpstream: a pulled path damaged on disk is pulled
// again from the upstream by `verify --repair`, and served whole.
func TestVerifyRepairFromUpstream(t *testing.T) {
	nixtest.Require(t)
	key, pub := upstreamKey(t)
	p := addTree(t, "pulled", secretFiles("pulled"))
	up := startNginx(t, "127.0.0.118", staticCache(t, key, "zstd", p))
	n := pullNode(t, "127.0.0.119", pub, up.url)
	if _, out, err := substitute(t, pub, p, n.url); err != nil {
		t.Fatalf("nix-store -r through the node: %v\n%s", err, out)
	}
	// The pull's ingest may still run after its client is done; then the
	// compressor reads the new chunks: both done before the flip, neither
	// can find the damage first and have it repaired in the background.
	n.waitValid(p)
	n.waitCompressed()
	n.flipPackByte(5000)

	before := up.requests(t, "/nar/")
	out := n.run("verify", "--repair")
	if !strings.Contains(out, p+": repaired") {
		t.Fatalf("verify --repair:\n%s", out)
	}
	if up.requests(t, "/nar/") == before {
		t.Error("the repair asked the upstream for nothing")
	}
	n.checkServedNAR(p)
	if out, err := n.try("verify"); err != nil {
		t.Fatalf("verify after the repair: %v\n%s", err, out)
	}
}
