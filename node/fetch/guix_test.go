package fetch

import (
	"context"
	"errors"
	"testing"

	"github.com/p2pstore/p2pstore/narview/guix"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
)

// guixSeed makes the seed's path a Guix one: its Guix narinfo signed by
// a Guix key, and, to show they count for nothing, a Nix signature and
// root signatures by the seed's (trusted) Nix key.
func guixSeed(t *testing.T) (*seed, guix.SecretKey) {
	t.Helper()
	s := newSeed(t, true)
	key, err := guix.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	info := s.info
	info.StorePath = "/gnu/store/" + testHash + "-tree"
	info.Sigs = []string{s.key.Sign(info.Fingerprint())}
	ni := &guix.NarInfo{StorePath: info.StorePath, NarHash: info.NarHash, NarSize: info.NarSize, References: []string{}}
	if err := ni.Sign(key, "farm"); err != nil {
		t.Fatal(err)
	}
	ni.NARs = []guix.NAR{{URL: "nar/zstd/" + testHash + "-tree", Compression: "zstd"}}
	info.GuixNarinfo = ni.String()
	return s, key
}

// guixHarness is a fetcher of a node with a Guix store that trusts keys.
func guixHarness(t *testing.T, s *seed, keys []guix.PublicKey) *harness {
	h := newHarness(t, s, &memSource{id: "a", seed: s})
	h.f.cfg.GuixStoreDir = "/gnu/store"
	h.f.cfg.GuixTrusted = func(info *pathinfo.Info) error { return info.GuixTrustedBy(keys) }
	return h
}

// A Guix path's record is taken when a trusted Guix key signed its Guix
// narinfo, which is kept byte for byte; its tree is checked against the
// NarHash, the Nix key's root signatures being dropped.
func TestFetchGuix(t *testing.T) {
	s, key := guixSeed(t)
	h := guixHarness(t, s, []guix.PublicKey{key.Public()})
	var report Report
	h.f.cfg.Done = func(r Report) { report = r }
	info, _, err := h.f.Fetch(context.Background(), testHash)
	if err != nil {
		t.Fatal(err)
	}
	if info.GuixNarinfo != s.info.GuixNarinfo {
		t.Errorf("the Guix narinfo came as\n%s\nnot\n%s", info.GuixNarinfo, s.info.GuixNarinfo)
	}
	if len(info.Sigs) != 0 || len(info.RootSigs) != 0 || report.ListsSigned {
		t.Errorf("Nix signatures kept on a Guix path: %q, root %q, lists signed %v", info.Sigs, info.RootSigs, report.ListsSigned)
	}
	h.checkStored(t, s)
}

// A Guix path is not taken on a Guix key the node does not trust, on Nix
// signatures alone, nor with a trusted narinfo of another NAR.
func TestFetchGuixUntrusted(t *testing.T) {
	s, key := guixSeed(t)
	stranger, err := guix.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := guixHarness(t, s, []guix.PublicKey{stranger.Public()}).f.Fetch(context.Background(), testHash); !errors.Is(err, pathinfo.ErrNotFound) {
		t.Errorf("a Guix narinfo by an untrusted key: %v", err)
	}
	// A harness without a Guix store judges it by Nix keys: the path is
	// outside its store.
	if _, _, err := newHarness(t, s, &memSource{id: "a", seed: s}).f.Fetch(context.Background(), testHash); !errors.Is(err, pathinfo.ErrNotFound) {
		t.Errorf("a Guix path on a node without a Guix store: %v", err)
	}
	signed := s.info.GuixNarinfo
	s.info.GuixNarinfo = ""
	if _, _, err := guixHarness(t, s, []guix.PublicKey{key.Public()}).f.Fetch(context.Background(), testHash); !errors.Is(err, pathinfo.ErrNotFound) {
		t.Errorf("a Guix path with Nix signatures only: %v", err)
	}
	s.info.GuixNarinfo = signed
	s.info.NarSize++
	s.info.Sigs = []string{s.key.Sign(s.info.Fingerprint())}
	if _, _, err := guixHarness(t, s, []guix.PublicKey{key.Public()}).f.Fetch(context.Background(), testHash); !errors.Is(err, pathinfo.ErrNotFound) {
		t.Errorf("a Guix narinfo of another NAR: %v", err)
	}
}
