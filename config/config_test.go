package config

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/spf13/pflag"
)

// isolate keeps the machine's config files and P2PSTORE_ variables out
// of a test: no system file, an empty XDG_CONFIG_HOME, every variable
// empty (which viper, and Load, take as unset).
func isolate(t *testing.T) {
	t.Helper()
	old := SystemFile
	SystemFile = filepath.Join(t.TempDir(), "etc", "config.yaml")
	t.Cleanup(func() { SystemFile = old })
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	t.Setenv(ConfigEnv, "")
	for _, s := range settings {
		t.Setenv(EnvVar(s.key), "")
	}
}

func load(t *testing.T, args ...string) (*Config, error) {
	t.Helper()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return Load(fs)
}

func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// yamlKey is a key with its value as YAML: "a.b" nests b under a. The
// value is JSON, which YAML reads.
func yamlKey(key string, value any) string {
	b, _ := json.Marshal(value)
	section, leaf, nested := strings.Cut(key, ".")
	if !nested {
		return fmt.Sprintf("%s: %s\n", key, b)
	}
	return fmt.Sprintf("%s:\n  %s: %s\n", section, leaf, b)
}

func peerAddr(t *testing.T, ip string) string {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return "/ip4/" + ip + "/tcp/7421/p2p/" + id.String()
}

// sample is a value for a setting from each source, each different from
// the one before and from the default, and what Settings reports for it.
type sample struct {
	file, env, flag any    // as written: a list is []string (the env joins it with commas)
	want            [3]any // effective value from file, env, flag
	extra           []string
}

// samples gives every setting a value from each source.
func samples(t *testing.T) map[string]sample {
	same := func(f, e, g string) sample { return sample{file: f, env: e, flag: g, want: [3]any{f, e, g}} }
	list := func(f, e, g []string) sample { return sample{file: f, env: e, flag: g, want: [3]any{f, e, g}} }
	boolean := func(first bool) sample {
		return sample{file: first, env: !first, flag: first, want: [3]any{first, !first, first}}
	}
	b1, b2, b3 := peerAddr(t, "192.0.2.1"), peerAddr(t, "192.0.2.2"), peerAddr(t, "192.0.2.3")
	return map[string]sample{
		"data_dir":                same("/f", "/e", "/g"),
		"store_dir":               same("/f/store", "/e/store", "/g/store"),
		"http.listen":             same("127.0.0.1:1", "[::1]:2", ":3"),
		"daemon.socket":           same("/f.sock", "/e.sock", "/g.sock"),
		"daemon.socket_group":     same("adm", "users", "100"),
		"p2p.listen":              list([]string{"/ip4/127.0.0.1/tcp/1"}, []string{"/ip4/127.0.0.2/tcp/2", "/ip4/127.0.0.2/udp/2/quic-v1"}, []string{"/ip4/127.0.0.3/tcp/3"}),
		"p2p.bootstrap":           list([]string{b1, b2}, []string{b2}, []string{b3}),
		"p2p.mdns":                boolean(false),
		"p2p.identity_file":       same("/f.key", "/e.key", "/g.key"),
		"p2p.max_upload_rate":     {file: "1k", env: "2M", flag: "3G", want: [3]any{int64(1 << 10), int64(2 << 20), int64(3 << 30)}},
		"trust.public_keys":       list([]string{"f-1:AAAA"}, []string{"e-1:BBBB", "e-2:CCCC"}, []string{"g-1:DDDD"}),
		"sign.key_file":           same("/f.sec", "/e.sec", "/g.sec"),
		"sign.imports":            {file: true, env: false, flag: true, want: [3]any{true, false, true}, extra: []string{"--sign-key-file", "/k"}},
		"upstream.substituters":   list([]string{"https://f.example"}, []string{"https://e.example"}, []string{"http://g.example"}),
		"upstream.public_keys":    list([]string{"f-1:AAAA"}, []string{"e-1:BBBB"}, []string{"g-1:CCCC"}),
		"storage.max_bytes":       {file: 4096, env: "5G", flag: "6T", want: [3]any{int64(4096), int64(5 << 30), int64(6 << 40)}},
		"storage.nar_cache_bytes": {file: 0, env: "5G", flag: "6M", want: [3]any{int64(0), int64(5 << 30), int64(6 << 20)}},
		"storage.scrub_interval":  {file: "1h", env: "0", flag: "90m", want: [3]any{"1h0m0s", "0s", "1h30m0s"}},
		"mount.dir":               same("/f/m", "/e/m", "/g/m"),
		"local.share":             boolean(false),
		"local.root":              same("/f/r", "/e/r", "/g/r"),
		"local.poll_interval":     {file: "1s", env: "2m", flag: "3h", want: [3]any{"1s", "2m0s", "3h0m0s"}},
		"local.copy_ahead":        boolean(false),
		"log.level":               same("debug", "warn", "error"),
		"log.format":              same("json", "text", "json"),
		"guix.http_listen":        same("127.0.0.1:11", "[::1]:12", ":13"),
		"guix.daemon_socket":      same("/f/guix.sock", "/e/guix.sock", "/g/guix.sock"),
		"guix.store_dir":          same("/f/gnu", "/e/gnu", "/g/gnu"),
		"guix.sign_key_file":      same("/f/guix.sec", "/e/guix.sec", "/g/guix.sec"),
		"guix.public_keys":        list([]string{"/f/a.pub"}, []string{"/e/b.pub", "/e/c.pub"}, []string{"/g/d.pub"}),
		"guix.substituters":       list([]string{"https://f.example"}, []string{"https://e.example"}, []string{"http://g.example"}),
	}
}

func effective(c *Config, key string) Setting {
	for _, s := range c.Settings() {
		if s.Key == key {
			return s
		}
	}
	return Setting{}
}

// TestPrecedence: for every setting, a value in the file wins over the
// default, the environment over the file, a flag over the environment;
// Settings says which source each value came from.
func TestPrecedence(t *testing.T) {
	all := samples(t)
	for _, s := range settings {
		t.Run(s.key, func(t *testing.T) {
			isolate(t)
			sm, ok := all[s.key]
			if !ok {
				t.Fatalf("no sample values for %s", s.key)
			}
			base := append([]string{"--data-dir", "/d"}, sm.extra...)
			if s.key == "data_dir" {
				base = sm.extra
			}
			c, err := load(t, base...)
			if err != nil {
				t.Fatal(err)
			}
			if got := effective(c, s.key); got.Source != "default" && s.key != "data_dir" {
				t.Errorf("no setting given: source %q", got.Source)
			}
			file := writeFile(t, "p2pstore.yaml", yamlKey(s.key, sm.file))
			var flagArgs []string
			switch v := sm.flag.(type) {
			case []string:
				for _, x := range v {
					flagArgs = append(flagArgs, "--"+s.flag, x)
				}
			default:
				flagArgs = []string{fmt.Sprintf("--%s=%v", s.flag, v)}
			}
			envValue := fmt.Sprint(sm.env)
			if l, ok := sm.env.([]string); ok {
				envValue = strings.Join(l, ",")
			}
			steps := []struct {
				source string
				env    bool
				flags  []string
			}{
				{"file " + file, false, nil},
				{"env " + EnvVar(s.key), true, nil},
				{"flag --" + s.flag, true, flagArgs},
			}
			for i, st := range steps {
				if st.env {
					t.Setenv(EnvVar(s.key), envValue)
				}
				c, err := load(t, append(append([]string{"--config", file}, base...), st.flags...)...)
				if err != nil {
					t.Fatalf("%s: %v", st.source, err)
				}
				got := effective(c, s.key)
				if !reflect.DeepEqual(got.Value, sm.want[i]) || got.Source != st.source {
					t.Errorf("from %s: %#v (%s), want %#v", st.source, got.Value, got.Source, sm.want[i])
				}
			}
		})
	}
}

// TestEveryFieldHasASetting: each Config field with a key is a setting
// Load reads and Settings reports, and each setting is a field.
func TestEveryFieldHasASetting(t *testing.T) {
	isolate(t)
	fields := map[string]bool{}
	rt := reflect.TypeOf(Config{})
	for i := 0; i < rt.NumField(); i++ {
		if k := rt.Field(i).Tag.Get("key"); k != "" {
			fields[k] = true
			if lookupSetting(k) == nil {
				t.Errorf("field %s: key %s is no setting", rt.Field(i).Name, k)
			}
		}
	}
	c, err := load(t, "--data-dir", "/d")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range c.Settings() {
		if !fields[s.Key] {
			t.Errorf("setting %s has no field", s.Key)
		}
		if s.Value == nil {
			t.Errorf("setting %s has no value", s.Key)
		}
	}
}

func TestDefaults(t *testing.T) {
	isolate(t)
	c, err := load(t, "--data-dir", "/d")
	if err != nil {
		t.Fatal(err)
	}
	if c.StoreDir != "/nix/store" || c.HTTPListen != "127.0.0.1:7420" || !c.MDNS || len(c.P2PListen) != 2 || c.MaxUploadRate != 0 ||
		c.DaemonSocketGroup != "" || c.LogLevel != slog.LevelInfo || c.LogFormat != "text" || c.LocalPoll != 30*time.Second ||
		!c.ShareLocal || !c.LocalCopyAhead || c.SignImports {
		t.Errorf("defaults: %+v", c)
	}
	if c.DaemonSocket != "/d/daemon.sock" || c.GuixDaemonSocket != "/d/guix-daemon.sock" || c.IdentityFile != "/d/identity.key" {
		t.Errorf("derived paths %q %q %q", c.DaemonSocket, c.GuixDaemonSocket, c.IdentityFile)
	}
	if c.File != "" || len(c.Searched) != 2 {
		t.Errorf("file %q, searched %q", c.File, c.Searched)
	}
}

// TestSearchPath: --config, else P2PSTORE_CONFIG, else the first of the
// system file and $XDG_CONFIG_HOME/p2pstore/config.yaml (~/.config when
// unset) that exists.
func TestSearchPath(t *testing.T) {
	isolate(t)
	xdg := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", xdg)
	os.MkdirAll(filepath.Join(xdg, "p2pstore"), 0o755)
	userFile := filepath.Join(xdg, "p2pstore", "config.yaml")
	os.WriteFile(userFile, []byte("data_dir: /from/xdg\n"), 0o644)
	dataDir := func(args ...string) string {
		t.Helper()
		c, err := load(t, args...)
		if err != nil {
			t.Fatal(err)
		}
		return c.DataDir + " " + effective(c, "data_dir").Source
	}
	if got := dataDir(); got != "/from/xdg file "+userFile {
		t.Errorf("XDG_CONFIG_HOME: %s", got)
	}
	os.MkdirAll(filepath.Dir(SystemFile), 0o755)
	os.WriteFile(SystemFile, []byte("data_dir: /from/system\n"), 0o644)
	if got := dataDir(); got != "/from/system file "+SystemFile {
		t.Errorf("system file: %s", got)
	}
	os.Remove(SystemFile)
	envFile := writeFile(t, "env.toml", "data_dir = \"/from/env-file\"\n")
	t.Setenv(ConfigEnv, envFile)
	if got := dataDir(); got != "/from/env-file file "+envFile {
		t.Errorf("P2PSTORE_CONFIG: %s", got)
	}
	flagFile := writeFile(t, "flag.yml", "data_dir: /from/flag-file\n")
	if got := dataDir("--config", flagFile); got != "/from/flag-file file "+flagFile {
		t.Errorf("--config over P2PSTORE_CONFIG: %s", got)
	}
	t.Setenv(ConfigEnv, "")
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("XDG_CONFIG_HOME", "")
	homeFile := filepath.Join(home, ".config", "p2pstore", "config.yaml")
	os.MkdirAll(filepath.Dir(homeFile), 0o755)
	os.WriteFile(homeFile, []byte("data_dir: /from/home\n"), 0o644)
	if got := dataDir(); got != "/from/home file "+homeFile {
		t.Errorf("~/.config: %s", got)
	}
}

// TestRefused: every value Load cannot use is refused with one line that
// names the key (and says where the value came from).
func TestRefused(t *testing.T) {
	long := "/" + strings.Repeat("d", 100)
	for _, tc := range []struct {
		args []string
		env  map[string]string
		file string // YAML
		want []string
	}{
		{args: []string{"--store-dir", "relative"}, want: []string{"store_dir", "flag --store-dir"}},
		{args: []string{"--http-listen", "nonsense"}, want: []string{"http.listen", "HOST:PORT"}},
		{env: map[string]string{"P2PSTORE_HTTP_LISTEN": "127.0.0.1:99999"}, want: []string{"http.listen", "env P2PSTORE_HTTP_LISTEN", "65535"}},
		{file: "http:\n  listen: localhost\n", want: []string{"http.listen", "file "}},
		{args: []string{"--p2p-listen", "/ip4/1.2.3.4/tcp"}, want: []string{"p2p.listen", "/ip4/1.2.3.4/tcp"}},
		{env: map[string]string{"P2PSTORE_P2P_LISTEN": "tcp://0.0.0.0:7421"}, want: []string{"p2p.listen", "env P2PSTORE_P2P_LISTEN"}},
		{args: []string{"--bootstrap", "/ip4/192.0.2.1/tcp/7421"}, want: []string{"p2p.bootstrap", "/p2p/<peer id>"}},
		{file: "p2p:\n  bootstrap: [/ip4/1.2.3.4/tcp/1/p2p/x]\n", want: []string{"p2p.bootstrap", "file "}},
		{args: []string{"--max-bytes", "12Q"}, want: []string{"storage.max_bytes", "12Q"}},
		{env: map[string]string{"P2PSTORE_STORAGE_MAX_BYTES": "-1G"}, want: []string{"storage.max_bytes", "env P2PSTORE_STORAGE_MAX_BYTES"}},
		{file: "storage:\n  max_bytes: lots\n", want: []string{"storage.max_bytes", "file "}},
		{args: []string{"--max-upload-rate", "10X"}, want: []string{"p2p.max_upload_rate"}},
		{args: []string{"--max-upload-rate", "99999999T"}, want: []string{"p2p.max_upload_rate", "too large"}},
		{args: []string{"--local-poll-interval", "soon"}, want: []string{"local.poll_interval", "duration"}},
		{file: "local:\n  poll_interval: 30\n", want: []string{"local.poll_interval", "file "}},
		{env: map[string]string{"P2PSTORE_LOCAL_POLL_INTERVAL": "-5s"}, want: []string{"local.poll_interval"}},
		{env: map[string]string{"P2PSTORE_P2P_MDNS": "maybe"}, want: []string{"p2p.mdns", `"maybe"`, "env P2PSTORE_P2P_MDNS", "true or false"}},
		{file: "local:\n  share: perhaps\n", want: []string{"local.share", "file "}},
		{env: map[string]string{"P2PSTORE_SIGN_IMPORTS": "2"}, want: []string{"sign.imports"}},
		{file: "local:\n  copy_ahead: 7\n", want: []string{"local.copy_ahead"}},
		{args: []string{"--log-level", "verbose"}, want: []string{"log.level", "debug, info, warn, error"}},
		{env: map[string]string{"P2PSTORE_LOG_FORMAT": "xml"}, want: []string{"log.format", "text, json"}},
		{file: "http:\n  listn: 127.0.0.1:1\n", want: []string{`unknown key "http.listn"`, "did you mean http.listen?"}},
		{file: "max-bytes: 1G\n", want: []string{`unknown key "max-bytes"`, "storage.max_bytes"}},
		{file: "mdns: false\n", want: []string{`unknown key "mdns"`, "p2p.mdns"}},
		{file: "listen: 127.0.0.1:1\n", want: []string{`unknown key "listen"`, "http.listen or p2p.listen"}},
		{file: "colour: blue\n", want: []string{`unknown key "colour"`}},
		{file: "p2p:\n  listen:\n    tcp: 7421\n", want: []string{`unknown key "p2p.listen.tcp"`}},
		{file: "http: [\n", want: []string{"config file"}},
		{args: []string{"--daemon-socket", long + "/daemon.sock"}, want: []string{"daemon.socket", "107"}},
		{args: []string{"--data-dir", long}, want: []string{"daemon.socket", "107", "<data_dir>/daemon.sock"}},
		{args: []string{"--guix-daemon-socket", long + "/g.sock"}, want: []string{"guix.daemon_socket", "107", "<data_dir>/guix-daemon.sock"}},
		{args: []string{"--daemon-socket", "/s.sock", "--guix-daemon-socket", "/s.sock"}, want: []string{"guix.daemon_socket", "a socket of its own"}},
		{args: []string{"--sign-imports"}, want: []string{"sign.imports", "sign.key_file"}},
		{args: []string{"--local-root", "nix"}, want: []string{"local.root"}},
		{args: []string{"--guix-store-dir", "gnu/store"}, want: []string{"guix.store_dir", "flag --guix-store-dir"}},
		{args: []string{"--store-dir", "/gnu/store"}, want: []string{"guix.store_dir", "store_dir"}},
		{env: map[string]string{"P2PSTORE_GUIX_HTTP_LISTEN": "localhost"}, want: []string{"guix.http_listen", "env P2PSTORE_GUIX_HTTP_LISTEN", "HOST:PORT"}},
		{args: []string{"--http-listen", "127.0.0.1:5", "--guix-http-listen", "127.0.0.1:5"}, want: []string{"guix.http_listen", "http.listen"}},
		{file: "guix:\n  public_keys: ['(public-key (ecc (curve Ed25519) (q #00#)))']\n", want: []string{"guix.public_keys", "file "}},
		{args: []string{"--config", "/nonexistent/file.yaml"}, want: []string{"config file /nonexistent/file.yaml", "no such file"}},
		{env: map[string]string{ConfigEnv: "/nonexistent/env.yaml"}, want: []string{"config file /nonexistent/env.yaml"}},
		{args: []string{"--config", "/etc/hostname"}, want: []string{"config file /etc/hostname", ".yaml"}},
	} {
		name := strings.Join(tc.args, " ") + fmt.Sprint(tc.env) + tc.file
		t.Run(name, func(t *testing.T) {
			isolate(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			args := append([]string{"--data-dir", "/d"}, tc.args...)
			if tc.file != "" {
				args = append(args, "--config", writeFile(t, "p2pstore.yaml", tc.file))
			}
			_, err := load(t, args...)
			if err == nil {
				t.Fatal("accepted")
			}
			msg := err.Error()
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q lacks %q", msg, w)
				}
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error of more than one line: %q", msg)
			}
		})
	}
}

// TestAccepted: spellings a user may write that Load takes.
func TestAccepted(t *testing.T) {
	isolate(t)
	file := writeFile(t, "p2pstore.toml", "[p2p]\nmdns = \"no\"\nlisten = \"/ip4/127.0.0.1/tcp/1 /ip4/127.0.0.1/udp/1/quic-v1\"\n[storage]\nmax_bytes = 1073741824\n[log]\nlevel = \"WARN\"\n")
	t.Setenv("P2PSTORE_LOCAL_SHARE", "off")
	c, err := load(t, "--data-dir", "/d", "--config", file, "--http-listen", "")
	if err != nil {
		t.Fatal(err)
	}
	if c.MDNS || c.ShareLocal || len(c.P2PListen) != 2 || c.MaxBytes != 1<<30 || c.LogLevel != slog.LevelWarn || c.HTTPListen != "" {
		t.Errorf("%+v", c)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "100": 100, "1k": 1024, "10M": 10 << 20, "2G": 2 << 30, "1.5GiB": 3 << 29, "3MB": 3 << 20, "1T": 1 << 40, "": 0} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("%q: %d, %v", in, got, err)
		}
	}
	for _, in := range []string{"-1", "NaN", "Inf", "1e300", "k", "1Q", "ten"} {
		if n, err := ParseSize(in); err == nil {
			t.Errorf("%q: accepted as %d", in, n)
		}
	}
}

// TestSignImports: the node signs (and so shares) what is imported only
// when told to, by flag, environment or file; it needs a key for that.
func TestSignImports(t *testing.T) {
	isolate(t)
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
	file := writeFile(t, "p2pstore.toml", "[sign]\nkey_file = \"/k\"\nimports = true\n")
	if c, err = load(t, "--data-dir", "/d", "--config", file); err != nil || !c.SignImports || c.SignKeyFile != "/k" {
		t.Errorf("sign.imports in a file: %v, %v", c, err)
	}
	if _, err := load(t, "--data-dir", "/d", "--sign-imports"); err == nil || !strings.Contains(err.Error(), "sign.key_file") {
		t.Errorf("sign.imports without a key: %v", err)
	}
}

// TestNARCacheDefault: unset, the NAR cache gets 2 GiB, or a quarter of
// storage.max_bytes when that is less; 0 turns it off.
func TestNARCacheDefault(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want int64
	}{
		{nil, 2 << 30},
		{[]string{"--max-bytes", "4G"}, 1 << 30},
		{[]string{"--max-bytes", "100G"}, 2 << 30},
		{[]string{"--max-bytes", "100G", "--nar-cache-bytes", "10G"}, 10 << 30},
		{[]string{"--nar-cache-bytes", "0"}, 0},
	} {
		isolate(t)
		c, err := load(t, tc.args...)
		if err != nil {
			t.Fatal(err)
		}
		if c.NARCacheBytes != tc.want {
			t.Errorf("%v: nar cache %d, want %d", tc.args, c.NARCacheBytes, tc.want)
		}
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
