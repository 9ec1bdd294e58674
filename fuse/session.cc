#define FUSE_USE_VERSION 314
#include "fuse/session.h"

#include <fuse_lowlevel.h>
#include <poll.h>
#include <climits>
#include <cstdlib>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <fstream>
#include <sstream>
#include <memory>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "common/log.h"
#include "fuse/adapter.h"
#include "fuse/session_guard.h"

namespace bucketfs::fs {
namespace {

// How long the teardown answers requests for an invalidation still in the kernel before it
// aborts the connection.
constexpr std::chrono::milliseconds kInvalidationPatience{10000};

struct ArgsDeleter {
  void operator()(fuse_args* a) const {
    fuse_opt_free_args(a);
    delete a;
  }
};

// The kernel's device of the FUSE mount at `real_mountpoint` ("0:39"), or empty. Not from
// stat(): the mount cannot answer until a thread serves it. mountinfo names the device of
// each mount: "36 25 0:39 / /mnt rw,... - fuse.bucketfs ...".
std::string MountDevice(const std::string& real_mountpoint) {
  std::ifstream mountinfo("/proc/self/mountinfo");
  std::string line, device;
  while (std::getline(mountinfo, line)) {
    std::istringstream fields(line);
    std::string id, parent, dev, root, point;
    fields >> id >> parent >> dev >> root >> point;
    if (point == real_mountpoint && line.find(" - fuse.bucketfs ") != std::string::npos) {
      device = dev;  // The last one wins: ours is mounted on top.
    }
  }
  return device;
}

// The kernel reads a FUSE file ahead by the mount's read_ahead_kb, 128 KiB by default: each
// 1 MiB of a sequential read then costs eight requests and context switches. Raising it to
// max_read (root only: sysfs) measured ~10% more throughput on a cold 1 GiB read. Failure only
// costs speed.
void RaiseKernelReadAhead(const SessionOptions& options, const std::string& device) {
  if (device.empty()) return;
  const std::string path = "/sys/class/bdi/" + device + "/read_ahead_kb";
  std::ofstream out(path);
  if (out) out << (options.max_read / 1024);
  if (!out) Logger("fuse")->debug("cannot raise {} (not root?)", path);
}

// Answers what the kernel has queued for the session, for up to about 50 ms, once its loop
// has ended (see SessionGuard).
void ServeSome(fuse_session* se) {
  pollfd ready{fuse_session_fd(se), POLLIN, 0};
  const int n = poll(&ready, 1, 50);
  if (n == 1 && (ready.revents & POLLIN) != 0) {
    fuse_buf buf{};
    if (fuse_session_receive_buf(se, &buf) > 0) fuse_session_process_buf(se, &buf);
    free(buf.mem);  // NOLINT(cppcoreguidelines-no-malloc): libfuse allocated it with malloc.
  } else if (n != 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // Gone: do not spin.
  }
}

// Aborts the FUSE connection of `device` ("0:39" is connection 39): the kernel fails every
// request still queued, which unlocks the pages they held. Root only (fusectl).
void AbortConnection(const std::string& device) {
  const auto colon = device.find(':');
  const std::string path =
      "/sys/fs/fuse/connections/" + device.substr(colon == std::string::npos ? 0 : colon + 1) +
      "/abort";
  std::ofstream out(path);
  if (out) out << "1";
  Logger("fuse")->warn(
      "an invalidation of the kernel's cache still waits at unmount; {} the connection{}",
      out ? "aborted" : "could not abort",
      out ? "" : " (" + path + " not writable); unmount with `umount -f` if it stays");
}

}  // namespace

Status ServeMount(Filesystem& fs, const SessionOptions& options,
                  const std::function<void()>& on_mounted) {
  std::unique_ptr<fuse_args, ArgsDeleter> args(new fuse_args(FUSE_ARGS_INIT(0, nullptr)));
  std::string mount_options = "fsname=" + options.fsname +
                              ",subtype=bucketfs,default_permissions,max_read=" +
                              std::to_string(options.max_read);
  if (options.read_only) mount_options += ",ro";
  if (options.allow_other) mount_options += ",allow_other";
  std::vector<std::string> argv = {"bucketfs", "-o", mount_options};
  if (options.debug) argv.push_back("-d");
  for (const auto& a : argv) {
    if (fuse_opt_add_arg(args.get(), a.c_str()) != 0) {
      return Status(ErrorCode::kInternal, "out of memory building the mount options");
    }
  }

  AdapterContext context{&fs, options.max_read};
  fuse_session* se = fuse_session_new(args.get(),
                                      static_cast<const fuse_lowlevel_ops*>(LowLevelOps()),
                                      LowLevelOpsSize(), &context);
  if (se == nullptr) {
    return Status(ErrorCode::kInvalidArgument,
                  "libfuse refused the mount options '" + mount_options + "' (see above)");
  }
  if (fuse_set_signal_handlers(se) != 0) {
    fuse_session_destroy(se);
    return Status(ErrorCode::kInternal, "cannot install the signal handlers");
  }
  char resolved[PATH_MAX];
  const std::string real_mountpoint =
      realpath(options.mountpoint.c_str(), resolved) != nullptr ? resolved : options.mountpoint;
  if (fuse_session_mount(se, options.mountpoint.c_str()) != 0) {
    fuse_remove_signal_handlers(se);
    fuse_session_destroy(se);
    return Status(ErrorCode::kInvalidArgument,
                  "cannot mount at '" + options.mountpoint +
                      "': check that it is an existing, empty directory, that nothing is "
                      "mounted there already (fusermount3 -u it), and that /dev/fuse is "
                      "available (in a container: --device /dev/fuse and CAP_SYS_ADMIN)");
  }
  Logger("fuse")->info("mounted {} at {}{}", options.fsname, options.mountpoint,
                       options.read_only ? " (read-only)" : "");
  const std::string device = MountDevice(real_mountpoint);
  RaiseKernelReadAhead(options, device);
  // Page invalidations run on the filesystem's invalidation thread and may still be queued
  // when the session ends: they reach the session only through the guard
  // (session_guard.h). Attribute invalidations run on request threads, at the same time:
  // one page invalidation waiting in the kernel for page locks (behind a READ in flight)
  // must not hold up an OPEN's attribute invalidation.
  auto guard = std::make_shared<SessionGuard>(se);
  fs.SetInvalidator([guard](InodeId ino, bool pages) {
    guard->Use([&](void* session) {
      // Attributes, and every cached page (offset 0, length 0) or none (a negative offset).
      // ENOENT means the kernel had forgotten the inode already.
      const int rc = fuse_lowlevel_notify_inval_inode(static_cast<fuse_session*>(session), ino,
                                                      pages ? 0 : -1, 0);
      if (rc != 0 && rc != -ENOENT) {
        Logger("fuse")->debug("invalidating inode {} in the kernel: error {}", ino, rc);
      }
    });
  });
  if (on_mounted) on_mounted();

  fuse_loop_config* config = fuse_loop_cfg_create();
  fuse_loop_cfg_set_clone_fd(config, 1);
  fuse_loop_cfg_set_max_threads(config, options.max_threads);
  fuse_loop_cfg_set_idle_threads(config, std::max(2u, options.max_threads / 2));
  const int rc = fuse_session_loop_mt(se, config);
  fuse_loop_cfg_destroy(config);

  fs.SetInvalidator(nullptr);  // The session is going away.
  // Waits for the invalidations in progress, answering the requests they may wait for.
  guard->Close([se] { ServeSome(se); }, kInvalidationPatience,
               [&device] { AbortConnection(device); });
  fuse_session_unmount(se);
  fuse_remove_signal_handlers(se);
  fuse_session_destroy(se);
  Logger("fuse")->info("unmounted {}", options.mountpoint);
  if (rc != 0 && rc != -EINTR && rc != SIGINT && rc != SIGTERM && rc != SIGHUP) {
    return Status(ErrorCode::kInternal, "the FUSE loop ended with error " + std::to_string(rc));
  }
  return Status::Ok();
}

}  // namespace bucketfs::fs
