#!/usr/bin/env bash
# Runs a command against a fresh, throw-away Ceph RGW:
#
#   tests/s3server/with-rgw.sh CMD [ARGS...]
#
# Starts RGW (tests/s3server/rgw.sh) in a new state directory under
# ${BUCKETFS_TEST_TMP:-/tmp}, runs CMD with STATE_DIR/env sourced (S3_ENDPOINT,
# S3_ACCESS_KEY, AWS_*, BUCKETFS_RGW_STATE, ...), then always stops RGW and removes the
# state directory, also on failure, Ctrl-C or SIGTERM. Exits with CMD's exit code.
#
# Environment: RGW_PORT (default 7480), RGW_MON_PORT, RGW_START_TIMEOUT (see rgw.sh);
# BUCKETFS_KEEP_RGW_STATE=1 keeps the state directory (logs) after the run.
set -euo pipefail

[[ $# -gt 0 ]] || { sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
rgw=$here/rgw.sh
base=${BUCKETFS_TEST_TMP:-/tmp}
mkdir -p -- "$base"
state=$(mktemp -d "$(realpath -m -- "$base")/bucketfs-rgw.XXXXXX")

child=

# shellcheck disable=SC2317  # invoked through trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  "$rgw" stop "$state" || rc=$((rc == 0 ? 1 : rc))
  if [[ ${BUCKETFS_KEEP_RGW_STATE:-0} == 1 ]]; then
    echo "with-rgw.sh: state kept in $state" >&2
  else
    rm -rf -- "$state"
  fi
  exit "$rc"
}

# shellcheck disable=SC2317  # invoked through trap
on_signal() {
  local sig=$1 code=$2
  if [[ -n $child ]] && kill -0 "$child" 2>/dev/null; then
    kill -"$sig" "$child" 2>/dev/null || true
    wait "$child" 2>/dev/null || true
  fi
  exit "$code"
}

# Run a child in the background and wait for it, so that a signal to this script is
# handled at once (bash defers traps while a foreground child runs). Stdin is passed on.
run() {
  if { : <&0; } 2>/dev/null; then
    "$@" <&0 &
  else
    "$@" </dev/null &
  fi
  child=$!
  local rc=0
  wait "$child" || rc=$?
  child=
  return "$rc"
}

trap cleanup EXIT
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM

run "$rgw" start "$state" "${RGW_PORT:-7480}"
# shellcheck disable=SC1091
. "$state/env"

rc=0
run "$@" || rc=$?
exit "$rc"
