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

// renderCached writes the part of an uncompressed NAR from the cache's
// file, by sendfile where w leads to a socket. It reports false, having
// written nothing, when the cache lacks the NAR; a whole request for a NAR
// it lacks may start the making of its file.
func (n *Node) renderCached(ctx context.Context, info *pathinfo.Info, part nar.Part, w io.Writer) (bool, error) {
	if n.narCache == nil || part.Compression != nar.CompressionNone {
		return false, nil
	}
	f, ok := n.narCache.Open(info.NarHash)
	if !ok {
		if part.N == 0 && n.narCache.Admit(info.NarHash, int64(info.NarSize)) {
			n.wg.Add(1)
			go n.fillNARCache(info)
		}
		return false, nil
	}
	defer f.Close()
	off, size := part.Off, part.N
	if size == 0 {
		size = int64(info.NarSize)
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

// fillNARCache makes the cache's file of a valid path's NAR, from castore,
// in the background: at most one at a time (the cache admits one).
func (n *Node) fillNARCache(info *pathinfo.Info) {
	defer n.wg.Done()
	ctx := n.bg
	hash := info.HashPart()
	release, held := n.limit.hold(hash)
	defer release()
	err := n.narCache.Fill(ctx, info.NarHash, int64(info.NarSize), func(ctx context.Context, w io.Writer) error {
		rec, err := n.index.Get(hash)
		if !held || err != nil || rec.NarHash != info.NarHash {
			return fmt.Errorf("not in the store yet")
		}
		r := n.store.NewReader()
		defer r.Close()
		return nar.Render(ctx, w, rec.Root, r)
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
