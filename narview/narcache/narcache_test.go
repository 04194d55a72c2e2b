package narcache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/p2pstore/p2pstore/narview/nar"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

// narOf makes a NAR-like byte string and its Key (uncompressed).
func narOf(b byte, size int) ([]byte, Key) {
	nar := bytes.Repeat([]byte{b}, size)
	return nar, Key{storepath.NarHash(sha256.Sum256(nar)), nar0}
}

const nar0 = nar.CompressionNone

func render(nar []byte) func(context.Context, io.Writer) error {
	return func(_ context.Context, w io.Writer) error {
		_, err := w.Write(nar)
		return err
	}
}

// fill admits and fills a NAR as the node does for its second request.
func fill(t *testing.T, c *Cache, nar []byte, h Key) {
	t.Helper()
	if c.Admit(h, int64(len(nar))) {
		t.Fatal("admitted on its first request")
	}
	if !c.Admit(h, int64(len(nar))) {
		t.Fatal("not admitted on its second request")
	}
	if err := c.Fill(context.Background(), h, int64(len(nar)), render(nar)); err != nil {
		t.Fatal(err)
	}
}

func readAll(t *testing.T, c *Cache, h Key) []byte {
	t.Helper()
	f, _, ok := c.Open(h)
	if !ok {
		t.Fatal("cache lacks the NAR")
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestFillServesTheSameBytes(t *testing.T) {
	c, err := Open(t.TempDir(), 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	nar, h := narOf('a', 1000)
	if _, _, ok := c.Open(h); ok {
		t.Fatal("an empty cache has a NAR")
	}
	fill(t, c, nar, h)
	if got := readAll(t, c, h); !bytes.Equal(got, nar) {
		t.Fatal("cached bytes differ from the NAR")
	}
	if c.Admit(h, 1000) {
		t.Fatal("a cached NAR admitted again")
	}
	if s := c.Stats(); s.Entries != 1 || s.Bytes != 1000 || s.Hits != 1 || s.Fills != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestFillRefusesWrongBytes(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	nar, h := narOf('a', 1000)
	bad := bytes.Clone(nar)
	bad[500] ^= 1
	for name, r := range map[string]func(context.Context, io.Writer) error{
		"flipped byte": render(bad),
		"short":        render(nar[:999]),
		"long":         render(append(bytes.Clone(nar), 'x')),
	} {
		c.Admit(h, 1000)
		if !c.Admit(h, 1000) {
			t.Fatalf("%s: not admitted", name)
		}
		err := c.Fill(context.Background(), h, 1000, r)
		if err == nil {
			t.Fatalf("%s: kept", name)
		}
		if name == "flipped byte" && !errors.Is(err, ErrMismatch) {
			t.Fatalf("flipped byte: %v, want ErrMismatch", err)
		}
		if _, _, ok := c.Open(h); ok {
			t.Fatalf("%s: served", name)
		}
	}
	if s := c.Stats(); s.Bytes != 0 || s.Entries != 0 {
		t.Fatalf("refused fills left %+v", s)
	}
	if des, _ := os.ReadDir(dir); len(des) != 0 {
		t.Fatalf("refused fills left %d files", len(des))
	}
}

func TestOneFillAtATime(t *testing.T) {
	c, err := Open(t.TempDir(), 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, ha := narOf('a', 100)
	_, hb := narOf('b', 100)
	c.Admit(ha, 100)
	c.Admit(hb, 100)
	if !c.Admit(ha, 100) {
		t.Fatal("a not admitted")
	}
	if c.Admit(hb, 100) {
		t.Fatal("b admitted while a fills")
	}
	if err := c.Fill(context.Background(), ha, 100, render(a)); err != nil {
		t.Fatal(err)
	}
	// b's first request is still remembered.
	if !c.Admit(hb, 100) {
		t.Fatal("b not admitted after a's fill")
	}
}

func TestEvictsLeastRecentlyServed(t *testing.T) {
	c, err := Open(t.TempDir(), 2500, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, ha := narOf('a', 1000)
	b, hb := narOf('b', 1000)
	d, hd := narOf('d', 1000)
	fill(t, c, a, ha)
	fill(t, c, b, hb)
	// A reader of b keeps its bytes while b goes.
	fb, _, _ := c.Open(hb)
	defer fb.Close()
	readAll(t, c, ha) // a served after b
	fill(t, c, d, hd)
	if _, _, ok := c.Open(hb); ok {
		t.Fatal("b, least recently served, stayed")
	}
	if got, _ := io.ReadAll(fb); !bytes.Equal(got, b) {
		t.Fatal("a reader of an evicted NAR lost its bytes")
	}
	readAll(t, c, ha)
	readAll(t, c, hd)
	if s := c.Stats(); s.Bytes != 2000 {
		t.Fatalf("bytes %d, want 2000", s.Bytes)
	}
	big, hbig := narOf('x', 1300)
	c.Admit(hbig, int64(len(big)))
	if c.Admit(hbig, int64(len(big))) {
		t.Fatal("a NAR over half the cache admitted")
	}
}

func TestReopenKeepsWholeFilesOnly(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, ha := narOf('a', 1000)
	fill(t, c, a, ha)
	// A fill a crash interrupted, and a stray file.
	for _, name := range []string{"fill-123.tmp", "stray"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c, err = Open(dir, 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, c, ha); !bytes.Equal(got, a) {
		t.Fatal("reopened cache lost its NAR")
	}
	if des, _ := os.ReadDir(dir); len(des) != 1 {
		t.Fatalf("%d files after reopening, want 1", len(des))
	}
	// A smaller bound evicts at open.
	c, err = Open(dir, 500, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, ok := c.Open(ha); ok {
		t.Fatal("a NAR over the bound kept")
	}
}

func TestAdopt(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(filepath.Join(dir, "cache"), 2500, nil)
	if err != nil {
		t.Fatal(err)
	}
	spool := func(nar []byte) string {
		name := filepath.Join(dir, "spool.nar")
		if err := os.WriteFile(name, nar, 0o600); err != nil {
			t.Fatal(err)
		}
		return name
	}
	a, ha := narOf('a', 1000)
	if err := c.Adopt(spool(a), ha.NarHash, 1000); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, c, ha); !bytes.Equal(got, a) {
		t.Fatal("adopted bytes differ")
	}
	if _, err := os.Stat(filepath.Join(dir, "spool.nar")); !os.IsNotExist(err) {
		t.Fatal("the spool was copied, not renamed")
	}
	// A file of the wrong size is refused and leaves the cache as it was.
	b, hb := narOf('b', 1000)
	if err := c.Adopt(spool(b[:900]), hb.NarHash, 1000); err == nil {
		t.Fatal("a short spool adopted")
	}
	if s := c.Stats(); s.Entries != 1 || s.Bytes != 1000 {
		t.Fatalf("after a refused adoption: %+v", s)
	}
	// Over half the cache: left where it is.
	big, hbig := narOf('x', 1300)
	if err := c.Adopt(spool(big), hbig.NarHash, 1300); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := c.Open(hbig); ok {
		t.Fatal("a NAR over half the cache adopted")
	}
}

// TestZstd: a .nar.zst is kept when it decompresses to the NAR, beside the
// uncompressed file of the same NAR, and Remove drops both.
func TestZstd(t *testing.T) {
	c, err := Open(t.TempDir(), 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, ka := narOf('a', 10000)
	kz := Key{ka.NarHash, nar.CompressionZstd}
	compressed := func(b []byte) []byte {
		e, _ := zstd.NewWriter(nil)
		return e.EncodeAll(b, nil)
	}
	bad := bytes.Clone(a)
	bad[5000] = 'b'
	for _, wrong := range [][]byte{compressed(bad), compressed(a[:9999]), a} {
		c.Admit(kz, 10000)
		if !c.Admit(kz, 10000) {
			t.Fatal("not admitted")
		}
		if err := c.Fill(context.Background(), kz, 10000, render(wrong)); !errors.Is(err, ErrMismatch) {
			t.Fatalf("a wrong .nar.zst: %v, want ErrMismatch", err)
		}
	}
	fill(t, c, a, ka)
	c.Admit(kz, 10000)
	c.Admit(kz, 10000)
	if err := c.Fill(context.Background(), kz, 10000, render(compressed(a))); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, c, kz); !bytes.Equal(got, compressed(a)) {
		t.Fatal("the .nar.zst's bytes differ")
	}
	if size, ok := c.Size(kz); !ok || size != int64(len(compressed(a))) {
		t.Fatalf("Size %d %v", size, ok)
	}
	if s := c.Stats(); s.Entries != 2 || s.Bytes != 10000+int64(len(compressed(a))) {
		t.Fatalf("stats %+v", s)
	}
	c.Remove(ka.NarHash)
	if s := c.Stats(); s.Entries != 0 || s.Bytes != 0 {
		t.Fatalf("after Remove: %+v", s)
	}
}
