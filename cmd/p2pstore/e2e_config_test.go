package main

// Settings as a new user meets them: config files found without flags,
// precedence across commands, refusals at start, the socket's group, the
// p2p port already taken.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pstore/p2pstore/internal/nixtest"
	"github.com/p2pstore/p2pstore/node"
)

// envWith is the tests' environment without P2PSTORE_CONFIG (so that the
// search path applies), plus vars.
func envWith(vars ...string) []string {
	var out []string
	for _, e := range nixtest.Env() {
		if !strings.HasPrefix(e, "P2PSTORE_CONFIG=") {
			out = append(out, e)
		}
	}
	return append(out, vars...)
}

// command runs p2pstore with env and returns its stdout and stderr.
func command(env []string, args ...string) (string, string, error) {
	cmd := exec.Command(binary, args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// TestConfigSources: a node set up by a config file in the default search
// path ($XDG_CONFIG_HOME/p2pstore/config.yaml), the environment and flags,
// each winning over the one before, in serve and in the client commands
// (status, import, config), which then need no --data-dir.
func TestConfigSources(t *testing.T) {
	nixtest.Require(t)
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	sock := filepath.Join(data, "daemon.sock")
	xdg := filepath.Join(dir, "xdg")
	file := filepath.Join(xdg, "p2pstore", "config.yaml")
	os.MkdirAll(filepath.Dir(file), 0o755)
	os.WriteFile(file, []byte(fmt.Sprintf(`data_dir: %s
http:
  listen: 127.0.0.2:0
p2p:
  listen: [/ip4/127.0.0.2/tcp/0]
  mdns: false
local:
  share: false
`, data)), 0o644)
	env := envWith("XDG_CONFIG_HOME="+xdg, "P2PSTORE_HTTP_LISTEN=127.0.0.3:0", "P2PSTORE_P2P_LISTEN=/ip4/127.0.0.3/tcp/0")
	flags := []string{"--p2p-listen", "/ip4/127.0.0.4/tcp/0"}

	// serve: data_dir from the file, http.listen from the environment,
	// p2p.listen from the flag.
	n := &nodeProc{t: t, dir: dir, client: node.NewClient(sock)}
	n.log = new(syncBuffer)
	n.cmd = exec.Command(binary, append([]string{"serve"}, flags...)...)
	n.cmd.Env = env
	n.cmd.Stdout, n.cmd.Stderr = n.log, n.log
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.kill)
	var s *node.Status
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var err error
		if s, err = n.client.Status(context.Background()); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node did not start with its socket at %s: %v\n%s", sock, err, n.log)
		}
	}
	if !strings.HasPrefix(s.HTTPListen, "127.0.0.3:") {
		t.Errorf("http.listen: %s, want the environment's 127.0.0.3", s.HTTPListen)
	}
	if addrs := strings.Join(s.Addrs, " "); !strings.Contains(addrs, "/ip4/127.0.0.4/tcp/") || strings.Contains(addrs, "127.0.0.2") || strings.Contains(addrs, "127.0.0.3") {
		t.Errorf("p2p.listen: %s, want the flag's 127.0.0.4 only", addrs)
	}

	// status and import find the node through the file alone.
	fileOnly := envWith("XDG_CONFIG_HOME=" + xdg)
	out, errOut, err := command(fileOnly, "status", "--json")
	if err != nil || !strings.Contains(out, s.PeerID) {
		t.Fatalf("status with the config file: %v\n%s%s", err, out, errOut)
	}
	p1 := addTree(t, "cfg-one", map[string][]byte{"f": []byte(fmt.Sprint("one ", time.Now().UnixNano()))})
	p2 := addTree(t, "cfg-two", map[string][]byte{"f": []byte(fmt.Sprint("two ", time.Now().UnixNano()))})
	out, errOut, err = command(fileOnly, "import", p1)
	if err != nil || !strings.Contains(out, "imported 1 path from") || !strings.Contains(out, "0 were already there") {
		t.Fatalf("import with the config file: %v\n%s%s", err, out, errOut)
	}

	// The environment wins over the file, and a flag over the environment.
	elsewhere := filepath.Join(dir, "elsewhere.sock")
	envSock := envWith("XDG_CONFIG_HOME="+xdg, "P2PSTORE_DAEMON_SOCKET="+elsewhere)
	for _, args := range [][]string{{"status"}, {"import", p2}} {
		if _, errOut, err := command(envSock, args...); err == nil || !strings.Contains(errOut, "no node is running at "+elsewhere) {
			t.Errorf("%s with P2PSTORE_DAEMON_SOCKET: %v %s", args[0], err, errOut)
		}
		if out, errOut, err := command(envSock, append(args, "--daemon-socket", sock)...); err != nil {
			t.Errorf("%s with --daemon-socket over P2PSTORE_DAEMON_SOCKET: %v\n%s%s", args[0], err, out, errOut)
		}
	}
	if ok, err := n.client.HasPath(context.Background(), hashPart(p2)); err != nil || !ok {
		t.Errorf("the import through --daemon-socket did not reach the node: %v %v", ok, err)
	}

	// P2PSTORE_CONFIG wins over the search path.
	other := filepath.Join(dir, "other.toml")
	os.WriteFile(other, []byte(`data_dir = "`+filepath.Join(dir, "other")+`"`), 0o644)
	if _, errOut, err := command(envWith("XDG_CONFIG_HOME="+xdg, "P2PSTORE_CONFIG="+other), "status"); err == nil ||
		!strings.Contains(errOut, filepath.Join(dir, "other", "daemon.sock")) {
		t.Errorf("status with P2PSTORE_CONFIG: %v %s", err, errOut)
	}

	// config says what serve used, and where each value came from.
	out, errOut, err = command(env, append([]string{"config", "--json"}, flags...)...)
	if err != nil {
		t.Fatalf("config --json: %v\n%s", err, errOut)
	}
	var effective struct {
		File     string `json:"config_file"`
		Settings map[string]struct {
			Value  any    `json:"value"`
			Source string `json:"source"`
		} `json:"settings"`
	}
	if err := json.Unmarshal([]byte(out), &effective); err != nil {
		t.Fatalf("config --json: %v\n%s", err, out)
	}
	if effective.File != file {
		t.Errorf("config file %q, want %q", effective.File, file)
	}
	for key, want := range map[string]string{
		"data_dir":      "file " + file + " " + data,
		"daemon.socket": "default " + sock,
		"http.listen":   "env P2PSTORE_HTTP_LISTEN 127.0.0.3:0",
		"p2p.listen":    "flag --p2p-listen [/ip4/127.0.0.4/tcp/0]",
		"p2p.mdns":      "file " + file + " false",
		"store_dir":     "default /nix/store",
	} {
		got := effective.Settings[key]
		if s := got.Source + " " + fmt.Sprint(got.Value); s != want {
			t.Errorf("config --json: %s is %q, want %q", key, s, want)
		}
	}
	out, _, err = command(env, append([]string{"config"}, flags...)...)
	if err != nil || !strings.Contains(out, "config file: "+file) {
		t.Errorf("config: %v\n%s", err, out)
	}
	for _, want := range [][]string{{"http.listen", "127.0.0.3:0", "env", "P2PSTORE_HTTP_LISTEN"}, {"p2p.listen", "/ip4/127.0.0.4/tcp/0", "flag", "--p2p-listen"}} {
		if !containsLine(out, want...) {
			t.Errorf("config lacks the line %q:\n%s", want, out)
		}
	}

	// The last line of the node's log says it stopped, and why.
	n.stop()
	if !strings.Contains(n.log.String(), `msg="node stopped" reason="terminated signal received"`) {
		t.Errorf("no line at shutdown:\n%s", n.log)
	}
}

func containsLine(out string, fields ...string) bool {
	for _, line := range strings.Split(out, "\n") {
		if strings.Join(strings.Fields(line), " ") == strings.Join(fields, " ") {
			return true
		}
	}
	return false
}

// refusedAtStart runs serve and returns what it wrote to stderr, failing
// the test if the node starts instead of exiting with an error.
func refusedAtStart(t *testing.T, env []string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, append([]string{"serve"}, args...)...)
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("serve %s: started instead of refusing\n%s", strings.Join(args, " "), stderr.String())
	}
	if err == nil {
		t.Fatalf("serve %s: exited without an error", strings.Join(args, " "))
	}
	return stderr.String()
}

// TestRefusedAtStart: serve refuses what it cannot use with one line on
// stderr that names the key.
func TestRefusedAtStart(t *testing.T) {
	dir := t.TempDir()
	unknownKey := filepath.Join(dir, "unknown.yaml")
	os.WriteFile(unknownKey, []byte("http:\n  listn: 127.0.0.1:0\n"), 0o644)
	aDir := filepath.Join(dir, "a-directory")
	os.Mkdir(aDir, 0o755)
	k, _, _ := crypto.GenerateEd25519Key(nil)
	id, _ := peer.IDFromPrivateKey(k)
	for _, tc := range []struct {
		env  []string
		args []string
		want []string
	}{
		{args: []string{"--config", unknownKey}, want: []string{`unknown key "http.listn"`, "http.listen"}},
		{env: []string{"P2PSTORE_CONFIG=" + unknownKey}, want: []string{`unknown key "http.listn"`}},
		{env: []string{"P2PSTORE_P2P_MDNS=maybe"}, want: []string{"p2p.mdns", "maybe"}},
		{args: []string{"--max-bytes", "1Q"}, want: []string{"storage.max_bytes"}},
		{args: []string{"--max-upload-rate", "fast"}, want: []string{"p2p.max_upload_rate"}},
		{args: []string{"--local-poll-interval", "1"}, want: []string{"local.poll_interval"}},
		{args: []string{"--http-listen", "127.0.0.1"}, want: []string{"http.listen"}},
		{args: []string{"--p2p-listen", "0.0.0.0:7421"}, want: []string{"p2p.listen"}},
		{args: []string{"--bootstrap", "/ip4/127.0.0.1/tcp/7421/p2p/" + id.String() + "x"}, want: []string{"p2p.bootstrap"}},
		{args: []string{"--identity-file", aDir}, want: []string{"p2p.identity_file", "is a directory"}},
		{args: []string{"--sign-key-file", aDir}, want: []string{"sign.key_file", "is a directory"}},
		{args: []string{"--sign-key-file", filepath.Join(dir, "missing.sec")}, want: []string{"sign.key_file", "no such file"}},
		{args: []string{"--daemon-socket-group", "no-such-group-p2pstore"}, want: []string{"daemon.socket_group", "no such group"}},
		{args: []string{"--daemon-socket", filepath.Join(dir, strings.Repeat("s", 110))}, want: []string{"daemon.socket", "over the 107"}},
	} {
		name := strings.Join(append(tc.env, tc.args...), " ")
		t.Run(name, func(t *testing.T) {
			data := filepath.Join(t.TempDir(), "data")
			args := append([]string{"--data-dir", data, "--http-listen", "127.0.0.1:0", "--p2p-listen", "/ip4/127.0.0.1/tcp/0",
				"--share-local=false"}, tc.args...)
			// mDNS off by the environment, which a case may set again
			// (the last value wins).
			env := append(nixtest.Env(), "P2PSTORE_P2P_MDNS=false")
			stderr := refusedAtStart(t, append(env, tc.env...), args...)
			if lines := strings.Split(strings.TrimSpace(stderr), "\n"); len(lines) != 1 {
				t.Errorf("want one line, got:\n%s", stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("%q lacks %q", stderr, w)
				}
			}
		})
	}
}

// freeTCPAndUDPPort returns a port free on ip for both TCP and UDP.
func freeTCPAndUDPPort(t *testing.T, ip string) int {
	t.Helper()
	for range 20 {
		port := freePort(t, ip)
		if c, err := net.ListenPacket("udp", net.JoinHostPort(ip, strconv.Itoa(port))); err == nil {
			c.Close()
			return port
		}
	}
	t.Fatal("no port free for TCP and UDP")
	return 0
}

// TestP2PListenInUse: a second node given the p2p address a first one
// listens on is refused at start. libp2p's TCP transport binds with
// SO_REUSEPORT, so before the check the second node shared the port (its
// QUIC listener failing quietly) and took part of the first's peers.
func TestP2PListenInUse(t *testing.T) {
	port := freeTCPAndUDPPort(t, "127.0.0.1")
	tcp := fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", port)
	quic := fmt.Sprintf("/ip4/127.0.0.1/udp/%d/quic-v1", port)
	a := newNodeAt(t, "127.0.0.1", "", "--p2p-listen", tcp, "--p2p-listen", quic)
	a.start()
	if addrs := strings.Join(a.status().Addrs, " "); !strings.Contains(addrs, tcp) {
		t.Fatalf("first node: %s", addrs)
	}
	for _, listen := range [][]string{{tcp, quic}, {tcp}, {"/ip4/0.0.0.0/tcp/" + strconv.Itoa(port)}} {
		args := []string{"--data-dir", filepath.Join(t.TempDir(), "data"), "--http-listen", "127.0.0.1:0", "--mdns=false", "--share-local=false"}
		for _, l := range listen {
			args = append(args, "--p2p-listen", l)
		}
		stderr := refusedAtStart(t, nixtest.Env(), args...)
		if !strings.Contains(stderr, "p2p.listen "+listen[0]+": address already in use") || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("second node on %s: %s", listen, stderr)
		}
	}
	// The first node is unharmed.
	if addrs := strings.Join(a.status().Addrs, " "); !strings.Contains(addrs, tcp) {
		t.Errorf("first node after the refusals: %s", addrs)
	}
}

// TestSocketGroup: with daemon.socket_group the socket is 0660 in that
// group and the data dir lets the group through (0710); a user in the
// group runs status, one outside is told "permission denied" (not that
// no node runs); without the setting the socket is 0600 in a 0700 dir.
func TestSocketGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("P2PSTORE_REQUIRE_ROOT") == "1" {
			t.Fatal("needs root, to run commands as another user")
		}
		t.Skip("needs root, to run commands as another user")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody")
	}
	var group *user.Group
	for _, name := range []string{"users", "staff", "adm"} {
		if group, err = user.LookupGroup(name); err == nil {
			break
		}
	}
	if group == nil {
		t.Skip("none of the groups users, staff, adm exists")
	}
	gid, _ := strconv.Atoi(group.Gid)
	uid, _ := strconv.Atoi(nobody.Uid)
	// A directory other users may enter, with the binary in it (the
	// tests' temporary dirs are 0700).
	shared, err := os.MkdirTemp("", "p2pstore-group")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(shared) })
	os.Chmod(shared, 0o755)
	bin := filepath.Join(shared, "p2pstore")
	copyFile(t, binary, bin, 0o755)

	startNode := func(name string, extra ...string) (*nodeProc, string) {
		data := filepath.Join(shared, name)
		n := &nodeProc{t: t, dir: shared}
		n.args = append([]string{"--data-dir", data, "--http-listen", "127.0.0.1:0", "--p2p-listen", "/ip4/127.0.0.1/tcp/0",
			"--mdns=false", "--share-local=false"}, extra...)
		n.client = node.NewClient(filepath.Join(data, "daemon.sock"))
		n.start()
		return n, data
	}
	// asNobody runs status as nobody, with or without the group.
	asNobody := func(data string, inGroup bool) (string, error) {
		cmd := exec.Command(bin, "status", "--daemon-socket", filepath.Join(data, "daemon.sock"))
		cmd.Dir = shared
		cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent", "XDG_CONFIG_HOME=/nonexistent"}
		cred := &syscall.Credential{Uid: uint32(uid), Gid: 65534}
		if inGroup {
			cred.Groups = []uint32{uint32(gid)}
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	mode := func(p string) (os.FileMode, int) {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return st.Mode().Perm(), int(st.Sys().(*syscall.Stat_t).Gid)
	}

	_, withGroup := startNode("with-group", "--daemon-socket-group", group.Name)
	if m, g := mode(filepath.Join(withGroup, "daemon.sock")); m != 0o660 || g != gid {
		t.Errorf("socket with a group: %v, gid %d; want 0660, %d", m, g, gid)
	}
	if m, g := mode(withGroup); m != 0o710 || g != gid {
		t.Errorf("data dir with a socket group: %v, gid %d; want 0710, %d", m, g, gid)
	}
	if out, err := asNobody(withGroup, true); err != nil || !strings.Contains(out, "peer id:") {
		t.Errorf("status as a member of %s: %v\n%s", group.Name, err, out)
	}
	denied := "p2pstore: permission denied on the node's socket "
	if out, err := asNobody(withGroup, false); err == nil || !strings.HasPrefix(out, denied) {
		t.Errorf("status as a non-member: %v\n%s", err, out)
	}

	_, without := startNode("without-group")
	if m, _ := mode(filepath.Join(without, "daemon.sock")); m != 0o600 {
		t.Errorf("socket without a group: %v, want 0600", m)
	}
	if m, _ := mode(without); m != 0o700 {
		t.Errorf("data dir without a socket group: %v, want 0700", m)
	}
	if out, err := asNobody(without, true); err == nil || !strings.HasPrefix(out, denied) {
		t.Errorf("status as another user: %v\n%s", err, out)
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, mode); err != nil {
		t.Fatal(err)
	}
}

// TestImportDerivation: `import X.drv` imports the store derivation
// itself (and with --recursive its closure of derivations and sources),
// as nix-store --export and newer Nix's `nix copy` take it; Nix 2.8's
// `nix path-info X.drv` names the outputs instead. The summary counts in
// the singular for one path.
func TestImportDerivation(t *testing.T) {
	nixtest.Require(t)
	n := newNode(t)
	n.start()
	salt := fmt.Sprint(time.Now().UnixNano())
	expr := filepath.Join(t.TempDir(), "drv.nix")
	os.WriteFile(expr, []byte(fmt.Sprintf(`let
  leaf = derivation { name = "cfg-leaf"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "echo %[1]s > $out" ]; };
in derivation { name = "cfg-top"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "echo ${leaf} > $out" ]; }`, salt)), 0o644)
	topDrv := nixtest.Line(t, "nix-instantiate", expr)
	topOut := nixtest.Line(t, "nix-build", expr, "--no-out-link")
	drvs := strings.Fields(nixtest.Line(t, "nix-store", "-qR", topDrv))
	if len(drvs) != 2 {
		t.Fatalf("closure of %s: %q", topDrv, drvs)
	}
	has := func(p string) bool {
		ok, err := n.client.HasPath(context.Background(), hashPart(p))
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}

	leafDrv := drvs[0]
	if leafDrv == topDrv {
		leafDrv = drvs[1]
	}
	if out := n.run("import", leafDrv); !strings.Contains(out, "imported 1 path from") {
		t.Errorf("import of one derivation: %s", out)
	}
	if out := n.run("import", "--recursive", topDrv); !strings.Contains(out, "imported 1 path from") || !strings.Contains(out, "1 was already there") {
		t.Errorf("import --recursive of a derivation: %s", out)
	}
	for _, p := range drvs {
		if !has(p) {
			t.Errorf("%s not imported", p)
		}
	}
	if has(topOut) {
		t.Errorf("the derivation's output %s was imported", topOut)
	}
	// A built path and a derivation together: each is itself.
	if out := n.run("import", topOut, topDrv); !strings.Contains(out, "imported 1 path from") || !has(topOut) {
		t.Errorf("import of an output beside its derivation: %s", out)
	}
}

// TestPeerConnectFailureLogged: a bootstrap peer the node cannot reach is
// logged at warn, with the peer and the reason; log.format json writes
// every line as JSON, and log.level warn leaves out the info lines.
func TestPeerConnectFailureLogged(t *testing.T) {
	k, _, _ := crypto.GenerateEd25519Key(nil)
	id, _ := peer.IDFromPrivateKey(k)
	boot := fmt.Sprintf("/ip4/127.0.0.1/tcp/%d/p2p/%s", freePort(t, "127.0.0.1"), id)
	n := newNodeAt(t, "127.0.0.1", "", "--bootstrap", boot, "--log-format", "json", "--log-level", "warn")
	n.start()
	type line struct {
		Level, Msg, Peer, Via, Err string
	}
	var found *line
	for deadline := time.Now().Add(30 * time.Second); found == nil && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		sc := bufio.NewScanner(strings.NewReader(n.log.String()))
		for sc.Scan() {
			var l line
			if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "cannot connect to a peer" {
				found = &l
				break
			}
		}
	}
	if found == nil || found.Level != "WARN" || found.Peer != id.String() || found.Via != "bootstrap" || found.Err == "" {
		t.Fatalf("no warning about the unreachable bootstrap peer %s: %+v\n%s", id, found, n.log)
	}
	n.stop()
	sc := bufio.NewScanner(strings.NewReader(n.log.String()))
	for sc.Scan() {
		var l line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Errorf("not a JSON line: %s", sc.Text())
		} else if l.Level == "INFO" || l.Level == "DEBUG" {
			t.Errorf("a line below warn: %s", sc.Text())
		}
	}
}
