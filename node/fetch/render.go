package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/narview/nar"
)

// Rendering a NAR from a running job: the tree is the job's, each chunk
// is written as soon as it can be, from the handoff if the download has
// just decoded it, else from the store once committed (committed ones in
// runs, which sendfile joins). A zstd NAR splices the chunks' stored
// frames, so it reads only the store: each of its files waits for the
// commit of its chunks.

// Render writes the job's NAR, or the part asked, to a client as its
// chunks arrive.
func (j *Job) Render(ctx context.Context, w io.Writer, part nar.Part) error {
	return j.render(ctx, w, part, true)
}

// render writes the part of the NAR; urgent says a client waits for it
// (the NarHash check does not), which hurries the commits it waits for.
func (j *Job) render(ctx context.Context, w io.Writer, part nar.Part, urgent bool) error {
	usesHandoff := part.Compression != nar.CompressionZstd
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
	r := j.f.store.NewReader()
	defer r.Close()
	src := &jobSource{j: j, r: r, attempt: attempt, urgent: urgent, spliced: !usesHandoff}
	return nar.RenderPart(ctx, w, j.Info().Root, src, part, func(w io.Writer) nar.Splicer { return r.NewZstdWriter(w) })
}

// jobSource is the nar.Source of a NAR rendered from a running job.
type jobSource struct {
	j       *Job
	r       *castore.Reader
	attempt int
	urgent  bool // a client waits for this NAR
	spliced bool // a zstd NAR: each file waits for its chunks' commit
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

func (s *jobSource) FileChunks(ctx context.Context, d castore.Digest, size uint64) ([]castore.ChunkRef, error) {
	s.j.mu.Lock()
	refs, ok := s.j.lists[d]
	s.j.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("file %s is not part of the tree", d)
	}
	if s.spliced {
		if err := s.j.waitChunks(ctx, s.attempt, refs, s.urgent); err != nil {
			return nil, err
		}
	}
	return refs, nil
}

// WriteChunks writes chunks as they arrive: one in the handoff goes out
// before it is committed; committed ones go out in runs.
func (s *jobSource) WriteChunks(ctx context.Context, w io.Writer, refs []castore.ChunkRef) error {
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
		if h := s.j.take(refs[0].Digest); h != nil {
			if len(h.buf) != int(refs[0].Size) {
				err = fmt.Errorf("chunk %s: %d bytes handed over, the file's list says %d", refs[0].Digest, len(h.buf), refs[0].Size)
			} else {
				_, err = w.Write(h.buf)
			}
			s.j.release(h)
		} else {
			// Another render took it from the handoff: from the store,
			// then, once committed.
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

// errRestarted ends a reader whose job abandoned its tree for another.
var errRestarted = errors.New("the fetch started over from other sources")

// waitTree waits until the tree is known, and returns its attempt.
func (j *Job) waitTree(ctx context.Context) (attempt int, err error) {
	defer j.wakeOnDone(ctx)()
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

// waitChunks waits until the chunks are committed. A client waiting
// (urgent) has the commit of its chunks hurried.
func (j *Job) waitChunks(ctx context.Context, attempt int, refs []castore.ChunkRef, urgent bool) error {
	defer j.wakeOnDone(ctx)()
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, r := range refs {
		if err := j.waitFor(ctx, attempt, r.Digest, urgent, false); err != nil {
			return err
		}
	}
	return nil
}

// waitReady waits until the first of refs can be written: committed, or in
// the handoff. It returns how many refs from the first are committed (0
// if the first is only in the handoff).
func (j *Job) waitReady(ctx context.Context, attempt int, refs []castore.ChunkRef, urgent bool) (int, error) {
	defer j.wakeOnDone(ctx)()
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
func (j *Job) committed(d castore.Digest) bool {
	if j.have == nil { // the job is starting over
		return false
	}
	if !j.have[d] && !j.narChunks[d].fetching && j.f.store.HasChunk(d) {
		j.have[d] = true // stored before the job
	}
	return j.have[d]
}

// waitFor waits for one chunk to be committed, or with handoff also for
// it to be in the handoff; j.mu held.
func (j *Job) waitFor(ctx context.Context, attempt int, d castore.Digest, urgent, handoff bool) error {
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
