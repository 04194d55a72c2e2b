package node

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	mh "github.com/multiformats/go-multihash"
	"github.com/zeebo/blake3"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/dht"
	"github.com/p2pstore/p2pstore/narview/nar"
	"github.com/p2pstore/p2pstore/narview/narinfo"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
	"github.com/p2pstore/p2pstore/node/transfer"
)

// The fetcher gets a path the node lacks from the peers that hold it:
//
//  1. find the path's providers on the DHT and ask them for its record;
//     keep only records a trusted key signed (noting whether the tree's
//     root and chunk lists are bound to the path by a trusted signature
//     too, transfer.RootFingerprint);
//  2. in the background (a job): get the directory tree (checked as a
//     Merkle walk from the root) and the chunk lists of the files the node
//     lacks, then the chunks it lacks, in NAR order, from all providers at
//     once, each checked against its digest as it arrives and committed in
//     batches so that it can be read at once;
//  3. unless the chunk lists match their signed digest (then every byte
//     has been checked on arrival), check each file of several chunks
//     against its digest as its chunks arrive, and, unless a trusted key
//     signed the tree's root, the whole NAR (rendered) against the signed
//     NarHash and NarSize; only then does the path become valid, and then
//     it is announced.
//
// A NAR requested while its job runs is rendered from the job as chunks
// arrive: the HTTP answer streams, it does not wait for the whole path.
// A peer that sends bad data, or nothing for the stall timeout, is
// penalised (ignored for a while) and its share of the work goes to the
// others; a batch a peer holds much longer than batches take is asked of
// another peer too, so a slow or stalled peer does not hold up the rest.
// The fetch finishes if any honest peer holds the data. Concurrent
// requests for one path share one job.
type fetcher struct {
	n *Node
	p *p2p

	mu     sync.Mutex
	jobs   map[string]*job       // running, by hash part
	bad    map[peer.ID]time.Time // penalised until
	misses map[string]time.Time  // hash parts found nowhere, until
}

const (
	findTimeout    = 5 * time.Second        // to find providers and their records
	missMemory     = 30 * time.Second       // a path found nowhere is not looked for again before
	penalty        = 10 * time.Minute       // a peer that lied is ignored this long
	chunkBatch     = 64                     // chunks per request
	firstBatch     = 4                      // chunks in the first request
	streamsPerPeer = 4                      // requests in flight per peer
	maxSources     = 8                      // peers a fetch draws from
	maxAsked       = 64                     // peers asked for a record, at most
	recordAsks     = 16                     // records asked for at once
	gatherGrace    = 100 * time.Millisecond // for more records after the first
	maxAttempts    = 3                      // trees tried per fetch
	commitGather   = 40 * time.Millisecond  // batches a commit waits to gather
	wantedGather   = 5 * time.Millisecond   // the same, when a client's NAR waits for one
	maxCommitGroup = 32                     // batches a commit gathers, unless commits can wait
	maxWaitGroup   = 1024                   // batches commits wait for at most (64k chunks, about 1 GB)
)

func newFetcher(n *Node, p *p2p) *fetcher {
	return &fetcher{n: n, p: p, jobs: map[string]*job{}, bad: map[peer.ID]time.Time{}, misses: map[string]time.Time{}}
}

// Start returns the job fetching the path with this hash part, starting
// one if none runs: once its record is found, the job goes on in the
// background. It reports pathinfo.ErrNotFound when no peer has a trusted
// record of the path.
func (f *fetcher) Start(ctx context.Context, hash string) (*job, error) {
	f.mu.Lock()
	if j := f.jobs[hash]; j != nil {
		f.mu.Unlock()
		select {
		case <-j.started:
			return j, j.startErr
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if until, ok := f.misses[hash]; ok && time.Now().Before(until) {
		f.mu.Unlock()
		return nil, pathinfo.ErrNotFound
	}
	j := newJob(f, hash)
	f.jobs[hash] = j
	f.mu.Unlock()
	// The job outlives the request that started it: others may wait on
	// it, and the path is worth having.
	go j.run(context.WithoutCancel(ctx))
	select {
	case <-j.started:
		return j, j.startErr
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Fetch gets a path and waits until it is valid here. It also returns the
// raw size of the chunks the fetch downloaded (what moved, before
// compression on the wire).
func (f *fetcher) Fetch(ctx context.Context, hash string) (*pathinfo.Info, uint64, error) {
	j, err := f.Start(ctx, hash)
	if err != nil {
		return nil, 0, err
	}
	info, err := j.Wait(ctx)
	return info, j.chunkBytes.Load(), err
}

// running returns the job for a hash part, if one runs.
func (f *fetcher) running(hash string) *job {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.jobs[hash]
}

func (f *fetcher) finished(j *job) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.jobs, j.hash)
	if errors.Is(j.startErr, pathinfo.ErrNotFound) {
		f.misses[j.hash] = time.Now().Add(missMemory)
	}
}

func (f *fetcher) penalise(p peer.ID, why error) {
	msg := "dropping a peer that sent bad data"
	if errors.Is(why, transfer.ErrStalled) {
		msg = "dropping a peer that stalled"
	}
	f.n.log.Warn(msg, "peer", p, "err", why)
	f.mu.Lock()
	f.bad[p] = time.Now().Add(penalty)
	f.mu.Unlock()
	f.p.host.Network().ClosePeer(p)
}

func (f *fetcher) penalised(p peer.ID) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	until, ok := f.bad[p]
	if ok && time.Now().After(until) {
		delete(f.bad, p)
		return false
	}
	return ok
}

// candidate is a peer and the record it gave.
type candidate struct {
	peer        peer.ID
	info        *pathinfo.Info
	rootTrusted bool
}

// candidates finds the path's providers and the trusted records they give.
// Providers come from the peers the node is connected to, asked directly
// (a node that has just joined, or whose announcements still wait for the
// DHT to take them, is found by its neighbours at once, and on a LAN they
// are the likeliest sources anyway), and from the DHT. Records are asked
// for in parallel: the DHT keeps listing providers that have since gone
// (a laptop that left the LAN) until their records expire, and dialing
// them one after the other would spend the whole search on them. Once one
// record is in, the others get a short while to join, so that a fetch
// draws on several peers without waiting for the dead.
func (f *fetcher) candidates(ctx context.Context, hash string) []candidate {
	ctx, cancel := context.WithTimeout(ctx, findTimeout)
	defer cancel()
	var (
		mu    sync.Mutex
		cands []candidate
		asked = map[peer.ID]bool{f.p.host.ID(): true}
		wg    sync.WaitGroup
		sem   = make(chan struct{}, recordAsks)
		first = make(chan struct{}) // closed with the first record
		all   = make(chan struct{}) // closed when every ask is over
	)
	ask := func(p peer.ID) {
		mu.Lock()
		defer mu.Unlock()
		if asked[p] || len(asked) > maxAsked {
			return
		}
		asked[p] = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			case <-ctx.Done():
				return
			}
			c, ok := f.askRecord(ctx, p, hash)
			if !ok {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if cands = append(cands, c); len(cands) == 1 {
				close(first)
			}
			if len(cands) >= maxSources {
				cancel()
			}
		}()
	}
	for _, p := range f.p.host.Network().Peers() {
		ask(p)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for pi := range f.p.dht.FindProviders(ctx, dht.PathKey(f.n.cfg.StoreDir, hash), maxAsked) {
			f.p.host.Peerstore().AddAddrs(pi.ID, pi.Addrs, peerstore.TempAddrTTL)
			ask(pi.ID)
		}
	}()
	go func() { wg.Wait(); close(all) }()
	select {
	case <-all:
	case <-first:
		select {
		case <-all:
		case <-time.After(gatherGrace):
		}
	case <-ctx.Done():
	}
	cancel()
	<-all
	mu.Lock()
	defer mu.Unlock()
	if len(cands) > maxSources {
		cands = cands[:maxSources]
	}
	return cands
}

// askRecord asks one peer for the path's record and keeps it if a trusted
// key signed it.
func (f *fetcher) askRecord(ctx context.Context, p peer.ID, hash string) (candidate, bool) {
	if f.penalised(p) {
		return candidate{}, false
	}
	info, err := f.p.client.Record(ctx, p, hash)
	if err != nil {
		if !errors.Is(err, transfer.ErrNotFound) {
			f.n.log.Debug("asking a peer for a record", "peer", p, "hash", hash, "err", err)
		}
		if errors.Is(err, transfer.ErrBadData) {
			f.penalise(p, err)
		}
		return candidate{}, false
	}
	if err = info.Validate(f.n.cfg.StoreDir); err != nil {
		err = fmt.Errorf("%w: record: %v", transfer.ErrBadData, err)
	} else if info.HashPart() != hash {
		err = fmt.Errorf("%w: asked for %s, got %s", transfer.ErrBadData, hash, info.StorePath)
	}
	if err != nil {
		f.penalise(p, err)
		return candidate{}, false
	}
	keys := f.n.keys.share
	if !info.TrustedBy(keys) {
		f.n.log.Debug("ignoring a record no trusted key signed", "peer", p, "path", info.StorePath)
		return candidate{}, false
	}
	fp := transfer.RootFingerprint(info.StorePath, info.NarHash, info.NarSize, info.Root, info.Lists)
	c := candidate{peer: p, info: info, rootTrusted: narinfo.VerifyAny(fp, info.RootSigs, keys)}
	if !c.rootTrusted {
		info.RootSigs = nil // kept only when they check out
	}
	return c, true
}

// bestGroup picks the candidates that agree on one tree: one whose root a
// trusted key signed if any, else the most common.
func bestGroup(cands []candidate) []candidate {
	type key struct {
		h    storepath.NarHash
		root string
	}
	groups := map[key][]candidate{}
	var best key
	bestScore := -1
	for _, c := range cands {
		k := key{c.info.NarHash, string(c.info.Root.Marshal())}
		groups[k] = append(groups[k], c)
		score := len(groups[k])
		if c.rootTrusted {
			score += 1 << 20
		}
		if score > bestScore {
			best, bestScore = k, score
		}
	}
	return groups[best]
}

// job fetches one path. Readers (NAR requests, the NarHash check) follow
// its progress: the tree is known once dirsReady closes, and each chunk is
// readable from the store once it is in have.
type job struct {
	f    *fetcher
	hash string

	started  chan struct{} // closed once info is set or the job has failed to start
	startErr error
	info     *pathinfo.Info // the record being fetched
	lease    *castore.Lease // holds the tree being fetched from gc

	mu           sync.Mutex
	cond         *sync.Cond
	attempt      int  // bumped when a tree is abandoned for another
	treeReady    bool // dirs and lists are known
	dirs         map[castore.Digest]*castore.Directory
	lists        map[castore.Digest][]castore.ChunkRef // the files of the tree, stored or not
	have         map[castore.Digest]bool               // chunks stored during this job
	wanted       map[castore.Digest]int                // chunks clients' NARs wait for, and how many
	wantedCommit map[castore.Digest]int                // the same, for NARs that read only the store (zstd)
	waiting      chan struct{}                         // a client's NAR began to wait for a chunk
	failed       error                                 // the job gave up on the current tree

	handoff        map[castore.Digest]*handed  // see handoff.go
	narChunks      map[castore.Digest]narChunk // the chunks of the tree's files
	handoffBytes   int                         // capacity of its buffers
	handoffRenders int                         // renders that take from it
	renders        int                         // renders running
	checkReads     bool                        // the content check reads chunks as they are committed
	rendersEnded   time.Time                   // when a client's NAR last ended

	done chan struct{}
	err  error

	chunkBytes atomic.Uint64 // raw bytes of the chunks downloaded
}

func newJob(f *fetcher, hash string) *job {
	j := &job{f: f, hash: hash, started: make(chan struct{}), done: make(chan struct{}),
		wanted: map[castore.Digest]int{}, wantedCommit: map[castore.Digest]int{}, waiting: make(chan struct{}, 1), handoff: map[castore.Digest]*handed{}}
	j.cond = sync.NewCond(&j.mu)
	return j
}

// narChunk is what a job knows of a chunk of its NAR.
type narChunk struct {
	uses     int32 // how often the NAR uses it
	fetching bool  // the job downloads it: the store lacked it
	spent    bool  // the renders have taken it from the handoff that often
}

// Info is the path being fetched.
func (j *job) Info() *pathinfo.Info { return j.info }

// Wait waits until the path is valid here (or the job failed).
func (j *job) Wait(ctx context.Context) (*pathinfo.Info, error) {
	select {
	case <-j.done:
		if j.err != nil {
			return nil, j.err
		}
		return j.info, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (j *job) run(ctx context.Context) {
	f := j.f
	defer f.finished(j)
	defer close(j.done)
	defer func() {
		if j.err != nil {
			j.fail(j.err) // wake the readers
		}
	}()
	cands := f.candidates(ctx, j.hash)
	if len(cands) == 0 {
		j.startErr, j.err = pathinfo.ErrNotFound, pathinfo.ErrNotFound
		close(j.started)
		return
	}
	for attempt := 0; ; attempt++ {
		group := bestGroup(cands)
		info := group[0].info
		for _, c := range group {
			if c.rootTrusted {
				info = c.info // the one carrying the root signatures
			}
		}
		if attempt == 0 {
			j.info = info
			close(j.started)
		} else if info.NarHash != j.info.NarHash {
			// Another tree could only be another NAR: the narinfo already
			// given out would not match it.
			j.err = fmt.Errorf("%s: no peer has the tree of the NAR first announced", j.info.StorePath)
			return
		} else {
			j.reset(info)
		}
		err := j.fetchTree(ctx, group)
		if err == nil {
			return
		}
		j.fail(err)
		f.n.log.Warn("fetch failed", "path", info.StorePath, "err", err)
		var left []candidate
		for _, c := range cands {
			if !f.penalised(c.peer) {
				left = append(left, c)
			}
		}
		cands = left
		if len(cands) == 0 || attempt+1 >= maxAttempts {
			j.err = fmt.Errorf("%s: %w", info.StorePath, err)
			return
		}
	}
}

// reset starts over on another tree of the same NAR.
func (j *job) reset(info *pathinfo.Info) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.info = info
	j.attempt++
	j.treeReady, j.dirs, j.lists, j.narChunks, j.have, j.failed = false, nil, nil, nil, nil, nil
	j.dropHandoff()
	j.cond.Broadcast()
}

func (j *job) fail(err error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.failed = err
	j.cond.Broadcast()
}

// fetchTree gets the tree of the job's path from the peers of a group,
// checks it, and makes the path valid.
func (j *job) fetchTree(ctx context.Context, group []candidate) error {
	f, st, info := j.f, j.f.n.store, j.info
	peers := make([]peer.ID, len(group))
	for i, c := range group {
		peers[i] = c.peer
	}
	start := time.Now()
	received := f.p.client.BytesReceived()

	// The tree, and the chunk lists of the files the node lacks.
	dirs := map[castore.Digest]*castore.Directory{}
	var raws [][]byte
	if info.Root.Type == castore.TypeDirectory {
		err := f.anyPeer(ctx, peers, func(p peer.ID) error {
			dirs, raws = map[castore.Digest]*castore.Directory{}, nil
			return f.p.client.Directories(ctx, p, info.Root.Digest, func(d castore.Digest, dir *castore.Directory, raw []byte) error {
				dirs[d], raws = dir, append(raws, raw)
				return nil
			})
		})
		if err != nil {
			return fmt.Errorf("directories: %w", err)
		}
	}
	files := narOrderFiles(info.Root, dirs)
	// The lease keeps what the tree uses from gc, before the store is
	// asked what it has, until the path is recorded.
	lease := st.NewLease()
	defer lease.Release()
	j.mu.Lock()
	j.lease = lease
	j.mu.Unlock()
	for d := range dirs {
		lease.Hold(d)
	}
	for _, file := range files {
		lease.Hold(file.Digest)
	}
	lists := make(map[castore.Digest][]castore.ChunkRef, len(files))
	var multi []transfer.BlobRef
	_ = st.View(func(v *castore.View) error {
		for _, file := range files {
			if _, ok := lists[file.Digest]; ok || file.Size == 0 {
				continue
			}
			if file.Size <= castore.MinChunkSize { // always one chunk, the file
				lists[file.Digest] = []castore.ChunkRef{{Digest: file.Digest, Size: uint32(file.Size)}}
			} else if refs, err := v.BlobChunks(file.Digest, file.Size); err == nil {
				lists[file.Digest] = refs // the node has this file already
			} else {
				lists[file.Digest] = nil
				multi = append(multi, transfer.BlobRef{Digest: file.Digest, Size: file.Size})
			}
		}
		return nil
	})
	listSource := map[castore.Digest]peer.ID{}
	for i := 0; i < len(multi); i += transfer.MaxBlobsPerRequest {
		batch := multi[i:min(i+transfer.MaxBlobsPerRequest, len(multi))]
		err := f.anyPeer(ctx, peers, func(p peer.ID) error {
			got, err := f.p.client.ChunkLists(ctx, p, batch)
			if err != nil {
				return err
			}
			for k, b := range batch {
				refs := got[k]
				if refs == nil {
					refs = []castore.ChunkRef{{Digest: b.Digest, Size: uint32(b.Size)}}
				}
				lists[b.Digest], listSource[b.Digest] = refs, p
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("chunk lists: %w", err)
		}
	}
	// The chunks to get, in NAR order, so that a streaming reader finds
	// them arriving in the order it needs them.
	var used []castore.Digest // each once, in NAR order
	narChunks := make(map[castore.Digest]narChunk, len(lists))
	for _, file := range files {
		for _, r := range lists[file.Digest] {
			c, seen := narChunks[r.Digest]
			if c.uses++; !seen {
				used = append(used, r.Digest)
			}
			narChunks[r.Digest] = c
		}
	}
	chunks := lease.Missing(used)
	for _, d := range chunks {
		c := narChunks[d]
		c.fetching = true
		narChunks[d] = c
	}
	j.mu.Lock()
	j.dirs, j.lists, j.narChunks, j.have, j.treeReady = dirs, lists, narChunks, map[castore.Digest]bool{}, true
	j.cond.Broadcast()
	j.mu.Unlock()

	// Every chunk and directory is checked against its digest as it
	// arrives. With the tree's root bound to the path by a trusted
	// signature, the tree is the one the signer rendered to the signed
	// NarHash, and if the chunk lists match the signed digest of the
	// lists, every byte is checked already. Otherwise the content check
	// follows the download, reading chunks as they come: each file of
	// several chunks is hashed, to check the lists, which came bare; and
	// without a trusted root, the NAR is rendered and checked against the
	// NarHash too (a tree that renders the right NAR could still name a
	// file by a digest of other content).
	rootTrusted := false
	for _, c := range group {
		rootTrusted = rootTrusted || c.rootTrusted
	}
	listsTrusted := rootTrusted && castore.ListsDigest(lists) == info.Lists
	j.mu.Lock()
	j.checkReads = !listsTrusted || !rootTrusted
	j.mu.Unlock()
	checked := make(chan error, 1)
	go func() {
		var err error
		if !listsTrusted {
			err = j.checkBlobs(ctx, files)
		}
		if err == nil && !rootTrusted {
			err = j.checkNAR(ctx)
		}
		checked <- err
	}()
	fail := func(err error) error {
		j.fail(err)
		<-checked
		return err
	}
	if err := f.download(ctx, peers, chunks, j); err != nil {
		return fail(err)
	}
	w := lease.NewWriter()
	for _, file := range files {
		if refs := lists[file.Digest]; len(refs) >= 2 && !st.HasBlob(file.Digest, file.Size) {
			w.PutBlobRecord(file.Digest, refs)
		}
	}
	for _, raw := range raws {
		if _, err := w.PutDirectoryBytes(castore.Sum(raw), raw); err != nil {
			w.Abort()
			return fail(err)
		}
	}
	if err := <-checked; err != nil {
		w.Abort()
		var bad *badBlob
		switch {
		case errors.As(err, &bad):
			if p, ok := listSource[bad.digest]; ok {
				f.penalise(p, err)
			}
		case errors.Is(err, transfer.ErrBadData):
			for _, p := range peers {
				f.penalise(p, err)
			}
		}
		return err
	}
	// The last commit and the marking of the tree as shared (before the
	// path is valid: peers that get its record can then get its objects)
	// are index writes, at the lowest CPU priority like the committer's:
	// nothing a client reads waits for them.
	var keys []mh.Multihash
	var err error
	atLowPriority(func() {
		if err = w.Commit(); err == nil {
			keys = f.p.shareObjects(ctx, info)
		}
	})
	if err != nil {
		j.fail(err)
		return err
	}
	if err := f.n.putPath(info); err != nil {
		return err
	}
	f.n.wakeCompressor()
	j.mu.Lock()
	rendered := j.renders > 0 || !j.rendersEnded.IsZero()
	j.mu.Unlock()
	if rendered {
		// Announcing costs CPU, a key per chunk on this node and on the
		// peers that store the records, which the clients of this NAR
		// need on a small machine while they receive it and for as long
		// again while they unpack and hash it (a Nix client spends about
		// half a second on that for 190 MB). Announcing a second or two
		// later costs nothing. A render may well have ended before this
		// last commit: the wait counts from its end.
		go func() {
			settled := j.waitRenders(ctx, maxAnnounceWait).Add(announceSettle)
			select { // the clients are unpacking and hashing it
			case <-time.After(time.Until(settled)):
			case <-ctx.Done():
			}
			f.p.announce(info, keys)
		}()
	} else {
		f.p.announce(info, keys)
	}
	f.n.log.Info("fetched from peers", "path", info.StorePath, "peers", len(peers), "chunks", len(chunks), "lists_signed", listsTrusted,
		"bytes_received", f.p.client.BytesReceived()-received, "seconds", time.Since(start).Seconds())
	return nil
}

// narOrderFiles lists the files of a tree in NAR order.
func narOrderFiles(root castore.Node, dirs map[castore.Digest]*castore.Directory) []castore.Node {
	var out []castore.Node
	var walk func(n castore.Node)
	walk = func(n castore.Node) {
		switch n.Type {
		case castore.TypeFile:
			out = append(out, n)
		case castore.TypeDirectory:
			if dir := dirs[n.Digest]; dir != nil {
				dir.EachEntry(func(_ []byte, e castore.Node) error { walk(e); return nil })
			}
		}
	}
	walk(root)
	return out
}

// anyPeer runs try against the peers in turn until one succeeds,
// penalising those that send bad data.
func (f *fetcher) anyPeer(ctx context.Context, peers []peer.ID, try func(peer.ID) error) error {
	err := errors.New("no peer to ask")
	for _, p := range peers {
		if f.penalised(p) {
			continue
		}
		if err = try(p); err == nil {
			return nil
		}
		if errors.Is(err, transfer.ErrBadData) {
			f.penalise(p, err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return err
}

// download gets chunks in batches from all peers at once: each peer runs
// a few requests at a time, taking the next batch (in order) when one is
// done, so fast peers take more. Finished batches are committed together
// by one goroutine (a commit per batch cost more than the rest of the
// fetch), and become readable at once. A batch that fails goes back to the
// front of the queue; a peer that sends bad data or stalls is penalised,
// and a peer that fails stops taking work in this fetch.
//
// A peer with a free slot also asks for a batch another peer holds, and
// whichever answer comes first is kept (two askers at most): before the
// queue, a batch held four times as long as batches of its size take on
// average (at least a second), since a reader of the NAR may be waiting
// for it; once the queue is empty, a batch held twice as long (the
// BitTorrent endgame, less eager: asking twice for batches about to arrive
// costs uplinks more than it saves). A stalled or slow peer then delays
// the fetch by about the time the others take to do its share, not by the
// stall timeout.
func (f *fetcher) download(ctx context.Context, peers []peer.ID, chunks []castore.Digest, j *job) error {
	if len(chunks) == 0 {
		return nil
	}
	parent := ctx
	ctx, cancel := context.WithCancel(ctx) // ends the requests made redundant
	defer cancel()
	type batch struct {
		digests []castore.Digest
		askers  []peer.ID // peers asked for it now
		started time.Time // when the first of them was asked
		done    bool      // received, committed or on its way to be
	}
	// The first batches are small, so that the first chunks of the NAR,
	// which a reader may be waiting for, arrive without waiting behind
	// whole batches; then they double up to chunkBatch.
	var queue []*batch
	for i, size := 0, firstBatch; i < len(chunks); i, size = i+size, min(2*size, chunkBatch) {
		queue = append(queue, &batch{digests: chunks[i:min(i+size, len(chunks))]})
	}
	held := map[*batch]bool{} // batches with askers
	var (
		finished int           // batches received
		perChunk time.Duration // moving average of their times, per chunk (batch sizes vary)
	)
	type received struct {
		w  *castore.Writer
		b  *batch
		at time.Time
	}
	var (
		mu        sync.Mutex
		cond      = sync.NewCond(&mu)
		pending   = len(queue) // batches not yet committed
		active    = 0          // workers running
		inCommit  = 0          // batches received, not yet committed
		lastErr   error
		toCommit  = make(chan received, len(queue))
		committed = make(chan struct{})
	)
	requeue := func(b *batch) { // mu held
		b.done = false
		if len(b.askers) == 0 {
			queue = append([]*batch{b}, queue...)
		}
	}
	// oldestHeld is the oldest batch held by one other peer for times as
	// long as a batch of its size takes on average, and at least floor;
	// nil if there is none; mu held.
	oldestHeld := func(p peer.ID, times int, floor time.Duration) *batch {
		var oldest *batch
		for b := range held {
			age := max(floor, time.Duration(times*len(b.digests))*perChunk)
			if b.done || len(b.askers) != 1 || b.askers[0] == p || time.Since(b.started) < age {
				continue
			}
			if oldest == nil || b.started.Before(oldest.started) {
				oldest = b
			}
		}
		return oldest
	}
	// next is the batch p should ask for, or nil; mu held.
	next := func(p peer.ID) *batch {
		if finished >= 4 {
			if b := oldestHeld(p, 4, time.Second); b != nil {
				return b
			}
		}
		if len(queue) > 0 {
			b := queue[0]
			queue = queue[1:]
			return b
		}
		if finished == 0 {
			return oldestHeld(p, 0, time.Second)
		}
		return oldestHeld(p, 2, 0)
	}
	st := f.n.store
	// canWait reports whether commits can wait for the end of the
	// download: while every NAR rendered from the job takes its chunks
	// from the handoff and no content check reads them from the store,
	// nothing reads what a commit makes visible before the fetch's end.
	canWait := func() bool {
		mu.Lock()
		// All in, or nothing more will come: every worker has given up,
		// and the download ends once what it holds is committed.
		over := inCommit == pending || active == 0 || ctx.Err() != nil
		mu.Unlock()
		if over {
			return false
		}
		j.mu.Lock()
		defer j.mu.Unlock()
		return j.handoffRenders > 0 && !j.checkReads
	}
	go func() { // the committer
		defer close(committed)
		// At the lowest CPU priority, and while a client's NAR streams
		// from the handoff, not until the download ends (or until
		// maxWaitGroup batches wait, whose index entries are held in
		// memory): on a small machine that runs the client too, the
		// commits then fall in the time the client spends unpacking and
		// hashing the NAR, when a core is idle (about 0.1 CPU-seconds of
		// a cold copy of go1.25.0, in pages bbolt rewrites), rather than
		// in the transfer, when the client needs both.
		lowerPriority()
		first := true
		for r := range toCommit {
			// Gather what arrives in the next few milliseconds: each
			// commit rewrites the index pages its random keys touch, so
			// fewer, larger commits cost much less. A commit is made
			// sooner if a client's NAR waits for one of its chunks (the
			// first, or one that did not fit in the handoff): the reader
			// then trails the download by at most the gathering time.
			group := []received{r}
			chunks := map[castore.Digest]bool{}
			add := func(g received) {
				for _, d := range g.b.digests {
					chunks[d] = true
				}
			}
			add(r)
			gather := time.NewTimer(commitGather)
			waited := false
			wait := func() {
				if !waited && j.waitsFor(chunks, first) {
					waited = true
					gather.Reset(time.Until(r.at.Add(wantedGather)))
				}
			}
			wait()
		drain:
			for len(group) < maxCommitGroup || len(group) < maxWaitGroup && canWait() {
				select {
				case more, ok := <-toCommit:
					if !ok {
						break drain
					}
					group = append(group, more)
					add(more)
					wait()
				case <-j.waiting: // a reader began to wait: for one of these?
					wait()
				case <-gather.C:
					// Look again: a reader may have come to need the
					// store without a new token (another render took a
					// chunk it waited for; a render began to take from
					// the handoff after a zstd NAR's token).
					wait()
					if waited || !canWait() {
						break drain
					}
					gather.Reset(commitGather)
				}
			}
			first = false
			gather.Stop()
			ws := make([]*castore.Writer, len(group))
			for i, g := range group {
				ws[i] = g.w
			}
			err := st.CommitAll(ws...)
			mu.Lock()
			inCommit -= len(group)
			if err != nil {
				lastErr = err
				for _, g := range group {
					requeue(g.b)
				}
			} else {
				pending -= len(group)
			}
			cond.Broadcast()
			mu.Unlock()
			if err == nil {
				for _, g := range group {
					j.stored(g.b.digests)
				}
			}
		}
	}()
	worker := func(p peer.ID) {
		defer func() {
			mu.Lock()
			active--
			cond.Broadcast()
			mu.Unlock()
		}()
		for {
			mu.Lock()
			var b *batch
			for pending > 0 && ctx.Err() == nil && !f.penalised(p) {
				if b = next(p); b != nil {
					break
				}
				cond.Wait()
			}
			if b == nil {
				mu.Unlock()
				return
			}
			asked := time.Now()
			if len(b.askers) == 0 {
				b.started = asked
				held[b] = true
			}
			b.askers = append(b.askers, p)
			mu.Unlock()
			w := j.lease.NewWriter()
			err := f.p.client.Chunks(ctx, p, b.digests, true, chunkBuffers{}, func(d castore.Digest, data, frame []byte) error {
				j.chunkBytes.Add(uint64(len(data)))
				var err error
				if frame != nil {
					err = w.PutFramedChunk(d, len(data), frame)
				} else {
					err = w.PutChunk(d, data)
				}
				j.keep(d, data) // last: data is the handoff's from here
				return err
			})
			mu.Lock()
			b.askers = slices.DeleteFunc(b.askers, func(q peer.ID) bool { return q == p })
			if len(b.askers) == 0 {
				delete(held, b)
			}
			if err != nil || b.done {
				w.Abort()
			}
			if err != nil {
				if !b.done {
					requeue(b)
				}
				if ctx.Err() == nil { // not a request made redundant
					lastErr = err
				}
				cond.Broadcast()
				mu.Unlock()
				if errors.Is(err, transfer.ErrBadData) || errors.Is(err, transfer.ErrStalled) {
					f.penalise(p, err)
				}
				return
			}
			if b.done { // another peer was first
				mu.Unlock()
				continue
			}
			b.done = true
			took := time.Since(asked) / time.Duration(len(b.digests))
			if finished++; finished == 1 {
				perChunk = took
			} else {
				perChunk = (4*perChunk + took) / 5
			}
			inCommit++
			cond.Broadcast()
			mu.Unlock()
			toCommit <- received{w, b, time.Now()}
		}
	}
	// Workers waiting for work look again when ctx ends, and every tenth
	// of a second, as held batches grow old enough to ask for again.
	wake := func() { mu.Lock(); cond.Broadcast(); mu.Unlock() }
	stop := context.AfterFunc(ctx, wake)
	defer stop()
	go func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				wake()
			case <-ctx.Done():
				return
			}
		}
	}()
	mu.Lock()
	for _, p := range peers {
		for i := 0; i < streamsPerPeer; i++ {
			active++
			go worker(p)
		}
	}
	for pending > 0 && (active > 0 || inCommit > 0) {
		cond.Wait()
	}
	left := pending
	mu.Unlock()
	cancel() // requests still out are for batches already here
	mu.Lock()
	for active > 0 {
		cond.Wait()
	}
	mu.Unlock()
	close(toCommit)
	<-committed
	if left > 0 {
		if lastErr == nil {
			lastErr = parent.Err()
		}
		if lastErr == nil {
			lastErr = errors.New("every peer was dropped")
		}
		return fmt.Errorf("%d chunk batches got from no peer: %w", left, lastErr)
	}
	return nil
}

// waitsFor reports whether a client's NAR waits for one of the chunks,
// and so for their commit: a NAR that reads only the store (zstd) waits
// for any, one that takes from the handoff for one it cannot take there
// (the first of the NAR, or one that did not fit). With first false, only
// when renders take from the handoff: a reader of the store alone then
// trails the download by a commit once its first is made, and hurrying
// each commit for it would only make them smaller.
func (j *job) waitsFor(chunks map[castore.Digest]bool, first bool) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	if !first && j.handoffRenders == 0 {
		return false
	}
	for d := range j.wantedCommit {
		if chunks[d] {
			return true
		}
	}
	for d := range j.wanted {
		if chunks[d] && j.handoff[d] == nil {
			return true
		}
	}
	return false
}

// A fetched path's announcement waits for the NARs being rendered from it,
// for at most maxAnnounceWait, then for announceSettle more.
const (
	maxAnnounceWait = 30 * time.Second
	announceSettle  = time.Second
)

// waitRenders waits until no NAR of the job is being rendered, for at
// most max, and returns when a client's NAR last ended.
func (j *job) waitRenders(ctx context.Context, max time.Duration) time.Time {
	ctx, cancel := context.WithTimeout(ctx, max)
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		j.mu.Lock()
		j.cond.Broadcast()
		j.mu.Unlock()
	})
	defer stop()
	j.mu.Lock()
	defer j.mu.Unlock()
	for j.renders > 0 && ctx.Err() == nil {
		j.cond.Wait()
	}
	if j.renders > 0 {
		return time.Now()
	}
	return j.rendersEnded
}

// stored marks chunks as readable.
func (j *job) stored(batch []castore.Digest) {
	j.mu.Lock()
	for _, d := range batch {
		j.have[d] = true
	}
	j.cond.Broadcast()
	j.mu.Unlock()
}

// errRestarted ends a reader whose job abandoned its tree for another.
var errRestarted = errors.New("the fetch started over from other peers")

// waitTree waits until the tree is known.
func (j *job) waitTree(ctx context.Context) (attempt int, err error) {
	stop := context.AfterFunc(ctx, func() { j.mu.Lock(); j.cond.Broadcast(); j.mu.Unlock() })
	defer stop()
	j.mu.Lock()
	defer j.mu.Unlock()
	for !j.treeReady && j.failed == nil && ctx.Err() == nil {
		j.cond.Wait()
	}
	if j.failed != nil {
		return 0, j.failed
	}
	return j.attempt, ctx.Err()
}

// waitChunks waits until the chunks are readable from the store. A client
// waiting (urgent) has the commit of its chunks hurried.
func (j *job) waitChunks(ctx context.Context, attempt int, refs []castore.ChunkRef, urgent bool) error {
	stop := context.AfterFunc(ctx, func() { j.mu.Lock(); j.cond.Broadcast(); j.mu.Unlock() })
	defer stop()
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, r := range refs {
		if err := j.waitChunk(ctx, attempt, r.Digest, urgent); err != nil {
			return err
		}
	}
	return nil
}

// waitReady waits until the first of refs can be written: committed, or in
// the handoff. It returns how many refs from the first are committed (0
// if the first is only in the handoff).
func (j *job) waitReady(ctx context.Context, attempt int, refs []castore.ChunkRef, urgent bool) (int, error) {
	stop := context.AfterFunc(ctx, func() { j.mu.Lock(); j.cond.Broadcast(); j.mu.Unlock() })
	defer stop()
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.waitFor(ctx, attempt, refs[0].Digest, urgent, true); err != nil {
		return 0, err
	}
	n := 0
	for n < len(refs) && j.committed(refs[n].Digest) {
		n++
	}
	return n, nil
}

// committed reports whether a chunk is readable from the store; j.mu held.
// A chunk the job downloads is, once the job has committed it (another
// job may commit it sooner; the index is not asked for each such chunk).
func (j *job) committed(d castore.Digest) bool {
	if j.have == nil { // the job is starting over
		return false
	}
	if !j.have[d] && !j.narChunks[d].fetching && j.f.n.store.HasChunk(d) {
		j.have[d] = true // stored before the job
	}
	return j.have[d]
}

// waitChunk waits for one chunk to be committed; j.mu held.
func (j *job) waitChunk(ctx context.Context, attempt int, d castore.Digest, urgent bool) error {
	return j.waitFor(ctx, attempt, d, urgent, false)
}

// waitFor waits for one chunk to be committed, or also to be in the
// handoff; j.mu held.
func (j *job) waitFor(ctx context.Context, attempt int, d castore.Digest, urgent, handoff bool) error {
	wanted, waiters := false, j.wanted
	if !handoff {
		waiters = j.wantedCommit
	}
	defer func() {
		if wanted {
			if waiters[d]--; waiters[d] == 0 {
				delete(waiters, d)
			}
		}
	}()
	for {
		if j.attempt != attempt {
			return errRestarted
		}
		if j.failed != nil {
			return j.failed
		}
		if handoff && j.handoff[d] != nil || j.committed(d) {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if urgent && !wanted {
			wanted = true
			waiters[d]++
			select {
			case j.waiting <- struct{}{}: // tell the committer
			default:
			}
		}
		j.cond.Wait()
	}
}

// source renders the job's NAR as it arrives: a nar.Source.
type jobSource struct {
	j       *job
	r       *castore.Reader
	attempt int
	urgent  bool // a client waits for this NAR
	handoff bool // it takes chunks from the handoff (it wants bytes, not frames)
}

func (s *jobSource) Directory(ctx context.Context, d castore.Digest) (*castore.Directory, error) {
	s.j.mu.Lock()
	dir := s.j.dirs[d]
	s.j.mu.Unlock()
	if dir == nil {
		return nil, fmt.Errorf("directory %s is not part of the tree", d)
	}
	return dir, nil
}

func (s *jobSource) WriteBlob(ctx context.Context, w io.Writer, d castore.Digest, size uint64) error {
	if size == 0 {
		return nil
	}
	s.j.mu.Lock()
	refs, ok := s.j.lists[d]
	s.j.mu.Unlock()
	if !ok {
		return fmt.Errorf("file %s is not part of the tree", d)
	}
	if !s.handoff {
		if err := s.j.waitChunks(ctx, s.attempt, refs, s.urgent); err != nil {
			return err
		}
		return s.r.WriteChunks(ctx, w, refs)
	}
	// A chunk in the handoff goes out before it is committed; committed
	// chunks go out in runs, as sendfile can join them.
	for len(refs) > 0 {
		n, err := s.j.waitReady(ctx, s.attempt, refs, s.urgent)
		if err != nil {
			return err
		}
		if n > 0 {
			if err := s.r.WriteChunks(ctx, w, refs[:n]); err != nil {
				return err
			}
			refs = refs[n:]
			continue
		}
		err = s.r.WriteChunks(ctx, w, refs[:1])
		if errors.Is(err, castore.ErrNotFound) {
			// Another render took it from the handoff: from the store,
			// then, once committed. Nothing of it was written.
			if err = s.j.waitChunks(ctx, s.attempt, refs[:1], s.urgent); err == nil {
				err = s.r.WriteChunks(ctx, w, refs[:1])
			}
		}
		if err != nil {
			return err
		}
		refs = refs[1:]
	}
	return nil
}

// render writes the job's NAR, or the part asked, to a client as its
// chunks arrive.
func (j *job) render(ctx context.Context, w io.Writer, part narPart) error {
	return j.renderNAR(ctx, w, part, true)
}

func (j *job) renderNAR(ctx context.Context, w io.Writer, part narPart, urgent bool) error {
	usesHandoff := part.compression != nar.CompressionZstd // a zstd NAR splices stored frames
	j.mu.Lock()
	j.renders++
	if usesHandoff {
		j.handoffRenders++
	}
	j.mu.Unlock()
	defer func() {
		j.mu.Lock()
		if usesHandoff {
			if j.handoffRenders--; j.handoffRenders == 0 {
				j.dropHandoff()
			}
		}
		if urgent {
			j.rendersEnded = time.Now()
		}
		if j.renders--; j.renders == 0 {
			j.cond.Broadcast() // for waitRenders
		}
		j.mu.Unlock()
	}()
	attempt, err := j.waitTree(ctx)
	if err != nil {
		return err
	}
	r := j.f.n.store.NewReader()
	defer r.Close()
	var taken *handed // the Reader is done with it at its next take
	r.UseDecoded(func(d castore.Digest) []byte {
		j.release(taken)
		if taken = j.take(d); taken == nil {
			return nil
		}
		return taken.buf
	})
	defer func() { j.release(taken) }()
	src := &jobSource{j: j, r: r, attempt: attempt, urgent: urgent, handoff: usesHandoff}
	return renderNAR(ctx, r, src, j.info.Root, part, w)
}

// checkNAR renders the NAR as the chunks arrive and checks it against the
// signed NarHash and NarSize.
func (j *job) checkNAR(ctx context.Context) error {
	h := sha256.New()
	cw := &countingWriter{w: h}
	err := j.renderNAR(ctx, struct{ io.Writer }{cw}, narPart{compression: nar.CompressionNone}, false)
	if err != nil {
		return err
	}
	var got storepath.NarHash
	h.Sum(got[:0])
	if got != j.info.NarHash || uint64(cw.n) != j.info.NarSize {
		return fmt.Errorf("%w: the tree of %s renders to a NAR with hash %s and size %d, not the signed %s and %d",
			transfer.ErrBadData, j.info.StorePath, got, cw.n, j.info.NarHash, j.info.NarSize)
	}
	return nil
}

// checkBlobs checks each file of several chunks the node did not hold
// against its digest, in NAR order, as its chunks arrive.
func (j *job) checkBlobs(ctx context.Context, files []castore.Node) error {
	st := j.f.n.store
	j.mu.Lock()
	attempt, lists := j.attempt, j.lists
	j.mu.Unlock()
	checked := map[castore.Digest]bool{}
	// The chunks were checked as they arrived; the blob's digest covers
	// their bytes again, so they are read without a second check.
	r := st.NewReader()
	defer r.Close()
	h := blake3.New()
	for _, file := range files {
		refs := lists[file.Digest]
		if len(refs) < 2 || checked[file.Digest] || st.HasBlob(file.Digest, file.Size) {
			continue
		}
		checked[file.Digest] = true
		if err := j.waitChunks(ctx, attempt, refs, false); err != nil {
			return err
		}
		h.Reset()
		if err := r.WriteChunks(ctx, h, refs); err != nil {
			return err
		}
		var got castore.Digest
		h.Sum(got[:0])
		if got != file.Digest {
			return &badBlob{digest: file.Digest, got: got}
		}
	}
	return nil
}

// badBlob is a chunk list that does not add up to its blob.
type badBlob struct{ digest, got castore.Digest }

func (b *badBlob) Error() string {
	return fmt.Sprintf("the chunks listed for blob %s hash to %s", b.digest, b.got)
}

func (b *badBlob) Unwrap() error { return transfer.ErrBadData }
