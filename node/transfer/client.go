package transfer

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
)

// stallTimeout: a peer that sends nothing for this long has stalled.
const stallTimeout = 20 * time.Second

// Client asks peers for objects.
type Client struct {
	h        host.Host
	received atomic.Uint64
	byPeer   peerBytes
	dec      *zstd.Decoder

	mu    sync.Mutex
	slots map[peer.ID]*peerSlots
}

// peerSlots are the streams a client may have open to one peer: beyond
// the server's limit, a request would be refused and count as the
// peer's failure, where waiting for a slot costs little.
type peerSlots struct {
	held  chan struct{} // a token per open stream
	users int           // exchanges holding or waiting for a slot
}

// NewClient returns a client using h's connections.
func NewClient(h host.Host) *Client {
	return &Client{h: h, dec: newDecoder(), slots: map[peer.ID]*peerSlots{}}
}

// acquire waits for a stream slot to p and returns its release.
func (c *Client) acquire(ctx context.Context, p peer.ID) (func(), error) {
	c.mu.Lock()
	s := c.slots[p]
	if s == nil {
		s = &peerSlots{held: make(chan struct{}, clientStreamsPerPeer)}
		c.slots[p] = s
	}
	s.users++
	c.mu.Unlock()
	done := func() {
		c.mu.Lock()
		if s.users--; s.users == 0 {
			delete(c.slots, p)
		}
		c.mu.Unlock()
	}
	select {
	case s.held <- struct{}{}:
		return func() { <-s.held; done() }, nil
	case <-ctx.Done():
		done()
		return nil, ctx.Err()
	}
}

// newDecoder returns the decoder of chunk frames. A frame's own checksum,
// if it has one, is checked too: the frame is stored and served as it
// came, in .nar.zst files whose readers check it. (Frames made by this
// version carry none; the chunk's digest covers the content.)
func newDecoder() *zstd.Decoder {
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(maxFrame*2))
	if err != nil {
		panic(err) // only for invalid options
	}
	return dec
}

// BytesReceived is what the client has received from peers.
func (c *Client) BytesReceived() uint64 { return c.received.Load() }

// exchange opens a stream to p, writes the request that req builds, and
// hands the framed stream to read.
func (c *Client) exchange(ctx context.Context, p peer.ID, kind byte, req func(*bufio.Writer), read func(*frames) error) error {
	release, err := c.acquire(ctx, p)
	if err != nil {
		return err
	}
	defer release()
	st, err := c.h.NewStream(network.WithAllowLimitedConn(ctx, "transfer"), p, ProtocolID)
	if err != nil {
		return fmt.Errorf("opening a stream to %s: %w", p, err)
	}
	defer st.Close()
	if dl, ok := ctx.Deadline(); ok {
		st.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { st.Reset() })
	defer stop()
	cr := &countingReader{r: st, st: st, n: &c.received, peer: c.byPeer.counter(p)}
	br := readers.Get().(*bufio.Reader)
	br.Reset(cr)
	defer func() { br.Reset(nil); readers.Put(br) }()
	f := &frames{r: br, w: bufio.NewWriterSize(st, 4096)}
	f.w.WriteByte(kind)
	req(f.w)
	if err := f.w.Flush(); err != nil {
		st.Reset()
		return err
	}
	if err := st.CloseWrite(); err != nil {
		st.Reset()
		return err
	}
	if err := read(f); err != nil {
		st.Reset()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	return nil
}

// countingReader counts what it reads and pushes the stall deadline on.
type countingReader struct {
	r    io.Reader
	st   network.Stream
	n    *atomic.Uint64
	peer *atomic.Uint64 // the count of the peer's bytes
}

func (c *countingReader) Read(p []byte) (int, error) {
	c.st.SetReadDeadline(time.Now().Add(stallTimeout))
	n, err := c.r.Read(p)
	c.n.Add(uint64(n))
	c.peer.Add(uint64(n))
	var te interface{ Timeout() bool }
	if errors.As(err, &te) && te.Timeout() {
		err = fmt.Errorf("%w: nothing for %s", ErrStalled, stallTimeout)
	}
	return n, err
}

// Record asks p for the record of a store path's hash part. The caller
// checks its store paths (Info.Validate) and its signatures.
func (c *Client) Record(ctx context.Context, p peer.ID, hash string) (*pathinfo.Info, error) {
	var info *pathinfo.Info
	err := c.exchange(ctx, p, kindRecord, func(w *bufio.Writer) {
		writeBytes(w, []byte(hash))
	}, func(f *frames) (err error) {
		info, err = readRecord(f)
		return err
	})
	return info, err
}

func readRecord(f *frames) (*pathinfo.Info, error) {
	b, err := f.read(MaxRecord)
	switch {
	case err != nil:
		return nil, err
	case len(b) == 0:
		return nil, ErrNotFound
	}
	return decodeRecord(b)
}

func writeBytes(w *bufio.Writer, b []byte) {
	var n [binary.MaxVarintLen64]byte
	w.Write(n[:binary.PutUvarint(n[:], uint64(len(b)))])
	w.Write(b)
}

// Directories asks p for the tree under root and calls fn with each
// directory, verified: the first is root itself, every later one is a
// child named by a directory already received, and the tree is complete
// when the call returns nil.
func (c *Client) Directories(ctx context.Context, p peer.ID, root castore.Digest, fn func(d castore.Digest, dir *castore.Directory, raw []byte) error) error {
	return c.exchange(ctx, p, kindDirs, func(w *bufio.Writer) {
		w.Write(root[:])
	}, func(f *frames) error {
		return readDirectories(f, root, fn)
	})
}

func readDirectories(f *frames, root castore.Digest, fn func(d castore.Digest, dir *castore.Directory, raw []byte) error) error {
	expected := map[castore.Digest]bool{root: true}
	received := map[castore.Digest]bool{}
	for {
		b, err := f.read(MaxDirectory)
		if err != nil {
			return err
		}
		if len(b) == 0 {
			break
		}
		d := castore.Sum(b)
		if !expected[d] {
			return badData("directory %s is not part of the tree asked for", d)
		}
		dir, err := castore.UnmarshalDirectory(b)
		if err != nil {
			return badData("directory %s: %v", d, err)
		}
		delete(expected, d)
		received[d] = true
		if len(received) > MaxDirectories {
			return badData("more than %d directories", MaxDirectories)
		}
		for _, e := range dir.Directories {
			if !received[e.Digest] {
				expected[e.Digest] = true
			}
		}
		if err := fn(d, dir, b); err != nil {
			return err
		}
	}
	if len(received) == 0 {
		return ErrNotFound
	}
	if len(expected) > 0 {
		return badData("tree under %s incomplete: %d directories missing", root, len(expected))
	}
	return nil
}

// ChunkLists asks p for the chunk lists of blobs. A blob of one chunk gets
// a nil list. Each list is checked to add up to the blob's size; that its
// chunks hash, in order, to the blob is for the caller to check once it
// has them.
func (c *Client) ChunkLists(ctx context.Context, p peer.ID, blobs []BlobRef) ([][]castore.ChunkRef, error) {
	var out [][]castore.ChunkRef
	err := c.exchange(ctx, p, kindBlobs, func(w *bufio.Writer) {
		var n [binary.MaxVarintLen64]byte
		w.Write(n[:binary.PutUvarint(n[:], uint64(len(blobs)))])
		for _, b := range blobs {
			w.Write(b.Digest[:])
			w.Write(n[:binary.PutUvarint(n[:], b.Size)])
		}
	}, func(f *frames) (err error) {
		out, err = readChunkLists(f, blobs)
		return err
	})
	return out, err
}

func readChunkLists(f *frames, blobs []BlobRef) ([][]castore.ChunkRef, error) {
	out := make([][]castore.ChunkRef, len(blobs))
	for i, b := range blobs {
		msg, err := f.read(MaxChunkList)
		if err != nil {
			return nil, err
		}
		if len(msg) == 0 {
			return nil, badData("empty blob answer")
		}
		switch msg[0] {
		case blobMissing:
			return nil, fmt.Errorf("blob %s: %w", b.Digest, ErrNotFound)
		case blobSingleChunk:
			if b.Size > castore.MaxChunkSize {
				return nil, badData("blob %s of %d bytes in one chunk", b.Digest, b.Size)
			}
		case blobList:
			refs, err := decodeChunkList(msg[1:])
			if err != nil {
				return nil, err
			}
			if len(refs) < 2 {
				// A blob of one chunk is that chunk, under the blob's own
				// digest: a list naming another would slip a chunk of
				// other content past every check.
				return nil, badData("blob %s: a list of one chunk", b.Digest)
			}
			var total uint64
			for _, r := range refs {
				total += uint64(r.Size)
			}
			if total != b.Size {
				return nil, badData("blob %s: chunks add up to %d bytes, not %d", b.Digest, total, b.Size)
			}
			out[i] = refs
		default:
			return nil, badData("blob answer %d", msg[0])
		}
	}
	return out, nil
}

func decodeChunkList(b []byte) ([]castore.ChunkRef, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n == 0 || n > uint64(len(b)) {
		return nil, badData("chunk list")
	}
	b = b[k:]
	refs := make([]castore.ChunkRef, 0, n)
	for i := uint64(0); i < n; i++ {
		if len(b) < castore.DigestSize+1 {
			return nil, badData("chunk list cut short")
		}
		var r castore.ChunkRef
		copy(r.Digest[:], b)
		size, k := binary.Uvarint(b[castore.DigestSize:])
		if k <= 0 || size == 0 || size > castore.MaxChunkSize {
			return nil, badData("chunk of %d bytes in a list", size)
		}
		r.Size = uint32(size)
		refs = append(refs, r)
		b = b[castore.DigestSize+k:]
	}
	if len(b) != 0 {
		return nil, badData("chunk list has trailing bytes")
	}
	return refs, nil
}

// Buffers lends Chunks the buffers it decodes chunks into, for a caller
// that keeps chunks and would otherwise copy each.
type Buffers interface {
	Get(n int) []byte // a buffer of n bytes, 0 < n <= castore.MaxChunkSize
	Put(b []byte)     // a buffer from Get, back
}

// Chunks asks p for chunks (zstd frames where it has them, if zstd) and
// calls fn with each, decompressed and checked against its digest, in the
// order asked, and with the frame it came in (nil if it came raw), which
// the caller may keep rather than compress the chunk again. The frame is
// valid only during the call; so is data, unless bufs is given: data is
// then in a buffer from bufs.Get, which fn owns (it keeps it or puts it
// back), whatever it returns. A chunk p lacks ends the call with
// ErrNotFound.
func (c *Client) Chunks(ctx context.Context, p peer.ID, digests []castore.Digest, zstd bool, bufs Buffers, fn func(d castore.Digest, data, frame []byte) error) error {
	if len(digests) > MaxChunksPerRequest {
		return errors.New("transfer: too many chunks in one request")
	}
	return c.exchange(ctx, p, kindChunks, func(w *bufio.Writer) {
		var flags byte
		if zstd {
			flags = 1
		}
		w.WriteByte(flags)
		var n [binary.MaxVarintLen64]byte
		w.Write(n[:binary.PutUvarint(n[:], uint64(len(digests)))])
		for _, d := range digests {
			w.Write(d[:])
		}
	}, func(f *frames) error {
		return readChunks(f, digests, c.dec, bufs, fn)
	})
}

func readChunks(f *frames, digests []castore.Digest, dec *zstd.Decoder, bufs Buffers, fn func(d castore.Digest, data, frame []byte) error) error {
	// Both buffers are reused from chunk to chunk: fn copies what it keeps,
	// unless it lends the buffers.
	bufp := chunkBufs.Get().(*[]byte)
	defer chunkBufs.Put(bufp)
	buf := *bufp
	defer func() { *bufp = buf }()
	var msg []byte
	for _, d := range digests {
		kind, err := f.r.ReadByte()
		if err != nil {
			return err
		}
		if kind == chunkMissing {
			return fmt.Errorf("chunk %s: %w", d, ErrNotFound)
		}
		data, err := f.readInto(msg, maxFrame)
		msg = data
		if err != nil {
			return err
		}
		var frame, lent []byte // lent: from bufs, holding data
		switch kind {
		case chunkRaw:
		case chunkZstd:
			// Straight into a lent buffer when the frame says its size
			// (a frame whose content is not that size fails to decode).
			dst := buf[:0]
			if n := frameContentSize(data); bufs != nil && n > 0 {
				lent = bufs.Get(n)
				dst = lent[:0]
			}
			out, err := dec.DecodeAll(data, dst)
			if err == nil && lent != nil && len(out) != len(lent) {
				err = fmt.Errorf("%d bytes, the frame says %d", len(out), len(lent))
			}
			if err != nil {
				if lent != nil {
					bufs.Put(lent)
				}
				return badData("chunk %s: %v", d, err)
			}
			if lent == nil {
				buf = out
			}
			frame, data = data, out
		default:
			return badData("chunk encoding %d", kind)
		}
		if len(data) == 0 || len(data) > castore.MaxChunkSize || castore.Sum(data) != d {
			if lent != nil {
				bufs.Put(lent)
			}
			return badData("chunk %s does not match its digest", d)
		}
		if bufs != nil && lent == nil {
			lent = bufs.Get(len(data))
			copy(lent, data)
			data = lent
		}
		if err := fn(d, data, frame); err != nil {
			return err
		}
	}
	return nil
}

// frameContentSize is the content size a zstd frame's header gives, or 0
// if it gives none (or more than a chunk can be).
func frameContentSize(frame []byte) int {
	var h zstd.Header
	if h.Decode(frame) != nil || !h.HasFCS || h.FrameContentSize > castore.MaxChunkSize {
		return 0
	}
	return int(h.FrameContentSize)
}
