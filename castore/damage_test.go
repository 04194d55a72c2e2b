package castore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// damagedTree stores a tree of two files (one of several chunks, one
// small) under a directory, shares it, and returns its root and the
// digests of the big file's chunks.
func damagedTree(t *testing.T, s *Store) (root Node, big []byte, refs []ChunkRef, small Digest) {
	t.Helper()
	big = pseudoRandom(7, 3*MaxChunkSize)
	for i := range big {
		big[i] = 'a' + big[i]%4 // compressible: its chunks get frames
	}
	w := s.NewWriter()
	bd, bn, err := w.PutBlob(bytes.NewReader(big))
	if err != nil {
		t.Fatal(err)
	}
	sd, sn, err := w.PutBlob(strings.NewReader("small file"))
	if err != nil {
		t.Fatal(err)
	}
	sub, err := w.PutDirectory(&Directory{Files: []FileEntry{{Name: []byte("small"), Digest: sd, Size: sn}}})
	if err != nil {
		t.Fatal(err)
	}
	dir := &Directory{Files: []FileEntry{{Name: []byte("big"), Digest: bd, Size: bn}},
		Directories: []DirectoryEntry{{Name: []byte("sub"), Digest: sub, Size: 1}}}
	rd, err := w.PutDirectory(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	root = Node{Type: TypeDirectory, Digest: rd, Size: dir.Size()}
	if _, err := s.Share(context.Background(), root); err != nil {
		t.Fatal(err)
	}
	if refs, err = s.BlobChunks(bd, bn); err != nil || len(refs) < 2 {
		t.Fatalf("chunks of the big file: %v %v", refs, err)
	}
	return root, big, refs, sd
}

// flipByte flips one byte of the raw pack, at off.
func flipByte(t *testing.T, dir string, off int64) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, packsDir, "00000001"+packSuffix), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	f.ReadAt(b, off)
	b[0] ^= 0x55
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// A byte flipped in a pack: VerifyObjects names the chunk, ReadChunk
// refuses it as a *Damage, TreeProblems names the tree with the damaged
// set and, once DropDamaged has taken the chunk out, as missing; a writer
// then stores the chunk anew and the tree is whole again, shared again.
func TestDamageFoundDroppedAndStoredAgain(t *testing.T) {
	s, dir := openTemp(t)
	root, big, refs, _ := damagedTree(t, s)
	ctx := context.Background()
	victim := refs[1]
	loc, err := s.chunkLoc(victim.Digest)
	if err != nil {
		t.Fatal(err)
	}
	flipByte(t, dir, loc.Offset+100)

	var found []*Damage
	if _, err := s.VerifyObjects(ctx, VerifyOptions{}, func(d *Damage) { found = append(found, d) }); err != nil {
		t.Fatal(err)
	}
	if len(found) != 1 || found[0].Kind != KindChunk || found[0].Digest != victim.Digest || !errors.Is(found[0], ErrDigestMismatch) {
		t.Fatalf("VerifyObjects found %v", found)
	}
	var dmg *Damage
	if _, err := s.ReadChunk(victim.Digest, nil); !errors.As(err, &dmg) || dmg.Digest != victim.Digest {
		t.Fatalf("ReadChunk of a damaged chunk: %v", err)
	}
	var treeFound []*Damage
	if err := s.VerifyTree(ctx, root, func(d *Damage) { treeFound = append(treeFound, d) }); err != nil || len(treeFound) != 1 || treeFound[0].Digest != victim.Digest {
		t.Fatalf("VerifyTree: %v %v", treeFound, err)
	}

	bad := func(d Digest) error {
		if d == victim.Digest {
			return found[0].Err
		}
		return nil
	}
	var problems []string
	hurt, err := s.TreeProblems(ctx, root, bad, func(p string) { problems = append(problems, p) })
	if err != nil || len(problems) != 1 || !strings.Contains(problems[0], "digest mismatch") || len(hurt) != 1 || hurt[0] != root.Digest {
		t.Fatalf("TreeProblems with the damaged set: %q, hurt %v, %v", problems, hurt, err)
	}

	// A good object is not dropped, whatever a reader says of it.
	if dropped, err := s.DropDamaged([]*Damage{{Kind: KindChunk, Digest: refs[0].Digest, Err: ErrDigestMismatch}}); err != nil || len(dropped) != 0 {
		t.Fatalf("DropDamaged of a good chunk: %v %v", dropped, err)
	}
	before, _ := s.Stats()
	dropped, err := s.DropDamaged(found)
	if err != nil || len(dropped) != 1 {
		t.Fatalf("DropDamaged: %v %v", dropped, err)
	}
	if s.HasChunk(victim.Digest) || s.IsShared(victim.Digest) {
		t.Fatal("a dropped chunk is still in the index or shared")
	}
	if after, _ := s.Stats(); after.Chunks != before.Chunks-1 || after.ChunkBytes != before.ChunkBytes-uint64(victim.Size) {
		t.Fatalf("stats went from %+v to %+v", before, after)
	}
	checkCounts(t, s)
	problems = nil
	hurt, err = s.TreeProblems(ctx, root, nil, func(p string) { problems = append(problems, p) })
	if err != nil || len(problems) != 1 || !strings.Contains(problems[0], "missing") || len(hurt) != 1 {
		t.Fatalf("TreeProblems after the drop: %q, %v", problems, err)
	}
	if err := s.Unshare(hurt); err != nil {
		t.Fatal(err)
	}

	// Stored again (as a fetch or an import would), the tree is whole
	// and sharing it marks the chunk again.
	w := s.NewWriter()
	if err := w.PutChunk(victim.Digest, big[refs[0].Size:refs[0].Size+victim.Size]); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	problems = nil
	if _, err := s.TreeProblems(ctx, root, nil, func(p string) { problems = append(problems, p) }); err != nil || len(problems) > 0 {
		t.Fatalf("TreeProblems after the chunk came back: %q %v", problems, err)
	}
	if fresh, err := s.Share(ctx, root); err != nil || !containsDigest(fresh, victim.Digest) {
		t.Fatalf("sharing the mended tree again announced %v, %v", fresh, err)
	}
	if got := readBlob(t, s, Sum(big), uint64(len(big))); !bytes.Equal(got, big) {
		t.Fatal("the mended file reads back other bytes")
	}
	var left []string
	if _, err := s.Verify(ctx, func(p string) { left = append(left, p) }); err != nil || len(left) > 0 {
		t.Fatalf("Verify after the mend: %q %v", left, err)
	}
}

func containsDigest(ds []Digest, d Digest) bool {
	for _, x := range ds {
		if x == d {
			return true
		}
	}
	return false
}

// A damaged frame beside a good raw chunk: only the frame is dropped, no
// tree is hurt, and the compressor makes the frame again.
func TestDamagedFrameMadeAgain(t *testing.T) {
	s, dir := openTemp(t)
	root, _, refs, _ := damagedTree(t, s)
	ctx := context.Background()
	if _, err := s.CompressPending(ctx); err != nil {
		t.Fatal(err)
	}
	var victim Digest
	var loc chunkLoc
	for _, r := range refs {
		if l, ok, _ := s.frameLoc(r.Digest); ok && l.Size > 0 {
			victim, loc = r.Digest, l
			break
		}
	}
	if loc.Size == 0 {
		t.Skip("no chunk of the test file compressed")
	}
	f, err := os.OpenFile(filepath.Join(dir, zstdDir, "00000001"+zstdSuffix), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{0xde, 0xad, 0xbe, 0xef}, loc.Offset+int64(loc.Size)/2)
	f.Close()

	var found []*Damage
	s.VerifyObjects(ctx, VerifyOptions{}, func(d *Damage) { found = append(found, d) })
	if len(found) != 1 || found[0].Kind != KindFrame || found[0].Digest != victim {
		t.Fatalf("VerifyObjects found %v", found)
	}
	if dropped, err := s.DropDamaged(found); err != nil || len(dropped) != 1 || dropped[0].Kind != KindFrame {
		t.Fatalf("DropDamaged: %v %v", dropped, err)
	}
	if !s.HasChunk(victim) {
		t.Fatal("dropping a frame dropped its chunk")
	}
	checkCounts(t, s)
	var problems []string
	if _, err := s.TreeProblems(ctx, root, nil, func(p string) { problems = append(problems, p) }); err != nil || len(problems) > 0 {
		t.Fatalf("a dropped frame hurt the tree: %q", problems)
	}
	if n, err := s.CompressPending(ctx); err != nil || n != 1 {
		t.Fatalf("CompressPending made %d frames, %v", n, err)
	}
	found = nil
	s.VerifyObjects(ctx, VerifyOptions{}, func(d *Damage) { found = append(found, d) })
	if len(found) > 0 {
		t.Fatalf("after the frame was made again: %v", found)
	}
}

// VerifyObjects reads the index in batches: every object of a store
// larger than one batch is checked, and Pace sees every chunk's bytes.
func TestVerifyObjectsBatches(t *testing.T) {
	s, _ := openTemp(t)
	w := s.NewWriter()
	const n = 3*verifyBatch + 7
	var total int
	for i := 0; i < n; i++ {
		data := []byte(strings.Repeat("x", i%50) + string(rune('a'+i%26)) + strings.Repeat("y", i))
		if _, _, err := w.PutBlob(bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		total += len(data)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	st0, _ := s.Stats()
	paced := 0
	st, err := s.VerifyObjects(context.Background(), VerifyOptions{Pace: func(_ context.Context, b int) error { paced += b; return nil }},
		func(d *Damage) { t.Error(d) })
	if err != nil || uint64(st.Chunks) != st0.Chunks || st.Bytes != st0.ChunkBytes || uint64(paced) != st0.ChunkBytes {
		t.Fatalf("checked %+v (paced %d) of %+v: %v", st, paced, st0, err)
	}
}

// A collection that would copy a damaged chunk out of a pack it rewrites
// stops, naming the chunk as a *Damage; once it is dropped, the next
// collection rewrites the pack without it.
func TestCollectFindsDamage(t *testing.T) {
	s, dir := openTemp(t)
	w := s.NewWriter()
	live := putFile(t, w, pseudoRandom(1, 400<<10))
	putFile(t, w, pseudoRandom(2, 400<<10)) // garbage: the pack is worth rewriting
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	flipByte(t, dir, 1000) // in the live file's first chunk
	roots := func(yield func(Node) error) error { return yield(live) }
	_, err := s.Collect(context.Background(), roots)
	var dmg *Damage
	if !errors.As(err, &dmg) || dmg.Kind != KindChunk || !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("Collect over a damaged chunk: %v", err)
	}
	if dropped, err := s.DropDamaged([]*Damage{dmg}); err != nil || len(dropped) != 1 {
		t.Fatalf("DropDamaged: %v %v", dropped, err)
	}
	st, err := s.Collect(context.Background(), roots)
	if err != nil || st.PacksRewritten != 1 {
		t.Fatalf("Collect after the drop: %+v %v", st, err)
	}
	var problems []string
	if _, err := s.TreeProblems(context.Background(), live, nil, func(p string) { problems = append(problems, p) }); err != nil || len(problems) != 1 {
		t.Fatalf("the live tree lacks %q (%v), want the dropped chunk alone", problems, err)
	}
}
