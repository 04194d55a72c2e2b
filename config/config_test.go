package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func load(t *testing.T, args ...string) (*Config, error) {
	t.Helper()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return Load(fs)
}

// TestPrecedence: flags win over the environment, the environment over the
// file, the file over defaults.
func TestPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "p2pstore.yaml")
	os.WriteFile(file, []byte("data_dir: /from/file\nhttp:\n  listen: 127.0.0.1:1\np2p:\n  bootstrap: [/ip4/1.2.3.4/tcp/1/p2p/x]\n  mdns: false\nstorage:\n  max_bytes: 2G\n"), 0o644)
	t.Setenv("P2PSTORE_HTTP_LISTEN", "127.0.0.1:2")
	t.Setenv("P2PSTORE_P2P_LISTEN", "/ip4/127.0.0.1/tcp/5,/ip4/127.0.0.1/udp/5/quic-v1")
	c, err := load(t, "--config", file, "--data-dir", "/from/flag")
	if err != nil {
		t.Fatal(err)
	}
	if c.DataDir != "/from/flag" {
		t.Errorf("data_dir %q", c.DataDir)
	}
	if c.HTTPListen != "127.0.0.1:2" {
		t.Errorf("http.listen %q", c.HTTPListen)
	}
	if len(c.P2PListen) != 2 || c.P2PListen[1] != "/ip4/127.0.0.1/udp/5/quic-v1" {
		t.Errorf("p2p.listen %q", c.P2PListen)
	}
	if len(c.Bootstrap) != 1 || c.MDNS {
		t.Errorf("p2p from file: %q %v", c.Bootstrap, c.MDNS)
	}
	if c.MaxBytes != 2<<30 {
		t.Errorf("max_bytes %d", c.MaxBytes)
	}
	if c.DaemonSocket != "/from/flag/daemon.sock" || c.IdentityFile != "/from/flag/identity.key" {
		t.Errorf("derived paths %q %q", c.DaemonSocket, c.IdentityFile)
	}
	c, err = load(t, "--config", file, "--p2p-listen", "/ip4/127.0.0.9/tcp/1", "--http-listen", "127.0.0.1:3")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.P2PListen) != 1 || c.HTTPListen != "127.0.0.1:3" || c.DataDir != "/from/file" {
		t.Errorf("flags: %q %q %q", c.P2PListen, c.HTTPListen, c.DataDir)
	}
}

func TestDefaults(t *testing.T) {
	c, err := load(t, "--data-dir", "/d")
	if err != nil {
		t.Fatal(err)
	}
	if c.StoreDir != "/nix/store" || c.HTTPListen != "127.0.0.1:7420" || !c.MDNS || len(c.P2PListen) != 2 || c.MaxUploadRate != 0 {
		t.Errorf("defaults: %+v", c)
	}
}

func TestInvalid(t *testing.T) {
	for _, args := range [][]string{
		{"--store-dir", "relative"},
		{"--http-listen", "nonsense"},
		{"--max-bytes", "12Q"},
		{"--max-upload-rate", "-1"},
		{"--config", "/nonexistent/file.yaml"},
	} {
		if _, err := load(t, append(args, "--data-dir", "/d")...); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "100": 100, "1k": 1024, "10M": 10 << 20, "2G": 2 << 30, "1.5GiB": 3 << 29, "3MB": 3 << 20, "1T": 1 << 40} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("%q: %d, %v", in, got, err)
		}
	}
}

// TestSignImports: the node signs (and so shares) what is imported only
// when told to, by flag, environment or file; it needs a key for that.
func TestSignImports(t *testing.T) {
	c, err := load(t, "--data-dir", "/d", "--sign-key-file", "/k")
	if err != nil {
		t.Fatal(err)
	}
	if c.SignImports {
		t.Error("sign.imports is on by default")
	}
	if c, err = load(t, "--data-dir", "/d", "--sign-key-file", "/k", "--sign-imports"); err != nil || !c.SignImports {
		t.Errorf("--sign-imports: %v, %v", c, err)
	}
	t.Setenv("P2PSTORE_SIGN_IMPORTS", "true")
	if c, err = load(t, "--data-dir", "/d", "--sign-key-file", "/k"); err != nil || !c.SignImports {
		t.Errorf("P2PSTORE_SIGN_IMPORTS=true: %v, %v", c, err)
	}
	if c, err = load(t, "--data-dir", "/d", "--sign-key-file", "/k", "--sign-imports=false"); err != nil || c.SignImports {
		t.Errorf("the flag does not win over the environment: %v, %v", c, err)
	}
	t.Setenv("P2PSTORE_SIGN_IMPORTS", "")
	file := filepath.Join(t.TempDir(), "p2pstore.toml")
	os.WriteFile(file, []byte("[sign]\nkey_file = \"/k\"\nimports = true\n"), 0o644)
	if c, err = load(t, "--data-dir", "/d", "--config", file); err != nil || !c.SignImports || c.SignKeyFile != "/k" {
		t.Errorf("sign.imports in a file: %v, %v", c, err)
	}
	if _, err := load(t, "--data-dir", "/d", "--sign-imports"); err == nil || !strings.Contains(err.Error(), "sign.key_file") {
		t.Errorf("sign.imports without a key: %v", err)
	}
}

// TestScrubInterval: weekly by default, 0 turns the scrub off, and what
// is not a duration (or is negative) is refused naming the key.
func TestScrubInterval(t *testing.T) {
	for args, want := range map[string]time.Duration{"": 168 * time.Hour, "--scrub-interval=0": 0, "--scrub-interval=90m": 90 * time.Minute} {
		c, err := load(t, strings.Fields(args+" --data-dir /d")...)
		if err != nil || c.ScrubInterval != want {
			t.Errorf("%q: %v, %v", args, c, err)
		}
	}
	t.Setenv("P2PSTORE_STORAGE_SCRUB_INTERVAL", "1s")
	if c, err := load(t, "--data-dir", "/d"); err != nil || c.ScrubInterval != time.Second {
		t.Errorf("from the environment: %v, %v", c, err)
	}
	for _, bad := range []string{"weekly", "-1h"} {
		if _, err := load(t, "--scrub-interval", bad, "--data-dir", "/d"); err == nil || !strings.Contains(err.Error(), "storage.scrub_interval") {
			t.Errorf("%q: %v", bad, err)
		}
	}
}
