package dht

import (
	"context"
	"crypto/rand"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	kaddht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	mh "github.com/multiformats/go-multihash"

	"github.com/p2pstore/p2pstore/castore"
)

// network is n DHT nodes on loopback, bootstrapped from the first.
type network struct {
	hosts []host.Host
	dhts  []*DHT
}

func newNetwork(tb testing.TB, n int) *network {
	tb.Helper()
	nw := &network{}
	for i := 0; i < n; i++ {
		h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay())
		if err != nil {
			tb.Fatal(err)
		}
		var boot []peer.AddrInfo
		if i > 0 {
			boot = []peer.AddrInfo{{ID: nw.hosts[0].ID(), Addrs: nw.hosts[0].Addrs()}}
		}
		d, err := New(h, Options{Bootstrap: boot})
		if err != nil {
			tb.Fatal(err)
		}
		nw.hosts, nw.dhts = append(nw.hosts, h), append(nw.dhts, d)
		tb.Cleanup(func() { d.Close(); h.Close() })
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i, h := range nw.hosts[1:] {
		if err := h.Connect(ctx, peer.AddrInfo{ID: nw.hosts[0].ID(), Addrs: nw.hosts[0].Addrs()}); err != nil {
			tb.Fatalf("node %d: %v", i+1, err)
		}
	}
	for _, d := range nw.dhts {
		d.Bootstrap(ctx)
	}
	// Wait until every node knows most others and its provider is online.
	for i, d := range nw.dhts {
		for {
			st, err := d.Stats(ctx)
			if err == nil && st.Connectivity.Status == "online" && d.RoutingTableSize() >= n/2 {
				break
			}
			if ctx.Err() != nil {
				tb.Fatalf("node %d never got online (routing table %d)", i, d.RoutingTableSize())
			}
			d.Bootstrap(ctx)
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nw
}

// waitAnnounced waits until a node has nothing left to announce.
func waitAnnounced(tb testing.TB, d *DHT, timeout time.Duration) time.Duration {
	tb.Helper()
	start := time.Now()
	for {
		st, err := d.Stats(context.Background())
		if err == nil && st.Queues.PendingKeyProvides == 0 && st.Queues.PendingRegionProvides == 0 &&
			st.Operations.Ongoing.KeyProvides == 0 && st.Operations.Ongoing.RegionProvides == 0 {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			tb.Fatalf("announcing did not finish in %v: %+v", timeout, st.Queues)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func randomKeys(n int) []mh.Multihash {
	keys := make([]mh.Multihash, n)
	for i := range keys {
		var d castore.Digest
		rand.Read(d[:])
		keys[i] = DigestKey(d)
	}
	return keys
}

// TestFindProvider checks the basic contract on a small network: a key
// one node announces is found from another.
func TestFindProvider(t *testing.T) {
	nw := newNetwork(t, 4)
	key := randomKeys(1)[0]
	if err := nw.dhts[1].Provide(key); err != nil {
		t.Fatal(err)
	}
	waitAnnounced(t, nw.dhts[1], 30*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for pi := range nw.dhts[3].FindProviders(ctx, key, 1) {
		if pi.ID == nw.hosts[1].ID() {
			return
		}
	}
	t.Fatal("provider not found")
}

// BenchmarkLookup is the time from a miss to the first provider found,
// over 100 keys each announced by a random node of a 10-node network. It
// reports the median and the 90th percentile twice: looked up from
// another node of the network, and from a DHT client that has just
// joined. In a network of at most 20 server nodes (the replication factor)
// every node stores every provider record, so the first is a local read;
// the second takes the network's round trips.
func BenchmarkLookup(b *testing.B) {
	nw := newNetwork(b, 10)
	keys := randomKeys(100)
	for i, k := range keys {
		if err := nw.dhts[i%10].Provide(k); err != nil {
			b.Fatal(err)
		}
	}
	for _, d := range nw.dhts {
		waitAnnounced(b, d, 2*time.Minute)
	}
	client := newClient(b, nw)
	b.ResetTimer()
	var member, joined []time.Duration
	for n := 0; n < b.N; n++ {
		member, joined = member[:0], joined[:0]
		for i, k := range keys {
			member = append(member, lookup(b, func(ctx context.Context) <-chan peer.AddrInfo {
				return nw.dhts[(i+5)%10].FindProviders(ctx, k, 1)
			}))
			joined = append(joined, lookup(b, func(ctx context.Context) <-chan peer.AddrInfo {
				return client.FindProvidersAsync(ctx, CID(k), 1)
			}))
		}
	}
	for _, m := range []struct {
		unit  string
		times []time.Duration
	}{{"ms", member}, {"ms-joined", joined}} {
		sort.Slice(m.times, func(i, j int) bool { return m.times[i] < m.times[j] })
		b.ReportMetric(float64(m.times[len(m.times)/2].Microseconds())/1000, m.unit+"-median")
		b.ReportMetric(float64(m.times[len(m.times)*9/10].Microseconds())/1000, m.unit+"-p90")
	}
}

// lookup times a provider search until its first answer.
func lookup(b *testing.B, find func(context.Context) <-chan peer.AddrInfo) time.Duration {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	for range find(ctx) {
		return time.Since(start)
	}
	b.Fatal("no provider found")
	return 0
}

// newClient is a DHT client (it stores no records) connected to a
// network's first node, its routing table filled.
func newClient(b *testing.B, nw *network) *kaddht.IpfsDHT {
	b.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay())
	if err != nil {
		b.Fatal(err)
	}
	first := peer.AddrInfo{ID: nw.hosts[0].ID(), Addrs: nw.hosts[0].Addrs()}
	kad, err := kaddht.New(h, kaddht.Mode(kaddht.ModeClient), kaddht.ProtocolPrefix(ProtocolPrefix), kaddht.BootstrapPeers(first))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { kad.Close(); h.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := h.Connect(ctx, first); err != nil {
		b.Fatal(err)
	}
	for kad.RoutingTable().Size() < len(nw.hosts)/2 {
		if ctx.Err() != nil {
			b.Fatalf("the client's routing table has %d peers", kad.RoutingTable().Size())
		}
		<-kad.RefreshRoutingTable()
		time.Sleep(50 * time.Millisecond)
	}
	return kad
}

// BenchmarkAnnounce is the time for one node of a 10-node network to
// announce 100,000 keys with the sweeping provider.
func BenchmarkAnnounce(b *testing.B) {
	nw := newNetwork(b, 10)
	for n := 0; n < b.N; n++ {
		keys := randomKeys(100_000)
		b.ResetTimer()
		start := time.Now()
		if err := nw.dhts[0].Provide(keys...); err != nil {
			b.Fatal(err)
		}
		waitAnnounced(b, nw.dhts[0], 10*time.Minute)
		b.ReportMetric(time.Since(start).Seconds(), "s-100k-keys")
		// Spot-check that what was announced can be found.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		found := false
		for range nw.dhts[7].FindProviders(ctx, keys[len(keys)/2], 1) {
			found = true
			break
		}
		cancel()
		if !found {
			b.Fatal(fmt.Sprint("an announced key is not found"))
		}
	}
}
