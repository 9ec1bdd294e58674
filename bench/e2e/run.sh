#!/usr/bin/env bash
# End-to-end benchmark: bucketfs against s3fs-fuse, rclone mount and a raw S3 client, all
# on the same local Ceph RGW, in one run.
#
#   bench/e2e/run.sh [--quick] [--reps N] [--systems raw,bucketfs,s3fs,rclone-writes,rclone-full]
#                    [--groups G,...] [--out DIR] [--results-md FILE|none] [--port PORT]
#                    [--state DIR] [--rebuild]
#
#   --quick        small sizes, one repetition: a smoke test that takes a few minutes
#                  (CI runs it through bench/e2e/smoke.sh); the full run is for people
#                  takes about 30-40 minutes on 2 cores.
#   --reps N       repetitions of every workload (default 3; --quick: 1)
#   --systems L    comma-separated subset of: raw (curl, the limit), bucketfs, s3fs,
#                  rclone-writes (--vfs-cache-mode writes), rclone-full (--vfs-cache-mode full)
#   --groups L     comma-separated subset of the workload groups (default all): seqread,
#                  seqwrite, smallfiles, ls, tree, randread, fio1, fio4, ttfb, parread
#   --out DIR      where <date>.json and <date>.png go (default bench/results)
#   --results-md F Markdown file the table is appended to (default bench/RESULTS.md for a
#                  full run; none for --quick: its table goes to DIR/<date>-quick.md only)
#   --port, --state  RGW S3 port (7520) and state directory (/tmp/bucketfs-bench)
#   --rebuild      rebuild bucketfs (by default only built when build/release/cli/bucketfs
#                  is missing; BUCKETFS_BIN=path uses another binary)
#
# What it does: installs what it needs (scripts/setup-deps.sh, then s3fs, rclone, fio and
# python3-matplotlib from Debian when missing), builds bucketfs if needed, starts a fresh
# RGW (tests/s3server/rgw.sh) on 127.0.0.1, uploads the test data, and runs each workload
# REPS times, alternating the systems (their order rotates every repetition):
#
#   seq_read_cold / _warm   dd bs=1M of a 1 GiB object on a fresh mount, then again on it
#   seq_write               dd bs=1M conv=fsync of 1 GiB, timed until the object is in S3
#                           (raw: one curl PUT; one with a signed, server-verified SHA-256,
#                           as bucketfs sends; and `aws s3 cp` as the parallel-multipart baseline)
#   small_files             1,000 files of 4 KiB, timed until all are in S3
#   ls_cold / ls_warm       ls -l of a directory of 10,000 objects, fresh mount, then again
#   rand_read               1,000 random 4 KiB preads one at a time, fresh mount (mean/p50/p99)
#   fio_1j / fio_4j         fio randread 4 KiB, psync, 1 and 4 jobs, 15 s
#   ttfb                    open + first byte of a 1 MiB object, fresh mount
#   parallel_read           4 processes each reading its own 256 MiB object
#
# Every group of workloads gets a fresh mount (a cold kernel page cache and a cold
# filesystem cache); the caches are never dropped globally, which would make RGW read its
# disk. Before each group the run waits (untimed, up to 60 s) until the machine is quiet:
# dirty pages written back and at most QUIET_BUSY (0.15) of the CPUs busy for 2 s, so the
# server's background work after an upload or a delete lands on nobody's measurement.
# The raw client is curl (ranged GETs for random reads and TTFB, curl processes in
# parallel for fio, one curl process with one connection for the 1,000 PUTs). Writes are
# measured on bucketfs only once it can create a file: a mount where that fails is
# recorded as n/a with the reason.
#
# Recorded per sample: wall time, throughput or latency, CPU seconds of the filesystem
# process (for raw: of curl), CPU seconds of radosgw + ceph-osd, peak RSS (VmHWM) of the
# filesystem process. The report (bench/e2e/report.py) gives medians and the ratio of
# bucketfs to each other system, as speed (>1: bucketfs faster), with the machine's
# description. Outputs: DIR/<date>.json (every sample), DIR/<date>.png (the ratios), a
# Markdown table appended to bench/RESULTS.md and printed.
#
# Before anything is measured, a full run writes one byte to every page of the free memory but
# TOUCH_KEEP_GIB (2), then frees it (helpers.py touch-memory; once per run, about 3 s a GiB
# the first time). On a virtual machine whose memory the host backs lazily, as these
# machines are, the first write to a page costs a fault in the host: measured here, the
# first 1 GiB read through any mount (whose page cache takes fresh pages) ran at half the
# speed of the next, its daemon spending 3x the CPU in the copy into those pages, while
# curl to /dev/null takes no new pages at all. The host may take free pages back over time
# (the balloon's free page reporting), so every group first touches TOUCH_GROUP_GIB (3) again.
#
# Every mount and daemon it started is stopped by PID at the end, also on failure and on
# Ctrl-C. Logs of the mounts and the server's start stay in STATE-work/logs.
set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$E2E_DIR/../.." && pwd)
CMDLINE="bench/e2e/run.sh $*"

# --- options -----------------------------------------------------------------------------------

QUICK=0
REPS=""
SYSTEMS=raw,bucketfs,s3fs,rclone-writes,rclone-full
GROUPS_ARG=""
OUT_DIR=$ROOT/bench/results
RESULTS_MD=""
PORT=7520
STATE=/tmp/bucketfs-bench
REBUILD=0
usage() { sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
while (($#)); do
  case $1 in
    --quick) QUICK=1 ;;
    --reps) REPS=${2:?}; shift ;;
    --systems) SYSTEMS=${2:?}; shift ;;
    --groups) GROUPS_ARG=${2:?}; shift ;;
    --out) OUT_DIR=${2:?}; shift ;;
    --results-md) RESULTS_MD=${2:?}; shift ;;
    --port) PORT=${2:?}; shift ;;
    --state) STATE=${2:?}; shift ;;
    --rebuild) REBUILD=1 ;;
    -h | --help) usage 0 ;;
    *) echo "unknown option '$1'" >&2; usage ;;
  esac
  shift
done
[[ -z $REPS || $REPS =~ ^[1-9][0-9]*$ ]] || { echo "--reps needs a positive number" >&2; exit 2; }
IFS=, read -r -a SYS_LIST <<<"$SYSTEMS"
for s in "${SYS_LIST[@]}"; do
  [[ $s =~ ^(raw|bucketfs|s3fs|rclone-writes|rclone-full)$ ]] || { echo "unknown system '$s'" >&2; exit 2; }
done

MIB=$((1 << 20))
if ((QUICK)); then
  REPS=${REPS:-1}
  BIG_SIZE=$((16 * MIB)) WRITE_SIZE=$((16 * MIB)) SMALL_COUNT=50 LS_COUNT=300 RAND_COUNT=50
  TREE_DIRS=10 TREE_FILES=3
  FIO_RUNTIME=2 PAR_SIZE=$((4 * MIB)) OP_TIMEOUT=120 VISIBLE_TIMEOUT=60 QUIET_TIMEOUT=5
  RESULTS_MD=${RESULTS_MD:-none}
else
  REPS=${REPS:-3}
  BIG_SIZE=$((1024 * MIB)) WRITE_SIZE=$((1024 * MIB)) SMALL_COUNT=1000 LS_COUNT=10000 RAND_COUNT=1000
  TREE_DIRS=200 TREE_FILES=5
  FIO_RUNTIME=15 PAR_SIZE=$((256 * MIB)) OP_TIMEOUT=900 VISIBLE_TIMEOUT=300 QUIET_TIMEOUT=60
  RESULTS_MD=${RESULTS_MD:-$ROOT/bench/RESULTS.md}
fi
SMALL_SIZE=4096 TTFB_SIZE=$MIB PAR_READERS=4
QUIET_BUSY=${QUIET_BUSY:-0.15}   # see wait_quiet
READ_BUCKET=bench-read WRITE_BUCKET=bench-write
WORK=$STATE-work                        # logs, mount points, rclone caches
DATA=/dev/shm/${STATE##*/}-data         # the bytes uploaded and written
BUCKETFS_BIN=${BUCKETFS_BIN:-$ROOT/build/release/cli/bucketfs}

# shellcheck source=bench/e2e/common.sh
source "$E2E_DIR/common.sh"
# shellcheck source=bench/e2e/systems.sh
source "$E2E_DIR/systems.sh"
# shellcheck source=bench/e2e/workloads.sh
source "$E2E_DIR/workloads.sh"

GROUP_LIST=("${GROUPS_ALL[@]}")
if [[ -n $GROUPS_ARG ]]; then
  IFS=, read -r -a GROUP_LIST <<<"$GROUPS_ARG"
  for g in "${GROUP_LIST[@]}"; do
    [[ -v "GROUP_WORKLOADS[$g]" ]] || { echo "unknown group '$g' (one of: ${GROUPS_ALL[*]})" >&2; exit 2; }
  done
fi

# --- clean-up, whatever happens ------------------------------------------------------------------

RGW_STARTED=0
BG_PIDS=()
cleanup() {
  local rc=$? pid
  trap '' INT TERM HUP     # a second Ctrl-C must not cut the clean-up short
  set +e                   # and neither may a mount that died of the same Ctrl-C
  for pid in "${BG_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  unmount_all
  if ((RGW_STARTED)); then
    log "stopping RGW ($STATE)"
    "$ROOT/tests/s3server/rgw.sh" stop "$STATE" >/dev/null 2>&1 || warn "rgw.sh stop $STATE failed"
    rm -rf "$STATE"
  fi
  rm -rf "${DATA:?}" "${WORK:?}/mnt" "${WORK:?}/rclone-cache"
  ((rc == 0)) || warn "exiting with status $rc (logs: $WORK/logs)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# --- what it needs ---------------------------------------------------------------------------------

ensure_packages() {
  local p missing=()
  for p in "$@"; do
    [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true) == "install ok installed" ]] || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  log "installing ${missing[*]} (apt-get)"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$WORK/apt.log" 2>&1 ||
    { tail -n 20 "$WORK/apt.log" >&2; return 1; }
}

rm -rf "$WORK"
mkdir -p "$WORK/logs" "$OUT_DIR"
log "bucketfs end-to-end benchmark: $( ((QUICK)) && echo "QUICK smoke run" || echo "full run"), $REPS repetition(s), systems ${SYS_LIST[*]}"
"$ROOT/scripts/setup-deps.sh"
pkgs=(fio)
[[ ,$SYSTEMS, == *,s3fs,* ]] && pkgs+=(s3fs)
[[ ,$SYSTEMS, == *,rclone-* ]] && pkgs+=(rclone)
[[ ,$SYSTEMS, == *,raw,* ]] && pkgs+=(awscli)
ensure_packages "${pkgs[@]}"
ensure_packages python3-matplotlib || warn "python3-matplotlib could not be installed: no chart"

if [[ ,$SYSTEMS, == *,bucketfs,* ]] && { ((REBUILD)) || [[ ! -x $BUCKETFS_BIN ]]; }; then
  log "building bucketfs (release)"
  (cd "$ROOT" && cmake --preset release >/dev/null && cmake --build --preset release -j "$(nproc)" --target bucketfs >/dev/null)
fi

# --- the server and the data -------------------------------------------------------------------------

if ((QUICK)); then
  log "not touching the free memory first (a --quick run's numbers are not compared)"
else
  log "touching the free memory once (all but ${TOUCH_KEEP_GIB:-2} GiB): $("$PY" "$HELPERS" touch-memory "${TOUCH_KEEP_GIB:-2}")"
fi
log "starting RGW on 127.0.0.1:$PORT (state $STATE)"
RGW_STARTED=1
# The block file is sparse; 1 GiB writes are deleted and collected after each measurement.
RGW_BLOCK_SIZE=$((32 << 30)) "$ROOT/tests/s3server/rgw.sh" start "$STATE" "$PORT" 2>"$WORK/logs/rgw-start.log" ||
  { cat "$WORK/logs/rgw-start.log" >&2; die "RGW did not start"; }
# shellcheck disable=SC1091
source "$STATE/env"
SERVER_PIDS=("$(tr -dc 0-9 <"$STATE/run/client.rgw.a.pid")" "$(tr -dc 0-9 <"$STATE/run/osd.0.pid")")
rgw_gc() { timeout -k 5 120 radosgw-admin --conf "$STATE/ceph.conf" gc process --include-all >/dev/null 2>&1 || true; }

"$ROOT/tests/s3server/rgw.sh" mkbucket "$STATE" "$READ_BUCKET"
"$ROOT/tests/s3server/rgw.sh" mkbucket "$STATE" "$WRITE_BUCKET"
log "uploading test data: $((BIG_SIZE / MIB)) MiB object, $PAR_READERS x $((PAR_SIZE / MIB)) MiB, 1 MiB, $LS_COUNT small objects"
rm -rf "$DATA" && mkdir -p "$DATA"
head -c "$BIG_SIZE" /dev/urandom >"$DATA/big.bin"
head -c "$WRITE_SIZE" /dev/urandom >"$DATA/write.bin"
head -c "$PAR_SIZE" /dev/urandom >"$DATA/par.bin"
head -c "$TTFB_SIZE" /dev/urandom >"$DATA/ttfb.bin"
head -c $((SMALL_SIZE * 3 / 4)) /dev/urandom | base64 -w0 >"$DATA/small.txt"   # 4096 printable bytes
cp "$DATA/small.txt" "$DATA/small.bin"
s3_put "$READ_BUCKET" big.bin "$DATA/big.bin"
s3_put "$READ_BUCKET" ttfb.bin "$DATA/ttfb.bin"
for ((i = 0; i < PAR_READERS; i++)); do s3_put "$READ_BUCKET" "par-$i.bin" "$DATA/par.bin"; done
"$PY" "$HELPERS" put-many "$READ_BUCKET" many/ "$LS_COUNT"
[[ $(s3_count "$READ_BUCKET" many/) == "$LS_COUNT" ]] || die "uploading the $LS_COUNT small objects failed"
"$PY" "$HELPERS" put-tree "$READ_BUCKET" tree/ "$TREE_DIRS" "$TREE_FILES"
TREE_KEYS=$((TREE_DIRS * TREE_FILES + (TREE_DIRS + 1) / 2))   # the files, and every other marker
[[ $(s3_count "$READ_BUCKET" tree/) == "$TREE_KEYS" ]] || die "uploading the directory tree failed"

system_setup
for s in "${SYS_LIST[@]}"; do
  probe_writable "$s"
  [[ ${WRITABLE[$s]} == yes ]] || log "$s: writes $(sed 's/^n\/a //' <<<"${WRITABLE[$s]}")"
done

# --- the measurements ------------------------------------------------------------------------------------

RUN_ID=$(date -u +%Y-%m-%d)$( ((QUICK)) && echo -quick || true)
stem=$OUT_DIR/$RUN_ID
for ((n = 2; ; n++)); do [[ -e $stem.json ]] || break; stem=$OUT_DIR/$RUN_ID-$n; done
SAMPLES=$WORK/samples.jsonl
: >"$SAMPLES"

nsys=${#SYS_LIST[@]}
for ((rep = 1; rep <= REPS; rep++)); do
  order=()   # rotate the order of the systems every repetition
  for ((k = 0; k < nsys; k++)); do order+=("${SYS_LIST[$(((k + rep - 1) % nsys))]}"); done
  for group in "${GROUP_LIST[@]}"; do
    log "repetition $rep/$REPS: $group (${order[*]})"
    for s in "${order[@]}"; do
      # Called in a || list, so `set -e` is off inside: a failed measurement is recorded
      # and the run goes on.
      run_group "$group" "$s" "$rep" || warn "$group on $s: unexpected error"
    done
  done
done

# --- the report --------------------------------------------------------------------------------------------

versions=""
for s in "${SYS_LIST[@]}"; do versions+="${versions:+, }$(json_str "$s"): $(json_str "$(system_version "$s")")"; done
cat >"$WORK/meta.json" <<EOF
{
  "command": $(json_str "$CMDLINE"),
  "date": $(json_str "$(date -u +%Y-%m-%dT%H:%M:%SZ)"),
  "quick": $( ((QUICK)) && echo true || echo false),
  "reps": $REPS,
  "systems": [$(for s in "${SYS_LIST[@]}"; do printf '%s"%s"' "$([[ $s == "${SYS_LIST[0]}" ]] || echo ', ')" "$s"; done)],
  "versions": {$versions},
  "server": $(json_str "Ceph RGW $(radosgw --version 2>/dev/null | awk '{ print $3 }') (tests/s3server/rgw.sh, bluestore, 127.0.0.1:$PORT)"),
  "sizes": {"big_bytes": $BIG_SIZE, "write_bytes": $WRITE_SIZE, "small_files": $SMALL_COUNT, "small_bytes": $SMALL_SIZE,
            "ls_entries": $LS_COUNT, "tree_dirs": $TREE_DIRS, "tree_files": $TREE_FILES,
            "random_reads": $RAND_COUNT, "fio_runtime_s": $FIO_RUNTIME,
            "parallel_readers": $PAR_READERS, "parallel_bytes_each": $PAR_SIZE, "ttfb_bytes": $TTFB_SIZE},
  "bucketfs_writes": $(json_str "${WRITABLE[bucketfs]:-not run}")
}
EOF
report_args=(--samples "$SAMPLES" --meta "$WORK/meta.json" --json "$stem.json" --png "$stem.png" --md "$stem.md")
[[ $RESULTS_MD == none ]] || report_args+=(--append-md "$RESULTS_MD")
"$PY" "$E2E_DIR/report.py" "${report_args[@]}"
[[ $RESULTS_MD == none ]] || log "table appended to $RESULTS_MD"
log "done in $(elapsed | tr -d ' '): $stem.json"
