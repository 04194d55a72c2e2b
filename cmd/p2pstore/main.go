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

	"github.com/libp2p/go-libp2p/gologshim"
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
	root.AddCommand(serveCommand(), keygenCommand(), importCommand(), fetchCommand(), statusCommand(), verifyCommand(), gcCommand(),
		pinCommand(true), pinCommand(false), daemonCommand(), configCommand())
	root.AddCommand(peersCommand(), pathsCommand())
	return root
}

// loadConfig reads the settings every command shares, and sets the
// default logger up from log.level and log.format.
func loadConfig(cmd *cobra.Command) (*config.Config, error) {
	cfg, err := config.Load(cmd.Flags())
	if err != nil {
		return nil, err
	}
	slog.SetDefault(newLogger(cfg))
	return cfg, nil
}

// newLogger writes log lines to stderr, as text or JSON. go-libp2p's own
// lines go through the same handler, in the same format, at the levels
// go-libp2p would write them (error, or as GOLOG_LOG_LEVEL says).
func newLogger(cfg *config.Config) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, opts)
	if cfg.LogFormat == "json" {
		h = slog.NewJSONHandler(os.Stderr, opts)
	}
	gologshim.SetDefaultHandler(libp2pHandler{h, gologshim.ConfigFromEnv().LevelForSystem("")})
	return slog.New(h)
}

// libp2pHandler passes go-libp2p's log lines on from min up; each of its
// loggers names its subsystem, whose level GOLOG_LOG_LEVEL may set.
type libp2pHandler struct {
	slog.Handler
	min slog.Level
}

func (h libp2pHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h libp2pHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	min := h.min
	for _, a := range attrs {
		if a.Key == "logger" {
			min = gologshim.ConfigFromEnv().LevelForSystem(a.Value.String())
		}
	}
	return libp2pHandler{h.Handler.WithAttrs(attrs), min}
}

func (h libp2pHandler) WithGroup(name string) slog.Handler {
	return libp2pHandler{h.Handler.WithGroup(name), h.min}
}
