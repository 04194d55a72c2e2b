// Package lzip decodes lzip files (.lz), as Guix's substitute servers
// compress NARs, in pure Go: the framing is read here, the LZMA stream
// inside each member by the LZMA decoder of github.com/ulikunitz/xz/lzma.
//
// The format, as the lzip manual's "File format" and "Stream format"
// sections define it and as this package relies on it:
//
//   - A file is one or more members, one after the other, nothing between
//     them. All numbers are little endian.
//   - A member is a 6-byte header, an LZMA stream, a 20-byte trailer.
//   - Header: the magic "LZIP", a version byte (1), and a coded dictionary
//     size byte: bits 4-0 give a power of two from 2^12 to 2^29, bits 7-5
//     how many sixteenths of it to take away. The size must lie between
//     4 KiB and 512 MiB.
//   - The LZMA stream has no header of its own: its properties are fixed
//     (lc=3, lp=0, pb=2), its size is unknown, and it ends with the
//     end-of-stream marker. It is fed to ulikunitz/xz/lzma behind a
//     13-byte header of the classic .lzma format made here, saying those
//     properties, the dictionary size and "size unknown".
//   - Trailer: CRC32 (IEEE, as gzip's) of the member's data, its data
//     size (8 bytes), and the member's size, header and trailer included
//     (8 bytes). Every trailer is checked: a mismatch is ErrCorrupt.
//
// Decisions:
//   - Anything after the last member is an error (ErrCorrupt), as lzip's
//     --trailing-error makes it: the lzip command ignores most trailing
//     data, but a NAR from a substitute server has none, and one that
//     does was damaged or tampered with on the way. The node runs the
//     command with --trailing-error too, so both decoders agree.
//   - NewReader takes the most data the file may decode to (a NAR's
//     NarSize): more is an error as soon as it is decoded, and no
//     dictionary is made larger than that (LZMA refers back only into
//     data already decoded), so a header asking for 512 MiB does not get
//     it for a small NAR. ulikunitz/xz/lzma allocates the whole
//     dictionary up front.
//   - lzip allows only the end-of-stream marker; the LZMA decoder ends a
//     member at any marker (lzlib's sync flush marker among them), and the
//     trailer check that follows then fails: never silently wrong data.
//   - A package of its own, under internal: a compression format, not a
//     view of a store (narview), used by the upstream client only, and
//     shaped for it (the size bound, strict trailing data) rather than
//     as a general library.
//
// The lzip command decodes faster: through node/upstream, go1.25.0's NAR
// at 70 MB/s against 47-50 MB/s here, 0.62 of `lzip -dc` (BENCHMARKS.md,
// Guix (issue 18), "lzip"), the time in ulikunitz/xz/lzma's range
// decoder. node/upstream runs the command where it is installed, and
// this package otherwise.
package lzip

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/ulikunitz/xz/lzma"
)

const (
	headerSize  = 6
	trailerSize = 20
	minDictSize = 4 << 10
	maxDictSize = 512 << 20
	// lzmaProperties is the LZMA properties byte of lc=3, lp=0, pb=2,
	// coded as (pb*5+lp)*9+lc.
	lzmaProperties = (2*5+0)*9 + 3
)

var magic = [4]byte{'L', 'Z', 'I', 'P'}

// ErrCorrupt is wrapped by every error about the file itself: a bad
// header, a failed check, a truncated member, trailing data.
var ErrCorrupt = errors.New("lzip: corrupt file")

// Reader decodes an lzip file.
type Reader struct {
	in      *bufio.Reader
	maxSize int64 // most data the file may hold; <= 0: no bound
	total   int64 // data decoded, all members
	err     error // once set, every Read returns it

	// The member being decoded; dec is nil between members.
	member  int   // 1 for the first
	offset  int64 // where it starts in the file
	dec     *lzma.Reader
	stream  *lzmaInput
	crc     uint32
	decoded int64 // its data so far
}

// NewReader reads the first member's header from r and returns a Reader
// of the file's data. maxSize, when > 0, is the most data the file may
// hold (see the package doc). r is read through a bufio.Reader unless it
// is one, and so is read ahead of what the Reader consumes.
func NewReader(r io.Reader, maxSize int64) (*Reader, error) {
	in, ok := r.(*bufio.Reader)
	if !ok {
		in = bufio.NewReader(r)
	}
	z := &Reader{in: in, maxSize: maxSize}
	var first [1]byte
	if _, err := io.ReadFull(in, first[:]); err != nil {
		if err == io.EOF {
			return nil, fmt.Errorf("%w: empty input", ErrCorrupt)
		}
		return nil, err
	}
	if err := z.startMember(first[0]); err != nil {
		return nil, err
	}
	return z, nil
}

// Read reads decoded data. It returns io.EOF only once every member has
// decoded and checked, and nothing follows the last one.
func (z *Reader) Read(p []byte) (int, error) {
	if z.err != nil {
		return 0, z.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if z.dec == nil {
			if err := z.nextMember(); err != nil {
				z.err = err
				return 0, err
			}
		}
		n, err := z.dec.Read(p)
		if z.maxSize > 0 && z.total+int64(n) > z.maxSize {
			z.err = fmt.Errorf("%w: decodes to more than the %d bytes expected", ErrCorrupt, z.maxSize)
			return int(z.maxSize - z.total), z.err
		}
		if n > 0 {
			z.crc = crc32.Update(z.crc, crc32.IEEETable, p[:n])
			z.decoded += int64(n)
			z.total += int64(n)
		}
		switch {
		case err == io.EOF:
			if err := z.endMember(); err != nil {
				z.err = err
				return n, err
			}
			if n > 0 {
				return n, nil
			}
		case z.stream.err != nil:
			// The input failed, not the data.
			z.err = fmt.Errorf("lzip: member %d: reading: %w", z.member, z.stream.err)
			return n, z.err
		case err != nil:
			z.err = z.corrupt("LZMA stream at byte %d: %w", z.offset+headerSize+z.stream.n, err)
			return n, z.err
		default:
			return n, nil
		}
	}
}

// nextMember starts the member after the one just ended, or answers
// io.EOF at the end of the input.
func (z *Reader) nextMember() error {
	b, err := z.in.ReadByte()
	if err == io.EOF {
		return io.EOF
	}
	if err != nil {
		return err
	}
	return z.startMember(b)
}

// startMember reads the header of the next member, whose first byte is
// read already, and starts decoding its LZMA stream.
func (z *Reader) startMember(first byte) error {
	z.member++
	if z.member > 1 {
		z.offset += headerSize + z.stream.n + trailerSize
	}
	var h [headerSize]byte
	h[0] = first
	n, err := io.ReadFull(z.in, h[1:])
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
		return err
	}
	got := h[:min(1+n, len(magic))]
	switch {
	case !bytes.HasPrefix(magic[:], got) && z.member > 1:
		return fmt.Errorf("%w: data after the last member (at byte %d)", ErrCorrupt, z.offset)
	case !bytes.HasPrefix(magic[:], got) || len(got) < len(magic) && z.member == 1:
		return fmt.Errorf("%w: no lzip header (the magic is not %q)", ErrCorrupt, magic[:])
	case 1+n < headerSize:
		return z.corrupt("the header is cut short: %w", io.ErrUnexpectedEOF)
	}
	if h[4] != 1 {
		return z.corrupt("version %d, want 1", h[4])
	}
	dictSize, ok := decodeDictSize(h[5])
	if !ok {
		return z.corrupt("coded dictionary size %#02x is out of range", h[5])
	}
	// No dictionary larger than the data may still be (see the package
	// doc); ulikunitz/xz/lzma makes it at least lzma.MinDictCap.
	if z.maxSize > 0 {
		dictSize = max(min(dictSize, z.maxSize-z.total), lzma.MinDictCap)
	}
	z.stream = &lzmaInput{in: z.in}
	z.stream.header[0] = lzmaProperties
	binary.LittleEndian.PutUint32(z.stream.header[1:5], uint32(dictSize))
	binary.LittleEndian.PutUint64(z.stream.header[5:], ^uint64(0)) // size unknown: ends at the marker
	dec, err := lzma.NewReader(z.stream)
	switch {
	case z.stream.err != nil:
		return fmt.Errorf("lzip: member %d: reading: %w", z.member, z.stream.err)
	case err == io.EOF:
		return z.corrupt("LZMA stream: %w", io.ErrUnexpectedEOF)
	case err != nil:
		return z.corrupt("LZMA stream: %w", err)
	}
	z.dec, z.crc, z.decoded = dec, 0, 0
	return nil
}

// endMember checks the trailer of the member whose LZMA stream just
// ended.
func (z *Reader) endMember() error {
	var t [trailerSize]byte
	if _, err := io.ReadFull(z.in, t[:]); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return z.corrupt("the trailer is cut short: %w", io.ErrUnexpectedEOF)
		}
		return err
	}
	crc := binary.LittleEndian.Uint32(t[0:4])
	dataSize := binary.LittleEndian.Uint64(t[4:12])
	memberSize := binary.LittleEndian.Uint64(t[12:20])
	if crc != z.crc {
		return z.corrupt("CRC32 of the data is %08x, the trailer says %08x", z.crc, crc)
	}
	if dataSize != uint64(z.decoded) {
		return z.corrupt("%d bytes of data, the trailer says %d", z.decoded, dataSize)
	}
	if size := uint64(headerSize + z.stream.n + trailerSize); memberSize != size {
		return z.corrupt("%d bytes long, the trailer says %d", size, memberSize)
	}
	z.dec = nil
	return nil
}

// corrupt is an ErrCorrupt about the current member.
func (z *Reader) corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: member %d (at byte %d): %w", ErrCorrupt, z.member, z.offset, fmt.Errorf(format, args...))
}

// decodeDictSize decodes a header's dictionary size byte.
func decodeDictSize(b byte) (int64, bool) {
	exp := b & 0x1f
	if exp < 12 || exp > 29 {
		return 0, false
	}
	base := int64(1) << exp
	size := base - int64(b>>5)*(base/16)
	return size, size >= minDictSize && size <= maxDictSize
}

// lzmaInput is what the LZMA decoder reads: the .lzma header made for the
// member, then the member's LZMA stream, counted.
type lzmaInput struct {
	header [lzma.HeaderLen]byte
	sent   int // header bytes read
	in     *bufio.Reader
	n      int64 // stream bytes read
	err    error // the input's error, but io.EOF
}

// Read serves the header: the decoder reads it with io.ReadFull, and the
// stream byte by byte with ReadByte.
func (s *lzmaInput) Read(p []byte) (int, error) {
	if s.sent == len(s.header) {
		return 0, io.EOF // not asked for: the stream is read with ReadByte
	}
	n := copy(p, s.header[s.sent:])
	s.sent += n
	return n, nil
}

func (s *lzmaInput) ReadByte() (byte, error) {
	b, err := s.in.ReadByte()
	switch {
	case err == nil:
		s.n++
	case err != io.EOF:
		s.err = err
	}
	return b, err
}
