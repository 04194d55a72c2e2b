package nar

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Dump writes the NAR of the file tree at root to w, byte for byte what
// `nix-store --dump` writes: entries sorted by name, a file executable when
// its owner may execute it, symlinks as their targets.
func Dump(ctx context.Context, w *Writer, root string) error {
	if err := dumpNode(ctx, w, root, ""); err != nil {
		return err
	}
	return w.Close()
}

func dumpNode(ctx context.Context, w *Writer, fsPath, narPath string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	info, err := os.Lstat(fsPath)
	if err != nil {
		return err
	}
	switch mode := info.Mode(); {
	case mode.IsRegular():
		f, err := os.Open(fsPath)
		if err != nil {
			return err
		}
		defer f.Close()
		h := &Header{Path: narPath, Type: TypeRegular, Size: info.Size(), Executable: mode&0o100 != 0}
		if err := w.WriteHeader(h); err != nil {
			return err
		}
		n, err := w.ReadFrom(f)
		if err != nil {
			return err
		}
		if n != info.Size() {
			return fmt.Errorf("nar: %s changed size while being read", fsPath)
		}
		return nil
	case mode&fs.ModeSymlink != 0:
		target, err := os.Readlink(fsPath)
		if err != nil {
			return err
		}
		return w.WriteHeader(&Header{Path: narPath, Type: TypeSymlink, Target: target})
	case mode.IsDir():
		if err := w.WriteHeader(&Header{Path: narPath, Type: TypeDirectory}); err != nil {
			return err
		}
		entries, err := os.ReadDir(fsPath) // sorted by name, byte-wise
		if err != nil {
			return err
		}
		for _, e := range entries {
			child := e.Name()
			if narPath != "" {
				child = narPath + "/" + child
			}
			if err := dumpNode(ctx, w, filepath.Join(fsPath, e.Name()), child); err != nil {
				return err
			}
		}
		return nil
	default:
		return fmt.Errorf("nar: %s: unsupported file type %v", fsPath, mode.Type())
	}
}
