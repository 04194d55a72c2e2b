package main

// End-to-end tests: the real p2pstore binary as a node process, driven by
// its own commands and by a real Nix client.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/p2pstore/p2pstore/internal/nixtest"
	"github.com/p2pstore/p2pstore/narview/narinfo"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
	"github.com/p2pstore/p2pstore/node"
)

var binary, emptyConfig string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "p2pstore-e2e")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "p2pstore")
	args := []string{"build", "-o", binary}
	if os.Getenv("P2PSTORE_RACE") != "" {
		args = append(args, "-race") // the node processes under the race detector
	}
	if out, err := exec.Command("go", append(args, ".")...).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building p2pstore: %v\n%s", err, out)
		os.Exit(1)
	}
	// Every process the tests start reads an empty config file, never
	// the machine's (/etc/p2pstore, ~/.config/p2pstore).
	emptyConfig = filepath.Join(dir, "empty.yaml")
	if err := os.WriteFile(emptyConfig, nil, 0o644); err != nil {
		panic(err)
	}
	os.Setenv("P2PSTORE_CONFIG", emptyConfig)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// nodeProc is a running `p2pstore serve`.
type nodeProc struct {
	t      *testing.T
	dir    string
	args   []string // settings flags shared by every command for this node
	cmd    *exec.Cmd
	log    *syncBuffer
	client *node.Client
	url    string
	wrap   []string // runs serve through this (ip netns exec NS)
	env    []string // added to serve's environment
}

// syncBuffer is a bytes.Buffer that a node's output goroutine writes
// while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// newNode prepares a node in a fresh directory with a signing key.
func newNode(t *testing.T) *nodeProc {
	return newNodeAt(t, "127.0.0.1", "e2e-test-1")
}

// newNodeAt prepares a node listening on ip (HTTP and libp2p), with a
// signing key of the given name ("" for none), mDNS off, and sharing no
// local Nix store (this machine's /nix/store is the tests' scratch space),
// unless extra turns it on.
func newNodeAt(t *testing.T, ip, keyName string, extra ...string) *nodeProc {
	t.Helper()
	dir := t.TempDir()
	n := &nodeProc{t: t, dir: dir}
	n.args = append([]string{"--data-dir", filepath.Join(dir, "data"), "--http-listen", ip + ":0",
		"--p2p-listen", "/ip4/" + ip + "/tcp/0", "--mdns=false", "--share-local=false"}, extra...)
	if keyName != "" {
		n.args = append(n.args, "--sign-key-file", filepath.Join(dir, "key.sec"))
		n.run("keygen", "--name", keyName, "--out", filepath.Join(dir, "key.sec"))
	}
	n.client = node.NewClient(filepath.Join(dir, "data", "daemon.sock"))
	return n
}

// start runs the node and waits until it answers.
func (n *nodeProc) start() {
	t := n.t
	t.Helper()
	n.log = new(syncBuffer)
	argv := append(append(append([]string(nil), n.wrap...), binary, "serve"), n.args...)
	n.cmd = exec.Command(argv[0], argv[1:]...)
	if n.env != nil {
		n.cmd.Env = append(os.Environ(), n.env...)
	}
	n.cmd.Stdout, n.cmd.Stderr = n.log, n.log
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.kill() })
	deadline := time.Now().Add(15 * time.Second)
	for {
		s, err := n.client.Status(context.Background())
		if err == nil {
			n.url = "http://" + s.HTTPListen
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node did not start: %v\n%s", err, n.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (n *nodeProc) kill() {
	if n.cmd != nil && n.cmd.Process != nil {
		n.cmd.Process.Kill()
		n.cmd.Wait()
		n.cmd = nil
	}
	if n.log != nil && strings.Contains(n.log.String(), "DATA RACE") {
		n.t.Errorf("the node hit a data race:\n%s", n.log)
	}
}

// stop ends the node with SIGTERM, as a service manager would.
func (n *nodeProc) stop() {
	n.t.Helper()
	n.cmd.Process.Signal(syscall.SIGTERM)
	if err := n.cmd.Wait(); err != nil {
		n.t.Fatalf("node exited with %v\n%s", err, n.log)
	}
	n.cmd = nil
}

// run runs a p2pstore command for this node and returns its stdout.
func (n *nodeProc) run(args ...string) string {
	n.t.Helper()
	out, err := n.try(args...)
	if err != nil {
		n.t.Fatalf("p2pstore %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (n *nodeProc) try(args ...string) (string, error) {
	cmd := exec.Command(binary, append(args, n.args...)...)
	cmd.Env = nixtest.Env()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out) + stderr.String(), err
	}
	return string(out), nil
}

func (n *nodeProc) status() *node.Status {
	n.t.Helper()
	s, err := n.client.Status(context.Background())
	if err != nil {
		n.t.Fatal(err)
	}
	return s
}

func (n *nodeProc) get(path string) (int, []byte) {
	n.t.Helper()
	resp, err := http.Get(n.url + path)
	if err != nil {
		n.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		n.t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, b
}

// addTree adds a generated tree to the local Nix store.
func addTree(t *testing.T, name string, files map[string][]byte) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	for rel, data := range files {
		p := filepath.Join(dir, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return nixtest.Line(t, "nix-store", "--add", dir)
}

// buildClosure builds a three-path closure with references, unique to
// this test run.
func buildClosure(t *testing.T) (top string, all []string) {
	t.Helper()
	salt := fmt.Sprint(time.Now().UnixNano())
	expr := fmt.Sprintf(`let
  leaf = derivation { name = "leaf"; system = "x86_64-linux"; builder = "/bin/sh";
    args = [ "-c" "echo leaf %[1]s > $out" ]; };
  mid = derivation { name = "mid"; system = "x86_64-linux"; builder = "/bin/sh";
    args = [ "-c" "/bin/mkdir -p $out/bin; echo ${leaf} > $out/ref; printf '#!/bin/sh\\necho hi\\n' > $out/bin/hi; /bin/chmod +x $out/bin/hi; /bin/ln -s ../ref $out/bin/link" ]; };
in derivation { name = "top"; system = "x86_64-linux"; builder = "/bin/sh";
    args = [ "-c" "echo ${mid} ${leaf} > $out" ]; }`, salt)
	file := filepath.Join(t.TempDir(), "closure.nix")
	os.WriteFile(file, []byte(expr), 0o644)
	top = nixtest.Line(t, "nix-build", file, "--no-out-link")
	all = strings.Fields(nixtest.Line(t, "nix-store", "-qR", top))
	return top, all
}

type nixPathInfo struct {
	Path       string   `json:"path"`
	NarHash    string   `json:"narHash"`
	NarSize    uint64   `json:"narSize"`
	References []string `json:"references"`
	Signatures []string `json:"signatures"`
	Deriver    string   `json:"deriver"`
	CA         string   `json:"ca"`
}

func pathInfo(t *testing.T, store string, paths ...string) map[string]nixPathInfo {
	t.Helper()
	args := []string{"path-info", "--json"}
	if store != "" {
		args = append(args, "--store", store)
	}
	var infos []nixPathInfo
	if err := json.Unmarshal(nixtest.Output(t, "nix", append(args, paths...)...), &infos); err != nil {
		t.Fatal(err)
	}
	out := map[string]nixPathInfo{}
	for _, in := range infos {
		out[in.Path] = in
	}
	return out
}

func hashPart(p string) string { return filepath.Base(p)[:32] }

// TestSubstituteClosure is the main walk: keygen, serve, import a closure
// with --recursive, then a real Nix client copies and substitutes it with
// signature checking on, and records the NarHash of the source store.
func TestSubstituteClosure(t *testing.T) {
	nixtest.Require(t)
	n := newNode(t)
	n.start()
	top, all := buildClosure(t)
	out := n.run("import", "--sign", "--recursive", top)
	if !strings.Contains(out, fmt.Sprintf("imported %d paths", len(all))) {
		t.Fatalf("import said: %s", out)
	}
	pub := n.status().PublicKey
	src := pathInfo(t, "", all...)

	client := filepath.Join(t.TempDir(), "client")
	nixtest.Output(t, "nix", "copy", "--from", n.url, "--to", client, "--option", "trusted-public-keys", pub, top)
	got := pathInfo(t, client, all...)
	for _, p := range all {
		if got[p].NarHash != src[p].NarHash || got[p].NarSize != src[p].NarSize {
			t.Errorf("%s: client recorded %s/%d, source has %s/%d", p, got[p].NarHash, got[p].NarSize, src[p].NarHash, src[p].NarSize)
		}
		if got[p].Deriver != src[p].Deriver || strings.Join(got[p].References, " ") != strings.Join(src[p].References, " ") {
			t.Errorf("%s: deriver or references differ", p)
		}
	}

	// Substitution proper, through the zstd view this time.
	client2 := filepath.Join(t.TempDir(), "client2")
	nixtest.Output(t, "nix-store", "--store", client2, "-r", top,
		"--option", "substituters", n.url+"/zstd", "--option", "trusted-public-keys", pub)
	if got := pathInfo(t, client2, top)[top]; got.NarHash != src[top].NarHash {
		t.Errorf("substituted %s with hash %s, want %s", top, got.NarHash, src[top].NarHash)
	}

	// A client that does not trust the node's key refuses its paths.
	client3 := filepath.Join(t.TempDir(), "client3")
	cmd := nixtest.Command("nix", "copy", "--from", n.url, "--to", client3, "--option", "trusted-public-keys", "other-1:"+strings.Repeat("A", 43)+"=", top)
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("an untrusting client accepted the paths:\n%s", out)
	}
}

// TestNarinfoKeepsSignatures checks that a path's own signatures survive
// the import next to the node's.
func TestNarinfoKeepsSignatures(t *testing.T) {
	nixtest.Require(t)
	n := newNode(t)
	n.start()
	p := addTree(t, "signed", map[string][]byte{"a": []byte(fmt.Sprint(time.Now().UnixNano()))})
	other := filepath.Join(t.TempDir(), "other.sec")
	n.run("keygen", "--name", "other-1", "--out", other)
	nixtest.Output(t, "nix", "store", "sign", "--key-file", other, p)
	n.run("import", "--sign", p)
	code, body := n.get("/" + hashPart(p) + ".narinfo")
	if code != 200 || !strings.Contains(string(body), "Sig: other-1:") || !strings.Contains(string(body), "Sig: e2e-test-1:") {
		t.Fatalf("narinfo (%d):\n%s", code, body)
	}
}

// TestNARsMatchNixStoreDump renders every test path (and the corpus, with
// P2PSTORE_CORPUS set to its paths) through the node and compares the bytes
// with nix-store --dump, plain and zstd.
func TestNARsMatchNixStoreDump(t *testing.T) {
	nixtest.Require(t)
	n := newNode(t)
	n.start()
	paths := strings.Fields(os.Getenv("P2PSTORE_CORPUS"))
	top, all := buildClosure(t)
	paths = append(paths, all...)
	paths = append(paths, addTree(t, "edge", edgeFiles()))
	n.run("import", "--sign", "--recursive", top)
	for _, p := range paths {
		n.run("import", "--sign", p)
	}
	// Once with zstd frames made on the spot, once spliced from stored ones.
	checkNARs(t, n, paths)
	n.waitCompressed()
	checkNARs(t, n, paths)

	// A real Nix client reads the spliced frames: stored ones, raw blocks
	// (random data) and raw frames (NAR framing).
	edge := paths[len(paths)-1]
	client := filepath.Join(t.TempDir(), "client")
	nixtest.Output(t, "nix", "copy", "--from", n.url+"/zstd", "--to", client, "--option", "trusted-public-keys", n.status().PublicKey, edge)
	if got, want := pathInfo(t, client, edge)[edge].NarHash, pathInfo(t, "", edge)[edge].NarHash; got != want {
		t.Fatalf("zstd copy recorded %s, want %s", got, want)
	}
}

// waitCompressed waits for the background compressor to catch up.
func (n *nodeProc) waitCompressed() {
	n.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		s := n.status()
		if s.ChunksCompressed == s.Chunks {
			return
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("compressor stuck at %d of %d chunks", s.ChunksCompressed, s.Chunks)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func checkNARs(t *testing.T, n *nodeProc, paths []string) {
	t.Helper()
	for _, p := range paths {
		want := sha256.Sum256(nixtest.Output(t, "nix-store", "--dump", p))
		code, body := n.get("/" + hashPart(p) + ".narinfo")
		if code != 200 {
			t.Fatalf("%s: narinfo %d", p, code)
		}
		url := narinfoField(string(body), "URL")
		code, narBytes := n.get("/" + url)
		if code != 200 || sha256.Sum256(narBytes) != want {
			t.Errorf("%s: rendered NAR (status %d, %d bytes) differs from nix-store --dump", p, code, len(narBytes))
		}
		code, zst := n.get("/" + url + ".zst")
		if code != 200 {
			t.Fatalf("%s: zstd NAR %d", p, code)
		}
		if sha256.Sum256(decompress(t, zst)) != want {
			t.Errorf("%s: zstd NAR differs from nix-store --dump", p)
		}
	}
}

func narinfoField(text, key string) string {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, key+": "); ok {
			return v
		}
	}
	return ""
}

func decompress(t *testing.T, b []byte) []byte {
	t.Helper()
	cmd := exec.Command("zstd", "-d", "-c")
	cmd.Stdin = bytes.NewReader(b)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("zstd -d: %v", err)
	}
	return out
}

func edgeFiles() map[string][]byte {
	r := rand.New(rand.NewPCG(1, 2))
	big := make([]byte, 3<<20)
	for i := range big {
		big[i] = byte(r.Uint32())
	}
	files := map[string][]byte{
		"empty":            nil,
		"deep/a/b/c/d/e/f": []byte("deep"),
		"names/B":          []byte("B"), "names/a": []byte("a"), "names/a-b": []byte("-"), "names/a.b": []byte("."),
		"names/é": []byte("é"), "names/z": []byte("z"), "names/~": []byte("~"),
		"big":                       big,
		strings.Repeat("l", 255):    []byte("long"),
		"stamp":                     []byte(fmt.Sprint(time.Now().UnixNano())),
		"sizes/7":                   make([]byte, 7),
		"sizes/8":                   make([]byte, 8),
		"sizes/65537":               big[:65537],
		"emptydir/.keep-not-hidden": nil,
	}
	return files
}

// TestBadInput covers the answers to requests and commands that are wrong.
func TestBadInput(t *testing.T) {
	nixtest.Require(t)
	n := newNode(t)
	n.start()
	p := addTree(t, "small", map[string][]byte{"f": []byte(fmt.Sprint(time.Now().UnixNano()))})
	n.run("import", p)
	h := hashPart(p)
	for path, want := range map[string]int{
		"/nix-cache-info":                           200,
		"/" + h + ".narinfo":                        200,
		"/00000000000000000000000000000000.narinfo": 404,
		"/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.narinfo": 400, // 'e' is not nix-base32
		"/short.narinfo":                            400,
		"/nar/garbage":                              400,
		"/nar/" + h + ".nar":                        400,
		"/nar/00000000000000000000000000000000-1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s.nar": 404,
		"/nar/" + h + "-1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s.nar":                        404, // stale NarHash
		"/log/" + filepath.Base(p): 404,
		"/nowhere":                 404,
		"/api/v1/status":           200,
		"/metrics":                 200,
	} {
		if code, body := n.get(path); code != want {
			t.Errorf("GET %s: %d, want %d (%s)", path, code, want, body)
		}
	}
	resp, err := http.Post(n.url+"/"+h+".narinfo", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST narinfo: %d", resp.StatusCode)
	}
	req, _ := http.NewRequest(http.MethodHead, n.url+"/"+h+".narinfo", nil)
	resp, err = http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 || resp.ContentLength <= 0 {
		t.Errorf("HEAD narinfo: %v %v", resp, err)
	}

	// Commands: one clear line on stderr and a non-zero exit.
	for _, args := range [][]string{
		{"import", "/tmp"},
		{"import", "/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x"},
		{"import", "/nix/store/00000000000000000000000000000000-missing"},
		{"serve", "--http-listen", "nonsense"},
		{"serve", "--trusted-public-key", "not-a-key"},
		{"serve", "--upstream-public-key", "x:AAAA"},
		{"keygen", "--name", "x"},
		{"status", "--no-such-flag"},
	} {
		out, err := n.try(args...)
		if err == nil {
			t.Errorf("p2pstore %s succeeded", strings.Join(args, " "))
			continue
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 1 || !strings.HasPrefix(lines[0], "p2pstore: ") || strings.Contains(out, "goroutine") {
			t.Errorf("p2pstore %s printed:\n%s", strings.Join(args, " "), out)
		}
	}

	// Imports over the API that lie are refused and leave nothing behind.
	before := n.status()
	meta := &pathinfo.Info{StorePath: "/nix/store/" + strings.Repeat("1", 32) + "-fake", NarSize: 120}
	for name, body := range map[string][]byte{
		"truncated":  nixtest.Output(t, "nix-store", "--dump", p)[:50],
		"garbage":    bytes.Repeat([]byte("x"), 200),
		"wrong hash": nixtest.Output(t, "nix-store", "--dump", p),
	} {
		_, err := n.client.Import(context.Background(), meta, bytes.NewReader(body), node.ShareDefault)
		var se *node.StatusError
		if err == nil || !errorsAs(err, &se) || se.Code != 400 {
			t.Errorf("%s NAR: %v", name, err)
		}
	}
	// A rotated key: a stale signature under the node's key name (made by
	// an older key of that name) beside a good one. Nix accepts the path
	// for the good one; so does the node, dropping the stale one, and the
	// path is trusted and shared.
	rotated := addTree(t, "rotated", map[string][]byte{"f": []byte(fmt.Sprint(time.Now().UnixNano()))})
	src := pathInfo(t, "", rotated)[rotated]
	srcHash, err := storepath.ParseNarHash(src.NarHash)
	if err != nil {
		t.Fatal(err)
	}
	rm := &pathinfo.Info{StorePath: rotated, NarHash: srcHash, NarSize: src.NarSize}
	oldKey, _ := narinfo.GenerateKey("e2e-test-1")
	curKey, err := narinfo.LoadSecretKeyFile(filepath.Join(n.dir, "key.sec"))
	if err != nil {
		t.Fatal(err)
	}
	stale, good := oldKey.Sign(rm.Fingerprint()), curKey.Sign(rm.Fingerprint())
	rm.Sigs = []string{stale, good}
	res, err := n.client.Import(context.Background(), rm, bytes.NewReader(nixtest.Output(t, "nix-store", "--dump", rotated)), node.ShareDefault)
	if err != nil || !res.Shared {
		t.Fatalf("path with a stale signature beside a good one: %v, %+v", err, res)
	}
	if code, body := n.get("/" + hashPart(rotated) + ".narinfo"); code != 200 || strings.Contains(string(body), stale) || !strings.Contains(string(body), good) {
		t.Errorf("rotated key: narinfo %d:\n%s", code, body)
	}
	// A forged signature alone is dropped too: the path is the owner's,
	// kept unsigned and private.
	forged := addTree(t, "forged", map[string][]byte{"f": []byte(fmt.Sprint(time.Now().UnixNano()))})
	src = pathInfo(t, "", forged)[forged]
	if srcHash, err = storepath.ParseNarHash(src.NarHash); err != nil {
		t.Fatal(err)
	}
	fm := &pathinfo.Info{StorePath: forged, NarHash: srcHash, NarSize: src.NarSize,
		Sigs: []string{"e2e-test-1:" + strings.Repeat("A", 86) + "=="}}
	res, err = n.client.Import(context.Background(), fm, bytes.NewReader(nixtest.Output(t, "nix-store", "--dump", forged)), node.ShareDefault)
	if err != nil || res.Shared {
		t.Fatalf("forged signature: %v, %+v", err, res)
	}
	if code, body := n.get("/" + hashPart(forged) + ".narinfo"); code != 200 || strings.Contains(string(body), "Sig:") {
		t.Errorf("path with a forged signature: %d:\n%s", code, body)
	}
	before.Paths += 2
	if code, _ := n.get("/" + strings.Repeat("1", 32) + ".narinfo"); code != 404 {
		t.Errorf("refused import is visible: %d", code)
	}
	if after := n.status(); after.Paths != before.Paths {
		t.Errorf("paths went from %d to %d", before.Paths, after.Paths)
	}
}

func errorsAs(err error, target **node.StatusError) bool {
	se, ok := err.(*node.StatusError)
	if ok {
		*target = se
	}
	return ok
}

// TestRestartAndCrash checks that data survives a restart and a SIGKILL,
// that a SIGKILL mid-import leaves no half path, and that importing the
// same data twice stores nothing new.
func TestRestartAndCrash(t *testing.T) {
	nixtest.Require(t)
	n := newNode(t)
	n.start()
	small := addTree(t, "kept", map[string][]byte{"f": []byte(fmt.Sprint(time.Now().UnixNano()))})
	n.run("import", small)
	stored := n.status().BytesStored
	n.run("import", small) // already there: nothing happens
	if s := n.status(); s.BytesStored != stored {
		t.Fatalf("second import changed stored bytes %d -> %d", stored, s.BytesStored)
	}

	n.stop()
	n.start()
	if code, _ := n.get("/" + hashPart(small) + ".narinfo"); code != 200 {
		t.Fatalf("path lost across a restart: %d", code)
	}

	// A big path, so that the import is still running when the node dies.
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
	files := map[string][]byte{}
	for i := 0; i < 8; i++ {
		b := make([]byte, 16<<20)
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		files[fmt.Sprintf("blob%d", i)] = b
	}
	big := addTree(t, "big", files)
	imp := exec.Command(binary, append([]string{"import", big}, n.args...)...)
	imp.Env = nixtest.Env()
	if err := imp.Start(); err != nil {
		t.Fatal(err)
	}
	packs := filepath.Join(n.dir, "data", "castore", "packs")
	deadline := time.Now().Add(20 * time.Second)
	for packBytes(packs) < stored+32<<20 {
		if time.Now().After(deadline) {
			t.Fatal("import made no progress")
		}
		time.Sleep(10 * time.Millisecond)
	}
	n.cmd.Process.Kill() // SIGKILL mid-import
	n.cmd.Wait()
	n.cmd = nil
	imp.Wait()

	n.start()
	if code, _ := n.get("/" + hashPart(big) + ".narinfo"); code != 404 {
		t.Fatalf("half-imported path is visible: %d", code)
	}
	if code, _ := n.get("/" + hashPart(small) + ".narinfo"); code != 200 {
		t.Fatalf("earlier path lost after SIGKILL: %d", code)
	}
	if out := n.run("verify"); !strings.Contains(out, "checked 1 paths") {
		t.Fatalf("verify: %s", out)
	}
	n.run("import", big) // the next import completes
	code, body := n.get("/" + hashPart(big) + ".narinfo")
	if code != 200 {
		t.Fatalf("re-import: %d", code)
	}
	_, narBytes := n.get("/" + narinfoField(string(body), "URL"))
	if sha256.Sum256(narBytes) != sha256.Sum256(nixtest.Output(t, "nix-store", "--dump", big)) {
		t.Fatal("re-imported NAR differs")
	}
	n.run("verify")
}

func packBytes(dir string) uint64 {
	var total uint64
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if info, err := e.Info(); err == nil {
			total += uint64(info.Size())
		}
	}
	return total
}
