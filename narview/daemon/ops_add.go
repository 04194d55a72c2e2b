package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/p2pstore/p2pstore/narview/storepath"
)

// Adding paths: a path comes with its info and its NAR, which streams into
// Store.AddPath; signatures can be added to it later. AddToStore and
// AddTextToStore, which would need the path computed here, are refused in
// the table of fixed answers.

// addToStoreNar: the path's info, repair and dontCheckSigs, then the NAR,
// framed (1.23 and later) or pulled with STDERR_READ (1.21, 1.22).
func (c *conn) addToStoreNar(ctx context.Context) error {
	p, err := c.path()
	if err != nil {
		return err
	}
	info, infoErr := readPathInfo(c.r, false, true)
	if info == nil {
		return infoErr
	}
	info.StorePath = p
	if err := skipAddFlags(c); err != nil {
		return err
	}
	if c.minor() >= 23 {
		fr := &framedReader{r: c.r, maxSize: MaxFrameLen}
		err := infoErr
		if err == nil {
			err = c.srv.store.AddPath(ctx, info, bufio.NewReaderSize(fr, 64<<10))
		}
		return c.endFramed(fr, err)
	}
	if infoErr != nil {
		return infoErr // the client only sends what we pull: nothing to drain
	}
	pr := &pullReader{c: c, left: info.NarSize}
	if err := c.srv.store.AddPath(ctx, info, bufio.NewReaderSize(pr, 64<<10)); err != nil {
		if pr.err != nil {
			return pr.err
		}
		return refusal(err)
	}
	c.last()
	return nil
}

// skipAddFlags reads repair and dontCheckSigs: the store checks every
// path it adds the same way, whatever the client asks.
var skipAddFlags = skipUint64s(2)

// endFramed reads the rest of an op's framed data to its terminator, so
// that the connection stays in step even when the data was refused
// half-way; then err, the refusal, is the client's.
func (c *conn) endFramed(fr *framedReader, err error) error {
	if derr := fr.drain(); derr != nil {
		return derr
	}
	if err != nil {
		return refusal(err)
	}
	c.last()
	return nil
}

// refusal turns a store's failure to add a path into an error for the
// client; the connection goes on, since the op's input was consumed.
func refusal(err error) error {
	var oe *opError
	if errors.As(err, &oe) {
		return err
	}
	return &opError{msg: err.Error()}
}

// pullReader asks the client for NAR bytes with STDERR_READ, never for
// more than the NarSize it announced (a client fails if asked for more).
type pullReader struct {
	c    *conn
	left uint64
	err  error
}

func (p *pullReader) Read(b []byte) (int, error) {
	if p.left == 0 {
		return 0, io.EOF
	}
	want := min(uint64(len(b)), p.left, 1<<20)
	p.c.w.Uint64(stderrRead)
	p.c.w.Uint64(want)
	if err := p.c.w.Flush(); err != nil {
		p.err = err
		return 0, err
	}
	n, err := p.c.r.BytesInto(b[:want])
	if err != nil {
		p.err = err
		return 0, err
	}
	if n == 0 {
		return 0, io.ErrUnexpectedEOF
	}
	p.left -= uint64(n)
	return n, nil
}

// addMultipleToStore: repair, dontCheckSigs, then a framed stream holding
// a count and, for each path, its info (format 16, with the path) and its
// NAR, unframed inside the frames. Items come dependencies first.
func (c *conn) addMultipleToStore(ctx context.Context) error {
	if err := skipAddFlags(c); err != nil {
		return err
	}
	fr := &framedReader{r: c.r, maxSize: MaxFrameLen}
	err := c.addEach(ctx, newWireReader(bufio.NewReaderSize(fr, 64<<10)))
	if errors.Is(err, ErrTooLarge) {
		// No client sends such a length: drop the rest with the
		// connection rather than read on through it.
		return err
	}
	return c.endFramed(fr, err)
}

// addEach adds the paths of an AddMultipleToStore stream.
func (c *conn) addEach(ctx context.Context, r *wireReader) error {
	count, err := r.Uint64()
	if err != nil {
		return err
	}
	if count > MaxListLen {
		return fmt.Errorf("%w: AddMultipleToStore of %d paths (at most %d)", ErrTooLarge, count, MaxListLen)
	}
	for i := uint64(0); i < count; i++ {
		r.resetBudget() // each path's info is dropped once it is added
		info, err := readPathInfo(r, true, true)
		if err != nil {
			return err
		}
		if _, err := storepath.Parse(c.srv.storeDir, info.StorePath); err != nil {
			return clientErr("%v", err)
		}
		if err := c.srv.store.AddPath(ctx, info, r.r); err != nil {
			return err
		}
	}
	return nil
}

// addSignatures adds signatures to a path the node holds.
func (c *conn) addSignatures(ctx context.Context) error {
	p, err := c.path()
	if err != nil {
		return err
	}
	sigs, err := c.r.Strings()
	if err != nil {
		return err
	}
	if err := c.srv.store.AddSignatures(ctx, p, sigs); err != nil {
		return err
	}
	c.last()
	c.w.Uint64(1)
	return nil
}
