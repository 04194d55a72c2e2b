#!/usr/bin/env bash
# Benchmarks sharing the local Nix store (local.share) and prints a Markdown
# table:
#   list     a store of LOCAL_PATHS (5,000) small signed paths: seconds from
#            the node's start until its status lists them all as shared
#   peer     node B (sharing nothing of its own, bootstrapped to A) serves
#            go1.25.0 to `nix copy --from http://B` into a fresh client
#            store, where the path is only in the Nix store of A's machine
#            (a store made with --store, A's local.root; never imported):
#            cold (local.copy_ahead off: A copies the path into its store
#            when B first asks), and once A's background copy is done
#            (copy_ahead on, the default); against the same with A given
#            the path by `p2pstore import` first. Fresh nodes for every
#            run, the kinds alternating
#
# Environment:
#   BENCH_DIR    scratch dir (default /dev/shm/p2pstore-localshare), wiped
#                at start
#   BENCH_RUNS   runs per kind, best kept (3)
#   LOCAL_PATHS  paths of the list measure (5000)
#
# Run as root (scripts/nix-env.sh may install Nix). Nodes listen on
# 127.0.0.61-64 only, mDNS off.
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C
source scripts/nix-env.sh
BENCH_DIR=${BENCH_DIR:-/dev/shm/p2pstore-localshare}
RUNS=${BENCH_RUNS:-3}
LOCAL_PATHS=${LOCAL_PATHS:-5000}
rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
BIN=$BENCH_DIR/p2pstore
go build -o "$BIN" ./cmd/p2pstore
# Every node started, also in subshells, so that none outlives the script.
PIDFILE=$BENCH_DIR/pids
cleanup() {
  local p
  [ -f "$PIDFILE" ] || return 0
  while read -r p; do kill "$p" 2>/dev/null || true; done <"$PIDFILE"
  wait 2>/dev/null || true
}
trap cleanup EXIT

die() { echo "localshare.sh: $*" >&2; exit 1; }
now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# start NAME IP ARGS...: a node with its data in $BENCH_DIR/NAME; sets PID.
start() {
  local name=$1 ip=$2; shift 2
  local dir=$BENCH_DIR/$name
  rm -rf "$dir"
  mkdir -p "$dir"
  "$BIN" serve --data-dir "$dir/data" --http-listen "$ip:17601" --p2p-listen "/ip4/$ip/tcp/17602" \
    --mdns=false "$@" >"$dir.log" 2>&1 &
  PID=$!
  echo "$PID" >>"$PIDFILE"
  local i
  for i in $(seq 200); do
    curl -sf "http://$ip:17601/api/v1/status" >/dev/null && return 0
    sleep 0.05
  done
  die "node $name did not start: $(tail -5 "$dir.log")"
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
status() { curl -sf "http://$1:17601/api/v1/status"; }
# wait_for IP JQ-CONDITION SECONDS
wait_for() {
  local deadline=$((SECONDS + $3))
  until status "$1" | jq -e "$2" >/dev/null; do
    [ $SECONDS -lt $deadline ] || die "$1: no $2 within $3 s"
    sleep 0.05
  done
}
keygen() { "$BIN" keygen --name "$1" --out "$2"; } # prints the public key

rows=()

# --- list: LOCAL_PATHS signed paths ---------------------------------------
list_store=$BENCH_DIR/machine-list
mkdir -p "$BENCH_DIR/src"
for i in $(seq "$LOCAL_PATHS"); do
  mkdir -p "$BENCH_DIR/src/p$i"
  echo "local path $i $RANDOM $EPOCHREALTIME" >"$BENCH_DIR/src/p$i/f"
done
(cd "$BENCH_DIR/src" && ls | sed "s|^|$BENCH_DIR/src/|" | xargs nix-store --store "$list_store" --add >/dev/null)
nix-store --generate-binary-cache-key bench-local-1 "$BENCH_DIR/local.sec" "$BENCH_DIR/local.pub"
LOCAL_PUB=$(cat "$BENCH_DIR/local.pub")
nix store sign --store "$list_store" --key-file "$BENCH_DIR/local.sec" --all
rm -rf "$BENCH_DIR/src"
t0=$(now)
start list 127.0.0.61 --share-local=true --local-root "$list_store" --trusted-public-key "$LOCAL_PUB"
wait_for 127.0.0.61 ".local_shared == $LOCAL_PATHS" 120
t1=$(now)
rss=$(awk '/VmHWM/ { print $2 }' "/proc/$PID/status")
stop "$PID"
rows+=("| $LOCAL_PATHS signed local paths listed as served, from the node's start | $(elapsed "$t0" "$t1") s (peak RSS $((rss / 1024)) MB) |")

# --- peer: a path only in A's machine's store, against after an import ----
P=$(scripts/corpus.sh go1.25.0 | sed -n 1p)
machine=$BENCH_DIR/machine-a
nix copy --no-check-sigs --to "$machine" "$P"
nix store sign --store "$machine" --key-file "$BENCH_DIR/local.sec" "$P"
# run KIND: one fresh A and B, B's client timed; prints seconds.
run() {
  local kind=$1 akey=$BENCH_DIR/a.sec apub
  rm -f "$akey"
  apub=$(keygen bench-a-1 "$akey")
  if [ "$kind" = cold ]; then
    start a 127.0.0.62 --sign-key-file "$akey" --share-local=true --local-root "$machine" --trusted-public-key "$LOCAL_PUB" \
      --local-copy-ahead=false
    wait_for 127.0.0.62 '.local_scanned and .local_shared >= 1' 60
  elif [ "$kind" = ahead ]; then
    start a 127.0.0.62 --sign-key-file "$akey" --share-local=true --local-root "$machine" --trusted-public-key "$LOCAL_PUB"
    wait_for 127.0.0.62 '.local_scanned and .local_shared >= 1 and .paths >= 1' 120
  else
    start a 127.0.0.62 --sign-key-file "$akey" --share-local=false
    "$BIN" import --sign "$P" --data-dir "$BENCH_DIR/a/data" >/dev/null
  fi
  local apid=$PID addr
  addr=$(status 127.0.0.62 | jq -r '.addrs[0]')
  start b 127.0.0.63 --share-local=false --bootstrap "$addr" --trusted-public-key "$LOCAL_PUB" --trusted-public-key "$apub"
  local bpid=$PID
  wait_for 127.0.0.63 '.peers >= 1' 30
  rm -rf "$BENCH_DIR/client"
  local t0 t1
  t0=$(now)
  nix copy --from http://127.0.0.63:17601 --to "$BENCH_DIR/client" "$P" \
    --option trusted-public-keys "$LOCAL_PUB $apub" 2>>"$BENCH_DIR/nix.log"
  t1=$(now)
  stop "$bpid"
  stop "$apid"
  rm -rf "$BENCH_DIR/client" "$BENCH_DIR/a" "$BENCH_DIR/b"
  elapsed "$t0" "$t1"
}
declare -A best all
for i in $(seq "$RUNS"); do
  for kind in cold ahead import; do
    s=$(run "$kind")
    all[$kind]+=" $s"
    if [ -z "${best[$kind]:-}" ] || awk -v a="$s" -v b="${best[$kind]}" 'BEGIN { exit !(a < b) }'; then
      best[$kind]=$s
    fi
  done
done
ratio() { awk -v a="${best[$1]}" -v b="${best[import]}" 'BEGIN { printf "%.2f", a / b }'; }
nar=$(nix path-info --json "$P" | jq '.[0].narSize')
rows+=("| go1.25.0 ($((nar / 1000000)) MB NAR) through B, only in A's machine's Nix store, cold (copied when B asks) | ${best[cold]} s (runs:${all[cold]}), $(ratio cold)x |")
rows+=("| the same once A's background copy is done (local.copy_ahead) | ${best[ahead]} s (runs:${all[ahead]}), $(ratio ahead)x |")
rows+=("| the same after \`p2pstore import\` on A (the 1x; target at most 1.2x) | ${best[import]} s (runs:${all[import]}) |")

echo
echo "| measure | result |"
echo "|---|---|"
printf '%s\n' "${rows[@]}"
