// Package node wires a p2pstore node together: it opens the stores, builds
// the HTTP binary cache and the control API on them, and implements the
// seams those consumers declare (httpcache.Paths) with the local store
// first and, later, peers and upstream caches behind it.
package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/ulikunitz/xz"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/config"
	"github.com/p2pstore/p2pstore/narview/httpcache"
	"github.com/p2pstore/p2pstore/narview/nar"
	"github.com/p2pstore/p2pstore/narview/narinfo"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

// Node is a running p2pstore node.
type Node struct {
	cfg     *config.Config
	log     *slog.Logger
	store   *castore.Store
	index   *pathinfo.Index
	signKey *narinfo.SecretKey
	lock    *os.File
	metrics *metrics

	compress chan struct{} // wakes the background compressor

	httpLn    net.Listener
	controlLn net.Listener
	servers   []*http.Server
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
	n := &Node{cfg: cfg, log: log, compress: make(chan struct{}, 1)}
	if err := n.open(); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

func (n *Node) open() error {
	cfg := n.cfg
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return err
	}
	lock, err := os.OpenFile(filepath.Join(cfg.DataDir, lockFile), os.O_RDWR|os.O_CREATE, 0o644)
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
	if n.store, err = castore.Open(filepath.Join(cfg.DataDir, castoreDir)); err != nil {
		return err
	}
	if n.index, err = pathinfo.Open(filepath.Join(cfg.DataDir, indexFile)); err != nil {
		return err
	}
	n.metrics = newMetrics(n)
	if cfg.HTTPListen != "" {
		if n.httpLn, err = net.Listen("tcp", cfg.HTTPListen); err != nil {
			return fmt.Errorf("http.listen: %w", err)
		}
	}
	if n.controlLn, err = listenUnix(cfg.DaemonSocket); err != nil {
		return fmt.Errorf("daemon.socket: %w", err)
	}
	return nil
}

// listenUnix listens on a unix socket, replacing a stale socket file left
// by a node that died, but never one a live node answers on.
func listenUnix(path string) (net.Listener, error) {
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
	// Only the node's user may use the control API.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

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
	mux.HandleFunc("GET /api/v1/status", n.serveStatus)
	mux.Handle("GET /metrics", promhttp.HandlerFor(n.metrics.reg, promhttp.HandlerOpts{}))
	mux.Handle("/", cache)
	return n.metrics.instrument(mux)
}

// Run serves until ctx is done, then shuts down gracefully.
func (n *Node) Run(ctx context.Context) error {
	errc := make(chan error, 2)
	serve := func(ln net.Listener, h http.Handler) {
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute, ErrorLog: slog.NewLogLogger(n.log.Handler(), slog.LevelDebug)}
		n.servers = append(n.servers, srv)
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	if n.httpLn != nil {
		serve(n.httpLn, n.Handler())
	}
	serve(n.controlLn, n.controlHandler())
	n.wg.Add(1)
	go n.compressLoop(ctx)
	n.log.Info("node running", "http", n.HTTPAddr(), "socket", n.cfg.DaemonSocket, "data_dir", n.cfg.DataDir)
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, srv := range n.servers {
		srv.Shutdown(shutdown)
	}
	n.wg.Wait()
	return err
}

// Close releases the stores and the data_dir lock.
func (n *Node) Close() error {
	if n.controlLn != nil {
		n.controlLn.Close()
		os.Remove(n.cfg.DaemonSocket)
	}
	if n.httpLn != nil {
		n.httpLn.Close()
	}
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
		count, err := n.store.CompressPending(ctx)
		if err != nil && ctx.Err() == nil {
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

// Info implements httpcache.Paths: the local index.
func (n *Node) Info(ctx context.Context, hash string) (*pathinfo.Info, error) {
	return n.index.Get(hash)
}

// NAR implements httpcache.Paths: the NAR rendered from castore. A zstd
// NAR is spliced from the chunks' stored frames; xz is compressed on the
// fly (slow, for clients that ask for nothing else).
func (n *Node) NAR(ctx context.Context, info *pathinfo.Info, compression string, w io.Writer) error {
	r := n.store.NewReader()
	defer r.Close()
	cw := &countingWriter{w: w}
	var err error
	switch compression {
	case httpcache.CompressionZstd:
		zw := r.NewZstdWriter(cw)
		if err = nar.Render(ctx, zw, info.Root, r); err == nil {
			err = zw.Close()
		}
	case httpcache.CompressionXz:
		var xw *xz.Writer
		if xw, err = xz.NewWriter(cw); err == nil {
			if err = nar.Render(ctx, xw, info.Root, r); err == nil {
				err = xw.Close()
			}
		}
	default:
		err = nar.Render(ctx, cw, info.Root, r)
	}
	n.metrics.narBytes.Add(float64(cw.n))
	return err
}

// countingWriter counts the bytes sent and keeps the ReaderFrom of what it
// wraps, so that sendfile still happens underneath.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	k, err := c.w.Write(p)
	c.n += int64(k)
	return k, err
}

func (c *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	var k int64
	var err error
	if rf, ok := c.w.(io.ReaderFrom); ok {
		k, err = rf.ReadFrom(r)
	} else {
		k, err = io.Copy(struct{ io.Writer }{c.w}, r)
	}
	c.n += k
	return k, err
}

// ErrBadInput marks an import the node refused for what the client sent.
var ErrBadInput = errors.New("bad input")

func badInput(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadInput, fmt.Sprintf(format, args...))
}

// Import adds one path from a NAR stream. The NAR is checked against the
// claimed NarHash and NarSize before the path becomes valid; a path the
// operator imports is signed with the node's key.
func (n *Node) Import(ctx context.Context, meta *PathMeta, r io.Reader) (*ImportResult, error) {
	info, err := n.infoFromMeta(meta)
	if err != nil {
		return nil, err
	}
	w := n.store.NewWriter()
	nr := nar.NewReader(r)
	root, err := nar.Ingest(ctx, nr, w)
	if err != nil {
		w.Abort()
		if errors.Is(err, nar.ErrFormat) {
			return nil, badInput("%s: %v", meta.Path, err)
		}
		return nil, fmt.Errorf("%s: %w", meta.Path, err)
	}
	if got := storepath.NarHash(nr.NarHash()); got != info.NarHash || uint64(nr.NarSize()) != info.NarSize {
		w.Abort()
		return nil, badInput("%s: NAR has hash %s and size %d, but the path info says %s and %d",
			meta.Path, got, nr.NarSize(), info.NarHash, info.NarSize)
	}
	if err := w.Commit(); err != nil {
		return nil, err
	}
	info.Root = root
	if n.signKey != nil {
		info.AddSig(n.signKey.Sign(info.Fingerprint()))
	}
	if err := n.index.Put(info); err != nil {
		return nil, err
	}
	n.wakeCompressor()
	st := w.Stats()
	n.metrics.imported(info.NarSize, st)
	n.log.Info("imported", "path", info.StorePath, "nar_size", info.NarSize, "new_bytes", st.NewBytes)
	return &ImportResult{Path: info.StorePath, NarSize: info.NarSize, NewBytes: st.NewBytes, DedupBytes: st.DedupBytes, NewChunks: st.NewChunks}, nil
}

func (n *Node) infoFromMeta(meta *PathMeta) (*pathinfo.Info, error) {
	h, err := storepath.ParseNarHash(meta.NarHash)
	if err != nil {
		return nil, badInput("%s: %v", meta.Path, err)
	}
	info := &pathinfo.Info{
		StorePath:        meta.Path,
		NarHash:          h,
		NarSize:          meta.NarSize,
		References:       meta.References,
		Deriver:          meta.Deriver,
		Sigs:             meta.Sigs,
		CA:               meta.CA,
		RegistrationTime: meta.RegistrationTime,
		Root:             castore.Node{Type: castore.TypeFile}, // placeholder for Validate
	}
	if err := info.Validate(n.cfg.StoreDir); err != nil {
		return nil, badInput("%v", err)
	}
	if err := info.CheckSigs(n.knownKeys()); err != nil {
		return nil, badInput("%v", err)
	}
	return info, nil
}

// knownKeys are the keys whose signatures the node can check: the trusted
// ones, the upstream ones and its own.
func (n *Node) knownKeys() []narinfo.PublicKey {
	keys := append(append([]narinfo.PublicKey(nil), n.cfg.TrustedPublicKeys...), n.cfg.UpstreamPublicKeys...)
	if n.signKey != nil {
		keys = append(keys, n.signKey.Public())
	}
	return keys
}

// status gathers the node's status.
func (n *Node) status() (*Status, error) {
	st, err := n.store.Stats()
	if err != nil {
		return nil, err
	}
	tot, err := n.index.Totals()
	if err != nil {
		return nil, err
	}
	s := &Status{
		Addrs:            []string{},
		Paths:            tot.Paths,
		BytesStored:      st.ChunkBytes,
		BytesLogical:     tot.NarBytes,
		Chunks:           st.Chunks,
		ChunksCompressed: st.Frames,
		Directories:      st.Directories,
		HTTPListen:       n.HTTPAddr(),
		DaemonSocket:     n.cfg.DaemonSocket,
	}
	if tot.NarBytes > 0 {
		s.DedupRatio = float64(st.ChunkBytes) / float64(tot.NarBytes)
	}
	if n.signKey != nil {
		s.PublicKey = n.signKey.Public().String()
	}
	return s, nil
}

func (n *Node) serveStatus(w http.ResponseWriter, r *http.Request) {
	s, err := n.status()
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	writeJSON(w, http.StatusOK, s)
}

func (n *Node) serveVerify(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rep := &VerifyReport{}
	report := func(p string) {
		if len(rep.Problems) < 1000 {
			rep.Problems = append(rep.Problems, p)
		}
	}
	st, err := n.store.Verify(r.Context(), report)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	rep.Chunks, rep.Directories, rep.Bytes = st.Chunks, st.Directories, st.Bytes
	err = n.index.ForEach(func(info *pathinfo.Info) error {
		rep.Paths++
		return n.store.CheckTree(r.Context(), info.Root, func(p string) { report(info.StorePath + ": " + p) })
	})
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	rep.Seconds = time.Since(start).Seconds()
	writeJSON(w, http.StatusOK, rep)
}

// metrics are the node's Prometheus metrics.
type metrics struct {
	reg         *prometheus.Registry
	requests    *prometheus.CounterVec
	narBytes    prometheus.Counter
	importPaths prometheus.Counter
	importBytes prometheus.Counter
	importNew   prometheus.Counter
}

func newMetrics(n *Node) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "p2pstore_http_requests_total", Help: "HTTP requests by kind and status code.",
		}, []string{"kind", "code"}),
		narBytes:    prometheus.NewCounter(prometheus.CounterOpts{Name: "p2pstore_nar_bytes_served_total", Help: "NAR bytes sent over HTTP, compressed where the client asked."}),
		importPaths: prometheus.NewCounter(prometheus.CounterOpts{Name: "p2pstore_import_paths_total", Help: "Store paths imported."}),
		importBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "p2pstore_import_nar_bytes_total", Help: "NAR bytes imported."}),
		importNew:   prometheus.NewCounter(prometheus.CounterOpts{Name: "p2pstore_import_new_bytes_total", Help: "Chunk bytes that imports added after dedup."}),
	}
	gauge := func(name, help string, f func(*Status) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 {
			s, err := n.status()
			if err != nil {
				return 0
			}
			return f(s)
		})
	}
	m.reg.MustRegister(m.requests, m.narBytes, m.importPaths, m.importBytes, m.importNew,
		gauge("p2pstore_paths", "Valid store paths held.", func(s *Status) float64 { return float64(s.Paths) }),
		gauge("p2pstore_bytes_stored", "Chunk bytes stored after dedup.", func(s *Status) float64 { return float64(s.BytesStored) }),
		gauge("p2pstore_bytes_logical", "Sum of the NAR sizes of all paths.", func(s *Status) float64 { return float64(s.BytesLogical) }),
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}),
	)
	return m
}

func (m *metrics) imported(narSize uint64, st castore.WriteStats) {
	m.importPaths.Inc()
	m.importBytes.Add(float64(narSize))
	m.importNew.Add(float64(st.NewBytes))
}

// instrument counts requests by kind and status.
func (m *metrics) instrument(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		defer func() {
			m.requests.WithLabelValues(requestKind(r.URL.Path), fmt.Sprint(rec.code)).Inc()
		}()
		h.ServeHTTP(rec, r)
	})
}

func requestKind(p string) string {
	switch {
	case filepath.Ext(p) == ".narinfo":
		return "narinfo"
	case filepath.Base(filepath.Dir(p)) == "nar":
		return "nar"
	case p == "/metrics":
		return "metrics"
	case filepath.Base(p) == "nix-cache-info":
		return "cache-info"
	}
	return "other"
}

// statusRecorder remembers the status code and passes ReadFrom through, so
// that sendfile keeps working under instrumentation.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := s.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{s.ResponseWriter}, r)
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }
