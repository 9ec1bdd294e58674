// Clock: the injected source of time for everything that depends on it (request signing
// dates, retry backoff, deadlines, cache TTLs, the lease).
//
// Contract: implementations are thread-safe. Now() is monotonic and is the only clock used
// for durations and deadlines; WallNow() is wall-clock time, used only where a protocol
// needs it (SigV4 dates, Last-Modified) and never compared across hosts. SleepUntil() may
// return early only if the implementation is a FakeClock being advanced by a test.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

namespace bucketfs {

using MonoTime = std::chrono::steady_clock::time_point;
using WallTime = std::chrono::system_clock::time_point;
using Duration = std::chrono::steady_clock::duration;

class Clock {
 public:
  virtual ~Clock() = default;
  virtual MonoTime Now() const = 0;
  virtual WallTime WallNow() const = 0;
  virtual void SleepUntil(MonoTime when) = 0;
  void SleepFor(Duration d) { SleepUntil(Now() + d); }
};

// The process-wide real clock.
Clock& RealClock();

// A clock that moves only when told to, for deterministic tests. SleepUntil() advances the
// clock to the wake-up time at once (a sleeping thread never blocks), so retry and backoff
// logic can be tested without waiting.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(WallTime wall_start = WallTime(std::chrono::seconds(1'700'000'000)));
  MonoTime Now() const override;
  WallTime WallNow() const override;
  void SleepUntil(MonoTime when) override;
  void Advance(Duration d);
  // Total time spent "sleeping" through SleepUntil, for assertions on backoff.
  Duration slept() const;

 private:
  mutable std::mutex mu_;
  MonoTime mono_;
  WallTime wall_;
  Duration slept_{};
};

}  // namespace bucketfs
