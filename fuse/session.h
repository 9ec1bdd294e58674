// Session: mounting a Filesystem through libfuse and serving it until unmount.
//
// Contract:
//  - ServeMount() mounts `fs` at options.mountpoint, calls `on_mounted` once the kernel mount
//    is in place, then serves requests on libfuse's multi-threaded loop (one cloned
//    /dev/fuse fd per thread) until the mount goes away (`fusermount3 -u`, `umount`) or the
//    process gets SIGINT, SIGTERM or SIGHUP, which unmount cleanly. Returns OK on a clean
//    end; a mount that could not be made is an error saying why.
//  - This header is free of libfuse; fuse/session.cc and fuse/adapter.cc are the only files
//    that include it (tests/check_layers.sh).
#pragma once

#include <functional>
#include <string>

#include "common/status.h"
#include "fuse/filesystem.h"

namespace bucketfs::fs {

struct SessionOptions {
  std::string mountpoint;
  std::string fsname;       // Shown in /proc/mounts: "bucketfs:BUCKET" by convention.
  bool read_only = true;
  bool allow_other = false;  // Let users other than the mounting one in (root may always).
  bool debug = false;        // libfuse's request trace on stderr.
  unsigned max_threads = 16;
  unsigned max_read = 1u << 20;
};

Status ServeMount(Filesystem& fs, const SessionOptions& options,
                  const std::function<void()>& on_mounted);

}  // namespace bucketfs::fs
