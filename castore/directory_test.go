package castore

import (
	"encoding/hex"
	"slices"
	"strings"
	"testing"
)

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var emptyBlob = Sum(nil)

// Vectors: the empty directory is snix's own test vector; the .keep one
// matches snix's encoding rules (field 2, name 1, digest 2, size 0
// omitted); the nested ones pin our size rule (entries plus child sizes).
func TestDirectoryVectors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		dir    Directory
		bytes  string // hex prefix of the encoding, "" to skip
		digest string
		size   uint64
	}{
		{
			name:   "empty",
			dir:    Directory{},
			digest: "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
		},
		{
			name:   "keep",
			dir:    Directory{Files: []FileEntry{{Name: []byte(".keep"), Digest: emptyBlob}}},
			bytes:  "12290a052e6b6565701220af13",
			digest: "8b5b5d642b646bb8ed504b0862c39413e87e57491497de7bd075953f7b83810e",
			size:   1,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.dir.Marshal()
			if !strings.HasPrefix(hex.EncodeToString(b), tc.bytes) {
				t.Errorf("encoding %x, want prefix %s", b, tc.bytes)
			}
			if got := tc.dir.Digest().String(); got != tc.digest {
				t.Errorf("digest %s, want %s", got, tc.digest)
			}
			if got := tc.dir.Size(); got != tc.size {
				t.Errorf("size %d, want %d", got, tc.size)
			}
			back, err := UnmarshalDirectory(b)
			if err != nil {
				t.Fatal(err)
			}
			if back.Digest() != tc.dir.Digest() {
				t.Error("round trip changed the digest")
			}
		})
	}
}

// TestDirectoryNested pins the size rule and the digest of a tree with a
// subdirectory: {dir a (with 3 entries), file b, symlink c} has size
// 3 + 3 = 6.
func TestDirectoryNested(t *testing.T) {
	child := Directory{
		Files:    []FileEntry{{Name: []byte("x"), Digest: Sum([]byte("x")), Size: 1, Executable: true}},
		Symlinks: []SymlinkEntry{{Name: []byte("y"), Target: []byte("../b")}, {Name: []byte("z"), Target: []byte("/nix/store")}},
	}
	if child.Size() != 3 {
		t.Fatalf("child size %d", child.Size())
	}
	parent := Directory{
		Directories: []DirectoryEntry{{Name: []byte("a"), Digest: child.Digest(), Size: child.Size()}},
		Files:       []FileEntry{{Name: []byte("b"), Digest: emptyBlob}},
		Symlinks:    []SymlinkEntry{{Name: []byte("c"), Target: []byte("a")}},
	}
	if parent.Size() != 6 {
		t.Fatalf("parent size %d, want 6", parent.Size())
	}
	// The DirectoryEntry is name (3 bytes), digest (34), size 3 (2): 39.
	if got := hex.EncodeToString(parent.Marshal()); !strings.HasPrefix(got, "0a270a0161") {
		t.Errorf("parent encoding starts %s", got[:10])
	}
	if got := child.Digest().String(); got != "8f1b6ae9f90fdde69d7ec04662e98b1ae0933920577b609a26d45374fbb01058" {
		t.Errorf("child digest %s", got)
	}
	if got := parent.Digest().String(); got != "2b008e019ad56d19b2b87620c9837cf6ba448f85a592d89b532e8d980bd4ddb1" {
		t.Errorf("parent digest %s", got)
	}
}

func TestDirectoryRejects(t *testing.T) {
	good := Directory{Files: []FileEntry{{Name: []byte("a"), Digest: emptyBlob}, {Name: []byte("b"), Digest: emptyBlob}}}
	if _, err := UnmarshalDirectory(good.Marshal()); err != nil {
		t.Fatal(err)
	}
	bad := map[string]Directory{
		"unsorted":  {Files: []FileEntry{{Name: []byte("b"), Digest: emptyBlob}, {Name: []byte("a"), Digest: emptyBlob}}},
		"duplicate": {Files: []FileEntry{{Name: []byte("a"), Digest: emptyBlob}}, Symlinks: []SymlinkEntry{{Name: []byte("a"), Target: []byte("x")}}},
		"slash":     {Files: []FileEntry{{Name: []byte("a/b"), Digest: emptyBlob}}},
		"dotdot":    {Files: []FileEntry{{Name: []byte(".."), Digest: emptyBlob}}},
		"empty":     {Files: []FileEntry{{Name: nil, Digest: emptyBlob}}},
		"long":      {Files: []FileEntry{{Name: []byte(strings.Repeat("x", 256)), Digest: emptyBlob}}},
		"notarget":  {Symlinks: []SymlinkEntry{{Name: []byte("l")}}},
	}
	for name, d := range bad {
		if _, err := UnmarshalDirectory(d.Marshal()); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// Non-canonical: an explicit zero size field.
	nc := mustHex(t, "12250a01611220"+hex.EncodeToString(emptyBlob[:])+"1800")
	if _, err := UnmarshalDirectory(nc); err == nil {
		t.Error("non-canonical encoding accepted")
	}
	for _, junk := range [][]byte{{0xff}, {0x12, 0x50}, {0x08, 0x01}} {
		if _, err := UnmarshalDirectory(junk); err == nil {
			t.Errorf("junk %x accepted", junk)
		}
	}
}

func TestNodeRoundTrip(t *testing.T) {
	for _, n := range []Node{
		{Type: TypeDirectory, Digest: Sum([]byte("d")), Size: 7},
		{Type: TypeFile, Digest: emptyBlob},
		{Type: TypeFile, Digest: Sum([]byte("f")), Size: 1, Executable: true},
		{Type: TypeSymlink, Target: []byte("/nix/store/foo")},
	} {
		back, err := UnmarshalNode(n.Marshal())
		if err != nil {
			t.Fatalf("%v: %v", n.Type, err)
		}
		if string(back.Marshal()) != string(n.Marshal()) {
			t.Errorf("%v: round trip differs", n.Type)
		}
	}
	if _, err := UnmarshalNode(nil); err == nil {
		t.Error("empty node accepted")
	}
}

// EachEntry merges the three lists in byte order of name, the order of a
// NAR.
func TestEachEntry(t *testing.T) {
	d := &Directory{
		Directories: []DirectoryEntry{{Name: []byte("B")}, {Name: []byte("b")}},
		Files:       []FileEntry{{Name: []byte("A")}, {Name: []byte("a.txt")}, {Name: []byte("\xc3\xa9")}},
		Symlinks:    []SymlinkEntry{{Name: []byte("a"), Target: []byte("x")}, {Name: []byte("z")}},
	}
	var got []string
	var types []NodeType
	d.EachEntry(func(name []byte, n Node) error {
		got, types = append(got, string(name)), append(types, n.Type)
		return nil
	})
	want := []string{"A", "B", "a", "a.txt", "b", "z", "\xc3\xa9"}
	wantTypes := []NodeType{TypeFile, TypeDirectory, TypeSymlink, TypeFile, TypeDirectory, TypeSymlink, TypeFile}
	if !slices.Equal(got, want) || !slices.Equal(types, wantTypes) {
		t.Fatalf("order %q %v, want %q %v", got, types, want, wantTypes)
	}
}
