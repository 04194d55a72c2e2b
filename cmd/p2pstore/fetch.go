package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/p2pstore/p2pstore/node"
)

func fetchCommand() *cobra.Command {
	var recursive, asJSON bool
	cmd := &cobra.Command{
		Use:   "fetch [--recursive] PATH...",
		Short: "Make the running node fetch store paths from its peers",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			paths, err := node.ResolveStorePaths(cfg.StoreDir, "", args)
			if err != nil {
				return err
			}
			bar := newOperationBar()
			res, err := bar.client(node.NewClient(cfg.DaemonSocket)).Fetch(cmd.Context(), &node.FetchRequest{Paths: paths, Recursive: recursive})
			bar.clear()
			if err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(os.Stdout).Encode(res)
			}
			rate := 0.0
			if res.Seconds > 0 {
				rate = float64(res.NarBytes) / res.Seconds / (1 << 20)
			}
			fmt.Printf("fetched %s (%s of NARs; %s of chunks moved, %s on the wire) in %.2fs (%.0f MiB/s); %s already there\n",
				count(len(res.Fetched), "path", "paths"), humanBytes(res.NarBytes), humanBytes(res.ChunkBytes), humanBytes(res.BytesReceived), res.Seconds, rate,
				count(res.Present, "was", "were"))
			return nil
		},
	}
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "also fetch every path the given paths reference, directly or not")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}
