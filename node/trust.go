package node

import (
	"fmt"
	"strings"

	"github.com/p2pstore/p2pstore/config"
	"github.com/p2pstore/p2pstore/narview/narinfo"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
)

// loadKeys parses, once at start, the public keys the node trusts: a path
// is trusted when any of its signatures verifies with one of them
// (signatures that do not verify are dropped, as Nix ignores them). One
// set serves every use: what the node takes from peers and upstreams, and
// what it gives peers and serves from the local store. trust.public_keys
// and upstream.public_keys differ only in where a user thinks of them: a
// signature binds the path to its NarHash, so a path cache.nixos.org
// signed is as good from a peer as from cache.nixos.org.
func loadKeys(cfg *config.Config, own *narinfo.SecretKey) ([]narinfo.PublicKey, error) {
	trusted, err := parseKeys(cfg.TrustedPublicKeys)
	if err != nil {
		return nil, fmt.Errorf("trust.public_keys: %w", err)
	}
	upstream, err := parseKeys(cfg.UpstreamPublicKeys)
	if err != nil {
		return nil, fmt.Errorf("upstream.public_keys: %w", err)
	}
	keys := append(trusted, upstream...)
	if own != nil {
		keys = append(keys, own.Public())
	}
	return keys, nil
}

func parseKeys(texts []string) ([]narinfo.PublicKey, error) {
	var out []narinfo.PublicKey
	for _, t := range texts {
		k, err := narinfo.ParsePublicKey(t)
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, nil
}

// dropBadSigs removes the signatures of info that name a key the node
// knows but do not verify (a rotated key's stale one, a forged one),
// saying so in the log: Nix accepts such a path when another signature
// verifies, and so does the node.
func (n *Node) dropBadSigs(info *pathinfo.Info) {
	for _, sig := range info.DropBadSigs(n.keys) {
		name, _, _ := strings.Cut(sig, ":")
		n.log.Warn("dropped a signature that does not verify", "path", info.StorePath, "key", name)
	}
}
