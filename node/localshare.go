package node

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	mh "github.com/multiformats/go-multihash"
	"golang.org/x/sync/singleflight"

	"github.com/p2pstore/p2pstore/dht"
	"github.com/p2pstore/p2pstore/narview/localstore"
	"github.com/p2pstore/p2pstore/narview/nar"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

// Sharing the machine's own Nix store (local.share). The node watches
// the store (localstore.Watch: db.sqlite, or the daemon) and keeps a
// catalog of its paths that carry a signature verifying with a key it
// trusts (trust.go): those are public already, so they are served at
// once, without an import, and announced to peers. Unsigned paths (local
// builds) never
// enter the catalog: they are served to no one. Signatures that do not
// verify are dropped, as Nix ignores them.
//
// A catalogued path is rendered for HTTP clients straight from the
// store's files, its NarHash checked as the dump streams (the last write
// is held back until it matches, so a bad NAR never ends cleanly, and the
// path leaves the catalog). Its contents go into castore on first request
// (addPath, with the dump as its NAR): before the answer for a peer, which
// needs the tree's root, and for compressed NARs, which castore renders;
// after the answer, in the background one path at a time, for an HTTP
// client. With local.copy_ahead, the paths peers may get are copied in the
// background from the start, so that a peer's first request does not wait
// for the copy (a peer's client took 1.43x as long for a path of 191 MB
// without it, BENCHMARKS.md). Under storage.max_bytes, copies ahead stop
// at three quarters of it; those refused are tried again once a poll finds
// room. Every copy reserves its room first, as a pull does.
// Then it is an ordinary path of the node, kept even if the local store
// deletes it.
//
// The catalog keeps, per path, only what serving its NAR needs (store
// path, NarHash, NarSize: ~200 bytes, against ~1 KB for a whole info with
// its references and signatures); a narinfo or an ingestion reads the
// whole info from the store again (localstore.Watcher.Info), checking
// that it still matches and is still trusted.

// localShare is the catalog of the local store's signed paths.
type localShare struct {
	n   *Node
	src localstore.Watcher

	mu      sync.RWMutex
	paths   map[string]localPath // by hash part; signed paths only
	scanned bool                 // the first poll is done

	ingesting singleflight.Group
	behind    chan string     // hash parts HTTP clients were served, to ingest next
	pending   []string        // hash parts of paths for peers, to ingest in time (under mu)
	refused   []string        // pending paths there was no room for yet (under mu)
	wake      chan struct{}   // pending has grown
	ctx       context.Context // the node's run: ingestions outlive the request that started them
}

// localPath is a catalogued path: what rendering its NAR needs.
type localPath struct {
	storePath string
	narHash   storepath.NarHash
	narSize   uint64
}

func catalogued(info *pathinfo.Info) localPath {
	return localPath{storePath: info.StorePath, narHash: info.NarHash, narSize: info.NarSize}
}

// openLocalShare opens the local store when local.share asks for it and
// one is there. It runs before the p2p side and the servers start, so
// that n.local is set before anyone reads it; start then watches it.
func (n *Node) openLocalShare(ctx context.Context) {
	cfg := n.cfg
	if !cfg.ShareLocal {
		return
	}
	// Only Nix's store is read; Guix keeps another database.
	if cfg.StoreDir != "/nix/store" {
		n.log.Info("not sharing a local store: only a Nix store (/nix/store) can be shared", "store_dir", cfg.StoreDir)
		return
	}
	if _, err := os.Stat(filepath.Join(cfg.LocalRoot, cfg.StoreDir)); err != nil {
		n.log.Info("no local Nix store to share", "root", cfg.LocalRoot)
		return
	}
	src, err := localstore.Watch(ctx, cfg.LocalRoot, cfg.StoreDir)
	if err != nil {
		n.log.Warn("not sharing the local Nix store", "err", err)
		return
	}
	n.local = &localShare{n: n, src: src, paths: map[string]localPath{}, behind: make(chan string, 1024),
		wake: make(chan struct{}, 1), ctx: ctx}
	n.log.Info("sharing the local Nix store", "from", src.Name())
}

// start watches the local store and copies its paths in, until ctx ends.
// It runs once the p2p side is up (whether there are peers decides what
// is copied ahead); openLocalShare runs before, so that peers' requests
// find n.local set. Safe on a nil catalog.
func (l *localShare) start(ctx context.Context) {
	if l == nil {
		return
	}
	l.n.wg.Add(2)
	go l.watch(ctx, l.n.cfg.LocalPoll)
	go l.ingestBehind(ctx)
}

// watch polls the store every interval until ctx ends.
func (l *localShare) watch(ctx context.Context, interval time.Duration) {
	defer l.n.wg.Done()
	defer l.src.Close()
	t := time.NewTicker(interval)
	defer t.Stop()
	scanned := false
	for {
		start := time.Now()
		added, err := l.poll(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			l.n.log.Warn("reading the local Nix store", "err", err)
		}
		if added > 0 || (!scanned && err == nil) {
			l.n.log.Info("local paths shared", "new", added, "shared", l.count(), "seconds", time.Since(start).Seconds())
		}
		scanned = scanned || err == nil
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// poll takes the store's changes into the catalog and announces the new
// paths. It returns how many paths it added.
func (l *localShare) poll(ctx context.Context) (int, error) {
	var fresh []mh.Multihash
	added := 0
	storeDir := l.n.cfg.StoreDir
	err := l.src.Poll(ctx, func(info *pathinfo.Info) error {
		hash := info.HashPart()
		if info.Validate(storeDir) != nil || !l.trust(info) {
			l.drop(hash)
			return nil
		}
		l.mu.Lock()
		_, had := l.paths[hash]
		l.paths[hash] = catalogued(info)
		l.mu.Unlock()
		if !had {
			added++
			fresh = append(fresh, dht.PathKey(storeDir, hash))
			if l.n.cfg.LocalCopyAhead && l.n.p2p != nil { // no peers, nothing to copy ahead for
				l.mu.Lock()
				l.pending = append(l.pending, hash)
				l.mu.Unlock()
			}
		}
		return nil
	}, func(path string) {
		if sp, err := storepath.Parse(storeDir, path); err == nil {
			l.drop(sp.Hash)
		}
	})
	l.mu.Lock()
	l.scanned = l.scanned || err == nil
	l.mu.Unlock()
	l.retryRefused()
	if len(fresh) > 0 {
		select {
		case l.wake <- struct{}{}:
		default:
		}
	}
	if p := l.n.p2p; p != nil && len(fresh) > 0 {
		if err := p.dht.Provide(fresh...); err != nil {
			l.n.log.Warn("announcing local paths", "err", err)
		}
	}
	return added, err
}

// trust drops the signatures that name a key the node trusts but do not
// verify (as Nix ignores them), and reports whether one of the others
// verifies.
func (l *localShare) trust(info *pathinfo.Info) bool {
	info.DropBadSigs(l.n.keys)
	return info.TrustedBy(l.n.keys)
}

// drop takes a path out of the catalog. (Its DHT record expires.)
func (l *localShare) drop(hash string) {
	l.mu.Lock()
	delete(l.paths, hash)
	l.mu.Unlock()
}

// entry returns a catalogued path's entry.
func (l *localShare) entry(hash string) (localPath, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	lp, ok := l.paths[hash]
	return lp, ok
}

// info returns a catalogued path's info, read from the store again, or
// nil. A path gone from the store leaves the catalog; one whose info no
// longer matches its entry (registered again, a signature removed) is
// nil until the next poll puts it right. Safe on a nil catalog.
func (l *localShare) info(hash string) *pathinfo.Info {
	if l == nil {
		return nil
	}
	lp, ok := l.entry(hash)
	if !ok {
		return nil
	}
	ctx := l.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	info, err := l.src.Info(ctx, lp.storePath)
	if errors.Is(err, pathinfo.ErrNotFound) {
		l.drop(hash)
		return nil
	}
	if err != nil {
		l.n.log.Warn("reading a local path's info", "path", lp.storePath, "err", err)
		return nil
	}
	if info.StorePath != lp.storePath || info.NarHash != lp.narHash || info.NarSize != lp.narSize ||
		info.Validate(l.n.cfg.StoreDir) != nil || !l.trust(info) {
		return nil
	}
	return info
}

// has reports whether a path is catalogued.
func (l *localShare) has(hash string) bool {
	if l == nil {
		return false
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	_, ok := l.paths[hash]
	return ok
}

// counts returns the number of catalogued paths, and whether the first
// scan of the store is done.
func (l *localShare) counts() (int, bool) {
	if l == nil {
		return 0, false
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	return len(l.paths), l.scanned
}

func (l *localShare) count() int { n, _ := l.counts(); return n }

// keys returns the DHT keys of the catalogued paths given to peers, for
// announceAll.
func (l *localShare) keys() []mh.Multihash {
	if l == nil {
		return nil
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	out := make([]mh.Multihash, 0, len(l.paths))
	for hash := range l.paths {
		out = append(out, dht.PathKey(l.n.cfg.StoreDir, hash))
	}
	return out
}

// ingest puts a catalogued path into castore, once however many ask at
// once, and returns pathinfo.ErrNotFound for a path not catalogued. The
// ingestion runs on the node's context: one asker leaving does not cut
// it short for the others.
func (l *localShare) ingest(ctx context.Context, hash string) error {
	if l == nil {
		return pathinfo.ErrNotFound
	}
	ch := l.ingesting.DoChan(hash, func() (any, error) {
		if l.n.index.Has(hash) {
			return nil, nil
		}
		info := l.info(hash)
		if info == nil {
			return nil, pathinfo.ErrNotFound
		}
		ctx := l.ctx
		// Room first, as for a pull: concurrent copies would pass the
		// limit together otherwise.
		defer l.n.reserveSpace(ctx, info.NarSize)()
		pr, pw := io.Pipe()
		dumped := make(chan error, 1)
		go func() {
			err := l.src.Dump(ctx, info.StorePath, pw)
			dumped <- err
			pw.CloseWithError(err)
		}()
		// Shared for its own signatures, and kept in the local store: the
		// node neither signs nor pins its copy.
		start := time.Now()
		_, err := l.n.addPath(ctx, info, pr, false, pathinfo.SourceLocal)
		pr.CloseWithError(io.ErrClosedPipe)
		l.n.copiedLocal(info, time.Since(start), err)
		if err != nil && l.vanished(hash, <-dumped) {
			return nil, fmt.Errorf("%s: %w", info.StorePath, pathinfo.ErrNotFound)
		}
		if errors.Is(err, ErrBadInput) {
			// The files no longer match what Nix recorded.
			l.drop(hash)
			l.n.log.Error("a local path does not match its NarHash; no longer shared", "path", info.StorePath, "err", err)
			return nil, fmt.Errorf("%s: %w", info.StorePath, pathinfo.ErrNotFound)
		}
		return nil, err
	})
	select {
	case r := <-ch:
		return r.Err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// vanished reports whether a dump failed because the path's files are
// gone (deleted since the last poll), and drops the path if so: a client
// then gets a 404, not an error.
func (l *localShare) vanished(hash string, dumpErr error) bool {
	if !errors.Is(dumpErr, fs.ErrNotExist) {
		return false
	}
	l.drop(hash)
	return true
}

// ingestBehind takes catalogued paths into castore in the background, one
// at a time: those HTTP clients were served first, then those peers may
// ask for, so that a peer's first request finds the path ready rather
// than waiting for its ingestion.
func (l *localShare) ingestBehind(ctx context.Context) {
	defer l.n.wg.Done()
	for {
		var hash string
		ahead := false // copied for peers before they ask
		select {
		case hash = <-l.behind:
		default:
			hash, ahead = l.nextPending(), true
		}
		if hash == "" {
			ahead = false
			select {
			case <-ctx.Done():
				return
			case hash = <-l.behind:
			case <-l.wake:
				continue
			}
		}
		if l.n.index.Has(hash) {
			continue
		}
		if ahead && !l.roomToCopyAhead(hash) {
			l.mu.Lock()
			l.refused = append(l.refused, hash)
			l.mu.Unlock()
			continue
		}
		if err := l.ingest(ctx, hash); err != nil && ctx.Err() == nil && !errors.Is(err, pathinfo.ErrNotFound) {
			l.n.log.Warn("taking a local path into the store", "hash", hash, "err", err)
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// roomToCopyAhead reports whether a path fits in the store ahead of any
// request: under storage.max_bytes, copies ahead fill at most three
// quarters of it, so that they never make the limit remove paths clients
// asked for (and are not removed and copied again in turn).
func (l *localShare) roomToCopyAhead(hash string) bool {
	max := l.n.limit.max
	if max == 0 {
		return true
	}
	lp, ok := l.entry(hash)
	stored, err := l.n.store.ChunkBytes()
	return ok && err == nil && stored+lp.narSize <= max/4*3
}

// retryRefused puts the paths refused for room back in the queue when
// the store has room for copies ahead again (the limit made room for a
// large pull, say); the ones that still do not fit are refused again, one
// counter read each.
func (l *localShare) retryRefused() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.refused) == 0 {
		return
	}
	if stored, err := l.n.store.ChunkBytes(); err != nil || stored >= l.n.limit.max/4*3 {
		return
	}
	l.pending = append(l.pending, l.refused...)
	l.refused = nil
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// nextPending takes the next path for peers still to ingest, or "".
func (l *localShare) nextPending() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.pending) == 0 {
		l.pending = nil // let a drained backlog go
		return ""
	}
	hash := l.pending[0]
	l.pending = l.pending[1:]
	return hash
}

// render writes part of a catalogued path's NAR to w and reports whether
// the path is one; a compressed NAR is ingested first and left to castore
// (ok false, nil error).
func (l *localShare) render(ctx context.Context, info *pathinfo.Info, part nar.Part, w io.Writer) (ok bool, err error) {
	if l == nil {
		return false, nil
	}
	hash := info.HashPart()
	cat, ok := l.entry(hash)
	if !ok || cat.narHash != info.NarHash {
		return false, nil
	}
	if part.Compression != nar.CompressionNone {
		return false, l.ingest(ctx, hash)
	}
	off, end := int64(0), int64(cat.narSize)
	if part.N > 0 {
		off, end = part.Off, part.Off+part.N
	}
	cw := &checkedNAR{w: w, h: sha256.New(), size: int64(cat.narSize), off: off, end: end}
	if err := l.src.Dump(ctx, cat.storePath, cw); err != nil {
		if l.vanished(hash, err) {
			return true, fmt.Errorf("%s: %w", cat.storePath, pathinfo.ErrNotFound)
		}
		if errors.Is(err, errNarMismatch) {
			l.drop(hash)
		}
		return true, err
	}
	if err := cw.finish(cat.narHash); err != nil {
		l.drop(hash)
		l.n.log.Error("a local path does not match its NarHash; no longer shared", "path", cat.storePath, "err", err)
		return true, err
	}
	select {
	case l.behind <- hash:
	default: // a full queue: a later request asks again
	}
	return true, nil
}

var errNarMismatch = errors.New("the NAR does not match the path's NarHash and NarSize")

// checkedNAR passes the bytes [off, end) of a NAR on to w while hashing
// all of it, holding the last write back until finish has checked the
// hash: a NAR that turns out wrong never reaches its client whole.
type checkedNAR struct {
	w         io.Writer
	h         hash.Hash
	n, size   int64 // bytes seen; the NarSize
	off, end  int64
	held      []byte
	heldValid bool
}

func (c *checkedNAR) Write(p []byte) (int, error) {
	if c.n+int64(len(p)) > c.size {
		return 0, errNarMismatch
	}
	c.h.Write(p)
	start, stop := max(c.off-c.n, 0), min(c.end-c.n, int64(len(p)))
	c.n += int64(len(p))
	if start >= stop {
		return len(p), nil
	}
	if err := c.flush(); err != nil {
		return 0, err
	}
	c.held = append(c.held[:0], p[start:stop]...)
	c.heldValid = true
	return len(p), nil
}

func (c *checkedNAR) flush() error {
	if !c.heldValid {
		return nil
	}
	c.heldValid = false
	_, err := c.w.Write(c.held)
	return err
}

// finish checks the NAR and sends what was held back.
func (c *checkedNAR) finish(want storepath.NarHash) error {
	var got storepath.NarHash
	c.h.Sum(got[:0])
	if c.n != c.size || !bytes.Equal(got[:], want[:]) {
		return fmt.Errorf("%w: got %s, %d bytes", errNarMismatch, got, c.n)
	}
	return c.flush()
}
