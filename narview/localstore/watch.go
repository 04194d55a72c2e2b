package localstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

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

// daemonCallTimeout bounds one call to the nix-daemon while watching:
// a daemon that hangs must not hold the poll (and the node's shutdown).
var daemonCallTimeout = time.Minute

var errNoAnswer = errors.New("nix-daemon: no answer")

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
// does not see signatures added to a path it has seen. A connection that
// fails (the daemon restarted) is dropped and dialled again; each call
// has daemonCallTimeout, and the poll's context closes the connection.
type DaemonWatch struct {
	mu               sync.Mutex     // one call at a time: Info comes during polls
	c                *daemon.Client // nil after a failure: dialled at the next call
	socket, storeDir string
	seen             map[string]bool
}

func (w *DaemonWatch) Name() string { return "the nix-daemon at " + w.socket }

func (w *DaemonWatch) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.closeConn()
}

func (w *DaemonWatch) closeConn() error {
	if w.c == nil {
		return nil
	}
	err := w.c.Close()
	w.c = nil
	return err
}

// call runs f on the connection, dialling one if there is none, under
// daemonCallTimeout and ctx: when either ends, the connection is closed,
// which ends f. A connection that failed is dropped; one that answered
// with an error (such as a path not found) is kept.
func (w *DaemonWatch) call(ctx context.Context, f func(*daemon.Client) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.c == nil {
		c, err := daemon.Dial(w.socket)
		if err != nil {
			return fmt.Errorf("nix-daemon: %w", err)
		}
		w.c = c
	}
	cctx, cancel := context.WithTimeout(ctx, daemonCallTimeout)
	defer cancel()
	c := w.c
	stop := context.AfterFunc(cctx, func() { c.Close() })
	err := f(c)
	if !stop() { // the deadline or ctx closed the connection
		w.c = nil
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w within %s", errNoAnswer, daemonCallTimeout)
	}
	var derr *daemon.DaemonError
	if err != nil && !errors.Is(err, pathinfo.ErrNotFound) && !errors.As(err, &derr) {
		w.closeConn()
	}
	if err != nil {
		return fmt.Errorf("nix-daemon: %w", err)
	}
	return nil
}

func (w *DaemonWatch) Poll(ctx context.Context, put func(*pathinfo.Info) error, gone func(string)) error {
	var all []string
	list := func(c *daemon.Client) (err error) { all, err = c.QueryAllValidPaths(); return err }
	w.mu.Lock()
	hadConn := w.c != nil
	w.mu.Unlock()
	err := w.call(ctx, list)
	if err != nil && hadConn && !w.connected() && !errors.Is(err, errNoAnswer) && ctx.Err() == nil {
		err = w.call(ctx, list) // once more on a new connection: the daemon may have restarted
	}
	if err != nil {
		return err
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
		if w.seen[p] {
			continue
		}
		var info *pathinfo.Info
		err := w.call(ctx, func(c *daemon.Client) (err error) { info, err = c.QueryPathInfo(p); return err })
		if errors.Is(err, pathinfo.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		if err := put(info); err != nil {
			return err
		}
		w.seen[p] = true
	}
	return nil
}

// connected reports whether a connection is open.
func (w *DaemonWatch) connected() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.c != nil
}

// Info asks the daemon for one valid path's info.
func (w *DaemonWatch) Info(ctx context.Context, path string) (*pathinfo.Info, error) {
	var info *pathinfo.Info
	err := w.call(ctx, func(c *daemon.Client) (err error) { info, err = c.QueryPathInfo(path); return err })
	if errors.Is(err, pathinfo.ErrNotFound) {
		return nil, pathinfo.ErrNotFound
	}
	return info, err
}

// Dump reads the files of the system's store (the daemon's store is the
// one under /), which spares a daemon connection per NAR.
func (w *DaemonWatch) Dump(ctx context.Context, path string, wr io.Writer) error {
	return dumpUnder(ctx, "/", w.storeDir, path, wr)
}
