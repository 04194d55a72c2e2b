// Package config holds the node's settings: defaults, a config file (YAML
// or TOML), the environment (P2PSTORE_ + the key in upper case, dots as
// underscores) and flags, in rising order of precedence. Load reads them
// once, through viper, validates them and returns a Config that says where
// each value came from; nothing else reads settings.
//
// The config file is --config, else $P2PSTORE_CONFIG, else the first of
// /etc/p2pstore/config.yaml and $XDG_CONFIG_HOME/p2pstore/config.yaml
// (~/.config when unset) that exists: the service's file then serves the
// client commands run on the same machine without repeating --data-dir.
//
// Load refuses, with one line naming the key and where its value came
// from, whatever it cannot use: a malformed address, size, duration or
// boolean (viper would read "maybe" as false), an unknown key in the file
// (with the nearest known key), a socket path over the unix limit. Checks
// that only matter to a running node (key files readable, the socket's
// group known, the p2p ports free) are the node's, at start, so that a
// user who may not read the node's key can still run `p2pstore status`.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// Config is the validated settings. The key tag of a field names its
// setting.
type Config struct {
	DataDir            string   `key:"data_dir"`
	StoreDir           string   `key:"store_dir"`
	HTTPListen         string   `key:"http.listen"` // "" for no binary cache
	DaemonSocket       string   `key:"daemon.socket"`
	DaemonSocketGroup  string   `key:"daemon.socket_group"` // "" for a 0600 socket
	P2PListen          []string `key:"p2p.listen"`
	Bootstrap          []string `key:"p2p.bootstrap"`
	MDNS               bool     `key:"p2p.mdns"`
	IdentityFile       string   `key:"p2p.identity_file"`
	MaxUploadRate      int64    `key:"p2p.max_upload_rate"` // bytes per second, 0 for no cap
	TrustedPublicKeys  []string `key:"trust.public_keys"`   // name:base64, parsed and checked by the node
	SignKeyFile        string   `key:"sign.key_file"`
	SignImports        bool     `key:"sign.imports"` // sign (and so share) what import and the daemon socket add
	Upstreams          []string `key:"upstream.substituters"`
	UpstreamPublicKeys []string `key:"upstream.public_keys"`
	MaxBytes           int64    `key:"storage.max_bytes"`
	NARCacheBytes      int64    `key:"storage.nar_cache_bytes"` // after its default (narCacheBytes)
	MountDir           string   `key:"mount.dir"`
	// The local Nix store the node shares (local.*): the signed paths of
	// the store under LocalRoot, watched every LocalPoll.
	ShareLocal     bool          `key:"local.share"`
	LocalRoot      string        `key:"local.root"`
	LocalPoll      time.Duration `key:"local.poll_interval"`
	LocalCopyAhead bool          `key:"local.copy_ahead"`       // copy the local paths peers may get into castore before they ask
	ScrubInterval  time.Duration `key:"storage.scrub_interval"` // how often the background scrub reads the whole store back, 0 for never
	LogLevel       slog.Level    `key:"log.level"`
	LogFormat      string        `key:"log.format"` // "text" or "json"
	// Guix (guix.*): a listener of its own serving the paths under
	// GuixStoreDir in Guix's narinfo layout, signed with GuixSignKeyFile.
	GuixHTTPListen string `key:"guix.http_listen"` // "" for no Guix listener
	// GuixDaemonSocket speaks Guix's daemon protocol for the Guix paths
	// (GUIX_DAEMON_SOCKET): Guix's dialect needs a socket of its own.
	GuixDaemonSocket string   `key:"guix.daemon_socket"`
	GuixStoreDir     string   `key:"guix.store_dir"`
	GuixSignKeyFile  string   `key:"guix.sign_key_file"`
	GuixPublicKeys   []string `key:"guix.public_keys"` // files such as signing-key.pub, read by the node
	// GuixSubstituters are Guix substitute servers (guix publish, the
	// build farms) whose paths the Guix listener pulls through.
	GuixSubstituters []string `key:"guix.substituters"`

	// File is the config file read, "" for none.
	File string
	// Searched lists where a config file was looked for, when neither
	// --config nor P2PSTORE_CONFIG named one.
	Searched []string

	sources map[string]string // key -> where its value came from
}

// setting is one key with its flag.
type setting struct {
	key, flag string
	def       any    // viper's default: string, []string or bool
	shown     string // the default as help says it, when def alone does not
	usage     string
}

var settings = []setting{
	{"data_dir", "data-dir", "", "$XDG_DATA_HOME/p2pstore, or /var/lib/p2pstore for root", "where the node keeps its store"},
	{"store_dir", "store-dir", "/nix/store", "", "the Nix store directory paths live under (Guix paths: guix.store_dir)"},
	{"http.listen", "http-listen", "127.0.0.1:7420", "", "address of the HTTP binary cache"},
	{"daemon.socket", "daemon-socket", "", "<data_dir>/daemon.sock", "unix socket for the Nix daemon protocol and the commands"},
	{"daemon.socket_group", "daemon-socket-group", "", "none: the socket is 0600", "group that may use the daemon socket (0660); the node's user must be in it"},
	{"p2p.listen", "p2p-listen", []string{"/ip4/0.0.0.0/tcp/7421", "/ip4/0.0.0.0/udp/7421/quic-v1"}, "", "libp2p listen multiaddress (repeatable)"},
	{"p2p.bootstrap", "bootstrap", []string{}, "", "bootstrap peer multiaddress with /p2p/<id> (repeatable)"},
	{"p2p.mdns", "mdns", true, "", "discover peers on the LAN with mDNS, and advertise the Guix listener there"},
	{"p2p.identity_file", "identity-file", "", "<data_dir>/identity.key", "the node's libp2p key, made on first start"},
	{"p2p.max_upload_rate", "max-upload-rate", "0", "0, no cap", "cap on bytes/s sent to peers (k/M/G suffixes)"},
	{"trust.public_keys", "trusted-public-key", []string{}, "", "key whose signatures make a path trusted, from peers, upstreams or the local store (repeatable)"},
	{"sign.key_file", "sign-key-file", "", "", "Nix secret key the node signs its paths with"},
	{"sign.imports", "sign-imports", false, "", "sign what import and nix copy --to the daemon socket add with sign.key_file, which shares it with peers (import --sign or --private decides per import)"},
	{"upstream.substituters", "upstream", []string{}, "", "binary cache to pull paths through from when no peer has them, e.g. https://cache.nixos.org (repeatable)"},
	{"upstream.public_keys", "upstream-public-key", []string{}, "", "key whose signatures make a path trusted, as trust.public_keys (repeatable; pulled paths need one, e.g. cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=)"},
	{"storage.max_bytes", "max-bytes", "0", "0, no limit", "stored chunk bytes to keep the store under, by removing the least recently used unpinned paths (k/M/G/T suffixes)"},
	{"storage.nar_cache_bytes", "nar-cache-bytes", "", "2G, or a quarter of storage.max_bytes when less", "disk for the uncompressed NARs asked for more than once, kept as files and served as a static cache serves them (k/M/G/T suffixes, 0 for none)"},
	{"storage.scrub_interval", "scrub-interval", "168h", "", "how often the node reads its whole store back in the background, slowly, checks every object against its digest and repairs the paths it finds damaged (0 for never)"},
	{"mount.dir", "mount", "", "", "mount a read-only FUSE view of the store here"},
	{"local.share", "share-local", true, "", "share the signed paths of the local Nix store, when there is one (see local.root)"},
	{"local.root", "local-root", "/", "", "the directory the local Nix store lies under (nix/store, nix/var/nix/db): / for the system's, DIR for a store made with --store DIR"},
	{"local.poll_interval", "local-poll-interval", "30s", "", "how often the local Nix store is checked for new and deleted paths"},
	{"local.copy_ahead", "local-copy-ahead", true, "", "copy the shared local paths that peers may ask for into the node's store in the background, one at a time, so that peers need not wait for the copy (off: copied when first asked for)"},
	{"log.level", "log-level", "info", "", "least severe log lines written: debug, info, warn or error"},
	{"log.format", "log-format", "text", "", "log lines as text (key=value) or json"},
	{"guix.http_listen", "guix-http-listen", "", "none: no Guix listener", "address of the Guix substitute server (guix substitute --substitute-urls=http://HOST:PORT)"},
	{"guix.daemon_socket", "guix-daemon-socket", "", "<data_dir>/guix-daemon.sock", "unix socket for Guix's daemon protocol (GUIX_DAEMON_SOCKET=SOCKET guix ...): queries and exports of the Guix paths"},
	{"guix.store_dir", "guix-store-dir", "/gnu/store", "", "the Guix store directory; its paths are served on guix.http_listen only"},
	{"guix.sign_key_file", "guix-sign-key-file", "", "", "Guix secret key (signing-key.sec, as keygen --guix writes it) the node signs Guix narinfos with"},
	{"guix.public_keys", "guix-public-key", []string{}, "", "file of a Guix public key (signing-key.pub) whose signed narinfos the node trusts (repeatable)"},
	{"guix.substituters", "guix-substituter", []string{}, "", "Guix substitute server to pull Guix paths through from when no peer has them, e.g. https://bordeaux.guix.gnu.org; its narinfos need a key of guix.public_keys (repeatable)"},
}

func lookupSetting(key string) *setting {
	for i := range settings {
		if settings[i].key == key {
			return &settings[i]
		}
	}
	return nil
}

// shownDefault is a setting's default as help and `p2pstore config` say it.
func (s *setting) shownDefault() string {
	if s.shown != "" {
		return s.shown
	}
	switch d := s.def.(type) {
	case string:
		if d == "" {
			return "none"
		}
		return d
	case []string:
		if len(d) == 0 {
			return "none"
		}
		return strings.Join(d, ", ")
	}
	return fmt.Sprint(s.def)
}

// EnvVar is the environment variable of a key: P2PSTORE_HTTP_LISTEN for
// http.listen.
func EnvVar(key string) string {
	return "P2PSTORE_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// ConfigEnv names the config file when --config does not.
const ConfigEnv = "P2PSTORE_CONFIG"

// SystemFile is the config file looked for first; a variable for tests.
var SystemFile = "/etc/p2pstore/config.yaml"

// RegisterFlags defines a flag for every setting, plus --config. Flags
// have no defaults of their own: viper holds them, and a flag counts only
// when given. The usage says each default.
func RegisterFlags(fs *pflag.FlagSet) {
	fs.String("config", "", "config file, YAML or TOML (default $"+ConfigEnv+", else the first of "+SystemFile+" and $XDG_CONFIG_HOME/p2pstore/config.yaml that exists)")
	for i := range settings {
		s := &settings[i]
		usage := fmt.Sprintf("%s [%s, default %s]", s.usage, s.key, s.shownDefault())
		switch s.def.(type) {
		case string:
			fs.String(s.flag, "", usage)
		case []string:
			fs.StringArray(s.flag, nil, usage)
		case bool:
			fs.Bool(s.flag, false, usage)
		}
	}
}

// Load reads the settings from defaults, the config file, the environment
// and fs (flags registered by RegisterFlags), and validates them.
func Load(fs *pflag.FlagSet) (*Config, error) {
	v := viper.New()
	v.SetEnvPrefix("P2PSTORE")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()
	for _, s := range settings {
		v.SetDefault(s.key, s.def)
		if f := fs.Lookup(s.flag); f != nil {
			if err := v.BindPFlag(s.key, f); err != nil {
				return nil, err
			}
		}
	}
	c := &Config{sources: map[string]string{}}
	if err := c.readFile(v, fs); err != nil {
		return nil, err
	}
	for _, s := range settings {
		c.sources[s.key] = c.source(v, fs, &s)
	}
	r := &reader{c: c, v: v, fs: fs}
	c.DataDir = r.str("data_dir")
	c.StoreDir = strings.TrimSuffix(r.str("store_dir"), "/")
	c.HTTPListen = r.str("http.listen")
	c.DaemonSocket = r.str("daemon.socket")
	c.DaemonSocketGroup = r.str("daemon.socket_group")
	c.P2PListen = r.list("p2p.listen")
	c.Bootstrap = r.list("p2p.bootstrap")
	c.MDNS = r.bool("p2p.mdns")
	c.IdentityFile = r.str("p2p.identity_file")
	c.MaxUploadRate = r.size("p2p.max_upload_rate")
	c.TrustedPublicKeys = r.list("trust.public_keys")
	c.SignKeyFile = r.str("sign.key_file")
	c.SignImports = r.bool("sign.imports")
	c.Upstreams = r.list("upstream.substituters")
	c.UpstreamPublicKeys = r.list("upstream.public_keys")
	c.MaxBytes = r.size("storage.max_bytes")
	c.NARCacheBytes = r.size("storage.nar_cache_bytes")
	if r.str("storage.nar_cache_bytes") == "" {
		c.NARCacheBytes = defaultNARCache
		if c.MaxBytes > 0 {
			c.NARCacheBytes = min(defaultNARCache, c.MaxBytes/4)
		}
	}
	c.MountDir = r.str("mount.dir")
	c.ShareLocal = r.bool("local.share")
	c.LocalRoot = r.str("local.root")
	c.LocalPoll = r.duration("local.poll_interval")
	c.ScrubInterval = r.interval("storage.scrub_interval")
	c.LocalCopyAhead = r.bool("local.copy_ahead")
	c.LogLevel = r.level("log.level")
	c.LogFormat = r.oneOf("log.format", "text", "json")
	c.GuixHTTPListen = r.str("guix.http_listen")
	c.GuixDaemonSocket = r.str("guix.daemon_socket")
	c.GuixStoreDir = strings.TrimSuffix(r.str("guix.store_dir"), "/")
	c.GuixSignKeyFile = r.str("guix.sign_key_file")
	c.GuixPublicKeys = r.list("guix.public_keys")
	c.GuixSubstituters = r.list("guix.substituters")
	if r.err != nil {
		return nil, r.err
	}
	var err error
	if c.DataDir == "" {
		if c.DataDir, err = defaultDataDir(); err != nil {
			return nil, err
		}
	}
	if c.DaemonSocket == "" {
		c.DaemonSocket = filepath.Join(c.DataDir, "daemon.sock")
	}
	if c.GuixDaemonSocket == "" {
		c.GuixDaemonSocket = filepath.Join(c.DataDir, "guix-daemon.sock")
	}
	if c.IdentityFile == "" {
		c.IdentityFile = filepath.Join(c.DataDir, "identity.key")
	}
	return c, c.validate()
}

// defaultNARCache is storage.nar_cache_bytes when unset and the store has
// no limit: room for the hot NARs of a LAN (a Go toolchain's is 190 MB).
const defaultNARCache = 2 << 30

// readFile finds the config file and reads it into v, refusing keys it
// does not know.
func (c *Config) readFile(v *viper.Viper, fs *pflag.FlagSet) error {
	var explicit string
	if f := fs.Lookup("config"); f != nil && f.Value.String() != "" {
		explicit = f.Value.String()
	} else {
		explicit = os.Getenv(ConfigEnv)
	}
	if explicit != "" {
		c.File = explicit
	} else {
		c.Searched = searchPath()
		for _, p := range c.Searched {
			if _, err := os.Stat(p); err == nil {
				c.File = p
				break
			} else if !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("config file %s: %w", p, err)
			}
		}
	}
	if c.File == "" {
		return nil
	}
	switch strings.ToLower(filepath.Ext(c.File)) {
	case ".yaml", ".yml", ".toml", ".json":
	default:
		return fmt.Errorf("config file %s: want a .yaml, .yml or .toml file", c.File)
	}
	file := viper.New()
	file.SetConfigFile(c.File)
	if err := file.ReadInConfig(); err != nil {
		var perr *os.PathError
		if errors.As(err, &perr) {
			err = perr.Err
		}
		return fmt.Errorf("config file %s: %v", c.File, err)
	}
	for _, k := range file.AllKeys() {
		if lookupSetting(k) == nil {
			return fmt.Errorf("config file %s: unknown key %q%s", c.File, k, suggest(k))
		}
	}
	return v.MergeConfigMap(file.AllSettings())
}

// searchPath is where the config file is looked for when none is named.
func searchPath() []string {
	out := []string{SystemFile}
	if d := os.Getenv("XDG_CONFIG_HOME"); d != "" {
		out = append(out, filepath.Join(d, "p2pstore", "config.yaml"))
	} else if home, err := os.UserHomeDir(); err == nil {
		out = append(out, filepath.Join(home, ".config", "p2pstore", "config.yaml"))
	}
	return out
}

// source says where v takes a key's value from, in viper's order.
func (c *Config) source(v *viper.Viper, fs *pflag.FlagSet, s *setting) string {
	if f := fs.Lookup(s.flag); f != nil && f.Changed {
		return "flag --" + s.flag
	}
	if env := EnvVar(s.key); os.Getenv(env) != "" { // viper ignores empty variables
		return "env " + env
	}
	if v.InConfig(s.key) {
		return "file " + c.File
	}
	return "default"
}

// suggest names the known keys nearest to an unknown one, or says
// nothing: a flag's name or a key's last part ("max-bytes", "mdns"), else
// the key a typo or two away.
func suggest(key string) string {
	norm := strings.ReplaceAll(key, "-", "_")
	last := norm[strings.LastIndexByte(norm, '.')+1:]
	var near []string
	for _, s := range settings {
		if s.flag == key || s.key == norm || s.key[strings.LastIndexByte(s.key, '.')+1:] == last {
			near = append(near, s.key)
		}
	}
	if len(near) == 0 {
		best, bestDist := "", math.MaxInt
		for _, s := range settings {
			if d := editDistance(norm, s.key); d < bestDist {
				best, bestDist = s.key, d
			}
		}
		if bestDist <= max(2, len(key)/4) {
			near = append(near, best)
		}
	}
	if len(near) == 0 {
		return ""
	}
	return " (did you mean " + strings.Join(near, " or ") + "?)"
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// reader reads keys from v strictly, keeping the first error.
type reader struct {
	c   *Config
	v   *viper.Viper
	fs  *pflag.FlagSet
	err error
}

// fail records an error about a key's value.
func (r *reader) fail(key string, val any, format string, args ...any) {
	if r.err == nil {
		r.err = r.c.badValue(key, val, format, args...)
	}
}

// badValue is the error about a key's value: the key, the value, where it
// came from and what is wrong, on one line.
func (c *Config) badValue(key string, val any, format string, args ...any) error {
	return fmt.Errorf("%s %s (%s): %s", key, quote(val), c.sources[key], fmt.Sprintf(format, args...))
}

func quote(val any) string {
	if s, ok := val.(string); ok {
		return strconv.Quote(s)
	}
	return fmt.Sprintf("%v", val)
}

func (r *reader) str(key string) string {
	switch x := r.v.Get(key).(type) {
	case string:
		return x
	case nil:
		return ""
	case map[string]any, []any:
		r.fail(key, x, "want a single value")
		return ""
	default:
		return fmt.Sprint(x)
	}
}

// list reads a list setting: a repeated flag, a list in the config file,
// or a string of items separated by commas or white space (environment,
// or a file's single value).
func (r *reader) list(key string) []string {
	s := lookupSetting(key)
	if f := r.fs.Lookup(s.flag); f != nil && f.Changed {
		out, _ := r.fs.GetStringArray(s.flag)
		return out
	}
	switch x := r.v.Get(key).(type) {
	case string:
		return strings.FieldsFunc(x, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' || r == '\t' })
	case []string:
		return slices.Clone(x)
	case []any:
		out := make([]string, 0, len(x))
		for _, e := range x {
			if _, ok := e.(map[string]any); ok || e == nil {
				r.fail(key, x, "want a list of strings")
				return nil
			}
			out = append(out, fmt.Sprint(e))
		}
		return out
	case nil:
		return []string{}
	default:
		r.fail(key, x, "want a list of strings")
		return nil
	}
}

func (r *reader) bool(key string) bool {
	switch x := r.v.Get(key).(type) {
	case bool:
		return x
	case string:
		switch strings.ToLower(strings.TrimSpace(x)) {
		case "true", "yes", "on", "1":
			return true
		case "false", "no", "off", "0":
			return false
		}
		r.fail(key, x, "want true or false")
	case int, int64:
		if n := reflect.ValueOf(x).Int(); n == 0 || n == 1 {
			return n == 1
		}
		r.fail(key, x, "want true or false")
	default:
		r.fail(key, x, "want true or false")
	}
	return false
}

func (r *reader) size(key string) int64 {
	s := r.str(key)
	n, err := ParseSize(s)
	if err != nil {
		r.fail(key, s, "%v", err)
	}
	return n
}

// interval reads a duration that may be 0, for "never".
func (r *reader) interval(key string) time.Duration {
	s := r.str(key)
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil || d < 0 {
		r.fail(key, s, "want a duration such as 168h, or 0 for never")
	}
	return d
}

func (r *reader) duration(key string) time.Duration {
	s := r.str(key)
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil || d <= 0 {
		r.fail(key, s, "want a positive duration such as 30s or 5m")
	}
	return d
}

func (r *reader) oneOf(key string, allowed ...string) string {
	s := strings.ToLower(strings.TrimSpace(r.str(key)))
	if !slices.Contains(allowed, s) {
		r.fail(key, s, "want one of %s", strings.Join(allowed, ", "))
	}
	return s
}

func (r *reader) level(key string) slog.Level {
	switch r.oneOf(key, "debug", "info", "warn", "error") {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

func defaultDataDir() (string, error) {
	if os.Geteuid() == 0 {
		return "/var/lib/p2pstore", nil
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "p2pstore"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", errors.New("data_dir: no home directory; set --data-dir")
	}
	return filepath.Join(home, ".local", "share", "p2pstore"), nil
}

// maxSocketPath is the longest path a unix socket may have on Linux:
// sun_path holds 108 bytes with the terminating NUL.
const maxSocketPath = 107

// validate checks what the values mean, each error naming its key.
func (c *Config) validate() error {
	bad := c.badValue
	if !filepath.IsAbs(c.StoreDir) || c.StoreDir == "/" {
		return bad("store_dir", c.StoreDir, "want an absolute directory such as /nix/store")
	}
	if c.HTTPListen != "" {
		if err := checkHostPort(c.HTTPListen); err != nil {
			return bad("http.listen", c.HTTPListen, "%v", err)
		}
	}
	for _, sock := range []struct{ key, path, file string }{
		{"daemon.socket", c.DaemonSocket, "daemon.sock"},
		{"guix.daemon_socket", c.GuixDaemonSocket, "guix-daemon.sock"},
	} {
		if len(sock.path) > maxSocketPath {
			return bad(sock.key, sock.path, "%d bytes, over the %d a unix socket path may have; set %s to a shorter path (it defaults to <data_dir>/%s)",
				len(sock.path), maxSocketPath, sock.key, sock.file)
		}
	}
	if c.GuixDaemonSocket == c.DaemonSocket {
		return bad("guix.daemon_socket", c.GuixDaemonSocket, "the same as daemon.socket; Guix's daemon protocol needs a socket of its own")
	}
	for _, a := range c.P2PListen {
		if _, err := ma.NewMultiaddr(a); err != nil {
			return bad("p2p.listen", a, "%v (want a multiaddress such as /ip4/0.0.0.0/tcp/7421)", err)
		}
	}
	for _, a := range c.Bootstrap {
		if _, err := ParseBootstrap(a); err != nil {
			return bad("p2p.bootstrap", a, "%v", err)
		}
	}
	if c.SignImports && c.SignKeyFile == "" {
		return bad("sign.imports", c.SignImports, "the node has no key to sign with (set sign.key_file)")
	}
	if !filepath.IsAbs(c.LocalRoot) {
		return bad("local.root", c.LocalRoot, "want an absolute directory")
	}
	if !filepath.IsAbs(c.GuixStoreDir) || c.GuixStoreDir == "/" {
		return bad("guix.store_dir", c.GuixStoreDir, "want an absolute directory such as /gnu/store")
	}
	if c.GuixStoreDir == c.StoreDir {
		// Each store's paths are served on its own listener only.
		return bad("guix.store_dir", c.GuixStoreDir, "the same as store_dir; Guix and Nix paths need stores of their own")
	}
	if c.GuixHTTPListen != "" {
		if err := checkHostPort(c.GuixHTTPListen); err != nil {
			return bad("guix.http_listen", c.GuixHTTPListen, "%v", err)
		}
		// Port 0 (any free port) makes two addresses, whatever the host.
		if c.GuixHTTPListen == c.HTTPListen && !strings.HasSuffix(c.HTTPListen, ":0") {
			return bad("guix.http_listen", c.GuixHTTPListen, "the same as http.listen; the Guix listener needs an address of its own")
		}
	}
	for _, f := range c.GuixPublicKeys {
		if strings.HasPrefix(strings.TrimSpace(f), "(") {
			return bad("guix.public_keys", f, "want the file of a key (signing-key.pub), not the key itself")
		}
	}
	return nil
}

// checkHostPort checks a HOST:PORT address to listen on.
func checkHostPort(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return errors.New("want HOST:PORT such as 127.0.0.1:7420")
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("port %q: want a number from 0 to 65535", port)
	}
	if strings.ContainsAny(host, " /\t") {
		return fmt.Errorf("host %q: want an IP address or a host name", host)
	}
	return nil
}

// ParseBootstrap parses a bootstrap peer's address: a multiaddress that
// ends in /p2p/<peer id>.
func ParseBootstrap(s string) (*peer.AddrInfo, error) {
	a, err := ma.NewMultiaddr(s)
	if err != nil {
		return nil, fmt.Errorf("%v (want a multiaddress such as /ip4/192.0.2.1/tcp/7421/p2p/<peer id>)", err)
	}
	pi, err := peer.AddrInfoFromP2pAddr(a)
	if err != nil {
		return nil, fmt.Errorf("%v (want a multiaddress ending in /p2p/<peer id>, as `p2pstore status` prints)", err)
	}
	return pi, nil
}

// ParseSize parses a byte count with an optional binary suffix: k, M, G or
// T (each optionally followed by "iB" or "B"), so "10M" is 10 MiB.
func ParseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	num := strings.TrimRight(s, "kKMGTiB")
	suffix := strings.ToUpper(strings.TrimSuffix(strings.TrimSuffix(s[len(num):], "B"), "i"))
	shift := map[string]uint{"": 0, "K": 10, "M": 20, "G": 30, "T": 40}
	sh, ok := shift[suffix]
	if !ok {
		return 0, fmt.Errorf("unknown suffix %q (want k, M, G or T)", s[len(num):])
	}
	n, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	if err != nil || !(n >= 0) || math.IsInf(n, 0) {
		return 0, errors.New("want a number of bytes, such as 512M or 10G")
	}
	b := n * float64(uint64(1)<<sh)
	if b >= math.MaxInt64 {
		return 0, errors.New("too large")
	}
	return int64(b), nil
}

// Setting is one setting's effective value and where it came from.
type Setting struct {
	Key   string `json:"key"`
	Value any    `json:"value"`
	// Source is "default", "file PATH", "env VAR" or "flag --NAME".
	Source string `json:"source"`
}

// Settings lists every setting, in the order of the settings table, with
// the value the node uses: sizes in bytes, durations and log levels as
// text, lists never nil.
func (c *Config) Settings() []Setting {
	byKey := map[string]any{}
	rv := reflect.ValueOf(c).Elem()
	for i := 0; i < rv.NumField(); i++ {
		key := rv.Type().Field(i).Tag.Get("key")
		if key == "" {
			continue
		}
		switch x := rv.Field(i).Interface().(type) {
		case time.Duration:
			byKey[key] = x.String()
		case slog.Level:
			byKey[key] = strings.ToLower(x.String())
		case []string:
			if x == nil {
				x = []string{}
			}
			byKey[key] = x
		default:
			byKey[key] = x
		}
	}
	out := make([]Setting, 0, len(settings))
	for _, s := range settings {
		out = append(out, Setting{Key: s.key, Value: byKey[s.key], Source: c.sources[s.key]})
	}
	return out
}
