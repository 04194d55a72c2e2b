package node

import (
	"context"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/p2pstore/p2pstore/narview/localstore"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

// Importing from the local Nix store is the client's work: `p2pstore
// import` reads the paths (through the nix-daemon, or Nix itself) as the
// user who runs it, and streams each NAR to the node, which checks it
// against the NarHash Nix recorded.

// ImportProgress follows ImportLocal.
type ImportProgress interface {
	Start(totalBytes uint64)    // the NAR bytes about to be sent
	Path(i, n int, path string) // the i-th of n paths (from 1) begins
	io.Writer                   // gets the NAR bytes as they go
	Done()                      // the last path is in, or the import failed
}

// LocalImport sums up an ImportLocal.
type LocalImport struct {
	From     string // where the paths came from, for messages
	Imported int
	Present  int // paths the node had already
	Shared   int // of the imported ones, those given to peers
	NarBytes int64
	NewBytes int64 // chunk bytes new to the node's store
}

// ResolveStorePaths turns command-line arguments (store paths, or links
// to them such as ./result) into store paths. An argument under
// guixStoreDir names a Guix path.
func ResolveStorePaths(storeDir, guixStoreDir string, args []string) ([]string, error) {
	var paths []string
	for _, a := range args {
		dir := storeDir
		if guixStoreDir != "" && strings.HasPrefix(a, guixStoreDir+"/") {
			dir = guixStoreDir
		}
		p, err := localstore.ResolveArg(dir, a)
		if err != nil {
			return nil, err
		}
		paths = append(paths, p)
	}
	return paths, nil
}

// ImportSource says where ImportLocal reads paths from: the local Nix
// store (the zero value), the Nix store at a URL, or the local Guix
// daemon.
type ImportSource struct {
	NixStore string // a Nix store URL, such as local?store=/gnu/store&real=...
	Guix     bool   // the guix-daemon at GUIX_DAEMON_SOCKET, or Guix's own socket
}

// ImportSourceFor is where the paths of an import are read from when the
// user names no store: the Guix daemon when they are all Guix paths (under
// guixStoreDir), the local Nix store when none is. Both at once is an
// error: the two stores are read apart.
func ImportSourceFor(guixStoreDir string, paths []string) (ImportSource, error) {
	guix := 0
	for _, p := range paths {
		if path.Dir(p) == guixStoreDir {
			guix++
		}
	}
	if guix > 0 && guix < len(paths) {
		return ImportSource{}, badInput("import Guix paths (under %s) and Nix paths in separate runs: each comes from its own store", guixStoreDir)
	}
	return ImportSource{Guix: guix > 0}, nil
}

// ImportLocal adds store paths (and with recursive their closure) from
// the local Nix store, or from where from says, to the node, each path
// after those it references; paths the node holds already are skipped.
// progress may be nil.
func (c *Client) ImportLocal(ctx context.Context, from ImportSource, paths []string, recursive bool, share Sharing, progress ImportProgress) (*LocalImport, error) {
	var src localstore.Source
	switch {
	case from.NixStore != "":
		src = localstore.OpenStore(from.NixStore)
	case from.Guix:
		var err error
		if src, err = localstore.OpenGuix(); err != nil {
			return nil, err
		}
	default:
		src = localstore.Open()
	}
	defer src.Close()
	infos, err := src.Query(ctx, paths, recursive)
	if err != nil {
		return nil, err
	}
	sum := &LocalImport{From: src.Name()}
	var todo []*pathinfo.Info
	var total uint64
	for _, in := range infos {
		sp, err := storepath.Parse(path.Dir(in.StorePath), in.StorePath)
		if err != nil {
			return nil, err
		}
		have, err := c.HasPath(ctx, sp.Hash)
		if err != nil {
			return nil, err
		}
		if have {
			sum.Present++
			continue
		}
		todo = append(todo, in)
		total += in.NarSize
	}
	if progress != nil {
		progress.Start(total)
		defer progress.Done()
	}
	for i, in := range todo {
		if progress != nil {
			progress.Path(i+1, len(todo), in.StorePath)
		}
		res, err := c.importFrom(ctx, src, in, progress, share)
		if err != nil {
			return nil, err
		}
		sum.Imported++
		sum.NewBytes += res.NewBytes
		sum.NarBytes += int64(res.NarSize)
		if res.Shared {
			sum.Shared++
		}
	}
	return sum, nil
}

// importFrom streams one path's NAR from the local store to the node.
func (c *Client) importFrom(ctx context.Context, src localstore.Source, in *pathinfo.Info, progress io.Writer, share Sharing) (*ImportResult, error) {
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(src.Dump(ctx, in.StorePath, pw))
	}()
	var body io.Reader = pr
	if progress != nil {
		body = io.TeeReader(pr, progress)
	}
	res, err := c.Import(ctx, in, body, share)
	pr.CloseWithError(io.ErrClosedPipe)
	if err != nil {
		return nil, fmt.Errorf("importing %s: %w", in.StorePath, err)
	}
	return res, nil
}
