package fetch

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/p2pstore/p2pstore/castore"
)

// The download scheduler gets a job's missing chunks in batches from all
// its sources at once: each source runs a few requests at a time, taking
// the next batch (in NAR order) when one is done, so fast sources take
// more. Finished batches go to the committer (committer.go). A batch that
// fails goes back to the front of the queue; a source that sends bad data
// or stalls is penalised, and a source that fails stops taking work in
// this fetch.
//
// A source with a free slot also asks for a batch another source holds,
// and whichever answer comes first is kept (two askers at most): before
// the queue, a batch held four times as long as batches of its size take
// on average (at least a second), since a reader of the NAR may be
// waiting for it; once the queue is empty, a batch held twice as long (the
// BitTorrent endgame, less eager: asking twice for batches about to
// arrive costs uplinks more than it saves). A stalled or slow source then
// delays the fetch by about the time the others take to do its share, not
// by the stall timeout.

const (
	chunkBatch       = 64 // chunks per request
	firstBatch       = 4  // chunks in the first request: the first bytes a reader waits for come sooner
	streamsPerSource = 4  // requests in flight per source
)

// batch is a run of chunks asked for in one request.
type batch struct {
	digests []castore.Digest
	askers  []Source  // sources asked for it now
	started time.Time // when the first of them was asked
	done    bool      // received, committed or on its way to be
}

// received is a batch in, waiting for its commit.
type received struct {
	w  *castore.Writer
	b  *batch
	at time.Time
}

// scheduler runs one download. Its fields are guarded by mu, but for
// those set once in newScheduler.
type scheduler struct {
	j       *Job
	lease   *castore.Lease
	sources []Source

	mu       sync.Mutex
	cond     *sync.Cond
	queue    []*batch
	held     map[*batch]bool // batches with askers
	finished int             // batches received
	perChunk time.Duration   // moving average of their times, per chunk (batch sizes vary)
	pending  int             // batches not yet committed
	active   int             // workers running
	inCommit int             // batches received, not yet committed
	lastErr  error

	toCommit chan received
}

func newScheduler(j *Job, lease *castore.Lease, sources []Source, chunks []castore.Digest) *scheduler {
	s := &scheduler{j: j, lease: lease, sources: sources, held: map[*batch]bool{}}
	s.cond = sync.NewCond(&s.mu)
	// The first batches are small, so that the first chunks of the NAR,
	// which a reader may be waiting for, arrive without waiting behind
	// whole batches; then they double up to chunkBatch.
	for i, size := 0, firstBatch; i < len(chunks); i, size = i+size, min(2*size, chunkBatch) {
		s.queue = append(s.queue, &batch{digests: chunks[i:min(i+size, len(chunks))]})
	}
	s.pending = len(s.queue)
	s.toCommit = make(chan received, len(s.queue))
	return s
}

// run downloads every batch, or fails once no source can give the ones
// left.
func (s *scheduler) run(parent context.Context) error {
	if s.pending == 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(parent) // ends the requests made redundant
	defer cancel()
	c := &committer{s: s, ctx: ctx}
	committed := make(chan struct{})
	go func() {
		defer close(committed)
		c.run()
	}()
	// Workers waiting for work look again when ctx ends, and every tenth
	// of a second, as held batches grow old enough to ask for again.
	wake := func() { s.mu.Lock(); s.cond.Broadcast(); s.mu.Unlock() }
	defer context.AfterFunc(ctx, wake)()
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
	s.mu.Lock()
	for _, src := range s.sources {
		for range streamsPerSource {
			s.active++
			go s.worker(ctx, src)
		}
	}
	for s.pending > 0 && (s.active > 0 || s.inCommit > 0) {
		s.cond.Wait()
	}
	left := s.pending
	s.mu.Unlock()
	cancel() // requests still out are for batches already here
	s.mu.Lock()
	for s.active > 0 {
		s.cond.Wait()
	}
	s.mu.Unlock()
	close(s.toCommit)
	<-committed
	if left > 0 {
		err := s.lastErr
		if err == nil {
			err = parent.Err()
		}
		if err == nil {
			err = errors.New("every source was dropped")
		}
		return fmt.Errorf("%d chunk batches got from no source: %w", left, err)
	}
	return nil
}

// worker asks src for batch after batch until none is left for it, or
// src fails.
func (s *scheduler) worker(ctx context.Context, src Source) {
	f, j := s.j.f, s.j
	defer func() {
		s.mu.Lock()
		s.active--
		s.cond.Broadcast()
		s.mu.Unlock()
	}()
	for {
		b, asked := s.take(ctx, src)
		if b == nil {
			return
		}
		w := s.lease.NewWriter()
		var got uint64
		err := src.Chunks(ctx, b.digests, chunkBuffers{}, func(d castore.Digest, data, frame []byte) error {
			j.chunkBytes.Add(uint64(len(data)))
			var err error
			wire := uint64(len(data))
			if frame != nil {
				wire = uint64(len(frame))
				err = w.PutFramedChunk(d, len(data), frame)
			} else {
				err = w.PutChunk(d, data)
			}
			j.wireBytes.Add(wire)
			got += wire
			j.keep(d, data) // last: data is the handoff's from here
			return err
		})
		j.sent(src, got)
		if !s.settle(ctx, src, b, w, asked, err) {
			f.penaliseFor(src, err)
			return
		}
	}
}

// take waits for a batch src should ask for, and marks it asked; nil when
// there is no more work for src.
func (s *scheduler) take(ctx context.Context, src Source) (*batch, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b *batch
	for s.pending > 0 && ctx.Err() == nil && !s.j.f.penalised(src) {
		if b = s.next(src); b != nil {
			break
		}
		s.cond.Wait()
	}
	if b == nil {
		return nil, time.Time{}
	}
	asked := time.Now()
	if len(b.askers) == 0 {
		b.started = asked
		s.held[b] = true
	}
	b.askers = append(b.askers, src)
	return b, asked
}

// settle records the outcome of asking src for b: the batch goes to the
// committer if it is the first answer, back to the queue if the request
// failed. It reports whether src may go on.
func (s *scheduler) settle(ctx context.Context, src Source, b *batch, w *castore.Writer, asked time.Time, err error) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	b.askers = slices.DeleteFunc(b.askers, func(q Source) bool { return q == src })
	if len(b.askers) == 0 {
		delete(s.held, b)
	}
	if err != nil || b.done {
		w.Abort()
	}
	if err != nil {
		if !b.done {
			s.requeue(b)
		}
		if ctx.Err() == nil { // not a request made redundant
			s.lastErr = err
		}
		s.cond.Broadcast()
		return false
	}
	if b.done { // another source was first
		return true
	}
	b.done = true
	took := time.Since(asked) / time.Duration(len(b.digests))
	if s.finished++; s.finished == 1 {
		s.perChunk = took
	} else {
		s.perChunk = (4*s.perChunk + took) / 5
	}
	s.inCommit++
	s.cond.Broadcast()
	s.toCommit <- received{w, b, time.Now()} // never blocks: room for every batch
	return true
}

// requeue puts a batch back at the front of the queue; s.mu held.
func (s *scheduler) requeue(b *batch) {
	b.done = false
	if len(b.askers) == 0 {
		s.queue = append([]*batch{b}, s.queue...)
	}
}

// next is the batch src should ask for, or nil; s.mu held.
func (s *scheduler) next(src Source) *batch {
	if s.finished >= 4 {
		if b := s.oldestHeld(src, 4, time.Second); b != nil {
			return b
		}
	}
	if len(s.queue) > 0 {
		b := s.queue[0]
		s.queue = s.queue[1:]
		return b
	}
	if s.finished == 0 {
		return s.oldestHeld(src, 0, time.Second)
	}
	return s.oldestHeld(src, 2, 0)
}

// oldestHeld is the oldest batch held by one other source for times as
// long as a batch of its size takes on average, and at least floor; nil
// if there is none; s.mu held.
func (s *scheduler) oldestHeld(src Source, times int, floor time.Duration) *batch {
	var oldest *batch
	for b := range s.held {
		age := max(floor, time.Duration(times*len(b.digests))*s.perChunk)
		if b.done || len(b.askers) != 1 || b.askers[0] == src || time.Since(b.started) < age {
			continue
		}
		if oldest == nil || b.started.Before(oldest.started) {
			oldest = b
		}
	}
	return oldest
}

// committed hands a commit's outcome back: its batches are readable, or
// go back to the queue.
func (s *scheduler) committed(group []received, err error) {
	s.mu.Lock()
	s.inCommit -= len(group)
	if err != nil {
		s.lastErr = err
		for _, g := range group {
			s.requeue(g.b)
		}
	} else {
		s.pending -= len(group)
	}
	s.cond.Broadcast()
	s.mu.Unlock()
	if err == nil {
		for _, g := range group {
			s.j.stored(g.b.digests)
		}
	}
}

// over reports whether nothing more will come: every batch is in, or
// every worker has given up.
func (s *scheduler) over(ctx context.Context) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inCommit == s.pending || s.active == 0 || ctx.Err() != nil
}
