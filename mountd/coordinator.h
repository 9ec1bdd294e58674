// Coordinator: the side process that owns one mount for its whole life. It holds the
// single-pod lease (mountd/lease.h), runs the FUSE daemon (`bucketfs serve`) as its child,
// keeps the lease renewed and the daemon's write fence (cache/write_fence.h) moved forward,
// restarts a daemon that died, and performs the unmount that loses nothing.
//
// Contract:
//  - Run() probes conditional writes and acquires the lease (a read-only mount takes none),
//    starts the daemon with the lease's deadline on its command line, waits until the daemon
//    says the kernel mount is in place, then calls ready("") — or ready(<why>) and returns
//    non-zero without leaving a mount or a lease behind.
//  - Renewal every TTL/3; after each one the daemon's fence is extended to the new validity.
//    A lost lease (412/404 on renew, or no successful renewal before the deadline) fences the
//    daemon at once (writes EROFS) and `status` says so; the daemon's own fence closes at the
//    deadline anyway, even if this process is gone.
//  - A daemon that dies is detected within a tick (200 ms): its dead mount is detached
//    (`fusermount3 -u -z`, no lingering "Transport endpoint is not connected") and a new one
//    is started on the same spool, which uploads every closed file before serving. A daemon
//    that exits by itself once its mount is gone was unmounted on purpose (`umount`,
//    `fusermount3 -u`): the coordinator then releases the lease (if the daemon uploaded
//    everything: exit status 0) and ends too.
//  - Unmount (the `unmount` request, or SIGTERM/SIGINT with force): stop new opens; wait for
//    open handles to close, reporting which processes hold which files (from /proc); sync
//    every dirty file, reporting files and bytes left; unmount; wait for the daemon; release
//    the lease. On timeout without force: nothing is unmounted, opens are allowed again, and
//    the reply names the holders. With force: the daemon is fenced, the mount detached
//    lazily, and data not yet uploaded stays in the spool for the next mount; the lease is
//    then left to expire rather than released, so no other pod mounts the bucket before that
//    data could be uploaded.
//  - Control socket (common/control_channel.h), owner-only, at ControlSocketPath(): requests
//    "status", "unmount" {timeout_ms, sync_timeout_ms, force}, "reload" {credentials?},
//    "share" {key, ttl}. The daemon's own socket is DaemonSocketPath().
//  - SIGHUP re-reads credentials (as "reload" without credentials).
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "common/status.h"
#include "mountd/lease.h"
#include "s3/credentials.h"
#include "s3/object_client.h"

namespace bucketfs::mountd {

// The sockets of the mount at `mountpoint` (an absolute, resolved path) under `runtime_dir`.
std::string ControlSocketPath(const std::string& runtime_dir, const std::string& mountpoint);
std::string DaemonSocketPath(const std::string& runtime_dir, const std::string& mountpoint);

// A path as /proc/self/mountinfo writes it, decoded: the kernel escapes space, tab,
// newline and backslash as three octal digits ("/mnt/my\\040data").
std::string DecodeMountInfoPath(std::string_view field);
// Whether a FUSE filesystem is mounted at `mountpoint` (an absolute path, as mounted).
bool IsFuseMounted(const std::string& mountpoint);

// A process using something under a mountpoint: an open file descriptor, or its working
// directory.
struct Holder {
  pid_t pid = 0;
  std::string command;  // /proc/PID/comm
  std::string path;     // What it holds, as the process sees it.
  bool cwd = false;     // Its working directory, not an open file.
  bool mapped = false;  // A file mapped in memory (its descriptor may be closed).
};
// Every process (but `except`) with a descriptor or working directory at or under
// `mountpoint`. Processes whose /proc entries cannot be read (another user's, when not
// root) are skipped; `unreadable` counts them when given.
std::vector<Holder> FindHolders(const std::string& mountpoint, const std::vector<pid_t>& except,
                                size_t* unreadable = nullptr);
// "pid 123 (python3) holds data/x.bin; pid 77 (bash) has its working directory in it".
std::string DescribeHolders(const std::vector<Holder>& holders, const std::string& mountpoint);

struct CoordinatorOptions {
  std::string bucket;
  std::string alias;       // As the operator named the mount (bucket or alias).
  std::string endpoint;    // For messages and status.
  std::string mountpoint;  // Absolute and resolved.
  std::string runtime_dir;
  std::string spool_dir;  // The bucket's own directory in the spool: SPOOL/BUCKET.
  bool read_only = false;
  // The daemon's command line: `bucketfs serve … MOUNTPOINT -f` and its options; the
  // coordinator appends --control-socket and --lease-valid-until-ns.
  std::vector<std::string> daemon_argv;
  LeaseOptions lease;
  HolderIdentity holder;
  Duration signal_unmount_timeout = std::chrono::seconds(600);  // SIGTERM: wait, then force.
  Duration mount_timeout = std::chrono::seconds(120);  // Daemon start until the mount answers.
};

// What the coordinator needs of the credentials and of the signer, without seeing libcurl.
struct CoordinatorServices {
  std::shared_ptr<s3::CredentialsProvider> credentials;
  // Replaces static credentials (a `reload` that carries them); nullptr when not possible.
  std::function<Status(const s3::Credentials&)> set_credentials;
  std::function<Result<std::string>(const std::string& key, int ttl_seconds)> presign_get;
  // Whether the bucket's spool holds files a mount here must upload first (the spool's
  // layout is cache::Spool's); nullptr: none.
  std::function<bool()> spool_holds_files;
  // Variables every daemon started from now on gets on top of the coordinator's own
  // environment (NAME, VALUE): asked at each start, so that a daemon restarted after a
  // `reload` gets the credentials handed over then, not the ones the coordinator started
  // with. nullptr: none.
  std::function<std::vector<std::pair<std::string, std::string>>()> daemon_environment;
  // Lines for the person waiting for the mount (the wait for another pod's lease), besides
  // the log; nullptr: the log only.
  std::function<void(const std::string&)> progress;
};

class Coordinator {
 public:
  Coordinator(s3::ObjectClient& client, CoordinatorServices services, CoordinatorOptions options);
  ~Coordinator();
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  // Runs until unmounted. ready("") once the mount answers, or ready(why) on failure.
  // Returns the process exit status.
  int Run(const std::function<void(const std::string&)>& ready);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace bucketfs::mountd
