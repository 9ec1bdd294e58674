// Eventually(pred): polls `pred` every millisecond until it holds (true) or `timeout` of real
// time passes (false). For unit tests that wait for another thread; never a timing assertion.
#pragma once

#include <chrono>
#include <thread>

#include "common/clock.h"

namespace bucketfs::testing {

template <typename Pred>
bool Eventually(Pred pred, Duration timeout = std::chrono::seconds(10)) {
  const MonoTime end = RealClock().Now() + timeout;
  while (!pred()) {
    if (RealClock().Now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

}  // namespace bucketfs::testing
