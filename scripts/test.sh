#!/usr/bin/env bash
# The whole bucketfs test suite, from a fresh Debian 12 machine to a verdict:
# installs the packages it needs, builds, starts a real S3 server (Ceph RGW on 127.0.0.1,
# stopped by PID afterwards), and runs every tier (unit, integration) in the release build,
# then again under AddressSanitizer+UBSan and under ThreadSanitizer.
#
#   scripts/test.sh            everything (release, asan, tsan)
#   scripts/test.sh --quick    release build only
#   BUCKETFS_RGW_PORT=7490 scripts/test.sh   use another port for the S3 server
set -euo pipefail
cd "$(dirname "$0")/.."

presets=(release asan tsan)
if [[ ${1:-} == --quick ]]; then presets=(release); fi
port=${BUCKETFS_RGW_PORT:-7480}
jobs=$(nproc)

scripts/setup-deps.sh

summary=()
status=0
for preset in "${presets[@]}"; do
  echo "=== [$preset] configure and build"
  cmake --preset "$preset" -DBUCKETFS_RGW_PORT="$port" >/dev/null
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
echo "=== summary"
printf '  %s\n' "${summary[@]}"
exit $status
