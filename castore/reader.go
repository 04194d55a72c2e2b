package castore

import (
	"context"
	"fmt"
	"io"
	"os"
)

// Reader streams blobs out of the store for one consumer, such as one HTTP
// response. It opens the pack files it needs with file offsets of its own
// and hands out each chunk as an *io.LimitedReader over the pack file, so
// that io.Copy to a TCP connection (or an http.ResponseWriter) becomes a
// sendfile from the page cache. Not safe for concurrent use.
type Reader struct {
	s     *Store
	files map[uint32]*os.File
}

// NewReader returns a Reader; Close it to release its files.
func (s *Store) NewReader() *Reader {
	return &Reader{s: s, files: map[uint32]*os.File{}}
}

// Close closes the Reader's pack files.
func (r *Reader) Close() error {
	for id, f := range r.files {
		f.Close()
		delete(r.files, id)
	}
	return nil
}

// chunk returns the bytes of one chunk as a reader positioned in its pack.
// Bytes are not hashed here: serving trusts the store as nginx trusts its
// disk, and `verify` checks every chunk.
func (r *Reader) chunk(d Digest) (*io.LimitedReader, error) {
	loc, err := r.s.chunkLoc(d)
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w", d, err)
	}
	f := r.files[loc.Pack]
	if f == nil {
		if f, err = os.Open(r.s.packPath(loc.Pack)); err != nil {
			return nil, err
		}
		r.files[loc.Pack] = f
	}
	if _, err := f.Seek(loc.Offset, io.SeekStart); err != nil {
		return nil, err
	}
	return &io.LimitedReader{R: f, N: int64(loc.Size)}, nil
}

// WriteBlob writes the blob's content to w, chunk by chunk.
func (r *Reader) WriteBlob(ctx context.Context, w io.Writer, d Digest, size uint64) error {
	refs, err := r.s.BlobChunks(d, size)
	if err != nil {
		return err
	}
	for _, ref := range refs {
		if err := ctx.Err(); err != nil {
			return err
		}
		lr, err := r.chunk(ref.Digest)
		if err != nil {
			return err
		}
		n, err := io.Copy(w, lr)
		if err != nil {
			return err
		}
		if n != int64(ref.Size) {
			return fmt.Errorf("castore: chunk %s: pack has %d of its %d bytes", ref.Digest, n, ref.Size)
		}
	}
	return nil
}

// Directory returns a stored directory.
func (r *Reader) Directory(_ context.Context, d Digest) (*Directory, error) {
	return r.s.Directory(d)
}
