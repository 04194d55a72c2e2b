// Package mount shows the node's valid store paths as a read-only FUSE
// file system: DIR/<hash>-<name> for each path, its files read from
// castore on demand.
//
// Nix's unix:// store reads NAR contents from the client's own file
// system, not over the socket, so a client substitutes from the node with
// `unix://SOCKET?real=DIR`. Only paths whose record is committed are
// listed or found, so a half-imported path never shows. Everything below a
// path is immutable, so the kernel may cache entries, attributes and pages
// for as long as it likes; the top level is looked up afresh each time, so
// a new path shows at once. Files have the store's mtime of 1 and modes
// 0444/0555, directories 0555, as in a real store. Every lookup and read
// tells the source which path is read (Source.Reading), so that the node
// does not remove a path under its reader.
package mount

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/zeebo/blake3"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

// Source is what the mount needs of the node.
type Source interface {
	// Path returns the info of the valid path with this hash part.
	Path(ctx context.Context, hash string) (*pathinfo.Info, error)
	// Paths lists the basenames of all valid paths.
	Paths(ctx context.Context) ([]string, error)
	// Reading says that the path with this hash part is being read. The
	// kernel sends no opens or releases (fileNode.Open), so the node
	// cannot hold a path from open to release: it keeps it for a while
	// after each read instead.
	Reading(hash string)
	Directory(d castore.Digest) (*castore.Directory, error)
	BlobChunks(d castore.Digest, size uint64) ([]castore.ChunkRef, error)
	ReadBlobAt(refs []castore.ChunkRef, p []byte, off int64) (int, error)
}

// forever is the cache timeout for immutable nodes.
const forever = 24 * time.Hour

// Mount mounts src at dir and returns the server; Unmount it to stop.
func Mount(dir string, src Source) (*fuse.Server, error) {
	// A node killed without unmounting leaves a dead mount behind.
	if _, err := os.Stat(dir); errors.Is(err, syscall.ENOTCONN) {
		syscall.Unmount(dir, syscall.MNT_DETACH)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	root := &rootNode{src: src}
	timeout := forever
	zero := time.Duration(0)
	opts := &fs.Options{
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &zero,
		MountOptions: fuse.MountOptions{
			FsName:       "p2pstore",
			Debug:        os.Getenv("P2PSTORE_FUSE_DEBUG") != "",
			Name:         "p2pstore",
			DirectMount:  true, // as root, mount(2) itself: no fusermount needed
			AllowOther:   true, // Nix clients of other users read it
			MaxReadAhead: 1 << 20,
			MaxWrite:     1 << 20,
			// Symlinks never change either.
			EnableSymlinkCaching: true,
			Options:              []string{"ro"},
		},
	}
	srv, err := fs.Mount(dir, root, opts)
	if err != nil {
		return nil, fmt.Errorf("mounting %s: %w", dir, err)
	}
	return srv, nil
}

func setAttr(a *fuse.Attr, mode uint32, size uint64) {
	a.Mode = mode
	a.Size = size
	a.Nlink = 1
	a.Mtime, a.Atime, a.Ctime = 1, 1, 1
	a.Blocks = (size + 511) / 512
	a.Blksize = 4096
}

// rootNode is the store directory: one entry per valid path.
type rootNode struct {
	fs.Inode
	src Source
}

var _ = (fs.NodeLookuper)((*rootNode)(nil))
var _ = (fs.NodeReaddirer)((*rootNode)(nil))
var _ = (fs.NodeGetattrer)((*rootNode)(nil))

func (r *rootNode) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	setAttr(&out.Attr, syscall.S_IFDIR|0o555, 0)
	out.SetTimeout(0)
	return 0
}

func (r *rootNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	sp, err := storepath.ParseBase(name)
	if err != nil {
		return nil, syscall.ENOENT
	}
	info, err := r.src.Path(ctx, sp.Hash)
	if errors.Is(err, pathinfo.ErrNotFound) || (err == nil && info.StorePath[len(info.StorePath)-len(name):] != name) {
		return nil, syscall.ENOENT
	}
	if err != nil {
		return nil, syscall.EIO
	}
	r.src.Reading(sp.Hash)
	return newChild(ctx, &r.Inode, r.src, sp.Hash, info.Root, out), 0
}

func (r *rootNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	names, err := r.src.Paths(ctx)
	if err != nil {
		return nil, syscall.EIO
	}
	sort.Strings(names)
	entries := make([]fuse.DirEntry, len(names))
	for i, n := range names {
		entries[i] = fuse.DirEntry{Name: n, Mode: syscall.S_IFDIR} // the type is a hint
	}
	return fs.NewListDirStream(entries), 0
}

// stableIno derives an inode number from what a node is, so that looking
// the same node up again (a READDIRPLUS after a LOOKUP, a second dump)
// finds the inode the kernel already has, with its cached pages and
// entries, instead of replacing it. Equal content shares an inode, as hard
// links would; nothing can tell, since nothing can change it.
func stableIno(n castore.Node) uint64 {
	h := blake3.New()
	h.Write([]byte{byte(n.Type), boolByte(n.Executable)})
	h.Write(n.Digest[:])
	h.Write(n.Target)
	var sum [8]byte
	h.Digest().Read(sum[:])
	return binary.LittleEndian.Uint64(sum[:]) | 1<<63 // never 1, the root's
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}

// newChild makes (or finds) the inode for a castore node of the path with
// hash part hash, and fills out its entry. An inode found is shared with
// the path it was made for (equal content): reading it keeps that path,
// whose objects are the same.
func newChild(ctx context.Context, parent *fs.Inode, src Source, hash string, n castore.Node, out *fuse.EntryOut) *fs.Inode {
	var child fs.InodeEmbedder
	var mode uint32
	var size uint64
	switch n.Type {
	case castore.TypeDirectory:
		child, mode = &dirNode{src: src, hash: hash, digest: n.Digest}, syscall.S_IFDIR|0o555
	case castore.TypeFile:
		mode, size = syscall.S_IFREG|0o444, n.Size
		if n.Executable {
			mode |= 0o111
		}
		child = &fileNode{src: src, hash: hash, digest: n.Digest, size: n.Size, mode: mode}
	default:
		child, mode, size = &symlinkNode{target: n.Target}, syscall.S_IFLNK|0o777, uint64(len(n.Target))
	}
	setAttr(&out.Attr, mode, size)
	out.SetEntryTimeout(forever)
	out.SetAttrTimeout(forever)
	return parent.NewInode(ctx, child, fs.StableAttr{Mode: mode & syscall.S_IFMT, Ino: stableIno(n)})
}

// dirNode is a directory of a path's tree.
type dirNode struct {
	fs.Inode
	src    Source
	hash   string // of the store path it was made for
	digest castore.Digest

	once sync.Once
	dir  *castore.Directory
	err  error
}

var _ = (fs.NodeLookuper)((*dirNode)(nil))
var _ = (fs.NodeOpendirHandler)((*dirNode)(nil))
var _ = (fs.NodeGetattrer)((*dirNode)(nil))

func (d *dirNode) load() (*castore.Directory, syscall.Errno) {
	d.once.Do(func() { d.dir, d.err = d.src.Directory(d.digest) })
	if d.err != nil {
		return nil, syscall.EIO
	}
	return d.dir, 0
}

func (d *dirNode) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	setAttr(&out.Attr, syscall.S_IFDIR|0o555, 0)
	out.SetTimeout(forever)
	return 0
}

func (d *dirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	d.src.Reading(d.hash)
	dir, errno := d.load()
	if errno != 0 {
		return nil, errno
	}
	key := []byte(name)
	if i := sort.Search(len(dir.Directories), func(i int) bool { return bytes.Compare(dir.Directories[i].Name, key) >= 0 }); i < len(dir.Directories) && bytes.Equal(dir.Directories[i].Name, key) {
		e := dir.Directories[i]
		return newChild(ctx, &d.Inode, d.src, d.hash, castore.Node{Type: castore.TypeDirectory, Digest: e.Digest, Size: e.Size}, out), 0
	}
	if i := sort.Search(len(dir.Files), func(i int) bool { return bytes.Compare(dir.Files[i].Name, key) >= 0 }); i < len(dir.Files) && bytes.Equal(dir.Files[i].Name, key) {
		e := dir.Files[i]
		return newChild(ctx, &d.Inode, d.src, d.hash, castore.Node{Type: castore.TypeFile, Digest: e.Digest, Size: e.Size, Executable: e.Executable}, out), 0
	}
	if i := sort.Search(len(dir.Symlinks), func(i int) bool { return bytes.Compare(dir.Symlinks[i].Name, key) >= 0 }); i < len(dir.Symlinks) && bytes.Equal(dir.Symlinks[i].Name, key) {
		return newChild(ctx, &d.Inode, d.src, d.hash, castore.Node{Type: castore.TypeSymlink, Target: dir.Symlinks[i].Target}, out), 0
	}
	return nil, syscall.ENOENT
}

// OpendirHandle lists the directory and lets the kernel cache the
// listing: it never changes.
func (d *dirNode) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	d.src.Reading(d.hash)
	dir, errno := d.load()
	if errno != 0 {
		return nil, 0, errno
	}
	entries := make([]fuse.DirEntry, 0, len(dir.Directories)+len(dir.Files)+len(dir.Symlinks))
	for _, e := range dir.Directories {
		n := castore.Node{Type: castore.TypeDirectory, Digest: e.Digest, Size: e.Size}
		entries = append(entries, fuse.DirEntry{Name: string(e.Name), Mode: syscall.S_IFDIR, Ino: stableIno(n)})
	}
	for _, e := range dir.Files {
		n := castore.Node{Type: castore.TypeFile, Digest: e.Digest, Size: e.Size, Executable: e.Executable}
		entries = append(entries, fuse.DirEntry{Name: string(e.Name), Mode: syscall.S_IFREG, Ino: stableIno(n)})
	}
	for _, e := range dir.Symlinks {
		n := castore.Node{Type: castore.TypeSymlink, Target: e.Target}
		entries = append(entries, fuse.DirEntry{Name: string(e.Name), Mode: syscall.S_IFLNK, Ino: stableIno(n)})
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name < entries[j].Name })
	return &dirHandle{entries: entries}, fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE, 0
}

// dirHandle reads out a directory listing; offsets count entries.
type dirHandle struct {
	entries []fuse.DirEntry
	pos     int
}

var _ = (fs.FileReaddirenter)((*dirHandle)(nil))
var _ = (fs.FileSeekdirer)((*dirHandle)(nil))

func (h *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	if h.pos >= len(h.entries) {
		return nil, 0
	}
	e := h.entries[h.pos]
	h.pos++
	e.Off = uint64(h.pos)
	return &e, 0
}

func (h *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	if off > uint64(len(h.entries)) {
		return syscall.EINVAL
	}
	h.pos = int(off)
	return 0
}

// fileNode is a regular file; its chunk list is loaded at first read.
type fileNode struct {
	fs.Inode
	src    Source
	hash   string // of the store path it was made for
	digest castore.Digest
	size   uint64
	mode   uint32

	once sync.Once
	refs []castore.ChunkRef
	err  error
}

var _ = (fs.NodeOpener)((*fileNode)(nil))
var _ = (fs.NodeReader)((*fileNode)(nil))
var _ = (fs.NodeFlusher)((*fileNode)(nil))
var _ = (fs.NodeGetattrer)((*fileNode)(nil))

func (f *fileNode) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	setAttr(&out.Attr, f.mode, f.size)
	out.SetTimeout(forever)
	return 0
}

// Open answers ENOSYS: the kernel then stops sending opens (and releases)
// for this mount and keeps the page cache across opens, which a read-only
// tree of immutable files can afford. Each open and close of a file in a
// NAR dump is otherwise a round trip to this process. (The mount is
// read-only: the kernel refuses writes before they get here.)
func (f *fileNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return nil, 0, syscall.ENOSYS
}

// Flush answers ENOSYS, so that the kernel stops sending one per close.
func (f *fileNode) Flush(ctx context.Context, fh fs.FileHandle) syscall.Errno {
	return syscall.ENOSYS
}

func (f *fileNode) Read(ctx context.Context, _ fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	f.src.Reading(f.hash)
	f.once.Do(func() { f.refs, f.err = f.src.BlobChunks(f.digest, f.size) })
	if f.err != nil {
		return nil, syscall.EIO
	}
	if off >= int64(f.size) {
		return fuse.ReadResultData(nil), 0
	}
	n, err := f.src.ReadBlobAt(f.refs, dest, off)
	if err != nil && n == 0 && off < int64(f.size) {
		return nil, syscall.EIO
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// symlinkNode is a symbolic link.
type symlinkNode struct {
	fs.Inode
	target []byte
}

var _ = (fs.NodeReadlinker)((*symlinkNode)(nil))
var _ = (fs.NodeGetattrer)((*symlinkNode)(nil))

func (s *symlinkNode) Readlink(ctx context.Context) ([]byte, syscall.Errno) { return s.target, 0 }

func (s *symlinkNode) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	setAttr(&out.Attr, syscall.S_IFLNK|0o777, uint64(len(s.target)))
	out.SetTimeout(forever)
	return 0
}
