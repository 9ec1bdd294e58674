// MemoryBudget: the one byte budget of the daemon. Every large buffer bucketfs holds (block
// cache blocks, read-ahead windows, writeback parts) is charged to it first, so the daemon's
// memory stays bounded however many files are open, and a burst of work waits (back-pressure)
// instead of growing until the pod is OOM-killed.
//
// Contract:
//  - Thread-safe. `used() <= capacity()` at every instant: bytes are handed out only when they
//    fit, never on credit.
//  - Admission is by RAII: Reserve()/TryReserve() return a Reservation; its destructor (or
//    Release()/Shrink()) gives the bytes back and wakes the waiters they now satisfy. A
//    Reservation is movable, not copyable, and must not outlive its MemoryBudget; destroying
//    a MemoryBudget while bytes are reserved aborts the process (a dangling Reservation would
//    be a use-after-free).
//  - Reserve(bytes, deadline) blocks until the bytes fit or the deadline passes:
//      * bytes > capacity():      kInvalidArgument at once (it could never fit: no deadlock);
//      * bytes == 0:              an empty Reservation at once;
//      * deadline passes first:   kTimeout, retryable, saying how much was asked, used and
//                                 waiting. A deadline at or before Clock::Now() fails at once
//                                 unless the bytes fit right away.
//    TryReserve(bytes) never blocks: kBusy (retryable) when the bytes do not fit now.
//  - Fairness: waiters are served strictly first-in first-out. Freed bytes go to the oldest
//    waiter; a younger one is never served ahead of it, even when it would fit, and neither
//    Reserve nor TryReserve may barge past a non-empty queue. So a 64 MiB request is not
//    starved by a stream of 1 MiB ones; the cost is that small requests queued behind a big
//    one wait for it (head-of-line blocking), which is the point.
//  - Deadlines are MonoTime on the injected Clock. The wait itself is a real condition
//    variable: it sleeps for (deadline - clock.Now()) of real time and re-reads the clock on
//    every wake-up. With RealClock that is exact; with a FakeClock, tests use a deadline at or
//    before Now() (fails without blocking) or rely on being woken by a release.
//
// Design notes:
//  - Each waiter sleeps on its own condition variable, and the releasing thread grants bytes
//    to waiters under the budget's lock before waking them. So a release wakes exactly the
//    waiters it satisfied (no thundering herd), and a woken waiter does not race anyone for
//    its bytes: they are already accounted as used.
//  - A waiter that times out leaves the queue and, if it was blocking the head, lets the
//    waiters behind it in at once.
//
// Lock order: MemoryBudget's mutex is a leaf: nothing else is locked or called under it, so
// a caller may hold its own lock while calling in (though blocking in Reserve() with a lock
// held is rarely wise; the block cache never does, see cache/block_cache.h).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <list>
#include <mutex>
#include <optional>
#include <string>

#include "common/format_bytes.h"
#include "common/clock.h"
#include "common/status.h"

namespace bucketfs::cache {

class MemoryBudget;

// Bytes held from a MemoryBudget; given back on destruction. An empty Reservation (default
// constructed, moved from, or released) holds nothing.
class Reservation {
 public:
  Reservation() = default;
  Reservation(Reservation&& other) noexcept;
  Reservation& operator=(Reservation&& other) noexcept;
  Reservation(const Reservation&) = delete;
  Reservation& operator=(const Reservation&) = delete;
  ~Reservation() { Release(); }

  uint64_t bytes() const { return bytes_; }
  bool empty() const { return bytes_ == 0; }

  // Gives back min(n, bytes()) bytes now and keeps the rest; returns the bytes given back.
  uint64_t Shrink(uint64_t n);
  // Gives back everything now; the Reservation becomes empty.
  void Release();

 private:
  friend class MemoryBudget;
  Reservation(MemoryBudget* budget, uint64_t bytes) : budget_(budget), bytes_(bytes) {}

  MemoryBudget* budget_ = nullptr;
  uint64_t bytes_ = 0;
};

struct MemoryBudgetStats {
  uint64_t capacity = 0;
  uint64_t used = 0;
  uint64_t peak = 0;     // Highest `used` ever seen.
  uint64_t waiters = 0;  // Reserve() calls blocked right now.
};

class MemoryBudget {
 public:
  // `clock` judges deadlines and must outlive the budget.
  explicit MemoryBudget(uint64_t capacity_bytes, Clock& clock = RealClock());
  MemoryBudget(const MemoryBudget&) = delete;
  MemoryBudget& operator=(const MemoryBudget&) = delete;
  ~MemoryBudget();

  // Blocks until `bytes` fit or `deadline` passes (see the contract above).
  Result<Reservation> Reserve(uint64_t bytes, MonoTime deadline);
  // `bytes` now, or kBusy; never blocks, never barges past waiters.
  Result<Reservation> TryReserve(uint64_t bytes);

  uint64_t capacity() const { return capacity_; }
  uint64_t used() const;
  uint64_t peak() const;
  uint64_t waiters() const;
  MemoryBudgetStats Stats() const;

 private:
  friend class Reservation;

  struct Waiter {
    uint64_t bytes = 0;
    bool granted = false;  // Guarded by mu_.
    std::condition_variable cv;
  };

  // Gives bytes back and grants them to the waiters at the head of the queue.
  void Give(uint64_t bytes);
  // Hands bytes to waiters in FIFO order while the head fits. Requires mu_.
  void GrantLocked();
  // Accounts `bytes` as used. Requires mu_.
  void TakeLocked(uint64_t bytes);
  // "used X of Y, N waiting". Requires mu_.
  std::string DescribeLocked() const;

  const uint64_t capacity_;
  Clock& clock_;

  mutable std::mutex mu_;
  uint64_t used_ = 0;         // Guarded by mu_.
  uint64_t peak_ = 0;         // Guarded by mu_.
  std::list<Waiter*> queue_;  // Guarded by mu_. Oldest first; entries live on waiters' stacks.
};

// --- The default budget, from the memory the pod may use. ---

// Where the memory limit is read from; tests point these at temporary files.
//
// The process's own cgroup is named in /proc/self/cgroup ("0::/system.slice/x.service" for
// v2, "N:memory:/path" for v1's memory controller). Its limit, and every ancestor's, bound
// it: in a pod with its own cgroup namespace the path is "/" and the root's files are the
// pod's; a systemd unit with MemoryMax= on a host has its limit only in its leaf.
struct MemoryLimitSources {
  std::string proc_self_cgroup = "/proc/self/cgroup";
  std::string cgroup_v2_root = "/sys/fs/cgroup";  // Each level's memory.max: "max" or bytes.
  // Each level's memory.limit_in_bytes.
  std::string cgroup_v1_memory_root = "/sys/fs/cgroup/memory";
  // Physical RAM; unset: sysconf(_SC_PHYS_PAGES) * sysconf(_SC_PAGESIZE).
  std::optional<uint64_t> physical_bytes;
};

inline constexpr uint64_t kMinDefaultBudget = 64ull << 20;
inline constexpr uint64_t kMaxDefaultBudget = 4ull << 30;

// The bytes this process may use: the smallest of physical RAM and the cgroup limits of the
// process's cgroup and its ancestors (v2 and v1), ignoring a file that is missing,
// unlimited ("max", or v1's huge "no limit" number, which is above physical RAM) or
// unreadable (logged once per call).
uint64_t DetectMemoryLimit(const MemoryLimitSources& sources = {});

// A quarter of DetectMemoryLimit(), clamped to [kMinDefaultBudget, kMaxDefaultBudget]: the
// rest is left to the page cache, the kernel's FUSE buffers and the programs in the pod.
uint64_t DefaultBudgetBytes(const MemoryLimitSources& sources = {});

// "1.5 MiB", for messages (common/format_bytes.h).
using bucketfs::FormatBytes;

}  // namespace bucketfs::cache
