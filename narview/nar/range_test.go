package nar

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/p2pstore/p2pstore/castore"
)

// storedTree ingests the edge tree into a fresh castore; it returns the
// store, the root and the tree's NAR.
func storedTree(t *testing.T) (*castore.Store, castore.Node, []byte) {
	t.Helper()
	want := dumpBytes(t, edgeTree(t))
	s, err := castore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	w := s.NewWriter()
	root, err := Ingest(context.Background(), NewReader(bytes.NewReader(want)), w)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	return s, root, want
}

// chunkSource is a castore.Reader that records the chunks written.
type chunkSource struct {
	*castore.Reader
	chunks []castore.Digest
}

func (c *chunkSource) WriteChunks(ctx context.Context, w io.Writer, refs []castore.ChunkRef) error {
	for _, r := range refs {
		c.chunks = append(c.chunks, r.Digest)
	}
	return c.Reader.WriteChunks(ctx, w, refs)
}

// Every range, at offsets in the framing, in file contents, at chunk and
// padding boundaries and at the end, is the matching slice of the NAR.
func TestRenderRange(t *testing.T) {
	s, root, full := storedTree(t)
	size := int64(len(full))
	type rng struct{ off, n int64 }
	ranges := []rng{{0, -1}, {0, size}, {0, 1}, {size - 1, 1}, {size - 1, -1}, {size - 8, -1}, {5, 3}, {13, 20}}
	for off := int64(0); off < 4096; off += 7 {
		ranges = append(ranges, rng{off, 1 + off%37})
	}
	r := rand.New(rand.NewPCG(7, 7))
	for i := 0; i < 300; i++ {
		off := r.Int64N(size)
		n := min(1+r.Int64N(300<<10), size-off)
		ranges = append(ranges, rng{off, n})
	}
	for i := 0; i < 5; i++ {
		ranges = append(ranges, rng{r.Int64N(size), -1})
	}
	cr := s.NewReader()
	for _, g := range ranges {
		var out bytes.Buffer
		if err := RenderRange(context.Background(), &out, root, cr, g.off, g.n); err != nil {
			t.Fatalf("range %d+%d: %v", g.off, g.n, err)
		}
		end := size
		if g.n >= 0 {
			end = g.off + g.n
		}
		if !bytes.Equal(out.Bytes(), full[g.off:end]) {
			t.Fatalf("range %d+%d: %d bytes differ from the NAR's %d", g.off, g.n, out.Len(), end-g.off)
		}
	}
	defer cr.Close()
	// A range past the end fails rather than come out short.
	for _, g := range []rng{{size, -1}, {size - 1, 2}, {size + 10, 1}} {
		if err := RenderRange(context.Background(), io.Discard, root, cr, g.off, g.n); err == nil {
			t.Errorf("range %d+%d of a %d-byte NAR: no error", g.off, g.n, size)
		}
	}
}

// A range that starts in the last chunk of a large file reads neither the
// files before it nor that file's first chunks.
func TestRenderRangeSkipsWhatComesBefore(t *testing.T) {
	s, root, full := storedTree(t)
	// big/copy and big/random, the first files in NAR order, hold the same
	// 3 MiB: the range starts near the end of the second, big/random, and
	// runs into big/zeros.
	content := random(42, 3<<20)
	first := bytes.Index(full, content[:4096])
	second := bytes.Index(full[first+1:], content[:4096])
	if first < 0 || second < 0 {
		t.Fatal("big/copy's and big/random's contents not found in the NAR")
	}
	off := int64(first+1+second) + 3<<20 - 1000
	cr := s.NewReader()
	defer cr.Close()
	src := &chunkSource{Reader: cr}
	var out bytes.Buffer
	if err := RenderRange(context.Background(), &out, root, src, off, 5000); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), full[off:off+5000]) {
		t.Fatal("the range differs from the NAR")
	}
	// The range wrote only the last chunk of big/random, and big/zeros:
	// not big/copy, nor the first chunks of big/random.
	bigDir, err := s.Directory(root.Digest)
	if err != nil {
		t.Fatal(err)
	}
	var copyRefs []castore.ChunkRef
	bigDir.EachEntry(func(name []byte, n castore.Node) error {
		if string(name) == "big" {
			d, _ := s.Directory(n.Digest)
			d.EachEntry(func(name []byte, n castore.Node) error {
				if string(name) == "copy" {
					copyRefs, _ = s.BlobChunks(n.Digest, n.Size)
				}
				return nil
			})
		}
		return nil
	})
	if len(copyRefs) < 10 {
		t.Fatalf("big/copy has %d chunks; the test wants many", len(copyRefs))
	}
	if len(src.chunks) == 0 || src.chunks[0] != copyRefs[len(copyRefs)-1].Digest {
		t.Errorf("the range began with chunks %v, want big/random's last chunk first", src.chunks)
	}
}
