package main

// Pull-through from upstream binary caches: static caches made by
// `nix copy --to file://`, served by nginx or by Go handlers that
// misbehave, and real Nix clients substituting through the node.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/p2pstore/p2pstore/internal/nixtest"
	"github.com/p2pstore/p2pstore/internal/tmpfs"
	"github.com/p2pstore/p2pstore/narview/narinfo"
)

// upstreamKey makes a signing key for a test upstream and returns its
// file and public key.
func upstreamKey(t *testing.T) (file, pub string) {
	t.Helper()
	file = filepath.Join(t.TempDir(), "upstream.sec")
	k, err := narinfo.GenerateKey("upstream-test-1")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte(k.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return file, k.Public().String()
}

// staticCache signs the closures of paths with key and copies them into a
// new file:// binary cache with the given NAR compression.
func staticCache(t *testing.T, key, compression string, paths ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "cache")
	nixtest.Output(t, "nix", append([]string{"store", "sign", "-r", "--key-file", key}, paths...)...)
	nixtest.Output(t, "nix", append([]string{"copy", "--to", "file://" + dir + "?compression=" + compression}, paths...)...)
	return dir
}

// freePort returns a free TCP port on ip.
func freePort(t *testing.T, ip string) int {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// nginxCache serves a directory with nginx on ip, from a config in a
// temporary dir; its access log names the requests it served.
type nginxCache struct {
	url string
	log string
}

func startNginx(t *testing.T, ip, root string) *nginxCache {
	t.Helper()
	return startNginxOn(t, nil, fmt.Sprintf("%s:%d", ip, freePort(t, ip)), root)
}

// startNginxOn serves root with nginx listening on addr, run through wrap
// (ip netns exec NS, for a host of a test network; nil for none).
func startNginxOn(t *testing.T, wrap []string, addr, root string) *nginxCache {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		if bin, err = exec.LookPath("/usr/sbin/nginx"); err != nil {
			if os.Getenv("P2PSTORE_REQUIRE_NIX") == "1" {
				t.Fatal("nginx is not installed (scripts/test.sh installs it)")
			}
			t.Skip("nginx is not installed")
		}
	}
	dir := t.TempDir()
	conf := fmt.Sprintf(`daemon off;
master_process off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 256; }
http {
  access_log %[1]s/access.log;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  server {
    listen %[2]s;
    root %[3]s;
  }
}
`, dir, addr, root)
	file := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(file, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	argv := append(append([]string(nil), wrap...), bin, "-c", file, "-p", dir, "-e", filepath.Join(dir, "error.log"))
	cmd := exec.Command(argv[0], argv[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	c := &nginxCache{url: "http://" + addr, log: filepath.Join(dir, "access.log")}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(c.url + "/nix-cache-info")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return c
			}
		}
		if time.Now().After(deadline) {
			errLog, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Fatalf("nginx did not start: %v\n%s%s", err, out.String(), errLog)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// requests counts the access log's GETs whose path starts with prefix.
func (c *nginxCache) requests(t *testing.T, prefix string) int {
	t.Helper()
	n, _ := c.served(t, prefix)
	return n
}

// served counts the access log's GETs whose path starts with prefix, and
// the body bytes nginx sent for them.
func (c *nginxCache) served(t *testing.T, prefix string) (requests int, bytes int64) {
	t.Helper()
	f, err := os.Open(c.log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// The combined format: ... "GET /path HTTP/1.1" status bytes "referer" "agent"
		line := sc.Text()
		i := strings.Index(line, `"GET `+prefix)
		if i < 0 {
			continue
		}
		requests++
		_, after, _ := strings.Cut(line[i+1:], `" `)
		var status int
		var n int64
		if _, err := fmt.Sscan(after, &status, &n); err != nil {
			t.Fatalf("access log line %q: %v", line, err)
		}
		bytes += n
	}
	return requests, bytes
}

// pullNode starts a node (no signing key of its own) pulling through
// from the given upstreams, trusting pub.
func pullNode(t *testing.T, ip, pub string, upstreams ...string) *nodeProc {
	t.Helper()
	args := []string{"--upstream-public-key", pub}
	for _, u := range upstreams {
		args = append(args, "--upstream", u)
	}
	n := newNodeAt(t, ip, "", args...)
	n.start()
	return n
}

// substitute runs `nix-store -r` into a fresh client store with the
// given substituters, trusting only pub; it returns the store and Nix's
// output.
func substitute(t *testing.T, pub, path string, substituters ...string) (string, []byte, error) {
	store := filepath.Join(t.TempDir(), "client")
	cmd := nixtest.Command("nix-store", "--store", store, "-r", path,
		"--option", "substituters", strings.Join(substituters, " "), "--option", "trusted-public-keys", pub)
	// Its own narinfo cache: clients that run at once would meet on one.
	cmd.Env = append(cmd.Env, "XDG_CACHE_HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	return store, out, err
}

// TestUpstreamPullThrough: a Nix client that trusts only the upstream's
// key substitutes a closure through the node, which pulls it from nginx
// serving `nix copy` caches in xz, zstd and no compression; the node then
// holds the paths valid, with the upstream's signatures unchanged.
func TestUpstreamPullThrough(t *testing.T) {
	nixtest.Require(t)
	key, pub := upstreamKey(t)
	for i, compression := range []string{"xz", "zstd", "none"} {
		t.Run(compression, func(t *testing.T) {
			top, all := buildClosure(t)
			src := pathInfo(t, "", all...)
			up := startNginx(t, fmt.Sprintf("127.0.0.%d", 20+i), staticCache(t, key, compression, top))
			n := pullNode(t, "127.0.0.1", pub, up.url)

			store, out, err := substitute(t, pub, top, n.url)
			if err != nil {
				t.Fatalf("nix-store -r through the node: %v\n%s\nnode log:\n%s", err, out, n.log)
			}
			got := pathInfo(t, store, all...)
			for _, p := range all {
				if got[p].NarHash != src[p].NarHash || got[p].NarSize != src[p].NarSize {
					t.Errorf("%s: client recorded %s/%d, source has %s/%d", p, got[p].NarHash, got[p].NarSize, src[p].NarHash, src[p].NarSize)
				}
				n.waitValid(p) // the ingest may finish after the client
			}
			// The node's narinfo carries the upstream's signature as it was.
			_, upText := getBody(t, up.url+"/"+hashPart(top)+".narinfo")
			code, text := n.get("/" + hashPart(top) + ".narinfo")
			if sig := narinfoField(upText, "Sig"); code != 200 || sig == "" || narinfoField(string(text), "Sig") != sig {
				t.Errorf("node narinfo (%d):\n%s\nupstream's:\n%s", code, text, upText)
			}
			if out := n.run("verify"); !strings.Contains(out, fmt.Sprintf("checked %d paths", len(all))) {
				t.Errorf("verify: %s", out)
			}
			if s := n.status(); s.UpstreamBytesReceived == 0 || s.Paths != len(all) {
				t.Errorf("status: %d upstream bytes, %d paths", s.UpstreamBytesReceived, s.Paths)
			}
			if ents, _ := os.ReadDir(filepath.Join(n.dir, "data", "spool")); len(ents) != 0 {
				t.Errorf("the spool holds %d files", len(ents))
			}
			// The checked spools became the NAR cache's files.
			if s := n.status(); s.NARCacheEntries != len(all) || s.NARCacheHits != 0 {
				t.Errorf("NAR cache: %d NARs, %d hits; want the %d pulled, 0 hits", s.NARCacheEntries, s.NARCacheHits, len(all))
			}
			// A second client is served from the node's store: no more
			// NAR requests upstream.
			before := up.requests(t, "/nar/")
			if _, out, err := substitute(t, pub, top, n.url); err != nil {
				t.Fatalf("second client: %v\n%s", err, out)
			}
			if after := up.requests(t, "/nar/"); after != before || before != len(all) {
				t.Errorf("NAR requests upstream: %d for the first client, %d after the second; want %d, then none", before, after, len(all))
			}
			if s := n.status(); s.NARCacheHits != uint64(len(all)) {
				t.Errorf("the second client got %d of its %d NARs from the NAR cache", s.NARCacheHits, len(all))
			}
		})
	}
}

func getBody(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, b := httpGet(t, url)
	return resp.StatusCode, string(b)
}

// hangingListener accepts connections and never answers.
func hangingListener(t *testing.T, ip string) string {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return "http://" + ln.Addr().String()
}

// TestUpstreamHung: with its only upstream accepting connections and
// never answering, the node answers narinfo requests 404 within its
// deadline, so that Nix falls through to its next substituter.
func TestUpstreamHung(t *testing.T) {
	nixtest.Require(t)
	key, pub := upstreamKey(t)
	p := addTree(t, "hung", map[string][]byte{"a": []byte(fmt.Sprint("hung upstream ", time.Now().UnixNano()))})
	good := startNginx(t, "127.0.0.30", staticCache(t, key, "zstd", p))
	n := pullNode(t, "127.0.0.1", pub, hangingListener(t, "127.0.0.31"))

	start := time.Now()
	code, _ := n.get("/" + hashPart(p) + ".narinfo")
	if d := time.Since(start); code != http.StatusNotFound || d > 3*time.Second {
		t.Fatalf("narinfo with a hung upstream: %d after %v, want 404 within the 2 s deadline", code, d)
	}
	start = time.Now()
	store, out, err := substitute(t, pub, p, n.url, good.url)
	if err != nil {
		t.Fatalf("nix-store -r with the node first: %v\n%s", err, out)
	}
	if got := pathInfo(t, store, p)[p]; got.NarSize == 0 {
		t.Fatalf("%s not substituted", p)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("substituting past the node took %v", d)
	}
	if s := n.status(); s.Paths != 0 {
		t.Errorf("the node holds %d paths", s.Paths)
	}
}

// badUpstream serves a file:// cache, with NARs broken by breakNAR.
type badUpstream struct {
	url      string
	narGets  atomic.Int64
	infoGets atomic.Int64
}

func startBadUpstream(t *testing.T, ip, root string, serveNAR func(w http.ResponseWriter, r *http.Request, body []byte)) *badUpstream {
	t.Helper()
	u := &badUpstream{}
	files := http.FileServer(http.Dir(root))
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, ".narinfo") {
			u.infoGets.Add(1)
		}
		files.ServeHTTP(w, r)
	})
	mux.HandleFunc("/nar/", func(w http.ResponseWriter, r *http.Request) {
		u.narGets.Add(1)
		body, err := os.ReadFile(filepath.Join(root, filepath.Clean(r.URL.Path)))
		if err != nil {
			http.NotFound(w, r)
			return
		}
		serveNAR(w, r, body)
	})
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	u.url = "http://" + ln.Addr().String()
	return u
}

// bigPayload is a file of size bytes, different every run, around a marker.
func bigPayload(size int) []byte {
	b := make([]byte, size)
	seed := uint64(time.Now().UnixNano())
	for i := range b {
		seed = seed*6364136223846793005 + 1442695040888963407
		b[i] = byte(seed >> 56)
	}
	copy(b[size/2:], "MARKER-TO-FLIP")
	return b
}

// TestUpstreamBrokenNAR: an upstream that cuts every NAR response at its
// middle, and one that serves a NAR that does not match its signed
// NarHash. The client sees an error, never a valid path; the node
// records nothing, keeps no spool, and stays up.
func TestUpstreamBrokenNAR(t *testing.T) {
	nixtest.Require(t)
	key, pub := upstreamKey(t)
	cases := map[string]func(w http.ResponseWriter, r *http.Request, body []byte){
		"truncated": func(w http.ResponseWriter, r *http.Request, body []byte) {
			// Whatever range is asked, nothing past the middle comes.
			w.Header().Set("Content-Length", fmt.Sprint(len(body)))
			w.Header().Set("Accept-Ranges", "none")
			w.Write(body[:len(body)/2])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		},
		"wrong NarHash": func(w http.ResponseWriter, r *http.Request, body []byte) {
			i := bytes.Index(body, []byte("MARKER-TO-FLIP"))
			body = bytes.Clone(body)
			body[i] ^= 1
			w.Header().Set("Content-Length", fmt.Sprint(len(body)))
			w.Write(body)
		},
	}
	ip := 40
	for name, serveNAR := range cases {
		t.Run(name, func(t *testing.T) {
			ip++
			// Two paths: one for a raw HTTP client, one for Nix.
			raw := addTree(t, "raw", map[string][]byte{"f": bigPayload(4 << 20)})
			viaNix := addTree(t, "nix", map[string][]byte{"f": bigPayload(4 << 20)})
			up := startBadUpstream(t, fmt.Sprintf("127.0.0.%d", ip), staticCache(t, key, "none", raw, viaNix), serveNAR)
			n := pullNode(t, "127.0.0.1", pub, up.url)

			code, text := n.get("/" + hashPart(raw) + ".narinfo")
			if code != 200 {
				t.Fatalf("narinfo: %d %s", code, text)
			}
			resp, err := http.Get(n.url + "/" + narinfoField(string(text), "URL"))
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && err == nil {
				t.Fatalf("the NAR ended cleanly after %d of %s bytes", len(got), resp.Header.Get("Content-Length"))
			}
			if resp.StatusCode >= 500 {
				t.Fatalf("NAR answered %s", resp.Status)
			}

			_, out, err := substitute(t, pub, viaNix, n.url)
			if err == nil {
				t.Fatalf("Nix substituted a broken NAR:\n%s", out)
			}
			for _, p := range []string{raw, viaNix} {
				if ok, err := n.client.HasPath(context.Background(), hashPart(p)); err != nil || ok {
					t.Errorf("%s: recorded %v (%v) after a broken pull", p, ok, err)
				}
			}
			s := n.status()
			if s.Paths != 0 {
				t.Errorf("the node holds %d paths", s.Paths)
			}
			if ents, _ := os.ReadDir(filepath.Join(n.dir, "data", "spool")); len(ents) != 0 {
				t.Errorf("the spool holds %d files", len(ents))
			}
			if s.NARCacheEntries != 0 {
				t.Errorf("a broken pull left %d NARs in the NAR cache", s.NARCacheEntries)
			}
			if !strings.Contains(n.log.String(), "pulling a path failed") {
				t.Errorf("no failure in the node log:\n%s", n.log)
			}
		})
	}
}

// TestUpstreamConcurrentClients: two, then four Nix clients ask for one
// path at once; the upstream sends its NAR once.
func TestUpstreamConcurrentClients(t *testing.T) {
	nixtest.Require(t)
	key, pub := upstreamKey(t)
	for i, clients := range []int{2, 4} {
		t.Run(fmt.Sprint(clients), func(t *testing.T) {
			p := addTree(t, "shared", map[string][]byte{"f": bigPayload(8 << 20)})
			// The NAR trickles, so that the clients meet while it
			// downloads.
			up := startBadUpstream(t, fmt.Sprintf("127.0.0.%d", 50+i), staticCache(t, key, "none", p), trickle)
			n := pullNode(t, "127.0.0.1", pub, up.url)
			var wg sync.WaitGroup
			errs := make([]error, clients)
			outs := make([][]byte, clients)
			for c := range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, outs[c], errs[c] = substitute(t, pub, p, n.url)
				}()
			}
			wg.Wait()
			for c, err := range errs {
				if err != nil {
					t.Errorf("client %d: %v\n%s", c, err, outs[c])
				}
			}
			if g := up.narGets.Load(); g != 1 {
				t.Errorf("the upstream served the NAR %d times for %d clients", g, clients)
			}
			if g := up.infoGets.Load(); g != 1 {
				t.Errorf("the upstream served the narinfo %d times for %d clients", g, clients)
			}
		})
	}
}

// TestUpstreamDaemonLookup: a client of the daemon socket that asks for a
// path the node lacks gets it pulled from the upstream, valid on the node
// when the answer comes.
func TestUpstreamDaemonLookup(t *testing.T) {
	nixtest.Require(t)
	key, pub := upstreamKey(t)
	p := addTree(t, "daemon", map[string][]byte{"a": []byte(fmt.Sprint("via the daemon socket ", time.Now().UnixNano()))})
	up := startNginx(t, "127.0.0.60", staticCache(t, key, "xz", p))
	n := pullNode(t, "127.0.0.1", pub, up.url)
	sock := "unix://" + filepath.Join(n.dir, "data", "daemon.sock")
	if out, err := nixtest.Command("nix-store", "--store", sock, "-r", p).CombinedOutput(); err != nil {
		t.Fatalf("nix-store -r over the socket: %v\n%s\nnode log:\n%s", err, out, n.log)
	}
	want := pathInfo(t, "", p)[p]
	if got := pathInfo(t, sock, p)[p]; got.NarHash != want.NarHash {
		t.Fatalf("the node has %s with %q, want %q", p, got.NarHash, want.NarHash)
	}
}

// trickle serves a NAR slowly (about 16 MB/s), so that requests meet the
// pull while it runs.
func trickle(w http.ResponseWriter, r *http.Request, body []byte) {
	w.Header().Set("Content-Length", fmt.Sprint(len(body)))
	for off := 0; off < len(body); off += 64 << 10 {
		w.Write(body[off:min(off+64<<10, len(body))])
		time.Sleep(4 * time.Millisecond)
	}
}

// TestUpstreamRangeWhilePulling: while a path is pulled, its NAR is
// served with Content-Length and Accept-Ranges, and a Range request gets
// the matching bytes of nix-store --dump, as do the whole NAR and its
// .nar.zst.
func TestUpstreamRangeWhilePulling(t *testing.T) {
	nixtest.Require(t)
	key, pub := upstreamKey(t)
	p := addTree(t, "ranged", map[string][]byte{"f": bigPayload(8 << 20)})
	up := startBadUpstream(t, "127.0.0.70", staticCache(t, key, "none", p), trickle)
	n := pullNode(t, "127.0.0.1", pub, up.url)
	want := nixtest.Output(t, "nix-store", "--dump", p)

	url := n.narURL(p) // starts the pull
	resp, got := getRange(t, url, "bytes=1000-1999")
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, want[1000:2000]) {
		t.Fatalf("range while pulling: %s, %d bytes, match %v", resp.Status, len(got), bytes.Equal(got, want[1000:2000]))
	}
	zst := make(chan []byte, 1) // the zstd view's URL, compressed from the spool
	go func() {
		resp, err := http.Get(url + ".zst")
		if err != nil {
			zst <- nil
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		zst <- b
	}()
	resp, got = getRange(t, url, "bytes=0-")
	if !bytes.Equal(got, want) || resp.Header.Get("Accept-Ranges") != "bytes" || resp.ContentLength != int64(len(want)) {
		t.Fatalf("whole NAR while pulling: %s, %d of %d bytes, Accept-Ranges %q, Content-Length %d",
			resp.Status, len(got), len(want), resp.Header.Get("Accept-Ranges"), resp.ContentLength)
	}
	if !bytes.Equal(decompress(t, <-zst), want) {
		t.Error("the .nar.zst while pulling is not the NAR")
	}
	if g := up.narGets.Load(); g != 1 {
		t.Errorf("the upstream served the NAR %d times", g)
	}
}

// TestUpstreamFullDisk: a pull onto a full disk fails (the client gets
// an error, the node records nothing and stays up); once there is room,
// the same path is pulled at the next request.
func TestUpstreamFullDisk(t *testing.T) {
	nixtest.Require(t)
	key, pub := upstreamKey(t)
	big := randomTree(t, "pullbig", 12)
	up := startNginx(t, "127.0.0.80", staticCache(t, key, "zstd", big))
	n := newNodeAt(t, "127.0.0.1", "", "--upstream", up.url, "--upstream-public-key", pub)
	data := filepath.Join(n.dir, "data")
	tmpfs.MountAt(t, data, 48<<20)
	n.start()
	free := tmpfs.Fill(t, data, 3<<20)

	if _, out, err := substitute(t, pub, big, n.url); err == nil {
		t.Fatalf("a pull onto a full disk succeeded:\n%s", out)
	}
	if s := n.status(); s.Paths != 0 {
		t.Fatalf("%d paths after the failed pull", s.Paths)
	}
	// The node says why before it answers, but its log reaches the test
	// through a pipe and a goroutine of its own.
	n.waitLog(30*time.Second, "no space left on device")
	free()
	store, out, err := substitute(t, pub, big, n.url)
	if err != nil {
		t.Fatalf("the pull once there is room: %v\n%s\nnode log:\n%s", err, out, n.log)
	}
	if got, want := pathInfo(t, store, big)[big].NarHash, pathInfo(t, "", big)[big].NarHash; got != want {
		t.Fatalf("substituted %s, want %s", got, want)
	}
	// The client has its NAR once the spool checks out; the pull's ingest
	// (at the lowest priority) may still run.
	n.waitValid(big)
	n.run("verify")
	if ents, _ := os.ReadDir(filepath.Join(data, "spool")); len(ents) != 0 {
		t.Errorf("the spool holds %d files", len(ents))
	}
}

// waitValid waits (bounded) until the node holds the path as valid: a
// pull's client may finish before its ingest does.
func (n *nodeProc) waitValid(path string) {
	n.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok, err := n.client.HasPath(context.Background(), hashPart(path))
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("%s not valid on the node after 30 s (%v)\n%s", path, err, n.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestUpstreamConcurrentNarinfos: eight narinfo requests at once for a
// path the node lacks each get the whole narinfo (a request that came
// while another's peer search ran once got an empty 200).
func TestUpstreamConcurrentNarinfos(t *testing.T) {
	nixtest.Require(t)
	key, pub := upstreamKey(t)
	p := addTree(t, "asked", map[string][]byte{"f": bigPayload(1 << 20)})
	up := startBadUpstream(t, "127.0.0.90", staticCache(t, key, "none", p), trickle)
	n := pullNode(t, "127.0.0.1", pub, up.url)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(n.url + "/" + hashPart(p) + ".narinfo")
			if err != nil {
				t.Error(err)
				return
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			ni, perr := narinfo.Parse(string(b))
			if err != nil || resp.StatusCode != 200 || perr != nil || ni.StorePath != p {
				t.Errorf("narinfo: %s, %v, %v:\n%s", resp.Status, err, perr, b)
			}
		}()
	}
	wg.Wait()
}

// TestUpstreamThenPeer: a path A pulled through from the upstream goes to
// a second node B over p2p, B trusting only the upstream's key (given as
// upstream.public_keys, with no upstream of its own): the upstream sends
// nothing more, and the client of B gets the path with the upstream's
// signature.
func TestUpstreamThenPeer(t *testing.T) {
	nixtest.Require(t)
	key, pub := upstreamKey(t)
	top, all := buildClosure(t)
	src := pathInfo(t, "", all...)
	up := startNginx(t, "127.0.0.40", staticCache(t, key, "zstd", top))
	a := pullNode(t, "127.0.0.41", pub, up.url)
	b := newNodeAt(t, "127.0.0.42", "", "--bootstrap", a.p2pAddr(), "--upstream-public-key", pub)
	b.start()
	if _, out, err := substitute(t, pub, top, a.url); err != nil {
		t.Fatalf("through A: %v\n%s\nA's log:\n%s", err, out, a.log)
	}
	// A's client has the closure once A's spools check out; A's ingests
	// (at the lowest priority) may still run, and until each has ended
	// A has no record of its path for B.
	for _, p := range all {
		a.waitValid(p)
	}
	a.waitPeers(1)
	a.waitAnnounced()
	before := up.requests(t, "/")
	store, out, err := substitute(t, pub, top, b.url)
	if err != nil {
		t.Fatalf("through B: %v\n%s\nB's log:\n%s", err, out, b.log)
	}
	got := pathInfo(t, store, all...)
	for _, p := range all {
		if got[p].NarHash != src[p].NarHash {
			t.Errorf("%s through B: %s, want %s", p, got[p].NarHash, src[p].NarHash)
		}
	}
	if after := up.requests(t, "/"); after != before {
		t.Errorf("the upstream got %d more requests while B served the closure; want none", after-before)
	}
	// A fetch job records its path once the path is checked, which may be
	// a moment after its client has read the last byte.
	s := b.status()
	for deadline := time.Now().Add(10 * time.Second); s.Paths != len(all) && time.Now().Before(deadline); s = b.status() {
		time.Sleep(20 * time.Millisecond)
	}
	if s.P2PBytesReceived == 0 || s.Paths != len(all) {
		t.Errorf("B: %d bytes from peers, %d paths; want the closure's %d paths from A", s.P2PBytesReceived, s.Paths, len(all))
	}
}

// TestUpstreamAndPeerOneDownload: node B may get a path from its upstream
// and from peer A, which holds it; B downloads it from one of them only.
func TestUpstreamAndPeerOneDownload(t *testing.T) {
	nixtest.Require(t)
	key, pub := upstreamKey(t)
	p := addTree(t, "both", map[string][]byte{"f": bigPayload(4 << 20)})
	up := startNginx(t, "127.0.0.100", staticCache(t, key, "zstd", p))
	a := pullNode(t, "127.0.0.101", pub, up.url)
	code, text := a.get("/" + hashPart(p) + ".narinfo")
	if code != 200 {
		t.Fatalf("A's narinfo: %d %s", code, text)
	}
	if code, nar := a.get("/" + narinfoField(string(text), "URL")); code != 200 || len(nar) == 0 {
		t.Fatalf("A's NAR: %d, %d bytes\n%s", code, len(nar), a.log)
	}
	for deadline := time.Now().Add(30 * time.Second); a.status().Paths != 1; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("A did not pull the path:\n%s", a.log)
		}
	}
	b := newNodeAt(t, "127.0.0.102", "", "--bootstrap", a.p2pAddr(), "--upstream-public-key", pub, "--upstream", up.url)
	b.start()
	a.waitPeers(1)
	a.waitAnnounced()
	narsBefore := up.requests(t, "/nar/")

	code, text = b.get("/" + hashPart(p) + ".narinfo")
	if code != 200 {
		t.Fatalf("B's narinfo: %d %s", code, text)
	}
	if code, nar := b.get("/" + narinfoField(string(text), "URL")); code != 200 || len(nar) == 0 {
		t.Fatalf("B's NAR: %d, %d bytes\n%s", code, len(nar), b.log)
	}
	pulled := func() bool { return strings.Contains(b.log.String(), "msg=fetched path="+p+" via=upstream") }
	fetched := func() bool { return strings.Contains(b.log.String(), "msg=fetched path="+p+" via=peer") }
	for deadline := time.Now().Add(30 * time.Second); b.status().Paths != 1 || !(pulled() || fetched()); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("B did not get the path:\n%s", b.log)
		}
	}
	// The other download would have started with the first: it would end
	// within a moment of it on loopback. A bounded wait for what must not
	// happen.
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline) && !(pulled() && fetched()); time.Sleep(50 * time.Millisecond) {
	}
	nars := up.requests(t, "/nar/") - narsBefore
	switch {
	case pulled() && fetched():
		t.Fatalf("B both pulled the path (%d NAR requests upstream) and fetched it from A:\n%s", nars, b.log)
	case fetched() && nars != 0:
		t.Fatalf("B fetched the path from A, and asked the upstream for its NAR %d times", nars)
	case pulled() && nars != 1:
		t.Fatalf("B pulled the path with %d NAR requests upstream, want 1", nars)
	}
}

// TestUpstreamBrokenThenGood: the first of two upstreams to answer sends
// a NAR that does not match its NarHash; the next request for the path
// gets it from the other, slower one, and the broken one is not asked
// for it again.
func TestUpstreamBrokenThenGood(t *testing.T) {
	nixtest.Require(t)
	key, pub := upstreamKey(t)
	p := addTree(t, "twice", map[string][]byte{"f": bigPayload(1 << 20)})
	cache := staticCache(t, key, "none", p)
	bad := startBadUpstream(t, "127.0.0.103", cache, func(w http.ResponseWriter, r *http.Request, body []byte) {
		body = bytes.Clone(body)
		body[bytes.Index(body, []byte("MARKER-TO-FLIP"))] ^= 1
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		w.Write(body)
	})
	// The good upstream answers narinfos later than the broken one.
	files := http.FileServer(http.Dir(cache))
	ln, err := net.Listen("tcp", "127.0.0.104:0")
	if err != nil {
		t.Fatal(err)
	}
	good := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, ".narinfo") {
			time.Sleep(300 * time.Millisecond)
		}
		files.ServeHTTP(w, r)
	})}
	go good.Serve(ln)
	t.Cleanup(func() { good.Close() })
	n := pullNode(t, "127.0.0.1", pub, bad.url, "http://"+ln.Addr().String())

	code, text := n.get("/" + hashPart(p) + ".narinfo")
	if code != 200 {
		t.Fatalf("narinfo: %d %s", code, text)
	}
	resp, err := http.Get(n.url + "/" + narinfoField(string(text), "URL"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK && err == nil {
		t.Fatal("the broken NAR ended cleanly")
	}
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(n.log.String(), "pulling a path failed"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the broken pull did not fail:\n%s", n.log)
		}
	}
	if got := bad.narGets.Load(); got != 1 {
		t.Fatalf("the broken upstream got %d NAR requests, want 1", got)
	}

	code, text = n.get("/" + hashPart(p) + ".narinfo")
	if code != 200 {
		t.Fatalf("narinfo after the broken pull: %d %s\n%s", code, text, n.log)
	}
	if code, nar := n.get("/" + narinfoField(string(text), "URL")); code != 200 || len(nar) == 0 {
		t.Fatalf("NAR after the broken pull: %d, %d bytes\n%s", code, len(nar), n.log)
	}
	for deadline := time.Now().Add(30 * time.Second); n.status().Paths != 1; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the path did not become valid:\n%s", n.log)
		}
	}
	if got := bad.narGets.Load(); got != 1 {
		t.Errorf("the broken upstream got %d NAR requests, want 1", got)
	}
}

// TestUpstreamNarinfoDownloadsNothing: a narinfo answered from an
// upstream does not make the node download the NAR (a client that only
// asks narinfos, such as nix path-info, costs the upstream nothing more);
// the first NAR request does, and gets the path.
func TestUpstreamNarinfoDownloadsNothing(t *testing.T) {
	nixtest.Require(t)
	key, pub := upstreamKey(t)
	p := addTree(t, "narinfo-only", map[string][]byte{"f": []byte(fmt.Sprint(time.Now().UnixNano()))})
	up := startNginx(t, "127.0.0.43", staticCache(t, key, "zstd", p))
	n := pullNode(t, "127.0.0.44", pub, up.url)
	code, text := n.get("/" + hashPart(p) + ".narinfo")
	if code != 200 {
		t.Fatalf("narinfo through the node: %d", code)
	}
	// Nothing to wait for but time: a pull would start within
	// milliseconds of the answer.
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if got := up.requests(t, "/nar/"); got != 0 {
			t.Fatalf("the node asked the upstream for %d NARs after a narinfo alone", got)
		}
	}
	code, nar := n.get("/" + narinfoField(string(text), "URL"))
	if code != 200 || !bytes.Equal(nar, nixtest.Output(t, "nix-store", "--dump", p)) {
		t.Fatalf("NAR through the node: %d, %d bytes", code, len(nar))
	}
	if got := up.requests(t, "/nar/"); got != 1 {
		t.Errorf("the upstream got %d NAR requests for one NAR; want 1", got)
	}
}
