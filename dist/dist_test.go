package dist

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/p2pstore/p2pstore/internal/nixtest"
	"github.com/p2pstore/p2pstore/node"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "p2pstore-dist")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "p2pstore")
	if out, err := exec.Command("go", "build", "-o", binary, "../cmd/p2pstore").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building p2pstore: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// tool returns the path of a command a check needs. Without it the test is
// skipped, unless requireEnv=1 (as scripts/test.sh sets it), where it fails.
func tool(t *testing.T, name, requireEnv, install string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if requireEnv != "" && os.Getenv(requireEnv) == "1" {
		t.Fatalf("%s is not on PATH (%s)", name, install)
	}
	t.Skipf("%s is not on PATH; %s to run this check", name, install)
	return ""
}

// run runs a command and returns its stdout and stderr.
func run(cmd *exec.Cmd) (string, string, error) {
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// unitCommands reads a unit's ExecStartPre= and ExecStart= lines, split
// into words (single quotes group, as the unit uses them).
func unitCommands(t *testing.T, unit string) (pre, start []string) {
	t.Helper()
	for _, line := range strings.Split(unit, "\n") {
		if v, ok := strings.CutPrefix(line, "ExecStartPre="); ok {
			pre = splitWords(v)
		} else if v, ok := strings.CutPrefix(line, "ExecStart="); ok {
			start = splitWords(v)
		}
	}
	if start == nil {
		t.Fatal("the unit has no ExecStart=")
	}
	return pre, start
}

func splitWords(s string) []string {
	var words []string
	var word strings.Builder
	inWord, quoted := false, false
	for _, r := range s {
		switch {
		case r == '\'':
			quoted, inWord = !quoted, true
		case r == ' ' && !quoted:
			if inWord {
				words = append(words, word.String())
				word.Reset()
				inWord = false
			}
		default:
			word.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, word.String())
	}
	return words
}

// testNode is a node started from a service file's command line.
type testNode struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed when the process has ended; then err
	err    error
	log    *bytes.Buffer
	client *node.Client
	status *node.Status
}

// nodeOverrides keeps a node started from a service file's command line
// off the default addresses and away from this machine's Nix store (the
// other tests' scratch space): flags win over the config file.
func nodeOverrides(ip string) []string {
	return []string{"--http-listen", ip + ":0", "--p2p-listen", "/ip4/" + ip + "/tcp/0", "--mdns=false", "--share-local=false"}
}

// startNode runs `p2pstore ARGS...` (a serve command line) and waits until
// it answers on socket. The files name the group p2pstore for the socket,
// which this machine may lack: the environment gives it this process's
// group instead.
func startNode(t *testing.T, socket string, args ...string) *testNode {
	t.Helper()
	g, err := user.LookupGroupId(strconv.Itoa(os.Getgid()))
	if err != nil {
		t.Fatal(err)
	}
	n := &testNode{exited: make(chan struct{}), log: new(bytes.Buffer), client: node.NewClient(socket)}
	n.cmd = exec.Command(binary, args...)
	n.cmd.Env = append(os.Environ(), "P2PSTORE_DAEMON_SOCKET_GROUP="+g.Name)
	n.cmd.Stdout, n.cmd.Stderr = n.log, n.log
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		n.err = n.cmd.Wait()
		close(n.exited)
	}()
	t.Cleanup(func() {
		n.cmd.Process.Kill()
		<-n.exited
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		s, err := n.client.Status(context.Background())
		if err == nil {
			n.status = s
			// The files' daemon.socket_group makes the socket 0660 in it.
			fi, err := os.Stat(socket)
			if err != nil {
				t.Fatal(err)
			}
			if st := fi.Sys().(*syscall.Stat_t); fi.Mode().Perm() != 0o660 || int(st.Gid) != os.Getgid() {
				t.Fatalf("socket %s is %v, group %d; want 0660 in group %d", socket, fi.Mode().Perm(), st.Gid, os.Getgid())
			}
			return n
		}
		select {
		case <-n.exited:
			t.Fatalf("p2pstore %s: %v\n%s", strings.Join(args, " "), n.err, n.log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("p2pstore %s: the node did not answer: %v\n%s", strings.Join(args, " "), err, n.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends the node with SIGTERM, as the service manager would.
func (n *testNode) stop(t *testing.T) {
	t.Helper()
	n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("the node did not end within 30 s of SIGTERM\n%s", n.log)
	}
	if n.err != nil {
		t.Fatalf("the node exited with %v on SIGTERM\n%s", n.err, n.log)
	}
}

// storeDir reads the store directory the node's binary cache announces.
func (n *testNode) storeDir(t *testing.T) string {
	t.Helper()
	resp, err := http.Get("http://" + n.status.HTTPListen + "/nix-cache-info")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "StoreDir: "); ok {
			return v
		}
	}
	t.Fatalf("nix-cache-info has no StoreDir:\n%s", b)
	return ""
}

const unitFile = "systemd/p2pstore.service"

// TestSystemdUnitVerifies checks the unit with systemd-analyze verify, its
// binary path pointed at a build of p2pstore (verify wants it there).
// Any complaint fails the test: verify exits 0 on most of them.
func TestSystemdUnitVerifies(t *testing.T) {
	analyze := tool(t, "systemd-analyze", "P2PSTORE_REQUIRE_SYSTEMD", "apt-get install systemd")
	unit, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	verify := func(text string) string {
		dir := t.TempDir()
		f := filepath.Join(dir, "p2pstore.service")
		if err := os.WriteFile(f, []byte(strings.ReplaceAll(text, "/usr/bin/p2pstore", binary)), 0o644); err != nil {
			t.Fatal(err)
		}
		stdout, stderr, err := run(exec.Command(analyze, "verify", f))
		if err != nil {
			return fmt.Sprintf("%v: %s%s", err, stdout, stderr)
		}
		return stdout + stderr
	}
	if complaint := verify(string(unit)); complaint != "" {
		t.Fatalf("systemd-analyze verify %s:\n%s", unitFile, complaint)
	}
	// The check itself: a misspelt setting must be reported.
	if verify(strings.Replace(string(unit), "ProtectSystem=", "ProtectSytem=", 1)) == "" {
		t.Fatal("systemd-analyze verify did not report a misspelt key: the check checks nothing")
	}
}

// TestSystemdUnitRunsNode runs the unit's own command lines, with the
// directories systemd would give it under a temporary root, and the sample
// config file: the key is made once, and the node runs with it, its data
// dir and its socket where the unit says.
func TestSystemdUnitRunsNode(t *testing.T) {
	unit, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	stateDir, runtimeDir := filepath.Join(root, "var/lib"), filepath.Join(root, "run")
	// systemd's specifiers, and the binary where the unit expects it.
	specifiers := strings.NewReplacer("%S", stateDir, "%t", runtimeDir, "%H", "testhost", "/usr/bin/p2pstore", binary)
	expand := func(words []string) []string {
		out := make([]string, len(words))
		for i, w := range words {
			out[i] = specifiers.Replace(w)
		}
		return out
	}
	pre, start := unitCommands(t, string(unit))
	pre, start = expand(pre), expand(start)
	// What StateDirectory= and RuntimeDirectory= make.
	for _, d := range []string{filepath.Join(stateDir, "p2pstore"), filepath.Join(runtimeDir, "p2pstore")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if len(pre) == 0 {
		t.Fatal("the unit has no ExecStartPre= making the signing key")
	}
	publicKey, stderr, err := run(exec.Command(pre[0], pre[1:]...))
	if err != nil {
		t.Fatalf("ExecStartPre %q: %v\n%s", pre, err, stderr)
	}
	publicKey = strings.TrimSpace(publicKey)
	if !strings.HasPrefix(publicKey, "testhost-1:") {
		t.Fatalf("ExecStartPre printed %q, want the public key of testhost-1", publicKey)
	}
	// A restart keeps the key.
	if out, stderr, err := run(exec.Command(pre[0], pre[1:]...)); err != nil || out != "" {
		t.Fatalf("ExecStartPre again: %v, printed %q\n%s", err, out, stderr)
	}
	if start[0] != binary || start[1] != "serve" {
		t.Fatalf("ExecStart %q does not run p2pstore serve", start)
	}
	args := append(append(start[1:], "--config", "systemd/config.yaml"), nodeOverrides("127.0.0.61")...)
	socket := filepath.Join(runtimeDir, "p2pstore", "daemon.sock")
	n := startNode(t, socket, args...)
	if n.status.PublicKey != publicKey {
		t.Errorf("the node signs with %q, want the key ExecStartPre made (%s)", n.status.PublicKey, publicKey)
	}
	if n.status.DaemonSocket != socket {
		t.Errorf("socket %s, want %s", n.status.DaemonSocket, socket)
	}
	if _, err := os.Stat(filepath.Join(stateDir, "p2pstore", "paths.db")); err != nil {
		t.Errorf("the node keeps no store in the unit's state directory: %v", err)
	}
	n.stop(t)
}

// nixEval evaluates nixos/check.nix for one configuration (a Nix
// expression; @PKG@ stands for a package).
func nixEval(t *testing.T, configuration string) (map[string]any, error) {
	t.Helper()
	const pkg = `{ outPath = "/nix/store/11111111111111111111111111111111-p2pstore"; }`
	cmd := nixtest.Command("nix-instantiate", "--eval", "--strict", "--json", "nixos/check.nix",
		"--arg", "configuration", strings.ReplaceAll(configuration, "@PKG@", pkg))
	stdout, stderr, err := run(cmd)
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, stderr)
	}
	var out map[string]any
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatalf("check.nix printed %q: %v", stdout, err)
	}
	return out, nil
}

func TestNixOSModuleParses(t *testing.T) {
	nixtest.Require(t)
	for _, f := range []string{"nixos/module.nix", "nixos/check.nix"} {
		if _, stderr, err := run(nixtest.Command("nix-instantiate", "--parse", f)); err != nil {
			t.Errorf("nix-instantiate --parse %s: %v\n%s", f, err, stderr)
		}
	}
	// The check itself: a file that does not parse is refused.
	broken := filepath.Join(t.TempDir(), "module.nix")
	module, err := os.ReadFile("nixos/module.nix")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(broken, module[:bytes.LastIndexByte(module, '}')], 0o644)
	if _, _, err := run(nixtest.Command("nix-instantiate", "--parse", broken)); err == nil {
		t.Error("nix-instantiate --parse took a module with a brace missing")
	}
}

// TestNixOSModule evaluates the module for sample configurations and
// checks what it makes: the config file's text, the service's command
// lines and hardening, the user, the firewall ports and the substituter.
func TestNixOSModule(t *testing.T) {
	nixtest.Require(t)
	const store0 = "/nix/store/00000000000000000000000000000000-"
	const pkg = "/nix/store/11111111111111111111111111111111-p2pstore"

	t.Run("full", func(t *testing.T) {
		out, err := nixEval(t, `{ services.p2pstore = {
			enable = true; package = @PKG@;
			openFirewall = true; openFirewallHTTP = true;
			substituter = { enable = true; publicKey = "node-1:AAAA"; };
			signKeyFile = "/run/secrets/p2pstore.key";
			settings = {
				http.listen = "0.0.0.0:7420";
				p2p.listen = [ "/ip4/0.0.0.0/tcp/7421" "/ip4/0.0.0.0/udp/7422/quic-v1" "/ip6/::/tcp/7423" ];
				p2p.bootstrap = [ "/ip4/203.0.113.7/tcp/7421/p2p/12D3KooWPeer" ];
				p2p.max_upload_rate = "10M";
				trust.public_keys = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
				upstream.substituters = [ "https://cache.nixos.org" ];
				upstream.public_keys = [ "up-1:BBBB" ];
				storage.max_bytes = "50G";
				log.level = "debug";
			};
		}; }`)
		if err != nil {
			t.Fatal(err)
		}
		wantFile := `{"daemon":{"socket":"/run/p2pstore/daemon.sock","socket_group":"p2pstore"},` +
			`"http":{"listen":"0.0.0.0:7420"},"local":{"share":true},"log":{"level":"debug"},` +
			`"p2p":{"bootstrap":["/ip4/203.0.113.7/tcp/7421/p2p/12D3KooWPeer"],` +
			`"listen":["/ip4/0.0.0.0/tcp/7421","/ip4/0.0.0.0/udp/7422/quic-v1","/ip6/::/tcp/7423"],"max_upload_rate":"10M","mdns":true},` +
			`"storage":{"max_bytes":"50G"},` +
			`"trust":{"public_keys":["cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="]},` +
			`"upstream":{"public_keys":["up-1:BBBB"],"substituters":["https://cache.nixos.org"]}}`
		expect(t, out, "configFile", wantFile)
		expect(t, out, "execStart", pkg+"/bin/p2pstore serve --config="+store0+"p2pstore-config.yaml"+
			" --data-dir=/var/lib/p2pstore --daemon-socket=/run/p2pstore/daemon.sock --sign-key-file=/run/secrets/p2pstore.key")
		expect(t, out, "execStartPre", []any{}) // a key of its own: none made
		expect(t, out, "firewall", map[string]any{
			"allowedTCPPorts": []any{7421.0, 7423.0, 7420.0},
			"allowedUDPPorts": []any{7422.0, 5353.0},
		})
		expect(t, out, "nixSettings", map[string]any{
			"substituters":        []any{"http://127.0.0.1:7420"},
			"trusted-public-keys": []any{"node-1:AAAA", "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=", "up-1:BBBB"},
		})
	})

	t.Run("minimal", func(t *testing.T) {
		out, err := nixEval(t, `{ services.p2pstore = { enable = true; package = @PKG@; }; }`)
		if err != nil {
			t.Fatal(err)
		}
		wantFile := `{"daemon":{"socket":"/run/p2pstore/daemon.sock","socket_group":"p2pstore"},` +
			`"http":{"listen":"127.0.0.1:7420"},"local":{"share":true},` +
			`"p2p":{"bootstrap":[],"listen":["/ip4/0.0.0.0/tcp/7421","/ip4/0.0.0.0/udp/7421/quic-v1"],"mdns":true},` +
			`"storage":{"max_bytes":0},"trust":{"public_keys":[]},"upstream":{"public_keys":[],"substituters":[]}}`
		expect(t, out, "configFile", wantFile)
		expect(t, out, "configPath", store0+"p2pstore-config.yaml")
		expect(t, out, "execStart", pkg+"/bin/p2pstore serve --config="+store0+"p2pstore-config.yaml"+
			" --data-dir=/var/lib/p2pstore --daemon-socket=/run/p2pstore/daemon.sock --sign-key-file=/var/lib/p2pstore/signing.key")
		expect(t, out, "execStartPre", []any{store0 + "p2pstore-keygen %H-1"})
		expect(t, out, "firewall", map[string]any{})
		expect(t, out, "nixSettings", map[string]any{})
		expect(t, out, "users", map[string]any{
			"groups": map[string]any{"p2pstore": map[string]any{}},
			"users": map[string]any{"p2pstore": map[string]any{
				"isSystemUser": true, "group": "p2pstore", "home": "/var/lib/p2pstore", "description": "p2pstore node"}},
		})
		sc, _ := out["serviceConfig"].(map[string]any)
		for k, v := range map[string]any{
			"User": "p2pstore", "StateDirectory": "p2pstore", "RuntimeDirectory": "p2pstore", "RuntimeDirectoryMode": "0750",
			"ProtectSystem": "strict", "ProtectHome": true, "PrivateTmp": true, "NoNewPrivileges": true,
			"CapabilityBoundingSet": "", "SystemCallFilter": []any{"@system-service"},
			"RestrictAddressFamilies": []any{"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"},
		} {
			if !reflect.DeepEqual(sc[k], v) {
				t.Errorf("serviceConfig.%s = %v, want %v", k, sc[k], v)
			}
		}
	})

	t.Run("disabled", func(t *testing.T) {
		out, err := nixEval(t, `{ services.p2pstore.package = @PKG@; }`)
		if err != nil {
			t.Fatal(err)
		}
		expect(t, out, "enabled", false)
		expect(t, out, "configFile", nil)
	})

	for name, c := range map[string]struct{ configuration, want string }{
		"wrong type":      {`{ services.p2pstore = { enable = true; package = @PKG@; settings.p2p.mdns = "maybe"; }; }`, "services.p2pstore.settings.p2p.mdns' is not of type `bool'"},
		"unknown option":  {`{ services.p2pstore = { enable = true; package = @PKG@; openFirewal = true; }; }`, "services.p2pstore.openFirewal' does not exist"},
		"read-only":       {`{ services.p2pstore = { enable = true; package = @PKG@; settings.daemon.socket = "/tmp/s"; }; }`, "daemon.socket' is read-only"},
		"package missing": {`{ services.p2pstore.enable = true; }`, "services.p2pstore.package' is used but not defined"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := nixEval(t, c.configuration)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v, want an error with %q", err, c.want)
			}
		})
	}
}

func expect(t *testing.T, out map[string]any, key string, want any) {
	t.Helper()
	if !reflect.DeepEqual(out[key], want) {
		got, _ := json.Marshal(out[key])
		w, _ := json.Marshal(want)
		t.Errorf("%s:\n got %s\nwant %s", key, got, w)
	}
}

// TestNixOSModuleRunsNode runs the module's ExecStart, with its paths under
// a temporary root and its config file as the module renders it (JSON,
// read as YAML): the node takes the settings from it.
func TestNixOSModuleRunsNode(t *testing.T) {
	nixtest.Require(t)
	out, err := nixEval(t, `{ services.p2pstore = { enable = true; package = @PKG@;
		settings = { storage.max_bytes = "50G"; store_dir = "/nix/store"; }; }; }`)
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	configFile := filepath.Join(root, "config.yaml")
	if err := os.WriteFile(configFile, []byte(out["configFile"].(string)), 0o644); err != nil {
		t.Fatal(err)
	}
	start := strings.Fields(strings.NewReplacer(
		"/nix/store/11111111111111111111111111111111-p2pstore/bin/p2pstore", binary,
		out["configPath"].(string), configFile,
		"/var/lib/p2pstore", filepath.Join(root, "state"),
		"/run/p2pstore", filepath.Join(root, "run"),
	).Replace(out["execStart"].(string)))
	// What StateDirectory= and the keygen ExecStartPre= make.
	if err := os.MkdirAll(filepath.Join(root, "state"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := exec.Command(binary, "keygen", "--name", "testhost-1", "--out", filepath.Join(root, "state", "signing.key")).Output(); err != nil {
		t.Fatal(err)
	}
	n := startNode(t, filepath.Join(root, "run", "daemon.sock"), append(start[1:], nodeOverrides("127.0.0.62")...)...)
	if n.status.MaxBytes != 50<<30 {
		t.Errorf("the node's disk limit is %d, want the config file's 50G", n.status.MaxBytes)
	}
	if !strings.HasPrefix(n.status.PublicKey, "testhost-1:") {
		t.Errorf("the node signs with %q, want the key in its state directory", n.status.PublicKey)
	}
	n.stop(t)
}

// guixYAML runs guix/check.scm: the Guix file reads, exports what it
// defines, and writes the config file of the configuration given.
func guixYAML(t *testing.T, file, configuration string) (string, error) {
	t.Helper()
	guile := tool(t, "guile", "", "apt-get install guile-3.0")
	stdout, stderr, err := run(exec.Command(guile, "--no-auto-compile", "guix/check.scm", file, configuration))
	if err != nil {
		return "", fmt.Errorf("%v: %s", err, stderr)
	}
	return stdout, nil
}

// TestGuixService checks the Guix service file with plain Guile and runs
// the node with the config file it writes.
func TestGuixService(t *testing.T) {
	root := t.TempDir()
	socket, guixSocket := filepath.Join(root, "daemon.sock"), filepath.Join(root, "guix-daemon.sock")
	yaml, err := guixYAML(t, "guix/p2pstore.scm", fmt.Sprintf(`((socket . %q) (guix-daemon-socket . %q) (max-bytes . "1G")
		(extra-settings . (("p2p.max_upload_rate" . "10M"))))`, socket, guixSocket))
	if err != nil {
		t.Fatal(err)
	}
	want := `daemon:
  socket: "` + socket + `"
  socket_group: "p2pstore"
http:
  listen: "127.0.0.1:7420"
guix:
  store_dir: "/gnu/store"
  http_listen: "127.0.0.1:8080"
  daemon_socket: "` + guixSocket + `"
p2p:
  listen: ["/ip4/0.0.0.0/tcp/7421", "/ip4/0.0.0.0/udp/7421/quic-v1"]
  bootstrap: []
  mdns: true
  max_upload_rate: "10M"
trust:
  public_keys: []
upstream:
  substituters: []
  public_keys: []
storage:
  max_bytes: "1G"
local:
  share: false
`
	if yaml != want {
		t.Errorf("config file:\n%s\nwant:\n%s", yaml, want)
	}
	configFile := filepath.Join(root, "config.yaml")
	if err := os.WriteFile(configFile, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	// The shepherd service's command line, the test's addresses over it.
	n := startNode(t, socket, append([]string{"serve", "--config", configFile, "--data-dir", filepath.Join(root, "data"),
		"--guix-http-listen", "127.0.0.63:0"}, nodeOverrides("127.0.0.63")...)...)
	if n.status.MaxBytes != 1<<30 {
		t.Errorf("the node's disk limit is %d, want the config file's 1G", n.status.MaxBytes)
	}
	if got := n.storeDir(t); got != "/nix/store" {
		t.Errorf("the node's Nix listener serves store %s, want /nix/store", got)
	}
	if fi, err := os.Stat(guixSocket); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("no Guix daemon socket where the service file puts it: %v", err)
	}
	n.stop(t)

	// The check itself: a form cut short, or an export that is not
	// defined, is refused.
	src, err := os.ReadFile("guix/p2pstore.scm")
	if err != nil {
		t.Fatal(err)
	}
	for name, broken := range map[string][]byte{
		"a paren missing":  src[:bytes.LastIndexByte(src, ')')],
		"export undefined": bytes.Replace(src, []byte("p2pstore-service-type))"), []byte("p2pstore-service-type\n            p2pstore-nothing))"), 1),
		"writer misspelt":  bytes.Replace(src, []byte("(define (yaml-value value)"), []byte("(define (yaml-valu value)"), 1),
	} {
		f := filepath.Join(root, "broken.scm")
		os.WriteFile(f, broken, 0o644)
		if _, err := guixYAML(t, f, "()"); err == nil {
			t.Errorf("guix/check.scm took p2pstore.scm with %s", name)
		}
	}
}
