package node

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

// readFromRecorder is a ResponseWriter that takes a body by ReadFrom, as
// the binary cache's server does (sendfile); it counts the calls.
type readFromRecorder struct {
	*httptest.ResponseRecorder
	readFroms int
}

func (r *readFromRecorder) ReadFrom(src io.Reader) (int64, error) {
	r.readFroms++
	return io.Copy(r.ResponseRecorder, src)
}

// instrument counts a request by endpoint and status, and its bytes, and
// leaves the ResponseWriter's ReadFrom to the handler.
func TestInstrumentKeepsReadFrom(t *testing.T) {
	m := newMetrics(limitNode(t, 0))
	h := m.instrument(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusPartialContent)
		rf, ok := w.(io.ReaderFrom)
		if !ok {
			t.Errorf("the handler's ResponseWriter %T has no ReadFrom", w)
			return
		}
		rf.ReadFrom(strings.NewReader("some NAR bytes"))
	}))
	rec := &readFromRecorder{ResponseRecorder: httptest.NewRecorder()}
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/nar/x.nar", nil))
	if rec.readFroms != 1 || rec.Body.String() != "some NAR bytes" {
		t.Errorf("%d ReadFrom calls reached the ResponseWriter, body %q", rec.readFroms, rec.Body.String())
	}
	got := gather(t, m)
	for k, want := range map[string]float64{
		`p2pstore_http_requests_total{code="206",endpoint="nar"}`: 1,
		`p2pstore_http_response_bytes_total{endpoint="nar"}`:      float64(len("some NAR bytes")),
		`p2pstore_http_nar_first_byte_seconds_count`:              1,
	} {
		if got[k] != want {
			t.Errorf("%s = %v, want %v", k, got[k], want)
		}
	}
}

// sample names a sample as the exposition format does, labels sorted.
func sampleName(name string, labels []*dto.LabelPair) string {
	if len(labels) == 0 {
		return name
	}
	var ls []string
	for _, l := range labels {
		ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
	}
	slices.Sort(ls)
	return name + "{" + strings.Join(ls, ",") + "}"
}

// samples flattens metric families: counters and gauges by name and
// labels, histograms by their _count and _sum.
func samples(fams map[string]*dto.MetricFamily) map[string]float64 {
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			switch {
			case m.Counter != nil:
				out[sampleName(name, m.GetLabel())] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[sampleName(name, m.GetLabel())] = m.GetGauge().GetValue()
			case m.Histogram != nil:
				out[sampleName(name+"_count", m.GetLabel())] = float64(m.GetHistogram().GetSampleCount())
				out[sampleName(name+"_sum", m.GetLabel())] = m.GetHistogram().GetSampleSum()
			}
		}
	}
	return out
}

func gather(t *testing.T, m *metrics) map[string]float64 {
	t.Helper()
	fams, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		byName[f.GetName()] = f
	}
	return samples(byName)
}

// scrape parses what GET /metrics answers.
func scrape(t *testing.T, h http.Handler) map[string]float64 {
	t.Helper()
	rec := get(t, h, "/metrics")
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatalf("the metrics do not parse: %v", err)
	}
	return samples(fams)
}

// narinfoURL is the URL field of a narinfo.
func narinfoURL(t *testing.T, body string) string {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		if u, ok := strings.CutPrefix(sc.Text(), "URL: "); ok {
			return u
		}
	}
	t.Fatalf("no URL in the narinfo:\n%s", body)
	return ""
}

// TestMetricsAfterRequests: after two imports, three narinfo hits, a
// miss and a NAR, the metrics count exactly those, with the bytes sent,
// and the levels match the status.
func TestMetricsAfterRequests(t *testing.T) {
	n := limitNode(t, 0)
	importTiny(t, n, 0, 2)
	h := n.Handler()
	a, b := fmt.Sprintf("%032d", 0), fmt.Sprintf("%032d", 1)
	narinfoBytes := 0 // the bodies of the narinfo requests, 404 included
	for _, hash := range []string{a, b, a} {
		narinfoBytes += get(t, h, "/"+hash+".narinfo").Body.Len()
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/"+fmt.Sprintf("%032d", 7)+".narinfo", nil))
	if rec.Code != http.StatusNotFound {
		t.Fatalf("narinfo of a missing path: %d", rec.Code)
	}
	narinfoBytes += rec.Body.Len()
	info, err := n.index.Get(a)
	if err != nil {
		t.Fatal(err)
	}
	ni := get(t, h, "/"+a+".narinfo").Body.String()
	narinfoBytes += len(ni)
	narBody := get(t, h, "/"+narinfoURL(t, ni)).Body.Bytes()
	if uint64(len(narBody)) != info.NarSize {
		t.Fatalf("NAR of %d bytes, want %d", len(narBody), info.NarSize)
	}

	s, err := n.status(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	got := scrape(t, h)
	for k, want := range map[string]float64{
		`p2pstore_http_requests_total{code="200",endpoint="narinfo"}`: 4, // the three, and the NAR's
		`p2pstore_http_requests_total{code="404",endpoint="narinfo"}`: 1,
		`p2pstore_http_requests_total{code="200",endpoint="nar"}`:     1,
		`p2pstore_http_response_bytes_total{endpoint="nar"}`:          float64(info.NarSize),
		`p2pstore_http_response_bytes_total{endpoint="narinfo"}`:      float64(narinfoBytes),
		`p2pstore_http_narinfo_duration_seconds_count`:                5,
		`p2pstore_http_nar_first_byte_seconds_count`:                  1,
		`p2pstore_import_paths_total`:                                 2,
		`p2pstore_paths{source="import"}`:                             2,
		`p2pstore_pinned_paths`:                                       2,
		`p2pstore_store_logical_bytes`:                                float64(s.BytesLogical),
		`p2pstore_store_bytes`:                                        float64(s.BytesStored),
		`p2pstore_store_disk_bytes`:                                   float64(s.DiskBytes),
		`p2pstore_store_limit_bytes`:                                  0,
		`p2pstore_peers`:                                              0,
		`p2pstore_upstream_lookups_total{result="hit"}`:               0,
	} {
		if v, ok := got[k]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", k, v, ok, want)
		}
	}
	if s.Paths != 2 || s.PathSources["import"] != 2 || s.PinnedPaths != 2 || s.BytesLogical != 2*info.NarSize ||
		s.BytesStored == 0 || s.DiskBytes < s.BytesStored {
		t.Errorf("status %+v", s)
	}
	// Prometheus's own conventions (promtool check metrics): base units,
	// _total on counters, help on every metric.
	problems, err := promlint.New(get(t, h, "/metrics").Body).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "p2pstore_") {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}
	// The scrapes are counted by the next one.
	if got := scrape(t, h)[`p2pstore_http_requests_total{code="200",endpoint="metrics"}`]; got != 2 {
		t.Errorf("%v scrapes counted, want 2", got)
	}
}

// TestStatusJSON: the control socket's status names the paths by source
// and keeps the field names scripts rely on (SPEC.md).
func TestStatusJSON(t *testing.T) {
	n := limitNode(t, 0)
	importTiny(t, n, 0, 2)
	b := fileNAR(t, []byte("fetched"))
	info := &pathinfo.Info{StorePath: fmt.Sprintf("/nix/store/%032d-fetched", 5), NarHash: storepath.NarHash(sha256.Sum256(b)),
		NarSize: uint64(len(b))}
	if _, err := n.addPath(context.Background(), info, bytes.NewReader(b), false, pathinfo.SourcePeer); err != nil {
		t.Fatal(err)
	}
	var s map[string]any
	if err := json.Unmarshal(get(t, n.controlHandler(), "/api/v1/status").Body.Bytes(), &s); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"peer_id", "addrs", "peers", "paths", "bytes_stored", "bytes_logical", "p2p_bytes_received",
		"p2p_bytes_sent", "upstream_bytes_received", "upstream_hits", "upstream_misses", "disk_bytes", "path_sources", "max_bytes"} {
		if _, ok := s[k]; !ok {
			t.Errorf("the status has no %s", k)
		}
	}
	sources, _ := s["path_sources"].(map[string]any)
	if s["paths"] != 3.0 || sources["import"] != 2.0 || sources["peer"] != 1.0 || len(sources) != 2 {
		t.Errorf("paths %v by source %v, want 3: 2 imported, 1 from peers", s["paths"], s["path_sources"])
	}
}
