#!/usr/bin/env bash
# Smoke test of the end-to-end benchmark: `run.sh --quick` (small sizes, one repetition,
# every system) with its results in a temporary directory, so nothing under bench/ changes.
# Exits non-zero if the run fails or any measurement failed. Uses RGW port 7530 (state
# /tmp/bucketfs-bench-smoke) so that it can run beside a full benchmark run on 7520.
#
#   bench/e2e/smoke.sh [extra run.sh options]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=$(mktemp -d /tmp/bucketfs-bench-smoke-results.XXXXXX)
trap 'rm -rf "$out"' EXIT
"$here/run.sh" --quick --out "$out" --results-md none --port 7530 --state /tmp/bucketfs-bench-smoke "$@"
ls "$out"/*.json >/dev/null
rm -rf /tmp/bucketfs-bench-smoke-work   # the mounts' logs; kept when the run fails
echo "bench/e2e smoke: ok"
