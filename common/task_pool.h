// TaskPool: a fixed set of threads for work that blocks on I/O (ranged GETs of read-ahead,
// later part uploads), so that the threads serving FUSE requests never wait for it.
//
// Contract:
//  - Thread-safe. Submit() queues a task and returns at once; tasks run in submission order
//    on the first free thread, except that TrySubmitFirst() puts its task before every
//    task waiting (for a request someone waits on, queued behind background work). A task
//    must not throw (the process aborts if one does).
//  - Bounded: at most `max_queued` tasks wait; TrySubmit() refuses (returns false) beyond
//    that instead of growing without limit, so a caller can fall back to doing less
//    (read-ahead simply prefetches less). Submit() waits for room instead.
//  - Shutdown (Shutdown(), or the destructor): runs every task queued, including tasks that
//    running tasks submit meanwhile, then joins the threads. Anything a task refers to must
//    outlive the pool. Shutdown() leaves the object alive, so that tasks still running can
//    reach it through their owner's pointer: an owner that reset() its unique_ptr instead
//    would null that pointer while they run.
//
// Why not oneTBB: its task arena has one worker per core, which must not block, while these
// tasks spend their lives waiting for the network. Its concurrent_bounded_queue would do as
// the queue, but its blocking waits live in the uninstrumented libtbb, so ThreadSanitizer
// cannot see their happens-before edges and reports races that are not there (seen). At one
// task per block fetched (MiBs), a mutex and two condition variables cost nothing
// measurable and keep the TSan build meaningful.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace bucketfs {

class TaskPool {
 public:
  using Task = std::function<void()>;

  TaskPool(std::string name, size_t threads, size_t max_queued);
  TaskPool(const TaskPool&) = delete;
  TaskPool& operator=(const TaskPool&) = delete;
  ~TaskPool();

  // Runs what is queued and joins the threads (see Shutdown above). Idempotent; not to be
  // called concurrently with itself or from a task. Tasks submitted afterwards never run.
  void Shutdown();

  // Queues `task` if fewer than max_queued tasks wait; false otherwise.
  bool TrySubmit(Task task);
  // As TrySubmit, but `task` goes first: the next free thread runs it.
  bool TrySubmitFirst(Task task);
  // Queues `task`, waiting for room.
  void Submit(Task task);

  size_t threads() const { return threads_.size(); }
  // Tasks waiting (not yet started); a snapshot.
  size_t queued() const;

 private:
  bool TryQueue(Task task, bool first);
  void Run();

  const std::string name_;
  const size_t max_queued_;
  mutable std::mutex mu_;
  std::condition_variable has_task_;  // With mu_: a task was queued, or stopping_.
  std::condition_variable has_room_;  // With mu_: a task left the queue.
  std::deque<Task> queue_;            // Guarded by mu_.
  bool stopping_ = false;             // Guarded by mu_.
  std::vector<std::thread> threads_;
};

}  // namespace bucketfs
