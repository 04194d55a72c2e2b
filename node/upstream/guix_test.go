package upstream

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/p2pstore/p2pstore/narview/guix"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
)

// guixFixture is the fixture as a Guix path, its narinfo in a build
// farm's layout (signed normative part, then lzip and zstd entries, lzip
// first as the farms list it), signed by key.
func guixFixture(t *testing.T, seed uint64, key guix.SecretKey) (f *fixture, text string) {
	t.Helper()
	f = newFixture(t, seed, 64<<10)
	f.path = "/gnu/store/" + f.hash + "-hello+1"
	ni := &guix.NarInfo{StorePath: f.path, NarHash: f.narHash(), NarSize: uint64(len(f.nar)), References: []string{f.hash + "-hello+1"}}
	if err := ni.Sign(key, "farm"); err != nil {
		t.Fatal(err)
	}
	base := f.hash + "-hello+1"
	ni.NARs = []guix.NAR{
		{URL: guix.NARURL("lzip", base), Compression: "lzip", FileSize: 100},
		{URL: guix.NARURL("zstd", base), Compression: "zstd", FileSize: 200},
	}
	return f, ni.String()
}

func newGuixClient(t *testing.T, keys []guix.PublicKey, urls ...string) *Client {
	t.Helper()
	c, err := New(Config{URLs: urls, Guix: true, GuixKeys: keys, StoreDir: "/gnu/store", IdleTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// A Guix upstream: the narinfo signed by a trusted Guix key is kept byte
// for byte, the zstd NAR is taken (lzip, listed first, not asked for)
// at its percent-encoded URL, and the NAR decodes.
func TestGuixUpstream(t *testing.T) {
	key, err := guix.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	f, text := guixFixture(t, 1, key)
	rs := newRoutes()
	rs.text("/"+f.hash+".narinfo", text)
	base := f.hash + "-hello+1"
	rs.file("/nar/zstd/"+base, compress(t, "zstd", f.nar))
	rs.file("/nar/lzip/"+base, []byte("not an lzip file: never read"))
	srv := serve(t, rs)
	c := newGuixClient(t, []guix.PublicKey{key.Public()}, srv.URL)
	got, p := fetchNAR(t, c, f)
	if !bytes.Equal(got, f.nar) {
		t.Fatal("the NAR differs")
	}
	if p.Compression != "zstd" || !strings.Contains(p.URL, "/nar/zstd/"+f.hash+"-hello%2B1") {
		t.Errorf("took %s at %s", p.Compression, p.URL)
	}
	if p.Info.GuixNarinfo != text || p.Info.StorePath != f.path || len(p.Info.References) != 1 || p.Info.References[0] != f.path {
		t.Errorf("info %+v", p.Info)
	}
	if rs.hits("/nar/lzip/"+base) != 0 {
		t.Error("the lzip NAR was asked for")
	}
}

// A narinfo that offers only lzip (the farms' older paths): the lzip NAR
// is taken and decodes, by the lzip command and by internal/lzip.
func TestGuixUpstreamLzipOnly(t *testing.T) {
	for _, command := range []bool{true, false} {
		t.Run(fmt.Sprintf("command=%v", command), func(t *testing.T) {
			if !command {
				withoutCommand(t, "lzip")
			}
			key, err := guix.GenerateKey()
			if err != nil {
				t.Fatal(err)
			}
			f, text := guixFixture(t, 7, key)
			rs := newRoutes()
			rs.text("/"+f.hash+".narinfo", text[:strings.Index(text, "URL: nar/zstd")])
			base := f.hash + "-hello+1"
			rs.file("/nar/lzip/"+base, compress(t, "lzip", f.nar))
			srv := serve(t, rs)
			c := newGuixClient(t, []guix.PublicKey{key.Public()}, srv.URL)
			got, p := fetchNAR(t, c, f)
			if !bytes.Equal(got, f.nar) {
				t.Fatal("the NAR differs")
			}
			if p.Compression != "lzip" || !strings.Contains(p.URL, "/nar/lzip/"+f.hash+"-hello%2B1") {
				t.Errorf("took %s at %s", p.Compression, p.URL)
			}
		})
	}
}

// Every compression Guix knows is one the upstream client decodes and
// ranks.
func TestGuixPreference(t *testing.T) {
	for _, c := range guix.Compressions {
		if !slices.Contains(guixPreference, c) || !supported(c) {
			t.Errorf("%s: ranked %v, decoded %v", c, slices.Contains(guixPreference, c), supported(c))
		}
	}
}

// Not taken: a narinfo by a Guix key the node does not trust, a Nix
// narinfo, one of another path.
func TestGuixUpstreamRefuses(t *testing.T) {
	key, _ := guix.GenerateKey()
	stranger, _ := guix.GenerateKey()
	rs := newRoutes()
	srv := serve(t, rs)
	c := newGuixClient(t, []guix.PublicKey{key.Public()}, srv.URL)
	lookup := func(f *fixture) error {
		_, err := c.Lookup(ctxTimeout(t, 10*time.Second), f.hash)
		return err
	}

	f, text := guixFixture(t, 2, stranger)
	rs.text("/"+f.hash+".narinfo", text)
	if err := lookup(f); !errors.Is(err, pathinfo.ErrNotFound) {
		t.Errorf("an untrusted key: %v", err)
	}
	f, _ = guixFixture(t, 3, key)
	nix := strings.Replace(f.narinfo("nar/x.nar", "none"), "/nix/store", "/gnu/store", 1)
	rs.text("/"+f.hash+".narinfo", nix)
	if err := lookup(f); err == nil {
		t.Error("a Nix narinfo was taken")
	}
	f, text = guixFixture(t, 5, key)
	other, _ := guixFixture(t, 6, key)
	rs.text("/"+other.hash+".narinfo", text)
	if err := lookup(other); err == nil {
		t.Errorf("a narinfo of another path: %v", err)
	}
}
