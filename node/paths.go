package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/internal/counting"
	"github.com/p2pstore/p2pstore/narview/nar"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
	"github.com/p2pstore/p2pstore/node/transfer"
)

// Info implements httpcache.Paths: the local index, the signed paths of
// the local Nix store, then the peers (and the upstreams, upstream.go).
// For a path fetched from peers it answers as soon as a trusted record is
// found; the NAR then streams as the chunks arrive.
func (n *Node) Info(ctx context.Context, hash string) (*pathinfo.Info, error) {
	info, err := n.index.Get(hash)
	if errors.Is(err, pathinfo.ErrNotFound) {
		if li := n.local.info(hash); li != nil {
			return li, nil
		}
	}
	if errors.Is(err, pathinfo.ErrNotFound) && n.up != nil && n.up.client != nil {
		return n.infoElsewhere(ctx, hash, n.up.client) // upstream.go
	}
	if errors.Is(err, pathinfo.ErrNotFound) && n.p2p != nil {
		j, err := n.p2p.fetch.Start(ctx, hash)
		if err != nil {
			return nil, err
		}
		return j.Info(), nil
	}
	if err == nil {
		n.limit.touch(hash)
	}
	return info, err
}

// lookup is Info for callers that need the path valid here: the daemon
// endpoint, whose clients read the path from the store mount.
func (n *Node) lookup(ctx context.Context, hash string) (*pathinfo.Info, error) {
	info, err := n.index.Get(hash)
	if errors.Is(err, pathinfo.ErrNotFound) && n.local.info(hash) != nil {
		if err = n.local.ingest(ctx, hash); err == nil {
			info, err = n.index.Get(hash)
		}
	}
	if errors.Is(err, pathinfo.ErrNotFound) && n.up != nil && n.up.client != nil {
		return n.lookupElsewhere(ctx, hash) // upstream.go
	}
	if errors.Is(err, pathinfo.ErrNotFound) && n.p2p != nil {
		info, _, err = n.p2p.fetch.Fetch(ctx, hash)
	}
	if err == nil {
		n.limit.touch(hash)
	}
	return info, err
}

// NAR implements httpcache.Paths: the NAR rendered from castore, or from a
// fetch in progress as its chunks arrive.
func (n *Node) NAR(ctx context.Context, info *pathinfo.Info, compression nar.Compression, w io.Writer) error {
	return n.renderPath(ctx, info, nar.Part{Compression: compression}, w)
}

// NARRange implements httpcache.Paths: n bytes of the uncompressed NAR
// from off, for a Range request.
func (n *Node) NARRange(ctx context.Context, info *pathinfo.Info, off, size int64, w io.Writer) error {
	return n.renderPath(ctx, info, nar.Part{Compression: nar.CompressionNone, Off: off, N: size}, w)
}

func (n *Node) renderPath(ctx context.Context, info *pathinfo.Info, part nar.Part, w io.Writer) error {
	cw := &counting.Writer{W: w}
	// Held for the whole render: the disk limit does not remove it under
	// the reader. A path being removed counts as absent.
	hash := info.HashPart()
	release, held := n.limit.hold(hash)
	defer release()
	if ok, err := n.renderCached(ctx, info, part, cw); ok {
		return err
	}
	absent := func() bool { return !held || !n.index.Has(hash) }
	if n.local != nil && absent() {
		if ok, err := n.local.render(ctx, info, part, cw); ok || err != nil {
			return err
		}
	}
	if n.up != nil && absent() {
		if handled, err := n.renderPulling(ctx, info, part, cw); handled {
			return err
		}
	}
	if n.p2p != nil && absent() {
		j := n.p2p.fetch.Running(hash)
		if j == nil && absent() {
			// Removed by the disk limit since its narinfo went out: the
			// peers are asked again.
			if j, _ = n.p2p.fetch.Start(ctx, hash); j != nil && j.Info() == nil {
				j = nil
			}
		}
		if j != nil && j.Info().NarHash == info.NarHash {
			return j.Render(ctx, cw, part)
		}
	}
	// The index's record, not info: a path the local catalog or a pull
	// job named (they know no tree) may have become valid meanwhile.
	rec, err := n.index.Get(hash)
	if !held || err != nil || rec.NarHash != info.NarHash {
		return fmt.Errorf("%s: %w", info.StorePath, pathinfo.ErrNotFound)
	}
	r := n.store.NewReader()
	defer r.Close()
	return nar.RenderPart(ctx, cw, rec.Root, r, part, zstdSplicer(r))
}

// zstdSplicer makes the zstd streams of NARs rendered through r.
func zstdSplicer(r *castore.Reader) func(io.Writer) nar.Splicer {
	return func(w io.Writer) nar.Splicer { return r.NewZstdWriter(w) }
}

// ErrBadInput marks an import the node refused for what the client sent.
var ErrBadInput = errors.New("bad input")

func badInput(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadInput, fmt.Sprintf(format, args...))
}

// Import adds one path from a NAR stream for `p2pstore import`; the NAR
// is checked against info, whose tree the node makes from it. share says
// whether the node signs it (and so shares it with peers) or keeps it
// private.
func (n *Node) Import(ctx context.Context, info *pathinfo.Info, r io.Reader, share Sharing) (*ImportResult, error) {
	info.Root, info.RootSigs, info.Lists, info.Private = castore.Node{}, nil, castore.Digest{}, false
	sign := n.cfg.SignImports
	switch share {
	case ShareDefault:
	case ShareSigned:
		if n.isGuix(info.StorePath) && n.guixKey == nil {
			return nil, badInput("--sign: the node has no Guix signing key (guix.sign_key_file)")
		}
		if !n.isGuix(info.StorePath) && n.signKey == nil {
			return nil, badInput("--sign: the node has no signing key (sign.key_file)")
		}
		sign = true
	case SharePrivate:
		sign, info.Private = false, true
	default:
		return nil, badInput("sharing %q: want %q, %q or none", share, ShareSigned, SharePrivate)
	}
	st, err := n.addPath(ctx, info, r, sign, pathinfo.SourceImport)
	if err != nil {
		return nil, err
	}
	return &ImportResult{Path: info.StorePath, NarSize: info.NarSize, NewBytes: st.NewBytes, DedupBytes: st.DedupBytes,
		NewChunks: st.NewChunks, Shared: n.shares(info)}, nil
}

// addPath stores one path from its NAR. The metadata is checked first
// (store paths, and any signature by a key the node knows), the NAR against
// the NarHash and NarSize before the path becomes valid. Paths come from
// the node's owner (the control API and the daemon socket are the owner's
// only); the node signs them with its key when sign is set (sign.imports,
// `import --sign`), which shares them (see sharing.go). src says where
// the path came from; those its owner added (SourceImport) are pinned
// (see disklimit.go). A path once private stays so when it is added again.
// A Guix path (guix.go) is checked against the Guix store and keys, and
// signed with the Guix key, in its Guix narinfo.
func (n *Node) addPath(ctx context.Context, info *pathinfo.Info, r io.Reader, sign bool, src pathinfo.Source) (castore.WriteStats, error) {
	isGuix := n.isGuix(info.StorePath)
	if err := info.Validate(n.storeDirOf(info.StorePath)); err != nil {
		return castore.WriteStats{}, badInput("%v", err)
	}
	if info.GuixNarinfo != "" {
		if err := n.checkGuixNarinfo(info); err != nil {
			return castore.WriteStats{}, err
		}
	}
	if isGuix {
		info.Sigs = nil // Nix signatures sign Nix paths
	} else {
		n.dropBadSigs(info)
	}
	n.importsRunning.Add(1)
	defer n.importsRunning.Add(-1)
	// The lease keeps the tree from gc until the path is recorded.
	lease := n.store.NewLease()
	defer lease.Release()
	w := lease.NewWriter()
	nr := nar.NewReader(r)
	root, err := nar.Ingest(ctx, nr, w)
	if err != nil {
		w.Abort()
		if errors.Is(err, nar.ErrFormat) {
			return castore.WriteStats{}, badInput("%s: %v", info.StorePath, err)
		}
		return castore.WriteStats{}, fmt.Errorf("%s: %w", info.StorePath, err)
	}
	if got := storepath.NarHash(nr.NarHash()); got != info.NarHash || uint64(nr.NarSize()) != info.NarSize {
		w.Abort()
		return castore.WriteStats{}, badInput("%s: NAR has hash %s and size %d, but the path info says %s and %d",
			info.StorePath, got, nr.NarSize(), info.NarHash, info.NarSize)
	}
	if err := w.Commit(); err != nil {
		return castore.WriteStats{}, err
	}
	info.Root, info.Pinned, info.Source = root, src == pathinfo.SourceImport, src
	n.carryOver(info)
	switch {
	case isGuix && sign && n.guixKey != nil && !info.Private && info.GuixNarinfo == "":
		if err := n.signGuix(info); err != nil {
			return castore.WriteStats{}, err
		}
	case !isGuix && sign && n.signKey != nil && !info.Private:
		info.AddSig(n.signKey.Sign(info.Fingerprint()))
	}
	if n.signKey != nil && !isGuix && n.shares(info) {
		// The node binds the tree and chunk lists of a path it shares to
		// the path, so that peers can check every object as it arrives.
		// (Not a Guix path's: its peers check it against its Guix
		// narinfo, a Nix key vouching for nothing of Guix's.)
		lists, err := n.store.TreeLists(ctx, root)
		if err != nil {
			return castore.WriteStats{}, err
		}
		info.Lists = castore.ListsDigest(lists)
		info.RootSigs = []string{n.signKey.Sign(transfer.RootFingerprint(info.StorePath, info.NarHash, info.NarSize, info.Root, info.Lists))}
	}
	if err := n.putSharedPath(ctx, info); err != nil {
		return castore.WriteStats{}, err
	}
	n.wakeCompressor()
	st := w.Stats()
	n.metrics.imported(info.NarSize, st)
	n.log.Info("added path", "path", info.StorePath, "nar_size", info.NarSize, "new_bytes", st.NewBytes)
	return st, nil
}

// daemonStore adapts the node to daemon.Store: for the Nix paths, or
// with guix for the Guix ones (guix.daemon_socket).
type daemonStore struct {
	n    *Node
	guix bool
}

func (d daemonStore) storeDir() string {
	if d.guix {
		return d.n.cfg.GuixStoreDir
	}
	return d.n.cfg.StoreDir
}

// PathInfo looks a full store path up; the hash part must name this very
// path. With lookup it goes to the peers (and the upstreams), as an HTTP
// narinfo request does on the store's listener, but answers once the
// path is valid here (clients read it from the mount).
func (d daemonStore) PathInfo(ctx context.Context, path string, lookup bool) (*pathinfo.Info, error) {
	sp, err := storepath.Parse(d.storeDir(), path)
	if err != nil {
		return nil, err
	}
	var info *pathinfo.Info
	switch {
	case lookup && d.guix:
		info, err = guixPaths{d.n}.Info(ctx, sp.Hash)
	case lookup:
		info, err = d.n.lookup(ctx, sp.Hash)
	default:
		info, err = d.n.index.Get(sp.Hash)
	}
	if err != nil {
		return nil, err
	}
	if info.StorePath != path {
		return nil, pathinfo.ErrNotFound
	}
	return info, nil
}

func (d daemonStore) PathFromHashPart(ctx context.Context, hash string) (string, error) {
	info, err := d.n.index.Get(hash)
	if err != nil {
		return "", err
	}
	if d.n.isGuix(info.StorePath) != d.guix {
		return "", pathinfo.ErrNotFound
	}
	return info.StorePath, nil
}

func (d daemonStore) AllPaths(ctx context.Context) ([]string, error) {
	var out []string
	err := d.n.index.ForEach(func(info *pathinfo.Info) error {
		if d.n.isGuix(info.StorePath) == d.guix {
			out = append(out, info.StorePath)
		}
		return nil
	})
	sort.Strings(out)
	return out, err
}

func (d daemonStore) WriteNAR(ctx context.Context, info *pathinfo.Info, w io.Writer) error {
	return d.n.NAR(ctx, info, nar.CompressionNone, w)
}

// AddPath adds a path from `nix copy --to`: signed (and shared) as
// sign.imports says. A Guix path comes from `guix archive --import`,
// whose archive a trusted key signed (the daemon checked it): the node
// vouches for it with its Guix key, when it has one.
func (d daemonStore) AddPath(ctx context.Context, info *pathinfo.Info, r io.Reader) error {
	sign := d.n.cfg.SignImports
	if d.guix {
		sign = d.n.guixKey != nil
	}
	_, err := d.n.addPath(ctx, info, r, sign, pathinfo.SourceImport)
	return err
}

// AddSignatures adds signatures to a path, dropping any by a key the node
// knows that does not verify.
func (d daemonStore) AddSignatures(ctx context.Context, path string, sigs []string) error {
	sp, err := storepath.Parse(d.n.cfg.StoreDir, path)
	if err != nil {
		return err
	}
	// Held from the read to the write, as SetPinned does: the write would
	// bring back a record whose objects the limit removed in between.
	release, ok := d.n.limit.hold(sp.Hash)
	defer release()
	if !ok {
		return fmt.Errorf("%s: %w", path, pathinfo.ErrNotFound)
	}
	info, err := d.PathInfo(ctx, path, false)
	if err != nil {
		return err
	}
	for _, s := range sigs {
		info.AddSig(s)
	}
	d.n.dropBadSigs(info)
	// A trusted signature may have made it shared.
	return d.n.putSharedPath(ctx, info)
}

// mountSource adapts the node to mount.Source.
type mountSource struct {
	*castore.Store
	n *Node
}

func (m mountSource) Path(ctx context.Context, hash string) (*pathinfo.Info, error) {
	info, err := m.n.index.Get(hash)
	if err == nil && m.n.isGuix(info.StorePath) {
		return nil, pathinfo.ErrNotFound
	}
	if err == nil {
		m.n.limit.touch(hash)
	}
	return info, err
}

// Reading keeps a path read through the mount for a while (readGrace):
// the mount cannot say when a reader is done.
func (m mountSource) Reading(hash string) { m.n.limit.read(hash) }

func (m mountSource) Paths(ctx context.Context) ([]string, error) {
	var out []string
	err := m.n.index.ForEach(func(info *pathinfo.Info) error {
		if !m.n.isGuix(info.StorePath) {
			out = append(out, path.Base(info.StorePath))
		}
		return nil
	})
	return out, err
}
