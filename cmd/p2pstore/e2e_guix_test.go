package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/p2pstore/p2pstore/internal/guixtest"
	"github.com/p2pstore/p2pstore/internal/nixtest"
	"github.com/p2pstore/p2pstore/narview/guix"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
	"github.com/p2pstore/p2pstore/node"
)

// guixStore is a Nix store whose paths lie under /gnu/store, its files
// under a temporary directory: Guix paths made by Nix.
type guixStore struct {
	t   *testing.T
	url string
}

func newGuixStore(t *testing.T) *guixStore {
	d := t.TempDir()
	return &guixStore{t, fmt.Sprintf("local?store=/gnu/store&real=%s/gnu/store&state=%s/state", d, d)}
}

// add makes a Guix path of a generated tree.
func (g *guixStore) add(name string, files map[string][]byte) string {
	g.t.Helper()
	dir := filepath.Join(g.t.TempDir(), name)
	for rel, data := range files {
		p := filepath.Join(dir, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			g.t.Fatal(err)
		}
	}
	return nixtest.Line(g.t, "nix-store", "--store", g.url, "--add", dir)
}

func (g *guixStore) dump(p string) []byte {
	g.t.Helper()
	return nixtest.Output(g.t, "nix", "store", "dump-path", "--store", g.url, p)
}

// freeAddr returns an address on ip whose port was free a moment ago.
func freeAddr(t *testing.T, ip string) string {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// guixKey makes a Guix key pair and returns the secret key's file and
// the public key's point.
func guixKey(t *testing.T, n *nodeProc, name string) (string, []byte) {
	t.Helper()
	sec := filepath.Join(t.TempDir(), name+".sec")
	n.run("keygen", "--guix", "--out", sec)
	pub, err := os.ReadFile(strings.TrimSuffix(sec, ".sec") + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`\(q #([0-9A-F]{64})#\)`).FindSubmatch(pub)
	if m == nil {
		t.Fatalf("no q in %s", pub)
	}
	q, _ := hex.DecodeString(string(m[1]))
	return sec, q
}

// httpGet GETs url and returns the response with its whole body.
func httpGet(t *testing.T, url string) (*http.Response, []byte) {
	t.Helper()
	return getRange(t, url, "")
}

// TestGuixServe: a node serves Guix paths on its Guix listener, Nix paths
// on its Nix one, neither on the other's; a Guix narinfo is in Guix's
// layout, signed with the node's Guix key (checked by the independent
// verifier), its NarHash that of nix-store --dump, and every NAR it
// offers decompresses to that dump. A narinfo signed elsewhere passes on
// byte for byte, and one no trusted key signed is refused. The same tree
// as a Nix and a Guix path stores its contents once.
func TestGuixServe(t *testing.T) {
	nixtest.Require(t)
	gs := newGuixStore(t)
	files := edgeFiles()
	gpath := gs.add("edge", files)
	npath := addTree(t, "edge", files)

	n := newNode(t)
	guixAddr := freeAddr(t, "127.0.0.1")
	sec, q := guixKey(t, n, "node")
	farmSec, farmQ := guixKey(t, n, "farm")
	n.args = append(n.args, "--guix-http-listen", guixAddr, "--guix-sign-key-file", sec,
		"--guix-public-key", strings.TrimSuffix(farmSec, ".sec")+".pub")
	n.start()
	guixURL := "http://" + guixAddr

	n.run("import", "--sign", npath)
	out := n.run("import", "--sign", "--from-store", gs.url, gpath)
	// Dedup: the Guix path's contents are the Nix path's.
	m := regexp.MustCompile(`new after dedup: ([0-9.]+)%`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("import said %q", out)
	}
	if ratio, _ := strconv.ParseFloat(m[1], 64); ratio > 1 {
		t.Errorf("the Guix copy of a stored tree added %.1f%% of its NAR, want at most 1%%", ratio)
	}

	want := gs.dump(gpath)
	wantHash := storepath.NarHash(sha256.Sum256(want))
	resp, text := httpGet(t, guixURL+"/"+hashPart(gpath)+".narinfo")
	if resp.StatusCode != 200 {
		t.Fatalf("Guix narinfo: %d %s", resp.StatusCode, text)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "max-age=3600" {
		t.Errorf("Guix narinfo Cache-Control %q", cc)
	}
	head := fmt.Sprintf("StorePath: %s\nNarHash: %s\nNarSize: %d\nReferences: \nSignature: 1;", gpath, wantHash, len(want))
	if !strings.HasPrefix(string(text), head) {
		t.Errorf("Guix narinfo:\n%s\nwant it to begin:\n%s", text, head)
	}
	if ok, err := guixtest.Verify(text, q); !ok || err != nil {
		t.Errorf("the node's Guix signature does not verify (%v):\n%s", err, text)
	}
	checkGuixNARs(t, guixURL, text, want)

	// Each store on its own listener only.
	for _, c := range []struct{ url, what string }{
		{guixURL + "/" + hashPart(npath) + ".narinfo", "a Nix path's narinfo on the Guix listener"},
		{guixURL + "/nar/" + filepath.Base(npath), "a Nix path's NAR on the Guix listener"},
		{n.url + "/" + hashPart(gpath) + ".narinfo", "a Guix path's narinfo on the Nix listener"},
		{guixURL + "/" + strings.Repeat("0", 32) + ".narinfo", "a narinfo the node lacks"},
		{guixURL + "/nar/lzip/" + filepath.Base(gpath), "an unknown compression"},
	} {
		resp, body := httpGet(t, c.url)
		if resp.StatusCode != 404 {
			t.Errorf("%s: %d %s", c.what, resp.StatusCode, body)
		}
		if strings.HasSuffix(c.url, ".narinfo") && strings.HasPrefix(c.url, guixURL) && resp.Header.Get("Cache-Control") != "max-age=60" {
			t.Errorf("%s: Cache-Control %q", c.what, resp.Header.Get("Cache-Control"))
		}
	}
	if code, _ := n.get("/" + hashPart(npath) + ".narinfo"); code != 200 {
		t.Errorf("the Nix path on the Nix listener: %d", code)
	}

	// A narinfo signed by a key of guix.public_keys passes on byte for
	// byte, with the node's NAR entries after it; one signed by a key
	// the node does not trust is refused, and nothing is stored.
	farm, err := guix.LoadSecretKeyFile(farmSec)
	if err != nil {
		t.Fatal(err)
	}
	other := gs.add("other", map[string][]byte{"f": []byte("signed by the farm")})
	otherNAR := gs.dump(other)
	upstream := &guix.NarInfo{StorePath: other, NarHash: storepath.NarHash(sha256.Sum256(otherNAR)),
		NarSize: uint64(len(otherNAR)), References: []string{}, System: "x86_64-linux",
		NARs: []guix.NAR{{URL: "nar/lzip/" + filepath.Base(other), Compression: "lzip", FileSize: 99}}}
	if err := upstream.Sign(farm, "farm.example"); err != nil {
		t.Fatal(err)
	}
	upText := upstream.String()
	signedPart := upText[:strings.Index(upText, "URL:")]
	if ok, _ := guixtest.Verify([]byte(upText), farmQ); !ok {
		t.Fatal("the test's own farm narinfo does not verify")
	}
	stranger, err := guix.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	forged := *upstream
	forged.Sign(stranger, "stranger")
	info := &pathinfo.Info{StorePath: other, NarHash: upstream.NarHash, NarSize: upstream.NarSize, GuixNarinfo: forged.String()}
	_, err = n.client.Import(context.Background(), info, bytes.NewReader(otherNAR), node.ShareDefault)
	if err == nil || !strings.Contains(err.Error(), "guix.public_keys") || strings.Contains(err.Error(), "\n") {
		t.Errorf("a narinfo by an untrusted key: %v", err)
	}
	if resp, _ := httpGet(t, guixURL+"/"+hashPart(other)+".narinfo"); resp.StatusCode != 404 {
		t.Errorf("a refused import is served: %d", resp.StatusCode)
	}
	info.GuixNarinfo = upText
	if _, err := n.client.Import(context.Background(), info, bytes.NewReader(otherNAR), node.ShareSigned); err != nil {
		t.Fatal(err)
	}
	_, text = httpGet(t, guixURL+"/"+hashPart(other)+".narinfo")
	if !strings.HasPrefix(string(text), signedPart) || !strings.Contains(string(text), "URL: nar/zstd/"+filepath.Base(other)) ||
		strings.Contains(string(text), "lzip") {
		t.Errorf("the farm's narinfo came out as:\n%s\nwant it to begin:\n%s", text, signedPart)
	}
	if ok, _ := guixtest.Verify(text, farmQ); !ok {
		t.Errorf("the farm's signature no longer verifies:\n%s", text)
	}
	t.Run("pipelining", func(t *testing.T) { testGuixPipelining(t, guixAddr, hashPart(gpath)) })
}

// checkGuixNARs checks that a Guix narinfo served at guixURL offers
// zstd, gzip and plain NARs, and that each decompresses to want.
func checkGuixNARs(t *testing.T, guixURL string, narinfo, want []byte) {
	t.Helper()
	ni, err := guix.Parse(narinfo)
	if err != nil {
		t.Fatal(err)
	}
	var comps []string
	nars := ni.NARs
	if nars[0].FileSize == 0 {
		// gzip, offered only while the sizes are not known, is
		// served all the same.
		nars = append(nars, guix.NAR{URL: "nar/gzip/" + strings.TrimPrefix(nars[0].URL, "nar/zstd/"), Compression: "gzip"})
	}
	for i, e := range nars {
		if i < len(ni.NARs) {
			comps = append(comps, e.Compression)
		}
		resp, body := httpGet(t, guixURL+"/"+e.URL)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", e.URL, resp.StatusCode, body)
		}
		if e.FileSize != 0 && e.FileSize != uint64(len(body)) {
			t.Errorf("%s: FileSize %d, but %d bytes came", e.URL, e.FileSize, len(body))
		}
		switch e.Compression {
		case "zstd":
			body = decompress(t, body)
		case "gzip":
			zr, err := gzip.NewReader(bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			if body, err = io.ReadAll(zr); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(body, want) {
			t.Errorf("%s: NAR (%d bytes) differs from nix-store --dump (%d)", e.URL, len(body), len(want))
		}
	}
	// FileSize for all or for none (Guix pairs them with the URLs by
	// position): zstd and none with their sizes once the zstd NAR's is
	// known, zstd, gzip and none without before.
	if got := strings.Join(comps, " "); got != "zstd gzip none" && got != "zstd none" ||
		(got == "zstd none") != (ni.NARs[0].FileSize != 0 && ni.NARs[1].FileSize != 0) {
		t.Errorf("NAR entries %+v", ni.NARs)
	}
}

// guixNarinfo asks a Guix listener for a path's narinfo until it answers
// 200 (bounded): a node may need a moment to find it on its peers.
func guixNarinfo(t *testing.T, guixURL, p string) []byte {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, text := httpGet(t, guixURL+"/"+hashPart(p)+".narinfo")
		if resp.StatusCode == 200 {
			return text
		}
		if resp.StatusCode != 404 || time.Now().After(deadline) {
			t.Fatalf("%s narinfo of %s: %d %s", guixURL, p, resp.StatusCode, text)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestGuixP2P: a Guix path moves between nodes as a Nix one does. A
// imports it signed with its Guix key; C, which knows only B and trusts
// A's Guix key, finds it through the DHT (under the Guix store's key) and
// serves it on its Guix listener: the narinfo is A's signed text byte for
// byte (checked by the independent verifier) and every NAR is the dump.
// B, trusting the key too, gets it from its peers. S, which trusts A's
// Nix key but not its Guix key, does not take it; a Guix path A holds
// unsigned is not given to anyone.
func TestGuixP2P(t *testing.T) {
	nixtest.Require(t)
	gs := newGuixStore(t)
	files := randomFiles(11, 3)
	files["small"] = []byte("a small file")
	gpath := gs.add("tree", files)
	unsigned := gs.add("unsigned", map[string][]byte{"f": []byte("nobody signed this")})
	want := gs.dump(gpath)

	guixNode := func(ip, nixKey string, extra ...string) (*nodeProc, string) {
		addr := freeAddr(t, ip)
		n := newNodeAt(t, ip, nixKey, append([]string{"--guix-http-listen", addr}, extra...)...)
		return n, "http://" + addr
	}
	a, aURL := guixNode("127.0.0.150", "node-a-1")
	sec, q := guixKey(t, a, "a")
	aPub := strings.TrimSuffix(sec, ".sec") + ".pub"
	a.args = append(a.args, "--guix-sign-key-file", sec)
	a.start()
	nixPub := a.status().PublicKey
	b, bURL := guixNode("127.0.0.151", "", "--bootstrap", a.p2pAddr(), "--guix-public-key", aPub)
	b.start()
	c, cURL := guixNode("127.0.0.152", "", "--bootstrap", b.p2pAddr(), "--guix-public-key", aPub)
	c.start()
	s, sURL := guixNode("127.0.0.153", "", "--bootstrap", a.p2pAddr(), "--trusted-public-key", nixPub)
	s.start()

	a.run("import", "--sign", "--from-store", gs.url, gpath)
	a.run("import", "--from-store", gs.url, unsigned)
	a.waitPeers(2)
	c.waitPeers(1)
	a.waitAnnounced()
	if st := a.status(); st.SharedPaths != 1 {
		t.Errorf("A shares %d paths, want 1 (the signed Guix path)", st.SharedPaths)
	}
	_, aText := httpGet(t, aURL+"/"+hashPart(gpath)+".narinfo")

	for _, n := range []struct {
		name, url string
	}{{"C", cURL}, {"B", bURL}} {
		text := guixNarinfo(t, n.url, gpath)
		// A's signed text byte for byte; the NAR entries are each
		// node's own.
		signed := func(b []byte) []byte { return b[:bytes.Index(b, []byte("\nURL:"))] }
		if !bytes.Equal(signed(text), signed(aText)) {
			t.Errorf("%s serves the narinfo\n%s\nA serves\n%s", n.name, text, aText)
		}
		if ok, err := guixtest.Verify(text, q); !ok {
			t.Errorf("%s's narinfo does not verify with A's key (%v):\n%s", n.name, err, text)
		}
		checkGuixNARs(t, n.url, text, want)
	}
	// S trusts A's Nix key only: Nix signatures say nothing of Guix paths.
	if resp, body := httpGet(t, sURL+"/"+hashPart(gpath)+".narinfo"); resp.StatusCode != 404 {
		t.Errorf("a node that does not trust A's Guix key: %d %s", resp.StatusCode, body)
	}
	// Nobody signed the other path: A gives it to no peer.
	if resp, body := httpGet(t, bURL+"/"+hashPart(unsigned)+".narinfo"); resp.StatusCode != 404 {
		t.Errorf("an unsigned Guix path reached B: %d %s", resp.StatusCode, body)
	}
	if st := s.status(); st.Paths != 0 {
		t.Errorf("S holds %d paths, want none", st.Paths)
	}
}

// testGuixPipelining sends 1,000 narinfo requests on one connection, as
// guix substitute does, and reads the answers in order, every one framed
// (404s too); then a burst with a malformed request in its middle: the
// requests before it are answered, then the connection closes.
func testGuixPipelining(t *testing.T, addr, have string) {
	hashes := make([]string, 1000)
	for i := range hashes {
		hashes[i] = fmt.Sprintf("%032d", i)
		if i%10 == 0 {
			hashes[i] = have
		}
	}
	send := func(c net.Conn, bad int) {
		var b bytes.Buffer
		for i, h := range hashes {
			if i == bad {
				b.WriteString("GET /nonsense HTTP/1.1 extra\r\nHost\r\n\r\n")
				continue
			}
			fmt.Fprintf(&b, "GET /%s.narinfo HTTP/1.1\r\nHost: node\r\nUser-Agent: GNU Guile\r\n\r\n", h)
		}
		go c.Write(b.Bytes()) // the answers come while it writes
	}
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(60 * time.Second))
		return c, bufio.NewReader(c)
	}
	c, br := dial()
	send(c, -1)
	for i, h := range hashes {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		wantCode := 404
		if h == have {
			wantCode = 200
		}
		if resp.StatusCode != wantCode || resp.ContentLength != int64(len(body)) || resp.Header.Get("Cache-Control") == "" {
			t.Fatalf("answer %d: %d, Content-Length %d for %d bytes, Cache-Control %q; want %d, framed",
				i, resp.StatusCode, resp.ContentLength, len(body), resp.Header.Get("Cache-Control"), wantCode)
		}
		if h == have && !bytes.Contains(body, []byte("StorePath: /gnu/store/"+have)) {
			t.Fatalf("answer %d is not its request's:\n%s", i, body)
		}
	}

	const bad = 500
	c, br = dial()
	send(c, bad)
	for i := 0; ; i++ {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			if i < bad {
				t.Fatalf("connection ended after %d answers, before the malformed request (%d): %v", i, bad, err)
			}
			break
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		switch {
		case i < bad && resp.StatusCode != 200 && resp.StatusCode != 404:
			t.Fatalf("answer %d: %d", i, resp.StatusCode)
		case i == bad && resp.StatusCode != 400:
			t.Fatalf("the malformed request got %d, want 400", resp.StatusCode)
		case i > bad:
			t.Fatalf("answer %d after the malformed request", i)
		}
	}
}
