package main

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/p2pstore/p2pstore/node"
)

func peersCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "peers",
		Short: "List the running node's connected peers: addresses, bytes each way, round trip",
		Long: `List the running node's connected peers: where each is connected, what the
transfer protocol moved each way since it connected (received: what it
served this node), and the round trip of a ping sent now.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			peers, err := node.NewClient(cfg.DaemonSocket).Peers(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(peers)
			}
			if len(peers) == 0 {
				fmt.Println("no peers connected")
				return nil
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "PEER\tRECEIVED\tSENT\tROUND TRIP\tADDRESSES")
			for _, p := range peers {
				rtt := "-"
				if p.LatencySeconds > 0 {
					rtt = fmt.Sprintf("%.1f ms", p.LatencySeconds*1000)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", p.PeerID, humanBytes(p.BytesReceived), humanBytes(p.BytesSent), rtt,
					strings.Join(p.Addrs, " "))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
