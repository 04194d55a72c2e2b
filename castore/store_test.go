package castore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"
	bolt "go.etcd.io/bbolt"
)

func openTemp(t *testing.T) (*Store, string) {
	t.Helper()
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, dir
}

func readBlob(t *testing.T, s *Store, d Digest, size uint64) []byte {
	t.Helper()
	r := s.NewReader()
	defer r.Close()
	var buf bytes.Buffer
	refs, err := r.FileChunks(context.Background(), d, size)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.WriteChunks(context.Background(), &buf, refs); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestStoreBlobRoundTrip(t *testing.T) {
	s, _ := openTemp(t)
	for _, size := range []int{0, 1, MinChunkSize, MaxChunkSize, MaxChunkSize + 1, 3 << 20} {
		data := pseudoRandom(uint64(size), size)
		w := s.NewWriter()
		d, n, err := w.PutBlob(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		if d != Sum(data) || n != uint64(size) {
			t.Fatalf("size %d: digest or size wrong", size)
		}
		if size > 0 && s.HasBlob(d, n) {
			t.Fatalf("size %d: visible before commit", size)
		}
		if err := w.Commit(); err != nil {
			t.Fatal(err)
		}
		if !s.HasBlob(d, n) {
			t.Fatalf("size %d: missing after commit", size)
		}
		if got := readBlob(t, s, d, n); !bytes.Equal(got, data) {
			t.Fatalf("size %d: read back differs", size)
		}
	}
}

func TestStoreDedup(t *testing.T) {
	s, _ := openTemp(t)
	data := pseudoRandom(9, 2<<20)
	w := s.NewWriter()
	if _, _, err := w.PutBlob(bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	// The same content again in the same writer stores nothing new.
	if _, _, err := w.PutBlob(bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if st := w.Stats(); st.NewBytes != int64(len(data)) || st.DedupBytes != int64(len(data)) {
		t.Fatalf("stats %+v", st)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	w = s.NewWriter()
	if _, _, err := w.PutBlob(bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if st := w.Stats(); st.NewBytes != 0 {
		t.Fatalf("second import wrote %d new bytes", st.NewBytes)
	}
	w.Commit()
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.ChunkBytes != uint64(len(data)) {
		t.Fatalf("store holds %d chunk bytes, want %d", st.ChunkBytes, len(data))
	}
	if n, err := s.ChunkBytes(); err != nil || n != st.ChunkBytes {
		t.Fatalf("ChunkBytes %d, %v; Stats says %d", n, err, st.ChunkBytes)
	}
}

// TestStoreCrashTail simulates a crash after chunk bytes were appended but
// before the commit: on reopen the pack is cut back to its committed length
// and the uncommitted objects are absent.
func TestStoreCrashTail(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	committed := pseudoRandom(1, 100000)
	w := s.NewWriter()
	d1, n1, _ := w.PutBlob(bytes.NewReader(committed))
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	w = s.NewWriter()
	d2, n2, _ := w.PutBlob(bytes.NewReader(pseudoRandom(2, 100000)))
	s.Close() // "crash": no commit
	pack := filepath.Join(dir, packsDir, "00000001.pack")
	info, _ := os.Stat(pack)
	if info.Size() != 200000 {
		t.Fatalf("pack has %d bytes before reopen", info.Size())
	}
	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	info, _ = os.Stat(pack)
	if info.Size() != 100000 {
		t.Fatalf("pack has %d bytes after reopen, want 100000", info.Size())
	}
	if s.HasBlob(d2, n2) {
		t.Fatal("uncommitted blob visible")
	}
	if got := readBlob(t, s, d1, n1); !bytes.Equal(got, committed) {
		t.Fatal("committed blob damaged")
	}
}

func TestStoreReadChunkDetectsCorruption(t *testing.T) {
	s, dir := openTemp(t)
	data := pseudoRandom(5, 1000)
	w := s.NewWriter()
	d, _, _ := w.PutBlob(bytes.NewReader(data))
	w.Commit()
	if _, err := s.ReadChunk(d, nil); err != nil {
		t.Fatal(err)
	}
	f, _ := os.OpenFile(filepath.Join(dir, packsDir, "00000001.pack"), os.O_WRONLY, 0)
	f.WriteAt([]byte{data[10] ^ 1}, 10)
	f.Close()
	if _, err := s.ReadChunk(d, nil); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("corrupt chunk read gave %v", err)
	}
}

func TestStoreDirectories(t *testing.T) {
	s, _ := openTemp(t)
	w := s.NewWriter()
	dir := &Directory{Files: []FileEntry{{Name: []byte("f"), Digest: emptyBlob}}}
	d, err := w.PutDirectory(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.PutDirectory(&Directory{Files: []FileEntry{{Name: []byte("a/b"), Digest: emptyBlob}}}); err == nil {
		t.Fatal("invalid directory accepted")
	}
	if _, err := w.PutDirectoryBytes(d, []byte("garbage")); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("bytes not matching the digest: %v", err)
	}
	w.Commit()
	got, err := s.Directory(d)
	if err != nil || got.Digest() != d {
		t.Fatalf("directory read back: %v", err)
	}
	if _, err := s.Directory(Sum([]byte("nope"))); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing directory: %v", err)
	}
}

func TestReadBlobAt(t *testing.T) {
	s, _ := openTemp(t)
	data := pseudoRandom(21, 2<<20)
	w := s.NewWriter()
	d, size, _ := w.PutBlob(bytes.NewReader(data))
	w.Commit()
	refs, err := s.BlobChunks(d, size)
	if err != nil || len(refs) < 2 {
		t.Fatalf("%d chunks, %v", len(refs), err)
	}
	for _, c := range []struct{ off, n int }{{0, 10}, {0, len(data)}, {100, 300000}, {int(refs[0].Size) - 1, 2}, {len(data) - 5, 5}, {len(data) - 5, 50}, {len(data), 10}} {
		p := make([]byte, c.n)
		n, err := s.ReadBlobAt(refs, p, int64(c.off))
		want := data[min(c.off, len(data)):min(c.off+c.n, len(data))]
		if n != len(want) || !bytes.Equal(p[:n], want) {
			t.Fatalf("off %d len %d: read %d bytes (%v)", c.off, c.n, n, err)
		}
		if (n < c.n) != (err == io.EOF) {
			t.Fatalf("off %d len %d: err %v", c.off, c.n, err)
		}
	}
}

func TestShare(t *testing.T) {
	s, _ := openTemp(t)
	w := s.NewWriter()
	small, _, _ := w.PutBlob(bytes.NewReader([]byte("small")))
	bigData := pseudoRandom(31, 1<<20)
	big, bigSize, _ := w.PutBlob(bytes.NewReader(bigData))
	sub, _ := w.PutDirectory(&Directory{Files: []FileEntry{{Name: []byte("big"), Digest: big, Size: bigSize}}})
	root, _ := w.PutDirectory(&Directory{
		Directories: []DirectoryEntry{{Name: []byte("sub"), Digest: sub, Size: 1}},
		Files:       []FileEntry{{Name: []byte("small"), Digest: small, Size: 5}},
	})
	private, _, _ := w.PutBlob(bytes.NewReader([]byte("private")))
	w.Commit()
	fresh, err := s.Share(context.Background(), Node{Type: TypeDirectory, Digest: root, Size: 3})
	if err != nil {
		t.Fatal(err)
	}
	refs, _ := s.BlobChunks(big, bigSize)
	if want := 2 + 1 + len(refs); len(fresh) != want { // 2 dirs, small's chunk, big's chunks
		t.Fatalf("%d new digests, want %d", len(fresh), want)
	}
	for _, d := range append([]Digest{root, sub, small, big}, refs[0].Digest) {
		if !s.IsShared(d) {
			t.Fatalf("%s not shared", d)
		}
	}
	if s.IsShared(private) {
		t.Fatal("an object of no shared tree is shared")
	}
	if again, _ := s.Share(context.Background(), Node{Type: TypeDirectory, Digest: root, Size: 3}); len(again) != 0 {
		t.Fatalf("sharing again found %d new digests", len(again))
	}
	n := 0
	s.ForEachShared(func(Digest) error { n++; return nil })
	if n != len(fresh) {
		t.Fatalf("ForEachShared gave %d, want %d (blobs are not announced)", n, len(fresh))
	}
}

// A View answers as the single lookups do, for stored and missing objects.
func TestView(t *testing.T) {
	s, _ := openTemp(t)
	w := s.NewWriter()
	small, smallSize, _ := w.PutBlob(bytes.NewReader([]byte("small")))
	big, bigSize, _ := w.PutBlob(bytes.NewReader(pseudoRandom(7, 1<<20)))
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	absent := Sum([]byte("absent"))
	refs, err := s.BlobChunks(big, bigSize)
	if err != nil || len(refs) < 2 {
		t.Fatalf("big blob: %d chunks, %v", len(refs), err)
	}
	err = s.View(func(v *View) error {
		for _, c := range []struct {
			d    Digest
			size uint64
			want int // chunks, or -1 for not found
		}{{small, smallSize, 1}, {big, bigSize, len(refs)}, {absent, 100, -1}, {absent, 1 << 20, -1}} {
			got, err := v.BlobChunks(c.d, c.size)
			switch {
			case c.want < 0 && !errors.Is(err, ErrNotFound):
				t.Errorf("%s: err %v, want ErrNotFound", c.d, err)
			case c.want >= 0 && (err != nil || len(got) != c.want):
				t.Errorf("%s: %d chunks, %v; want %d", c.d, len(got), err, c.want)
			}
			if has := v.HasBlob(c.d, c.size); has != (c.want >= 0) || has != s.HasBlob(c.d, c.size) {
				t.Errorf("%s: HasBlob %v", c.d, has)
			}
		}
		if !v.HasChunk(refs[1].Digest) || v.HasChunk(absent) {
			t.Error("HasChunk wrong")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// sharedChunk is SharedChunks for one chunk, as the tests ask for them.
func sharedChunk(s *Store, d Digest, zstd bool, buf []byte) (data []byte, compressed bool, err error) {
	data = buf
	s.SharedChunks([]Digest{d}, zstd, buf, func(b []byte, c bool, e error) error {
		data, compressed, err = b, c, e
		return nil
	})
	return data, compressed, err
}

// SharedChunks and SharedDirectory give peers only objects of shared trees;
// a chunk as its zstd frame when asked and stored, else its checked bytes.
func TestSharedChunk(t *testing.T) {
	s, _ := openTemp(t)
	w := s.NewWriter()
	text := bytes.Repeat([]byte("compressible "), 1000)
	shared, _, _ := w.PutBlob(bytes.NewReader(text))
	private, _, _ := w.PutBlob(bytes.NewReader([]byte("private")))
	root, _ := w.PutDirectory(&Directory{Files: []FileEntry{{Name: []byte("f"), Digest: shared, Size: uint64(len(text))}}})
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Share(context.Background(), Node{Type: TypeDirectory, Digest: root, Size: 1}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := sharedChunk(s, private, true, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("private chunk: err %v, want ErrNotFound", err)
	}
	if b, err := s.SharedDirectory(root); err != nil || Sum(b) != root {
		t.Fatalf("shared directory: %d bytes, %v", len(b), err)
	}
	w = s.NewWriter()
	privateDir, _ := w.PutDirectory(&Directory{Files: []FileEntry{{Name: []byte("p"), Digest: private, Size: 7}}})
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SharedDirectory(privateDir); !errors.Is(err, ErrNotFound) {
		t.Fatalf("private directory: err %v, want ErrNotFound", err)
	}
	data, compressed, err := sharedChunk(s, shared, true, nil)
	if err != nil || compressed || !bytes.Equal(data, text) {
		t.Fatalf("before compression: compressed %v, err %v, bytes equal %v", compressed, err, bytes.Equal(data, text))
	}
	if _, err := s.CompressPending(context.Background()); err != nil {
		t.Fatal(err)
	}
	frame, compressed, err := sharedChunk(s, shared, true, nil)
	if err != nil || !compressed {
		t.Fatalf("after compression: compressed %v, err %v", compressed, err)
	}
	dec, _ := zstd.NewReader(nil)
	defer dec.Close()
	if got, err := dec.DecodeAll(frame, nil); err != nil || !bytes.Equal(got, text) {
		t.Fatalf("frame decodes to %d bytes, %v", len(got), err)
	}
	if data, compressed, err := sharedChunk(s, shared, false, nil); err != nil || compressed || !bytes.Equal(data, text) {
		t.Fatalf("raw asked: compressed %v, err %v", compressed, err)
	}
}

// A chunk stored as its zstd frame alone (as it came from a peer) reads
// back like a raw one through every read path, survives a reopen, is served
// to peers as that frame, and is checked by Verify.
func TestFramedChunks(t *testing.T) {
	s, dir := openTemp(t)
	enc, _ := zstd.NewWriter(nil)
	defer enc.Close()
	// A file of three chunks: raw, framed, raw, so that reads switch
	// between the raw packs and the frames within one blob.
	var refs []ChunkRef
	var file, frame1 []byte
	w := s.NewWriter()
	for i := range 3 {
		chunk := bytes.Repeat([]byte{byte('a' + i)}, MinChunkSize+1000*i)
		copy(chunk, pseudoRandom(uint64(i), 100))
		d := Sum(chunk)
		var err error
		if i == 1 {
			frame1 = enc.EncodeAll(chunk, nil)
			err = w.PutFramedChunk(d, len(chunk), frame1)
		} else {
			err = w.PutChunk(d, chunk)
		}
		if err != nil {
			t.Fatal(err)
		}
		refs = append(refs, ChunkRef{Digest: d, Size: uint32(len(chunk))})
		file = append(file, chunk...)
	}
	blob := Sum(file)
	w.PutBlobRecord(blob, refs)
	root, _ := w.PutDirectory(&Directory{Files: []FileEntry{{Name: []byte("f"), Digest: blob, Size: uint64(len(file))}}})
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	check := func(s *Store) {
		t.Helper()
		if got := readBlob(t, s, blob, uint64(len(file))); !bytes.Equal(got, file) {
			t.Fatal("the file reads back other bytes")
		}
		if got, err := s.ReadChunk(refs[1].Digest, []byte("x")); err != nil || !bytes.Equal(got[1:], file[refs[0].Size:refs[0].Size+refs[1].Size]) {
			t.Fatalf("ReadChunk: %v", err)
		}
		for _, c := range []struct{ off, n int }{{0, len(file)}, {int(refs[0].Size) - 3, 10}, {int(refs[0].Size) + 5, 100}, {len(file) - 7, 7}} {
			p := make([]byte, c.n)
			if n, err := s.ReadBlobAt(refs, p, int64(c.off)); n != c.n || !bytes.Equal(p, file[c.off:c.off+c.n]) {
				t.Fatalf("ReadBlobAt off %d len %d: %d bytes, %v", c.off, c.n, n, err)
			}
		}
		var problems []string
		if _, err := s.Verify(context.Background(), func(p string) { problems = append(problems, p) }); err != nil || len(problems) > 0 {
			t.Fatalf("Verify: %v %q", err, problems)
		}
	}
	check(s)
	if _, err := s.Share(context.Background(), Node{Type: TypeDirectory, Digest: root, Size: 1}); err != nil {
		t.Fatal(err)
	}
	if frame, compressed, err := sharedChunk(s, refs[1].Digest, true, nil); err != nil || !compressed {
		t.Fatalf("SharedChunk zstd: compressed %v, %v", compressed, err)
	} else if got, _ := decodeFrame(frame, nil); !bytes.Equal(got, file[refs[0].Size:refs[0].Size+refs[1].Size]) {
		t.Fatal("SharedChunk frame decodes to other bytes")
	}
	if data, compressed, err := sharedChunk(s, refs[1].Digest, false, nil); err != nil || compressed || Sum(data) != refs[1].Digest {
		t.Fatalf("SharedChunk raw: compressed %v, %v", compressed, err)
	}
	if n, err := s.CompressPending(context.Background()); err != nil {
		t.Fatal(err)
	} else if n != 2 {
		t.Fatalf("compressed %d chunks, want the 2 raw ones", n)
	}
	s.Close()
	s2, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	check(s2)
	// Damage the frame: reads fail rather than pass other bytes on, and
	// Verify names the chunk.
	zpack := filepath.Join(dir, zstdDir, "00000001"+zstdSuffix)
	b, err := os.ReadFile(zpack)
	if err != nil {
		t.Fatal(err)
	}
	b[len(frame1)/2] ^= 0xff // the framed chunk's frame was written first
	os.WriteFile(zpack, b, 0o644)
	s2.Close()
	s3, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s3.Close()
	if _, err := s3.ReadChunk(refs[1].Digest, nil); err == nil {
		t.Fatal("ReadChunk of a damaged frame succeeded")
	}
	var problems []string
	s3.Verify(context.Background(), func(p string) { problems = append(problems, p) })
	if len(problems) == 0 || !bytes.Contains([]byte(problems[0]), []byte(refs[1].Digest.String())) {
		t.Fatalf("Verify of a damaged frame: %q", problems)
	}
}

// The frames of a blob are made in the order of its chunks and lie side
// by side in the packs; SharedChunks reads them as runs and hands each
// frame over on its own, in the order asked, between raw chunks, chunks
// of no shared tree and frames from elsewhere.
func TestSharedChunkRuns(t *testing.T) {
	s, _ := openTemp(t)
	w := s.NewWriter()
	var text []byte
	for i := 0; len(text) < 1<<20; i++ {
		text = fmt.Appendf(text, "line %d of a text that compresses: %x\n", i, pseudoRandom(uint64(i), 8))
	}
	textD, textSize, _ := w.PutBlob(bytes.NewReader(text))
	noise := pseudoRandom(7, 400<<10)
	noiseD, noiseSize, _ := w.PutBlob(bytes.NewReader(noise)) // incompressible
	private, _, _ := w.PutBlob(bytes.NewReader([]byte("private")))
	root, _ := w.PutDirectory(&Directory{Files: []FileEntry{
		{Name: []byte("noise"), Digest: noiseD, Size: noiseSize},
		{Name: []byte("text"), Digest: textD, Size: textSize},
	}})
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Share(context.Background(), Node{Type: TypeDirectory, Digest: root, Size: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CompressPending(context.Background()); err != nil {
		t.Fatal(err)
	}
	textRefs, _ := s.BlobChunks(textD, textSize)
	noiseRefs, _ := s.BlobChunks(noiseD, noiseSize)
	if len(textRefs) < 8 || len(noiseRefs) < 2 {
		t.Fatalf("%d and %d chunks, want more", len(textRefs), len(noiseRefs))
	}
	s.View(func(v *View) error {
		var prev chunkLoc
		for i, r := range textRefs {
			loc, ok, err := v.frameLoc(r.Digest)
			if !ok || err != nil || loc.Size == 0 {
				t.Fatalf("chunk %d has no frame: %v", i, err)
			}
			if i > 0 && (loc.Pack != prev.Pack || loc.Offset != prev.Offset+int64(prev.Size)) {
				t.Fatalf("frame %d at %+v does not follow frame %d at %+v", i, loc, i-1, prev)
			}
			prev = loc
		}
		return nil
	})
	var ask []Digest
	for _, r := range textRefs[:5] {
		ask = append(ask, r.Digest)
	}
	ask = append(ask, noiseRefs[0].Digest, private, textRefs[len(textRefs)-1].Digest)
	for _, r := range textRefs[5:] {
		ask = append(ask, r.Digest)
	}
	ask = append(ask, textRefs[2].Digest)
	dec, _ := zstd.NewReader(nil)
	defer dec.Close()
	i := 0
	err := s.SharedChunks(ask, true, nil, func(data []byte, compressed bool, err error) error {
		d := ask[i]
		i++
		if d == private {
			if !errors.Is(err, ErrNotFound) {
				t.Errorf("private chunk: %v, want ErrNotFound", err)
			}
			return nil
		}
		if err != nil {
			return err
		}
		if compressed != (d != noiseRefs[0].Digest) {
			t.Errorf("chunk %d: compressed %v", i-1, compressed)
		}
		if compressed {
			if data, err = dec.DecodeAll(data, nil); err != nil {
				return err
			}
		}
		if Sum(data) != d {
			t.Errorf("chunk %d: the bytes of another", i-1)
		}
		return nil
	})
	if err != nil || i != len(ask) {
		t.Fatalf("%d of %d chunks, %v", i, len(ask), err)
	}
}

// TestStatsCounts: Stats counts blobs, directories and frames without
// walking their buckets, right when two writers commit the same objects,
// and counts them once when it opens a store written before the counters.
func TestStatsCounts(t *testing.T) {
	s, dir := openTemp(t)
	data := pseudoRandom(11, 1<<20)
	var ws []*Writer
	for range 2 { // both hold the same objects uncommitted
		w := s.NewWriter()
		d, n, err := w.PutBlob(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.PutDirectory(&Directory{Files: []FileEntry{{Name: []byte("f"), Digest: d, Size: n}}}); err != nil {
			t.Fatal(err)
		}
		ws = append(ws, w)
	}
	for _, w := range ws {
		if err := w.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.CompressPending(context.Background()); err != nil {
		t.Fatal(err)
	}
	checkCounts(t, s)
	st, _ := s.Stats()
	if st.Blobs != 1 || st.Directories != 1 || st.Frames == 0 || st.Frames != st.Chunks {
		t.Fatalf("stats %+v, want 1 blob, 1 directory and a frame per chunk", st)
	}
	if st.Packs == 0 || st.PackBytes < uint64(len(data)) {
		t.Fatalf("%d packs of %d bytes for %d bytes of chunks", st.Packs, st.PackBytes, len(data))
	}
	// As a store written before the counters: they are made on opening.
	err := s.db.Update(func(tx *bolt.Tx) error {
		for _, c := range objectCounts {
			if err := tx.Bucket(bucketMeta).Delete(c.key); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err = Open(dir); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	checkCounts(t, s)
	if again, _ := s.Stats(); again != st {
		t.Fatalf("stats %+v after reopening, %+v before", again, st)
	}
}
