#!/usr/bin/env bash
# The whole bucketfs test suite, from a fresh Debian 12 machine to a verdict:
# installs the packages it needs, builds, starts a real S3 server (Ceph RGW on 127.0.0.1,
# stopped by PID afterwards), and runs every tier (unit, integration, fuse: real mounts
# through /dev/fuse) in the release build, then again under AddressSanitizer+UBSan and under
# ThreadSanitizer; last, the end-to-end benchmark's smoke run (bench/e2e/smoke.sh: bucketfs,
# s3fs, rclone and curl on small data, so the harness never rots).
#
#   scripts/test.sh            everything (release, asan, tsan, benchmark smoke)
#   scripts/test.sh --quick    release build only
#   BUCKETFS_RGW_PORT=7500 scripts/test.sh   S3 server port (default 7490; monitor on PORT-691)
set -euo pipefail
cd "$(dirname "$0")/.."

presets=(release asan tsan)
if [[ ${1:-} == --quick ]]; then presets=(release); fi
port=${BUCKETFS_RGW_PORT:-7490}
jobs=$(nproc)

scripts/setup-deps.sh

# ctest's rgw_stop fixture stops the S3 server after the tests; this trap covers Ctrl-C and
# failures in between, stopping it by the PIDs in its state directory and removing that
# directory (its logs go to the build tree, as the fixture does it).
rgw_state=""
rgw_log=""
stop_rgw() {
  if [[ -n $rgw_state ]]; then
    tests/s3server/rgw.sh stop "$rgw_state" --purge --keep-log "$rgw_log" >/dev/null 2>&1 || true
  fi
}
trap stop_rgw EXIT
trap 'stop_rgw; exit 130' INT TERM

summary=()
status=0
for preset in "${presets[@]}"; do
  echo "=== [$preset] configure and build"
  cmake --preset "$preset" -DBUCKETFS_RGW_PORT="$port" >/dev/null
  rgw_state=$(sed -n 's/^BUCKETFS_RGW_STATE:PATH=//p' "build/$preset/CMakeCache.txt")
  rgw_log=$PWD/build/$preset/rgw-log
  cmake --build --preset "$preset" -j "$jobs"
  echo "=== [$preset] tests"
  # TSan needs the address space layout it expects on newer kernels.
  runner=()
  if [[ $preset == tsan ]]; then runner=(setarch "$(uname -m)" -R); fi
  if "${runner[@]}" ctest --preset "$preset" -j 1 --timeout 900 \
       --output-junit "junit-$preset.xml"; then
    summary+=("$preset: passed")
  else
    summary+=("$preset: FAILED")
    status=1
  fi
done
if [[ ${1:-} != --quick ]]; then
  echo "=== benchmark harness smoke run"
  if bench/e2e/smoke.sh; then
    summary+=("bench smoke: passed")
  else
    summary+=("bench smoke: FAILED")
    status=1
  fi
fi
echo "=== summary"
printf '  %s\n' "${summary[@]}"
exit $status
