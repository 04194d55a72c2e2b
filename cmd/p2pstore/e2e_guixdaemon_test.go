package main

import (
	"bytes"
	"crypto/sha256"
	binenc "encoding/binary"
	"path/filepath"
	"strings"
	"testing"

	"github.com/p2pstore/p2pstore/internal/guixtest"
	"github.com/p2pstore/p2pstore/internal/nixtest"
	"github.com/p2pstore/p2pstore/narview/daemon"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

// TestGuixDaemon: Guix tooling pointed at a node's guix.daemon_socket
// (GUIX_DAEMON_SOCKET) queries and exports its Guix paths. The client a
// node imports with reads a path back byte for byte; an export asked to
// be signed carries the node's Guix signature of it (checked by the
// independent verifier); a second node imports the path through the
// first's socket as from a guix-daemon, and serves it to Guix clients
// under its own key. A real Nix client on the Guix socket is told which
// socket is its own.
func TestGuixDaemon(t *testing.T) {
	nixtest.Require(t)
	gs := newGuixStore(t)
	gpath := gs.add("tree", edgeFiles())
	want := gs.dump(gpath)
	gpath2 := gs.add("second", map[string][]byte{"f": []byte("imported with guix archive --import")})
	wantHash := storepath.NarHash(sha256.Sum256(want))

	a := newNode(t)
	sec, q := guixKey(t, a, "a")
	a.args = append(a.args, "--guix-sign-key-file", sec)
	a.start()
	a.run("import", "--sign", "--from-store", gs.url, gpath, gpath2)
	sock := filepath.Join(a.dir, "data", "guix-daemon.sock")

	c, err := daemon.DialGuix(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	info, err := c.QueryPathInfo(gpath)
	if err != nil || info.NarHash != wantHash || info.NarSize != uint64(len(want)) {
		t.Fatalf("QueryPathInfo: %+v %v", info, err)
	}
	missing := filepath.Join(filepath.Dir(gpath), strings.Repeat("1", 32)+"-missing")
	if valid, err := c.QueryValidPaths([]string{missing, gpath}, false); err != nil || len(valid) != 1 || valid[0] != gpath {
		t.Fatalf("QueryValidPaths: %v %v", valid, err)
	}
	var nar bytes.Buffer
	if err := c.NarFromPath(gpath, &nar); err != nil || !bytes.Equal(nar.Bytes(), want) {
		t.Fatalf("the exported NAR (%d bytes, %v) is not nix-store --dump's (%d)", nar.Len(), err, len(want))
	}

	// A signed export: the node's signature of the SHA-256 of the NAR
	// and its trailer, which guix archive --import checks.
	var export bytes.Buffer
	if err := c.Export(gpath, true, &export); err != nil {
		t.Fatal(err)
	}
	b := export.Bytes()
	if !bytes.HasPrefix(b, want) {
		t.Fatal("the export does not begin with the NAR")
	}
	// The trailer: magic, path, references (none), deriver (none), 1, signature.
	tr := b[len(want):]
	u64 := func() uint64 {
		if len(tr) < 8 {
			t.Fatalf("the export ends early: %q", b[len(want):])
		}
		v := binenc.LittleEndian.Uint64(tr)
		tr = tr[8:]
		return v
	}
	str := func() string {
		n := int(u64())
		if n > len(tr) {
			t.Fatalf("a string of %d bytes in %d", n, len(tr))
		}
		s := string(tr[:n])
		tr = tr[(n+7)/8*8:]
		return s
	}
	if m := u64(); m != 0x4558494e {
		t.Fatalf("export magic %#x", m)
	}
	if p := str(); p != gpath {
		t.Fatalf("export of %s", p)
	}
	if refs := u64(); refs != 0 {
		t.Fatalf("%d references", refs)
	}
	if d := str(); d != "" {
		t.Fatalf("deriver %q", d)
	}
	signedLen := len(b) - len(tr)
	if flag := u64(); flag != 1 {
		t.Fatalf("signature flag %d", flag)
	}
	sig := str()
	if ok, err := guixtest.VerifyHash([]byte(sig), sha256.Sum256(b[:signedLen]), q); !ok || err != nil {
		t.Fatalf("the export's signature does not verify with the node's key (%v):\n%s", err, sig)
	}
	if len(tr) != 0 {
		t.Fatalf("%d bytes after the signature", len(tr))
	}

	// A second node imports the path from the first's socket, as from a
	// guix-daemon, and serves it signed with its own key.
	bn := newNodeAt(t, "127.0.0.2", "")
	bsec, bq := guixKey(t, bn, "b")
	guixAddr := freeAddr(t, "127.0.0.2")
	bn.args = append(bn.args, "--guix-sign-key-file", bsec, "--guix-http-listen", guixAddr,
		"--guix-public-key", strings.TrimSuffix(sec, ".sec")+".pub")
	bn.start()
	t.Setenv("GUIX_DAEMON_SOCKET", sock)
	if out := bn.run("import", "--sign", gpath); !strings.Contains(out, "imported 1 path from the guix-daemon at "+sock) {
		t.Errorf("import said %q", out)
	}
	text := guixNarinfo(t, "http://"+guixAddr, gpath)
	if ok, err := guixtest.Verify(text, bq); !ok || err != nil {
		t.Errorf("the second node's narinfo does not verify with its key (%v):\n%s", err, text)
	}
	if !strings.Contains(string(text), "NarHash: "+wantHash.String()+"\n") {
		t.Errorf("narinfo:\n%s\nwant NarHash %s", text, wantHash)
	}
	checkGuixNARs(t, "http://"+guixAddr, text, want)
	// Nix and Guix paths are read apart.
	if out, err := bn.try("import", gpath, addTree(t, "nix", map[string][]byte{"f": []byte("x")})); err == nil ||
		!strings.Contains(out, "separate runs") {
		t.Errorf("a mixed import: %v %s", err, out)
	}

	// guix archive --import into the second node: an archive signed by
	// the first node's key, which the second trusts, goes in and is
	// served under the second's key; one the first node gets from the
	// second (whose key it does not trust), or unsigned, is refused.
	bc, err := daemon.DialGuix(filepath.Join(bn.dir, "data", "guix-daemon.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer bc.Close()
	added, err := bc.Import(bytes.NewReader(archive(t, c, gpath2, true)))
	if err != nil || len(added) != 1 || added[0] != gpath2 {
		t.Fatalf("guix archive --import of a trusted archive: %v %v", added, err)
	}
	text2 := guixNarinfo(t, "http://"+guixAddr, gpath2)
	if ok, err := guixtest.Verify(text2, bq); !ok || err != nil {
		t.Errorf("the imported path's narinfo does not verify with the second node's key (%v):\n%s", err, text2)
	}
	checkGuixNARs(t, "http://"+guixAddr, text2, gs.dump(gpath2))
	if _, err := c.Import(bytes.NewReader(archive(t, bc, gpath2, true))); err == nil || !strings.Contains(err.Error(), "untrusted key") {
		t.Errorf("an archive by a key the node does not trust: %v", err)
	}
	if _, err := bc.Import(bytes.NewReader(archive(t, c, gpath, false))); err == nil || !strings.Contains(err.Error(), "not signed") {
		t.Errorf("an unsigned archive: %v", err)
	}

	// Nix on the Guix socket, and Guix on the Nix one.
	out, err := nixtest.Command("nix", "store", "ping", "--store", "unix://"+sock).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Guix daemon socket") {
		t.Errorf("nix store ping on the Guix socket: %v\n%s", err, out)
	}
	if _, err := daemon.DialGuix(filepath.Join(a.dir, "data", "daemon.sock")); err == nil || !strings.Contains(err.Error(), "not Guix's") {
		t.Errorf("a Guix client on the Nix socket: %v", err)
	}
	if !strings.Contains(a.log.String(), "node running") || strings.Contains(a.log.String(), "panic") {
		t.Errorf("node log:\n%s", a.log)
	}
}

// archive exports path through c as `guix archive --export` frames one
// path: 1, the export, 0.
func archive(t *testing.T, c *daemon.Client, path string, sign bool) []byte {
	t.Helper()
	var b bytes.Buffer
	b.Write(binenc.LittleEndian.AppendUint64(nil, 1))
	if err := c.Export(path, sign, &b); err != nil {
		t.Fatal(err)
	}
	b.Write(binenc.LittleEndian.AppendUint64(nil, 0))
	return b.Bytes()
}
