package castore

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Garbage collection. Collect removes what no root reaches and no lease
// holds, in three steps:
//
//  1. Mark: walk every root's tree and list the digests it uses. The list
//     is a sorted slice (32 bytes per object, about 30 MB per million
//     chunks), compacted as it grows, not a map: the sweep walks it side by
//     side with the digest-ordered buckets.
//  2. Sweep: one index transaction deletes the unmarked chunks, blobs,
//     directories, their frames and their shared marks, unless a lease
//     held them since the collection began. Existence checks (lease.go)
//     wait for the sweep, and the caches are emptied before they resume.
//  3. Rewrite: a pack of which at least a fifth is garbage (or that is
//     wholly garbage) has its live objects copied to the current pack, each
//     checked against its digest on the way; one transaction points the
//     index at the copies and drops the pack's length, and the pack file is
//     removed a grace time later, so that a reader that looked a location
//     up just before keeps reading the old bytes. A pack still written to
//     by an open Writer waits for the next collection; one that holds
//     garbage at its end is sealed, so that the next collection can
//     rewrite it.

// CollectStats say what a collection removed.
type CollectStats struct {
	Chunks         int    // chunks removed from the index
	ChunkBytes     uint64 // their bytes
	Blobs          int    // chunk lists removed
	Directories    int    // directories removed
	PacksRewritten int    // packs whose live objects were copied, or that held none
	BytesFreed     int64  // pack bytes given back to the file system
}

// rewriteFraction: a pack is rewritten once this fraction of it is
// garbage. Lower reclaims more space for more copying.
const rewriteFraction = 0.2

// retireGrace is how long a rewritten pack's file stays readable.
const retireGrace = time.Minute

// Collect removes the objects that no tree under roots uses and no lease
// holds, and gives back the pack space they took. roots calls yield with
// the root node of every valid path.
func (s *Store) Collect(ctx context.Context, roots func(yield func(Node) error) error) (CollectStats, error) {
	s.collectMu.Lock()
	defer s.collectMu.Unlock()
	var st CollectStats

	s.leaseMu.Lock()
	s.touched = map[Digest]struct{}{}
	for l := range s.leases {
		for d := range l.held {
			s.touched[d] = struct{}{}
		}
	}
	s.leaseMu.Unlock()
	defer func() {
		s.leaseMu.Lock()
		s.touched = nil
		s.leaseMu.Unlock()
	}()
	dropped := s.dropped.Load()

	live, err := s.mark(ctx, roots)
	if err != nil {
		return st, err
	}
	if err := s.sweep(live, &st); err != nil {
		return st, err
	}
	if err := s.rewritePacks(ctx, &st); err != nil {
		return st, err
	}
	s.dropped.Add(-dropped)
	return st, nil
}

// DroppedBytes estimates the pack bytes that aborted writers left as
// garbage since the last collection.
func (s *Store) DroppedBytes() int64 { return s.dropped.Load() }

// digestSet is a set of digests as a sorted slice, built by appending and
// compacting.
type digestSet struct {
	sorted []Digest // sorted, no duplicates, up to n
	n      int
}

func (ds *digestSet) add(d Digest) {
	ds.sorted = append(ds.sorted, d)
	if len(ds.sorted) >= 2*ds.n+1<<16 {
		ds.compact()
	}
}

func (ds *digestSet) compact() {
	slices.SortFunc(ds.sorted, func(a, b Digest) int { return bytes.Compare(a[:], b[:]) })
	ds.sorted = slices.Compact(ds.sorted)
	ds.n = len(ds.sorted)
}

// cursor walks a compacted set in order, to answer membership questions
// asked in increasing order.
type setCursor struct {
	ds []Digest
	i  int
}

// has reports whether k is in the set; successive calls must ask about
// increasing keys.
func (c *setCursor) has(k []byte) bool {
	for c.i < len(c.ds) && bytes.Compare(c.ds[c.i][:], k) < 0 {
		c.i++
	}
	return c.i < len(c.ds) && bytes.Equal(c.ds[c.i][:], k)
}

// mark lists the digests of every object the trees under roots use.
func (s *Store) mark(ctx context.Context, roots func(yield func(Node) error) error) (*digestSet, error) {
	live := &digestSet{}
	seenDirs := map[Digest]struct{}{}
	var walk func(v *View, n Node) error
	walk = func(v *View, n Node) error {
		switch n.Type {
		case TypeFile:
			live.add(n.Digest)
			refs, err := v.BlobChunks(n.Digest, n.Size)
			if err != nil {
				return nil // an incomplete tree: verify reports it
			}
			for _, r := range refs {
				live.add(r.Digest)
			}
		case TypeDirectory:
			if _, ok := seenDirs[n.Digest]; ok {
				return nil
			}
			seenDirs[n.Digest] = struct{}{}
			live.add(n.Digest)
			b := v.tx.Bucket(bucketDirs).Get(n.Digest[:])
			if b == nil {
				return nil
			}
			dir, err := UnmarshalDirectory(b)
			if err != nil {
				return nil
			}
			return dir.EachEntry(func(_ []byte, e Node) error { return walk(v, e) })
		}
		return nil
	}
	err := roots(func(root Node) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		// A read transaction per root: short ones do not hold up the
		// index's growth.
		return s.View(func(v *View) error { return walk(v, root) })
	})
	if err != nil {
		return nil, err
	}
	live.compact()
	return live, nil
}

// sweep deletes what is neither live nor touched, in one transaction.
func (s *Store) sweep(live *digestSet, st *CollectStats) error {
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	s.leaseMu.Lock()
	keep := s.touched
	s.leaseMu.Unlock()
	// The touched set can grow no more: every hold is followed by an
	// existence check, and checks wait for gcMu.
	dead := func(k []byte, c *setCursor) bool {
		if c.has(k) {
			return false
		}
		_, held := keep[Digest(k)]
		return !held
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		var removedChunks []Digest
		for _, b := range []struct {
			name  []byte
			count *int
		}{{bucketChunks, &st.Chunks}, {bucketBlobs, &st.Blobs}, {bucketDirs, &st.Directories}} {
			bucket := tx.Bucket(b.name)
			c := &setCursor{ds: live.sorted}
			var gone [][]byte
			err := bucket.ForEach(func(k, v []byte) error {
				if len(k) != DigestSize || !dead(k, c) {
					return nil
				}
				gone = append(gone, k)
				if b.count == &st.Chunks {
					if loc, err := unmarshalChunkLoc(v); err == nil {
						st.ChunkBytes += uint64(loc.Size)
					}
					removedChunks = append(removedChunks, Digest(k))
				}
				return nil
			})
			if err != nil {
				return err
			}
			for _, k := range gone {
				if err := bucket.Delete(k); err != nil {
					return err
				}
			}
			*b.count = len(gone)
			if key := countKey(b.name); key != nil {
				if err := subCounter(tx.Bucket(bucketMeta), key, uint64(len(gone))); err != nil {
					return err
				}
			}
		}
		// Frames and shared marks of objects that are gone.
		chunks, blobs, dirs := tx.Bucket(bucketChunks), tx.Bucket(bucketBlobs), tx.Bucket(bucketDirs)
		for _, name := range [][]byte{bucketFrames, bucketShared} {
			bucket := tx.Bucket(name)
			var gone [][]byte
			err := bucket.ForEach(func(k, v []byte) error {
				if chunks.Get(k) == nil && (bytes.Equal(name, bucketFrames) || blobs.Get(k) == nil && dirs.Get(k) == nil) {
					gone = append(gone, k)
				}
				return nil
			})
			if err != nil {
				return err
			}
			for _, k := range gone {
				if err := bucket.Delete(k); err != nil {
					return err
				}
			}
			if key := countKey(name); key != nil {
				if err := subCounter(tx.Bucket(bucketMeta), key, uint64(len(gone))); err != nil {
					return err
				}
			}
		}
		meta := tx.Bucket(bucketMeta)
		if err := subCounter(meta, metaChunkBytes, st.ChunkBytes); err != nil {
			return err
		}
		return subCounter(meta, metaChunkCount, uint64(st.Chunks))
	})
	if err != nil {
		return fmt.Errorf("castore: gc sweep: %w", err)
	}
	s.purgeCaches()
	return nil
}

func (s *Store) purgeCaches() {
	s.chunkCache.Purge()
	s.blobCache.Purge()
	s.dirCache.Purge()
}

// packObject is an object stored in a pack being rewritten: a chunk's raw
// bytes, or a zstd frame (of a frame-only chunk, or a chunk's stored
// frame), with the index entries that name it.
type packObject struct {
	d      Digest
	loc    chunkLoc // where it is in the pack
	chunk  bool     // the chunks bucket names it
	frame  bool     // the frames bucket names it
	newLoc chunkLoc
}

// packUse is what a pack holds that the index names.
type packUse struct {
	live    int64
	objects []packObject
}

// usage maps each pack of set to what the index names in it.
func (s *Store) usage(tx *bolt.Tx, set *packSet) map[uint32]*packUse {
	use := map[uint32]*packUse{}
	add := func(loc chunkLoc, o packObject) {
		u := use[loc.Pack]
		if u == nil {
			u = &packUse{}
			use[loc.Pack] = u
		}
		u.live += int64(loc.Size)
		u.objects = append(u.objects, o)
	}
	// Frame-only chunks: their frame entry names the same bytes, which
	// are one object with both entries to move.
	framed := map[Digest]chunkLoc{}
	tx.Bucket(bucketChunks).ForEach(func(k, v []byte) error {
		loc, err := unmarshalChunkLoc(v)
		if err != nil || len(k) != DigestSize {
			return nil
		}
		switch {
		case loc.Frame > 0:
			framed[Digest(k)] = loc.frame()
		case set == s.raw:
			add(loc, packObject{d: Digest(k), loc: loc, chunk: true})
		}
		return nil
	})
	if set != s.zstd {
		return use
	}
	tx.Bucket(bucketFrames).ForEach(func(k, v []byte) error {
		if len(v) == 0 || len(k) != DigestSize {
			return nil
		}
		loc, err := unmarshalChunkLoc(v)
		if err != nil {
			return nil
		}
		o := packObject{d: Digest(k), loc: loc, frame: true}
		if at, ok := framed[o.d]; ok && at == loc {
			o.chunk = true
			delete(framed, o.d)
		}
		add(loc, o)
		return nil
	})
	for d, loc := range framed { // frame-only chunks without a frame entry
		add(loc, packObject{d: d, loc: loc, chunk: true})
	}
	return use
}

// rewritePacks copies the live objects out of packs that are mostly
// garbage, and removes them.
func (s *Store) rewritePacks(ctx context.Context, st *CollectStats) error {
	for _, set := range []*packSet{s.raw, s.zstd} {
		var use map[uint32]*packUse
		var lengths map[uint32]int64
		s.db.View(func(tx *bolt.Tx) error {
			use, lengths = s.usage(tx, set), set.committedLengths(tx)
			return nil
		})
		for id, length := range lengths {
			u := use[id]
			if u == nil {
				u = &packUse{}
			}
			if length == 0 || float64(length-u.live) < rewriteFraction*float64(length) {
				continue
			}
			if !set.sealIfIdle(id) {
				continue // still written to: next time
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := s.rewritePack(set, id, u); err != nil {
				return err
			}
			st.PacksRewritten++
			st.BytesFreed += length - u.live
		}
	}
	return nil
}

// sealIfIdle makes sure nothing more is written to pack id and reports
// whether it can be rewritten: no Writer has uncommitted bytes in it.
func (p *packSet) sealIfIdle(id uint32) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pending[id] > 0 {
		if p.cur != nil && p.curID == id {
			p.seal() // garbage at its end: rewrite it next time
		}
		return false
	}
	if p.cur != nil && p.curID == id {
		if err := p.seal(); err != nil {
			return false
		}
	}
	return true
}

// rewritePack copies the objects of pack id that the index names to the
// current pack, points the index at the copies, and retires the pack.
func (s *Store) rewritePack(set *packSet, id uint32, u *packUse) error {
	slices.SortFunc(u.objects, func(a, b packObject) int { return cmp.Compare(a.loc.Offset, b.loc.Offset) })
	w := s.newWriter()
	var buf []byte
	f, err := set.reader(id)
	if err != nil {
		return err
	}
	for i := range u.objects {
		o := &u.objects[i]
		buf = slices.Grow(buf[:0], int(o.loc.Size))[:o.loc.Size]
		if _, err := f.ReadAt(buf, o.loc.Offset); err != nil {
			w.Abort()
			return fmt.Errorf("castore: gc reading %s: %w", set.path(id), err)
		}
		var bad error
		if set == s.raw {
			if Sum(buf) != o.d {
				bad = ErrDigestMismatch
			}
		} else {
			bad = verifyFrame(o.d, buf)
		}
		if bad != nil {
			// Copying it would hide the damage; the pack stays as it is
			// until the caller has the object dropped (DropDamaged).
			w.Abort()
			kind := KindChunk
			if set == s.zstd && !o.chunk {
				kind = KindFrame
			}
			return fmt.Errorf("castore: gc left %s as it is: %w", set.path(id), &Damage{Kind: kind, Digest: o.d, Err: bad})
		}
		if o.newLoc, err = set.append(w, buf); err != nil {
			w.Abort()
			return err
		}
	}
	lengths, err := set.syncAll(w.pendingPacks(set))
	for _, o := range u.objects {
		if err == nil && o.newLoc.Offset+int64(o.newLoc.Size) > lengths[o.newLoc.Pack] {
			err = fmt.Errorf("castore: pack %d lost bytes after a failed write", o.newLoc.Pack)
		}
	}
	if err != nil {
		w.Abort()
		return err
	}
	var moved []packObject
	err = s.db.Update(func(tx *bolt.Tx) error {
		chunks, frames := tx.Bucket(bucketChunks), tx.Bucket(bucketFrames)
		moved = moved[:0]
		for _, o := range u.objects {
			n := o.newLoc
			if o.chunk {
				cur, err := unmarshalChunkLoc(chunks.Get(o.d[:]))
				if err != nil {
					continue
				}
				want, newEntry := o.loc, n
				if set == s.zstd { // a frame-only chunk
					want = chunkLoc{Pack: o.loc.Pack, Offset: o.loc.Offset, Size: cur.Size, Frame: o.loc.Size}
					newEntry = chunkLoc{Pack: n.Pack, Offset: n.Offset, Size: cur.Size, Frame: n.Size}
				}
				if cur == want {
					if err := chunks.Put(o.d[:], newEntry.marshal()); err != nil {
						return err
					}
					o.newLoc = newEntry
					moved = append(moved, o)
				}
			}
			if o.frame {
				if cur := frames.Get(o.d[:]); cur != nil && bytes.Equal(cur, o.loc.marshal()) {
					if err := frames.Put(o.d[:], n.marshal()); err != nil {
						return err
					}
				}
			}
		}
		if err := set.recordLengths(tx, lengths); err != nil {
			return err
		}
		return tx.Bucket(bucketPacks).Delete(set.lengthKey(id))
	})
	w.finish(err != nil)
	if err != nil {
		return fmt.Errorf("castore: gc rewriting %s: %w", set.path(id), err)
	}
	for _, o := range moved {
		s.chunkCache.Put(o.d, o.newLoc)
	}
	s.retired.add(s, set, id)
	return nil
}

// retiredPacks are packs the index no longer names, kept for a grace time.
type retiredPacks struct {
	mu    sync.Mutex
	packs map[string]*time.Timer // path -> removal
}

func (r *retiredPacks) add(s *Store, set *packSet, id uint32) {
	path := set.path(id)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.packs == nil {
		r.packs = map[string]*time.Timer{}
	}
	r.packs[path] = time.AfterFunc(retireGrace, func() {
		r.mu.Lock()
		_, ok := r.packs[path]
		delete(r.packs, path)
		r.mu.Unlock()
		if ok {
			set.forget(id)
			os.Remove(path)
			// A location looked up before the rewrite may have been
			// cached after it.
			s.chunkCache.Purge()
		}
	})
}

// removeAll removes the retired packs now (the store is closing).
func (r *retiredPacks) removeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for path, t := range r.packs {
		t.Stop()
		os.Remove(path)
		delete(r.packs, path)
	}
}

// forget closes the shared reader of pack id.
func (p *packSet) forget(id uint32) {
	p.rmu.Lock()
	if f := p.readers[id]; f != nil {
		f.Close()
		delete(p.readers, id)
	}
	p.rmu.Unlock()
}
