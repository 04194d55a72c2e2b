package transfer

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
)

// shorten sets a deadline variable for one test.
func shorten(t *testing.T, v *time.Duration, d time.Duration) {
	old := *v
	*v = d
	t.Cleanup(func() { *v = old })
}

// tcpPair is a client host connected over TCP on loopback to a server
// host running srv (mocknet streams ignore deadlines), the server with
// at most MaxStreamsPerPeer inbound transfer streams per peer, as a node
// has.
func tcpPair(t *testing.T, srv *Server) (client, server host.Host) {
	t.Helper()
	limits := rcmgr.DefaultLimits
	limits.AddProtocolPeerLimit(ProtocolID, rcmgr.BaseLimit{StreamsInbound: MaxStreamsPerPeer, StreamsOutbound: MaxStreamsPerPeer, Streams: 2 * MaxStreamsPerPeer, Memory: MaxStreamsPerPeer * StreamMemory}, rcmgr.BaseLimitIncrease{})
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits.AutoScale()))
	if err != nil {
		t.Fatal(err)
	}
	server, err = libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay(), libp2p.ResourceManager(rm))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	server.SetStreamHandler(ProtocolID, srv.Handle)
	client, err = libp2p.New(libp2p.NoListenAddrs, libp2p.DisableRelay())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	if err := client.Connect(context.Background(), peer.AddrInfo{ID: server.ID(), Addrs: server.Addrs()}); err != nil {
		t.Fatal(err)
	}
	return client, server
}

// transferStreams counts the transfer streams the server holds from p.
func transferStreams(server host.Host, p peer.ID) int {
	n := 0
	for _, c := range server.Network().ConnsToPeer(p) {
		for _, s := range c.GetStreams() {
			if s.Protocol() == ProtocolID {
				n++
			}
		}
	}
	return n
}

// waitStreams polls until the server holds want transfer streams from p,
// for at most limit.
func waitStreams(t *testing.T, server host.Host, p peer.ID, want int, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for transferStreams(server, p) != want {
		if time.Now().After(deadline) {
			t.Fatalf("the server holds %d transfer streams after %s, want %d", transferStreams(server, p), limit, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// openNegotiated opens a transfer stream and waits until the server has
// taken it (a zero read completes the lazy protocol negotiation).
func openNegotiated(t *testing.T, client host.Host, p peer.ID) network.Stream {
	t.Helper()
	st, err := client.NewStream(context.Background(), p, ProtocolID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Reset() })
	if _, err := st.Read(nil); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestServerResetsIdleStreams: a stream that sends no request, or only
// the start of one, is reset after requestWait, not held for the whole
// exchange's timeout.
func TestServerResetsIdleStreams(t *testing.T) {
	shorten(t, &requestWait, 300*time.Millisecond)
	srv := NewServer(newMemSource(), 0, slog.New(slog.DiscardHandler))
	client, server := tcpPair(t, srv)
	idle := openNegotiated(t, client, server.ID())
	partial := openNegotiated(t, client, server.ID())
	partial.Write([]byte{kindChunks, 0, 200}) // 200 digests announced, none sent
	waitStreams(t, server, client.ID(), 2, 5*time.Second)
	start := time.Now()
	waitStreams(t, server, client.ID(), 0, 5*time.Second)
	t.Logf("idle streams reset after %s", time.Since(start).Round(time.Millisecond))
	for name, st := range map[string]network.Stream{"idle": idle, "partial request": partial} {
		st.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := st.Read(make([]byte, 1)); !errors.Is(err, network.ErrReset) {
			t.Errorf("%s stream: read %v, want a reset", name, err)
		}
	}
}

// bigSource holds n chunks of MaxChunkSize random bytes.
func bigSource(n int) (*memSource, []castore.Digest) {
	src := newMemSource()
	var ds []castore.Digest
	for i := 0; i < n; i++ {
		c := randomBytes(int64(100+i), castore.MaxChunkSize)
		d := castore.Sum(c)
		src.chunks[d] = c
		ds = append(ds, d)
	}
	return src, ds
}

func chunksRequest(ds []castore.Digest) []byte {
	req := append([]byte{kindChunks, 0}, uvarint(uint64(len(ds)))...)
	for _, d := range ds {
		req = append(req, d[:]...)
	}
	return req
}

// TestServerResetsStalledReader: a peer that asks for chunks and then
// reads nothing loses its stream once the answer makes no progress for
// writeStall; one that reads slowly, for longer than writeStall in all,
// gets the whole answer.
func TestServerResetsStalledReader(t *testing.T) {
	shorten(t, &writeStall, time.Second)
	src, ds := bigSource(8) // 2 MB: beyond what the stream's window and buffers take
	srv := NewServer(src, 0, slog.New(slog.DiscardHandler))
	client, server := tcpPair(t, srv)

	stalled := openNegotiated(t, client, server.ID())
	stalled.Write(chunksRequest(ds))
	stalled.CloseWrite()
	waitStreams(t, server, client.ID(), 1, 5*time.Second)
	start := time.Now()
	waitStreams(t, server, client.ID(), 0, 10*time.Second)
	t.Logf("a stream whose answer nobody reads reset after %s", time.Since(start).Round(time.Millisecond))
	stalled.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(stalled); !errors.Is(err, network.ErrReset) {
		t.Fatalf("stalled stream: %v, want a reset", err)
	}

	// 64 KB every 50 ms: each piece goes out well within writeStall, the
	// whole answer takes longer.
	slow := openNegotiated(t, client, server.ID())
	slow.Write(chunksRequest(ds[:6]))
	slow.CloseWrite()
	start = time.Now()
	var got int
	buf := make([]byte, 64<<10)
	for {
		time.Sleep(50 * time.Millisecond) // the slow reader's pace, not synchronisation
		n, err := io.ReadFull(slow, buf)
		got += n
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			t.Fatalf("slow reader cut off after %d bytes, %s: %v", got, time.Since(start), err)
		}
	}
	if took := time.Since(start); took < writeStall || got < 6*castore.MaxChunkSize {
		t.Fatalf("slow reader got %d bytes in %s: the test wants more than writeStall (%s)", got, took, writeStall)
	}
}

// deadlineWriter checks that every write starts before the write
// deadline set for it.
type deadlineWriter struct {
	deadline time.Time
	late     int
	writes   int
}

func (d *deadlineWriter) SetWriteDeadline(t time.Time) error { d.deadline = t; return nil }
func (d *deadlineWriter) Write(p []byte) (int, error) {
	d.writes++
	if time.Now().After(d.deadline) {
		d.late++
	}
	return len(p), nil
}

// TestUploadCapIsNotAStall: waiting for the upload cap is the server's
// doing, not the peer's: it does not count against writeStall.
func TestUploadCapIsNotAStall(t *testing.T) {
	shorten(t, &writeStall, 20*time.Millisecond)
	src, ds := bigSource(3)
	srv := NewServer(src, 512<<10, slog.New(slog.DiscardHandler)) // a 16 KB piece waits 31 ms
	w := &deadlineWriter{}
	lw := &limitedWriter{ctx: context.Background(), w: w, limiter: srv.limiter, sent: &srv.sent, deadlines: w, end: time.Now().Add(time.Minute)}
	if err := srv.serve(context.Background(), bytes.NewReader(chunksRequest(ds)), lw, nil); err != nil {
		t.Fatal(err)
	}
	if w.late > 0 || w.writes < 3*castore.MaxChunkSize/writePiece {
		t.Fatalf("%d of %d writes began after their deadline", w.late, w.writes)
	}
}

// gatedSource answers records once gate opens, counting those it holds.
type gatedSource struct {
	*memSource
	gate     chan struct{}
	inflight atomic.Int32
}

func (g *gatedSource) Record(ctx context.Context, hash string) (*pathinfo.Info, error) {
	g.inflight.Add(1)
	defer g.inflight.Add(-1)
	select {
	case <-g.gate:
	case <-ctx.Done():
	}
	return g.memSource.Record(ctx, hash)
}

// TestClientStaysWithinPeerLimit: many requests at once to one peer wait
// for each other in the client, rather than go beyond the streams the
// server takes from a peer and be refused.
func TestClientStaysWithinPeerLimit(t *testing.T) {
	src := &gatedSource{memSource: newMemSource(), gate: make(chan struct{})}
	srv := NewServer(src, 0, slog.New(slog.DiscardHandler))
	client, server := tcpPair(t, srv)
	c := NewClient(client)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const requests = 4 * MaxStreamsPerPeer
	errs := make(chan error, requests)
	for i := 0; i < requests; i++ {
		go func() {
			_, err := c.Record(ctx, server.ID(), "00000000000000000000000000000000")
			errs <- err
		}()
	}
	// The server holds every request it gets until the client has as many
	// out as it may and the rest waiting, or (a client that does not
	// wait) for two seconds, long enough for every request to be sent.
	waiting := func() int {
		c.mu.Lock()
		defer c.mu.Unlock()
		if s := c.slots[server.ID()]; s != nil {
			return s.users
		}
		return 0
	}
	deadline := time.Now().Add(2 * time.Second)
	for (waiting() != requests || src.inflight.Load() != clientStreamsPerPeer) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := src.inflight.Load(); n > clientStreamsPerPeer {
		t.Errorf("the server held %d requests of one client at once, want at most %d", n, clientStreamsPerPeer)
	}
	close(src.gate)
	for i := 0; i < requests; i++ {
		if err := <-errs; !errors.Is(err, ErrNotFound) {
			t.Errorf("request %d: %v, want ErrNotFound", i, err)
		}
	}
}
