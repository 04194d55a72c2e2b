package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/p2pstore/p2pstore/node"
)

func gcCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "gc",
		Short: "Remove the least recently used unpinned paths over storage.max_bytes, and the objects no path uses",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			bar := newOperationBar()
			rep, err := bar.client(node.NewClient(cfg.DaemonSocket)).GC(cmd.Context())
			bar.clear()
			if err != nil {
				return err
			}
			if rep.PathsRemoved > 0 {
				fmt.Printf("removed %d least recently used unpinned paths over storage.max_bytes\n", rep.PathsRemoved)
			}
			fmt.Printf("removed %d chunks (%s), %d chunk lists and %d directories; rewrote %d packs, %s freed, in %.1fs\n",
				rep.Chunks, humanBytes(rep.ChunkBytes), rep.Blobs, rep.Directories, rep.PacksRewritten, humanBytes(uint64(rep.BytesFreed)), rep.Seconds)
			return nil
		},
	}
}
