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
	files map[*packSet]map[uint32]*os.File
}

// NewReader returns a Reader; Close it to release its files.
func (s *Store) NewReader() *Reader {
	return &Reader{s: s, files: map[*packSet]map[uint32]*os.File{}}
}

// Close closes the Reader's pack files.
func (r *Reader) Close() error {
	for set, files := range r.files {
		for _, f := range files {
			f.Close()
		}
		delete(r.files, set)
	}
	return nil
}

// section returns a reader over a range of a pack, positioned in a file of
// the Reader's own so that it can be sent with sendfile. Bytes are not
// hashed here: serving trusts the store as nginx trusts its disk, and
// `verify` checks every object.
func (r *Reader) section(set *packSet, loc chunkLoc) (*io.LimitedReader, error) {
	files := r.files[set]
	if files == nil {
		files = map[uint32]*os.File{}
		r.files[set] = files
	}
	f := files[loc.Pack]
	if f == nil {
		var err error
		if f, err = os.Open(set.path(loc.Pack)); err != nil {
			return nil, err
		}
		files[loc.Pack] = f
	}
	if _, err := f.Seek(loc.Offset, io.SeekStart); err != nil {
		return nil, err
	}
	return &io.LimitedReader{R: f, N: int64(loc.Size)}, nil
}

// WriteBlob writes the blob's content to w, chunk by chunk. A w that is a
// ChunkWriter gets each chunk by digest.
func (r *Reader) WriteBlob(ctx context.Context, w io.Writer, d Digest, size uint64) error {
	refs, err := r.s.BlobChunks(d, size)
	if err != nil {
		return err
	}
	cw, _ := w.(ChunkWriter)
	for _, ref := range refs {
		if err := ctx.Err(); err != nil {
			return err
		}
		if cw != nil {
			if done, err := cw.WriteChunk(ref); done || err != nil {
				if err != nil {
					return err
				}
				continue
			}
		}
		loc, err := r.s.chunkLoc(ref.Digest)
		if err != nil {
			return fmt.Errorf("chunk %s: %w", ref.Digest, err)
		}
		lr, err := r.section(r.s.raw, loc)
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

// ReadBlobAt reads from the blob made of refs, at off, into p, the way
// io.ReaderAt does: it returns io.EOF when it reads less than len(p)
// because the blob ends.
func (s *Store) ReadBlobAt(refs []ChunkRef, p []byte, off int64) (int, error) {
	var start int64 // offset of refs[i] in the blob
	n := 0
	for _, ref := range refs {
		end := start + int64(ref.Size)
		if end <= off {
			start = end
			continue
		}
		if len(p) == n {
			return n, nil
		}
		loc, err := s.chunkLoc(ref.Digest)
		if err != nil {
			return n, fmt.Errorf("chunk %s: %w", ref.Digest, err)
		}
		f, err := s.raw.reader(loc.Pack)
		if err != nil {
			return n, err
		}
		within := max(off+int64(n)-start, 0)
		k := min(int64(len(p)-n), int64(ref.Size)-within)
		if _, err := f.ReadAt(p[n:n+int(k)], loc.Offset+within); err != nil {
			return n, fmt.Errorf("castore: reading chunk %s: %w", ref.Digest, err)
		}
		n += int(k)
		start = end
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
