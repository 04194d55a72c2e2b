package node

import (
	"context"
	"net"
	"slices"
	"time"

	"github.com/libp2p/zeroconf/v2"
)

// Guix's LAN discovery (guix publish --advertise, guix-daemon --discover):
// the Guix listener is announced over mDNS as a _guix_publish._tcp service
// on its port, with no TXT data, and A records of its IPv4 addresses,
// which are all guix discover reads (it browses IPv4 only). The instance
// is "p2pstore-<host>": guix publish names its own "guix-publish-<host>",
// and one machine may run both. It is on when guix.http_listen is set and
// p2p.mdns is: mDNS is one decision about what the node says on the LAN,
// and a node told to keep quiet there (as every test outside network
// namespaces is) says nothing of Guix either. zeroconf, which go-libp2p's
// own mDNS runs on, registers a service of any type.

const (
	guixServiceType = "_guix_publish._tcp"
	// guixAdvertCheck is how often the addresses are looked at again: a
	// laptop joins another network, DHCP gives another address.
	guixAdvertCheck = time.Minute
)

// advertiseGuix announces the Guix listener until ctx ends, registering
// again whenever its IPv4 addresses change.
func (n *Node) advertiseGuix(ctx context.Context) {
	addr := n.guixLn.Addr().(*net.TCPAddr)
	var (
		srv *zeroconf.Server
		ips []string
	)
	defer func() {
		if srv != nil {
			srv.Shutdown()
		}
	}()
	for {
		now, ifaces := guixAdvertAddrs(addr.IP)
		if !slices.Equal(now, ips) {
			if srv != nil {
				srv.Shutdown()
				srv = nil
			}
			ips = now
			if len(ips) == 0 {
				n.log.Info("not advertising the Guix listener over mDNS: it has no IPv4 address on the LAN", "addr", addr)
			} else {
				var err error
				srv, err = zeroconf.RegisterProxy("p2pstore-"+n.guixHost, guixServiceType, "local.", addr.Port,
					n.guixHost, ips, []string{""}, ifaces, zeroconf.TTL(120))
				if err != nil {
					n.log.Warn("cannot advertise the Guix listener over mDNS", "err", err)
					ips = nil // tried again at the next check
				} else {
					n.log.Info("advertising the Guix listener over mDNS", "service", guixServiceType, "addrs", ips, "port", addr.Port)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(guixAdvertCheck):
		}
	}
}

// guixAdvertAddrs returns the IPv4 addresses to announce for a listener
// on ip, and the interfaces that carry them: ip itself when it is one,
// else (a wildcard) those of every interface that is up and does
// multicast, loopback aside. A loopback or IPv6-only listener has none.
func guixAdvertAddrs(ip net.IP) ([]string, []net.Interface) {
	all, err := net.Interfaces()
	if err != nil {
		return nil, nil
	}
	var ips []string
	var ifaces []net.Interface
	for _, iface := range all {
		if iface.Flags&net.FlagUp == 0 || iface.Flags&net.FlagMulticast == 0 || iface.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := iface.Addrs()
		if err != nil {
			continue
		}
		found := false
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok || ipn.IP.To4() == nil || ipn.IP.IsLoopback() {
				continue
			}
			if ip.IsUnspecified() || ipn.IP.Equal(ip) {
				ips = append(ips, ipn.IP.String())
				found = true
			}
		}
		if found {
			ifaces = append(ifaces, iface)
		}
	}
	slices.Sort(ips)
	return ips, ifaces
}
