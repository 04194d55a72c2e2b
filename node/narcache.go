package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"github.com/p2pstore/p2pstore/narview/nar"
	"github.com/p2pstore/p2pstore/narview/narcache"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
)

// narCacheDir holds the NAR files of package narcache, under data_dir.
const narCacheDir = "narcache"

// openNARCache opens the cache of hot NARs, unless storage.nar_cache_bytes
// is 0.
func (n *Node) openNARCache() error {
	if n.cfg.NARCacheBytes <= 0 {
		return nil
	}
	c, err := narcache.Open(filepath.Join(n.cfg.DataDir, narCacheDir), n.cfg.NARCacheBytes, n.log)
	if err != nil {
		return fmt.Errorf("storage.nar_cache_bytes: %w", err)
	}
	n.narCache = c
	return nil
}

// renderCached writes the part of a NAR from the cache's file, by
// sendfile where w leads to a socket: an uncompressed NAR or a range of
// it, or a whole .nar.zst. It reports false, having written nothing, when
// the cache lacks the NAR; a whole request for a NAR it lacks may start
// the making of its file.
func (n *Node) renderCached(ctx context.Context, info *pathinfo.Info, part nar.Part, w io.Writer) (bool, error) {
	if n.narCache == nil || !cachedCompression(part.Compression) || part.Compression != nar.CompressionNone && part.N > 0 {
		return false, nil
	}
	key := narcache.Key{NarHash: info.NarHash, Compression: part.Compression}
	f, fileSize, ok := n.narCache.Open(key)
	if !ok {
		if part.N == 0 && n.narCache.Admit(key, int64(info.NarSize)) {
			n.wg.Add(1)
			go n.fillNARCache(info, part.Compression)
		}
		return false, nil
	}
	defer f.Close()
	off, size := part.Off, part.N
	if size == 0 {
		size = fileSize - off
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return true, err
	}
	// No WriterTo on the reader: io.Copy takes w's ReadFrom, sendfile.
	copied, err := io.Copy(w, &io.LimitedReader{R: f, N: size})
	if err == nil && copied != size {
		err = fmt.Errorf("cached NAR of %s: %w", info.StorePath, io.ErrUnexpectedEOF)
	}
	return true, err
}

// cachedCompression says whether the NAR cache keeps NARs so compressed:
// uncompressed, and zstd (Nix's /zstd view, Guix); xz is not advertised.
func cachedCompression(c nar.Compression) bool {
	return c == nar.CompressionNone || c == nar.CompressionZstd
}

// NARSize implements httpcache.Paths: the size of a whole NAR so
// compressed, when the node knows it before it sends it: the NAR cache's
// file, or for a .nar.zst of a stored path whose chunks all have their
// frames, what the splice of those frames comes to (counted from the
// index, no chunk read).
func (n *Node) NARSize(info *pathinfo.Info, c nar.Compression) (int64, bool) {
	switch c {
	case nar.CompressionNone:
		return int64(info.NarSize), true
	case nar.CompressionZstd:
	default:
		return 0, false
	}
	if n.narCache != nil {
		if size, ok := n.narCache.Size(narcache.Key{NarHash: info.NarHash, Compression: c}); ok {
			return size, true
		}
	}
	rec, err := n.index.Get(info.HashPart())
	if err != nil || rec.NarHash != info.NarHash {
		return 0, false // rendered from elsewhere (a pull, a fetch, the local store)
	}
	r := n.store.NewReader()
	defer r.Close()
	sizer := r.NewZstdSizer()
	if err := nar.RenderSpliced(n.bg, sizer, rec.Root, r); err != nil {
		return 0, false
	}
	return sizer.N, true
}

// fillNARCache makes the cache's file of a valid path's NAR, from castore,
// in the background: at most one at a time (the cache admits one). A
// .nar.zst is made once the compressor has made the zstd frames of the
// path's chunks (NARSize knows its size then): else it would hold chunks
// compressed on the spot at the fastest level.
func (n *Node) fillNARCache(info *pathinfo.Info, c nar.Compression) {
	defer n.wg.Done()
	ctx := n.bg
	hash := info.HashPart()
	release, held := n.limit.hold(hash)
	defer release()
	err := n.narCache.Fill(ctx, narcache.Key{NarHash: info.NarHash, Compression: c}, int64(info.NarSize), func(ctx context.Context, w io.Writer) error {
		rec, err := n.index.Get(hash)
		if !held || err != nil || rec.NarHash != info.NarHash {
			return fmt.Errorf("not in the store yet")
		}
		if _, known := n.NARSize(info, c); !known {
			// A .nar.zst whose size the index cannot tell has chunks
			// without their frame yet.
			return fmt.Errorf("zstd frames still being made")
		}
		r := n.store.NewReader()
		defer r.Close()
		return nar.RenderPart(ctx, w, rec.Root, r, nar.Part{Compression: c}, zstdSplicer(r))
	})
	switch {
	case errors.Is(err, narcache.ErrMismatch):
		// The store's bytes for this path are not its NAR.
		n.log.Error("the stored contents of a path do not render to its NarHash", "path", info.StorePath, "err", err)
		n.suspectNAR(hash) // its objects are checked, and it is repaired
	case err != nil && ctx.Err() == nil:
		n.log.Debug("not caching a NAR", "path", info.StorePath, "err", err)
	}
}

// narCacheStats are the cache's figures, zero without one.
func (n *Node) narCacheStats() narcache.Stats {
	if n.narCache == nil {
		return narcache.Stats{}
	}
	return n.narCache.Stats()
}
