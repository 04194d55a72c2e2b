package nar

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/internal/splice"
)

// Writer writes a NAR: WriteHeader for each node in NAR order (a directory
// before its entries, entries sorted by name), each regular file's contents
// through Write or ReadFrom, then Close.
type Writer struct {
	out io.Writer
	bw  *splice.Writer

	started    bool
	dirs       []dirFrame
	closes     int
	remaining  int64
	contentPad int
	err        error
	zero       [8]byte
}

// NewWriter returns a Writer to w.
func NewWriter(w io.Writer) *Writer {
	return &Writer{out: w, bw: splice.NewWriter(w)}
}

// newWriterSize returns a Writer to w with a buffer of size bytes.
func newWriterSize(w io.Writer, size int) *Writer {
	return &Writer{out: w, bw: splice.NewWriterSize(w, size)}
}

func (w *Writer) writeString(s string) {
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(s)))
	w.bw.Write(n[:])
	w.bw.WriteString(s)
	w.bw.Write(w.zero[:pad(int64(len(s)))])
}

// tokens encodes the NAR grammar's fixed strings, each as it is written
// (length, bytes, padding): a node's framing is then a few writes of
// ready-made bytes rather than one write of each part of each string.
func tokens(ss ...string) []byte {
	var b []byte
	for _, s := range ss {
		b = binary.LittleEndian.AppendUint64(b, uint64(len(s)))
		b = append(b, s...)
		b = append(b, make([]byte, pad(int64(len(s))))...)
	}
	return b
}

var (
	tokEntryName   = tokens("entry", "(", "name")
	tokNodeType    = tokens("node", "(", "type")
	tokType        = tokens("(", "type")
	tokRegular     = tokens("regular", "contents")
	tokExecutable  = tokens("regular", "executable", "", "contents")
	tokSymlink     = tokens("symlink", "target")
	tokDirectory   = tokens("directory")
	tokClose       = tokens(")")
	tokCloseCloses = tokens(")", ")")
)

func (w *Writer) fail(err error) error {
	if w.err == nil {
		w.err = err
	}
	return err
}

// WriteHeader starts the next node.
func (w *Writer) WriteHeader(h *Header) error {
	if w.err != nil {
		return w.err
	}
	if w.remaining != 0 {
		return w.fail(fmt.Errorf("nar: %d bytes of file contents missing", w.remaining))
	}
	inEntry := w.started
	if !w.started {
		if h.Path != "" {
			return w.fail(errors.New("nar: the first node must be the root"))
		}
		w.started = true
		w.writeString(magic)
		w.bw.Write(tokType)
	} else {
		w.flushCloses()
		parent, name := splitPath(h.Path)
		for len(w.dirs) > 0 && w.dirs[len(w.dirs)-1].path != parent {
			w.closeDir()
		}
		if len(w.dirs) == 0 {
			return w.fail(fmt.Errorf("nar: %q is not inside an open directory", h.Path))
		}
		top := &w.dirs[len(w.dirs)-1]
		if err := castore.ValidateName([]byte(name)); err != nil {
			return w.fail(err)
		}
		if top.lastName != nil && string(top.lastName) >= name {
			return w.fail(fmt.Errorf("nar: %q written after %q: entries must be sorted", name, top.lastName))
		}
		top.lastName = append(top.lastName[:0], name...)
		w.bw.Write(tokEntryName)
		w.writeString(name)
		w.bw.Write(tokNodeType)
	}
	switch h.Type {
	case TypeRegular:
		if h.Executable {
			w.bw.Write(tokExecutable)
		} else {
			w.bw.Write(tokRegular)
		}
		if h.Size < 0 {
			return w.fail(fmt.Errorf("nar: negative size %d", h.Size))
		}
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], uint64(h.Size))
		w.bw.Write(n[:])
		w.remaining, w.contentPad = h.Size, pad(h.Size)
		w.closes = 1
	case TypeSymlink:
		if err := castore.ValidateSymlinkTarget([]byte(h.Target)); err != nil {
			return w.fail(err)
		}
		w.bw.Write(tokSymlink)
		w.writeString(h.Target)
		w.closes = 1
	case TypeDirectory:
		w.bw.Write(tokDirectory)
		w.dirs = append(w.dirs, dirFrame{path: h.Path})
		return nil
	default:
		return w.fail(fmt.Errorf("nar: unknown node type %v", h.Type))
	}
	if inEntry {
		w.closes++
	}
	return nil
}

func (w *Writer) flushCloses() {
	for ; w.closes >= 2; w.closes -= 2 {
		w.bw.Write(tokCloseCloses)
	}
	if w.closes == 1 {
		w.bw.Write(tokClose)
		w.closes = 0
	}
}

func (w *Writer) closeDir() {
	w.dirs = w.dirs[:len(w.dirs)-1]
	if len(w.dirs) > 0 {
		w.bw.Write(tokCloseCloses) // the directory node, and the entry that held it
	} else {
		w.bw.Write(tokClose)
	}
}

func (w *Writer) contentWritten(n int64) {
	w.remaining -= int64(n)
	if w.remaining == 0 {
		w.bw.Write(w.zero[:w.contentPad])
	}
}

// Write writes contents of the current regular file.
func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if int64(len(p)) > w.remaining {
		return 0, w.fail(fmt.Errorf("nar: %d bytes written to a file with %d left", len(p), w.remaining))
	}
	n, err := w.bw.Write(p)
	w.contentWritten(int64(n))
	if err != nil {
		return n, w.fail(err)
	}
	return n, nil
}

// ReadFrom copies file contents from r until EOF; a large range of a file
// goes to the destination by sendfile (see package splice).
func (w *Writer) ReadFrom(r io.Reader) (int64, error) {
	if w.err != nil {
		return 0, w.err
	}
	src := r
	lr, ok := r.(*io.LimitedReader)
	if !ok || lr.N > w.remaining {
		src = io.LimitReader(r, w.remaining) // a bare range keeps sendfile
	}
	n, err := w.bw.ReadFrom(src)
	if ok && lr.N > 0 && err == nil {
		err = errors.New("nar: more file contents than its header said")
	}
	w.contentWritten(n)
	if err != nil {
		return n, w.fail(err)
	}
	return n, nil
}

// skipContents counts n bytes of the current file's contents as written
// without writing them: a ranged render skips what lies before its range.
func (w *Writer) skipContents(n int64) error {
	if w.err != nil {
		return w.err
	}
	if n > w.remaining {
		return w.fail(fmt.Errorf("nar: %d bytes skipped in a file with %d left", n, w.remaining))
	}
	w.contentWritten(n)
	return nil
}

// splice passes one chunk of the current file's contents to z, which
// writes it as its stored frame rather than as bytes through here.
func (w *Writer) splice(ref castore.ChunkRef, z Splicer) error {
	if w.err != nil {
		return w.err
	}
	if int64(ref.Size) > w.remaining {
		return w.fail(fmt.Errorf("nar: chunk of %d bytes in a file with %d left", ref.Size, w.remaining))
	}
	if err := w.bw.Flush(); err != nil {
		return w.fail(err)
	}
	if err := z.SpliceChunk(ref); err != nil {
		return w.fail(err)
	}
	w.contentWritten(int64(ref.Size))
	return nil
}

// Flush writes out buffered data.
func (w *Writer) Flush() error {
	if err := w.bw.Flush(); err != nil {
		return w.fail(err)
	}
	return nil
}

// Close finishes the archive (closing open directories) and flushes it.
func (w *Writer) Close() error {
	if w.err != nil {
		return w.err
	}
	if !w.started {
		return w.fail(errors.New("nar: empty archive"))
	}
	if w.remaining != 0 {
		return w.fail(fmt.Errorf("nar: %d bytes of file contents missing", w.remaining))
	}
	w.flushCloses()
	for len(w.dirs) > 0 {
		w.closeDir()
	}
	return w.Flush()
}
