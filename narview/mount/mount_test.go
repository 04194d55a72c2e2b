package mount

import (
	"context"
	"testing"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
)

// readSource is a Source of one file that records which paths are read.
type readSource struct {
	data []byte
	read []string
}

func (s *readSource) Path(context.Context, string) (*pathinfo.Info, error) {
	return nil, pathinfo.ErrNotFound
}
func (s *readSource) Paths(context.Context) ([]string, error) { return nil, nil }
func (s *readSource) Reading(hash string)                     { s.read = append(s.read, hash) }
func (s *readSource) Directory(castore.Digest) (*castore.Directory, error) {
	return &castore.Directory{}, nil
}
func (s *readSource) BlobChunks(castore.Digest, uint64) ([]castore.ChunkRef, error) { return nil, nil }
func (s *readSource) ReadBlobAt(_ []castore.ChunkRef, p []byte, off int64) (int, error) {
	return copy(p, s.data[off:]), nil
}

// TestReadSaysWhichPath: reading a file, and looking in or listing a
// directory, tell the source which path is read, so that the node keeps
// it under the reader.
func TestReadSaysWhichPath(t *testing.T) {
	src := &readSource{data: []byte("contents")}
	const hash = "0123456789abcdfghijklmnpqrsvwxyz"
	f := &fileNode{src: src, hash: hash, size: uint64(len(src.data))}
	buf := make([]byte, 4)
	if _, errno := f.Read(context.Background(), nil, buf, 2); errno != 0 || string(buf) != "nten" {
		t.Fatalf("read %q, errno %v", buf, errno)
	}
	d := &dirNode{src: src, hash: hash}
	if _, _, errno := d.OpendirHandle(context.Background(), 0); errno != 0 {
		t.Fatalf("opendir: errno %v", errno)
	}
	if len(src.read) != 2 || src.read[0] != hash || src.read[1] != hash {
		t.Fatalf("paths said read: %v", src.read)
	}
}
