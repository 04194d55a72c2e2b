package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"github.com/spf13/cobra"
)

func daemonCommand() *cobra.Command {
	var stdio bool
	cmd := &cobra.Command{
		Use:   "daemon --stdio",
		Short: "Speak the Nix daemon protocol on stdin/stdout, bridged to the running node",
		Long: `Speak the Nix daemon protocol on stdin and stdout, bridged to the running
node's daemon socket. Nix runs this over SSH for ssh-ng stores:

  nix copy --to 'ssh-ng://HOST?remote-program=p2pstore daemon' PATH`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !stdio {
				return errors.New("daemon needs --stdio (the node itself runs with `p2pstore serve`)")
			}
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			c, err := net.Dial("unix", cfg.DaemonSocket)
			if err != nil {
				return fmt.Errorf("no node is running at %s: %v", cfg.DaemonSocket, err)
			}
			defer c.Close()
			done := make(chan error, 1)
			go func() {
				_, err := io.Copy(c, os.Stdin)
				c.(*net.UnixConn).CloseWrite() // the client is done: let the node see EOF
				done <- err
			}()
			if _, err := io.Copy(os.Stdout, c); err != nil {
				return err
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&stdio, "stdio", false, "use stdin and stdout (what ssh-ng runs)")
	return cmd
}
