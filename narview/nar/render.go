package nar

import (
	"context"
	"fmt"
	"io"

	"github.com/ulikunitz/xz"

	"github.com/p2pstore/p2pstore/castore"
)

// Rendering: the NAR of a castore tree is made on the fly, for each
// client, from a Source (the store's castore.Reader, or a fetch in
// progress that hands over chunks as they arrive). The NAR framing is
// written here; file contents are the Source's chunks, written as bytes
// (through the Writer, whose ReadFrom lets a pack range go out by
// sendfile), or, for a zstd NAR, spliced as each chunk's stored zstd frame
// by a Splicer. Which way a render goes is the caller's choice (RenderPart),
// not something the writers find out about each other.

// Source is where a render gets a tree.
type Source interface {
	Directory(ctx context.Context, d castore.Digest) (*castore.Directory, error)
	// FileChunks returns a file's chunks, in order.
	FileChunks(ctx context.Context, d castore.Digest, size uint64) ([]castore.ChunkRef, error)
	// WriteChunks writes the chunks' bytes to w, in order.
	WriteChunks(ctx context.Context, w io.Writer, refs []castore.ChunkRef) error
}

// Splicer is a zstd stream of independent frames (castore.ZstdWriter):
// bytes written to it go out as raw frames, a chunk given to SpliceChunk
// as the chunk's stored frame; Close flushes it.
type Splicer interface {
	io.Writer
	SpliceChunk(ref castore.ChunkRef) error
	Close() error
}

// Part is what a client asks of a NAR: the whole of it, compressed as
// asked, or (N > 0) N bytes of the uncompressed NAR from Off.
type Part struct {
	Compression Compression
	Off, N      int64
}

// xzDictCap is the dictionary of .nar.xz renders: that of xz -1. The
// encoder's memory grows with it (its hash table most): about 20 MB of
// RSS at 1 MiB after some megabytes of input, against 74 MB at the
// library's default of 8 MiB. No narinfo of ours advertises xz; it is for
// clients that ask for it, and not worth more per client.
const xzDictCap = 1 << 20

// NewXzWriter returns the compressor of .nar.xz responses on w.
func NewXzWriter(w io.Writer) (io.WriteCloser, error) {
	return xz.WriterConfig{DictCap: xzDictCap}.NewWriter(w)
}

// RenderPart writes the part of the tree's NAR a client asks for to w. A
// zstd NAR goes through the Splicer newSplicer makes on w; xz is
// compressed here, on the fly.
func RenderPart(ctx context.Context, w io.Writer, root castore.Node, src Source, part Part, newSplicer func(io.Writer) Splicer) error {
	switch {
	case part.Compression == CompressionZstd:
		return RenderSpliced(ctx, newSplicer(w), root, src)
	case part.Compression == CompressionXz:
		xw, err := NewXzWriter(w)
		if err != nil {
			return err
		}
		if err := Render(ctx, xw, root, src); err != nil {
			return err
		}
		return xw.Close()
	case part.N > 0:
		return RenderRange(ctx, w, root, src, part.Off, part.N)
	}
	return Render(ctx, w, root, src)
}

// Render writes the NAR of the tree at root to w, file contents as the
// chunks' bytes.
func Render(ctx context.Context, w io.Writer, root castore.Node, src Source) error {
	nw := NewWriter(w)
	err := walk(ctx, nw, src, "", root, func(n castore.Node) error {
		refs, err := src.FileChunks(ctx, n.Digest, n.Size)
		if err != nil {
			return err
		}
		return src.WriteChunks(ctx, nw, refs)
	})
	if err != nil {
		return err
	}
	return nw.Close()
}

// RenderSpliced writes the NAR of the tree at root as a zstd stream
// through z: the framing as raw frames, file contents as their chunks'
// stored frames. src's WriteChunks is not used.
func RenderSpliced(ctx context.Context, z Splicer, root castore.Node, src Source) error {
	// The framing is all that passes through nw here: a small buffer,
	// since every response holds one.
	nw := newWriterSize(z, 4<<10)
	err := walk(ctx, nw, src, "", root, func(n castore.Node) error {
		refs, err := src.FileChunks(ctx, n.Digest, n.Size)
		if err != nil {
			return err
		}
		for _, ref := range refs {
			if err := nw.splice(ref, z); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		err = nw.Close()
	}
	if err != nil {
		return err
	}
	return z.Close()
}

// walk writes the NAR framing of the tree at n in NAR order, and calls
// file for the contents of each regular file after its header.
func walk(ctx context.Context, w *Writer, src Source, p string, n castore.Node, file func(n castore.Node) error) error {
	switch n.Type {
	case castore.TypeFile:
		if err := w.WriteHeader(&Header{Path: p, Type: TypeRegular, Size: int64(n.Size), Executable: n.Executable}); err != nil {
			return err
		}
		if n.Size == 0 {
			return nil
		}
		return file(n)
	case castore.TypeSymlink:
		return w.WriteHeader(&Header{Path: p, Type: TypeSymlink, Target: string(n.Target)})
	case castore.TypeDirectory:
		if err := ctx.Err(); err != nil {
			return err
		}
		dir, err := src.Directory(ctx, n.Digest)
		if err != nil {
			return err
		}
		if err := w.WriteHeader(&Header{Path: p, Type: TypeDirectory}); err != nil {
			return err
		}
		return dir.EachEntry(func(name []byte, child castore.Node) error {
			cp := string(name)
			if p != "" {
				cp = p + "/" + cp
			}
			return walk(ctx, w, src, cp, child, file)
		})
	}
	return fmt.Errorf("nar: cannot render node type %v", n.Type)
}
