package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/p2pstore/p2pstore/node"
)

func statusCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the running node's peer id, addresses, peers, paths (shared and private) and storage",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			s, err := node.NewClient(cfg.DaemonSocket).Status(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(s)
			}
			printStatus(s)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// statusPeers is how many peers status lists; `p2pstore peers` lists all.
const statusPeers = 10

func printStatus(s *node.Status) {
	fmt.Printf("peer id:        %s\n", orNone(s.PeerID))
	for _, a := range s.Addrs {
		fmt.Printf("address:        %s\n", a)
	}
	fmt.Printf("peers:          %d connected\n", s.Peers)
	for i, p := range s.ConnectedPeers {
		if i == statusPeers {
			fmt.Printf("                and %d more (p2pstore peers)\n", len(s.ConnectedPeers)-i)
			break
		}
		fmt.Printf("                %s at %s: served %s to this node, got %s\n", p.PeerID, orNone(strings.Join(p.Addrs, " ")),
			humanBytes(p.BytesReceived), humanBytes(p.BytesSent))
	}
	fmt.Printf("binary cache:   http://%s\n", s.HTTPListen)
	fmt.Printf("socket:         %s\n", s.DaemonSocket)
	if s.PublicKey != "" {
		fmt.Printf("public key:     %s\n", s.PublicKey)
	}
	if s.SharedCounted {
		fmt.Printf("paths:          %d (%d shared with peers, %d private)\n", s.Paths, s.SharedPaths, s.PrivatePaths)
	} else {
		fmt.Printf("paths:          %d (still counting the shared ones)\n", s.Paths)
	}
	if s.Paths > 0 {
		fmt.Printf("                %s\n", pathSources(s.PathSources))
	}
	if s.LocalScanned || s.LocalShared > 0 {
		fmt.Printf("local store:    %d signed paths shared from the local Nix store\n", s.LocalShared)
	}
	if s.NARCacheMax > 0 {
		fmt.Printf("NAR cache:      %s of %s in %s, %s served from it\n", humanBytes(uint64(s.NARCacheBytes)), humanBytes(uint64(s.NARCacheMax)),
			count(s.NARCacheEntries, "NAR", "NARs"), count(int(s.NARCacheHits), "response", "responses"))
	}
	fmt.Printf("logical bytes:  %s (sum of NAR sizes)\n", humanBytes(s.BytesLogical))
	fmt.Printf("stored bytes:   %s (%d chunks)\n", humanBytes(s.BytesStored), s.Chunks)
	fmt.Printf("dedup ratio:    %.3f (stored / logical)\n", s.DedupRatio)
	if s.MaxBytes > 0 {
		fmt.Printf("disk limit:     %s of stored bytes (%.1f%% used); %d paths pinned, %d unpinned\n", humanBytes(s.MaxBytes),
			100*float64(s.BytesStored)/float64(s.MaxBytes), s.PinnedPaths, s.UnpinnedPaths)
	} else {
		fmt.Printf("disk limit:     none; %d paths pinned, %d unpinned\n", s.PinnedPaths, s.UnpinnedPaths)
	}
	fmt.Printf("on disk:        %s of packs (stored bytes, zstd frames for .nar.zst, %s of garbage for gc)\n",
		humanBytes(s.DiskBytes), humanBytes(uint64(max(s.GarbageBytes, 0))))
	fmt.Printf("p2p received:   %s, sent %s\n", humanBytes(s.P2PBytesReceived), humanBytes(s.P2PBytesSent))
	fmt.Printf("upstream:       %s, %s; %s received\n", count(int(s.UpstreamHits), "hit", "hits"), count(int(s.UpstreamMisses), "miss", "misses"),
		humanBytes(s.UpstreamBytesReceived))
	if s.PeerID != "" {
		dht := "offline"
		if s.DHTOnline {
			dht = "online"
		}
		dht += fmt.Sprintf(", %s waiting to be announced", count(int(s.DHTQueuedKeys), "key", "keys"))
		if !s.DHTLastSweep.IsZero() {
			dht += fmt.Sprintf(", everything announced at %s", s.DHTLastSweep.Local().Format(time.DateTime))
		}
		fmt.Printf("dht:            %s\n", dht)
	}
}

// pathSources says how the paths came, the most first.
func pathSources(bySource map[string]int) string {
	names := []struct{ key, says string }{
		{"import", "imported"}, {"peer", "fetched from peers"}, {"upstream", "pulled from upstreams"},
		{"local", "copied from the local Nix store"}, {"unknown", "of unknown source (recorded by an older version)"},
	}
	var parts []string
	for _, n := range names {
		if c := bySource[n.key]; c > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", c, n.says))
		}
	}
	return strings.Join(parts, ", ")
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
