package main

import (
	"context"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/p2pstore/p2pstore/node"
)

func serveCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "serve",
		Short: "Run a node until SIGINT or SIGTERM",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			n, err := node.New(cfg, slog.Default())
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			err = n.Run(ctx)
			n.Close()
			// What stopped the node: a signal (the context's cause says
			// which) or a server's error.
			reason := "exited"
			if err != nil {
				reason = err.Error()
			} else if ctx.Err() != nil {
				reason = context.Cause(ctx).Error()
			}
			slog.Info("node stopped", "reason", reason)
			return err
		},
	}
}
