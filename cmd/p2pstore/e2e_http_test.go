package main

// End-to-end tests of the binary cache's HTTP side: ranges, clients that
// stop reading, and what the public port shows.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/p2pstore/p2pstore/internal/nixtest"
)

// narURL returns the URL of a path's uncompressed NAR on the node.
func (n *nodeProc) narURL(p string) string {
	n.t.Helper()
	code, body := n.get("/" + hashPart(p) + ".narinfo")
	if code != 200 {
		n.t.Fatalf("%s: narinfo %d", p, code)
	}
	return n.url + "/" + narinfoField(string(body), "URL")
}

// getRange GETs url with a Range header (none when rng is empty).
func getRange(t *testing.T, url, rng string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("Range %s: %v", rng, err)
	}
	return resp, body
}

// TestNARRanges: byte ranges of a NAR at the start, in a file's contents,
// inside the framing, at the last byte and open-ended are the matching
// slices of nix-store --dump, and curl resumes a broken download into the
// whole NAR.
func TestNARRanges(t *testing.T) {
	nixtest.Require(t)
	n := newNode(t)
	n.start()
	files := edgeFiles()
	p := addTree(t, "ranges", files)
	n.run("import", p)
	dump := nixtest.Output(t, "nix-store", "--dump", p)
	size := len(dump)
	url := n.narURL(p)

	req, _ := http.NewRequest("HEAD", url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get("Accept-Ranges") != "bytes" || resp.Header.Get("Content-Encoding") != "" || resp.ContentLength != int64(size) {
		t.Fatalf("HEAD NAR: Accept-Ranges %q, Content-Encoding %q, length %d; Nix resumes only with Accept-Ranges and no encoding",
			resp.Header.Get("Accept-Ranges"), resp.Header.Get("Content-Encoding"), resp.ContentLength)
	}

	big := bytes.Index(dump, files["big"][:4096]) // the 3 MiB file's contents
	entry := bytes.Index(dump[big:], []byte("entry")) + big
	if big < 0 || entry < big {
		t.Fatal("landmarks not found in the NAR")
	}
	for _, tc := range []struct {
		header   string
		from, to int
	}{
		{"bytes=0-99", 0, 100},
		{"bytes=0-", 0, size},
		{fmt.Sprintf("bytes=%d-%d", big+1<<20, big+1<<20+300<<10-1), big + 1<<20, big + 1<<20 + 300<<10}, // in a file
		{fmt.Sprintf("bytes=%d-%d", entry+3, entry+200), entry + 3, entry + 201},                         // in the framing
		{fmt.Sprintf("bytes=%d-%d", size-1, size-1), size - 1, size},                                     // the last byte
		{"bytes=-1", size - 1, size},
		{fmt.Sprintf("bytes=%d-", big+12345), big + 12345, size}, // open-ended
		{fmt.Sprintf("bytes=%d-", entry+1), entry + 1, size},
	} {
		resp, body := getRange(t, url, tc.header)
		want := fmt.Sprintf("bytes %d-%d/%d", tc.from, tc.to-1, size)
		if resp.StatusCode != 206 || resp.Header.Get("Content-Range") != want {
			t.Errorf("Range %s: %d, Content-Range %q; want 206, %q", tc.header, resp.StatusCode, resp.Header.Get("Content-Range"), want)
			continue
		}
		if !bytes.Equal(body, dump[tc.from:tc.to]) {
			t.Errorf("Range %s: %d bytes, not the slice of nix-store --dump", tc.header, len(body))
		}
	}
	if resp, _ := getRange(t, url, fmt.Sprintf("bytes=%d-", size)); resp.StatusCode != 416 || resp.Header.Get("Content-Range") != fmt.Sprintf("bytes */%d", size) {
		t.Errorf("a range past the end: %d, Content-Range %q", resp.StatusCode, resp.Header.Get("Content-Range"))
	}
	for _, bad := range []string{"bytes=0-1,4-5", "bytes=x-y", "bytes=9-3"} {
		if resp, body := getRange(t, url, bad); resp.StatusCode != 200 || !bytes.Equal(body, dump) {
			t.Errorf("Range %s: %d with %d bytes, want the whole NAR", bad, resp.StatusCode, len(body))
		}
	}

	// curl -C - continues a download that broke inside a file and one
	// that broke inside the framing.
	for _, cut := range []int{big + 777777, entry + 5} {
		out := filepath.Join(t.TempDir(), "nar")
		if err := os.WriteFile(out, dump[:cut], 0o644); err != nil {
			t.Fatal(err)
		}
		if b, err := exec.Command("curl", "-sS", "-f", "-C", "-", "-o", out, url).CombinedOutput(); err != nil {
			t.Fatalf("curl -C - from %d: %v\n%s", cut, err, b)
		}
		if got, _ := os.ReadFile(out); !bytes.Equal(got, dump) {
			t.Errorf("resumed at %d: %d bytes, not the NAR", cut, len(got))
		}
	}
}

// TestPublicPortHidesLocalPaths: status and metrics on the HTTP port show
// no local path (data dir, daemon socket); the control socket still tells
// its owner.
func TestPublicPortHidesLocalPaths(t *testing.T) {
	nixtest.Require(t)
	n := newNode(t)
	n.start()
	for _, path := range []string{"/api/v1/status", "/metrics"} {
		code, body := n.get(path)
		if code != 200 {
			t.Fatalf("GET %s: %d", path, code)
		}
		if strings.Contains(string(body), n.dir) || strings.Contains(string(body), "daemon.sock") {
			t.Errorf("GET %s on the public port shows a local path:\n%s", path, grepLines(string(body), n.dir, "daemon.sock"))
		}
	}
	if s := n.status(); s.DaemonSocket != n.socket() {
		t.Errorf("control status: daemon socket %q, want %q", s.DaemonSocket, n.socket())
	}
}

func grepLines(text string, words ...string) string {
	var out []string
	for _, line := range strings.Split(text, "\n") {
		for _, w := range words {
			if strings.Contains(line, w) {
				out = append(out, line)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}

// rssOf returns a process's resident set size.
func rssOf(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// wordsTree is a tree of compressible text (a few megabytes per file).
func wordsTree(t *testing.T, mb int) string {
	t.Helper()
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 9))
	words := strings.Fields("store path nar chunk peer narinfo closure derivation output hash signature reference substitute binary cache zstd frame pack index directory symlink regular executable contents")
	files := map[string][]byte{}
	for i := 0; i < mb/4; i++ {
		var b bytes.Buffer
		for b.Len() < 4<<20 {
			b.WriteString(words[r.IntN(len(words))])
			b.WriteByte(" \n"[r.IntN(8)/7])
			if r.IntN(50) == 0 {
				fmt.Fprintf(&b, "%x ", r.Uint64())
			}
		}
		files[fmt.Sprintf("f%d", i)] = b.Bytes()
	}
	return addTree(t, "words", files)
}

// TestStalledHTTPClients: sixty clients that each read 64 KiB of a large
// NAR (20 each of .nar, .nar.zst, .nar.xz) and stop leave the node's RSS
// bounded: xz responses beyond the bound get 503 with Retry-After at once,
// and the others hold buffers, not encoders. (Each xz encoder took 50 MB
// before the bound.)
func TestStalledHTTPClients(t *testing.T) {
	nixtest.Require(t)
	n := newNode(t)
	n.start()
	p := wordsTree(t, 48)
	n.run("import", p)
	n.waitCompressed()
	url := n.narURL(p)
	host := strings.TrimPrefix(n.url, "http://")
	pid := n.cmd.Process.Pid
	before := rssOf(t, pid)

	codes := map[string]int{}
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < 60; i++ {
		suffix := []string{"", ".zst", ".xz"}[i%3]
		c, err := net.Dial("tcp", host)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		c.SetDeadline(time.Now().Add(30 * time.Second))
		fmt.Fprintf(c, "GET %s%s HTTP/1.1\r\nHost: x\r\n\r\n", strings.TrimPrefix(url, n.url), suffix)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("client %d (%s): %v", i, suffix, err)
		}
		codes[fmt.Sprintf("%s %d", suffix, resp.StatusCode)]++
		switch resp.StatusCode {
		case 200:
			if _, err := io.CopyN(io.Discard, resp.Body, 64<<10); err != nil {
				t.Fatalf("client %d (%s): %v", i, suffix, err)
			}
		case 503:
			if suffix != ".xz" || resp.Header.Get("Retry-After") == "" {
				t.Errorf("client %d (%s): 503, Retry-After %q", i, suffix, resp.Header.Get("Retry-After"))
			}
		default:
			t.Errorf("client %d (%s): %d", i, suffix, resp.StatusCode)
		}
	}
	// The node fills the sockets' buffers and then blocks: wait until its
	// RSS stops growing.
	after, last := rssOf(t, pid), time.Now()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline) && time.Since(last) < 2*time.Second; time.Sleep(200 * time.Millisecond) {
		if r := rssOf(t, pid); r > after+1<<20 {
			after, last = r, time.Now()
		}
	}
	grew := after - before
	t.Logf("answers %v; RSS %d MB -> %d MB: %d KB per client", codes, before>>20, after>>20, grew/60>>10)
	if codes[".xz 200"] > 8 || codes[".xz 503"] == 0 {
		t.Errorf("xz answers %v: want a handful served and the rest 503", codes)
	}
	if grew > 300<<20 {
		t.Errorf("60 stalled clients grew the node's RSS by %d MB", grew>>20)
	}
}

// TestNARRangeWhileFetching: a node that is still fetching a path from a
// peer answers ranges of its NAR, in the framing and in the last file,
// with the slices of nix-store --dump.
func TestNARRangeWhileFetching(t *testing.T) {
	nixtest.Require(t)
	a := newNodeAt(t, "127.0.0.41", "node-a-1", "--max-upload-rate", "16M")
	a.start()
	pub := a.status().PublicKey
	files := randomFiles(41, 6) // 24 MiB: about 1.5 s at A's upload rate
	files["small"] = []byte("small file")
	p, c, url, _ := coldNAR(t, a, pub, "127.0.0.42", "ranged", files)
	dump := nixtest.Output(t, "nix-store", "--dump", p)
	size := len(dump)
	last := bytes.Index(dump, files["small"]) // the last file, after 24 MiB
	for _, tc := range []struct{ from, to int }{
		{size - 100<<10, size},
		{last - 40, last + 20},
		{10, 300},
	} {
		start := time.Now()
		resp, body := getRange(t, url, fmt.Sprintf("bytes=%d-%d", tc.from, tc.to-1))
		t.Logf("range %d-%d: %d in %v", tc.from, tc.to-1, resp.StatusCode, time.Since(start))
		if resp.StatusCode != 206 || !bytes.Equal(body, dump[tc.from:tc.to]) {
			t.Errorf("range %d-%d from C: %d, %d bytes, not the slice of nix-store --dump\n%s", tc.from, tc.to-1, resp.StatusCode, len(body), c.log)
		}
	}
	c.checkServedNAR(p)
}

// waitNARCached waits (bounded) until the node's NAR cache holds want NARs.
func (n *nodeProc) waitNARCached(want int) {
	n.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for n.status().NARCacheEntries != want {
		if time.Now().After(deadline) {
			n.t.Fatalf("NAR cache holds %d NARs after 30 s, want %d\n%s", n.status().NARCacheEntries, want, n.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestNARCache: a NAR asked for twice is kept as a file, and later
// responses (a real Nix client's copy, ranges, after a restart) come from
// it with the bytes of nix-store --dump. A store whose bytes no longer
// render the path's NarHash is never cached, and says so in the log.
func TestNARCache(t *testing.T) {
	nixtest.Require(t)
	n := newNode(t)
	n.args = append(n.args, "--nar-cache-bytes", "32M")
	n.start()
	files := edgeFiles()
	p := addTree(t, "narcache", files)
	n.run("import", "--sign", p)
	dump := nixtest.Output(t, "nix-store", "--dump", p)
	url := n.narURL(p)
	for i := 0; i < 2; i++ {
		if _, body := httpGet(t, url); !bytes.Equal(body, dump) {
			t.Fatalf("GET %d: not the NAR", i)
		}
	}
	n.waitNARCached(1)
	if s := n.status(); s.NARCacheBytes != int64(len(dump)) || s.NARCacheHits != 0 {
		t.Fatalf("cache holds %d bytes with %d hits, want %d and 0", s.NARCacheBytes, s.NARCacheHits, len(dump))
	}

	pub := n.status().PublicKey
	client := filepath.Join(t.TempDir(), "client")
	nixtest.Output(t, "nix", "copy", "--from", n.url, "--to", client, "--option", "trusted-public-keys", pub, p)
	if got, want := pathInfo(t, client, p)[p].NarHash, pathInfo(t, "", p)[p].NarHash; got != want {
		t.Fatalf("client recorded %s, want %s", got, want)
	}
	big := bytes.Index(dump, files["big"][:4096])
	resp, body := getRange(t, url, fmt.Sprintf("bytes=%d-%d", big+1000, big+500000))
	if resp.StatusCode != 206 || !bytes.Equal(body, dump[big+1000:big+500001]) {
		t.Fatalf("range from the cache: %d, %d bytes", resp.StatusCode, len(body))
	}
	if s := n.status(); s.NARCacheHits != 2 {
		t.Fatalf("%d responses from the cache, want 2 (the copy and the range)", s.NARCacheHits)
	}
	checkMetrics(t, "node", n.metrics(), map[string]float64{
		"p2pstore_nar_cache_hits_total": 2, "p2pstore_nar_cache_bytes": float64(len(dump)), "p2pstore_nar_cache_limit_bytes": 32 << 20})

	// The cache outlives a restart.
	n.stop()
	n.start()
	n.waitNARCached(1)
	url = n.narURL(p) // a new port
	if _, body := httpGet(t, url); !bytes.Equal(body, dump) {
		t.Fatal("after a restart: not the NAR")
	}
	if s := n.status(); s.NARCacheHits != 1 {
		t.Fatalf("after a restart: %d responses from the cache, want 1", s.NARCacheHits)
	}

	// A flipped byte in the store: the render no longer matches the
	// NarHash, so it is never cached; the path's objects are checked, the
	// damaged chunk found, and the path (no source having it) no longer
	// served.
	q := addTree(t, "narcache-rot", map[string][]byte{"f": bytes.Repeat([]byte("rot"), 200000)})
	n.run("import", "--sign", q)
	n.waitCompressed() // else the compressor may find the damage first
	n.stop()
	packs, _ := filepath.Glob(filepath.Join(n.dir, "data", "castore", "packs", "*.pack"))
	for _, pack := range packs {
		f, err := os.OpenFile(pack, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		info, _ := f.Stat()
		// The last chunk written is q's.
		f.WriteAt([]byte{'X'}, info.Size()-100)
		f.Close()
	}
	n.start()
	qURL := n.narURL(q)
	httpGet(t, qURL)
	httpGet(t, qURL)
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(n.log.String(), "do not render to its NarHash") {
		if time.Now().After(deadline) {
			t.Fatalf("the damaged path was not reported:\n%s", n.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if s := n.status(); s.NARCacheEntries != 1 {
		t.Fatalf("cache holds %d NARs, want 1 (the damaged one refused)", s.NARCacheEntries)
	}
	// Damaged, or missing when another reader (the compressor) took the
	// chunk out of service first.
	if line := n.waitLog(30*time.Second, "a stored path is damaged", q); !strings.Contains(line, "digest mismatch") && !strings.Contains(line, "missing") {
		t.Errorf("the damaged path's line does not say what is wrong: %s", line)
	}
	n.waitNarinfo(q, 404, 30*time.Second)
	n.checkServedNAR(p)
}

// TestNARCacheZstd: once a path's zstd frames are made, the /zstd narinfo
// gives the FileSize of the .nar.zst the node splices from them, and the
// response that Content-Length; a .nar.zst asked for twice is kept as a
// file (the same bytes), and a real Nix client substitutes the path
// through the /zstd view from it.
func TestNARCacheZstd(t *testing.T) {
	nixtest.Require(t)
	n := newNode(t)
	n.args = append(n.args, "--nar-cache-bytes", "64M")
	n.start()
	p := wordsTree(t, 8)
	n.run("import", "--sign", p)
	n.waitCompressed()
	dump := nixtest.Output(t, "nix-store", "--dump", p)
	narinfo := func() string {
		t.Helper()
		code, body := n.get("/zstd/" + hashPart(p) + ".narinfo")
		if code != 200 {
			t.Fatalf("/zstd narinfo: %d", code)
		}
		return string(body)
	}
	url := n.url + "/zstd/" + narinfoField(narinfo(), "URL")
	var spliced []byte
	for i := 0; i < 2; i++ {
		resp, body := httpGet(t, url)
		if !bytes.Equal(decompress(t, body), dump) {
			t.Fatalf("GET %d: not the NAR", i)
		}
		if fs := narinfoField(narinfo(), "FileSize"); fs != strconv.Itoa(len(body)) || resp.ContentLength != int64(len(body)) {
			t.Fatalf("GET %d: FileSize %q, Content-Length %d; the .nar.zst has %d bytes", i, fs, resp.ContentLength, len(body))
		}
		spliced = body
	}
	n.waitNARCached(1)
	resp, zst := httpGet(t, url)
	if !bytes.Equal(zst, spliced) {
		t.Fatal("the cached .nar.zst differs from the one spliced from the frames")
	}
	if len(zst) >= len(dump)/2 {
		t.Fatalf("the cached .nar.zst is %d bytes of a %d-byte NAR: its frames were not made", len(zst), len(dump))
	}
	if resp.ContentLength != int64(len(zst)) || narinfoField(narinfo(), "FileSize") != strconv.Itoa(len(zst)) {
		t.Fatalf("Content-Length %d, FileSize %q; want %d", resp.ContentLength, narinfoField(narinfo(), "FileSize"), len(zst))
	}
	pub := n.status().PublicKey
	store, out, err := substitute(t, pub, p, n.url+"/zstd")
	if err != nil {
		t.Fatalf("nix-store -r through /zstd: %v\n%s", err, out)
	}
	if got, want := pathInfo(t, store, p)[p].NarHash, pathInfo(t, "", p)[p].NarHash; got != want {
		t.Fatalf("client recorded %s, want %s", got, want)
	}
	if s := n.status(); s.NARCacheHits != 2 {
		t.Fatalf("%d responses from the NAR cache, want 2 (a GET and the client's)", s.NARCacheHits)
	}
}
