package node

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/config"
	"github.com/p2pstore/p2pstore/narview/nar"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
)

// limitNode is a node with its stores and no servers, for the disk
// limit's logic.
func limitNode(t *testing.T, maxBytes int64) *Node {
	t.Helper()
	dir := t.TempDir()
	cfg := &config.Config{DataDir: filepath.Join(dir, "data"), StoreDir: "/nix/store",
		DaemonSocket: filepath.Join(dir, "s.sock"), MaxBytes: maxBytes}
	n, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

const fileKiB = 100

// addFilePath records a path of one random file of fileKiB KiB (its own
// chunks), pinned or not, and returns its hash part.
func addFilePath(t *testing.T, n *Node, i int, pinned bool) string {
	t.Helper()
	data := make([]byte, fileKiB<<10)
	rng := rand.NewChaCha8([32]byte{byte(i), 1})
	rng.Read(data)
	w := n.store.NewWriter()
	d, size, err := w.PutBlob(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	hash := fmt.Sprintf("%032d", i)
	info := &pathinfo.Info{StorePath: "/nix/store/" + hash + "-f", Root: castore.Node{Type: castore.TypeFile, Digest: d, Size: size},
		NarHash: sha256.Sum256(data), NarSize: uint64(len(data)), Pinned: pinned}
	if err := n.putPath(info); err != nil {
		t.Fatal(err)
	}
	return hash
}

func held(n *Node, hashes ...string) map[string]bool {
	out := map[string]bool{}
	for _, h := range hashes {
		out[h] = n.index.Has(h)
	}
	return out
}

func stored(t *testing.T, n *Node) uint64 {
	st, err := n.store.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return st.ChunkBytes
}

// TestEvictLRU: over the limit, the least recently used unpinned paths go
// (a use counts, not only the addition), pinned and held ones stay, and
// the store ends within the limit.
func TestEvictLRU(t *testing.T) {
	const max = 3*fileKiB<<10 + fileKiB<<9 // room for three and a half
	n := limitNode(t, max)
	pinned := addFilePath(t, n, 1, true) // the oldest, but pinned
	a := addFilePath(t, n, 2, false)
	b := addFilePath(t, n, 3, false)
	c := addFilePath(t, n, 4, false)
	n.limit.touch(a) // a used after c was added: b is now the least recent
	d := addFilePath(t, n, 5, false)
	if got := stored(t, n); got != 5*fileKiB<<10 {
		t.Fatalf("stored %d before the eviction", got)
	}
	removed, err := n.evict(context.Background(), max)
	if err != nil {
		t.Fatal(err)
	}
	got := held(n, pinned, a, b, c, d)
	want := map[string]bool{pinned: true, a: true, b: false, c: false, d: true}
	if fmt.Sprint(got) != fmt.Sprint(want) || removed != 2 {
		t.Fatalf("held %v after removing %d, want %v", got, removed, want)
	}
	if s := stored(t, n); s > max {
		t.Fatalf("stored %d over the limit %d", s, max)
	}
	tot, _ := n.index.Totals()
	if tot.Paths != 3 || tot.Pinned != 1 {
		t.Fatalf("totals %+v", tot)
	}
}

// TestEvictSkipsHeld: a path a render holds is not removed, though least
// recently used; the next one goes instead, and the held one goes once
// released.
func TestEvictSkipsHeld(t *testing.T) {
	const max = 2 * fileKiB << 10
	n := limitNode(t, max)
	a := addFilePath(t, n, 1, false)
	b := addFilePath(t, n, 2, false)
	c := addFilePath(t, n, 3, false)
	release, ok := n.limit.hold(a)
	if !ok {
		t.Fatal("hold refused")
	}
	if _, err := n.evict(context.Background(), max); err != nil {
		t.Fatal(err)
	}
	// A hold counts as a use: b is the least recent now.
	if got := held(n, a, b, c); !got[a] || got[b] || !got[c] {
		t.Fatalf("held %v", got)
	}
	// Everything must go, but a is held: it stays, over the limit.
	if _, err := n.evict(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	if got := held(n, a, c); !got[a] || got[c] {
		t.Fatalf("held %v with a held and a limit of 0", got)
	}
	release()
	if _, err := n.evict(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	if n.index.Has(a) || stored(t, n) != 0 {
		t.Fatalf("a held %v, stored %d after its release", n.index.Has(a), stored(t, n))
	}
}

// TestDoomedNotHeld: a render that comes while its path is being removed
// finds it absent, rather than reading objects about to go.
func TestDoomedNotHeld(t *testing.T) {
	n := limitNode(t, 1)
	a := addFilePath(t, n, 1, false)
	if !n.limit.doom(a) {
		t.Fatal("doom refused")
	}
	if _, ok := n.limit.hold(a); ok {
		t.Fatal("a doomed path was held")
	}
	info, _ := n.index.Get(a)
	err := n.renderPath(context.Background(), info, nar.Part{Compression: nar.CompressionNone}, io.Discard)
	if !errors.Is(err, pathinfo.ErrNotFound) {
		t.Fatalf("render of a doomed path: %v", err)
	}
	n.limit.undoom(a)
	if release, ok := n.limit.hold(a); !ok || n.limit.doom(a) {
		t.Fatal("a held path could be doomed")
	} else {
		release()
	}
}

// TestReserveMakesRoom: a fetch's reservation removes what the store must
// lose to take its bytes within the limit.
func TestReserveMakesRoom(t *testing.T) {
	const max = 3 * fileKiB << 10
	n := limitNode(t, max)
	a := addFilePath(t, n, 1, false)
	b := addFilePath(t, n, 2, false)
	c := addFilePath(t, n, 3, false)
	release := n.reserveSpace(context.Background(), fileKiB<<10)
	if got := held(n, a, b, c); got[a] || !got[b] || !got[c] {
		t.Fatalf("held %v after reserving one file's bytes", got)
	}
	// A second reservation in flight counts the first.
	release2 := n.reserveSpace(context.Background(), fileKiB<<10)
	if got := held(n, b, c); got[b] || !got[c] {
		t.Fatalf("held %v after a second reservation", got)
	}
	release()
	release2()
}

// TestPinRoundTrip: pin and unpin change the record and the counts; a
// path the node lacks fails the request and changes nothing.
func TestPinRoundTrip(t *testing.T) {
	n := limitNode(t, 0)
	a := addFilePath(t, n, 1, false)
	p := "/nix/store/" + a + "-f"
	ctx := context.Background()
	res, err := n.SetPinned(ctx, []string{p}, true)
	if err != nil || len(res.Changed) != 1 {
		t.Fatalf("pin: %+v, %v", res, err)
	}
	if info, _ := n.index.Get(a); !info.Pinned {
		t.Fatal("not pinned")
	}
	if res, err = n.SetPinned(ctx, []string{p}, true); err != nil || res.Unchanged != 1 {
		t.Fatalf("pin again: %+v, %v", res, err)
	}
	missing := "/nix/store/" + fmt.Sprintf("%032d", 9) + "-f"
	if _, err := n.SetPinned(ctx, []string{p, missing}, false); !errors.Is(err, pathinfo.ErrNotFound) {
		t.Fatalf("unpin with a missing path: %v", err)
	}
	if tot, _ := n.index.Totals(); tot.Pinned != 1 {
		t.Fatalf("a failed unpin changed the pins: %+v", tot)
	}
	if _, err := n.SetPinned(ctx, []string{"/nix/store/bad"}, false); !errors.Is(err, ErrBadInput) {
		t.Fatalf("unpin of a bad path: %v", err)
	}
	if _, err := n.SetPinned(ctx, []string{p}, false); err != nil {
		t.Fatal(err)
	}
	if tot, _ := n.index.Totals(); tot.Pinned != 0 {
		t.Fatalf("unpinned, still %+v", tot)
	}
}

// TestEvictFailureUndooms: when removing one victim fails, the victims
// after it are undoomed too: they can be held again (a path left doomed
// would be refused to every render until a restart).
func TestEvictFailureUndooms(t *testing.T) {
	n := limitNode(t, 1)
	a := addFilePath(t, n, 1, false)
	b := addFilePath(t, n, 2, false)
	c := addFilePath(t, n, 3, false)
	victims := n.limit.pickVictims([]victim{{hash: a, narSize: 1}, {hash: b, narSize: 1}, {hash: c, narSize: 1}}, 3)
	if len(victims) != 3 {
		t.Fatalf("doomed %d paths, want 3", len(victims))
	}
	failed := errors.New("disk failed")
	removed, err := n.removeVictims(victims, func(hash string) error {
		if hash == b {
			return failed
		}
		return n.deletePath(hash)
	})
	if !errors.Is(err, failed) || removed != 1 {
		t.Fatalf("removed %d, err %v; want 1 and the failure", removed, err)
	}
	for _, h := range []string{a, b, c} {
		release, ok := n.limit.hold(h)
		if !ok {
			t.Fatalf("%s still doomed after the failed eviction", h)
		}
		release()
	}
}

// TestReserveCapped: a reservation as large as the limit, or several in
// flight that add up to it, make room for half the limit at most: they
// do not empty the store of its unpinned paths.
func TestReserveCapped(t *testing.T) {
	const max = 4 * fileKiB << 10
	n := limitNode(t, max)
	var hashes []string
	for i := range 4 {
		hashes = append(hashes, addFilePath(t, n, i+1, false))
	}
	release := n.reserveSpace(context.Background(), 10*max)
	got := held(n, hashes...)
	if got[hashes[0]] || got[hashes[1]] || !got[hashes[2]] || !got[hashes[3]] {
		t.Fatalf("held %v after reserving ten times the limit; want the two most recent kept", got)
	}
	release()
	for i := range 2 {
		hashes[i] = addFilePath(t, n, i+10, false)
	}
	var releases []func()
	for range 4 {
		releases = append(releases, n.reserveSpace(context.Background(), fileKiB<<10))
	}
	if s := stored(t, n); s < max/2 {
		t.Fatalf("stored %d after four reservations adding up to the limit %d; want half kept", s, max)
	}
	for _, r := range releases {
		r()
	}
}

// TestAddSignaturesDoomed: adding signatures to a path the limit is
// removing fails as for an absent path, and writes nothing (the write
// would bring back a record whose objects are collected).
func TestAddSignaturesDoomed(t *testing.T) {
	n := limitNode(t, 1)
	a := addFilePath(t, n, 1, false)
	p := "/nix/store/" + a + "-f"
	const sig = "other.example-1:AAAA"
	if !n.limit.doom(a) {
		t.Fatal("doom refused")
	}
	err := daemonStore{n: n}.AddSignatures(context.Background(), p, []string{sig})
	if !errors.Is(err, pathinfo.ErrNotFound) {
		t.Errorf("adding signatures to a doomed path: %v", err)
	}
	if info, _ := n.index.Get(a); info != nil && slices.Contains(info.Sigs, sig) {
		t.Error("a doomed path's record was written")
	}
	n.limit.undoom(a)
	if err := (daemonStore{n: n}).AddSignatures(context.Background(), p, []string{sig}); err != nil {
		t.Fatal(err)
	}
	if info, _ := n.index.Get(a); info == nil || !slices.Contains(info.Sigs, sig) {
		t.Errorf("signature not added: %+v", info)
	}
}

// TestReadKeeps: a path read through the store mount, or whose record a
// peer asked for, is not removed for readGrace after the read (such
// readers cannot say when they are done); after it, it can go.
func TestReadKeeps(t *testing.T) {
	n := limitNode(t, 1)
	a := addFilePath(t, n, 1, false)
	b := addFilePath(t, n, 2, false)
	mountSource{n.store, n}.Reading(a)
	if _, err := n.evict(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	if got := held(n, a, b); !got[a] || got[b] {
		t.Fatalf("held %v after a read of a and a limit of 0", got)
	}
	n.limit.mu.Lock()
	n.limit.reading[a] -= int64(readGrace)
	n.limit.mu.Unlock()
	if _, err := n.evict(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	if n.index.Has(a) {
		t.Fatal("a read longer ago than readGrace is still kept")
	}
	if n.limit.takeUsed(); len(n.limit.reading) != 0 {
		t.Fatalf("old reads not forgotten: %v", n.limit.reading)
	}
}

// TestPinAllOrNothing: when one of the paths is being removed by the
// limit, a pin request fails and changes none of them, those before it
// included.
func TestPinAllOrNothing(t *testing.T) {
	n := limitNode(t, 0)
	a := addFilePath(t, n, 1, false)
	b := addFilePath(t, n, 2, false)
	if !n.limit.doom(b) {
		t.Fatal("doom refused")
	}
	_, err := n.SetPinned(context.Background(), []string{"/nix/store/" + a + "-f", "/nix/store/" + b + "-f"}, true)
	if !errors.Is(err, pathinfo.ErrNotFound) {
		t.Fatalf("pin with a path being removed: %v", err)
	}
	if tot, _ := n.index.Totals(); tot.Pinned != 0 {
		t.Fatalf("a failed pin changed %d paths", tot.Pinned)
	}
	n.limit.undoom(b)
	res, err := n.SetPinned(context.Background(), []string{"/nix/store/" + a + "-f", "/nix/store/" + a + "-f"}, true)
	if err != nil || len(res.Changed) != 1 || res.Unchanged != 0 {
		t.Fatalf("pin of a path named twice: %+v, %v", res, err)
	}
}
