package node

import (
	"log/slog"
	"strconv"
	"time"

	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/node/fetch"
	"github.com/p2pstore/p2pstore/node/pull"
)

// One info line per fetch, whatever its source (peers, an upstream, the
// local Nix store): the path, where it came from with the bytes each
// source sent, the bytes that moved against the NAR's size, and the time
// it took; and the fetch metrics. Failures are logged where they happen
// (packages fetch and pull, localshare.go), and counted here.

// fetchedFromPeers is the fetcher's Config.Done.
func (n *Node) fetchedFromPeers(r fetch.Report) {
	sources := make([]slog.Attr, len(r.Sources))
	for i, s := range r.Sources {
		sources[i] = slog.Uint64(s.ID, s.Bytes)
	}
	n.fetched(viaPeer, r.Info, sources, r.WireBytes, r.Duration, r.Err, slog.Bool("lists_signed", r.ListsSigned))
}

// pulled is the puller's report.
func (n *Node) pulled(r pull.Report) {
	n.fetched(viaUpstream, r.Info, []slog.Attr{slog.Uint64(r.Source, r.BytesReceived)}, r.BytesReceived, r.Duration, r.Err)
}

// copiedLocal reports the copy of a path of the local Nix store.
func (n *Node) copiedLocal(info *pathinfo.Info, took time.Duration, err error) {
	n.fetched(viaLocal, info, []slog.Attr{slog.Uint64("local-store", info.NarSize)}, info.NarSize, took, err)
}

func (n *Node) fetched(via string, info *pathinfo.Info, sources []slog.Attr, received uint64, took time.Duration, err error, extra ...any) {
	n.metrics.fetched(via, received, took, err)
	if err != nil {
		return
	}
	n.log.Info("fetched", append([]any{"path", info.StorePath, "via", via, slog.GroupAttrs("sources", sources...),
		"bytes_received", received, "nar_size", info.NarSize, "seconds", strconv.FormatFloat(took.Seconds(), 'f', 3, 64)}, extra...)...)
}
