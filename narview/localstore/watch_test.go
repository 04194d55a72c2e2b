package localstore

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/p2pstore/p2pstore/narview/daemon"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
)

// fakeDaemonStore is a daemon.Store of path infos only, whose listing
// can hang (a daemon stuck).
type fakeDaemonStore struct {
	mu    sync.Mutex
	paths []string
	hang  chan struct{} // non-nil: AllPaths waits for it to close
}

func (f *fakeDaemonStore) PathInfo(_ context.Context, p string, _ bool) (*pathinfo.Info, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, q := range f.paths {
		if q == p {
			return &pathinfo.Info{StorePath: p, NarHash: sha256.Sum256([]byte(p)), NarSize: 8}, nil
		}
	}
	return nil, pathinfo.ErrNotFound
}

func (f *fakeDaemonStore) PathFromHashPart(context.Context, string) (string, error) {
	return "", pathinfo.ErrNotFound
}

func (f *fakeDaemonStore) AllPaths(ctx context.Context) ([]string, error) {
	f.mu.Lock()
	hang := f.hang
	out := append([]string(nil), f.paths...)
	f.mu.Unlock()
	if hang != nil {
		select {
		case <-hang:
		case <-ctx.Done():
		}
	}
	sort.Strings(out)
	return out, nil
}

func (f *fakeDaemonStore) WriteNAR(context.Context, *pathinfo.Info, io.Writer) error {
	return errors.New("no NARs")
}
func (f *fakeDaemonStore) AddPath(context.Context, *pathinfo.Info, io.Reader) error {
	return errors.New("read-only")
}
func (f *fakeDaemonStore) AddSignatures(context.Context, string, []string) error {
	return errors.New("read-only")
}

// serveDaemon serves store on socket until the returned stop is called.
func serveDaemon(t *testing.T, socket string, store daemon.Store) (stop func()) {
	t.Helper()
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := daemon.NewServer(store, "/nix/store", nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go srv.ServeConn(ctx, c, c)
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			ln.Close()
			<-done
			cancel()
			srv.Close()
		})
	}
	t.Cleanup(stop)
	return stop
}

func pollPaths(ctx context.Context, w *DaemonWatch) ([]string, error) {
	var got []string
	err := w.Poll(ctx, func(info *pathinfo.Info) error {
		got = append(got, info.StorePath)
		return nil
	}, func(string) {})
	return got, err
}

const (
	pathA = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-a"
	pathB = "/nix/store/1123456789abcdfghijklmnpqrsvwxyz-b"
)

// TestDaemonWatchRedials: after the nix-daemon restarts, the next poll
// dials it again and goes on, rather than failing for good.
func TestDaemonWatchRedials(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "socket")
	store := &fakeDaemonStore{paths: []string{pathA}}
	stop := serveDaemon(t, socket, store)
	w, err := WatchDaemon(socket, "/nix/store")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if got, err := pollPaths(context.Background(), w); err != nil || len(got) != 1 || got[0] != pathA {
		t.Fatalf("first poll: %v, %v", got, err)
	}
	stop() // the daemon restarts, with one more path
	store.paths = append(store.paths, pathB)
	serveDaemon(t, socket, store)
	got, err := pollPaths(context.Background(), w)
	if err != nil || len(got) != 1 || got[0] != pathB {
		t.Fatalf("poll after the daemon restarted: %v, %v", got, err)
	}
}

// TestDaemonWatchHung: a daemon that does not answer holds a poll no
// longer than its context, nor than the call timeout.
func TestDaemonWatchHung(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "socket")
	hang := make(chan struct{})
	defer close(hang)
	serveDaemon(t, socket, &fakeDaemonStore{paths: []string{pathA}, hang: hang})
	w, err := WatchDaemon(socket, "/nix/store")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	poll := func(ctx context.Context) error {
		res := make(chan error, 1)
		go func() { _, err := pollPaths(ctx, w); res <- err }()
		select {
		case err := <-res:
			return err
		case <-time.After(20 * time.Second):
			t.Fatal("a poll of a hung daemon did not return")
			return nil
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := poll(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("poll with its context ended: %v", err)
	}
	old := daemonCallTimeout
	daemonCallTimeout = 200 * time.Millisecond
	defer func() { daemonCallTimeout = old }()
	if err := poll(context.Background()); !errors.Is(err, errNoAnswer) {
		t.Errorf("poll of a hung daemon: %v", err)
	}
}
