#include "fuse/page_invalidations.h"

#include <pthread.h>

#include <algorithm>

namespace bucketfs::fs {

PageInvalidations::PageInvalidations(Invalidate invalidate, size_t threads,
                                     std::function<void()> on_stopping)
    : invalidate_(std::move(invalidate)), on_stopping_(std::move(on_stopping)) {
  for (size_t i = 0; i < std::max<size_t>(1, threads); ++i) {
    threads_.emplace_back([this] { Run(); });
    pthread_setname_np(threads_.back().native_handle(), "bfs-inval");
  }
}

PageInvalidations::~PageInvalidations() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (on_stopping_) on_stopping_();
  for (std::thread& t : threads_) t.join();
}

void PageInvalidations::Post(uint64_t ino) {
  {
    std::lock_guard lock(mu_);
    if (stopping_ || !queued_.insert(ino).second) return;
    order_.push_back(ino);
  }
  wake_.notify_one();
}

size_t PageInvalidations::waiting() const {
  std::lock_guard lock(mu_);
  return order_.size();
}

void PageInvalidations::Run() {
  std::unique_lock lock(mu_);
  for (;;) {
    wake_.wait(lock, [this] { return stopping_ || !order_.empty(); });
    if (stopping_) return;
    const uint64_t ino = order_.front();
    order_.pop_front();
    // Off the set before it runs: a change posted meanwhile needs another invalidation.
    queued_.erase(ino);
    lock.unlock();
    invalidate_(ino);
    lock.lock();
  }
}

}  // namespace bucketfs::fs
