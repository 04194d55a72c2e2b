package main

import (
	"bytes"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/p2pstore/p2pstore/narview/guix"
)

// TestKeygenGuix: `keygen --guix` writes a Guix key pair as `guix archive
// --generate-key` does (signing-key.sec private, signing-key.pub beside
// it) and prints the public key; the pair signs narinfos that verify
// under the printed key. Misuse gets one error line and writes nothing.
func TestKeygenGuix(t *testing.T) {
	dir := t.TempDir()
	sec := filepath.Join(dir, "signing-key.sec")
	pubPath := filepath.Join(dir, "signing-key.pub")
	keygen := func(args ...string) (string, string, error) {
		cmd := exec.Command(binary, append([]string{"keygen"}, args...)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		return stdout.String(), stderr.String(), err
	}
	out, stderr, err := keygen("--guix", "--out", sec)
	if err != nil {
		t.Fatalf("keygen --guix: %v\n%s", err, stderr)
	}
	pubText, err := os.ReadFile(pubPath)
	if err != nil {
		t.Fatal(err)
	}
	if out != string(pubText) || !strings.HasPrefix(out, "(public-key \n (ecc \n  (curve Ed25519)\n  (q #") {
		t.Fatalf("printed %q, the .pub file holds %q", out, pubText)
	}
	for path, mode := range map[string]os.FileMode{sec: 0o600, pubPath: 0o644} {
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v, mode %v", path, err, fi.Mode())
		}
	}
	k, err := guix.LoadSecretKeyFile(sec)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := guix.LoadPublicKeyFile(pubPath)
	if err != nil {
		t.Fatal(err)
	}
	if !k.Public().Equal(pub) {
		t.Fatal("the .sec and .pub files hold different keys")
	}
	ni := &guix.NarInfo{
		StorePath: "/gnu/store/0ik2s0xdsl2d6ycw86r7f4bl3gbsfqwa-keygen-test",
		NarHash:   sha256.Sum256([]byte("nar")), NarSize: 1,
		NARs: []guix.NAR{{URL: "nar/x", Compression: "none", FileSize: 1}},
	}
	if err := ni.Sign(k, "keygen-test"); err != nil {
		t.Fatal(err)
	}
	back, err := guix.Parse([]byte(ni.String()))
	if err != nil {
		t.Fatal(err)
	}
	if err := back.Verify([]guix.PublicKey{pub}); err != nil {
		t.Fatal(err)
	}

	// Misuse: one line on stderr, non-zero exit, the files untouched.
	other := filepath.Join(t.TempDir(), "other.sec")
	for _, args := range [][]string{
		{"--guix", "--out", sec},
		{"--guix", "--name", "x-1", "--out", other},
		{"--guix", "--out", filepath.Join(dir, "key.pub")},
		{"--guix"},
		{"--guix", "--out", filepath.Join(dir, "no-such-dir", "k.sec")},
	} {
		out, stderr, err := keygen(args...)
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		if err == nil || out != "" || len(lines) != 1 || !strings.HasPrefix(lines[0], "p2pstore: ") {
			t.Errorf("keygen %s: %v, printed %q and %q", strings.Join(args, " "), err, out, stderr)
		}
	}
	if again, _ := os.ReadFile(pubPath); !bytes.Equal(again, pubText) {
		t.Error("a refused keygen changed the public key")
	}
	if _, err := os.Stat(other); err == nil {
		t.Error("a refused keygen wrote a file")
	}
	// --force replaces the pair with a new one.
	out, stderr, err = keygen("--guix", "--force", "--out", sec)
	if err != nil || out == string(pubText) {
		t.Fatalf("keygen --guix --force: %v %s", err, stderr)
	}
	if k2, err := guix.LoadSecretKeyFile(sec); err != nil || k2.Public().String() != out {
		t.Fatalf("after --force: %v", err)
	}
}
