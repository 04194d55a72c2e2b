package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/p2pstore/p2pstore/internal/nixtest"
	"github.com/p2pstore/p2pstore/internal/tmpfs"
)

// duBytes is the size of the files under dir.
func duBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.Walk(dir, func(_ string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			n += info.Size()
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// randomTree adds a tree of files of random bytes, mb in all, to the
// local Nix store.
func randomTree(t *testing.T, name string, mb int) string {
	t.Helper()
	var seed [32]byte
	copy(seed[:], fmt.Sprint(name, time.Now().UnixNano()))
	r := randReader(seed)
	files := map[string][]byte{}
	for i := range mb {
		b := make([]byte, 1<<20)
		r.Read(b)
		files[fmt.Sprintf("f%d", i)] = b
	}
	return addTree(t, name, files)
}

// TestFullDiskImport: an import that runs out of disk fails with one clear
// line and leaves the node up and its store intact; once space is back the
// next imports are correct, the failed path among them.
func TestFullDiskImport(t *testing.T) {
	nixtest.Require(t)
	n := newNode(t)
	mnt := filepath.Join(n.dir, "data")
	tmpfs.MountAt(t, mnt, 60<<20)
	n.start()
	first := randomTree(t, "first", 2)
	n.run("import", first)
	castoreDir := filepath.Join(mnt, "castore")
	before := duBytes(t, filepath.Join(castoreDir, "packs"))

	free := tmpfs.Fill(t, mnt, 3<<20)
	big := randomTree(t, "big", 6)
	out, err := n.try("import", big)
	if err == nil {
		t.Fatalf("import onto a full disk succeeded:\n%s", out)
	}
	msg := strings.TrimSpace(out)
	if !strings.Contains(msg, "no space left on device") || strings.Count(msg, "\n") > 0 || strings.Contains(msg, "goroutine") {
		t.Fatalf("import onto a full disk said:\n%s", out)
	}
	if got := duBytes(t, filepath.Join(castoreDir, "packs")); got != before {
		t.Errorf("packs hold %d bytes after the failed import, %d before", got, before)
	}
	if n.status().Paths != 1 {
		t.Fatal("the node lost its path, or kept half of the failed one")
	}
	free()

	second := randomTree(t, "second", 4)
	n.run("import", second)
	n.run("import", big) // the path that failed is absent, not "already there"
	if s := n.status(); s.Paths != 3 {
		t.Fatalf("%d paths after the imports, want 3", s.Paths)
	}
	n.run("verify")
	for _, p := range []string{first, second, big} {
		n.checkServedNAR(p)
	}
}

// TestAbortedImportsReclaimed: `nix copy --to unix://SOCK` runs killed
// part-way leave no path, and once a later import commits, gc gives their
// pack space back (the aborted writers' bytes were interleaved, so not all
// of them could be cut off at once).
func TestAbortedImportsReclaimed(t *testing.T) {
	nixtest.Require(t)
	n := newNode(t)
	n.start()
	castoreDir := filepath.Join(n.dir, "data", "castore")
	var trees []string
	for i := range 4 {
		trees = append(trees, randomTree(t, fmt.Sprint("aborted", i), 64))
	}
	// All four at once, each killed once it has sent part of its NAR.
	var cmds []*exec.Cmd
	for _, p := range trees {
		cmd := nixtest.Command("nix", "copy", "--to", "unix://"+n.socket(), p)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	deadline := time.Now().Add(30 * time.Second)
	for duBytes(t, castoreDir) < 64<<20 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	for _, cmd := range cmds {
		cmd.Process.Kill()
		cmd.Wait()
	}
	// The node notices the dead clients and drops their writers.
	for n.status().ImportsRunning > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if s := n.status(); s.Paths != 0 || s.ImportsRunning != 0 {
		t.Fatalf("%d paths and %d imports running after killed copies, want none", s.Paths, s.ImportsRunning)
	}
	kept := randomTree(t, "kept", 2)
	n.run("import", kept)
	if left := duBytes(t, filepath.Join(castoreDir, "packs")); left < 16<<20 {
		t.Fatalf("packs hold %d bytes: the interleaved writers' garbage should be there until gc", left)
	}
	out := n.run("gc")
	if !strings.Contains(out, "rewrote") {
		t.Fatalf("gc said: %s", out)
	}
	// The rewritten packs are removed after a grace time, or at restart.
	n.stop()
	n.start()
	packs := duBytes(t, filepath.Join(castoreDir, "packs"))
	if packs > 3<<20 {
		t.Fatalf("packs hold %d bytes after gc, for a store of one 2 MiB path", packs)
	}
	n.run("verify")
	n.checkServedNAR(kept)
}
