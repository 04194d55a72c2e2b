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

// Source is what Render needs: directories, and a way to write a blob's
// bytes (a *castore.Reader, or a fetcher that gets them from peers).
type Source interface {
	Directory(ctx context.Context, d castore.Digest) (*castore.Directory, error)
	WriteBlob(ctx context.Context, w io.Writer, d castore.Digest, size uint64) error
}

// Render writes the NAR of the tree at root to w.
func Render(ctx context.Context, w io.Writer, root castore.Node, src Source) error {
	nw := NewWriter(w)
	if err := renderNode(ctx, nw, src, "", root, nil); err != nil {
		return err
	}
	return nw.Close()
}

// renderNode writes the NAR of a node; win is the window of a ranged
// render (see RenderRange), nil for a whole NAR.
func renderNode(ctx context.Context, w *Writer, src Source, p string, n castore.Node, win *window) error {
	switch n.Type {
	case castore.TypeFile:
		if err := w.WriteHeader(&Header{Path: p, Type: TypeRegular, Size: int64(n.Size), Executable: n.Executable}); err != nil {
			return err
		}
		if win != nil && win.skip > 0 {
			return renderFileInRange(ctx, w, src, n, win)
		}
		return src.WriteBlob(ctx, w, n.Digest, n.Size)
	case castore.TypeSymlink:
		return w.WriteHeader(&Header{Path: p, Type: TypeSymlink, Target: string(n.Target)})
	case castore.TypeDirectory:
		if err := ctx.Err(); err != nil {
			return err
		}
		dir, err := src.Directory(ctx, n.Digest)
		if err != nil {
			return err
		}
		if err := w.WriteHeader(&Header{Path: p, Type: TypeDirectory}); err != nil {
			return err
		}
		return dir.EachEntry(func(name []byte, child castore.Node) error {
			cp := string(name)
			if p != "" {
				cp = p + "/" + cp
			}
			return renderNode(ctx, w, src, cp, child, win)
		})
	}
	return fmt.Errorf("nar: cannot render node type %v", n.Type)
}
