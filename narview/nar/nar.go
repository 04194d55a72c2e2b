// Package nar reads and writes Nix archives (NARs) as streams, and moves
// trees between NARs and castore.
//
// A NAR is a sequence of strings (a u64 little-endian length, the bytes,
// zero padding to a multiple of 8) spelling out one node: a regular file
// (optionally executable), a symlink, or a directory whose entries are
// sorted byte-wise by name. Reader is a pull parser in the style of
// archive/tar that never reads past the end of the archive, so it can parse
// a NAR embedded in a longer stream (the Nix daemon protocol sends NARs
// without a length prefix); it hashes what it consumes, so the NarHash and
// NarSize of an ingest come for free. Writer is its inverse and passes large
// file contents to an io.ReaderFrom (a TCP connection doing sendfile).
// Render writes a castore tree's NAR, RenderSpliced its zstd form from the
// chunks' stored frames, RenderRange a part of it (an HTTP Range) without
// reading the files before that part; RenderPart picks one for what a
// client asked (render.go).
//
// We keep our own codec rather than go-nix's: its reader runs a goroutine
// per archive and hands each header over channels, which costs more than
// the rest of ingest on trees of small files, and it cannot stop at the end
// of an embedded NAR.
package nar

import (
	"errors"
	"fmt"
	"strings"
)

const magic = "nix-archive-1"

// Type is the kind of a NAR node.
type Type uint8

// The NAR node types.
const (
	TypeRegular Type = 1 + iota
	TypeDirectory
	TypeSymlink
)

func (t Type) String() string {
	switch t {
	case TypeRegular:
		return "regular"
	case TypeDirectory:
		return "directory"
	case TypeSymlink:
		return "symlink"
	}
	return fmt.Sprintf("Type(%d)", uint8(t))
}

// Header describes one node. Path is relative to the archive root, with
// "/" between components; the root itself is "".
type Header struct {
	Path       string
	Type       Type
	Executable bool   // regular files only
	Size       int64  // regular files only: content length
	Target     string // symlinks only
}

// ErrFormat marks an archive that is not a valid NAR.
var ErrFormat = errors.New("nar: invalid archive")

func formatErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrFormat, fmt.Sprintf(format, args...))
}

func pad(n int64) int { return int((8 - n%8) % 8) }

// splitPath splits a NAR path into its parent ("" for the root's entries)
// and its last component. Paths are built by us or checked by the reader,
// so no cleaning is needed.
func splitPath(p string) (parent, name string) {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return "", p
	}
	return p[:i], p[i+1:]
}
