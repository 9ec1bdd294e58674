#!/bin/bash
# The Debian package, installed and used with the installed files only, as an operator would:
# builds the .deb (CPack), installs it with dpkg on this machine, mounts a bucket on the test's
# RGW through `mount -t fuse.bucketfs` and through an fstab line (`mount -T FSTAB DIR`, so the
# machine's /etc/fstab is not touched), reads and writes through it, unmounts with `umount`
# (which goes through umount.fuse.bucketfs: drain, sync, release the lease), checks what
# arrived with the aws CLI (an independent client), and has systemd-analyze verify the unit.
# The package is removed again at the end, whatever happens.
#
# usage: package_test.sh BUILD_DIR RGW_ENV_FILE        (as root: it installs a package)
set -euo pipefail
build=$1
rgw_env=$2
if [[ $(id -u) -ne 0 ]]; then
  echo "SKIP: installing a Debian package needs root"
  exit 77
fi
if dpkg-query -W -f='${Status}' bucketfs 2>/dev/null | grep -q "install ok installed"; then
  echo "FAIL: a bucketfs package is already installed here; this test would replace it" >&2
  exit 1
fi
# shellcheck disable=SC1090
source "$rgw_env"
work=$(mktemp -d /tmp/bfs-pkg.XXXXXX)
installed=0
cleanup() {
  for m in "$work/m1" "$work/m2"; do
    if mountpoint -q "$m" 2>/dev/null; then
      /usr/bin/bucketfs unmount "$m" --timeout 5 --force >/dev/null 2>&1 || fusermount3 -u -z "$m" || true
    fi
  done
  if ((installed)); then dpkg -r bucketfs >/dev/null || echo "could not remove the package" >&2; fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; for f in "$work"/*.log; do [[ -f $f ]] && { echo "--- $f"; cat "$f"; }; done; exit 1; }
aws_() { env -u AWS_CA_BUNDLE /usr/bin/aws --endpoint-url "$S3_ENDPOINT" "$@"; }

echo "--- building the package"
(cd "$build" && cpack -G DEB -B "$work/pkg" >"$work/cpack.out") || { cat "$work/cpack.out"; fail "cpack"; }
deb=$(ls "$work"/pkg/bucketfs_*.deb)
dpkg-deb --info "$deb" | sed -n '/Package:/,$p'
dpkg -i "$deb" >/dev/null
installed=1
for f in /usr/bin/bucketfs /usr/sbin/mount.fuse.bucketfs /usr/sbin/umount.fuse.bucketfs; do
  [[ -x $f ]] || fail "$f is not installed"
done
[[ -s /usr/share/doc/bucketfs/commands.txt ]] || fail "no commands.txt"
grep -q -- "--lease-ttl" /usr/share/doc/bucketfs/commands.txt || fail "commands.txt lacks mount's options"

echo "--- systemd-analyze verify"
# The instance the docs give for /mnt-workspace must turn back into it under %f (a plain
# "bucketfs@mnt-workspace" would mount at /mnt/workspace).
instance=$(systemd-escape --path /mnt-workspace)
[[ $(systemd-escape --unescape --path "$instance") == /mnt-workspace ]] || fail "instance $instance"
grep -qF 'systemd-escape --path /mnt-workspace' /usr/lib/systemd/system/bucketfs@.service ||
  fail "the unit's comment does not show the escaped instance"
grep -q '%f' /usr/lib/systemd/system/bucketfs@.service || fail "the unit does not mount at %f"
cp /usr/lib/systemd/system/bucketfs@.service "$work/bucketfs@$instance.service"
systemd-analyze verify "$work/bucketfs@$instance.service" || fail "systemd-analyze verify"

bucket=bfs-pkg-$$
aws_ s3api create-bucket --bucket "$bucket" >/dev/null
cat >"$work/bucket.env" <<ENV
S3_ENDPOINT=$S3_ENDPOINT
S3_REGION=$S3_REGION
S3_ACCESS_KEY=$S3_ACCESS_KEY
S3_SECRET_KEY=$S3_SECRET_KEY
ENV
chmod 600 "$work/bucket.env"
mkdir -p "$work/m1" "$work/m2"
# Nothing of the build tree, and none of the test's variables: only what is installed.
clean_env=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin)

echo "--- mount -t fuse.bucketfs"
"${clean_env[@]}" mount -t fuse.bucketfs "$bucket" "$work/m1" \
  -o "env_file=$work/bucket.env,spool_dir=$work/spool1,holder_id=pkg-test,log_file=$work/m1.log" ||
  fail "mount -t fuse.bucketfs"
grep -q " $work/m1 fuse.bucketfs " /proc/mounts || fail "not in /proc/mounts"
echo "through mount -t" >"$work/m1/a.txt"
[[ $(cat "$work/m1/a.txt") == "through mount -t" ]] || fail "read back"
"${clean_env[@]}" umount "$work/m1" || fail "umount"
mountpoint -q "$work/m1" && fail "still mounted after umount"
# umount went through `bucketfs unmount`: everything is in S3 and the lease released, now.
[[ $(aws_ s3 cp "s3://$bucket/a.txt" -) == "through mount -t" ]] || fail "a.txt not in S3"
aws_ s3 cp "s3://$bucket/.bucketfs/lease" - | grep -q '"state":"released"' || fail "lease not released"

echo "--- an fstab line"
echo "$bucket $work/m2 fuse.bucketfs noauto,_netdev,env_file=$work/bucket.env,spool_dir=$work/spool2,log_file=$work/m2.log 0 0" >"$work/fstab"
"${clean_env[@]}" mount -T "$work/fstab" "$work/m2" || fail "mount from the fstab line"
[[ $(cat "$work/m2/a.txt") == "through mount -t" ]] || fail "a.txt through the fstab mount"
echo "through fstab" >"$work/m2/b.txt"
"${clean_env[@]}" umount "$work/m2" || fail "umount of the fstab mount"
[[ $(aws_ s3 cp "s3://$bucket/b.txt" -) == "through fstab" ]] || fail "b.txt not in S3"

aws_ s3 rb "s3://$bucket" --force >/dev/null
echo "PASS: package built, installed, mounted by mount -t and fstab, unmounted by umount"
