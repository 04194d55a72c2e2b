// Package nixtest runs the real Nix client in tests. Tests that need Nix
// call Require: without nix-store on PATH they are skipped, unless
// P2PSTORE_REQUIRE_NIX=1 (as CI sets it), where a missing Nix fails them.
package nixtest

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Config is the NIX_CONFIG the tests run Nix with: single-user, no sandbox,
// no build users, no substituters (no public cache is reachable).
const Config = "experimental-features = nix-command\nsandbox = false\nbuild-users-group = \nfsync-metadata = false\nsubstituters = "

// Require skips or fails t when the Nix tools are missing.
func Require(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("nix-store"); err == nil {
		return
	}
	if os.Getenv("P2PSTORE_REQUIRE_NIX") == "1" {
		t.Fatal("nix-store is not on PATH (install nix-bin: scripts/nix-env.sh)")
	}
	t.Skip("nix-store is not on PATH; install nix-bin (scripts/nix-env.sh) to run this test")
}

// Env returns the environment for Nix commands.
func Env() []string {
	return append(os.Environ(), "NIX_CONFIG="+Config)
}

// Command returns a Nix command with the test environment.
func Command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Env = Env()
	return cmd
}

// Output runs a Nix command and returns its stdout, failing t on error.
func Output(t testing.TB, name string, args ...string) []byte {
	t.Helper()
	cmd := Command(name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return out
}

// Line runs a command and returns its trimmed stdout.
func Line(t testing.TB, name string, args ...string) string {
	t.Helper()
	return strings.TrimSpace(string(Output(t, name, args...)))
}
