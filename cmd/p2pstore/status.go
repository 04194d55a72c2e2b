package main

import (
	"encoding/json"
	"fmt"
	"os"

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
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(s)
			}
			fmt.Printf("peer id:        %s\n", orNone(s.PeerID))
			for _, a := range s.Addrs {
				fmt.Printf("address:        %s\n", a)
			}
			fmt.Printf("peers:          %d\n", s.Peers)
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
			if s.LocalScanned || s.LocalShared > 0 {
				fmt.Printf("local store:    %d signed paths shared from the local Nix store\n", s.LocalShared)
			}
			if s.NARCacheMax > 0 {
				fmt.Printf("NAR cache:      %s of %s in %d NARs, %d responses served from it\n", humanBytes(uint64(s.NARCacheBytes)), humanBytes(uint64(s.NARCacheMax)), s.NARCacheEntries, s.NARCacheHits)
			}
			fmt.Printf("logical bytes:  %s (sum of NAR sizes)\n", humanBytes(s.BytesLogical))
			fmt.Printf("stored bytes:   %s (%d chunks)\n", humanBytes(s.BytesStored), s.Chunks)
			if s.MaxBytes > 0 {
				fmt.Printf("disk limit:     %s of stored bytes; %d paths pinned, %d unpinned\n", humanBytes(s.MaxBytes), s.PinnedPaths, s.UnpinnedPaths)
			} else {
				fmt.Printf("disk limit:     none; %d paths pinned, %d unpinned\n", s.PinnedPaths, s.UnpinnedPaths)
			}
			fmt.Printf("dedup ratio:    %.3f (stored / logical)\n", s.DedupRatio)
			fmt.Printf("p2p received:   %s, sent %s\n", humanBytes(s.P2PBytesReceived), humanBytes(s.P2PBytesSent))
			fmt.Printf("upstream:       %s received\n", humanBytes(s.UpstreamBytesReceived))
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
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
