// FUSE-test support: a real `bucketfs serve` (the FUSE daemon alone, without coordinator or
// lease) of the test's bucket through /dev/fuse, run as a child process in the foreground and
// stopped by its PID, plus the deterministic data pattern that boto3 writes and the tests
// check byte for byte. The coordinator's tests (tests/mountd/) run `bucketfs mount` instead.
//
// Contract: Mount() returns only once the kernel shows the mount (or fails the test with the
// daemon's log); Unmount() unmounts with `fusermount3 -u` and waits for the daemon to exit
// (status 0 expected); the destructor unmounts whatever is still mounted, lazily and by PID
// if the daemon hangs, so no test leaves a mount behind.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "tests/support/s3_test_env.h"

namespace bucketfs::testing {

// Byte i of pattern `seed` is byte (i % 8) of the little-endian 64-bit word
// (i / 8) + (seed << 40): every 8-byte word names its own offset, so misplaced data shows.
std::string Pattern(uint64_t seed, uint64_t offset, size_t length);
// Python defining pattern(seed, offset, n) and PatternReader(seed, size) (a file-like
// object for boto3's upload_fileobj) producing the same bytes.
extern const char kPatternPython[];

// True when this build runs under ASan/TSan (large tests shrink, RSS checks do not apply).
bool SanitizedBuild();

class MountedBucket {
 public:
  MountedBucket(const S3Server& server, std::string bucket);
  ~MountedBucket();
  MountedBucket(const MountedBucket&) = delete;
  MountedBucket& operator=(const MountedBucket&) = delete;

  // Starts `bucketfs serve BUCKET DIR -f <args>`; false (with a test failure) if it fails.
  bool Mount(const std::vector<std::string>& extra_args = {});
  // fusermount3 -u, then waits for the daemon; returns its exit status (-1 on timeout).
  int Unmount();
  // Sends `signal` to the daemon and waits for it; returns its exit status.
  int Signal(int signal);
  // A crash: SIGKILL to the daemon (nothing flushed, nothing cleaned up), wait for it, then
  // detach the dead mount (`fusermount3 -u -z`) so that Mount() can mount here again, e.g.
  // with the same spool directory. Returns the daemon's exit status (128 + SIGKILL).
  // The log of the killed run is replaced by the next Mount(): read Log() before.
  int Kill();

  const std::string& dir() const { return dir_; }
  std::string Path(const std::string& relative) const { return dir_ + "/" + relative; }
  pid_t pid() const { return pid_; }
  std::string Log() const;
  // The daemon's peak resident set (VmHWM) in bytes, while it runs.
  uint64_t PeakRss() const;

 private:
  bool IsMounted() const;
  int WaitExit(int timeout_seconds);

  const S3Server& server_;
  const std::string bucket_;
  std::string dir_;
  std::string log_path_;
  pid_t pid_ = -1;
};

// Whether a bucketfs mount (fuse.bucketfs in /proc/self/mountinfo) is at `dir`.
bool IsBucketfsMountedAt(const std::string& dir);

// Reads the whole file; fails the test on error.
std::string ReadFile(const std::string& path);

}  // namespace bucketfs::testing
