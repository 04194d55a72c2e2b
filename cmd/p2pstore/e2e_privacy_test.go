package main

// End-to-end test of what a node keeps from its peers: the paths its
// owner imports are shared only when signed on purpose.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/internal/nixtest"
	"github.com/p2pstore/p2pstore/node"
	"github.com/p2pstore/p2pstore/node/transfer"
)

// secretFiles is a tree of content unique to this run (so that it shares
// no chunk with anything shared): a file of several chunks, a small one,
// one in a subdirectory.
func secretFiles(name string) map[string][]byte {
	var seed [32]byte
	copy(seed[:], fmt.Sprint(name, time.Now().UnixNano()))
	big := make([]byte, 700<<10)
	rand.NewChaCha8(seed).Read(big)
	return map[string][]byte{
		"big":        big,
		"key":        []byte(fmt.Sprintf("%s secret %x\n", name, seed)),
		"sub/nested": []byte(fmt.Sprintf("%s nested secret %x\n", name, seed)),
	}
}

// fileDigests returns the digests of the files' blobs and of their
// chunks, cut as every node cuts them.
func fileDigests(t *testing.T, files map[string][]byte) (blobs []transfer.BlobRef, chunks []castore.Digest) {
	t.Helper()
	for _, data := range files {
		blobs = append(blobs, transfer.BlobRef{Digest: castore.Sum(data), Size: uint64(len(data))})
		c := castore.NewChunker(bytes.NewReader(data))
		for {
			chunk, err := c.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			chunks = append(chunks, castore.Sum(chunk))
		}
	}
	return blobs, chunks
}

// anonymousPeer is an in-process libp2p host connected to n, with no key
// anyone trusts: what it gets from n, anybody gets.
func anonymousPeer(t *testing.T, n *nodeProc, ip string) (*transfer.Client, peer.ID) {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/"+ip+"/tcp/0"), libp2p.DisableRelay())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	addr, err := ma.NewMultiaddr(n.p2pAddr())
	if err != nil {
		t.Fatal(err)
	}
	pi, err := peer.AddrInfoFromP2pAddr(addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := h.Connect(ctx, *pi); err != nil {
		t.Fatal(err)
	}
	return transfer.NewClient(h), pi.ID
}

// probe asks p, by every message of the transfer protocol, for a path's
// record, the directories under its root, the chunk lists of its files
// and its chunks (raw and as zstd frames), and returns what was answered
// and what was refused as "not found".
func probe(t *testing.T, c *transfer.Client, p peer.ID, path string, root castore.Digest, files map[string][]byte) (got, refused []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	answer := func(what string, err error) {
		switch {
		case err == nil:
			got = append(got, what)
		case errors.Is(err, transfer.ErrNotFound):
			refused = append(refused, what)
		default:
			t.Fatalf("%s of %s: %v", what, path, err)
		}
	}
	rec, err := c.Record(ctx, p, hashPart(path))
	if err == nil && rec.StorePath != path {
		t.Fatalf("record of %s names %s", path, rec.StorePath)
	}
	answer("record", err)
	answer("directories", c.Directories(ctx, p, root, func(castore.Digest, *castore.Directory, []byte) error { return nil }))
	blobs, chunks := fileDigests(t, files)
	for _, b := range blobs {
		_, err := c.ChunkLists(ctx, p, []transfer.BlobRef{b})
		answer("chunk list "+b.Digest.String(), err)
	}
	for _, d := range chunks {
		for _, zstd := range []bool{false, true} {
			answer(fmt.Sprintf("chunk %s (zstd %v)", d, zstd), c.Chunks(ctx, p, []castore.Digest{d}, zstd, nil,
				func(castore.Digest, []byte, []byte) error { return nil }))
		}
	}
	return got, refused
}

// waitSharedCounted waits, bounded, for the node to know how many of its
// paths it shares, and returns its status.
func (n *nodeProc) waitSharedCounted() *node.Status {
	n.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		s := n.status()
		if s.SharedCounted {
			return s
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("the node never finished counting its shared paths:\n%s", n.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestP2PPrivateImports: a node with a signing key and default settings
// imports a secret without flags, one with --private (though a key the
// node trusts signed it), one through `nix copy --to` its socket, and a
// path with --sign. An anonymous peer asks for each private one by every
// message of the transfer protocol and gets nothing, where the same
// questions about the signed path are answered; a node that trusts both
// keys can fetch only the signed path, and serves it to a Nix client. The
// local HTTP cache still serves the private paths, and status counts
// them, also after a restart.
func TestP2PPrivateImports(t *testing.T) {
	nixtest.Require(t)
	a := newNodeAt(t, "127.0.0.41", "node-a-1")
	other := filepath.Join(t.TempDir(), "other.sec")
	otherPub := strings.TrimSpace(a.run("keygen", "--name", "other-1", "--out", other))
	a.args = append(a.args, "--trusted-public-key", otherPub)
	a.start()
	pubA := a.status().PublicKey

	filesOf := map[string]map[string][]byte{}
	add := func(name string) string {
		files := secretFiles(name)
		p := addTree(t, name, files)
		filesOf[p] = files
		return p
	}
	plain, private, signed := add("plain-secret"), add("private-secret"), add("signed-public")
	nixtest.Output(t, "nix", "store", "sign", "--key-file", other, private)
	src := newSrcStore(t)
	secret := fmt.Sprint("copied secret ", time.Now().UnixNano())
	copied := src.add("copied-secret", map[string]string{"key": secret})
	filesOf[copied] = map[string][]byte{"key": []byte(secret)}

	if out := a.run("import", plain); !strings.Contains(out, "0 of the new ones shared") {
		t.Errorf("import without flags: %s", out)
	}
	if out := a.run("import", "--private", private); !strings.Contains(out, "0 of the new ones shared") {
		t.Errorf("import --private: %s", out)
	}
	if out := a.run("import", "--sign", signed); !strings.Contains(out, "1 of the new ones shared") {
		t.Errorf("import --sign: %s", out)
	}
	nixtest.Output(t, "nix", "copy", "--from", src.dir, "--to", "unix://"+a.socket(), copied)
	out, err := a.try("import", "--sign", "--private", signed)
	if lines := strings.Split(strings.TrimSpace(out), "\n"); err == nil || len(lines) != 1 || !strings.Contains(out, "exclude each other") {
		t.Errorf("import --sign --private: %v\n%s", err, out)
	}

	// The owner's local clients still get every path.
	for _, p := range []string{plain, private, signed, copied} {
		if code, _ := a.get("/" + hashPart(p) + ".narinfo"); code != 200 {
			t.Errorf("A's own cache answers %d for %s", code, p)
		}
	}
	if s := a.waitSharedCounted(); s.SharedPaths != 1 || s.PrivatePaths != 3 || s.Paths != 4 {
		t.Errorf("status: %d paths, %d shared, %d private; want 4, 1, 3", s.Paths, s.SharedPaths, s.PrivatePaths)
	}
	if st := a.run("status"); !strings.Contains(st, "4 (1 shared with peers, 3 private)") {
		t.Errorf("status says:\n%s", st)
	}

	// The anonymous peer.
	anon, idA := anonymousPeer(t, a, "127.0.0.43")
	ctx := context.Background()
	for _, p := range []string{plain, private, copied, signed} {
		info, err := a.client.Path(ctx, hashPart(p))
		if err != nil {
			t.Fatalf("A's record of %s: %v", p, err)
		}
		if wantPrivate := p == private; info.Private != wantPrivate {
			t.Errorf("%s: private %v in A's index", p, info.Private)
		}
		got, refused := probe(t, anon, idA, p, info.Root.Digest, filesOf[p])
		if p == signed {
			if len(refused) > 0 {
				t.Fatalf("the signed path was refused: %v (the probe asks wrong)", refused)
			}
			continue
		}
		if len(got) > 0 {
			t.Errorf("an anonymous peer got, of the private path %s: %s", p, strings.Join(got, ", "))
		}
	}

	// A node that trusts every key involved.
	b := newNodeAt(t, "127.0.0.42", "", "--bootstrap", a.p2pAddr(), "--trusted-public-key", pubA, "--trusted-public-key", otherPub)
	b.start()
	a.waitPeers(2)
	a.waitAnnounced()
	for _, p := range []string{plain, private, copied} {
		if out, err := b.try("fetch", p); err == nil {
			t.Errorf("B fetched the private path %s:\n%s", p, out)
		}
		if code, _ := b.get("/" + hashPart(p) + ".narinfo"); code != 404 {
			t.Errorf("B's narinfo of the private path %s: %d", p, code)
		}
	}
	if out := b.run("fetch", signed); !strings.Contains(out, "fetched 1 path ") {
		t.Fatalf("fetch of the signed path on B: %s", out)
	}
	client := filepath.Join(t.TempDir(), "client")
	nixtest.Output(t, "nix", "copy", "--from", b.url, "--to", client, "--option", "trusted-public-keys", pubA, signed)
	if got, want := pathInfo(t, client, signed)[signed].NarHash, pathInfo(t, "", signed)[signed].NarHash; got != want {
		t.Errorf("the client got %s from B, want %s", got, want)
	}
	if s := b.waitSharedCounted(); s.Paths != 1 || s.SharedPaths != 1 {
		t.Errorf("B: %d paths, %d shared", s.Paths, s.SharedPaths)
	}

	// The counts at start come from the index.
	a.stop()
	a.start()
	if s := a.waitSharedCounted(); s.SharedPaths != 1 || s.PrivatePaths != 3 {
		t.Errorf("after a restart: %d shared, %d private; want 1, 3", s.SharedPaths, s.PrivatePaths)
	}
}
