package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/p2pstore/p2pstore/node"
)

func verifyCommand() *cobra.Command {
	var repair bool
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check every stored object against its digest and every path's tree for completeness",
		Long: `Check every stored object against its digest and every path's tree for
completeness, and name the store paths that use a damaged or missing
object. With --repair, take the damaged objects out of service and get
the paths they hurt again from the local Nix store, the upstreams or the
peers, each checked against its NarHash; a path that cannot be repaired is
marked invalid and not served.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			bar := newOperationBar()
			rep, err := bar.client(node.NewClient(cfg.DaemonSocket)).VerifyWith(cmd.Context(), &node.VerifyRequest{Repair: repair})
			bar.clear()
			if err != nil {
				return err
			}
			return printVerifyReport(rep, repair)
		},
	}
	cmd.Flags().BoolVar(&repair, "repair", false, "repair what is damaged from the local Nix store, upstreams or peers; mark what cannot be repaired invalid")
	return cmd
}

// printVerifyReport prints what verify found (and repaired), and returns
// the error that makes the command fail when something is left bad.
func printVerifyReport(rep *node.VerifyReport, repair bool) error {
	for _, p := range rep.Problems {
		fmt.Println(p)
	}
	left := 0
	for _, d := range rep.Damaged {
		switch {
		case d.Repaired:
			fmt.Printf("%s: repaired (%s)\n", d.Path, d.Problem)
		case d.Error != "":
			left++
			fmt.Printf("%s: %s; not repaired (%s): invalid, not served\n", d.Path, d.Problem, d.Error)
		case d.Invalid:
			left++
			fmt.Printf("%s: invalid, not served (%s)\n", d.Path, d.Problem)
		default:
			left++
			fmt.Printf("%s: damaged (%s)\n", d.Path, d.Problem)
		}
	}
	fmt.Printf("checked %d paths, %d directories, %d chunks (%s) in %.1fs\n",
		rep.Paths, rep.Directories, rep.Chunks, humanBytes(rep.Bytes), rep.Seconds)
	switch {
	case repair && left > 0:
		return fmt.Errorf("%d of %d damaged paths could not be repaired", left, len(rep.Damaged))
	case !repair && len(rep.Problems)+left > 0:
		return fmt.Errorf("%d problems found (p2pstore verify --repair mends them)", len(rep.Problems)+left)
	}
	return nil
}
