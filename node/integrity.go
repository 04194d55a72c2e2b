package node

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	mh "github.com/multiformats/go-multihash"
	"golang.org/x/time/rate"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/dht"
	"github.com/p2pstore/p2pstore/internal/counting"
	"github.com/p2pstore/p2pstore/internal/priority"
	"github.com/p2pstore/p2pstore/narview/nar"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

// Integrity: finding damaged objects in the store, taking them and the
// paths they hurt out of service, and repairing those paths.
//
//   - Finding. A render hashes nothing: it is a sendfile of pack ranges,
//     and its throughput rests on that. What is read into memory anyway
//     is checked: a raw chunk a peer asks for (castore.SharedChunks; a
//     stored zstd frame goes out as it is, and the peer checks it), a
//     chunk being compressed, an object gc copies out of a pack, and a
//     hot NAR being cached whole (against its NarHash; the path's objects
//     are then checked). `p2pstore
//     verify` and the background scrub read every object; the scrub does
//     it every storage.scrub_interval, at scrubRate, on a thread at the
//     lowest CPU and disk priority, so that it never competes with
//     serving.
//   - Out of service. A damaged object is dropped from castore's index
//     (castore.DropDamaged): no render, peer or compressor reads it
//     again, and a render in progress that needs it breaks its
//     connection there. Each path whose tree uses a damaged or missing
//     object (every path's tree walked once) is made invalid: its record
//     moves to the index's list of invalid paths, with why
//     (pathinfo.Index.Invalidate). Nothing serves from that list: its
//     narinfo is a 404 unless a source has the path (which is then
//     fetched as any path the node lacks), peers get no record of it,
//     the node stops announcing it, its cached NAR file goes, and gc no
//     longer keeps its objects. `p2pstore verify` without --repair only
//     reports.
//   - Repair. An invalid path is got again as a path the node lacks is
//     (lookup: the local Nix store, the upstreams, the peers), every
//     object checked on the way, then proven whole: its NAR rendered
//     from castore and checked against NarHash and NarSize. Any record
//     written for the path (a repair, a fetch, a pull, an import) makes
//     it valid again, keeping its pin, its privacy and its signatures
//     (carryOver). A private path is repaired from the local Nix store
//     only: asking the network for it would tell who holds it. A path
//     that cannot be repaired stays invalid, is logged and reported by
//     verify, and is tried again by `verify --repair` and each scrub.
//   - One at a time: a repair by verify or the scrub, and the worker that
//     handles what readers found (integrityLoop), take turns; reading
//     the store, which takes a scrub hours on a large one, waits for
//     nobody and holds nobody up.

// scrubRate is how fast the scrub reads the store: a few percent of a
// disk's bandwidth, a terabyte in about nine hours.
const scrubRate = 32 << 20

// scrubFile (in data_dir) holds when the last scrub ended, so that a
// weekly scrub is not put off forever by restarts.
const scrubFile = "scrubbed"

// maxReported bounds the object problems a verify report lists.
const maxReported = 1000

// integrity is the node's state for damage (see above).
type integrity struct {
	turn sync.Mutex // a repair or the worker, one at a time

	mu      sync.Mutex
	dropped map[castore.Digest]error // objects readers found damaged: walk every path's tree
	suspect map[string]bool          // paths whose NAR came out wrong: check their objects
	wake    chan struct{}
}

func (g *integrity) init() {
	g.dropped, g.suspect, g.wake = map[castore.Digest]error{}, map[string]bool{}, make(chan struct{}, 1)
}

func (g *integrity) poke() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// damageFound takes an object a reader found damaged out of service at
// once, and has the worker make the paths it hurts invalid and repair
// them. where says who found it.
func (n *Node) damageFound(d *castore.Damage, where string) {
	dropped := n.dropDamaged([]*castore.Damage{d})
	if len(dropped) == 0 {
		return // gone already, or sound on a second look
	}
	n.log.Error("a stored object is damaged: taken out of service, the paths that use it are being repaired", "object", d, "found_by", where)
	n.integrity.walkFor(dropped)
}

// walkFor has the worker find the paths that used dropped objects.
func (g *integrity) walkFor(dropped []*castore.Damage) {
	g.mu.Lock()
	for _, d := range dropped {
		g.dropped[d.Digest] = d.Err
	}
	g.mu.Unlock()
	g.poke()
}

// suspectNAR has the worker check the objects of a path whose stored
// contents did not render to its NarHash, and repair it.
func (n *Node) suspectNAR(hash string) {
	g := &n.integrity
	g.mu.Lock()
	g.suspect[hash] = true
	g.mu.Unlock()
	g.poke()
}

// dropDamaged takes damaged objects out of castore's index and out of
// the node's announcements, and returns those it dropped.
func (n *Node) dropDamaged(ds []*castore.Damage) []*castore.Damage {
	if len(ds) == 0 {
		return nil
	}
	dropped, err := n.store.DropDamaged(ds)
	if err != nil {
		n.log.Error("taking damaged objects out of service", "err", err)
		return nil
	}
	var keys []mh.Multihash
	frames := false
	for _, d := range dropped {
		switch d.Kind {
		case castore.KindChunk, castore.KindDirectory:
			keys = append(keys, dht.DigestKey(d.Digest))
		case castore.KindFrame:
			frames = true
		}
	}
	n.unannounce(keys...)
	if frames {
		n.wakeCompressor() // it makes them again from the raw chunks
	}
	return dropped
}

// unannounce stops announcing keys on the DHT.
func (n *Node) unannounce(keys ...mh.Multihash) {
	if n.p2p == nil || len(keys) == 0 {
		return
	}
	if err := n.p2p.dht.StopProviding(keys...); err != nil {
		n.log.Warn("no longer announcing damaged objects", "err", err)
	}
}

// hurtPath is a valid path whose tree uses a damaged or missing object.
type hurtPath struct {
	hash, storePath string
	problem         string           // the first problem found in its tree
	hurt            []castore.Digest // the directories above the problems, and the root
}

// hurtPaths walks every valid path's tree once and returns those that use
// an object bad says is damaged (nil: none) or that the store lacks, and
// how many paths it walked.
func (n *Node) hurtPaths(ctx context.Context, bad func(castore.Digest) error, op *operation) ([]hurtPath, int, error) {
	var out []hurtPath
	walked := 0
	err := n.index.ForEach(func(info *pathinfo.Info) error {
		walked++
		op.set(uint64(walked), 0)
		var first string
		hurt, err := n.store.TreeProblems(ctx, info.Root, bad, func(p string) {
			if first == "" {
				first = p
			}
		})
		if err != nil {
			return err
		}
		if first != "" {
			out = append(out, hurtPath{hash: info.HashPart(), storePath: info.StorePath, problem: first, hurt: hurt})
		}
		return nil
	})
	return out, walked, err
}

// invalidate makes a valid path invalid (see the top of this file), and
// reports whether it did.
func (n *Node) invalidate(p hurtPath) bool {
	c := &n.sharedCount // as deletePath
	c.mu.Lock()
	old, err := n.index.Invalidate(p.hash, p.problem)
	if err == nil && n.shares(old) {
		c.changes--
	}
	c.mu.Unlock()
	if err != nil {
		if !errors.Is(err, pathinfo.ErrNotFound) {
			n.log.Error("making a damaged path invalid", "path", p.storePath, "err", err)
		}
		return false
	}
	if err := n.store.Unshare(p.hurt); err != nil {
		n.log.Error("unsharing a damaged path", "path", p.storePath, "err", err)
	}
	if n.narCache != nil {
		n.narCache.Remove(old.NarHash)
	}
	n.unannounce(dht.PathKey(n.cfg.StoreDir, p.hash))
	n.log.Warn("a stored path is damaged: not served until it is repaired", "path", old.StorePath, "problem", p.problem)
	return true
}

// repairPath gets an invalid path again and proves it whole (see the top
// of this file).
func (n *Node) repairPath(ctx context.Context, hash string) error {
	inv, err := n.index.Invalid(hash)
	if errors.Is(err, pathinfo.ErrNotFound) && n.index.Has(hash) {
		return n.provePath(ctx, hash) // made valid meanwhile (a client asked for it)
	}
	if err != nil {
		return err
	}
	if inv.Info.Private {
		if n.local.info(hash) == nil {
			return errors.New("a private path is repaired from the local Nix store only, which lacks it: import it again")
		}
		err = n.local.ingest(ctx, hash)
	} else {
		_, err = n.lookup(ctx, hash)
	}
	if errors.Is(err, pathinfo.ErrNotFound) {
		return fmt.Errorf("no peer, upstream or local Nix store has it (%w)", err)
	}
	if err != nil {
		return err
	}
	return n.provePath(ctx, hash)
}

// provePath renders a valid path's NAR from castore and checks it against
// its NarHash and NarSize; a path that fails is made invalid.
func (n *Node) provePath(ctx context.Context, hash string) error {
	release, held := n.limit.hold(hash)
	defer release()
	rec, err := n.index.Get(hash)
	if !held || err != nil {
		return fmt.Errorf("removed while it was being checked: %w", pathinfo.ErrNotFound)
	}
	h := sha256.New()
	cw := &counting.Writer{W: h}
	r := n.store.NewReader()
	defer r.Close()
	err = nar.Render(ctx, cw, rec.Root, r)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var got storepath.NarHash
	h.Sum(got[:0])
	if err == nil && (got != rec.NarHash || uint64(cw.N) != rec.NarSize) {
		err = fmt.Errorf("its stored contents render to a NAR with hash %s and size %d, not %s and %d", got, cw.N, rec.NarHash, rec.NarSize)
	}
	if err != nil {
		n.invalidate(hurtPath{hash: hash, storePath: rec.StorePath, problem: "repaired, but " + err.Error(), hurt: []castore.Digest{rec.Root.Digest}})
		return err
	}
	return nil
}

// carryOver keeps, in a record about to be written for a path, what the
// node's owner decided of it (its pin, its privacy), from the record it
// replaces or the one kept when the path was made invalid; and from the
// latter its signatures, when they sign the same NAR: a repair brings the
// record of whoever had the path, which may lack the node's own.
func (n *Node) carryOver(info *pathinfo.Info) {
	hash := info.HashPart()
	old, err := n.index.Get(hash)
	if err != nil {
		inv, err := n.index.Invalid(hash)
		if err != nil {
			return
		}
		old = inv.Info
		if old.Fingerprint() == info.Fingerprint() {
			for _, s := range old.Sigs {
				info.AddSig(s)
			}
		}
	}
	info.Pinned = info.Pinned || old.Pinned
	info.Private = info.Private || old.Private
}

// VerifyRequest asks the node to check its store, and to repair it.
type VerifyRequest struct {
	Repair bool `json:"repair"`
}

// DamagedPath is a path that uses a damaged or missing object, or that an
// earlier check made invalid; with a repair, what became of it.
type DamagedPath struct {
	Path     string `json:"path"`
	Problem  string `json:"problem"`
	Invalid  bool   `json:"invalid,omitempty"`  // not served (made invalid earlier, or its repair failed)
	Repaired bool   `json:"repaired,omitempty"` // valid again, its NAR checked against NarHash
	Error    string `json:"error,omitempty"`    // why it could not be repaired
}

// verifyStore checks every object and every path's tree; with repair, it
// takes what is damaged out of service and repairs the paths, those made
// invalid earlier too. pace, when set, slows the reading (the scrub).
func (n *Node) verifyStore(ctx context.Context, repair bool, pace func(context.Context, int) error) (*VerifyReport, error) {
	start := time.Now()
	rep := &VerifyReport{}
	var objects []*castore.Damage
	bad := map[castore.Digest]error{}
	op := operationOf(ctx) // a client following `verify`
	op.phase("checking objects", "", 0)
	st, err := n.store.VerifyObjects(ctx, castore.VerifyOptions{Pace: pace}, func(d *castore.Damage) {
		objects = append(objects, d)
		if d.Kind != castore.KindFrame { // a frame hurts no path: its chunk is whole
			bad[d.Digest] = d.Err
		}
		if len(rep.Problems) < maxReported {
			rep.Problems = append(rep.Problems, d.Error())
		}
	})
	if err != nil {
		return nil, err
	}
	rep.Chunks, rep.Directories, rep.Bytes = st.Chunks, st.Directories, st.Bytes
	if op != nil {
		tot, _ := n.index.Totals()
		op.phase("checking paths", "paths", uint64(tot.Paths))
	}
	hurt, walked, err := n.hurtPaths(ctx, func(d castore.Digest) error { return bad[d] }, op)
	if err != nil {
		return nil, err
	}
	rep.Paths = walked
	if repair {
		n.integrity.turn.Lock()
		defer n.integrity.turn.Unlock()
	}
	var earlier []*pathinfo.Invalid
	err = n.index.ForEachInvalid(func(inv *pathinfo.Invalid) error {
		earlier = append(earlier, inv)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if !repair {
		for _, p := range hurt {
			rep.Damaged = append(rep.Damaged, DamagedPath{Path: p.storePath, Problem: p.problem})
		}
		for _, inv := range earlier {
			rep.Damaged = append(rep.Damaged, DamagedPath{Path: inv.Info.StorePath, Problem: inv.Reason, Invalid: true})
		}
		rep.Seconds = time.Since(start).Seconds()
		return rep, nil
	}
	n.dropDamaged(objects)
	var todo []DamagedPath
	var hashes []string
	for _, p := range hurt {
		if n.invalidate(p) {
			todo, hashes = append(todo, DamagedPath{Path: p.storePath, Problem: p.problem}), append(hashes, p.hash)
		}
	}
	for _, inv := range earlier {
		todo, hashes = append(todo, DamagedPath{Path: inv.Info.StorePath, Problem: inv.Reason}), append(hashes, inv.Info.HashPart())
	}
	for i := range todo {
		n.repairOne(ctx, hashes[i], &todo[i])
	}
	rep.Damaged = todo
	rep.Seconds = time.Since(start).Seconds()
	return rep, nil
}

// repairOne repairs one invalid path and says how it went, in the log and
// in d.
func (n *Node) repairOne(ctx context.Context, hash string, d *DamagedPath) {
	start := time.Now()
	if err := n.repairPath(ctx, hash); err != nil {
		d.Invalid, d.Error = true, err.Error()
		if ctx.Err() == nil {
			n.log.Error("could not repair a damaged path: it stays invalid and is not served", "path", d.Path, "err", err)
		}
		return
	}
	d.Repaired = true
	n.log.Info("repaired a damaged path", "path", d.Path, "seconds", time.Since(start).Seconds())
}

// integrityLoop handles what readers found (damageFound, suspectNAR): it
// makes the paths hurt invalid and repairs them.
func (n *Node) integrityLoop(ctx context.Context) {
	defer n.wg.Done()
	g := &n.integrity
	for {
		select {
		case <-ctx.Done():
			return
		case <-g.wake:
		}
		g.turn.Lock()
		g.mu.Lock()
		dropped, suspect := g.dropped, g.suspect
		g.dropped, g.suspect = map[castore.Digest]error{}, map[string]bool{}
		g.mu.Unlock()
		repair := map[string]string{} // hash -> store path
		for hash := range suspect {
			if p, ok := n.checkSuspect(ctx, hash); ok {
				repair[hash] = p
			}
		}
		if len(dropped) > 0 {
			// What was dropped is missing now; saying how it was damaged
			// tells more.
			hurt, _, err := n.hurtPaths(ctx, func(d castore.Digest) error { return dropped[d] }, nil)
			if err != nil && ctx.Err() == nil {
				n.log.Error("finding the paths damaged objects hurt", "err", err)
			}
			for _, p := range hurt {
				if n.invalidate(p) {
					repair[p.hash] = p.storePath
				}
			}
		}
		for hash, p := range repair {
			if ctx.Err() != nil {
				break
			}
			n.repairOne(ctx, hash, &DamagedPath{Path: p})
		}
		g.turn.Unlock()
	}
}

// checkSuspect checks the objects of a path whose stored contents did not
// render to its NarHash, takes the damaged ones out of service, and makes
// the path invalid; it returns the path and whether it did.
func (n *Node) checkSuspect(ctx context.Context, hash string) (string, bool) {
	info, err := n.index.Get(hash)
	if err != nil {
		return "", false // gone, or invalid already
	}
	var found []*castore.Damage
	if err := n.store.VerifyTree(ctx, info.Root, func(d *castore.Damage) { found = append(found, d) }); err != nil {
		return "", false
	}
	dropped := n.dropDamaged(found)
	problem := "its stored contents do not render to its NarHash"
	if len(dropped) > 0 {
		problem = dropped[0].Error()
		n.integrity.walkFor(dropped) // other paths may use them
	}
	// What another reader dropped just before (the compressor, a peer's
	// read) shows as missing here: say that rather than nothing.
	hurt, err := n.store.TreeProblems(ctx, info.Root, nil, func(p string) {
		if len(dropped) == 0 && problem == "its stored contents do not render to its NarHash" {
			problem = p
		}
	})
	if err != nil {
		return "", false
	}
	if len(hurt) == 0 {
		hurt = []castore.Digest{info.Root.Digest}
	}
	return info.StorePath, n.invalidate(hurtPath{hash: hash, storePath: info.StorePath, problem: problem, hurt: hurt})
}

// scrubLoop runs the scrub every storage.scrub_interval (after the last
// one, wherever the node ran it).
func (n *Node) scrubLoop(ctx context.Context) {
	defer n.wg.Done()
	every := n.cfg.ScrubInterval
	if every <= 0 {
		return
	}
	next := n.lastScrub().Add(every)
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(next)):
		}
		n.scrub(ctx)
		next = time.Now().Add(every)
		if err := os.WriteFile(filepath.Join(n.cfg.DataDir, scrubFile), []byte(strconv.FormatInt(time.Now().Unix(), 10)+"\n"), 0o600); err != nil {
			n.log.Warn("recording when the store was scrubbed", "err", err)
		}
	}
}

// lastScrub is when the last scrub ended; on a node that never ran one,
// now (the first comes an interval after the first start).
func (n *Node) lastScrub() time.Time {
	file := filepath.Join(n.cfg.DataDir, scrubFile)
	if b, err := os.ReadFile(file); err == nil {
		if sec, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil {
			return time.Unix(sec, 0)
		}
	}
	now := time.Now()
	os.WriteFile(file, []byte(strconv.FormatInt(now.Unix(), 10)+"\n"), 0o600)
	return now
}

// scrub checks the whole store slowly, at the lowest priority, and
// repairs what it finds damaged.
func (n *Node) scrub(ctx context.Context) {
	lim := rate.NewLimiter(scrubRate, 2*castore.MaxChunkSize)
	pace := func(ctx context.Context, bytes int) error { return lim.WaitN(ctx, min(bytes, lim.Burst())) }
	var rep *VerifyReport
	var err error
	priority.Run(func() { rep, err = n.verifyStore(ctx, true, pace) })
	switch {
	case err != nil && ctx.Err() == nil:
		n.log.Error("scrubbing the store", "err", err)
	case err == nil:
		left := 0
		for _, d := range rep.Damaged {
			if !d.Repaired {
				left++
			}
		}
		n.log.Info("scrubbed the store", "paths", rep.Paths, "chunks", rep.Chunks, "bytes", rep.Bytes,
			"damaged_objects", len(rep.Problems), "damaged_paths", len(rep.Damaged), "unrepaired_paths", left, "seconds", rep.Seconds)
	}
}
