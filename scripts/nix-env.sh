#!/usr/bin/env bash
# Source this file: it installs Debian's nix-bin when Nix is missing and sets
# NIX_CONFIG for a single-user Nix run as root (no sandbox, no build users,
# no substituters: tests and benchmarks never reach a public cache).
if ! command -v nix-store >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "nix-env.sh: Nix is missing; run as root to install nix-bin" >&2
    return 1 2>/dev/null || exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get install -y -qq --no-install-recommends nix-bin >/dev/null 2>&1 \
    || { echo "nix-env.sh: could not install nix-bin" >&2; return 1 2>/dev/null || exit 1; }
fi
export NIX_CONFIG=$'experimental-features = nix-command\nsandbox = false\nbuild-users-group = \nfsync-metadata = false\nsubstituters = '
