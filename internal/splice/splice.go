// Package splice is the buffered writer under our NAR and zstd streams: it
// gathers small writes into large ones, and passes large file ranges (an
// *io.LimitedReader over an *os.File) to the destination's ReadFrom, which
// on a TCP connection is sendfile: the bytes go from the page cache to the
// socket without passing through the process.
package splice

import (
	"bufio"
	"io"
	"os"
	"syscall"
)

// MinSendfile is the range size from which a direct ReadFrom beats copying
// into the buffer (it costs a flush and a syscall of its own).
const MinSendfile = 64 << 10

// Writer buffers writes to w and splices large ranges.
type Writer struct {
	out io.Writer
	bw  *bufio.Writer
}

// NewWriter returns a Writer with a 64 KiB buffer.
func NewWriter(w io.Writer) *Writer { return NewWriterSize(w, 64<<10) }

// NewWriterSize returns a Writer with a buffer of size bytes.
func NewWriterSize(w io.Writer, size int) *Writer {
	return &Writer{out: w, bw: bufio.NewWriterSize(w, size)}
}

// Write buffers p.
func (w *Writer) Write(p []byte) (int, error) { return w.bw.Write(p) }

// WriteString buffers s.
func (w *Writer) WriteString(s string) (int, error) { return w.bw.WriteString(s) }

// Flush writes out the buffer.
func (w *Writer) Flush() error { return w.bw.Flush() }

// ReadFrom copies r to the destination until EOF: a large
// *io.LimitedReader goes to the destination's ReadFrom (sendfile), anything
// else through the buffer.
func (w *Writer) ReadFrom(r io.Reader) (int64, error) {
	if lr, ok := r.(*io.LimitedReader); ok && lr.N >= MinSendfile {
		if rf, ok := w.out.(io.ReaderFrom); ok {
			if err := w.bw.Flush(); err != nil {
				return 0, err
			}
			return rf.ReadFrom(lr)
		}
	}
	var total int64
	for {
		if w.bw.Available() == 0 {
			if err := w.bw.Flush(); err != nil {
				return total, err
			}
		}
		buf := w.bw.AvailableBuffer()[:w.bw.Available()]
		n, err := r.Read(buf)
		if n > 0 {
			w.bw.Write(buf[:n])
			total += int64(n)
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// SendFile sends a range of a file (an *io.LimitedReader over an *os.File,
// from the file's offset) to a socket with sendfile(2), for sockets whose
// Go type does not do it on its own (a unix socket). It reports false, with
// nothing sent, when r or dst is not of that kind.
func SendFile(dst syscall.Conn, r io.Reader) (int64, bool, error) {
	lr, ok := r.(*io.LimitedReader)
	if !ok {
		return 0, false, nil
	}
	f, ok := lr.R.(*os.File)
	if !ok || lr.N <= 0 {
		return 0, false, nil
	}
	off, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		return 0, false, nil
	}
	rc, err := dst.SyscallConn()
	if err != nil {
		return 0, false, nil
	}
	var srcFD int
	if err := withFD(f, func(fd int) { srcFD = fd }); err != nil {
		return 0, false, nil
	}
	var written int64
	var serr error
	err = rc.Write(func(fd uintptr) bool {
		for lr.N > 0 {
			n, err := syscall.Sendfile(int(fd), srcFD, &off, int(min(lr.N, 1<<30)))
			if n > 0 {
				written += int64(n)
				lr.N -= int64(n)
			}
			if err == syscall.EAGAIN {
				return false // wait until the socket is writable
			}
			if err == syscall.EINTR {
				continue
			}
			if err != nil {
				serr = err
				return true
			}
			if n == 0 {
				serr = io.ErrUnexpectedEOF
				return true
			}
		}
		return true
	})
	if serr == nil {
		serr = err
	}
	f.Seek(off, io.SeekStart)
	return written, true, serr
}

func withFD(f *os.File, fn func(fd int)) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	return rc.Control(func(fd uintptr) { fn(int(fd)) })
}
