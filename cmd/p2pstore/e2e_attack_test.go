package main

// End-to-end tests of a node under attack by many peer identities.

import (
	"context"
	varint "encoding/binary" // binary is the p2pstore executable
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/internal/nixtest"
	"github.com/p2pstore/p2pstore/node/transfer"
)

// flood is what the streams of a streamFlood do.
type flood struct {
	negotiate bool   // open transfer streams (else streams of no protocol, left in negotiation)
	request   []byte // sent on each stream, its answer read a byte every 200 ms (nil: nothing)
}

// streamFlood is many libp2p identities, each keeping as many streams of
// one node open as it takes.
type streamFlood struct {
	how    flood
	cancel context.CancelFunc
	wg     sync.WaitGroup
	alive  atomic.Int64 // streams the node has kept half a second and not reset
	resets atomic.Int64 // streams the node reset after keeping them a second or more
	mu     sync.Mutex
	held   time.Duration // the longest the node kept a stream before it reset it
}

// startFlood connects identities hosts to target, each trying to keep
// slots streams open.
func startFlood(t *testing.T, target peer.AddrInfo, identities, slots int, how flood) *streamFlood {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f := &streamFlood{how: how, cancel: cancel}
	t.Cleanup(f.stop)
	for i := 0; i < identities; i++ {
		h, err := libp2p.New(libp2p.NoListenAddrs, libp2p.DisableRelay(), libp2p.ResourceManager(&network.NullResourceManager{}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		if err := h.Connect(ctx, target); err != nil {
			t.Fatal(err)
		}
		for k := 0; k < slots; k++ {
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				f.slot(ctx, h, target.ID)
			}()
		}
	}
	return f
}

// slot keeps one stream open, opening another at once when the node
// resets one it kept, a second later when it refused one.
func (f *streamFlood) slot(ctx context.Context, h host.Host, target peer.ID) {
	for ctx.Err() == nil {
		held, reset := f.hold(ctx, h, target)
		if reset && held >= time.Second {
			f.resets.Add(1)
			f.mu.Lock()
			f.held = max(f.held, held)
			f.mu.Unlock()
			continue
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// hold opens a stream and keeps it until the node resets it (reset true)
// or ctx ends, and says how long that was.
func (f *streamFlood) hold(ctx context.Context, h host.Host, target peer.ID) (held time.Duration, reset bool) {
	var st network.Stream
	var err error
	if f.how.negotiate {
		st, err = h.NewStream(ctx, target, transfer.ProtocolID)
	} else {
		st, err = h.Network().NewStream(ctx, target)
	}
	if err != nil {
		return 0, false
	}
	defer st.Reset()
	defer context.AfterFunc(ctx, func() { st.Reset() })()
	opened := time.Now()
	switch {
	case f.how.request != nil:
		_, err = st.Write(f.how.request)
	case f.how.negotiate:
		_, err = st.Read(nil) // negotiates the protocol and sends nothing
	}
	if err != nil {
		return 0, false
	}
	alive := time.AfterFunc(500*time.Millisecond, func() { f.alive.Add(1) })
	defer func() {
		if !alive.Stop() {
			f.alive.Add(-1)
		}
	}()
	one := make([]byte, 1)
	for {
		_, err := st.Read(one) // without a request: returns with the reset
		switch {
		case err != nil:
			return time.Since(opened), ctx.Err() == nil
		case !f.how.negotiate: // the node's side of the negotiation
			continue
		case f.how.request == nil: // an answer to no request
			return time.Since(opened), false
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (f *streamFlood) stop() {
	f.cancel()
	f.wg.Wait()
}

// chunksRequest is a transfer request for chunks, raw, as a peer writes
// it on the wire.
func chunksRequest(ds []castore.Digest) []byte {
	req := varint.AppendUvarint([]byte{'C', 0}, uint64(len(ds)))
	for _, d := range ds {
		req = append(req, d[:]...)
	}
	return req
}

// TestP2PManyIdentities: libp2p identities keep as many streams of node A
// open as it lets them, and node B fetches a path from A all the same,
// in well under a second. Three floods, one after the other:
//
//   - 48 identities, 24 idle transfer streams each (1,152 in all, more
//     than the protocol's 1,024): each gets 16, reset within seconds;
//   - the same, asking for chunks and never reading the answers;
//   - one identity, 600 streams that never negotiate a protocol (more
//     than go-libp2p's default limit of streams in negotiation for all
//     peers together, held 10 s each): it gets 64.
func TestP2PManyIdentities(t *testing.T) {
	nixtest.Require(t)
	a := newNodeAt(t, "127.0.0.51", "node-a-1")
	a.start()
	pub := a.status().PublicKey
	paths := []string{bigTree(t, 8), bigTree(t, 8), bigTree(t, 8)}
	for _, p := range paths {
		a.run("import", "--sign", p)
	}
	b := newNodeAt(t, "127.0.0.52", "", "--bootstrap", a.p2pAddr(), "--trusted-public-key", pub)
	b.start()
	b.waitPeers(1)
	addr, _ := ma.NewMultiaddr(a.p2pAddr())
	target, _ := peer.AddrInfoFromP2pAddr(addr)

	// The chunks the non-reading identities ask for: a path's, from A.
	spy, err := libp2p.New(libp2p.NoListenAddrs, libp2p.DisableRelay())
	if err != nil {
		t.Fatal(err)
	}
	defer spy.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := spy.Connect(ctx, *target); err != nil {
		t.Fatal(err)
	}
	copied, err := copyPath(ctx, transfer.NewClient(spy), target.ID, hashPart(paths[0]))
	if err != nil {
		t.Fatal(err)
	}
	var digests []castore.Digest
	for d := range copied.chunks {
		digests = append(digests, d)
	}
	spy.Close()

	for i, round := range []struct {
		name              string
		identities, slots int
		how               flood
		want              int // streams held at full strength, at least
	}{
		{"idle streams", 48, 24, flood{negotiate: true}, 48 * transfer.MaxStreamsPerPeer * 9 / 10},
		{"answers never read", 48, 24, flood{negotiate: true, request: chunksRequest(digests[:min(len(digests), transfer.MaxChunksPerRequest)])}, 48 * transfer.MaxStreamsPerPeer * 9 / 10},
		{"streams never negotiated", 1, 600, flood{}, 48},
	} {
		flood := startFlood(t, *target, round.identities, round.slots, round.how)
		// The flood at full strength (idle transfer streams: once A has
		// reset some and they are open again), bounded.
		deadline := time.Now().Add(20 * time.Second)
		for flood.alive.Load() < int64(round.want) || (round.how.negotiate && round.how.request == nil && flood.resets.Load() == 0) {
			if time.Now().After(deadline) {
				t.Logf("%s: %d streams held, %d reset by A", round.name, flood.alive.Load(), flood.resets.Load())
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		before := flood.alive.Load()
		start := time.Now()
		out, err := b.try("fetch", paths[i])
		took := time.Since(start)
		during := flood.alive.Load()
		flood.stop()
		flood.mu.Lock()
		held := flood.held
		flood.mu.Unlock()
		t.Logf("%s: B's fetch took %s with %d (then %d) attacking streams held; A reset %d, the longest after %s",
			round.name, took.Round(time.Millisecond), before, during, flood.resets.Load(), held.Round(time.Millisecond))
		if err != nil || !strings.Contains(out, "fetched 1 path ") {
			t.Fatalf("%s: B's fetch under attack failed after %s: %v\n%s\nB:\n%s", round.name, took, err, out, b.log)
		}
		if took > 20*time.Second {
			t.Errorf("%s: B's fetch took %s under attack", round.name, took)
		}
		if round.how.negotiate && round.how.request == nil && (flood.resets.Load() == 0 || held > 15*time.Second) {
			t.Errorf("idle streams: A reset %d, the longest held %s: want them reset within seconds", flood.resets.Load(), held)
		}
		b.checkServedNAR(paths[i])
	}
}
