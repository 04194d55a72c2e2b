#!/usr/bin/env bash
# Measures lzip for Guix pull-through and serving (issue 18) on the go1.25.0
# toolchain's NAR (scripts/corpus.sh), and prints two Markdown tables:
#   decoding  the NAR as lzip -6 and lzip -9 files, decoded by `lzip -dc`
#             (the reference), and by node/upstream's Open from a loopback
#             HTTP server (BenchmarkLzipOpen) with the lzip command, as the
#             node decodes where lzip is installed, and with internal/lzip
#             (pure Go), as it decodes where it is not; in NAR MB/s, beside
#             what a 100 mbit link brings in at the file's ratio
#   serving   the cost of compressing that NAR: lzip -0, -1 and -6 against
#             zstd -3, in NAR MB/s and ratio (lzip -9 once: it makes the
#             -9 file)
# Each measure is the best of BENCH_RUNS runs, the runs of the kinds
# alternating. lzip, zstd and the Go decoder each use one core.
#
# Environment:
#   BENCH_DIR   scratch dir on tmpfs (default /dev/shm/p2pstore-lzip-bench);
#               wiped at start if this script made it
#   BENCH_RUNS  runs per measure (3)
#
# Run as root where lzip or zstd is missing (apt-get) or Nix is
# (scripts/nix-env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C

CMDLINE="bench/lzip.sh"
for v in BENCH_RUNS BENCH_DIR; do
  if [ -n "${!v:-}" ]; then CMDLINE="$v=${!v} $CMDLINE"; fi
done
BENCH_DIR=${BENCH_DIR:-/dev/shm/p2pstore-lzip-bench}
RUNS=${BENCH_RUNS:-3}

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
now() { echo "$EPOCHREALTIME"; }
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }
fmt() { awk -v v="$2" "BEGIN { printf \"$1\", v }"; }
best_max() { printf '%s\n' "$@" | sort -g | tail -n1; }

missing=()
command -v lzip >/dev/null 2>&1 || missing+=(lzip)
command -v zstd >/dev/null 2>&1 || missing+=(zstd)
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
fi
source scripts/nix-env.sh

# Wipe only a dir this script made (it carries a marker).
if [ -e "$BENCH_DIR" ]; then
  if [ -f "$BENCH_DIR/.p2pstore-lzip-bench" ]; then
    rm -rf "$BENCH_DIR"
  elif [ -n "$(ls -A "$BENCH_DIR")" ]; then
    die "$BENCH_DIR exists, is not empty and was not made by this script"
  fi
fi
mkdir -p "$BENCH_DIR"
touch "$BENCH_DIR/.p2pstore-lzip-bench"
trap '[ -n "${BENCH_KEEP:-}" ] || rm -f "$BENCH_DIR"/go.nar* "$BENCH_DIR/upstream.test"' EXIT

log "preparing the corpus (scripts/corpus.sh)"
GO0=$(scripts/corpus.sh 2>"$BENCH_DIR/corpus.log" | sed -n 1p) || die "scripts/corpus.sh failed; see $BENCH_DIR/corpus.log"
[[ $GO0 == */nix/store/*-go1.25.0 ]] || die "unexpected corpus.sh output: $GO0"
NAR=$BENCH_DIR/go.nar
nix-store --dump "$GO0" >"$NAR"
NAR_BYTES=$(stat -c %s "$NAR")
log "go1.25.0: $NAR_BYTES bytes of NAR"
go test -c -o "$BENCH_DIR/upstream.test" ./node/upstream

# compress NAME CMD...: one run of CMD (reading the NAR, writing
# $NAR.NAME); prints NAR MB/s.
compress() {
  local name=$1 t0 t1; shift
  t0=$(now)
  "$@" <"$NAR" >"$NAR.$name"
  t1=$(now)
  calc "$NAR_BYTES / ($t1 - $t0) / 1e6"
}

# decode KIND FILE: one run of decoder KIND (lzip-dc, command, go) on
# FILE; prints NAR MB/s.
decode() {
  local kind=$1 file=$2 t0 t1 out mbs
  case $kind in
    lzip-dc)
      t0=$(now)
      lzip -dc "$file" >/dev/null
      t1=$(now)
      calc "$NAR_BYTES / ($t1 - $t0) / 1e6"
      ;;
    *)
      out=$(P2PSTORE_BENCH_LZIP=$file "$BENCH_DIR/upstream.test" -test.run '^$' \
        -test.bench "^BenchmarkLzipOpen\$/^$kind\$" -test.benchtime 1x 2>&1) || die "BenchmarkLzipOpen failed: $out"
      mbs=$(awk '/^BenchmarkLzipOpen/ { for (i = 2; i <= NF; i++) if ($i == "MB/s") print $(i-1) }' <<<"$out")
      [ -n "$mbs" ] || die "no MB/s from BenchmarkLzipOpen: $out"
      echo "$mbs"
      ;;
  esac
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')

# ---------------------------------------------------------------- serving
COMPRESSORS=(zstd3 lzip0 lzip1 lzip6)
declare -A CMD=([zstd3]="zstd -3 -q -c" [lzip0]="lzip -0 -c" [lzip1]="lzip -1 -c" [lzip6]="lzip -6 -c" [lzip9]="lzip -9 -c")
declare -A LABEL=([zstd3]="zstd -3" [lzip0]="lzip -0" [lzip1]="lzip -1" [lzip6]="lzip -6" [lzip9]="lzip -9")
declare -A CRUNS CBEST
for ((i = 1; i <= RUNS; i++)); do
  n=${#COMPRESSORS[@]}
  for ((j = 0; j < n; j++)); do
    c=${COMPRESSORS[(i - 1 + j) % n]}
    # shellcheck disable=SC2086
    v=$(compress "$c" ${CMD[$c]})
    log "  compress run $i ${LABEL[$c]}: $v MB/s"
    CRUNS[$c]+="${CRUNS[$c]:+ }$(fmt '%.1f' "$v")"
  done
done
log "  lzip -9 (once: it makes the -9 file)"
v=$(compress lzip9 lzip -9 -c)
CRUNS[lzip9]=$(fmt '%.1f' "$v")
for c in "${COMPRESSORS[@]}" lzip9; do
  # shellcheck disable=SC2086
  CBEST[$c]=$(best_max ${CRUNS[$c]})
done

# ---------------------------------------------------------------- decoding
DECODERS=(lzip-dc command go)
declare -A DRUNS DBEST
for ((i = 1; i <= RUNS; i++)); do
  for level in 6 9; do
    n=${#DECODERS[@]}
    for ((j = 0; j < n; j++)); do
      d=${DECODERS[(i - 1 + j) % n]}
      v=$(decode "$d" "$NAR.lzip$level")
      log "  decode run $i $d -$level: $v MB/s"
      DRUNS[$d$level]+="${DRUNS[$d$level]:+ }$(fmt '%.1f' "$v")"
    done
  done
done
for d in "${DECODERS[@]}"; do
  for level in 6 9; do
    # shellcheck disable=SC2086
    DBEST[$d$level]=$(best_max ${DRUNS[$d$level]})
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report
size() { stat -c %s "$NAR.$1"; }
ratio() { calc "$NAR_BYTES / $(size "$1")"; }
echo
echo "$CMDLINE"
echo
echo "$STARTED; go1.25.0's NAR, $(fmt '%.1f' "$(calc "$NAR_BYTES / 1e6")") MB; $(lzip --version | head -n1), zstd $(zstd --version | grep -o 'v[0-9.]*' | head -n1); $(nproc) cores; load average $LOAD_BEFORE before, $LOAD_AFTER after; best of $RUNS runs (each run's MB/s in brackets)."
echo
echo "Decoding, NAR MB/s:"
echo
echo "| decoder | lzip -6 file | lzip -9 file |"
echo "| --- | --- | --- |"
declare -A DNAME=([lzip-dc]="\`lzip -dc\` (the reference)" [command]="node: the lzip command through Open" [go]="node: internal/lzip (pure Go) through Open")
for d in "${DECODERS[@]}"; do
  cells=()
  for level in 6 9; do
    v=${DBEST[$d$level]}
    if [ "$d" = lzip-dc ]; then
      cells+=("$v [${DRUNS[$d$level]}]")
    else
      cells+=("$v [${DRUNS[$d$level]}], $(fmt '%.2f' "$(calc "$v / ${DBEST[lzip-dc$level]}")")x")
    fi
  done
  echo "| ${DNAME[$d]} | ${cells[0]} | ${cells[1]} |"
done
echo "| what a 100 mbit link brings in (12.5 MB/s of lzip times the ratio) | $(fmt '%.1f' "$(calc "12.5 * $(ratio lzip6)")") | $(fmt '%.1f' "$(calc "12.5 * $(ratio lzip9)")") |"
echo
echo "Compressing (the cost of serving), NAR MB/s in:"
echo
echo "| compressor | NAR MB/s | compressed | ratio | time against zstd -3 |"
echo "| --- | --- | --- | --- | --- |"
for c in "${COMPRESSORS[@]}" lzip9; do
  echo "| ${LABEL[$c]} | ${CBEST[$c]} [${CRUNS[$c]}] | $(fmt '%.1f' "$(calc "$(size "$c") / 1e6")") MB | $(fmt '%.2f' "$(ratio "$c")") | $(fmt '%.1f' "$(calc "${CBEST[zstd3]} / ${CBEST[$c]}")")x |"
done
