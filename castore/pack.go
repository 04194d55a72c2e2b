package castore

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	bolt "go.etcd.io/bbolt"
)

const (
	maxPackSize    = 1 << 30 // start a new pack after this many bytes
	packBufferSize = 1 << 20 // small appends reach the file in writes of this size
)

// packSet is a family of append-only pack files, dir/NNNNNNNN<suffix>:
// raw chunks in one set, zstd frames of chunks in another. Appends go to
// the newest pack; bytes count only once a commit has recorded the pack's
// length in the index (bucketPacks, under the set's key byte).
type packSet struct {
	dir    string
	suffix string
	key    byte

	mu      sync.Mutex // guards the pack being appended to
	cur     *os.File
	curBuf  *bufio.Writer
	curID   uint32
	curSize int64

	rmu     sync.RWMutex
	readers map[uint32]*os.File // shared read-only files, for ReadAt
}

func newPackSet(dir, suffix string, key byte) (*packSet, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return &packSet{dir: dir, suffix: suffix, key: key, readers: map[uint32]*os.File{}}, nil
}

func (p *packSet) path(id uint32) string {
	return filepath.Join(p.dir, fmt.Sprintf("%08d%s", id, p.suffix))
}

func (p *packSet) lengthKey(id uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{p.key}, id)
}

// trim cuts every pack to the length the index recorded at the last commit
// (a crash mid-write leaves more) and picks the id of the next pack.
func (p *packSet) trim(db *bolt.DB) error {
	committed := map[uint32]int64{}
	err := db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketPacks).Cursor()
		for k, v := c.Seek([]byte{p.key}); len(k) == 5 && k[0] == p.key; k, v = c.Next() {
			committed[binary.BigEndian.Uint32(k[1:])] = int64(binary.BigEndian.Uint64(v))
		}
		return nil
	})
	if err != nil {
		return err
	}
	entries, err := os.ReadDir(p.dir)
	if err != nil {
		return err
	}
	var maxID uint32
	for _, e := range entries {
		n, err := strconv.ParseUint(strings.TrimSuffix(e.Name(), p.suffix), 10, 32)
		if err != nil || !strings.HasSuffix(e.Name(), p.suffix) {
			continue
		}
		id := uint32(n)
		maxID = max(maxID, id)
		info, err := e.Info()
		if err != nil {
			return err
		}
		if want := committed[id]; info.Size() > want {
			if err := os.Truncate(p.path(id), want); err != nil {
				return fmt.Errorf("castore: trimming pack %s: %w", p.path(id), err)
			}
		}
	}
	p.curID = maxID + 1
	return nil
}

// append writes data to the current pack and returns where it went.
func (p *packSet) append(data []byte) (chunkLoc, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cur == nil || p.curSize+int64(len(data)) > maxPackSize {
		if p.cur != nil {
			if err := p.closeCurrent(); err != nil {
				return chunkLoc{}, err
			}
			p.curID++
		}
		f, err := os.OpenFile(p.path(p.curID), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return chunkLoc{}, err
		}
		info, err := f.Stat()
		if err != nil {
			f.Close()
			return chunkLoc{}, err
		}
		p.cur, p.curSize = f, info.Size()
		p.curBuf = bufio.NewWriterSize(f, packBufferSize)
	}
	var err error
	if len(data) >= packBufferSize/16 {
		// Large appends skip the buffer's copy; small ones share a write.
		if err = p.curBuf.Flush(); err == nil {
			_, err = p.cur.Write(data)
		}
	} else {
		_, err = p.curBuf.Write(data)
	}
	if err != nil {
		return chunkLoc{}, fmt.Errorf("castore: writing pack: %w", err)
	}
	loc := chunkLoc{Pack: p.curID, Offset: p.curSize, Size: uint32(len(data))}
	p.curSize += int64(len(data))
	return loc, nil
}

// closeCurrent flushes and closes the pack being appended to; p.mu is held.
func (p *packSet) closeCurrent() error {
	if p.cur == nil {
		return nil
	}
	err := p.curBuf.Flush()
	if cerr := p.cur.Close(); err == nil {
		err = cerr
	}
	p.cur, p.curBuf = nil, nil
	return err
}

// sync makes a pack's bytes durable and returns its length.
func (p *packSet) sync(id uint32) (int64, error) {
	p.mu.Lock()
	if p.cur != nil && p.curID == id {
		if err := p.curBuf.Flush(); err != nil {
			p.mu.Unlock()
			return 0, err
		}
	}
	p.mu.Unlock()
	f, err := os.OpenFile(p.path(id), os.O_RDONLY, 0)
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

// recordLengths stores the synced lengths of packs, never shrinking one.
func (p *packSet) recordLengths(tx *bolt.Tx, lengths map[uint32]int64) error {
	packs := tx.Bucket(bucketPacks)
	for id, n := range lengths {
		k := p.lengthKey(id)
		if old := packs.Get(k); len(old) == 8 && int64(binary.BigEndian.Uint64(old)) >= n {
			continue
		}
		if err := packs.Put(k, binary.BigEndian.AppendUint64(nil, uint64(n))); err != nil {
			return err
		}
	}
	return nil
}

// syncAll syncs the packs in ids and returns their lengths.
func (p *packSet) syncAll(ids map[uint32]struct{}) (map[uint32]int64, error) {
	lengths := map[uint32]int64{}
	for id := range ids {
		n, err := p.sync(id)
		if err != nil {
			return nil, fmt.Errorf("castore: syncing %s: %w", p.path(id), err)
		}
		lengths[id] = n
	}
	return lengths, nil
}

// reader returns a shared read-only file for ReadAt.
func (p *packSet) reader(id uint32) (*os.File, error) {
	p.rmu.RLock()
	f := p.readers[id]
	p.rmu.RUnlock()
	if f != nil {
		return f, nil
	}
	p.rmu.Lock()
	defer p.rmu.Unlock()
	if f = p.readers[id]; f != nil {
		return f, nil
	}
	f, err := os.Open(p.path(id))
	if err != nil {
		return nil, err
	}
	p.readers[id] = f
	return f, nil
}

func (p *packSet) close() error {
	p.mu.Lock()
	err := p.closeCurrent()
	p.mu.Unlock()
	p.rmu.Lock()
	for id, f := range p.readers {
		f.Close()
		delete(p.readers, id)
	}
	p.rmu.Unlock()
	return err
}

// chunkLoc is where an object's bytes are: a range of one pack file. In
// the chunk index, a chunk with Frame > 0 is stored only as its zstd frame
// (as it came from a peer): Pack and Offset are then in the zstd packs,
// Frame is the frame's length and Size still the chunk's.
type chunkLoc struct {
	Pack   uint32
	Offset int64
	Size   uint32
	Frame  uint32
}

// frame is the range of a frame-only chunk's frame.
func (l chunkLoc) frame() chunkLoc { return chunkLoc{Pack: l.Pack, Offset: l.Offset, Size: l.Frame} }

func (l chunkLoc) marshal() []byte {
	b := binary.AppendUvarint(nil, uint64(l.Pack))
	b = binary.AppendUvarint(b, uint64(l.Offset))
	b = binary.AppendUvarint(b, uint64(l.Size))
	if l.Frame > 0 {
		b = binary.AppendUvarint(b, uint64(l.Frame))
	}
	return b
}

func unmarshalChunkLoc(b []byte) (chunkLoc, error) {
	var v [4]uint64
	for i := range v {
		if i == 3 && len(b) == 0 {
			break // no frame: raw bytes
		}
		x, n := binary.Uvarint(b)
		if n <= 0 || x > math.MaxUint32 && i != 1 {
			return chunkLoc{}, errors.New("castore: corrupt location")
		}
		v[i], b = x, b[n:]
	}
	if len(b) > 0 {
		return chunkLoc{}, errors.New("castore: corrupt location")
	}
	return chunkLoc{Pack: uint32(v[0]), Offset: int64(v[1]), Size: uint32(v[2]), Frame: uint32(v[3])}, nil
}
