package castore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/klauspost/compress/zstd"
	bolt "go.etcd.io/bbolt"

	"github.com/p2pstore/p2pstore/internal/tmpfs"
)

// verifyClean fails t if Verify reports a problem.
func verifyClean(t *testing.T, s *Store) {
	t.Helper()
	var problems []string
	if _, err := s.Verify(context.Background(), func(p string) { problems = append(problems, p) }); err != nil || len(problems) > 0 {
		t.Fatalf("verify: %v, %d problems: %q", err, len(problems), problems[:min(len(problems), 5)])
	}
	checkCounts(t, s)
}

// checkCounts fails t unless the counters Stats reads match the buckets
// they count.
func checkCounts(t *testing.T, s *Store) {
	t.Helper()
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	var want Stats
	s.db.View(func(tx *bolt.Tx) error {
		want.Chunks = uint64(tx.Bucket(bucketChunks).Stats().KeyN)
		want.Blobs = uint64(tx.Bucket(bucketBlobs).Stats().KeyN)
		want.Directories = uint64(tx.Bucket(bucketDirs).Stats().KeyN)
		want.Frames = uint64(tx.Bucket(bucketFrames).Stats().KeyN)
		return nil
	})
	if st.Chunks != want.Chunks || st.Blobs != want.Blobs || st.Directories != want.Directories || st.Frames != want.Frames {
		t.Fatalf("stats count %d chunks, %d blobs, %d directories, %d frames; the buckets hold %d, %d, %d, %d",
			st.Chunks, st.Blobs, st.Directories, st.Frames, want.Chunks, want.Blobs, want.Directories, want.Frames)
	}
}

// packBytes is the size of the pack files of one set on disk.
func packBytes(t *testing.T, dir, sub string) int64 {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dir, sub))
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		n += info.Size()
	}
	return n
}

// putFile stores data as a one-file directory with writer w and returns
// the directory's node.
func putFile(t *testing.T, w *Writer, data []byte) Node {
	t.Helper()
	d, n, err := w.PutBlob(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	dir := &Directory{Files: []FileEntry{{Name: []byte("f"), Digest: d, Size: n}}}
	dd, err := w.PutDirectory(dir)
	if err != nil {
		t.Fatal(err)
	}
	return Node{Type: TypeDirectory, Digest: dd, Size: dir.Size()}
}

func rootsOf(nodes ...Node) func(func(Node) error) error {
	return func(yield func(Node) error) error {
		for _, n := range nodes {
			if err := yield(n); err != nil {
				return err
			}
		}
		return nil
	}
}

// readTree checks that the one-file tree under root reads back as data.
func readTree(t *testing.T, s *Store, root Node, data []byte) {
	t.Helper()
	dir, err := s.Directory(root.Digest)
	if err != nil {
		t.Fatal(err)
	}
	f := dir.Files[0]
	if got := readBlob(t, s, f.Digest, f.Size); !bytes.Equal(got, data) {
		t.Fatal("tree reads back other bytes")
	}
}

// A write that fails on a full disk leaves the pack as it was, and once
// space is back the next writer's chunks land where the index says: for a
// file of large chunks (written straight to the pack) and for many small
// files (written through the buffer).
func TestFullDisk(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files func(seed uint64) [][]byte
	}{
		{"large chunks", func(seed uint64) [][]byte { return [][]byte{pseudoRandom(seed, 6<<20)} }},
		{"small files", func(seed uint64) [][]byte {
			var out [][]byte
			for i := range 1500 {
				out = append(out, pseudoRandom(seed*10000+uint64(i), 4<<10))
			}
			return out
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := tmpfs.Mount(t, 24<<20)
			s, err := Open(filepath.Join(dir, "store"))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			first := pseudoRandom(1, 1<<20)
			w := s.NewWriter()
			firstRoot := putFile(t, w, first)
			if err := w.Commit(); err != nil {
				t.Fatal(err)
			}
			committed := packBytes(t, filepath.Join(dir, "store"), packsDir)

			free := tmpfs.Fill(t, dir, 3<<20)
			w = s.NewWriter()
			var failed error
			for _, f := range tc.files(2) {
				if _, _, failed = w.PutBlob(bytes.NewReader(f)); failed != nil {
					break
				}
			}
			if failed == nil {
				failed = w.Commit()
			}
			if !errors.Is(failed, syscall.ENOSPC) {
				t.Fatalf("writing to a full disk: %v, want ENOSPC", failed)
			}
			if strings.Count(failed.Error(), "\n") > 0 {
				t.Fatalf("error of more than one line: %q", failed)
			}
			w.Abort()
			if got := packBytes(t, filepath.Join(dir, "store"), packsDir); got != committed {
				t.Fatalf("packs hold %d bytes after the failed writer, %d committed", got, committed)
			}
			free()

			w = s.NewWriter()
			files := tc.files(3)
			var roots []Node
			for _, f := range files {
				roots = append(roots, putFile(t, w, f))
			}
			if err := w.Commit(); err != nil {
				t.Fatalf("writing once space is back: %v", err)
			}
			for i, f := range files {
				readTree(t, s, roots[i], f)
			}
			readTree(t, s, firstRoot, first)
			verifyClean(t, s)
		})
	}
}

// A failed write loses the bytes other writers had buffered: they must not
// commit locations past the pack's end.
func TestFullDiskOtherWriters(t *testing.T) {
	dir := tmpfs.Mount(t, 16<<20)
	s, err := Open(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a := s.NewWriter()
	smallData := pseudoRandom(7, 10<<10)
	aRoot := putFile(t, a, smallData) // buffered, not yet written
	free := tmpfs.Fill(t, dir, 0)
	b := s.NewWriter()
	if _, _, err := b.PutBlob(bytes.NewReader(pseudoRandom(8, 1<<20))); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("writing to a full disk: %v, want ENOSPC", err)
	}
	b.Abort()
	free()
	if err := a.Commit(); err == nil {
		t.Fatal("a writer whose buffered bytes were lost committed")
	}
	if s.HasDirectory(aRoot.Digest) {
		t.Fatal("the lost writer's directory is visible")
	}
	c := s.NewWriter()
	cData := pseudoRandom(9, 2<<20)
	cRoot := putFile(t, c, cData)
	if err := c.Commit(); err != nil {
		t.Fatal(err)
	}
	readTree(t, s, cRoot, cData)
	verifyClean(t, s)
}

// An aborted writer's bytes at the end of a pack are cut off at once;
// bytes another writer's follow are reclaimed by Collect.
func TestAbortAndCollectReclaimSpace(t *testing.T) {
	s, dir := openTemp(t)
	keep := pseudoRandom(1, 1<<20)
	w := s.NewWriter()
	keepRoot := putFile(t, w, keep)
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	committed := packBytes(t, dir, packsDir)

	w = s.NewWriter()
	putFile(t, w, pseudoRandom(2, 5<<20))
	w.Abort()
	if got := packBytes(t, dir, packsDir); got != committed {
		t.Fatalf("packs hold %d bytes after an aborted writer, %d committed", got, committed)
	}

	// Two writers interleave; the first aborts, the second commits.
	x, y := s.NewWriter(), s.NewWriter()
	yData := pseudoRandom(4, 1<<20)
	var yRoot Node
	for i := range 4 {
		if _, _, err := x.PutBlob(bytes.NewReader(pseudoRandom(uint64(10+i), 1<<20))); err != nil {
			t.Fatal(err)
		}
		if i == 3 {
			yRoot = putFile(t, y, yData)
		}
	}
	x.Abort()
	if err := y.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := packBytes(t, dir, packsDir); got < committed+5<<20 {
		t.Fatalf("packs hold %d bytes: the interleaved garbage is gone already?", got)
	}
	st, err := s.Collect(context.Background(), rootsOf(keepRoot, yRoot))
	if err != nil {
		t.Fatal(err)
	}
	if st.PacksRewritten == 0 || st.BytesFreed < 4<<20 {
		t.Fatalf("collect: %+v", st)
	}
	readTree(t, s, keepRoot, keep)
	readTree(t, s, yRoot, yData)
	verifyClean(t, s)
	s.Close()
	if got, want := packBytes(t, dir, packsDir), int64(len(keep)+len(yData)); got != want {
		t.Fatalf("packs hold %d bytes after collect, want the %d live", got, want)
	}
	s2, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	readTree(t, s2, keepRoot, keep)
	readTree(t, s2, yRoot, yData)
	verifyClean(t, s2)
}

// Collect removes the objects of trees no root reaches, keeps what live
// trees share with them, and moves frames (made here, and frame-only
// chunks) along with raw chunks.
func TestCollect(t *testing.T) {
	s, dir := openTemp(t)
	shared := pseudoRandom(1, 1<<20)
	onlyDead := pseudoRandom(2, 3<<20)
	onlyLive := pseudoRandom(3, 1<<20)
	for i := 16; i < len(onlyLive); i += 32 {
		copy(onlyLive[i:i+16], onlyLive[i-16:i]) // compressible: its chunks get frames
	}

	w := s.NewWriter()
	dsh, nsh, _ := w.PutBlob(bytes.NewReader(shared))
	dd, nd, _ := w.PutBlob(bytes.NewReader(onlyDead))
	dl, nl, _ := w.PutBlob(bytes.NewReader(onlyLive))
	// A frame-only chunk in each tree, as fetched from a peer.
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderCRC(false))
	defer enc.Close()
	liveChunk, deadChunk := bytes.Repeat([]byte("live "), 5000), bytes.Repeat([]byte("dead "), 5000)
	for _, c := range [][]byte{liveChunk, deadChunk} {
		if err := w.PutFramedChunk(Sum(c), len(c), enc.EncodeAll(c, nil)); err != nil {
			t.Fatal(err)
		}
	}
	mkdir := func(files ...FileEntry) Node {
		dir := &Directory{Files: files}
		d, err := w.PutDirectory(dir)
		if err != nil {
			t.Fatal(err)
		}
		return Node{Type: TypeDirectory, Digest: d, Size: dir.Size()}
	}
	live := mkdir(FileEntry{Name: []byte("a"), Digest: dsh, Size: nsh}, FileEntry{Name: []byte("b"), Digest: dl, Size: nl},
		FileEntry{Name: []byte("c"), Digest: Sum(liveChunk), Size: uint64(len(liveChunk))})
	dead := mkdir(FileEntry{Name: []byte("a"), Digest: dsh, Size: nsh}, FileEntry{Name: []byte("d"), Digest: dd, Size: nd},
		FileEntry{Name: []byte("e"), Digest: Sum(deadChunk), Size: uint64(len(deadChunk))})
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CompressPending(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, root := range []Node{live, dead} {
		if _, err := s.Share(context.Background(), root); err != nil {
			t.Fatal(err)
		}
	}
	checkCounts(t, s)
	before, _ := s.Stats()

	st, err := s.Collect(context.Background(), rootsOf(live))
	if err != nil {
		t.Fatal(err)
	}
	checkCounts(t, s)
	deadRefs := len(cuts(onlyDead))
	if st.Directories != 1 || st.Chunks != deadRefs+1 || st.ChunkBytes != uint64(len(onlyDead)+len(deadChunk)) {
		t.Fatalf("collect removed %+v, want 1 directory and %d chunks of %d bytes", st, deadRefs+1, len(onlyDead)+len(deadChunk))
	}
	after, _ := s.Stats()
	if after.ChunkBytes != before.ChunkBytes-st.ChunkBytes || after.Chunks != before.Chunks-uint64(st.Chunks) {
		t.Fatalf("stats %+v after %+v", after, before)
	}
	if s.HasDirectory(dead.Digest) || s.HasBlob(dd, nd) || s.HasChunk(Sum(deadChunk)) || s.IsShared(dead.Digest) {
		t.Fatal("the dead tree's objects are still there")
	}
	if !s.IsShared(live.Digest) || !s.IsShared(dsh) {
		t.Fatal("the live tree lost its shared marks")
	}
	check := func(s *Store) {
		t.Helper()
		for _, f := range []struct {
			d    Digest
			data []byte
		}{{dsh, shared}, {dl, onlyLive}, {Sum(liveChunk), liveChunk}} {
			if got := readBlob(t, s, f.d, uint64(len(f.data))); !bytes.Equal(got, f.data) {
				t.Fatal("a live file reads back other bytes")
			}
		}
		refs, _ := s.BlobChunks(dl, nl)
		for _, r := range append(refs, ChunkRef{Digest: Sum(liveChunk)}) {
			if frame, compressed, err := sharedChunk(s, r.Digest, true, nil); err != nil || !compressed {
				t.Fatalf("frame of a live chunk: compressed %v, %v", compressed, err)
			} else if got, _ := decodeFrame(frame, nil); Sum(got) != r.Digest {
				t.Fatal("a live chunk's frame decodes to other bytes")
			}
		}
		verifyClean(t, s)
	}
	check(s)
	s.Close()
	if got, want := packBytes(t, dir, packsDir), int64(len(shared)+len(onlyLive)); got != want {
		t.Fatalf("raw packs hold %d bytes after collect, want the %d live", got, want)
	}
	s2, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	check(s2)
}

// A lease keeps the objects a writer dedups against, though no root
// reaches them yet, through a collection; without it they would go.
func TestCollectKeepsLeased(t *testing.T) {
	s, _ := openTemp(t)
	data := pseudoRandom(5, 2<<20)
	w := s.NewWriter()
	orphan := putFile(t, w, data) // no root: garbage
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	lease := s.NewLease()
	lw := lease.NewWriter()
	root := putFile(t, lw, data) // dedups against the orphan's objects
	if root.Digest != orphan.Digest || lw.Stats().NewBytes != 0 {
		t.Fatalf("the leased writer did not dedup: %+v", lw.Stats())
	}
	if err := lw.Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Collect(context.Background(), rootsOf()); err != nil {
		t.Fatal(err)
	}
	readTree(t, s, root, data) // held by the lease
	lease.Release()
	st, err := s.Collect(context.Background(), rootsOf())
	if err != nil {
		t.Fatal(err)
	}
	if st.ChunkBytes != uint64(len(data)) || s.HasDirectory(root.Digest) {
		t.Fatalf("after the lease ended, collect removed %+v", st)
	}
	verifyClean(t, s)
}
