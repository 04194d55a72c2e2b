package castore

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/zeebo/blake3"
	bolt "go.etcd.io/bbolt"
)

// Writer adds objects to a store. Chunk bytes go to the pack files as they
// come; the index entries wait in memory until Commit, which makes all of
// them visible at once. A Writer that is never committed leaves only
// unreferenced pack bytes behind: Abort cuts them off when they end a
// pack, gc reclaims the others. A Writer is not safe for concurrent use;
// several Writers may work at once.
//
// Everything a Writer adds or dedups against is held by its Lease (see
// lease.go) until the lease is released: a Writer from Store.NewWriter has
// a lease of its own, released when it commits or aborts; one from
// Lease.NewWriter leaves that to the lease's owner.
type Writer struct {
	s        *Store
	lease    *Lease
	ownLease bool
	chunks   map[Digest]chunkLoc
	blobs    map[Digest][]byte
	dirs     map[Digest][]byte
	frames   map[Digest][]byte // zstd frame locations, empty for "not worth it"
	packs    map[uint32]struct{}
	zpacks   map[uint32]struct{}
	chunker  *Chunker
	hasher   *blake3.Hasher
	refs     []ChunkRef
	stats    WriteStats
	done     bool

	appended int64 // pack bytes written
}

// WriteStats count what a Writer added and what it found already stored.
type WriteStats struct {
	NewChunks   int
	NewBytes    int64 // bytes of the chunks added (decoded, for a frame-only chunk)
	DedupChunks int
	DedupBytes  int64 // chunk bytes that were already stored
}

// NewWriter starts a set of additions, with a lease of its own that ends
// when it commits or aborts: for additions that need no root, or whose
// caller records their root before anything could collect them.
func (s *Store) NewWriter() *Writer {
	w := s.newWriter()
	w.lease, w.ownLease = s.NewLease(), true
	return w
}

func (s *Store) newWriter() *Writer {
	return &Writer{
		s:      s,
		chunks: map[Digest]chunkLoc{},
		blobs:  map[Digest][]byte{},
		dirs:   map[Digest][]byte{},
		frames: map[Digest][]byte{},
		packs:  map[uint32]struct{}{},
		zpacks: map[uint32]struct{}{},
	}
}

// Stats returns what the Writer has added so far.
func (w *Writer) Stats() WriteStats { return w.stats }

// PutBlob reads r to the end, cuts it into content-defined chunks, stores
// the chunks it lacks and returns the blob's digest and size.
func (w *Writer) PutBlob(r io.Reader) (Digest, uint64, error) {
	if w.chunker == nil {
		w.chunker = NewChunker(r)
	} else {
		w.chunker.Reset(r)
	}
	w.refs = w.refs[:0]
	var size uint64
	for {
		chunk, err := w.chunker.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return Digest{}, 0, err
		}
		d := Sum(chunk)
		if len(w.refs) == 0 && w.chunker.Done() {
			// A blob of one chunk: its digest is the chunk's, no need
			// to hash the bytes twice.
			if err := w.putChunk(d, chunk); err != nil {
				return Digest{}, 0, err
			}
			return d, uint64(len(chunk)), nil
		}
		if len(w.refs) == 0 {
			if w.hasher == nil { // 11 KB, and a fetch's Writers never hash
				w.hasher = blake3.New()
			}
			w.hasher.Reset()
		}
		w.hasher.Write(chunk)
		if err := w.putChunk(d, chunk); err != nil {
			return Digest{}, 0, err
		}
		w.refs = append(w.refs, ChunkRef{Digest: d, Size: uint32(len(chunk))})
		size += uint64(len(chunk))
	}
	if len(w.refs) == 0 {
		return Sum(nil), 0, nil
	}
	var digest Digest
	w.hasher.Sum(digest[:0])
	if err := w.putBlobRecord(digest, w.refs); err != nil {
		return Digest{}, 0, err
	}
	return digest, size, nil
}

var errFinished = errors.New("castore: writer already finished")

// PutChunk stores a chunk that arrived whole (from a peer). The caller has
// checked data against d, as PutFrame's caller has checked its frame: the
// transfer client checks every chunk as it arrives, and hashing it again
// here would add a tenth to a fetch's CPU time. The caller also asked only for chunks
// the store lacked, so the store is not looked up again: a chunk that
// another writer stored meanwhile costs its pack bytes, and the index
// keeps the first copy.
func (w *Writer) PutChunk(d Digest, data []byte) error {
	if w.done {
		return errFinished
	}
	if len(data) == 0 || len(data) > MaxChunkSize {
		return fmt.Errorf("castore: chunk of %d bytes", len(data))
	}
	if _, ok := w.chunks[d]; ok {
		return nil
	}
	w.lease.Hold(d)
	return w.appendChunk(d, data)
}

// PutBlobRecord records the chunk list of a blob assembled from chunks
// that arrived separately. The caller has checked that the chunks hash to
// the blob digest in order.
func (w *Writer) PutBlobRecord(d Digest, refs []ChunkRef) error {
	if len(refs) < 2 {
		return nil
	}
	return w.putBlobRecord(d, refs)
}

func (w *Writer) putBlobRecord(d Digest, refs []ChunkRef) error {
	if _, ok := w.blobs[d]; ok || w.stored(bucketBlobs, d) {
		return nil
	}
	w.blobs[d] = marshalChunkRefs(refs)
	return nil
}

func (w *Writer) putChunk(d Digest, data []byte) error {
	if w.done {
		return errFinished
	}
	if _, ok := w.chunks[d]; ok || w.stored(bucketChunks, d) {
		w.stats.DedupChunks++
		w.stats.DedupBytes += int64(len(data))
		return nil
	}
	return w.appendChunk(d, data)
}

// stored holds d and reports whether the store has it in bucket: a Writer
// that finds an object stored relies on it staying so.
func (w *Writer) stored(bucket []byte, d Digest) bool {
	w.lease.Hold(d)
	var ok bool
	w.s.checkExisting(func(v *View) { ok = v.tx.Bucket(bucket).Get(d[:]) != nil })
	return ok
}

// pendingPacks are the packs of set with bytes of w not committed yet.
func (w *Writer) pendingPacks(set *packSet) map[uint32]struct{} {
	if set == w.s.zstd {
		return w.zpacks
	}
	return w.packs
}

// appendChunk writes a new chunk to the pack being appended to.
func (w *Writer) appendChunk(d Digest, data []byte) error {
	loc, err := w.s.raw.append(w, data)
	if err != nil {
		return err
	}
	w.chunks[d] = loc
	w.stats.NewChunks++
	w.stats.NewBytes += int64(len(data))
	return nil
}

// PutFrame stores a chunk's zstd frame, as it arrived from a peer, so that
// the chunk need not be compressed again here. The caller has decoded the
// frame and checked the result against the digest.
func (w *Writer) PutFrame(d Digest, frame []byte) error {
	if w.done {
		return errFinished
	}
	if _, ok := w.frames[d]; ok {
		return nil
	}
	w.lease.Hold(d)
	loc, err := w.s.zstd.append(w, frame)
	if err != nil {
		return err
	}
	w.frames[d] = loc.marshal()
	return nil
}

// PutFramedChunk stores a chunk that arrived from a peer as a zstd frame,
// as that frame alone: the node keeps what it received, a third of the raw
// bytes on disk, and does not write the chunk a second time, raw. Reads
// decode it. The caller has decoded the frame to size bytes and checked
// them against d.
func (w *Writer) PutFramedChunk(d Digest, size int, frame []byte) error {
	if w.done {
		return errFinished
	}
	if size <= 0 || size > MaxChunkSize || len(frame) == 0 || len(frame) > maxStoredFrame {
		return fmt.Errorf("castore: chunk of %d bytes in a frame of %d", size, len(frame))
	}
	if _, ok := w.chunks[d]; ok {
		return nil
	}
	w.lease.Hold(d)
	loc, err := w.s.zstd.append(w, frame)
	if err != nil {
		return err
	}
	w.chunks[d] = chunkLoc{Pack: loc.Pack, Offset: loc.Offset, Size: uint32(size), Frame: loc.Size}
	w.frames[d] = loc.marshal()
	w.stats.NewChunks++
	w.stats.NewBytes += int64(size)
	return nil
}

// putIncompressible records that a chunk's frame is not worth keeping.
func (w *Writer) putIncompressible(d Digest) { w.frames[d] = nil }

// PutDirectory validates and stores a directory and returns its digest.
func (w *Writer) PutDirectory(dir *Directory) (Digest, error) {
	if err := dir.Validate(); err != nil {
		return Digest{}, err
	}
	b := dir.Marshal()
	d := Sum(b)
	if _, ok := w.dirs[d]; !ok && !w.stored(bucketDirs, d) {
		w.dirs[d] = b
	}
	return d, nil
}

// PutDirectoryBytes stores an encoded directory that arrived from a peer,
// after checking its digest and its encoding.
func (w *Writer) PutDirectoryBytes(d Digest, b []byte) (*Directory, error) {
	if Sum(b) != d {
		return nil, fmt.Errorf("directory %s: %w", d, ErrDigestMismatch)
	}
	dir, err := UnmarshalDirectory(b)
	if err != nil {
		return nil, err
	}
	if _, ok := w.dirs[d]; !ok && !w.stored(bucketDirs, d) {
		w.dirs[d] = append([]byte(nil), b...)
	}
	return dir, nil
}

// Commit makes everything the Writer added durable and visible: first the
// pack bytes are synced, then one bbolt transaction adds the index entries.
func (w *Writer) Commit() error { return w.s.CommitAll(w) }

// CommitAll commits several Writers at once: one sync per pack and one
// transaction for all, which costs much less than a commit each when many
// small writers finish together (a fetch's chunk batches).
func (s *Store) CommitAll(ws ...*Writer) error {
	for _, w := range ws {
		if w.done {
			return errFinished
		}
	}
	err := s.commit(ws)
	for _, w := range ws {
		w.finish(err != nil)
	}
	return err
}

// finish ends a Writer: its pack bytes are committed, or dropped.
func (w *Writer) finish(dropped bool) {
	w.done = true
	cut := w.s.raw.done(w, dropped) + w.s.zstd.done(w, dropped)
	if dropped {
		w.s.dropped.Add(max(w.appended-cut, 0))
	}
	if w.ownLease {
		w.lease.Release()
	}
}

func (s *Store) commit(ws []*Writer) error {
	packs, zpacks := map[uint32]struct{}{}, map[uint32]struct{}{}
	for _, w := range ws {
		for id := range w.packs {
			packs[id] = struct{}{}
		}
		for id := range w.zpacks {
			zpacks[id] = struct{}{}
		}
	}
	lengths, err := s.raw.syncAll(packs)
	if err != nil {
		return err
	}
	zlengths, err := s.zstd.syncAll(zpacks)
	if err != nil {
		return err
	}
	if err := checkLengths(ws, lengths, zlengths); err != nil {
		return err
	}
	// Keys go in in order: bbolt keeps a leaf's keys in a sorted slice and
	// splits leaves only at commit, so random inserts into a large
	// transaction shift ever longer slices, while ordered ones append.
	type entry struct {
		d   Digest
		v   []byte
		loc chunkLoc // of a chunk
	}
	sorted := func(add func(w *Writer, put func(Digest, []byte, chunkLoc))) []entry {
		var es []entry
		for _, w := range ws {
			add(w, func(d Digest, v []byte, loc chunkLoc) { es = append(es, entry{d, v, loc}) })
		}
		slices.SortFunc(es, func(a, b entry) int { return bytes.Compare(a.d[:], b.d[:]) })
		return es
	}
	chunkEntries := sorted(func(w *Writer, put func(Digest, []byte, chunkLoc)) {
		for d, loc := range w.chunks {
			put(d, loc.marshal(), loc)
		}
	})
	others := []struct {
		bucket  []byte
		entries []entry
	}{
		{bucketBlobs, sorted(func(w *Writer, put func(Digest, []byte, chunkLoc)) {
			for d, v := range w.blobs {
				put(d, v, chunkLoc{})
			}
		})},
		{bucketDirs, sorted(func(w *Writer, put func(Digest, []byte, chunkLoc)) {
			for d, v := range w.dirs {
				put(d, v, chunkLoc{})
			}
		})},
		{bucketFrames, sorted(func(w *Writer, put func(Digest, []byte, chunkLoc)) {
			for d, v := range w.frames {
				put(d, v, chunkLoc{})
			}
		})},
	}
	var added []entry // chunks new to the index
	err = s.db.Update(func(tx *bolt.Tx) error {
		chunks := tx.Bucket(bucketChunks)
		var newBytes uint64
		for _, e := range chunkEntries {
			if chunks.Get(e.d[:]) != nil {
				continue // committed before, by another writer
			}
			if err := chunks.Put(e.d[:], e.v); err != nil {
				return err
			}
			newBytes += uint64(e.loc.Size)
			added = append(added, e)
		}
		meta := tx.Bucket(bucketMeta)
		for _, o := range others {
			b := tx.Bucket(o.bucket)
			frames := bytes.Equal(o.bucket, bucketFrames)
			added := uint64(0)
			for _, e := range o.entries {
				if b.Get(e.d[:]) != nil {
					if frames {
						// The first frame stays, as the first copy of a
						// chunk does: a frame-only chunk's entry names it.
						continue
					}
				} else {
					added++
				}
				if err := b.Put(e.d[:], e.v); err != nil {
					return err
				}
			}
			if added > 0 {
				if err := addCounter(meta, countKey(o.bucket), added); err != nil {
					return err
				}
			}
		}
		if err := s.raw.recordLengths(tx, lengths); err != nil {
			return err
		}
		if err := s.zstd.recordLengths(tx, zlengths); err != nil {
			return err
		}
		if err := addCounter(meta, metaChunkBytes, newBytes); err != nil {
			return err
		}
		return addCounter(meta, metaChunkCount, uint64(len(added)))
	})
	if err != nil {
		return err
	}
	// New chunks are about to be read (a fetch's NAR renders as they
	// arrive): their locations go into the cache rather than each costing
	// an index lookup.
	for _, e := range added {
		s.chunkCache.Put(e.d, e.loc)
	}
	return nil
}

// checkLengths makes sure that the synced packs hold every byte the
// writers put in them: a pack cut back after a failed write may have lost
// bytes that were appended before the failure but not yet written.
func checkLengths(ws []*Writer, lengths, zlengths map[uint32]int64) error {
	check := func(loc chunkLoc, lengths map[uint32]int64) error {
		if loc.Offset+int64(loc.Size) > lengths[loc.Pack] {
			return fmt.Errorf("castore: pack %d lost bytes after a failed write", loc.Pack)
		}
		return nil
	}
	for _, w := range ws {
		for _, loc := range w.chunks {
			var err error
			if loc.Frame > 0 {
				err = check(loc.frame(), zlengths)
			} else {
				err = check(loc, lengths)
			}
			if err != nil {
				return err
			}
		}
		for _, v := range w.frames {
			if len(v) == 0 {
				continue
			}
			loc, err := unmarshalChunkLoc(v)
			if err == nil {
				err = check(loc, zlengths)
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// Abort drops what the Writer added. Its pack bytes are cut off if they
// end their pack; otherwise they stay as garbage until gc rewrites the
// pack.
func (w *Writer) Abort() {
	if !w.done {
		w.finish(true)
	}
}
