// Adapter: the libfuse low-level operations table, each entry a thin translation between a
// kernel request and one Filesystem method. No policy lives here: errors become errno only
// through ToErrno(), attributes become struct stat in one function.
//
// Only fuse/adapter.cc and fuse/session.cc include libfuse; this header hands the table out
// as an opaque pointer so that it stays libfuse-free.
#pragma once

#include <cstddef>

namespace bucketfs::fs {

class Filesystem;

// The session's userdata: what the operations serve, and the settings the kernel
// negotiates at INIT.
struct AdapterContext {
  Filesystem* filesystem = nullptr;
  unsigned max_read = 1u << 20;  // Must equal the max_read mount option.
};

// A `const struct fuse_lowlevel_ops*` and its size, for fuse_session_new(); the session's
// userdata must be an AdapterContext*.
const void* LowLevelOps();
size_t LowLevelOpsSize();

}  // namespace bucketfs::fs
