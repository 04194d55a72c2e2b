package nar

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"io"

	"github.com/p2pstore/p2pstore/castore"
)

// maxToken bounds the strings of the NAR grammar itself ("directory",
// "executable", ...), so that a garbage length is refused before any
// allocation.
const maxToken = 16

// Reader parses a NAR. Next advances to the next node; after a regular
// file's header, Read returns its contents.
type Reader struct {
	src  io.Reader // reads exactly what is asked (a *bufio.Reader or similar)
	h    hash.Hash
	size int64

	started bool
	done    bool
	err     error

	dirs       []dirFrame // open directories, innermost last
	closes     int        // ")" tokens owed before the next token
	remaining  int64      // unread content of the current file
	contentPad int        // padding after the current file's content

	tok [8]byte
	buf []byte
}

type dirFrame struct {
	path     string
	lastName []byte
}

// NewReader returns a Reader parsing r. If r is not an io.ByteReader it is
// buffered, which may read past the end of the archive; pass a
// *bufio.Reader to parse a NAR embedded in a longer stream.
func NewReader(r io.Reader) *Reader {
	if _, ok := r.(io.ByteReader); !ok {
		r = bufio.NewReaderSize(r, 64<<10)
	}
	return &Reader{src: r, h: sha256.New(), buf: make([]byte, 0, 256)}
}

// NarHash returns the SHA-256 of the bytes consumed so far; after Next has
// returned io.EOF, that is the whole archive.
func (r *Reader) NarHash() (sum [32]byte) {
	r.h.Sum(sum[:0])
	return sum
}

// NarSize returns the number of bytes consumed so far.
func (r *Reader) NarSize() int64 { return r.size }

func (r *Reader) readFull(p []byte) error {
	n, err := io.ReadFull(r.src, p)
	r.h.Write(p[:n])
	r.size += int64(n)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return formatErr("truncated after %d bytes", r.size)
	}
	return err
}

func (r *Reader) readUint64() (uint64, error) {
	if err := r.readFull(r.tok[:]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(r.tok[:]), nil
}

func (r *Reader) skipPad(n int) error {
	if n == 0 {
		return nil
	}
	if err := r.readFull(r.tok[:n]); err != nil {
		return err
	}
	for _, b := range r.tok[:n] {
		if b != 0 {
			return formatErr("non-zero padding")
		}
	}
	return nil
}

// readString reads a string of at most max bytes into r.buf.
func (r *Reader) readString(max int) ([]byte, error) {
	n, err := r.readUint64()
	if err != nil {
		return nil, err
	}
	if n > uint64(max) {
		return nil, formatErr("string of %d bytes where at most %d fit", n, max)
	}
	if uint64(cap(r.buf)) < n {
		r.buf = make([]byte, n) // a long symlink target: up to max
	}
	r.buf = r.buf[:n]
	if err := r.readFull(r.buf); err != nil {
		return nil, err
	}
	return r.buf, r.skipPad(pad(int64(n)))
}

func (r *Reader) expect(tok string) error {
	b, err := r.readString(maxToken)
	if err != nil {
		return err
	}
	if string(b) != tok {
		return formatErr("got %q, want %q", b, tok)
	}
	return nil
}

// Next advances to the next node and returns its header. At the end of the
// archive it returns io.EOF; any unread file content is skipped.
func (r *Reader) Next() (*Header, error) {
	if r.err != nil {
		return nil, r.err
	}
	h, err := r.next()
	if err != nil {
		r.err = err
	}
	return h, err
}

func (r *Reader) next() (*Header, error) {
	if r.remaining > 0 {
		if _, err := io.CopyN(io.Discard, r, r.remaining); err != nil {
			return nil, err
		}
	}
	if !r.started {
		r.started = true
		if err := r.expect(magic); err != nil {
			return nil, err
		}
		return r.node("")
	}
	for {
		for ; r.closes > 0; r.closes-- {
			if err := r.expect(")"); err != nil {
				return nil, err
			}
		}
		if len(r.dirs) == 0 {
			r.done = true
			return nil, io.EOF
		}
		top := &r.dirs[len(r.dirs)-1]
		b, err := r.readString(maxToken)
		if err != nil {
			return nil, err
		}
		switch string(b) {
		case ")":
			r.dirs = r.dirs[:len(r.dirs)-1]
			if len(r.dirs) > 0 {
				r.closes = 1 // the entry that held this directory
			}
			continue
		case "entry":
		default:
			return nil, formatErr("got %q in a directory", b)
		}
		if err := r.expect("("); err != nil {
			return nil, err
		}
		if err := r.expect("name"); err != nil {
			return nil, err
		}
		name, err := r.readString(castore.MaxNameLen)
		if err != nil {
			return nil, err
		}
		if err := castore.ValidateName(name); err != nil {
			return nil, formatErr("%v", err)
		}
		if top.lastName != nil && bytes.Compare(top.lastName, name) >= 0 {
			return nil, formatErr("entry %q follows %q: not sorted", name, top.lastName)
		}
		top.lastName = append(top.lastName[:0], name...)
		path := string(name)
		if top.path != "" {
			path = top.path + "/" + path
		}
		if err := r.expect("node"); err != nil {
			return nil, err
		}
		return r.node(path)
	}
}

// node parses the start of a node at path, up to its contents.
func (r *Reader) node(path string) (*Header, error) {
	inEntry := len(r.dirs) > 0
	if err := r.expect("("); err != nil {
		return nil, err
	}
	if err := r.expect("type"); err != nil {
		return nil, err
	}
	b, err := r.readString(maxToken)
	if err != nil {
		return nil, err
	}
	h := &Header{Path: path}
	switch string(b) {
	case "regular":
		h.Type = TypeRegular
		b, err := r.readString(maxToken)
		if err != nil {
			return nil, err
		}
		if string(b) == "executable" {
			h.Executable = true
			if err := r.expect(""); err != nil {
				return nil, err
			}
			if b, err = r.readString(maxToken); err != nil {
				return nil, err
			}
		}
		if string(b) != "contents" {
			return nil, formatErr("got %q, want \"contents\"", b)
		}
		n, err := r.readUint64()
		if err != nil {
			return nil, err
		}
		if n > 1<<62 {
			return nil, formatErr("file of %d bytes", n)
		}
		h.Size = int64(n)
		r.remaining, r.contentPad = h.Size, pad(h.Size)
		r.closes = 1
		if inEntry {
			r.closes++
		}
	case "symlink":
		h.Type = TypeSymlink
		if err := r.expect("target"); err != nil {
			return nil, err
		}
		t, err := r.readString(castore.MaxSymlinkTargetLen)
		if err != nil {
			return nil, err
		}
		if err := castore.ValidateSymlinkTarget(t); err != nil {
			return nil, formatErr("%v", err)
		}
		h.Target = string(t)
		r.closes = 1
		if inEntry {
			r.closes++
		}
	case "directory":
		h.Type = TypeDirectory
		r.dirs = append(r.dirs, dirFrame{path: path})
	default:
		return nil, formatErr("unknown node type %q", b)
	}
	return h, nil
}

// Read reads the contents of the current regular file.
func (r *Reader) Read(p []byte) (int, error) {
	if r.remaining == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.remaining {
		p = p[:r.remaining]
	}
	n, err := r.src.Read(p)
	r.h.Write(p[:n])
	r.size += int64(n)
	r.remaining -= int64(n)
	if r.remaining == 0 {
		if perr := r.skipPad(r.contentPad); perr != nil {
			r.err = perr
			return n, perr
		}
		return n, nil
	}
	if err == io.EOF {
		err = formatErr("truncated in file contents after %d bytes", r.size)
		r.err = err
	}
	return n, err
}
