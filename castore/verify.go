package castore

import (
	"bytes"
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

// VerifyOptions tune VerifyObjects.
type VerifyOptions struct {
	// Pace, when set, is called with the bytes of each chunk or frame
	// read, before the next read: the background scrub waits there, to
	// read slowly.
	Pace func(ctx context.Context, bytes int) error
}

// verifyBatch is how many index entries VerifyObjects reads per
// transaction.
const verifyBatch = 1024

// VerifyObjects reads every chunk, stored frame and directory and checks
// it against its digest, and every blob's chunk list against the chunks
// it names; it calls report with each object that fails (a chunk a list
// names and the index lacks is reported missing, as a chunk). It streams:
// the index is read verifyBatch entries at a time, each batch in a short
// transaction of its own, and no transaction stays open while data is
// read, so memory stays bounded whatever the store holds and the index
// keeps growing meanwhile. Objects added while it runs may be missed, and
// objects removed are skipped. It fails only if it cannot read the index.
func (s *Store) VerifyObjects(ctx context.Context, opt VerifyOptions, report func(*Damage)) (VerifyStats, error) {
	var st VerifyStats
	pace := func(n int) error {
		if opt.Pace == nil {
			return ctx.Err()
		}
		return opt.Pace(ctx, n)
	}
	buf, frameBuf := make([]byte, 0, MaxChunkSize), []byte(nil)
	err := s.batches(ctx, bucketChunks, func(batch []entry) error {
		for _, c := range batch {
			st.Chunks++
			if err := s.checkChunk(c.d, c.v, &buf, &frameBuf); err != nil {
				report(&Damage{Kind: KindChunk, Digest: c.d, Err: err})
			} else {
				st.Bytes += uint64(len(buf))
			}
			if err := pace(len(buf)); err != nil {
				return err
			}
		}
		return nil
	}, report)
	if err != nil {
		return st, err
	}
	err = s.batches(ctx, bucketFrames, func(batch []entry) error {
		// A frame-only chunk's frame is its chunk, checked above.
		only := make([]bool, len(batch))
		_ = s.View(func(v *View) error {
			for i, f := range batch {
				if c := v.tx.Bucket(bucketChunks).Get(f.d[:]); c != nil {
					loc, err := unmarshalChunkLoc(c)
					only[i] = err == nil && loc.Frame > 0 && bytes.Equal(loc.frame().marshal(), f.v)
				}
			}
			return nil
		})
		for i, f := range batch {
			if len(f.v) == 0 { // incompressible: served from the raw chunk
				continue
			}
			st.Frames++
			if only[i] {
				continue
			}
			if err := s.checkFrame(f.d, f.v); err != nil {
				report(&Damage{Kind: KindFrame, Digest: f.d, Err: err})
			}
			if err := pace(len(f.v)); err != nil {
				return err
			}
		}
		return nil
	}, report)
	if err != nil {
		return st, err
	}
	err = s.batches(ctx, bucketDirs, func(batch []entry) error {
		for _, d := range batch {
			st.Directories++
			if err := checkDirectory(d.d, d.v); err != nil {
				report(&Damage{Kind: KindDirectory, Digest: d.d, Err: err})
			}
		}
		return nil
	}, report)
	if err != nil {
		return st, err
	}
	return st, s.batches(ctx, bucketBlobs, func(batch []entry) error {
		return s.View(func(v *View) error {
			for _, b := range batch {
				refs, err := unmarshalChunkRefs(b.v)
				if err != nil {
					report(&Damage{Kind: KindBlob, Digest: b.d, Err: err})
					continue
				}
				for _, r := range refs {
					if !v.HasChunk(r.Digest) {
						report(&Damage{Kind: KindChunk, Digest: r.Digest, Err: fmt.Errorf("missing (blob %s lists it)", b.d)})
					}
				}
			}
			return nil
		})
	}, report)
}

// entry is an index entry, copied out of its transaction.
type entry struct {
	d Digest
	v []byte
}

// batches calls fn with the entries of bucket in key order, verifyBatch
// at a time, each batch read in a transaction of its own and copied out of
// it. A key that is not a digest is reported and skipped.
func (s *Store) batches(ctx context.Context, bucket []byte, fn func([]entry) error, report func(*Damage)) error {
	var after []byte
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		var batch []entry
		keys := 0
		err := s.db.View(func(tx *bolt.Tx) error {
			c := tx.Bucket(bucket).Cursor()
			k, v := c.First()
			if after != nil {
				if k, v = c.Seek(after); bytes.Equal(k, after) {
					k, v = c.Next()
				}
			}
			for ; k != nil && keys < verifyBatch; k, v = c.Next() {
				keys++
				after = bytes.Clone(k)
				d, err := DigestFromBytes(k)
				if err != nil {
					report(&Damage{Kind: bucketKind(bucket), Err: fmt.Errorf("index key %x: %v", k, err)})
					continue
				}
				batch = append(batch, entry{d, bytes.Clone(v)})
			}
			return nil
		})
		if err != nil {
			return err
		}
		if keys == 0 {
			return nil
		}
		if err := fn(batch); err != nil {
			return err
		}
	}
}

func bucketKind(bucket []byte) Kind {
	switch {
	case bytes.Equal(bucket, bucketFrames):
		return KindFrame
	case bytes.Equal(bucket, bucketDirs):
		return KindDirectory
	case bytes.Equal(bucket, bucketBlobs):
		return KindBlob
	}
	return KindChunk
}

// Verify is VerifyObjects at full speed, with each problem as a line.
func (s *Store) Verify(ctx context.Context, report func(problem string)) (VerifyStats, error) {
	return s.VerifyObjects(ctx, VerifyOptions{}, func(d *Damage) { report(d.Error()) })
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
