#!/usr/bin/env bash
# One object PUT and GET through bucketfs's object client (bench/tools/s3_throughput) and
# through curl, against the same local RGW, alternating, REPS times; prints the medians and
# the ratios, and appends a Markdown table to bench/RESULTS.md.
#
#   bench/s3_client_vs_curl.sh            1 GiB, 3 repetitions
#   SIZE_MIB=64 REPS=1 bench/s3_client_vs_curl.sh     quick smoke run
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${SIZE_MIB:-1024}
reps=${REPS:-3}
port=${BUCKETFS_RGW_PORT:-7480}
state=/tmp/bucketfs-bench-rgw
data=/dev/shm/bucketfs-bench-object

scripts/setup-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)" --target s3_throughput >/dev/null

cleanup() {
  rm -f "$data" "$data.out"
  tests/s3server/rgw.sh stop "$state" >/dev/null 2>&1 || true
  rm -rf "$state"
}
trap cleanup EXIT INT TERM
tests/s3server/rgw.sh start "$state" "$port"
# shellcheck disable=SC1091
source "$state/env"
unset AWS_CA_BUNDLE
tests/s3server/rgw.sh mkbucket "$state" bench >/dev/null
export S3_BUCKET=bench
head -c "$((size_mib << 20))" /dev/urandom >"$data"

now() { date +%s.%N; }
mbps() { awk -v s="$((size_mib << 20))" -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", s / 1e6 / (b - a) }'; }
# curl 7.88's --aws-sigv4 sends no x-amz-content-sha256 (RGW then refuses the request) and
# cannot hash a streamed upload: it is given UNSIGNED-PAYLOAD, written without a space after
# the colon because curl signs the value exactly as written.
curl_s3() {
  curl -sS --fail --aws-sigv4 "aws:amz:${S3_REGION}:s3" --user "${S3_ACCESS_KEY}:${S3_SECRET_KEY}" \
    -H "x-amz-content-sha256:UNSIGNED-PAYLOAD" "$@"
}
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

declare -A results
for ((i = 1; i <= reps; i++)); do
  echo "repetition $i/$reps" >&2
  t0=$(now); curl_s3 -T "$data" "$S3_ENDPOINT/bench/curl.bin" >/dev/null; t1=$(now)
  results[curl_put]+="$(mbps "$t0" "$t1") "
  t0=$(now); curl_s3 -o "$data.out" "$S3_ENDPOINT/bench/curl.bin"; t1=$(now)
  results[curl_get]+="$(mbps "$t0" "$t1") "
  cmp -s "$data" "$data.out" || { echo "curl GET returned different bytes" >&2; exit 1; }
  rm -f "$data.out"
  for payload in sha256 unsigned; do
    out=$(build/release/bench/s3_throughput --size-mib "$size_mib" --key "client-$payload.bin" --payload "$payload")
    results[client_put_$payload]+="$(awk '/put_mbps/ { print $2 }' <<<"$out") "
    results[client_get_$payload]+="$(awk '/get_mbps/ { print $2 }' <<<"$out") "
  done
done

m() { tr ' ' '\n' <<<"${results[$1]}" | grep -v '^$' | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
curl_put=$(m curl_put); curl_get=$(m curl_get)
cs_put=$(m client_put_sha256); cs_get=$(m client_get_sha256)
cu_put=$(m client_put_unsigned); cu_get=$(m client_get_unsigned)

table=$(cat <<TABLE

### Object client vs curl, ${size_mib} MiB, median of ${reps} — $(date -u +%Y-%m-%d) on $(nproc) cores, $(uname -r)

Command: \`SIZE_MIB=${size_mib} REPS=${reps} bench/s3_client_vs_curl.sh\` (RGW on 127.0.0.1, same run, alternating)

| client | PUT MB/s | GET MB/s | PUT vs curl | GET vs curl |
|---|---|---|---|---|
| curl 7.88 \`--aws-sigv4\` | ${curl_put} | ${curl_get} | 1.00 | 1.00 |
| bucketfs client, SHA-256 payload (default) | ${cs_put} | ${cs_get} | $(ratio "$cs_put" "$curl_put") | $(ratio "$cs_get" "$curl_get") |
| bucketfs client, UNSIGNED-PAYLOAD | ${cu_put} | ${cu_get} | $(ratio "$cu_put" "$curl_put") | $(ratio "$cu_get" "$curl_get") |

Raw MB/s per repetition: curl PUT ${results[curl_put]}/ GET ${results[curl_get]}; client sha256 PUT ${results[client_put_sha256]}/ GET ${results[client_get_sha256]}; client unsigned PUT ${results[client_put_unsigned]}/ GET ${results[client_get_unsigned]}
TABLE
)
echo "$table"
if [[ ${BENCH_NO_RECORD:-0} != 1 ]]; then echo "$table" >>bench/RESULTS.md; fi
