package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/p2p/discovery/mdns"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	ma "github.com/multiformats/go-multiaddr"
	mh "github.com/multiformats/go-multihash"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/config"
	"github.com/p2pstore/p2pstore/dht"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/node/fetch"
	"github.com/p2pstore/p2pstore/node/transfer"
)

// p2p is the node's presence on the network: its libp2p host, the DHT, the
// transfer protocol both ways, and what it announces.
type p2p struct {
	n      *Node
	host   host.Host
	dht    *dht.DHT
	client *transfer.Client
	server *transfer.Server
	mdnsMu sync.Mutex
	mdns   mdns.Service
	fetch  *fetch.Fetcher

	announceMu sync.Mutex   // one full re-announcement at a time
	lastSweep  atomic.Int64 // when the last one ended, unix nanoseconds

	failMu     sync.Mutex
	failLogged map[peer.ID]time.Time // when a failure to connect to a peer was last logged at warn
}

// mdnsService is the mDNS service name nodes look for on the LAN.
const mdnsService = "p2pstore"

// loadIdentity reads the node's libp2p key, making one on first start. A
// file that exists and cannot be read is an error, never a new identity.
func loadIdentity(file string) (crypto.PrivKey, error) {
	k, err := readIdentity(file)
	if err != nil {
		return nil, fmt.Errorf("p2p.identity_file %s: %w", file, err)
	}
	return k, nil
}

func readIdentity(file string) (crypto.PrivKey, error) {
	if b, err := os.ReadFile(file); err == nil {
		return crypto.UnmarshalPrivateKey(b)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, unwrapPath(err)
	}
	k, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		return nil, err
	}
	b, err := crypto.MarshalPrivateKey(k)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return nil, unwrapPath(err)
	}
	if err := os.WriteFile(file, b, 0o600); err != nil {
		return nil, unwrapPath(err)
	}
	return k, nil
}

// unwrapPath drops the operation and path of an *os.PathError, for an
// error that names the file already.
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// checkListenAddrs binds every TCP and UDP address of p2p.listen for a
// moment, alone: go-libp2p listens on TCP with SO_REUSEPORT (so that its
// outgoing connections leave from the listening port, which NATs and
// peers' observed addresses need), and a second node on the same port
// would then share it silently, each getting part of the incoming
// connections. Our own bind has no SO_REUSEPORT, so it fails while anyone
// listens there. (The port could be taken between this check and
// libp2p's bind; that is a race with another starting program, not the
// mistake this catches.)
func checkListenAddrs(addrs []string) error {
	for _, s := range addrs {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return fmt.Errorf("p2p.listen %q: %v", s, err)
		}
		host, err := a.ValueForProtocol(ma.P_IP4)
		if err != nil {
			if host, err = a.ValueForProtocol(ma.P_IP6); err != nil {
				continue // a DNS name or another transport: libp2p's to check
			}
		}
		for _, proto := range []struct {
			code    int
			network string
		}{{ma.P_TCP, "tcp"}, {ma.P_UDP, "udp"}} {
			port, err := a.ValueForProtocol(proto.code)
			if err != nil {
				continue
			}
			addr := net.JoinHostPort(host, port)
			var c io.Closer
			if proto.network == "tcp" {
				c, err = net.Listen("tcp", addr)
			} else {
				c, err = net.ListenPacket("udp", addr)
			}
			if err != nil {
				var se *os.SyscallError
				if errors.As(err, &se) {
					err = se.Err
				}
				if errors.Is(err, syscall.EADDRINUSE) {
					return fmt.Errorf("p2p.listen %s: address already in use (another p2pstore node or another program listens there)", s)
				}
				return fmt.Errorf("p2p.listen %s: %v", s, err)
			}
			c.Close()
		}
	}
	return nil
}

// resourceLimits are go-libp2p's defaults scaled to the machine, with room
// for bulk transfer on our protocol and limits per peer well below the
// totals, so that a handful of identities cannot take a total whole:
//
//   - transfer: 1024 inbound streams in all, transfer.MaxStreamsPerPeer
//     (16) per peer, so 64 identities to fill it, which go-libp2p's
//     limit of 8 connections per IPv4 address (per IPv6 /56; 64 per /48;
//     none on loopback) spreads over 8 addresses. A fetch keeps 4 batch
//     requests in flight per peer (streamsPerPeer) and the client 12
//     streams at most, so honest peers never meet the limit. Memory is
//     what the server reserves per answer (transfer.StreamMemory), for
//     as many streams.
//   - all protocols: 64 inbound streams per peer (default 256 and more
//     per GB), and 512 inbound streams not yet past protocol negotiation
//     (default 128 and more per GB), which a stream may hold for 10 s:
//     with the defaults, one peer could take them all and refuse every
//     other peer's streams.
func resourceLimits() rcmgr.ConcreteLimitConfig {
	scaling := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&scaling)
	scaling.PeerBaseLimit.StreamsInbound = 64
	scaling.PeerLimitIncrease.StreamsInbound = 0
	scaling.TransientBaseLimit.StreamsInbound = 512
	const total, perPeer = 1024, transfer.MaxStreamsPerPeer
	scaling.AddProtocolLimit(transfer.ProtocolID,
		rcmgr.BaseLimit{StreamsInbound: total, StreamsOutbound: total, Streams: 2 * total, Memory: total * transfer.StreamMemory},
		rcmgr.BaseLimitIncrease{})
	scaling.AddProtocolPeerLimit(transfer.ProtocolID,
		rcmgr.BaseLimit{StreamsInbound: perPeer, StreamsOutbound: perPeer, Streams: 2 * perPeer, Memory: perPeer * transfer.StreamMemory},
		rcmgr.BaseLimitIncrease{})
	return scaling.AutoScale()
}

func (n *Node) startP2P(ctx context.Context) (*p2p, error) {
	cfg := n.cfg
	cm, err := connmgr.NewConnManager(64, 256, connmgr.WithGracePeriod(time.Minute))
	if err != nil {
		return nil, err
	}
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(resourceLimits()))
	if err != nil {
		return nil, err
	}
	h, err := libp2p.New(
		libp2p.Identity(n.peerKey),
		libp2p.ListenAddrStrings(cfg.P2PListen...),
		libp2p.ConnectionManager(cm),
		libp2p.ResourceManager(rm),
		libp2p.DisableRelay(),
	)
	if err != nil {
		return nil, fmt.Errorf("p2p: %w", err)
	}
	var boot []peer.AddrInfo
	for _, s := range cfg.Bootstrap {
		pi, err := config.ParseBootstrap(s) // checked by config.Load
		if err != nil {
			h.Close()
			return nil, fmt.Errorf("p2p.bootstrap %q: %v", s, err)
		}
		boot = append(boot, *pi)
	}
	p := &p2p{n: n, host: h, client: transfer.NewClient(h), failLogged: map[peer.ID]time.Time{}}
	p.server = transfer.NewServer(transferSource{n}, cfg.MaxUploadRate, n.log)
	p.forgetLeft()
	h.SetStreamHandler(transfer.ProtocolID, p.server.Handle)
	p.dht, err = dht.New(h, dht.Options{Bootstrap: boot, OnOnline: func() { go p.announceAll(ctx) }})
	if err != nil {
		h.Close()
		return nil, err
	}
	p.fetch = fetch.New(fetch.Config{StoreDir: cfg.StoreDir, Keys: n.keys, Log: n.log, Reserve: n.reserveSpace, Done: n.fetchedFromPeers,
		GuixStoreDir: cfg.GuixStoreDir, GuixTrusted: func(info *pathinfo.Info) error { return info.GuixTrustedBy(n.guixKeys) }},
		peerFinder{p}, n.store, fetchedPaths{n}, p)
	for _, pi := range boot {
		go p.connect(ctx, pi, "bootstrap")
	}
	if cfg.MDNS {
		if err := p.startMDNS(); err != nil {
			n.log.Warn("running without mDNS discovery", "err", err)
		} else {
			go p.refreshMDNS(ctx)
		}
	}
	go p.dht.Bootstrap(ctx)
	n.log.Info("p2p up", "peer_id", h.ID(), "addrs", h.Addrs())
	return p, nil
}

func (p *p2p) startMDNS() error {
	s := mdns.NewMdnsService(p.host, mdnsService, p)
	if err := s.Start(); err != nil {
		return err
	}
	p.mdnsMu.Lock()
	p.mdns = s
	p.mdnsMu.Unlock()
	return nil
}

// refreshMDNS restarts mDNS discovery from time to time: it binds to the
// interfaces there are when it starts (a laptop joins a network later),
// and its queries back off to a minute apart, so a lost answer leaves a
// lone node alone for long. Alone, it restarts every few seconds.
func (p *p2p) refreshMDNS(ctx context.Context) {
	for {
		wait := 2 * time.Minute
		if len(p.host.Network().Peers()) == 0 {
			wait = 5 * time.Second
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		p.mdnsMu.Lock()
		old := p.mdns
		p.mdnsMu.Unlock()
		if old != nil {
			old.Close()
		}
		if err := p.startMDNS(); err != nil {
			p.n.log.Debug("restarting mDNS", "err", err)
		}
	}
}

// HandlePeerFound is mDNS's callback: a node on the LAN.
func (p *p2p) HandlePeerFound(pi peer.AddrInfo) {
	if pi.ID == p.host.ID() {
		return
	}
	go p.connect(context.Background(), pi, "mdns")
}

// connectFailLogEvery spaces the warnings about one peer that cannot be
// reached: mDNS finds it again every few seconds while the node is alone.
const connectFailLogEvery = 10 * time.Minute

// connect connects to a peer that via (bootstrap, mdns) named, saying in
// the log when a new connection is made and why one failed.
func (p *p2p) connect(ctx context.Context, pi peer.AddrInfo, via string) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	known := p.host.Network().Connectedness(pi.ID) == network.Connected
	if err := p.host.Connect(ctx, pi); err != nil {
		if errors.Is(err, context.Canceled) {
			return // the node is stopping
		}
		level := slog.LevelDebug
		p.failMu.Lock()
		if time.Since(p.failLogged[pi.ID]) >= connectFailLogEvery {
			p.failLogged[pi.ID] = time.Now()
			level = slog.LevelWarn
		}
		p.failMu.Unlock()
		p.n.log.Log(ctx, level, "cannot connect to a peer", "peer", pi.ID, "via", via, "addrs", pi.Addrs, "err", err)
		return
	}
	p.failMu.Lock()
	delete(p.failLogged, pi.ID)
	p.failMu.Unlock()
	if !known {
		var addr ma.Multiaddr
		if cs := p.host.Network().ConnsToPeer(pi.ID); len(cs) > 0 {
			addr = cs[0].RemoteMultiaddr()
		}
		p.n.log.Info("connected to a peer", "peer", pi.ID, "via", via, "addr", addr)
	}
	p.dht.Bootstrap(ctx)
}

func (p *p2p) close() {
	p.mdnsMu.Lock()
	if p.mdns != nil {
		p.mdns.Close()
		p.mdns = nil
	}
	p.mdnsMu.Unlock()
	p.dht.Close()
	p.host.Close()
}

// Share implements fetch.Publisher: the objects now, the announcement
// when the fetcher says.
func (p *p2p) Share(ctx context.Context, info *pathinfo.Info) (announce func()) {
	rec := *info
	rec.Sigs = slices.Clone(info.Sigs)
	p.n.carryOver(&rec) // a private path made invalid and fetched again stays private
	keys := p.shareObjects(ctx, &rec)
	return func() { p.announce(info, keys) }
}

// shareObjects marks the objects of a path's tree as shared, so that peers
// may get them, and returns the DHT keys to announce for it (none for a
// path the node does not share).
func (p *p2p) shareObjects(ctx context.Context, info *pathinfo.Info) []mh.Multihash {
	if !p.n.shares(info) {
		return nil
	}
	fresh, err := p.n.store.Share(ctx, info.Root)
	if err != nil {
		p.n.log.Error("sharing a path", "path", info.StorePath, "err", err)
		return nil
	}
	keys := make([]mh.Multihash, 0, len(fresh)+1)
	keys = append(keys, dht.PathKey(p.n.storeDirOf(info.StorePath), info.HashPart()))
	for _, d := range fresh {
		keys = append(keys, dht.DigestKey(d))
	}
	return keys
}

// announce provides a path's keys on the DHT.
func (p *p2p) announce(info *pathinfo.Info, keys []mh.Multihash) {
	if len(keys) == 0 {
		return
	}
	if err := p.dht.Provide(keys...); err != nil {
		p.n.log.Warn("announcing", "path", info.StorePath, "err", err)
	}
}

// announceAll announces every shared path and object again: at start, and
// whenever the node regains contact with the DHT (keys announced while it
// had none wait for that).
func (p *p2p) announceAll(ctx context.Context) {
	p.announceMu.Lock()
	defer p.announceMu.Unlock()
	var keys []mh.Multihash
	flush := func() {
		if len(keys) > 0 {
			if err := p.dht.ProvideAgain(keys...); err != nil {
				p.n.log.Warn("announcing", "err", err)
			}
			keys = keys[:0]
		}
	}
	err := p.n.index.ForEach(func(info *pathinfo.Info) error {
		if p.n.shares(info) {
			if _, err := p.n.store.Share(ctx, info.Root); err != nil {
				return err
			}
			keys = append(keys, dht.PathKey(p.n.storeDirOf(info.StorePath), info.HashPart()))
		}
		return ctx.Err()
	})
	keys = append(keys, p.n.local.keys()...)
	if err == nil {
		err = p.n.store.ForEachShared(func(d castore.Digest) error {
			keys = append(keys, dht.DigestKey(d))
			if len(keys) >= 4096 {
				flush()
			}
			return ctx.Err()
		})
	}
	flush()
	if err != nil && ctx.Err() == nil {
		p.n.log.Error("announcing what the node holds", "err", err)
	}
	if err == nil {
		p.lastSweep.Store(time.Now().UnixNano())
	}
}

// transferSource answers peers from the node's shared objects.
type transferSource struct{ n *Node }

func (t transferSource) Record(ctx context.Context, hash string) (*pathinfo.Info, error) {
	info, err := t.n.index.Get(hash)
	if errors.Is(err, pathinfo.ErrNotFound) && t.n.local.has(hash) {
		// A signed path of the local Nix store: the record needs its tree.
		if err = t.n.local.ingest(ctx, hash); err == nil {
			info, err = t.n.index.Get(hash)
		}
	}
	if errors.Is(err, pathinfo.ErrNotFound) || (err == nil && !t.n.shares(info)) {
		return nil, transfer.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	t.n.limit.read(hash) // the peer's object requests that follow do not name it
	return info, nil
}

func (t transferSource) Directory(d castore.Digest) ([]byte, error) {
	b, err := t.n.store.SharedDirectory(d)
	if errors.Is(err, castore.ErrNotFound) {
		return nil, transfer.ErrNotFound
	}
	return b, err
}

func (t transferSource) ChunkList(d castore.Digest, size uint64) ([]castore.ChunkRef, error) {
	if !t.n.store.IsShared(d) {
		return nil, transfer.ErrNotFound
	}
	refs, err := t.n.store.BlobChunks(d, size)
	if errors.Is(err, castore.ErrNotFound) {
		return nil, transfer.ErrNotFound
	}
	return refs, err
}

// Chunks reads shared chunks, checked against their digests when sent
// raw (the bytes are in memory anyway); a frame goes as it is stored, and
// the peer that decodes it checks it (decoding every frame here would
// cost a seed a core). A raw chunk found damaged is refused as one the
// node lacks (the peer asks another) and taken out of service.
func (t transferSource) Chunks(ds []castore.Digest, zstd bool, buf []byte, fn func([]byte, bool, error) error) error {
	return t.n.store.SharedChunks(ds, zstd, buf, func(data []byte, compressed bool, err error) error {
		var dmg *castore.Damage
		if errors.As(err, &dmg) {
			t.n.damageFound(dmg, "a peer's request")
			err = transfer.ErrNotFound
		}
		if errors.Is(err, castore.ErrNotFound) {
			err = transfer.ErrNotFound
		}
		return fn(data, compressed, err)
	})
}

// peerSource is a peer as a fetch.Source: the transfer protocol's client
// aimed at one peer.
type peerSource struct {
	p  *p2p
	id peer.ID
}

func (s peerSource) ID() string { return s.id.String() }

func (s peerSource) Record(ctx context.Context, hash string) (*pathinfo.Info, error) {
	return s.p.client.Record(ctx, s.id, hash)
}

func (s peerSource) Directories(ctx context.Context, root castore.Digest, fn func(castore.Digest, *castore.Directory, []byte) error) error {
	return s.p.client.Directories(ctx, s.id, root, fn)
}

func (s peerSource) ChunkLists(ctx context.Context, blobs []transfer.BlobRef) ([][]castore.ChunkRef, error) {
	return s.p.client.ChunkLists(ctx, s.id, blobs)
}

// Chunks asks for zstd frames: a third of the bytes on the wire, and what
// the node keeps.
func (s peerSource) Chunks(ctx context.Context, ds []castore.Digest, bufs transfer.Buffers, fn func(d castore.Digest, data, frame []byte) error) error {
	return s.p.client.Chunks(ctx, s.id, ds, true, bufs, fn)
}

func (s peerSource) Drop() { s.p.host.Network().ClosePeer(s.id) }

// peerFinder finds the peers that may hold a path: those the node is
// connected to, asked directly (a node that has just joined, or whose
// announcements still wait for the DHT to take them, is found by its
// neighbours at once, and on a LAN they are the likeliest sources anyway),
// then those the DHT names.
type peerFinder struct{ p *p2p }

func (f peerFinder) Sources(ctx context.Context, hash string) <-chan fetch.Source {
	out := make(chan fetch.Source)
	go func() {
		defer close(out)
		send := func(id peer.ID) bool {
			if id == f.p.host.ID() {
				return true
			}
			select {
			case out <- peerSource{f.p, id}:
				return true
			case <-ctx.Done():
				return false
			}
		}
		for _, id := range f.p.host.Network().Peers() {
			if !send(id) {
				return
			}
		}
		// The hash part alone does not say whose store the path is in: a
		// node with a Guix listener looks for both keys at once.
		var wg sync.WaitGroup
		for _, dir := range f.storeDirs() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for pi := range f.p.dht.FindProviders(ctx, dht.PathKey(dir, hash), fetchMaxProviders) {
					f.p.host.Peerstore().AddAddrs(pi.ID, pi.Addrs, peerstore.TempAddrTTL)
					if !send(pi.ID) {
						return
					}
				}
			}()
		}
		wg.Wait()
	}()
	return out
}

// storeDirs are the stores whose paths the node looks for on the DHT:
// Nix's, and Guix's when it serves Guix clients.
func (f peerFinder) storeDirs() []string {
	if f.p.n.guixLn != nil {
		return []string{f.p.n.cfg.StoreDir, f.p.n.cfg.GuixStoreDir}
	}
	return []string{f.p.n.cfg.StoreDir}
}

// fetchMaxProviders bounds the providers asked of the DHT for one path.
const fetchMaxProviders = 64

// fetchedPaths records the paths the fetcher completes.
type fetchedPaths struct{ n *Node }

func (f fetchedPaths) Put(info *pathinfo.Info) error {
	// A copy: the job's record is read by its clients meanwhile.
	rec := *info
	rec.Sigs = slices.Clone(info.Sigs)
	rec.Source = pathinfo.SourcePeer
	f.n.carryOver(&rec)
	if err := f.n.putPath(&rec); err != nil {
		return err
	}
	f.n.wakeCompressor()
	return nil
}
