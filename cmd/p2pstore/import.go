package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/p2pstore/p2pstore/narview/localstore"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
	"github.com/p2pstore/p2pstore/node"
)

func importCommand() *cobra.Command {
	var recursive, sign, private bool
	cmd := &cobra.Command{
		Use:   "import [--recursive] [--sign | --private] PATH...",
		Short: "Add store paths from the local Nix store to the running node",
		Long: `Add store paths from the local Nix store to the running node.

The node gives its peers only paths signed by a key it trusts or by its
own key. It signs what is imported with its key only with --sign, or when
its setting sign.imports is on; --private keeps the paths from its peers
whatever signs them.`,
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
			ctx := cmd.Context()
			paths, err := storePathArgs(cfg.StoreDir, args)
			if err != nil {
				return err
			}
			src := localstore.Open()
			defer src.Close()
			infos, err := src.Query(ctx, paths, recursive)
			if err != nil {
				return err
			}
			client := node.NewClient(cfg.DaemonSocket)
			var todo []localstore.PathInfo
			var total uint64
			for _, in := range infos {
				sp, err := storepath.Parse(cfg.StoreDir, in.Path)
				if err != nil {
					return err
				}
				have, err := client.HasPath(ctx, sp.Hash)
				if err != nil {
					return err
				}
				if !have {
					todo = append(todo, in)
					total += in.NarSize
				}
			}
			return importPaths(ctx, client, src, todo, total, len(infos)-len(todo), share)
		},
	}
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "also import every path the given paths reference, directly or not")
	cmd.Flags().BoolVar(&sign, "sign", false, "sign the paths with the node's key (sign.key_file), which shares them with its peers")
	cmd.Flags().BoolVar(&private, "private", false, "never give the paths to peers, whatever signs them")
	return cmd
}

func importPaths(ctx context.Context, client *node.Client, src localstore.Source, todo []localstore.PathInfo, total uint64, present int, share node.Sharing) error {
	var bar *progressbar.ProgressBar
	if term.IsTerminal(int(os.Stderr.Fd())) && total > 0 {
		bar = progressbar.NewOptions64(int64(total),
			progressbar.OptionSetWriter(os.Stderr),
			progressbar.OptionShowBytes(true),
			progressbar.OptionShowCount(),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(100_000_000),
			progressbar.OptionClearOnFinish(),
			progressbar.OptionSetPredictTime(true),
		)
	}
	var newBytes, narBytes int64
	shared := 0
	for i, in := range todo {
		if bar != nil {
			bar.Describe(fmt.Sprintf("[%d/%d] %s", i+1, len(todo), path.Base(in.Path)))
		}
		res, err := importOne(ctx, client, src, in, bar, share)
		if err != nil {
			if bar != nil {
				bar.Clear()
			}
			return err
		}
		newBytes += res.NewBytes
		narBytes += int64(res.NarSize)
		if res.Shared {
			shared++
		}
	}
	if bar != nil {
		bar.Finish()
	}
	ratio := 0.0
	if narBytes > 0 {
		ratio = 100 * float64(newBytes) / float64(narBytes)
	}
	fmt.Printf("imported %d paths from %s (%s of NARs, %s new after dedup: %.1f%%); %d were already there; %d of the new ones shared with peers\n",
		len(todo), src.Name(), humanBytes(uint64(narBytes)), humanBytes(uint64(newBytes)), ratio, present, shared)
	return nil
}

// importOne streams one path's NAR from the local store to the node, which
// checks it against the NarHash Nix recorded.
func importOne(ctx context.Context, client *node.Client, src localstore.Source, in localstore.PathInfo, bar *progressbar.ProgressBar, share node.Sharing) (*node.ImportResult, error) {
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(src.Dump(ctx, in.Path, pw))
	}()
	var body io.Reader = pr
	if bar != nil {
		body = io.TeeReader(pr, bar)
	}
	meta := &pathinfo.Meta{
		Path: in.Path, NarHash: in.NarHash, NarSize: in.NarSize, References: in.References,
		Deriver: in.Deriver, Sigs: in.Signatures, CA: in.CA, RegistrationTime: in.RegistrationTime,
	}
	res, err := client.Import(ctx, meta, body, share)
	pr.CloseWithError(io.ErrClosedPipe)
	if err != nil {
		return nil, fmt.Errorf("importing %s: %w", in.Path, err)
	}
	return res, nil
}
