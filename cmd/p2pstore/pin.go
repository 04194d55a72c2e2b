package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/p2pstore/p2pstore/node"
)

// pinCommand makes `pin` (pin true) or `unpin`.
func pinCommand(pin bool) *cobra.Command {
	use, short, done := "pin PATH...", "Keep store paths whatever storage.max_bytes says", "pinned"
	if !pin {
		use, short, done = "unpin PATH...", "Let storage.max_bytes remove store paths when they are least recently used", "unpinned"
	}
	return &cobra.Command{
		Use:   use,
		Short: short,
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
			res, err := node.NewClient(cfg.DaemonSocket).Pin(cmd.Context(), &node.PinRequest{Paths: paths, Pin: pin})
			if err != nil {
				return err
			}
			fmt.Printf("%s %s; %s so already\n", done, count(len(res.Changed), "path", "paths"), count(res.Unchanged, "was", "were"))
			return nil
		},
	}
}
