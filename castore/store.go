package castore

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// On-disk layout of a Store at dir:
//
//	dir/index.db           bbolt: chunk, blob and directory indexes, pack lengths
//	dir/packs/NNNNNNNN.pack append-only chunk data, raw bytes back to back
//
// Chunks are kept raw, not compressed: a NAR is then mostly a splice of pack
// file ranges that go to a socket with sendfile, the way nginx serves a
// static cache, and ingest does not pay for compression.
const (
	indexFile   = "index.db"
	packsDir    = "packs"
	packSuffix  = ".pack"
	maxPackSize = 1 << 30 // start a new pack after this many bytes

	packBufferSize = 1 << 20 // appends reach the file in writes of this size
)

var (
	bucketChunks = []byte("chunks") // chunk digest -> location
	bucketBlobs  = []byte("blobs")  // blob digest -> chunk list, only for blobs of 2+ chunks
	bucketDirs   = []byte("dirs")   // directory digest -> canonical encoding
	bucketPacks  = []byte("packs")  // pack id -> committed length
	bucketMeta   = []byte("meta")   // counters
)

var (
	metaChunkBytes = []byte("chunk_bytes")
	metaChunkCount = []byte("chunk_count")
)

// Store is the embedded content-addressed store: chunks in pack files, the
// indexes in bbolt. Objects become visible only when a Writer commits, and
// a commit makes them durable first (pack fsync, then the bbolt commit),
// so the index never points at bytes that a crash could lose.
type Store struct {
	dir string
	db  *bolt.DB

	mu      sync.Mutex // guards the pack being appended to
	cur     *os.File
	curBuf  *bufio.Writer // batches small chunks into large writes
	curID   uint32
	curSize int64

	rmu     sync.RWMutex
	readers map[uint32]*os.File // shared read-only pack files, for ReadAt
}

// Open opens or creates the store in dir. Pack bytes past the length that
// the index recorded at the last commit (left by a crash mid-write) are cut
// off, so new appends never follow garbage.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(filepath.Join(dir, packsDir), 0o755); err != nil {
		return nil, err
	}
	db, err := bolt.Open(filepath.Join(dir, indexFile), 0o644, &bolt.Options{
		NoFreelistSync: true,
		// Map a large range up front: growing the map re-copies every
		// dirty node of a large commit. It costs address space, not memory.
		InitialMmapSize: 1 << 30,
	})
	if err != nil {
		return nil, fmt.Errorf("castore: opening index: %w", err)
	}
	s := &Store{dir: dir, db: db, readers: map[uint32]*os.File{}}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketChunks, bucketBlobs, bucketDirs, bucketPacks, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		err = s.trimPacks()
	}
	if err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// Close closes the pack files and the index.
func (s *Store) Close() error {
	s.mu.Lock()
	s.closePack()
	s.mu.Unlock()
	s.rmu.Lock()
	for id, f := range s.readers {
		f.Close()
		delete(s.readers, id)
	}
	s.rmu.Unlock()
	return s.db.Close()
}

func (s *Store) packPath(id uint32) string {
	return filepath.Join(s.dir, packsDir, fmt.Sprintf("%08d%s", id, packSuffix))
}

// trimPacks cuts every pack to its committed length and picks the pack to
// append to.
func (s *Store) trimPacks() error {
	entries, err := os.ReadDir(filepath.Join(s.dir, packsDir))
	if err != nil {
		return err
	}
	committed := map[uint32]int64{}
	err = s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPacks).ForEach(func(k, v []byte) error {
			committed[binary.BigEndian.Uint32(k)] = int64(binary.BigEndian.Uint64(v))
			return nil
		})
	})
	if err != nil {
		return err
	}
	var maxID uint32
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, packSuffix) {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSuffix(name, packSuffix), 10, 32)
		if err != nil {
			continue
		}
		id := uint32(n)
		maxID = max(maxID, id)
		info, err := e.Info()
		if err != nil {
			return err
		}
		if want := committed[id]; info.Size() > want {
			if err := os.Truncate(s.packPath(id), want); err != nil {
				return fmt.Errorf("castore: trimming pack %d: %w", id, err)
			}
		}
	}
	s.curID = maxID + 1
	return nil
}

// appendChunk writes data to the current pack and returns where it went.
func (s *Store) appendChunk(data []byte) (chunkLoc, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil || s.curSize+int64(len(data)) > maxPackSize {
		if s.cur != nil {
			if err := s.closePack(); err != nil {
				return chunkLoc{}, err
			}
			s.curID++
		}
		f, err := os.OpenFile(s.packPath(s.curID), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return chunkLoc{}, err
		}
		info, err := f.Stat()
		if err != nil {
			f.Close()
			return chunkLoc{}, err
		}
		s.cur, s.curSize = f, info.Size()
		s.curBuf = bufio.NewWriterSize(f, packBufferSize)
	}
	var err error
	if len(data) >= packBufferSize/16 {
		// Large chunks skip the buffer's copy; small ones share a write.
		if err = s.curBuf.Flush(); err == nil {
			_, err = s.cur.Write(data)
		}
	} else {
		_, err = s.curBuf.Write(data)
	}
	if err != nil {
		return chunkLoc{}, fmt.Errorf("castore: writing pack: %w", err)
	}
	loc := chunkLoc{Pack: s.curID, Offset: s.curSize, Size: uint32(len(data))}
	s.curSize += int64(len(data))
	return loc, nil
}

// closePack flushes and closes the pack being appended to. Callers hold mu.
func (s *Store) closePack() error {
	if s.cur == nil {
		return nil
	}
	err := s.curBuf.Flush()
	if cerr := s.cur.Close(); err == nil {
		err = cerr
	}
	s.cur, s.curBuf = nil, nil
	return err
}

// syncPack makes a pack's bytes durable and returns its length.
func (s *Store) syncPack(id uint32) (int64, error) {
	s.mu.Lock()
	if s.cur != nil && s.curID == id {
		if err := s.curBuf.Flush(); err != nil {
			s.mu.Unlock()
			return 0, err
		}
	}
	s.mu.Unlock()
	f, err := os.OpenFile(s.packPath(id), os.O_RDONLY, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return 0, err
	}
	info, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return info.Size(), nil
}

// chunkLoc is where a chunk's bytes are: a range of one pack file.
type chunkLoc struct {
	Pack   uint32
	Offset int64
	Size   uint32
}

func (l chunkLoc) marshal() []byte {
	b := binary.AppendUvarint(nil, uint64(l.Pack))
	b = binary.AppendUvarint(b, uint64(l.Offset))
	return binary.AppendUvarint(b, uint64(l.Size))
}

func unmarshalChunkLoc(b []byte) (chunkLoc, error) {
	var v [3]uint64
	for i := range v {
		x, n := binary.Uvarint(b)
		if n <= 0 {
			return chunkLoc{}, errors.New("castore: corrupt chunk location")
		}
		v[i], b = x, b[n:]
	}
	return chunkLoc{Pack: uint32(v[0]), Offset: int64(v[1]), Size: uint32(v[2])}, nil
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

func (s *Store) has(bucket []byte, key Digest) bool {
	var ok bool
	_ = s.db.View(func(tx *bolt.Tx) error {
		ok = tx.Bucket(bucket).Get(key[:]) != nil
		return nil
	})
	return ok
}

// HasChunk reports whether the chunk is stored.
func (s *Store) HasChunk(d Digest) bool { return s.has(bucketChunks, d) }

// HasDirectory reports whether the directory is stored.
func (s *Store) HasDirectory(d Digest) bool { return s.has(bucketDirs, d) }

func (s *Store) chunkLoc(d Digest) (chunkLoc, error) {
	v, err := s.get(bucketChunks, d)
	if err != nil {
		return chunkLoc{}, err
	}
	return unmarshalChunkLoc(v)
}

// Directory returns a stored directory.
func (s *Store) Directory(d Digest) (*Directory, error) {
	v, err := s.get(bucketDirs, d)
	if err != nil {
		return nil, fmt.Errorf("directory %s: %w", d, err)
	}
	return UnmarshalDirectory(v)
}

// BlobChunks returns the chunks that make up a blob of the given size, in
// order. A blob of one chunk has no record of its own: its only chunk is
// addressed by the blob digest.
func (s *Store) BlobChunks(d Digest, size uint64) ([]ChunkRef, error) {
	if size == 0 {
		return nil, nil
	}
	v, err := s.get(bucketBlobs, d)
	if errors.Is(err, ErrNotFound) && size <= MaxChunkSize {
		if s.HasChunk(d) {
			return []ChunkRef{{Digest: d, Size: uint32(size)}}, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", d, err)
	}
	refs, err := unmarshalChunkRefs(v)
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
	return refs, nil
}

// HasBlob reports whether every chunk of the blob is stored.
func (s *Store) HasBlob(d Digest, size uint64) bool {
	refs, err := s.BlobChunks(d, size)
	if err != nil {
		return false
	}
	for _, r := range refs {
		if !s.HasChunk(r.Digest) {
			return false
		}
	}
	return true
}

func (s *Store) readerFor(id uint32) (*os.File, error) {
	s.rmu.RLock()
	f := s.readers[id]
	s.rmu.RUnlock()
	if f != nil {
		return f, nil
	}
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if f = s.readers[id]; f != nil {
		return f, nil
	}
	f, err := os.Open(s.packPath(id))
	if err != nil {
		return nil, err
	}
	s.readers[id] = f
	return f, nil
}

// ReadChunk appends the chunk's bytes to buf after checking them against
// the digest, so that corruption on disk is never passed on.
func (s *Store) ReadChunk(d Digest, buf []byte) ([]byte, error) {
	loc, err := s.chunkLoc(d)
	if err != nil {
		return buf, fmt.Errorf("chunk %s: %w", d, err)
	}
	f, err := s.readerFor(loc.Pack)
	if err != nil {
		return buf, err
	}
	n := len(buf)
	buf = append(buf, make([]byte, loc.Size)...)
	if _, err := f.ReadAt(buf[n:], loc.Offset); err != nil {
		return buf[:n], fmt.Errorf("castore: reading chunk %s: %w", d, err)
	}
	if Sum(buf[n:]) != d {
		return buf[:n], fmt.Errorf("chunk %s: %w", d, ErrDigestMismatch)
	}
	return buf, nil
}

// Stats are the store's totals.
type Stats struct {
	Chunks      uint64 // distinct chunks stored
	ChunkBytes  uint64 // their bytes: what the store holds after dedup
	Blobs       uint64 // blobs of more than one chunk
	Directories uint64
	Packs       int
}

// Stats returns the store's totals.
func (s *Store) Stats() (Stats, error) {
	var st Stats
	err := s.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		st.ChunkBytes = getCounter(meta, metaChunkBytes)
		st.Chunks = getCounter(meta, metaChunkCount)
		st.Blobs = uint64(tx.Bucket(bucketBlobs).Stats().KeyN)
		st.Directories = uint64(tx.Bucket(bucketDirs).Stats().KeyN)
		st.Packs = tx.Bucket(bucketPacks).Stats().KeyN
		return nil
	})
	return st, err
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

// packIDs lists the packs that hold committed data, in order.
func (s *Store) packIDs() ([]uint32, error) {
	var ids []uint32
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPacks).ForEach(func(k, _ []byte) error {
			ids = append(ids, binary.BigEndian.Uint32(k))
			return nil
		})
	})
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids, err
}

var _ = io.EOF
