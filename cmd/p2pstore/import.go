package main

import (
	"errors"
	"fmt"
	"os"
	"path"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/p2pstore/p2pstore/node"
)

func importCommand() *cobra.Command {
	var recursive, sign, private bool
	var fromStore string
	cmd := &cobra.Command{
		Use:   "import [--recursive] [--sign | --private] PATH...",
		Short: "Add store paths from the local Nix store to the running node",
		Long: `Add store paths from the local Nix store to the running node.

The node gives its peers only paths signed by a key it trusts or by its
own key. It signs what is imported with its key only with --sign, or when
its setting sign.imports is on; --private keeps the paths from its peers
whatever signs them.

Paths under guix.store_dir (/gnu/store) are Guix paths, served on
guix.http_listen and signed for Guix with guix.sign_key_file. They are
read from the guix-daemon (its socket, or GUIX_DAEMON_SOCKET), or by Nix
from a store at a URL (--from-store) whose store directory is Guix's.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if sign && private {
				return errors.New("import: --sign and --private exclude each other")
			}
			share := node.ShareDefault
			if sign {
				share = node.ShareSigned
			} else if private {
				share = node.SharePrivate
			}
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			paths, err := node.ResolveStorePaths(cfg.StoreDir, cfg.GuixStoreDir, args)
			if err != nil {
				return err
			}
			var progress node.ImportProgress
			if term.IsTerminal(int(os.Stderr.Fd())) {
				progress = &importBar{}
			}
			from := node.ImportSource{NixStore: fromStore}
			if fromStore == "" {
				if from, err = node.ImportSourceFor(cfg.GuixStoreDir, paths); err != nil {
					return err
				}
			}
			sum, err := node.NewClient(cfg.DaemonSocket).ImportLocal(cmd.Context(), from, paths, recursive, share, progress)
			if err != nil {
				return err
			}
			ratio := 0.0
			if sum.NarBytes > 0 {
				ratio = 100 * float64(sum.NewBytes) / float64(sum.NarBytes)
			}
			fmt.Printf("imported %s from %s (%s of NARs, %s new after dedup: %.1f%%); %s already there; %d of the new ones shared with peers\n",
				count(sum.Imported, "path", "paths"), sum.From, humanBytes(uint64(sum.NarBytes)), humanBytes(uint64(sum.NewBytes)), ratio,
				count(sum.Present, "was", "were"), sum.Shared)
			return nil
		},
	}
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "also import every path the given paths reference, directly or not")
	cmd.Flags().BoolVar(&sign, "sign", false, "sign the paths with the node's key (sign.key_file), which shares them with its peers")
	cmd.Flags().BoolVar(&private, "private", false, "never give the paths to peers, whatever signs them")
	cmd.Flags().StringVar(&fromStore, "from-store", "", "read the paths from the Nix store at this URL instead of the local one, e.g. 'local?store=/gnu/store&real=DIR/gnu/store&state=DIR/state' for Guix paths (those under guix.store_dir, signed with guix.sign_key_file)")
	return cmd
}

// importBar shows an import's progress on a terminal.
type importBar struct{ bar *progressbar.ProgressBar }

func (b *importBar) Start(total uint64) {
	if total == 0 {
		return
	}
	b.bar = progressbar.NewOptions64(int64(total),
		progressbar.OptionSetWriter(os.Stderr),
		progressbar.OptionShowBytes(true),
		progressbar.OptionUseIECUnits(true), // as the summary: KiB, MiB
		progressbar.OptionShowCount(),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100_000_000),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionSetPredictTime(true),
	)
}

func (b *importBar) Path(i, n int, p string) {
	if b.bar != nil {
		b.bar.Describe(fmt.Sprintf("[%d/%d] %s", i, n, path.Base(p)))
	}
}

func (b *importBar) Write(p []byte) (int, error) {
	if b.bar != nil {
		return b.bar.Write(p)
	}
	return len(p), nil
}

func (b *importBar) Done() {
	if b.bar != nil {
		b.bar.Clear()
	}
}

// count says n things: "1 path", "2 paths".
func count(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
