#!/usr/bin/env bash
# Builds p2pstore and starts a node with a signing key. On the first run it
# makes the key (named after this host); `p2pstore status` prints the public
# key that Nix clients put in trusted-public-keys. The node signs, and so
# shares with its peers, only what is imported with `p2pstore import --sign`
# (or everything it is given, with --sign-imports).
# Extra arguments go to `p2pstore serve` (see `./p2pstore serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
go build -o ./p2pstore ./cmd/p2pstore
if [ "$(id -u)" = 0 ]; then keydir=/etc/p2pstore; else keydir=${XDG_CONFIG_HOME:-$HOME/.config}/p2pstore; fi
key=${P2PSTORE_SIGN_KEY_FILE:-$keydir/signing.key}
if [ ! -f "$key" ]; then
  mkdir -p "$(dirname "$key")"
  echo "public key: $(./p2pstore keygen --name "$(hostname)-1" --out "$key")"
fi
exec ./p2pstore serve --sign-key-file "$key" "$@"
