package node

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
)

// The connected peers, for `p2pstore status` and `p2pstore peers`: where
// each is connected, what the transfer protocol moved each way while it
// was, and the round trip when known. What a peer served is counted from
// its connection on and forgotten when it leaves (forgetLeft), so that
// identities that come and go leave nothing behind.

// PeerStatus is one connected peer.
type PeerStatus struct {
	PeerID string   `json:"peer_id"`
	Addrs  []string `json:"addrs"` // the remote ends of the connections to it
	// What the transfer protocol moved while the peer was connected:
	// received is what it served this node, sent what it got from it.
	BytesReceived uint64 `json:"bytes_received"`
	BytesSent     uint64 `json:"bytes_sent"`
	// LatencySeconds is the round trip, when known (a ping: `p2pstore
	// peers` measures it); 0 otherwise.
	LatencySeconds float64 `json:"latency_seconds,omitempty"`
}

// peerStatus describes peers, sorted by what they served this node, most
// first.
func (p *p2p) peerStatus(ids []peer.ID) []PeerStatus {
	out := make([]PeerStatus, 0, len(ids))
	for _, id := range ids {
		ps := PeerStatus{PeerID: id.String(), Addrs: []string{},
			BytesReceived: p.client.BytesReceivedFrom(id), BytesSent: p.server.BytesSentTo(id),
			LatencySeconds: p.host.Peerstore().LatencyEWMA(id).Seconds()}
		for _, c := range p.host.Network().ConnsToPeer(id) {
			ps.Addrs = append(ps.Addrs, c.RemoteMultiaddr().String())
		}
		slices.Sort(ps.Addrs)
		ps.Addrs = slices.Compact(ps.Addrs)
		out = append(out, ps)
	}
	slices.SortFunc(out, func(a, b PeerStatus) int {
		if a.BytesReceived != b.BytesReceived {
			if a.BytesReceived > b.BytesReceived {
				return -1
			}
			return 1
		}
		return strings.Compare(a.PeerID, b.PeerID)
	})
	return out
}

// forgetLeft drops the byte counts of peers once their last connection
// closes.
func (p *p2p) forgetLeft() {
	p.host.Network().Notify(&network.NotifyBundle{DisconnectedF: func(nw network.Network, c network.Conn) {
		id := c.RemotePeer()
		if nw.Connectedness(id) != network.Connected {
			p.client.ForgetPeer(id)
			p.server.ForgetPeer(id)
		}
	}})
}

// Pings of `p2pstore peers`: every connected peer at once, up to
// maxPings, each given pingWait.
const (
	maxPings = 64
	pingWait = time.Second
)

// ping measures the round trip to peers (recorded in the peerstore, where
// peerStatus reads it).
func (p *p2p) ping(ctx context.Context, ids []peer.ID) {
	ctx, cancel := context.WithTimeout(ctx, pingWait)
	defer cancel()
	var wg sync.WaitGroup
	for _, id := range ids[:min(len(ids), maxPings)] {
		wg.Go(func() {
			// The first answer is enough; cancel ends the stream.
			<-ping.Ping(ctx, p.host, id)
		})
	}
	wg.Wait()
}

// servePeers lists the connected peers, after a ping of each.
func (n *Node) servePeers(w http.ResponseWriter, r *http.Request) {
	p := n.p2p
	if p == nil {
		writeJSON(w, http.StatusOK, []PeerStatus{})
		return
	}
	ids := p.host.Network().Peers()
	p.ping(r.Context(), ids)
	writeJSON(w, http.StatusOK, p.peerStatus(ids))
}

// Peers lists the node's connected peers.
func (c *Client) Peers(ctx context.Context) ([]PeerStatus, error) {
	var out []PeerStatus
	return out, c.get(ctx, "/api/v1/peers", &out)
}
