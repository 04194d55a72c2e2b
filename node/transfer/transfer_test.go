package transfer

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"math/rand"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
)

// memSource is a Source held in maps; zstdFrames makes Chunk answer with
// a zstd frame when one is asked for.
type memSource struct {
	records    map[string]*pathinfo.Info
	dirs       map[castore.Digest][]byte
	lists      map[castore.Digest][]castore.ChunkRef
	chunks     map[castore.Digest][]byte
	zstdFrames bool
}

func newMemSource() *memSource {
	return &memSource{records: map[string]*pathinfo.Info{}, dirs: map[castore.Digest][]byte{},
		lists: map[castore.Digest][]castore.ChunkRef{}, chunks: map[castore.Digest][]byte{}}
}

func (m *memSource) Record(_ context.Context, hash string) (*pathinfo.Info, error) {
	if r, ok := m.records[hash]; ok {
		return r, nil
	}
	return nil, ErrNotFound
}

func (m *memSource) Directory(d castore.Digest) ([]byte, error) {
	if b, ok := m.dirs[d]; ok {
		return b, nil
	}
	return nil, ErrNotFound
}

func (m *memSource) ChunkList(d castore.Digest, size uint64) ([]castore.ChunkRef, error) {
	if refs, ok := m.lists[d]; ok {
		return refs, nil
	}
	return nil, ErrNotFound
}

var testEncoder, _ = zstd.NewWriter(nil)

func (m *memSource) Chunks(ds []castore.Digest, z bool, buf []byte, fn func([]byte, bool, error) error) error {
	for _, d := range ds {
		b, ok := m.chunks[d]
		var err error
		switch {
		case !ok:
			err = fn(buf, false, ErrNotFound)
		case z && m.zstdFrames:
			err = fn(testEncoder.EncodeAll(b, buf), true, nil)
		default:
			err = fn(append(buf, b...), false, nil)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (m *memSource) addDir(dir *castore.Directory) castore.Digest {
	b := dir.Marshal()
	d := castore.Sum(b)
	m.dirs[d] = b
	return d
}

// addBlob stores data cut into chunks of chunkSize and returns its digest.
func (m *memSource) addBlob(data []byte, chunkSize int) castore.Digest {
	d := castore.Sum(data)
	var refs []castore.ChunkRef
	for off := 0; off < len(data); off += chunkSize {
		c := data[off:min(off+chunkSize, len(data))]
		cd := castore.Sum(c)
		m.chunks[cd] = c
		refs = append(refs, castore.ChunkRef{Digest: cd, Size: uint32(len(c))})
	}
	m.lists[d] = refs
	return d
}

// testTree is a root holding two subdirectories that share one child, so
// the server must send the shared one once.
func testTree(m *memSource) (root castore.Digest, all []castore.Digest) {
	leaf := &castore.Directory{Symlinks: []castore.SymlinkEntry{{Name: []byte("l"), Target: []byte("x")}}}
	ld := m.addDir(leaf)
	a := &castore.Directory{Directories: []castore.DirectoryEntry{{Name: []byte("leaf"), Digest: ld, Size: leaf.Size()}}}
	ad := m.addDir(a)
	b := &castore.Directory{
		Directories: []castore.DirectoryEntry{{Name: []byte("leaf"), Digest: ld, Size: leaf.Size()}},
		Symlinks:    []castore.SymlinkEntry{{Name: []byte("m"), Target: []byte("y")}},
	}
	bd := m.addDir(b)
	top := &castore.Directory{Directories: []castore.DirectoryEntry{
		{Name: []byte("a"), Digest: ad, Size: a.Size()},
		{Name: []byte("b"), Digest: bd, Size: b.Size()},
	}}
	root = m.addDir(top)
	return root, []castore.Digest{root, ad, bd, ld}
}

func randomBytes(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

func TestRoundTrip(t *testing.T) {
	src := newMemSource()
	src.zstdFrames = true
	root, all := testTree(src)
	big := randomBytes(1, 3*castore.MaxChunkSize/2)
	bigD := src.addBlob(big, castore.MaxChunkSize)
	small := randomBytes(2, 1000)
	smallD := src.addBlob(small, castore.MaxChunkSize)
	src.records["00000000000000000000000000000000"] = &pathinfo.Info{StorePath: "/nix/store/00000000000000000000000000000000-x",
		Root: castore.Node{Type: castore.TypeSymlink, Target: []byte("x")}}

	mn, err := mocknet.FullMeshConnected(2)
	if err != nil {
		t.Fatal(err)
	}
	defer mn.Close()
	hosts := mn.Hosts()
	srv := NewServer(src, 0, slog.New(slog.DiscardHandler))
	hosts[1].SetStreamHandler(ProtocolID, srv.Handle)
	c := NewClient(hosts[0])
	p := hosts[1].ID()
	ctx := context.Background()

	rec, err := c.Record(ctx, p, "00000000000000000000000000000000")
	if err != nil || rec.StorePath != "/nix/store/00000000000000000000000000000000-x" {
		t.Fatalf("record: %+v, %v", rec, err)
	}
	if _, err := c.Record(ctx, p, "11111111111111111111111111111111"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown record: %v, want ErrNotFound", err)
	}
	if _, err := c.Record(ctx, p, "../../etc/passwd"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("bad hash part: %v, want ErrNotFound", err)
	}

	var got []castore.Digest
	err = c.Directories(ctx, p, root, func(d castore.Digest, dir *castore.Directory, raw []byte) error {
		if castore.Sum(raw) != d || dir.Digest() != d {
			t.Errorf("directory %s handed over with other bytes", d)
		}
		got = append(got, d)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(all) || got[0] != root {
		t.Fatalf("got %d directories starting %s, want %d starting with the root", len(got), got[0], len(all))
	}
	if err := c.Directories(ctx, p, castore.Sum([]byte("none")), func(castore.Digest, *castore.Directory, []byte) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown tree: %v, want ErrNotFound", err)
	}

	lists, err := c.ChunkLists(ctx, p, []BlobRef{{bigD, uint64(len(big))}, {smallD, uint64(len(small))}})
	if err != nil {
		t.Fatal(err)
	}
	if len(lists[0]) != 2 || lists[1] != nil {
		t.Fatalf("chunk lists: %d and %v, want 2 refs and a single chunk", len(lists[0]), lists[1])
	}
	if _, err := c.ChunkLists(ctx, p, []BlobRef{{castore.Sum([]byte("none")), 4}}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown blob: %v, want ErrNotFound", err)
	}

	for _, z := range []bool{false, true} {
		var lent countedBuffers
		for _, bufs := range []Buffers{nil, &lent} {
			want := []castore.Digest{lists[0][0].Digest, lists[0][1].Digest, smallD}
			var joined []byte
			var frames int
			err = c.Chunks(ctx, p, want, z, bufs, func(d castore.Digest, data, frame []byte) error {
				if d != want[0] {
					t.Errorf("chunk %s out of order", d)
				}
				want = want[1:]
				joined = append(joined, data...)
				if frame != nil {
					frames++
				}
				if bufs != nil {
					bufs.Put(data)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(joined, append(append([]byte{}, big...), small...)) {
				t.Fatalf("zstd=%v: chunks do not make up the blobs", z)
			}
			if z != (frames == 3) || (!z && frames != 0) {
				t.Fatalf("zstd=%v: %d chunks came with a frame", z, frames)
			}
		}
		if lent.out != 0 {
			t.Fatalf("zstd=%v: %d lent buffers not given back", z, lent.out)
		}
	}
	if err := c.Chunks(ctx, p, []castore.Digest{castore.Sum([]byte("none"))}, false, nil, func(castore.Digest, []byte, []byte) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown chunk: %v, want ErrNotFound", err)
	}
	// The server counts a write once it returns, which can be after the
	// client has read it: wait a little for the counts to meet.
	for i := 0; srv.BytesSent() != c.BytesReceived() && i < 100; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if srv.BytesSent() == 0 || c.BytesReceived() != srv.BytesSent() {
		t.Fatalf("server sent %d bytes, client received %d", srv.BytesSent(), c.BytesReceived())
	}
	// By peer: all of it between these two, nothing from anyone else.
	if got := c.BytesReceivedFrom(p); got != c.BytesReceived() {
		t.Errorf("received %d bytes from the peer, %d in all", got, c.BytesReceived())
	}
	if got := srv.BytesSentTo(hosts[0].ID()); got != srv.BytesSent() {
		t.Errorf("sent %d bytes to the peer, %d in all", got, srv.BytesSent())
	}
	if c.BytesReceivedFrom(hosts[0].ID()) != 0 || srv.BytesSentTo(p) != 0 {
		t.Error("bytes counted for the wrong peer")
	}
	c.ForgetPeer(p)
	srv.ForgetPeer(hosts[0].ID())
	if c.BytesReceivedFrom(p) != 0 || srv.BytesSentTo(hosts[0].ID()) != 0 || c.BytesReceived() == 0 {
		t.Error("a forgotten peer's bytes are still counted, or the totals went with them")
	}
}

// answer runs a request through the server and returns its framed answer.
func answer(t testing.TB, src Source, req []byte) (*frames, error) {
	t.Helper()
	var out bytes.Buffer
	srv := NewServer(src, 0, slog.New(slog.DiscardHandler))
	err := srv.serve(context.Background(), bytes.NewReader(req), &out, nil)
	return &frames{r: bufio.NewReader(&out)}, err
}

func request(kind byte, body ...[]byte) []byte {
	return append([]byte{kind}, bytes.Join(body, nil)...)
}

func uvarint(n uint64) []byte { return binary.AppendUvarint(nil, n) }

func TestServerRefusesBadRequests(t *testing.T) {
	src := newMemSource()
	for name, req := range map[string][]byte{
		"unknown kind":       request('Z'),
		"empty":              nil,
		"too many chunks":    request(kindChunks, []byte{0}, uvarint(MaxChunksPerRequest+1)),
		"too many blobs":     request(kindBlobs, uvarint(MaxBlobsPerRequest+1)),
		"hash too long":      request(kindRecord, uvarint(1<<30)),
		"cut-short digest":   request(kindDirs, []byte{1, 2, 3}),
		"cut-short chunks":   request(kindChunks, []byte{0}, uvarint(2), make([]byte, 40)),
		"cut-short blob ref": request(kindBlobs, uvarint(1), make([]byte, 32)),
	} {
		if _, err := answer(t, src, req); err == nil {
			t.Errorf("%s: served", name)
		}
	}
}

// lie is a framed answer written by hand, as a lying peer would.
type lie struct{ bytes.Buffer }

func (l *lie) msg(b []byte) *lie                              { l.Write(uvarint(uint64(len(b)))); l.Write(b); return l }
func (l *lie) byte(b byte) *lie                               { l.WriteByte(b); return l }
func (l *lie) frames() *frames                                { return &frames{r: bufio.NewReader(&l.Buffer)} }
func (l *lie) length(n uint64) *lie                           { l.Write(uvarint(n)); return l }
func (l *lie) raw(b []byte) *lie                              { l.Write(b); return l }
func noDirs(castore.Digest, *castore.Directory, []byte) error { return nil }

// countedBuffers lends buffers and counts those not given back.
type countedBuffers struct{ out int }

func (b *countedBuffers) Get(n int) []byte { b.out++; return make([]byte, n) }
func (b *countedBuffers) Put([]byte)       { b.out-- }

func TestClientRejectsLies(t *testing.T) {
	src := newMemSource()
	root, all := testTree(src)
	other := src.addDir(&castore.Directory{Symlinks: []castore.SymlinkEntry{{Name: []byte("z"), Target: []byte("q")}}})
	dec := newDecoder()
	defer dec.Close()
	chunk := randomBytes(3, 5000)
	cd := castore.Sum(chunk)
	bomb := testEncoder.EncodeAll(make([]byte, 64<<20), nil)
	// A frame of the right content whose checksum is wrong: stored and
	// served as it came, it would break a client's .nar.zst.
	badSum := testEncoder.EncodeAll(chunk, nil)
	badSum[len(badSum)-1] ^= 0xff

	cases := map[string]func() error{
		"directory from another tree": func() error {
			return readDirectories(new(lie).msg(src.dirs[other]).msg(nil).frames(), root, noDirs)
		},
		"tree cut short": func() error {
			return readDirectories(new(lie).msg(src.dirs[root]).msg(src.dirs[all[1]]).msg(nil).frames(), root, noDirs)
		},
		"directory that does not decode": func() error {
			junk := []byte{0xff, 0xff}
			return readDirectories(new(lie).msg(junk).msg(nil).frames(), castore.Sum(junk), noDirs)
		},
		"oversized directory": func() error {
			return readDirectories(new(lie).length(MaxDirectory+1).frames(), root, noDirs)
		},
		"chunk list adding up wrong": func() error {
			list := append([]byte{blobList}, encodeChunkList([]castore.ChunkRef{{Digest: cd, Size: 5000}, {Digest: cd, Size: 5000}})...)
			_, err := readChunkLists(new(lie).msg(list).frames(), []BlobRef{{castore.Sum([]byte("b")), 11000}})
			return err
		},
		"chunk list with trailing bytes": func() error {
			list := append(append([]byte{blobList}, encodeChunkList([]castore.ChunkRef{{Digest: cd, Size: 5000}, {Digest: cd, Size: 5000}})...), 0)
			_, err := readChunkLists(new(lie).msg(list).frames(), []BlobRef{{castore.Sum([]byte("b")), 10000}})
			return err
		},
		// A blob of one chunk is fetched under its own digest; a list of
		// one chunk under another digest (the size right) would put other
		// content in the file.
		"list of one chunk": func() error {
			list := append([]byte{blobList}, encodeChunkList([]castore.ChunkRef{{Digest: cd, Size: 5000}})...)
			_, err := readChunkLists(new(lie).msg(list).frames(), []BlobRef{{castore.Sum([]byte("b")), 5000}})
			return err
		},
		"oversized single chunk": func() error {
			_, err := readChunkLists(new(lie).msg([]byte{blobSingleChunk}).frames(), []BlobRef{{cd, castore.MaxChunkSize + 1}})
			return err
		},
		"record that is not JSON": func() error {
			_, err := readRecord(new(lie).msg([]byte("{")).frames())
			return err
		},
	}
	for name, read := range cases {
		if err := read(); !errors.Is(err, ErrBadData) {
			t.Errorf("%s: %v, want ErrBadData", name, err)
		}
	}
	// A frame whose header gives another content size than it holds.
	wrongSize := testEncoder.EncodeAll(chunk, nil)
	var h zstd.Header
	if err := h.Decode(wrongSize); err != nil || !h.HasFCS || h.FrameContentSize != 5000 {
		t.Fatalf("test frame header: %+v, %v", h, err)
	}
	// 5000 as a two-byte size field (value-256) right after the 6 bytes of
	// magic number, descriptor and window: give it 4000 instead.
	if binary.LittleEndian.Uint16(wrongSize[5:]) != 5000-256 {
		t.Fatalf("test frame: no two-byte content size at offset 5: % x", wrongSize[:8])
	}
	binary.LittleEndian.PutUint16(wrongSize[5:], 4000-256)
	chunkLies := map[string]*lie{
		"chunk with other bytes":           new(lie).byte(chunkRaw).msg(append([]byte{1}, chunk...)),
		"oversized chunk":                  new(lie).byte(chunkRaw).length(1 << 40),
		"zstd frame that does not decode":  new(lie).byte(chunkZstd).msg([]byte("not zstd")),
		"zstd frame with a wrong checksum": new(lie).byte(chunkZstd).msg(badSum),
		"zstd frame with a wrong size":     new(lie).byte(chunkZstd).msg(wrongSize),
		"zstd bomb":                        new(lie).byte(chunkZstd).msg(bomb),
		"unknown chunk encoding":           new(lie).byte(9).msg(chunk),
	}
	for name, l := range chunkLies {
		raw := l.Bytes()
		var lent countedBuffers
		for _, bufs := range []Buffers{nil, &lent} {
			err := readChunks(new(lie).raw(raw).frames(), []castore.Digest{cd}, dec, bufs, func(_ castore.Digest, data, _ []byte) error {
				if bufs != nil {
					bufs.Put(data)
				}
				return nil
			})
			if !errors.Is(err, ErrBadData) {
				t.Errorf("%s (lent buffers: %v): %v, want ErrBadData", name, bufs != nil, err)
			}
		}
		if lent.out != 0 {
			t.Errorf("%s: %d lent buffers not given back", name, lent.out)
		}
	}

	// A record's fields are checked as it is decoded (its store paths by
	// the caller, with Info.Validate).
	symlink := base64.StdEncoding.EncodeToString((castore.Node{Type: castore.TypeSymlink, Target: []byte("x")}).Marshal())
	for _, rec := range []string{
		`{"path":"/nix/store/00000000000000000000000000000000-x","nar_hash":"md5:00","root":"` + symlink + `"}`,
		`{"path":"/nix/store/00000000000000000000000000000000-x","nar_hash":"sha256:0000000000000000000000000000000000000000000000000000","root":"/w=="}`,
		`{"path":"/nix/store/00000000000000000000000000000000-x","nar_hash":"sha256:0000000000000000000000000000000000000000000000000000"}`,
		`{"path":"/nix/store/00000000000000000000000000000000-x","nar_hash":"sha256:0000000000000000000000000000000000000000000000000000","root":"` + symlink + `","lists":"AQID"}`,
	} {
		if _, err := decodeRecord([]byte(rec)); !errors.Is(err, ErrBadData) {
			t.Errorf("record %s: %v, want ErrBadData", rec, err)
		}
	}
	if info, err := decodeRecord([]byte(`{"path":"/nix/store/00000000000000000000000000000000-x","nar_hash":"sha256:0000000000000000000000000000000000000000000000000000","root":"` + symlink + `","private":true}`)); err != nil || info.Private {
		t.Errorf("a record marked private: %+v, %v", info, err)
	}
}

func TestUploadCapStopsWithContext(t *testing.T) {
	src := newMemSource()
	d := src.addBlob(randomBytes(4, 100000), castore.MaxChunkSize)
	srv := NewServer(src, 1, slog.New(slog.DiscardHandler)) // one byte a second
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := srv.serve(ctx, bytes.NewReader(request(kindChunks, []byte{0}, uvarint(1), d[:])), &limitedWriter{ctx: ctx, w: io.Discard, limiter: srv.limiter, sent: &srv.sent}, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("capped upload with a cancelled context: %v", err)
	}
}

// FuzzServe feeds arbitrary requests to a server: it must answer or fail
// with an error, never panic or hang, whatever the bytes.
func FuzzServe(f *testing.F) {
	src := newMemSource()
	src.zstdFrames = true
	root, _ := testTree(src)
	d := src.addBlob(randomBytes(5, 70000), 30000)
	f.Add(request(kindRecord, uvarint(32), []byte("00000000000000000000000000000000")))
	f.Add(request(kindDirs, root[:]))
	f.Add(request(kindBlobs, uvarint(1), d[:], uvarint(70000)))
	f.Add(request(kindChunks, []byte{1}, uvarint(1), src.lists[d][0].Digest[:]))
	f.Fuzz(func(t *testing.T, req []byte) {
		srv := NewServer(src, 0, slog.New(slog.DiscardHandler))
		srv.serve(context.Background(), bytes.NewReader(req), io.Discard, nil)
	})
}

// FuzzClient feeds arbitrary answers to the client's readers: whatever
// they accept must be what was asked for.
func FuzzClient(f *testing.F) {
	src := newMemSource()
	src.zstdFrames = true
	root, _ := testTree(src)
	blob := randomBytes(6, 70000)
	bd := src.addBlob(blob, 30000)
	chunkDigests := []castore.Digest{src.lists[bd][0].Digest, src.lists[bd][1].Digest}
	dec, _ := zstd.NewReader(nil, zstd.WithDecoderMaxMemory(maxFrame*2))
	for _, req := range [][]byte{
		request(kindDirs, root[:]),
		request(kindBlobs, uvarint(1), bd[:], uvarint(uint64(len(blob)))),
		request(kindChunks, []byte{1}, uvarint(2), chunkDigests[0][:], chunkDigests[1][:]),
		request(kindRecord, uvarint(1), []byte("x")),
	} {
		fr, err := answer(f, src, req)
		if err != nil {
			f.Fatal(err)
		}
		b, _ := io.ReadAll(fr.r)
		f.Add(req[0], b)
	}
	f.Fuzz(func(t *testing.T, kind byte, ans []byte) {
		fr := &frames{r: bufio.NewReader(bytes.NewReader(ans))}
		switch kind % 4 {
		case 0:
			readDirectories(fr, root, func(d castore.Digest, dir *castore.Directory, raw []byte) error {
				if castore.Sum(raw) != d {
					t.Fatalf("directory %s accepted with other bytes", d)
				}
				return nil
			})
		case 1:
			lists, err := readChunkLists(fr, []BlobRef{{bd, uint64(len(blob))}})
			if err == nil && lists[0] != nil {
				var total uint64
				for _, r := range lists[0] {
					total += uint64(r.Size)
				}
				if total != uint64(len(blob)) {
					t.Fatalf("accepted a chunk list of %d bytes for a blob of %d", total, len(blob))
				}
			}
		case 2:
			readChunks(fr, chunkDigests, dec, nil, func(d castore.Digest, data, frame []byte) error {
				if castore.Sum(data) != d {
					t.Fatalf("chunk %s accepted with other bytes", d)
				}
				return nil
			})
		case 3:
			readRecord(fr)
		}
	})
}

// TestRecordKeepsOwnersMarks: a record sent to peers says nothing of
// whether the owner pinned the path (or made it private), nor how it came
// to the node, and reads back as the same path.
func TestRecordKeepsOwnersMarks(t *testing.T) {
	in := &pathinfo.Info{StorePath: "/nix/store/00000000000000000000000000000000-x",
		Root: castore.Node{Type: castore.TypeSymlink, Target: []byte("x")}, NarSize: 8, Pinned: true, Private: true, Source: pathinfo.SourceImport}
	b, err := encodeRecord(in)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte("pinned")) || bytes.Contains(b, []byte("private")) || bytes.Contains(b, []byte("source")) {
		t.Fatalf("the record peers get shows the owner's marks: %s", b)
	}
	out, err := decodeRecord(b)
	if err != nil || out.StorePath != in.StorePath || out.NarSize != in.NarSize || !in.Pinned {
		t.Fatalf("read back %+v, %v (and the node's own record kept its pin: %v)", out, err, in.Pinned)
	}
}
