package castore

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/klauspost/compress/zstd"
	bolt "go.etcd.io/bbolt"

	"github.com/p2pstore/p2pstore/internal/splice"
)

// Compressed chunks. Every chunk also gets a zstd frame of its own, made in
// the background after import (CompressPending) and kept in the zstd pack
// set. A .nar.zst is then a concatenation of frames that is spliced from
// disk, not compressed per request: raw frames around the NAR framing bytes,
// and each chunk's stored frame (zstd decoders read concatenated frames as
// one stream). The same frames can travel to peers compressed for free.
// They cost about a third of the raw bytes on disk. A chunk fetched from a
// peer arrives as such a frame and is stored as the frame alone.

// frameLevel is the zstd level of stored frames: compressed once, served
// many times, so the default level rather than the fastest.
const frameLevel = zstd.SpeedDefault

// minSaving: a frame must save at least this fraction of the chunk to be
// kept; other chunks are served as raw zstd blocks.
const minSaving = 0.05

// maxStoredFrame bounds a stored frame's length: a frame from a peer that
// compresses nothing is a little longer than its chunk, ours are shorter.
const maxStoredFrame = 2 * MaxChunkSize

var (
	encoderOnce sync.Once
	encoder     *zstd.Encoder
	fastEncoder *zstd.Encoder

	decoderOnce sync.Once
	decoder     *zstd.Decoder
)

func encoders() (stored, fast *zstd.Encoder) {
	encoderOnce.Do(func() {
		// No frame checksum: the chunk's digest covers its content, and
		// a reader need not hash it twice. A window of one chunk, the
		// most a frame holds: the default window's history buffers are
		// 16 MB more of resident memory for the same frames.
		opts := []zstd.EOption{zstd.WithEncoderConcurrency(1), zstd.WithZeroFrames(true), zstd.WithEncoderCRC(false), zstd.WithWindowSize(MaxChunkSize)}
		encoder, _ = zstd.NewWriter(nil, append(opts, zstd.WithEncoderLevel(frameLevel))...)
		fastEncoder, _ = zstd.NewWriter(nil, append(opts, zstd.WithEncoderLevel(zstd.SpeedFastest))...)
	})
	return encoder, fastEncoder
}

// decodeFrame appends the chunk a stored frame holds to dst. A frame that
// carries a checksum (frames made before this version did) has it checked:
// frames go out as they are in a .nar.zst, and a client's decoder checks
// it.
func decodeFrame(frame, dst []byte) ([]byte, error) {
	decoderOnce.Do(func() {
		// Safe for concurrent DecodeAll calls, GOMAXPROCS at a time.
		decoder, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(2*MaxChunkSize))
	})
	n := len(dst)
	out, err := decoder.DecodeAll(frame, dst)
	if err == nil && (len(out) == n || len(out)-n > MaxChunkSize) {
		err = fmt.Errorf("a frame of %d bytes", len(out)-n)
	}
	if err != nil {
		return dst[:n], fmt.Errorf("castore: zstd frame: %w", err)
	}
	return out, nil
}

// CompressPending makes the zstd frames of chunks that have none yet, in
// batches that each commit as a Writer (frames fsynced, then indexed). It
// returns the number of chunks it compressed once none is left, or when ctx
// is done. Chunks are compressed in the order of their raw bytes in the
// packs, so that the frames of a path imported at once lie in its NAR's
// order too: a peer's batch of chunks, or a .nar.zst, then reads runs of
// frames rather than one frame at a time.
func (s *Store) CompressPending(ctx context.Context) (int, error) {
	enc, _ := encoders()
	done := 0
	var raw, frame []byte
	for {
		pending, err := s.chunksWithoutFrames(compressRound)
		if err != nil || len(pending) == 0 {
			return done, err
		}
		slices.SortFunc(pending, func(a, b pendingChunk) int {
			return cmp.Or(cmp.Compare(a.loc.Pack, b.loc.Pack), cmp.Compare(a.loc.Offset, b.loc.Offset))
		})
		for len(pending) > 0 {
			batch := pending[:min(len(pending), compressBatch)]
			pending = pending[len(batch):]
			w := s.NewWriter()
			for _, c := range batch {
				if err := ctx.Err(); err != nil {
					w.Abort()
					return done, err
				}
				if raw, err = s.readCheckedChunk(c.d, c.loc, raw[:0]); err != nil { // located by chunksWithoutFrames
					w.Abort()
					return done, err
				}
				frame = enc.EncodeAll(raw, frame[:0])
				if float64(len(frame)) > float64(len(raw))*(1-minSaving) {
					w.putIncompressible(c.d) // served as raw blocks
					continue
				}
				if err := w.PutFrame(c.d, frame); err != nil {
					w.Abort()
					return done, err
				}
			}
			if err := w.Commit(); err != nil {
				return done, err
			}
			done += len(batch)
		}
	}
}

const (
	compressRound = 1 << 18 // chunks CompressPending orders at once (14 MB of entries)
	compressBatch = 256     // chunks per commit
)

// pendingChunk is a chunk without a frame, and where its bytes are.
type pendingChunk struct {
	d   Digest
	loc chunkLoc
}

// chunksWithoutFrames returns up to n chunks that have no frame entry, by
// walking the two digest-ordered buckets side by side.
func (s *Store) chunksWithoutFrames(n int) ([]pendingChunk, error) {
	var out []pendingChunk
	err := s.db.View(func(tx *bolt.Tx) error {
		chunks := tx.Bucket(bucketChunks).Cursor()
		frames := tx.Bucket(bucketFrames).Cursor()
		fk, _ := frames.First()
		for k, v := chunks.First(); k != nil && len(out) < n; k, v = chunks.Next() {
			for fk != nil && bytes.Compare(fk, k) < 0 {
				fk, _ = frames.Next()
			}
			if fk == nil || !bytes.Equal(fk, k) {
				d, err := DigestFromBytes(k)
				if err != nil {
					return err
				}
				loc, err := unmarshalChunkLoc(v)
				if err != nil {
					return err
				}
				out = append(out, pendingChunk{d, loc})
			}
		}
		return nil
	})
	return out, err
}

// frameLoc returns where a chunk's stored frame is; ok is false when the
// chunk has none yet, and loc.Size is 0 when it is not worth compressing.
func (s *Store) frameLoc(d Digest) (loc chunkLoc, ok bool, err error) {
	err = s.View(func(v *View) error {
		loc, ok, err = v.frameLoc(d)
		return err
	})
	return loc, ok, err
}

// frameLoc is where the chunk's zstd frame is: ok false if it has none
// yet, a zero Size if it is not worth one.
func (v *View) frameLoc(d Digest) (loc chunkLoc, ok bool, err error) {
	b := v.bucket(bucketFrames, &v.frames).Get(d[:])
	if b == nil {
		return chunkLoc{}, false, nil
	}
	if len(b) > 0 {
		loc, err = unmarshalChunkLoc(b)
	}
	return loc, true, err
}

// ZstdWriter writes a zstd stream of independent frames: bytes written with
// Write (the NAR framing) go out as raw frames, and chunks given to
// SpliceChunk as their stored frames, or compressed on the spot if the
// background compressor has not reached them yet.
type ZstdWriter struct {
	r       *Reader
	out     *splice.Writer
	pending []byte
	raw     []byte
	hdr     []byte
}

// maxRawBlock is zstd's largest block.
const maxRawBlock = 128 << 10

// NewZstdWriter returns a ZstdWriter to w reading frames through r.
func (r *Reader) NewZstdWriter(w io.Writer) *ZstdWriter {
	return &ZstdWriter{r: r, out: splice.NewWriter(w)}
}

// Write adds bytes to the next raw frame.
func (z *ZstdWriter) Write(p []byte) (int, error) {
	z.pending = append(z.pending, p...)
	if len(z.pending) >= maxRawBlock {
		if err := z.flushPending(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (z *ZstdWriter) flushPending() error {
	if len(z.pending) == 0 {
		return nil
	}
	z.hdr = rawFrameHeader(z.hdr[:0], len(z.pending))
	for off := 0; off < len(z.pending); off += maxRawBlock {
		n := min(maxRawBlock, len(z.pending)-off)
		z.hdr = rawBlockHeader(z.hdr, n, off+n == len(z.pending))
		z.hdr = append(z.hdr, z.pending[off:off+n]...)
	}
	z.pending = z.pending[:0]
	_, err := z.out.Write(z.hdr)
	return err
}

// SpliceChunk writes a stored chunk as a frame.
func (z *ZstdWriter) SpliceChunk(ref ChunkRef) error {
	if err := z.flushPending(); err != nil {
		return err
	}
	s := z.r.s
	loc, ok, err := s.frameLoc(ref.Digest)
	if err != nil {
		return err
	}
	switch {
	case ok && loc.Size > 0: // a stored frame
		if loc.Size < splice.MinSendfile {
			frame, err := z.r.small(s.zstd, loc)
			if err == nil {
				_, err = z.out.Write(frame)
			}
			return err
		}
		lr, err := z.r.section(s.zstd, loc)
		if err != nil {
			return err
		}
		_, err = io.Copy(z.out, lr)
		return err
	case ok: // incompressible: raw blocks around the chunk's bytes
		raw, err := s.chunkLoc(ref.Digest)
		if err != nil {
			return err
		}
		z.hdr = rawFrameHeader(z.hdr[:0], int(raw.Size))
		for off := uint32(0); off < raw.Size; off += maxRawBlock {
			n := min(maxRawBlock, raw.Size-off)
			z.hdr = rawBlockHeader(z.hdr, int(n), off+n == raw.Size)
			if _, err := z.out.Write(z.hdr); err != nil {
				return err
			}
			z.hdr = z.hdr[:0]
			lr, err := z.r.section(s.raw, chunkLoc{Pack: raw.Pack, Offset: raw.Offset + int64(off), Size: n})
			if err != nil {
				return err
			}
			if _, err := io.Copy(z.out, lr); err != nil {
				return err
			}
		}
		return nil
	default: // not compressed yet
		if z.raw, err = s.ReadChunk(ref.Digest, z.raw[:0]); err != nil {
			return err
		}
		_, fast := encoders()
		z.hdr = fast.EncodeAll(z.raw, z.hdr[:0])
		_, err = z.out.Write(z.hdr)
		return err
	}
}

// Close writes what is pending and flushes.
func (z *ZstdWriter) Close() error {
	if err := z.flushPending(); err != nil {
		return err
	}
	return z.out.Flush()
}

// ErrNotCompressed is ZstdSizer's answer for a chunk whose frame the
// background compressor has not made yet: a ZstdWriter would compress it
// on the spot, to a size not known before.
var ErrNotCompressed = errors.New("castore: chunk not compressed yet")

// ZstdSizer counts the bytes a ZstdWriter would write for the same calls,
// from the index alone (no chunk is read): the size of a .nar.zst before
// it is made, for a narinfo's FileSize.
type ZstdSizer struct {
	r       *Reader
	pending int
	N       int64 // bytes counted so far
}

// NewZstdSizer returns a ZstdSizer reading the index through r.
func (r *Reader) NewZstdSizer() *ZstdSizer { return &ZstdSizer{r: r} }

// Write counts bytes of the next raw frame, as ZstdWriter.Write.
func (z *ZstdSizer) Write(p []byte) (int, error) {
	z.pending += len(p)
	if z.pending >= maxRawBlock {
		z.flushPending()
	}
	return len(p), nil
}

func (z *ZstdSizer) flushPending() {
	if z.pending > 0 {
		z.N += rawFrameSize(z.pending)
		z.pending = 0
	}
}

// rawFrameSize is the size of a raw frame of n bytes, as ZstdWriter makes
// it: header, and a 3-byte header per block of at most maxRawBlock.
func rawFrameSize(n int) int64 {
	blocks := max(1, (n+maxRawBlock-1)/maxRawBlock)
	return int64(len(rawFrameHeader(nil, n)) + 3*blocks + n)
}

// SpliceChunk counts a chunk's frame, as ZstdWriter.SpliceChunk writes it.
func (z *ZstdSizer) SpliceChunk(ref ChunkRef) error {
	z.flushPending()
	s := z.r.s
	loc, ok, err := s.frameLoc(ref.Digest)
	if err != nil {
		return err
	}
	switch {
	case ok && loc.Size > 0:
		z.N += int64(loc.Size)
	case ok: // incompressible: raw blocks around the chunk's bytes
		raw, err := s.chunkLoc(ref.Digest)
		if err != nil {
			return err
		}
		z.N += rawFrameSize(int(raw.Size))
	default:
		return ErrNotCompressed
	}
	return nil
}

// Close counts what is pending.
func (z *ZstdSizer) Close() error {
	z.flushPending()
	return nil
}

// rawFrameHeader appends a zstd frame header for a single-segment frame of
// n bytes: magic, descriptor, content size.
func rawFrameHeader(b []byte, n int) []byte {
	b = binary.LittleEndian.AppendUint32(b, 0xFD2FB528)
	const singleSegment = 1 << 5
	switch {
	case n < 256:
		return append(b, singleSegment, byte(n))
	case n < 65536+256:
		return binary.LittleEndian.AppendUint16(append(b, 1<<6|singleSegment), uint16(n-256))
	default:
		return binary.LittleEndian.AppendUint32(append(b, 2<<6|singleSegment), uint32(n))
	}
}

// rawBlockHeader appends the 3-byte header of a raw block of n bytes.
func rawBlockHeader(b []byte, n int, last bool) []byte {
	h := uint32(n) << 3 // block type 0: raw
	if last {
		h |= 1
	}
	return append(b, byte(h), byte(h>>8), byte(h>>16))
}

// verifyFrame decompresses a stored frame and checks it against the chunk
// digest.
func verifyFrame(d Digest, frame []byte) error {
	raw, err := decodeFrame(frame, nil)
	if err != nil {
		return fmt.Errorf("zstd frame of chunk %s: %w", d, err)
	}
	if Sum(raw) != d {
		return fmt.Errorf("zstd frame of chunk %s: %w", d, ErrDigestMismatch)
	}
	return nil
}
