// Package netlab builds small networks for tests out of network
// namespaces: each host is a namespace wired by a veth pair to a bridge
// the lab makes, in a private /24 that no route of the machine uses. The
// test's own namespace is on the bridge too (its first address), so the
// test reaches every host; the hosts have no other route, so only the
// lab's links carry their traffic. A link can be rate-limited with a tc
// tbf in both directions, and cut. This kernel has no netem: a link has
// a rate, never an added delay.
//
// It needs root and iproute2; where either is missing, or namespaces
// cannot be made, the test is skipped with the reason. Names carry the
// process id and a counter, so that tests and test processes running at
// once do not meet; everything is removed in t.Cleanup, also when the
// test fails.
package netlab

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Lab is a bridge and the hosts on it.
type Lab struct {
	t      testing.TB
	tag    string // unique to this lab: in every name it makes
	bridge string
	subnet [3]byte // the /24's first three bytes
	hosts  int
}

// Host is a network namespace on the lab's bridge.
type Host struct {
	lab *Lab
	// Name is the namespace's name, for `ip netns exec`.
	Name string
	// IP is the host's address on the bridge.
	IP string
	// link is the veth end on the bridge, in the test's namespace: what
	// the host sends arrives there, what it receives leaves there.
	link string
}

var labs atomic.Uint32

// cmdTimeout bounds every ip and tc command.
const cmdTimeout = 10 * time.Second

// New makes a bridge with an address of the test's namespace on it, or
// skips t when that cannot be done here.
func New(t testing.TB) *Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("network namespaces need iproute2's ip")
	}
	l := &Lab{t: t}
	// A leftover of a dead process with the same pid, or a subnet another
	// lab took meanwhile, makes a try fail: the next one gets other names.
	var err error
	for try := 0; try < 8; try++ {
		if err = l.make(); err == nil {
			return l
		}
	}
	t.Skipf("cannot make a test network here: %v", err)
	return nil
}

// make takes the next tag and subnet and makes the bridge.
func (l *Lab) make() error {
	n := labs.Add(1)
	var b [6]byte
	binary.BigEndian.PutUint32(b[:4], uint32(os.Getpid()))
	binary.BigEndian.PutUint16(b[4:], uint16(n))
	l.tag = strings.TrimLeft(hex.EncodeToString(b[1:4]), "0") + hex.EncodeToString(b[4:])
	subnet, err := freeSubnet(uint32(os.Getpid())*64 + n)
	if err != nil {
		return err
	}
	l.subnet = subnet
	l.bridge = "nl" + l.tag + "b"
	if err := run("ip", "link", "add", l.bridge, "type", "bridge"); err != nil {
		return err
	}
	l.t.Cleanup(func() { run("ip", "link", "del", l.bridge) })
	for _, args := range [][]string{
		{"addr", "add", l.addr(1) + "/24", "dev", l.bridge},
		{"link", "set", l.bridge, "up"},
	} {
		if err := run("ip", args...); err != nil {
			l.t.Fatal(err)
		}
	}
	return nil
}

// freeSubnet picks a /24 in 10.200.0.0-10.249.255.255, starting from
// seed, that overlaps no route and no address of this machine.
func freeSubnet(seed uint32) ([3]byte, error) {
	var used []*net.IPNet
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return [3]byte{}, err
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			used = append(used, n)
		}
	}
	used = append(used, routes()...)
	for i := uint32(0); i < 256; i++ {
		s := seed + i*7919 // a prime stride, so that neighbouring seeds part
		cand := [3]byte{10, byte(200 + (s/256)%50), byte(s)}
		ours := &net.IPNet{IP: net.IPv4(cand[0], cand[1], cand[2], 0), Mask: net.CIDRMask(24, 32)}
		clash := false
		for _, u := range used {
			if u.Contains(ours.IP) || ours.Contains(u.IP) {
				clash = true
				break
			}
		}
		if !clash {
			return cand, nil
		}
	}
	return [3]byte{}, fmt.Errorf("no free /24 in 10.200.0.0/16-10.249.0.0/16")
}

// routes reads the IPv4 routes of the test's namespace, but the default.
func routes() []*net.IPNet {
	b, err := os.ReadFile("/proc/net/route")
	if err != nil {
		return nil
	}
	var out []*net.IPNet
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		dst, err1 := hex.DecodeString(f[1])
		mask, err2 := hex.DecodeString(f[7])
		if err1 != nil || err2 != nil || len(dst) != 4 || len(mask) != 4 {
			continue
		}
		if binary.LittleEndian.Uint32(mask) == 0 {
			continue // the default route: any subnet of ours is more specific
		}
		// /proc/net/route writes addresses in host order: little-endian here.
		out = append(out, &net.IPNet{IP: net.IPv4(dst[3], dst[2], dst[1], dst[0]).To4(), Mask: net.IPv4Mask(mask[3], mask[2], mask[1], mask[0])})
	}
	return out
}

// addr is the lab's address ending in last.
func (l *Lab) addr(last int) string {
	return fmt.Sprintf("%d.%d.%d.%d", l.subnet[0], l.subnet[1], l.subnet[2], last)
}

// TestIP is the address of the test's own namespace on the bridge: what
// the hosts see of connections that the test makes.
func (l *Lab) TestIP() string { return l.addr(1) }

// Host makes a namespace on the bridge; name is for the reader (in the
// namespace's name and in errors).
func (l *Lab) Host(name string) *Host {
	l.t.Helper()
	l.hosts++
	h := &Host{
		lab:  l,
		Name: fmt.Sprintf("netlab-%s-%s", l.tag, name),
		IP:   l.addr(10 + l.hosts),
		link: fmt.Sprintf("nl%s%02x", l.tag, l.hosts),
	}
	if l.hosts > 200 || len(h.link) > 15 {
		l.t.Fatalf("netlab: too many hosts (%d) or too long a link name %q", l.hosts, h.link)
	}
	if err := run("ip", "netns", "add", h.Name); err != nil {
		l.t.Skipf("cannot make network namespaces here: %v", err)
	}
	l.t.Cleanup(func() {
		run("ip", "netns", "del", h.Name)
		run("ip", "link", "del", h.link) // gone with the namespace, unless that failed
	})
	for _, args := range [][]string{
		{"link", "add", h.link, "type", "veth", "peer", "name", "eth0", "netns", h.Name},
		{"link", "set", h.link, "master", l.bridge, "up"},
		{"-n", h.Name, "addr", "add", h.IP + "/24", "dev", "eth0"},
		{"-n", h.Name, "link", "set", "eth0", "up"},
		{"-n", h.Name, "link", "set", "lo", "up"},
		// Multicast (mDNS) goes out on the LAN, as on a machine.
		{"-n", h.Name, "route", "add", "224.0.0.0/4", "dev", "eth0"},
	} {
		if err := run("ip", args...); err != nil {
			l.t.Fatalf("netlab host %s: %v", name, err)
		}
	}
	return h
}

// Exec is the prefix that runs a command in the host's namespace.
func (h *Host) Exec() []string { return []string{"ip", "netns", "exec", h.Name} }

// Command is a command run in the host's namespace.
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	argv := append(h.Exec(), name)
	return exec.Command(argv[0], append(argv[1:], args...)...)
}

// Limit caps the host's link at rate bits per second both ways, with a
// token bucket (tc tbf) on each end's egress: what the host sends leaves
// its eth0 at rate, what it gets leaves the bridge's end at rate.
func (h *Host) Limit(rate uint64) {
	h.lab.t.Helper()
	// A burst of 4 ms at the rate, and at least a full frame's worth:
	// tbf drops a packet larger than its bucket.
	burst := max(rate/8/250, 3200)
	tbf := []string{"root", "tbf", "rate", fmt.Sprintf("%dbit", rate), "burst", fmt.Sprint(burst), "latency", "200ms"}
	for _, argv := range [][]string{
		append(append(h.Exec(), "tc", "qdisc", "replace", "dev", "eth0"), tbf...),
		append([]string{"tc", "qdisc", "replace", "dev", h.link}, tbf...),
	} {
		if err := run(argv[0], argv[1:]...); err != nil {
			h.lab.t.Fatalf("netlab: limiting %s: %v", h.Name, err)
		}
	}
}

// Cut takes the host's link down: from then on, packets to and from the
// host are lost, with no error to either side (a pulled cable). Mend
// puts it back.
func (h *Host) Cut() {
	h.lab.t.Helper()
	if err := run("ip", "link", "set", h.link, "down"); err != nil {
		h.lab.t.Fatal(err)
	}
}

// Mend puts a cut link back up.
func (h *Host) Mend() {
	h.lab.t.Helper()
	if err := run("ip", "link", "set", h.link, "up"); err != nil {
		h.lab.t.Fatal(err)
	}
}

// Counters are the bytes (with their IP and Ethernet headers) that have
// crossed a host's link.
type Counters struct{ Sent, Received uint64 }

// Counters reads the host's link counters, from the bridge's end (in
// /proc/net/dev, which is the reader's namespace's, where /sys may be
// another's).
func (h *Host) Counters() Counters {
	h.lab.t.Helper()
	b, err := os.ReadFile("/proc/net/dev")
	if err != nil {
		h.lab.t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		name, fields, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(name) != h.link {
			continue
		}
		// Received bytes first, then seven more received counters, then
		// transmitted bytes.
		var rx, tx uint64
		f := strings.Fields(fields)
		if len(f) < 9 {
			break
		}
		_, err1 := fmt.Sscan(f[0], &rx)
		_, err2 := fmt.Sscan(f[8], &tx)
		if err1 != nil || err2 != nil {
			break
		}
		// The bridge's end receives what the host sends.
		return Counters{Sent: rx, Received: tx}
	}
	h.lab.t.Fatalf("netlab: no counters for %s in /proc/net/dev", h.link)
	return Counters{}
}

// Listen opens a TCP listener in the host's namespace, on its address
// (port 0 for any), for servers the test runs itself.
func (h *Host) Listen(port int) (net.Listener, error) {
	var ln net.Listener
	err := h.in(func() error {
		var err error
		ln, err = net.Listen("tcp", net.JoinHostPort(h.IP, fmt.Sprint(port)))
		return err
	})
	return ln, err
}

// ListenMulticastUDP opens a UDP socket in the host's namespace on
// group's port, joined to group on the host's link, as an mDNS
// responder or browser (Avahi) has one: for tests that speak multicast
// themselves.
func (h *Host) ListenMulticastUDP(group *net.UDPAddr) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := h.in(func() error {
		iface, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		c, err = net.ListenMulticastUDP("udp4", iface, group)
		return err
	})
	return c, err
}

// in runs f on a thread switched into the host's namespace; a socket
// made there stays in that namespace.
func (h *Host) in(f func() error) error {
	runtime.LockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer self.Close()
	target, err := os.Open("/run/netns/" + h.Name)
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("entering %s: %w", h.Name, err)
	}
	ferr := f()
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread stays locked, so that it ends with its goroutine
		// instead of running others in the wrong namespace.
		return fmt.Errorf("leaving %s: %w", h.Name, err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// run runs a command, bounded, and returns its output in the error.
func run(name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}
