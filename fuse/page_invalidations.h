// PageInvalidations: the one thread that tells the kernel to drop inodes' cached pages.
//
// Why a thread of its own: a page invalidation (notify_inval_inode of a page range) locks
// each cached page of the inode, and a READ being served holds its page until the daemon
// answers it. So the invalidation must not run on a thread serving FUSE requests (that
// thread may be the one to answer), and it did not belong on the I/O pool either: that
// pool's queue is bounded, and an invalidation refused because it was full was dropped,
// leaving a replaced object's or a set-aside write's pages in the kernel for as long as the
// kernel kept them.
//
// Contract:
//  - Post(ino) never blocks and never drops. An inode already waiting is not queued twice,
//    so what waits is bounded by the number of inodes, whatever the load.
//  - Invalidations start in the order first posted, on `threads` threads (a few: one
//    waiting in the kernel behind a slow READ must not hold up every other inode's), by
//    calling `invalidate`.
//  - The destructor runs none of those still waiting (the mount is going away) and waits
//    for those in progress; whatever can make a stuck one end (the session teardown,
//    which answers queued requests and aborts the connection; see SessionGuard) must be
//    done before it. It calls `on_stopping` (if set; for tests) once no more will start.
//  - Thread-safe; free of libfuse.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <unordered_set>
#include <vector>

namespace bucketfs::fs {

class PageInvalidations {
 public:
  using Invalidate = std::function<void(uint64_t ino)>;

  explicit PageInvalidations(Invalidate invalidate, size_t threads = 4,
                             std::function<void()> on_stopping = nullptr);
  PageInvalidations(const PageInvalidations&) = delete;
  PageInvalidations& operator=(const PageInvalidations&) = delete;
  ~PageInvalidations();

  void Post(uint64_t ino);
  // Inodes waiting (not yet started); a snapshot.
  size_t waiting() const;

 private:
  void Run();

  const Invalidate invalidate_;
  const std::function<void()> on_stopping_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::deque<uint64_t> order_;          // Guarded by mu_.
  std::unordered_set<uint64_t> queued_;  // The inodes in order_. Guarded by mu_.
  bool stopping_ = false;               // Guarded by mu_.
  std::vector<std::thread> threads_;    // Last: started once the rest exists.
};

}  // namespace bucketfs::fs
