package fetch

import (
	"context"
	"time"

	"github.com/p2pstore/p2pstore/narview/pathinfo"
)

// Find and Begin split Start in two for a caller that races the sources
// against others of its own (the node's upstreams): Find asks for the
// path's record without starting a job, and Begin starts one only for
// the answer the caller took, so that a path another source won is not
// downloaded from the peers as well. FindAgain is Find for the moment the
// caller is about to download from its own source: an old miss is
// searched again.

// Found is a trusted record of a path that Find found, and the sources
// that gave it (none when a job was already fetching it).
type Found struct {
	hash  string
	info  *pathinfo.Info
	cands []candidate
}

// Info is the record a job begun with Begin fetches (the caller must not
// change it).
func (fd *Found) Info() *pathinfo.Info { return fd.info }

// search is a search for a path's record that no job owns (Find).
type search struct {
	done  chan struct{} // closed when it has ended
	cands []candidate   // what it found: set before done is closed
	until time.Time     // after done: its answer is stale then
}

func (s *search) ended() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Find asks the sources for the path's trusted record without starting a
// job; a job that runs for the path answers with its record. It reports
// pathinfo.ErrNotFound when no source has a trusted record. The search
// goes on after ctx ends (up to findTimeout), concurrent calls share it,
// and its answer serves the calls of the next missMemory.
func (f *Fetcher) Find(ctx context.Context, hash string) (*Found, error) {
	f.mu.Lock()
	if j := f.jobs[hash]; j != nil {
		f.mu.Unlock()
		info, err := j.Started(ctx)
		if err != nil {
			return nil, err
		}
		return &Found{hash: hash, info: info}, nil
	}
	now := time.Now()
	if until, ok := f.misses[hash]; ok && now.Before(until) {
		f.mu.Unlock()
		return nil, pathinfo.ErrNotFound
	}
	s := f.searches[hash]
	if s == nil || (s.ended() && now.After(s.until)) {
		for h, old := range f.searches { // few: kept small here
			if old.ended() && now.After(old.until) {
				delete(f.searches, h)
			}
		}
		s = &search{done: make(chan struct{})}
		f.searches[hash] = s
		go f.search(s, hash)
	}
	f.mu.Unlock()
	select {
	case <-s.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if len(s.cands) == 0 {
		return nil, pathinfo.ErrNotFound
	}
	_, info := choose(s.cands)
	return &Found{hash: hash, info: info, cands: s.cands}, nil
}

// FindAgain is Find for a caller about to download the path from a
// source of its own: a miss remembered from longer ago than fresh does
// not count, since a peer may have got the path since (a second machine
// of the LAN asking for what the first has just downloaded).
func (f *Fetcher) FindAgain(ctx context.Context, hash string, fresh time.Duration) (*Found, error) {
	f.mu.Lock()
	if until, ok := f.misses[hash]; ok && time.Until(until) < missMemory-fresh {
		delete(f.misses, hash)
	}
	f.mu.Unlock()
	return f.Find(ctx, hash)
}

func (f *Fetcher) search(s *search, hash string) {
	cands := f.candidates(context.Background(), hash)
	f.mu.Lock()
	defer f.mu.Unlock()
	s.cands, s.until = cands, time.Now().Add(missMemory)
	if len(cands) == 0 {
		delete(f.searches, hash)
		f.misses[hash] = s.until
	}
	close(s.done)
}

// Begin starts the job that fetches what Find found, unless a job runs
// for the path already: it returns that one then. Use Job.Started for its
// record.
func (f *Fetcher) Begin(fd *Found) *Job {
	f.mu.Lock()
	defer f.mu.Unlock()
	if j := f.jobs[fd.hash]; j != nil {
		return j
	}
	delete(f.searches, fd.hash) // the job has its sources now
	j := newJob(f, fd.hash)
	if fd.cands != nil {
		j.found, j.info = fd.cands, fd.info
		close(j.started)
	} // else the job Find met has ended: this one looks again
	f.jobs[fd.hash] = j
	go j.run(context.Background())
	return j
}
