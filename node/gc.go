package node

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
)

// Garbage collection: the objects no valid path uses (left by aborted or
// failed imports and fetches, or by paths the disk limit removed) are
// removed, and the pack space they took is given back, by `p2pstore gc`
// and in the background: within a minute once aborted writers have left
// gcDroppedBytes behind, and hourly while any is left. `p2pstore gc`
// first removes the least recently used unpinned paths over
// storage.max_bytes (disklimit.go).

const (
	gcDroppedBytes = 64 << 20
	gcCheck        = time.Minute
	gcHourly       = time.Hour
)

// GCReport is the outcome of a collection.
type GCReport struct {
	castore.CollectStats
	PathsRemoved int     `json:"paths_removed"` // least recently used unpinned paths, over storage.max_bytes
	Seconds      float64 `json:"seconds"`
}

// collect runs one collection over the roots of every valid path.
func (n *Node) collect(ctx context.Context) (*GCReport, error) {
	start := time.Now()
	op := operationOf(ctx)
	if op != nil {
		tot, _ := n.index.Totals()
		op.phase("marking what the paths use", "paths", uint64(tot.Paths))
	}
	st, err := n.store.Collect(ctx, func(yield func(castore.Node) error) error {
		marked := uint64(0)
		err := n.index.ForEach(func(info *pathinfo.Info) error {
			marked++
			op.set(marked, 0)
			return yield(info.Root)
		})
		op.phase("removing what no path uses", "", 0)
		return err
	})
	var dmg *castore.Damage
	if errors.As(err, &dmg) {
		n.damageFound(dmg, "gc") // the next collection rewrites the pack without it
	}
	if err != nil {
		return nil, err
	}
	n.metrics.collected(st)
	rep := &GCReport{CollectStats: st, Seconds: time.Since(start).Seconds()}
	if st.Chunks+st.Directories+st.Blobs+st.PacksRewritten > 0 {
		n.log.Info("collected garbage", "chunks", st.Chunks, "chunk_bytes", st.ChunkBytes, "directories", st.Directories,
			"packs_rewritten", st.PacksRewritten, "bytes_freed", st.BytesFreed, "seconds", rep.Seconds)
	}
	return rep, nil
}

// gcLoop collects in the background when aborted writers left garbage.
func (n *Node) gcLoop(ctx context.Context) {
	defer n.wg.Done()
	tick := time.NewTicker(gcCheck)
	defer tick.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		dropped := n.store.DroppedBytes()
		if dropped >= gcDroppedBytes || dropped > 0 && time.Since(last) >= gcHourly {
			last = time.Now()
			if _, err := n.collect(ctx); err != nil && ctx.Err() == nil {
				n.log.Error("collecting garbage", "err", err)
			}
		}
	}
}

func (n *Node) serveGC(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	var removed int
	if n.limit.max > 0 {
		operationOf(r.Context()).phase("removing paths over storage.max_bytes", "", 0)
		var err error
		if removed, err = n.evict(r.Context(), n.limit.max); err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
	}
	rep, err := n.collect(r.Context())
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	rep.PathsRemoved, rep.Seconds = removed, time.Since(start).Seconds()
	writeJSON(w, http.StatusOK, rep)
}

// GC asks the node to collect garbage now.
func (c *Client) GC(ctx context.Context) (*GCReport, error) {
	var rep GCReport
	return &rep, c.post(ctx, "/api/v1/gc", nil, &rep)
}
