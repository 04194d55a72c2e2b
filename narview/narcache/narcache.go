// Package narcache keeps the uncompressed NARs of the paths clients ask for
// most as plain files, so that a node serves them as nginx serves a static
// binary cache: one sendfile from one file. A NAR rendered from castore
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
//   - A file is named by its NarHash and holds exactly that NAR: it is
//     checked (size and sha256) before it is renamed into place and synced
//     first, so a crash leaves at worst a temporary file, removed at Open.
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

	"github.com/p2pstore/p2pstore/narview/storepath"
)

// suffix names the cache's files; tmpSuffix those being made.
const (
	suffix    = ".nar"
	tmpSuffix = ".tmp"
)

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
	entries map[storepath.NarHash]*list.Element // of *entry, most recent first
	lru     *list.List
	size    int64 // bytes of the entries, and of the fill in progress
	seen    map[storepath.NarHash]bool
	filling bool
	stats   Stats
}

type entry struct {
	hash storepath.NarHash
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
	c := &Cache{dir: dir, max: max, log: log, entries: map[storepath.NarHash]*list.Element{}, lru: list.New(), seen: map[storepath.NarHash]bool{}}
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
		hash, ok := parseName(name)
		if !ok || !fi.Mode().IsRegular() {
			// A fill a crash interrupted, or nothing of ours.
			os.Remove(filepath.Join(dir, name))
			continue
		}
		files = append(files, found{entry{hash, fi.Size()}, fi.ModTime().UnixNano()})
	}
	// Most recently made first, as they were served before the restart.
	slices.SortFunc(files, func(a, b found) int { return cmp.Compare(b.mod, a.mod) })
	for _, f := range files {
		c.entries[f.hash] = c.lru.PushBack(&entry{f.hash, f.size})
		c.size += f.size
	}
	c.mu.Lock()
	c.evictLocked(0)
	c.mu.Unlock()
	return c, nil
}

func parseName(name string) (storepath.NarHash, bool) {
	var h storepath.NarHash
	base, ok := strings.CutSuffix(name, suffix)
	if !ok {
		return h, false
	}
	parsed, err := storepath.ParseNarHash("sha256:" + base)
	if err != nil {
		return h, false
	}
	return parsed, true
}

func (c *Cache) path(h storepath.NarHash) string {
	return filepath.Join(c.dir, strings.TrimPrefix(h.String(), "sha256:")+suffix)
}

// Open returns the NAR with NarHash h, opened for this reader alone, and
// marks it used; ok is false when the cache lacks it.
func (c *Cache) Open(h storepath.NarHash) (f *os.File, ok bool) {
	c.mu.Lock()
	el := c.entries[h]
	if el != nil {
		c.lru.MoveToFront(el)
	}
	c.mu.Unlock()
	if el == nil {
		return nil, false
	}
	f, err := os.Open(c.path(h))
	if err != nil {
		// Gone behind the cache's back: forget it.
		c.Remove(h)
		return nil, false
	}
	c.mu.Lock()
	c.stats.Hits++
	c.mu.Unlock()
	return f, true
}

// Admit counts a whole request for the NAR with NarHash h and size bytes,
// and reports whether the caller should make its file now (with Fill): on
// its second request, when no other fill runs and it fits.
func (c *Cache) Admit(h storepath.NarHash, size int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries[h] != nil || size <= 0 || size > c.max/2 {
		return false
	}
	if !c.seen[h] {
		if len(c.seen) >= maxSeen {
			clear(c.seen)
		}
		c.seen[h] = true
		return false
	}
	if c.filling {
		return false
	}
	delete(c.seen, h)
	c.filling = true
	// The fill's bytes are claimed now, so the cache never passes max.
	c.evictLocked(size)
	c.size += size
	return true
}

// Fill makes the file of the NAR that Admit let in: render writes the NAR
// to its writer; the bytes are kept only when they are size bytes with
// NarHash h. Every Admit that returned true must be followed by one Fill.
func (c *Cache) Fill(ctx context.Context, h storepath.NarHash, size int64, render func(context.Context, io.Writer) error) (err error) {
	kept := false
	defer func() {
		c.mu.Lock()
		c.filling = false
		if !kept {
			c.size -= size
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
	sum := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(tmp, sum), 1<<20)
	cw := &limitWriter{w: bw, left: size}
	if err := render(ctx, cw); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if cw.left != 0 || cw.over || [sha256.Size]byte(sum.Sum(nil)) != h {
		c.mu.Lock()
		c.stats.Rejected++
		c.mu.Unlock()
		return fmt.Errorf("%w %s (%d bytes)", ErrMismatch, h, size)
	}
	// Synced before the rename: after a crash a name is a whole NAR.
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), c.path(h)); err != nil {
		return err
	}
	kept = true
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries[h] != nil { // adopted meanwhile: the same bytes
		c.size -= size
		return nil
	}
	c.entries[h] = c.lru.PushFront(&entry{h, size})
	c.stats.Fills++
	return nil
}

// Adopt takes the file at name, which the caller has checked to be
// exactly size bytes with NarHash h (a pull's spool), as that NAR's
// file, when it fits; it renames it into the cache, on the same file
// system. It does nothing when the cache has the NAR or it is over half
// the cache.
func (c *Cache) Adopt(name string, h storepath.NarHash, size int64) error {
	c.mu.Lock()
	if c.entries[h] != nil || size <= 0 || size > c.max/2 {
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
		return os.Rename(name, c.path(h))
	}()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.size -= size
		return err
	}
	if c.entries[h] != nil { // filled meanwhile
		c.size -= size
		return nil
	}
	c.entries[h] = c.lru.PushFront(&entry{h, size})
	c.stats.Fills++
	return nil
}

// Remove drops the NAR with NarHash h, if the cache has it.
func (c *Cache) Remove(h storepath.NarHash) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el := c.entries[h]; el != nil {
		c.removeLocked(el)
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
	delete(c.entries, e.hash)
	c.size -= e.size
	// Readers hold their own descriptors: the bytes live until they close.
	if err := os.Remove(c.path(e.hash)); err != nil && !errors.Is(err, os.ErrNotExist) && c.log != nil {
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
		return 0, errors.New("rendered NAR is longer than its NarSize")
	}
	n, err := l.w.Write(p)
	l.left -= int64(n)
	return n, err
}
