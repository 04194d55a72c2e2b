package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

// The disk limit. storage.max_bytes bounds the bytes the store holds as
// status reports them (bytes_stored: the raw bytes of the distinct chunks,
// after dedup). That figure, not the packs' size on disk, because it moves
// exactly with what paths add and collections remove; the packs add the
// zstd frames made for serving .nar.zst (a third or so of the chunks they
// compress; fetched chunks are kept as frames only, so less) and garbage
// waiting for its pack to be rewritten (castore gc.go).
//
//   - What goes: the least recently used unpinned paths (their records,
//     then by a collection the objects no other path uses). Paths added by
//     hand (import, nix copy --to the daemon socket) are pinned; fetched
//     ones are not; `p2pstore pin|unpin` changes it.
//   - Least recently used: a path is used when it is added, and when its
//     narinfo, NAR, daemon path info or peer record is asked for. Uses
//     are kept in memory and written to the index in batches (usageFlush),
//     never a write per request.
//   - Never under a reader: a NAR render holds its path (hold) for its
//     whole duration, and a path is doomed (chosen to go) only while
//     nobody holds it, both under one mutex; a render that finds its path
//     doomed treats it as gone (and fetches it again where it can). Fetch
//     jobs hold castore leases on what they write until the path is
//     recorded. Readers that cannot say when they end are kept for
//     readGrace after each read (read): the store mount, whose kernel
//     sends no opens or releases, and peers, whose object requests do not
//     name the path (its record, asked first, does).
//   - Within the limit: a fetch reserves the bytes of the chunks it lacks
//     before it downloads them (a pull from an upstream, or a copy of a
//     local store path, its NarSize), and the node first collects what it must
//     to fit them with everything else in flight; an import (pinned, its
//     new bytes unknown until it ends) is collected for just after its
//     commit, in the background. Reservations claim at most half the
//     limit together (maxReservedShare), so that large or many pulls
//     never empty the store for bytes it mostly has. So the store passes
//     the limit by at most the import in flight and what reservations
//     claim over half of it, or when pinned and in-use paths alone pass it.
//   - A collected path is simply absent: the next request for it asks the
//     peers again.

// usageFlush is how often uses are written to the index, and the limit
// checked without a commit waking the collector.
const usageFlush = 30 * time.Second

// readGrace is how long a path read through the store mount, or whose
// record a peer asked for, is kept after that read: long enough for a
// client's next read, or a peer's next batch of objects.
const readGrace = 2 * time.Minute

// evictRounds bounds the collections one eviction runs: each removes
// paths whose NAR sizes sum to what is over the limit, which frees less
// when they share chunks with paths that stay.
const evictRounds = 8

// diskLimit is the node's state for storage.max_bytes.
type diskLimit struct {
	max  uint64        // 0: no limit
	wake chan struct{} // a commit may have taken the store past the limit

	mu       sync.Mutex
	used     map[string]int64 // uses not yet in the index, unix nanoseconds by hash part
	inUse    map[string]int   // paths held by renders and pin changes
	reading  map[string]int64 // last read by the mount or a peer, unix nanoseconds by hash part
	doomed   map[string]bool  // paths being removed
	reserved uint64           // bytes fetches in flight are about to add
	warned   time.Time        // when the node last said it could not meet the limit

	evictMu sync.Mutex // one eviction at a time
}

func (l *diskLimit) init(max uint64) {
	l.max, l.wake = max, make(chan struct{}, 1)
	l.used, l.inUse, l.doomed = map[string]int64{}, map[string]int{}, map[string]bool{}
	l.reading = map[string]int64{}
}

// touch records a use of a path.
func (l *diskLimit) touch(hash string) {
	now := time.Now().UnixNano()
	l.mu.Lock()
	l.used[hash] = now
	l.mu.Unlock()
}

// read records a use of a path by a reader that cannot say when it
// ends: the path is kept for readGrace after it.
func (l *diskLimit) read(hash string) {
	now := time.Now().UnixNano()
	l.mu.Lock()
	l.used[hash], l.reading[hash] = now, now
	l.mu.Unlock()
}

// hold keeps a path from being collected until release is called; ok is
// false (and nothing held) when the path is being removed already.
func (l *diskLimit) hold(hash string) (release func(), ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.doomed[hash] {
		return func() {}, false
	}
	l.inUse[hash]++
	l.used[hash] = time.Now().UnixNano()
	return func() {
		l.mu.Lock()
		if l.inUse[hash]--; l.inUse[hash] <= 0 {
			delete(l.inUse, hash)
		}
		l.mu.Unlock()
	}, true
}

// doom marks a path as being removed, unless someone holds it.
func (l *diskLimit) doom(hash string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.inUse[hash] > 0 || l.doomed[hash] {
		return false
	}
	if t, ok := l.reading[hash]; ok && time.Since(time.Unix(0, t)) < readGrace {
		return false
	}
	l.doomed[hash] = true
	return true
}

func (l *diskLimit) undoom(hash string) {
	l.mu.Lock()
	delete(l.doomed, hash)
	l.mu.Unlock()
}

// takeUsed returns the uses not yet written, and forgets them (and the
// reads older than readGrace).
func (l *diskLimit) takeUsed() map[string]int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	for h, t := range l.reading {
		if time.Since(time.Unix(0, t)) >= readGrace {
			delete(l.reading, h)
		}
	}
	m := l.used
	l.used = map[string]int64{}
	return m
}

// wakeLimit tells the limit loop that the store may have grown.
func (n *Node) wakeLimit() {
	if n.limit.max == 0 {
		return
	}
	select {
	case n.limit.wake <- struct{}{}:
	default:
	}
}

// flushUsage writes the uses kept in memory to the index.
func (n *Node) flushUsage() {
	if err := n.index.Touch(n.limit.takeUsed()); err != nil {
		n.log.Warn("recording when paths were last used", "err", err)
	}
}

// limitLoop writes uses in batches and keeps the store within the limit
// after commits that may have passed it.
func (n *Node) limitLoop(ctx context.Context) {
	defer n.wg.Done()
	defer n.flushUsage()
	tick := time.NewTicker(usageFlush)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			n.flushUsage()
		case <-n.limit.wake:
		}
		if n.limit.max == 0 {
			continue
		}
		if _, err := n.evict(ctx, n.limit.max); err != nil && ctx.Err() == nil {
			n.log.Error("keeping the store within storage.max_bytes", "err", err)
		}
	}
}

// maxReservedShare bounds what reservations may claim: 1/maxReservedShare
// of the limit, one alone or all in flight together. A reservation counts
// a path's whole NAR, though much of it may be chunks the store has (or
// that the path's copy will find there): uncapped, one path as large as
// the limit, or a few pulls at once, would make the limit remove every
// unpinned path for bytes that are mostly not new. What a capped
// reservation misses is collected just after the commit, as for imports.
const maxReservedShare = 2

// reserveSpace makes room for bytes about to be written (a fetch's
// missing chunks): it collects least recently used paths until the store,
// with every reservation in flight (capped, maxReservedShare), fits the
// limit, and keeps the reservation until release.
func (n *Node) reserveSpace(ctx context.Context, bytes uint64) (release func()) {
	l := &n.limit
	if l.max == 0 {
		return func() {}
	}
	l.mu.Lock()
	l.reserved += bytes
	inFlight := l.reserved
	l.mu.Unlock()
	release = func() {
		l.mu.Lock()
		l.reserved -= bytes
		l.mu.Unlock()
		n.wakeLimit()
	}
	target := l.max - min(inFlight, l.max/maxReservedShare)
	if _, err := n.evict(ctx, target); err != nil && ctx.Err() == nil {
		n.log.Error("making room under storage.max_bytes", "err", err)
	}
	return release
}

// victim is a path the limit may remove.
type victim struct {
	hash     string
	narSize  uint64
	lastUsed int64
}

// lruUnpinned lists the unpinned paths, least recently used first.
func (n *Node) lruUnpinned() ([]victim, error) {
	n.flushUsage()
	var vs []victim
	err := n.index.ForEachUsed(func(info *pathinfo.Info, lastUsed int64) error {
		if !info.Pinned {
			vs = append(vs, victim{info.HashPart(), info.NarSize, lastUsed})
		}
		return nil
	})
	slices.SortStableFunc(vs, func(a, b victim) int {
		switch {
		case a.lastUsed < b.lastUsed:
			return -1
		case a.lastUsed > b.lastUsed:
			return 1
		}
		return 0
	})
	return vs, err
}

// pickVictims dooms paths from vs, least recently used first, skipping
// those held, until their NAR sizes reach excess.
func (l *diskLimit) pickVictims(vs []victim, excess uint64) []victim {
	var out []victim
	var sum uint64
	for _, v := range vs {
		if sum >= excess {
			break
		}
		if l.doom(v.hash) {
			out = append(out, v)
			sum += v.narSize
		}
	}
	return out
}

// evict removes least recently used unpinned paths, and collects, until
// the store holds at most target bytes or no path can go. It returns the
// number of paths removed.
func (n *Node) evict(ctx context.Context, target uint64) (int, error) {
	n.limit.evictMu.Lock()
	defer n.limit.evictMu.Unlock()
	removed := 0
	for round := 0; round < evictRounds; round++ {
		stored, err := n.store.ChunkBytes()
		if err != nil {
			return removed, err
		}
		if stored <= target {
			return removed, nil
		}
		vs, err := n.lruUnpinned()
		if err != nil {
			return removed, err
		}
		victims := n.limit.pickVictims(vs, stored-target)
		if len(victims) == 0 {
			n.limit.mu.Lock()
			quiet := time.Since(n.limit.warned) < time.Minute
			if !quiet {
				n.limit.warned = time.Now()
			}
			n.limit.mu.Unlock()
			if quiet {
				return removed, nil
			}
			n.log.Warn("the store is over storage.max_bytes, and the paths over it are pinned or in use",
				"stored", stored, "target", target, "max_bytes", n.limit.max)
			return removed, nil
		}
		k, err := n.removeVictims(victims, n.deletePath)
		removed += k
		if err != nil {
			return removed, err
		}
		if _, err := n.collect(ctx); err != nil {
			return removed, err
		}
	}
	return removed, nil
}

// removeVictims deletes the records of doomed paths and undooms every
// one of them, those after a failed deletion too (a path left doomed
// could never be held again until a restart). It returns how many went.
// del is deletePath but for tests.
func (n *Node) removeVictims(victims []victim, del func(hash string) error) (removed int, err error) {
	defer func() {
		for _, v := range victims {
			n.limit.undoom(v.hash)
		}
	}()
	for _, v := range victims {
		if err := del(v.hash); err != nil {
			return removed, err
		}
		removed++
		n.metrics.evicted.Inc()
		n.log.Info("removed a least recently used path over storage.max_bytes", "hash", v.hash, "nar_size", v.narSize,
			"last_used", time.Unix(0, v.lastUsed).UTC().Format(time.RFC3339))
	}
	return removed, nil
}

// deletePath removes a path's record, keeping the count of shared paths
// right (see sharedCount); its objects are then garbage.
func (n *Node) deletePath(hash string) error {
	c := &n.sharedCount
	c.mu.Lock()
	defer c.mu.Unlock()
	old, err := n.index.Get(hash)
	if errors.Is(err, pathinfo.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := n.index.Delete(hash); err != nil {
		return err
	}
	if n.shares(old) {
		c.changes--
	}
	return nil
}

// PinRequest asks the node to pin or unpin paths.
type PinRequest struct {
	Paths []string `json:"paths"`
	Pin   bool     `json:"pin"`
}

// PinResult reports a pin or unpin.
type PinResult struct {
	Changed   []string `json:"changed"`   // paths whose pin changed
	Unchanged int      `json:"unchanged"` // paths that were so already
}

// SetPinned pins or unpins store paths the node holds, all or none: a
// path the node lacks, or that the limit is removing, fails the request
// before anything changes (every path is held from its check to the
// writes, so that the limit cannot remove it in between: a write would
// bring back a record whose objects are gone). A write that fails puts
// back the pins written before it.
func (n *Node) SetPinned(ctx context.Context, paths []string, pin bool) (*PinResult, error) {
	var hashes []string
	for _, p := range paths {
		sp, err := storepath.Parse(n.cfg.StoreDir, p)
		if err != nil {
			return nil, badInput("%v", err)
		}
		hashes = append(hashes, sp.Hash)
	}
	var infos []*pathinfo.Info
	seen := map[string]bool{}
	for i, h := range hashes {
		release, ok := n.limit.hold(h)
		defer release()
		info, err := n.index.Get(h)
		if err != nil && !errors.Is(err, pathinfo.ErrNotFound) {
			return nil, err
		}
		if !ok || err != nil || info.StorePath != paths[i] {
			return nil, fmt.Errorf("%s: %w on this node", paths[i], pathinfo.ErrNotFound)
		}
		if !seen[h] { // a path named twice is written once
			seen[h] = true
			infos = append(infos, info)
		}
	}
	res := &PinResult{Changed: []string{}}
	var written []*pathinfo.Info
	for _, info := range infos {
		if info.Pinned == pin {
			res.Unchanged++
			continue
		}
		info.Pinned = pin
		if err := n.putPath(info); err != nil {
			for _, w := range written {
				w.Pinned = !pin
				if err := n.putPath(w); err != nil {
					n.log.Error("putting a pin back after a failed pin change", "path", w.StorePath, "err", err)
				}
			}
			return nil, err
		}
		written = append(written, info)
		res.Changed = append(res.Changed, info.StorePath)
	}
	if !pin {
		n.wakeLimit()
	}
	return res, nil
}

func (n *Node) servePin(w http.ResponseWriter, r *http.Request) {
	var req PinRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, maxMetaLine)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	res, err := n.SetPinned(r.Context(), req.Paths, req.Pin)
	if err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, ErrBadInput) {
			code = http.StatusBadRequest
		} else if errors.Is(err, pathinfo.ErrNotFound) {
			code = http.StatusNotFound
		}
		writeError(w, code, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// Pin asks the node to pin (or unpin) paths.
func (c *Client) Pin(ctx context.Context, req *PinRequest) (*PinResult, error) {
	var res PinResult
	return &res, c.post(ctx, "/api/v1/pin", req, &res)
}

// limitStatus adds the limit and the pin counts to a status.
func (n *Node) limitStatus(s *Status, tot pathinfo.Totals) {
	s.MaxBytes, s.PinnedPaths, s.UnpinnedPaths = n.limit.max, tot.Pinned, tot.Paths-tot.Pinned
}
