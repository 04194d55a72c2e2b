package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/p2pstore/p2pstore/narview/narinfo"
)

func keygenCommand() *cobra.Command {
	var name, out string
	var force bool
	cmd := &cobra.Command{
		Use:   "keygen --name NAME --out FILE",
		Short: "Write a Nix-format ed25519 secret key and print its public key",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if name == "" || out == "" {
				return errors.New("keygen needs --name and --out")
			}
			k, err := narinfo.GenerateKey(name)
			if err != nil {
				return err
			}
			flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
			if force {
				flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
			}
			f, err := os.OpenFile(out, flags, 0o600)
			if errors.Is(err, os.ErrExist) {
				return fmt.Errorf("%s exists; pass --force to overwrite it", out)
			}
			if err != nil {
				return err
			}
			if _, err := f.WriteString(k.String()); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
			fmt.Println(k.Public())
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "key name, such as cache.example.org-1")
	cmd.Flags().StringVar(&out, "out", "", "file to write the secret key to")
	cmd.Flags().BoolVar(&force, "force", false, "overwrite an existing file")
	return cmd
}
