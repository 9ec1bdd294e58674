#include "common/task_pool.h"

#include <pthread.h>

#include <algorithm>

namespace bucketfs {

TaskPool::TaskPool(std::string name, size_t threads, size_t max_queued)
    : name_(std::move(name)), max_queued_(std::max<size_t>(max_queued, 1)) {
  threads_.reserve(std::max<size_t>(threads, 1));
  for (size_t i = 0; i < std::max<size_t>(threads, 1); ++i) {
    threads_.emplace_back([this] { Run(); });
    // Thread names are limited to 15 bytes; they show in top -H and in gdb.
    pthread_setname_np(threads_.back().native_handle(), name_.substr(0, 15).c_str());
  }
}

TaskPool::~TaskPool() { Shutdown(); }

void TaskPool::Shutdown() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  has_task_.notify_all();
  // Workers leave only once the queue is empty, so every task already submitted runs.
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
}

bool TaskPool::TrySubmit(Task task) { return TryQueue(std::move(task), /*first=*/false); }

bool TaskPool::TrySubmitFirst(Task task) { return TryQueue(std::move(task), /*first=*/true); }

bool TaskPool::TryQueue(Task task, bool first) {
  {
    std::lock_guard lock(mu_);
    if (queue_.size() >= max_queued_) return false;
    if (first) {
      queue_.push_front(std::move(task));
    } else {
      queue_.push_back(std::move(task));
    }
  }
  has_task_.notify_one();
  return true;
}

void TaskPool::Submit(Task task) {
  {
    std::unique_lock lock(mu_);
    has_room_.wait(lock, [this] { return queue_.size() < max_queued_; });
    queue_.push_back(std::move(task));
  }
  has_task_.notify_one();
}

size_t TaskPool::queued() const {
  std::lock_guard lock(mu_);
  return queue_.size();
}

void TaskPool::Run() {
  for (;;) {
    Task task;
    {
      std::unique_lock lock(mu_);
      has_task_.wait(lock, [this] { return !queue_.empty() || stopping_; });
      if (queue_.empty()) return;  // Stopping, and nothing left to run.
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    has_room_.notify_one();
    task();
  }
}

}  // namespace bucketfs
