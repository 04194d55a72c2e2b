package main

// End-to-end tests of the Nix daemon endpoint: a real Nix client against
// the node's socket, its store mount, and ssh-ng through a real sshd.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/p2pstore/p2pstore/internal/nixtest"
)

// srcStore is a Nix store outside /nix/store: paths added there are not in
// the client's own store, so nothing can be read from there by accident.
type srcStore struct {
	t   *testing.T
	dir string
}

func newSrcStore(t *testing.T) *srcStore {
	return &srcStore{t: t, dir: filepath.Join(t.TempDir(), "src")}
}

// add makes a path in the source store from generated files.
func (s *srcStore) add(name string, files map[string]string) string {
	s.t.Helper()
	dir := filepath.Join(s.t.TempDir(), name)
	for rel, data := range files {
		p := filepath.Join(dir, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte(data), 0o644)
	}
	return nixtest.Line(s.t, "nix-store", "--store", s.dir, "--add", dir)
}

func (n *nodeProc) socket() string { return filepath.Join(n.dir, "data", "daemon.sock") }

func (n *nodeProc) hasPath(hash string) bool {
	ok, err := n.client.HasPath(context.Background(), hash)
	return err == nil && ok
}

// withMount restarts nothing: it adds --mount to the node's settings; call
// before start. It reports false when FUSE cannot be mounted here (the
// node says so in its log and runs without it).
func (n *nodeProc) withMount() string {
	mnt := filepath.Join(n.dir, "mnt")
	n.args = append(n.args, "--mount", mnt)
	n.t.Cleanup(func() { syscall.Unmount(mnt, syscall.MNT_DETACH) })
	return mnt
}

func requireMount(t *testing.T, n *nodeProc, mnt string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(n.log.String(), "store mount") {
		if time.Now().After(deadline) {
			t.Fatalf("node log says nothing of the mount:\n%s", n.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if strings.Contains(n.log.String(), "running without the store mount") {
		if os.Getenv("P2PSTORE_REQUIRE_FUSE") == "1" {
			t.Fatalf("FUSE mount failed:\n%s", n.log)
		}
		t.Skipf("FUSE cannot be mounted here:\n%s", n.log)
	}
}

// TestDaemonSocket walks a real Nix client through the socket: ping,
// copy --to (signatures kept), path-info, queries, copy --from and
// substitution through the mount, verify-path.
func TestDaemonSocket(t *testing.T) {
	nixtest.Require(t)
	n := newNodeAt(t, "127.0.0.1", "e2e-test-1", "--sign-imports") // copies in are signed
	mnt := n.withMount()
	n.start()
	requireMount(t, n, mnt)
	sock := "unix://" + n.socket()
	real := sock + "?real=" + mnt

	ping, err := nixtest.Command("nix", "store", "ping", "--store", sock).CombinedOutput()
	if err != nil || !strings.Contains(string(ping), "p2pstore") {
		t.Errorf("ping: %v %s", err, ping)
	}

	src := newSrcStore(t)
	stamp := fmt.Sprint(time.Now().UnixNano())
	dep := src.add("dep", map[string]string{"lib": "library " + stamp})
	other := filepath.Join(t.TempDir(), "other.sec")
	n.run("keygen", "--name", "other-1", "--out", other)
	nixtest.Output(t, "nix", "store", "sign", "--store", src.dir, "--key-file", other, dep)
	nixtest.Output(t, "nix", "copy", "--from", src.dir, "--to", sock, dep)

	srcInfo := pathInfo(t, src.dir, dep)[dep]
	got := pathInfo(t, sock, dep)[dep]
	if got.NarHash != srcInfo.NarHash || got.NarSize != srcInfo.NarSize || got.CA != srcInfo.CA {
		t.Fatalf("path-info over the socket: %+v, source %+v", got, srcInfo)
	}
	sigs := strings.Join(got.Signatures, " ")
	if !strings.Contains(sigs, "other-1:") || !strings.Contains(sigs, "e2e-test-1:") {
		t.Fatalf("signatures %v: want the path's own and the node's", got.Signatures)
	}
	if h := nixtest.Line(t, "nix-store", "--store", sock, "--query", "--hash", dep); h != srcInfo.NarHash && !strings.HasPrefix(h, "sha256:") {
		t.Errorf("--query --hash: %s", h)
	}
	if refs := nixtest.Line(t, "nix-store", "--store", sock, "-q", "--references", dep); refs != "" {
		t.Errorf("--references of a path without any: %q", refs)
	}
	nixtest.Output(t, "nix-store", "--store", real, "--verify-path", dep)

	// Through the mount: copy from the node and substitute from it.
	client := filepath.Join(t.TempDir(), "client")
	nixtest.Output(t, "nix", "copy", "--from", real, "--to", client, "--option", "trusted-public-keys", n.status().PublicKey, dep)
	if h := pathInfo(t, client, dep)[dep].NarHash; h != srcInfo.NarHash {
		t.Fatalf("copied %s, want %s", h, srcInfo.NarHash)
	}
	client2 := filepath.Join(t.TempDir(), "client2")
	nixtest.Output(t, "nix-store", "--store", client2, "-r", dep, "--option", "substituters", real,
		"--option", "trusted-public-keys", n.status().PublicKey)
	if h := pathInfo(t, client2, dep)[dep].NarHash; h != srcInfo.NarHash {
		t.Fatalf("substituted %s, want %s", h, srcInfo.NarHash)
	}

	// A path the node lacks is not valid, and a client that asks for it
	// gets a clear failure, not a hang.
	missing := "/nix/store/" + strings.Repeat("0", 32) + "-missing"
	if out := pathInfo(t, sock, missing); out[missing].NarHash != "" {
		t.Errorf("missing path has info %+v", out[missing])
	}
	cmd := nixtest.Command("nix", "copy", "--from", real, "--to", filepath.Join(t.TempDir(), "c3"), missing)
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Errorf("copying a missing path succeeded:\n%s", out)
	}

	// The mount never shows a path before it is whole: copy a big one in
	// and watch the mount while the copy runs.
	blob := make([]byte, 48<<20)
	var seed [32]byte
	copy(seed[:], stamp)
	rand.NewChaCha8(seed).Read(blob)
	big := src.add("big", map[string]string{"blob": string(blob)})
	copyBig := nixtest.Command("nix", "copy", "--from", src.dir, "--to", sock, big)
	if err := copyBig.Start(); err != nil {
		t.Fatal(err)
	}
	copied := make(chan error, 1)
	go func() { copied <- copyBig.Wait() }()
	seenEarly := false
	for done := false; !done; {
		select {
		case err := <-copied:
			if err != nil {
				t.Fatalf("copying the big path: %v", err)
			}
			done = true
		case <-time.After(5 * time.Millisecond):
			if _, err := os.Lstat(filepath.Join(mnt, filepath.Base(big))); err == nil {
				// Visible before nix copy returned: only fine if the
				// record was committed, i.e. the node already says so.
				if _, err := n.client.Status(context.Background()); err == nil && !n.hasPath(hashPart(big)) {
					seenEarly = true
				}
			}
		}
	}
	if seenEarly {
		t.Fatal("the mount showed a path before the node committed it")
	}
	if _, err := os.Lstat(filepath.Join(mnt, filepath.Base(big), "blob")); err != nil {
		t.Fatalf("the copied path is not in the mount: %v", err)
	}

	// A build request gets one readable error line.
	expr := filepath.Join(t.TempDir(), "b.nix")
	os.WriteFile(expr, []byte(`derivation { name = "b`+stamp+`"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo > $out"]; }`), 0o644)
	drv := nixtest.Line(t, "nix-instantiate", expr)
	out2, err := nixtest.Command("nix-store", "--store", sock, "-r", drv).CombinedOutput()
	if err == nil || !strings.Contains(string(out2), "p2pstore does not build derivations") {
		t.Errorf("building through the node: %v\n%s", err, out2)
	}
	// The node is still fine afterwards.
	if _, err := nixtest.Command("nix", "store", "ping", "--store", sock).CombinedOutput(); err != nil {
		t.Errorf("ping after the refused build: %v", err)
	}
}

// TestDaemonManyClients copies 64 paths into the node at once, one client
// process each.
func TestDaemonManyClients(t *testing.T) {
	nixtest.Require(t)
	n := newNode(t)
	n.start()
	src := newSrcStore(t)
	stamp := fmt.Sprint(time.Now().UnixNano())
	var paths []string
	for i := 0; i < 64; i++ {
		paths = append(paths, src.add(fmt.Sprint("p", i), map[string]string{"f": fmt.Sprint(stamp, i)}))
	}
	var wg sync.WaitGroup
	errs := make(chan string, len(paths))
	for _, p := range paths {
		wg.Add(1)
		go func(p string) {
			defer wg.Done()
			cmd := nixtest.Command("nix", "copy", "--from", src.dir, "--to", "unix://"+n.socket(), p)
			if out, err := cmd.CombinedOutput(); err != nil {
				errs <- fmt.Sprintf("%s: %v\n%s", p, err, out)
			}
		}(p)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if got := n.status().Paths; got != len(paths) {
		t.Fatalf("node holds %d paths, want %d", got, len(paths))
	}
}

// sshd is an OpenSSH server on loopback with its own keys and config.
type sshd struct {
	port    int
	userKey string
	cmd     *exec.Cmd
}

func startSSHD(t *testing.T) *sshd {
	t.Helper()
	bin, err := exec.LookPath("sshd")
	if err != nil {
		for _, p := range []string{"/usr/sbin/sshd", "/sbin/sshd"} {
			if _, err := os.Stat(p); err == nil {
				bin = p
			}
		}
	}
	if bin == "" || os.Geteuid() != 0 {
		if os.Getenv("P2PSTORE_REQUIRE_NIX") == "1" {
			t.Fatal("sshd (openssh-server) is needed, run as root")
		}
		t.Skip("needs sshd (Debian's openssh-server) and root")
	}
	dir := t.TempDir()
	for _, k := range []string{"host", "user"} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, k)).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v %s", err, out)
		}
	}
	pub, _ := os.ReadFile(filepath.Join(dir, "user.pub"))
	os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600)
	s := &sshd{port: 22000 + os.Getpid()%1000, userKey: filepath.Join(dir, "user")}
	conf := fmt.Sprintf("Port %d\nListenAddress 127.0.0.1\nHostKey %s/host\nAuthorizedKeysFile %s/authorized_keys\n"+
		"PasswordAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPidFile %s/pid\n"+
		"SetEnv PATH=%s:/usr/local/bin:/usr/bin:/bin\n", s.port, dir, dir, dir, filepath.Dir(binary))
	os.WriteFile(filepath.Join(dir, "config"), []byte(conf), 0o600)
	os.MkdirAll("/run/sshd", 0o755)
	s.cmd = exec.Command(bin, "-D", "-f", filepath.Join(dir, "config"), "-E", filepath.Join(dir, "log"))
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.cmd.Process.Kill(); s.cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if exec.Command("ssh", append(s.opts(), "root@127.0.0.1", "true")...).Run() == nil {
			return s
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "log"))
			t.Fatalf("sshd did not come up:\n%s", log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (s *sshd) opts() []string {
	return []string{"-p", fmt.Sprint(s.port), "-i", s.userKey, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes"}
}

// TestSSHNG copies to and from the node over ssh-ng, with `p2pstore
// daemon --stdio` as the remote program, the way a seed node on a server is
// reached.
func TestSSHNG(t *testing.T) {
	nixtest.Require(t)
	s := startSSHD(t)
	n := newNode(t)
	n.start()
	url := "ssh-ng://root@127.0.0.1?remote-program=p2pstore daemon --daemon-socket " + n.socket()
	env := append(nixtest.Env(), "NIX_SSHOPTS="+strings.Join(s.opts(), " "))
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("nix", args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("nix %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	if out := run("store", "ping", "--store", url); !strings.Contains(out, "p2pstore") {
		t.Errorf("ping: %s", out)
	}
	src := newSrcStore(t)
	p := src.add("over-ssh", map[string]string{"f": fmt.Sprint(time.Now().UnixNano()), "dir/g": "g"})
	run("copy", "--from", src.dir, "--to", url, p)
	want := pathInfo(t, src.dir, p)[p].NarHash
	if got := pathInfo(t, "unix://"+n.socket(), p)[p].NarHash; got != want {
		t.Fatalf("node has %s, want %s", got, want)
	}
	client := filepath.Join(t.TempDir(), "client")
	run("copy", "--from", url, "--to", client, "--no-check-sigs", p)
	if got := pathInfo(t, client, p)[p].NarHash; got != want {
		t.Fatalf("copied back %s, want %s", got, want)
	}
}

// TestImportFromNixDaemon: with a nix-daemon running, import reads path
// infos and NARs from it over the worker protocol.
func TestImportFromNixDaemon(t *testing.T) {
	nixtest.Require(t)
	sock := filepath.Join(t.TempDir(), "nix-daemon.sock")
	d := nixtest.Command("nix-daemon")
	d.Env = append(d.Env, "NIX_DAEMON_SOCKET_PATH="+sock)
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Process.Kill(); d.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("nix-daemon did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	n := newNode(t)
	n.start()
	top, all := buildClosure(t)
	cmd := exec.Command(binary, append([]string{"import", "--recursive", top}, n.args...)...)
	cmd.Env = append(nixtest.Env(), "NIX_DAEMON_SOCKET_PATH="+sock)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), fmt.Sprintf("imported %d paths from the nix-daemon", len(all))) {
		t.Fatalf("import: %v\n%s", err, out)
	}
	want := pathInfo(t, "", all...)
	for _, p := range all {
		if got := pathInfo(t, "unix://"+n.socket(), p)[p]; got.NarHash != want[p].NarHash {
			t.Errorf("%s: node has %s, want %s", p, got.NarHash, want[p].NarHash)
		}
	}
}
