# shellcheck shell=bash disable=SC2034  # variables shared between the sourced files
# Shared helpers for bench/e2e/run.sh: progress lines, the raw S3 client (curl), process
# CPU and memory, and recording samples. Sourced, not run.

PY=/usr/bin/python3            # Debian's python3 (boto3, matplotlib); not the one on PATH
HELPERS=$E2E_DIR/helpers.py

# --- progress ---------------------------------------------------------------------------

RUN_T0=$EPOCHREALTIME
elapsed() { awk -v a="$RUN_T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%4ds", b - a }'; }
log() { echo "[$(date +%T) $(elapsed)] $*" >&2; }
warn() { echo "[$(date +%T) $(elapsed)] WARNING: $*" >&2; }
die() { echo "[$(date +%T) $(elapsed)] ERROR: $*" >&2; exit 1; }

# Seconds between two $EPOCHREALTIME stamps.
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", b - a }'; }
# Megabytes (10^6) per second.
mbps() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.1f", (s > 0) ? n / 1e6 / s : 0 }'; }

# --- the raw S3 client: curl ----------------------------------------------------------------
# curl 7.88's --aws-sigv4 sends no x-amz-content-sha256, which RGW requires: we send
# UNSIGNED-PAYLOAD (no space after the colon: curl signs the header exactly as written).
# A query string must be written already sorted and percent-encoded (curl signs it as is).

s3curl() {
  curl -sS --fail --noproxy '*' --aws-sigv4 "aws:amz:${S3_REGION}:s3" \
    --user "${S3_ACCESS_KEY}:${S3_SECRET_KEY}" -H "x-amz-content-sha256:UNSIGNED-PAYLOAD" "$@"
}
s3url() { echo "$S3_ENDPOINT/$1/$2"; }        # BUCKET KEY
s3_put() { s3curl -o /dev/null -T "$3" "$(s3url "$1" "$2")"; }   # BUCKET KEY FILE
s3_delete() { s3curl -o /dev/null -X DELETE "$(s3url "$1" "$2")"; }

# Size of an object in bytes, or nothing if it is not there (HEAD).
s3_size() {
  s3curl -I "$(s3url "$1" "$2")" 2>/dev/null | tr -d '\r' |
    awk 'tolower($1) == "content-length:" { print $2 }'
}

# Number of objects under PREFIX (ListObjectsV2 pages of 1000, continued with start-after;
# keys here are [A-Za-z0-9._/-] so only '/' needs encoding).
s3_count() {
  local bucket=$1 prefix=${2//\//%2F} after="" n=0 page k
  while :; do
    page=$(s3curl "$S3_ENDPOINT/$bucket?list-type=2&max-keys=1000&prefix=$prefix${after:+&start-after=$after}") || return 1
    k=$(grep -o '<KeyCount>[0-9]*' <<<"$page" | tr -dc 0-9)
    n=$((n + ${k:-0}))
    [[ $page == *"<IsTruncated>true</IsTruncated>"* ]] || break
    after=$(grep -o '<Key>[^<]*</Key>' <<<"$page" | tail -n1 | sed 's/<[^>]*>//g; s#/#%2F#g')
  done
  echo "$n"
}

# Poll until BUCKET KEY has SIZE bytes in S3 (HEAD every 50 ms), at most TIMEOUT s.
wait_visible() {
  local bucket=$1 key=$2 size=$3 timeout=$4 t0=$SECONDS
  until [[ $(s3_size "$bucket" "$key") == "$size" ]]; do
    ((SECONDS - t0 < timeout)) || { echo "s3://$bucket/$key not visible after ${timeout}s" >&2; return 1; }
    sleep 0.05
  done
}

# Poll until COUNT objects exist under BUCKET PREFIX, at most TIMEOUT s.
wait_count() {
  local bucket=$1 prefix=$2 count=$3 timeout=$4 t0=$SECONDS n
  while n=$(s3_count "$bucket" "$prefix") && [[ $n != "$count" ]]; do
    ((SECONDS - t0 < timeout)) || { echo "only $n of $count objects under s3://$bucket/$prefix after ${timeout}s" >&2; return 1; }
    sleep 0.1
  done
}

# A curl --config entry for one request; entries are joined with "next" by curl_batch.
# curl_entry URL OUTPUT [extra config lines...]
curl_entry() {
  local url=$1 out=$2
  shift 2
  printf 'url = "%s"\naws-sigv4 = "aws:amz:%s:s3"\nuser = "%s:%s"\n' "$url" "$S3_REGION" "$S3_ACCESS_KEY" "$S3_SECRET_KEY"
  printf 'header = "x-amz-content-sha256:UNSIGNED-PAYLOAD"\noutput = "%s"\nfail\nnoproxy = "*"\n' "$out"
  printf '%s\n' "$@"
}
# Join entries read on stdin (separated by blank lines) into one curl config.
curl_batch() { awk 'BEGIN { RS = ""; ORS = "" } NR > 1 { print "next\n" } { print $0 "\n" }'; }
# Run such a config: one curl process, one connection, the requests one after another.
# (Not s3curl: its command-line options would apply to the first request a second time.)
curl_run() { curl -sS --config "$1"; }

# --- CPU and memory -----------------------------------------------------------------------

CLK_TCK=$(getconf CLK_TCK)

# User + system CPU seconds of the given PIDs (threads included), 0 for gone ones.
cpu_of() {
  local pid total=0 t
  for pid in "$@"; do
    t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat" 2>/dev/null) || t=0
    total=$((total + ${t:-0}))
  done
  awk -v t="$total" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }'
}

# CPU seconds of this shell's finished children (the raw client's curl processes), in
# CHILD_CPU. `times` must run in this shell, not in a $(...) subshell, so it writes a file.
children_cpu() {
  local u s
  times >"$WORK/times"
  { read -r _ _; read -r u s; } <"$WORK/times"
  CHILD_CPU=$(awk -v u="$u" -v s="$s" '
    function sec(x,  m) { m = x; sub(/m.*/, "", m); sub(/^[0-9]+m/, "", x); sub(/s$/, "", x); return m * 60 + x }
    BEGIN { printf "%.2f", sec(u) + sec(s) }')
}

peak_rss_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true; }

# The share of all CPUs (0..1) busy over the next second, from /proc/stat (idle and iowait
# count as not busy).
cpu_busy_1s() {
  local a b
  a=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
  sleep 1
  b=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ");
    busy = y[1] - x[1]; idle = y[2] - x[2]; printf "%.3f", (busy + idle > 0) ? busy / (busy + idle) : 0 }'
}

# Not timed: waits until the machine is quiet before a measurement, so that no system is
# measured while the server still compacts, collects garbage or writes back what the one
# before it left (the first repetition ran up to 1.6x slower than the others before this,
# for every system). Quiet: dirty pages written back (sync) and at most QUIET_BUSY of the
# CPUs busy in two seconds in a row; after QUIET_TIMEOUT seconds it measures anyway and
# says so.
wait_quiet() {
  local t0=$SECONDS calm=0 busy
  sync
  while ((calm < 2)); do
    busy=$(cpu_busy_1s)
    if awk -v b="$busy" -v m="$QUIET_BUSY" 'BEGIN { exit !(b <= m) }'; then
      calm=$((calm + 1))
    else
      calm=0
    fi
    if ((SECONDS - t0 >= QUIET_TIMEOUT)); then
      warn "the machine is still busy (${busy} of its CPUs) after ${QUIET_TIMEOUT} s; measuring anyway"
      return 0
    fi
  done
  ((SECONDS - t0 <= 3)) || log "  (waited $((SECONDS - t0)) s for a quiet machine)"
}

# --- samples ------------------------------------------------------------------------------

# JSON string (the values here are plain text: escape backslash, quote, control chars).
json_str() {
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/ }
  s=${s//$'\t'/ }
  printf '"%s"' "$s"
}

# record SYSTEM WORKLOAD REP STATUS [key=value ...]: one JSON line in $SAMPLES.
# Numeric values are written as numbers, anything else as strings.
record() {
  local sys=$1 wl=$2 rep=$3 status=$4 kv k v line
  shift 4
  line="{\"system\": $(json_str "$sys"), \"workload\": $(json_str "$wl"), \"rep\": $rep, \"status\": $(json_str "$status")"
  for kv in "$@"; do
    k=${kv%%=*}
    v=${kv#*=}
    if [[ $v =~ ^-?[0-9]+(\.[0-9]+)?$ ]]; then
      line+=", \"$k\": $v"
    else
      line+=", \"$k\": $(json_str "$v")"
    fi
  done
  echo "$line}" >>"$SAMPLES"
}

# Pairs "k=v k=v" printed by helpers.py, as separate words.
kv_get() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1 == k { print $2 }'; }
