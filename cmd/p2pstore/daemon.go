package main

import (
	"errors"
	"io"
	"net"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/p2pstore/p2pstore/node"
)

func daemonCommand() *cobra.Command {
	var stdio bool
	cmd := &cobra.Command{
		Use:   "daemon --stdio",
		Short: "Speak the Nix daemon protocol on stdin/stdout, bridged to the running node",
		Long: `Speak the Nix daemon protocol on stdin and stdout, bridged to the running
node's daemon socket. Nix runs this over SSH for ssh-ng stores:

  nix copy --to 'ssh-ng://HOST?remote-program=p2pstore daemon' PATH

The node takes over stdin and stdout (they are passed to it over the
socket) and this process waits until the session ends.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !stdio {
				return errors.New("daemon needs --stdio (the node itself runs with `p2pstore serve`)")
			}
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: cfg.DaemonSocket, Net: "unix"})
			if err != nil {
				return node.SocketError(cfg.DaemonSocket, err)
			}
			defer c.Close()
			return handOver(c)
		},
	}
	cmd.Flags().BoolVar(&stdio, "stdio", false, "use stdin and stdout (what ssh-ng runs)")
	return cmd
}

// handOver passes stdin and stdout to the node and waits for it to hang
// up, which it does when the client has.
func handOver(c *net.UnixConn) error {
	if _, err := c.Write([]byte("p2pf")); err != nil {
		return err
	}
	var ack [1]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil || ack[0] != 'k' {
		return errors.New("the node did not take the session")
	}
	if _, _, err := c.WriteMsgUnix([]byte{0}, syscall.UnixRights(0, 1), nil); err != nil {
		return err
	}
	_, err := io.Copy(io.Discard, c)
	return err
}
