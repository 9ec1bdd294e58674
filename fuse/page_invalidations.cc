#include "fuse/page_invalidations.h"

#include <pthread.h>

namespace bucketfs::fs {

PageInvalidations::PageInvalidations(Invalidate invalidate)
    : invalidate_(std::move(invalidate)), thread_([this] { Run(); }) {
  pthread_setname_np(thread_.native_handle(), "bfs-inval");
}

PageInvalidations::~PageInvalidations() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  wake_.notify_one();
  thread_.join();
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
