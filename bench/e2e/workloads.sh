# shellcheck shell=bash disable=SC2034  # variables shared between the sourced files
# The workloads. Each group_NAME runs one group of workloads for system $SYS, repetition
# $REP, on a fresh mount of its own (the "raw" system is curl straight to S3), and records
# one sample per workload. Sourced by run.sh.
#
# Every sample has wall_s, fs_cpu_s (CPU seconds of the filesystem process; for raw, of
# the curl processes), server_cpu_s (radosgw + ceph-osd) and, for mounts, rss_kib (VmHWM,
# the mount process's peak resident memory since it started), plus the workload's own
# numbers.

GROUPS_ALL=(seqread seqwrite smallfiles ls tree randread fio1 fio4 ttfb parread)
declare -A GROUP_WORKLOADS=(
  [seqread]="seq_read_cold seq_read_warm" [seqwrite]=seq_write [smallfiles]=small_files
  [ls]="ls_cold ls_warm" [tree]=tree_cold [randread]=rand_read [fio1]=fio_1j [fio4]=fio_4j [ttfb]=ttfb
  [parread]=parallel_read
)
declare -A GROUP_BUCKET=([seqwrite]=write [smallfiles]=write)   # all others: the read bucket

# --- measuring ----------------------------------------------------------------------------

m_begin() {
  M_SRV0=$(cpu_of "${SERVER_PIDS[@]}")
  if [[ $SYS == raw ]]; then children_cpu; M_FS0=$CHILD_CPU; else M_FS0=$(cpu_of "$FS_PID"); fi
  M_T0=$EPOCHREALTIME
}

m_end() {
  local t1=$EPOCHREALTIME fs1 srv1 rss=""
  if [[ $SYS == raw ]]; then children_cpu; fs1=$CHILD_CPU; else fs1=$(cpu_of "$FS_PID"); rss=$(peak_rss_kib "$FS_PID"); fi
  srv1=$(cpu_of "${SERVER_PIDS[@]}")
  M_WALL=$(secs "$M_T0" "$t1")
  M_COMMON="wall_s=$M_WALL fs_cpu_s=$(secs "$M_FS0" "$fs1") server_cpu_s=$(secs "$M_SRV0" "$srv1")${rss:+ rss_kib=$rss}"
}

# ok WORKLOAD SUMMARY [key=value ...]: record a measured sample (with M_COMMON) and say so.
ok() {
  local wl=$1 summary=$2
  shift 2
  # shellcheck disable=SC2086  # M_COMMON is a list of key=value words
  record "$SYS" "$wl" "$REP" ok $M_COMMON "$@"
  log "  $(printf '%-14s %-14s' "$SYS" "$wl") $summary  (wall $(printf '%.2f' "$M_WALL") s)"
}
fail() {
  record "$SYS" "$1" "$REP" failed "error=$2"
  warn "  $(printf '%-14s %-14s' "$SYS" "$1") FAILED: $2"
}
na() {
  record "$SYS" "$1" "$REP" na "reason=$2"
  log "  $(printf '%-14s %-14s' "$SYS" "$1") $2"
}

# Bytes dd read from FILE (dd's own count, so a short read is noticed).
dd_read() {
  timeout -k 5 "$OP_TIMEOUT" dd if="$1" of=/dev/null bs=1M 2>&1 >/dev/null | awk '/bytes/ { print $1 }'
}

# --- sequential read ------------------------------------------------------------------------

seq_read_once() {
  local wl=$1 bytes
  m_begin
  if [[ $SYS == raw ]]; then
    bytes=$(s3curl -o /dev/null -w '%{size_download}' "$(s3url "$READ_BUCKET" big.bin)")
  else
    bytes=$(dd_read "$MNT/big.bin")
  fi
  m_end
  [[ $bytes == "$BIG_SIZE" ]] || { fail "$wl" "read ${bytes:-0} of $BIG_SIZE bytes"; return 1; }
  ok "$wl" "$(mbps "$BIG_SIZE" "$M_WALL") MB/s" "mb_s=$(mbps "$BIG_SIZE" "$M_WALL")" "bytes=$BIG_SIZE"
}

group_seqread() {
  seq_read_once seq_read_cold && seq_read_once seq_read_warm || return 0
  # Not timed: the bytes are the ones uploaded (first repetition only).
  if [[ $SYS != raw && $REP == 1 ]] && ! cmp -s "$MNT/big.bin" "$DATA/big.bin"; then
    fail seq_read_warm "$SYS returned different bytes for big.bin"
  fi
}

# --- sequential write -----------------------------------------------------------------------

group_seqwrite() {
  local key="$SYS-r$REP-seq.bin" t_close
  if [[ $SYS == raw ]]; then
    m_begin
    s3_put "$WRITE_BUCKET" "$key" "$DATA/write.bin" || { m_end; fail seq_write "PUT failed"; return 0; }
    m_end
    t_close=$M_WALL
    ok seq_write "$(mbps "$WRITE_SIZE" "$M_WALL") MB/s until in S3 (one curl PUT)" \
      "mb_s=$(mbps "$WRITE_SIZE" "$M_WALL")" "close_s=$t_close" "bytes=$WRITE_SIZE"
    # The like-for-like single stream: one curl PUT whose body the server verifies against
    # a signed SHA-256, as bucketfs's parts are (hashing the file is part of the time).
    m_begin
    local sha
    # OpenSSL's SHA-256 (SHA-NI where the CPU has it), as bucketfs uses: coreutils'
    # sha256sum is several times slower and would make this baseline look worse than it is.
    sha=$(openssl dgst -sha256 -r "$DATA/write.bin" | cut -d' ' -f1)
    if ! curl -sS --fail --noproxy '*' --aws-sigv4 "aws:amz:${S3_REGION}:s3" \
      --user "${S3_ACCESS_KEY}:${S3_SECRET_KEY}" -H "x-amz-content-sha256:$sha" -o /dev/null \
      -T "$DATA/write.bin" "$(s3url "$WRITE_BUCKET" "$key.signed")"; then
      m_end; fail seq_write_signed "signed PUT failed"; return 0
    fi
    m_end
    ok seq_write_signed "$(mbps "$WRITE_SIZE" "$M_WALL") MB/s until in S3 (one curl PUT, signed SHA-256)" \
      "mb_s=$(mbps "$WRITE_SIZE" "$M_WALL")" "bytes=$WRITE_SIZE"
    s3_delete "$WRITE_BUCKET" "$key.signed" 2>/dev/null || true
    # The parallel-multipart baseline: the aws CLI (8 MiB parts, 10 in flight by default).
    m_begin
    if ! AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY AWS_DEFAULT_REGION=$S3_REGION \
      env -u AWS_CA_BUNDLE timeout -k 5 "$OP_TIMEOUT" aws --endpoint-url "$S3_ENDPOINT" s3 cp --only-show-errors \
      "$DATA/write.bin" "s3://$WRITE_BUCKET/$key.aws" >>"$WORK/logs/awscli.log" 2>&1; then
      m_end; fail seq_write_awscli "aws s3 cp failed (see $WORK/logs/awscli.log)"; return 0
    fi
    m_end
    ok seq_write_awscli "$(mbps "$WRITE_SIZE" "$M_WALL") MB/s until in S3 (aws s3 cp)" \
      "mb_s=$(mbps "$WRITE_SIZE" "$M_WALL")" "bytes=$WRITE_SIZE"
    s3_delete "$WRITE_BUCKET" "$key.aws" 2>/dev/null || true
    return 0
  else
    m_begin
    if ! timeout -k 5 "$OP_TIMEOUT" dd if="$DATA/write.bin" of="$MNT/$key" bs=1M conv=fsync status=none; then
      fail seq_write "dd to $MNT/$key failed"; return 0
    fi
    t_close=$(secs "$M_T0" "$EPOCHREALTIME")
    wait_visible "$WRITE_BUCKET" "$key" "$WRITE_SIZE" "$VISIBLE_TIMEOUT" || { fail seq_write "not in S3"; return 0; }
    m_end
  fi
  ok seq_write "$(mbps "$WRITE_SIZE" "$M_WALL") MB/s until in S3 (close after ${t_close} s)" \
    "mb_s=$(mbps "$WRITE_SIZE" "$M_WALL")" "close_s=$t_close" "bytes=$WRITE_SIZE"
}

# --- many small files -------------------------------------------------------------------------

group_smallfiles() {
  local prefix="$SYS-r$REP-small-" i last t_close n
  last=$(printf '%s%06d' "$prefix" $((SMALL_COUNT - 1)))
  if [[ $SYS == raw ]]; then
    # One curl process, one connection, the PUTs one after another.
    for ((i = 0; i < SMALL_COUNT; i++)); do
      curl_entry "$(s3url "$WRITE_BUCKET" "$(printf '%s%06d' "$prefix" "$i")")" /dev/null "upload-file = \"$DATA/small.bin\""
      echo
    done | curl_batch >"$WORK/small.curl"
    m_begin
    curl_run "$WORK/small.curl" || { m_end; fail small_files "curl PUTs failed"; return 0; }
    m_end
    t_close=$M_WALL
    n=$(s3_count "$WRITE_BUCKET" "$prefix")
    [[ $n == "$SMALL_COUNT" ]] || { fail small_files "$n of $SMALL_COUNT objects in S3"; return 0; }
  else
    local payload
    payload=$(<"$DATA/small.txt")
    m_begin
    # Shell redirections: no process per file, so the client costs next to nothing.
    for ((i = 0; i < SMALL_COUNT; i++)); do
      printf '%s' "$payload" >"$MNT/$(printf '%s%06d' "$prefix" "$i")" || { fail small_files "writing file $i failed"; return 0; }
    done
    t_close=$(secs "$M_T0" "$EPOCHREALTIME")
    # shellcheck disable=SC2015  # either failing is a failure
    wait_visible "$WRITE_BUCKET" "$last" "$SMALL_SIZE" "$VISIBLE_TIMEOUT" &&
      wait_count "$WRITE_BUCKET" "$prefix" "$SMALL_COUNT" "$VISIBLE_TIMEOUT" || { fail small_files "not all in S3"; return 0; }
    m_end
  fi
  ok small_files "$(awk -v n="$SMALL_COUNT" -v s="$M_WALL" 'BEGIN { printf "%.0f", n / s }') files/s until in S3 (close after ${t_close} s)" \
    "files_s=$(awk -v n="$SMALL_COUNT" -v s="$M_WALL" 'BEGIN { printf "%.1f", n / s }')" "close_s=$t_close" "files=$SMALL_COUNT"
}

# --- listing -------------------------------------------------------------------------------------

ls_once() {
  local wl=$1 n
  m_begin
  if [[ $SYS == raw ]]; then
    n=$(s3_count "$READ_BUCKET" many/)
  else
    # ls -l prints a "total" line first.
    n=$(timeout -k 5 "$OP_TIMEOUT" ls -l "$MNT/many" | tail -n +2 | wc -l)
  fi
  m_end
  [[ $n == "$LS_COUNT" ]] || { fail "$wl" "listed $n of $LS_COUNT entries"; return 1; }
  ok "$wl" "$LS_COUNT entries" "entries=$n"
}

group_ls() { ls_once ls_cold && ls_once ls_warm; return 0; }

# `ls -lR` of a tree of directories (half with a marker that holds their mode, owner and
# mtime, half implicit) of a few small files each: what a directory's attributes cost. Raw:
# one recursive listing of the keys, which tells no directory's attributes.
group_tree() {
  local files dirs marked
  m_begin
  if [[ $SYS == raw ]]; then
    files=$(s3_count "$READ_BUCKET" tree/)
    m_end
    [[ $files == "$TREE_KEYS" ]] || { fail tree_cold "listed $files of $TREE_KEYS keys"; return 0; }
    ok tree_cold "$TREE_KEYS keys" "entries=$files"
    return 0
  fi
  timeout -k 5 "$OP_TIMEOUT" ls -lR "$MNT/tree" >"$WORK/tree.ls" || { m_end; fail tree_cold "ls -lR failed"; return 0; }
  m_end
  files=$(grep -c '^-' "$WORK/tree.ls")
  dirs=$(grep -c '^d' "$WORK/tree.ls")
  # The marked directories' stored mode, as the mount shows it (a check, not a metric).
  marked=$(grep -c '^drwxr-x--- ' "$WORK/tree.ls")
  [[ $files == $((TREE_DIRS * TREE_FILES)) && $dirs == "$TREE_DIRS" ]] ||
    { fail tree_cold "listed $files files and $dirs directories"; return 0; }
  ok tree_cold "$TREE_DIRS directories, $files files ($marked show mode 0750)" \
    "entries=$((files + dirs))" "dirs_0750=$marked"
}

# --- random reads ------------------------------------------------------------------------------

# A curl config of COUNT ranged 4 KiB GETs of big.bin (offsets from SEED) that prints
# each request's time.
ranged_gets_config() {
  local seed=$1 count=$2 off
  "$PY" "$HELPERS" offsets "$BIG_SIZE" "$count" "$seed" | while read -r off; do
    curl_entry "$(s3url "$READ_BUCKET" big.bin)" /dev/null "range = \"$off-$((off + 4095))\"" 'write-out = "%{time_total}\n"'
    echo
  done | curl_batch
}

group_randread() {
  local out
  if [[ $SYS == raw ]]; then
    ranged_gets_config "$REP" "$RAND_COUNT" >"$WORK/rand.curl"
    m_begin
    curl_run "$WORK/rand.curl" >"$WORK/rand.lat" || { m_end; fail rand_read "curl failed"; return 0; }
    m_end
    out=$("$PY" "$HELPERS" stats <"$WORK/rand.lat")
  else
    m_begin
    out=$(timeout -k 5 "$OP_TIMEOUT" "$PY" "$HELPERS" randread "$MNT/big.bin" "$BIG_SIZE" "$RAND_COUNT" "$REP") || { fail rand_read "randread failed"; return 0; }
    m_end
    out=${out/ wall_s=*/}   # the helper's own loop time; M_WALL is recorded instead
  fi
  # shellcheck disable=SC2086
  ok rand_read "mean $(kv_get "$out" mean_ms) ms, p50 $(kv_get "$out" p50_ms) ms, p99 $(kv_get "$out" p99_ms) ms" $out
}

# fio random 4 KiB reads of big.bin with JOBS jobs. fio has no S3 engine in Debian, so the
# raw client runs JOBS curl processes in parallel, each with RAND_COUNT ranged GETs.
fio_run() {
  local jobs=$1 wl="fio_${1}j" out j
  if [[ $SYS == raw ]]; then
    for ((j = 0; j < jobs; j++)); do ranged_gets_config "$((REP * 100 + j))" "$RAND_COUNT" >"$WORK/fio$j.curl"; done
    local pids=()
    m_begin
    for ((j = 0; j < jobs; j++)); do
      curl_run "$WORK/fio$j.curl" >"$WORK/fio$j.lat" &
      pids+=($!)
    done
    local rc=0
    for j in "${pids[@]}"; do wait "$j" || rc=1; done
    m_end
    ((rc == 0)) || { fail "$wl" "curl failed"; return 0; }
    out=$(cat "$WORK"/fio*.lat | "$PY" "$HELPERS" stats)
    out+=" iops=$(awk -v n=$((jobs * RAND_COUNT)) -v s="$M_WALL" 'BEGIN { printf "%.1f", n / s }')"
    rm -f "$WORK"/fio*.curl "$WORK"/fio*.lat
  else
    m_begin
    if ! timeout -k 5 $((FIO_RUNTIME + OP_TIMEOUT)) fio --name=randread --filename="$MNT/big.bin" --readonly \
      --rw=randread --bs=4k --size="$BIG_SIZE" --ioengine=psync --numjobs="$jobs" \
      --time_based --runtime="$FIO_RUNTIME" --group_reporting --output-format=json \
      --output="$WORK/fio.json" >/dev/null 2>"$WORK/fio.err"; then
      fail "$wl" "fio failed: $(tail -n1 "$WORK/fio.err")"; return 0
    fi
    m_end
    out=$("$PY" "$HELPERS" fio "$WORK/fio.json")
    out=${out/ wall_s=*/}
  fi
  # shellcheck disable=SC2086
  ok "$wl" "$(kv_get "$out" iops) IOPS, mean $(kv_get "$out" mean_ms) ms, p99 $(kv_get "$out" p99_ms) ms" $out "jobs=$jobs"
}
group_fio1() { fio_run 1; }
group_fio4() { fio_run 4; }

# --- time to first byte --------------------------------------------------------------------------

group_ttfb() {
  local out
  m_begin
  if [[ $SYS == raw ]]; then
    out=$(s3curl -o /dev/null -w '%{time_starttransfer} %{size_download}' "$(s3url "$READ_BUCKET" ttfb.bin)")
    m_end
    out="ttfb_ms=$(awk -v t="${out% *}" 'BEGIN { printf "%.3f", t * 1e3 }') bytes=${out#* }"
  else
    out=$(timeout -k 5 "$OP_TIMEOUT" "$PY" "$HELPERS" ttfb "$MNT/ttfb.bin") || { fail ttfb "read failed"; return 0; }
    m_end
    out=${out/wall_s=* /}
  fi
  [[ $(kv_get "$out" bytes) == "$TTFB_SIZE" ]] || { fail ttfb "read $(kv_get "$out" bytes) of $TTFB_SIZE bytes"; return 0; }
  # shellcheck disable=SC2086
  ok ttfb "first byte after $(kv_get "$out" ttfb_ms) ms" $out
}

# --- parallel readers ------------------------------------------------------------------------------

group_parread() {
  local i pids=() rc=0 total=$((PAR_READERS * PAR_SIZE)) bytes
  m_begin
  for ((i = 0; i < PAR_READERS; i++)); do
    if [[ $SYS == raw ]]; then
      s3curl -o /dev/null -w '%{size_download}\n' "$(s3url "$READ_BUCKET" "par-$i.bin")" >"$WORK/par$i.bytes" &
    else
      dd_read "$MNT/par-$i.bin" >"$WORK/par$i.bytes" &
    fi
    pids+=($!)
    BG_PIDS+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || rc=1; done
  m_end
  BG_PIDS=()
  bytes=$(cat "$WORK"/par*.bytes | awk '{ s += $1 } END { print s + 0 }')
  rm -f "$WORK"/par*.bytes
  # shellcheck disable=SC2015
  ((rc == 0)) && [[ $bytes == "$total" ]] || { fail parallel_read "read $bytes of $total bytes"; return 0; }
  ok parallel_read "$(mbps "$total" "$M_WALL") MB/s in total" "mb_s=$(mbps "$total" "$M_WALL")" "bytes=$total" "readers=$PAR_READERS"
}

# --- one group on one system ---------------------------------------------------------------------

# run_group GROUP SYSTEM REP: fresh mount, the group's workloads, unmount.
run_group() {
  local group=$1 wl bucket
  SYS=$2 REP=$3
  if [[ ${GROUP_BUCKET[$group]:-} == write && ${WRITABLE[$SYS]} != yes ]]; then
    for wl in ${GROUP_WORKLOADS[$group]}; do na "$wl" "${WRITABLE[$SYS]}"; done
    return 0
  fi
  # Untimed, for every system alike: the pages this group's mount takes for its page cache
  # are backed by the host again (run.sh, "touching the free memory").
  ((QUICK)) || "$PY" "$HELPERS" touch-memory 2 "${TOUCH_GROUP_GIB:-3}" >/dev/null
  wait_quiet
  if [[ $SYS != raw ]]; then
    [[ ${GROUP_BUCKET[$group]:-} == write ]] && bucket=$WRITE_BUCKET || bucket=$READ_BUCKET
    if ! mount_system "$SYS" "$bucket"; then
      for wl in ${GROUP_WORKLOADS[$group]}; do fail "$wl" "mount failed"; done
      return 0
    fi
  fi
  "group_$group"
  [[ $SYS == raw ]] || unmount_system
  # Not timed: remove what was written, and let RGW free the space now rather than hours later.
  case $group in
    seqwrite) s3_delete "$WRITE_BUCKET" "$SYS-r$REP-seq.bin" 2>/dev/null; rgw_gc ;;
    smallfiles) "$PY" "$HELPERS" delete-prefix "$WRITE_BUCKET" "$SYS-r$REP-small-" ;;
  esac
  return 0
}
