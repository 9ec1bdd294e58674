#include "common/task_pool.h"

#include <pthread.h>

#include <algorithm>

namespace bucketfs {

TaskPool::TaskPool(std::string name, size_t threads, size_t max_queued) : name_(std::move(name)) {
  // Exactly max_queued tasks may wait, for Submit() as for TrySubmit(). The destructor's
  // stop signals wait for room like any task: the workers keep draining the queue.
  queue_.set_capacity(static_cast<std::ptrdiff_t>(std::max<size_t>(max_queued, 1)));
  threads_.reserve(threads);
  for (size_t i = 0; i < std::max<size_t>(threads, 1); ++i) {
    threads_.emplace_back([this] { Run(); });
    // Thread names are limited to 15 bytes; they show in top -H and in gdb.
    pthread_setname_np(threads_.back().native_handle(), name_.substr(0, 15).c_str());
  }
}

TaskPool::~TaskPool() {
  // The stop signals queue behind every task already submitted, so those all run.
  for (size_t i = 0; i < threads_.size(); ++i) queue_.push(Task());
  for (auto& t : threads_) t.join();
}

bool TaskPool::TrySubmit(Task task) { return queue_.try_push(std::move(task)); }

void TaskPool::Submit(Task task) { queue_.push(std::move(task)); }

size_t TaskPool::queued() const {
  return static_cast<size_t>(std::max<std::ptrdiff_t>(queue_.size(), 0));
}

void TaskPool::Run() {
  for (;;) {
    Task task;
    queue_.pop(task);
    if (!task) return;
    task();
  }
}

}  // namespace bucketfs
