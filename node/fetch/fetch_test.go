package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/narview/nar"
	"github.com/p2pstore/p2pstore/narview/narinfo"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
	"github.com/p2pstore/p2pstore/node/transfer"
)

// The fetcher against sources in memory: honest, lying, stalling and
// vanishing ones, clients reading the NAR while it arrives. No real Nix,
// no network; waits poll for what they wait for, bounded.

const testHash = "0c3qrs09s3anz9iw3b6x6bz7xz0mfk8a"

func random(seed byte, n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{seed}).Read(b)
	return b
}

// seed is a path held by the sources: a tree in a store of its own.
type seed struct {
	store *castore.Store
	info  *pathinfo.Info
	nar   []byte
	key   narinfo.SecretKey
	files map[string][]byte
}

// newSeed stores a tree with small files, files of several chunks, a file
// twice and a file that repeats a block, and signs its record; with
// signedRoot, also its root and chunk lists.
func newSeed(t *testing.T, signedRoot bool) *seed {
	t.Helper()
	st, err := castore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	block := random(9, 300<<10)
	files := map[string][]byte{
		"a-small":  []byte("a small file"),
		"b-big":    random(1, 1<<20),
		"c-medium": random(2, 200<<10),
		"d-again":  random(1, 1<<20), // b-big once more
		"e-blocks": slices.Concat(block, random(3, 100<<10), block, block),
		"f-empty":  nil,
	}
	w := st.NewWriter()
	dir := &castore.Directory{}
	for _, name := range []string{"a-small", "b-big", "c-medium", "d-again", "e-blocks", "f-empty"} {
		d, n, err := w.PutBlob(bytes.NewReader(files[name]))
		if err != nil {
			t.Fatal(err)
		}
		dir.Files = append(dir.Files, castore.FileEntry{Name: []byte(name), Digest: d, Size: n, Executable: name == "a-small"})
	}
	sub, _ := w.PutDirectory(&castore.Directory{Symlinks: []castore.SymlinkEntry{{Name: []byte("link"), Target: []byte("../a-small")}}})
	dir.Directories = []castore.DirectoryEntry{{Name: []byte("sub"), Digest: sub, Size: 1}}
	rd, err := w.PutDirectory(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	root := castore.Node{Type: castore.TypeDirectory, Digest: rd, Size: dir.Size()}
	r := st.NewReader()
	defer r.Close()
	var buf bytes.Buffer
	if err := nar.Render(context.Background(), &buf, root, r); err != nil {
		t.Fatal(err)
	}
	key, err := narinfo.GenerateKey("test-1")
	if err != nil {
		t.Fatal(err)
	}
	info := &pathinfo.Info{StorePath: "/nix/store/" + testHash + "-tree", Root: root,
		NarHash: storepath.NarHash(sha256.Sum256(buf.Bytes())), NarSize: uint64(buf.Len())}
	info.AddSig(key.Sign(info.Fingerprint()))
	if signedRoot {
		lists, err := st.TreeLists(context.Background(), root)
		if err != nil {
			t.Fatal(err)
		}
		info.Lists = castore.ListsDigest(lists)
		info.RootSigs = []string{key.Sign(transfer.RootFingerprint(info.StorePath, info.NarHash, info.NarSize, info.Root, info.Lists))}
	}
	return &seed{store: st, info: info, nar: buf.Bytes(), key: key, files: files}
}

// memSource is a Source serving a seed, with ways to misbehave.
type memSource struct {
	id   string
	seed *seed

	// gate, when set, holds each Chunks call until a token arrives.
	gate chan struct{}
	// lie: every chunk answer fails its check (as the transfer client
	// reports a chunk that does not match its digest).
	lie bool
	// lieLists: chunk lists that do not add up to their blob, while the
	// flag it points to is set; the first source to lie clears it.
	lieLists *atomic.Bool
	// stall: Chunks calls after the first stallAfter hang until ctx ends.
	stall      bool
	stallAfter int32
	// vanish: Chunks calls after the first vanishAfter fail, as a
	// connection that went away.
	vanish      bool
	vanishAfter int32
	// errStalled: the vanishing source reports a stall (it is penalised).
	errStalled bool

	calls   atomic.Int32
	records atomic.Int32 // Record calls
	dropped atomic.Bool
}

func (m *memSource) ID() string { return m.id }
func (m *memSource) Drop()      { m.dropped.Store(true) }

func (m *memSource) Record(ctx context.Context, hash string) (*pathinfo.Info, error) {
	m.records.Add(1)
	if hash != m.seed.info.HashPart() {
		return nil, transfer.ErrNotFound
	}
	info := *m.seed.info
	info.Sigs = slices.Clone(info.Sigs)
	info.RootSigs = slices.Clone(info.RootSigs)
	return &info, nil
}

func (m *memSource) Directories(ctx context.Context, root castore.Digest, fn func(castore.Digest, *castore.Directory, []byte) error) error {
	queue := []castore.Digest{root}
	for len(queue) > 0 {
		d := queue[0]
		queue = queue[1:]
		dir, err := m.seed.store.Directory(d)
		if err != nil {
			return err
		}
		if err := fn(d, dir, dir.Marshal()); err != nil {
			return err
		}
		for _, e := range dir.Directories {
			queue = append(queue, e.Digest)
		}
	}
	return nil
}

func (m *memSource) ChunkLists(ctx context.Context, blobs []transfer.BlobRef) ([][]castore.ChunkRef, error) {
	out := make([][]castore.ChunkRef, len(blobs))
	for i, b := range blobs {
		refs, err := m.seed.store.BlobChunks(b.Digest, b.Size)
		if err != nil {
			return nil, err
		}
		if m.lieLists != nil && len(refs) >= 2 && m.lieLists.CompareAndSwap(true, false) {
			// The right chunks but two swapped: sizes add up, the order
			// makes another blob.
			refs = slices.Clone(refs)
			refs[0], refs[1] = refs[1], refs[0]
		}
		if len(refs) >= 2 {
			out[i] = refs
		}
	}
	return out, nil
}

func (m *memSource) Chunks(ctx context.Context, ds []castore.Digest, bufs transfer.Buffers, fn func(castore.Digest, []byte, []byte) error) error {
	call := m.calls.Add(1)
	if m.gate != nil {
		select {
		case <-m.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	switch {
	case m.stall && call > m.stallAfter:
		<-ctx.Done()
		return fmt.Errorf("%w: nothing for a while", transfer.ErrStalled)
	case m.vanish && call > m.vanishAfter:
		if m.errStalled {
			return fmt.Errorf("%w: nothing for a while", transfer.ErrStalled)
		}
		return errors.New("stream reset")
	case m.lie:
		return fmt.Errorf("%w: chunk %s does not match its digest", transfer.ErrBadData, ds[0])
	}
	for _, d := range ds {
		data, err := m.seed.store.ReadChunk(d, nil)
		if err != nil {
			return err
		}
		buf := bufs.Get(len(data))
		copy(buf, data)
		if err := fn(d, buf, nil); err != nil {
			return err
		}
	}
	return nil
}

// memFinder offers the sources it holds.
type memFinder []Source

func (f memFinder) Sources(ctx context.Context, hash string) <-chan Source {
	out := make(chan Source, len(f))
	for _, s := range f {
		out <- s
	}
	close(out)
	return out
}

// memIndex records the paths put.
type memIndex struct {
	mu    sync.Mutex
	paths map[string]*pathinfo.Info
}

func (x *memIndex) Put(info *pathinfo.Info) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.paths[info.HashPart()] = info
	return nil
}

func (x *memIndex) has(hash string) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.paths[hash] != nil
}

// memPublisher counts announcements.
type memPublisher struct{ shared, announced atomic.Int32 }

func (p *memPublisher) Share(ctx context.Context, info *pathinfo.Info) func() {
	p.shared.Add(1)
	return func() { p.announced.Add(1) }
}

// harness is a fetcher with an empty store of its own.
type harness struct {
	f     *Fetcher
	store *castore.Store
	index *memIndex
	pub   *memPublisher
}

func newHarness(t *testing.T, s *seed, sources ...Source) *harness {
	t.Helper()
	st, err := castore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	h := &harness{store: st, index: &memIndex{paths: map[string]*pathinfo.Info{}}, pub: &memPublisher{}}
	h.f = New(Config{StoreDir: "/nix/store", Keys: []narinfo.PublicKey{s.key.Public()}}, memFinder(sources), st, h.index, h.pub)
	return h
}

// checkStored checks that the path is valid, renders the seed's NAR from
// the fetcher's store, and that the store verifies.
func (h *harness) checkStored(t *testing.T, s *seed) {
	t.Helper()
	if !h.index.has(testHash) {
		t.Fatal("the path was not recorded")
	}
	r := h.store.NewReader()
	defer r.Close()
	var buf bytes.Buffer
	if err := nar.Render(context.Background(), &buf, s.info.Root, r); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), s.nar) {
		t.Fatal("the fetched tree renders another NAR")
	}
	var problems []string
	if _, err := h.store.Verify(context.Background(), func(p string) { problems = append(problems, p) }); err != nil || len(problems) > 0 {
		t.Fatalf("verify: %v %q", err, problems)
	}
	if err := h.store.CheckTree(context.Background(), s.info.Root, func(p string) { problems = append(problems, p) }); err != nil || len(problems) > 0 {
		t.Fatalf("tree: %v %q", err, problems)
	}
}

// release lets every request through gate until the job ends.
func release(gate chan struct{}, j *Job) {
	for {
		select {
		case gate <- struct{}{}:
		case <-j.done:
			return
		}
	}
}

// eventually polls cond, bounded.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func TestFetchHonest(t *testing.T) {
	for _, signedRoot := range []bool{true, false} {
		t.Run(fmt.Sprintf("signed root %v", signedRoot), func(t *testing.T) {
			s := newSeed(t, signedRoot)
			a, b := &memSource{id: "a", seed: s}, &memSource{id: "b", seed: s}
			h := newHarness(t, s, a, b)
			var reports []Report
			h.f.cfg.Done = func(r Report) { reports = append(reports, r) }
			info, chunkBytes, err := h.f.Fetch(context.Background(), testHash)
			if err != nil {
				t.Fatal(err)
			}
			if info.NarHash != s.info.NarHash || chunkBytes == 0 {
				t.Fatalf("fetched %s, %d chunk bytes", info.NarHash, chunkBytes)
			}
			// One report, before Fetch returns: every byte that came is
			// some source's.
			if len(reports) != 1 {
				t.Fatalf("%d reports, want 1", len(reports))
			}
			r, bySources := reports[0], uint64(0)
			for _, src := range r.Sources {
				if src.ID != "a" && src.ID != "b" {
					t.Errorf("a report names source %q", src.ID)
				}
				bySources += src.Bytes
			}
			if r.Err != nil || r.Info.StorePath != s.info.StorePath || r.ChunkBytes != chunkBytes || r.WireBytes == 0 ||
				bySources != r.WireBytes || r.Duration <= 0 || r.ListsSigned != signedRoot {
				t.Fatalf("report %+v: %d bytes from the sources", r, bySources)
			}
			h.checkStored(t, s)
			eventually(t, "the announcement", func() bool { return h.pub.announced.Load() == 1 })
			if (len(info.RootSigs) > 0) != signedRoot {
				t.Errorf("root signatures kept: %q", info.RootSigs)
			}
		})
	}
}

// An unknown path, and one no trusted key signed, are not found.
func TestFetchNotFound(t *testing.T) {
	s := newSeed(t, false)
	h := newHarness(t, s, &memSource{id: "a", seed: s})
	if _, _, err := h.f.Fetch(context.Background(), "1111111111111111111111111111111a"); !errors.Is(err, pathinfo.ErrNotFound) {
		t.Fatalf("an unknown path: %v", err)
	}
	other, _ := narinfo.GenerateKey("other-1")
	h.f.cfg.Keys = []narinfo.PublicKey{other.Public()}
	if _, _, err := h.f.Fetch(context.Background(), testHash); !errors.Is(err, pathinfo.ErrNotFound) {
		t.Fatalf("a path signed by no trusted key: %v", err)
	}
}

// Clients read the NAR, plain, zstd and a range, while its chunks arrive
// one request at a time.
func TestRenderWhileFetching(t *testing.T) {
	for _, signedRoot := range []bool{true, false} {
		t.Run(fmt.Sprintf("signed root %v", signedRoot), func(t *testing.T) {
			s := newSeed(t, signedRoot)
			src := &memSource{id: "a", seed: s, gate: make(chan struct{})}
			h := newHarness(t, s, src)
			j, err := h.f.Start(context.Background(), testHash)
			if err != nil {
				t.Fatal(err)
			}
			type result struct {
				out []byte
				err error
			}
			results := make([]chan result, 3)
			parts := []nar.Part{{Compression: nar.CompressionNone}, {Compression: nar.CompressionZstd}, {Compression: nar.CompressionNone, Off: 1000, N: int64(len(s.nar)) - 2000}}
			for i, part := range parts {
				results[i] = make(chan result, 1)
				go func() {
					var buf bytes.Buffer
					err := j.Render(context.Background(), &buf, part)
					results[i] <- result{buf.Bytes(), err}
				}()
			}
			go release(src.gate, j) // one request at a time
			dec, _ := zstd.NewReader(nil)
			defer dec.Close()
			for i, part := range parts {
				r := <-results[i]
				if r.err != nil {
					t.Fatalf("render %+v: %v", part, r.err)
				}
				want := s.nar
				if part.Compression == nar.CompressionZstd {
					if r.out, err = dec.DecodeAll(r.out, nil); err != nil {
						t.Fatalf("the zstd NAR: %v", err)
					}
				}
				if part.N > 0 {
					want = want[part.Off : part.Off+part.N]
				}
				if !bytes.Equal(r.out, want) {
					t.Fatalf("render %+v: %d bytes, not the NAR's", part, len(r.out))
				}
			}
			if _, err := j.Wait(context.Background()); err != nil {
				t.Fatal(err)
			}
			h.checkStored(t, s)
		})
	}
}

// A source whose chunks fail their checks is dropped; the others finish.
func TestLyingSource(t *testing.T) {
	s := newSeed(t, true)
	liar, honest := &memSource{id: "liar", seed: s, lie: true}, &memSource{id: "honest", seed: s, gate: make(chan struct{})}
	h := newHarness(t, s, liar, honest)
	j, err := h.f.Start(context.Background(), testHash)
	if err != nil {
		t.Fatal(err)
	}
	// The honest source answers once the liar has been asked.
	eventually(t, "a request to the liar", func() bool { return liar.calls.Load() >= 1 })
	go release(honest.gate, j)
	if _, err := j.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.checkStored(t, s)
	if !liar.dropped.Load() || honest.dropped.Load() || !h.f.penalised(liar) {
		t.Fatalf("dropped: liar %v, honest %v", liar.dropped.Load(), honest.dropped.Load())
	}
}

// Chunk lists that do not add up to their blob, where no signature covers
// them, fail the content check: the source that gave them is dropped and
// the fetch starts over with the others.
func TestLyingChunkLists(t *testing.T) {
	s := newSeed(t, false)
	// Whichever source is asked for the lists first lies, once.
	lie := new(atomic.Bool)
	lie.Store(true)
	a, b := &memSource{id: "a", seed: s, lieLists: lie}, &memSource{id: "b", seed: s, lieLists: lie}
	h := newHarness(t, s, a, b)
	if _, _, err := h.f.Fetch(context.Background(), testHash); err != nil {
		t.Fatal(err)
	}
	h.checkStored(t, s)
	if lie.Load() || a.dropped.Load() == b.dropped.Load() {
		t.Fatalf("lists lied: %v; dropped: a %v, b %v; want the liar alone", !lie.Load(), a.dropped.Load(), b.dropped.Load())
	}
}

// A source that stops answering holds up the fetch by about the time the
// others take to do its share (the endgame), not by its stall timeout.
func TestStallingSource(t *testing.T) {
	s := newSeed(t, true)
	stalled, honest := &memSource{id: "stalled", seed: s, stall: true, stallAfter: 1}, &memSource{id: "honest", seed: s}
	h := newHarness(t, s, stalled, honest)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, _, err := h.f.Fetch(ctx, testHash); err != nil {
		t.Fatal(err)
	}
	h.checkStored(t, s)
}

// A source that goes away mid-download leaves its batches to the others;
// one that reports a stall is dropped.
func TestVanishingSource(t *testing.T) {
	for _, stalled := range []bool{false, true} {
		s := newSeed(t, true)
		gone := &memSource{id: "gone", seed: s, vanish: true, vanishAfter: 1, errStalled: stalled}
		honest := &memSource{id: "honest", seed: s, gate: make(chan struct{})}
		h := newHarness(t, s, gone, honest)
		j, err := h.f.Start(context.Background(), testHash)
		if err != nil {
			t.Fatal(err)
		}
		// The honest source answers once the other has taken two batches:
		// one it delivers, one it fails.
		eventually(t, "two requests to the source that goes", func() bool { return gone.calls.Load() >= 2 })
		go release(honest.gate, j)
		if _, err := j.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
		h.checkStored(t, s)
		if gone.dropped.Load() != stalled {
			t.Errorf("a source that reported a stall (%v) dropped: %v", stalled, gone.dropped.Load())
		}
	}
}

// When the only source dies while a client's NAR streams, the client's
// render fails (its response is cut short, never a clean-looking short
// body) and the path is not recorded.
func TestSourceDiesWhileNARStreams(t *testing.T) {
	s := newSeed(t, true)
	src := &memSource{id: "only", seed: s, vanish: true, vanishAfter: 1, errStalled: true}
	h := newHarness(t, s, src)
	j, err := h.f.Start(context.Background(), testHash)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	err = j.Render(context.Background(), &buf, nar.Part{Compression: nar.CompressionNone})
	if err == nil {
		t.Fatalf("a render of a NAR whose source died succeeded with %d bytes", buf.Len())
	}
	if _, err := j.Wait(context.Background()); err == nil {
		t.Fatal("the job succeeded")
	}
	if h.index.has(testHash) {
		t.Fatal("a path whose source died was recorded")
	}
}

// The deferred commit rules: while every NAR rendered from the job takes
// its chunks from the handoff and no check reads the store, commits wait
// for the end of the download; a client's zstd NAR, which reads only the
// store, has the commit of the chunks it waits for made at once.
func TestDeferredCommits(t *testing.T) {
	s := newSeed(t, true)                         // signed root and lists: no content check reads the store
	firstChunk := castore.Sum(s.files["a-small"]) // the NAR's first file, of one chunk

	t.Run("plain render: commits wait", func(t *testing.T) {
		src := &memSource{id: "a", seed: s, gate: make(chan struct{})}
		h := newHarness(t, s, src)
		j, err := h.f.Start(context.Background(), testHash)
		if err != nil {
			t.Fatal(err)
		}
		pr, pw := io.Pipe()
		rendered := make(chan error, 1)
		go func() {
			rendered <- j.Render(context.Background(), pw, nar.Part{Compression: nar.CompressionNone})
			pw.Close()
		}()
		var got bytes.Buffer
		read := make(chan error, 1)
		go func() { _, err := io.Copy(&got, pr); read <- err }()
		eventually(t, "the render to take from the handoff", func() bool {
			j.mu.Lock()
			defer j.mu.Unlock()
			return j.handoffRenders > 0
		})
		// Release the first three requests: the client's NAR gets their
		// chunks from the handoff, and none is committed.
		for range 3 {
			src.gate <- struct{}{}
		}
		eventually(t, "the first chunks in the client's NAR", func() bool {
			j.mu.Lock()
			defer j.mu.Unlock()
			return j.narChunks[firstChunk].spent
		})
		if h.store.HasChunk(firstChunk) {
			t.Fatal("a chunk was committed while the only render takes from the handoff")
		}
		go release(src.gate, j)
		if err := <-rendered; err != nil {
			t.Fatal(err)
		}
		<-read
		if !bytes.Equal(got.Bytes(), s.nar) {
			t.Fatal("the client's NAR differs")
		}
		if _, err := j.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
		h.checkStored(t, s)
	})

	t.Run("zstd render: the first commit is hurried", func(t *testing.T) {
		src := &memSource{id: "a", seed: s, gate: make(chan struct{})}
		h := newHarness(t, s, src)
		j, err := h.f.Start(context.Background(), testHash)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		rendered := make(chan error, 1)
		go func() { rendered <- j.Render(context.Background(), &out, nar.Part{Compression: nar.CompressionZstd}) }()
		// The zstd client waits for its first file; once the first
		// request is in, its commit comes without the rest of the NAR.
		src.gate <- struct{}{}
		eventually(t, "the first chunk committed before the rest arrives", func() bool { return h.store.HasChunk(firstChunk) })
		if n := src.calls.Load(); n > 1+streamsPerSource {
			t.Fatalf("%d requests made before the first commit", n)
		}
		go release(src.gate, j)
		if err := <-rendered; err != nil {
			t.Fatal(err)
		}
		if _, err := j.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
		h.checkStored(t, s)
	})
}

// Two jobs asked for at once are one.
func TestOneJobPerPath(t *testing.T) {
	s := newSeed(t, true)
	src := &memSource{id: "a", seed: s, gate: make(chan struct{})}
	h := newHarness(t, s, src)
	j1, err := h.f.Start(context.Background(), testHash)
	if err != nil {
		t.Fatal(err)
	}
	j2, err := h.f.Start(context.Background(), testHash)
	if err != nil || j1 != j2 || h.f.Running(testHash) != j1 {
		t.Fatalf("a second start gave another job: %v", err)
	}
	go release(src.gate, j1)
	if _, err := j1.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.checkStored(t, s)
}

// A job reserves the bytes of the chunks it lacks before it downloads
// them, and releases them once the path is recorded.
func TestFetchReserves(t *testing.T) {
	s := newSeed(t, true)
	h := newHarness(t, s, &memSource{id: "a", seed: s})
	var reserved, calls atomic.Int64
	var recordedAtRelease atomic.Bool
	h.f.cfg.Reserve = func(ctx context.Context, bytes uint64) func() {
		calls.Add(1)
		if st, _ := h.store.Stats(); st.ChunkBytes != 0 {
			t.Errorf("%d chunk bytes stored before the reservation", st.ChunkBytes)
		}
		reserved.Add(int64(bytes))
		return func() { recordedAtRelease.Store(h.index.has(testHash)) }
	}
	if _, _, err := h.f.Fetch(context.Background(), testHash); err != nil {
		t.Fatal(err)
	}
	st, err := h.store.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 1 || uint64(reserved.Load()) != st.ChunkBytes || !recordedAtRelease.Load() {
		t.Fatalf("%d reservations of %d bytes for %d chunk bytes stored; recorded at release: %v",
			calls.Load(), reserved.Load(), st.ChunkBytes, recordedAtRelease.Load())
	}
}

// Find gets the record without starting a job, concurrent and later calls
// share its search, and only Begin starts the one job.
func TestFindThenBegin(t *testing.T) {
	s := newSeed(t, true)
	src := &memSource{id: "a", seed: s, gate: make(chan struct{})}
	h := newHarness(t, s, src)
	ctx := context.Background()
	var wg sync.WaitGroup
	founds := make([]*Found, 4)
	for i := range founds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fd, err := h.f.Find(ctx, testHash)
			if err != nil {
				t.Error(err)
				return
			}
			founds[i] = fd
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	for _, fd := range founds {
		if fd.Info().NarHash != s.info.NarHash {
			t.Fatalf("found %s", fd.Info().NarHash)
		}
	}
	if _, err := h.f.Find(ctx, testHash); err != nil {
		t.Fatal(err)
	}
	if n := src.records.Load(); n != 1 {
		t.Fatalf("the source was asked for the record %d times, want once", n)
	}
	if h.f.Running(testHash) != nil || src.calls.Load() != 0 {
		t.Fatal("Find started a job")
	}

	j := h.f.Begin(founds[0])
	if h.f.Running(testHash) != j || h.f.Begin(founds[1]) != j {
		t.Fatal("Begin did not start one job for the path")
	}
	if info, err := j.Started(ctx); err != nil || info.NarHash != s.info.NarHash {
		t.Fatalf("the job's record: %v", err)
	}
	if fd, err := h.f.Find(ctx, testHash); err != nil || fd.Info().NarHash != s.info.NarHash {
		t.Fatalf("Find while the job runs: %v", err)
	}
	go release(src.gate, j)
	if _, err := j.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	h.checkStored(t, s)
	if n := src.records.Load(); n != 1 {
		t.Fatalf("the source was asked for the record %d times, want once", n)
	}

	// Not found: no job either.
	if _, err := h.f.Find(ctx, "1111111111111111111111111111111a"); !errors.Is(err, pathinfo.ErrNotFound) {
		t.Fatalf("an unknown path: %v", err)
	}
	if h.f.Running("1111111111111111111111111111111a") != nil {
		t.Fatal("Find of an unknown path left a job")
	}
}

// lateFinder offers no source until its source is set.
type lateFinder struct{ src atomic.Pointer[memSource] }

func (f *lateFinder) Sources(ctx context.Context, hash string) <-chan Source {
	if s := f.src.Load(); s != nil {
		return memFinder{s}.Sources(ctx, hash)
	}
	return memFinder{}.Sources(ctx, hash)
}

// FindAgain searches again when the remembered miss is older than it is
// told, and finds the path a source has got since; a fresher miss stands,
// as it does for Find.
func TestFindAgain(t *testing.T) {
	s := newSeed(t, true)
	h := newHarness(t, s)
	finder := &lateFinder{}
	h.f.finder = finder
	ctx := context.Background()
	if _, err := h.f.Find(ctx, testHash); !errors.Is(err, pathinfo.ErrNotFound) {
		t.Fatalf("with no source: %v", err)
	}
	src := &memSource{id: "a", seed: s}
	finder.src.Store(src)
	if _, err := h.f.Find(ctx, testHash); !errors.Is(err, pathinfo.ErrNotFound) {
		t.Fatalf("Find with a remembered miss: %v", err)
	}
	if _, err := h.f.FindAgain(ctx, testHash, time.Hour); !errors.Is(err, pathinfo.ErrNotFound) {
		t.Fatalf("FindAgain with a miss fresher than asked: %v", err)
	}
	if n := src.records.Load(); n != 0 {
		t.Fatalf("the source was asked %d times while the miss stood", n)
	}
	fd, err := h.f.FindAgain(ctx, testHash, 0)
	if err != nil || fd.Info().NarHash != s.info.NarHash {
		t.Fatalf("FindAgain once the miss is older than asked: %v", err)
	}
}
