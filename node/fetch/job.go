package fetch

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/internal/priority"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/node/transfer"
)

const maxAttempts = 3 // trees tried per fetch

// Job fetches one path. Readers (clients' NARs, the NarHash check)
// follow its progress: the tree is known once treeReady is set, and each
// chunk is readable from the store once it is in have (render.go).
type Job struct {
	f    *Fetcher
	hash string

	started  chan struct{} // closed once info is set or the job has failed to start
	startErr error
	found    []candidate // the sources Find found (Begin); nil: the job finds them

	mu        sync.Mutex
	cond      *sync.Cond
	info      *pathinfo.Info // the record being fetched
	attempt   int            // bumped when a tree is abandoned for another
	treeReady bool           // dirs and lists are known
	dirs      map[castore.Digest]*castore.Directory
	lists     map[castore.Digest][]castore.ChunkRef // the files of the tree, stored or not
	narChunks map[castore.Digest]narChunk           // the chunks of the tree's files
	have      map[castore.Digest]bool               // chunks committed during this job
	failed    error                                 // the job gave up on the current tree

	// Readers waiting for chunks, so that their commit is hurried
	// (committer.go).
	wanted       map[castore.Digest]int // chunks clients' NARs wait for, and how many
	wantedCommit map[castore.Digest]int // the same, for NARs that read only the store (zstd)
	waiting      chan struct{}          // a client's NAR began to wait for a chunk
	checkReads   bool                   // the content check reads chunks as they are committed

	handoff        map[castore.Digest]*handed // see handoff.go
	handoffBytes   int                        // capacity of its buffers
	handoffRenders int                        // renders that take from it
	renders        int                        // renders running
	rendersEnded   time.Time                  // when a client's NAR last ended

	done chan struct{}
	err  error

	chunkBytes  atomic.Uint64 // raw bytes of the chunks downloaded
	wireBytes   atomic.Uint64 // the bytes they came in (frames)
	begun       time.Time
	bySource    []SourceBytes // what each source sent (j.mu)
	listsSigned bool          // of the tree fetched (j.mu)
}

func newJob(f *Fetcher, hash string) *Job {
	j := &Job{f: f, hash: hash, begun: time.Now(), started: make(chan struct{}), done: make(chan struct{}),
		wanted: map[castore.Digest]int{}, wantedCommit: map[castore.Digest]int{}, waiting: make(chan struct{}, 1),
		handoff: map[castore.Digest]*handed{}}
	j.cond = sync.NewCond(&j.mu)
	return j
}

// waitStarted waits until the job has its record, or has failed to find
// one.
func (j *Job) waitStarted(ctx context.Context) error {
	select {
	case <-j.started:
		return j.startErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Started waits until the job has its record and returns it;
// pathinfo.ErrNotFound when no source had a trusted one.
func (j *Job) Started(ctx context.Context) (*pathinfo.Info, error) {
	if err := j.waitStarted(ctx); err != nil {
		return nil, err
	}
	return j.Info(), nil
}

// Info is the path being fetched.
func (j *Job) Info() *pathinfo.Info {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.info
}

// ChunkBytes is the raw size of the chunks the job has downloaded.
func (j *Job) ChunkBytes() uint64 { return j.chunkBytes.Load() }

// Wait waits until the path is valid here (or the job failed).
func (j *Job) Wait(ctx context.Context) (*pathinfo.Info, error) {
	select {
	case <-j.done:
		if j.err != nil {
			return nil, j.err
		}
		return j.Info(), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (j *Job) run(ctx context.Context) {
	f := j.f
	defer f.finished(j)
	defer close(j.done)
	defer func() {
		if j.err != nil {
			j.fail(j.err) // wake the readers
		}
		if info := j.Info(); info != nil && f.cfg.Done != nil {
			f.cfg.Done(j.report(info))
		}
	}()
	cands, begun := j.found, j.found != nil // begun: Begin gave out the record
	j.found = nil
	if !begun {
		cands = f.candidates(ctx, j.hash)
	}
	if len(cands) == 0 {
		j.startErr, j.err = pathinfo.ErrNotFound, pathinfo.ErrNotFound
		close(j.started)
		return
	}
	for attempt := 0; ; attempt++ {
		group, info := choose(cands)
		if attempt == 0 {
			if !begun { // else Begin did this
				j.mu.Lock()
				j.info = info
				j.mu.Unlock()
				close(j.started)
			}
		} else if first := j.Info(); info.NarHash != first.NarHash {
			// Another tree could only be another NAR: the narinfo already
			// given out would not match it.
			j.err = fmt.Errorf("%s: no source has the tree of the NAR first announced", first.StorePath)
			return
		} else {
			j.reset(info)
		}
		err := j.fetchTree(ctx, group)
		if err == nil {
			return
		}
		j.fail(err)
		f.cfg.Log.Warn("fetch failed", "path", info.StorePath, "err", err)
		var left []candidate
		for _, c := range cands {
			if !f.penalised(c.src) {
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

// sent counts bytes a source sent.
func (j *Job) sent(src Source, n uint64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	id := src.ID()
	for i := range j.bySource {
		if j.bySource[i].ID == id {
			j.bySource[i].Bytes += n
			return
		}
	}
	j.bySource = append(j.bySource, SourceBytes{id, n})
}

func (j *Job) report(info *pathinfo.Info) Report {
	j.mu.Lock()
	defer j.mu.Unlock()
	return Report{Info: info, Err: j.err, Sources: slices.Clone(j.bySource), ChunkBytes: j.chunkBytes.Load(),
		WireBytes: j.wireBytes.Load(), Duration: time.Since(j.begun), ListsSigned: j.listsSigned}
}

// reset starts over on another tree of the same NAR.
func (j *Job) reset(info *pathinfo.Info) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.info = info
	j.attempt++
	j.treeReady, j.dirs, j.lists, j.narChunks, j.have, j.failed = false, nil, nil, nil, nil, nil
	j.dropHandoff()
	j.cond.Broadcast()
}

// fail gives up on the current tree and wakes its readers.
func (j *Job) fail(err error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.failed = err
	j.cond.Broadcast()
}

// fetchTree gets the tree of the job's path from the sources of a group,
// checks it, and makes the path valid.
func (j *Job) fetchTree(ctx context.Context, group []candidate) error {
	f, info := j.f, j.Info()
	sources := make([]Source, len(group))
	rootTrusted := false
	for i, c := range group {
		sources[i] = c.src
		rootTrusted = rootTrusted || c.rootTrusted
	}
	start := time.Now()
	wireBefore := j.wireBytes.Load()

	// The lease keeps what the tree uses from gc, before the store is
	// asked what it has, until the path is recorded.
	lease := f.store.NewLease()
	defer lease.Release()
	t, err := f.getTree(ctx, sources, info, lease)
	if err != nil {
		return err
	}
	narChunks, missing := t.plan(lease)

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
	listsTrusted := rootTrusted && castore.ListsDigest(t.lists) == info.Lists
	j.mu.Lock()
	j.dirs, j.lists, j.narChunks, j.have, j.treeReady = t.dirs, t.lists, narChunks, map[castore.Digest]bool{}, true
	j.checkReads = !listsTrusted || !rootTrusted
	j.cond.Broadcast()
	j.mu.Unlock()
	checked := make(chan error, 1)
	go func() {
		var err error
		if !listsTrusted {
			err = j.checkBlobs(ctx, t.files)
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
	if f.cfg.Reserve != nil {
		release := f.cfg.Reserve(ctx, t.chunkBytes(missing))
		defer release()
	}
	if err := newScheduler(j, lease, sources, missing).run(ctx); err != nil {
		return fail(err)
	}
	w := lease.NewWriter()
	for _, file := range t.files {
		if refs := t.lists[file.Digest]; len(refs) >= 2 && !f.store.HasBlob(file.Digest, file.Size) {
			w.PutBlobRecord(file.Digest, refs)
		}
	}
	for _, raw := range t.raws {
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
			if src, ok := t.listSource[bad.digest]; ok {
				f.penalise(src, err)
			}
		case errors.Is(err, transfer.ErrBadData):
			for _, src := range sources {
				f.penalise(src, err)
			}
		}
		return err
	}
	// The last commit and the sharing of the tree (before the path is
	// valid: peers that get its record can then get its objects) are
	// index writes, at the lowest CPU priority like the committer's:
	// nothing a client reads waits for them.
	var announce func()
	priority.Run(func() {
		if err = f.store.CommitAll(w); err == nil {
			announce = f.pub.Share(ctx, info)
		}
	})
	if err != nil {
		j.fail(err)
		return err
	}
	if err := f.index.Put(info); err != nil {
		return err
	}
	j.mu.Lock()
	j.listsSigned = listsTrusted
	j.mu.Unlock()
	j.announceAfterRenders(ctx, announce)
	// The node logs the fetch at info level (Config.Done).
	f.cfg.Log.Debug("fetched a tree", "path", info.StorePath, "sources", len(sources), "chunks", len(missing), "lists_signed", listsTrusted,
		"bytes_received", j.wireBytes.Load()-wireBefore, "seconds", time.Since(start).Seconds())
	return nil
}

// A fetched path's announcement waits for the NARs being rendered from it,
// for at most maxAnnounceWait, then for announceSettle more.
const (
	maxAnnounceWait = 30 * time.Second
	announceSettle  = time.Second
)

// announceAfterRenders announces the path; if clients' NARs were rendered
// from the job, only once they are out and a second more. Announcing
// costs CPU, a key per chunk on this node and on the peers that store the
// records, which the clients of this NAR need on a small machine while
// they receive it and for as long again while they unpack and hash it (a
// Nix client spends about half a second on that for 190 MB). Announcing a
// second or two later costs nothing. A render may well have ended before
// the last commit: the wait counts from its end.
func (j *Job) announceAfterRenders(ctx context.Context, announce func()) {
	j.mu.Lock()
	rendered := j.renders > 0 || !j.rendersEnded.IsZero()
	j.mu.Unlock()
	if !rendered {
		announce()
		return
	}
	go func() {
		settled := j.waitRenders(ctx, maxAnnounceWait).Add(announceSettle)
		select { // the clients are unpacking and hashing it
		case <-time.After(time.Until(settled)):
		case <-ctx.Done():
		}
		announce()
	}()
}

// waitRenders waits until no NAR of the job is being rendered, for at
// most max, and returns when a client's NAR last ended.
func (j *Job) waitRenders(ctx context.Context, max time.Duration) time.Time {
	ctx, cancel := context.WithTimeout(ctx, max)
	defer cancel()
	defer j.wakeOnDone(ctx)()
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

// wakeOnDone wakes the job's waiters when ctx ends, so that a wait on
// j.cond notices; call the returned function when the wait is over.
func (j *Job) wakeOnDone(ctx context.Context) (stop func() bool) {
	return context.AfterFunc(ctx, func() {
		j.mu.Lock()
		j.cond.Broadcast()
		j.mu.Unlock()
	})
}

// stored marks chunks as committed.
func (j *Job) stored(batch []castore.Digest) {
	j.mu.Lock()
	for _, d := range batch {
		j.have[d] = true
	}
	j.cond.Broadcast()
	j.mu.Unlock()
}
