package fetch

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/narview/narinfo"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/node/transfer"
)

// Source is a place a path's tree can come from: a peer, over the
// transfer protocol. Everything it returns has been checked against the
// digest it was asked for (a directory subtree as a Merkle walk from its
// root, each chunk against its digest); it returns transfer.ErrBadData for
// an answer that failed those checks, transfer.ErrStalled for one that
// stopped coming, transfer.ErrNotFound for what it does not have.
type Source interface {
	// ID names the source: penalties and logs go by it.
	ID() string
	// Record is what the source says of the path with this hash part:
	// checked here for its store paths and trusted signatures.
	Record(ctx context.Context, hash string) (*pathinfo.Info, error)
	Directories(ctx context.Context, root castore.Digest, fn func(d castore.Digest, dir *castore.Directory, raw []byte) error) error
	// ChunkLists returns the chunk list of each blob, nil for a blob that
	// is one chunk.
	ChunkLists(ctx context.Context, blobs []transfer.BlobRef) ([][]castore.ChunkRef, error)
	// Chunks calls fn with each chunk, its decoded bytes in a buffer from
	// bufs (which fn keeps) and the zstd frame it came in, if it did.
	Chunks(ctx context.Context, ds []castore.Digest, bufs transfer.Buffers, fn func(d castore.Digest, data, frame []byte) error) error
	// Drop cuts the node off from a source that misbehaved (closes its
	// connection), so that requests of it fail at once.
	Drop()
}

// Finder finds the sources that may hold a path.
type Finder interface {
	// Sources sends the sources that may hold the path with this hash
	// part, the likeliest first (peers connected now, then those the DHT
	// names), and closes the channel when it knows of no more or ctx ends.
	Sources(ctx context.Context, hash string) <-chan Source
}

// Store is what a fetch reads and writes of the node's castore: a
// *castore.Store.
type Store interface {
	NewLease() *castore.Lease
	View(fn func(v *castore.View) error) error
	CommitAll(ws ...*castore.Writer) error
	NewReader() *castore.Reader
	HasChunk(d castore.Digest) bool
	HasBlob(d castore.Digest, size uint64) bool
}

// Index records a fetched path, which makes it valid on the node.
type Index interface {
	Put(info *pathinfo.Info) error
}

// Publisher gives a fetched path to the node's peers.
type Publisher interface {
	// Share makes the objects of the path's tree available to peers; it is
	// called before the path becomes valid, so that a peer given its
	// record can get its objects. It returns the announcement to make
	// once the path's clients are served (announcing costs CPU they need).
	Share(ctx context.Context, info *pathinfo.Info) (announce func())
}

// Config is what a Fetcher is told at its start.
type Config struct {
	StoreDir string
	// Keys are the keys whose signatures the fetcher trusts: a record
	// none of them signed is ignored.
	Keys []narinfo.PublicKey
	// GuixStoreDir, when set, is the Guix store's directory: a record of
	// a path there is checked against it and trusted when GuixTrusted
	// says so (its Guix narinfo, signed by a trusted Guix key). Nix
	// signatures, and the root signatures made with Nix keys, count for
	// nothing there.
	GuixStoreDir string
	GuixTrusted  func(info *pathinfo.Info) error
	Log          *slog.Logger
	// Reserve, when set, is called with the bytes of the chunks a job is
	// about to download, before it downloads them, and may make room for
	// them (the node's disk limit); the job calls release once the path
	// is recorded or given up.
	Reserve func(ctx context.Context, bytes uint64) (release func())
	// Done, when set, is told how each job that found its path's record
	// ended (from the job's goroutine): the node logs it and counts it.
	Done func(Report)
}

// Report sums up a job that found its path's record.
type Report struct {
	Info *pathinfo.Info
	Err  error // nil: the path is valid here
	// Sources are those chunks were asked of, with the bytes each sent
	// (as they came: zstd frames), in the order they were first asked.
	Sources    []SourceBytes
	ChunkBytes uint64        // raw size of the chunks downloaded
	WireBytes  uint64        // the bytes they came in
	Duration   time.Duration // from the job's start, finding the sources included
	// ListsSigned says that the tree's chunk lists matched their signed
	// digest: every byte was checked as it arrived.
	ListsSigned bool
}

// SourceBytes is what one source sent for a job.
type SourceBytes struct {
	ID    string
	Bytes uint64
}

// Fetcher runs the jobs that fetch paths, one per path however many ask
// for it, and keeps what it learnt of its sources.
type Fetcher struct {
	cfg    Config
	finder Finder
	store  Store
	index  Index
	pub    Publisher

	mu     sync.Mutex
	jobs   map[string]*Job      // running, by hash part
	bad    map[string]time.Time // penalised sources, until
	misses map[string]time.Time // hash parts found nowhere, until
	// searches are Find's, by hash part: running, or ended with records
	// no job has taken yet.
	searches map[string]*search
}

const (
	missMemory = 30 * time.Second // a path found nowhere is not looked for again before
	penalty    = 10 * time.Minute // a source that lied is ignored this long
)

// New returns a Fetcher.
func New(cfg Config, finder Finder, store Store, index Index, pub Publisher) *Fetcher {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Fetcher{cfg: cfg, finder: finder, store: store, index: index, pub: pub,
		jobs: map[string]*Job{}, bad: map[string]time.Time{}, misses: map[string]time.Time{},
		searches: map[string]*search{}}
}

// Start returns the job fetching the path with this hash part, starting
// one if none runs: once its record is found, the job goes on in the
// background. It reports pathinfo.ErrNotFound when no source has a
// trusted record of the path.
func (f *Fetcher) Start(ctx context.Context, hash string) (*Job, error) {
	f.mu.Lock()
	if j := f.jobs[hash]; j != nil {
		f.mu.Unlock()
		return j, j.waitStarted(ctx)
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
	return j, j.waitStarted(ctx)
}

// Fetch gets a path and waits until it is valid here. It also returns the
// raw size of the chunks the fetch downloaded (what moved, before
// compression on the wire).
func (f *Fetcher) Fetch(ctx context.Context, hash string) (*pathinfo.Info, uint64, error) {
	j, err := f.Start(ctx, hash)
	if err != nil {
		return nil, 0, err
	}
	info, err := j.Wait(ctx)
	return info, j.ChunkBytes(), err
}

// Running returns the job for a hash part, if one runs.
func (f *Fetcher) Running(hash string) *Job {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.jobs[hash]
}

func (f *Fetcher) finished(j *Job) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.jobs, j.hash)
	if errors.Is(j.startErr, pathinfo.ErrNotFound) {
		f.misses[j.hash] = time.Now().Add(missMemory)
	}
}

// penalise ignores a source that sent bad data or stalled, for a while.
func (f *Fetcher) penalise(src Source, why error) {
	msg := "dropping a peer that sent bad data"
	if errors.Is(why, transfer.ErrStalled) {
		msg = "dropping a peer that stalled"
	}
	f.cfg.Log.Warn(msg, "peer", src.ID(), "err", why)
	f.mu.Lock()
	f.bad[src.ID()] = time.Now().Add(penalty)
	f.mu.Unlock()
	src.Drop()
}

// penalised reports whether a source is being ignored.
func (f *Fetcher) penalised(src Source) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	until, ok := f.bad[src.ID()]
	if ok && time.Now().After(until) {
		delete(f.bad, src.ID())
		return false
	}
	return ok
}

// penaliseFor penalises src when err says it lied or stalled.
func (f *Fetcher) penaliseFor(src Source, err error) {
	if errors.Is(err, transfer.ErrBadData) || errors.Is(err, transfer.ErrStalled) {
		f.penalise(src, err)
	}
}
