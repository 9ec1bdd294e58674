#include "common/clock.h"

#include <thread>

namespace bucketfs {
namespace {

class SystemClock final : public Clock {
 public:
  MonoTime Now() const override { return std::chrono::steady_clock::now(); }
  WallTime WallNow() const override { return std::chrono::system_clock::now(); }
  void SleepUntil(MonoTime when) override { std::this_thread::sleep_until(when); }
};

}  // namespace

Clock& RealClock() {
  static SystemClock clock;
  return clock;
}

FakeClock::FakeClock(WallTime wall_start)
    : mono_(MonoTime(std::chrono::hours(1000))), wall_(wall_start) {}

MonoTime FakeClock::Now() const {
  std::lock_guard lock(mu_);
  return mono_;
}

WallTime FakeClock::WallNow() const {
  std::lock_guard lock(mu_);
  return wall_;
}

void FakeClock::SleepUntil(MonoTime when) {
  std::lock_guard lock(mu_);
  if (when > mono_) {
    slept_ += when - mono_;
    wall_ += std::chrono::duration_cast<WallTime::duration>(when - mono_);
    mono_ = when;
  }
}

void FakeClock::Advance(Duration d) {
  std::lock_guard lock(mu_);
  mono_ += d;
  wall_ += std::chrono::duration_cast<WallTime::duration>(d);
}

Duration FakeClock::slept() const {
  std::lock_guard lock(mu_);
  return slept_;
}

}  // namespace bucketfs
