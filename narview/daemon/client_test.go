package daemon

// The client's ops that only the tests send: with them the tests drive the
// server as Nix does.

import (
	"fmt"
	"io"

	"github.com/p2pstore/p2pstore/narview/pathinfo"
)

// IsValidPath reports whether the daemon holds path.
func (c *Client) IsValidPath(path string) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.call(opIsValidPath, func() { c.w.String(path) }); err != nil {
		return false, err
	}
	return c.r.Bool()
}

// AddToStoreNar sends a path and its NAR: framed from 1.23 on, pulled by
// the daemon with STDERR_READ before.
func (c *Client) AddToStoreNar(info *pathinfo.Info, narData io.Reader, dontCheckSigs bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.w.Uint64(opAddToStoreNar)
	c.w.String(info.StorePath)
	writePathInfo(c.w, info, false, true)
	c.w.Bool(false) // repair
	c.w.Bool(dontCheckSigs)
	if err := c.w.Flush(); err != nil {
		return err
	}
	if c.minor() >= 23 {
		// The daemon may answer while we upload: read its messages at the
		// same time, or both sides can block on full buffers. From here
		// only the goroutine writes.
		done := make(chan error, 1)
		fw := &framedWriter{w: c.w}
		go func() {
			_, err := io.Copy(fw, narData)
			if cerr := fw.Close(); err == nil {
				err = cerr
			}
			if ferr := c.w.Flush(); err == nil {
				err = ferr
			}
			done <- err
		}()
		serr := c.stderr(nil)
		werr := <-done
		if serr != nil {
			return serr
		}
		return werr
	}
	return c.stderr(func(max uint64) ([]byte, error) {
		buf := make([]byte, min(max, 1<<20))
		n, err := narData.Read(buf)
		if n == 0 && err != nil {
			return nil, fmt.Errorf("NAR ended early: %w", err)
		}
		return buf[:n], nil
	})
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
