// Package node wires a p2pstore node together: it opens the stores, builds
// the HTTP binary cache, the daemon endpoint and the control API on them,
// and implements the seams those consumers declare (httpcache.Paths) with
// the local store first and peers behind it (p2p.go).
//
// A path the node lacks is fetched by package fetch from the sources it
// is given here (p2p.go): the peers the node is connected to and those
// the DHT names, each a fetch.Source over the transfer protocol. The node
// records what the fetcher completes and shares it with its peers.
//
// storage.max_bytes (disklimit.go): the least recently used unpinned
// paths go when the store needs room; paths added by hand are pinned, a
// render holds its path, and a fetch reserves its bytes before it
// downloads them.
//
// The signed paths of the machine's own Nix store are served and shared
// without an import, from a catalog that follows the store (localshare.go):
// Info answers from the index, then that catalog, then the peers.
//
// Guix paths (guix.go) share the index and castore and are served on
// guix.http_listen only, signed with the Guix key, never the Nix one;
// peers exchange them on the terms of their Guix signatures. With
// p2p.mdns, the Guix listener is advertised on the LAN as guix publish
// --advertise does (guixmdns.go).
//
// With upstream.substituters, the upstream binary caches are asked beside
// the peers, and a path found there is pulled through by package pull
// (upstream.go).
//
// NARs served often are kept whole by package narcache (narcache.go):
// renderPath serves a NAR from its file when it can, and a NAR's second
// whole request, or a finished pull's spool, makes that file.
//
// New refuses at start, naming the key, what config.Load cannot see: key
// files that exist and cannot be read, an unknown daemon.socket_group, a
// p2p.listen port something already listens on (checked by binding it
// alone, since go-libp2p's SO_REUSEPORT would share it; p2p.go). The
// daemon socket is 0600, or 0660 in daemon.socket_group.
//
// Status and /metrics (metrics.go) read counters the stores and the node
// keep, never a walk of the paths or the objects, so that a scrape costs
// the same whatever the node holds; every fetch, from peers, an upstream
// or the local store, ends in one info line (fetchlog.go).
//
// Damaged objects (a flipped byte on disk) are found by `verify`, the
// background scrub (storage.scrub_interval) and the reads that check what
// they read; they are taken out of service, the paths they hurt are made
// invalid (not served) and repaired from the local Nix store, upstreams
// or peers (integrity.go).
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/config"
	"github.com/p2pstore/p2pstore/internal/httpserve"
	"github.com/p2pstore/p2pstore/internal/priority"
	"github.com/p2pstore/p2pstore/narview/daemon"
	"github.com/p2pstore/p2pstore/narview/guix"
	"github.com/p2pstore/p2pstore/narview/httpcache"
	"github.com/p2pstore/p2pstore/narview/mount"
	"github.com/p2pstore/p2pstore/narview/narcache"
	"github.com/p2pstore/p2pstore/narview/narinfo"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
)

// Node is a running p2pstore node.
type Node struct {
	cfg     *config.Config
	log     *slog.Logger
	store   *castore.Store
	index   *pathinfo.Index
	signKey *narinfo.SecretKey
	peerKey crypto.PrivKey      // the libp2p identity; nil without p2p.listen
	keys    []narinfo.PublicKey // trusted (trust.go)
	// Guix (guix.go): the node's Guix key, the Guix keys it trusts (its
	// own among them), and the host name its Guix signatures carry.
	guixKey  *guix.SecretKey
	guixKeys []guix.PublicKey
	guixHost string
	lock     *os.File
	metrics  *metrics
	// bg is Run's context, for work a request starts and that outlives
	// it (filling the NAR cache).
	bg       context.Context
	narCache *narcache.Cache // nil when storage.nar_cache_bytes is 0

	compress       chan struct{} // wakes the background compressor
	importsRunning atomic.Int64
	p2p            *p2p        // nil when p2p.listen is empty
	local          *localShare // nil when the node shares no local store
	up             *upstreams  // nil without upstream.substituters

	sharedCount sharedCount
	limit       diskLimit  // storage.max_bytes (disklimit.go)
	ops         operations // control requests whose progress is followed (progress.go)
	integrity   integrity  // damage found and repaired (integrity.go)

	httpLn    net.Listener
	guixLn    net.Listener // nil without guix.http_listen
	controlLn net.Listener
	guixSock  net.Listener // guix.daemon_socket
	servers   []server
	wg        sync.WaitGroup
}

// Layout of data_dir.
const (
	castoreDir = "castore"
	indexFile  = "paths.db"
	lockFile   = "lock"
)

// New opens the node's stores under cfg.DataDir and binds its listeners;
// Run serves them.
func New(cfg *config.Config, log *slog.Logger) (*Node, error) {
	n := &Node{cfg: cfg, log: log, compress: make(chan struct{}, 1), bg: context.Background()}
	n.limit.init(uint64(cfg.MaxBytes))
	n.integrity.init()
	if err := n.open(); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

func (n *Node) open() error {
	cfg := n.cfg
	socketGID, err := lookupGroup(cfg.DaemonSocketGroup)
	if err != nil {
		return err
	}
	if err := makeDataDir(cfg.DataDir, cfg.DaemonSocket, socketGID); err != nil {
		return err
	}
	lock, err := os.OpenFile(filepath.Join(cfg.DataDir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	n.lock = lock
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return fmt.Errorf("another p2pstore node is using %s", cfg.DataDir)
	}
	if cfg.SignKeyFile != "" {
		k, err := narinfo.LoadSecretKeyFile(cfg.SignKeyFile)
		if err != nil {
			return fmt.Errorf("sign.key_file: %w", err)
		}
		n.signKey = &k
	}
	if n.keys, err = loadKeys(cfg, n.signKey); err != nil {
		return err
	}
	if err := n.loadGuixKeys(); err != nil {
		return err
	}
	if len(cfg.P2PListen) > 0 {
		if n.peerKey, err = loadIdentity(cfg.IdentityFile); err != nil {
			return err
		}
		if err := checkListenAddrs(cfg.P2PListen); err != nil {
			return err
		}
	}
	if n.store, err = castore.Open(filepath.Join(cfg.DataDir, castoreDir)); err != nil {
		return err
	}
	if n.index, err = pathinfo.Open(filepath.Join(cfg.DataDir, indexFile)); err != nil {
		return err
	}
	if err := n.openNARCache(); err != nil {
		return err
	}
	n.metrics = newMetrics(n)
	if err := n.openUpstreams(); err != nil {
		return err
	}
	if cfg.HTTPListen != "" {
		if n.httpLn, err = net.Listen("tcp", cfg.HTTPListen); err != nil {
			return fmt.Errorf("http.listen: %w", err)
		}
	}
	if cfg.GuixHTTPListen != "" {
		if n.guixLn, err = net.Listen("tcp", cfg.GuixHTTPListen); err != nil {
			return fmt.Errorf("guix.http_listen: %w", err)
		}
	}
	if n.controlLn, err = listenUnix(cfg.DaemonSocket, socketGID); err != nil {
		return fmt.Errorf("daemon.socket: %w", err)
	}
	if cfg.GuixDaemonSocket != "" { // config always sets it; a Config made in code may not
		if n.guixSock, err = listenUnix(cfg.GuixDaemonSocket, socketGID); err != nil {
			return fmt.Errorf("guix.daemon_socket: %w", err)
		}
	}
	return nil
}

// makeDataDir makes the data dir, which holds private paths' contents:
// only the node's user may enter it (a data dir made by an older version
// is tightened). When the daemon socket lies in it and has a group, that
// group may pass through it (0710) to reach the socket, and nothing else:
// every file in it is the node's user's alone (0600 and 0700).
func makeDataDir(dir, socket string, socketGID int) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	mode := os.FileMode(0o700)
	if socketGID >= 0 && filepath.Dir(filepath.Clean(socket)) == filepath.Clean(dir) {
		if err := os.Chown(dir, -1, socketGID); err != nil {
			return fmt.Errorf("daemon.socket_group: data_dir %s: %w", dir, err)
		}
		mode = 0o710
	}
	return os.Chmod(dir, mode)
}

// lookupGroup returns the id of daemon.socket_group (a name or a number),
// or -1 when it is unset.
func lookupGroup(name string) (int, error) {
	if name == "" {
		return -1, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		var unknown user.UnknownGroupError
		if !errors.As(err, &unknown) {
			return 0, fmt.Errorf("daemon.socket_group %q: %w", name, err)
		}
		if g, err = user.LookupGroupId(name); err != nil {
			return 0, fmt.Errorf("daemon.socket_group %q: no such group", name)
		}
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return 0, fmt.Errorf("daemon.socket_group %q: group id %q", name, g.Gid)
	}
	return gid, nil
}

// listenUnix listens on a unix socket, replacing a stale socket file left
// by a node that died, but never one a live node answers on. The socket
// is the node's user's alone (0600), or with gid >= 0 its group's too
// (0660).
func listenUnix(path string, gid int) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("%s: a node is already listening there", path)
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	mode := os.FileMode(0o600)
	if gid >= 0 {
		if err := os.Chown(path, -1, gid); err != nil {
			ln.Close()
			return nil, fmt.Errorf("daemon.socket_group: %w", err)
		}
		mode = 0o660
	}
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// server is an HTTP server the node runs: net/http's or httpserve's.
type server interface {
	Serve(net.Listener) error
	Shutdown(context.Context) error
}

// httpWriteProgressTimeout ends a binary cache response that sends nothing
// for this long (a client that stopped reading): what it holds, a NAR
// renderer and its buffers or an xz encoder, is then freed. A slow client
// that keeps reading is not cut off.
const httpWriteProgressTimeout = 60 * time.Second

// HTTPAddr returns the address the binary cache listens on.
func (n *Node) HTTPAddr() string {
	if n.httpLn == nil {
		return ""
	}
	return n.httpLn.Addr().String()
}

// Handler returns the public HTTP handler: the binary cache, status and
// metrics.
func (n *Node) Handler() http.Handler {
	cache := httpcache.New(n, httpcache.Options{StoreDir: n.cfg.StoreDir, Priority: 30, Log: n.log})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/status", n.servePublicStatus)
	mux.Handle("GET /metrics", promhttp.HandlerFor(n.metrics.reg, promhttp.HandlerOpts{}))
	mux.Handle("/", cache)
	return n.metrics.instrument(corkNARs(mux))
}

// Run serves until ctx is done, then shuts down gracefully.
func (n *Node) Run(ctx context.Context) error {
	errc := make(chan error, 3)
	serve := func(ln net.Listener, srv server) {
		n.servers = append(n.servers, srv)
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	n.bg = ctx
	n.openLocalShare(ctx)
	if len(n.cfg.P2PListen) > 0 {
		p, err := n.startP2P(ctx)
		if err != nil {
			return err
		}
		n.p2p = p
		defer p.close()
	}
	// Before the p2p side closes: a pull that ends shares its path.
	defer n.closeUpstreams()
	n.local.start(ctx)
	// Before anything can write a record (the servers start below): see
	// sharedCount.
	snap, err := n.index.Snapshot()
	if err != nil {
		return err
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.countShared(ctx, snap)
	}()
	if n.httpLn != nil {
		// The binary cache: httpserve, for the latency of sequential
		// narinfo requests (see its package doc).
		serve(n.httpLn, &httpserve.Server{Handler: n.Handler(), ReadHeaderTimeout: 30 * time.Second,
			IdleTimeout: 2 * time.Minute, WriteProgressTimeout: httpWriteProgressTimeout, ConnContext: withConn, Log: n.log})
	}
	if n.guixLn != nil {
		// The Guix listener: httpserve too, for guix substitute's
		// pipelined narinfo requests.
		serve(n.guixLn, &httpserve.Server{Handler: n.GuixHandler(), ReadHeaderTimeout: 30 * time.Second,
			IdleTimeout: 2 * time.Minute, WriteProgressTimeout: httpWriteProgressTimeout, ConnContext: withMissBudget, Log: n.log})
		if n.cfg.MDNS {
			n.wg.Add(1)
			go func() {
				defer n.wg.Done()
				n.advertiseGuix(ctx) // guixmdns.go
			}()
		}
	}
	// The control API takes request bodies (imports): net/http.
	controlLn := newConnListener(n.controlLn.Addr())
	serve(controlLn, &http.Server{Handler: n.controlHandler(), ReadHeaderTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(n.log.Handler(), slog.LevelDebug)})
	daemonSrv := daemon.NewServer(daemonStore{n: n}, n.cfg.StoreDir, n.log)
	guixDaemonSrv := n.guixDaemonServer()
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.serveSocket(ctx, n.controlLn, daemonSrv, controlLn)
	}()
	if n.guixSock != nil {
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			serveDaemon(ctx, n.guixSock, guixDaemonSrv)
		}()
	}
	n.wg.Add(2)
	go n.compressLoop(ctx)
	go n.gcLoop(ctx)
	n.wg.Add(1)
	go n.limitLoop(ctx)
	n.wg.Add(2)
	go n.integrityLoop(ctx)
	go n.scrubLoop(ctx)
	if n.cfg.MountDir != "" {
		srv, err := mount.Mount(n.cfg.MountDir, mountSource{n.store, n})
		if err != nil {
			n.log.Warn("running without the store mount", "err", err)
		} else {
			defer srv.Unmount()
			n.log.Info("store mounted", "dir", n.cfg.MountDir)
		}
	}
	n.log.Info("node running", "http", n.HTTPAddr(), "guix_http", n.GuixAddr(), "socket", n.cfg.DaemonSocket, "guix_socket", n.cfg.GuixDaemonSocket, "data_dir", n.cfg.DataDir)
	select {
	case <-ctx.Done():
		n.log.Info("node stopping", "reason", context.Cause(ctx))
	case err = <-errc:
		n.log.Error("node stopping", "reason", err)
	}
	n.controlLn.Close()
	if n.guixSock != nil {
		n.guixSock.Close()
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, srv := range n.servers {
		srv.Shutdown(shutdown)
	}
	n.wg.Wait()
	daemonSrv.Close()
	guixDaemonSrv.Close()
	return err
}

// Close releases the stores and the data_dir lock.
func (n *Node) Close() error {
	if n.controlLn != nil {
		n.controlLn.Close()
		os.Remove(n.cfg.DaemonSocket)
	}
	if n.guixSock != nil {
		n.guixSock.Close()
		os.Remove(n.cfg.GuixDaemonSocket)
	}
	if n.httpLn != nil {
		n.httpLn.Close()
	}
	if n.guixLn != nil {
		n.guixLn.Close()
	}
	n.closeUpstreams() // before the store, which pulls write (also at the end of Run)
	if n.index != nil {
		n.index.Close()
	}
	if n.store != nil {
		n.store.Close()
	}
	if n.lock != nil {
		n.lock.Close()
	}
	return nil
}

// compressLoop makes the zstd frames of new chunks in the background, at
// start and after each import, so that .nar.zst requests are splices.
func (n *Node) compressLoop(ctx context.Context) {
	defer n.wg.Done()
	n.wakeCompressor()
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.compress:
		}
		start := time.Now()
		// At the lowest priority: the frames only speed up later .nar.zst
		// responses, and the clients of a pull or an import that just
		// ended are still unpacking what they got.
		var count int
		var err error
		priority.Run(func() { count, err = n.store.CompressPending(ctx) })
		var dmg *castore.Damage
		if errors.As(err, &dmg) {
			n.damageFound(dmg, "the compressor")
			n.wakeCompressor() // the rest, without it
		} else if err != nil && ctx.Err() == nil {
			n.log.Error("compressing chunks", "err", err)
		}
		if count > 0 {
			n.log.Debug("compressed chunks", "chunks", count, "seconds", time.Since(start).Seconds())
		}
	}
}

func (n *Node) wakeCompressor() {
	select {
	case n.compress <- struct{}{}:
	default:
	}
}
