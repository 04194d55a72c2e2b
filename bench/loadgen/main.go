// Command loadgen holds a p2pstore node under the load of careless and
// hostile clients while bench/run.sh measures an honest one: HTTP clients
// that ask for a NAR (plain, zstd, xz), read 64 KB and stop reading;
// HTTP clients that keep asking for narinfos; daemon-socket clients that
// keep querying path infos; and libp2p identities that keep as
// many transfer streams open as the node takes, idle or with chunk
// requests they never read. It runs until SIGTERM or -duration, then
// prints what it did on one line.
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/p2pstore/p2pstore/narview/daemon"
	"github.com/p2pstore/p2pstore/node/transfer"
)

type counters struct {
	stalledHeld  atomic.Int64 // stalled HTTP clients that got 64 KB of a NAR
	stalledShed  atomic.Int64 // ... answered 503 (the node sheds them)
	narinfos     atomic.Int64
	daemonOps    atomic.Int64
	daemonErrs   atomic.Int64
	streamResets atomic.Int64
	connectErrs  atomic.Int64
}

// pace is the rate of each looping client: many clients at a client's
// pace, not a few hammering the node (and the machine's cores) flat out.
const pace = 50 * time.Millisecond

func main() {
	var (
		base      = flag.String("http", "", "the node's binary cache URL")
		storePath = flag.String("path", "", "a store path the node holds")
		stalled   = flag.Int("stalled", 0, "stalled HTTP clients per NAR kind (.nar, .nar.zst, .nar.xz)")
		narinfos  = flag.Int("narinfo-clients", 0, "HTTP clients asking for narinfos in a loop")
		socket    = flag.String("socket", "", "the node's daemon socket")
		daemons   = flag.Int("daemon-clients", 0, "daemon clients querying in a loop")
		peerAddr  = flag.String("peer", "", "the node's libp2p address, ending in /p2p/ID")
		idents    = flag.Int("identities", 0, "libp2p identities")
		perIdent  = flag.Int("streams", 32, "transfer streams each identity tries to hold")
		duration  = flag.Duration("duration", 10*time.Minute, "how long to run at most")
	)
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *duration)
	defer cancel()
	var c counters
	var wg sync.WaitGroup
	run := func(n int, fn func()) {
		for range n {
			wg.Add(1)
			go func() { defer wg.Done(); fn() }()
		}
	}
	hash := ""
	if *storePath != "" {
		base := (*storePath)[strings.LastIndexByte(*storePath, '/')+1:]
		hash = base[:min(32, len(base))]
	}
	if *base != "" && hash != "" {
		narURL, err := narURLOf(*base, hash)
		if err != nil {
			log.Fatal(err)
		}
		for _, suffix := range []string{".nar", ".nar.zst", ".nar.xz"} {
			u := strings.TrimSuffix(narURL, ".nar") + suffix
			run(*stalled, func() { stallHTTP(ctx, u, &c) })
		}
		run(*narinfos, func() { loopNarinfo(ctx, *base, hash, &c) })
	}
	if *socket != "" && *storePath != "" {
		run(*daemons, func() { loopDaemon(ctx, *socket, *storePath, &c) })
	}
	if *peerAddr != "" && *idents > 0 {
		target, err := peer.AddrInfoFromP2pAddr(ma.StringCast(*peerAddr))
		if err != nil {
			log.Fatal(err)
		}
		for i := range *idents {
			// Half the identities stay idle, half ask for chunks and never
			// read the answer.
			request := i%2 == 1
			wg.Add(1)
			go func() {
				defer wg.Done()
				h, err := libp2p.New(libp2p.NoListenAddrs, libp2p.DisableRelay(), libp2p.ResourceManager(&network.NullResourceManager{}))
				if err != nil {
					log.Fatal(err)
				}
				defer h.Close()
				if err := h.Connect(ctx, *target); err != nil {
					c.connectErrs.Add(1)
					return
				}
				var streams sync.WaitGroup
				for range *perIdent {
					streams.Add(1)
					go func() { defer streams.Done(); holdStreams(ctx, h, target.ID, request, &c) }()
				}
				streams.Wait()
			}()
		}
	}
	<-ctx.Done()
	wg.Wait()
	fmt.Printf("stalled_http=%d stalled_http_shed=%d narinfos=%d daemon_ops=%d daemon_errors=%d peer_streams_reset=%d peer_connect_errors=%d\n",
		c.stalledHeld.Load(), c.stalledShed.Load(), c.narinfos.Load(), c.daemonOps.Load(), c.daemonErrs.Load(), c.streamResets.Load(), c.connectErrs.Load())
}

// narURLOf reads the path's narinfo and returns its NAR's URL.
func narURLOf(base, hash string) (string, error) {
	resp, err := http.Get(base + "/" + hash + ".narinfo")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "URL: "); ok {
			return base + "/" + rest, nil
		}
	}
	return "", fmt.Errorf("no URL in the narinfo of %s (HTTP %d)", hash, resp.StatusCode)
}

// stallHTTP asks for u on a raw connection, reads 64 KB of the answer and
// stops reading until the run ends.
func stallHTTP(ctx context.Context, u string, c *counters) {
	pu, err := url.Parse(u)
	if err != nil {
		log.Fatal(err)
	}
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", pu.Host)
	if err != nil {
		return
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", pu.RequestURI(), pu.Host)
	br := bufio.NewReaderSize(conn, 4096)
	status, _ := br.ReadString('\n')
	switch {
	case strings.Contains(status, " 503 "):
		c.stalledShed.Add(1)
	case strings.Contains(status, " 200 "):
		if _, err := io.CopyN(io.Discard, br, 64<<10); err == nil {
			c.stalledHeld.Add(1)
		}
	}
	<-ctx.Done()
}

func loopNarinfo(ctx context.Context, base, hash string, c *counters) {
	client := &http.Client{Timeout: 10 * time.Second}
	tick := time.NewTicker(pace)
	defer tick.Stop()
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/"+hash+".narinfo", nil)
		if resp, err := client.Do(req); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			c.narinfos.Add(1)
		}
	}
}

// loopDaemon queries the path's info and validity over the daemon socket,
// a hundred queries per connection.
func loopDaemon(ctx context.Context, socket, storePath string, c *counters) {
	for ctx.Err() == nil {
		cl, err := daemon.Dial(socket)
		if err != nil {
			c.daemonErrs.Add(1)
			time.Sleep(time.Second)
			continue
		}
		stopClose := context.AfterFunc(ctx, func() { cl.Close() })
		tick := time.NewTicker(pace)
		for i := 0; ctx.Err() == nil && i < 100; i++ {
			select {
			case <-ctx.Done():
			case <-tick.C:
			}
			var err error
			switch i % 4 {
			case 1:
				_, err = cl.QueryValidPaths([]string{storePath}, false)
			default:
				_, err = cl.QueryPathInfo(storePath)
			}
			if err != nil {
				if ctx.Err() == nil {
					c.daemonErrs.Add(1)
				}
				break
			}
			c.daemonOps.Add(1)
		}
		tick.Stop()
		stopClose()
		cl.Close()
	}
}

// holdStreams keeps one transfer stream open at a time: idle, or with a
// request for a batch of chunks whose answer it does not read. A stream
// the node resets (or refuses) is opened again a second later.
func holdStreams(ctx context.Context, h host.Host, target peer.ID, request bool, c *counters) {
	for ctx.Err() == nil {
		st, err := h.NewStream(ctx, target, transfer.ProtocolID)
		if err == nil {
			stopReset := context.AfterFunc(ctx, func() { st.Reset() })
			if request {
				// A chunk request (kind, flags, a count of one, a digest
				// nobody has): cheap to answer, but never read.
				msg := []byte{'C', 1}
				msg = binary.AppendUvarint(msg, 1)
				msg = append(msg, make([]byte, 32)...)
				st.Write(msg)
			}
			st.Read(make([]byte, 1)) // returns once the node resets it
			if ctx.Err() == nil {
				c.streamResets.Add(1)
			}
			stopReset()
			st.Reset()
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}
