// TaskPool: a fixed set of threads for work that blocks on I/O (ranged GETs of read-ahead,
// later part uploads), so that the threads serving FUSE requests never wait for it.
//
// Contract:
//  - Thread-safe. Submit() queues a task and returns at once; tasks run in submission order
//    on the first free thread. A task must not throw (the process aborts if one does).
//  - Bounded: at most `max_queued` tasks wait; TrySubmit() refuses (returns false) beyond
//    that instead of growing without limit, so a caller can fall back to doing less
//    (read-ahead simply prefetches less). Submit() waits for room instead.
//  - Shutdown (destructor): stops taking tasks, runs every task already queued, joins the
//    threads. Anything a task refers to must outlive the pool.
//
// Why not oneTBB's task arena: its workers are one per core and must not block, while these
// tasks spend their lives waiting for the network. The queue is oneTBB's
// concurrent_bounded_queue, which already is the blocking, bounded MPMC queue this needs.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <tbb/concurrent_queue.h>

namespace bucketfs {

class TaskPool {
 public:
  using Task = std::function<void()>;

  TaskPool(std::string name, size_t threads, size_t max_queued);
  TaskPool(const TaskPool&) = delete;
  TaskPool& operator=(const TaskPool&) = delete;
  ~TaskPool();

  // Queues `task` if fewer than max_queued tasks wait; false otherwise.
  bool TrySubmit(Task task);
  // Queues `task`, waiting for room.
  void Submit(Task task);

  size_t threads() const { return threads_.size(); }
  // Tasks waiting (not yet started); a snapshot.
  size_t queued() const;

 private:
  void Run();

  const std::string name_;
  // An empty Task is the stop signal, one per thread.
  tbb::concurrent_bounded_queue<Task> queue_;
  std::vector<std::thread> threads_;
};

}  // namespace bucketfs
