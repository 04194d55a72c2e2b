package daemon

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Limits checked before anything is allocated: a client cannot make the
// server reserve more than these by sending a large length.
const (
	MaxStringLen = 64 << 10 // store paths, signatures, option values, messages
	MaxListLen   = 1 << 20  // entries of a list (paths of a closure)
	MaxFrameLen  = 8 << 20  // one frame of a framed stream
)

// ErrTooLarge marks a length over the limits above.
var ErrTooLarge = errors.New("daemon: length over the limit")

// wireReader decodes the protocol's primitives: u64 little-endian
// integers, and strings as a length, the bytes and zero padding to 8.
type wireReader struct {
	r   *bufio.Reader
	buf [8]byte
}

func newWireReader(r io.Reader) *wireReader {
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReaderSize(r, 64<<10)
	}
	return &wireReader{r: br}
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

// Bytes reads a string of at most max bytes.
func (r *wireReader) Bytes(max int) ([]byte, error) {
	n, err := r.Uint64()
	if err != nil {
		return nil, err
	}
	if n > uint64(max) {
		return nil, fmt.Errorf("%w: string of %d bytes (at most %d)", ErrTooLarge, n, max)
	}
	b := make([]byte, n)
	if err := r.readFull(b); err != nil {
		return nil, err
	}
	if pad := (8 - n%8) % 8; pad > 0 {
		if err := r.readFull(r.buf[:pad]); err != nil {
			return nil, err
		}
		for _, c := range r.buf[:pad] {
			if c != 0 {
				return nil, errors.New("daemon: non-zero padding")
			}
		}
	}
	return b, nil
}

func (r *wireReader) String() (string, error) {
	b, err := r.Bytes(MaxStringLen)
	return string(b), err
}

func (r *wireReader) count() (int, error) {
	n, err := r.Uint64()
	if err != nil {
		return 0, err
	}
	if n > MaxListLen {
		return 0, fmt.Errorf("%w: list of %d entries (at most %d)", ErrTooLarge, n, MaxListLen)
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
	var zero [8]byte
	w.write(zero[:(8-len(s)%8)%8])
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
// as one io.Reader. Frames have no padding.
type framedReader struct {
	r       *wireReader
	left    uint64
	done    bool
	maxSize uint64
}

func (f *framedReader) Read(p []byte) (int, error) {
	for f.left == 0 {
		if f.done {
			return 0, io.EOF
		}
		n, err := f.r.Uint64()
		if err != nil {
			return 0, err
		}
		if n == 0 {
			f.done = true
			return 0, io.EOF
		}
		if n > f.maxSize {
			return 0, fmt.Errorf("%w: frame of %d bytes", ErrTooLarge, n)
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
	return n, err
}

// drain reads the rest of the stream, up to its terminator, so that the
// connection stays in step after an error.
func (f *framedReader) drain() error {
	_, err := io.Copy(io.Discard, f)
	return err
}

// framedWriter writes a framed stream; Close writes the terminator.
type framedWriter struct {
	w *wireWriter
}

func (f *framedWriter) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		n := min(len(p), 32<<10)
		f.w.Uint64(uint64(n))
		f.w.write(p[:n])
		if f.w.err != nil {
			return 0, f.w.err
		}
		p = p[n:]
	}
	return total, nil
}

func (f *framedWriter) Close() error {
	f.w.Uint64(0)
	return f.w.err
}
