package localstore

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/p2pstore/p2pstore/internal/nixtest"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

// chrootStore makes a store under a temporary root with a built closure
// of two paths (top references leaf) copied into it, and returns the root
// and the two paths.
func chrootStore(t *testing.T) (root, top, leaf string) {
	t.Helper()
	nixtest.Require(t)
	salt := fmt.Sprint(time.Now().UnixNano())
	expr := fmt.Sprintf(`let
  leaf = derivation { name = "leaf"; system = "x86_64-linux"; builder = "/bin/sh";
    args = [ "-c" "echo leaf %s > $out" ]; };
in derivation { name = "top"; system = "x86_64-linux"; builder = "/bin/sh";
    args = [ "-c" "echo ${leaf} > $out" ]; }`, salt)
	file := filepath.Join(t.TempDir(), "closure.nix")
	if err := os.WriteFile(file, []byte(expr), 0o644); err != nil {
		t.Fatal(err)
	}
	top = nixtest.Line(t, "nix-build", file, "--no-out-link")
	closure := strings.Fields(nixtest.Line(t, "nix-store", "-qR", top))
	for _, p := range closure {
		if p != top {
			leaf = p
		}
	}
	root = t.TempDir()
	nixtest.Output(t, "nix", "copy", "--no-check-sigs", "--to", root, top)
	return root, top, leaf
}

// addPath adds a tree of one file to the store under root.
func addPath(t *testing.T, root, name, text string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "f"), []byte(text), 0o644)
	return nixtest.Line(t, "nix-store", "--store", root, "--add", dir)
}

// poll runs one poll and returns what it put, by path, and what went.
func poll(t *testing.T, d *DB) (map[string]*pathinfo.Info, []string) {
	t.Helper()
	put := map[string]*pathinfo.Info{}
	var gone []string
	err := d.Poll(context.Background(), func(in *pathinfo.Info) error {
		put[in.StorePath] = in
		return nil
	}, func(p string) { gone = append(gone, p) })
	if err != nil {
		t.Fatal(err)
	}
	return put, gone
}

func TestDBMatchesNix(t *testing.T) {
	root, top, leaf := chrootStore(t)
	key := filepath.Join(t.TempDir(), "k.sec")
	nixtest.Output(t, "nix-store", "--generate-binary-cache-key", "db-test-1", key, key+".pub")
	nixtest.Output(t, "nix", "store", "sign", "--store", root, "--key-file", key, top)
	d, err := OpenDB(context.Background(), root, "/nix/store")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	put, gone := poll(t, d)
	if len(put) != 2 || len(gone) != 0 {
		t.Fatalf("first poll put %d paths and removed %v, want the 2 of the store", len(put), gone)
	}
	var want []nixPathInfo // as Nix reports them
	out := nixtest.Output(t, "nix", "path-info", "--store", root, "--json", top, leaf)
	if err := json.Unmarshal(out, &want); err != nil {
		t.Fatal(err)
	}
	for _, w := range want {
		got := put[w.Path]
		if got == nil {
			t.Fatalf("%s missing from the poll", w.Path)
		}
		h, err := storepath.ParseNarHash(w.NarHash)
		if err != nil {
			t.Fatal(err)
		}
		if got.NarHash != h || got.NarSize != w.NarSize || got.Deriver != w.Deriver || got.CA != w.CA ||
			got.RegistrationTime != w.RegistrationTime || !slices.Equal(got.References, w.References) ||
			!slices.Equal(got.Sigs, w.Signatures) {
			t.Errorf("%s: read %+v\nNix says %+v", w.Path, got, w)
		}
	}
	if len(put[top].Sigs) != 1 || len(put[top].References) != 1 || put[top].References[0] != leaf {
		t.Errorf("top: sigs %v refs %v, want one signature and the leaf", put[top].Sigs, put[top].References)
	}
}

func TestDBPollSeesChanges(t *testing.T) {
	root, _, leaf := chrootStore(t)
	d, err := OpenDB(context.Background(), root, "/nix/store")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	poll(t, d)
	if put, gone := poll(t, d); len(put)+len(gone) != 0 {
		t.Fatalf("a poll with no change put %d and removed %v", len(put), gone)
	}
	// A new path, and a signature added to an old one.
	added := addPath(t, root, "added", "new "+leaf)
	key := filepath.Join(t.TempDir(), "k.sec")
	nixtest.Output(t, "nix-store", "--generate-binary-cache-key", "db-test-1", key, key+".pub")
	nixtest.Output(t, "nix", "store", "sign", "--store", root, "--key-file", key, leaf)
	put, gone := poll(t, d)
	if len(put) != 2 || put[added] == nil || put[leaf] == nil || len(put[leaf].Sigs) != 1 || len(gone) != 0 {
		t.Fatalf("after adding %s and signing %s the poll put %v and removed %v", added, leaf, keys(put), gone)
	}
	// A path deleted, as nix-collect-garbage does.
	nixtest.Output(t, "nix-store", "--store", root, "--delete", added)
	put, gone = poll(t, d)
	if len(put) != 0 || !slices.Equal(gone, []string{added}) {
		t.Fatalf("after deleting %s the poll put %v and removed %v", added, keys(put), gone)
	}
}

func TestOpenDBRefusesOtherSchema(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Dir(DBFile(root))
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "schema"), []byte("11"), 0o644)
	os.WriteFile(DBFile(root), nil, 0o644)
	_, err := OpenDB(context.Background(), root, "/nix/store")
	if err == nil || !strings.Contains(err.Error(), "schema 11") {
		t.Fatalf("schema 11: got %v, want a refusal naming it", err)
	}
}

func keys(m map[string]*pathinfo.Info) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestDaemonWatch: through a real nix-daemon (the system's store), a new
// path appears on the next poll with its info, and goes once deleted.
func TestDaemonWatch(t *testing.T) {
	nixtest.Require(t)
	sock := filepath.Join(t.TempDir(), "nix-daemon.sock")
	d := nixtest.Command("nix-daemon")
	d.Env = append(d.Env, "NIX_DAEMON_SOCKET_PATH="+sock)
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Process.Kill(); d.Wait() })
	var w *DaemonWatch
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		if w, err = WatchDaemon(sock, "/nix/store"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nix-daemon did not start: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	defer w.Close()
	pollW := func() (map[string]*pathinfo.Info, []string) {
		t.Helper()
		put := map[string]*pathinfo.Info{}
		var gone []string
		err := w.Poll(context.Background(), func(in *pathinfo.Info) error { put[in.StorePath] = in; return nil },
			func(p string) { gone = append(gone, p) })
		if err != nil {
			t.Fatal(err)
		}
		return put, gone
	}
	pollW()
	dir := filepath.Join(t.TempDir(), "daemon-watch")
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "f"), []byte(fmt.Sprint("daemon watch ", time.Now().UnixNano())), 0o644)
	p := nixtest.Line(t, "nix-store", "--add", dir)
	want := pathInfoNix(t, p)
	put, _ := pollW()
	if got := put[p]; got == nil || got.NarHash != want.NarHash || got.NarSize != want.NarSize {
		t.Fatalf("after adding %s the poll put %+v, want %+v", p, got, want)
	}
	nixtest.Output(t, "nix-store", "--delete", p)
	if _, gone := pollW(); !slices.Contains(gone, p) {
		t.Fatalf("after deleting %s the poll removed %v", p, gone)
	}
}

// pathInfoNix returns a path's NarHash and NarSize as Nix reports them.
func pathInfoNix(t *testing.T, p string) *pathinfo.Info {
	t.Helper()
	var infos []struct {
		NarHash string `json:"narHash"`
		NarSize uint64 `json:"narSize"`
	}
	if err := json.Unmarshal(nixtest.Output(t, "nix", "path-info", "--json", p), &infos); err != nil || len(infos) != 1 {
		t.Fatalf("nix path-info %s: %v", p, err)
	}
	h, err := storepath.ParseNarHash(infos[0].NarHash)
	if err != nil {
		t.Fatal(err)
	}
	return &pathinfo.Info{StorePath: p, NarHash: h, NarSize: infos[0].NarSize}
}
