// Package dht announces what a node holds on a Kademlia DHT and finds who
// holds what it lacks. It runs go-libp2p-kad-dht in server mode under our
// own protocol prefix (/p2pstore), so a node never joins the public IPFS
// DHT, and announces with the DHT's sweeping provider: keys are grouped by
// keyspace region and each region is swept once per reprovide interval,
// so the cost of announcing grows with the network, not with the number of
// keys (a node holds tens of thousands of chunks per toolchain).
//
// Keys are multihashes with the BLAKE3-256 code: a castore digest as it is
// (chunks and directories), and for a store path the BLAKE3 of a label,
// the store directory and the path's hash part, so that a node asked for
// /<hash>.narinfo can find holders from the hash part alone.
package dht

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ipfs/go-cid"
	kaddht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p-kad-dht/provider"
	"github.com/libp2p/go-libp2p-kad-dht/provider/stats"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	mh "github.com/multiformats/go-multihash"
	"github.com/zeebo/blake3"

	"github.com/p2pstore/p2pstore/castore"
)

// ProtocolPrefix keeps our DHT apart from every other.
const ProtocolPrefix = "/p2pstore"

// DigestKey is the DHT key of a chunk or directory.
func DigestKey(d castore.Digest) mh.Multihash {
	k, err := mh.Encode(d[:], mh.BLAKE3)
	if err != nil {
		panic(err) // only for an unknown code or a wrong length
	}
	return k
}

// PathKey is the DHT key of a store path, from its store directory and
// hash part.
func PathKey(storeDir, hashPart string) mh.Multihash {
	sum := blake3.Sum256([]byte("p2pstore store path v1\x00" + storeDir + "\x00" + hashPart))
	return DigestKey(sum)
}

// CID is a key as a CIDv1 (raw codec), the form provider lookups take.
func CID(k mh.Multihash) cid.Cid { return cid.NewCidV1(cid.Raw, k) }

// DHT is a node's view of the network's DHT.
type DHT struct {
	kad  *kaddht.IpfsDHT
	prov *provider.SweepingProvider
}

// Options tune the DHT.
type Options struct {
	Bootstrap []peer.AddrInfo
	// ReprovideInterval is how often every key is announced again; records
	// live twice as long. Zero means the kad-dht default (22 h).
	ReprovideInterval time.Duration
	// OnOnline is called when the node (re)gains contact with the DHT;
	// keys announced while it was offline are queued for then.
	OnOnline func()
}

// New starts a DHT server on h and its provider.
func New(h host.Host, opts Options) (*DHT, error) {
	kad, err := kaddht.New(h,
		kaddht.Mode(kaddht.ModeServer),
		kaddht.ProtocolPrefix(ProtocolPrefix),
		kaddht.BootstrapPeers(opts.Bootstrap...),
	)
	if err != nil {
		return nil, fmt.Errorf("dht: %w", err)
	}
	popts := []provider.Option{
		provider.WithHost(h),
		provider.WithRouter(kad),
		provider.WithMessageSender(kad.MessageSender()),
		provider.WithSelfAddrs(func() []ma.Multiaddr { return h.Addrs() }),
		provider.WithDhtType("p2pstore"),
		// In a small network the region sweep is quick; connectivity is
		// checked every 10 s so that a node that just found its first peer
		// starts announcing soon.
		provider.WithConnectivityCheckOnlineInterval(10 * time.Second),
	}
	if opts.ReprovideInterval > 0 {
		popts = append(popts, provider.WithReprovideInterval(opts.ReprovideInterval))
	}
	if opts.OnOnline != nil {
		popts = append(popts, provider.WithConnectivityCallbacks(opts.OnOnline, func() {}, func() {}))
	}
	prov, err := provider.New(popts...)
	if err != nil {
		kad.Close()
		return nil, fmt.Errorf("dht provider: %w", err)
	}
	return &DHT{kad: kad, prov: prov}, nil
}

// Bootstrap fills the routing table from the bootstrap peers and the
// peers already connected.
func (d *DHT) Bootstrap(ctx context.Context) error { return d.kad.Bootstrap(ctx) }

// Provide announces keys and keeps announcing them.
func (d *DHT) Provide(keys ...mh.Multihash) error {
	return d.prov.StartProviding(false, keys...)
}

// ProvideAgain announces keys now, even those announced before.
func (d *DHT) ProvideAgain(keys ...mh.Multihash) error {
	return d.prov.StartProviding(true, keys...)
}

// StopProviding stops announcing keys; their records expire on their own.
func (d *DHT) StopProviding(keys ...mh.Multihash) error {
	return d.prov.StopProviding(keys...)
}

// FindProviders returns the peers that announced key, as they are found,
// at most max of them; the channel closes when the search ends or ctx is
// done.
func (d *DHT) FindProviders(ctx context.Context, key mh.Multihash, max int) <-chan peer.AddrInfo {
	return d.kad.FindProvidersAsync(ctx, CID(key), max)
}

// RoutingTableSize is the number of peers in the routing table.
func (d *DHT) RoutingTableSize() int { return d.kad.RoutingTable().Size() }

// Stats reports the provider's queues and schedule.
func (d *DHT) Stats(ctx context.Context) (stats.Stats, error) { return d.prov.Stats(ctx) }

// Close stops the provider and the DHT.
func (d *DHT) Close() error {
	return errors.Join(d.prov.Close(), d.kad.Close())
}
