package daemon

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"path"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/narview/nar"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
)

const storeDir = "/nix/store"

// memStore is a Store in memory: NARs kept whole.
type memStore struct {
	mu    sync.Mutex
	infos map[string]*pathinfo.Info
	nars  map[string][]byte
}

func newMemStore() *memStore {
	return &memStore{infos: map[string]*pathinfo.Info{}, nars: map[string][]byte{}}
}

func (m *memStore) PathInfo(_ context.Context, p string, _ bool) (*pathinfo.Info, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if info, ok := m.infos[p]; ok {
		return info, nil
	}
	return nil, pathinfo.ErrNotFound
}

func (m *memStore) PathFromHashPart(_ context.Context, h string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for p := range m.infos {
		if strings.HasPrefix(path.Base(p), h) {
			return p, nil
		}
	}
	return "", pathinfo.ErrNotFound
}

func (m *memStore) AllPaths(context.Context) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for p := range m.infos {
		out = append(out, p)
	}
	sort.Strings(out)
	return out, nil
}

func (m *memStore) WriteNAR(_ context.Context, info *pathinfo.Info, w io.Writer) error {
	m.mu.Lock()
	b := m.nars[info.StorePath]
	m.mu.Unlock()
	_, err := w.Write(b)
	return err
}

// AddPath parses the NAR to its exact end, as the node does.
func (m *memStore) AddPath(_ context.Context, info *pathinfo.Info, r io.Reader) error {
	var buf bytes.Buffer
	nr := nar.NewReader(&teeReader{r: bufioOf(r), w: &buf})
	for {
		_, err := nr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	if sha256.Sum256(buf.Bytes()) != info.NarHash || uint64(buf.Len()) != info.NarSize {
		return fmt.Errorf("%s: NAR does not match its hash or size", info.StorePath)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	info.Root = castore.Node{Type: castore.TypeFile}
	m.infos[info.StorePath] = info
	m.nars[info.StorePath] = buf.Bytes()
	return nil
}

func (m *memStore) AddSignatures(_ context.Context, p string, sigs []string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	info, ok := m.infos[p]
	if !ok {
		return pathinfo.ErrNotFound
	}
	for _, s := range sigs {
		info.AddSig(s)
	}
	return nil
}

// narOf returns the NAR of a single regular file with the given content.
func narOf(t testing.TB, content string) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := nar.NewWriter(&buf)
	w.WriteHeader(&nar.Header{Type: nar.TypeRegular, Size: int64(len(content))})
	io.WriteString(w, content)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func samplePath(i int) string {
	return fmt.Sprintf("%s/%032d-sample-%d", storeDir, i, i)
}

func infoFor(p string, narBytes []byte) *pathinfo.Info {
	return &pathinfo.Info{StorePath: p, NarHash: sha256.Sum256(narBytes), NarSize: uint64(len(narBytes)), Sigs: []string{"k-1:AAAA"}, References: []string{p}}
}

// pipeServer serves one connection over an in-memory pipe.
func pipeServer(t testing.TB, store Store) net.Conn {
	client, server := net.Pipe()
	srv := NewServer(store, storeDir, nil)
	go srv.ServeConn(context.Background(), server, server)
	t.Cleanup(func() { client.Close() })
	return client
}

// TestVersions runs the ops a client uses at every minor we accept.
func TestVersions(t *testing.T) {
	for m := uint64(21); m <= 38; m++ {
		t.Run(fmt.Sprintf("1.%d", m), func(t *testing.T) {
			store := newMemStore()
			c, err := NewClient(pipeServer(t, store), 1<<8|m)
			if err != nil {
				t.Fatal(err)
			}
			if c.minor() != m {
				t.Fatalf("negotiated 1.%d", c.minor())
			}
			p := samplePath(int(m))
			narBytes := narOf(t, "contents at 1."+fmt.Sprint(m))
			if err := c.AddToStoreNar(infoFor(p, narBytes), bytes.NewReader(narBytes), false); err != nil {
				t.Fatalf("AddToStoreNar: %v", err)
			}
			if ok, err := c.IsValidPath(p); !ok || err != nil {
				t.Fatalf("IsValidPath: %v %v", ok, err)
			}
			info, err := c.QueryPathInfo(p)
			if err != nil {
				t.Fatal(err)
			}
			if info.NarHash != sha256.Sum256(narBytes) || info.NarSize != uint64(len(narBytes)) || info.References[0] != p {
				t.Fatalf("QueryPathInfo: %+v", info)
			}
			if m >= 16 && (len(info.Sigs) != 1 || info.Sigs[0] != "k-1:AAAA") {
				t.Fatalf("sigs %v", info.Sigs)
			}
			if _, err := c.QueryPathInfo(samplePath(999)); !errors.Is(err, pathinfo.ErrNotFound) {
				t.Fatalf("missing path: %v", err)
			}
			var got bytes.Buffer
			if err := c.NarFromPath(p, &got); err != nil || !bytes.Equal(got.Bytes(), narBytes) {
				t.Fatalf("NarFromPath: %v", err)
			}
			valid, err := c.QueryValidPaths([]string{p, samplePath(999)}, false)
			if err != nil || len(valid) != 1 || valid[0] != p {
				t.Fatalf("QueryValidPaths: %v %v", valid, err)
			}
			// A bad NAR is refused with an error, and the connection goes on.
			err = c.AddToStoreNar(infoFor(samplePath(1000), narBytes), bytes.NewReader(narOf(t, "other")), false)
			if err == nil {
				t.Fatal("mismatching NAR accepted")
			}
			if ok, err := c.IsValidPath(samplePath(1000)); ok || err != nil {
				t.Fatalf("after refusal: %v %v", ok, err)
			}
		})
	}
}

// TestOldClient: a client below 1.21 is turned away with a message it can
// print.
func TestOldClient(t *testing.T) {
	_, err := NewClient(pipeServer(t, newMemStore()), 1<<8|20)
	var de *DaemonError
	if !errors.As(err, &de) || !strings.Contains(de.Msg, "needs 1.21") {
		t.Fatalf("1.20 client: %v", err)
	}
}

// raw is a hand-driven client for the ops our Client does not send.
type raw struct {
	t *testing.T
	c *Client
}

func newRaw(t *testing.T, store Store) raw {
	c, err := NewClient(pipeServer(t, store), ProtocolVersion)
	if err != nil {
		t.Fatal(err)
	}
	return raw{t, c}
}

func (r raw) op(op uint64, args func(w *wireWriter)) error {
	r.c.w.Uint64(op)
	if args != nil {
		args(r.c.w)
	}
	if err := r.c.w.Flush(); err != nil {
		return err
	}
	return r.c.stderr(nil)
}

func TestUnsupportedOps(t *testing.T) {
	store := newMemStore()
	p := samplePath(1)
	narBytes := narOf(t, "x")
	store.AddPath(context.Background(), infoFor(p, narBytes), bytes.NewReader(narBytes))
	r := newRaw(t, store)

	// BuildDerivation: a readable error, and the connection stays usable.
	err := r.op(opBuildDerivation, func(w *wireWriter) {
		w.String(storeDir + "/00000000000000000000000000000000-x.drv")
		w.Uint64(1)
		w.String("out")
		w.String(storeDir + "/00000000000000000000000000000000-x")
		w.String("")
		w.String("")
		w.Strings(nil)
		w.String("x86_64-linux")
		w.String("/bin/sh")
		w.Strings([]string{"-c", "true"})
		w.Uint64(1)
		w.String("out")
		w.String("/nowhere")
		w.Uint64(0)
	})
	var de *DaemonError
	if !errors.As(err, &de) || !strings.Contains(de.Msg, "does not build") {
		t.Fatalf("BuildDerivation: %v", err)
	}
	// CollectGarbage: refused with what the node does instead.
	err = r.op(opCollectGarbage, func(w *wireWriter) {
		w.Uint64(2) // delete dead paths
		w.Strings(nil)
		for i := 0; i < 5; i++ { // ignoreLiveness, maxFreed, 3 obsolete
			w.Uint64(0)
		}
	})
	if !errors.As(err, &de) || !strings.Contains(de.Msg, "does not delete store paths") || !strings.Contains(de.Msg, "`p2pstore gc` removes only the objects no path uses") {
		t.Fatalf("CollectGarbage: %v", err)
	}
	// BuildPathsWithResults on a valid path succeeds and echoes it; on a
	// derivation it fails.
	if err := r.op(opBuildPathsWithResults, func(w *wireWriter) {
		w.Strings([]string{p, storeDir + "/00000000000000000000000000000000-x.drv!out"})
		w.Uint64(0)
	}); err != nil {
		t.Fatal(err)
	}
	n, _ := r.c.r.Uint64()
	for i := uint64(0); i < n; i++ {
		path, _ := r.c.r.String()
		status, _ := r.c.r.Uint64()
		msg, _ := r.c.r.String()
		for j := 0; j < 4+2+1; j++ { // times, cpu, builtOutputs
			r.c.r.Uint64()
		}
		if (path == p) != (status == buildAlreadyValid) {
			t.Errorf("%s: status %d %q", path, status, msg)
		}
	}
	if err := r.op(opBuildPaths, func(w *wireWriter) { w.Strings([]string{p}); w.Uint64(0) }); err != nil {
		t.Fatal(err)
	}
	if v, _ := r.c.r.Uint64(); v != 1 {
		t.Fatal("BuildPaths reply")
	}
	for _, op := range []uint64{opAddTempRoot, opAddIndirectRoot} {
		if err := r.op(op, func(w *wireWriter) { w.String(p) }); err != nil {
			t.Fatal(err)
		}
		r.c.r.Uint64()
	}
	if err := r.op(opQueryMissing, func(w *wireWriter) { w.Strings([]string{p, samplePath(7) + "!out"}) }); err != nil {
		t.Fatal(err)
	}
	r.c.r.Strings()
	r.c.r.Strings()
	unknown, _ := r.c.r.Strings()
	r.c.r.Uint64()
	r.c.r.Uint64()
	if len(unknown) != 1 || unknown[0] != samplePath(7) {
		t.Fatalf("QueryMissing unknown %v", unknown)
	}
	if ok, err := r.c.IsValidPath(p); !ok || err != nil {
		t.Fatalf("connection broken after the errors: %v %v", ok, err)
	}
	// An unknown op: an error, then the server hangs up.
	if err := r.op(9999, nil); !errors.As(err, &de) {
		t.Fatalf("unknown op: %v", err)
	}
	if _, err := r.c.IsValidPath(p); err == nil {
		t.Fatal("connection still open after an unknown op")
	}
}

// TestTooLarge: lengths over the limits are refused before allocation.
func TestTooLarge(t *testing.T) {
	for name, args := range map[string]func(w *wireWriter){
		"string": func(w *wireWriter) { w.Uint64(1 << 40) },
		"list":   func(w *wireWriter) { w.Uint64(1 << 40) },
	} {
		r := newRaw(t, newMemStore())
		op := uint64(opIsValidPath)
		if name == "list" {
			op = opQueryValidPaths
		}
		err := r.op(op, args)
		var de *DaemonError
		if !errors.As(err, &de) || !strings.Contains(de.Msg, "over the limit") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestDisconnectMidNAR: a client that hangs up half-way leaves nothing.
func TestDisconnectMidNAR(t *testing.T) {
	store := newMemStore()
	conn := pipeServer(t, store)
	c, err := NewClient(conn, ProtocolVersion)
	if err != nil {
		t.Fatal(err)
	}
	narBytes := narOf(t, strings.Repeat("data", 100000))
	p := samplePath(3)
	c.w.Uint64(opAddToStoreNar)
	c.w.String(p)
	writePathInfo(c.w, infoFor(p, narBytes), false, true)
	c.w.Bool(false)
	c.w.Bool(false)
	(&framedWriter{w: c.w}).Write(narBytes[:len(narBytes)/2])
	c.w.Flush()
	conn.Close()
	time.Sleep(50 * time.Millisecond)
	if _, err := store.PathInfo(context.Background(), p, false); !errors.Is(err, pathinfo.ErrNotFound) {
		t.Fatal("half-sent path stored")
	}
}

// TestAddMultiple sends several paths in one AddMultipleToStore, the way
// `nix copy --to` does, and a count of 0, which Nix 2.8 sends too.
func TestAddMultiple(t *testing.T) {
	store := newMemStore()
	r := newRaw(t, store)
	for _, count := range []int{0, 3} {
		err := r.op(opAddMultipleToStore, func(w *wireWriter) {
			w.Bool(false)
			w.Bool(false)
			var inner bytes.Buffer
			iw := newWireWriter(&inner)
			iw.Uint64(uint64(count))
			for i := 0; i < count; i++ {
				narBytes := narOf(t, fmt.Sprint("multi ", i))
				writePathInfo(iw, infoFor(samplePath(100+i), narBytes), true, true)
				iw.Flush()
				inner.Write(narBytes)
			}
			iw.Flush()
			fw := &framedWriter{w: w}
			fw.Write(inner.Bytes())
			fw.Close()
		})
		if err != nil {
			t.Fatalf("count %d: %v", count, err)
		}
	}
	all, _ := store.AllPaths(context.Background())
	if len(all) != 3 {
		t.Fatalf("stored %v", all)
	}
}

// TestManyClients: 64 connections at once, each adding and reading a path.
func TestManyClients(t *testing.T) {
	store := newMemStore()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c, err := NewClient(pipeServer(t, store), ProtocolVersion)
			if err != nil {
				errs <- err
				return
			}
			p := samplePath(200 + i)
			narBytes := narOf(t, strings.Repeat(fmt.Sprint(i), 10000))
			if err := c.AddToStoreNar(infoFor(p, narBytes), bytes.NewReader(narBytes), false); err != nil {
				errs <- err
				return
			}
			var got bytes.Buffer
			if err := c.NarFromPath(p, &got); err != nil || !bytes.Equal(got.Bytes(), narBytes) {
				errs <- fmt.Errorf("client %d: NarFromPath %v", i, err)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// handshakeBytes is what a 1.34 client sends to reach its first op.
func handshakeBytes() []byte { return handshakeFor(34) }

// handshakeFor is what a client of protocol 1.minor sends to reach its
// first op.
func handshakeFor(minor uint64) []byte {
	b := binary.LittleEndian.AppendUint64(nil, workerMagic1)
	b = binary.LittleEndian.AppendUint64(b, 1<<8|minor)
	if minor >= 38 {
		b = binary.LittleEndian.AppendUint64(b, 0) // no features
	}
	return binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(b, 0), 0) // affinity, reserveSpace
}

// FuzzServer feeds arbitrary ops and arguments after a valid handshake at
// protocol 1.(21 + version%18): the server must neither panic nor hang,
// whatever it gets. Its corpus in testdata holds the hostile requests of
// the other tests (lengths no client sends, half requests, lying sizes).
// Memory stays bounded: strings and lists by the budget of one op, the
// rest by the input's own size.
func FuzzServer(f *testing.F) {
	var seed bytes.Buffer
	w := newWireWriter(&seed)
	w.Uint64(opSetOptions)
	for i := 0; i < 12; i++ {
		w.Uint64(0)
	}
	w.Uint64(0)
	w.Uint64(opQueryPathInfo)
	w.String(samplePath(1))
	w.Uint64(opQueryValidPaths)
	w.Strings([]string{samplePath(1)})
	w.Uint64(0)
	w.Uint64(opAddToStoreNar)
	w.String(samplePath(2))
	narBytes := narOf(f, "fuzz")
	writePathInfo(w, infoFor(samplePath(2), narBytes), false, true)
	w.Uint64(0)
	w.Uint64(0)
	(&framedWriter{w: w}).Write(narBytes)
	(&framedWriter{w: w}).Close()
	w.Flush()
	f.Add(byte(34-21), seed.Bytes())
	f.Add(byte(38-21), []byte{})
	f.Fuzz(func(t *testing.T, version byte, ops []byte) {
		in := io.MultiReader(bytes.NewReader(handshakeFor(21+uint64(version)%18)), bytes.NewReader(ops))
		serveInput(t, NewServer(newMemStore(), storeDir, nil), in)
	})
}

// serveInput runs srv on the input of a fuzz case, which must neither
// panic nor hang it.
func serveInput(t *testing.T, srv *Server, in io.Reader) {
	done := make(chan struct{})
	go func() {
		srv.ServeConn(context.Background(), in, io.Discard)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("server hung on its input")
	}
}

func bufioOf(r io.Reader) *bufio.Reader {
	if br, ok := r.(*bufio.Reader); ok {
		return br
	}
	return bufio.NewReader(r)
}

// FuzzWire decodes arbitrary bytes as each of the protocol's compound
// values, with and without the budget of one op: no input may panic, or
// allocate past the limits, and a framed stream's error sticks.
func FuzzWire(f *testing.F) {
	var seed bytes.Buffer
	w := newWireWriter(&seed)
	w.Strings([]string{"a", "bc"})
	writePathInfo(w, infoFor(samplePath(1), narOf(f, "x")), true, true)
	w.Flush()
	f.Add(seed.Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		r := newWireReader(bytes.NewReader(b))
		r.Strings()
		r.StringMap()
		r = newWireReader(bytes.NewReader(b))
		r.resetBudget()
		r.Strings()
		r.StringMap()
		r.Skip(MaxFrameLen)
		var small [64]byte
		if n, err := r.BytesInto(small[:]); n > len(small) || (err != nil && n != 0) {
			t.Fatalf("BytesInto: %d %v", n, err)
		}
		readPathInfo(newWireReader(bytes.NewReader(b)), true, true)
		budgeted := newWireReader(bytes.NewReader(b))
		budgeted.resetBudget()
		readPathInfo(budgeted, true, true)
		fr := &framedReader{r: newWireReader(bytes.NewReader(b)), maxSize: MaxFrameLen}
		if err := fr.drain(); err != nil {
			if _, again := fr.Read(make([]byte, 8)); again != err {
				t.Fatalf("framed stream: %v, then %v", err, again)
			}
		}
	})
}
