package castore

import (
	"context"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// VerifyStats count what Verify checked.
type VerifyStats struct {
	Chunks      int
	Frames      int
	Directories int
	Bytes       uint64
}

// Verify reads every chunk and directory and checks it against its digest,
// and every blob's chunk list against the chunks it names. Each problem is
// passed to report; Verify itself fails only if it cannot read the index.
func (s *Store) Verify(ctx context.Context, report func(problem string)) (VerifyStats, error) {
	var st VerifyStats
	type entry struct {
		d Digest
		v []byte
	}
	// Collect the index first so that no read transaction stays open
	// while the chunk data is read.
	var chunks, dirs, blobs, frames []entry
	err := s.db.View(func(tx *bolt.Tx) error {
		for _, b := range []struct {
			name []byte
			dst  *[]entry
		}{{bucketChunks, &chunks}, {bucketDirs, &dirs}, {bucketBlobs, &blobs}, {bucketFrames, &frames}} {
			err := tx.Bucket(b.name).ForEach(func(k, v []byte) error {
				d, err := DigestFromBytes(k)
				if err != nil {
					report(fmt.Sprintf("index key %x: %v", k, err))
					return nil
				}
				*b.dst = append(*b.dst, entry{d, append([]byte(nil), v...)})
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return st, err
	}
	buf := make([]byte, MaxChunkSize)
	var frameBuf []byte
	framed := map[Digest]chunkLoc{} // chunks checked through their frames here
	for _, c := range chunks {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		st.Chunks++
		loc, err := unmarshalChunkLoc(c.v)
		if err != nil || loc.Size == 0 || loc.Size > MaxChunkSize || loc.Frame > maxStoredFrame {
			report(fmt.Sprintf("chunk %s: bad location", c.d))
			continue
		}
		if loc.Frame > 0 {
			framed[c.d] = loc.frame()
		}
		data, err := s.readChunkAt(loc, buf[:0], &frameBuf)
		if err != nil {
			report(fmt.Sprintf("chunk %s: %v", c.d, err))
			continue
		}
		st.Bytes += uint64(loc.Size)
		if Sum(data) != c.d {
			report(fmt.Sprintf("chunk %s: content does not match its digest (pack %d offset %d)", c.d, loc.Pack, loc.Offset))
		}
	}
	for _, d := range dirs {
		st.Directories++
		if Sum(d.v) != d.d {
			report(fmt.Sprintf("directory %s: encoding does not match its digest", d.d))
			continue
		}
		if _, err := UnmarshalDirectory(d.v); err != nil {
			report(fmt.Sprintf("directory %s: %v", d.d, err))
		}
	}
	for _, b := range blobs {
		refs, err := unmarshalChunkRefs(b.v)
		if err != nil {
			report(fmt.Sprintf("blob %s: %v", b.d, err))
			continue
		}
		for _, r := range refs {
			if !s.HasChunk(r.Digest) {
				report(fmt.Sprintf("blob %s: chunk %s is missing", b.d, r.Digest))
			}
		}
	}
	for _, f := range frames {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		if len(f.v) == 0 {
			continue // incompressible: served from the raw chunk
		}
		loc, err := unmarshalChunkLoc(f.v)
		if err != nil || loc.Size > maxStoredFrame {
			report(fmt.Sprintf("zstd frame of chunk %s: bad location", f.d))
			continue
		}
		if at, ok := framed[f.d]; ok && at == loc {
			st.Frames++ // the chunk's only copy, checked above
			continue
		}
		pf, err := s.zstd.reader(loc.Pack)
		if err != nil {
			report(fmt.Sprintf("zstd frame of chunk %s: %v", f.d, err))
			continue
		}
		frame := make([]byte, loc.Size)
		if _, err := pf.ReadAt(frame, loc.Offset); err != nil {
			report(fmt.Sprintf("zstd frame of chunk %s: %v", f.d, err))
			continue
		}
		if err := verifyFrame(f.d, frame); err != nil {
			report(err.Error())
		}
		st.Frames++
	}
	return st, nil
}

// CheckTree walks the tree under root and reports every directory, blob
// or chunk it lacks: a valid path's tree must be complete.
func (s *Store) CheckTree(ctx context.Context, root Node, report func(problem string)) error {
	switch root.Type {
	case TypeFile:
		if !s.HasBlob(root.Digest, root.Size) {
			report(fmt.Sprintf("blob %s (%d bytes) is incomplete", root.Digest, root.Size))
		}
		return nil
	case TypeSymlink:
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	dir, err := s.Directory(root.Digest)
	if err != nil {
		report(err.Error())
		return nil
	}
	if dir.Size() != root.Size {
		report(fmt.Sprintf("directory %s: size %d, its parent says %d", root.Digest, dir.Size(), root.Size))
	}
	for _, f := range dir.Files {
		if !s.HasBlob(f.Digest, f.Size) {
			report(fmt.Sprintf("blob %s (file %q) is incomplete", f.Digest, f.Name))
		}
	}
	for _, d := range dir.Directories {
		if err := s.CheckTree(ctx, Node{Type: TypeDirectory, Digest: d.Digest, Size: d.Size}, report); err != nil {
			return err
		}
	}
	return nil
}
