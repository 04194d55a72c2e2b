package node

import (
	"context"
	"errors"
	"sync"

	"github.com/p2pstore/p2pstore/narview/pathinfo"
)

// What the node gives to peers. A path is shared when a trusted key or
// the node's own signed it, unless its owner imported it as private
// (shares). The node's key signs an import only when the owner says so:
// sign.imports for every import and daemon add, `import --sign` or
// `--private` for one. So a path nobody signed, such as a secret added
// with nix-store --add and imported for the local clients, stays on the
// node; a path from a cache (signed by a trusted key) is public already
// and is shared, unless imported with --private.

// Sharing is what an import asks of the node's signing key.
type Sharing string

const (
	ShareDefault Sharing = ""        // as sign.imports says
	ShareSigned  Sharing = "sign"    // signed by the node, so shared with peers
	SharePrivate Sharing = "private" // never given to peers, whatever signs it
)

// shares says whether a path is one the node gives to peers. A Guix
// path is when a trusted Guix key (or the node's own) signed its Guix
// narinfo, which then goes to peers with it, byte for byte; Nix
// signatures do not make a Guix path shared.
func (n *Node) shares(info *pathinfo.Info) bool {
	if info.Private {
		return false
	}
	if n.isGuix(info.StorePath) {
		return info.GuixTrustedBy(n.guixKeys) == nil
	}
	return info.TrustedBy(n.keys)
}

// sharedCount counts the paths the node shares, for status without
// checking every path's signatures at each call. It stays right this way:
// Run takes a snapshot of the index before the node serves anything and
// putSharedPath writes a path's record as putPath does, when the node
// shares the path after marking its tree shared, and announces it once
// the record is written: a peer that gets the record can then get every
// object of it, as with the paths the fetcher records (fetch.Publisher).
// The other way round, a peer that asked in between (an imported or
// pulled path it was looking for, a neighbour's lookup answered at once)
// got the record, then "not found" for the chunks, and failed the path.
func (n *Node) putSharedPath(ctx context.Context, info *pathinfo.Info) error {
	if n.p2p == nil {
		return n.putPath(info)
	}
	keys := n.p2p.shareObjects(ctx, info)
	if err := n.putPath(info); err != nil {
		return err
	}
	n.p2p.announce(info, keys)
	return nil
}

// countShared counts the shared paths in it, in the background; every
// record written after that goes through putPath, which adds the change
// the write makes (was the old record shared, is the new one), reading
// the old record and writing the new one under mu, so that two writes of
// one path never count it twice. The snapshot holds exactly the writes
// putPath did not count. Until the walk ends, the count is not known.
type sharedCount struct {
	mu      sync.Mutex
	counted bool // the walk is done
	walked  int  // shared paths in the snapshot
	changes int  // what putPath added since the snapshot
}

// putPath writes a path's record, which makes it valid, and keeps the
// count of shared paths right.
func (n *Node) putPath(info *pathinfo.Info) error {
	shared := n.shares(info)
	c := &n.sharedCount
	c.mu.Lock()
	defer c.mu.Unlock()
	old, err := n.index.Get(info.HashPart())
	if err != nil && !errors.Is(err, pathinfo.ErrNotFound) {
		return err
	}
	wasShared := err == nil && n.shares(old)
	if err := n.index.Put(info); err != nil {
		return err
	}
	n.wakeLimit()
	if shared && !wasShared {
		c.changes++
	} else if wasShared && !shared {
		c.changes--
	}
	return nil
}

// countShared counts the shared paths of a snapshot of the index taken
// before any write was counted (see sharedCount), and closes it.
func (n *Node) countShared(ctx context.Context, snap *pathinfo.Snapshot) {
	walked := 0
	err := snap.ForEach(func(info *pathinfo.Info) error {
		if n.shares(info) {
			walked++
		}
		return ctx.Err()
	})
	snap.Close()
	if err != nil {
		if ctx.Err() == nil {
			n.log.Error("counting the shared paths", "err", err)
		}
		return
	}
	c := &n.sharedCount
	c.mu.Lock()
	c.walked, c.counted = walked, true
	c.mu.Unlock()
}

// pathCounts returns the number of paths, and of shared ones, read
// together (known false while the count at start runs).
func (n *Node) pathCounts() (tot pathinfo.Totals, shared int, known bool, err error) {
	c := &n.sharedCount
	c.mu.Lock()
	defer c.mu.Unlock()
	tot, err = n.index.Totals()
	return tot, c.walked + c.changes, c.counted, err
}
