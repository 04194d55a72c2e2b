package castore

import (
	"bytes"
	"context"
	"encoding/binary"
	"slices"

	"github.com/zeebo/blake3"
)

// ListsDigest is the digest of a tree's chunk lists, which a signature can
// bind to the tree along with its root. The tree names each file by its
// BLAKE3 digest; a file of several chunks is fetched as chunks, each
// checked against its own digest as it arrives, so what ties the chunks to
// the file is the list. With the lists signed, a fetcher checks each list
// on arrival and never hashes the file again; without, it must hash every
// file of several chunks once all of them are in.
//
// The encoding hashed: for each list of two or more chunks (a file of one
// chunk is that chunk, under the file's digest), in byte order of the file
// digest, the file digest, the number of chunks as a uvarint, then each
// chunk's digest and size (uvarint). Lists of one chunk or none are left
// out, so the digest does not depend on how a fetcher notes files it has
// whole.
func ListsDigest(lists map[Digest][]ChunkRef) Digest {
	files := make([]Digest, 0, len(lists))
	for d, refs := range lists {
		if len(refs) >= 2 {
			files = append(files, d)
		}
	}
	slices.SortFunc(files, func(a, b Digest) int { return bytes.Compare(a[:], b[:]) })
	h := blake3.New()
	var buf []byte
	for _, d := range files {
		refs := lists[d]
		buf = binary.AppendUvarint(append(buf[:0], d[:]...), uint64(len(refs)))
		for _, r := range refs {
			buf = binary.AppendUvarint(append(buf, r.Digest[:]...), uint64(r.Size))
		}
		h.Write(buf)
	}
	var out Digest
	h.Sum(out[:0])
	return out
}

// TreeLists returns the chunk lists of the files of several chunks in the
// stored tree under root, by file digest (what ListsDigest takes).
func (s *Store) TreeLists(ctx context.Context, root Node) (map[Digest][]ChunkRef, error) {
	lists := map[Digest][]ChunkRef{}
	err := s.walkTree(ctx, root, func(n Node) (bool, error) {
		if n.Type != TypeFile || n.Size <= MinChunkSize { // such a file is one chunk
			return false, nil
		}
		refs, err := s.BlobChunks(n.Digest, n.Size)
		if len(refs) >= 2 {
			lists[n.Digest] = refs
		}
		return false, err
	})
	return lists, err
}

// walkTree calls fn with each node of the stored tree under root, a
// directory before its entries, and each directory once; fn skips a
// directory's entries by returning true.
func (s *Store) walkTree(ctx context.Context, root Node, fn func(n Node) (skip bool, err error)) error {
	seen := map[Digest]bool{}
	var walk func(n Node) error
	walk = func(n Node) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if n.Type == TypeDirectory {
			if seen[n.Digest] {
				return nil
			}
			seen[n.Digest] = true
		}
		skip, err := fn(n)
		if err != nil || skip || n.Type != TypeDirectory {
			return err
		}
		dir, err := s.Directory(n.Digest)
		if err != nil {
			return err
		}
		for _, e := range dir.Directories {
			if err := walk(Node{Type: TypeDirectory, Digest: e.Digest, Size: e.Size}); err != nil {
				return err
			}
		}
		for _, e := range dir.Files {
			if err := walk(Node{Type: TypeFile, Digest: e.Digest, Size: e.Size}); err != nil {
				return err
			}
		}
		return nil
	}
	return walk(root)
}
