package pathinfo

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/narview/narinfo"
)

func sample(hash string, size uint64) *Info {
	return &Info{
		StorePath:  "/nix/store/" + hash + "-name",
		Root:       castore.Node{Type: castore.TypeDirectory, Digest: castore.Sum([]byte(hash)), Size: 3},
		NarHash:    sha256.Sum256([]byte(hash)),
		NarSize:    size,
		References: []string{"/nix/store/" + hash + "-name"},
		Sigs:       []string{"x-1:AAAA"},
	}
}

func TestIndex(t *testing.T) {
	file := filepath.Join(t.TempDir(), "paths.db")
	x, err := Open(file)
	if err != nil {
		t.Fatal(err)
	}
	a, b := sample("a9zpn38rqprns64gwcxfjp10iskh33lw", 100), sample("6rncpsjxcpfj92i3n53hkxj9vhnpgsqb", 50)
	a.Lists = castore.Sum([]byte("lists")) // b has none: both must read back
	for _, in := range []*Info{a, b, a} {  // a twice: replaced, not added
		if err := in.Validate("/nix/store"); err != nil {
			t.Fatal(err)
		}
		if err := x.Put(in); err != nil {
			t.Fatal(err)
		}
	}
	tot, _ := x.Totals()
	if tot.Paths != 2 || tot.NarBytes != 150 {
		t.Fatalf("totals %+v", tot)
	}
	x.Close()
	if x, err = Open(file); err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	got, err := x.Get(a.HashPart())
	if err != nil {
		t.Fatal(err)
	}
	if got.Root.Marshal() == nil || string(got.Root.Marshal()) != string(a.Root.Marshal()) || got.NarHash != a.NarHash || got.StorePath != a.StorePath || got.Lists != a.Lists {
		t.Fatalf("read back %+v", got)
	}
	if got, err := x.Get(b.HashPart()); err != nil || got.Lists != (castore.Digest{}) {
		t.Fatalf("read back without lists: %+v, %v", got, err)
	}
	if _, err := x.Get("00000000000000000000000000000000"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing path: %v", err)
	}
	x.Delete(a.HashPart())
	if tot, _ := x.Totals(); tot.Paths != 1 || tot.NarBytes != 50 {
		t.Fatalf("after delete %+v", tot)
	}
}

func TestSignatures(t *testing.T) {
	k, _ := narinfo.GenerateKey("test-1")
	in := sample("a9zpn38rqprns64gwcxfjp10iskh33lw", 100)
	if in.TrustedBy([]narinfo.PublicKey{k.Public()}) {
		t.Fatal("trusted before signing")
	}
	in.AddSig(k.Sign(in.Fingerprint()))
	in.AddSig(k.Sign(in.Fingerprint()))
	if len(in.Sigs) != 2 || !in.TrustedBy([]narinfo.PublicKey{k.Public()}) {
		t.Fatalf("sigs %v", in.Sigs)
	}
	if dropped := in.DropBadSigs([]narinfo.PublicKey{k.Public()}); len(dropped) != 0 || len(in.Sigs) != 2 {
		t.Fatalf("good signatures dropped: %v, kept %v", dropped, in.Sigs)
	}
	in.NarSize++
	if in.TrustedBy([]narinfo.PublicKey{k.Public()}) {
		t.Fatal("trusted after the NarSize changed")
	}
}

// TestDropBadSigs: a rotated key leaves a stale signature under its name
// beside a good one from its new key of the same name; the stale one goes,
// the good one and those by keys the node does not know stay, and the path
// stays trusted, as Nix takes it.
func TestDropBadSigs(t *testing.T) {
	old, _ := narinfo.GenerateKey("cache-1")
	cur, _ := narinfo.GenerateKey("cache-1")
	other, _ := narinfo.GenerateKey("elsewhere-1")
	in := sample("a9zpn38rqprns64gwcxfjp10iskh33lw", 100)
	stale, good, unknown := old.Sign(in.Fingerprint()), cur.Sign(in.Fingerprint()), other.Sign(in.Fingerprint())
	in.AddSig(stale)
	in.AddSig(good)
	in.AddSig(unknown)
	keys := []narinfo.PublicKey{cur.Public()}
	dropped := in.DropBadSigs(keys)
	if len(dropped) != 1 || dropped[0] != stale {
		t.Fatalf("dropped %v, want the stale signature", dropped)
	}
	if n := len(in.Sigs); n < 2 || in.Sigs[n-2] != good || in.Sigs[n-1] != unknown || slices.Contains(in.Sigs, stale) {
		t.Fatalf("kept %v", in.Sigs)
	}
	if !in.TrustedBy(keys) {
		t.Fatal("not trusted with a good signature")
	}
}

// TestPrivateStaysLocal: the private mark survives the index, and is not
// part of a path's metadata, which is what peers get.
func TestPrivateStaysLocal(t *testing.T) {
	x, err := Open(filepath.Join(t.TempDir(), "paths.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	in := sample("a9zpn38rqprns64gwcxfjp10iskh33lw", 100)
	in.Private = true
	if err := x.Put(in); err != nil {
		t.Fatal(err)
	}
	x.cache.Delete(in.HashPart()) // read it from the file
	got, err := x.Get(in.HashPart())
	if err != nil || !got.Private {
		t.Fatalf("read back %+v, %v", got, err)
	}
	got.Private = false // as every record a peer gets: no shared path is private
	if b, _ := json.Marshal(got); strings.Contains(string(b), "private") {
		t.Fatalf("a path that is not private carries the mark: %s", b)
	}
}

// TestSnapshot: a snapshot's walk sees the index as it was when taken.
func TestSnapshot(t *testing.T) {
	x, err := Open(filepath.Join(t.TempDir(), "paths.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	a, b := sample("a9zpn38rqprns64gwcxfjp10iskh33lw", 100), sample("6rncpsjxcpfj92i3n53hkxj9vhnpgsqb", 50)
	x.Put(a)
	s, err := x.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	x.Put(b)
	var seen []string
	s.ForEach(func(info *Info) error { seen = append(seen, info.HashPart()); return nil })
	s.Close()
	if len(seen) != 1 || seen[0] != a.HashPart() {
		t.Fatalf("snapshot walk saw %v", seen)
	}
}

// TestUsedAndPinned: Put records a use and counts pins; Touch keeps the
// latest time of a path the index holds; Delete forgets both.
func TestUsedAndPinned(t *testing.T) {
	x, err := Open(filepath.Join(t.TempDir(), "paths.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	a, b := sample("a9zpn38rqprns64gwcxfjp10iskh33lw", 100), sample("6rncpsjxcpfj92i3n53hkxj9vhnpgsqb", 50)
	a.Pinned = true
	for _, in := range []*Info{a, b, a} {
		if err := x.Put(in); err != nil {
			t.Fatal(err)
		}
	}
	used := func() map[string]int64 {
		m := map[string]int64{}
		if err := x.ForEachUsed(func(info *Info, t int64) error { m[info.HashPart()] = t; return nil }); err != nil {
			t.Fatal(err)
		}
		return m
	}
	before := used()
	if before[a.HashPart()] == 0 || before[b.HashPart()] == 0 {
		t.Fatalf("Put recorded no use: %v", before)
	}
	if tot, _ := x.Totals(); tot.Pinned != 1 {
		t.Fatalf("pinned %d, want 1", tot.Pinned)
	}
	later := before[b.HashPart()] + 1000
	err = x.Touch(map[string]int64{b.HashPart(): later, a.HashPart(): 1, "00000000000000000000000000000000": later})
	if err != nil {
		t.Fatal(err)
	}
	after := used()
	if after[b.HashPart()] != later || after[a.HashPart()] != before[a.HashPart()] || len(after) != 2 {
		t.Fatalf("after Touch %v (before %v)", after, before)
	}
	a.Pinned = false
	if err := x.Put(a); err != nil {
		t.Fatal(err)
	}
	if tot, _ := x.Totals(); tot.Pinned != 0 {
		t.Fatalf("unpinned, still %d pinned", tot.Pinned)
	}
	if m := used(); m[a.HashPart()] != after[a.HashPart()] {
		t.Fatalf("replacing a record (unpinning it) made it used at %d; it was last used at %d", m[a.HashPart()], after[a.HashPart()])
	}
	b.Pinned = true
	if err := x.Put(b); err != nil {
		t.Fatal(err)
	}
	if err := x.Delete(b.HashPart()); err != nil {
		t.Fatal(err)
	}
	if tot, _ := x.Totals(); tot.Pinned != 0 || tot.Paths != 1 {
		t.Fatalf("after deleting the pinned path: %+v", tot)
	}
	if m := used(); len(m) != 1 {
		t.Fatalf("used %v after a delete", m)
	}
}

// TestMigratePins: the records of an index written before pins and uses
// existed are pinned on opening, once: they are not the limit's first
// victims, and a record unpinned later stays so.
func TestMigratePins(t *testing.T) {
	file := filepath.Join(t.TempDir(), "paths.db")
	a, b := sample("a9zpn38rqprns64gwcxfjp10iskh33lw", 100), sample("6rncpsjxcpfj92i3n53hkxj9vhnpgsqb", 50)
	// The index as an older version wrote it: records, no uses, no pins.
	db, err := bolt.Open(file, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		paths, err := tx.CreateBucket(bucketPaths)
		if err != nil {
			return err
		}
		for _, in := range []*Info{a, b} {
			v, _ := json.Marshal(in)
			if err := paths.Put([]byte(in.HashPart()), v); err != nil {
				return err
			}
		}
		return nil
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	x, err := Open(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range []*Info{a, b} {
		if got, err := x.Get(in.HashPart()); err != nil || !got.Pinned {
			t.Errorf("%s after the migration: %+v, %v", in.HashPart(), got, err)
		}
	}
	if tot, _ := x.Totals(); tot.Pinned != 2 {
		t.Errorf("pinned %d after the migration, want 2", tot.Pinned)
	}
	x.ForEachUsed(func(info *Info, lastUsed int64) error {
		if lastUsed == 0 {
			t.Errorf("%s has no use after the migration", info.HashPart())
		}
		return nil
	})
	b.Pinned = false
	c := sample("00000000000000000000000000000000", 10)
	if err := x.Put(b); err != nil {
		t.Fatal(err)
	}
	if err := x.Put(c); err != nil {
		t.Fatal(err)
	}
	x.Close()
	if x, err = Open(file); err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	for _, in := range []*Info{b, c} {
		if got, _ := x.Get(in.HashPart()); got == nil || got.Pinned {
			t.Errorf("%s pinned again on reopening: %+v", in.HashPart(), got)
		}
	}
}

// TestTotalsBySource: Put and Delete keep the number of paths of each
// source, a record replaced with another source moving between them, and
// an index written before those counts is counted once on opening.
func TestTotalsBySource(t *testing.T) {
	file := filepath.Join(t.TempDir(), "paths.db")
	x, err := Open(file)
	if err != nil {
		t.Fatal(err)
	}
	a, b, c := sample("a9zpn38rqprns64gwcxfjp10iskh33lw", 100), sample("6rncpsjxcpfj92i3n53hkxj9vhnpgsqb", 50), sample("00000000000000000000000000000000", 10)
	a.Source, b.Source = SourcePeer, SourcePeer
	for _, in := range []*Info{a, b, c} {
		if err := x.Put(in); err != nil {
			t.Fatal(err)
		}
	}
	b.Source = SourceImport // imported by hand after it was fetched
	if err := x.Put(b); err != nil {
		t.Fatal(err)
	}
	want := Totals{Paths: 3, NarBytes: 160, BySource: map[Source]int{SourcePeer: 1, SourceImport: 1, "": 1}}
	if tot, _ := x.Totals(); !reflect.DeepEqual(tot, want) {
		t.Fatalf("totals %+v, want %+v", tot, want)
	}
	if err := x.Delete(a.HashPart()); err != nil {
		t.Fatal(err)
	}
	want = Totals{Paths: 2, NarBytes: 60, BySource: map[Source]int{SourceImport: 1, "": 1}}
	if tot, _ := x.Totals(); !reflect.DeepEqual(tot, want) {
		t.Fatalf("after a delete: totals %+v, want %+v", tot, want)
	}
	// As an index written before the counts: they are made on opening.
	err = x.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		for _, k := range [][]byte{metaPaths, sourceKey(SourceImport), sourceKey("")} {
			if err := meta.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	x.Close()
	if x, err = Open(file); err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	if tot, _ := x.Totals(); !reflect.DeepEqual(tot, want) {
		t.Fatalf("counted on opening: totals %+v, want %+v", tot, want)
	}
}

// TestPage: pages list every record once, in hash order.
func TestPage(t *testing.T) {
	x, err := Open(filepath.Join(t.TempDir(), "paths.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	var want []string
	for i := range 7 {
		in := sample(fmt.Sprintf("%031d%d", 0, i), 10)
		if err := x.Put(in); err != nil {
			t.Fatal(err)
		}
		want = append(want, in.HashPart())
	}
	var got []string
	for after := ""; ; {
		page, err := x.Page(after, 3)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		for _, in := range page {
			got = append(got, in.HashPart())
		}
		after = page[len(page)-1].HashPart()
	}
	if !slices.Equal(got, want) {
		t.Fatalf("pages listed %q, want %q", got, want)
	}
}

// An invalid path is gone for every reader of the index, keeps its record
// and why, survives a reopening, and a Put makes it valid again.
func TestInvalidate(t *testing.T) {
	file := filepath.Join(t.TempDir(), "paths.db")
	x, err := Open(file)
	if err != nil {
		t.Fatal(err)
	}
	a, b := sample("a9zpn38rqprns64gwcxfjp10iskh33lw", 100), sample("6rncpsjxcpfj92i3n53hkxj9vhnpgsqb", 50)
	a.Pinned, a.Private = true, true
	for _, in := range []*Info{a, b} {
		if err := x.Put(in); err != nil {
			t.Fatal(err)
		}
	}
	x.Get(a.HashPart()) // cached: Invalidate must drop it from the cache too
	old, err := x.Invalidate(a.HashPart(), "chunk X is damaged")
	if err != nil || old.StorePath != a.StorePath {
		t.Fatalf("Invalidate: %v %v", old, err)
	}
	if _, err := x.Invalidate(a.HashPart(), "again"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("invalidating an invalid path: %v", err)
	}
	check := func() {
		t.Helper()
		if _, err := x.Get(a.HashPart()); !errors.Is(err, ErrNotFound) || x.Has(a.HashPart()) {
			t.Fatalf("an invalid path is still readable: %v", err)
		}
		var seen []string
		x.ForEach(func(i *Info) error { seen = append(seen, i.HashPart()); return nil })
		if len(seen) != 1 || seen[0] != b.HashPart() {
			t.Fatalf("ForEach sees %v", seen)
		}
		if tot, _ := x.Totals(); tot.Paths != 1 || tot.NarBytes != 50 || tot.Pinned != 0 {
			t.Fatalf("totals %+v", tot)
		}
		inv, err := x.Invalid(a.HashPart())
		if err != nil || inv.Reason != "chunk X is damaged" || inv.Since == 0 || !inv.Info.Pinned || !inv.Info.Private || inv.Info.NarHash != a.NarHash {
			t.Fatalf("Invalid: %+v %v", inv, err)
		}
		n := 0
		x.ForEachInvalid(func(*Invalid) error { n++; return nil })
		if n != 1 {
			t.Fatalf("%d invalid paths", n)
		}
	}
	check()
	x.Close()
	if x, err = Open(file); err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	check()
	if err := x.Put(a); err != nil {
		t.Fatal(err)
	}
	if _, err := x.Invalid(a.HashPart()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a path put again is still invalid: %v", err)
	}
	if tot, _ := x.Totals(); tot.Paths != 2 || tot.NarBytes != 150 || tot.Pinned != 1 {
		t.Fatalf("totals after the put %+v", tot)
	}
}
