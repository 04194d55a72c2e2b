package node

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/felixge/httpsnoop"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/p2pstore/p2pstore/castore"
)

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

// instrument counts requests by kind and status. The status is seen
// through httpsnoop, whose wrapper keeps the ResponseWriter's other
// methods: ReadFrom above all, so that NAR ranges still go by sendfile.
func (m *metrics) instrument(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		code := 0
		w = httpsnoop.Wrap(w, httpsnoop.Hooks{WriteHeader: func(next httpsnoop.WriteHeaderFunc) httpsnoop.WriteHeaderFunc {
			return func(c int) {
				if code == 0 {
					code = c
				}
				next(c)
			}
		}})
		defer func() {
			if code == 0 {
				code = http.StatusOK
			}
			m.requests.WithLabelValues(requestKind(r.URL.Path), strconv.Itoa(code)).Inc()
		}()
		h.ServeHTTP(w, r)
	})
}

func requestKind(p string) string {
	switch {
	case strings.HasSuffix(p, ".narinfo"):
		return "narinfo"
	case strings.Contains(p, "/nar/"):
		return "nar"
	case p == "/metrics":
		return "metrics"
	case strings.HasSuffix(p, "/nix-cache-info"):
		return "cache-info"
	}
	return "other"
}
