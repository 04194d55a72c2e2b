// Package transfer is the peer protocol: how one node asks another for a
// store path's record, the directories of its tree, the chunk lists of its
// files and the chunks themselves. Like syncthing's protocol package, it
// holds the messages, the codec and the limits, and no policy: which peer
// to ask, and what to trust, is the fetcher's business.
//
// One request per libp2p stream (streams are cheap on yamux and QUIC):
// the client writes a request, the server answers and closes. A peer
// gets at most MaxStreamsPerPeer streams served at once (the node's
// resource manager says so, and the client keeps below it), and a stream
// whose request does not come within seconds, or whose answer the peer
// stops taking, is reset: many identities cannot hold the protocol's
// streams, and so its service, for long. Every
// message is a uvarint length and its bytes, and every length is checked
// against its limit before anything is allocated. Everything a client
// receives is checked here against the digest it was asked for (a
// directory subtree against the root, as a Merkle walk), so a caller only
// ever sees verified objects; a record is checked by the caller, against
// the keys it trusts. Client and Server count the bytes they move, in all
// and by peer (for the node's status), until the node forgets a peer that
// left.
package transfer

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

// ProtocolID is the libp2p protocol of the transfer streams.
const ProtocolID = "/p2pstore/transfer/1.0.0"

// Request kinds.
const (
	kindRecord = 'R'
	kindDirs   = 'D'
	kindBlobs  = 'B'
	kindChunks = 'C'
)

// MaxStreamsPerPeer is how many streams of one peer a server serves at
// once: well above what one fetch asks of a peer (a few batches in
// flight), well below the protocol's total, so that a handful of
// identities cannot take it all. A client keeps clientStreamsPerPeer
// open to a peer at most, leaving room for streams the server has not
// yet released.
const (
	MaxStreamsPerPeer    = 16
	clientStreamsPerPeer = MaxStreamsPerPeer - 4
)

// Limits on what one message may hold.
const (
	MaxRecord           = 1 << 20
	MaxDirectory        = 8 << 20
	MaxDirectories      = 1 << 20 // directories in one subtree
	MaxChunkList        = 8 << 20
	MaxBlobsPerRequest  = 1024
	MaxChunksPerRequest = 256
	// A zstd frame of a chunk is never much larger than the chunk.
	maxFrame = castore.MaxChunkSize + castore.MaxChunkSize/64 + 1024
)

// Chunk encodings on the wire.
const (
	chunkMissing = 0
	chunkRaw     = 1
	chunkZstd    = 2
)

// ErrNotFound is a peer's answer for something it does not hold (or does
// not share).
var ErrNotFound = errors.New("peer does not have it")

// ErrBadData marks an answer that fails its checks: the peer lies, or its
// store is damaged. The fetcher drops such a peer.
var ErrBadData = errors.New("peer sent bad data")

// ErrStalled is returned when a peer sends nothing for the stall timeout
// in the middle of an answer (or, to a server, takes nothing of one).
var ErrStalled = errors.New("peer stalled")

func badData(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadData, fmt.Sprintf(format, args...))
}

// A record is what a peer says of a store path: its path info in
// pathinfo.Info's JSON form, with the root of its tree in castore and
// signatures binding that root to the path (RootFingerprint).

// RootFingerprint is what a node signs (with its Nix key) to say that root
// is the tree of the path with this NarHash and NarSize, and lists the
// digest of its chunk lists (castore.ListsDigest). A fetcher that trusts
// the key can then check every directory, chunk list and chunk as it
// arrives, instead of learning of a lie only when a whole file or the
// whole NAR fails its hash.
func RootFingerprint(storePath string, narHash storepath.NarHash, narSize uint64, root castore.Node, lists castore.Digest) string {
	return "p2pstore-root-2;" + storePath + ";" + narHash.String() + ";" + strconv.FormatUint(narSize, 10) + ";" +
		fmt.Sprintf("%x", root.Marshal()) + ";" + lists.String()
}

// encodeRecord makes the record a peer gets. What is this node's owner's
// alone stays here: anonymous peers do not learn which paths were added
// by hand.
func encodeRecord(info *pathinfo.Info) ([]byte, error) {
	out := *info
	out.Private, out.Pinned, out.Source = false, false, ""
	return json.Marshal(&out)
}

// decodeRecord parses a record, checking what can be checked without
// knowing the store directory (the caller checks the rest with
// Info.Validate) or the keys the caller trusts.
func decodeRecord(b []byte) (*pathinfo.Info, error) {
	info := new(pathinfo.Info)
	if err := json.Unmarshal(b, info); err != nil {
		return nil, badData("record: %v", err)
	}
	if info.Root.Type == 0 {
		return nil, badData("record of %s: no root", info.StorePath)
	}
	info.Private = false // a peer's word cannot make a path private here
	info.Pinned = false  // nor pinned: pins are this node's owner's
	info.Source = ""     // the fetcher says where it came from
	return info, nil
}

// BlobRef names a blob whose chunk list is asked for.
type BlobRef struct {
	Digest castore.Digest
	Size   uint64
}

// frames reads and writes length-prefixed messages.
type frames struct {
	r *bufio.Reader
	w *bufio.Writer
}

func (f *frames) read(max int) ([]byte, error) { return f.readInto(nil, max) }

// readInto reads a message into buf's storage when it fits, so that a
// stream of chunks reuses one buffer.
func (f *frames) readInto(buf []byte, max int) ([]byte, error) {
	n, err := binary.ReadUvarint(f.r)
	if err != nil {
		return nil, err
	}
	if n > uint64(max) {
		return nil, badData("message of %d bytes, at most %d allowed", n, max)
	}
	if uint64(cap(buf)) >= n || n <= maxFrame {
		b := buf[:0]
		if uint64(cap(b)) < n {
			b = make([]byte, n)
		}
		b = b[:n]
		if _, err := io.ReadFull(f.r, b); err != nil {
			return nil, err
		}
		return b, nil
	}
	// A large message grows with what arrives, so that a length prefix
	// alone cannot make us allocate megabytes.
	var b bytes.Buffer
	if _, err := io.CopyN(&b, f.r, int64(n)); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return b.Bytes(), nil
}

func (f *frames) write(b []byte) error {
	var n [binary.MaxVarintLen64]byte
	if _, err := f.w.Write(n[:binary.PutUvarint(n[:], uint64(len(b)))]); err != nil {
		return err
	}
	_, err := f.w.Write(b)
	return err
}

// hashPartOK checks a requested hash part before it is used as a key.
func hashPartOK(h string) bool {
	return storepath.ValidateHash(h) == nil && !strings.ContainsAny(h, "/\x00")
}

// readers, writers and chunkBufs recycle the buffers of exchanges, on
// both sides: a fetch makes hundreds of them. A server reads requests,
// of a few KB, through small readers: a stream waiting for its request
// holds one.
var (
	readers        = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 64<<10) }}
	requestReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	writers        = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 64<<10) }}
	chunkBufs      = sync.Pool{New: func() any { return new([]byte) }}
)
