# shellcheck shell=bash disable=SC2034  # variables shared between the sourced files
# Mounting and unmounting the systems under test: bucketfs, s3fs-fuse, rclone mount in
# two VFS cache modes. "raw" is the curl client and has no mount. Sourced by run.sh.
#
# mount_system SYSTEM BUCKET   mounts BUCKET at $WORK/mnt/SYSTEM; sets MNT and FS_PID
# unmount_system               unmounts MNT and waits for FS_PID to exit
# unmount_all                  every mount still live (the exit trap)
#
# Each mount runs in the foreground of its own background process, so FS_PID is the
# filesystem process itself; it is recorded in LIVE_MOUNTS until it has exited.

declare -A LIVE_MOUNTS=()   # pid -> mountpoint
MNT=""
FS_PID=""
MOUNT_TIMEOUT=30

# Is PID alive and not a zombie?
pid_alive() {
  local st
  st=$(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $st && $st != Z ]]
}

system_setup() {
  # Credentials for s3fs and rclone, written once per run.
  printf '%s:%s\n' "$S3_ACCESS_KEY" "$S3_SECRET_KEY" >"$WORK/s3fs-passwd"
  chmod 600 "$WORK/s3fs-passwd"
  export RCLONE_CONFIG_RGW_TYPE=s3 RCLONE_CONFIG_RGW_PROVIDER=Ceph
  export RCLONE_CONFIG_RGW_ACCESS_KEY_ID=$S3_ACCESS_KEY RCLONE_CONFIG_RGW_SECRET_ACCESS_KEY=$S3_SECRET_KEY
  export RCLONE_CONFIG_RGW_ENDPOINT=$S3_ENDPOINT RCLONE_CONFIG_RGW_REGION=$S3_REGION
  export RCLONE_CONFIG=/dev/null   # no user config, and no "config file not found" notice
  mkdir -p "$WORK/mnt" "$WORK/logs"
}

# The command line that serves BUCKET at MNT in the foreground, in MOUNT_CMD.
mount_command() {
  local sys=$1 bucket=$2 mnt=$3
  case $sys in
    bucketfs)
      # BUCKETFS_ARGS: extra options, to compare tunings (word-split on spaces).
      # shellcheck disable=SC2206
      MOUNT_CMD=("$BUCKETFS_BIN" serve "$bucket" "$mnt" -f --endpoint "$S3_ENDPOINT" --region "$S3_REGION"
        --spool-dir "$WORK/bucketfs-spool" ${BUCKETFS_ARGS:-}) ;;
    s3fs)
      MOUNT_CMD=(s3fs "$bucket" "$mnt" -f -o "url=$S3_ENDPOINT,use_path_request_style,passwd_file=$WORK/s3fs-passwd,endpoint=$S3_REGION") ;;
    rclone-writes | rclone-full)
      # A fresh cache directory for every mount: rclone's full-mode disk cache would
      # otherwise make a "fresh mount" warm.
      MOUNT_CMD=(env -u AWS_CA_BUNDLE rclone mount "rgw:$bucket" "$mnt" --vfs-cache-mode "${sys#rclone-}" \
        --cache-dir "$WORK/rclone-cache/$sys" --use-server-modtime) ;;
    *) die "unknown system '$sys'" ;;
  esac
}

mount_system() {
  local sys=$1 bucket=$2 i
  MNT=$WORK/mnt/$sys
  mkdir -p "$MNT"
  ! mountpoint -q "$MNT" || die "$MNT is still mounted"
  rm -rf "$WORK/rclone-cache/$sys"
  mount_command "$sys" "$bucket" "$MNT"
  echo "== $(date +%T) ${MOUNT_CMD[*]}" >>"$WORK/logs/$sys.log"
  "${MOUNT_CMD[@]}" </dev/null >>"$WORK/logs/$sys.log" 2>&1 &
  FS_PID=$!
  LIVE_MOUNTS[$FS_PID]=$MNT
  for ((i = 0; i < MOUNT_TIMEOUT * 20; i++)); do
    mountpoint -q "$MNT" && return 0
    if ! pid_alive "$FS_PID"; then
      wait "$FS_PID" 2>/dev/null || true
      unset "LIVE_MOUNTS[$FS_PID]"
      echo "$sys exited before mounting; last lines of $WORK/logs/$sys.log:" >&2
      tail -n 5 "$WORK/logs/$sys.log" >&2
      return 1
    fi
    sleep 0.05
  done
  echo "$sys did not mount $MNT within ${MOUNT_TIMEOUT}s" >&2
  stop_mount "$FS_PID"
  return 1
}

# Unmount one mount and wait for its process: fusermount3 -u (retried while busy), then
# a lazy unmount, then SIGTERM and SIGKILL to that PID only.
stop_mount() {
  local pid=$1 mnt=${LIVE_MOUNTS[$1]:-} i
  if [[ -n $mnt ]] && mountpoint -q "$mnt"; then
    for ((i = 0; i < 20; i++)); do
      fusermount3 -u "$mnt" 2>/dev/null && break
      sleep 0.25
    done
    if mountpoint -q "$mnt"; then fusermount3 -uz "$mnt" 2>/dev/null || true; fi
  fi
  for ((i = 0; i < 300; i++)); do   # rclone may still be writing back: up to 30 s
    pid_alive "$pid" || break
    sleep 0.1
  done
  if pid_alive "$pid"; then
    warn "filesystem process $pid did not exit after unmount; sending SIGTERM"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do pid_alive "$pid" || break; sleep 0.1; done
    if pid_alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  wait "$pid" 2>/dev/null || true   # reap it; its exit status does not matter here
  unset "LIVE_MOUNTS[$pid]"
  return 0
}

unmount_system() {
  [[ -n $FS_PID ]] && stop_mount "$FS_PID"
  [[ -n $MNT ]] && rm -rf "$WORK/rclone-cache/${MNT##*/}"
  FS_PID=""
  return 0
}

unmount_all() {
  local pid
  for pid in "${!LIVE_MOUNTS[@]}"; do
    log "stopping mount ${LIVE_MOUNTS[$pid]} (pid $pid)"
    stop_mount "$pid"
  done
}

# Can SYSTEM create a file? Sets WRITABLE[SYSTEM] to yes, or to the reason it cannot.
declare -A WRITABLE=()
probe_writable() {
  local sys=$1 err
  if [[ $sys == raw ]]; then WRITABLE[$sys]=yes; return 0; fi
  mount_system "$sys" "$WRITE_BUCKET" || { WRITABLE[$sys]="mount failed"; return 0; }
  if err=$( { : >"$MNT/.bench-write-probe"; } 2>&1); then
    WRITABLE[$sys]=yes
    rm -f "$MNT/.bench-write-probe"
  else
    err=${err##*: }
    if [[ $err == *"Read-only file system"* ]]; then
      WRITABLE[$sys]="n/a (read-only in this build: $err)"
    else
      WRITABLE[$sys]="n/a (creating a file failed: $err)"
    fi
  fi
  unmount_system
}

system_version() {
  case $1 in
    raw) curl --version | head -n1 | awk '{ print $1, $2 }' ;;
    bucketfs) echo "bucketfs $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)" ;;
    s3fs) s3fs --version 2>/dev/null | head -n1 | grep -o 'V[0-9.]*' | sed 's/^V/s3fs /' ;;
    rclone-*) rclone version 2>/dev/null | head -n1 ;;
  esac
}
