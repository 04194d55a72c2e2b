package castore

import (
	"bytes"
	"context"
	"testing"
)

// TreeLists finds the lists of a stored tree's files of several chunks,
// and ListsDigest depends on those lists alone: not on map order, nor on
// files of one chunk, but on every chunk and size of the others.
func TestListsDigest(t *testing.T) {
	s, _ := openTemp(t)
	w := s.NewWriter()
	big1, size1, _ := w.PutBlob(bytes.NewReader(pseudoRandom(1, 1<<20)))
	big2, size2, _ := w.PutBlob(bytes.NewReader(pseudoRandom(2, 600<<10)))
	small, smallSize, _ := w.PutBlob(bytes.NewReader([]byte("one chunk")))
	mid, midSize, _ := w.PutBlob(bytes.NewReader(pseudoRandom(3, 100<<10))) // over MinChunkSize, one chunk or more
	sub, _ := w.PutDirectory(&Directory{Files: []FileEntry{{Name: []byte("big2"), Digest: big2, Size: size2}, {Name: []byte("mid"), Digest: mid, Size: midSize}}})
	root, _ := w.PutDirectory(&Directory{
		Directories: []DirectoryEntry{{Name: []byte("sub"), Digest: sub, Size: 2}},
		Files: []FileEntry{{Name: []byte("big1"), Digest: big1, Size: size1}, {Name: []byte("copy"), Digest: big1, Size: size1},
			{Name: []byte("small"), Digest: small, Size: smallSize}},
	})
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	lists, err := s.TreeLists(context.Background(), Node{Type: TypeDirectory, Digest: root, Size: 6})
	if err != nil {
		t.Fatal(err)
	}
	want := map[Digest][]ChunkRef{}
	for _, f := range []struct {
		d    Digest
		size uint64
	}{{big1, size1}, {big2, size2}, {mid, midSize}} {
		if refs, _ := s.BlobChunks(f.d, f.size); len(refs) >= 2 {
			want[f.d] = refs
		}
	}
	if len(want) < 2 || len(lists) != len(want) {
		t.Fatalf("TreeLists found %d lists, want %d (of at least 2)", len(lists), len(want))
	}
	d := ListsDigest(lists)
	if d != ListsDigest(want) {
		t.Fatal("the digest of the same lists differs")
	}
	withSingles := map[Digest][]ChunkRef{small: {{Digest: small, Size: uint32(smallSize)}}, Sum(nil): nil}
	for k, v := range lists {
		withSingles[k] = v
	}
	if ListsDigest(withSingles) != d {
		t.Fatal("files of one chunk changed the digest")
	}
	swapped := map[Digest][]ChunkRef{}
	for k, v := range lists {
		swapped[k] = v
	}
	refs := append([]ChunkRef(nil), lists[big1]...)
	refs[0], refs[1] = refs[1], refs[0]
	swapped[big1] = refs
	if ListsDigest(swapped) == d {
		t.Fatal("chunks out of order left the digest unchanged")
	}
	delete(swapped, big1)
	if ListsDigest(swapped) == d {
		t.Fatal("a missing list left the digest unchanged")
	}
}
