package nar

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/p2pstore/p2pstore/castore"
)

// TestZstdSizer: the size castore's ZstdSizer counts for a tree is the
// length of the .nar.zst a ZstdWriter makes of it, once the compressor
// has made every frame (with frames of all kinds: stored, incompressible,
// and raw frames of framing larger than a block); before that it does not
// guess.
func TestZstdSizer(t *testing.T) {
	s, root, want := storedTree(t)
	ctx := context.Background()
	r := s.NewReader()
	defer r.Close()
	if err := RenderSpliced(ctx, r.NewZstdSizer(), root, r); !errors.Is(err, castore.ErrNotCompressed) {
		t.Fatalf("sizing before the frames are made: %v, want ErrNotCompressed", err)
	}
	if _, err := s.CompressPending(ctx); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := RenderSpliced(ctx, r.NewZstdWriter(&out), root, r); err != nil {
		t.Fatal(err)
	}
	sizer := r.NewZstdSizer()
	if err := RenderSpliced(ctx, sizer, root, r); err != nil {
		t.Fatal(err)
	}
	if sizer.N != int64(out.Len()) {
		t.Fatalf("sizer counted %d bytes, the .nar.zst has %d", sizer.N, out.Len())
	}
	d, _ := zstd.NewReader(nil)
	defer d.Close()
	if got, err := d.DecodeAll(out.Bytes(), nil); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the .nar.zst does not decompress to the NAR: %v", err)
	}
}
