package main

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/p2pstore/p2pstore/internal/netlab"
	"github.com/p2pstore/p2pstore/internal/nixtest"
)

// mdnsService is what a browser learns of one service instance.
type mdnsService struct {
	Instance string // the instance's full name
	Host     string // the SRV target
	Port     int
	TXT      []string
	IPv4     []net.IP
}

// mdnsBrowse browses a service type as Avahi does for guix discover
// (IPv4 only): a PTR query for the type to 224.0.0.251:5353 from port
// 5353, asked again each second, and the instances resolved from the SRV,
// TXT and A records of the answers (additional records too), querying
// SRV/TXT and A when they did not come. It collects for the whole window
// and returns every instance it resolved.
func mdnsBrowse(t *testing.T, h *netlab.Host, service string, window time.Duration) map[string]*mdnsService {
	t.Helper()
	group := &net.UDPAddr{IP: net.IPv4(224, 0, 0, 251), Port: 5353}
	c, err := h.ListenMulticastUDP(group)
	if err != nil {
		t.Fatalf("mDNS socket: %v", err)
	}
	defer c.Close()
	typeName := service + ".local."
	var (
		instances = map[string]bool{}
		srvs      = map[string]*dns.SRV{}
		txts      = map[string][]string{}
		addrs     = map[string][]net.IP{}
	)
	query := func(qs ...dns.Question) {
		m := new(dns.Msg)
		m.Question = qs
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.WriteTo(b, group); err != nil {
			t.Fatalf("mDNS query: %v", err)
		}
	}
	end := time.Now().Add(window)
	buf := make([]byte, 9000)
	for next := time.Now(); time.Now().Before(end); {
		if !time.Now().Before(next) {
			qs := []dns.Question{{Name: typeName, Qtype: dns.TypePTR, Qclass: dns.ClassINET}}
			for inst := range instances {
				if srvs[inst] == nil {
					qs = append(qs, dns.Question{Name: inst, Qtype: dns.TypeSRV, Qclass: dns.ClassINET},
						dns.Question{Name: inst, Qtype: dns.TypeTXT, Qclass: dns.ClassINET})
				} else if addrs[srvs[inst].Target] == nil {
					qs = append(qs, dns.Question{Name: srvs[inst].Target, Qtype: dns.TypeA, Qclass: dns.ClassINET})
				}
			}
			query(qs...)
			next = time.Now().Add(time.Second)
		}
		c.SetReadDeadline(next)
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			continue // the deadline: time to ask again
		}
		m := new(dns.Msg)
		if m.Unpack(buf[:n]) != nil || !m.Response {
			continue // our own query, or noise
		}
		for _, rr := range append(m.Answer, m.Extra...) {
			switch rr := rr.(type) {
			case *dns.PTR:
				if strings.EqualFold(rr.Hdr.Name, typeName) {
					instances[rr.Ptr] = true
				}
			case *dns.SRV:
				srvs[rr.Hdr.Name] = rr
			case *dns.TXT:
				txts[rr.Hdr.Name] = rr.Txt
			case *dns.A:
				if !slicesContainsIP(addrs[rr.Hdr.Name], rr.A) {
					addrs[rr.Hdr.Name] = append(addrs[rr.Hdr.Name], rr.A)
				}
			}
		}
	}
	out := map[string]*mdnsService{}
	for inst := range instances {
		srv := srvs[inst]
		if srv == nil || addrs[srv.Target] == nil {
			continue // not resolved
		}
		out[inst] = &mdnsService{Instance: inst, Host: srv.Target, Port: int(srv.Port), TXT: txts[inst], IPv4: addrs[srv.Target]}
	}
	return out
}

func slicesContainsIP(ips []net.IP, ip net.IP) bool {
	for _, x := range ips {
		if x.Equal(ip) {
			return true
		}
	}
	return false
}

// TestGuixMDNS: in network namespaces on a bridge, a node with a Guix
// listener on a wildcard address and mDNS on advertises it as guix
// publish --advertise does: a browser on another host resolves a
// _guix_publish._tcp instance to the node's IPv4 address on the LAN and
// the listener's port, with an empty TXT record, and the URL guix
// discover makes of them serves the node's Guix narinfos. A node with
// mDNS off advertises nothing.
func TestGuixMDNS(t *testing.T) {
	nixtest.Require(t)
	lab := netlab.New(t)
	ha, hq, browser := lab.Host("guix-a"), lab.Host("guix-quiet"), lab.Host("browser")
	gs := newGuixStore(t)
	gpath := gs.add("lan", map[string][]byte{"f": []byte("found on the LAN")})

	inNamespace := func(h *netlab.Host, mdns bool) *nodeProc {
		n := newNodeAt(t, "127.0.0.1", "")
		n.inNamespace(h, mdns)
		// A namespace has ports of its own: guix publish's default one.
		n.args = append(n.args, "--guix-http-listen", "0.0.0.0:8080")
		return n
	}
	a := inNamespace(ha, true)
	sec, _ := guixKey(t, a, "a")
	a.args = append(a.args, "--guix-sign-key-file", sec)
	a.start()
	a.run("import", "--sign", "--from-store", gs.url, gpath)
	quiet := inNamespace(hq, false)
	quiet.start()

	// Browse for a while: long enough for a node to answer, and to see
	// that the quiet one does not.
	found := mdnsBrowse(t, browser, "_guix_publish._tcp", 4*time.Second)
	var svc *mdnsService
	for _, s := range found {
		for _, ip := range s.IPv4 {
			switch ip.String() {
			case ha.IP:
				svc = s
			case hq.IP:
				t.Errorf("the node with mDNS off advertised %+v", s)
			}
		}
	}
	if svc == nil {
		t.Fatalf("no _guix_publish._tcp instance of %s resolved; found %+v\n%s", ha.IP, found, a.log)
	}
	if !strings.HasPrefix(svc.Instance, "p2pstore-") || !strings.HasSuffix(svc.Instance, "._guix_publish._tcp.local.") ||
		!strings.HasSuffix(svc.Host, ".local.") || svc.Port != 8080 || len(svc.IPv4) != 1 ||
		len(svc.TXT) > 1 || (len(svc.TXT) == 1 && svc.TXT[0] != "") {
		t.Errorf("resolved %+v; want a p2pstore- instance on port 8080 at %s alone, no TXT data", svc, ha.IP)
	}
	// What guix discover writes, and guix substitute then asks.
	url := "http://" + net.JoinHostPort(svc.IPv4[0].String(), "8080")
	if text := guixNarinfo(t, url, gpath); !strings.Contains(string(text), "StorePath: "+gpath+"\n") {
		t.Errorf("%s answers:\n%s", url, text)
	}
}
