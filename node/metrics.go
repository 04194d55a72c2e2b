package node

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/internal/counting"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
)

// Metrics, in Prometheus's conventions: base units (bytes, seconds),
// counters ending in _total. Two kinds:
//
//   - Events (requests, fetches, imports, collections) are counted where
//     they happen.
//   - Levels (paths, bytes stored, peers, the DHT's queue) come from one
//     status computation per scrape (statusCollector), and status reads
//     counters only (castore.Stats, pathinfo.Totals), never walks the
//     paths or the objects: a scrape costs the same whatever the node
//     holds.
//
// Latency: a narinfo's histogram times the whole request (its answer is
// small); a NAR's times its first byte of body (the wait for the path to
// be found and started, which is what a client waits for before bytes
// flow; the rest is throughput, counted in bytes).

// Fetch sources, the label of the fetch metrics and the log line.
const (
	viaPeer     = "peer"
	viaUpstream = "upstream"
	viaLocal    = "local"
)

// metrics are the node's Prometheus metrics.
type metrics struct {
	reg           *prometheus.Registry
	requests      *prometheus.CounterVec
	responseBytes *prometheus.CounterVec
	narinfoTime   prometheus.Histogram
	narFirstByte  prometheus.Histogram
	fetchTime     *prometheus.HistogramVec
	fetchBytes    *prometheus.CounterVec
	fetchFailures *prometheus.CounterVec
	importPaths   prometheus.Counter
	importBytes   prometheus.Counter
	importNew     prometheus.Counter
	gcRuns        prometheus.Counter
	gcFreed       prometheus.Counter
	evicted       prometheus.Counter
}

func newMetrics(n *Node) *metrics {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "p2pstore_http_requests_total", Help: "HTTP requests by endpoint and status code.",
		}, []string{"endpoint", "code"}),
		responseBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "p2pstore_http_response_bytes_total", Help: "Response body bytes sent over HTTP by endpoint (NARs as sent: compressed where asked).",
		}, []string{"endpoint"}),
		narinfoTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "p2pstore_http_narinfo_duration_seconds", Help: "Time to answer a narinfo request, whole.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 1.5, 2, 5},
		}),
		narFirstByte: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "p2pstore_http_nar_first_byte_seconds", Help: "Time from a NAR request to the first byte of its body (requests that sent none are not observed).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		fetchTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "p2pstore_fetch_duration_seconds", Help: "Time to make a path valid here, from the start of its fetch, by source (peer, upstream, local store).",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}, []string{"source"}),
		fetchBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "p2pstore_fetch_bytes_total", Help: "Bytes fetches received, as they came (peers: chunk frames; upstreams: compressed NARs; local store: NARs), by source.",
		}, []string{"source"}),
		fetchFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "p2pstore_fetch_failures_total", Help: "Fetches that found a path and failed to get it, by source.",
		}, []string{"source"}),
		importPaths: counter("p2pstore_import_paths_total", "Store paths imported (import, nix copy --to the daemon socket)."),
		importBytes: counter("p2pstore_import_nar_bytes_total", "NAR bytes imported."),
		importNew:   counter("p2pstore_import_new_bytes_total", "Chunk bytes that imports added after dedup."),
		gcRuns:      counter("p2pstore_gc_runs_total", "Garbage collections run."),
		gcFreed:     counter("p2pstore_gc_freed_bytes_total", "Pack bytes garbage collections gave back to the disk."),
		evicted:     counter("p2pstore_evicted_paths_total", "Least recently used unpinned paths removed over storage.max_bytes."),
	}
	m.reg.MustRegister(m.requests, m.responseBytes, m.narinfoTime, m.narFirstByte, m.fetchTime, m.fetchBytes, m.fetchFailures,
		m.importPaths, m.importBytes, m.importNew, m.gcRuns, m.gcFreed, m.evicted,
		statusCollector{n},
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}),
	)
	return m
}

func (m *metrics) imported(narSize uint64, st castore.WriteStats) {
	m.importPaths.Inc()
	m.importBytes.Add(float64(narSize))
	m.importNew.Add(float64(st.NewBytes))
}

// fetched counts a fetch that ended: its time and bytes, or its failure.
func (m *metrics) fetched(source string, bytes uint64, took time.Duration, err error) {
	m.fetchBytes.WithLabelValues(source).Add(float64(bytes))
	if err != nil {
		m.fetchFailures.WithLabelValues(source).Inc()
		return
	}
	m.fetchTime.WithLabelValues(source).Observe(took.Seconds())
}

func (m *metrics) collected(st castore.CollectStats) {
	m.gcRuns.Inc()
	m.gcFreed.Add(float64(st.BytesFreed))
}

// instrument counts requests by endpoint and status, and their body
// bytes, and times narinfos and NARs' first bytes, seeing the writes
// through a measured writer.
func (m *metrics) instrument(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mw := &measured{ResponseWriter: w, body: counting.Writer{W: w}, start: time.Now()}
		ep := endpoint(r.URL.Path)
		defer func() {
			code := mw.code
			if code == 0 {
				code = http.StatusOK
			}
			m.requests.WithLabelValues(ep, strconv.Itoa(code)).Inc()
			m.responseBytes.WithLabelValues(ep).Add(float64(mw.body.N))
			switch {
			case ep == "narinfo":
				m.narinfoTime.Observe(time.Since(mw.start).Seconds())
			case ep == "nar" && mw.began && mw.body.N > 0:
				m.narFirstByte.Observe(mw.firstByte.Seconds())
			}
		}()
		h.ServeHTTP(mw, r)
	})
}

// measured is the ResponseWriter instrument hands on: it notes the status,
// the body bytes and when the first went, and passes every call on. It is
// an http.Flusher and an io.ReaderFrom whatever it wraps (counting.Writer's
// ReadFrom), so that NAR ranges still go by sendfile. One struct a
// request: a wrapper made with hooks (httpsnoop) took a dozen
// allocations, a third of a Guix narinfo's.
type measured struct {
	http.ResponseWriter
	body      counting.Writer // the body's bytes, through ResponseWriter
	start     time.Time
	code      int  // the first WriteHeader's, 0 before
	began     bool // a body byte went
	firstByte time.Duration
}

func (m *measured) first() {
	if !m.began {
		m.began, m.firstByte = true, time.Since(m.start)
	}
}

func (m *measured) WriteHeader(code int) {
	if m.code == 0 {
		m.code = code
	}
	m.ResponseWriter.WriteHeader(code)
}

func (m *measured) Write(b []byte) (int, error) {
	if len(b) > 0 {
		m.first()
	}
	return m.body.Write(b)
}

func (m *measured) ReadFrom(src io.Reader) (int64, error) {
	m.first()
	return m.body.ReadFrom(src)
}

func (m *measured) Flush() {
	if f, ok := m.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap gives http.ResponseController the ResponseWriter underneath.
func (m *measured) Unwrap() http.ResponseWriter { return m.ResponseWriter }

// endpoint names what a request asks for, for the metrics' labels.
func endpoint(p string) string {
	switch {
	case strings.HasSuffix(p, ".narinfo"):
		return "narinfo"
	case strings.Contains(p, "/nar/"):
		return "nar"
	case strings.Contains(p, "/log/"):
		return "log"
	case strings.HasSuffix(p, "/nix-cache-info"):
		return "nix-cache-info"
	case p == "/metrics":
		return "metrics"
	case p == "/api/v1/status":
		return "status"
	}
	return "other"
}

// statusCollector makes the metrics of levels from one status per scrape.
type statusCollector struct{ n *Node }

var (
	descPeers        = prometheus.NewDesc("p2pstore_peers", "Peers connected.", nil, nil)
	descPaths        = prometheus.NewDesc("p2pstore_paths", "Valid store paths held, by how they came: import, peer, upstream, local (copied from the local Nix store), unknown (recorded before the node kept it).", []string{"source"}, nil)
	descPinned       = prometheus.NewDesc("p2pstore_pinned_paths", "Paths kept whatever storage.max_bytes says.", nil, nil)
	descShared       = prometheus.NewDesc("p2pstore_shared_paths", "Paths given to peers (absent while the node counts them after its start).", nil, nil)
	descLocalShared  = prometheus.NewDesc("p2pstore_local_shared_paths", "Signed paths of the local Nix store served without an import.", nil, nil)
	descStored       = prometheus.NewDesc("p2pstore_store_bytes", "Chunk bytes stored, after dedup: what storage.max_bytes bounds.", nil, nil)
	descLogical      = prometheus.NewDesc("p2pstore_store_logical_bytes", "Sum of the NAR sizes of the paths held.", nil, nil)
	descLimit        = prometheus.NewDesc("p2pstore_store_limit_bytes", "storage.max_bytes (0: no limit).", nil, nil)
	descDisk         = prometheus.NewDesc("p2pstore_store_disk_bytes", "Bytes of the pack files: chunks, their zstd frames and garbage not yet given back.", nil, nil)
	descGarbage      = prometheus.NewDesc("p2pstore_store_garbage_bytes", "Pack bytes aborted writes left for the next garbage collection.", nil, nil)
	descImports      = prometheus.NewDesc("p2pstore_imports_running", "Imports in progress.", nil, nil)
	descP2PReceived  = prometheus.NewDesc("p2pstore_p2p_received_bytes_total", "Bytes received from peers over the transfer protocol.", nil, nil)
	descP2PSent      = prometheus.NewDesc("p2pstore_p2p_sent_bytes_total", "Bytes sent to peers over the transfer protocol.", nil, nil)
	descUpLookups    = prometheus.NewDesc("p2pstore_upstream_lookups_total", "Lookups that asked the upstream caches, by result: hit (a trusted narinfo) or miss.", []string{"result"}, nil)
	descUpReceived   = prometheus.NewDesc("p2pstore_upstream_received_bytes_total", "Body bytes received from upstream caches: compressed NARs and narinfos.", nil, nil)
	descDHTOnline    = prometheus.NewDesc("p2pstore_dht_online", "1 when the DHT provider is in contact with the network.", nil, nil)
	descDHTQueue     = prometheus.NewDesc("p2pstore_dht_provide_queue_keys", "Keys waiting to be announced on the DHT.", nil, nil)
	descDHTProvided  = prometheus.NewDesc("p2pstore_dht_provided_keys_total", "Keys announced on the DHT.", nil, nil)
	descNARCache     = prometheus.NewDesc("p2pstore_nar_cache_bytes", "Bytes of the NARs kept whole as files (storage.nar_cache_bytes).", nil, nil)
	descNARCacheMax  = prometheus.NewDesc("p2pstore_nar_cache_limit_bytes", "storage.nar_cache_bytes (0: no NAR cache).", nil, nil)
	descNARCacheHits = prometheus.NewDesc("p2pstore_nar_cache_hits_total", "NAR responses served from the NAR cache's files.", nil, nil)
	descDHTLastSweep = prometheus.NewDesc("p2pstore_dht_last_sweep_timestamp_seconds", "When the node last finished announcing everything it holds (at its start and when it regains the DHT); absent before.", nil, nil)
)

func (c statusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPeers, descPaths, descPinned, descShared, descLocalShared, descStored, descLogical,
		descLimit, descDisk, descGarbage, descImports, descP2PReceived, descP2PSent, descUpLookups, descUpReceived,
		descNARCache, descNARCacheMax, descNARCacheHits, descDHTOnline, descDHTQueue, descDHTProvided, descDHTLastSweep} {
		ch <- d
	}
}

func (c statusCollector) Collect(ch chan<- prometheus.Metric) {
	s, err := c.n.status(context.Background(), false)
	if err != nil {
		c.n.log.Warn("reading the status for metrics", "err", err)
		return
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(descPeers, float64(s.Peers))
	for src, count := range s.PathSources {
		gauge(descPaths, float64(count), src)
	}
	gauge(descPinned, float64(s.PinnedPaths))
	if s.SharedCounted {
		gauge(descShared, float64(s.SharedPaths))
	}
	gauge(descLocalShared, float64(s.LocalShared))
	gauge(descStored, float64(s.BytesStored))
	gauge(descLogical, float64(s.BytesLogical))
	gauge(descLimit, float64(s.MaxBytes))
	gauge(descDisk, float64(s.DiskBytes))
	gauge(descGarbage, float64(s.GarbageBytes))
	gauge(descImports, float64(s.ImportsRunning))
	counter(descP2PReceived, s.P2PBytesReceived)
	counter(descP2PSent, s.P2PBytesSent)
	counter(descUpLookups, s.UpstreamHits, "hit")
	counter(descUpLookups, s.UpstreamMisses, "miss")
	counter(descUpReceived, s.UpstreamBytesReceived)
	gauge(descNARCache, float64(s.NARCacheBytes))
	gauge(descNARCacheMax, float64(s.NARCacheMax))
	counter(descNARCacheHits, s.NARCacheHits)
	if c.n.p2p != nil {
		gauge(descDHTOnline, b2f(s.DHTOnline))
		gauge(descDHTQueue, float64(s.DHTQueuedKeys))
		counter(descDHTProvided, s.DHTProvidedKeys)
		if !s.DHTLastSweep.IsZero() {
			gauge(descDHTLastSweep, float64(s.DHTLastSweep.UnixNano())/1e9)
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// sourceLabel is a path source as the metrics and status name it.
func sourceLabel(src pathinfo.Source) string {
	if src == "" {
		return "unknown"
	}
	return string(src)
}
