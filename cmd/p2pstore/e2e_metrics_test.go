package main

// End-to-end tests of what a node tells its operator: status, peers,
// paths, /metrics and the fetch log line, after a known sequence of
// requests to real node processes.

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/p2pstore/p2pstore/internal/nixtest"
	"github.com/p2pstore/p2pstore/node"
)

// metrics scrapes the node's /metrics: counters and gauges by name and
// labels (sorted, as the exposition writes them), histograms by their
// _count.
func (n *nodeProc) metrics() map[string]float64 {
	n.t.Helper()
	code, body := n.get("/metrics")
	if code != 200 {
		n.t.Fatalf("/metrics: %d", code)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		n.t.Fatalf("/metrics does not parse: %v", err)
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			slices.Sort(labels)
			key := name
			if len(labels) > 0 {
				key += "{" + strings.Join(labels, ",") + "}"
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				out[key] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[strings.Replace(key, name, name+"_count", 1)] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

// checkMetrics fails t for each metric whose value is not the one wanted.
func checkMetrics(t *testing.T, who string, got map[string]float64, want map[string]float64) {
	t.Helper()
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s: %s = %v (present: %v), want %v", who, k, g, ok, v)
		}
	}
}

// fetchedLine returns the node's "fetched" log line for a path.
func (n *nodeProc) fetchedLine(path string) string {
	for _, l := range strings.Split(n.log.String(), "\n") {
		if strings.Contains(l, "msg=fetched path="+path+" ") {
			return l
		}
	}
	return ""
}

// logNumber reads key=N from a log line.
func logNumber(t *testing.T, line, key string) uint64 {
	t.Helper()
	m := regexp.MustCompile(`(?:^| )` + regexp.QuoteMeta(key) + `=(\d+)`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("no %s in %q", key, line)
	}
	v, _ := strconv.ParseUint(m[1], 10, 64)
	return v
}

// TestStatusMetricsPeersPaths: node A imports two paths and answers three
// narinfo hits, a miss and a NAR; node B fetches one of the paths from
// A. Each node's metrics count exactly that, its status (human and JSON)
// says it, `peers` names the other with what it served, `paths` lists
// each path with its source, pin and sharing, and B logs one line for the
// fetch, with A's bytes.
func TestStatusMetricsPeersPaths(t *testing.T) {
	nixtest.Require(t)
	a := newNodeAt(t, "127.0.0.190", "metrics-a-1")
	a.start()
	pub := a.status().PublicKey
	b := newNodeAt(t, "127.0.0.191", "", "--bootstrap", a.p2pAddr(), "--trusted-public-key", pub)
	b.start()
	p1 := addTree(t, "metrics-one", map[string][]byte{"f": bigPayload(1 << 20)})
	p2 := addTree(t, "metrics-two", map[string][]byte{"g": []byte("the second path " + t.Name())})
	a.run("import", "--sign", p1, p2)

	// A's binary cache: 3 narinfo hits, 1 miss, 1 NAR.
	narinfoBytes := 0
	var narURL string
	for _, p := range []string{p1, p2, p1} {
		code, body := a.get("/" + hashPart(p) + ".narinfo")
		if code != 200 {
			t.Fatalf("narinfo of %s: %d", p, code)
		}
		narinfoBytes += len(body)
		if p == p1 {
			narURL = narinfoField(string(body), "URL")
		}
	}
	missCode, missBody := a.get("/" + strings.Repeat("0", 32) + ".narinfo")
	if missCode != 404 {
		t.Fatalf("narinfo of a missing path: %d", missCode)
	}
	code, nar := a.get("/" + narURL)
	if code != 200 {
		t.Fatalf("NAR: %d", code)
	}
	src := pathInfo(t, "", p1, p2)
	if uint64(len(nar)) != src[p1].NarSize {
		t.Fatalf("NAR of %d bytes, want %d", len(nar), src[p1].NarSize)
	}

	// B fetches p1 from A.
	b.waitPeers(1)
	fetchOut, err := b.try("fetch", p1)
	if err != nil {
		t.Fatalf("fetch: %v\n%s", err, fetchOut)
	}
	if strings.Contains(fetchOut, "\r") {
		t.Errorf("fetch drew a progress bar into a pipe: %q", fetchOut)
	}

	aID, bID := a.status().PeerID, b.status().PeerID
	sa, sb := a.status(), b.status()
	checkMetrics(t, "A", a.metrics(), map[string]float64{
		`p2pstore_http_requests_total{code="200",endpoint="narinfo"}`: 3,
		`p2pstore_http_requests_total{code="404",endpoint="narinfo"}`: 1,
		`p2pstore_http_requests_total{code="200",endpoint="nar"}`:     1,
		`p2pstore_http_response_bytes_total{endpoint="narinfo"}`:      float64(narinfoBytes + len(missBody)),
		`p2pstore_http_response_bytes_total{endpoint="nar"}`:          float64(src[p1].NarSize),
		`p2pstore_http_narinfo_duration_seconds_count`:                4,
		`p2pstore_http_nar_first_byte_seconds_count`:                  1,
		`p2pstore_import_paths_total`:                                 2,
		`p2pstore_import_nar_bytes_total`:                             float64(src[p1].NarSize + src[p2].NarSize),
		`p2pstore_paths{source="import"}`:                             2,
		`p2pstore_pinned_paths`:                                       2,
		`p2pstore_shared_paths`:                                       2,
		`p2pstore_peers`:                                              1,
		`p2pstore_p2p_sent_bytes_total`:                               float64(sa.P2PBytesSent),
		`p2pstore_store_logical_bytes`:                                float64(src[p1].NarSize + src[p2].NarSize),
		`p2pstore_store_bytes`:                                        float64(sa.BytesStored),
		`p2pstore_store_limit_bytes`:                                  0,
	})
	line := b.fetchedLine(p1)
	if line == "" || !strings.Contains(line, "via=peer") || !strings.Contains(line, "sources."+aID+"=") {
		t.Fatalf("B's fetch log line: %q\n%s", line, b.log)
	}
	fetchedBytes := logNumber(t, line, "bytes_received")
	if fetchedBytes == 0 || fetchedBytes != logNumber(t, line, "sources."+aID) || logNumber(t, line, "nar_size") != src[p1].NarSize {
		t.Errorf("B's fetch log line: %q", line)
	}
	if n := strings.Count(b.log.String(), "msg=fetched "); n != 1 {
		t.Errorf("B logged %d fetch lines, want 1", n)
	}
	checkMetrics(t, "B", b.metrics(), map[string]float64{
		`p2pstore_fetch_duration_seconds_count{source="peer"}`: 1,
		`p2pstore_fetch_bytes_total{source="peer"}`:            float64(fetchedBytes),
		`p2pstore_paths{source="peer"}`:                        1,
		`p2pstore_pinned_paths`:                                0,
		`p2pstore_peers`:                                       1,
		`p2pstore_p2p_received_bytes_total`:                    float64(sb.P2PBytesReceived),
	})

	// Status, JSON: each names the other, with what it served.
	if len(sb.ConnectedPeers) != 1 || sb.ConnectedPeers[0].PeerID != aID ||
		sb.ConnectedPeers[0].BytesReceived != sb.P2PBytesReceived || sb.ConnectedPeers[0].BytesReceived < fetchedBytes ||
		!strings.Contains(strings.Join(sb.ConnectedPeers[0].Addrs, " "), "/ip4/127.0.0.190/") {
		t.Errorf("B's peers: %+v (received %d in all)", sb.ConnectedPeers, sb.P2PBytesReceived)
	}
	if len(sa.ConnectedPeers) != 1 || sa.ConnectedPeers[0].PeerID != bID || sa.ConnectedPeers[0].BytesSent != sa.P2PBytesSent {
		t.Errorf("A's peers: %+v (sent %d in all)", sa.ConnectedPeers, sa.P2PBytesSent)
	}
	var raw map[string]any
	if err := json.Unmarshal([]byte(a.run("status", "--json")), &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"peer_id", "addrs", "peers", "paths", "bytes_stored", "bytes_logical", "p2p_bytes_received",
		"p2p_bytes_sent", "upstream_bytes_received"} { // SPEC.md's names
		if _, ok := raw[k]; !ok {
			t.Errorf("status --json has no %s", k)
		}
	}
	if raw["paths"] != 2.0 || fmt.Sprint(raw["path_sources"]) != "map[import:2]" || raw["peers"] != 1.0 {
		t.Errorf("A's status --json: paths %v, sources %v, peers %v", raw["paths"], raw["path_sources"], raw["peers"])
	}

	// Status, human.
	for who, want := range map[*nodeProc][]string{
		a: {"peers:          1 connected", bID + " at /ip4/", "paths:          2 (2 shared with peers, 0 private)",
			"2 imported", "2 paths pinned, 0 unpinned", "upstream:       0 hits, 0 misses"},
		b: {aID + " at /ip4/127.0.0.190/", "served " + humanBytes(sb.ConnectedPeers[0].BytesReceived) + " to this node",
			"1 fetched from peers", "0 paths pinned, 1 unpinned", "dht:            "},
	} {
		out := who.run("status")
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("status has no %q:\n%s", w, out)
			}
		}
	}

	// Peers: B lists A, with the round trip of a ping.
	var peers []node.PeerStatus
	if err := json.Unmarshal([]byte(b.run("peers", "--json")), &peers); err != nil {
		t.Fatal(err)
	}
	if len(peers) != 1 || peers[0].PeerID != aID || peers[0].BytesReceived != sb.ConnectedPeers[0].BytesReceived || peers[0].LatencySeconds <= 0 {
		t.Errorf("B's peers --json: %+v", peers)
	}
	if out := b.run("peers"); !strings.Contains(out, aID) || !strings.Contains(out, humanBytes(peers[0].BytesReceived)) || !strings.Contains(out, " ms ") {
		t.Errorf("B's peers:\n%s", out)
	}

	// Paths: A's two imported, pinned and shared; B's one fetched.
	var listed []node.PathEntry
	if err := json.Unmarshal([]byte(a.run("paths", "--json")), &listed); err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(listed, func(x, y node.PathEntry) int { return strings.Compare(x.Path, y.Path) })
	want := []node.PathEntry{
		{Path: p1, NarSize: src[p1].NarSize, Source: "import", Pinned: true, Shared: true},
		{Path: p2, NarSize: src[p2].NarSize, Source: "import", Pinned: true, Shared: true},
	}
	slices.SortFunc(want, func(x, y node.PathEntry) int { return strings.Compare(x.Path, y.Path) })
	if !slices.Equal(listed, want) {
		t.Errorf("A's paths --json: %+v, want %+v", listed, want)
	}
	out := b.run("paths")
	if !regexp.MustCompile(`(?m)^ +`+regexp.QuoteMeta(humanBytes(src[p1].NarSize))+` +peer +- +shared +`+regexp.QuoteMeta(p1)+`$`).MatchString(out) ||
		!strings.Contains(out, "1 path, ") {
		t.Errorf("B's paths:\n%s", out)
	}
	if out, err := newNodeAt(t, "127.0.0.192", "").try("paths", "--json"); err == nil || !strings.Contains(out, "no node is running") {
		t.Errorf("paths --json of a node that is not running: %v, %q", err, out)
	}
}

// TestMetricsUpstream: a narinfo found upstream, one missed, and the
// found path's NAR: the node counts one hit, one miss, one pull with the
// bytes the upstream sent, and logs one line for it.
func TestMetricsUpstream(t *testing.T) {
	nixtest.Require(t)
	key, pub := upstreamKey(t)
	p := addTree(t, "metrics-up", map[string][]byte{"f": bigPayload(1 << 20)})
	cache := staticCache(t, key, "zstd", p)
	up := startNginx(t, "127.0.0.193", cache)
	n := pullNode(t, "127.0.0.194", pub, up.url)
	code, text := n.get("/" + hashPart(p) + ".narinfo")
	if code != 200 {
		t.Fatalf("narinfo: %d %s", code, text)
	}
	if code, _ := n.get("/" + strings.Repeat("1", 32) + ".narinfo"); code != 404 {
		t.Fatalf("narinfo of a missing path: %d", code)
	}
	if code, _ := n.get("/" + narinfoField(string(text), "URL")); code != 200 {
		t.Fatalf("NAR: %d", code)
	}
	// The pull records the path a moment after the client's last byte.
	for deadline := time.Now().Add(30 * time.Second); n.fetchedLine(p) == ""; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no fetch line:\n%s", n.log)
		}
	}
	_, upText := getBody(t, up.url+"/"+hashPart(p)+".narinfo")
	fi, err := os.Stat(filepath.Join(cache, narinfoField(upText, "URL")))
	if err != nil {
		t.Fatal(err)
	}
	// What the pull read of the upstream's NAR file: all of it, or all but
	// a frame's end the decoder did not need.
	line := n.fetchedLine(p)
	received := logNumber(t, line, "bytes_received")
	if !strings.Contains(line, "via=upstream") || received > uint64(fi.Size()) || received < uint64(fi.Size())-64 ||
		logNumber(t, line, "sources."+up.url) != received {
		t.Errorf("fetch line %q, want via=upstream and the %d bytes of the upstream's NAR", line, fi.Size())
	}
	s := n.status()
	if s.UpstreamHits != 1 || s.UpstreamMisses != 1 || s.PathSources["upstream"] != 1 {
		t.Errorf("status: %d hits, %d misses, paths by source %v", s.UpstreamHits, s.UpstreamMisses, s.PathSources)
	}
	checkMetrics(t, "the node", n.metrics(), map[string]float64{
		`p2pstore_upstream_lookups_total{result="hit"}`:            1,
		`p2pstore_upstream_lookups_total{result="miss"}`:           1,
		`p2pstore_upstream_received_bytes_total`:                   float64(s.UpstreamBytesReceived),
		`p2pstore_fetch_duration_seconds_count{source="upstream"}`: 1,
		`p2pstore_fetch_bytes_total{source="upstream"}`:            float64(received),
		`p2pstore_paths{source="upstream"}`:                        1,
	})
	if out := n.run("status"); !strings.Contains(out, "upstream:       1 hit, 1 miss;") || !strings.Contains(out, "1 pulled from upstreams") {
		t.Errorf("status:\n%s", out)
	}
}
