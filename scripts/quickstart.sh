#!/usr/bin/env bash
# Quick start on a fresh Debian 12 machine: installs what bucketfs needs, builds it, starts a
# local S3 server (Ceph RGW on 127.0.0.1:7480, state in /tmp/bucketfs-demo), creates the
# bucket "demo" with sample objects, and mounts it with bucketfs at ./mnt (or $1).
#
#   scripts/quickstart.sh [MOUNTPOINT]   set up, start the server, mount (default ./mnt)
#   scripts/quickstart.sh stop           unmount, stop the server (by PID), remove its state
#
# The mount reads and writes; written data waits for its upload in $state/spool.
set -euo pipefail
cd "$(dirname "$0")/.."
state=/tmp/bucketfs-demo
port=${BUCKETFS_DEMO_PORT:-7480}

mountpoint_file=$state/mountpoint
if [[ ${1:-} == stop ]]; then
  if [[ -f $mountpoint_file ]]; then
    mnt=$(cat "$mountpoint_file")
    if mountpoint -q "$mnt"; then
      # The coordinator waits for open files, uploads what is dirty, releases the lease and
      # unmounts; then it exits by itself: wait for it by PID.
      pid=$(cat "$state/bucketfs.pid" 2>/dev/null || true)
      if ! build/release/cli/bucketfs unmount "$mnt" --timeout 30; then
        # Dirty data may still be in $state/spool, waiting for the server: keep both.
        echo "quickstart: $mnt is still mounted (see the message above); the S3 server and" \
          "$state (with the spool) are kept. Close what uses $mnt and run '$0 stop' again." >&2
        exit 1
      fi
      echo "quickstart: unmounted $mnt"
      for _ in $(seq 100); do
        [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        echo "quickstart: the coordinator (PID $pid) has not exited yet; the S3 server and" \
          "$state are kept. Run '$0 stop' again in a moment." >&2
        exit 1
      fi
    fi
  fi
  tests/s3server/rgw.sh stop "$state"
  rm -rf "$state"
  echo "quickstart: stopped the demo S3 server and removed $state"
  exit 0
fi

scripts/setup-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)"

if tests/s3server/rgw.sh status "$state" >/dev/null 2>&1; then
  echo "quickstart: the demo S3 server is already running ($state)"
else
  tests/s3server/rgw.sh start "$state" "$port"
fi
# shellcheck disable=SC1091
source "$state/env"
tests/s3server/rgw.sh mkbucket "$state" demo >/dev/null 2>&1 || true
export S3_BUCKET=demo
build/release/bench/s3_throughput --size-mib 8 --key hello/sample.bin --mode putget >/dev/null
env -u AWS_CA_BUNDLE /usr/bin/aws --endpoint-url "$S3_ENDPOINT" s3 cp README.md s3://demo/hello/README.md >/dev/null

mnt=$(realpath -m "${1:-mnt}")
mkdir -p "$mnt"
echo "$mnt" > "$mountpoint_file"
if mountpoint -q "$mnt"; then
  echo "quickstart: $mnt is already mounted"
else
  # Without -f, `bucketfs mount` returns once the mount answers (lease taken, daemon
  # serving); the coordinator and its daemon stay behind.
  build/release/cli/bucketfs mount demo "$mnt" --log-file "$state/bucketfs.log" \
    --spool-dir "$state/spool"
  # Its PID, for `stop`: the process whose command line names this mountpoint.
  for p in /proc/[0-9]*; do
    if tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -q "bucketfs mount demo $mnt"; then
      basename "$p" > "$state/bucketfs.pid"
    fi
  done
fi

cat <<MSG

bucketfs quick start: S3 server on $S3_ENDPOINT, bucket "demo" mounted at $mnt.
  Look inside:  ls -lR $mnt
  Credentials:  source $state/env   (for aws/boto3: --endpoint-url \$S3_ENDPOINT)
  Daemon log:   $state/bucketfs.log
  Status:       build/release/cli/bucketfs status $mnt
  Stop:         scripts/quickstart.sh stop
MSG
