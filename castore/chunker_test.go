package castore

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"
)

func pseudoRandom(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func cuts(data []byte) []int {
	var out []int
	for len(data) > 0 {
		n := Cut(data)
		out = append(out, n)
		data = data[n:]
	}
	return out
}

// TestCutBounds checks the size limits and that the chunker reassembles
// what it was given, through the streaming Chunker as through Cut.
func TestCutBounds(t *testing.T) {
	data := pseudoRandom(1, 8<<20)
	sizes := cuts(data)
	total := 0
	for i, n := range sizes {
		total += n
		if n > MaxChunkSize || (n < MinChunkSize && i != len(sizes)-1) {
			t.Fatalf("chunk %d has %d bytes", i, n)
		}
	}
	if total != len(data) {
		t.Fatalf("chunks cover %d of %d bytes", total, len(data))
	}
	avg := len(data) / len(sizes)
	if avg < AvgChunkSize/2 || avg > AvgChunkSize*2 {
		t.Errorf("average chunk %d bytes, want near %d", avg, AvgChunkSize)
	}
	// The streaming Chunker, fed in odd-sized reads, cuts the same way.
	c := NewChunker(io.LimitReader(&oddReader{data: data}, int64(len(data))))
	var got []int
	var joined []byte
	for {
		chunk, err := c.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, len(chunk))
		joined = append(joined, chunk...)
	}
	if !bytes.Equal(joined, data) {
		t.Fatal("Chunker output differs from its input")
	}
	if len(got) != len(sizes) {
		t.Fatalf("Chunker made %d chunks, Cut %d", len(got), len(sizes))
	}
	for i := range got {
		if got[i] != sizes[i] {
			t.Fatalf("chunk %d: Chunker %d bytes, Cut %d", i, got[i], sizes[i])
		}
	}
}

type oddReader struct {
	data []byte
	n    int
}

func (r *oddReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	r.n++
	k := min(len(p), len(r.data), 1+r.n*7919%100000)
	copy(p, r.data[:k])
	r.data = r.data[k:]
	return k, nil
}

// TestCutShift checks the point of content-defined chunking: an insertion
// near the start moves only the first cuts.
func TestCutShift(t *testing.T) {
	data := pseudoRandom(2, 4<<20)
	shifted := append([]byte("an insertion"), data...)
	a, b := map[Digest]bool{}, 0
	for d := data; len(d) > 0; {
		n := Cut(d)
		a[Sum(d[:n])] = true
		d = d[n:]
	}
	total := 0
	for d := shifted; len(d) > 0; {
		n := Cut(d)
		total++
		if a[Sum(d[:n])] {
			b++
		}
		d = d[n:]
	}
	if b < total-2 {
		t.Errorf("only %d of %d chunks survive a 12-byte insertion", b, total)
	}
}

// TestCutVector pins the gear table and the parameters: changing either
// changes every node's chunks, which breaks dedup across versions.
func TestCutVector(t *testing.T) {
	got := cuts(pseudoRandom(3, 1<<20))
	want := []int{99696, 36746, 72576, 90646, 79838, 70030, 63472, 71424, 173487, 92218, 91687, 70851, 35905}
	if len(got) != len(want) {
		t.Fatalf("%d cuts, want %d: %v", len(got), len(want), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("cut %d at %d, want %d", i, got[i], want[i])
		}
	}
}

// TestCutMatchesByteAtATime checks the two-bytes-per-step scan against the
// plain FastCDC loop, on lengths of both parities around every bound.
func TestCutMatchesByteAtATime(t *testing.T) {
	plain := func(data []byte) int {
		n := min(len(data), MaxChunkSize)
		if n <= MinChunkSize {
			return n
		}
		var fp uint64
		for i := MinChunkSize; i < n; i++ {
			fp = fp<<1 + gear[data[i]]
			mask := maskEasy
			if i < AvgChunkSize {
				mask = maskHard
			}
			if fp&mask == 0 {
				return i + 1
			}
		}
		return n
	}
	data := pseudoRandom(4, 4<<20)
	for _, n := range []int{0, 1, MinChunkSize, MinChunkSize + 1, MinChunkSize + 2, AvgChunkSize - 1, AvgChunkSize, AvgChunkSize + 1, MaxChunkSize - 1, MaxChunkSize + 1} {
		for off := 0; off < 64; off++ {
			d := data[off*4099 : off*4099+n]
			if got, want := Cut(d), plain(d); got != want {
				t.Fatalf("Cut of %d bytes at %d: %d, want %d", n, off, got, want)
			}
		}
	}
	for d := data; len(d) > 0; {
		got, want := Cut(d), plain(d)
		if got != want {
			t.Fatalf("Cut %d, want %d", got, want)
		}
		d = d[got:]
	}
}
