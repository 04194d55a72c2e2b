#!/usr/bin/env bash
# Runs every check CI runs: installs what the tests need (Debian's nix-bin,
# zstd, lzip, openssh-server, systemd-analyze and Guile for dist/), adds the
# real-data corpus to the Nix store, then gofmt, go vet and go test.
# Needs root on a fresh machine (apt-get, single-user Nix).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/nix-env.sh
# zstd checks our .nar.zst streams with the reference decoder; sshd serves
# the ssh-ng tests; bzip2 makes a bzip2 NAR for the upstream client's tests;
# lzip makes the lzip files of internal/lzip's and the upstream client's
# tests (and of the Guix farm of the pull-through test), and is the
# command the node decodes lzip NARs with.
missing=()
command -v zstd >/dev/null 2>&1 || missing+=(zstd)
command -v bzip2 >/dev/null 2>&1 || missing+=(bzip2)
command -v lzip >/dev/null 2>&1 || missing+=(lzip)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server openssh-client)
# nginx serves the static upstream caches of the pull-through tests.
[ -x /usr/sbin/nginx ] || missing+=(nginx)
# systemd-analyze verifies the systemd unit in dist/.
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Guile reads the Guix service file in dist/; without it that check is
# skipped (with a message), not failed.
command -v guile >/dev/null 2>&1 || apt-get install -y -qq --no-install-recommends guile-3.0 >/dev/null 2>&1 \
  || echo "guile-3.0 could not be installed: the Guix service file's check is skipped"
export P2PSTORE_REQUIRE_NIX=1 P2PSTORE_REQUIRE_FUSE=1 P2PSTORE_REQUIRE_ROOT=1 P2PSTORE_REQUIRE_SYSTEMD=1
P2PSTORE_CORPUS=$(scripts/corpus.sh | tr '\n' ' ')
export P2PSTORE_CORPUS
unformatted=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change: $unformatted" >&2
  exit 1
fi
go vet ./...
# Every package under the race detector, but for the end-to-end tests,
# whose test process only drives node processes and real Nix clients (its
# in-process libp2p peers take ten times as long under the detector): they
# run plain, and those that fetch, render and serve concurrently run once
# more with the node processes under the race detector.
go test -race -count=1 -timeout 20m $(go list ./... | grep -v '/cmd/p2pstore$')
go test -count=1 -timeout 20m ./cmd/p2pstore
P2PSTORE_RACE=1 go test -count=1 -timeout 20m \
  -run 'TestP2P(Chain|ConcurrentNARs|SlowClientRepeats|SeedDiesWhileNARStreams|StalledPeer|BadPeers)$|TestNARRangeWhileFetching|TestDaemonManyClients|TestDiskLimit|TestWANPullThroughOnce' \
  ./cmd/p2pstore
# Every parser of untrusted input, fuzzed for a bounded time on top of the
# seed corpora in testdata/fuzz that the run above replays.
# A run that fails without writing a failing input found nothing: Go's
# fuzzing coordinator can miss its own deadline on a loaded machine
# ("context deadline exceeded"); such a target runs once more.
fuzz_time=${P2PSTORE_FUZZ_TIME:-15s}
fuzz() {
  go test -run '^$' -fuzz "^${1#*:}\$" -fuzztime "$fuzz_time" "./${1%%:*}" >"$2" 2>&1
}
fuzz_log=$(mktemp)
trap 'rm -f "$fuzz_log"' EXIT
for target in narview/nar:FuzzIngest narview/narinfo:FuzzParse narview/sexp:FuzzParse narview/guix:FuzzParse narview/daemon:FuzzWire narview/daemon:FuzzServer narview/daemon:FuzzGuixServer \
  node/transfer:FuzzServe node/transfer:FuzzClient internal/httpserve:FuzzServe internal/lzip:FuzzReader; do
  if ! fuzz "$target" "$fuzz_log"; then
    grep -v '^fuzz: elapsed' "$fuzz_log"
    grep -q 'Failing input written' "$fuzz_log" && exit 1
    echo "$target: no failing input; running it again"
    fuzz "$target" "$fuzz_log" || { grep -v '^fuzz: elapsed' "$fuzz_log"; exit 1; }
  fi
  grep -v '^fuzz: elapsed' "$fuzz_log"
done
