// Package config holds the node's settings: defaults, a config file (YAML
// or TOML, --config), the environment (P2PSTORE_ + the key in upper case,
// dots as underscores) and flags, in rising order of precedence. Load reads
// them once, validates them and returns a Config; nothing else reads
// settings.
package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// Config is the validated settings.
type Config struct {
	DataDir            string
	StoreDir           string
	HTTPListen         string
	DaemonSocket       string
	P2PListen          []string
	Bootstrap          []string
	MDNS               bool
	IdentityFile       string
	TrustedPublicKeys  []string // name:base64, parsed and checked by the node
	SignKeyFile        string
	SignImports        bool // sign (and so share) what import and the daemon socket add
	Upstreams          []string
	UpstreamPublicKeys []string
	MaxBytes           int64
	NARCacheBytes      int64 // rendered NARs kept as files (storage.nar_cache_bytes), after the default
	MountDir           string
	MaxUploadRate      int64 // bytes per second, 0 for no cap
	// The local Nix store the node shares (local.*): the signed paths of
	// the store under LocalRoot, watched every LocalPoll.
	ShareLocal     bool
	LocalRoot      string
	LocalPoll      time.Duration
	LocalCopyAhead bool // copy the local paths peers may get into castore before they ask

	ScrubInterval time.Duration // how often the background scrub reads the whole store back, 0 for never
}

// setting is one key with its flag.
type setting struct {
	key, flag, usage string
	def              any // string, []string or bool
}

var settings = []setting{
	{"data_dir", "data-dir", "where the node keeps its store (default $XDG_DATA_HOME/p2pstore, or /var/lib/p2pstore for root)", ""},
	{"store_dir", "store-dir", "the Nix store directory paths live under (/gnu/store for Guix)", "/nix/store"},
	{"http.listen", "http-listen", "address of the HTTP binary cache", "127.0.0.1:7420"},
	{"daemon.socket", "daemon-socket", "unix socket for the Nix daemon protocol and the commands (default <data_dir>/daemon.sock)", ""},
	{"p2p.listen", "p2p-listen", "libp2p listen multiaddress (repeatable)", []string{"/ip4/0.0.0.0/tcp/7421", "/ip4/0.0.0.0/udp/7421/quic-v1"}},
	{"p2p.bootstrap", "bootstrap", "bootstrap peer multiaddress with /p2p/<id> (repeatable)", []string{}},
	{"p2p.mdns", "mdns", "discover peers on the LAN with mDNS", true},
	{"p2p.identity_file", "identity-file", "the node's libp2p key (default <data_dir>/identity.key)", ""},
	{"trust.public_keys", "trusted-public-key", "key whose signatures make a path trusted, from peers, upstreams or the local store (repeatable)", []string{}},
	{"sign.key_file", "sign-key-file", "Nix secret key the node signs its paths with", ""},
	{"sign.imports", "sign-imports", "sign what import and nix copy --to the daemon socket add with sign.key_file, which shares it with peers (import --sign or --private decides per import)", false},
	{"upstream.substituters", "upstream", "binary cache to pull paths through from when no peer has them, e.g. https://cache.nixos.org (repeatable)", []string{}},
	{"upstream.public_keys", "upstream-public-key", "key whose signatures make a path trusted, as trust.public_keys (repeatable; pulled paths need one, e.g. cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=)", []string{}},
	{"storage.max_bytes", "max-bytes", "stored chunk bytes to keep the store under, by removing the least recently used unpinned paths (k/M/G/T suffixes, 0 for no limit)", "0"},
	{"storage.nar_cache_bytes", "nar-cache-bytes", "disk for the uncompressed NARs asked for more than once, kept as files and served as a static cache serves them (k/M/G/T suffixes, 0 for none; default 2G, or a quarter of storage.max_bytes when that is less)", ""},
	{"storage.scrub_interval", "scrub-interval", "how often the node reads its whole store back in the background, slowly, checks every object against its digest and repairs the paths it finds damaged (0 for never)", "168h"},
	{"mount.dir", "mount", "mount a read-only FUSE view of the store here", ""},
	{"p2p.max_upload_rate", "max-upload-rate", "cap on bytes/s sent to peers (k/M/G suffixes, 0 for no cap)", "0"},
	{"local.share", "share-local", "share the signed paths of the local Nix store, when there is one (see local.root)", true},
	{"local.root", "local-root", "the directory the local Nix store lies under (nix/store, nix/var/nix/db): / for the system's, DIR for a store made with --store DIR", "/"},
	{"local.poll_interval", "local-poll-interval", "how often the local Nix store is checked for new and deleted paths", "30s"},
	{"local.copy_ahead", "local-copy-ahead", "copy the shared local paths that peers may ask for into the node's store in the background, one at a time, so that peers need not wait for the copy (off: copied when first asked for)", true},
}

// RegisterFlags defines a flag for every setting, plus --config.
func RegisterFlags(fs *pflag.FlagSet) {
	fs.String("config", "", "config file (YAML or TOML)")
	for _, s := range settings {
		switch d := s.def.(type) {
		case string:
			fs.String(s.flag, d, s.usage)
		case []string:
			fs.StringArray(s.flag, nil, s.usage+fmt.Sprintf(" (default %s)", strings.Join(d, ", ")))
		case bool:
			fs.Bool(s.flag, d, s.usage)
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
	if f := fs.Lookup("config"); f != nil && f.Value.String() != "" {
		v.SetConfigFile(f.Value.String())
		if err := v.ReadInConfig(); err != nil {
			return nil, fmt.Errorf("config file: %w", err)
		}
	}
	c := &Config{
		DataDir:      v.GetString("data_dir"),
		StoreDir:     strings.TrimSuffix(v.GetString("store_dir"), "/"),
		HTTPListen:   v.GetString("http.listen"),
		DaemonSocket: v.GetString("daemon.socket"),
		P2PListen:    list(v, fs, "p2p.listen", "p2p-listen"),
		Bootstrap:    list(v, fs, "p2p.bootstrap", "bootstrap"),
		MDNS:         v.GetBool("p2p.mdns"),
		IdentityFile: v.GetString("p2p.identity_file"),
		SignKeyFile:  v.GetString("sign.key_file"),
		SignImports:  v.GetBool("sign.imports"),
		Upstreams:    list(v, fs, "upstream.substituters", "upstream"),
		MountDir:     v.GetString("mount.dir"),
	}
	var err error
	if c.DataDir == "" {
		c.DataDir, err = defaultDataDir()
		if err != nil {
			return nil, err
		}
	}
	if c.DaemonSocket == "" {
		c.DaemonSocket = filepath.Join(c.DataDir, "daemon.sock")
	}
	if c.IdentityFile == "" {
		c.IdentityFile = filepath.Join(c.DataDir, "identity.key")
	}
	c.TrustedPublicKeys = list(v, fs, "trust.public_keys", "trusted-public-key")
	c.UpstreamPublicKeys = list(v, fs, "upstream.public_keys", "upstream-public-key")
	if c.MaxBytes, err = ParseSize(v.GetString("storage.max_bytes")); err != nil {
		return nil, fmt.Errorf("storage.max_bytes: %w", err)
	}
	if c.NARCacheBytes, err = narCacheBytes(v.GetString("storage.nar_cache_bytes"), c.MaxBytes); err != nil {
		return nil, fmt.Errorf("storage.nar_cache_bytes: %w", err)
	}
	if c.ScrubInterval, err = time.ParseDuration(v.GetString("storage.scrub_interval")); err != nil || c.ScrubInterval < 0 {
		return nil, fmt.Errorf("storage.scrub_interval %q: want a duration such as 168h, or 0 for never", v.GetString("storage.scrub_interval"))
	}
	if c.MaxUploadRate, err = ParseSize(v.GetString("p2p.max_upload_rate")); err != nil {
		return nil, fmt.Errorf("p2p.max_upload_rate: %w", err)
	}
	if err := c.loadLocal(v); err != nil {
		return nil, err
	}
	return c, c.validate()
}

// defaultNARCache is storage.nar_cache_bytes when unset and the store has
// no limit: room for the hot NARs of a LAN (a Go toolchain's is 190 MB).
const defaultNARCache = 2 << 30

// narCacheBytes is storage.nar_cache_bytes: as set, or by default 2 GiB
// but at most a quarter of storage.max_bytes.
func narCacheBytes(s string, maxBytes int64) (int64, error) {
	if strings.TrimSpace(s) != "" {
		return ParseSize(s)
	}
	if maxBytes > 0 {
		return min(defaultNARCache, maxBytes/4), nil
	}
	return defaultNARCache, nil
}

// loadLocal reads the local.* settings.
func (c *Config) loadLocal(v *viper.Viper) error {
	c.ShareLocal = v.GetBool("local.share")
	c.LocalRoot = v.GetString("local.root")
	c.LocalCopyAhead = v.GetBool("local.copy_ahead")
	if !filepath.IsAbs(c.LocalRoot) {
		return fmt.Errorf("local.root %q: must be an absolute directory", c.LocalRoot)
	}
	d, err := time.ParseDuration(v.GetString("local.poll_interval"))
	if err != nil || d <= 0 {
		return fmt.Errorf("local.poll_interval %q: want a positive duration such as 30s", v.GetString("local.poll_interval"))
	}
	c.LocalPoll = d
	return nil
}

// list reads a list setting: a repeated flag, or a list in the config
// file, or a string of items separated by commas or spaces (environment).
func list(v *viper.Viper, fs *pflag.FlagSet, key, flag string) []string {
	if f := fs.Lookup(flag); f != nil && f.Changed {
		out, _ := fs.GetStringArray(flag)
		return out
	}
	var out []string
	switch x := v.Get(key).(type) {
	case string:
		out = strings.FieldsFunc(x, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' || r == '\t' })
	default:
		out = v.GetStringSlice(key)
	}
	return out
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

func (c *Config) validate() error {
	if !filepath.IsAbs(c.StoreDir) || c.StoreDir == "/" {
		return fmt.Errorf("store_dir %q: must be an absolute directory", c.StoreDir)
	}
	if c.HTTPListen != "" {
		if _, _, err := net.SplitHostPort(c.HTTPListen); err != nil {
			return fmt.Errorf("http.listen %q: %w", c.HTTPListen, err)
		}
	}
	if c.SignImports && c.SignKeyFile == "" {
		return errors.New("sign.imports: the node has no key to sign with (set sign.key_file)")
	}
	if c.MaxBytes < 0 || c.MaxUploadRate < 0 || c.NARCacheBytes < 0 {
		return errors.New("sizes and rates must not be negative")
	}
	return nil
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
		return 0, fmt.Errorf("size %q: unknown suffix", s)
	}
	n, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("size %q: not a number of bytes", s)
	}
	return int64(n * float64(uint64(1)<<sh)), nil
}
