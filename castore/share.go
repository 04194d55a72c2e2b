package castore

import (
	"bytes"
	"context"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// Sharing. A node gives peers only the objects of the paths it shares
// (paths a trusted key or the node itself signed, unless its owner made
// them private), and announces exactly
// those on the DHT; the objects of private paths are neither announced nor
// served. The shared bucket holds the digest of every shared directory,
// blob and chunk, so that a peer's request is answered or refused with one
// lookup, and so that the announcements can be replayed after a restart.

var bucketShared = []byte("shared") // digest -> kind

// Kinds of shared objects.
const (
	SharedDirectory byte = 1 + iota
	SharedBlob
	SharedChunk
)

// Share marks every object of the tree under root as shared and returns
// the directories and chunks that were not shared before (what is new to
// announce). All marks go in in one transaction, so a marked root means a
// complete tree; they go in in key order, which bbolt inserts fastest.
func (s *Store) Share(ctx context.Context, root Node) (newDigests []Digest, err error) {
	if root.Type == TypeSymlink {
		return nil, nil
	}
	if s.IsShared(root.Digest) {
		return nil, nil
	}
	marks := map[Digest]byte{}
	var order []Digest
	add := func(d Digest, kind byte) {
		if _, ok := marks[d]; !ok {
			marks[d] = kind
			order = append(order, d)
		}
	}
	err = s.walkTree(ctx, root, func(n Node) (bool, error) {
		switch n.Type {
		case TypeFile:
			refs, err := s.BlobChunks(n.Digest, n.Size)
			if err != nil {
				return false, err
			}
			for _, r := range refs {
				add(r.Digest, SharedChunk)
			}
			add(n.Digest, SharedBlob)
		case TypeDirectory:
			if s.IsShared(n.Digest) {
				return true, nil // marked with all of its tree
			}
			add(n.Digest, SharedDirectory)
		}
		return false, nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(order, func(a, b Digest) int { return bytes.Compare(a[:], b[:]) })
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketShared)
		for _, d := range order {
			if old := b.Get(d[:]); old != nil {
				continue
			}
			kind := marks[d]
			if err := b.Put(d[:], []byte{kind}); err != nil {
				return err
			}
			if kind != SharedBlob {
				newDigests = append(newDigests, d)
			}
		}
		return nil
	})
	return newDigests, err
}

// IsShared reports whether an object belongs to a shared tree.
func (s *Store) IsShared(d Digest) bool { return s.has(bucketShared, d) }

// ForEachShared calls fn with each shared directory and chunk (what the
// node announces).
func (s *Store) ForEachShared(fn func(d Digest) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketShared).ForEach(func(k, v []byte) error {
			if len(v) == 1 && v[0] == SharedBlob {
				return nil
			}
			d, err := DigestFromBytes(k)
			if err != nil {
				return err
			}
			return fn(d)
		})
	})
}

// SharedDirectory returns the canonical encoding of a directory of a
// shared tree, as stored, for a peer; a directory of no shared tree is
// ErrNotFound. One index transaction for both lookups.
func (s *Store) SharedDirectory(d Digest) (b []byte, err error) {
	err = s.View(func(v *View) error {
		if v.tx.Bucket(bucketShared).Get(d[:]) != nil {
			b = bytes.Clone(v.tx.Bucket(bucketDirs).Get(d[:]))
		}
		return nil
	})
	if err == nil && b == nil {
		err = fmt.Errorf("directory %s: %w", d, ErrNotFound)
	}
	return b, err
}

// readFrame appends the zstd frame stored at loc to buf.
func (s *Store) readFrame(loc chunkLoc, buf []byte) ([]byte, bool, error) {
	f, err := s.zstd.reader(loc.Pack)
	if err != nil {
		return buf, false, err
	}
	n := len(buf)
	buf = slices.Grow(buf, int(loc.Size))[:n+int(loc.Size)]
	if _, err := f.ReadAt(buf[n:], loc.Offset); err != nil {
		return buf[:n], false, err
	}
	return buf, true, nil
}

// SharedChunks calls fn with each chunk of ds in turn, for a peer, until
// fn returns an error: the chunk's zstd frame when zstd is asked and one
// is stored (compressed true), else its bytes, checked against the digest
// so that a chunk damaged on disk is refused rather than sent; a chunk of
// no shared tree is an ErrNotFound error. fn gets the chunk in buf's
// storage (grown as needed; a slice of it starts at buf[0] in the first
// call of a read), valid only during the call. All the lookups share one
// index transaction, and frames that follow each other in a pack, as a
// path's do in the order of its NAR, are read at once: a seed answers
// thousands of chunks per path, a batch at a time.
func (s *Store) SharedChunks(ds []Digest, zstd bool, buf []byte, fn func(data []byte, compressed bool, err error) error) error {
	type lookup struct {
		shared    bool
		haveFrame bool
		frame     chunkLoc
	}
	found := make([]lookup, len(ds))
	_ = s.View(func(v *View) error {
		shared := v.bucket(bucketShared, &v.shared)
		for i, d := range ds {
			l := &found[i]
			l.shared = shared.Get(d[:]) != nil
			if l.shared && zstd {
				var err error
				if l.frame, l.haveFrame, err = v.frameLoc(d); err != nil {
					l.haveFrame = false // the raw bytes, then
				}
			}
		}
		return nil
	})
	stored := func(l lookup) bool { return l.shared && l.haveFrame && l.frame.Size > 0 }
	for i := 0; i < len(ds); {
		l := found[i]
		if !l.shared {
			if err := fn(buf[:0], false, fmt.Errorf("chunk %s: %w", ds[i], ErrNotFound)); err != nil {
				return err
			}
			i++
			continue
		}
		if stored(l) {
			// The frames that follow this one in its pack, up to a
			// bounded read.
			run, next := l.frame, i+1
			for next < len(ds) && stored(found[next]) && found[next].frame.Pack == run.Pack &&
				found[next].frame.Offset == run.Offset+int64(run.Size) && run.Size+found[next].frame.Size <= maxFrameRun {
				run.Size += found[next].frame.Size
				next++
			}
			if data, ok, _ := s.readFrame(run, buf[:0]); ok {
				buf = data
				for k := i; k < next; k++ {
					n := int(found[k].frame.Size)
					if err := fn(data[:n], true, nil); err != nil {
						return err
					}
					data = data[n:]
				}
				i = next
				continue
			} // else the raw bytes, if they can be read
		}
		data, err := s.ReadChunk(ds[i], buf[:0])
		buf = data
		if err := fn(data, false, err); err != nil {
			return err
		}
		i++
	}
	return nil
}

// maxFrameRun bounds the frames SharedChunks reads at once.
const maxFrameRun = 1 << 20
