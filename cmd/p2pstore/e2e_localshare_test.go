package main

// End-to-end test of sharing the machine's own Nix store (local.share):
// the signed paths of a store the node was pointed at are served and
// given to peers without an import; the unsigned ones are not.

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/internal/nixtest"
	"github.com/p2pstore/p2pstore/narview/nar"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

// waitNarinfo polls, bounded, until the node's narinfo of path answers
// code.
func (n *nodeProc) waitNarinfo(path string, code int, within time.Duration) {
	n.t.Helper()
	deadline := time.Now().Add(within)
	for {
		got, _ := n.get("/" + hashPart(path) + ".narinfo")
		if got == code {
			return
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("the narinfo of %s still answers %d after %v, want %d:\n%s", path, got, within, code, n.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// treeRoot returns the castore root a node makes of a path's files: what
// a peer would ask for by digest.
func treeRoot(t *testing.T, dir string) castore.Digest {
	t.Helper()
	st, err := castore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	lease := st.NewLease()
	defer lease.Release()
	w := lease.NewWriter()
	defer w.Abort()
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(nar.Dump(context.Background(), nar.NewWriter(pw), dir)) }()
	root, err := nar.Ingest(context.Background(), nar.NewReader(pr), w)
	if err != nil {
		t.Fatal(err)
	}
	return root.Digest
}

// TestLocalShare: node A shares a store made with --store (its root set
// by local.root) holding signed closures P and P2 and an unsigned path Q, never
// imported. A Nix client with a store of its own copies P from A's cache
// (checking signatures and the NarHash); Q is a 404. Node B, which trusts
// the key and shares no local store, substitutes another signed closure
// P2 from A over p2p (A takes it into castore when B asks); Q is
// reachable through B by no means, nor from A by any message of the
// transfer protocol. A signed path added to the store after A started is
// served after a poll, and gone once deleted; a path whose files no
// longer match its NarHash gets an aborted NAR response and leaves the
// catalog. Node C copies the paths it gives peers into its store ahead
// of any request.
func TestLocalShare(t *testing.T) {
	nixtest.Require(t)
	src := newSrcStore(t)
	root := src.dir
	// P for a Nix client of A, P2 for a client of B: A has been asked for
	// nothing when B asks for P2.
	top, closure := buildClosure(t)
	top2, closure2 := buildClosure(t)
	nixtest.Output(t, "nix", "copy", "--no-check-sigs", "--to", root, top, top2)
	sec := filepath.Join(t.TempDir(), "local.sec")
	nixtest.Output(t, "nix-store", "--generate-binary-cache-key", "local-share-1", sec, sec+".pub")
	pubBytes, err := os.ReadFile(sec + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	pub := strings.TrimSpace(string(pubBytes))
	nixtest.Output(t, "nix", "store", "sign", "--store", root, "--key-file", sec, "--recursive", top, top2)
	qFiles := secretFiles("local-unsigned")
	qText := map[string]string{}
	for k, v := range qFiles {
		qText[k] = string(v)
	}
	q := src.add("local-unsigned", qText)

	// A copies a path into its store only when asked (copy-ahead is
	// checked with node C below).
	a := newNodeAt(t, "127.0.0.51", "node-a-1", "--share-local=true", "--local-root", root,
		"--local-poll-interval", "200ms", "--trusted-public-key", pub, "--local-copy-ahead=false")
	a.start()
	deadline := time.Now().Add(60 * time.Second)
	for s := a.status(); !s.LocalScanned || s.LocalShared != 2*len(closure); s = a.status() {
		if time.Now().After(deadline) {
			t.Fatalf("A lists %d local paths as shared (scanned %v), want %d:\n%s", s.LocalShared, s.LocalScanned, 2*len(closure), a.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st := a.run("status"); !strings.Contains(st, "6 signed paths shared from the local Nix store") {
		t.Errorf("status says:\n%s", st)
	}

	// A Nix client of its own, trusting the key.
	want := pathInfo(t, root, append(closure, closure2...)...)
	client := filepath.Join(t.TempDir(), "client")
	nixtest.Output(t, "nix", "copy", "--from", a.url, "--to", client, "--option", "trusted-public-keys", pub, top)
	for p, in := range pathInfo(t, client, closure...) {
		if in.NarHash != want[p].NarHash || len(in.Signatures) == 0 {
			t.Errorf("%s: the client got %s with %v, want %s signed", p, in.NarHash, in.Signatures, want[p].NarHash)
		}
	}
	qHash := pathInfo(t, root, q)[q].NarHash
	qNar, err := storepath.ParseNarHash(qHash)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"/" + hashPart(q) + ".narinfo", "/nar/" + hashPart(q) + "-" + qNar.String()[len("sha256:"):] + ".nar"} {
		if code, _ := a.get(u); code != 404 {
			t.Errorf("A answers %d for the unsigned path's %s", code, u)
		}
	}

	// Node B substitutes P2 from A over p2p.
	b := newNodeAt(t, "127.0.0.52", "", "--bootstrap", a.p2pAddr(), "--trusted-public-key", pub)
	b.start()
	a.waitPeers(1)
	client2 := filepath.Join(t.TempDir(), "client2")
	nixtest.Output(t, "nix", "copy", "--from", b.url, "--to", client2, "--option", "trusted-public-keys", pub, top2)
	for p, in := range pathInfo(t, client2, closure2...) {
		if in.NarHash != want[p].NarHash {
			t.Errorf("%s: the client got %s through B, want %s", p, in.NarHash, want[p].NarHash)
		}
	}
	// B records a fetched path once its NAR is checked, which may come
	// just after the client has the last byte.
	deadline = time.Now().Add(30 * time.Second)
	for s := b.status(); s.Paths != len(closure2); s = b.status() {
		if time.Now().After(deadline) {
			t.Fatalf("B holds %d paths, want the %d of the closure", s.Paths, len(closure2))
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Q through B, and from A by every message of the protocol.
	if out, err := b.try("fetch", q); err == nil {
		t.Errorf("B fetched the unsigned local path:\n%s", out)
	}
	if code, _ := b.get("/" + hashPart(q) + ".narinfo"); code != 404 {
		t.Errorf("B's narinfo of the unsigned local path: %d", code)
	}
	anon, idA := anonymousPeer(t, a, "127.0.0.53")
	qDir := filepath.Join(root, q)
	if got, _ := probe(t, anon, idA, q, treeRoot(t, qDir), qFiles); len(got) > 0 {
		t.Errorf("an anonymous peer got, of the unsigned local path: %s", strings.Join(got, ", "))
	}

	// A signed path added after the start, then deleted.
	added := src.add("added-later", map[string]string{"f": "added " + time.Now().String()})
	nixtest.Output(t, "nix", "store", "sign", "--store", root, "--key-file", sec, added)
	a.waitNarinfo(added, 200, 65*time.Second)
	nixtest.Output(t, "nix-store", "--store", root, "--delete", added)
	a.waitNarinfo(added, 404, 65*time.Second)

	// A byte range of a NAR rendered from the files (as Nix asks when it
	// resumes a download).
	ranged := src.add("ranged", map[string]string{"f": strings.Repeat("ranged ", 50000)})
	nixtest.Output(t, "nix", "store", "sign", "--store", root, "--key-file", sec, ranged)
	a.waitNarinfo(ranged, 200, 65*time.Second)
	var whole bytes.Buffer
	if err := nar.Dump(context.Background(), nar.NewWriter(&whole), filepath.Join(root, ranged)); err != nil {
		t.Fatal(err)
	}
	_, text := a.get("/" + hashPart(ranged) + ".narinfo")
	req, _ := http.NewRequest(http.MethodGet, a.url+"/"+narinfoField(string(text), "URL"), nil)
	req.Header.Set("Range", "bytes=1000-200999")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	part, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusPartialContent || !bytes.Equal(part, whole.Bytes()[1000:201000]) {
		t.Errorf("range of a local NAR: %d, %d bytes, %v; want 206 and bytes 1000-200999 of the NAR", resp.StatusCode, len(part), err)
	}

	// A path whose files change under it: the NAR is cut short, and the
	// path is no longer served.
	bad := src.add("changed-later", map[string]string{"f": strings.Repeat("original ", 100000)})
	nixtest.Output(t, "nix", "store", "sign", "--store", root, "--key-file", sec, bad)
	a.waitNarinfo(bad, 200, 65*time.Second)
	if err := os.WriteFile(filepath.Join(root, bad, "f"), []byte(strings.Repeat("tampered ", 100000)), 0o444); err != nil {
		t.Fatal(err)
	}
	_, text = a.get("/" + hashPart(bad) + ".narinfo")
	resp, err = http.Get(a.url + "/" + narinfoField(string(text), "URL"))
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode == 200 && err == nil {
		t.Errorf("the NAR of a path that no longer matches its NarHash ended cleanly (%d bytes)", len(body))
	}
	if !errors.Is(err, io.ErrUnexpectedEOF) && resp.StatusCode == 200 {
		t.Errorf("reading the NAR of a changed path: %v, want a broken transfer", err)
	}
	a.waitNarinfo(bad, 404, 5*time.Second)

	// A path whose files are gone while the database still lists it (a
	// deletion between two polls): its NAR is a 404, not an error.
	vanished := src.add("vanished-later", map[string]string{"f": "vanishing " + time.Now().String()})
	nixtest.Output(t, "nix", "store", "sign", "--store", root, "--key-file", sec, vanished)
	a.waitNarinfo(vanished, 200, 65*time.Second)
	_, text = a.get("/" + hashPart(vanished) + ".narinfo")
	os.Chmod(filepath.Join(root, vanished), 0o755)
	if err := os.RemoveAll(filepath.Join(root, vanished)); err != nil {
		t.Fatal(err)
	}
	if code, body := a.get("/" + narinfoField(string(text), "URL")); code != 404 {
		t.Errorf("the NAR of a path whose files are gone: %d %s", code, body)
	}
	a.waitNarinfo(vanished, 404, 5*time.Second)

	// Node C, with copy-ahead on (the default), takes every path it gives
	// peers into its own store, unasked: the two closures and the ranged
	// path, not the tampered one (refused) nor the one whose files are gone.
	c := newNodeAt(t, "127.0.0.54", "", "--share-local=true", "--local-root", root, "--trusted-public-key", pub)
	c.start()
	deadline = time.Now().Add(60 * time.Second)
	for s := c.status(); s.Paths != 2*len(closure)+1; s = c.status() {
		if time.Now().After(deadline) {
			t.Fatalf("C holds %d paths, want the %d of the two closures and the ranged path:\n%s", s.Paths, 2*len(closure)+1, c.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.waitNarinfo(bad, 404, 60*time.Second)
}
