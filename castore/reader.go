package castore

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/p2pstore/p2pstore/internal/splice"
)

// Reader streams blobs out of the store for one consumer, such as one HTTP
// response. It opens the pack files it needs with file offsets of its own
// and hands out each chunk as an *io.LimitedReader over the pack file, so
// that io.Copy to a TCP connection (or an http.ResponseWriter) becomes a
// sendfile from the page cache. Not safe for concurrent use.
type Reader struct {
	s     *Store
	files map[*packSet]map[uint32]*os.File

	// A read-ahead window over the packs for small chunks and frames: the
	// chunks of a path's small files were written side by side, in NAR
	// order, and so were their frames, so one read serves many of them.
	win     []byte
	winSet  *packSet
	winPack uint32
	winOff  int64

	chunk, frame []byte // a frame-only chunk, decoded, and its frame
}

// readAhead is the size of the read-ahead window: any range smaller than
// splice.MinSendfile is read through it, and one read serves several
// small files.
const readAhead = 2 * splice.MinSendfile

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

// FileChunks returns the chunks of a file (a blob) of the given size, in
// order: with Directory and WriteChunks, what a NAR render reads.
func (r *Reader) FileChunks(_ context.Context, d Digest, size uint64) ([]ChunkRef, error) {
	return r.s.BlobChunks(d, size)
}

// WriteChunks writes the bytes of stored chunks to w, in order. Chunks
// that lie back to back in a pack (as the chunks of a file imported in
// one go do) go out as one range: one sendfile for a whole large file, one
// buffered read for small ones.
func (r *Reader) WriteChunks(ctx context.Context, w io.Writer, refs []ChunkRef) error {
	var run chunkLoc // contiguous bytes not written yet
	for _, ref := range refs {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, loc, err := r.chunkBytes(ref)
		if err != nil {
			return err
		}
		if data == nil { // in a raw pack: joins the run if it follows on
			if run.Size > 0 && loc.Pack == run.Pack && loc.Offset == run.Offset+int64(run.Size) && int64(run.Size)+int64(loc.Size) < 1<<30 {
				run.Size += loc.Size
				continue
			}
			if err := r.writeRange(w, run); err != nil {
				return err
			}
			run = loc
			continue
		}
		if err := r.writeRange(w, run); err != nil {
			return err
		}
		run = chunkLoc{}
		if _, err := w.Write(data); err != nil {
			return err
		}
	}
	return r.writeRange(w, run)
}

// chunkBytes returns a chunk's bytes when it has them in memory, decoded
// from its frame (valid until the next call); otherwise its location in a
// raw pack.
func (r *Reader) chunkBytes(ref ChunkRef) ([]byte, chunkLoc, error) {
	loc, err := r.s.refLoc(ref)
	if err != nil || loc.Frame == 0 {
		return nil, loc, err
	}
	if r.chunk, err = r.s.readChunkAt(loc, r.chunk[:0], &r.frame); err != nil {
		return nil, chunkLoc{}, fmt.Errorf("chunk %s: %w", ref.Digest, err)
	}
	return r.chunk, loc, nil
}

// refLoc is where the chunk of a blob's chunk list is, checked against
// the size the list gives it.
func (s *Store) refLoc(ref ChunkRef) (chunkLoc, error) {
	loc, err := s.chunkLoc(ref.Digest)
	if err != nil {
		return loc, fmt.Errorf("chunk %s: %w", ref.Digest, err)
	}
	if loc.Size != ref.Size {
		return loc, fmt.Errorf("castore: chunk %s: index says %d bytes, blob %d", ref.Digest, loc.Size, ref.Size)
	}
	return loc, nil
}

// writeRange writes a range of a raw pack to w.
func (r *Reader) writeRange(w io.Writer, loc chunkLoc) error {
	if loc.Size == 0 {
		return nil
	}
	if loc.Size < splice.MinSendfile {
		data, err := r.small(r.s.raw, loc)
		if err != nil {
			return err
		}
		_, err = w.Write(data)
		return err
	}
	lr, err := r.section(r.s.raw, loc)
	if err != nil {
		return err
	}
	n, err := io.Copy(w, lr)
	if err == nil && n != int64(loc.Size) {
		err = fmt.Errorf("castore: pack %d has %d of the %d bytes at %d", loc.Pack, n, loc.Size, loc.Offset)
	}
	return err
}

// small returns the bytes of a range of set smaller than
// splice.MinSendfile (a small chunk, a run of them, a frame) from the
// read-ahead window, reading on if they are not all in it: a range that
// begins in the window keeps its part, which is moved to the front, and
// the read begins where the window ends. The bytes are valid until the
// next call.
func (r *Reader) small(set *packSet, loc chunkLoc) ([]byte, error) {
	end := loc.Offset + int64(loc.Size)
	sameFile := r.win != nil && set == r.winSet && loc.Pack == r.winPack
	if sameFile && loc.Offset >= r.winOff && end <= r.winOff+int64(len(r.win)) {
		return r.win[loc.Offset-r.winOff : end-r.winOff], nil
	}
	f, err := set.reader(loc.Pack)
	if err != nil {
		return nil, err
	}
	if cap(r.win) < readAhead {
		r.win = make([]byte, 0, readAhead)
	}
	kept := 0
	if sameFile && loc.Offset >= r.winOff && loc.Offset < r.winOff+int64(len(r.win)) {
		kept = copy(r.win[:readAhead], r.win[loc.Offset-r.winOff:])
	}
	n, err := f.ReadAt(r.win[kept:readAhead], loc.Offset+int64(kept))
	if kept+n < int(loc.Size) {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		r.win = r.win[:0]
		return nil, fmt.Errorf("castore: reading pack %d: %w", loc.Pack, err)
	}
	r.win, r.winSet, r.winPack, r.winOff = r.win[:kept+n], set, loc.Pack, loc.Offset
	return r.win[:loc.Size], nil
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
		loc, err := s.refLoc(ref)
		if err != nil {
			return n, err
		}
		within := max(off+int64(n)-start, 0)
		k := min(int64(len(p)-n), int64(ref.Size)-within)
		if loc.Frame > 0 {
			chunk, err := s.readChunkAt(loc, nil, nil)
			if err != nil {
				return n, fmt.Errorf("chunk %s: %w", ref.Digest, err)
			}
			copy(p[n:n+int(k)], chunk[within:])
		} else {
			f, err := s.raw.reader(loc.Pack)
			if err != nil {
				return n, err
			}
			if _, err := f.ReadAt(p[n:n+int(k)], loc.Offset+within); err != nil {
				return n, fmt.Errorf("castore: reading chunk %s: %w", ref.Digest, err)
			}
		}
		n += int(k)
		start = end
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
