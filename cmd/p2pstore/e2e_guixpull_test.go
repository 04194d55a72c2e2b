package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/p2pstore/p2pstore/internal/guixtest"
	"github.com/p2pstore/p2pstore/internal/nixtest"
	"github.com/p2pstore/p2pstore/narview/guix"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

// guixFarm is a Guix substitute server in the build farms' layout:
// narinfos signed by the farm's key with their NAR entries after the
// Signature line, the NARs at nar/<compression>/...; it counts the
// requests of each path.
type guixFarm struct {
	srv   *httptest.Server
	mu    sync.Mutex
	files map[string][]byte
	hits  map[string]int
}

func newGuixFarm(t *testing.T) *guixFarm {
	f := &guixFarm{files: map[string][]byte{}, hits: map[string]int{}}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		body, ok := f.files[r.URL.Path]
		f.hits[r.URL.Path]++
		f.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
	}))
	t.Cleanup(f.srv.Close)
	return f
}

// farmNAR is one NAR entry of a farm's narinfo: its compression and
// body.
type farmNAR struct {
	compression string
	body        []byte
}

// offer serves a path whose NAR is nar as the farms serve what they built
// since 2021: lzip, then zstd (the lzip body bytes no decoder reads: it
// is not to be asked for). It returns the narinfo, signed by key.
func (f *guixFarm) offer(t *testing.T, p string, nar []byte, key guix.SecretKey) string {
	t.Helper()
	var zst bytes.Buffer
	zw, _ := zstd.NewWriter(&zst)
	zw.Write(nar)
	zw.Close()
	return f.publish(t, p, nar, key, farmNAR{"lzip", []byte("LZIP, but not for this node")}, farmNAR{"zstd", zst.Bytes()})
}

// offerLzip serves a path as the farms serve their older paths: an lzip
// NAR only, made by the lzip command.
func (f *guixFarm) offerLzip(t *testing.T, p string, nar []byte, key guix.SecretKey) string {
	t.Helper()
	if _, err := exec.LookPath("lzip"); err != nil {
		t.Skip("the lzip command is not installed: it makes the farm's lzip NAR (apt-get install lzip)")
	}
	cmd := exec.Command("lzip", "-c", "-9")
	cmd.Stdin = bytes.NewReader(nar)
	lz, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	return f.publish(t, p, nar, key, farmNAR{"lzip", lz})
}

// publish serves a path's narinfo, signed by key, with these NARs.
func (f *guixFarm) publish(t *testing.T, p string, nar []byte, key guix.SecretKey, nars ...farmNAR) string {
	t.Helper()
	base := filepath.Base(p)
	ni := &guix.NarInfo{StorePath: p, NarHash: storepath.NarHash(sha256.Sum256(nar)), NarSize: uint64(len(nar)), References: []string{}}
	if err := ni.Sign(key, "farm.example"); err != nil {
		t.Fatal(err)
	}
	for _, n := range nars {
		ni.NARs = append(ni.NARs, guix.NAR{URL: guix.NARURL(n.compression, base), Compression: n.compression, FileSize: uint64(len(n.body))})
	}
	text := ni.String()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.files["/"+hashPart(p)+".narinfo"] = []byte(text)
	for _, n := range nars {
		f.files["/nar/"+n.compression+"/"+base] = n.body
	}
	return text
}

func (f *guixFarm) hitsOf(path string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hits[path]
}

// TestGuixPullThrough: a node whose Guix listener misses pulls the path
// through from a Guix substitute server (guix.substituters) whose key it
// trusts (guix.public_keys): it serves the farm's narinfo with its signed
// part byte for byte (checked by the independent verifier) and NARs that
// are the dump, having downloaded the zstd NAR once and the lzip one
// never; then it holds the path. A narinfo by a key it does not trust is
// not served, and a node that does not trust the farm serves nothing.
func TestGuixPullThrough(t *testing.T) {
	nixtest.Require(t)
	gs := newGuixStore(t)
	files := randomFiles(21, 2)
	files["small"] = []byte("pulled through")
	gpath := gs.add("pulled", files)
	forgedPath := gs.add("forged", map[string][]byte{"f": []byte("signed by a stranger")})
	want := gs.dump(gpath)
	farm := newGuixFarm(t)

	n := newNodeAt(t, "127.0.0.154", "")
	farmSec, farmQ := guixKey(t, n, "farm")
	strangerSec, _ := guixKey(t, n, "stranger")
	farmKey, err := guix.LoadSecretKeyFile(farmSec)
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := guix.LoadSecretKeyFile(strangerSec)
	if err != nil {
		t.Fatal(err)
	}
	upText := farm.offer(t, gpath, want, farmKey)
	signedPart := upText[:strings.Index(upText, "URL:")]
	farm.offer(t, forgedPath, gs.dump(forgedPath), stranger)

	guixAddr := freeAddr(t, "127.0.0.154")
	n.args = append(n.args, "--guix-http-listen", guixAddr, "--guix-substituter", farm.srv.URL,
		"--guix-public-key", strings.TrimSuffix(farmSec, ".sec")+".pub")
	n.start()
	guixURL := "http://" + guixAddr

	text := guixNarinfo(t, guixURL, gpath)
	if !strings.HasPrefix(string(text), signedPart) || strings.Contains(string(text), "lzip") {
		t.Errorf("the farm's narinfo came out as:\n%s\nwant it to begin:\n%s", text, signedPart)
	}
	if ok, err := guixtest.Verify(text, farmQ); !ok {
		t.Errorf("the farm's signature no longer verifies (%v):\n%s", err, text)
	}
	checkGuixNARs(t, guixURL, text, want)
	base := filepath.Base(gpath)
	if z, l := farm.hitsOf("/nar/zstd/"+base), farm.hitsOf("/nar/lzip/"+base); z != 1 || l != 0 {
		t.Errorf("the farm served the zstd NAR %d times and the lzip one %d times; want once and never", z, l)
	}
	deadline := time.Now().Add(30 * time.Second)
	for n.status().Paths != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the pulled path did not become valid:\n%s", n.log)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Valid here now: served from the node's store, the same bytes.
	if again := guixNarinfo(t, guixURL, gpath); !bytes.Equal(again, text) {
		t.Errorf("the narinfo changed once the path was valid:\n%s", again)
	}

	if resp, body := httpGet(t, guixURL+"/"+hashPart(forgedPath)+".narinfo"); resp.StatusCode != 404 {
		t.Errorf("a narinfo by an untrusted key: %d %s", resp.StatusCode, body)
	}
	// The lookup may log after the 404 went out: its search outlives the
	// request.
	n.waitLog(30*time.Second, "upstream Guix narinfo not trusted", forgedPath)
	// A node that does not trust the farm.
	other := newNodeAt(t, "127.0.0.155", "")
	otherAddr := freeAddr(t, "127.0.0.155")
	other.args = append(other.args, "--guix-http-listen", otherAddr, "--guix-substituter", farm.srv.URL)
	other.start()
	if resp, body := httpGet(t, "http://"+otherAddr+"/"+hashPart(gpath)+".narinfo"); resp.StatusCode != 404 {
		t.Errorf("a node that does not trust the farm: %d %s", resp.StatusCode, body)
	}
}

// TestGuixPullThroughLzip: from a farm that offers a path's NAR in lzip
// only (its older substitutes), the node pulls it through, decoded by the
// lzip command where it is installed (a wrapper on PATH counts its runs)
// and by internal/lzip where it is not (PATH without it): the node serves
// NARs that are nix-store --dump's, under the farm's narinfo (its NarHash
// that of the dump), and then holds the path.
func TestGuixPullThroughLzip(t *testing.T) {
	nixtest.Require(t)
	for i, decoder := range []string{"command", "go"} {
		t.Run(decoder, func(t *testing.T) {
			gs := newGuixStore(t)
			files := randomFiles(byte(31+i), 2)
			files["small"] = []byte("pulled through from lzip")
			gpath := gs.add("lzip-only", files)
			want := gs.dump(gpath)
			farm := newGuixFarm(t)
			ip := fmt.Sprintf("127.0.0.%d", 157+i)
			n := newNodeAt(t, ip, "")
			farmSec, farmQ := guixKey(t, n, "farm")
			farmKey, err := guix.LoadSecretKeyFile(farmSec)
			if err != nil {
				t.Fatal(err)
			}
			upText := farm.offerLzip(t, gpath, want, farmKey)

			bin := t.TempDir() // the node's PATH: a counting lzip, or nothing
			runs := filepath.Join(t.TempDir(), "lzip-runs")
			if decoder == "command" {
				real, err := exec.LookPath("lzip")
				if err != nil {
					t.Fatal(err)
				}
				script := fmt.Sprintf("#!/bin/sh\necho run >> %s\nexec %s \"$@\"\n", runs, real)
				if err := os.WriteFile(filepath.Join(bin, "lzip"), []byte(script), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			n.env = []string{"PATH=" + bin}
			guixAddr := freeAddr(t, ip)
			n.args = append(n.args, "--guix-http-listen", guixAddr, "--guix-substituter", farm.srv.URL,
				"--guix-public-key", strings.TrimSuffix(farmSec, ".sec")+".pub")
			n.start()
			guixURL := "http://" + guixAddr

			text := guixNarinfo(t, guixURL, gpath)
			if signed := upText[:strings.Index(upText, "URL:")]; !strings.HasPrefix(string(text), signed) {
				t.Errorf("the farm's narinfo came out as:\n%s\nwant it to begin:\n%s", text, signed)
			}
			if ok, err := guixtest.Verify(text, farmQ); !ok {
				t.Errorf("the farm's signature no longer verifies (%v):\n%s", err, text)
			}
			ni, err := guix.Parse(text)
			if err != nil {
				t.Fatal(err)
			}
			if ni.NarHash != storepath.NarHash(sha256.Sum256(want)) {
				t.Errorf("NarHash %s, want the dump's", ni.NarHash)
			}
			checkGuixNARs(t, guixURL, text, want)
			if l := farm.hitsOf("/nar/lzip/" + filepath.Base(gpath)); l != 1 {
				t.Errorf("the farm served the lzip NAR %d times, want once", l)
			}
			deadline := time.Now().Add(30 * time.Second)
			for n.status().Paths != 1 {
				if time.Now().After(deadline) {
					t.Fatalf("the pulled path did not become valid:\n%s", n.log)
				}
				time.Sleep(100 * time.Millisecond)
			}
			// Served from the node's store now: the same NARs.
			checkGuixNARs(t, guixURL, text, want)
			ran, _ := os.ReadFile(runs)
			if got, wantRuns := strings.Count(string(ran), "run"), map[string]int{"command": 1, "go": 0}[decoder]; got != wantRuns {
				t.Errorf("the lzip command ran %d times, want %d", got, wantRuns)
			}
		})
	}
}

// TestGuixMissBurst: with its Guix upstream slow (a second for each
// answer, a farm far away, never failing), a burst of pipelined narinfo
// requests for paths the node lacks, as guix substitute sends, is
// answered 404 within seconds in all, not a second each: the
// connection's lookups wait from a budget.
func TestGuixMissBurst(t *testing.T) {
	nixtest.Require(t)
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(time.Second):
		case <-r.Context().Done():
		}
		http.NotFound(w, r)
	}))
	defer slow.Close()
	n := newNodeAt(t, "127.0.0.156", "")
	guixAddr := freeAddr(t, "127.0.0.156")
	n.args = append(n.args, "--guix-http-listen", guixAddr, "--guix-substituter", slow.URL)
	n.start()

	const burst = 200
	c, err := net.Dial("tcp", guixAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	c.SetDeadline(start.Add(60 * time.Second))
	var b bytes.Buffer
	for i := range burst {
		fmt.Fprintf(&b, "GET /%032d.narinfo HTTP/1.1\r\nHost: node\r\nUser-Agent: GNU Guile\r\n\r\n", i)
	}
	go c.Write(b.Bytes())
	br := bufio.NewReader(c)
	for i := range burst {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("answer %d after %s: %v", i, time.Since(start), err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 404 {
			t.Fatalf("answer %d: %d", i, resp.StatusCode)
		}
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("%d pipelined misses took %s", burst, took)
	} else {
		t.Logf("%d pipelined misses answered in %s", burst, took)
	}
}
