package fetch

import (
	"context"
	"errors"
	"fmt"
	"path"
	"sync"
	"time"

	"github.com/p2pstore/p2pstore/narview/narinfo"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
	"github.com/p2pstore/p2pstore/node/transfer"
)

const (
	findTimeout = 5 * time.Second        // to find sources and their records
	maxSources  = 8                      // sources a fetch draws from
	maxAsked    = 64                     // sources asked for a record, at most
	recordAsks  = 16                     // records asked for at once
	gatherGrace = 100 * time.Millisecond // for more records after the first
)

// candidate is a source and the trusted record it gave.
type candidate struct {
	src         Source
	info        *pathinfo.Info
	rootTrusted bool // a trusted key bound the tree's root and chunk lists to the path
}

// candidates finds the path's sources and the trusted records they give.
// Records are asked for in parallel: the DHT keeps listing providers that
// have since gone (a laptop that left the LAN) until their records
// expire, and dialing them one after the other would spend the whole
// search on them. Once one record is in, the others get a short while to
// join, so that a fetch draws on several sources without waiting for the
// dead.
func (f *Fetcher) candidates(ctx context.Context, hash string) []candidate {
	ctx, cancel := context.WithTimeout(ctx, findTimeout)
	defer cancel()
	var (
		mu    sync.Mutex
		cands []candidate
		asked = map[string]bool{}
		wg    sync.WaitGroup
		sem   = make(chan struct{}, recordAsks)
		first = make(chan struct{}) // closed with the first record
		all   = make(chan struct{}) // closed when every ask is over
	)
	ask := func(src Source) {
		mu.Lock()
		defer mu.Unlock()
		if asked[src.ID()] || len(asked) >= maxAsked {
			return
		}
		asked[src.ID()] = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			case <-ctx.Done():
				return
			}
			c, ok := f.askRecord(ctx, src, hash)
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
	wg.Add(1)
	go func() {
		defer wg.Done()
		for src := range f.finder.Sources(ctx, hash) {
			ask(src)
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

// askRecord asks one source for the path's record and keeps it if a
// trusted key signed it.
func (f *Fetcher) askRecord(ctx context.Context, src Source, hash string) (candidate, bool) {
	if f.penalised(src) {
		return candidate{}, false
	}
	info, err := src.Record(ctx, hash)
	isGuix := err == nil && f.isGuix(info)
	if err == nil {
		storeDir := f.cfg.StoreDir
		if isGuix {
			storeDir = f.cfg.GuixStoreDir
		}
		if err = info.Validate(storeDir); err != nil {
			err = fmt.Errorf("%w: record: %v", transfer.ErrBadData, err)
		} else if info.HashPart() != hash {
			err = fmt.Errorf("%w: asked for %s, got %s", transfer.ErrBadData, hash, info.StorePath)
		}
	}
	if err != nil {
		if !errors.Is(err, transfer.ErrNotFound) {
			f.cfg.Log.Debug("asking a source for a record", "source", src.ID(), "hash", hash, "err", err)
		}
		f.penaliseFor(src, err)
		return candidate{}, false
	}
	if isGuix {
		return f.guixCandidate(src, info)
	}
	info.DropBadSigs(f.cfg.Keys) // as Nix: a bad signature beside a good one is no reason to refuse
	if !info.TrustedBy(f.cfg.Keys) {
		f.cfg.Log.Debug("ignoring a record no trusted key signed", "source", src.ID(), "path", info.StorePath)
		return candidate{}, false
	}
	fp := transfer.RootFingerprint(info.StorePath, info.NarHash, info.NarSize, info.Root, info.Lists)
	c := candidate{src: src, info: info, rootTrusted: narinfo.VerifyAny(fp, info.RootSigs, f.cfg.Keys)}
	if !c.rootTrusted {
		info.RootSigs = nil // kept only when they check out
	}
	return c, true
}

// isGuix reports whether a record is of a path of the Guix store.
func (f *Fetcher) isGuix(info *pathinfo.Info) bool {
	return f.cfg.GuixStoreDir != "" && path.Dir(info.StorePath) == f.cfg.GuixStoreDir
}

// guixCandidate keeps a Guix path's record when a trusted Guix key signed
// its Guix narinfo. Its tree is checked against that narinfo's NarHash:
// the root signatures are made with Nix keys, which Guix paths do not
// answer to.
func (f *Fetcher) guixCandidate(src Source, info *pathinfo.Info) (candidate, bool) {
	info.Sigs, info.RootSigs = nil, nil
	if f.cfg.GuixTrusted == nil {
		return candidate{}, false
	}
	if err := f.cfg.GuixTrusted(info); err != nil {
		f.cfg.Log.Debug("ignoring a Guix record no trusted Guix key signed", "source", src.ID(), "path", info.StorePath, "err", err)
		return candidate{}, false
	}
	return candidate{src: src, info: info}, true
}

// choose picks the group of candidates to fetch from (bestGroup) and the
// record to fetch: the one carrying the root signatures, if any does.
func choose(cands []candidate) ([]candidate, *pathinfo.Info) {
	group := bestGroup(cands)
	info := group[0].info
	for _, c := range group {
		if c.rootTrusted {
			info = c.info
		}
	}
	return group, info
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
