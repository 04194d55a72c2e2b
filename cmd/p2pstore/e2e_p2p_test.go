package main

// End-to-end tests of the peer-to-peer layer: several node processes on
// 127.0.0.x, a real Nix client, and in-process peers that misbehave.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/libp2p/go-libp2p"
	kaddht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/dht"
	"github.com/p2pstore/p2pstore/internal/netlab"
	"github.com/p2pstore/p2pstore/internal/nixtest"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/node"
	"github.com/p2pstore/p2pstore/node/transfer"
)

func (n *nodeProc) p2pAddr() string {
	n.t.Helper()
	s := n.status()
	if len(s.Addrs) == 0 {
		n.t.Fatalf("node has no p2p address:\n%s", n.log)
	}
	return s.Addrs[0]
}

// waitAnnounced waits, bounded, until the node is in contact with the DHT
// and has announced everything it queued.
func (n *nodeProc) waitAnnounced() {
	n.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		s := n.status()
		if s.DHTOnline && s.AnnouncePending == 0 {
			return
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("announcements did not finish (online %v, pending %d):\n%s", s.DHTOnline, s.AnnouncePending, n.log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkServedNAR checks that the node serves path's narinfo, and a NAR
// that is byte for byte what nix-store --dump makes of it.
func (n *nodeProc) checkServedNAR(path string) {
	n.t.Helper()
	code, body := n.get("/" + hashPart(path) + ".narinfo")
	if code != 200 {
		n.t.Fatalf("narinfo of %s: %d", path, code)
	}
	_, narBytes := n.get("/" + narinfoField(string(body), "URL"))
	if sha256.Sum256(narBytes) != sha256.Sum256(nixtest.Output(n.t, "nix-store", "--dump", path)) {
		n.t.Fatalf("the NAR served for %s differs from nix-store --dump", path)
	}
}

// waitPeers waits until the node has at least k peers.
func (n *nodeProc) waitPeers(k int) {
	n.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for n.status().Peers < k {
		if time.Now().After(deadline) {
			n.t.Fatalf("node has %d peers, want %d:\n%s", n.status().Peers, k, n.log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestP2PChain: a closure imported on A is substituted by a Nix client
// pointed at C, which knows only B, which knows A; through C's HTTP cache
// and through its daemon socket.
func TestP2PChain(t *testing.T) {
	nixtest.Require(t)
	a := newNodeAt(t, "127.0.0.2", "node-a-1")
	a.start()
	pub := a.status().PublicKey
	b := newNodeAt(t, "127.0.0.3", "", "--bootstrap", a.p2pAddr(), "--trusted-public-key", pub)
	b.start()
	c := newNodeAt(t, "127.0.0.4", "", "--bootstrap", b.p2pAddr(), "--trusted-public-key", pub)
	c.start()
	top, all := buildClosure(t)
	edge := addTree(t, "edge", edgeFiles())
	a.run("import", "--sign", "--recursive", top)
	a.run("import", "--sign", edge)
	a.waitPeers(2)
	a.waitAnnounced()

	src := pathInfo(t, "", append(all, edge)...)
	client := filepath.Join(t.TempDir(), "client")
	nixtest.Output(t, "nix", "copy", "--from", c.url, "--to", client, "--option", "trusted-public-keys", pub, top)
	for _, p := range all {
		if got := pathInfo(t, client, p)[p]; got.NarHash != src[p].NarHash {
			t.Errorf("%s through C: %s, want %s", p, got.NarHash, src[p].NarHash)
		}
	}
	// The daemon endpoint looks a missing path up the same way.
	if got := pathInfo(t, "unix://"+c.socket(), edge)[edge]; got.NarHash != src[edge].NarHash {
		t.Fatalf("path-info of %s over C's socket: %+v", edge, got)
	}
	// And `p2pstore fetch` on B.
	out := b.run("fetch", edge)
	if !strings.Contains(out, "fetched 1 path ") {
		t.Fatalf("fetch on B: %s", out)
	}
	b.checkServedNAR(edge)
	// A signed the tree and chunk lists of its paths, and B passed the
	// signatures on: every fetch checked each chunk list on arrival.
	for _, n := range []*nodeProc{b, c} {
		if log := n.log.String(); !strings.Contains(log, "lists_signed=true") || strings.Contains(log, "lists_signed=false") {
			t.Errorf("a fetch did not find its chunk lists signed:\n%s", log)
		}
	}
	if s := c.status(); s.P2PBytesReceived == 0 || a.status().P2PBytesSent == 0 {
		t.Errorf("byte counters: C received %d, A sent %d", s.P2PBytesReceived, a.status().P2PBytesSent)
	}
}

// TestP2PTrustAndPrivacy: a node that does not trust the signer gets
// nothing, and a path nobody trusted signed is neither announced nor
// served.
func TestP2PTrustAndPrivacy(t *testing.T) {
	nixtest.Require(t)
	a := newNodeAt(t, "127.0.0.5", "node-a-1")
	a.start()
	pub := a.status().PublicKey
	// E has no key: what it imports carries no signature anyone trusts.
	e := newNodeAt(t, "127.0.0.6", "", "--bootstrap", a.p2pAddr())
	e.start()
	stranger := newNodeAt(t, "127.0.0.7", "", "--bootstrap", a.p2pAddr())
	stranger.start()
	trusting := newNodeAt(t, "127.0.0.8", "", "--bootstrap", a.p2pAddr(), "--trusted-public-key", pub)
	trusting.start()

	signed := addTree(t, "signed", map[string][]byte{"f": []byte(fmt.Sprint("signed ", time.Now().UnixNano()))})
	private := addTree(t, "private", map[string][]byte{"f": []byte(fmt.Sprint("private ", time.Now().UnixNano()))})
	a.run("import", "--sign", signed)
	e.run("import", private)
	a.waitPeers(3)
	a.waitAnnounced()
	e.waitAnnounced()

	if _, err := stranger.try("fetch", signed); err == nil {
		t.Fatal("a node that trusts no key fetched a path")
	}
	if code, _ := stranger.get("/" + hashPart(signed) + ".narinfo"); code != 404 {
		t.Fatalf("untrusting node's narinfo: %d", code)
	}
	if _, err := trusting.try("fetch", private); err == nil {
		t.Fatal("a path nobody trusted signed was fetched from the node that holds it")
	}
	trusting.run("fetch", signed)
	// E was asked (the trusting node asks its neighbours when the DHT
	// knows no provider) and answered "not found": a byte or two, never
	// the record (hundreds of bytes) or the data.
	if sent := e.status().P2PBytesSent; sent > 16 {
		t.Errorf("E sent %d bytes: more than a refusal", sent)
	}
}

// bigTree is a path of random files, big enough to take a while to move.
func bigTree(t *testing.T, mb int) string {
	t.Helper()
	files := map[string][]byte{}
	var seed [32]byte
	copy(seed[:], fmt.Sprint(time.Now().UnixNano()))
	r := randReader(seed)
	for i := 0; i < mb/4; i++ {
		b := make([]byte, 4<<20)
		r.Read(b)
		files[fmt.Sprintf("d%d/blob%d", i%3, i)] = b
	}
	return addTree(t, "big", files)
}

// TestP2PBadPeers: among the providers of a path, one serves corrupted
// chunks and one has its pack files damaged on disk; the fetch still
// completes from the honest one, the liar is dropped, and the NAR is
// right.
func TestP2PBadPeers(t *testing.T) {
	nixtest.Require(t)
	a := newNodeAt(t, "127.0.0.9", "node-a-1")
	a.start()
	pubA := a.status().PublicKey
	damaged := newNodeAt(t, "127.0.0.10", "node-d-1", "--bootstrap", a.p2pAddr())
	damaged.start()
	pubD := damaged.status().PublicKey
	p := bigTree(t, 32)
	a.run("import", "--sign", p)
	damaged.run("import", "--sign", p)
	// Damage every chunk the damaged node holds.
	packs, _ := filepath.Glob(filepath.Join(damaged.dir, "data", "castore", "packs", "*.pack"))
	for _, pack := range packs {
		f, err := os.OpenFile(pack, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		info, _ := f.Stat()
		for off := int64(0); off < info.Size(); off += 4096 {
			f.WriteAt([]byte{0xff, 0x00, 0xff}, off)
		}
		f.Close()
	}
	evil, _, _ := startLiar(t, a, p, corruptChunks)
	a.waitAnnounced()
	damaged.waitAnnounced()

	c := newNodeAt(t, "127.0.0.11", "", "--bootstrap", a.p2pAddr(), "--trusted-public-key", pubA, "--trusted-public-key", pubD)
	c.start()
	c.waitPeers(3)
	out := c.run("fetch", p)
	if !strings.Contains(out, "fetched 1 path ") {
		t.Fatalf("fetch: %s", out)
	}
	c.checkServedNAR(p)
	if !strings.Contains(c.log.String(), evil.String()) || !strings.Contains(c.log.String(), "dropping a peer that sent bad data") {
		t.Errorf("the lying peer %s was not dropped:\n%s", evil, c.log)
	}
	if strings.Contains(c.log.String(), "dropping a peer that sent bad data\" peer="+peerIDOf(t, damaged)) {
		t.Errorf("the damaged peer was called a liar: it should refuse its bad chunks, not send them")
	}
	c.run("verify")
}

func peerIDOf(t *testing.T, n *nodeProc) string {
	return n.status().PeerID
}

// lie is what a lying peer gets wrong.
type lie int

const (
	corruptChunks  lie = iota // flips a byte in every chunk it sends
	swapChunkLists            // lists a file's chunks out of order
	stallChunks               // takes chunk requests and never answers
)

// startLiar runs an in-process peer that holds a copy of the path, taken
// from the honest node, announces it, and serves it with a lie. It returns
// the liar's peer id, its address and what it serves.
func startLiar(t *testing.T, honest *nodeProc, path string, how lie) (peer.ID, string, *liarSource) {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.12/tcp/0"), libp2p.DisableRelay())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	addr, _ := ma.NewMultiaddr(honest.p2pAddr())
	pi, _ := peer.AddrInfoFromP2pAddr(addr)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := h.Connect(ctx, *pi); err != nil {
		t.Fatal(err)
	}
	liar, err := copyPath(ctx, transfer.NewClient(h), pi.ID, hashPart(path))
	if err != nil {
		t.Fatalf("liar copying the path: %v", err)
	}
	liar.how = how
	liar.stop = make(chan struct{})
	t.Cleanup(func() { close(liar.stop) }) // before the host closes
	srv := transfer.NewServer(liar, 0, slogDiscard())
	h.SetStreamHandler(transfer.ProtocolID, srv.Handle)
	d, err := dht.New(h, dht.Options{Bootstrap: []peer.AddrInfo{*pi}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	d.Bootstrap(ctx)
	if err := d.ProvideAgain(dht.PathKey("/nix/store", hashPart(path))); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, err := d.Stats(ctx)
		if err == nil && st.Connectivity.Status == "online" && st.Queues.PendingKeyProvides == 0 && st.Queues.PendingRegionProvides == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the liar could not announce")
		}
		d.ProvideAgain(dht.PathKey("/nix/store", hashPart(path)))
		time.Sleep(200 * time.Millisecond)
	}
	return h.ID(), fmt.Sprintf("%s/p2p/%s", h.Addrs()[0], h.ID()), liar
}

// liarSource is a transfer.Source holding one path, in memory, that lies.
type liarSource struct {
	how    lie
	rec    *pathinfo.Info
	dirs   map[castore.Digest][]byte
	lists  map[castore.Digest][]castore.ChunkRef
	chunks map[castore.Digest][]byte
	stop   chan struct{} // closed at the end of the test
	stalls atomic.Int32  // chunk requests left unanswered
}

// copyPath gets a path's record, tree, chunk lists and chunks from p.
func copyPath(ctx context.Context, c *transfer.Client, p peer.ID, hash string) (*liarSource, error) {
	l := &liarSource{dirs: map[castore.Digest][]byte{}, lists: map[castore.Digest][]castore.ChunkRef{}, chunks: map[castore.Digest][]byte{}}
	var err error
	if l.rec, err = c.Record(ctx, p, hash); err != nil {
		return nil, err
	}
	root := l.rec.Root
	blobs := []transfer.BlobRef{{Digest: root.Digest, Size: root.Size}}
	if root.Type == castore.TypeDirectory {
		blobs = nil
		err = c.Directories(ctx, p, root.Digest, func(d castore.Digest, dir *castore.Directory, raw []byte) error {
			l.dirs[d] = append([]byte(nil), raw...)
			for _, f := range dir.Files {
				blobs = append(blobs, transfer.BlobRef{Digest: f.Digest, Size: f.Size})
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	var chunks []castore.Digest
	for i := 0; i < len(blobs); i += transfer.MaxBlobsPerRequest {
		batch := blobs[i:min(i+transfer.MaxBlobsPerRequest, len(blobs))]
		lists, err := c.ChunkLists(ctx, p, batch)
		if err != nil {
			return nil, err
		}
		for k, b := range batch {
			refs := lists[k]
			if refs == nil {
				refs = []castore.ChunkRef{{Digest: b.Digest, Size: uint32(b.Size)}}
			}
			l.lists[b.Digest] = refs
			for _, r := range refs {
				chunks = append(chunks, r.Digest)
			}
		}
	}
	for i := 0; i < len(chunks); i += transfer.MaxChunksPerRequest {
		err := c.Chunks(ctx, p, chunks[i:min(i+transfer.MaxChunksPerRequest, len(chunks))], false, nil, func(d castore.Digest, data, _ []byte) error {
			l.chunks[d] = append([]byte(nil), data...)
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return l, nil
}

func (l *liarSource) Record(ctx context.Context, hash string) (*pathinfo.Info, error) {
	return l.rec, nil
}

func (l *liarSource) Directory(d castore.Digest) ([]byte, error) {
	if b, ok := l.dirs[d]; ok {
		return b, nil
	}
	return nil, transfer.ErrNotFound
}

func (l *liarSource) ChunkList(d castore.Digest, size uint64) ([]castore.ChunkRef, error) {
	refs, ok := l.lists[d]
	if !ok {
		return nil, transfer.ErrNotFound
	}
	if l.how == swapChunkLists && len(refs) >= 2 {
		refs = append([]castore.ChunkRef{refs[1], refs[0]}, refs[2:]...)
	}
	return refs, nil
}

func (l *liarSource) Chunks(ds []castore.Digest, zstd bool, buf []byte, fn func([]byte, bool, error) error) error {
	for _, d := range ds {
		data, ok := l.chunks[d]
		if !ok {
			if err := fn(buf, false, transfer.ErrNotFound); err != nil {
				return err
			}
			continue
		}
		if l.how == stallChunks {
			l.stalls.Add(1)
			<-l.stop
			return errors.New("test over")
		}
		out := append(buf, data...)
		if l.how == corruptChunks {
			out[len(buf)+len(data)/2] ^= 0xff
		}
		if err := fn(out, false, nil); err != nil {
			return err
		}
	}
	return nil
}

// TestP2PLyingChunkList: the only peer left with a path lists a file's
// chunks out of order (each chunk genuine, the sizes adding up). The fetch
// fails on that file's digest, the peer is dropped, and nothing of the
// path becomes valid.
func TestP2PLyingChunkList(t *testing.T) {
	nixtest.Require(t)
	a := newNodeAt(t, "127.0.0.19", "node-a-1")
	a.start()
	pub := a.status().PublicKey
	p := bigTree(t, 8)
	a.run("import", "--sign", p)
	liar, liarAddr, _ := startLiar(t, a, p, swapChunkLists)
	a.kill() // the liar is the only holder left

	c := newNodeAt(t, "127.0.0.20", "", "--bootstrap", liarAddr, "--trusted-public-key", pub)
	c.start()
	c.waitPeers(1)
	if out, err := c.try("fetch", p); err == nil {
		t.Fatalf("fetched a path whose only source lies about its chunk lists:\n%s", out)
	}
	if !strings.Contains(c.log.String(), "dropping a peer that sent bad data\" peer="+liar.String()) {
		t.Errorf("the liar %s was not dropped:\n%s", liar, c.log)
	}
	if code, _ := c.get("/" + hashPart(p) + ".narinfo"); code != 404 {
		t.Fatalf("narinfo after the failed fetch: %d", code)
	}
	c.run("verify")
}

// TestP2PPeerKilled: of two providers, one is killed mid-transfer; the
// fetch finishes from the other.
func TestP2PPeerKilled(t *testing.T) {
	nixtest.Require(t)
	a := newNodeAt(t, "127.0.0.13", "node-a-1", "--max-upload-rate", "8M")
	a.start()
	pub := a.status().PublicKey
	a2 := newNodeAt(t, "127.0.0.14", "", "--bootstrap", a.p2pAddr(), "--trusted-public-key", pub, "--max-upload-rate", "8M")
	a2.start()
	p := bigTree(t, 48)
	a.run("import", "--sign", p)
	a.waitPeers(1)
	a.waitAnnounced()
	a2.run("fetch", p) // a2 holds it too, with A's signature
	a2.waitAnnounced()

	c := newNodeAt(t, "127.0.0.15", "", "--bootstrap", a.p2pAddr(), "--trusted-public-key", pub)
	c.start()
	c.waitPeers(2)
	fetch := exec.Command(binary, append([]string{"fetch", p}, c.args...)...)
	var out strings.Builder
	fetch.Stdout, fetch.Stderr = &out, &out
	if err := fetch.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for a2.status().P2PBytesSent < 4<<20 {
		if time.Now().After(deadline) {
			t.Fatalf("a2 sent nothing; c:\n%s", c.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
	a2.cmd.Process.Signal(syscall.SIGKILL)
	a2.cmd.Wait()
	a2.cmd = nil
	if err := fetch.Wait(); err != nil {
		t.Fatalf("fetch after a provider died: %v\n%s\n%s", err, out.String(), c.log)
	}
	c.checkServedNAR(p)
}

// TestP2PStalledPeer: of two providers, one takes chunk requests and
// never answers. The other takes over the stalled peer's share: the fetch
// ends long before the stall timeout (20 s) would have given up on it, and
// the NAR is right.
func TestP2PStalledPeer(t *testing.T) {
	nixtest.Require(t)
	a := newNodeAt(t, "127.0.0.21", "node-a-1")
	a.start()
	pub := a.status().PublicKey
	p := bigTree(t, 64) // 16 batches of chunks: some for each peer
	a.run("import", "--sign", p)
	_, _, staller := startLiar(t, a, p, stallChunks)
	a.waitAnnounced() // online once the liar is its peer

	c := newNodeAt(t, "127.0.0.22", "", "--bootstrap", a.p2pAddr(), "--trusted-public-key", pub)
	c.start()
	c.waitPeers(2)
	start := time.Now()
	out := c.run("fetch", p)
	took := time.Since(start)
	if !strings.Contains(out, "fetched 1 path ") {
		t.Fatalf("fetch: %s", out)
	}
	if staller.stalls.Load() == 0 {
		t.Fatalf("the fetch never asked the stalling peer for chunks; c:\n%s", c.log)
	}
	if took > 10*time.Second {
		t.Errorf("the fetch took %s: it waited for the stalled peer", took)
	}
	c.checkServedNAR(p)
	c.run("verify")
}

// TestP2PGhostProviders: the DHT still lists many peers that announced a
// path and have since gone (records outlive their announcers); a node
// connected to the one live holder fetches it all the same.
func TestP2PGhostProviders(t *testing.T) {
	nixtest.Require(t)
	a := newNodeAt(t, "127.0.0.16", "node-a-1")
	a.start()
	pub := a.status().PublicKey
	p := addTree(t, "haunted", map[string][]byte{"f": []byte(fmt.Sprint("haunted ", time.Now().UnixNano()))})
	a.run("import", "--sign", p)

	addr, _ := ma.NewMultiaddr(a.p2pAddr())
	pi, _ := peer.AddrInfoFromP2pAddr(addr)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const ghosts = 40 // more than a fetch asks at once, or draws from
	for i := 0; i < ghosts; i++ {
		h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.17/tcp/0"), libp2p.DisableRelay())
		if err != nil {
			t.Fatal(err)
		}
		kad, err := kaddht.New(h, kaddht.Mode(kaddht.ModeClient), kaddht.ProtocolPrefix(dht.ProtocolPrefix),
			kaddht.BootstrapPeers(*pi))
		if err != nil {
			t.Fatal(err)
		}
		if err := h.Connect(ctx, *pi); err != nil {
			t.Fatal(err)
		}
		for k := 0; kad.RoutingTable().Size() == 0; k++ {
			if k == 100 {
				t.Fatal("a ghost could not add A to its routing table")
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err := kad.Provide(ctx, dht.CID(dht.PathKey("/nix/store", hashPart(p))), true); err != nil {
			t.Fatalf("ghost %d announcing: %v", i, err)
		}
		kad.Close()
		h.Close() // gone: its address now refuses connections
	}

	c := newNodeAt(t, "127.0.0.18", "", "--bootstrap", a.p2pAddr(), "--trusted-public-key", pub)
	c.start()
	c.waitPeers(1)
	if out, err := c.try("fetch", p); err != nil {
		t.Fatalf("fetch with %d ghost providers: %v\n%s\n%s", ghosts, err, out, c.log)
	}
	c.checkServedNAR(p)
}

var _ = node.Status{}

func randReader(seed [32]byte) interface{ Read([]byte) (int, error) } {
	return rand.NewChaCha8(seed)
}

func slogDiscard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// inNamespace makes a node made by newNodeAt run in h's network
// namespace, listening (HTTP and libp2p) on h's address, with mDNS on
// when mdns is set.
func (n *nodeProc) inNamespace(h *netlab.Host, mdns bool) {
	for j, a := range n.args {
		switch a {
		case "--p2p-listen":
			n.args[j+1] = "/ip4/" + h.IP + "/tcp/0"
		case "--http-listen":
			n.args[j+1] = h.IP + ":0"
		case "--mdns=false":
			if mdns {
				n.args[j] = "--mdns=true"
			}
		}
	}
	n.wrap = h.Exec()
}

// TestMDNSNamespaces: two nodes on one LAN (network namespaces on a
// bridge), each knowing nothing of the other, find each other by mDNS,
// and one fetches a path the other holds.
func TestMDNSNamespaces(t *testing.T) {
	nixtest.Require(t)
	lab := netlab.New(t)
	hosts := []*netlab.Host{lab.Host("a"), lab.Host("b")}
	var nodes []*nodeProc
	for i, h := range hosts {
		keyName := ""
		if i == 0 {
			keyName = "mdns-a-1"
		}
		n := newNodeAt(t, "127.0.0.1", keyName)
		n.inNamespace(h, true)
		nodes = append(nodes, n)
	}
	a, b := nodes[0], nodes[1]
	a.start()
	b.args = append(b.args, "--trusted-public-key", a.status().PublicKey)
	b.start()
	p := addTree(t, "lan", map[string][]byte{"f": []byte(fmt.Sprint("over the LAN ", time.Now().UnixNano()))})
	a.run("import", "--sign", p)
	a.waitPeers(1)
	b.waitPeers(1)
	if out := b.run("fetch", p); !strings.Contains(out, "fetched 1 path ") {
		t.Fatalf("fetch over the LAN: %s", out)
	}
}

// TestP2PConcurrentNARs: clients ask a cold node for the same NAR at once.
// One fetch serves them all; each render takes the chunks the fetch has
// just decoded, or, when another render took them first, waits for them
// in the store. Every client gets the NAR nix-store --dump gives, and the
// store the node keeps (chunks as the frames they came in) checks out.
func TestP2PConcurrentNARs(t *testing.T) {
	nixtest.Require(t)
	a := newNodeAt(t, "127.0.0.23", "node-a-1", "--max-upload-rate", "16M")
	a.start()
	pub := a.status().PublicKey
	files := map[string][]byte{}
	for i := range 12 {
		var b strings.Builder
		for k := 0; b.Len() < 1<<20; k++ {
			fmt.Fprintf(&b, "file %d line %d: %x\n", i, k, sha256.Sum256([]byte{byte(i), byte(k), byte(k >> 8)}))
		}
		files[fmt.Sprintf("d%d/text%d", i%3, i)] = []byte(b.String())
	}
	p, c, url, want := coldNAR(t, a, pub, "127.0.0.24", "text", files)
	errs := make(chan error, 4)
	for range cap(errs) {
		go func() {
			resp, err := http.Get(url)
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			h := sha256.New()
			n, err := io.Copy(h, resp.Body)
			if err == nil && (resp.StatusCode != 200 || [32]byte(h.Sum(nil)) != want) {
				err = fmt.Errorf("status %d, %d bytes, not the NAR of nix-store --dump", resp.StatusCode, n)
			}
			errs <- err
		}()
	}
	for range cap(errs) {
		if err := <-errs; err != nil {
			t.Errorf("a client of C: %v", err)
		}
	}
	if t.Failed() {
		t.Fatalf("C:\n%s", c.log)
	}
	c.run("verify")
	c.checkServedNAR(p) // from the store, once valid
}

// coldNAR adds a tree of files to the Nix store and imports it on a, then
// starts a node C at ip that knows only a and trusts pub, and asks it for
// the path's narinfo: the URL of the NAR C then fetches from a as it is
// read, and the sha256 of nix-store --dump.
func coldNAR(t *testing.T, a *nodeProc, pub, ip, name string, files map[string][]byte) (p string, c *nodeProc, url string, want [32]byte) {
	t.Helper()
	p = addTree(t, name, files)
	want = sha256.Sum256(nixtest.Output(t, "nix-store", "--dump", p))
	a.run("import", "--sign", p)
	c = newNodeAt(t, ip, "", "--bootstrap", a.p2pAddr(), "--trusted-public-key", pub)
	c.start()
	c.waitPeers(1)
	// The fetch starts here: the caller asks for the NAR right away, as
	// a Nix client does.
	code, body := c.get("/" + hashPart(p) + ".narinfo")
	if code != 200 {
		t.Fatalf("narinfo from C: %d\n%s", code, c.log)
	}
	return p, c, c.url + "/" + narinfoField(string(body), "URL"), want
}

// TestP2PSlowClientRepeats: a client of C that stops reading while C
// fetches a NAR larger than what C keeps for it in memory, from a tree in
// which content repeats (the same file three times, a file that repeats
// one block): the NAR still matches nix-store --dump, whether its chunks
// come from memory or from the store.
func TestP2PSlowClientRepeats(t *testing.T) {
	nixtest.Require(t)
	a := newNodeAt(t, "127.0.0.25", "node-a-1", "--max-upload-rate", "16M")
	a.start()
	pub := a.status().PublicKey
	rng := rand.New(rand.NewChaCha8([32]byte{25}))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	same := random(2 << 20)
	block := random(512 << 10)
	files := map[string][]byte{
		"a/same":    same,
		"big":       random(44 << 20), // more than the 32 MiB C keeps
		"m/same":    same,
		"repeating": bytes.Repeat(block, 4),
		"z/same":    same,
	}
	p, c, url, want := coldNAR(t, a, pub, "127.0.0.26", "repeats", files)
	client := &http.Client{Timeout: time.Minute}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	h := sha256.New()
	n, err := io.CopyN(h, resp.Body, 64<<10)
	if err == nil {
		// C downloads on at A's 16 MB/s, past what it keeps for the
		// client, while the client reads nothing.
		time.Sleep(2500 * time.Millisecond)
		var m int64
		m, err = io.Copy(h, resp.Body)
		n += m
	}
	if err != nil || resp.StatusCode != 200 || [32]byte(h.Sum(nil)) != want {
		t.Fatalf("status %d, %d bytes (%v), not the NAR of nix-store --dump\n%s", resp.StatusCode, n, err, c.log)
	}
	c.run("verify")
	c.checkServedNAR(p)
}

// randomFiles is n files of 4 MiB of random bytes.
func randomFiles(seed byte, n int) map[string][]byte {
	rng := rand.New(rand.NewChaCha8([32]byte{seed}))
	files := map[string][]byte{}
	for i := range n {
		b := make([]byte, 4<<20)
		for k := 0; k < len(b); k += 8 {
			v := rng.Uint64()
			for j := range 8 {
				b[k+j] = byte(v >> (8 * j))
			}
		}
		files[fmt.Sprintf("d%d/blob%d", i%3, i)] = b
	}
	return files
}

// TestP2PSeedDiesWhileNARStreams: the only peer with a path dies while C
// streams its NAR to a client. The client's response is cut short at once
// (the fetch fails: nothing more can come), not left waiting for the
// client to give up, and C keeps nothing of the path.
func TestP2PSeedDiesWhileNARStreams(t *testing.T) {
	nixtest.Require(t)
	a := newNodeAt(t, "127.0.0.27", "node-a-1", "--max-upload-rate", "4M")
	a.start()
	_, c, url, _ := coldNAR(t, a, a.status().PublicKey, "127.0.0.28", "doomed", randomFiles(27, 6))
	resp, err := (&http.Client{Timeout: time.Minute}).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.CopyN(io.Discard, resp.Body, 1<<20); err != nil {
		t.Fatalf("first MiB of the NAR: %v\n%s", err, c.log)
	}
	a.kill()
	start := time.Now()
	n, err := io.Copy(io.Discard, resp.Body)
	if took := time.Since(start); err == nil || took > 10*time.Second {
		t.Fatalf("after the seed died: %d more bytes in %v, error %v; want the response cut short at once\n%s", n, took, err, c.log)
	}
	if st := c.status(); st.Paths != 0 {
		t.Fatalf("C holds %d paths after a failed fetch", st.Paths)
	}
	c.run("verify")
}

// progress counts what passes through a reader.
type progress struct {
	r io.Reader
	n atomic.Int64
}

func (p *progress) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.n.Add(int64(n))
	return n, err
}

// TestP2PZstdBesideStalledNAR: two clients of C read one NAR while C
// fetches it, one uncompressed that stops reading, one as .nar.zst. The
// zstd client keeps up with the download: a NAR that reads only the store
// gets the commits it waits for, even of chunks kept in memory for a NAR
// that takes from there and has stopped.
func TestP2PZstdBesideStalledNAR(t *testing.T) {
	nixtest.Require(t)
	a := newNodeAt(t, "127.0.0.29", "node-a-1", "--max-upload-rate", "16M")
	a.start()
	p, c, url, want := coldNAR(t, a, a.status().PublicKey, "127.0.0.30", "beside", randomFiles(29, 12))
	client := &http.Client{Timeout: time.Minute}
	stalled, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Body.Close()
	var first bytes.Buffer
	if _, err := io.CopyN(&first, stalled.Body, 64<<10); err != nil {
		t.Fatal(err)
	}
	code, body := c.get("/zstd/" + hashPart(p) + ".narinfo")
	if code != 200 {
		t.Fatalf("zstd narinfo from C: %d", code)
	}
	narSize, _ := strconv.ParseUint(narinfoField(string(body), "NarSize"), 10, 64)
	zresp, err := client.Get(c.url + "/zstd/" + narinfoField(string(body), "URL"))
	if err != nil {
		t.Fatal(err)
	}
	defer zresp.Body.Close()
	dec, err := zstd.NewReader(zresp.Body)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	read := &progress{r: dec}
	h := sha256.New()
	done := make(chan error, 1)
	go func() { _, err := io.Copy(h, read); done <- err }()
	// With 70% of the NAR in C, the zstd client has more than 40% (it
	// trails the download by a commit), not only the few megabytes the
	// stalled client took before it stopped.
	deadline := time.Now().Add(30 * time.Second)
	for c.status().P2PBytesReceived < narSize*7/10 {
		if time.Now().After(deadline) {
			t.Fatalf("C received %d bytes of %d in 30 s\n%s", c.status().P2PBytesReceived, narSize, c.log)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := uint64(read.n.Load()); got < narSize*4/10 {
		t.Fatalf("with %d of %d bytes in C, the zstd client had %d", c.status().P2PBytesReceived, narSize, got)
	}
	if err := <-done; err != nil || [32]byte(h.Sum(nil)) != want {
		t.Fatalf("zstd NAR: %v, or not the NAR of nix-store --dump", err)
	}
	// The stalled client's NAR, 64 KiB of it read, is right too.
	h.Reset()
	if _, err := io.Copy(h, io.MultiReader(bytes.NewReader(first.Bytes()), stalled.Body)); err != nil || [32]byte(h.Sum(nil)) != want {
		t.Fatalf("uncompressed NAR: %v, or not the NAR of nix-store --dump", err)
	}
	c.checkServedNAR(p)
}
