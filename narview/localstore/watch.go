package localstore

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/p2pstore/p2pstore/narview/daemon"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
)

// Watch opens the store under root for watching: its database, or, for
// the system's store (root "/") whose database cannot be read, the
// nix-daemon.
func Watch(ctx context.Context, root, storeDir string) (Watcher, error) {
	db, err := OpenDB(ctx, root, storeDir)
	if err == nil {
		return db, nil
	}
	if root != "/" {
		return nil, err
	}
	w, derr := WatchDaemon(DaemonSocket(), storeDir)
	if derr != nil {
		return nil, fmt.Errorf("%w; nor does a nix-daemon answer: %v", err, derr)
	}
	return w, nil
}

// WatchDaemon watches the system's store through the nix-daemon at socket.
func WatchDaemon(socket, storeDir string) (*DaemonWatch, error) {
	c, err := daemon.Dial(socket)
	if err != nil {
		return nil, err
	}
	return &DaemonWatch{c: c, socket: socket, storeDir: storeDir, seen: map[string]bool{}}, nil
}

// DaemonWatch follows the system's store through the nix-daemon: the
// whole path list at each poll, an info for each new path. Unlike DB it
// does not see signatures added to a path it has seen.
type DaemonWatch struct {
	c                *daemon.Client
	socket, storeDir string
	seen             map[string]bool
}

func (w *DaemonWatch) Name() string { return "the nix-daemon at " + w.socket }
func (w *DaemonWatch) Close() error { return w.c.Close() }

func (w *DaemonWatch) Poll(ctx context.Context, put func(*pathinfo.Info) error, gone func(string)) error {
	all, err := w.c.QueryAllValidPaths()
	if err != nil {
		return fmt.Errorf("nix-daemon: %w", err)
	}
	cur := make(map[string]bool, len(all))
	for _, p := range all {
		cur[p] = true
	}
	for p := range w.seen {
		if !cur[p] {
			delete(w.seen, p)
			gone(p)
		}
	}
	for _, p := range all {
		if err := ctx.Err(); err != nil {
			return err
		}
		if w.seen[p] {
			continue
		}
		info, err := w.c.QueryPathInfo(p)
		if errors.Is(err, pathinfo.ErrNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("nix-daemon: %w", err)
		}
		if err := put(info); err != nil {
			return err
		}
		w.seen[p] = true
	}
	return nil
}

// Dump reads the files of the system's store (the daemon's store is the
// one under /), which spares a daemon connection per NAR.
func (w *DaemonWatch) Dump(ctx context.Context, path string, wr io.Writer) error {
	return dumpUnder(ctx, "/", w.storeDir, path, wr)
}
