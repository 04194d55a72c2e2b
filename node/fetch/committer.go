package fetch

import (
	"context"
	"time"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/internal/priority"
)

// The committer makes the batches a download receives durable and
// readable, many at once: each commit rewrites the index pages its random
// keys touch, so fewer, larger commits cost much less. It runs at the
// lowest CPU priority (priority.go), and its commits wait:
//
//   - for what arrives in the next commitGather, and up to maxCommitGroup
//     batches;
//   - while every NAR rendered from the job takes its chunks from the
//     handoff and no content check reads the store (canWait), for the end
//     of the download (or maxWaitGroup batches, whose index entries are
//     held in memory): on a small machine that runs the client too, the
//     commits then fall in the time the client spends unpacking and
//     hashing the NAR, when a core is idle, rather than in the transfer,
//     when the client needs both;
//   - but not when a client's NAR waits for one of their chunks (the
//     first of a NAR, one that did not fit in the handoff, any for a zstd
//     NAR, which reads only the store): that commit is made within
//     wantedGather of its batch's arrival.

const (
	commitGather   = 40 * time.Millisecond // batches a commit waits to gather
	wantedGather   = 5 * time.Millisecond  // the same, when a client's NAR waits for one
	maxCommitGroup = 32                    // batches a commit gathers, unless commits can wait
	maxWaitGroup   = 1024                  // batches commits wait for at most (64k chunks, about 1 GB)
)

type committer struct {
	s   *scheduler
	ctx context.Context
}

// run commits what the scheduler receives until it closes toCommit.
func (c *committer) run() {
	priority.Lower()
	first := true
	for r := range c.s.toCommit {
		group := c.gather(r, first)
		first = false
		ws := make([]*castore.Writer, len(group))
		for i, g := range group {
			ws[i] = g.w
		}
		c.s.committed(group, c.s.j.f.store.CommitAll(ws...))
	}
}

// gather collects the batches to commit with r, by the rules above.
func (c *committer) gather(r received, first bool) []received {
	group := []received{r}
	chunks := map[castore.Digest]bool{}
	add := func(g received) {
		for _, d := range g.b.digests {
			chunks[d] = true
		}
	}
	add(r)
	timer := time.NewTimer(commitGather)
	defer timer.Stop()
	hurried := false
	hurry := func() {
		if !hurried && c.s.j.waitsFor(chunks, first) {
			hurried = true
			timer.Reset(time.Until(r.at.Add(wantedGather)))
		}
	}
	hurry()
	for len(group) < maxCommitGroup || len(group) < maxWaitGroup && c.canWait() {
		select {
		case more, ok := <-c.s.toCommit:
			if !ok {
				return group
			}
			group = append(group, more)
			add(more)
			hurry()
		case <-c.s.j.waiting: // a reader began to wait: for one of these?
			hurry()
		case <-timer.C:
			// Look again: a reader may have come to need the store
			// without a new token (another render took a chunk it waited
			// for; a render began to take from the handoff after a zstd
			// NAR's token).
			hurry()
			if hurried || !c.canWait() {
				return group
			}
			timer.Reset(commitGather)
		}
	}
	return group
}

// canWait reports whether commits can wait for the end of the download:
// while every NAR rendered from the job takes its chunks from the handoff
// and no content check reads them from the store, nothing reads what a
// commit makes visible before the fetch's end. Once nothing more will
// come (all in, or every worker gone), commits wait no more.
func (c *committer) canWait() bool {
	if c.s.over(c.ctx) {
		return false
	}
	j := c.s.j
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.handoffRenders > 0 && !j.checkReads
}

// waitsFor reports whether a client's NAR waits for one of the chunks,
// and so for their commit: a NAR that reads only the store (zstd) waits
// for any, one that takes from the handoff for one it cannot take there
// (the first of the NAR, or one that did not fit). With first false, only
// when renders take from the handoff: a reader of the store alone then
// trails the download by a commit once its first is made, and hurrying
// each commit for it would only make them smaller.
func (j *Job) waitsFor(chunks map[castore.Digest]bool, first bool) bool {
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
