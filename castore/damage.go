package castore

import (
	"bytes"
	"context"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// Damage. Serving trusts the disk (a render hashes nothing it sends);
// the store checks its bytes where it reads them into memory anyway (a
// chunk for a peer, a chunk being compressed) and in VerifyObjects. What
// they find is a Damage: an object whose stored bytes do not match its
// digest or cannot be read. DropDamaged takes such objects out of the
// index, so that nothing reads them again and whatever brings them back
// (a fetch, an import) stores them anew; their pack bytes become garbage.
// Which paths a damaged object hurts is the caller's question:
// TreeProblems answers it for one tree.

// Kind is the kind of a damaged object.
type Kind uint8

const (
	KindChunk Kind = 1 + iota
	// KindFrame is the zstd frame kept beside a chunk's raw bytes: losing
	// it loses nothing, the compressor makes it again.
	KindFrame
	KindDirectory
	KindBlob // a blob's chunk list
)

func (k Kind) String() string {
	switch k {
	case KindChunk:
		return "chunk"
	case KindFrame:
		return "zstd frame of chunk"
	case KindDirectory:
		return "directory"
	case KindBlob:
		return "blob"
	}
	return fmt.Sprintf("object of kind %d", k)
}

// Damage is a stored object that does not match its digest, or that
// cannot be read. It wraps what was wrong (ErrDigestMismatch, a read
// error).
type Damage struct {
	Kind   Kind
	Digest Digest
	Err    error
}

func (d *Damage) Error() string { return fmt.Sprintf("%s %s: %v", d.Kind, d.Digest, d.Err) }
func (d *Damage) Unwrap() error { return d.Err }

// stillDamaged looks at a damaged object again, as the index names it
// now: a reader's damage may be a location gc has moved since. It reports
// false for an object the index no longer has, and says a frame that is
// its chunk's only copy is the chunk's damage.
func (s *Store) stillDamaged(dmg *Damage) (*Damage, bool) {
	var raw []byte // the index entry
	kind := dmg.Kind
	_ = s.View(func(v *View) error {
		switch kind {
		case KindChunk:
			raw = bytes.Clone(v.tx.Bucket(bucketChunks).Get(dmg.Digest[:]))
		case KindFrame:
			raw = bytes.Clone(v.tx.Bucket(bucketFrames).Get(dmg.Digest[:]))
			if c := v.tx.Bucket(bucketChunks).Get(dmg.Digest[:]); c != nil {
				if loc, err := unmarshalChunkLoc(c); err == nil && loc.Frame > 0 {
					kind, raw = KindChunk, bytes.Clone(c)
				}
			}
		case KindDirectory:
			raw = bytes.Clone(v.tx.Bucket(bucketDirs).Get(dmg.Digest[:]))
		case KindBlob:
			raw = bytes.Clone(v.tx.Bucket(bucketBlobs).Get(dmg.Digest[:]))
		}
		return nil
	})
	if raw == nil || kind == KindFrame && len(raw) == 0 {
		return nil, false
	}
	var err error
	switch kind {
	case KindChunk:
		err = s.checkChunk(dmg.Digest, raw, nil, nil)
	case KindFrame:
		err = s.checkFrame(dmg.Digest, raw)
	case KindDirectory:
		err = checkDirectory(dmg.Digest, raw)
	case KindBlob:
		_, err = unmarshalChunkRefs(raw)
	}
	if err == nil {
		return nil, false
	}
	return &Damage{Kind: kind, Digest: dmg.Digest, Err: err}, true
}

// checkChunk reads the chunk whose index entry is raw and checks it
// against its digest. buf and scratch (either may be nil) are reused from
// call to call: the chunk's bytes, and its frame.
func (s *Store) checkChunk(d Digest, raw []byte, buf, scratch *[]byte) error {
	loc, err := unmarshalChunkLoc(raw)
	if err != nil || loc.Size == 0 || loc.Size > MaxChunkSize || loc.Frame > maxStoredFrame {
		return fmt.Errorf("bad location")
	}
	if buf == nil {
		buf = new([]byte)
	}
	data, err := s.readChunkAt(loc, (*buf)[:0], scratch)
	*buf = data
	if err != nil {
		return err
	}
	if Sum(data) != d {
		return fmt.Errorf("%w (pack %d offset %d)", ErrDigestMismatch, loc.Pack, loc.Offset)
	}
	return nil
}

// checkFrame reads the stored frame whose index entry is raw and checks
// what it decodes to against the chunk's digest.
func (s *Store) checkFrame(d Digest, raw []byte) error {
	loc, err := unmarshalChunkLoc(raw)
	if err != nil || loc.Size > maxStoredFrame {
		return fmt.Errorf("bad location")
	}
	frame, _, err := s.readFrame(loc, nil)
	if err != nil {
		return err
	}
	plain, err := decodeFrame(frame, nil)
	if err != nil {
		return err
	}
	if Sum(plain) != d {
		return ErrDigestMismatch
	}
	return nil
}

// checkDirectory checks a stored directory's encoding against its digest.
func checkDirectory(d Digest, raw []byte) error {
	if Sum(raw) != d {
		return ErrDigestMismatch
	}
	_, err := UnmarshalDirectory(raw)
	return err
}

// DropDamaged takes damaged objects out of the index, each after a second
// look at what the index names now (stillDamaged): a chunk with its frame,
// a frame alone (its chunk's raw bytes stay, and CompressPending makes it
// again), a directory, a blob's chunk list; and their shared marks, so
// that peers are refused them. It returns those it dropped. Readers no
// longer find them (a render that needs one fails there), a fetch or an
// import that brings them stores them anew, and their pack bytes are
// garbage for Collect.
func (s *Store) DropDamaged(ds []*Damage) ([]*Damage, error) {
	var drop []*Damage
	for _, d := range ds {
		if again, ok := s.stillDamaged(d); ok {
			drop = append(drop, again)
		}
	}
	if len(drop) == 0 {
		return nil, nil
	}
	// As a sweep: no existence check straddles the removal.
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	var chunkBytes, chunkCount uint64
	err := s.db.Update(func(tx *bolt.Tx) error {
		chunks, shared := tx.Bucket(bucketChunks), tx.Bucket(bucketShared)
		// Deletes from the buckets whose entries the meta bucket counts
		// (objectCounts), counted to lower those counters after.
		gone := map[string]uint64{}
		del := func(name, k []byte) error {
			b := tx.Bucket(name)
			if b.Get(k) == nil {
				return nil
			}
			gone[string(name)]++
			return b.Delete(k)
		}
		for _, d := range drop {
			k := d.Digest[:]
			var err error
			switch d.Kind {
			case KindChunk:
				if v := chunks.Get(k); v != nil {
					if loc, lerr := unmarshalChunkLoc(v); lerr == nil {
						chunkBytes += uint64(loc.Size)
					}
					chunkCount++
				}
				err = firstErr(chunks.Delete(k), del(bucketFrames, k), shared.Delete(k))
			case KindFrame:
				err = del(bucketFrames, k)
			case KindDirectory:
				err = firstErr(del(bucketDirs, k), shared.Delete(k))
			case KindBlob:
				err = firstErr(del(bucketBlobs, k), shared.Delete(k))
			}
			if err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		for name, n := range gone {
			if err := subCounter(meta, countKey([]byte(name)), n); err != nil {
				return err
			}
		}
		return firstErr(subCounter(meta, metaChunkBytes, chunkBytes), subCounter(meta, metaChunkCount, chunkCount))
	})
	if err != nil {
		return nil, fmt.Errorf("castore: dropping damaged objects: %w", err)
	}
	s.purgeCaches()
	s.dropped.Add(int64(chunkBytes)) // garbage in the packs: a collection rewrites them
	return drop, nil
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// Unshare removes the shared marks of objects: the directories above a
// damaged object, and the root of a path it hurts, so that sharing the
// tree again once it is whole (Share) walks down to the objects stored
// anew instead of stopping at a mark that says its subtree is shared.
func (s *Store) Unshare(ds []Digest) error {
	if len(ds) == 0 {
		return nil
	}
	ds = slices.Clone(ds)
	slices.SortFunc(ds, func(a, b Digest) int { return bytes.Compare(a[:], b[:]) })
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketShared)
		for _, d := range ds {
			if err := b.Delete(d[:]); err != nil {
				return err
			}
		}
		return nil
	})
}

// TreeProblems walks the tree under root as a valid path's tree must be,
// complete and made of sound objects, and calls report with each object
// the index lacks and each that bad says is damaged, and how (bad may be
// nil). It
// returns the directories whose subtrees hold a problem, and root's digest
// when there is any: what Unshare takes. One read transaction of the
// index per call, as Collect's marking does per root.
func (s *Store) TreeProblems(ctx context.Context, root Node, bad func(Digest) error, report func(problem string)) (hurt []Digest, err error) {
	if bad == nil {
		bad = func(Digest) error { return nil }
	}
	seen := map[Digest]bool{} // directories walked, and whether hurt
	var walk func(v *View, n Node, name string) (bool, error)
	walk = func(v *View, n Node, name string) (bool, error) {
		switch n.Type {
		case TypeFile:
			return s.fileProblems(v, n, name, bad, report), nil
		case TypeDirectory:
		default:
			return false, nil
		}
		if h, ok := seen[n.Digest]; ok {
			return h, nil
		}
		if err := ctx.Err(); err != nil {
			return false, err
		}
		h := false
		defer func() { seen[n.Digest] = h }()
		if err := bad(n.Digest); err != nil {
			report(fmt.Sprintf("directory %s%s: %v", n.Digest, named(name), err))
			h = true
			hurt = append(hurt, n.Digest)
			return true, nil
		}
		b := v.tx.Bucket(bucketDirs).Get(n.Digest[:])
		if b == nil {
			report(fmt.Sprintf("directory %s%s is missing", n.Digest, named(name)))
			h = true
			hurt = append(hurt, n.Digest)
			return true, nil
		}
		dir, err := UnmarshalDirectory(b)
		if err != nil {
			report(fmt.Sprintf("directory %s%s: %v", n.Digest, named(name), err))
			h = true
			hurt = append(hurt, n.Digest)
			return true, nil
		}
		if dir.Size() != n.Size {
			report(fmt.Sprintf("directory %s%s: size %d, its parent says %d", n.Digest, named(name), dir.Size(), n.Size))
			h = true
		}
		err = dir.EachEntry(func(entry []byte, e Node) error {
			eh, err := walk(v, e, string(entry))
			h = h || eh
			return err
		})
		if err != nil {
			return false, err
		}
		if h {
			hurt = append(hurt, n.Digest)
		}
		return h, nil
	}
	err = s.View(func(v *View) error {
		h, err := walk(v, root, "")
		if h && root.Type == TypeFile {
			hurt = append(hurt, root.Digest)
		}
		return err
	})
	return hurt, err
}

// fileProblems reports what a file of a tree lacks or has damaged.
func (s *Store) fileProblems(v *View, n Node, name string, bad func(Digest) error, report func(string)) bool {
	if n.Size == 0 {
		return false
	}
	if err := bad(n.Digest); err != nil {
		report(fmt.Sprintf("blob %s%s: %v", n.Digest, named(name), err))
		return true
	}
	// The index, not the caches: they may still name what was dropped.
	refs := []ChunkRef{{Digest: n.Digest, Size: uint32(n.Size)}}
	if b := v.tx.Bucket(bucketBlobs).Get(n.Digest[:]); b != nil {
		var err error
		if refs, err = unmarshalChunkRefs(b); err != nil {
			report(fmt.Sprintf("blob %s%s: %v", n.Digest, named(name), err))
			return true
		}
	} else if n.Size > MaxChunkSize {
		report(fmt.Sprintf("blob %s%s (%d bytes) is missing", n.Digest, named(name), n.Size))
		return true
	}
	h := false
	for _, r := range refs {
		if err := bad(r.Digest); err != nil {
			report(fmt.Sprintf("chunk %s of blob %s%s: %v", r.Digest, n.Digest, named(name), err))
			h = true
			continue
		}
		switch {
		case !v.HasChunk(r.Digest):
			report(fmt.Sprintf("chunk %s of blob %s%s is missing", r.Digest, n.Digest, named(name)))
			h = true
		}
	}
	return h
}

func named(name string) string {
	if name == "" {
		return ""
	}
	return fmt.Sprintf(" (%q)", name)
}

// VerifyTree reads every object of the tree under root (directories,
// chunk lists, chunks) and checks it against its digest, calling report
// with each that does not match or cannot be read: the check of one path,
// when its NAR came out wrong. Objects the tree lacks are TreeProblems'.
func (s *Store) VerifyTree(ctx context.Context, root Node, report func(*Damage)) error {
	seen := map[Digest]bool{}
	var buf, scratch []byte
	check := func(kind Kind, d Digest, bucket []byte, test func(raw []byte) error) bool {
		if seen[d] {
			return false
		}
		seen[d] = true
		raw, err := s.get(bucket, d)
		if err != nil {
			return false // missing: not damage
		}
		if err := test(raw); err != nil {
			report(&Damage{Kind: kind, Digest: d, Err: err})
			return false
		}
		return true
	}
	var walk func(n Node) error
	walk = func(n Node) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		switch n.Type {
		case TypeFile:
			if n.Size == 0 {
				return nil
			}
			refs := []ChunkRef{{Digest: n.Digest, Size: uint32(n.Size)}}
			if raw, err := s.get(bucketBlobs, n.Digest); err == nil {
				if refs, err = unmarshalChunkRefs(raw); err != nil {
					report(&Damage{Kind: KindBlob, Digest: n.Digest, Err: err})
					return nil
				}
			}
			for _, r := range refs {
				check(KindChunk, r.Digest, bucketChunks, func(raw []byte) error {
					return s.checkChunk(r.Digest, raw, &buf, &scratch)
				})
			}
		case TypeDirectory:
			var dir *Directory
			ok := check(KindDirectory, n.Digest, bucketDirs, func(raw []byte) error {
				err := checkDirectory(n.Digest, raw)
				if err == nil {
					dir, _ = UnmarshalDirectory(raw)
				}
				return err
			})
			if !ok || dir == nil {
				return nil
			}
			return dir.EachEntry(func(_ []byte, e Node) error { return walk(e) })
		}
		return nil
	}
	return walk(root)
}
