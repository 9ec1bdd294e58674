#!/usr/bin/env bash
# Installs every Debian package bucketfs needs to build, test and benchmark.
#
# Idempotent: asks dpkg-query which packages are missing and installs only those,
# running `apt-get update` at most once and only if something is missing. Silent
# when everything is already installed. Runs apt-get directly as root, through
# sudo otherwise.
#
# Usage: scripts/setup-deps.sh            (no arguments)
set -euo pipefail

# Build tools.
pkgs=(build-essential cmake ninja-build pkg-config git ca-certificates)
# Optional: installed when the archive has them (clang/lld for sanitizer and
# alternative-compiler builds).
optional=(clang lld libclang-rt-14-dev)
# Libraries.
pkgs+=(libfuse3-dev fuse3 libcurl4-openssl-dev libssl-dev libtbb-dev libxxhash-dev
       googletest libgtest-dev libgmock-dev libbenchmark-dev libpugixml-dev
       nlohmann-json3-dev libcli11-dev libspdlog-dev libfmt-dev libsystemd-dev
       libcpp-httplib-dev)
# Packaging: the .deb (CPack: dpkg-deb, dpkg-shlibdeps) and its unit's check.
pkgs+=(dpkg-dev systemd)
# The S3 server used by tests and benchmarks (tests/s3server/rgw.sh).
pkgs+=(radosgw ceph-mon ceph-osd ceph-common)
# Reference S3 clients for tests.
pkgs+=(python3-boto3 awscli)
# An independent parser of the metrics endpoint's exposition format, for its tests.
pkgs+=(python3-prometheus-client)
# rsync for the FUSE write tests (git is above; cp and tar come with every Debian).
pkgs+=(rsync)
# Process, port and HTTP tools used by the test scripts (ps, fuser, ss, setsid, curl).
pkgs+=(procps psmisc iproute2 util-linux curl openssl)

die() { echo "setup-deps: ERROR: $*" >&2; exit 1; }

command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found: this script supports Debian/Ubuntu only"

if [[ $(id -u) -eq 0 ]]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  SUDO=()  # decided below, only if something has to be installed
fi

is_installed() {
  # "install ok installed" is the only state that counts as present.
  [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true) == "install ok installed" ]]
}

missing=()
for p in "${pkgs[@]}"; do
  is_installed "$p" || missing+=("$p")
done
missing_optional=()
for p in "${optional[@]}"; do
  is_installed "$p" || missing_optional+=("$p")
done

if [[ ${#missing[@]} -eq 0 && ${#missing_optional[@]} -eq 0 ]]; then
  exit 0
fi

if [[ $(id -u) -ne 0 && ${#SUDO[@]} -eq 0 ]]; then
  wanted=("${missing[@]}" "${missing_optional[@]}")
  die "missing packages: ${wanted[*]}; run as root or install sudo"
fi

apt_get() {
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "$@"
}

wanted=("${missing[@]}" "${missing_optional[@]}")
echo "setup-deps: installing: ${wanted[*]}${SUDO:+ (through sudo)}" >&2
apt_get update -qq || die "apt-get update failed"

# Optional packages: keep only those the archive knows (after the update).
for p in "${missing_optional[@]}"; do
  if apt-cache show "$p" >/dev/null 2>&1; then
    missing+=("$p")
  else
    echo "setup-deps: note: optional package '$p' is not available; skipping" >&2
  fi
done

if [[ ${#missing[@]} -gt 0 ]]; then
  apt_get install -y -q --no-install-recommends "${missing[@]}" \
    || die "apt-get install failed for: ${missing[*]}"
  still=()
  for p in "${missing[@]}"; do
    is_installed "$p" || still+=("$p")
  done
  [[ ${#still[@]} -eq 0 ]] || die "still not installed after apt-get: ${still[*]}"
  echo "setup-deps: done" >&2
fi
