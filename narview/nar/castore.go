package nar

import (
	"context"
	"fmt"
	"io"

	"github.com/p2pstore/p2pstore/castore"
)

// ObjectWriter is what Ingest needs of a store: a *castore.Writer.
type ObjectWriter interface {
	PutBlob(r io.Reader) (castore.Digest, uint64, error)
	PutDirectory(d *castore.Directory) (castore.Digest, error)
}

// Ingest parses a NAR from r and stores its tree through w, returning the
// root node. The NAR's hash and size are then r.NarHash() and r.NarSize().
func Ingest(ctx context.Context, r *Reader, w ObjectWriter) (castore.Node, error) {
	type frame struct {
		path string
		dir  castore.Directory
	}
	var (
		stack []*frame
		root  castore.Node
	)
	// finish stores the innermost open directory and links it into its
	// parent (or makes it the root).
	finish := func() error {
		f := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		d, err := w.PutDirectory(&f.dir)
		if err != nil {
			return err
		}
		size := f.dir.Size()
		if len(stack) == 0 {
			root = castore.Node{Type: castore.TypeDirectory, Digest: d, Size: size}
			return nil
		}
		parent := &stack[len(stack)-1].dir
		parent.Directories = append(parent.Directories, castore.DirectoryEntry{
			Name: []byte(baseName(f.path)), Digest: d, Size: size,
		})
		return nil
	}
	for {
		if err := ctx.Err(); err != nil {
			return castore.Node{}, err
		}
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return castore.Node{}, err
		}
		parent, base := splitPath(h.Path)
		for len(stack) > 0 && stack[len(stack)-1].path != parent {
			if err := finish(); err != nil {
				return castore.Node{}, err
			}
		}
		name := []byte(base)
		var dir *castore.Directory
		if h.Path != "" {
			dir = &stack[len(stack)-1].dir
		}
		switch h.Type {
		case TypeDirectory:
			stack = append(stack, &frame{path: h.Path})
		case TypeRegular:
			d, size, err := w.PutBlob(r)
			if err != nil {
				return castore.Node{}, err
			}
			if int64(size) != h.Size {
				return castore.Node{}, fmt.Errorf("nar: %q: read %d of %d bytes", h.Path, size, h.Size)
			}
			if dir == nil {
				root = castore.Node{Type: castore.TypeFile, Digest: d, Size: size, Executable: h.Executable}
			} else {
				dir.Files = append(dir.Files, castore.FileEntry{Name: name, Digest: d, Size: size, Executable: h.Executable})
			}
		case TypeSymlink:
			if dir == nil {
				root = castore.Node{Type: castore.TypeSymlink, Target: []byte(h.Target)}
			} else {
				dir.Symlinks = append(dir.Symlinks, castore.SymlinkEntry{Name: name, Target: []byte(h.Target)})
			}
		}
	}
	for len(stack) > 0 {
		if err := finish(); err != nil {
			return castore.Node{}, err
		}
	}
	return root, nil
}

func baseName(p string) string {
	_, name := splitPath(p)
	return name
}
