package nar

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/internal/nixtest"
)

func random(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 0))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// edgeTree builds a tree with the cases a NAR codec gets wrong: every node
// type, empty files and directories, executables, sizes around padding and
// chunk boundaries, deep nesting, the longest name, and names whose byte
// order differs from other orders (case, punctuation, UTF-8).
func edgeTree(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "tree")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	write := func(rel string, data []byte, mode os.FileMode) {
		p := filepath.Join(root, rel)
		must(os.MkdirAll(filepath.Dir(p), 0o755))
		must(os.WriteFile(p, data, mode))
		must(os.Chmod(p, mode))
	}
	write("regular", []byte("hello\n"), 0o644)
	write("exec", []byte("#!/bin/sh\necho hi\n"), 0o755)
	write("empty", nil, 0o644)
	must(os.MkdirAll(filepath.Join(root, "emptydir"), 0o755))
	must(os.Symlink("regular", filepath.Join(root, "link")))
	must(os.Symlink("/nonexistent/target", filepath.Join(root, "dangling")))
	// A target longer than the reader's first buffer (the fuzzer found
	// the reader slicing past it).
	must(os.Symlink(strings.Repeat("../", 1000)+"far", filepath.Join(root, "long-link")))
	deep := "deep"
	for i := 0; i < 40; i++ {
		deep = filepath.Join(deep, "d")
	}
	write(filepath.Join(deep, "leaf"), []byte("bottom"), 0o644)
	write(strings.Repeat("n", castore.MaxNameLen), []byte("long name"), 0o644)
	for _, name := range []string{"B", "a", "a-b", "a.b", "a0", "aB", "ab", "Z", "z", "_", "~", "é", "ü", "ÿ", "日本", "\x7f", "a b", "a\tb"} {
		write(filepath.Join("names", name), []byte(name), 0o644)
	}
	for _, n := range []int{1, 7, 8, 9, castore.MinChunkSize - 1, castore.MinChunkSize + 1, castore.MaxChunkSize - 1, castore.MaxChunkSize + 1} {
		write(filepath.Join("sizes", strings.Repeat("s", 1)+"-"+itoa(n)), random(uint64(n), n), 0o644)
	}
	write("big/random", random(42, 3<<20), 0o755)
	write("big/zeros", make([]byte, 1<<20), 0o644)
	write("big/copy", random(42, 3<<20), 0o644)
	return root
}

func itoa(n int) string {
	var b []byte
	for {
		b = append([]byte{byte('0' + n%10)}, b...)
		n /= 10
		if n == 0 {
			return string(b)
		}
	}
}

func dumpBytes(t *testing.T, path string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Dump(context.Background(), NewWriter(&buf), path); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// roundTrip ingests a NAR into a fresh castore and renders it back.
func roundTrip(t *testing.T, narBytes []byte) []byte {
	t.Helper()
	s, err := castore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r := NewReader(bytes.NewReader(narBytes))
	w := s.NewWriter()
	root, err := Ingest(context.Background(), r, w)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if r.NarHash() != sha256.Sum256(narBytes) || r.NarSize() != int64(len(narBytes)) {
		t.Fatal("reader's NarHash or NarSize differs from the archive's")
	}
	cr := s.NewReader()
	defer cr.Close()
	var out bytes.Buffer
	if err := Render(context.Background(), &out, root, cr); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// TestAgainstNixStoreDump compares our NAR of each edge case with
// nix-store --dump, then round-trips it through castore.
func TestAgainstNixStoreDump(t *testing.T) {
	nixtest.Require(t)
	root := edgeTree(t)
	single := t.TempDir()
	os.WriteFile(filepath.Join(single, "file"), []byte("just a file"), 0o644)
	os.WriteFile(filepath.Join(single, "exe"), nil, 0o755)
	os.Symlink("/some/where", filepath.Join(single, "symlink"))
	os.Mkdir(filepath.Join(single, "dir"), 0o755)
	for _, p := range []string{root, filepath.Join(root, "names"), filepath.Join(single, "file"), filepath.Join(single, "exe"), filepath.Join(single, "symlink"), filepath.Join(single, "dir")} {
		t.Run(filepath.Base(p), func(t *testing.T) {
			want := nixtest.Output(t, "nix-store", "--dump", p)
			got := dumpBytes(t, p)
			if !bytes.Equal(got, want) {
				t.Fatalf("Dump differs from nix-store --dump (%d vs %d bytes)", len(got), len(want))
			}
			if back := roundTrip(t, want); !bytes.Equal(back, want) {
				t.Fatalf("castore round trip differs (%d vs %d bytes)", len(back), len(want))
			}
		})
	}
}

// TestRoundTripWithoutNix covers the same tree where Nix is absent.
func TestRoundTripWithoutNix(t *testing.T) {
	want := dumpBytes(t, edgeTree(t))
	if back := roundTrip(t, want); !bytes.Equal(back, want) {
		t.Fatal("castore round trip differs")
	}
}

// TestReaderStopsAtEnd checks that a NAR embedded in a longer stream is
// parsed without consuming what follows it.
func TestReaderStopsAtEnd(t *testing.T) {
	narBytes := dumpBytes(t, edgeTree(t))
	stream := bytes.NewBuffer(append(append([]byte(nil), narBytes...), "TRAILER"...))
	br := bufioReader(stream)
	r := NewReader(br)
	for {
		_, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	rest, _ := io.ReadAll(br)
	if string(rest) != "TRAILER" {
		t.Fatalf("after the NAR: %q", rest)
	}
}

func TestReaderRejectsBadInput(t *testing.T) {
	good := dumpBytes(t, edgeTree(t))
	cases := map[string][]byte{
		"empty":        nil,
		"truncated":    good[:len(good)/2],
		"cut at end":   good[:len(good)-8],
		"bad magic":    append([]byte("\x0d\x00\x00\x00\x00\x00\x00\x00nix-archive-2\x00\x00\x00"), good[24:]...),
		"huge string":  append(append([]byte(nil), good[:16]...), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f),
		"bad padding":  flip(good, 8+13),
		"unsorted":     unsortedNAR(t),
		"name slash":   narWithName(t, "a/b"),
		"name dotdot":  narWithName(t, ".."),
		"unknown type": bytes.Replace(good, []byte("symlink"), []byte("symlonk"), 1),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			r := NewReader(bytes.NewReader(b))
			var err error
			for err == nil {
				_, err = r.Next()
				if err == nil {
					_, err = io.Copy(io.Discard, r)
				}
			}
			if err == io.EOF {
				t.Fatal("accepted")
			}
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("error %v is not ErrFormat", err)
			}
		})
	}
}

func flip(b []byte, i int) []byte {
	c := append([]byte(nil), b...)
	c[i] ^= 1
	return c
}

// rawNAR writes NAR tokens as given, bypassing Writer's checks.
func rawNAR(tokens ...string) []byte {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	for _, tok := range tokens {
		w.writeString(tok)
	}
	w.bw.Flush()
	return buf.Bytes()
}

func narWithName(t *testing.T, name string) []byte {
	return rawNAR(magic, "(", "type", "directory", "entry", "(", "name", name, "node", "(", "type", "symlink", "target", "x", ")", ")", ")")
}

func unsortedNAR(t *testing.T) []byte {
	return rawNAR(magic, "(", "type", "directory",
		"entry", "(", "name", "b", "node", "(", "type", "symlink", "target", "x", ")", ")",
		"entry", "(", "name", "a", "node", "(", "type", "symlink", "target", "x", ")", ")", ")")
}

func TestWriterRejectsMisuse(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	w.WriteHeader(&Header{Type: TypeDirectory})
	w.WriteHeader(&Header{Path: "b", Type: TypeSymlink, Target: "x"})
	if err := w.WriteHeader(&Header{Path: "a", Type: TypeSymlink, Target: "x"}); err == nil {
		t.Error("unsorted entry accepted")
	}
	w = NewWriter(&buf)
	w.WriteHeader(&Header{Type: TypeRegular, Size: 4})
	w.Write([]byte("abc"))
	if err := w.Close(); err == nil {
		t.Error("short file accepted")
	}
	w = NewWriter(&buf)
	w.WriteHeader(&Header{Type: TypeRegular, Size: 2})
	if _, err := w.Write([]byte("abc")); err == nil {
		t.Error("long file accepted")
	}
}
