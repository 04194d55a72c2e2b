package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/p2pstore/p2pstore/narview/guix"
	"github.com/p2pstore/p2pstore/narview/narinfo"
)

func keygenCommand() *cobra.Command {
	var name, out string
	var force, guixKey bool
	cmd := &cobra.Command{
		Use:   "keygen (--name NAME | --guix) --out FILE",
		Short: "Write a Nix-format ed25519 secret key (or a Guix key pair) and print its public key",
		Long: `Without --guix: writes a Nix secret key (as nix key generate-secret does) to
FILE and prints the public key NAME:BASE64.

With --guix: writes a Guix key pair as guix archive --generate-key does, the
secret key to FILE (such as signing-key.sec) and the public key next to it
(FILE with .sec replaced by .pub, or FILE.pub), and prints the public key,
which guix archive --authorize accepts.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return errors.New("keygen needs --out")
			}
			if guixKey {
				if name != "" {
					return errors.New("keygen --guix takes no --name: Guix keys have none")
				}
				return writeGuixKeys(out, force)
			}
			if name == "" {
				return errors.New("keygen needs --name (or --guix)")
			}
			k, err := narinfo.GenerateKey(name)
			if err != nil {
				return err
			}
			if err := writeNew(out, k.String(), 0o600, force); err != nil {
				return err
			}
			fmt.Println(k.Public())
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "key name, such as cache.example.org-1")
	cmd.Flags().StringVar(&out, "out", "", "file to write the secret key to")
	cmd.Flags().BoolVar(&force, "force", false, "overwrite existing files")
	cmd.Flags().BoolVar(&guixKey, "guix", false, "write a Guix key pair (signing-key.sec and .pub) instead")
	return cmd
}

// writeGuixKeys writes a new Guix key pair: the secret key to secPath,
// the public one beside it, and prints the public key.
func writeGuixKeys(secPath string, force bool) error {
	if strings.HasSuffix(secPath, ".pub") {
		return fmt.Errorf("--out %s: that is the public key's name; give the secret key's, such as signing-key.sec", secPath)
	}
	pubPath := strings.TrimSuffix(secPath, ".sec") + ".pub"
	k, err := guix.GenerateKey()
	if err != nil {
		return err
	}
	// Check both before writing either, so that a refusal leaves nothing.
	if !force {
		for _, p := range []string{secPath, pubPath} {
			if _, err := os.Lstat(p); err == nil {
				return fmt.Errorf("%s exists; pass --force to overwrite it", p)
			}
		}
	}
	if err := writeNew(secPath, k.String(), 0o600, force); err != nil {
		return err
	}
	if err := writeNew(pubPath, k.Public().String(), 0o644, force); err != nil {
		os.Remove(secPath)
		return err
	}
	fmt.Print(k.Public())
	return nil
}

// writeNew writes text to a new file, or over an old one with force.
func writeNew(path, text string, perm os.FileMode, force bool) error {
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if force {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, perm)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("%s exists; pass --force to overwrite it", path)
	}
	if err != nil {
		return err
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
