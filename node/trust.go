package node

import (
	"fmt"
	"strings"

	"github.com/p2pstore/p2pstore/config"
	"github.com/p2pstore/p2pstore/narview/narinfo"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
)

// trustKeys are the public keys the node checks signatures with, parsed
// once at start: a path is trusted when any of its signatures verifies
// with one of them (signatures that do not verify are ignored, as Nix
// does).
type trustKeys struct {
	share []narinfo.PublicKey // trust.public_keys and the node's own: what it takes from and gives to peers
	known []narinfo.PublicKey // those and upstream.public_keys: every key it can check a signature with
}

func loadKeys(cfg *config.Config, own *narinfo.SecretKey) (trustKeys, error) {
	var k trustKeys
	trusted, err := parseKeys(cfg.TrustedPublicKeys)
	if err != nil {
		return k, fmt.Errorf("trust.public_keys: %w", err)
	}
	upstream, err := parseKeys(cfg.UpstreamPublicKeys)
	if err != nil {
		return k, fmt.Errorf("upstream.public_keys: %w", err)
	}
	k.share = trusted
	if own != nil {
		k.share = append(k.share, own.Public())
	}
	k.known = append(append([]narinfo.PublicKey(nil), k.share...), upstream...)
	return k, nil
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
	for _, sig := range info.DropBadSigs(n.keys.known) {
		name, _, _ := strings.Cut(sig, ":")
		n.log.Warn("dropped a signature that does not verify", "path", info.StorePath, "key", name)
	}
}
