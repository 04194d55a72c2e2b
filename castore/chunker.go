package castore

import (
	"encoding/binary"
	"io"

	"github.com/zeebo/blake3"
)

// Content-defined chunking parameters. They are part of the network's
// contract in practice: two nodes only share chunks they cut the same way.
const (
	MinChunkSize = 16 << 10  // no cut before this many bytes
	AvgChunkSize = 64 << 10  // the normalised average a cut aims for
	MaxChunkSize = 256 << 10 // a cut is forced here
)

// FastCDC normalised chunking (level 2): below the average a cut needs more
// zero bits (rarer), above it fewer (likelier), which narrows the size
// distribution. With the gear hash shifting left one bit per byte, the top
// bits of the fingerprint depend on the last 64 bytes, so the masks take the
// top bits.
const (
	maskHard = uint64(1<<18-1) << (64 - 18) // 2 bits harder than log2(avg) = 16
	maskEasy = uint64(1<<14-1) << (64 - 14) // 2 bits easier
)

// gear holds 256 pseudo-random 64-bit values, derived from a fixed seed so
// that every node cuts identically without shipping a table.
var gear = func() (t [256]uint64) {
	var raw [256 * 8]byte
	h := blake3.New()
	h.WriteString("p2pstore gear table v1")
	_, _ = h.Digest().Read(raw[:])
	for i := range t {
		t[i] = binary.LittleEndian.Uint64(raw[i*8:])
	}
	return t
}()

// Cut returns the length of the first chunk of data. Callers pass at least
// MaxChunkSize bytes unless data is the end of the content; the rest of the
// content is chunked by calling Cut again on what follows the cut.
func Cut(data []byte) int {
	n := len(data)
	if n <= MinChunkSize {
		return n
	}
	if n > MaxChunkSize {
		n = MaxChunkSize
	}
	normal := AvgChunkSize
	if n < normal {
		normal = n
	}
	i, fp, cut := scanGear(data[:normal], MinChunkSize, 0, maskHard)
	if cut {
		return i
	}
	i, _, _ = scanGear(data[:n], i, fp, maskEasy)
	return i
}

// scanGear rolls the gear fingerprint fp over data[i:] and returns the
// position just past the first byte after which fp&mask is zero (cut is
// true), or len(data). Two bytes per step: the fingerprint after the
// second byte, fp<<2 + (gear[a]<<1 + gear[b]), does not wait for the one
// after the first, which halves the loop's chain of dependent adds; the
// cut points are the same as one byte at a time.
func scanGear(data []byte, i int, fp, mask uint64) (int, uint64, bool) {
	for ; i+1 < len(data); i += 2 {
		a, b := gear[data[i]], gear[data[i+1]]
		first := fp<<1 + a
		ab := a<<1 + b
		fp = fp<<2 + ab
		if first&mask == 0 {
			return i + 1, first, true
		}
		if fp&mask == 0 {
			return i + 2, fp, true
		}
	}
	if i < len(data) {
		fp = fp<<1 + gear[data[i]]
		i++
		if fp&mask == 0 {
			return i, fp, true
		}
	}
	return i, fp, false
}

// Chunker splits a stream into content-defined chunks, reusing one buffer.
type Chunker struct {
	r     io.Reader
	buf   []byte
	start int // first byte not yet returned
	end   int // end of valid data in buf
	eof   bool
}

// NewChunker returns a Chunker reading r. The buffer is reused across
// Reset calls, so one Chunker serves a whole NAR's files.
func NewChunker(r io.Reader) *Chunker {
	return &Chunker{r: r, buf: make([]byte, 4*MaxChunkSize)}
}

// Reset makes c read r from the start, keeping the buffer.
func (c *Chunker) Reset(r io.Reader) {
	c.r, c.start, c.end, c.eof = r, 0, 0, false
}

// Next returns the next chunk. The slice is valid until the next call.
// At the end of the stream it returns nil, io.EOF.
func (c *Chunker) Next() ([]byte, error) {
	if c.end-c.start < MaxChunkSize && !c.eof {
		if err := c.fill(); err != nil {
			return nil, err
		}
	}
	if c.start == c.end {
		return nil, io.EOF
	}
	n := Cut(c.buf[c.start:c.end])
	chunk := c.buf[c.start : c.start+n]
	c.start += n
	return chunk, nil
}

// Done reports whether the stream is exhausted: after a Next that
// returned the only chunk of a short stream, Done is true.
func (c *Chunker) Done() bool { return c.eof && c.start == c.end }

func (c *Chunker) fill() error {
	if c.start > 0 {
		c.end = copy(c.buf, c.buf[c.start:c.end])
		c.start = 0
	}
	for c.end < len(c.buf) {
		n, err := c.r.Read(c.buf[c.end:])
		c.end += n
		if err == io.EOF {
			c.eof = true
			return nil
		}
		if err != nil {
			return err
		}
	}
	return nil
}
