package transfer

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"golang.org/x/time/rate"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
)

// Source is what the server needs of the node. It answers only for what
// the node shares (paths a trusted key or the node itself signed, and the
// objects of their trees); for anything else, ErrNotFound, the same answer
// as for what it does not hold, so that a peer cannot tell the two apart.
type Source interface {
	// Record returns the info of a path the node shares, as its record.
	Record(ctx context.Context, hash string) (*pathinfo.Info, error)
	Directory(d castore.Digest) ([]byte, error)
	ChunkList(d castore.Digest, size uint64) ([]castore.ChunkRef, error)
	// Chunks calls fn with each chunk of ds in turn: its zstd frame when
	// zstd is asked and one is stored (compressed true), else its bytes;
	// ErrNotFound for one it does not have. fn gets the chunk in buf's
	// storage, valid during the call: a batch reuses one buffer.
	Chunks(ds []castore.Digest, zstd bool, buf []byte, fn func(data []byte, compressed bool, err error) error) error
}

// Server answers transfer requests.
type Server struct {
	src     Source
	limiter *rate.Limiter // nil: no cap on upload
	log     *slog.Logger
	sent    atomic.Uint64
	byPeer  peerBytes
}

// NewServer returns a server for src; maxRate caps the bytes per second
// sent to all peers together (0: no cap).
func NewServer(src Source, maxRate int64, log *slog.Logger) *Server {
	s := &Server{src: src, log: log}
	if maxRate > 0 {
		// A burst of one chunk frame: sends are smooth at the cap.
		s.limiter = rate.NewLimiter(rate.Limit(maxRate), maxFrame+64)
	}
	return s
}

// BytesSent is what the server has sent to peers.
func (s *Server) BytesSent() uint64 { return s.sent.Load() }

// Deadlines of an exchange. A client writes its whole request at once
// (a few bytes to a few tens of KB), so a stream without one after
// requestWait is idle, or a slowloris, and is reset: it holds one of the
// peer's few streams and a slot of the protocol's total. An answer the
// peer stops taking is reset once no writePiece of it goes out for
// writeStall; waits for the upload cap are ours and do not count, so a
// slow peer that reads is served. requestTimeout bounds the whole
// exchange all the same. Variables, for tests.
var (
	requestWait    = 5 * time.Second
	writeStall     = 30 * time.Second
	requestTimeout = 5 * time.Minute
)

// writePiece is the unit of write progress: a peer must take this much
// every writeStall (about 2 KB/s, for each of its streams). It is the
// largest frame yamux sends: pieces cost no more frames than whole
// writes (16 KB pieces were slower on loopback).
const writePiece = 64 << 10

// StreamMemory is what an answer holds while it is served (its write
// buffer and a chunk), reserved in the stream's resource scope so that the
// resource manager's memory limits of the protocol and of each peer bound
// it. A stream that waits for its request holds a few KB, bounded by the
// stream limits.
const StreamMemory = 64<<10 + maxFrame

// Handle serves one stream: one request.
func (s *Server) Handle(st network.Stream) {
	defer st.Close()
	now := time.Now()
	end := now.Add(requestTimeout)
	st.SetReadDeadline(now.Add(requestWait))
	ctx, cancel := context.WithDeadline(context.Background(), end)
	defer cancel()
	reserve := func() error { return st.Scope().ReserveMemory(StreamMemory, network.ReservationPriorityAlways) }
	w := &limitedWriter{ctx: ctx, w: st, limiter: s.limiter, sent: &s.sent, peerSent: s.byPeer.counter(st.Conn().RemotePeer()),
		deadlines: st, end: end}
	if err := s.serve(ctx, st, w, reserve); err != nil {
		s.log.Debug("transfer request failed", "peer", st.Conn().RemotePeer(), "err", err)
		st.Reset()
	}
}

// serve reads one request from r and writes its answer to w; reserve, if
// not nil, reserves the answer's memory once a request begins.
func (s *Server) serve(ctx context.Context, r io.Reader, w io.Writer, reserve func() error) error {
	br := requestReaders.Get().(*bufio.Reader)
	br.Reset(r)
	defer func() {
		br.Reset(nil)
		requestReaders.Put(br)
	}()
	kind, err := br.ReadByte()
	if err != nil {
		return err
	}
	// The answer's buffers, only now: a stream that never sends its
	// request costs its reader alone.
	if reserve != nil {
		if err := reserve(); err != nil {
			return fmt.Errorf("request %q: %w", kind, err)
		}
	}
	bw := writers.Get().(*bufio.Writer)
	bw.Reset(w)
	defer func() {
		bw.Reset(nil)
		writers.Put(bw)
	}()
	f := &frames{r: br, w: bw}
	switch kind {
	case kindRecord:
		err = s.record(ctx, f)
	case kindDirs:
		err = s.dirs(f)
	case kindBlobs:
		err = s.blobs(f)
	case kindChunks:
		err = s.chunks(f)
	default:
		err = badData("unknown request %q", kind)
	}
	if err == nil {
		err = f.w.Flush()
	}
	if err != nil {
		return fmt.Errorf("request %q: %w", kind, err)
	}
	return nil
}

func (s *Server) record(ctx context.Context, f *frames) error {
	h, err := f.read(64)
	if err != nil {
		return err
	}
	if !hashPartOK(string(h)) {
		return f.write(nil)
	}
	rec, err := s.src.Record(ctx, string(h))
	if errors.Is(err, ErrNotFound) {
		return f.write(nil)
	}
	if err != nil {
		return err
	}
	b, err := encodeRecord(rec)
	if err != nil {
		return err
	}
	return f.write(b)
}

// dirs sends the subtree under a root, breadth first, each directory once,
// then an empty message.
func (s *Server) dirs(f *frames) error {
	var root castore.Digest
	if _, err := io.ReadFull(f.r, root[:]); err != nil {
		return err
	}
	queue := []castore.Digest{root}
	seen := map[castore.Digest]bool{root: true}
	for len(queue) > 0 && len(seen) <= MaxDirectories {
		d := queue[0]
		queue = queue[1:]
		b, err := s.src.Directory(d)
		if errors.Is(err, ErrNotFound) {
			break // the client sees an incomplete tree and goes elsewhere
		}
		if err != nil {
			return err
		}
		dir, err := castore.UnmarshalDirectory(b)
		if err != nil {
			return err
		}
		if err := f.write(b); err != nil {
			return err
		}
		for _, e := range dir.Directories {
			if !seen[e.Digest] {
				seen[e.Digest] = true
				queue = append(queue, e.Digest)
			}
		}
	}
	return f.write(nil)
}

// Blob list answers: a status byte, then the list for status listFollows.
const (
	blobMissing     = 0
	blobSingleChunk = 1
	blobList        = 2
)

func (s *Server) blobs(f *frames) error {
	n, err := binary.ReadUvarint(f.r)
	if err != nil {
		return err
	}
	if n > MaxBlobsPerRequest {
		return badData("%d blobs in one request", n)
	}
	for i := uint64(0); i < n; i++ {
		var d castore.Digest
		if _, err := io.ReadFull(f.r, d[:]); err != nil {
			return err
		}
		size, err := binary.ReadUvarint(f.r)
		if err != nil {
			return err
		}
		refs, err := s.src.ChunkList(d, size)
		var msg []byte
		switch {
		case errors.Is(err, ErrNotFound):
			msg = []byte{blobMissing}
		case err != nil:
			return err
		case len(refs) == 1 && refs[0].Digest == d:
			msg = []byte{blobSingleChunk}
		default:
			msg = append([]byte{blobList}, encodeChunkList(refs)...)
		}
		if err := f.write(msg); err != nil {
			return err
		}
	}
	return nil
}

func encodeChunkList(refs []castore.ChunkRef) []byte {
	b := binary.AppendUvarint(nil, uint64(len(refs)))
	for _, r := range refs {
		b = append(b, r.Digest[:]...)
		b = binary.AppendUvarint(b, uint64(r.Size))
	}
	return b
}

func (s *Server) chunks(f *frames) error {
	flags, err := f.r.ReadByte()
	if err != nil {
		return err
	}
	n, err := binary.ReadUvarint(f.r)
	if err != nil {
		return err
	}
	if n > MaxChunksPerRequest {
		return badData("%d chunks in one request", n)
	}
	digests := make([]castore.Digest, n)
	for i := range digests {
		if _, err := io.ReadFull(f.r, digests[i][:]); err != nil {
			return err
		}
	}
	buf := chunkBufs.Get().(*[]byte)
	defer chunkBufs.Put(buf)
	return s.src.Chunks(digests, flags&1 != 0, (*buf)[:0], func(data []byte, compressed bool, err error) error {
		if cap(data) > cap(*buf) {
			*buf = data[:0] // keep the grown buffer
		}
		if errors.Is(err, ErrNotFound) {
			return f.w.WriteByte(chunkMissing)
		}
		if err != nil {
			return err
		}
		kind := byte(chunkRaw)
		if compressed {
			kind = chunkZstd
		}
		if err := f.w.WriteByte(kind); err != nil {
			return err
		}
		return f.write(data)
	})
}

// limitedWriter holds writes to the upload cap, counts them, and, given
// deadlines, gives each piece writeStall to go out (ending at end).
type limitedWriter struct {
	ctx       context.Context
	w         io.Writer
	limiter   *rate.Limiter
	sent      *atomic.Uint64
	peerSent  *atomic.Uint64                                 // the count of the peer's bytes; nil: none
	deadlines interface{ SetWriteDeadline(time.Time) error } // nil: none
	end       time.Time
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		n := len(p)
		if l.deadlines != nil {
			n = min(n, writePiece)
		}
		if l.limiter != nil {
			n = min(n, l.limiter.Burst())
			if err := l.limiter.WaitN(l.ctx, n); err != nil {
				return written, err
			}
		}
		if l.deadlines != nil {
			// From now: the wait for the cap was ours, not the peer's.
			dl := time.Now().Add(writeStall)
			if dl.After(l.end) {
				dl = l.end
			}
			l.deadlines.SetWriteDeadline(dl)
		}
		k, err := l.w.Write(p[:n])
		written += k
		l.sent.Add(uint64(k))
		if l.peerSent != nil {
			l.peerSent.Add(uint64(k))
		}
		if err != nil {
			var te interface{ Timeout() bool }
			if errors.As(err, &te) && te.Timeout() {
				err = fmt.Errorf("%w: the peer took nothing for %s", ErrStalled, writeStall)
			}
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}
