// Command p2pstore is a peer-to-peer substitution node for Nix and Guix.
// Run `p2pstore serve` to start a node; the other commands talk to it.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/p2pstore/p2pstore/config"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := rootCommand()
	if err := root.ExecuteContext(ctx); err != nil {
		if errors.Is(err, context.Canceled) {
			err = errors.New("interrupted")
		}
		fmt.Fprintf(os.Stderr, "p2pstore: %v\n", err)
		os.Exit(1)
	}
}

func rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "p2pstore",
		Short:         "A peer-to-peer substitution node for Nix and Guix",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	config.RegisterFlags(root.PersistentFlags())
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return fmt.Errorf("%v (see `%s --help`)", err, c.CommandPath())
	})
	root.AddCommand(serveCommand(), keygenCommand(), importCommand(), fetchCommand(), statusCommand(), verifyCommand(), gcCommand(), pinCommand(true), pinCommand(false), daemonCommand())
	root.AddCommand(peersCommand(), pathsCommand())
	return root
}

// loadConfig reads the settings every command shares.
func loadConfig(cmd *cobra.Command) (*config.Config, error) {
	return config.Load(cmd.Flags())
}

func logger() *slog.Logger {
	level := slog.LevelInfo
	if os.Getenv("P2PSTORE_DEBUG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}
