package castore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/p2pstore/p2pstore/internal/cache"
	bolt "go.etcd.io/bbolt"
)

// On-disk layout of a Store at dir (see the package doc).
const (
	indexFile  = "index.db"
	packsDir   = "packs"
	packSuffix = ".pack"
	zstdDir    = "zstd"
	zstdSuffix = ".zpack"

	rawPackKey  = 'r' // key prefix of raw pack lengths in bucketPacks
	zstdPackKey = 'z' // and of zstd frame pack lengths

	// The store holds private paths' contents: only the node's user may
	// read it.
	dirMode  = 0o700
	fileMode = 0o600
)

var (
	bucketChunks = []byte("chunks") // chunk digest -> location
	bucketBlobs  = []byte("blobs")  // blob digest -> chunk list, only for blobs of 2+ chunks
	bucketDirs   = []byte("dirs")   // directory digest -> canonical encoding
	bucketPacks  = []byte("packs")  // set key + pack id -> committed length
	bucketFrames = []byte("frames") // chunk digest -> zstd frame location, empty if incompressible
	bucketMeta   = []byte("meta")   // counters
)

var (
	metaChunkBytes = []byte("chunk_bytes")
	metaChunkCount = []byte("chunk_count")
	// Entries of the blob, directory and frame buckets, kept by commits
	// and collections so that Stats reads counters, never walks buckets.
	metaBlobCount  = []byte("blob_count")
	metaDirCount   = []byte("dir_count")
	metaFrameCount = []byte("frame_count")
)

// Store is the embedded content-addressed store: chunks in pack files, the
// indexes in bbolt. Objects become visible only when a Writer commits, and
// a commit makes them durable first (pack fsync, then the bbolt commit),
// so the index never points at bytes that a crash could lose.
type Store struct {
	dir  string
	db   *bolt.DB
	raw  *packSet // chunk bytes
	zstd *packSet // zstd frames of chunks, made in the background

	dirCache   *cache.Map[Digest, *Directory]
	blobCache  *cache.Map[Digest, []ChunkRef]
	chunkCache *cache.Map[Digest, chunkLoc]

	leaseState
	collectMu sync.Mutex   // one collection at a time
	dropped   atomic.Int64 // pack bytes of aborted writers left as garbage
	retired   retiredPacks // packs gc has emptied, removed after a grace time
}

// Open opens or creates the store in dir. Pack bytes past the length that
// the index recorded at the last commit (left by a crash mid-write) are cut
// off, so new appends never follow garbage.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(filepath.Join(dir, packsDir), dirMode); err != nil {
		return nil, err
	}
	db, err := bolt.Open(filepath.Join(dir, indexFile), fileMode, &bolt.Options{
		NoFreelistSync: true,
		// Map a large range up front: growing the map re-copies every
		// dirty node of a large commit. It costs address space, not memory.
		InitialMmapSize: 1 << 30,
	})
	if err != nil {
		return nil, fmt.Errorf("castore: opening index: %w", err)
	}
	s := &Store{dir: dir, db: db,
		dirCache: cache.New[Digest, *Directory](cacheDirs), blobCache: cache.New[Digest, []ChunkRef](cacheBlobs), chunkCache: cache.New[Digest, chunkLoc](cacheChunks)}
	s.leases = map[*Lease]struct{}{}
	if s.raw, err = newPackSet(filepath.Join(dir, packsDir), packSuffix, rawPackKey); err == nil {
		s.zstd, err = newPackSet(filepath.Join(dir, zstdDir), zstdSuffix, zstdPackKey)
	}
	if err != nil {
		db.Close()
		return nil, err
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketChunks, bucketBlobs, bucketDirs, bucketPacks, bucketMeta, bucketFrames, bucketShared} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return countOnce(tx)
	})
	if err == nil {
		err = s.raw.trim(db)
	}
	if err == nil {
		err = s.zstd.trim(db)
	}
	if err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// countOnce counts the entries of the buckets whose counts an older store
// did not keep (objectCounts).
func countOnce(tx *bolt.Tx) error {
	meta := tx.Bucket(bucketMeta)
	for _, c := range objectCounts {
		if meta.Get(c.key) == nil {
			n := tx.Bucket(c.bucket).Stats().KeyN
			if err := meta.Put(c.key, binary.BigEndian.AppendUint64(nil, uint64(n))); err != nil {
				return err
			}
		}
	}
	return nil
}

// objectCounts are the buckets whose entries the meta bucket counts.
var objectCounts = []struct{ bucket, key []byte }{
	{bucketBlobs, metaBlobCount}, {bucketDirs, metaDirCount}, {bucketFrames, metaFrameCount},
}

// countKey is the counter of a bucket's entries, nil for a bucket not
// counted.
func countKey(bucket []byte) []byte {
	for _, c := range objectCounts {
		if bytes.Equal(c.bucket, bucket) {
			return c.key
		}
	}
	return nil
}

// Close closes the pack files and the index.
func (s *Store) Close() error {
	s.retired.removeAll()
	s.raw.close()
	s.zstd.close()
	return s.db.Close()
}

// ChunkRef names one chunk of a blob and its length.
type ChunkRef struct {
	Digest Digest
	Size   uint32
}

func marshalChunkRefs(refs []ChunkRef) []byte {
	b := make([]byte, 0, len(refs)*(DigestSize+3))
	for _, r := range refs {
		b = append(b, r.Digest[:]...)
		b = binary.AppendUvarint(b, uint64(r.Size))
	}
	return b
}

func unmarshalChunkRefs(b []byte) ([]ChunkRef, error) {
	var refs []ChunkRef
	for len(b) > 0 {
		if len(b) < DigestSize+1 {
			return nil, errors.New("castore: corrupt chunk list")
		}
		var r ChunkRef
		copy(r.Digest[:], b)
		size, n := binary.Uvarint(b[DigestSize:])
		if n <= 0 || size == 0 || size > MaxChunkSize {
			return nil, errors.New("castore: corrupt chunk list")
		}
		r.Size = uint32(size)
		refs = append(refs, r)
		b = b[DigestSize+n:]
	}
	return refs, nil
}

func (s *Store) get(bucket []byte, key Digest) (v []byte, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucket).Get(key[:]); b != nil {
			v = append([]byte(nil), b...)
			return nil
		}
		return ErrNotFound
	})
	return v, err
}

// View answers many lookups from one read transaction of the index: a
// caller that asks about thousands of objects at once (the fetcher
// planning a download) pays for one transaction, not one per lookup. A
// View is valid only inside the function given to Store.View; keep that
// function short, since a long read transaction holds up index growth.
type View struct {
	s  *Store
	tx *bolt.Tx
	// The buckets, opened once per View: a read-only bbolt transaction
	// does not keep the buckets it opens, and each opening is a search
	// of the root and an allocation (a seed looks up two per chunk).
	chunks, frames, blobs, shared *bolt.Bucket
}

// bucket returns the bucket name, opened once and kept in *b.
func (v *View) bucket(name []byte, b **bolt.Bucket) *bolt.Bucket {
	if *b == nil {
		*b = v.tx.Bucket(name)
	}
	return *b
}

// View calls fn with a View of the index as it is now.
func (s *Store) View(fn func(v *View) error) error {
	return s.db.View(func(tx *bolt.Tx) error { return fn(&View{s: s, tx: tx}) })
}

// HasChunk reports whether the chunk is stored. It asks the index, not
// the location cache, which may still name a chunk gc has just removed.
func (v *View) HasChunk(d Digest) bool {
	return v.bucket(bucketChunks, &v.chunks).Get(d[:]) != nil
}

func (v *View) chunkLoc(d Digest) (chunkLoc, error) {
	if loc, ok := v.s.chunkCache.Get(d); ok {
		return loc, nil
	}
	b := v.bucket(bucketChunks, &v.chunks).Get(d[:])
	if b == nil {
		return chunkLoc{}, ErrNotFound
	}
	loc, err := unmarshalChunkLoc(b)
	if err == nil {
		v.s.chunkCache.Put(d, loc)
	}
	return loc, err
}

// BlobChunks returns the chunks that make up a blob of the given size, in
// order. A blob of one chunk is that chunk, under the blob's digest.
func (v *View) BlobChunks(d Digest, size uint64) ([]ChunkRef, error) {
	if refs, ok := v.s.cachedBlobChunks(d, size); ok {
		return refs, nil
	}
	if size <= MaxChunkSize {
		if loc, err := v.chunkLoc(d); err == nil && uint64(loc.Size) == size {
			return []ChunkRef{{Digest: d, Size: uint32(size)}}, nil
		}
	}
	b := v.bucket(bucketBlobs, &v.blobs).Get(d[:])
	if b == nil {
		return nil, &missing{what: "blob", d: d}
	}
	refs, err := unmarshalChunkRefs(b)
	if err != nil {
		return nil, err
	}
	var total uint64
	for _, r := range refs {
		total += uint64(r.Size)
	}
	if total != size {
		return nil, fmt.Errorf("castore: blob %s has %d bytes of chunks, want %d", d, total, size)
	}
	v.s.blobCache.Put(d, refs)
	return refs, nil
}

// cachedBlobChunks answers BlobChunks from the caches alone, if it can: on
// the hot path of serving a NAR, that is without a transaction. A chunk
// named by the blob's digest, of the blob's size, is the whole blob.
func (s *Store) cachedBlobChunks(d Digest, size uint64) ([]ChunkRef, bool) {
	if size == 0 {
		return nil, true
	}
	if size <= MaxChunkSize {
		if loc, ok := s.chunkCache.Get(d); ok && uint64(loc.Size) == size {
			return []ChunkRef{{Digest: d, Size: uint32(size)}}, true
		}
	}
	refs, ok := s.blobCache.Get(d)
	return refs, ok
}

// HasBlob reports whether every chunk of the blob is stored.
func (v *View) HasBlob(d Digest, size uint64) bool {
	refs, err := v.BlobChunks(d, size)
	if err != nil {
		return false
	}
	for _, r := range refs {
		if !v.HasChunk(r.Digest) {
			return false
		}
	}
	return true
}

// view runs one lookup in a View of its own.
func view[T any](s *Store, lookup func(v *View) T) T {
	var out T
	_ = s.View(func(v *View) error { out = lookup(v); return nil })
	return out
}

// HasChunk reports whether the chunk is stored.
func (s *Store) HasChunk(d Digest) bool {
	return view(s, func(v *View) bool { return v.HasChunk(d) })
}

// HasDirectory reports whether the directory is stored.
func (s *Store) HasDirectory(d Digest) bool { return s.has(bucketDirs, d) }

func (s *Store) has(bucket []byte, key Digest) bool {
	var ok bool
	_ = s.db.View(func(tx *bolt.Tx) error {
		ok = tx.Bucket(bucket).Get(key[:]) != nil
		return nil
	})
	return ok
}

func (s *Store) chunkLoc(d Digest) (chunkLoc, error) {
	if loc, ok := s.chunkCache.Get(d); ok {
		return loc, nil
	}
	type result struct {
		loc chunkLoc
		err error
	}
	r := view(s, func(v *View) result { loc, err := v.chunkLoc(d); return result{loc, err} })
	return r.loc, r.err
}

// Directory returns a stored directory. Callers must not modify it: it may
// be shared through the cache.
func (s *Store) Directory(d Digest) (*Directory, error) {
	if dir, ok := s.dirCache.Get(d); ok {
		return dir, nil
	}
	v, err := s.get(bucketDirs, d)
	if err != nil {
		return nil, fmt.Errorf("directory %s: %w", d, err)
	}
	dir, err := UnmarshalDirectory(v)
	if err == nil {
		s.dirCache.Put(d, dir)
	}
	return dir, err
}

// BlobChunks returns the chunks that make up a blob of the given size, in
// order. A blob of one chunk is that chunk, under the blob's digest.
func (s *Store) BlobChunks(d Digest, size uint64) ([]ChunkRef, error) {
	if refs, ok := s.cachedBlobChunks(d, size); ok {
		return refs, nil
	}
	type result struct {
		refs []ChunkRef
		err  error
	}
	r := view(s, func(v *View) result { refs, err := v.BlobChunks(d, size); return result{refs, err} })
	return r.refs, r.err
}

// HasBlob reports whether every chunk of the blob is stored.
func (s *Store) HasBlob(d Digest, size uint64) bool {
	return view(s, func(v *View) bool { return v.HasBlob(d, size) })
}

// ReadChunk appends the chunk's bytes to buf after checking them against
// the digest, so that corruption on disk is never passed on: bytes that do
// not match are a *Damage (wrapping ErrDigestMismatch).
func (s *Store) ReadChunk(d Digest, buf []byte) ([]byte, error) {
	loc, err := s.chunkLoc(d)
	if err != nil {
		return buf, fmt.Errorf("chunk %s: %w", d, err)
	}
	return s.readCheckedChunk(d, loc, buf)
}

// readCheckedChunk is ReadChunk for a chunk whose location is known.
func (s *Store) readCheckedChunk(d Digest, loc chunkLoc, buf []byte) ([]byte, error) {
	n := len(buf)
	buf, err := s.readChunkAt(loc, buf, nil)
	if err != nil {
		return buf, fmt.Errorf("chunk %s: %w", d, err)
	}
	if Sum(buf[n:]) != d {
		return buf[:n], &Damage{Kind: KindChunk, Digest: d, Err: ErrDigestMismatch}
	}
	return buf, nil
}

// readChunkAt appends the bytes of the chunk at loc to buf, unchecked:
// read from the raw packs, or decoded from its frame. A non-nil scratch
// holds the frame, reused from call to call.
func (s *Store) readChunkAt(loc chunkLoc, buf []byte, scratch *[]byte) ([]byte, error) {
	n := len(buf)
	if loc.Frame == 0 {
		f, err := s.raw.reader(loc.Pack)
		if err != nil {
			return buf, err
		}
		buf = slices.Grow(buf, int(loc.Size))[:n+int(loc.Size)]
		if _, err := f.ReadAt(buf[n:], loc.Offset); err != nil {
			return buf[:n], fmt.Errorf("castore: reading pack %d: %w", loc.Pack, err)
		}
		return buf, nil
	}
	if scratch == nil {
		scratch = new([]byte)
	}
	frame, _, err := s.readFrame(loc.frame(), (*scratch)[:0])
	*scratch = frame
	if err != nil {
		return buf, fmt.Errorf("castore: reading zstd pack %d: %w", loc.Pack, err)
	}
	out, err := decodeFrame(frame, buf)
	if err == nil && len(out)-n != int(loc.Size) {
		err = fmt.Errorf("castore: a frame of %d bytes where the index says %d", len(out)-n, loc.Size)
	}
	if err != nil {
		return buf[:n], err
	}
	return out, nil
}

// Stats are the store's totals.
type Stats struct {
	Chunks      uint64 // distinct chunks stored
	ChunkBytes  uint64 // their bytes: what the store holds after dedup
	Blobs       uint64 // blobs of more than one chunk
	Directories uint64
	Frames      uint64 // chunks whose zstd frame is made (or found not worth making)
	Packs       int
	PackBytes   uint64 // the packs' committed lengths: chunks, frames and garbage on disk
}

// Stats returns the store's totals: counters, and the lengths of the
// packs (a few keys), so that it costs the same whatever the store holds.
func (s *Store) Stats() (Stats, error) {
	var st Stats
	err := s.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		st.ChunkBytes = getCounter(meta, metaChunkBytes)
		st.Chunks = getCounter(meta, metaChunkCount)
		st.Blobs = getCounter(meta, metaBlobCount)
		st.Directories = getCounter(meta, metaDirCount)
		st.Frames = getCounter(meta, metaFrameCount)
		return tx.Bucket(bucketPacks).ForEach(func(_, v []byte) error {
			st.Packs++
			if len(v) == 8 {
				st.PackBytes += binary.BigEndian.Uint64(v)
			}
			return nil
		})
	})
	return st, err
}

// ChunkBytes returns Stats().ChunkBytes alone: one counter read, where
// Stats walks the pages of four buckets, for callers that ask often (the
// disk limit, at every commit and reservation).
func (s *Store) ChunkBytes() (uint64, error) {
	var n uint64
	err := s.db.View(func(tx *bolt.Tx) error {
		n = getCounter(tx.Bucket(bucketMeta), metaChunkBytes)
		return nil
	})
	return n, err
}

func getCounter(b *bolt.Bucket, key []byte) uint64 {
	if v := b.Get(key); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func addCounter(b *bolt.Bucket, key []byte, delta uint64) error {
	return b.Put(key, binary.BigEndian.AppendUint64(nil, getCounter(b, key)+delta))
}

func subCounter(b *bolt.Bucket, key []byte, delta uint64) error {
	old := getCounter(b, key)
	return b.Put(key, binary.BigEndian.AppendUint64(nil, old-min(old, delta)))
}
