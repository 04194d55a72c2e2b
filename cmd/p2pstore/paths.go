package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/p2pstore/p2pstore/node"
)

func pathsCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "paths",
		Short: "List the running node's store paths: NAR size, source, pin and sharing",
		Long: `List the store paths the running node holds, in the order of their hash
parts, with each one's NAR size, how it came (import: added by hand;
peer: fetched from peers; upstream: pulled from an upstream cache; local:
copied from the local Nix store), whether it is pinned, and whether it is
shared with peers or private. The signed paths of the local Nix store
that the node serves without holding them are not listed (status counts
them).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			c := node.NewClient(cfg.DaemonSocket)
			if asJSON {
				return printPathsJSON(cmd, c)
			}
			var paths, bytes uint64
			fmt.Printf("%10s  %-8s  %-8s  %-7s  %s\n", "NAR SIZE", "SOURCE", "PIN", "SHARING", "PATH")
			err = c.Paths(cmd.Context(), func(e node.PathEntry) error {
				pin, sharing := "-", "private"
				if e.Pinned {
					pin = "pinned"
				}
				if e.Shared {
					sharing = "shared"
				}
				paths++
				bytes += e.NarSize
				_, err := fmt.Printf("%10s  %-8s  %-8s  %-7s  %s\n", humanBytes(e.NarSize), e.Source, pin, sharing, e.Path)
				return err
			})
			if err != nil {
				return err
			}
			fmt.Printf("%s, %s of NARs\n", count(int(paths), "path", "paths"), humanBytes(bytes))
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array")
	return cmd
}

// printPathsJSON prints the paths as one JSON array, each as it arrives.
func printPathsJSON(cmd *cobra.Command, c *node.Client) error {
	sep := "[\n  "
	err := c.Paths(cmd.Context(), func(e node.PathEntry) error {
		b, err := json.Marshal(e)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(os.Stdout, "%s%s", sep, b)
		sep = ",\n  "
		return err
	})
	if err != nil {
		return err
	}
	if sep == "[\n  " {
		_, err = fmt.Println("[]")
	} else {
		_, err = fmt.Println("\n]")
	}
	return err
}
