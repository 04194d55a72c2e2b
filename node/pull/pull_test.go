package pull

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/p2pstore/p2pstore/narview/pathinfo"
)

// adder checks the NAR against NarHash and NarSize, as the node's does,
// and waits for gate (when set) before it records the path.
type adder struct {
	gate     chan struct{}
	mu       sync.Mutex
	recorded []string
}

func (a *adder) AddPath(ctx context.Context, info *pathinfo.Info, r io.Reader) error {
	h := sha256.New()
	n, err := io.CopyN(h, r, int64(info.NarSize))
	if err != nil {
		return err
	}
	if [32]byte(h.Sum(nil)) != info.NarHash || uint64(n) != info.NarSize {
		return errors.New("hash mismatch")
	}
	if a.gate != nil {
		select {
		case <-a.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	a.mu.Lock()
	a.recorded = append(a.recorded, info.StorePath)
	a.mu.Unlock()
	return nil
}

func testNAR(size int) ([]byte, *pathinfo.Info) {
	nar := make([]byte, size)
	r := rand.New(rand.NewPCG(uint64(size), 2))
	for i := range nar {
		nar[i] = byte(r.Uint32())
	}
	return nar, &pathinfo.Info{StorePath: "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-x", NarHash: sha256.Sum256(nar), NarSize: uint64(size)}
}

// pipeOpener serves the NAR through a pipe the test writes, counting opens.
type pipeOpener struct {
	opens atomic.Int64
	r     *io.PipeReader
	w     *io.PipeWriter
}

func newPipeOpener() *pipeOpener {
	r, w := io.Pipe()
	return &pipeOpener{r: r, w: w}
}

func (p *pipeOpener) open(ctx context.Context) (io.ReadCloser, error) {
	p.opens.Add(1)
	return p.r, nil
}

func newPuller(t *testing.T, a Adder) (*Puller, string) {
	dir := t.TempDir() + "/spool"
	p, err := New(dir, a, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p, dir
}

// progressWriter reports how much has been written through it.
type progressWriter struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	notify chan struct{}
}

func newProgressWriter() *progressWriter { return &progressWriter{notify: make(chan struct{}, 1)} }

func (w *progressWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	select {
	case w.notify <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (w *progressWriter) len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Len()
}

// waitLen waits until at least n bytes were written.
func (w *progressWriter) waitLen(t *testing.T, n int) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for w.len() < n {
		select {
		case <-w.notify:
		case <-deadline:
			t.Fatalf("%d bytes written, waited for %d", w.len(), n)
		}
	}
}

func TestStreamsWhileDownloadingAndHoldsTheLastByte(t *testing.T) {
	nar, info := testNAR(1 << 20)
	a := &adder{gate: make(chan struct{})}
	p, dir := newPuller(t, a)
	op := newPipeOpener()
	ctx := context.Background()
	j, err := p.Start(ctx, info, "up-a", op.open)
	if err != nil {
		t.Fatal(err)
	}
	if j2, _ := p.Start(ctx, info, "up-a", op.open); j2 != j {
		t.Fatal("a second Start made a second job")
	}
	w := newProgressWriter()
	rendered := make(chan error, 1)
	go func() { rendered <- j.Render(ctx, w, 0, -1) }()

	half := len(nar) / 2
	op.w.Write(nar[:half])
	w.waitLen(t, half) // the client has half before the upstream sent the rest

	// A client joining late reads from the start.
	late := newProgressWriter()
	lateDone := make(chan error, 1)
	go func() { lateDone <- j.Render(ctx, late, 0, -1) }()
	late.waitLen(t, half)

	// All but the last byte: the NAR cannot be checked yet, and the
	// client does not get all of it.
	op.w.Write(nar[half : len(nar)-1])
	w.waitLen(t, len(nar)-1)
	select {
	case err := <-rendered:
		t.Fatalf("the render ended (%v) before the NAR was checked", err)
	default:
	}
	if w.len() != len(nar)-1 {
		t.Fatalf("the client got %d of %d bytes before the NAR was checked", w.len(), len(nar))
	}
	// The last byte: the NAR checks out, the clients get all of it, even
	// while the ingest has not recorded the path.
	op.w.Write(nar[len(nar)-1:])
	op.w.Close()
	for _, c := range []chan error{rendered, lateDone} {
		if err := <-c; err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(w.buf.Bytes(), nar) || !bytes.Equal(late.buf.Bytes(), nar) {
		t.Fatal("rendered NAR differs")
	}
	if p.Running(info.HashPart()) != j {
		t.Fatal("the job ended before its path was recorded")
	}
	close(a.gate)
	if err := j.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if op.opens.Load() != 1 || len(a.recorded) != 1 {
		t.Fatalf("%d downloads, %d records; want 1 and 1", op.opens.Load(), len(a.recorded))
	}
	if err := j.Render(ctx, io.Discard, 0, -1); !errors.Is(err, ErrFinished) {
		t.Fatalf("render after the end: %v, want ErrFinished", err)
	}
	if p.Running(info.HashPart()) != nil {
		t.Fatal("the job still runs")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("spool dir holds %d files", len(ents))
	}
}

func TestRange(t *testing.T) {
	nar, info := testNAR(100000)
	p, _ := newPuller(t, &adder{gate: make(chan struct{})}) // never recorded: ranges short of the end still go
	op := newPipeOpener()
	j, _ := p.Start(context.Background(), info, "up-a", op.open)
	go op.w.Write(nar)
	var b bytes.Buffer
	if err := j.Render(context.Background(), &b, 1000, 5000); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b.Bytes(), nar[1000:6000]) {
		t.Fatal("range differs")
	}
}

func TestFailures(t *testing.T) {
	nar, info := testNAR(1 << 20)
	wrong := bytes.Clone(nar)
	wrong[len(wrong)-1] ^= 1
	cases := map[string]func(w *io.PipeWriter){
		"truncated": func(w *io.PipeWriter) { w.Write(nar[:len(nar)/2]); w.Close() },
		"broken":    func(w *io.PipeWriter) { w.Write(nar[:len(nar)/2]); w.CloseWithError(errors.New("connection reset")) },
		"wrong NAR": func(w *io.PipeWriter) { w.Write(wrong); w.Close() },
	}
	for name, send := range cases {
		t.Run(name, func(t *testing.T) {
			a := &adder{}
			p, dir := newPuller(t, a)
			op := newPipeOpener()
			j, _ := p.Start(context.Background(), info, "up-a", op.open)
			w := newProgressWriter()
			rendered := make(chan error, 1)
			go func() { rendered <- j.Render(context.Background(), w, 0, -1) }()
			go send(op.w)
			if err := <-rendered; err == nil {
				t.Fatalf("the client's render ended well after %d bytes", w.len())
			}
			if w.len() >= len(nar) {
				t.Fatalf("the client got all %d bytes of a failed pull", w.len())
			}
			if err := j.Wait(context.Background()); err == nil {
				t.Fatal("the job succeeded")
			}
			if len(a.recorded) != 0 {
				t.Fatal("a failed pull was recorded")
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 0 {
				t.Fatalf("spool dir holds %d files", len(ents))
			}
			if _, err := p.Start(context.Background(), info, "up-a", op.open); !errors.Is(err, ErrFailedRecently) {
				t.Fatalf("a pull that just failed started again (%v)", err)
			}
			// Held against that upstream alone: another may send it.
			if !p.FailedRecently("up-a", info.HashPart()) || p.FailedRecently("up-b", info.HashPart()) {
				t.Fatal("FailedRecently does not name the upstream that failed, and it alone")
			}
			j, err := p.Start(context.Background(), info, "up-b", func(ctx context.Context) (io.ReadCloser, error) {
				return io.NopCloser(bytes.NewReader(nar)), nil
			})
			if err != nil {
				t.Fatalf("another upstream's pull of the path: %v", err)
			}
			if err := j.Wait(context.Background()); err != nil {
				t.Fatalf("another upstream's pull of the path: %v", err)
			}
		})
	}
}

func TestOpenFails(t *testing.T) {
	_, info := testNAR(1000)
	p, _ := newPuller(t, &adder{})
	j, _ := p.Start(context.Background(), info, "up-a", func(ctx context.Context) (io.ReadCloser, error) {
		return nil, fmt.Errorf("upstream down")
	})
	if err := j.Render(context.Background(), io.Discard, 0, -1); err == nil {
		t.Fatal("render of a pull that never started ended well")
	}
}

// eofReader returns the last bytes with io.EOF, as some readers do.
type eofReader struct{ b []byte }

func (r *eofReader) Read(p []byte) (int, error) {
	n := copy(p, r.b)
	r.b = r.b[n:]
	if len(r.b) == 0 {
		return n, io.EOF
	}
	return n, nil
}

func (r *eofReader) Close() error { return nil }

func TestLastBytesWithEOF(t *testing.T) {
	nar, info := testNAR(1000)
	p, _ := newPuller(t, &adder{})
	j, _ := p.Start(context.Background(), info, "up-a", func(ctx context.Context) (io.ReadCloser, error) {
		return &eofReader{nar}, nil
	})
	if err := j.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// stalledReader sends some bytes, then nothing until its context ends
// (an upstream that stopped sending, or its decoder process).
type stalledReader struct {
	ctx    context.Context
	b      []byte
	closed atomic.Bool
}

func (r *stalledReader) Read(p []byte) (int, error) {
	if len(r.b) > 0 {
		n := copy(p, r.b)
		r.b = r.b[n:]
		return n, nil
	}
	<-r.ctx.Done()
	return 0, r.ctx.Err()
}

func (r *stalledReader) Close() error { r.closed.Store(true); return nil }

// addRecorder tells when its AddPath has returned.
type addRecorder struct {
	adder
	returned atomic.Bool
}

func (a *addRecorder) AddPath(ctx context.Context, info *pathinfo.Info, r io.Reader) error {
	defer a.returned.Store(true)
	return a.adder.AddPath(ctx, info, r)
}

func TestCloseEndsJobs(t *testing.T) {
	nar, info := testNAR(1 << 20)
	a := &addRecorder{}
	p, dir := newPuller(t, a)
	var r *stalledReader
	j, err := p.Start(context.Background(), info, "up-a", func(ctx context.Context) (io.ReadCloser, error) {
		r = &stalledReader{ctx: ctx, b: nar[:1000]}
		return r, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	w := newProgressWriter()
	rendered := make(chan error, 1)
	go func() { rendered <- j.Render(context.Background(), w, 0, -1) }()
	w.waitLen(t, 1000) // downloading, and stalled

	closed := make(chan struct{})
	go func() {
		p.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close still waiting after 10 s")
	}
	// Once Close returns, nothing of the job is left running.
	if !r.closed.Load() {
		t.Fatal("Close returned before the job closed its upstream stream")
	}
	if !a.returned.Load() {
		t.Fatal("Close returned before the job's ingest did")
	}
	if err := j.Wait(context.Background()); err == nil {
		t.Fatal("a job ended by Close succeeded")
	}
	if err := <-rendered; err == nil {
		t.Fatal("the client's render of a job ended by Close ended well")
	}
	if len(a.recorded) != 0 {
		t.Fatal("a job ended by Close recorded its path")
	}
	if p.Running(info.HashPart()) != nil {
		t.Fatal("a job ended by Close is still running")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("spool dir holds %d files", len(ents))
	}
	if _, err := p.Start(context.Background(), info, "up-a", (&pipeOpener{}).open); !errors.Is(err, ErrClosed) {
		t.Fatalf("Start after Close: %v, want ErrClosed", err)
	}
	if p.FailedRecently("up-a", info.HashPart()) {
		t.Fatal("a job ended by Close was held against its upstream")
	}
}

// countedReader is an upstream body that says how much it read.
type countedReader struct {
	io.Reader
	n uint64
}

func (r *countedReader) Read(p []byte) (int, error) {
	k, err := r.Reader.Read(p)
	r.n += uint64(k)
	return k, err
}
func (r *countedReader) Close() error          { return nil }
func (r *countedReader) BytesReceived() uint64 { return r.n }

// TestReports: each job that ends is reported once, before Wait returns,
// with its upstream, its outcome and what the upstream sent.
func TestReports(t *testing.T) {
	nar, info := testNAR(100000)
	var reports []Report
	p, err := New(t.TempDir(), &adder{}, nil, nil, func(r Report) { reports = append(reports, r) })
	if err != nil {
		t.Fatal(err)
	}
	for _, body := range [][]byte{nar[:1000], nar} { // a truncated NAR, then the whole
		j, err := p.Start(context.Background(), info, "up-a", func(ctx context.Context) (io.ReadCloser, error) {
			return &countedReader{Reader: bytes.NewReader(body)}, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		j.Wait(context.Background())
		p.mu.Lock()
		clear(p.failed) // the failed pull may start again at once
		p.mu.Unlock()
	}
	if len(reports) != 2 {
		t.Fatalf("%d reports, want 2", len(reports))
	}
	failed, pulled := reports[0], reports[1]
	if failed.Err == nil || failed.BytesReceived != 1000 || failed.Source != "up-a" {
		t.Errorf("the truncated pull's report: %+v", failed)
	}
	if pulled.Err != nil || pulled.BytesReceived != uint64(len(nar)) || pulled.Info.StorePath != info.StorePath || pulled.Duration <= 0 {
		t.Errorf("the pull's report: %+v", pulled)
	}
}

// slowToNotice is an ingest that, once its NAR fails, takes until gate
// closes to return: one at the lowest CPU priority on a busy machine.
type slowToNotice struct {
	adder
	gate chan struct{}
}

func (a *slowToNotice) AddPath(ctx context.Context, info *pathinfo.Info, r io.Reader) error {
	err := a.adder.AddPath(ctx, info, r)
	if err != nil {
		<-a.gate
	}
	return err
}

// TestFailedJobLeavesAtOnce: a job that failed is no longer the path's
// running job once a client hears of the failure, though its ingest has
// not returned: the next Start begins a new job (here from another
// upstream, the failed one's being held against it), which completes.
func TestFailedJobLeavesAtOnce(t *testing.T) {
	nar, info := testNAR(1 << 20)
	a := &slowToNotice{gate: make(chan struct{})}
	p, dir := newPuller(t, a)
	failed, err := p.Start(context.Background(), info, "up-a", func(ctx context.Context) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(nar[:len(nar)/2])), nil // truncated
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := failed.Render(context.Background(), io.Discard, 0, -1); err == nil {
		t.Fatal("the render of a truncated NAR ended well")
	}
	if j := p.Running(info.HashPart()); j != nil {
		t.Fatal("the failed job still runs for its path while its ingest winds down")
	}
	if _, err := p.Start(context.Background(), info, "up-a", (&pipeOpener{}).open); !errors.Is(err, ErrFailedRecently) {
		t.Fatalf("a pull that just failed started again from the same upstream (%v)", err)
	}
	j, err := p.Start(context.Background(), info, "up-b", func(ctx context.Context) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(nar)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if j == failed {
		t.Fatal("Start returned the failed job")
	}
	if err := j.Wait(context.Background()); err != nil {
		t.Fatalf("the new job: %v", err)
	}
	close(a.gate)
	if err := failed.Wait(context.Background()); err == nil {
		t.Fatal("the failed job succeeded")
	}
	if len(a.recorded) != 1 {
		t.Fatalf("%d records, want the new job's", len(a.recorded))
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("spool dir holds %d files", len(ents))
	}
}
