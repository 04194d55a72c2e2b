package castore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
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
//
// A write that fails (a full disk) must not leave a pack whose bytes and
// offsets disagree: the pack is cut back to the bytes written before the
// failure and sealed (appends go to a new pack from then on), so no later
// chunk lands at an offset another writer was already given. A writer
// whose bytes were lost that way fails its commit, since the sealed pack
// is shorter than its chunks' ends.
type packSet struct {
	dir    string
	suffix string
	key    byte

	mu      sync.Mutex // guards everything below
	cur     *os.File   // the pack being appended to, or nil
	curID   uint32
	written int64  // bytes of cur on disk
	buf     []byte // appended bytes not written to cur yet
	// The bytes from tailStart to the end of pack tailPack were all
	// appended by tailOwner: if it aborts, they can be cut off at once.
	tailOwner *Writer
	tailPack  uint32
	tailStart int64
	// pending counts, per pack, the writers with uncommitted bytes in it:
	// gc rewrites only packs nobody is still writing to.
	pending map[uint32]int

	rmu     sync.RWMutex
	readers map[uint32]*os.File // shared read-only files, for ReadAt
}

func newPackSet(dir, suffix string, key byte) (*packSet, error) {
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return nil, err
	}
	return &packSet{dir: dir, suffix: suffix, key: key, readers: map[uint32]*os.File{}, pending: map[uint32]int{}}, nil
}

func (p *packSet) path(id uint32) string {
	return filepath.Join(p.dir, fmt.Sprintf("%08d%s", id, p.suffix))
}

func (p *packSet) lengthKey(id uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{p.key}, id)
}

// committedLengths reads the packs' lengths recorded at commits.
func (p *packSet) committedLengths(tx *bolt.Tx) map[uint32]int64 {
	committed := map[uint32]int64{}
	c := tx.Bucket(bucketPacks).Cursor()
	for k, v := c.Seek([]byte{p.key}); len(k) == 5 && k[0] == p.key; k, v = c.Next() {
		committed[binary.BigEndian.Uint32(k[1:])] = int64(binary.BigEndian.Uint64(v))
	}
	return committed
}

// trim cuts every pack to the length the index recorded at the last commit
// (a crash mid-write leaves more), removes packs that hold nothing the
// index names (left empty by a crash, or emptied by gc), and picks the id
// of the next pack.
func (p *packSet) trim(db *bolt.DB) error {
	var committed map[uint32]int64
	if err := db.View(func(tx *bolt.Tx) error { committed = p.committedLengths(tx); return nil }); err != nil {
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
		want, ok := committed[id]
		if !ok || want == 0 {
			if err := os.Remove(p.path(id)); err != nil {
				return fmt.Errorf("castore: removing unused pack %s: %w", p.path(id), err)
			}
			continue
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		if info.Size() > want {
			if err := os.Truncate(p.path(id), want); err != nil {
				return fmt.Errorf("castore: trimming pack %s: %w", p.path(id), err)
			}
		}
	}
	for id := range committed {
		maxID = max(maxID, id)
	}
	p.curID = maxID + 1
	return nil
}

// append writes data, for the Writer w, to the current pack and returns
// where it went.
func (p *packSet) append(w *Writer, data []byte) (chunkLoc, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cur != nil && p.written+int64(len(p.buf))+int64(len(data)) > maxPackSize {
		if err := p.seal(); err != nil {
			return chunkLoc{}, err
		}
	}
	if p.cur == nil {
		f, err := os.OpenFile(p.path(p.curID), os.O_WRONLY|os.O_CREATE|os.O_APPEND, fileMode)
		if err != nil {
			return chunkLoc{}, fmt.Errorf("castore: %w", err)
		}
		info, err := f.Stat()
		if err != nil {
			f.Close()
			return chunkLoc{}, err
		}
		p.cur, p.written = f, info.Size()
	}
	loc := chunkLoc{Pack: p.curID, Offset: p.written + int64(len(p.buf)), Size: uint32(len(data))}
	var err error
	if len(data) >= packBufferSize/16 {
		// Large appends skip the buffer's copy; small ones share a write.
		if err = p.flush(); err == nil {
			err = p.write(data)
		}
	} else {
		if len(p.buf)+len(data) > packBufferSize {
			err = p.flush()
		}
		if err == nil {
			if p.buf == nil {
				p.buf = make([]byte, 0, packBufferSize)
			}
			p.buf = append(p.buf, data...)
		}
	}
	if err != nil {
		return chunkLoc{}, p.failed(err)
	}
	if p.tailOwner != w || p.tailPack != loc.Pack {
		p.tailOwner, p.tailPack, p.tailStart = w, loc.Pack, loc.Offset
	}
	w.appended += int64(len(data))
	if _, ok := w.pendingPacks(p)[loc.Pack]; !ok {
		w.pendingPacks(p)[loc.Pack] = struct{}{}
		p.pending[loc.Pack]++
	}
	return loc, nil
}

// write writes b to the end of the current pack; p.mu is held.
func (p *packSet) write(b []byte) error {
	n, err := p.cur.Write(b)
	if err == nil && n < len(b) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return err
	}
	p.written += int64(n)
	return nil
}

// flush writes the buffered appends; p.mu is held.
func (p *packSet) flush() error {
	if p.cur == nil || len(p.buf) == 0 {
		return nil
	}
	if err := p.write(p.buf); err != nil {
		return err
	}
	p.buf = p.buf[:0]
	return nil
}

// failed handles a failed write: the pack is cut back to what was written
// before, what was buffered is dropped, and the pack is sealed so that its
// offsets are never handed out again. p.mu is held.
func (p *packSet) failed(err error) error {
	err = fmt.Errorf("castore: writing %s: %w", p.path(p.curID), err)
	if terr := p.cur.Truncate(p.written); terr != nil {
		err = fmt.Errorf("%w (and cutting it back: %v)", err, terr)
	}
	p.cur.Close()
	p.cur, p.buf = nil, nil
	p.curID++
	return err
}

// seal closes the current pack; the next append starts a new one. p.mu is
// held.
func (p *packSet) seal() error {
	if p.cur == nil {
		return nil
	}
	if err := p.flush(); err != nil {
		return p.failed(err)
	}
	err := p.cur.Close()
	p.cur, p.buf = nil, nil
	p.curID++
	return err
}

// closeCurrent flushes and closes the pack being appended to; p.mu is held.
func (p *packSet) closeCurrent() error {
	if p.cur == nil {
		return nil
	}
	err := p.flush()
	if cerr := p.cur.Close(); err == nil {
		err = cerr
	}
	p.cur, p.buf = nil, nil
	return err
}

// done tells the set that w has committed or dropped its bytes in the
// packs it wrote to. Dropped bytes at the end of a pack are cut off at
// once; others stay as garbage until gc rewrites their pack. It returns
// the number of bytes cut off.
func (p *packSet) done(w *Writer, dropped bool) (cut int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id := range w.pendingPacks(p) {
		if p.pending[id]--; p.pending[id] <= 0 {
			delete(p.pending, id)
		}
	}
	clear(w.pendingPacks(p))
	if !dropped || p.tailOwner != w {
		return 0
	}
	p.tailOwner = nil
	if p.cur != nil && p.tailPack == p.curID {
		cut = p.written + int64(len(p.buf)) - p.tailStart
		if p.tailStart >= p.written {
			p.buf = p.buf[:p.tailStart-p.written]
			return cut
		}
		p.buf = p.buf[:0]
		if err := p.cur.Truncate(p.tailStart); err == nil {
			p.written = p.tailStart
			return cut
		}
		// The pack could not be cut: seal it, so that nothing is ever
		// written after bytes no index entry will name.
		p.cur.Close()
		p.cur = nil
		p.curID++
		return 0
	}
	if p.tailPack < p.curID {
		// A sealed pack (full, or after a failed write): nothing
		// follows the writer's bytes.
		if info, err := os.Stat(p.path(p.tailPack)); err == nil && info.Size() > p.tailStart {
			if os.Truncate(p.path(p.tailPack), p.tailStart) == nil {
				return info.Size() - p.tailStart
			}
		}
	}
	return 0
}

// sync makes a pack's bytes durable and returns its length.
func (p *packSet) sync(id uint32) (int64, error) {
	p.mu.Lock()
	if p.cur != nil && p.curID == id {
		if err := p.flush(); err != nil {
			err = p.failed(err)
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
