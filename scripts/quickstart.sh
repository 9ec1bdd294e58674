#!/usr/bin/env bash
# Quick start on a fresh Debian 12 machine: installs what bucketfs needs, builds it, starts a
# local S3 server (Ceph RGW on 127.0.0.1:7480, state in /tmp/bucketfs-demo), creates the
# bucket "demo" with a sample object, and prints how to look into it.
#
#   scripts/quickstart.sh          set up and start
#   scripts/quickstart.sh stop     stop the server it started (by PID) and remove its state
#
# The FUSE mount (`bucketfs mount demo ./mnt`) is being built (issue: "Mount a bucket and
# read it fast"); until it lands this stops after the bucket is ready.
set -euo pipefail
cd "$(dirname "$0")/.."
state=/tmp/bucketfs-demo
port=${BUCKETFS_DEMO_PORT:-7480}

if [[ ${1:-} == stop ]]; then
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

cat <<MSG

bucketfs quick start: S3 server on $S3_ENDPOINT, bucket "demo" ready.
  Credentials:  source $state/env
  Look inside:  source $state/env && env -u AWS_CA_BUNDLE /usr/bin/aws --endpoint-url \$S3_ENDPOINT s3 ls --recursive s3://demo
  Stop:         scripts/quickstart.sh stop
MSG
