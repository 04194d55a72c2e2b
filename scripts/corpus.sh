#!/usr/bin/env bash
# Adds real data to the local Nix store and prints one store path per line:
# Go toolchain releases (about 190 MB of NAR and 11k files each, from the Go
# module proxy), then a three-path closure built by derivations with
# references (top -> mid -> leaf).
#   scripts/corpus.sh [VERSION...]      default: go1.25.0 go1.25.1
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/nix-env.sh"
versions=("$@"); [ ${#versions[@]} -gt 0 ] || versions=(go1.25.0 go1.25.1)
work=${P2PSTORE_CORPUS_DIR:-/tmp/p2pstore-corpus}
mkdir -p "$work/mod"
cd "$work/mod"
[ -f go.mod ] || go mod init corpus >/dev/null 2>&1
for v in "${versions[@]}"; do
  dir=$(go mod download -json "golang.org/toolchain@v0.0.1-$v.linux-amd64" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
  [ -n "$dir" ] || { echo "corpus.sh: could not download the $v toolchain" >&2; exit 1; }
  rm -rf "${work:?}/$v"
  cp -r "$dir" "$work/$v"
  chmod -R u+w "$work/$v"
  nix-store --add "$work/$v"
done
cat > "$work/closure.nix" <<'NIX'
let
  leaf = derivation { name = "leaf"; system = "x86_64-linux"; builder = "/bin/sh";
    args = [ "-c" "echo leaf > $out" ]; };
  mid = derivation { name = "mid"; system = "x86_64-linux"; builder = "/bin/sh";
    args = [ "-c" "/bin/mkdir -p $out/bin; echo ${leaf} > $out/ref; printf '#!/bin/sh\\necho hi\\n' > $out/bin/hi; /bin/chmod +x $out/bin/hi; /bin/ln -s ../ref $out/bin/link" ]; };
in derivation { name = "top"; system = "x86_64-linux"; builder = "/bin/sh";
    args = [ "-c" "echo ${mid} ${leaf} > $out" ]; }
NIX
nix-build "$work/closure.nix" --no-out-link 2>/dev/null
