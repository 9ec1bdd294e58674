#!/usr/bin/env bash
# A throw-away single-node Ceph RADOS Gateway (S3) on 127.0.0.1 for tests and benchmarks.
#
#   rgw.sh start  STATE_DIR [PORT]   fresh cluster (mon + bluestore OSD + RGW), S3 on PORT (7480)
#   rgw.sh stop   STATE_DIR [--purge [--keep-log DIR]]
#                                    stop RGW, OSD, monitor by the PIDs in their pid files;
#                                    --purge then deletes STATE_DIR (GBs of OSD store), first
#                                    moving its log/ to DIR (replacing DIR) if given
#   rgw.sh status STATE_DIR          exit 0 if this RGW runs and answers HTTP
#   rgw.sh mkbucket STATE_DIR NAME   create a bucket (boto3, path style)
#   rgw.sh add-key STATE_DIR         add an access key to the test user; prints "ACCESS SECRET"
#   rgw.sh rm-key  STATE_DIR ACCESS  remove that access key
#
# All state (ceph.conf, keyring, mon and OSD data, logs, pid files, admin sockets) lives in
# STATE_DIR. `start` writes STATE_DIR/env, a sourceable file with S3_ENDPOINT, S3_REGION,
# S3_ACCESS_KEY, S3_SECRET_KEY, the matching AWS_* variables and BUCKETFS_RGW_STATE.
#
# Environment:
#   RGW_MON_PORT       monitor port (default PORT-691, i.e. 6789 for 7480)
#   RGW_START_TIMEOUT  seconds for the whole start (default 90)
#   RGW_BLOCK_SIZE     size of the sparse bluestore block file (default 12 GiB)
#
# Processes are only ever stopped by PID (from our pid files, or processes whose command
# line names this STATE_DIR's ceph.conf); never by name.
set -euo pipefail
unset CEPH_ARGS CEPH_CONF

readonly TEST_UID=bucketfs-test
readonly TEST_ACCESS=bucketfs-test-access
readonly TEST_SECRET=bucketfs-test-secret-key-0123456789
readonly REGION=us-east-1
readonly PY=/usr/bin/python3

log() { echo "rgw.sh: $*" >&2; }
die() { echo "rgw.sh: ERROR: $*" >&2; exit 1; }

usage() {
  sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# --- paths ----------------------------------------------------------------------------

set_state() {
  [[ -n ${1:-} ]] || usage
  S=$(realpath -m -- "$1")
  [[ $S != / ]] || die "refusing to use / as the state directory"
  [[ $S =~ ^[A-Za-z0-9/._+-]+$ ]] || die "state directory '$S' must contain only [A-Za-z0-9/._+-]"
  # Admin sockets live in $S/run; a unix socket path must stay under 108 bytes.
  (( ${#S} <= 70 )) || die "state directory path '$S' is too long (max 70 chars; unix socket paths are limited)"
  CONF=$S/ceph.conf
  MARKER=$S/.bucketfs-rgw
}

ceph_cli() {
  # ceph CLI with a bounded run time (it retries forever when the monitor is down).
  # Not --connect-timeout: with it, pacific's CLI now and then sends its first command
  # with a zero fsid and the monitor answers EPERM.
  local t=${CLI_TIMEOUT:-15}
  timeout --kill-after=5 "$t" ceph --conf "$CONF" "$@"
}

rgw_admin() { timeout --kill-after=5 60 radosgw-admin --conf "$CONF" "$@"; }

# --- processes --------------------------------------------------------------------------

# Daemons by ceph name: mon.a, osd.0, client.rgw.a (RGW).
daemon_pidfile() { echo "$S/run/$1.pid"; }

# Is PID alive (not a zombie) and one of ours (its command line names our ceph.conf)?
pid_is_ours() {
  local pid=$1 state cmd
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/stat ]] || return 1
  state=$(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ $state != Z && -n $state ]] || return 1
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ " $cmd " == *" --conf $CONF "* ]]
}

read_pid() {
  local f
  f=$(daemon_pidfile "$1")
  [[ -s $f ]] || return 1
  tr -dc '0-9' <"$f"
}

daemon_running() {
  local pid
  pid=$(read_pid "$1") || return 1
  pid_is_ours "$pid"
}

# Stop one PID: TERM, wait up to 20 s, then KILL (that PID only).
stop_pid() {
  local pid=$1 what=$2 i
  pid_is_ours "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 200; i++)); do
    pid_is_ours "$pid" || return 0
    sleep 0.1
  done
  log "$what (pid $pid) did not exit within 20 s after SIGTERM; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    pid_is_ours "$pid" || return 0
    sleep 0.1
  done
  log "WARNING: $what (pid $pid) still present after SIGKILL"
  return 1
}

# Processes whose command line names our ceph.conf (daemons whose pid file is missing,
# hung CLI calls). Identified by our unique conf path, stopped by PID.
our_pids() {
  local f p
  while IFS= read -r f; do
    p=${f#/proc/}
    p=${p%/cmdline}
    [[ $p != "$$" && $p != "$BASHPID" ]] || continue
    if pid_is_ours "$p"; then echo "$p"; fi
  done < <(grep -lsaF -- "$CONF" /proc/[0-9]*/cmdline || true)
  return 0
}

stop_all() {
  local name pid rc=0
  [[ -d $S ]] || return 0
  for name in client.rgw.a osd.0 mon.a; do
    if pid=$(read_pid "$name"); then
      stop_pid "$pid" "$name" || rc=1
    fi
    rm -f -- "$(daemon_pidfile "$name")"
  done
  for pid in $(our_pids); do
    log "stopping leftover process $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-120)"
    stop_pid "$pid" "pid $pid" || rc=1
  done
  return $rc
}

# --- ports ------------------------------------------------------------------------------

check_port_free() {
  local port=$1 what=$2 out holder
  out=$(ss -ltnpH "( sport = :$port )" 2>/dev/null || true)
  [[ -z $out ]] && return 0
  holder=$(grep -o 'users:(.*)' <<<"$out" | head -n1 || true)
  die "port $port ($what) is already in use${holder:+ by $holder}:
$out
(choose another RGW port, or set RGW_MON_PORT for the monitor)"
}

http_code() {
  curl --noproxy '*' -s -o /dev/null -w '%{http_code}' --max-time 3 "http://127.0.0.1:$1/" 2>/dev/null || true
}

# --- start ------------------------------------------------------------------------------

# Seconds left before the start deadline (at least 1: `timeout 0` would mean no limit).
remaining() {
  local r=$((DEADLINE - SECONDS))
  echo $((r > 0 ? r : 1))
}

# Progress with elapsed seconds, kept in STATE_DIR/log/start.log.
phase() { echo "$(date +%T.%N | cut -c1-12) +$((SECONDS - T0))s $*" >>"$S/log/start.log"; }

fail_with_log() {
  local msg=$1 logf=$2
  {
    echo "rgw.sh: ERROR: $msg"
    for f in "$logf" "${logf%.log}.out"; do
      if [[ -s $f ]]; then
        echo "---- last lines of $f ----"
        tail -n 25 "$f"
      fi
    done
  } >&2
  exit 1
}

# OUT=FILE run_limited DESCRIPTION LOGFILE CMD... : run CMD (output appended to FILE)
# within the remaining start time; on failure or timeout, fail showing LOGFILE's tail.
run_limited() {
  local what=$1 logf=$2 rc=0
  shift 2
  timeout --kill-after=5 "$(remaining)" "$@" >>"$OUT" 2>&1 || rc=$?
  ((rc == 0)) && return 0
  ((rc == 124 || rc == 137)) && fail_with_log "timed out after ${TIMEOUT}s: $what" "$logf"
  fail_with_log "$what failed (exit $rc)" "$logf"
}

# wait_until DESCRIPTION LOGFILE CMD... : poll CMD every 0.25 s until it succeeds or the
# start deadline passes.
wait_until() {
  local what=$1 logf=$2
  shift 2
  while ! "$@" >/dev/null 2>&1; do
    ((SECONDS < DEADLINE)) || fail_with_log "timed out after ${TIMEOUT}s waiting for $what" "$logf"
    sleep 0.25
  done
}

mon_up() { CLI_TIMEOUT=10 ceph_cli -s; }
osd_up() {
  local s
  s=$(CLI_TIMEOUT=10 ceph_cli osd stat 2>/dev/null) || return 1
  [[ $s == *"1 up"* && $s == *"1 in"* ]]
}
osd_crush_add() { CLI_TIMEOUT=15 ceph_cli osd crush create-or-move osd.0 1.0 root=default >>"$S/log/osd.0.out" 2>&1; }
# Start the OSD; a start that fails in init (see the note in ceph.conf) is retried twice.
start_osd() {
  local attempt pid rc
  for attempt in 1 2 3; do
    rc=0
    timeout --kill-after=5 "$(remaining)" ceph-osd --conf "$CONF" -i 0 >>"$S/log/osd.0.out" 2>&1 || rc=$?
    ((rc == 0)) && return 0
    ((rc != 124 && rc != 137)) || fail_with_log "timed out after ${TIMEOUT}s: starting ceph-osd" "$S/log/osd.0.log"
    ((attempt < 3 && SECONDS < DEADLINE)) || break
    log "ceph-osd failed to start (attempt $attempt); retrying"
    if pid=$(read_pid osd.0); then stop_pid "$pid" osd.0 || true; fi
    sleep 1
  done
  fail_with_log "ceph-osd failed to start (exit $rc)" "$S/log/osd.0.log"
}
osd_new() { CLI_TIMEOUT=15 ceph_cli osd new "$1" 0 >>"$S/log/osd.0.out" 2>&1; }
rgw_up() { [[ $(http_code "$PORT") != 000 ]]; }

write_conf() {
  local fsid=$1
  cat >"$CONF" <<EOF
# Generated by tests/s3server/rgw.sh: a single-node test cluster on 127.0.0.1.
[global]
fsid = $fsid
mon host = v1:127.0.0.1:$MON_PORT
mon initial members = a
ms bind msgr2 = false
ms bind ipv6 = false
public network = 127.0.0.0/8
public addr = 127.0.0.1
cluster addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
keyring = $S/keyring
run dir = $S/run
crash dir = $S/crash
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
mon data avail warn = 1
mon data avail crit = 0
mon cluster log file = $S/log/ceph.log
# Commit monitor changes after 0.05 s instead of 1 s: RGW creates its pools one by one
# at start and on the first bucket, each taking two commits (about 2 s each otherwise).
paxos propose interval = 0.05
osd objectstore = bluestore
osd memory target = 1073741824
osd max object size = 1073741824

[mon]
mon data = $S/mon.\$id
log file = $S/log/\$name.log
pid file = $S/run/\$name.pid
admin socket = $S/run/\$name.asok

[osd]
osd data = $S/osd.\$id
bluestore block path = $S/osd.\$id/block.file
bluestore block create = true
bluestore block size = $BLOCK_SIZE
bluestore fsck on mount = false
bluestore fsck on mkfs = false
# With auth none, pacific's MonClient now and then sends its first command with a zero
# fsid, which the monitor refuses ("wrong fsid", EPERM) and the OSD then dies in init.
# So the OSD sends no commands at start; rgw.sh places it in CRUSH itself.
osd crush update on start = false
osd class update on start = false
log file = $S/log/\$name.log
pid file = $S/run/\$name.pid
admin socket = $S/run/\$name.asok

[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$PORT tcp_nodelay=1
rgw dns name = localhost
rgw thread pool size = 64
rgw data = $S/rgw.\$id
log file = $S/log/\$name.log
pid file = $S/run/\$name.pid
admin socket = $S/run/\$name.asok
EOF
}

write_env() {
  cat >"$S/aws-config" <<EOF
[default]
region = $REGION
s3 =
    addressing_style = path
EOF
  cat >"$S/env.tmp" <<EOF
# Generated by tests/s3server/rgw.sh start; source it (set -a not needed).
export S3_ENDPOINT=http://127.0.0.1:$PORT
export S3_REGION=$REGION
export S3_ACCESS_KEY=$TEST_ACCESS
export S3_SECRET_KEY=$TEST_SECRET
export AWS_ACCESS_KEY_ID=$TEST_ACCESS
export AWS_SECRET_ACCESS_KEY=$TEST_SECRET
export AWS_DEFAULT_REGION=$REGION
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT
# Path-style addressing for /usr/bin/aws without touching ~/.aws.
export AWS_CONFIG_FILE=$S/aws-config
export BUCKETFS_RGW_STATE=$S
export NO_PROXY=127.0.0.1,localhost\${NO_PROXY:+,\$NO_PROXY}
export no_proxy=127.0.0.1,localhost\${no_proxy:+,\$no_proxy}
EOF
  mv -f "$S/env.tmp" "$S/env"
}

on_start_exit() {
  local rc=$?
  if ((rc != 0)); then
    trap '' PIPE HUP INT TERM  # finish the cleanup even if stderr is gone
    phase "start failed (exit $rc)" 2>/dev/null || true
    log "start failed; stopping the daemons it started (logs stay in $S/log)" 2>/dev/null || true
    stop_all || true
  fi
  exit $rc
}

cmd_start() {
  set_state "${1:-}"
  PORT=${2:-7480}
  if ! [[ $PORT =~ ^[0-9]+$ ]] || ((PORT < 1024 || PORT > 65535)); then
    die "bad port '$PORT' (1024-65535)"
  fi
  MON_PORT=${RGW_MON_PORT:-$((PORT - 691))}
  if ! [[ $MON_PORT =~ ^[0-9]+$ ]] || ((MON_PORT < 1024 || MON_PORT > 65535)); then
    die "bad monitor port '$MON_PORT' (1024-65535; set RGW_MON_PORT)"
  fi
  ((MON_PORT != PORT)) || die "monitor port and RGW port are both $PORT"
  TIMEOUT=${RGW_START_TIMEOUT:-90}
  BLOCK_SIZE=${RGW_BLOCK_SIZE:-12884901888}
  T0=$SECONDS
  DEADLINE=$((SECONDS + TIMEOUT))

  local bin
  for bin in ceph ceph-mon ceph-osd radosgw radosgw-admin ceph-authtool monmaptool ss curl timeout; do
    command -v "$bin" >/dev/null 2>&1 || die "'$bin' not found; run scripts/setup-deps.sh"
  done

  check_port_free "$PORT" "RGW S3 port"
  check_port_free "$MON_PORT" "Ceph monitor port"

  # A fresh cluster every time: refuse directories that are not ours or still running.
  if [[ -e $S ]]; then
    [[ -d $S ]] || die "'$S' exists and is not a directory"
    if [[ -n $(ls -A -- "$S") ]]; then
      [[ -e $MARKER ]] || die "'$S' is not empty and was not made by rgw.sh; refusing to wipe it"
      local n
      for n in client.rgw.a osd.0 mon.a; do
        ! daemon_running "$n" || die "a cluster is still running in '$S' ($n); run: $0 stop $S"
      done
      [[ -z $(our_pids) ]] || die "processes still use '$CONF'; run: $0 stop $S"
      rm -rf -- "$S"
    fi
  fi

  mkdir -p -- "$S"/{run,log,crash,mon.a,osd.0,rgw.a}
  : >"$MARKER"
  echo "$PORT" >"$S/port"
  # Any way out of a failed start stops what it started (not SIGKILL, which cannot be caught).
  trap on_start_exit EXIT
  trap 'exit 129' HUP
  trap 'exit 130' INT
  trap 'exit 141' PIPE
  trap 'exit 143' TERM

  local fsid osd_uuid
  fsid=$(cat /proc/sys/kernel/random/uuid)
  osd_uuid=$(cat /proc/sys/kernel/random/uuid)
  write_conf "$fsid"

  phase "creating the monitor"
  {
    ceph-authtool --create-keyring "$S/keyring" --gen-key -n mon. --cap mon 'allow *'
    ceph-authtool "$S/keyring" --gen-key -n client.admin \
      --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *'
    monmaptool --create --fsid "$fsid" --addv a "[v1:127.0.0.1:$MON_PORT]" "$S/monmap"
    ceph-mon --conf "$CONF" --mkfs -i a --monmap "$S/monmap" --keyring "$S/keyring"
  } >"$S/log/mkfs.out" 2>&1 || fail_with_log "creating the monitor failed" "$S/log/mkfs.out"
  OUT=$S/log/mon.a.out run_limited "starting ceph-mon" "$S/log/mon.a.log" ceph-mon --conf "$CONF" -i a
  wait_until "the monitor (127.0.0.1:$MON_PORT)" "$S/log/mon.a.log" mon_up
  phase "monitor up; creating the OSD"

  # OSD (bluestore on a sparse block file).
  # "osd new" with the same uuid and id is idempotent, so it may be retried.
  wait_until "'ceph osd new' to succeed" "$S/log/osd.0.out" osd_new "$osd_uuid"
  OUT=$S/log/osd.0.out run_limited "ceph-osd --mkfs" "$S/log/osd.0.log" \
    ceph-osd --conf "$CONF" -i 0 --mkfs --osd-uuid "$osd_uuid"
  phase "OSD mkfs done; starting the OSD"
  wait_until "the OSD to be placed in CRUSH" "$S/log/osd.0.out" osd_crush_add
  start_osd
  wait_until "the OSD to be up and in" "$S/log/osd.0.log" osd_up

  phase "OSD up and in; starting RGW"
  # RGW. The OSD picked its own ports; make sure it did not take ours.
  check_port_free "$PORT" "RGW S3 port"
  OUT=$S/log/client.rgw.a.out run_limited "starting radosgw" "$S/log/client.rgw.a.log" \
    radosgw --conf "$CONF" -n client.rgw.a
  wait_until "RGW to answer HTTP on 127.0.0.1:$PORT" "$S/log/client.rgw.a.log" rgw_up

  phase "RGW answers HTTP; creating the S3 user"
  rgw_admin user create --uid="$TEST_UID" --display-name="bucketfs test" \
    --access-key="$TEST_ACCESS" --secret-key="$TEST_SECRET" >"$S/log/user.out" 2>&1 \
    || fail_with_log "radosgw-admin user create failed" "$S/log/user.out"

  write_env
  phase "ready"
  trap - EXIT HUP INT PIPE TERM
  log "RGW ready at http://127.0.0.1:$PORT (monitor 127.0.0.1:$MON_PORT, state $S) in $((SECONDS - T0)) s"
  log "use: source $S/env"
}

# --- other commands -----------------------------------------------------------------------

require_started() {
  [[ -e $MARKER && -s $S/port ]] || die "'$S' holds no rgw.sh cluster"
  PORT=$(<"$S/port")
}

cmd_stop() {
  set_state "${1:-}"
  if [[ ! -d $S ]]; then
    return 0
  fi
  [[ -e $MARKER || -z $(ls -A -- "$S") ]] || die "'$S' was not made by rgw.sh"
  stop_all || die "some processes could not be stopped"
  rm -f -- "$S"/run/*.asok
  case "${2:-}|${3:-}" in
    "|") return 0 ;;
    "--purge|") ;;
    "--purge|--keep-log") [[ -n ${4:-} ]] || usage
      # The logs outlive the cluster in a directory of the caller's (a build tree), so a
      # post-mortem needs nothing left behind in /tmp.
      rm -rf -- "$4"
      mkdir -p -- "$(dirname -- "$4")"
      if [[ -d $S/log ]]; then mv -- "$S/log" "$4"; fi ;;
    *) usage ;;
  esac
  rm -rf -- "$S"
}

cmd_status() {
  set_state "${1:-}"
  [[ -e $MARKER && -s $S/port ]] || { echo "not running (no cluster in $S)"; return 1; }
  PORT=$(<"$S/port")
  local code
  daemon_running client.rgw.a || { echo "not running: no radosgw process for $S"; return 1; }
  code=$(http_code "$PORT")
  if [[ $code != 000 ]]; then
    echo "running: http://127.0.0.1:$PORT (HTTP $code)"
    return 0
  fi
  echo "not running: nothing answers HTTP on 127.0.0.1:$PORT"
  return 1
}

cmd_mkbucket() {
  set_state "${1:-}"
  local name=${2:-}
  [[ -n $name ]] || usage
  require_started
  [[ -s $S/env ]] || die "'$S/env' missing: was start successful?"
  [[ -x $PY ]] || die "$PY not found; run scripts/setup-deps.sh"
  (
    # shellcheck disable=SC1091
    . "$S/env"
    "$PY" - "$name" <<'EOF'
import os, sys
import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
s3 = boto3.client(
    "s3",
    endpoint_url=os.environ["S3_ENDPOINT"],
    region_name=os.environ["S3_REGION"],
    aws_access_key_id=os.environ["S3_ACCESS_KEY"],
    aws_secret_access_key=os.environ["S3_SECRET_KEY"],
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
)
try:
    s3.create_bucket(Bucket=sys.argv[1])
except ClientError as e:
    if e.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
        sys.exit(f"rgw.sh: ERROR: create bucket {sys.argv[1]!r}: {e}")
EOF
  )
}

cmd_add_key() {
  set_state "${1:-}"
  require_started
  local access secret
  access=BFS$(od -An -tx1 -N9 /dev/urandom | tr -d ' \n' | tr a-f A-F)
  secret=$(od -An -tx1 -N20 /dev/urandom | tr -d ' \n')
  rgw_admin key create --uid="$TEST_UID" --key-type=s3 \
    --access-key="$access" --secret-key="$secret" >"$S/log/key.out" 2>&1 \
    || { cat "$S/log/key.out" >&2; die "radosgw-admin key create failed"; }
  echo "$access $secret"
}

cmd_rm_key() {
  set_state "${1:-}"
  local access=${2:-}
  [[ -n $access ]] || usage
  require_started
  rgw_admin key rm --uid="$TEST_UID" --key-type=s3 --access-key="$access" >"$S/log/key.out" 2>&1 \
    || { cat "$S/log/key.out" >&2; die "radosgw-admin key rm failed for '$access'"; }
}

case ${1:-} in
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  status) shift; cmd_status "$@" ;;
  mkbucket) shift; cmd_mkbucket "$@" ;;
  add-key) shift; cmd_add_key "$@" ;;
  rm-key) shift; cmd_rm_key "$@" ;;
  *) usage ;;
esac
