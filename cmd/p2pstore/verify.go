package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/p2pstore/p2pstore/node"
)

func verifyCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "verify",
		Short: "Check every stored object against its digest and every path's tree for completeness",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			bar := newOperationBar()
			rep, err := bar.client(node.NewClient(cfg.DaemonSocket)).Verify(cmd.Context())
			bar.clear()
			if err != nil {
				return err
			}
			for _, p := range rep.Problems {
				fmt.Println(p)
			}
			fmt.Printf("checked %d paths, %d directories, %d chunks (%s) in %.1fs\n",
				rep.Paths, rep.Directories, rep.Chunks, humanBytes(rep.Bytes), rep.Seconds)
			if len(rep.Problems) > 0 {
				return fmt.Errorf("%d problems found", len(rep.Problems))
			}
			return nil
		},
	}
}
