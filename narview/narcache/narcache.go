// Package narcache keeps the NARs of the paths clients ask for most as
// plain files, uncompressed or as .nar.zst, so that a node serves them as
// nginx serves a static binary cache: one sendfile from one file. A NAR rendered from castore
// interleaves its framing with the file contents of thousands of small
// files, which costs a write or a read per file; from a file it is one
// loop in the kernel (about 2.5 times less CPU per NAR, see BENCHMARKS.md).
//
// Decisions:
//   - A NAR is admitted on its second whole request (as nginx's
//     proxy_cache_min_uses 2): a path asked for once by one machine is not
//     worth the disk, a path two machines ask for is likely to be asked
//     again. The file is made in the background, one at a time, by the
//     caller's render; the request that admitted it is served as before.
//   - A file is named by its NarHash and compression and holds exactly
//     that NAR: it is checked (size and sha256 of the NAR, a .nar.zst
//     decompressed to do so) before it is renamed into place and synced
//     first, so a crash leaves at worst a temporary file, removed at Open.
//     A .nar.zst's bytes are one valid compression of the NAR, not the
//     only one: Nix and Guix check the NAR, never the compressed bytes.
//     Being keyed by content, an entry is never stale; it goes only when
//     the cache needs room (least recently served first), or when the
//     path's contents prove bad elsewhere (Remove).
//   - The cache is bounded by bytes (storage.nar_cache_bytes); a NAR over
//     half of it is never admitted. Each reader opens its own descriptor,
//     so removing an entry never disturbs a response in progress.
package narcache

import (
	"bufio"
	"cmp"
	"container/list"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/klauspost/compress/zstd"

	"github.com/p2pstore/p2pstore/narview/nar"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

// tmpSuffix names the files being made.
const tmpSuffix = ".tmp"

// Key names a cached NAR: its NarHash, and how the file is compressed
// (nar.CompressionNone or nar.CompressionZstd).
type Key struct {
	NarHash     storepath.NarHash
	Compression nar.Compression
}

func (k Key) name() string {
	return strings.TrimPrefix(k.NarHash.String(), "sha256:") + k.Compression.Suffix()
}

// parseName is the Key of a cache file's name.
func parseName(name string) (Key, bool) {
	for _, c := range []nar.Compression{nar.CompressionZstd, nar.CompressionNone} {
		base, ok := strings.CutSuffix(name, c.Suffix())
		if !ok || strings.Contains(base, ".") {
			continue
		}
		h, err := storepath.ParseNarHash("sha256:" + base)
		if err != nil {
			return Key{}, false
		}
		return Key{h, c}, true
	}
	return Key{}, false
}

// maxSeen bounds the NarHashes remembered as asked for once; past it the
// memory starts again (a NAR then needs two more requests).
const maxSeen = 1 << 14

// ErrMismatch is Fill's error when the render was not the NAR asked for.
var ErrMismatch = errors.New("rendered NAR does not match")

// Cache is a directory of whole, checked NARs.
type Cache struct {
	dir string
	max int64
	log *slog.Logger

	mu      sync.Mutex
	entries map[Key]*list.Element // of *entry, most recent first
	lru     *list.List
	size    int64 // bytes of the entries, and of the fill in progress
	seen    map[Key]bool
	filling bool
	stats   Stats
}

type entry struct {
	key  Key
	size int64
}

// Stats are the cache's figures.
type Stats struct {
	Entries  int
	Bytes    int64
	Max      int64
	Hits     uint64 // responses served from a file
	Fills    uint64 // files made
	Rejected uint64 // fills whose render did not match the NarHash
}

// Open opens (creating) the cache in dir, bounded to max bytes, with the
// files a previous run left.
func Open(dir string, max int64, log *slog.Logger) (*Cache, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	c := &Cache{dir: dir, max: max, log: log, entries: map[Key]*list.Element{}, lru: list.New(), seen: map[Key]bool{}}
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	type found struct {
		entry
		mod int64
	}
	var files []found
	for _, de := range des {
		name := de.Name()
		fi, err := de.Info()
		if err != nil {
			continue
		}
		key, ok := parseName(name)
		if !ok || !fi.Mode().IsRegular() {
			// A fill a crash interrupted, or nothing of ours.
			os.Remove(filepath.Join(dir, name))
			continue
		}
		files = append(files, found{entry{key, fi.Size()}, fi.ModTime().UnixNano()})
	}
	// Most recently made first, as they were served before the restart.
	slices.SortFunc(files, func(a, b found) int { return cmp.Compare(b.mod, a.mod) })
	for _, f := range files {
		c.entries[f.key] = c.lru.PushBack(&entry{f.key, f.size})
		c.size += f.size
	}
	c.mu.Lock()
	c.evictLocked(0)
	c.mu.Unlock()
	return c, nil
}

func (c *Cache) path(k Key) string { return filepath.Join(c.dir, k.name()) }

// Open returns the NAR file of k, opened for this reader alone, with its
// size, and marks it used; ok is false when the cache lacks it.
func (c *Cache) Open(k Key) (f *os.File, size int64, ok bool) {
	c.mu.Lock()
	el := c.entries[k]
	if el != nil {
		c.lru.MoveToFront(el)
		size = el.Value.(*entry).size
	}
	c.mu.Unlock()
	if el == nil {
		return nil, 0, false
	}
	f, err := os.Open(c.path(k))
	if err != nil {
		// Gone behind the cache's back: forget it.
		c.Remove(k.NarHash)
		return nil, 0, false
	}
	c.mu.Lock()
	c.stats.Hits++
	c.mu.Unlock()
	return f, size, true
}

// Size returns the size of k's file, if the cache has it, without
// marking it used.
func (c *Cache) Size(k Key) (int64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el := c.entries[k]; el != nil {
		return el.Value.(*entry).size, true
	}
	return 0, false
}

// Admit counts a whole request for k, a NAR of narSize bytes, and reports
// whether the caller should make its file now (with Fill): on its second
// request, when no other fill runs and it fits. The fill claims narSize
// bytes while it runs (a .nar.zst is smaller, or barely larger when its
// chunks would not compress).
func (c *Cache) Admit(k Key, narSize int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries[k] != nil || narSize <= 0 || narSize > c.max/2 {
		return false
	}
	if !c.seen[k] {
		if len(c.seen) >= maxSeen {
			clear(c.seen)
		}
		c.seen[k] = true
		return false
	}
	if c.filling {
		return false
	}
	delete(c.seen, k)
	c.filling = true
	// The fill's bytes are claimed now, so the cache never passes max.
	c.evictLocked(narSize)
	c.size += narSize
	return true
}

// Fill makes the file of the NAR that Admit let in: render writes it,
// compressed as k says, to its writer; the bytes are kept only when they
// are (or decompress to) narSize bytes with k's NarHash. Every Admit that
// returned true must be followed by one Fill.
func (c *Cache) Fill(ctx context.Context, k Key, narSize int64, render func(context.Context, io.Writer) error) (err error) {
	kept, size := false, int64(0)
	defer func() {
		c.mu.Lock()
		c.filling = false
		c.size -= narSize // the claim; a kept file counts its own size
		if kept {
			c.size += size
		}
		c.mu.Unlock()
	}()
	tmp, err := os.CreateTemp(c.dir, "fill-*"+tmpSuffix)
	if err != nil {
		return err
	}
	defer func() {
		if !kept {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	bw := bufio.NewWriterSize(tmp, 1<<20)
	lw := &limitWriter{w: bw, left: narSize + narSize/64 + 1<<16} // zstd's raw frames add little
	if err := render(ctx, lw); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if lw.over {
		return c.reject(k)
	}
	if err := check(tmp, k, narSize); err != nil {
		c.reject(k)
		return err
	}
	fi, err := tmp.Stat()
	if err != nil {
		return err
	}
	size = fi.Size()
	// Synced before the rename: after a crash a name is a whole NAR.
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), c.path(k)); err != nil {
		return err
	}
	kept = true
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries[k] != nil { // adopted meanwhile: the same NAR
		size = 0
		return nil
	}
	c.entries[k] = c.lru.PushFront(&entry{k, size})
	c.stats.Fills++
	return nil
}

func (c *Cache) reject(k Key) error {
	c.mu.Lock()
	c.stats.Rejected++
	c.mu.Unlock()
	return fmt.Errorf("%w %s (%s)", ErrMismatch, k.NarHash, k.Compression)
}

// check reads f back from its start: the NAR it holds (decompressed for a
// .nar.zst) must be narSize bytes with k's NarHash.
func check(f *os.File, k Key, narSize int64) error {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	var r io.Reader = bufio.NewReaderSize(f, 1<<20)
	if k.Compression == nar.CompressionZstd {
		d, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return err
		}
		defer d.Close()
		r = d
	}
	sum := sha256.New()
	n, err := io.Copy(sum, io.LimitReader(r, narSize+1))
	if err != nil {
		return fmt.Errorf("%w %s (%s): %v", ErrMismatch, k.NarHash, k.Compression, err)
	}
	if n != narSize || storepath.NarHash(sum.Sum(nil)) != k.NarHash {
		return fmt.Errorf("%w %s (%s, %d bytes)", ErrMismatch, k.NarHash, k.Compression, n)
	}
	return nil
}

// Adopt takes the file at name, which the caller has checked to be
// exactly the uncompressed NAR with NarHash h, size bytes (a pull's
// spool), as that NAR's file, when it fits; it renames it into the
// cache, on the same file system. It does nothing when the cache has the
// NAR or it is over half the cache.
func (c *Cache) Adopt(name string, h storepath.NarHash, size int64) error {
	k := Key{h, nar.CompressionNone}
	c.mu.Lock()
	if c.entries[k] != nil || size <= 0 || size > c.max/2 {
		c.mu.Unlock()
		return nil
	}
	c.evictLocked(size)
	c.size += size
	c.mu.Unlock()
	err := func() error {
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		defer f.Close()
		if fi, err := f.Stat(); err != nil || fi.Size() != size {
			return fmt.Errorf("adopting %s: not %d bytes", name, size)
		}
		// Synced before the rename, as a fill.
		if err := f.Sync(); err != nil {
			return err
		}
		return os.Rename(name, c.path(k))
	}()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.size -= size
		return err
	}
	if c.entries[k] != nil { // filled meanwhile
		c.size -= size
		return nil
	}
	c.entries[k] = c.lru.PushFront(&entry{k, size})
	c.stats.Fills++
	return nil
}

// Remove drops the files of the NAR with NarHash h, if the cache has any.
func (c *Cache) Remove(h storepath.NarHash) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, comp := range []nar.Compression{nar.CompressionNone, nar.CompressionZstd} {
		if el := c.entries[Key{h, comp}]; el != nil {
			c.removeLocked(el)
		}
	}
}

// evictLocked removes least recently used entries until need more bytes
// fit under max.
func (c *Cache) evictLocked(need int64) {
	for c.size+need > c.max {
		el := c.lru.Back()
		if el == nil {
			return
		}
		c.removeLocked(el)
	}
}

func (c *Cache) removeLocked(el *list.Element) {
	e := c.lru.Remove(el).(*entry)
	delete(c.entries, e.key)
	c.size -= e.size
	// Readers hold their own descriptors: the bytes live until they close.
	if err := os.Remove(c.path(e.key)); err != nil && !errors.Is(err, os.ErrNotExist) && c.log != nil {
		c.log.Warn("removing a cached NAR", "err", err)
	}
}

// Stats returns the cache's figures.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.Entries, s.Bytes, s.Max = len(c.entries), c.size, c.max
	return s
}

// limitWriter passes at most left bytes to w and notes whether more came.
type limitWriter struct {
	w    io.Writer
	left int64
	over bool
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.left {
		l.over = true
		return 0, errors.New("rendered NAR is longer than it can be")
	}
	n, err := l.w.Write(p)
	l.left -= int64(n)
	return n, err
}
