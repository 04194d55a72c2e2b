package daemon

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// wireReader decodes the protocol's primitives: u64 little-endian
// integers, and strings as a length, the bytes and zero padding to 8.
// With a budget (the server's), strings and list entries are counted
// against MaxOpBytes and MaxOpItems until the next resetBudget.
type wireReader struct {
	r   *bufio.Reader
	buf [8]byte

	budget    bool
	bytesLeft uint64
	itemsLeft uint64
}

func newWireReader(r io.Reader) *wireReader {
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReaderSize(r, 64<<10)
	}
	return &wireReader{r: br}
}

// resetBudget starts counting an operation's arguments.
func (r *wireReader) resetBudget() {
	r.budget, r.bytesLeft, r.itemsLeft = true, MaxOpBytes, MaxOpItems
}

func (r *wireReader) readFull(p []byte) error {
	_, err := io.ReadFull(r.r, p)
	if err == io.ErrUnexpectedEOF {
		err = io.EOF
	}
	return err
}

func (r *wireReader) Uint64() (uint64, error) {
	if err := r.readFull(r.buf[:]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(r.buf[:]), nil
}

// Bool accepts any non-zero value as true, as a lenient server should.
func (r *wireReader) Bool() (bool, error) {
	v, err := r.Uint64()
	return v != 0, err
}

// length reads a string's length, checked against max and the budget.
func (r *wireReader) length(max int) (int, error) {
	n, err := r.Uint64()
	if err != nil {
		return 0, err
	}
	if n > uint64(max) {
		return 0, fmt.Errorf("%w: string of %d bytes (at most %d)", ErrTooLarge, n, max)
	}
	if r.budget {
		if n > r.bytesLeft {
			return 0, fmt.Errorf("%w: the strings of one operation take more than %d bytes", ErrTooLarge, MaxOpBytes)
		}
		r.bytesLeft -= n
	}
	return int(n), nil
}

// String reads a string of at most MaxStringLen bytes, copied once from
// the read buffer into the string.
func (r *wireReader) String() (string, error) {
	n, err := r.length(MaxStringLen)
	if err != nil {
		return "", err
	}
	var s strings.Builder
	s.Grow(n)
	for s.Len() < n {
		chunk, err := r.r.Peek(min(n-s.Len(), r.r.Size()))
		if len(chunk) == 0 && err != nil {
			if err == io.ErrUnexpectedEOF {
				err = io.EOF
			}
			return "", err
		}
		s.Write(chunk)
		r.r.Discard(len(chunk))
	}
	if err := r.padding(uint64(n)); err != nil {
		return "", err
	}
	return s.String(), nil
}

// BytesInto reads a string of at most len(p) bytes into p: data that
// streams through (a NAR pulled with STDERR_READ), so not counted.
func (r *wireReader) BytesInto(p []byte) (int, error) {
	n, err := r.Uint64()
	if err != nil {
		return 0, err
	}
	if n > uint64(len(p)) {
		return 0, fmt.Errorf("%w: %d bytes sent where %d were asked for", ErrTooLarge, n, len(p))
	}
	if err := r.readFull(p[:n]); err != nil {
		return 0, err
	}
	if err := r.padding(n); err != nil {
		return 0, err
	}
	return int(n), nil
}

// Skip reads a string of at most max bytes and drops it; it does not
// count against the budget.
func (r *wireReader) Skip(max int) error { return r.CopyTo(io.Discard, max) }

// CopyTo reads a string of at most max bytes into w, as it comes: data
// that streams through, not counted against the budget.
func (r *wireReader) CopyTo(w io.Writer, max int) error {
	n, err := r.Uint64()
	if err != nil {
		return err
	}
	if n > uint64(max) {
		return fmt.Errorf("%w: string of %d bytes (at most %d)", ErrTooLarge, n, max)
	}
	if _, err := io.CopyN(w, r.r, int64(n)); err != nil {
		if err == io.ErrUnexpectedEOF {
			err = io.EOF
		}
		return err
	}
	return r.padding(n)
}

// padding reads the zeros after a string of n bytes.
func (r *wireReader) padding(n uint64) error {
	pad := (8 - n%8) % 8
	if pad == 0 {
		return nil
	}
	if err := r.readFull(r.buf[:pad]); err != nil {
		return err
	}
	for _, c := range r.buf[:pad] {
		if c != 0 {
			return errors.New("daemon: non-zero padding")
		}
	}
	return nil
}

// count reads the length of a list (or map), charged whole against the
// budget before any entry is read.
func (r *wireReader) count() (int, error) {
	n, err := r.Uint64()
	if err != nil {
		return 0, err
	}
	if n > MaxListLen {
		return 0, fmt.Errorf("%w: list of %d entries (at most %d)", ErrTooLarge, n, MaxListLen)
	}
	if r.budget {
		if n > r.itemsLeft {
			return 0, fmt.Errorf("%w: the lists of one operation hold more than %d entries", ErrTooLarge, MaxOpItems)
		}
		r.itemsLeft -= n
	}
	return int(n), nil
}

func (r *wireReader) Strings() ([]string, error) {
	n, err := r.count()
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, min(n, 1024))
	for i := 0; i < n; i++ {
		s, err := r.String()
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// StringMap reads a map of strings, in the order sent.
func (r *wireReader) StringMap() ([][2]string, error) {
	n, err := r.count()
	if err != nil {
		return nil, err
	}
	out := make([][2]string, 0, min(n, 1024))
	for i := 0; i < n; i++ {
		k, err := r.String()
		if err != nil {
			return nil, err
		}
		v, err := r.String()
		if err != nil {
			return nil, err
		}
		out = append(out, [2]string{k, v})
	}
	return out, nil
}

// wireWriter encodes primitives into a buffer; Flush sends them.
type wireWriter struct {
	w   *bufio.Writer
	buf [8]byte
	err error
}

func newWireWriter(w io.Writer) *wireWriter {
	return &wireWriter{w: bufio.NewWriterSize(w, 64<<10)}
}

func (w *wireWriter) Uint64(v uint64) {
	binary.LittleEndian.PutUint64(w.buf[:], v)
	w.write(w.buf[:])
}

func (w *wireWriter) write(p []byte) {
	if w.err == nil {
		_, w.err = w.w.Write(p)
	}
}

// Bool writes exactly 0 or 1: C++ peers reject anything else.
func (w *wireWriter) Bool(v bool) {
	if v {
		w.Uint64(1)
	} else {
		w.Uint64(0)
	}
}

func (w *wireWriter) String(s string) {
	w.Uint64(uint64(len(s)))
	if w.err == nil {
		_, w.err = w.w.WriteString(s)
	}
	w.pad(len(s))
}

// Bytes writes p as String writes a string.
func (w *wireWriter) Bytes(p []byte) {
	w.Uint64(uint64(len(p)))
	w.write(p)
	w.pad(len(p))
}

func (w *wireWriter) pad(n int) {
	var zero [8]byte
	w.write(zero[:(8-n%8)%8])
}

func (w *wireWriter) Strings(ss []string) {
	w.Uint64(uint64(len(ss)))
	for _, s := range ss {
		w.String(s)
	}
}

func (w *wireWriter) Flush() error {
	if w.err == nil {
		w.err = w.w.Flush()
	}
	return w.err
}

// framedReader reads a framed stream, (u64 n, n bytes)* ended by n = 0,
// as one io.Reader. Frames have no padding. A frame over maxSize is an
// error at once, and every later Read returns it too: the stream cannot
// be followed past a length that was not believed.
type framedReader struct {
	r       *wireReader
	left    uint64
	done    bool
	maxSize uint64
	err     error
}

func (f *framedReader) Read(p []byte) (int, error) {
	if f.err != nil {
		return 0, f.err
	}
	for f.left == 0 {
		if f.done {
			return 0, io.EOF
		}
		n, err := f.r.Uint64()
		if err != nil {
			f.err = err
			return 0, err
		}
		if n == 0 {
			f.done = true
			return 0, io.EOF
		}
		if n > f.maxSize {
			f.err = fmt.Errorf("%w: a frame of %d bytes in framed data (at most %d)", ErrTooLarge, n, f.maxSize)
			return 0, f.err
		}
		f.left = n
	}
	if uint64(len(p)) > f.left {
		p = p[:f.left]
	}
	n, err := f.r.r.Read(p)
	f.left -= uint64(n)
	if err == io.EOF && f.left > 0 {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		f.err = err
	}
	return n, err
}

// drain reads the rest of the stream, up to its terminator, so that the
// connection stays in step after an error.
func (f *framedReader) drain() error {
	_, err := io.Copy(io.Discard, f)
	return err
}
