package castore

import (
	"bytes"
	"context"
	"os/exec"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// zstdBlobs writes a stream of "framing" bytes and blobs through a
// ZstdWriter, the way the NAR renderer does, and returns the stream and
// the plain bytes it must decode to.
func zstdStream(t *testing.T, s *Store, blobs [][]byte, digests []Digest) (stream, plain []byte) {
	t.Helper()
	r := s.NewReader()
	defer r.Close()
	var out bytes.Buffer
	zw := r.NewZstdWriter(&out)
	for i, b := range blobs {
		sep := bytes.Repeat([]byte{byte(i)}, []int{3, 255, 256, 70000, 200000}[i%5])
		zw.Write(sep)
		plain = append(plain, sep...)
		refs, err := r.FileChunks(context.Background(), digests[i], uint64(len(b)))
		if err != nil {
			t.Fatal(err)
		}
		for _, ref := range refs {
			if err := zw.SpliceChunk(ref); err != nil {
				t.Fatal(err)
			}
		}
		plain = append(plain, b...)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), plain
}

func checkZstd(t *testing.T, stream, plain []byte) {
	t.Helper()
	dec, _ := zstd.NewReader(nil)
	defer dec.Close()
	got, err := dec.DecodeAll(stream, nil)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("Go decoder: %v (got %d bytes, want %d)", err, len(got), len(plain))
	}
	if _, err := exec.LookPath("zstd"); err != nil {
		t.Log("zstd CLI missing: checked with the Go decoder only")
		return
	}
	cmd := exec.Command("zstd", "-d", "-c")
	cmd.Stdin = bytes.NewReader(stream)
	got, err = cmd.Output()
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("reference zstd: %v (got %d bytes, want %d)", err, len(got), len(plain))
	}
}

// TestZstdWriter covers the three ways a chunk goes out: compressed on the
// spot (no frame yet), as its stored frame, and as raw blocks when it does
// not compress; and the raw frames around them in every header size.
func TestZstdWriter(t *testing.T) {
	s, _ := openTemp(t)
	text := bytes.Repeat([]byte("compressible text, the same line again and again\n"), 20000) // ~1 MB, several chunks
	blobs := [][]byte{text, pseudoRandom(11, 700000), []byte("small"), pseudoRandom(12, 5000), text[:100000]}
	var digests []Digest
	w := s.NewWriter()
	for _, b := range blobs {
		d, _, err := w.PutBlob(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		digests = append(digests, d)
	}
	w.Commit()

	stream, plain := zstdStream(t, s, blobs, digests)
	checkZstd(t, stream, plain)

	n, err := s.CompressPending(context.Background())
	if err != nil || n == 0 {
		t.Fatalf("CompressPending: %d, %v", n, err)
	}
	if n, _ := s.CompressPending(context.Background()); n != 0 {
		t.Fatalf("second CompressPending did %d chunks", n)
	}
	stored, plain := zstdStream(t, s, blobs, digests)
	checkZstd(t, stored, plain)
	if len(stored) > len(plain)/2 {
		t.Errorf("stored frames: %d bytes for %d plain", len(stored), len(plain))
	}
	st, err := s.Verify(context.Background(), func(p string) { t.Error(p) })
	if err != nil || st.Frames == 0 {
		t.Fatalf("verify: %+v %v", st, err)
	}
}

func TestRawFrameHeaders(t *testing.T) {
	dec, _ := zstd.NewReader(nil)
	defer dec.Close()
	for _, n := range []int{1, 255, 256, 65791, 65792, 65793, maxRawBlock, maxRawBlock + 1, 1 << 20} {
		data := pseudoRandom(uint64(n), n)
		frame := rawFrameHeader(nil, n)
		for off := 0; off < n; off += maxRawBlock {
			k := min(maxRawBlock, n-off)
			frame = rawBlockHeader(frame, k, off+k == n)
			frame = append(frame, data[off:off+k]...)
		}
		got, err := dec.DecodeAll(frame, nil)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: %v", n, err)
		}
	}
}
