package node

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/p2pstore/p2pstore/narview/nar"
	"github.com/p2pstore/p2pstore/narview/narinfo"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

// TestCheckedNAR: the part asked for passes through, and only once the
// whole NAR matches its hash and size is the last write let go.
func TestCheckedNAR(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 1000)
	good := storepath.NarHash(sha256.Sum256(data))
	write := func(c *checkedNAR) error {
		for p := data; len(p) > 0; {
			k := min(len(p), 1000)
			if _, err := c.Write(p[:k]); err != nil {
				return err
			}
			p = p[k:]
		}
		return nil
	}
	for _, tc := range []struct {
		name     string
		off, end int64
	}{{"whole", 0, int64(len(data))}, {"range", 1500, 2600}, {"tail", 15000, int64(len(data))}} {
		var out bytes.Buffer
		c := &checkedNAR{w: &out, h: sha256.New(), size: int64(len(data)), off: tc.off, end: tc.end}
		if err := write(c); err != nil {
			t.Fatal(err)
		}
		if out.Len() >= int(tc.end-tc.off) {
			t.Errorf("%s: %d bytes out before the check, want the last write held back", tc.name, out.Len())
		}
		if err := c.finish(good); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if !bytes.Equal(out.Bytes(), data[tc.off:tc.end]) {
			t.Errorf("%s: got %d bytes, want bytes %d to %d", tc.name, out.Len(), tc.off, tc.end)
		}
	}

	var out bytes.Buffer
	c := &checkedNAR{w: &out, h: sha256.New(), size: int64(len(data)), end: int64(len(data))}
	write(c)
	if err := c.finish(storepath.NarHash{1}); !errors.Is(err, errNarMismatch) || out.Len() == len(data) {
		t.Errorf("wrong hash: %v with %d of %d bytes out", err, out.Len(), len(data))
	}
	c = &checkedNAR{w: &out, h: sha256.New(), size: int64(len(data)) - 1, end: int64(len(data))}
	if err := write(c); !errors.Is(err, errNarMismatch) {
		t.Errorf("a NAR longer than its NarSize: %v", err)
	}
}

// TestLocalTrust: a path is catalogued when one signature verifies with a
// trusted key (an upstream's too); a signature by a trusted key's name
// that does not verify is dropped, one by an unknown key kept.
func TestLocalTrust(t *testing.T) {
	good, _ := narinfo.GenerateKey("good-1")
	rotated, _ := narinfo.GenerateKey("good-1") // same name, other key
	other, _ := narinfo.GenerateKey("other-1")
	upstream, _ := narinfo.GenerateKey("upstream-1")
	n := &Node{keys: []narinfo.PublicKey{good.Public(), upstream.Public()}}
	l := &localShare{n: n}
	info := &pathinfo.Info{StorePath: "/nix/store/00000000000000000000000000000000-x", NarSize: 8}
	fp := info.Fingerprint()
	stale, fresh, unknown := rotated.Sign(fp), good.Sign(fp), other.Sign(fp)

	info.Sigs = []string{stale, fresh, unknown}
	if !l.trust(info) || !slices.Equal(info.Sigs, []string{fresh, unknown}) {
		t.Errorf("a stale and a good signature: kept %v", info.Sigs)
	}
	info.Sigs = []string{stale, unknown}
	if l.trust(info) || !slices.Equal(info.Sigs, []string{unknown}) {
		t.Errorf("no good signature: kept %v", info.Sigs)
	}
	info.Sigs = []string{upstream.Sign(fp)}
	if !l.trust(info) {
		t.Error("a path signed by an upstream key only is not trusted")
	}
	info.Sigs = nil
	if l.trust(info) {
		t.Error("an unsigned path is trusted")
	}
}

// signedLocal returns the info of a local path of this NAR, signed by a
// key the node trusts.
func signedLocal(t *testing.T, n *Node, nar []byte) *pathinfo.Info {
	t.Helper()
	key, err := narinfo.GenerateKey("local-1")
	if err != nil {
		t.Fatal(err)
	}
	n.keys = append(n.keys, key.Public())
	info := &pathinfo.Info{StorePath: "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-local",
		NarHash: storepath.NarHash(sha256.Sum256(nar)), NarSize: uint64(len(nar))}
	info.Sigs = []string{key.Sign(info.Fingerprint())}
	return info
}

// treeNAR returns the NAR of a directory holding one file f.
func treeNAR(t *testing.T, contents []byte) []byte {
	t.Helper()
	tree := t.TempDir()
	if err := os.WriteFile(filepath.Join(tree, "f"), contents, 0o644); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := nar.Dump(context.Background(), nar.NewWriter(&buf), tree); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// fakeLocal is a local store of one path whose dumps wait for release.
type fakeLocal struct {
	info    *pathinfo.Info
	nar     []byte
	dumps   atomic.Int32
	release chan struct{}
}

func (f *fakeLocal) Poll(context.Context, func(*pathinfo.Info) error, func(string)) error { return nil }
func (f *fakeLocal) Info(_ context.Context, path string) (*pathinfo.Info, error) {
	if f.info == nil || f.info.StorePath != path {
		return nil, pathinfo.ErrNotFound
	}
	c := *f.info
	return &c, nil
}
func (f *fakeLocal) Name() string { return "fake" }
func (f *fakeLocal) Close() error { return nil }
func (f *fakeLocal) Dump(ctx context.Context, path string, w io.Writer) error {
	f.dumps.Add(1)
	<-f.release
	_, err := w.Write(f.nar)
	return err
}

// TestLocalIngestOnce: peers asking at once for a local path not yet in
// castore share one ingestion, which makes the path valid.
func TestLocalIngestOnce(t *testing.T) {
	n := limitNode(t, 0)
	narBytes := treeNAR(t, []byte("local contents"))
	info := signedLocal(t, n, narBytes)
	src := &fakeLocal{info: info, nar: narBytes, release: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l := &localShare{n: n, src: src, paths: map[string]localPath{info.HashPart(): catalogued(info)}, ctx: ctx}
	n.local = l

	const askers = 8
	errs := make(chan error, askers)
	for range askers {
		go func() { errs <- l.ingest(context.Background(), info.HashPart()) }()
	}
	// Let the dump go once every asker has started one, or after a bound
	// (one ingestion: only one dump ever starts).
	for deadline := time.Now().Add(2 * time.Second); src.dumps.Load() < askers && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	close(src.release)
	for range askers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := src.dumps.Load(); got != 1 {
		t.Errorf("%d askers made %d dumps, want 1", askers, got)
	}
	if got, err := n.index.Get(info.HashPart()); err != nil || got.NarHash != info.NarHash {
		t.Errorf("after the ingestion the index has %+v, %v", got, err)
	}
}

// TestCopyAheadRoom: under storage.max_bytes, copies ahead of any request
// stop at three quarters of the limit, so that they never make the limit
// remove what clients asked for; without a limit they always fit.
func TestCopyAheadRoom(t *testing.T) {
	n := limitNode(t, 10*fileKiB<<10)
	addFilePath(t, n, 1, false) // 1 of the 7.5 file sizes copies may fill
	l := &localShare{n: n, paths: map[string]localPath{}}
	n.local = l
	for _, size := range []uint64{5 * fileKiB << 10, 7 * fileKiB << 10} {
		info := &pathinfo.Info{StorePath: fmt.Sprintf("/nix/store/%032d-local", size), NarSize: size}
		l.paths[info.HashPart()] = catalogued(info)
	}
	if !l.roomToCopyAhead(fmt.Sprintf("%032d", 5*fileKiB<<10)) {
		t.Error("a path that fits in three quarters of the limit is not copied ahead")
	}
	if l.roomToCopyAhead(fmt.Sprintf("%032d", 7*fileKiB<<10)) {
		t.Error("a path that would take the store past three quarters of the limit is copied ahead")
	}
	n.limit.max = 0
	if !l.roomToCopyAhead(fmt.Sprintf("%032d", 7*fileKiB<<10)) {
		t.Error("without a limit, a path is not copied ahead")
	}
}

// TestLocalCompressedNAR: a .nar.zst of a local path not yet in castore
// is the path's NAR once the node has copied it in; the catalog's record
// (which has no tree) is not what the render reads.
func TestLocalCompressedNAR(t *testing.T) {
	n := limitNode(t, 0)
	want := treeNAR(t, bytes.Repeat([]byte("local contents "), 1000))
	info := signedLocal(t, n, want)
	src := &fakeLocal{info: info, nar: want, release: make(chan struct{})}
	close(src.release)
	l := &localShare{n: n, src: src, paths: map[string]localPath{info.HashPart(): catalogued(info)}, ctx: context.Background()}
	n.local = l
	var got bytes.Buffer
	if err := n.NAR(context.Background(), l.info(info.HashPart()), nar.CompressionZstd, &got); err != nil {
		t.Fatal(err)
	}
	dec, err := zstd.NewReader(&got)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	plain, err := io.ReadAll(dec)
	if err != nil || !bytes.Equal(plain, want) {
		t.Fatalf("the .nar.zst decodes to %d bytes (%v), want the NAR's %d", len(plain), err, len(want))
	}
}

// TestLocalIngestReserves: copying a local path into castore makes room
// under storage.max_bytes before the copy, as a pull does.
func TestLocalIngestReserves(t *testing.T) {
	n := limitNode(t, 3*fileKiB<<10)
	a := addFilePath(t, n, 1, false)
	b := addFilePath(t, n, 2, false)
	c := addFilePath(t, n, 3, false)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "f"), []byte("local contents"), 0o644)
	var buf bytes.Buffer
	if err := nar.Dump(context.Background(), nar.NewWriter(&buf), filepath.Join(dir, "f")); err != nil {
		t.Fatal(err)
	}
	info := signedLocal(t, n, buf.Bytes())
	src := &fakeLocal{info: info, nar: buf.Bytes(), release: make(chan struct{})}
	l := &localShare{n: n, src: src, paths: map[string]localPath{info.HashPart(): catalogued(info)}, ctx: context.Background()}
	n.local = l
	done := make(chan error, 1)
	go func() { done <- l.ingest(context.Background(), info.HashPart()) }()
	for deadline := time.Now().Add(5 * time.Second); src.dumps.Load() == 0 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	got := held(n, a, b, c)
	close(src.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got[a] || !got[b] || !got[c] {
		t.Fatalf("held %v while the local path was copied into a full store; want the least recent removed first", got)
	}
}

// TestCopyAheadRetried: a path refused for copying ahead, for want of
// room, is copied once the store has room again, not lost for good.
func TestCopyAheadRetried(t *testing.T) {
	n := limitNode(t, 4*fileKiB<<10)
	for i := range 3 { // three quarters of the limit: no room to copy ahead
		addFilePath(t, n, i+1, false)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "f"), []byte("local contents"), 0o644)
	var buf bytes.Buffer
	if err := nar.Dump(context.Background(), nar.NewWriter(&buf), filepath.Join(dir, "f")); err != nil {
		t.Fatal(err)
	}
	info := signedLocal(t, n, buf.Bytes())
	hash := info.HashPart()
	src := &fakeLocal{info: info, nar: buf.Bytes(), release: make(chan struct{})}
	close(src.release)
	ctx, cancel := context.WithCancel(context.Background())
	l := &localShare{n: n, src: src, paths: map[string]localPath{hash: catalogued(info)}, ctx: ctx,
		behind: make(chan string, 1), wake: make(chan struct{}, 1), pending: []string{hash}}
	n.local = l
	n.wg.Add(1)
	go l.ingestBehind(ctx)
	defer func() { cancel(); n.wg.Wait() }()
	refused := func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return len(l.refused) == 1
	}
	for deadline := time.Now().Add(5 * time.Second); !refused() && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if n.index.Has(hash) {
		t.Fatal("copied ahead with no room")
	}
	l.retryRefused() // still no room: nothing changes
	if _, err := n.evict(context.Background(), 2*fileKiB<<10); err != nil {
		t.Fatal(err)
	}
	l.retryRefused()
	for deadline := time.Now().Add(5 * time.Second); !n.index.Has(hash) && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if !n.index.Has(hash) {
		t.Fatal("a path refused for room was not copied once there was room")
	}
}

// TestLocalInfoReadAgain: the catalog keeps no whole infos: a path's info
// is read from the store when asked for, so it says what the store says
// now (a signature removed: no longer served; the path gone: dropped).
func TestLocalInfoReadAgain(t *testing.T) {
	n := limitNode(t, 0)
	info := signedLocal(t, n, []byte("nar"))
	src := &fakeLocal{info: info}
	l := &localShare{n: n, src: src, paths: map[string]localPath{info.HashPart(): catalogued(info)}}
	hash := info.HashPart()
	if got := l.info(hash); got == nil || !slices.Equal(got.Sigs, info.Sigs) {
		t.Fatalf("info %+v", got)
	}
	src.info = &pathinfo.Info{StorePath: info.StorePath, NarHash: info.NarHash, NarSize: info.NarSize}
	if got := l.info(hash); got != nil {
		t.Fatalf("a path whose signature is gone from the store: %+v", got)
	}
	src.info = nil
	if got := l.info(hash); got != nil || l.has(hash) {
		t.Fatalf("a path gone from the store: %+v, catalogued %v", got, l.has(hash))
	}
}
