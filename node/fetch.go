package node

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
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
//     keep only records a trusted key signed (and note whether the tree
//     root is bound to the path by a trusted signature as well);
//  2. get the directory tree (checked as a Merkle walk from the root), the
//     chunk lists of the files the node lacks, and the chunks it lacks,
//     from all providers at once, each chunk checked against its digest as
//     it arrives;
//  3. check each file against its digest, render the NAR and check the
//     signed NarHash and NarSize; only then does the path become valid,
//     and then it is announced.
//
// A peer that sends bad data is penalised (ignored for a while) and its
// share of the work goes to the others; the fetch finishes if any honest
// peer holds the data. Concurrent requests for one path share one fetch.
type fetcher struct {
	n *Node
	p *p2p

	mu       sync.Mutex
	inflight map[string]*fetchCall
	bad      map[peer.ID]time.Time // penalised until
	misses   map[string]time.Time  // hash parts found nowhere, until
}

type fetchCall struct {
	done chan struct{}
	info *pathinfo.Info
	err  error
}

const (
	findTimeout    = 5 * time.Second  // to find providers and their records
	missMemory     = 30 * time.Second // a path found nowhere is not looked for again before
	penalty        = 10 * time.Minute // a peer that lied is ignored this long
	chunkBatch     = 64               // chunks per request
	streamsPerPeer = 4                // requests in flight per peer
	maxSources     = 8                // peers a fetch draws from
)

func newFetcher(n *Node, p *p2p) *fetcher {
	return &fetcher{n: n, p: p, inflight: map[string]*fetchCall{}, bad: map[peer.ID]time.Time{}, misses: map[string]time.Time{}}
}

// Fetch gets the path with this hash part from peers, or reports
// pathinfo.ErrNotFound.
func (f *fetcher) Fetch(ctx context.Context, hash string) (*pathinfo.Info, error) {
	f.mu.Lock()
	if until, ok := f.misses[hash]; ok && time.Now().Before(until) {
		f.mu.Unlock()
		return nil, pathinfo.ErrNotFound
	}
	c := f.inflight[hash]
	if c == nil {
		c = &fetchCall{done: make(chan struct{})}
		f.inflight[hash] = c
		go func() {
			// The fetch outlives the request that started it: others may
			// be waiting, and the path is worth having.
			c.info, c.err = f.fetch(context.WithoutCancel(ctx), hash)
			f.mu.Lock()
			delete(f.inflight, hash)
			if errors.Is(c.err, pathinfo.ErrNotFound) {
				f.misses[hash] = time.Now().Add(missMemory)
			}
			f.mu.Unlock()
			close(c.done)
		}()
	}
	f.mu.Unlock()
	select {
	case <-c.done:
		return c.info, c.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (f *fetcher) penalise(p peer.ID, why error) {
	f.n.log.Warn("dropping a peer that sent bad data", "peer", p, "err", why)
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

func (f *fetcher) fetch(ctx context.Context, hash string) (*pathinfo.Info, error) {
	cands := f.candidates(ctx, hash)
	for attempt := 0; len(cands) > 0 && attempt < 3; attempt++ {
		group := bestGroup(cands)
		info, err := f.fetchTree(ctx, group)
		if err == nil {
			return info, nil
		}
		f.n.log.Warn("fetch failed, trying the other peers", "path", group[0].info.StorePath, "err", err)
		// Drop the peers that were penalised on the way, and the group's
		// record if its tree was a lie.
		var left []candidate
		for _, c := range cands {
			if !f.penalised(c.peer) {
				left = append(left, c)
			}
		}
		cands = left
	}
	return nil, pathinfo.ErrNotFound
}

// candidates finds the path's providers and the trusted records they give.
func (f *fetcher) candidates(ctx context.Context, hash string) []candidate {
	ctx, cancel := context.WithTimeout(ctx, findTimeout)
	defer cancel()
	var cands []candidate
	self := f.p.host.ID()
	for pi := range f.p.dht.FindProviders(ctx, dht.PathKey(f.n.cfg.StoreDir, hash), 2*maxSources) {
		if pi.ID == self || f.penalised(pi.ID) {
			continue
		}
		f.p.host.Peerstore().AddAddrs(pi.ID, pi.Addrs, peerstore.TempAddrTTL)
		rec, err := f.p.client.Record(ctx, pi.ID, hash)
		if err != nil {
			if errors.Is(err, transfer.ErrBadData) {
				f.penalise(pi.ID, err)
			}
			continue
		}
		info, err := rec.Info(f.n.cfg.StoreDir)
		if err == nil && info.HashPart() != hash {
			err = fmt.Errorf("%w: asked for %s, got %s", transfer.ErrBadData, hash, info.StorePath)
		}
		if err != nil {
			f.penalise(pi.ID, err)
			continue
		}
		keys := f.n.shareKeys()
		if !info.TrustedBy(keys) {
			f.n.log.Debug("ignoring a record no trusted key signed", "peer", pi.ID, "path", info.StorePath)
			continue
		}
		fp := transfer.RootFingerprint(info.StorePath, info.NarHash, info.NarSize, info.Root)
		c := candidate{peer: pi.ID, info: info, rootTrusted: rootSigned(fp, rec.RootSigs, keys)}
		if c.rootTrusted {
			info.RootSigs = rec.RootSigs
		}
		cands = append(cands, c)
		if len(cands) >= maxSources {
			break
		}
	}
	return cands
}

func rootSigned(fp string, sigs []string, keys []narinfo.PublicKey) bool {
	for _, s := range sigs {
		for _, k := range keys {
			if k.Verify(fp, s) {
				return true
			}
		}
	}
	return false
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

// fetchTree gets the tree of a path from the peers of a group, checks it,
// and makes the path valid.
func (f *fetcher) fetchTree(ctx context.Context, group []candidate) (*pathinfo.Info, error) {
	info := group[0].info
	for _, c := range group {
		if c.rootTrusted {
			info = c.info // carries the root signatures
		}
	}
	peers := make([]peer.ID, len(group))
	for i, c := range group {
		peers[i] = c.peer
	}
	start := time.Now()
	received := f.p.client.BytesReceived()
	st := f.n.store

	// The tree: directories, and the files the node lacks.
	var dirs [][]byte
	need := map[castore.Digest]uint64{}
	addFile := func(d castore.Digest, size uint64) {
		if size > 0 && !st.HasBlob(d, size) {
			need[d] = size
		}
	}
	switch info.Root.Type {
	case castore.TypeFile:
		addFile(info.Root.Digest, info.Root.Size)
	case castore.TypeDirectory:
		err := f.anyPeer(ctx, peers, func(p peer.ID) error {
			dirs, need = nil, map[castore.Digest]uint64{}
			return f.p.client.Directories(ctx, p, info.Root.Digest, func(d castore.Digest, dir *castore.Directory, raw []byte) error {
				dirs = append(dirs, raw)
				for _, e := range dir.Files {
					addFile(e.Digest, e.Size)
				}
				return nil
			})
		})
		if err != nil {
			return nil, fmt.Errorf("directories: %w", err)
		}
	}

	// Chunk lists of the files that may have several chunks.
	lists := map[castore.Digest][]castore.ChunkRef{}
	var multi []transfer.BlobRef
	for d, size := range need {
		if size <= castore.MinChunkSize { // always one chunk
			lists[d] = []castore.ChunkRef{{Digest: d, Size: uint32(size)}}
		} else {
			multi = append(multi, transfer.BlobRef{Digest: d, Size: size})
		}
	}
	listSource := map[castore.Digest]peer.ID{}
	for i := 0; i < len(multi); i += transfer.MaxBlobsPerRequest {
		batch := multi[i:min(i+transfer.MaxBlobsPerRequest, len(multi))]
		err := f.anyPeer(ctx, peers, func(p peer.ID) error {
			got, err := f.p.client.ChunkLists(ctx, p, batch)
			if err != nil {
				return err
			}
			for j, b := range batch {
				refs := got[j]
				if refs == nil {
					refs = []castore.ChunkRef{{Digest: b.Digest, Size: uint32(b.Size)}}
				}
				lists[b.Digest], listSource[b.Digest] = refs, p
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("chunk lists: %w", err)
		}
	}

	// The chunks the node lacks, from every peer of the group at once.
	var chunks []castore.Digest
	seen := map[castore.Digest]bool{}
	for _, refs := range lists {
		for _, r := range refs {
			if !seen[r.Digest] && !st.HasChunk(r.Digest) {
				seen[r.Digest] = true
				chunks = append(chunks, r.Digest)
			}
		}
	}
	w := st.NewWriter()
	if err := f.download(ctx, peers, chunks, w); err != nil {
		w.Abort()
		return nil, err
	}
	// Verified chunks are worth keeping even if the path fails below.
	if err := w.Commit(); err != nil {
		return nil, err
	}

	// Each file against its digest (the chunk lists came unchecked).
	w = st.NewWriter()
	for d, refs := range lists {
		if len(refs) == 1 {
			continue
		}
		if err := checkBlob(st, d, refs); err != nil {
			if p, ok := listSource[d]; ok {
				f.penalise(p, err)
			}
			w.Abort()
			return nil, err
		}
		w.PutBlobRecord(d, refs)
	}
	for _, raw := range dirs {
		if _, err := w.PutDirectoryBytes(castore.Sum(raw), raw); err != nil {
			w.Abort()
			return nil, err
		}
	}
	if err := w.Commit(); err != nil {
		return nil, err
	}

	// The whole NAR against the signed NarHash and NarSize.
	if err := checkNAR(ctx, st, info); err != nil {
		for _, p := range peers {
			f.penalise(p, err)
		}
		return nil, err
	}
	if err := f.n.index.Put(info); err != nil {
		return nil, err
	}
	f.n.wakeCompressor()
	f.p.share(ctx, info)
	f.n.log.Info("fetched from peers", "path", info.StorePath, "peers", len(peers), "chunks", len(chunks),
		"bytes_received", f.p.client.BytesReceived()-received, "seconds", time.Since(start).Seconds())
	return info, nil
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
// a few requests at a time, taking the next batch when one is done, so
// fast peers take more. A batch that fails goes back to the queue; a peer
// that sends bad data is penalised and stops.
func (f *fetcher) download(ctx context.Context, peers []peer.ID, chunks []castore.Digest, w *castore.Writer) error {
	if len(chunks) == 0 {
		return nil
	}
	var queue [][]castore.Digest
	for i := 0; i < len(chunks); i += chunkBatch {
		queue = append(queue, chunks[i:min(i+chunkBatch, len(chunks))])
	}
	var (
		mu      sync.Mutex
		cond    = sync.NewCond(&mu)
		pending = len(queue) // batches not yet stored
		active  = 0          // workers running
		wmu     sync.Mutex   // the Writer is not safe for concurrent use
		lastErr error
	)
	worker := func(p peer.ID) {
		defer func() {
			mu.Lock()
			active--
			cond.Broadcast()
			mu.Unlock()
		}()
		for {
			mu.Lock()
			for len(queue) == 0 && pending > 0 && ctx.Err() == nil {
				cond.Wait()
			}
			if pending == 0 || ctx.Err() != nil || f.penalised(p) {
				mu.Unlock()
				return
			}
			batch := queue[0]
			queue = queue[1:]
			mu.Unlock()
			err := f.p.client.Chunks(ctx, p, batch, true, func(d castore.Digest, data []byte) error {
				wmu.Lock()
				defer wmu.Unlock()
				return w.PutChunk(d, data)
			})
			mu.Lock()
			if err != nil {
				queue = append(queue, batch) // chunks already stored are skipped as dedup
				lastErr = err
				cond.Broadcast()
				mu.Unlock()
				if errors.Is(err, transfer.ErrBadData) {
					f.penalise(p, err)
				}
				return // this peer is out of this fetch
			}
			pending--
			cond.Broadcast()
			mu.Unlock()
		}
	}
	mu.Lock()
	for _, p := range peers {
		for i := 0; i < streamsPerPeer; i++ {
			active++
			go worker(p)
		}
	}
	for pending > 0 && active > 0 {
		cond.Wait()
	}
	left := pending
	mu.Unlock()
	if left > 0 {
		if lastErr == nil {
			lastErr = ctx.Err()
		}
		return fmt.Errorf("%d chunk batches got from no peer: %w", left, lastErr)
	}
	return nil
}

// checkBlob reads a blob's chunks in order and checks them against its
// digest.
func checkBlob(st *castore.Store, d castore.Digest, refs []castore.ChunkRef) error {
	h := blake3.New()
	var buf []byte
	for _, r := range refs {
		var err error
		if buf, err = st.ReadChunk(r.Digest, buf[:0]); err != nil {
			return err
		}
		h.Write(buf)
	}
	var got castore.Digest
	h.Sum(got[:0])
	if got != d {
		return fmt.Errorf("%w: the chunks listed for blob %s hash to %s", transfer.ErrBadData, d, got)
	}
	return nil
}

// checkNAR renders the path's NAR from the store and checks it against the
// signed NarHash and NarSize.
func checkNAR(ctx context.Context, st *castore.Store, info *pathinfo.Info) error {
	r := st.NewReader()
	defer r.Close()
	h := sha256.New()
	cw := &countingWriter{w: h}
	if err := nar.Render(ctx, struct{ io.Writer }{cw}, info.Root, r); err != nil {
		return err
	}
	var got storepath.NarHash
	h.Sum(got[:0])
	if got != info.NarHash || uint64(cw.n) != info.NarSize {
		return fmt.Errorf("%w: the tree of %s renders to a NAR with hash %s and size %d, not the signed %s and %d",
			transfer.ErrBadData, info.StorePath, got, cw.n, info.NarHash, info.NarSize)
	}
	return nil
}
