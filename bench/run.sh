#!/usr/bin/env bash
# Benchmarks a p2pstore node side by side with nginx serving the same store
# paths as a static Nix binary cache, and prints a Markdown table.
#
#   bench/run.sh [serve|e2e|narinfo|closure|dedup|ingest|p2p|swarm|dht|daemon|load|upstream|upstream-dedup|upstream-faults|upstream-wan|guix|all]...
#                (default: all)
#
#   serve    NAR throughput over loopback with bench/httpclient: one GET on
#            a fresh connection, and GETs on 16 connections for
#            BENCH_SECONDS; the node's peak RSS. The node serves the NAR
#            from its NAR cache (made after the second request, waited
#            for); NAR_CACHE=0 measures the NAR rendered from castore
#   e2e      `nix copy` of the go1.25.0 toolchain into a fresh client store,
#            uncompressed and zstd
#   narinfo  373 narinfo GETs, sequential keep-alive and 16-way concurrent
#   closure  the access patterns of real clients on a closure of 421 small
#            paths (bench/closure.nix): `nix path-info -r` and `nix copy`
#            (Nix 2.8 asks one request at a time, on one connection), and
#            1,000 narinfo GETs pipelined on one connection (as Guix asks)
#   dedup    new bytes stored when go1.25.1 is imported after go1.25.0
#   ingest   the BenchmarkIngest Go benchmark (NAR -> castore, one core)
#   p2p      a cold node C (knowing only A) serving go1.25.0 to nix copy as
#            it fetches it from A, against nginx; p2pstore fetch speed
#            from one peer; bytes moved for go1.25.1 after go1.25.0
#   swarm    fetch from one and from two seeders in network namespaces,
#            each uplink capped with tc (SWARM_RATE, default 200mbit)
#   dht      lookup latency and announcing 100k keys, 10 in-process nodes
#   load     `nix copy` of go1.25.0 from the node while bench/loadgen holds
#            it under careless and hostile clients (LOAD_STALLED stalled
#            HTTP clients per NAR kind, LOAD_DAEMON daemon-socket clients,
#            LOAD_IDENTITIES libp2p identities holding transfer streams),
#            against the same copy with the node idle; the node's peak RSS
#   daemon   `nix copy --from` go1.25.0 over ssh-ng (the node's `daemon
#            --stdio` against `nix-daemon --stdio`), and over unix:// (the
#            node's socket with its FUSE mount as ?real= against a real
#            nix-daemon's socket, which reads /nix/store)
#   upstream `nix-store -r` of go1.25.0 into a fresh client store through a
#            cold pull-through node (a fresh data dir each run, nginx's
#            zstd or xz cache of go1.25.0 as its upstream, each connection
#            capped at UPSTREAM_RATE by nginx's limit_rate) against
#            straight from that upstream; a second client through the now
#            warm node; four clients at once through a cold node (the
#            upstream's bytes sent, the last client's time); the node's
#            peak RSS
#   upstream-dedup  a pull-through node pulls go1.25.0 then go1.25.1 from
#            the zstd upstream: the new bytes it stores for go1.25.1; a
#            second node (no upstream, knowing the first) that holds
#            go1.25.0 fetches go1.25.1 from the first: the bytes it moves
#   upstream-faults  a node with two upstreams, one that accepts
#            connections and never answers and the working zstd one: the
#            slowest of 50 narinfo answers (hits and misses), and
#            `nix-store -r` of go1.25.0 with substituters "node, working
#            upstream" against the same through a node without the hung one
#   upstream-wan  the upstream on a WAN link capped by tc tbf (WAN_RATE)
#            instead of nginx's limit_rate: nginx in a network namespace
#            behind that link, nodes A and B (both with that upstream) in
#            namespaces of their own on the uncapped LAN side (a bridge),
#            the Nix client in the machine's own namespace on the bridge.
#            `nix-store -r` of go1.25.0 through a cold A against straight
#            from the upstream over the link; then through a fresh B that
#            knows A (A warm): B's copy against straight from the upstream,
#            and the bytes the WAN link carried for each
#   guix     the node's Guix listener against nginx serving the same files:
#            1,000 Guix narinfo GETs pipelined on one connection (373 small
#            Guix paths; nginx serves the node's narinfos as static files),
#            and go1.25.0's tree as a /gnu/store path served zstd (nginx: a
#            .zst of its NAR made by zstd -3), one GET and 16 connections,
#            in NAR bytes per second
#
# Environment:
#   BENCH_DIR      scratch dir, on tmpfs (default /dev/shm/p2pstore-bench);
#                  wiped at start, its big data removed at exit
#   BENCH_RUNS     alternating node/nginx runs per measure, best kept (5)
#   BENCH_SECONDS  duration of each 16-connection run (5)
#   BENCH_BASE_REV a git revision: its build runs as a second node beside
#                  the first, and the narinfo and closure measures add a
#                  row for it (two builds compared in one run)
#   NAR_CACHE      the node's storage.nar_cache_bytes (default 2G; 0: every
#                  NAR rendered from castore)
#   BENCH_KEEP=1   keep the stores and caches in BENCH_DIR at exit
#   UPSTREAM_RATE  nginx limit_rate of the upstream section's cache, bytes/s
#                  per connection (12500k: 100 mbit; 0 for no cap)
#   WAN_RATE       tc tbf rate of the upstream-wan section's WAN link, both
#                  ways (100mbit)
#   NODE_PORT, NGINX_PORT, P2P_PORT, SSH_PORT   loopback ports (17480-17483;
#                  the base node takes NODE_PORT+20 and P2P_PORT+20, the
#                  upstream sections NODE_PORT+30/+40/+50, NGINX_PORT+30,
#                  P2P_PORT+30/+50)
#
# Run as root: scripts/nix-env.sh may install Nix, and nginx, curl (and
# openssh-server for daemon) are installed with apt-get when missing.
# Every server listens on 127.0.0.1, but those of swarm and upstream-wan,
# which listen in network namespaces of their own on a bridge the script
# makes (10.77.0.0/24 and 10.76.0.0/24).
set -euo pipefail
shopt -s inherit_errexit
export LC_ALL=C # a '.' decimal point in $EPOCHREALTIME, awk and printf
# Bench nodes share only what the bench gives them, never this machine's
# own Nix store (local.share; an environment setting, which a baseline
# binary without it ignores).
export P2PSTORE_LOCAL_SHARE=false

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"

# The command line as given, with the settings that change results, so the
# report says exactly how to reproduce it.
CMDLINE="bench/run.sh${*:+ $*}"
for v in BENCH_RUNS BENCH_SECONDS BENCH_DIR BENCH_BASE_REV NODE_PORT NGINX_PORT P2P_PORT SSH_PORT GUIX_PORT LOAD_STALLED LOAD_DAEMON LOAD_IDENTITIES UPSTREAM_RATE WAN_RATE NAR_CACHE; do
  if [ -n "${!v:-}" ]; then CMDLINE="$v=${!v} $CMDLINE"; fi
done

BENCH_DIR=${BENCH_DIR:-/dev/shm/p2pstore-bench}
RUNS=${BENCH_RUNS:-5}
SECONDS_PER_RUN=${BENCH_SECONDS:-5}
NODE_PORT=${NODE_PORT:-17480}
NGINX_PORT=${NGINX_PORT:-17481}
P2P_PORT=${P2P_PORT:-17482}
SSH_PORT=${SSH_PORT:-17483}
GUIX_PORT=${GUIX_PORT:-17484}
NARINFO_PATHS=373
PIPELINED=1000
BASE_REV=${BENCH_BASE_REV:-}
LOAD_STALLED=${LOAD_STALLED:-50}
LOAD_DAEMON=${LOAD_DAEMON:-32}
LOAD_IDENTITIES=${LOAD_IDENTITIES:-48}
UPSTREAM_RATE=${UPSTREAM_RATE:-12500k}

BIN=$BENCH_DIR/p2pstore
SOCK=$BENCH_DIR/node.sock
LOGS=$BENCH_DIR/logs
NOTES=$BENCH_DIR/notes.txt
NODE_URL=http://127.0.0.1:$NODE_PORT
BASE_URL=http://127.0.0.1:$((NODE_PORT + 20))
CLIENT=$BENCH_DIR/httpclient
NGINX_URL=http://127.0.0.1:$NGINX_PORT
GUIX_URL=http://127.0.0.1:$GUIX_PORT
# The same caches at the upstream's rate (the upstream section).
UPSTREAM_URL=http://127.0.0.1:$((NGINX_PORT + 30))
# Nix keeps a narinfo cache under $XDG_CACHE_HOME; a private one keeps runs
# independent of each other and of the user's cache.
export XDG_CACHE_HOME=$BENCH_DIR/xdg-cache

PIDS=()     # background processes to stop at exit
ROWS=()     # table rows, in order
NODE_PID=""
BASE_PID=""

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
note() { echo "$*" >>"$NOTES"; log "note: $*"; }

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
  exit 2
}

# ---------------------------------------------------------------- cleanup

cleanup() {
  local rc=$? pid t
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  # Give each a bounded grace period, then force it.
  for pid in "${PIDS[@]}"; do
    for ((t = 0; t < 50; t++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  # A node killed before it unmounted leaves a dead FUSE mount.
  umount -l "$BENCH_DIR/mnt" 2>/dev/null || true
  if [ -n "${SWARM_READY:-}" ]; then swarm_teardown; fi
  if [ "${WAN_READY:-}" = 1 ]; then wan_teardown; fi
  # The stores and caches are a gigabyte of RAM on tmpfs; keep only the
  # logs and the results unless asked to keep everything.
  if [ -z "${BENCH_KEEP:-}" ] && [ -f "$BENCH_DIR/.p2pstore-bench" ]; then
    rm -rf "$BENCH_DIR"/{node,node-base,node-pull,node-pull2,hung-src,base-src,node-c,swarm-*,wan-*,static,client-*,narinfo-src,xdg-cache,go-tmp*,p2pstore,key.sec,ssh,mnt} 2>/dev/null || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers

now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", b - a }'; }
# calc EXPR: floating-point arithmetic with awk.
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }
fmt() { awk -v v="$2" "BEGIN { printf \"$1\", v }"; }

# best max|min VALUE...: the best of several runs.
best() {
  local mode=$1; shift
  if [ "$mode" = max ]; then printf '%s\n' "$@" | sort -g | tail -n1
  else printf '%s\n' "$@" | sort -g | head -n1; fi
}

# met floor|ceiling VALUE TARGET: yes or no.
met() {
  awk -v k="$1" -v v="$2" -v t="$3" 'BEGIN {
    ok = (k == "floor") ? (v >= t) : (v <= t); print ok ? "yes" : "**no**" }'
}

row() { ROWS+=("| $1 | $2 | $3 | $4 | $5 | $6 |"); }

# port_free PORT: nothing listens on 127.0.0.1:PORT.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for DESCRIPTION PID CMD...: polls CMD (bounded, 30 s) until it
# succeeds, failing early if PID dies.
wait_for() {
  local what=$1 pid=$2 i; shift 2
  for ((i = 0; i < 300; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    kill -0 "$pid" 2>/dev/null || die "$what exited while starting; see $LOGS"
    sleep 0.1
  done
  die "$what did not come up within 30 s; see $LOGS"
}

# p2p CMD ARGS...: a p2pstore command against the bench node.
p2p() {
  local cmd=$1; shift
  P2PSTORE_DATA_DIR=$BENCH_DIR/node "$BIN" "$cmd" --daemon-socket "$SOCK" "$@"
}

# json_num FIELD: a number field from pretty-printed JSON on stdin.
json_num() { sed -n "s/.*\"$1\": *\([0-9.e+-]*\).*/\1/p" | head -n1; }

# nar_hash [--store STORE] PATH: the narHash Nix recorded for PATH, in SRI
# form (Nix versions differ in the form path-info prints).
nar_hash() {
  local h
  h=$(nix path-info --json "$@" | grep -o '"narHash":"[^"]*"' | head -n1 | cut -d'"' -f4)
  [ -n "$h" ] || die "no narHash for $*"
  nix hash to-sri "$h"
}

hash_part() { basename "$1" | cut -c1-32; }

# pair_best MODE FN ARGS...: runs `FN node RUN ARGS` and `FN nginx RUN ARGS`
# (and `FN base RUN ARGS` when WITH_BASE is set and the base node runs)
# BENCH_RUNS times each, rotating which goes first every round so that the
# noise of a busy machine falls on all alike, and sets BEST_NODE,
# BEST_NGINX (and BEST_BASE) to the best result (MODE max or min). FN
# prints one number.
pair_best() {
  local mode=$1 fn=$2 i j side v; shift 2
  local node_vals=() nginx_vals=() base_vals=() sides=(node nginx) order
  if [ -n "${WITH_BASE:-}" ] && [ -n "$BASE_PID" ]; then sides=(node base nginx); fi
  for ((i = 1; i <= RUNS; i++)); do
    order=()
    for ((j = 0; j < ${#sides[@]}; j++)); do order+=("${sides[(i - 1 + j) % ${#sides[@]}]}"); done
    for side in "${order[@]}"; do
      v=$("$fn" "$side" "$i" "$@")
      log "  run $i $side: $v"
      case $side in node) node_vals+=("$v") ;; base) base_vals+=("$v") ;; *) nginx_vals+=("$v") ;; esac
    done
  done
  BEST_NODE=$(best "$mode" "${node_vals[@]}")
  BEST_NGINX=$(best "$mode" "${nginx_vals[@]}")
  BEST_BASE=""
  if ((${#base_vals[@]})); then BEST_BASE=$(best "$mode" "${base_vals[@]}"); fi
}

# side_url SIDE: the root of the uncompressed binary cache of a side.
side_url() {
  case $1 in node) echo "$NODE_URL" ;; base) echo "$BASE_URL" ;; *) echo "$NGINX_URL/none" ;; esac
}

# ceiling_rows LABEL FORMAT TARGET: the row of a time measure (lower is
# better) just made by pair_best, and the base node's when it ran.
ceiling_rows() {
  local label=$1 f=$2 target=$3 ratio
  ratio=$(calc "$BEST_NODE/$BEST_NGINX")
  row "$label" "$(fmt "$f" "$BEST_NODE")" "$(fmt "$f" "$BEST_NGINX")" "$(fmt '%.2f' "$ratio")" "≤ $target" "$(met ceiling "$ratio" "$target")"
  [ -n "$BEST_BASE" ] || return 0
  ratio=$(calc "$BEST_BASE/$BEST_NGINX")
  row "$label (node at $BASE_REV)" "$(fmt "$f" "$BEST_BASE")" "$(fmt "$f" "$BEST_NGINX")" "$(fmt '%.2f' "$ratio")" "≤ $target" "$(met ceiling "$ratio" "$target")"
}

# ---------------------------------------------------------------- setup

# Nix, nginx, curl; the corpus; a clean scratch dir.
setup_common() {
  [ "$(id -u)" = 0 ] || die "run as root (Nix is used single-user, and packages may be installed)"
  # shellcheck source=scripts/nix-env.sh
  source scripts/nix-env.sh
  local missing=()
  command -v nginx >/dev/null 2>&1 || missing+=(nginx)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  [ -x /usr/sbin/sshd ] || missing+=(openssh-server openssh-client)
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    # Debian's nginx package starts a system nginx on port 80 where it can;
    # a policy-rc.d that refuses (exit 101) keeps it from doing so.
    local policy=/usr/sbin/policy-rc.d made_policy=""
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
    fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || { [ -z "$made_policy" ] || rm -f "$policy"; die "apt-get install ${missing[*]} failed"; }
    [ -z "$made_policy" ] || rm -f "$policy"
  fi

  # Wipe only a dir this script made (it carries a marker), never an
  # arbitrary one that BENCH_DIR happens to point at.
  if [ -e "$BENCH_DIR" ]; then
    if [ -f "$BENCH_DIR/.p2pstore-bench" ]; then
      rm -rf "$BENCH_DIR"
    elif [ -n "$(ls -A "$BENCH_DIR")" ]; then
      die "$BENCH_DIR exists, is not empty and was not made by this script"
    fi
  fi
  mkdir -p "$BENCH_DIR" "$LOGS"
  touch "$BENCH_DIR/.p2pstore-bench" "$NOTES"
  if [ "$(stat -f -c %T "$BENCH_DIR")" != tmpfs ]; then
    note "BENCH_DIR is not on tmpfs: disk speed is part of the results"
  fi

  log "preparing the corpus (scripts/corpus.sh)"
  local corpus
  corpus=$(scripts/corpus.sh 2>"$LOGS/corpus.log") || die "scripts/corpus.sh failed; see $LOGS/corpus.log"
  GO0=$(sed -n 1p <<<"$corpus")
  GO1=$(sed -n 2p <<<"$corpus")
  [[ $GO0 == */nix/store/*-go1.25.0 && $GO1 == */nix/store/*-go1.25.1 ]] \
    || die "unexpected corpus.sh output: $corpus"
  SRC_NARHASH=$(nar_hash "$GO0")
  GO0_NARSIZE=$(nix path-info --json "$GO0" | grep -o '"narSize":[0-9]*' | head -n1 | cut -d: -f2)
  log "main path $GO0 ($((GO0_NARSIZE / 1000000)) MB NAR)"
}

NODE_STARTED=""
# Builds the binary, makes a signing key and starts the node with go1.25.0.
start_node() {
  [ -z "$NODE_STARTED" ] || return 0
  NODE_STARTED=1
  log "building p2pstore and bench/httpclient"
  go build -o "$BIN" ./cmd/p2pstore
  go build -o "$CLIENT" ./bench/httpclient
  PUBKEY=$("$BIN" keygen --name bench-1 --out "$BENCH_DIR/key.sec" --force)
  "$BIN" keygen --guix --out "$BENCH_DIR/guix.sec" --force >/dev/null
  port_free "$NODE_PORT" || die "port $NODE_PORT is in use; set NODE_PORT"
  port_free "$GUIX_PORT" || die "port $GUIX_PORT is in use; set GUIX_PORT"
  port_free "$P2P_PORT" || die "port $P2P_PORT is in use; set P2P_PORT"
  # libp2p on loopback only and no mDNS: nothing of the bench leaves the
  # machine.
  P2PSTORE_DATA_DIR=$BENCH_DIR/node "$BIN" serve \
    --sign-key-file "$BENCH_DIR/key.sec" --sign-imports \
    --http-listen "127.0.0.1:$NODE_PORT" \
    --guix-http-listen "127.0.0.1:$GUIX_PORT" --guix-sign-key-file "$BENCH_DIR/guix.sec" \
    --daemon-socket "$SOCK" \
    --p2p-listen "/ip4/127.0.0.1/tcp/$P2P_PORT" --mdns=false \
    --mount "$BENCH_DIR/mnt" --nar-cache-bytes "${NAR_CACHE:-2G}" \
    >"$LOGS/node.log" 2>&1 &
  NODE_PID=$!
  PIDS+=("$NODE_PID")
  wait_for "the node" "$NODE_PID" p2p status
  log "node up (pid $NODE_PID); importing go1.25.0"
  p2p import "$GO0" >>"$LOGS/import.log" 2>&1 || die "import failed; see $LOGS/import.log"
  tail -n1 "$LOGS/import.log" >&2
}

# start_base: when BENCH_BASE_REV is set, builds that revision and starts
# it as a second node (HTTP and the narinfo and closure paths only), to
# compare two builds in one run.
start_base() {
  [ -n "$BASE_REV" ] && [ -z "$BASE_PID" ] || return 0
  start_node # the key
  log "building p2pstore at $BASE_REV"
  rm -rf "$BENCH_DIR/base-src"
  mkdir -p "$BENCH_DIR/base-src"
  git -C "$REPO" archive "$BASE_REV" | tar -x -C "$BENCH_DIR/base-src" || die "cannot check out $BASE_REV"
  (cd "$BENCH_DIR/base-src" && go build -o "$BENCH_DIR/p2pstore-base" ./cmd/p2pstore) || die "cannot build $BASE_REV"
  port_free "$((NODE_PORT + 20))" || die "port $((NODE_PORT + 20)) is in use; set NODE_PORT"
  P2PSTORE_DATA_DIR=$BENCH_DIR/node-base "$BENCH_DIR/p2pstore-base" serve \
    --sign-key-file "$BENCH_DIR/key.sec" --sign-imports --http-listen "${BASE_URL#http://}" \
    --daemon-socket "$BENCH_DIR/node-base.sock" --p2p-listen "/ip4/127.0.0.1/tcp/$((P2P_PORT + 20))" --mdns=false \
    >"$LOGS/node-base.log" 2>&1 &
  BASE_PID=$!
  PIDS+=("$BASE_PID")
  wait_for "the base node" "$BASE_PID" "$BENCH_DIR/p2pstore-base" status --daemon-socket "$BENCH_DIR/node-base.sock"
  log "base node ($BASE_REV) up (pid $BASE_PID)"
}

# base_import ARGS...: p2pstore import into the base node, if it runs.
base_import() {
  [ -n "$BASE_PID" ] || return 0
  "$BENCH_DIR/p2pstore-base" import --daemon-socket "$BENCH_DIR/node-base.sock" "$@" >>"$LOGS/import-base.log" 2>&1 \
    || die "import into the base node failed; see $LOGS/import-base.log"
}

# node_cpu_ticks: user + system CPU time the node has used, in clock ticks.
node_cpu_ticks() { sed 's/.*) //' "/proc/${1:-$NODE_PID}/stat" | awk '{ print $12 + $13 }'; }

# wait_node_idle [PID SOCKET]: after an import the node keeps working in
# the background (it makes the zstd frames of new chunks); measuring
# before it is done would charge that work to whatever runs next. Waits,
# bounded (120 s), until every chunk is compressed (if the node reports
# it) and the node uses under 5% of a core over half a second. Without
# arguments, the bench node.
wait_node_idle() {
  local pid=${1:-$NODE_PID} sock=${2:-$SOCK}
  [ -n "$pid" ] || return 0
  local i st chunks done_chunks t0 t1
  for ((i = 0; i < 240; i++)); do
    st=$("$BIN" status --json --daemon-socket "$sock")
    chunks=$(json_num chunks <<<"$st")
    done_chunks=$(json_num chunks_compressed <<<"$st")
    t0=$(node_cpu_ticks "$pid")
    sleep 0.5
    t1=$(node_cpu_ticks "$pid")
    if { [ -z "$done_chunks" ] || [ "$done_chunks" -ge "$chunks" ]; } && ((t1 - t0 <= 2)); then
      return 0
    fi
  done
  note "the node was still busy after 120 s of waiting for it to go idle"
}

# static_cache none|zstd PATH...: adds paths to a file:// binary cache that
# nginx serves at /none/ or /zstd/, signed with the node's key.
static_cache() {
  local comp=$1; shift
  nix copy --to "file://$BENCH_DIR/static/$comp?compression=$comp&secret-key=$BENCH_DIR/key.sec" \
    "$@" >>"$LOGS/static-cache.log" 2>&1 || die "nix copy to the $comp cache failed; see $LOGS/static-cache.log"
}

# nginx_conf DIR ERROR_LOG SERVERS: writes DIR/nginx.conf, tuned as a
# binary cache would be (sendfile, no access log, long-lived keep-alive
# connections), with the server blocks SERVERS. Workers run as root
# because the files are root's in a private scratch dir.
nginx_conf() {
  local d=$1
  mkdir -p "$d/tmp"
  cat >"$d/nginx.conf" <<EOF
user root;
worker_processes auto;
daemon off;
pid $d/nginx.pid;
error_log $2 warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_requests 1000000;
  keepalive_timeout 65;
  client_body_temp_path $d/tmp/body;
  proxy_temp_path $d/tmp/proxy;
  fastcgi_temp_path $d/tmp/fastcgi;
  uwsgi_temp_path $d/tmp/uwsgi;
  scgi_temp_path $d/tmp/scgi;
  types {
    text/x-nix-narinfo narinfo;
    text/x-nix-cache-info nix-cache-info;
  }
  default_type application/octet-stream;
$3
}
EOF
}

NGINX_STARTED=""
# Makes the static caches of go1.25.0 and starts nginx on them.
start_nginx() {
  [ -z "$NGINX_STARTED" ] || return 0
  NGINX_STARTED=1
  start_node # for the key
  log "making static binary caches of go1.25.0 (none, zstd)"
  static_cache none "$GO0"
  static_cache zstd "$GO0"
  port_free "$NGINX_PORT" || die "port $NGINX_PORT is in use; set NGINX_PORT"
  port_free "$((NGINX_PORT + 30))" || die "port $((NGINX_PORT + 30)) is in use; set NGINX_PORT"
  local d=$BENCH_DIR/nginx
  nginx_conf "$d" "$LOGS/nginx-error.log" "
  server {
    listen 127.0.0.1:$NGINX_PORT;
    root $BENCH_DIR/static; # /none/ and /zstd/ are the two caches
  }
  server {
    listen 127.0.0.1:$((NGINX_PORT + 30));
    root $BENCH_DIR/static;
    limit_rate $UPSTREAM_RATE; # per connection: the upstream's link
  }"
  nginx -p "$d" -e "$LOGS/nginx-error.log" -c "$d/nginx.conf" >"$LOGS/nginx.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  wait_for nginx "$pid" curl -fsS "$NGINX_URL/none/nix-cache-info"
  log "nginx up (pid $pid)"
}

NARINFO_READY=""
# Adds 373 small paths to the Nix store, the node and the static cache, for
# the narinfo benchmark.
make_narinfo_paths() {
  [ -z "$NARINFO_READY" ] || return 0
  NARINFO_READY=1
  start_nginx
  log "adding $NARINFO_PATHS small store paths"
  local src=$BENCH_DIR/narinfo-src i dirs=()
  for ((i = 1; i <= NARINFO_PATHS; i++)); do
    mkdir -p "$src/p2pstore-bench-$i"
    echo "$i" >"$src/p2pstore-bench-$i/index" # deterministic: same paths every time
    dirs+=("$src/p2pstore-bench-$i")
  done
  mapfile -t NARINFO_STORE_PATHS < <(nix-store --add "${dirs[@]}")
  ((${#NARINFO_STORE_PATHS[@]} == NARINFO_PATHS)) || die "nix-store --add made ${#NARINFO_STORE_PATHS[@]} paths"
  p2p import "${NARINFO_STORE_PATHS[@]}" >>"$LOGS/import.log" 2>&1 || die "import failed; see $LOGS/import.log"
  tail -n1 "$LOGS/import.log" >&2
  base_import "${NARINFO_STORE_PATHS[@]}"
  static_cache none "${NARINFO_STORE_PATHS[@]}"
  # curl config files: one with every URL, and 16 batches for the
  # concurrent variant.
  local side base p n
  for side in node base nginx; do
    base=$(side_url "$side")
    : >"$BENCH_DIR/narinfo-$side.curl"
    for ((n = 0; n < 16; n++)); do : >"$BENCH_DIR/narinfo-$side-$n.curl"; done
    n=0
    for p in "${NARINFO_STORE_PATHS[@]}"; do
      printf 'url = "%s/%s.narinfo"\noutput = "/dev/null"\n' "$base" "$(hash_part "$p")" \
        | tee -a "$BENCH_DIR/narinfo-$side-$((n % 16)).curl" >>"$BENCH_DIR/narinfo-$side.curl"
      n=$((n + 1))
    done
  done
}

# nar_url node|nginx [zstd]: the NAR URL from the server's narinfo.
nar_url() {
  local base=$NODE_URL rel
  if [ "$1" = nginx ]; then base=$NGINX_URL/${2:-none}; elif [ "${2:-none}" = zstd ]; then base=$NODE_URL/zstd; fi
  rel=$(curl -fsS "$base/$(hash_part "$GO0").narinfo" | sed -n 's/^URL: //p')
  [ -n "$rel" ] || die "no URL in the $1 narinfo of $GO0"
  echo "$base/$rel"
}

# check_nar URL: the uncompressed NAR there hashes to go1.25.0's narHash, so
# that the throughput runs measure correct answers.
check_nar() {
  local hex got
  hex=$(curl -fsS "$1" | sha256sum | cut -d' ' -f1)
  got=$(nix hash to-sri --type sha256 "$hex")
  [ "$got" = "$SRC_NARHASH" ] || die "NAR at $1 hashes to $got, not $SRC_NARHASH"
}

# ---------------------------------------------------------------- measures

# zst_once SIDE RUN CONNS: uncompressed NAR bytes/s of .nar.zst downloads
# (the two sides compress differently: the rate of the compressed bytes
# times the NAR's size over the .nar.zst's).
zst_once() {
  local side=$1 run=$2 conns=$3 url size rate
  url=$([ "$side" = node ] && echo "$NODE_ZST" || echo "$NGINX_ZST")
  size=$([ "$side" = node ] && echo "$NODE_ZST_SIZE" || echo "$NGINX_ZST_SIZE")
  if [ "$conns" = 1 ]; then
    rate=$("$CLIENT" get "$url" 2>>"$LOGS/httpclient.log") || die "httpclient get $url failed; see $LOGS/httpclient.log"
  else
    rate=$("$CLIENT" load -c "$conns" -d "${SECONDS_PER_RUN}s" "$url" 2>>"$LOGS/httpclient.log") \
      || die "httpclient load $url failed; see $LOGS/httpclient.log"
  fi
  calc "$rate*$GO0_NARSIZE/$size"
}

# nar_once SIDE RUN CONNS: bytes/s of NAR downloads with bench/httpclient:
# one GET on a fresh connection, or GETs on CONNS connections for
# BENCH_SECONDS. Its reads take a megabyte at a time straight from the
# socket: against nginx it reads a NAR faster than curl (16 KiB reads)
# and wrk (one thread, about 1.3-1.4 GB/s here), which were the limit.
nar_once() {
  local side=$1 run=$2 conns=$3 url
  url=$([ "$side" = node ] && echo "$NODE_NAR" || echo "$NGINX_NAR")
  if [ "$conns" = 1 ]; then
    "$CLIENT" get "$url" 2>>"$LOGS/httpclient.log" || die "httpclient get $url failed; see $LOGS/httpclient.log"
  else
    "$CLIENT" load -c "$conns" -d "${SECONDS_PER_RUN}s" "$url" 2>>"$LOGS/httpclient.log" \
      || die "httpclient load $url failed; see $LOGS/httpclient.log"
  fi
}

bench_serve() {
  start_nginx
  NODE_NAR=$(nar_url node)
  NGINX_NAR=$(nar_url nginx)
  log "checking the NARs both serve"
  check_nar "$NODE_NAR"
  check_nar "$NGINX_NAR"
  local rss conns label i source="rendered from castore"
  if [ "${NAR_CACHE:-2G}" != 0 ]; then
    # The second whole request admits the NAR to the cache: wait for its
    # file, so that every run measures the same thing.
    check_nar "$NODE_NAR"
    for ((i = 0; i < 120; i++)); do
      [ "$(p2p status --json | json_num nar_cache_entries)" -ge 1 ] && break
      sleep 0.5
    done
    [ "$(p2p status --json | json_num nar_cache_entries)" -ge 1 ] || die "the node did not cache the NAR in 60 s"
    source="from the NAR cache"
  fi
  rss=$(awk '/^VmHWM/ { print $2 }' "/proc/$NODE_PID/status")
  log "node VmHWM after the imports: $((rss / 1024)) MiB"
  for conns in 1 16; do
    label="NAR throughput, go1.25.0, 1 GET on a fresh connection (httpclient; node $source)"
    if [ "$conns" != 1 ]; then label="NAR throughput, go1.25.0, $conns connections for ${SECONDS_PER_RUN} s (httpclient; node $source)"; fi
    log "$label, $RUNS runs each"
    pair_best max nar_once "$conns"
    row "$label" \
      "$(fmt '%.0f MB/s' "$(calc "$BEST_NODE/1e6")")" "$(fmt '%.0f MB/s' "$(calc "$BEST_NGINX/1e6")")" \
      "$(fmt '%.2f' "$(calc "$BEST_NODE/$BEST_NGINX")")" "≥ 0.8" \
      "$(met floor "$(calc "$BEST_NODE/$BEST_NGINX")" 0.8)"
  done
  # .nar.zst: the node splices the chunks' stored zstd frames (made in
  # the background after the import: waited for); nginx sends the
  # precompressed file of `nix copy --to file://...?compression=zstd`.
  wait_node_idle
  NODE_ZST=$(nar_url node zstd)
  NGINX_ZST=$(nar_url nginx zstd)
  NODE_ZST_SIZE=$(curl -fsS "$NODE_ZST" | wc -c)
  NGINX_ZST_SIZE=$(curl -fsS "$NGINX_ZST" | wc -c)
  [ "$(curl -fsS "$NODE_ZST" | zstd -dc | sha256sum | cut -d' ' -f1)" = "$(curl -fsS "$NODE_NAR" | sha256sum | cut -d' ' -f1)" ] \
    || die "the node's .nar.zst does not decompress to its NAR"
  log "go1.25.0 .nar.zst: node $NODE_ZST_SIZE bytes, nginx $NGINX_ZST_SIZE bytes"
  for conns in 1 16; do
    label="go1.25.0 .nar.zst ($((NODE_ZST_SIZE / 1000000)) MB from the node, $((NGINX_ZST_SIZE / 1000000)) MB from nginx), 1 GET on a fresh connection: NAR bytes/s (httpclient)"
    if [ "$conns" != 1 ]; then label="go1.25.0 .nar.zst, $conns connections for ${SECONDS_PER_RUN} s: NAR bytes/s (httpclient)"; fi
    log "$label, $RUNS runs each"
    pair_best max zst_once "$conns"
    row "$label" \
      "$(fmt '%.0f MB/s' "$(calc "$BEST_NODE/1e6")")" "$(fmt '%.0f MB/s' "$(calc "$BEST_NGINX/1e6")")" \
      "$(fmt '%.2f' "$(calc "$BEST_NODE/$BEST_NGINX")")" "≥ 0.8" \
      "$(met floor "$(calc "$BEST_NODE/$BEST_NGINX")" 0.8)"
  done
  # VmHWM is the peak over the node's life: the imports and the serving.
  rss=$(awk '/^VmHWM/ { print $2 }' "/proc/$NODE_PID/status")
  log "node VmHWM after the 16-connection runs: $((rss / 1024)) MiB"
  row "node peak RSS (VmHWM after the 16-conn runs)" "$(fmt '%.0f MiB' "$(calc "$rss/1024")")" "—" "—" "≤ 150 MiB" \
    "$(met ceiling "$(calc "$rss/1024")" 150)"
}

# e2e_once SIDE RUN COMPRESSION: seconds for `nix copy` of go1.25.0 into a
# fresh client store.
e2e_once() {
  local side=$1 run=$2 comp=$3 url client t0 t1 got
  url=$NGINX_URL/$comp
  if [ "$side" = node ]; then
    url=$NODE_URL
    if [ "$comp" = zstd ]; then url=$NODE_URL/zstd; fi
  fi
  client=$BENCH_DIR/client-$run
  chmod -R u+w "$client" 2>/dev/null || true
  rm -rf "$client" "$XDG_CACHE_HOME"
  t0=$(now)
  nix copy --from "$url" --to "$client" "$GO0" \
    --option trusted-public-keys "$PUBKEY" \
    --option narinfo-cache-positive-ttl 0 --option narinfo-cache-negative-ttl 0 \
    >>"$LOGS/e2e-$side-$comp.log" 2>&1 || die "nix copy from $url failed; see $LOGS/e2e-$side-$comp.log"
  t1=$(now)
  got=$(nar_hash --store "$client" "$GO0")
  [ "$got" = "$SRC_NARHASH" ] || die "client copy from $url has narHash $got, not $SRC_NARHASH"
  chmod -R u+w "$client" && rm -rf "$client" # tmpfs is RAM
  elapsed "$t0" "$t1"
}

bench_e2e() {
  start_nginx
  local comp ratio
  for comp in none zstd; do
    log "nix copy of go1.25.0, compression $comp, $RUNS runs each"
    pair_best min e2e_once "$comp"
    ratio=$(calc "$BEST_NODE/$BEST_NGINX")
    row "nix copy go1.25.0, $comp (narHash checked)" "$(fmt '%.2f s' "$BEST_NODE")" "$(fmt '%.2f s' "$BEST_NGINX")" \
      "$(fmt '%.2f' "$ratio")" "≤ 1.2" "$(met ceiling "$ratio" 1.2)"
  done
}

# narinfo_once SIDE RUN seq|par: seconds for 373 narinfo GETs, with one
# keep-alive curl, or with 16 curls at once each fetching a batch.
narinfo_once() {
  local side=$1 run=$2 mode=$3 t0 t1 out ok conns max_conns=1
  t0=$(now)
  if [ "$mode" = seq ]; then
    out=$(curl -s -w '%{http_code} %{num_connects}\n' -K "$BENCH_DIR/narinfo-$side.curl")
  else
    max_conns=16
    out=$(printf '%s\n' "$BENCH_DIR"/narinfo-"$side"-{0..15}.curl \
      | xargs -P16 -n1 curl -s -w '%{http_code} %{num_connects}\n' -K)
  fi
  t1=$(now)
  ok=$(grep -c '^200 ' <<<"$out" || true)
  [ "$ok" = "$NARINFO_PATHS" ] || die "$side answered $ok of $NARINFO_PATHS narinfo GETs with 200"
  # Each curl should open one connection and keep it alive.
  conns=$(awk '{ n += $2 } END { print n }' <<<"$out")
  if ((conns > max_conns)); then
    note "narinfo $mode against $side, run $run: $conns connections for $NARINFO_PATHS GETs (keep-alive not kept)"
  fi
  elapsed "$t0" "$t1"
}

bench_narinfo() {
  make_narinfo_paths
  local mode label WITH_BASE=1
  for mode in seq par; do
    label="$NARINFO_PATHS narinfo GETs, one keep-alive curl"
    if [ "$mode" = par ]; then label="$NARINFO_PATHS narinfo GETs, 16 curls at once"; fi
    log "$label, $RUNS runs each"
    pair_best min narinfo_once "$mode"
    ceiling_rows "$label" '%.3f s' 1.5
  done
}

CLOSURE_READY=""
# Builds bench/closure.nix and adds its 421 paths to the node (and the base
# node), signed, and to the static cache.
make_closure_paths() {
  [ -z "$CLOSURE_READY" ] || return 0
  CLOSURE_READY=1
  start_nginx
  log "building the 421-path closure of bench/closure.nix"
  CLOSURE_TOP=$(nix-build bench/closure.nix --no-out-link --max-jobs 2 2>>"$LOGS/closure-build.log") \
    || die "nix-build bench/closure.nix failed; see $LOGS/closure-build.log"
  mapfile -t CLOSURE_PATHS < <(nix-store -qR "$CLOSURE_TOP")
  p2p import --recursive --sign "$CLOSURE_TOP" >>"$LOGS/import.log" 2>&1 || die "import failed; see $LOGS/import.log"
  tail -n1 "$LOGS/import.log" >&2
  base_import --recursive --sign "$CLOSURE_TOP"
  static_cache none "$CLOSURE_TOP"
  local p
  for p in "${CLOSURE_PATHS[@]}"; do hash_part "$p"; done >"$BENCH_DIR/closure.hashes"
}

# closure_once SIDE RUN pathinfo|copy|pipeline: seconds for `nix path-info
# -r` of the closure, for `nix copy` of it into a fresh client store, or
# for 1,000 of its narinfos pipelined on one connection. Nix's narinfo
# disk cache is wiped before each run (a fresh XDG_CACHE_HOME), so no
# TTL options are needed; with them, Nix 2.8 takes twice as long here.
closure_once() {
  local side=$1 run=$2 what=$3 url client t0 t1 n
  url=$(side_url "$side")
  client=$BENCH_DIR/client-$run
  chmod -R u+w "$client" 2>/dev/null || true
  rm -rf "$client" "$XDG_CACHE_HOME"
  case $what in
    pathinfo)
      t0=$(now)
      nix path-info --store "$url" -r "$CLOSURE_TOP" >"$BENCH_DIR/closure-pathinfo.out" 2>>"$LOGS/closure-$side.log" || die "nix path-info from $url failed; see $LOGS/closure-$side.log"
      t1=$(now)
      n=$(wc -l <"$BENCH_DIR/closure-pathinfo.out")
      [ "$n" = "${#CLOSURE_PATHS[@]}" ] || die "nix path-info -r from $url listed $n paths, not ${#CLOSURE_PATHS[@]}"
      ;;
    copy)
      t0=$(now)
      nix copy --from "$url" --to "$client" "$CLOSURE_TOP" --option trusted-public-keys "$PUBKEY" \
        >>"$LOGS/closure-$side.log" 2>&1 || die "nix copy from $url failed; see $LOGS/closure-$side.log"
      t1=$(now)
      n=$(nix-store --store "$client" -qR "$CLOSURE_TOP" | wc -l)
      [ "$n" = "${#CLOSURE_PATHS[@]}" ] || die "nix copy from $url gave a closure of $n paths, not ${#CLOSURE_PATHS[@]}"
      chmod -R u+w "$client" && rm -rf "$client"
      ;;
    pipeline)
      "$CLIENT" pipeline -n "$PIPELINED" "$url" "$BENCH_DIR/closure.hashes" 2>>"$LOGS/httpclient.log" \
        || die "httpclient pipeline $url failed; see $LOGS/httpclient.log"
      return
      ;;
  esac
  elapsed "$t0" "$t1"
}

bench_closure() {
  make_closure_paths
  local what label WITH_BASE=1
  for what in pathinfo copy pipeline; do
    case $what in
      pathinfo) label="nix path-info -r, closure of ${#CLOSURE_PATHS[@]} small paths" ;;
      copy) label="nix copy, closure of ${#CLOSURE_PATHS[@]} small paths" ;;
      pipeline) label="$PIPELINED narinfo GETs pipelined on one connection (httpclient, as Guix asks)" ;;
    esac
    log "$label, $RUNS runs each"
    pair_best min closure_once "$what"
    ceiling_rows "$label" "$([ "$what" = pipeline ] && echo '%.4f s' || echo '%.3f s')" 1.5
  done
}

bench_dedup() {
  start_node
  local before after stored logical pct
  before=$(p2p status --json)
  log "importing go1.25.1 after go1.25.0"
  p2p import "$GO1" >>"$LOGS/import.log" 2>&1 || die "import failed; see $LOGS/import.log"
  tail -n1 "$LOGS/import.log" >&2
  after=$(p2p status --json)
  wait_node_idle # before the next measure
  stored=$(($(json_num bytes_stored <<<"$after") - $(json_num bytes_stored <<<"$before")))
  logical=$(($(json_num bytes_logical <<<"$after") - $(json_num bytes_logical <<<"$before")))
  ((logical > 0)) || die "importing go1.25.1 added no logical bytes (already there?)"
  pct=$(calc "100*$stored/$logical")
  row "dedup: new bytes for go1.25.1 after go1.25.0" \
    "$(fmt '%.1f MB' "$(calc "$stored/1e6")") of $(fmt '%.1f MB' "$(calc "$logical/1e6")")" "—" \
    "$(fmt '%.1f%%' "$pct")" "≤ 32%" "$(met ceiling "$pct" 32)"
}

bench_ingest() {
  log "BenchmarkIngest (NAR -> castore, one core, 3 iterations x $RUNS)"
  local out mbs
  mkdir -p "$BENCH_DIR/go-tmp"
  out=$(TMPDIR=$BENCH_DIR/go-tmp P2PSTORE_BENCH_PATH=$GO0 \
    go test -run XXX -bench BenchmarkIngest -benchtime 3x -count "$RUNS" -cpu 1 ./narview/nar/ 2>&1) \
    || { echo "$out" >"$LOGS/ingest.log"; die "go test failed; see $LOGS/ingest.log"; }
  echo "$out" >"$LOGS/ingest.log"
  # The best of the runs: the benchmark runs it RUNS times.
  mbs=$(awk '/^BenchmarkIngest/ { for (i = 2; i <= NF; i++) if ($i == "MB/s") print $(i-1) }' <<<"$out" | sort -g | tail -n1)
  [ -n "$mbs" ] || die "no MB/s in the benchmark output; see $LOGS/ingest.log"
  row "ingest go1.25.0 NAR -> castore, 1 core (go test -bench)" "$mbs MB/s" "—" "—" "≥ 400 MB/s" \
    "$(met floor "$mbs" 400)"
}

SSHD_STARTED=""
# An OpenSSH server on loopback with keys and a config of its own, and a
# real nix-daemon on a socket of its own, for the daemon measures.
start_daemons() {
  [ -z "$SSHD_STARTED" ] || return 0
  SSHD_STARTED=1
  start_node
  local d=$BENCH_DIR/ssh pid
  mkdir -p "$d" /run/sshd
  ssh-keygen -q -t ed25519 -N "" -f "$d/host"
  ssh-keygen -q -t ed25519 -N "" -f "$d/user"
  cp "$d/user.pub" "$d/authorized_keys"
  cat >"$d/config" <<EOF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $d/host
AuthorizedKeysFile $d/authorized_keys
PasswordAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PidFile $d/pid
SetEnv PATH=$(dirname "$(command -v nix-daemon)"):/usr/local/bin:/usr/bin:/bin
EOF
  port_free "$SSH_PORT" || die "port $SSH_PORT is in use; set SSH_PORT"
  /usr/sbin/sshd -D -f "$d/config" -E "$LOGS/sshd.log" &
  pid=$!
  PIDS+=("$pid")
  export NIX_SSHOPTS="-p $SSH_PORT -i $d/user -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes"
  # shellcheck disable=SC2086 # NIX_SSHOPTS is a list of options
  wait_for sshd "$pid" ssh $NIX_SSHOPTS root@127.0.0.1 true
  NIX_DAEMON_SOCK=$BENCH_DIR/nix-daemon.sock
  NIX_DAEMON_SOCKET_PATH=$NIX_DAEMON_SOCK nix-daemon >"$LOGS/nix-daemon.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_for nix-daemon "$pid" test -S "$NIX_DAEMON_SOCK"
  grep -q "store mounted" "$LOGS/node.log" || die "the node has no store mount (FUSE); see $LOGS/node.log"
}

# daemon_once SIDE RUN ssh|unix: seconds for `nix copy --from` of go1.25.0
# into a fresh client store, from the node (SIDE node) or from a real
# nix-daemon (SIDE nginx, the peer's slot in pair_best).
daemon_once() {
  local side=$1 run=$2 kind=$3 url client t0 t1 got
  case $kind/$side in
    ssh/node) url="ssh-ng://root@127.0.0.1?remote-program=$BIN daemon --daemon-socket $SOCK" ;;
    ssh/nginx) url="ssh-ng://root@127.0.0.1" ;; # remote-program: nix-daemon --stdio
    unix/node) url="unix://$SOCK?real=$BENCH_DIR/mnt" ;;
    unix/nginx) url="unix://$NIX_DAEMON_SOCK" ;;
  esac
  client=$BENCH_DIR/client-$run
  chmod -R u+w "$client" 2>/dev/null || true
  rm -rf "$client"
  t0=$(now)
  nix copy --from "$url" --to "$client" "$GO0" --option trusted-public-keys "$PUBKEY" \
    >>"$LOGS/daemon-$kind-$side.log" 2>&1 || die "nix copy from $url failed; see $LOGS/daemon-$kind-$side.log"
  t1=$(now)
  got=$(nar_hash --store "$client" "$GO0")
  [ "$got" = "$SRC_NARHASH" ] || die "client copy from $url has narHash $got, not $SRC_NARHASH"
  chmod -R u+w "$client" && rm -rf "$client"
  elapsed "$t0" "$t1"
}

bench_daemon() {
  start_daemons
  local ratio
  log "nix copy --from over ssh-ng, node vs nix-daemon --stdio, $RUNS runs each"
  pair_best min daemon_once ssh
  ratio=$(calc "$BEST_NODE/$BEST_NGINX")
  row "nix copy --from ssh-ng, go1.25.0 (peer: nix-daemon --stdio)" "$(fmt '%.2f s' "$BEST_NODE")" "$(fmt '%.2f s' "$BEST_NGINX")" \
    "$(fmt '%.2f' "$ratio")" "≤ 1.1" "$(met ceiling "$ratio" 1.1)"
  log "nix copy --from unix://, node's mount vs a nix-daemon socket, $RUNS runs each"
  pair_best min daemon_once unix
  ratio=$(calc "$BEST_NODE/$BEST_NGINX")
  row "nix copy --from unix://SOCK?real=MOUNT, go1.25.0 (peer: nix-daemon socket)" "$(fmt '%.2f s' "$BEST_NODE")" "$(fmt '%.2f s' "$BEST_NGINX")" \
    "$(fmt '%.2f' "$ratio")" "≤ 1.5" "$(met ceiling "$ratio" 1.5)"
}

# ---------------------------------------------------------------- p2p

# The bench node (A) holds go1.25.0 and go1.25.1, signed by the bench key.
# A second node (C) starts empty each run, knows only A, trusts the bench
# key, and gets what it is asked for from A over libp2p.
C_IP=127.0.0.3
C_HTTP_PORT=$((NODE_PORT + 10))
C_DIR=$BENCH_DIR/node-c
C_SOCK=$BENCH_DIR/node-c.sock
C_PID=""

# a_addr: A's libp2p address, for bootstrapping.
a_addr() {
  p2p status --json | grep -o '"/ip4/127.0.0.1/tcp/[^"]*"' | head -n1 | tr -d '"'
}

# start_c [--bootstrap ADDR]...: a fresh node C.
start_c() {
  stop_c
  rm -rf "$C_DIR"
  P2PSTORE_DATA_DIR=$C_DIR "$BIN" serve --http-listen "$C_IP:$C_HTTP_PORT" --daemon-socket "$C_SOCK" \
    --p2p-listen "/ip4/$C_IP/tcp/0" --mdns=false --trusted-public-key "$PUBKEY" "$@" \
    >>"$LOGS/node-c.log" 2>&1 &
  C_PID=$!
  PIDS+=("$C_PID")
  wait_for "node C" "$C_PID" "$BIN" status --daemon-socket "$C_SOCK"
  # Connected to A before the clock starts.
  local i
  for ((i = 0; i < 100; i++)); do
    [ "$("$BIN" status --daemon-socket "$C_SOCK" --json | json_num peers)" -ge 1 ] && return 0
    sleep 0.1
  done
  die "node C did not connect to its bootstrap peer; see $LOGS/node-c.log"
}

stop_c() {
  [ -n "$C_PID" ] || return 0
  kill -TERM "$C_PID" 2>/dev/null || true
  wait "$C_PID" 2>/dev/null || true
  C_PID=""
}

P2P_READY=""
setup_p2p() {
  [ -z "$P2P_READY" ] || return 0
  P2P_READY=1
  start_nginx
  A_ADDR=$(a_addr)
  [ -n "$A_ADDR" ] || die "node A has no loopback libp2p address"
  # Run alone (bench/run.sh p2p), A would still be making the frames of
  # what it just imported.
  wait_node_idle
}

# cold_once SIDE RUN: seconds for a Nix client to copy go1.25.0 through a
# cold node C (which fetches it from A over libp2p as the NAR streams), or
# from nginx's static cache.
cold_once() {
  local side=$1 run=$2 url client t0 t1 got
  url=$NGINX_URL/none
  if [ "$side" = node ]; then
    start_c --bootstrap "$A_ADDR"
    url=http://$C_IP:$C_HTTP_PORT
  fi
  client=$BENCH_DIR/client-$run
  chmod -R u+w "$client" 2>/dev/null || true
  rm -rf "$client" "$XDG_CACHE_HOME"
  t0=$(now)
  nix copy --from "$url" --to "$client" "$GO0" --option trusted-public-keys "$PUBKEY" \
    --option narinfo-cache-positive-ttl 0 --option narinfo-cache-negative-ttl 0 \
    >>"$LOGS/cold-$side.log" 2>&1 || die "nix copy from $url failed; see $LOGS/cold-$side.log"
  t1=$(now)
  got=$(nar_hash --store "$client" "$GO0")
  [ "$got" = "$SRC_NARHASH" ] || die "client copy from $url has narHash $got, not $SRC_NARHASH"
  chmod -R u+w "$client" && rm -rf "$client"
  [ "$side" != node ] || stop_c
  elapsed "$t0" "$t1"
}

# fetch_json PATH: p2pstore fetch on C, as JSON.
fetch_json() {
  "$BIN" fetch --daemon-socket "$C_SOCK" --json "$1" 2>>"$LOGS/fetch.log" || die "fetch of $1 failed; see $LOGS/node-c.log"
}

bench_p2p() {
  setup_p2p
  local ratio i out secs best_secs="" rate raw wire nar
  log "cold: nix copy of go1.25.0 through node C fetching from A, against nginx, $RUNS runs each"
  pair_best min cold_once
  ratio=$(calc "$BEST_NODE/$BEST_NGINX")
  row "cold nix copy go1.25.0 via node C (C fetches from A) vs nginx" "$(fmt '%.2f s' "$BEST_NODE")" "$(fmt '%.2f s' "$BEST_NGINX")" \
    "$(fmt '%.2f' "$ratio")" "≤ 1.5 (aim 1.1)" "$(met ceiling "$ratio" 1.5)"

  log "p2pstore fetch of go1.25.0 from one peer, $RUNS runs"
  for ((i = 1; i <= RUNS; i++)); do
    start_c --bootstrap "$A_ADDR"
    out=$(fetch_json "$GO0")
    secs=$(json_num seconds <<<"$out")
    log "  run $i: $secs s"
    best_secs=$(best min "$secs" ${best_secs:+"$best_secs"})
    stop_c
  done
  rate=$(calc "$GO0_NARSIZE/$best_secs/1e6")
  row "p2pstore fetch go1.25.0 from one peer (loopback)" "$(fmt '%.0f MB/s' "$rate")" "—" "—" "≥ 200 MB/s" "$(met floor "$rate" 200)"

  log "dedup over the network: go1.25.1 after go1.25.0"
  # A needs go1.25.1 (the dedup measure, run first, may have imported it).
  p2p import "$GO1" >>"$LOGS/import.log" 2>&1 || die "import failed; see $LOGS/import.log"
  wait_node_idle
  start_c --bootstrap "$A_ADDR"
  fetch_json "$GO0" >/dev/null
  out=$(fetch_json "$GO1")
  stop_c
  raw=$(json_num chunk_bytes <<<"$out")
  wire=$(json_num bytes_received <<<"$out")
  nar=$(json_num nar_bytes <<<"$out")
  row "dedup over the network: go1.25.1 after go1.25.0, chunks moved (uncompressed)" \
    "$(fmt '%.1f MB' "$(calc "$raw/1e6")") of $(fmt '%.1f MB' "$(calc "$nar/1e6")")" "Kubo 33–36%" \
    "$(fmt '%.1f%%' "$(calc "100*$raw/$nar")")" "≤ 32%" "$(met ceiling "$(calc "100*$raw/$nar")" 32)"
  row "dedup over the network: go1.25.1 after go1.25.0, bytes on the wire (zstd frames)" \
    "$(fmt '%.1f MB' "$(calc "$wire/1e6")") of $(fmt '%.1f MB' "$(calc "$nar/1e6")")" "Kubo 33–36%" \
    "$(fmt '%.1f%%' "$(calc "100*$wire/$nar")")" "≤ 32% (aim 15%)" "$(met ceiling "$(calc "100*$wire/$nar")" 32)"
}

# ---------------------------------------------------------------- swarm

# Seeders in network namespaces on a bridge, each with its upload capped
# by tc on its side of the veth; the fetching node in a namespace of its
# own.
SWARM_NET=10.77.0
SWARM_RATE=${SWARM_RATE:-200mbit}
SWARM_READY=""

swarm_ns() { echo "p2pbench-$1"; }

swarm_teardown() {
  local ns
  for ns in s1 s2 c; do ip netns del "$(swarm_ns "$ns")" 2>/dev/null || true; done
  ip link del p2pbench-br 2>/dev/null || true
}

# netns_host NS VETH BRIDGE IP: a namespace NS wired to BRIDGE by a veth
# pair (VETH on the bridge's side, eth0 inside) with address IP/24.
netns_host() {
  ip netns add "$1"
  ip link add "$2" type veth peer name eth0 netns "$1"
  ip link set "$2" master "$3" up
  ip -n "$1" addr add "$4/24" dev eth0
  ip -n "$1" link set eth0 up
  ip -n "$1" link set lo up
}

# swarm_host NAME IP: a namespace wired to the bridge.
swarm_host() { netns_host "$(swarm_ns "$1")" "pb-$1" p2pbench-br "$2"; }

setup_swarm() {
  [ -z "$SWARM_READY" ] || return 0
  SWARM_READY=1
  start_node # the key, the binary, the corpus in /nix/store
  swarm_teardown
  ip link add p2pbench-br type bridge
  ip addr add "$SWARM_NET.1/24" dev p2pbench-br
  ip link set p2pbench-br up
  swarm_host s1 "$SWARM_NET.11"
  swarm_host s2 "$SWARM_NET.12"
  swarm_host c "$SWARM_NET.20"
  local s
  for s in s1 s2; do
    # The seeder's uplink: a token bucket on its egress.
    ip netns exec "$(swarm_ns "$s")" tc qdisc add dev eth0 root tbf rate "$SWARM_RATE" burst 256kb latency 100ms
  done
}

# swarm_node NAME IP [ARGS]: a node inside a namespace; sets SWARM_PID.
swarm_node() {
  local name=$1 ip=$2 dir=$BENCH_DIR/swarm-$1; shift 2
  rm -rf "$dir"
  ip netns exec "$(swarm_ns "$name")" env P2PSTORE_DATA_DIR="$dir" "$BIN" serve \
    --http-listen "$ip:17490" --daemon-socket "$dir.sock" --p2p-listen "/ip4/$ip/tcp/4001" --mdns=false \
    --sign-key-file "$BENCH_DIR/key.sec" --sign-imports --trusted-public-key "$PUBKEY" "$@" >>"$LOGS/swarm-$name.log" 2>&1 &
  SWARM_PID=$!
  PIDS+=("$SWARM_PID")
  wait_for "swarm node $name" "$SWARM_PID" "$BIN" status --daemon-socket "$dir.sock"
}

swarm_addr() { "$BIN" status --daemon-socket "$BENCH_DIR/swarm-$1.sock" --json | grep -o '"/ip4/[^"]*"' | head -n1 | tr -d '"'; }

# swarm_fetch SEEDERS: seconds and bytes for a fresh client to fetch go1.25.0.
swarm_fetch() {
  local boot=() s out
  for s in "$@"; do boot+=(--bootstrap "$(swarm_addr "$s")"); done
  swarm_node c "$SWARM_NET.20" "${boot[@]}"
  local pid=$SWARM_PID i
  for ((i = 0; i < 100; i++)); do
    [ "$("$BIN" status --daemon-socket "$BENCH_DIR/swarm-c.sock" --json | json_num peers)" -ge $# ] && break
    sleep 0.1
  done
  out=$("$BIN" fetch --daemon-socket "$BENCH_DIR/swarm-c.sock" --json "$GO0") || die "swarm fetch failed; see $LOGS/swarm-c.log"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  echo "$(json_num seconds <<<"$out") $(json_num bytes_received <<<"$out")"
}

bench_swarm() {
  if ! ip netns add p2pbench-probe 2>/dev/null; then
    note "swarm: network namespaces cannot be made here; skipped"
    return 0
  fi
  ip netns del p2pbench-probe
  setup_swarm
  local s1 s2 i r t b one="" two="" one_bytes="" rate_bps use ratio
  swarm_node s1 "$SWARM_NET.11"
  p2p_import_to s1
  log "swarm: one seeder capped at $SWARM_RATE, $RUNS runs"
  for ((i = 1; i <= RUNS; i++)); do
    read -r t b < <(swarm_fetch s1)
    log "  run $i: $t s, $b bytes"
    if [ -z "$one" ] || awk -v a="$t" -v b="$one" 'BEGIN { exit !(a < b) }'; then one=$t one_bytes=$b; fi
  done
  swarm_node s2 "$SWARM_NET.12" --bootstrap "$(swarm_addr s1)"
  p2p_import_to s2
  log "swarm: two seeders, $RUNS runs"
  for ((i = 1; i <= RUNS; i++)); do
    read -r t b < <(swarm_fetch s1 s2)
    log "  run $i: $t s, $b bytes"
    two=$(best min "$t" ${two:+"$two"})
  done
  ratio=$(calc "$two/$one")
  row "swarm: fetch go1.25.0 from two capped seeders vs one" "$(fmt '%.2f s' "$two")" "$(fmt '%.2f s' "$one")" \
    "$(fmt '%.2f' "$ratio")" "≤ 0.65" "$(met ceiling "$ratio" 0.65)"
  rate_bps=$(awk -v r="$SWARM_RATE" 'BEGIN { n = r + 0; if (r ~ /gbit/) n *= 1e9; else if (r ~ /mbit/) n *= 1e6; else if (r ~ /kbit/) n *= 1e3; print n / 8 }')
  use=$(calc "100*$one_bytes/$one/$rate_bps")
  row "swarm: one seeder's use of its $SWARM_RATE cap" "$(fmt '%.0f%%' "$use")" "raw TCP ~85%" "—" "≥ 70%" "$(met floor "$use" 70)"
}

# p2p_import_to NAME: import go1.25.0 into a swarm node from /nix/store.
p2p_import_to() {
  "$BIN" import --daemon-socket "$BENCH_DIR/swarm-$1.sock" "$GO0" >>"$LOGS/import.log" 2>&1 || die "import into $1 failed"
}

# ---------------------------------------------------------------- dht

bench_dht() {
  log "DHT: lookups and announcing 100k keys in a 10-node network (go test -bench)"
  local out secs
  out=$(go test -run XXX -bench 'BenchmarkLookup|BenchmarkAnnounce' -benchtime 1x ./dht/ 2>&1) \
    || { echo "$out" >"$LOGS/dht.log"; die "go test failed; see $LOGS/dht.log"; }
  echo "$out" >"$LOGS/dht.log"
  metric() { awk -v m="$2" "/^$1/"' { for (i = 2; i <= NF; i++) if ($i == m) print $(i-1) }' <<<"$out"; }
  secs=$(metric BenchmarkAnnounce s-100k-keys)
  row "DHT lookup, miss to first provider, 100 keys, from a node of the 10 (median / p90)" \
    "$(metric BenchmarkLookup ms-median) / $(metric BenchmarkLookup ms-p90) ms" "—" "—" "measured" "—"
  row "DHT lookup, miss to first provider, 100 keys, from a client that just joined (median / p90)" \
    "$(metric BenchmarkLookup ms-joined-median) / $(metric BenchmarkLookup ms-joined-p90) ms" "—" "—" "measured" "—"
  row "DHT announce of 100k keys (sweeping provider), 10 nodes" "$(fmt '%.1f s' "$secs")" "—" "—" "measured" "—"
}

# ---------------------------------------------------------------- load

# bench_load: the honest client's copy under load against the same copy
# with the node idle, alternating, best of BENCH_RUNS each; loadgen starts
# afresh for each loaded run and gets a few seconds to pile up.
bench_load() {
  start_node
  log "building bench/loadgen"
  go build -o "$BENCH_DIR/loadgen" ./bench/loadgen
  local addr rss_before rss i side v idle=() loaded=() lpid out ratio
  addr=$(p2p status --json | grep -o '"/ip4/127.0.0.1/tcp/[^"]*"' | head -n1 | tr -d '"')
  [ -n "$addr" ] || die "the node has no loopback p2p address"
  rss_before=$(awk '/^VmHWM/ { print $2 }' "/proc/$NODE_PID/status")
  for ((i = 1; i <= RUNS; i++)); do
    for side in idle loaded; do
      if [ "$side" = loaded ]; then
        "$BENCH_DIR/loadgen" -http "$NODE_URL" -path "$GO0" -stalled "$LOAD_STALLED" -narinfo-clients 8 \
          -socket "$SOCK" -daemon-clients "$LOAD_DAEMON" -peer "$addr" -identities "$LOAD_IDENTITIES" \
          >"$LOGS/loadgen-$i.log" 2>&1 &
        lpid=$!
        sleep 5
        kill -0 "$lpid" 2>/dev/null || die "loadgen exited early; see $LOGS/loadgen-$i.log"
      fi
      v=$(e2e_once node "$i" none)
      if [ "$side" = loaded ]; then
        kill -TERM "$lpid"
        wait "$lpid" || true
        out=$(tail -n1 "$LOGS/loadgen-$i.log")
        log "  loadgen: $out"
        loaded+=("$v")
      else
        idle+=("$v")
      fi
      log "  run $i $side: $v"
    done
  done
  rss=$(awk '/^VmHWM/ { print $2 }' "/proc/$NODE_PID/status")
  v=$(best min "${loaded[@]}")
  ratio=$(calc "$v/$(best min "${idle[@]}")")
  row "nix copy go1.25.0 under load ($((3 * LOAD_STALLED)) stalled NAR GETs, $LOAD_DAEMON daemon clients, $LOAD_IDENTITIES peer identities) (peer: node idle)" \
    "$(fmt '%.2f s' "$v")" "$(fmt '%.2f s' "$(best min "${idle[@]}")")" "$(fmt '%.2f' "$ratio")" "≤ 2" "$(met ceiling "$ratio" 2)"
  note "loadgen's last run: $out"
  row "node peak RSS under load (VmHWM; $((rss_before / 1024)) MiB before)" "$(fmt '%.0f MiB' "$(calc "$rss/1024")")" "—" "—" "≤ 256 MiB" \
    "$(met ceiling "$(calc "$rss/1024")" 256)"
}

# ---------------------------------------------------------------- upstream

PULL_PORT=$((NODE_PORT + 30))
PULL_URL=http://127.0.0.1:$PULL_PORT
PULL_SOCK=$BENCH_DIR/node-pull.sock
PULL_PID=""

# start_pull_node COMP [ARGS...]: a node with an empty data dir pulling
# through from nginx's COMP cache (signed with the bench key); ARGS are
# more serve flags (another --upstream is listed before nginx's).
start_pull_node() {
  local comp=$1; shift
  rm -rf "$BENCH_DIR/node-pull"
  port_free "$PULL_PORT" || die "port $PULL_PORT is in use; set NODE_PORT"
  P2PSTORE_DATA_DIR=$BENCH_DIR/node-pull "$BIN" serve --http-listen "127.0.0.1:$PULL_PORT" \
    --daemon-socket "$PULL_SOCK" --p2p-listen "/ip4/127.0.0.1/tcp/$((P2P_PORT + 30))" --mdns=false \
    "$@" --upstream "$UPSTREAM_URL/$comp" --upstream-public-key "$PUBKEY" >>"$LOGS/node-pull.log" 2>&1 &
  PULL_PID=$!
  PIDS+=("$PULL_PID")
  wait_for "the pull-through node" "$PULL_PID" "$BIN" status --daemon-socket "$PULL_SOCK"
}

stop_pull_node() {
  kill -TERM "$PULL_PID" 2>/dev/null || true
  wait "$PULL_PID" 2>/dev/null || true
  PULL_PID=""
}

# substitute_once SUBSTITUTERS NAME [PATH]: sets SUB_SECONDS to the time
# of `nix-store -r` of PATH (go1.25.0) into a fresh client store (narHash
# checked against /nix/store's).
substitute_once() {
  local url=$1 name=$2 path=${3:-$GO0} client=$BENCH_DIR/client-$2 t0 t1 got want=$SRC_NARHASH
  [ "$path" = "$GO0" ] || want=$(nar_hash "$path")
  chmod -R u+w "$client" 2>/dev/null || true
  rm -rf "$client" "$XDG_CACHE_HOME/$name"
  t0=$(now)
  XDG_CACHE_HOME=$XDG_CACHE_HOME/$name nix-store --store "$client" -r "$path" \
    --option substituters "$url" --option trusted-public-keys "$PUBKEY" \
    >>"$LOGS/upstream-$name.log" 2>&1 || die "nix-store -r from $url failed; see $LOGS/upstream-$name.log"
  t1=$(now)
  got=$(nar_hash --store "$client" "$path")
  [ "$got" = "$want" ] || die "client store from $url has narHash $got, not $want"
  chmod -R u+w "$client" && rm -rf "$client"
  SUB_SECONDS=$(elapsed "$t0" "$t1")
}

bench_upstream() {
  start_nginx
  log "making a static xz cache of go1.25.0"
  static_cache xz "$GO0"
  local comp i cold=() direct=() warm=() four=() rss=0 r file_size sent=0 pids t0 t1 ratio
  for comp in zstd xz; do
    cold=() direct=() warm=()
    file_size=$(curl -fsS "$UPSTREAM_URL/$comp/$(hash_part "$GO0").narinfo" | sed -n 's/^FileSize: //p')
    for ((i = 1; i <= RUNS; i++)); do
      substitute_once "$UPSTREAM_URL/$comp" direct
      direct+=("$SUB_SECONDS")
      start_pull_node "$comp"
      substitute_once "$PULL_URL" cold
      cold+=("$SUB_SECONDS")
      # Warm: the node has the path and is done with it (its zstd frames
      # made, at the lowest priority), as when another machine asks later.
      wait_node_idle "$PULL_PID" "$PULL_SOCK"
      substitute_once "$PULL_URL" warm
      warm+=("$SUB_SECONDS")
      r=$(awk '/^VmHWM/ { print $2 }' "/proc/$PULL_PID/status")
      ((r > rss)) && rss=$r
      stop_pull_node
      log "  run $i $comp: direct ${direct[-1]} s, cold ${cold[-1]} s, warm ${warm[-1]} s"
    done
    ratio=$(calc "$(best min "${cold[@]}")/$(best min "${direct[@]}")")
    row "nix-store -r go1.25.0 through a cold pull-through node, $comp upstream at $UPSTREAM_RATE/s (peer: straight from the upstream)" \
      "$(fmt '%.2f s' "$(best min "${cold[@]}")")" "$(fmt '%.2f s' "$(best min "${direct[@]}")")" "$(fmt '%.2f' "$ratio")" "≤ 1.1" "$(met ceiling "$ratio" 1.1)"
    ratio=$(calc "$(best min "${warm[@]}")/$(best min "${direct[@]}")")
    row "the same, a second client through the warm node, $comp upstream" \
      "$(fmt '%.2f s' "$(best min "${warm[@]}")")" "$(fmt '%.2f s' "$(best min "${direct[@]}")")" "$(fmt '%.2f' "$ratio")" "≤ 0.2" "$(met ceiling "$ratio" 0.2)"
    if [ "$comp" = zstd ]; then
      # Four clients at once through a cold node.
      four=()
      for ((i = 1; i <= RUNS; i++)); do
        start_pull_node zstd
        pids=()
        t0=$(now)
        for r in 1 2 3 4; do
          (substitute_once "$PULL_URL" "four-$r") &
          pids+=($!)
        done
        for r in "${pids[@]}"; do wait "$r" || die "a client of four failed; see $LOGS/upstream-four-*.log"; done
        t1=$(now)
        four+=("$(elapsed "$t0" "$t1")")
        sent=$("$BIN" status --json --daemon-socket "$PULL_SOCK" | json_num upstream_bytes_received)
        stop_pull_node
        log "  run $i four clients: ${four[-1]} s, $sent upstream bytes"
      done
      ratio=$(calc "$(best min "${four[@]}")/$(best min "${cold[@]}")")
      row "four clients at once through a cold node, zstd: the last one's time (peer: one client, cold)" \
        "$(fmt '%.2f s' "$(best min "${four[@]}")")" "$(fmt '%.2f s' "$(best min "${cold[@]}")")" "$(fmt '%.2f' "$ratio")" "≤ 1.3" "$(met ceiling "$ratio" 1.3)"
      ratio=$(calc "$sent/$file_size")
      row "upstream bytes for those four clients (peer: the .nar.zst's size)" \
        "$(fmt '%.1f MB' "$(calc "$sent/1e6")")" "$(fmt '%.1f MB' "$(calc "$file_size/1e6")")" "$(fmt '%.3f' "$ratio")" "≤ 1.05" "$(met ceiling "$ratio" 1.05)"
    fi
  done
  row "pull-through node peak RSS (VmHWM, cold and warm runs)" "$(fmt '%.0f MiB' "$(calc "$rss/1024")")" "—" "—" "≤ 150 MiB" \
    "$(met ceiling "$(calc "$rss/1024")" 150)"
}

# ---------------------------------------------------------------- upstream-dedup

# A second pull-through node, with no upstream of its own: it knows the
# first (PULL) by --bootstrap and trusts the upstream's key.
PULL2_PORT=$((NODE_PORT + 50))
PULL2_SOCK=$BENCH_DIR/node-pull2.sock
PULL2_PID=""

# pull_status SOCK: a node's status, as JSON.
pull_status() { "$BIN" status --json --daemon-socket "$1"; }

# wait_paths SOCK N: waits (bounded, 120 s) until the node counts N valid
# paths: a client gets its last byte once the NAR's hash checks out, which
# may be before the ingest into castore has recorded the path.
wait_paths() {
  local i
  for ((i = 0; i < 1200; i++)); do
    [ "$(pull_status "$1" | json_num paths)" -ge "$2" ] && return 0
    sleep 0.1
  done
  die "the node at $1 did not count $2 paths within 120 s"
}

start_pull2_node() {
  local addr i
  addr=$(pull_status "$PULL_SOCK" | grep -o '"/ip4/127.0.0.1/tcp/[^"]*"' | head -n1 | tr -d '"')
  [ -n "$addr" ] || die "the pull-through node has no loopback libp2p address"
  rm -rf "$BENCH_DIR/node-pull2"
  port_free "$PULL2_PORT" || die "port $PULL2_PORT is in use; set NODE_PORT"
  P2PSTORE_DATA_DIR=$BENCH_DIR/node-pull2 "$BIN" serve --http-listen "127.0.0.1:$PULL2_PORT" \
    --daemon-socket "$PULL2_SOCK" --p2p-listen "/ip4/127.0.0.1/tcp/$((P2P_PORT + 50))" --mdns=false \
    --bootstrap "$addr" --upstream-public-key "$PUBKEY" >>"$LOGS/node-pull2.log" 2>&1 &
  PULL2_PID=$!
  PIDS+=("$PULL2_PID")
  wait_for "the second pull-through node" "$PULL2_PID" "$BIN" status --daemon-socket "$PULL2_SOCK"
  for ((i = 0; i < 100; i++)); do
    [ "$(pull_status "$PULL2_SOCK" | json_num peers)" -ge 1 ] && return 0
    sleep 0.1
  done
  die "the second pull-through node did not connect to the first; see $LOGS/node-pull2.log"
}

stop_pull2_node() {
  kill -TERM "$PULL2_PID" 2>/dev/null || true
  wait "$PULL2_PID" 2>/dev/null || true
  PULL2_PID=""
}

UPSTREAM_GO1_READY=""
# Adds go1.25.1 to nginx's zstd cache, beside go1.25.0.
setup_upstream_dedup() {
  [ -z "$UPSTREAM_GO1_READY" ] || return 0
  UPSTREAM_GO1_READY=1
  start_nginx
  log "adding go1.25.1 to the static zstd cache"
  static_cache zstd "$GO1"
}

# bench_upstream_dedup: one run (byte counts do not vary with load).
bench_upstream_dedup() {
  setup_upstream_dedup
  local nar before after stored moved out
  nar=$(nix path-info --json "$GO1" | grep -o '"narSize":[0-9]*' | head -n1 | cut -d: -f2)
  log "upstream-dedup: a node pulls go1.25.0, then go1.25.1, through from the zstd upstream"
  start_pull_node zstd
  substitute_once "$PULL_URL" dedup-go0
  wait_paths "$PULL_SOCK" 1
  before=$(pull_status "$PULL_SOCK")
  substitute_once "$PULL_URL" dedup-go1 "$GO1"
  wait_paths "$PULL_SOCK" 2
  after=$(pull_status "$PULL_SOCK")
  stored=$(($(json_num bytes_stored <<<"$after") - $(json_num bytes_stored <<<"$before")))
  log "  go1.25.1: $stored new bytes stored of a $nar-byte NAR"
  row "go1.25.1 after go1.25.0, pulled through a node (zstd upstream): new bytes stored (status bytes_stored)" \
    "$(fmt '%.1f MB' "$(calc "$stored/1e6")") of $(fmt '%.1f MB' "$(calc "$nar/1e6")")" \
    "ncps: 100% (whole NAR), as measured in the issue" \
    "$(fmt '%.1f%%' "$(calc "100*$stored/$nar")")" "≤ 32%" "$(met ceiling "$(calc "100*$stored/$nar")" 32)"

  log "upstream-dedup: a second node holding go1.25.0 fetches go1.25.1 from the first"
  start_pull2_node
  "$BIN" fetch --daemon-socket "$PULL2_SOCK" --json "$GO0" >>"$LOGS/fetch.log" 2>&1 \
    || die "the second node's fetch of go1.25.0 failed; see $LOGS/node-pull2.log"
  before=$(pull_status "$PULL2_SOCK")
  out=$("$BIN" fetch --daemon-socket "$PULL2_SOCK" --json "$GO1" 2>>"$LOGS/fetch.log") \
    || die "the second node's fetch of go1.25.1 failed; see $LOGS/node-pull2.log"
  after=$(pull_status "$PULL2_SOCK")
  moved=$(($(json_num p2p_bytes_received <<<"$after") - $(json_num p2p_bytes_received <<<"$before")))
  log "  go1.25.1: $moved p2p bytes received (fetch says $(json_num bytes_received <<<"$out"))"
  stop_pull2_node
  stop_pull_node
  row "the same go1.25.1 fetched from that node by a second one holding go1.25.0: bytes moved (status p2p_bytes_received)" \
    "$(fmt '%.1f MB' "$(calc "$moved/1e6")") of $(fmt '%.1f MB' "$(calc "$nar/1e6")")" \
    "ncps: 100% (whole NAR), as measured in the issue" \
    "$(fmt '%.1f%%' "$(calc "100*$moved/$nar")")" "≤ 32%" "$(met ceiling "$(calc "100*$moved/$nar")" 32)"
}

# ---------------------------------------------------------------- upstream-faults

HUNG_PORT=$((NODE_PORT + 40))
HUNG_PID=""
HUNG_HITS=25   # narinfo GETs of paths the working upstream has
HUNG_MISSES=25 # and of hashes nobody has

# start_hung_upstream: a listener that accepts connections and never
# answers; it holds them open, and exits by itself after an hour at most.
start_hung_upstream() {
  [ -z "$HUNG_PID" ] || return 0
  port_free "$HUNG_PORT" || die "port $HUNG_PORT is in use; set NODE_PORT"
  python3 -c '
import signal, socket, sys
signal.alarm(3600)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(128)
held = []
while True:
    held.append(s.accept()[0])
' "$HUNG_PORT" >"$LOGS/hung.log" 2>&1 &
  HUNG_PID=$!
  PIDS+=("$HUNG_PID")
  wait_for "the hung upstream" "$HUNG_PID" bash -c "exec 3<>/dev/tcp/127.0.0.1/$HUNG_PORT"
}

HUNG_READY=""
# The hung upstream, and small paths in nginx's zstd cache for narinfo hits.
setup_upstream_faults() {
  [ -z "$HUNG_READY" ] || return 0
  HUNG_READY=1
  start_nginx
  start_hung_upstream
  log "adding $((HUNG_HITS - 1)) small store paths to the static zstd cache"
  local src=$BENCH_DIR/hung-src i dirs=()
  for ((i = 1; i < HUNG_HITS; i++)); do
    mkdir -p "$src/p2pstore-bench-hung-$i"
    echo "$i" >"$src/p2pstore-bench-hung-$i/index"
    dirs+=("$src/p2pstore-bench-hung-$i")
  done
  mapfile -t HUNG_PATHS < <(nix-store --add "${dirs[@]}")
  ((${#HUNG_PATHS[@]} == HUNG_HITS - 1)) || die "nix-store --add made ${#HUNG_PATHS[@]} paths"
  static_cache zstd "${HUNG_PATHS[@]}"
  HUNG_PATHS+=("$GO0")
}

# random_hash: a store path hash part that no cache has.
random_hash() {
  od -An -tu1 -N32 /dev/urandom | awk -v a=0123456789abcdfghijklmnpqrsvwxyz \
    '{ for (i = 1; i <= NF; i++) printf "%s", substr(a, $i % 32 + 1, 1) } END { print "" }'
}

# hung_once WITH|WITHOUT NAME: the seconds of `nix-store -r` of go1.25.0
# with substituters "node, working upstream", through a cold node with or
# without the hung upstream beside the working one.
hung_once() {
  if [ "$1" = with ]; then
    start_pull_node zstd --upstream "http://127.0.0.1:$HUNG_PORT"
  else
    start_pull_node zstd
  fi
  substitute_once "$PULL_URL $UPSTREAM_URL/zstd" "$2"
  stop_pull_node
}

bench_upstream_faults() {
  setup_upstream_faults
  local i h code secs want max=0 wrong=0 with=() without=() side ratio
  log "upstream-faults: $((HUNG_HITS + HUNG_MISSES)) narinfo GETs through a cold node with a hung and a working upstream"
  start_pull_node zstd --upstream "http://127.0.0.1:$HUNG_PORT"
  for ((i = 0; i < HUNG_HITS + HUNG_MISSES; i++)); do
    # Hits and misses alternate; each a curl of its own, bounded.
    if ((i % 2 == 0)); then
      h=$(hash_part "${HUNG_PATHS[i / 2]}") want=200
    else
      h=$(random_hash) want=404
    fi
    read -r code secs < <(curl -s -o /dev/null --max-time 30 -w '%{http_code} %{time_total}\n' "$PULL_URL/$h.narinfo" || true)
    log "  $h.narinfo: $code in $secs s"
    [ "$code" = "$want" ] || wrong=$((wrong + 1))
    max=$(best max "$max" "$secs")
  done
  stop_pull_node
  ((wrong == 0)) || note "upstream-faults: $wrong of $((HUNG_HITS + HUNG_MISSES)) narinfo GETs got another status than 200 (hit) or 404 (miss); see $LOGS/node-pull.log"
  row "$((HUNG_HITS + HUNG_MISSES)) narinfo GETs ($HUNG_HITS hits, $HUNG_MISSES misses) via a cold node with a hung and a working upstream: the slowest (curl)" \
    "$(fmt '%.3f s' "$max")" "—" "—" "≤ 2 s" "$(met ceiling "$max" 2)"

  log "upstream-faults: nix-store -r go1.25.0, substituters node + upstream, node with and without a hung upstream, $RUNS runs each"
  for ((i = 1; i <= RUNS; i++)); do
    # Alternate which goes first, so the noise of a busy machine falls on both.
    for side in $( ((i % 2)) && echo with without || echo without with); do
      hung_once "$side" "hung-$side"
      if [ "$side" = with ]; then with+=("$SUB_SECONDS"); else without+=("$SUB_SECONDS"); fi
      log "  run $i $side the hung upstream: $SUB_SECONDS s"
    done
  done
  ratio=$(calc "$(best min "${with[@]}")/$(best min "${without[@]}")")
  row "nix-store -r go1.25.0, substituters \"node, working upstream\", the node with a hung upstream too (peer: the node without it)" \
    "$(fmt '%.2f s' "$(best min "${with[@]}")")" "$(fmt '%.2f s' "$(best min "${without[@]}")")" "$(fmt '%.2f' "$ratio")" "≤ 1.2" "$(met ceiling "$ratio" 1.2)"
}

# ---------------------------------------------------------------- upstream-wan

# The upstream's link as a WAN: nginx in a namespace whose veth to the
# bridge is capped by tc tbf both ways; nodes A and B in namespaces on the
# same bridge, uncapped (the LAN); the client in the machine's own
# namespace, on the bridge's address. The hosts have no route but the
# bridge's. This kernel has no netem: the link has a rate, no added delay.
WAN_NET=10.76.0
WAN_RATE=${WAN_RATE:-100mbit}
WAN_URL=http://$WAN_NET.10/zstd
WAN_READY=""
WAN_A_PID=""
WAN_B_PID=""

wan_ns() { echo "p2pbench-w$1"; }

wan_teardown() {
  local h
  for h in up a b; do ip netns del "$(wan_ns "$h")" 2>/dev/null || true; done
  ip link del p2pbench-wbr 2>/dev/null || true
}

# wan_host NAME IP: a namespace wired to the bridge.
wan_host() { netns_host "$(wan_ns "$1")" "pbw-$1" p2pbench-wbr "$2"; }

# wan_sent: the bytes the upstream's host has sent over its link so far
# (with their IP and Ethernet headers): what the bridge's end received.
wan_sent() { sed -n 's/^ *pbw-up: *\([0-9]*\).*/\1/p' /proc/net/dev; }

setup_upstream_wan() {
  [ -z "$WAN_READY" ] || return 0
  if ! ip netns add p2pbench-probe 2>/dev/null; then
    note "upstream-wan: network namespaces cannot be made here; skipped"
    WAN_READY=skip
    return 0
  fi
  ip netns del p2pbench-probe
  WAN_READY=1
  start_nginx # the static zstd cache of go1.25.0, the key, the binary
  wan_teardown
  ip link add p2pbench-wbr type bridge
  ip addr add "$WAN_NET.1/24" dev p2pbench-wbr
  ip link set p2pbench-wbr up
  wan_host up "$WAN_NET.10"
  wan_host a "$WAN_NET.11"
  wan_host b "$WAN_NET.12"
  # The WAN link: a token bucket on each end's egress, with a burst of
  # 4 ms at the rate.
  local bps burst
  bps=$(awk -v r="$WAN_RATE" 'BEGIN { n = r + 0; if (r ~ /gbit/) n *= 1e9; else if (r ~ /mbit/) n *= 1e6; else if (r ~ /kbit/) n *= 1e3; print n }')
  burst=$(awk -v b="$bps" 'BEGIN { v = int(b / 8 / 250); print (v < 3200 ? 3200 : v) }')
  ip netns exec "$(wan_ns up)" tc qdisc add dev eth0 root tbf rate "$WAN_RATE" burst "$burst" latency 200ms
  tc qdisc add dev pbw-up root tbf rate "$WAN_RATE" burst "$burst" latency 200ms
  local d=$BENCH_DIR/nginx-wan
  nginx_conf "$d" "$LOGS/nginx-wan-error.log" "
  server {
    listen $WAN_NET.10:80;
    root $BENCH_DIR/static;
  }"
  ip netns exec "$(wan_ns up)" nginx -p "$d" -e "$LOGS/nginx-wan-error.log" -c "$d/nginx.conf" >"$LOGS/nginx-wan.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  wait_for "nginx behind the WAN link" "$pid" curl -fsS "$WAN_URL/nix-cache-info"
  log "upstream-wan: nginx up behind a $WAN_RATE link (pid $pid)"
}

# wan_node a|b [ARGS...]: a fresh node in its namespace, pulling through
# from the upstream behind the WAN link; sets WAN_A_PID or WAN_B_PID.
wan_node() {
  local name=$1 ip dir=$BENCH_DIR/wan-$1 pid; shift
  ip=$([ "$name" = a ] && echo "$WAN_NET.11" || echo "$WAN_NET.12")
  rm -rf "$dir"
  ip netns exec "$(wan_ns "$name")" env P2PSTORE_DATA_DIR="$dir" "$BIN" serve \
    --http-listen "$ip:17490" --daemon-socket "$dir.sock" --p2p-listen "/ip4/$ip/tcp/4001" --mdns=false \
    --upstream "$WAN_URL" --upstream-public-key "$PUBKEY" "$@" >>"$LOGS/wan-$name.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_for "upstream-wan node $name" "$pid" "$BIN" status --daemon-socket "$dir.sock"
  if [ "$name" = a ]; then WAN_A_PID=$pid; else WAN_B_PID=$pid; fi
}

wan_stop() {
  local pid
  for pid in "$WAN_A_PID" "$WAN_B_PID"; do
    [ -n "$pid" ] || continue
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  WAN_A_PID="" WAN_B_PID=""
}

# wan_once RUN: one round, in an order that alternates with RUN: straight
# from the upstream; through a cold A, then a fresh B that knows the warm
# A. Appends the times to WAN_DIRECT, WAN_COLD and WAN_SECOND, and sets
# the byte counts of the round.
wan_once() {
  local run=$1 step s0 addr i
  local steps=(direct nodes)
  ((run % 2)) || steps=(nodes direct)
  for step in "${steps[@]}"; do
    if [ "$step" = direct ]; then
      s0=$(wan_sent)
      substitute_once "$WAN_URL" wan-direct
      WAN_DIRECT+=("$SUB_SECONDS")
      WAN_DIRECT_BYTES=$(($(wan_sent) - s0))
      log "  run $run straight from the upstream: $SUB_SECONDS s, $WAN_DIRECT_BYTES bytes on the WAN link"
      continue
    fi
    wan_node a
    s0=$(wan_sent)
    substitute_once "http://$WAN_NET.11:17490" wan-cold
    WAN_COLD+=("$SUB_SECONDS")
    WAN_COLD_BYTES=$(($(wan_sent) - s0))
    wait_paths "$BENCH_DIR/wan-a.sock" 1
    addr=$(pull_status "$BENCH_DIR/wan-a.sock" | grep -o "\"/ip4/$WAN_NET.11/tcp/[^\"]*\"" | head -n1 | tr -d '"')
    [ -n "$addr" ] || die "node A has no libp2p address on the LAN"
    wan_node b --bootstrap "$addr"
    for ((i = 0; i < 100; i++)); do
      [ "$(pull_status "$BENCH_DIR/wan-b.sock" | json_num peers)" -ge 1 ] && break
      sleep 0.1
    done
    s0=$(wan_sent)
    substitute_once "http://$WAN_NET.12:17490" wan-second
    WAN_SECOND+=("$SUB_SECONDS")
    WAN_SECOND_BYTES=$(($(wan_sent) - s0))
    WAN_SECOND_P2P=$(pull_status "$BENCH_DIR/wan-b.sock" | json_num p2p_bytes_received)
    wan_stop
    log "  run $run through A (cold): ${WAN_COLD[-1]} s, $WAN_COLD_BYTES bytes on the WAN link;" \
      "through B: ${WAN_SECOND[-1]} s, $WAN_SECOND_BYTES bytes on the WAN link, $WAN_SECOND_P2P from peers"
  done
}

bench_upstream_wan() {
  setup_upstream_wan
  [ "$WAN_READY" = 1 ] || return 0
  local i file_size cold direct second ratio
  WAN_DIRECT=() WAN_COLD=() WAN_SECOND=()
  file_size=$(curl -fsS "$WAN_URL/$(hash_part "$GO0").narinfo" | sed -n 's/^FileSize: //p')
  log "upstream-wan: nix-store -r go1.25.0 over a $WAN_RATE WAN link (tc tbf), $RUNS alternating runs"
  for ((i = 1; i <= RUNS; i++)); do wan_once "$i"; done
  cold=$(best min "${WAN_COLD[@]}")
  direct=$(best min "${WAN_DIRECT[@]}")
  second=$(best min "${WAN_SECOND[@]}")
  ratio=$(calc "$cold/$direct")
  row "nix-store -r go1.25.0 through a cold pull-through node A on the LAN, zstd upstream behind a $WAN_RATE tc tbf WAN link (peer: straight from the upstream over that link)" \
    "$(fmt '%.2f s' "$cold")" "$(fmt '%.2f s' "$direct")" "$(fmt '%.2f' "$ratio")" "≤ 1.1" "$(met ceiling "$ratio" 1.1)"
  ratio=$(calc "$second/$direct")
  row "the same through a fresh second LAN node B (knows A, has the same upstream), A warm (peer: straight from the upstream)" \
    "$(fmt '%.2f s' "$second")" "$(fmt '%.2f s' "$direct")" "$(fmt '%.2f' "$ratio")" "< 1" "$(met ceiling "$ratio" 0.999)"
  ratio=$(calc "$WAN_COLD_BYTES/$file_size")
  row "bytes over the WAN link for A's cold pull, last run (link counter, with TCP/IP headers; peer: the .nar.zst's size)" \
    "$(fmt '%.1f MB' "$(calc "$WAN_COLD_BYTES/1e6")")" "$(fmt '%.1f MB' "$(calc "$file_size/1e6")")" "$(fmt '%.3f' "$ratio")" "≤ 1.05" "$(met ceiling "$ratio" 1.05)"
  ratio=$(calc "$WAN_SECOND_BYTES/$file_size")
  row "bytes over the WAN link while B served the path, last run ($(fmt '%.1f MB' "$(calc "$WAN_SECOND_P2P/1e6")") from A over p2p; peer: the .nar.zst's size)" \
    "$(fmt '%.3f MB' "$(calc "$WAN_SECOND_BYTES/1e6")")" "$(fmt '%.1f MB' "$(calc "$file_size/1e6")")" "$(fmt '%.4f' "$ratio")" "≤ 0.01" "$(met ceiling "$ratio" 0.01)"
}

# ---------------------------------------------------------------- guix

GUIX_READY=""
# Makes a Nix store whose paths lie under /gnu/store (files in the scratch
# dir) with 373 small paths and go1.25.0's tree, imports them into the
# node (signed with its Guix key), and gives nginx the node's narinfos as
# static files and a .zst of the go tree's NAR, under /guix/.
make_guix_paths() {
  [ -z "$GUIX_READY" ] || return 0
  GUIX_READY=1
  start_nginx
  GUIX_STORE="local?store=/gnu/store&real=$BENCH_DIR/guix/gnu/store&state=$BENCH_DIR/guix/state"
  log "making $NARINFO_PATHS small Guix paths and go1.25.0 as a Guix path"
  local src=$BENCH_DIR/guix-src i dirs=() paths h
  for ((i = 1; i <= NARINFO_PATHS; i++)); do
    mkdir -p "$src/p2pstore-guix-bench-$i"
    echo "$i" >"$src/p2pstore-guix-bench-$i/index"
    dirs+=("$src/p2pstore-guix-bench-$i")
  done
  cp -a "$GO0" "$src/go1.25.0" && chmod -R u+w "$src/go1.25.0"
  mapfile -t paths < <(nix-store --store "$GUIX_STORE" --add "${dirs[@]}")
  ((${#paths[@]} == NARINFO_PATHS)) || die "nix-store --add made ${#paths[@]} Guix paths"
  GUIX_GO=$(nix-store --store "$GUIX_STORE" --add "$src/go1.25.0") || die "adding go1.25.0 to the Guix store failed"
  rm -rf "$src"
  p2p import --sign --from-store "$GUIX_STORE" "${paths[@]}" "$GUIX_GO" >>"$LOGS/import.log" 2>&1 || die "Guix import failed; see $LOGS/import.log"
  tail -n1 "$LOGS/import.log" >&2
  mkdir -p "$BENCH_DIR/static/guix"
  for p in "${paths[@]}"; do
    h=$(hash_part "$p")
    echo "$h"
    curl -fsS -o "$BENCH_DIR/static/guix/$h.narinfo" "$GUIX_URL/$h.narinfo" || die "no Guix narinfo for $p"
  done >"$BENCH_DIR/guix.hashes"
  nix store dump-path --store "$GUIX_STORE" "$GUIX_GO" | zstd -3 -q -T1 >"$BENCH_DIR/static/guix/go.nar.zst"
  GUIX_NODE_NAR=$GUIX_URL/nar/zstd/$(basename "$GUIX_GO")
  GUIX_NGINX_NAR=$NGINX_URL/guix/go.nar.zst
}

# guix_once SIDE RUN pipeline|CONNS: seconds for 1,000 pipelined Guix
# narinfo GETs, or the zstd NAR's throughput in NAR bytes per second (the
# two sides' .zst differ in size: each rate is scaled by NarSize/FileSize).
guix_once() {
  local side=$1 run=$2 what=$3 url rate size
  if [ "$what" = pipeline ]; then
    url=$([ "$side" = node ] && echo "$GUIX_URL" || echo "$NGINX_URL/guix")
    "$CLIENT" pipeline -n "$PIPELINED" "$url" "$BENCH_DIR/guix.hashes" 2>>"$LOGS/httpclient.log" \
      || die "httpclient pipeline $url failed; see $LOGS/httpclient.log"
    return
  fi
  url=$([ "$side" = node ] && echo "$GUIX_NODE_NAR" || echo "$GUIX_NGINX_NAR")
  size=$([ "$side" = node ] && echo "$GUIX_NODE_ZST" || echo "$GUIX_NGINX_ZST")
  if [ "$what" = 1 ]; then
    rate=$("$CLIENT" get "$url" 2>>"$LOGS/httpclient.log") || die "httpclient get $url failed; see $LOGS/httpclient.log"
  else
    rate=$("$CLIENT" load -c "$what" -d "${SECONDS_PER_RUN}s" "$url" 2>>"$LOGS/httpclient.log") \
      || die "httpclient load $url failed; see $LOGS/httpclient.log"
  fi
  calc "$rate*$GO0_NARSIZE/$size"
}

bench_guix() {
  make_guix_paths
  local hex conns label side url
  for side in node nginx; do
    url=$([ "$side" = node ] && echo "$GUIX_NODE_NAR" || echo "$GUIX_NGINX_NAR")
    hex=$(curl -fsS "$url" | zstd -d -q | sha256sum | cut -d' ' -f1)
    [ "$(nix hash to-sri --type sha256 "$hex")" = "$SRC_NARHASH" ] || die "the Guix zstd NAR at $url is not go1.25.0's"
  done
  GUIX_NODE_ZST=$(curl -fsS "$GUIX_NODE_NAR" | wc -c)
  GUIX_NGINX_ZST=$(stat -c %s "$BENCH_DIR/static/guix/go.nar.zst")
  log "go1.25.0 zstd NAR: node $GUIX_NODE_ZST bytes, zstd -3 $GUIX_NGINX_ZST bytes"
  label="$PIPELINED Guix narinfo GETs pipelined on one connection (httpclient, as guix substitute asks; nginx: the node's narinfos as files)"
  log "$label, $RUNS runs each"
  pair_best min guix_once pipeline
  ceiling_rows "$label" '%.4f s' 1.2
  for conns in 1 16; do
    label="Guix NAR, go1.25.0 as a /gnu/store path, zstd, 1 GET on a fresh connection (NAR bytes/s; nginx: a precompressed .zst)"
    if [ "$conns" != 1 ]; then label="Guix NAR, go1.25.0 as a /gnu/store path, zstd, $conns connections for ${SECONDS_PER_RUN} s (NAR bytes/s; nginx: a precompressed .zst)"; fi
    log "$label, $RUNS runs each"
    pair_best max guix_once "$conns"
    row "$label" \
      "$(fmt '%.0f MB/s' "$(calc "$BEST_NODE/1e6")")" "$(fmt '%.0f MB/s' "$(calc "$BEST_NGINX/1e6")")" \
      "$(fmt '%.2f' "$(calc "$BEST_NODE/$BEST_NGINX")")" "≥ 0.8" \
      "$(met floor "$(calc "$BEST_NODE/$BEST_NGINX")" 0.8)"
  done
}

# ---------------------------------------------------------------- main

main() {
  local what=("$@") w
  ((${#what[@]})) || what=(all)
  for w in "${what[@]}"; do
    case $w in serve | e2e | narinfo | closure | dedup | ingest | daemon | p2p | swarm | dht | load | upstream | upstream-dedup | upstream-faults | upstream-wan | guix | all) ;; *) usage ;; esac
  done
  [[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "BENCH_RUNS must be a positive integer"
  [[ $SECONDS_PER_RUN =~ ^[1-9][0-9]*$ ]] || die "BENCH_SECONDS must be a positive integer"
  if [[ " ${what[*]} " == *" all "* ]]; then what=(serve e2e narinfo closure daemon dedup ingest p2p swarm dht load upstream upstream-dedup upstream-faults upstream-wan guix); fi

  setup_common
  # Set everything up before measuring, so that no measure runs while
  # Nix is compressing or the node importing.
  for w in "${what[@]}"; do
    case $w in
      serve | e2e | upstream) start_nginx ;;
      upstream-dedup) setup_upstream_dedup ;;
      upstream-faults) setup_upstream_faults ;;
      upstream-wan) setup_upstream_wan ;;
      narinfo) start_base && make_narinfo_paths ;;
      closure) start_base && make_closure_paths ;;
      dedup | load) start_node ;;
      guix) make_guix_paths ;;
      daemon) start_daemons ;;
      p2p) setup_p2p ;;
    esac
  done
  wait_node_idle
  LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
  for w in "${what[@]}"; do "bench_${w//-/_}"; done

  if [ -n "$NODE_PID" ]; then
    # The 16-connection runs cut the connections still mid-NAR when their
    # time is up; errors saying so are expected, any other is worth a look.
    local hangup='broken pipe|connection reset by peer' hangups others
    hangups=$(grep 'level=ERROR' "$LOGS/node.log" | grep -E -c "$hangup" || true)
    others=$(grep 'level=ERROR' "$LOGS/node.log" | grep -E -v -c "$hangup" || true)
    if ((hangups > 0)); then
      note "the node logged $hangups ERROR lines for clients that hung up mid-NAR (the end of a 16-connection run), e.g. $(grep 'level=ERROR' "$LOGS/node.log" | grep -E -m1 "$hangup" | sed 's/^time=[^ ]* //')"
    fi
    if ((others > 0)); then
      note "the node logged $others other ERROR lines, e.g. $(grep 'level=ERROR' "$LOGS/node.log" | grep -E -v -m1 "$hangup" | sed 's/^time=[^ ]* //')"
    fi
  fi

  {
    echo "| measure | node | nginx (or peer) | ratio | target | met? |"
    echo "| --- | --- | --- | --- | --- | --- |"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "Best of $RUNS alternating runs per side; ratio is node/peer (dedup: new/logical)."
    if [ -s "$NOTES" ]; then
      echo
      sed 's/^/- /' "$NOTES"
    fi
    echo
    echo "command: $CMDLINE"
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); load average before measuring: $LOAD"
    echo "versions: $(go version); $(nix --version); $(nginx -v 2>&1)"
  } | tee "$BENCH_DIR/results.md"
}

main "$@"
