package node

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/p2pstore/p2pstore/narview/daemon"
	"github.com/p2pstore/p2pstore/narview/guix"
	"github.com/p2pstore/p2pstore/narview/httpcache"
	"github.com/p2pstore/p2pstore/narview/nar"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
)

// Guix paths (guix.*) live in the same index and castore as Nix paths; a
// path is Guix's when it lies under guix.store_dir. They are served on
// guix.http_listen only, from the index, the peers and guix.substituters,
// and signed for Guix only: with guix.sign_key_file when an import says
// so, never with the Nix key. An owner's import may bring the path's Guix
// narinfo signed elsewhere; the node keeps it when it describes the path
// and a key of guix.public_keys (or the node's own) signed it, and
// refuses the import otherwise.
//
// Between nodes a Guix path moves as a Nix one does, its record carrying
// the signed Guix narinfo byte for byte: a node shares it, and announces
// it under the Guix store's DHT key, only when a trusted Guix key signed
// that narinfo, and a fetching node takes it only on the same terms, with
// its own guix.public_keys; it then serves that very text to its Guix
// clients. Nix signatures of the tree's root do not cover Guix paths: the
// fetched tree is checked against the narinfo's NarHash.

// loadGuixKeys reads guix.sign_key_file and guix.public_keys, refusing at
// start a file that cannot be read or parsed, naming its key.
func (n *Node) loadGuixKeys() error {
	cfg := n.cfg
	if cfg.GuixSignKeyFile != "" {
		k, err := guix.LoadSecretKeyFile(cfg.GuixSignKeyFile)
		if err != nil {
			return fmt.Errorf("guix.sign_key_file: %w", err)
		}
		n.guixKey = &k
		n.guixKeys = append(n.guixKeys, k.Public())
	}
	for _, f := range cfg.GuixPublicKeys {
		k, err := guix.LoadPublicKeyFile(f)
		if err != nil {
			return fmt.Errorf("guix.public_keys: %w", err)
		}
		n.guixKeys = append(n.guixKeys, k)
	}
	host, err := os.Hostname()
	if err != nil || strings.ContainsAny(host, "; \t") || host == "" {
		host = "p2pstore"
	}
	n.guixHost = host
	return nil
}

// isGuix reports whether a store path is one of the Guix store.
func (n *Node) isGuix(storePath string) bool {
	return path.Dir(storePath) == n.cfg.GuixStoreDir
}

// storeDirOf is the store directory a path must lie in: Guix's for a
// Guix path, else Nix's.
func (n *Node) storeDirOf(storePath string) string {
	if n.isGuix(storePath) {
		return n.cfg.GuixStoreDir
	}
	return n.cfg.StoreDir
}

// checkGuixNarinfo checks the Guix narinfo an import brings: it parses,
// describes this very path (Guix's equivalence: path, NarHash, NarSize,
// references), and a trusted Guix key signed it.
func (n *Node) checkGuixNarinfo(info *pathinfo.Info) error {
	if !n.isGuix(info.StorePath) {
		return badInput("%s: a Guix narinfo for a path outside guix.store_dir %s", info.StorePath, n.cfg.GuixStoreDir)
	}
	if err := info.GuixTrustedBy(n.guixKeys); err != nil {
		for _, sigErr := range []error{guix.ErrUnsigned, guix.ErrCorrupt, guix.ErrUntrusted, guix.ErrHashMismatch, guix.ErrInvalid} {
			if errors.Is(err, sigErr) {
				return badInput("%v (guix.public_keys)", err)
			}
		}
		return badInput("%v", err)
	}
	return nil
}

// signGuix signs a Guix path's narinfo with the node's Guix key.
func (n *Node) signGuix(info *pathinfo.Info) error {
	ni, err := httpcache.GuixNarinfo(&pathinfo.Info{StorePath: info.StorePath, NarHash: info.NarHash,
		NarSize: info.NarSize, References: info.References, Deriver: info.Deriver})
	if err != nil {
		return err
	}
	if err := ni.Sign(*n.guixKey, n.guixHost); err != nil {
		return err
	}
	// Parse wants a NAR entry; the listener replaces it with its own.
	base := path.Base(info.StorePath)
	ni.NARs = []guix.NAR{{URL: guix.NARURL("none", base), Compression: "none"}}
	info.GuixNarinfo = ni.String()
	return nil
}

// guixDaemonServer returns the server of Guix's daemon protocol on
// guix.daemon_socket. Exports are signed with the node's Guix key;
// imports (guix archive --import, guix copy) need an archive signed by a
// key of guix.public_keys or the node's own, as guix-daemon's ACL
// decides, and are spooled in data_dir while that is checked.
func (n *Node) guixDaemonServer() *daemon.Server {
	spool := filepath.Join(n.cfg.DataDir, spoolDir)
	os.MkdirAll(spool, 0o700)
	opts := daemon.GuixOptions{SpoolDir: spool}
	if k := n.guixKey; k != nil {
		opts.SignExport = func(h [sha256.Size]byte) string { return k.SignHash(h).String() }
	}
	if len(n.guixKeys) > 0 {
		opts.CheckImport = func(text string, h [sha256.Size]byte) error {
			sig, err := guix.ParseSignature([]byte(text))
			if err != nil {
				return err
			}
			if err := sig.Verify(h, n.guixKeys); err != nil {
				return fmt.Errorf("%w (guix.public_keys)", err)
			}
			return nil
		}
	}
	return daemon.NewGuixServer(daemonStore{n: n, guix: true}, n.cfg.GuixStoreDir, opts, n.log)
}

// GuixAddr returns the address the Guix listener listens on, "" for none.
func (n *Node) GuixAddr() string {
	if n.guixLn == nil {
		return ""
	}
	return n.guixLn.Addr().String()
}

// GuixHandler returns the Guix listener's handler.
func (n *Node) GuixHandler() http.Handler {
	g := httpcache.NewGuix(guixPaths{n}, httpcache.GuixOptions{StoreDir: n.cfg.GuixStoreDir, Log: n.log})
	return n.metrics.instrument(corkNARs(g))
}

// guixPaths adapts the node to httpcache.Paths for the Guix listener:
// the index, then the peers and the Guix upstreams (upstream.go). Guix
// asks its narinfos one after the other on one connection (up to 1,000
// pipelined), so each slow miss holds up every request behind it: a
// lookup waits narinfoDeadline at most, and a connection's lookups wait
// from a budget (missBudget), past which a miss is a 404 at once. A
// search that outlives its request goes on (one per path; a path found
// nowhere is remembered a while), so what it finds serves the next ask.
type guixPaths struct{ n *Node }

func (g guixPaths) Info(ctx context.Context, hash string) (*pathinfo.Info, error) {
	info, err := g.n.index.Get(hash)
	if errors.Is(err, pathinfo.ErrNotFound) {
		info, err = g.elsewhere(ctx, hash)
	}
	if err != nil {
		return nil, err
	}
	if !g.n.isGuix(info.StorePath) {
		return nil, fmt.Errorf("%s: %w", info.StorePath, pathinfo.ErrNotFound)
	}
	g.n.limit.touch(hash)
	return info, nil
}

// elsewhere looks a path the index lacks up on the peers and the Guix
// upstreams, waiting what the connection's budget allows.
func (g guixPaths) elsewhere(ctx context.Context, hash string) (*pathinfo.Info, error) {
	guixUp := g.n.up != nil && g.n.up.guix != nil
	if !guixUp && g.n.p2p == nil {
		return nil, fmt.Errorf("%s: %w", hash, pathinfo.ErrNotFound)
	}
	wait := narinfoDeadline
	budget, _ := ctx.Value(missBudgetKey{}).(*missBudget)
	if budget != nil {
		wait = budget.take()
	}
	start := time.Now()
	lctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	var info *pathinfo.Info
	var err error
	if guixUp {
		info, err = g.n.infoElsewhere(lctx, hash, g.n.up.guix)
	} else {
		info, err = g.fromPeers(lctx, hash)
	}
	if budget != nil {
		budget.spend(time.Since(start))
	}
	if err != nil && ctx.Err() == nil && lctx.Err() != nil {
		return nil, fmt.Errorf("%s: no answer within %s: %w", hash, wait, pathinfo.ErrNotFound)
	}
	return info, err
}

// fromPeers starts the fetch of a path from the peers and returns its
// record once one is found: the NAR then streams as the chunks arrive.
func (g guixPaths) fromPeers(ctx context.Context, hash string) (*pathinfo.Info, error) {
	j, err := g.n.p2p.fetch.Start(ctx, hash)
	if j != nil && j.Info() != nil {
		return j.Info(), nil // found, even if ctx ended meanwhile
	}
	return nil, err
}

// missBudget is what one Guix connection may wait for lookups of paths
// the node lacks: missBudgetMax in hand, refilled by half the time that
// passes, so that a burst of misses waits some seconds in all, not
// narinfoDeadline each, and a connection that asks now and then waits
// the full deadline each time.
type missBudget struct {
	mu   sync.Mutex
	left time.Duration
	at   time.Time // of the last refill; zero before the first
}

type missBudgetKey struct{}

const missBudgetMax = 5 * time.Second

// take refills the budget and returns how long the next lookup may wait.
func (b *missBudget) take() time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	if b.at.IsZero() {
		b.left = missBudgetMax
	} else {
		b.left = min(missBudgetMax, b.left+now.Sub(b.at)/2)
	}
	b.at = now
	return max(0, min(b.left, narinfoDeadline))
}

// spend takes what a lookup waited from the budget.
func (b *missBudget) spend(d time.Duration) {
	b.mu.Lock()
	b.left -= d
	b.mu.Unlock()
}

// withMissBudget gives a Guix connection its budget.
func withMissBudget(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(withConn(ctx, c), missBudgetKey{}, new(missBudget))
}

func (g guixPaths) NAR(ctx context.Context, info *pathinfo.Info, c nar.Compression, w io.Writer) error {
	return g.n.NAR(ctx, info, c, w)
}

func (g guixPaths) NARRange(ctx context.Context, info *pathinfo.Info, off, size int64, w io.Writer) error {
	return g.n.NARRange(ctx, info, off, size, w)
}

func (g guixPaths) NARSize(info *pathinfo.Info, c nar.Compression) (int64, bool) {
	return g.n.NARSize(info, c)
}
