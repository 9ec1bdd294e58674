// PrefixGate: keeps the namespace operations under a directory out of its rename.
//
// A directory rename in S3 is a copy of every key under it and a delete of the old ones,
// which takes as long as the copies; the kernel does not lock the directory's children
// for it, and the daemon serves requests on several threads. A file created under the old
// name meanwhile would be committed there after its inode moved; one deleted after it was
// copied would come back under the new name.
//
// Contract:
//  - Enter(paths, seen) waits while an Exclusive() holds a prefix covering any of `paths` (a
//    path under "d/", or "d" itself), then holds all of them at once until the Hold goes.
//    `seen` is epoch() read before the caller computed `paths` from its inodes: Enter says
//    "look again" when it had to wait or when an Exclusive() began since `seen` (the paths
//    may be stale: a rename may have moved them before the caller got here); the caller
//    then computes them again and enters again.
//  - Exclusive(prefixes, own) stops new Enter()s under `prefixes` at once, then waits until
//    every path already entered under them is released, except those of `own` (the
//    caller's own Enter(): a rename enters "d" and "e", then takes "d/" and "e/"), and
//    holds them until the Hold goes.
//  - No deadlock as long as a thread never calls Enter() while it holds one (an Exclusive()
//    registered in between would wait for the first, and the second for it), and at most
//    one thread at a time holds an Enter() while it waits in Exclusive() (the filesystem
//    runs one directory rename at a time).
//  - Thread-safe. Unrelated paths never wait for each other.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "fuse/keyed_hold.h"

namespace bucketfs::fs {

class PrefixGate {
 public:
  using Hold = KeyedHold<PrefixGate>;

  // Counts the Exclusive()s begun so far.
  uint64_t epoch();
  // Returns the hold and whether the caller must look again (it waited, or `seen` is old).
  std::pair<Hold, bool> Enter(std::vector<std::string> paths, uint64_t seen);
  Hold Exclusive(std::vector<std::string> prefixes, const Hold& own);

 private:
  // Requires mu_.
  bool Covered(const std::string& path) const;
  // Paths entered under `prefix`, but for those of `own`.
  bool EnteredUnder(const std::string& prefix, const std::vector<std::string>& own) const;
  friend Hold;
  void Release(const std::vector<std::string>& keys, bool exclusive);

  std::mutex mu_;
  std::condition_variable changed_;
  std::vector<std::string> entered_;    // Guarded by mu_. Duplicates allowed.
  std::vector<std::string> exclusive_;  // Guarded by mu_. Prefixes ending in '/'.
  uint64_t epoch_ = 0;                  // Guarded by mu_.
};

}  // namespace bucketfs::fs
