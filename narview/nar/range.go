package nar

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/p2pstore/p2pstore/castore"
)

// Ranges: a part of a NAR (what an HTTP Range request asks for) is
// rendered by walking the tree as for the whole NAR, with the framing
// passing through a window that drops what comes before the range and
// stops the walk after it. File contents before the range are neither
// read nor written: a file wholly before it is skipped by its size, one
// the range starts in is entered at the chunk it needs, and
// the bytes of that chunk before the range are skipped by seeking when
// they come as a range of a pack file. Directories are still read, as
// their NAR sizes are not stored.

// errRangeDone stops a ranged render once its last byte is out.
var errRangeDone = errors.New("nar: range complete")

// RenderRange writes n bytes of the NAR of the tree at root, from offset
// off, to w; n < 0 means to the end. A range that runs past the end of the
// NAR is an error once the NAR ends (the caller knows the NAR's size and
// checks the range against it).
func RenderRange(ctx context.Context, w io.Writer, root castore.Node, src Source, off, n int64) error {
	if off < 0 || n == 0 {
		return fmt.Errorf("nar: invalid range of %d bytes at %d", n, off)
	}
	toEnd := n < 0
	if toEnd {
		n = math.MaxInt64
	}
	win := &window{out: w, skip: off, left: n}
	nw := NewWriter(win)
	err := walk(ctx, nw, src, "", root, func(n castore.Node) error {
		if win.skip > 0 {
			return renderFileInRange(ctx, nw, src, n, win)
		}
		refs, err := src.FileChunks(ctx, n.Digest, n.Size)
		if err != nil {
			return err
		}
		return src.WriteChunks(ctx, nw, refs)
	})
	if err == nil {
		err = nw.Close()
	}
	switch {
	case errors.Is(err, errRangeDone):
		return nil
	case err != nil:
		return err
	case win.skip > 0 || (!toEnd && win.left > 0) || (toEnd && win.left == n):
		return fmt.Errorf("nar: range of %d bytes at %d runs past the end of the archive", n, off)
	}
	return nil
}

// renderFileInRange writes the contents of a file whose header has just
// been written in a ranged render that has not reached its range yet.
func renderFileInRange(ctx context.Context, w *Writer, src Source, n castore.Node, win *window) error {
	// The header goes through the window first, so that win.skip is what
	// is left before the range.
	if err := w.Flush(); err != nil {
		return err
	}
	skip := uint64(min(win.skip, int64(n.Size)))
	if skip == n.Size { // the whole file lies before the range
		win.skip -= int64(skip)
		return w.skipContents(int64(skip))
	}
	refs, err := src.FileChunks(ctx, n.Digest, n.Size)
	if err != nil {
		return err
	}
	var whole uint64
	for len(refs) > 0 && whole+uint64(refs[0].Size) <= skip {
		whole += uint64(refs[0].Size)
		refs = refs[1:]
	}
	win.skip -= int64(whole)
	if err := w.skipContents(int64(whole)); err != nil {
		return err
	}
	return src.WriteChunks(ctx, w, refs)
}

// window passes on the part of a stream that a range covers: it drops the
// first skip bytes, passes left more, then fails with errRangeDone.
type window struct {
	out  io.Writer
	skip int64
	left int64
}

func (w *window) Write(p []byte) (int, error) {
	total := len(p)
	if w.skip > 0 {
		k := min(int64(len(p)), w.skip)
		w.skip -= k
		p = p[k:]
	}
	if len(p) == 0 {
		return total, nil
	}
	last := int64(len(p)) >= w.left
	if last {
		p = p[:w.left]
	}
	n, err := w.out.Write(p)
	w.left -= int64(n)
	if err != nil {
		return total - len(p) + n, err
	}
	if last {
		return total, errRangeDone
	}
	return total, nil
}

// ReadFrom takes a range of a file (an *io.LimitedReader, as package
// splice passes large ones): the part before the window is skipped by
// seeking where the file allows it, and the rest goes to out's ReadFrom
// (sendfile), cut at the window's end.
func (w *window) ReadFrom(r io.Reader) (int64, error) {
	lr, ok := r.(*io.LimitedReader)
	if !ok {
		return io.Copy(struct{ io.Writer }{w}, r)
	}
	var done int64
	if w.skip > 0 {
		k := min(lr.N, w.skip)
		if s, ok := lr.R.(io.Seeker); ok {
			if _, err := s.Seek(k, io.SeekCurrent); err != nil {
				return 0, err
			}
			lr.N -= k
			done = k
		} else {
			var err error
			if done, err = io.CopyN(io.Discard, lr, k); err != nil {
				w.skip -= done
				return done, err
			}
		}
		w.skip -= done
	}
	if lr.N == 0 {
		return done, nil
	}
	if lr.N < w.left {
		n, err := io.Copy(w.out, lr)
		w.left -= n
		return done + n, err
	}
	part := &io.LimitedReader{R: lr.R, N: w.left}
	n, err := io.Copy(w.out, part)
	w.left -= n
	lr.N -= n
	if err == nil {
		err = errRangeDone
	}
	return done + n, err
}
