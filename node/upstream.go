package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sync"
	"time"

	"github.com/p2pstore/p2pstore/internal/counting"
	"github.com/p2pstore/p2pstore/narview/nar"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/node/fetch"
	"github.com/p2pstore/p2pstore/node/pull"
	"github.com/p2pstore/p2pstore/node/upstream"
)

// Pull-through from upstream binary caches (upstream.substituters). A
// path the node lacks is asked of its peers and of the upstreams at once;
// the first trusted answer wins, and only its job starts: a peer's the
// fetch job (asked for with fetch.Find, begun with fetch.Begin), an
// upstream's the pull job (package pull), at the path's first NAR request
// (a narinfo alone downloads nothing from upstream), whose NAR streams to
// the client as it downloads; the other answer is dropped. Before an
// upstream's pull starts, the peers are asked once more (bounded): a peer
// that has the same NAR sends it instead, so that a path crosses the
// upstream's link once for a LAN (fetchFromPeers). A narinfo
// request is answered within
// narinfoDeadline whatever the sources do: 404 when none has answered, and
// the lookup goes on in the background for the next request. The narinfo
// served for a pulled path is the node's (its URL and compression), with
// the upstream's signatures unchanged. An upstream whose NAR of a path
// came broken or wrong is left out of that path's lookups for a while
// (pull.FailedRecently), so that another upstream's copy is used.
//
// Guix substitute servers (guix.substituters) are upstreams of the Guix
// listener on the same terms, through a client of their own in Guix's
// layout (upstream.Config.Guix) and the same puller: the narinfo served
// for a pulled Guix path is the upstream's signed text, with the node's
// NAR entries.

// narinfoDeadline bounds the wait of a narinfo request for peers and
// upstreams: Nix waits 300 s for a silent server, five times over. Below
// the 2 s the node promises, with room for the answer itself (at exactly
// 2 s the answers to a hung upstream took 2.002-2.005 s, BENCHMARKS.md).
const narinfoDeadline = 1500 * time.Millisecond

// spoolDir (under data_dir) holds the NARs being pulled.
const spoolDir = "spool"

// upstreams is the node's pull-through side.
type upstreams struct {
	client *upstream.Client // upstream.substituters; nil for none
	guix   *upstream.Client // guix.substituters; nil for none
	puller *pull.Puller
	// starting is held while the winner of a lookup checks that no job
	// gets the path and starts its own, so that two requests whose
	// lookups different sources won start one job between them.
	starting sync.Mutex
}

// openUpstreams sets the pull-through up when upstreams are configured.
func (n *Node) openUpstreams() error {
	if len(n.cfg.Upstreams) == 0 && len(n.cfg.GuixSubstituters) == 0 {
		return nil
	}
	p, err := pull.New(filepath.Join(n.cfg.DataDir, spoolDir), pulledPaths{n}, pulledPaths{n}, n.log, n.pulled)
	if err != nil {
		return err
	}
	n.up = &upstreams{puller: p}
	// An upstream that just sent a path's NAR broken or wrong is not asked
	// for it again for a while: another may have it whole.
	if len(n.cfg.Upstreams) > 0 {
		n.up.client, err = upstream.New(upstream.Config{URLs: n.cfg.Upstreams, Keys: n.keys, StoreDir: n.cfg.StoreDir, Log: n.log,
			Skip: p.FailedRecently})
		if err != nil {
			return fmt.Errorf("upstream.substituters: %w", err)
		}
	}
	if len(n.cfg.GuixSubstituters) > 0 {
		n.up.guix, err = upstream.New(upstream.Config{URLs: n.cfg.GuixSubstituters, Guix: true, GuixKeys: n.guixKeys,
			StoreDir: n.cfg.GuixStoreDir, Log: n.log, Skip: p.FailedRecently})
		if err != nil {
			return fmt.Errorf("guix.substituters: %w", err)
		}
	}
	return nil
}

// clients are the upstream clients the node has.
func (u *upstreams) clients() []*upstream.Client {
	var out []*upstream.Client
	for _, c := range []*upstream.Client{u.client, u.guix} {
		if c != nil {
			out = append(out, c)
		}
	}
	return out
}

// closeUpstreams ends the running pulls and waits for them: called
// before the store closes, which they write.
func (n *Node) closeUpstreams() {
	if n.up != nil {
		n.up.puller.Close()
	}
}

// pulledPaths records what the pull jobs download, as an import does
// (checked, stored, shared with peers when a shared key signed it), but
// never signed by the node, whose upstream's signatures stand, nor pinned:
// under storage.max_bytes it reserves room for the whole NAR first, as a
// fetch does for the chunks it lacks.
type pulledPaths struct{ n *Node }

func (p pulledPaths) AddPath(ctx context.Context, info *pathinfo.Info, r io.Reader) error {
	defer p.n.reserveSpace(ctx, info.NarSize)()
	_, err := p.n.addPath(ctx, info, r, false, pathinfo.SourceUpstream)
	return err
}

// KeepNAR adopts the NAR a pull spooled (checked) as the path's file in
// the NAR cache, when the node has one.
func (p pulledPaths) KeepNAR(name string, info *pathinfo.Info) {
	if c := p.n.narCache; c != nil {
		if err := c.Adopt(name, info.NarHash, int64(info.NarSize)); err != nil {
			p.n.log.Debug("not caching a pulled NAR", "path", info.StorePath, "err", err)
		}
	}
}

// infoElsewhere finds a path the index lacks: a pull already running for
// it, else the first trusted answer of the peers and the upstreams of c
// (the Nix or the Guix ones). Only the winner's job starts (a fetch job
// already running is the peers' answer), so a path both have is
// downloaded once.
func (n *Node) infoElsewhere(ctx context.Context, hash string, c *upstream.Client) (*pathinfo.Info, error) {
	if j := n.up.puller.Running(hash); j != nil {
		return j.Info(), nil
	}
	ctx, cancel := context.WithTimeout(ctx, narinfoDeadline)
	defer cancel()
	// An answer's start begins its source's job, unless a job already
	// gets the path.
	type answer struct {
		start func() (*pathinfo.Info, error)
		err   error
	}
	answers := make(chan answer, 2)
	asked := 1
	go func() {
		p, err := c.Lookup(ctx, hash)
		answers <- answer{func() (*pathinfo.Info, error) { return n.foundUpstream(ctx, p) }, err}
	}()
	if n.p2p != nil {
		asked++
		go func() {
			fd, err := n.p2p.fetch.Find(ctx, hash)
			answers <- answer{func() (*pathinfo.Info, error) { return n.startFetch(ctx, fd) }, err}
		}()
	}
	var errs []error
	for range asked {
		a := <-answers
		if a.err == nil {
			info, err := a.start()
			if err == nil {
				return info, nil
			}
			a.err = err
		}
		if !errors.Is(a.err, pathinfo.ErrNotFound) && !errors.Is(a.err, pull.ErrFailedRecently) && ctx.Err() == nil {
			n.log.Warn("looking a path up", "hash", hash, "err", a.err)
		}
		errs = append(errs, a.err)
	}
	// Whatever went wrong, the client is told "not here" and moves on to
	// its next substituter.
	if ctx.Err() != nil {
		return nil, fmt.Errorf("%s: no answer within %s: %w", hash, narinfoDeadline, pathinfo.ErrNotFound)
	}
	return nil, fmt.Errorf("%s: %w (%w)", hash, pathinfo.ErrNotFound, errors.Join(errs...))
}

// foundUpstream answers a narinfo with an upstream's answer, without
// downloading anything yet: the pull starts with the path's first NAR
// request (pullFor), which Nix sends right after the narinfo, so that a
// client that only asks narinfos (nix path-info, a dry run) costs the
// upstream nothing more. A job that already gets the path answers
// instead.
func (n *Node) foundUpstream(ctx context.Context, p *upstream.Path) (*pathinfo.Info, error) {
	if info, ok, err := n.gotten(ctx, p.Info.HashPart()); ok {
		return info, err
	}
	info := *p.Info
	return &info, nil
}

// gotten answers for a path that a running job gets or the index holds
// (ok), so that a second job is not started for it: one job per path. A
// fetch whose peers turned out to have no record does not count.
func (n *Node) gotten(ctx context.Context, hash string) (info *pathinfo.Info, ok bool, err error) {
	if j := n.up.puller.Running(hash); j != nil {
		return j.Info(), true, nil
	}
	if n.p2p != nil {
		if j := n.p2p.fetch.Running(hash); j != nil {
			info, err := j.Started(ctx)
			if !errors.Is(err, pathinfo.ErrNotFound) {
				return info, true, err
			}
		}
	}
	if info, err := n.index.Get(hash); err == nil {
		return info, true, nil
	}
	return nil, false, nil
}

// peersFirstWait bounds how long a NAR request for a path an upstream
// has waits for the peers' answer before the pull starts. A peer on the
// LAN answers within milliseconds, and the search began with the
// narinfo; one that takes longer is no better a source than the upstream.
// A "no" from the peers older than peersMissFresh is not taken as it
// stands: they are asked again, as one of them may have got the path
// since.
const (
	peersFirstWait = 500 * time.Millisecond
	peersMissFresh = time.Second
)

// pullFor starts the pull of a path an upstream was found to have (in
// the last upstream.Client FoundTTL), for its first NAR request or daemon
// lookup, unless the peers are fetching it or have it: it returns the
// running pull, or nil.
func (n *Node) pullFor(ctx context.Context, hash string) *pull.Job {
	if j := n.up.puller.Running(hash); j != nil {
		return j
	}
	if n.p2p != nil && n.p2p.fetch.Running(hash) != nil {
		return nil
	}
	var c *upstream.Client
	var p *upstream.Path
	for _, c = range n.up.clients() {
		if p = c.Cached(hash); p != nil {
			break
		}
	}
	if p == nil {
		return nil
	}
	if n.fetchFromPeers(ctx, p.Info) {
		return nil
	}
	if _, err := n.startPull(ctx, c, p); err != nil {
		if !errors.Is(err, pull.ErrFailedRecently) {
			n.log.Warn("starting a pull", "path", p.Info.StorePath, "err", err)
		}
		return nil
	}
	return n.up.puller.Running(hash)
}

// fetchFromPeers begins the peers' fetch of a path an upstream won the
// narinfo race for, when a peer has the same NAR: an upstream on an idle
// link answers as fast as a peer, or its answer was remembered from a
// narinfo asked before any peer had the path, but the NAR comes faster
// over the LAN, and the upstream's link is spared a second copy of what
// a peer already downloaded. It reports whether the fetch runs.
func (n *Node) fetchFromPeers(ctx context.Context, info *pathinfo.Info) bool {
	if n.p2p == nil {
		return false
	}
	findCtx, cancel := context.WithTimeout(ctx, peersFirstWait)
	defer cancel()
	fd, err := n.p2p.fetch.FindAgain(findCtx, info.HashPart(), peersMissFresh)
	if err != nil || fd.Info().NarHash != info.NarHash {
		return false
	}
	// A pull that another request started meanwhile stands: startFetch
	// begins no fetch then.
	if _, err := n.startFetch(ctx, fd); err != nil {
		return false
	}
	return n.p2p.fetch.Running(info.HashPart()) != nil
}

// startPull starts the pull of an answer of c's upstreams, unless a job
// already gets the path (another request's winner): one job per path.
func (n *Node) startPull(ctx context.Context, c *upstream.Client, p *upstream.Path) (*pathinfo.Info, error) {
	hash := p.Info.HashPart()
	if info, ok, err := n.gotten(ctx, hash); ok {
		return info, err
	}
	n.up.starting.Lock()
	defer n.up.starting.Unlock()
	if n.p2p != nil {
		if j := n.p2p.fetch.Running(hash); j != nil && j.Info() != nil {
			return j.Info(), nil
		}
	}
	if info, err := n.index.Get(hash); err == nil {
		return info, nil // a job got it meanwhile
	}
	j, err := n.up.puller.Start(ctx, p.Info, p.Upstream, func(ctx context.Context) (io.ReadCloser, error) {
		return c.Open(ctx, p)
	})
	if err != nil {
		return nil, err
	}
	return j.Info(), nil
}

// startFetch starts the fetch of the peers' answer, unless a job already
// gets the path.
func (n *Node) startFetch(ctx context.Context, fd *fetch.Found) (*pathinfo.Info, error) {
	hash := fd.Info().HashPart()
	n.up.starting.Lock()
	if j := n.up.puller.Running(hash); j != nil {
		n.up.starting.Unlock()
		return j.Info(), nil
	}
	if info, err := n.index.Get(hash); err == nil {
		n.up.starting.Unlock()
		return info, nil
	}
	j := n.p2p.fetch.Begin(fd)
	n.up.starting.Unlock()
	return j.Started(ctx)
}

// lookupElsewhere is infoElsewhere for callers that need the path valid
// here: it waits for the job that gets it.
func (n *Node) lookupElsewhere(ctx context.Context, hash string) (*pathinfo.Info, error) {
	if _, err := n.infoElsewhere(ctx, hash, n.up.client); err != nil {
		return nil, err
	}
	if !n.index.Has(hash) {
		n.pullFor(ctx, hash)
	}
	if j := n.up.puller.Running(hash); j != nil {
		if err := j.Wait(ctx); err != nil {
			return nil, err
		}
	} else if n.p2p != nil {
		if j := n.p2p.fetch.Running(hash); j != nil {
			if _, err := j.Wait(ctx); err != nil {
				return nil, err
			}
		}
	}
	return n.index.Get(hash)
}

// renderPulling renders a NAR from its pull job, when one runs for it,
// and reports whether it did.
func (n *Node) renderPulling(ctx context.Context, info *pathinfo.Info, part nar.Part, w *counting.Writer) (bool, error) {
	j := n.pullFor(ctx, info.HashPart())
	if j == nil || j.Info().NarHash != info.NarHash {
		return false, nil
	}
	sent := w.N
	err := n.renderJob(ctx, j, part, w)
	if errors.Is(err, pull.ErrFinished) {
		return false, nil // valid now: rendered from castore
	}
	if err != nil && w.N == sent && ctx.Err() == nil {
		// Nothing sent yet: a 404 sends the client to its next
		// substituter.
		err = fmt.Errorf("%s: %w (%w)", info.StorePath, pathinfo.ErrNotFound, err)
	}
	return true, err
}

// renderJob writes the part of a NAR being pulled from its spool: the
// bytes as they are; for .nar.zst, uncompressed in raw zstd frames
// (castore's ZstdWriter sends what is written to it so: only chunks it
// splices go out as their stored frames, and the path has none yet); for
// .nar.xz, compressed on the fly.
func (n *Node) renderJob(ctx context.Context, j *pull.Job, part nar.Part, w io.Writer) error {
	var zw io.WriteCloser
	switch part.Compression {
	case nar.CompressionZstd:
		r := n.store.NewReader()
		defer r.Close()
		zw = r.NewZstdWriter(w)
	case nar.CompressionXz:
		xw, err := nar.NewXzWriter(w)
		if err != nil {
			return err
		}
		zw = xw
	default: // uncompressed
		if part.N > 0 {
			return j.Render(ctx, w, part.Off, part.N)
		}
		return j.Render(ctx, w, 0, -1)
	}
	if err := j.Render(ctx, zw, 0, -1); err != nil {
		return err
	}
	return zw.Close()
}

// upstreamBytes is the body bytes read from upstreams so far.
func (n *Node) upstreamBytes() uint64 {
	if n.up == nil {
		return 0
	}
	var b uint64
	for _, c := range n.up.clients() {
		b += c.BytesReceived()
	}
	return b
}

// upstreamLookups counts the lookups that asked upstreams, Nix and Guix.
func (n *Node) upstreamLookups() (hits, misses uint64) {
	if n.up == nil {
		return 0, 0
	}
	for _, c := range n.up.clients() {
		h, m := c.Lookups()
		hits, misses = hits+h, misses+m
	}
	return hits, misses
}
