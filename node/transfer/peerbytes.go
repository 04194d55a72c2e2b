package transfer

import (
	"sync"
	"sync/atomic"

	"github.com/libp2p/go-libp2p/core/peer"
)

// peerBytes counts bytes by peer, for status: what a Client received from
// each peer, what a Server sent to each. The node forgets a peer once it
// is no longer connected (ForgetPeer), so that identities that come and go
// do not pile up here.
type peerBytes struct {
	mu sync.Mutex
	m  map[peer.ID]*atomic.Uint64
}

// counter returns the count of p, making it if need be; an exchange takes
// it once and adds to it without the lock.
func (b *peerBytes) counter(p peer.ID) *atomic.Uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil {
		b.m = map[peer.ID]*atomic.Uint64{}
	}
	c := b.m[p]
	if c == nil {
		c = new(atomic.Uint64)
		b.m[p] = c
	}
	return c
}

func (b *peerBytes) get(p peer.ID) uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if c := b.m[p]; c != nil {
		return c.Load()
	}
	return 0
}

func (b *peerBytes) forget(p peer.ID) {
	b.mu.Lock()
	delete(b.m, p)
	b.mu.Unlock()
}

// BytesReceivedFrom is what the client has received from p since p was
// last forgotten.
func (c *Client) BytesReceivedFrom(p peer.ID) uint64 { return c.byPeer.get(p) }

// ForgetPeer drops the count of what p sent (a peer no longer connected).
func (c *Client) ForgetPeer(p peer.ID) { c.byPeer.forget(p) }

// BytesSentTo is what the server has sent to p since p was last
// forgotten.
func (s *Server) BytesSentTo(p peer.ID) uint64 { return s.byPeer.get(p) }

// ForgetPeer drops the count of what p was sent (a peer no longer
// connected).
func (s *Server) ForgetPeer(p peer.ID) { s.byPeer.forget(p) }
