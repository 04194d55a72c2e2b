// Package pull runs the jobs that pull paths through from upstream
// binary caches: one job per path however many clients ask for it.
//
// A job copies the upstream's decompressed NAR into a spool file and, at
// the same time, hands the spool to the node's ingest (Adder), which
// stores the tree in castore and checks the NAR against the signed
// NarHash and NarSize before the path becomes valid. Clients read the
// spool as it grows, from any offset, so the first client does not wait
// for the whole path, and one that joins late reads from the start.
//
// Decisions:
//   - The spool is a named file in the Puller's directory while its job
//     runs (New removes what a crash left there). A job that ends with
//     the path valid hands the file to its Keeper (the node's NAR cache
//     adopts it as the path's NAR, so the next clients get it by
//     sendfile, with no render); otherwise it is removed. Readers keep
//     it through the job's descriptor until the last one is done,
//     whatever happened to its name.
//   - A client never gets the last byte of the NAR before the whole NAR
//     has been checked against the signed NarHash and NarSize (hashed as
//     it is spooled, so that clients do not wait for the slower ingest):
//     if the job fails first (truncated or wrong NAR, upstream error,
//     full disk), every client's read fails, so the HTTP layer aborts the
//     response instead of ending a NAR that looks complete. The ingest
//     checks the NAR again as it parses it, before the path is recorded.
//   - A job runs on after the request that started it ends: others may
//     join it, and the path is worth having. Close ends the running jobs
//     (their downloads, decoders and ingests) and waits for them, so that
//     none adds a path once the node has closed its store.
//   - A job that fails leaves the table of running jobs at its failure,
//     not when its goroutines are done: its ingest runs at the lowest CPU
//     priority and, on a busy machine, may take seconds to notice, and
//     until then every request for the path was answered with the old
//     failure (a disk full a moment ago, since freed). The next request
//     starts a new job; the failed one is cancelled and winds down on
//     its own (Close still waits for it).
package pull

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/p2pstore/p2pstore/internal/priority"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

// Adder records a path from its NAR stream, which it checks against
// info's NarHash and NarSize; nothing is recorded when it fails.
type Adder interface {
	AddPath(ctx context.Context, info *pathinfo.Info, nar io.Reader) error
}

// Keeper takes the spool file of a path pulled whole and valid: the file
// at name holds exactly the NAR of info (checked against NarHash and
// NarSize). It may rename it away; the Puller removes what it leaves.
type Keeper interface {
	KeepNAR(name string, info *pathinfo.Info)
}

// Opener opens a path's NAR upstream, decompressed.
type Opener func(ctx context.Context) (io.ReadCloser, error)

// ErrFinished is returned by Render for a job that has completed and let
// its spool go: the path is valid, read it from the store.
var ErrFinished = errors.New("pull: finished")

// ErrFailedRecently is Start's answer for a path whose NAR this upstream
// sent broken or wrong less than failMemory ago: a client retrying it gets
// a 404 at once rather than another download of it. The failure is held
// against that upstream alone (FailedRecently tells the lookup to ask the
// others); one of the node's own (a full disk) is not remembered.
var ErrFailedRecently = errors.New("pull: failed recently")

const failMemory = 30 * time.Second

// ErrClosed is Start's answer once the Puller is closed.
var ErrClosed = errors.New("pull: closed")

// Report sums up a pull that ended, for the node's log line and metrics.
type Report struct {
	Info   *pathinfo.Info
	Source string // the upstream
	Err    error  // nil: the path is valid here
	// BytesReceived is what the upstream sent (compressed), when the
	// opener's reader counts it (a BytesReceived method).
	BytesReceived uint64
	Duration      time.Duration
}

// Puller runs pull jobs.
type Puller struct {
	dir  string // spool files go here
	add  Adder
	keep Keeper // nil: spools are removed
	log  *slog.Logger
	done func(Report) // nil: none

	wg sync.WaitGroup // the jobs' goroutines

	mu     sync.Mutex
	jobs   map[string]*Job       // running, by hash part
	failed map[failure]time.Time // pulls that failed: until
	closed bool
}

// failure is a path whose NAR an upstream sent broken or wrong.
type failure struct{ source, hash string }

// New returns a Puller spooling into dir, which it makes (removing the
// spools a crash left); keep, when not nil, takes the spools of the paths
// pulled whole; done, when not nil, is told how each job ended.
func New(dir string, add Adder, keep Keeper, log *slog.Logger, done func(Report)) (*Puller, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	left, _ := filepath.Glob(filepath.Join(dir, "*"+spoolSuffix))
	for _, name := range left {
		os.Remove(name)
	}
	return &Puller{dir: dir, add: add, keep: keep, log: log, done: done, jobs: map[string]*Job{}, failed: map[failure]time.Time{}}, nil
}

// spoolSuffix ends the names of spool files.
const spoolSuffix = ".nar"

// Start returns the job pulling the path, starting one with open if none
// runs for its hash part; source names the upstream open reads from.
func (p *Puller) Start(ctx context.Context, info *pathinfo.Info, source string, open Opener) (*Job, error) {
	hash := info.HashPart()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrClosed
	}
	if j := p.jobs[hash]; j != nil {
		return j, nil
	}
	if p.failedLocked(source, hash) {
		return nil, fmt.Errorf("%s from %s: %w", info.StorePath, source, ErrFailedRecently)
	}
	f, err := os.CreateTemp(p.dir, hash+"-*"+spoolSuffix)
	if err != nil {
		return nil, err
	}
	jctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	j := &Job{p: p, info: info, hash: hash, source: source, cancel: cancel, f: f, refs: 1, done: make(chan struct{}), begun: time.Now()}
	j.cond = sync.NewCond(&j.mu)
	p.jobs[hash] = j
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer cancel()
		j.run(jctx, open)
	}()
	return j, nil
}

// Close ends the running jobs, which fail with context.Canceled, and
// waits until they have let go of the upstream (its decoder process
// included) and of the Adder. Start fails with ErrClosed from then on.
func (p *Puller) Close() {
	p.mu.Lock()
	p.closed = true
	for _, j := range p.jobs {
		j.cancel()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// FailedRecently reports whether the upstream named source sent the path
// with this hash part broken or wrong less than failMemory ago.
func (p *Puller) FailedRecently(source, hash string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.failedLocked(source, hash)
}

func (p *Puller) failedLocked(source, hash string) bool {
	k := failure{source, hash}
	until, ok := p.failed[k]
	if ok && !time.Now().Before(until) {
		delete(p.failed, k)
		return false
	}
	return ok
}

// Running returns the job for a hash part, if one runs.
func (p *Puller) Running(hash string) *Job {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.jobs[hash]
}

// Job is one path being pulled.
type Job struct {
	p      *Puller
	info   *pathinfo.Info
	hash   string
	source string             // the upstream
	cancel context.CancelFunc // ends the job (Close)
	done   chan struct{}      // closed when the job has ended
	begun  time.Time
	// received is what the upstream sent, set once the download ends.
	received uint64

	mu      sync.Mutex
	cond    *sync.Cond // signalled when written, ended or err change
	f       *os.File   // the spool; closed when refs drops to 0
	refs    int        // the job itself and its readers
	written int64      // bytes in the spool
	ended   bool       // the download stopped (err says how)
	checked bool       // the spooled NAR matches NarHash and NarSize
	err     error      // why the job failed
	// upstreamFault says the upstream, not the node, made the job fail.
	upstreamFault bool
}

// Info is the path's metadata (the caller must not change it).
func (j *Job) Info() *pathinfo.Info { return j.info }

// Wait waits for the job to end; nil means the path is valid.
func (j *Job) Wait(ctx context.Context) error {
	select {
	case <-j.done:
		j.mu.Lock()
		defer j.mu.Unlock()
		return j.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (j *Job) run(ctx context.Context, open Opener) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	downloaded := make(chan struct{})
	go func() {
		defer close(downloaded)
		j.download(ctx, open)
	}()
	info := *j.info
	info.References = slices.Clone(info.References)
	info.Sigs = slices.Clone(info.Sigs)
	// The ingest at the lowest CPU priority: clients read the spool, not
	// castore, so it never holds them up, and the CPU it would take is
	// theirs while they unpack what they got.
	var err error
	priority.Run(func() { err = j.p.add.AddPath(ctx, &info, &spoolReader{j: j, ctx: ctx, ingest: true}) })
	if err != nil {
		j.setErr(err)
	}
	cancel()
	<-downloaded
	j.mu.Lock()
	err = j.err
	j.cond.Broadcast()
	j.mu.Unlock()
	if err != nil {
		j.p.log.Warn("pulling a path failed", "path", j.info.StorePath, "err", err)
	} else { // the node logs the pull at info level (New's done)
		j.p.log.Debug("pulled a path", "path", j.info.StorePath, "nar_size", j.info.NarSize)
	}
	if j.p.done != nil {
		j.p.done(Report{Info: j.info, Source: j.source, Err: err, BytesReceived: j.received, Duration: time.Since(j.begun)})
	}
	j.p.leave(j, false) // a failed job left at its failure
	if err == nil && j.p.keep != nil {
		j.p.keep.KeepNAR(j.f.Name(), j.info)
	}
	os.Remove(j.f.Name()) // unless kept: readers keep their descriptors
	// The job's own hold on the spool goes before done: a Render after
	// Wait then finds the job finished (ErrFinished) rather than racing
	// this release.
	j.release()
	close(j.done)
}

// download copies the decompressed NAR into the spool, NarSize bytes.
func (j *Job) download(ctx context.Context, open Opener) {
	err := func() error {
		r, err := open(ctx)
		if err != nil {
			return err
		}
		defer r.Close()
		if c, ok := r.(interface{ BytesReceived() uint64 }); ok {
			defer func() { j.received = c.BytesReceived() }()
		}
		buf := make([]byte, 256<<10)
		size := int64(j.info.NarSize)
		h := sha256.New()
		for off := int64(0); off < size; {
			n, err := r.Read(buf[:min(int64(len(buf)), size-off)])
			if n > 0 {
				if _, werr := j.f.WriteAt(buf[:n], off); werr != nil {
					return &localError{fmt.Errorf("spooling: %w", werr)}
				}
				h.Write(buf[:n])
				off += int64(n)
				if off == size {
					if got := storepath.NarHash(h.Sum(nil)); got != j.info.NarHash {
						return fmt.Errorf("%s: the upstream NAR has hash %s, not the signed %s", j.info.StorePath, got, j.info.NarHash)
					}
				}
				j.mu.Lock()
				j.written = off
				j.checked = off == size
				j.cond.Broadcast()
				j.mu.Unlock()
			}
			if err == io.EOF && off < size {
				return fmt.Errorf("%s: the upstream NAR ended after %d of %d bytes", j.info.StorePath, off, size)
			}
			if err != nil && err != io.EOF {
				return err
			}
		}
		return nil
	}()
	var local *localError
	j.mu.Lock()
	j.ended = true
	if err != nil && ctx.Err() == nil && j.err == nil {
		j.upstreamFault = !errors.As(err, &local)
	}
	j.mu.Unlock()
	if err != nil && ctx.Err() == nil {
		j.setErr(err)
	}
	j.mu.Lock()
	j.cond.Broadcast()
	j.mu.Unlock()
}

// localError is a download's failure of the node's own (its spool).
type localError struct{ err error }

func (e *localError) Error() string { return e.err.Error() }
func (e *localError) Unwrap() error { return e.err }

func (j *Job) setErr(err error) {
	j.mu.Lock()
	first := j.err == nil
	if first {
		j.err = err
		// The spool's name goes with the first failure, before anyone
		// hears of it: readers hold descriptors, and nothing a client
		// sees after its response broke may find a spool left.
		os.Remove(j.f.Name())
		// Out of the running jobs before anyone hears of the failure, so
		// that a client told of it starts a new job when it asks again
		// (the puller's lock is never held while a job's is taken). A
		// download that failed by the upstream's fault says so before it
		// ends, so before any failure it causes is set here.
		j.p.leave(j, j.upstreamFault)
	}
	j.cond.Broadcast()
	j.mu.Unlock()
	if first {
		j.cancel()
	}
}

// leave takes a job out of the running ones, unless it left already
// (and another may have taken its place), holding the upstream's fault
// against it for failMemory when remember is set.
func (p *Puller) leave(j *Job, remember bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.jobs[j.hash] == j {
		delete(p.jobs, j.hash)
	}
	if remember {
		now := time.Now()
		for h, until := range p.failed { // few: kept small here
			if now.After(until) {
				delete(p.failed, h)
			}
		}
		p.failed[failure{j.source, j.hash}] = now.Add(failMemory)
	}
}

// acquire takes a reference on the spool, unless it is gone.
func (j *Job) acquire() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.refs == 0 {
		return false
	}
	j.refs++
	return true
}

func (j *Job) release() {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.refs--; j.refs == 0 {
		j.f.Close()
	}
}

// wait returns how many bytes from off a reader may read now, waiting
// for some; 0 with io.EOF at the end. A client (not ingest) may not read
// the last byte before the NAR is checked.
func (j *Job) wait(ctx context.Context, off int64, ingest bool) (int64, error) {
	stop := context.AfterFunc(ctx, func() {
		j.mu.Lock()
		j.cond.Broadcast()
		j.mu.Unlock()
	})
	defer stop()
	size := int64(j.info.NarSize)
	j.mu.Lock()
	defer j.mu.Unlock()
	for {
		if j.err != nil {
			return 0, j.err
		}
		if off >= size {
			return 0, io.EOF
		}
		limit := j.written
		if !ingest && !j.checked {
			limit = min(limit, size-1)
		}
		if limit > off {
			return limit - off, nil
		}
		if ingest && j.ended && j.written < size {
			return 0, io.ErrUnexpectedEOF
		}
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		j.cond.Wait()
	}
}

// spoolReader reads the spool from its start as it grows.
type spoolReader struct {
	j      *Job
	ctx    context.Context
	off    int64
	ingest bool
}

func (r *spoolReader) Read(p []byte) (int, error) {
	n, err := r.j.wait(r.ctx, r.off, r.ingest)
	if err != nil {
		return 0, err
	}
	k, err := r.j.f.ReadAt(p[:min(int64(len(p)), n)], r.off)
	r.off += int64(k)
	if err == io.EOF && k > 0 {
		err = nil
	}
	return k, err
}

// Render writes n bytes of the NAR from off to w (n < 0: to the end), as
// they arrive. It fails when the job does, and returns ErrFinished, having
// written nothing, when the job has completed and let its spool go.
func (j *Job) Render(ctx context.Context, w io.Writer, off, n int64) error {
	if !j.acquire() {
		j.mu.Lock()
		defer j.mu.Unlock()
		if j.err != nil {
			return j.err
		}
		return ErrFinished
	}
	defer j.release()
	if n < 0 {
		n = int64(j.info.NarSize) - off
	}
	// A descriptor of this reader's own, at its own offset: what has
	// arrived goes to w's ReadFrom as a file range, which on a socket is
	// sendfile. Opened through /proc so that it is the spool's file even
	// once the job has given its name to the NAR cache.
	f, err := os.Open(fmt.Sprintf("/proc/self/fd/%d", j.f.Fd()))
	if err != nil {
		return err
	}
	defer f.Close()
	for n > 0 {
		avail, err := j.wait(ctx, off, false)
		if err == io.EOF {
			return io.ErrUnexpectedEOF
		}
		if err != nil {
			return err
		}
		part := min(avail, n)
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			return err
		}
		k, err := io.Copy(w, &io.LimitedReader{R: f, N: part})
		off, n = off+k, n-k
		if err != nil {
			return err
		}
		if k < part {
			return io.ErrUnexpectedEOF
		}
	}
	return nil
}
