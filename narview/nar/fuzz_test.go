package nar

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"testing"

	"github.com/p2pstore/p2pstore/castore"
)

// memStore keeps a tree in memory: the fuzz target's ObjectWriter and
// Source, so that it runs at the speed of the codec, not of fsync.
type memStore struct {
	blobs map[castore.Digest][]byte
	dirs  map[castore.Digest]*castore.Directory
}

func (m *memStore) PutBlob(r io.Reader) (castore.Digest, uint64, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return castore.Digest{}, 0, err
	}
	d := castore.Sum(b)
	m.blobs[d] = b
	return d, uint64(len(b)), nil
}

func (m *memStore) PutDirectory(dir *castore.Directory) (castore.Digest, error) {
	if err := dir.Validate(); err != nil {
		return castore.Digest{}, err
	}
	d := dir.Digest()
	m.dirs[d] = dir
	return d, nil
}

func (m *memStore) Directory(_ context.Context, d castore.Digest) (*castore.Directory, error) {
	if dir, ok := m.dirs[d]; ok {
		return dir, nil
	}
	return nil, errors.New("no such directory")
}

// FileChunks gives a file as one chunk, its whole content.
func (m *memStore) FileChunks(_ context.Context, d castore.Digest, size uint64) ([]castore.ChunkRef, error) {
	if b, ok := m.blobs[d]; !ok || uint64(len(b)) != size {
		return nil, errors.New("no such blob")
	}
	return []castore.ChunkRef{{Digest: d, Size: uint32(size)}}, nil
}

func (m *memStore) WriteChunks(_ context.Context, w io.Writer, refs []castore.ChunkRef) error {
	for _, r := range refs {
		if _, err := w.Write(m.blobs[r.Digest]); err != nil {
			return err
		}
	}
	return nil
}

// FuzzIngest feeds arbitrary bytes to the NAR reader and ingests what it
// accepts: no input may panic or make it allocate by a declared length,
// and a NAR it accepts is canonical, so the tree it stored renders back to
// exactly the input, whose hash and size the reader reports. Seeds are in
// testdata/fuzz/FuzzIngest.
func FuzzIngest(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		ctx := context.Background()
		m := &memStore{blobs: map[castore.Digest][]byte{}, dirs: map[castore.Digest]*castore.Directory{}}
		r := NewReader(bytes.NewReader(data))
		root, err := Ingest(ctx, r, m)
		if err != nil {
			return
		}
		if r.NarSize() > int64(len(data)) || r.NarHash() != sha256.Sum256(data[:r.NarSize()]) {
			t.Fatalf("reader reports %d bytes and another hash, of %d", r.NarSize(), len(data))
		}
		var out bytes.Buffer
		if err := Render(ctx, &out, root, m); err != nil {
			t.Fatalf("rendering an ingested NAR: %v", err)
		}
		if !bytes.Equal(out.Bytes(), data[:r.NarSize()]) {
			t.Fatalf("an accepted NAR renders back to other bytes:\n in %q\nout %q", data, out.Bytes())
		}
	})
}
