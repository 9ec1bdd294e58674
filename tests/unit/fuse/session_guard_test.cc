#include "fuse/session_guard.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>

namespace bucketfs::fs {
namespace {

using namespace std::chrono_literals;

// Waits until `flag` is set, for at most 30 s; says whether it was.
bool WaitFor(const std::atomic<bool>& flag) {
  const auto until = std::chrono::steady_clock::now() + 30s;
  while (!flag.load()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

TEST(SessionGuardTest, UseReachesTheSessionUntilClosedAndNeverAfter) {
  int session = 0;
  SessionGuard guard(&session);
  void* seen = nullptr;
  EXPECT_TRUE(guard.Use([&](void* s) { seen = s; }));
  EXPECT_EQ(seen, &session);
  guard.Close([] {}, 10s, [] { ADD_FAILURE() << "gave up with nothing in flight"; });
  bool called = false;
  EXPECT_FALSE(guard.Use([&](void*) { called = true; }));
  EXPECT_FALSE(called);
}

// A page invalidation waits in the kernel for a READ queued after the loop stopped: Close
// must keep answering requests until it returns, not just wait for it.
TEST(SessionGuardTest, CloseServesRequestsUntilAnInvalidationInFlightReturns) {
  int session = 0;
  SessionGuard guard(&session);
  std::atomic<bool> in_kernel{false}, read_answered{false}, returned{false};
  std::thread invalidation([&] {
    guard.Use([&](void*) {
      in_kernel = true;
      EXPECT_TRUE(WaitFor(read_answered)) << "nobody answered the READ it waits for";
    });
    returned = true;
  });
  ASSERT_TRUE(WaitFor(in_kernel));
  bool gave_up = false;
  guard.Close([&] { read_answered = true; std::this_thread::sleep_for(1ms); }, 20s,
              [&] { gave_up = true; });
  EXPECT_TRUE(returned) << "Close returned while an invalidation was still running";
  EXPECT_FALSE(gave_up);
  invalidation.join();
}

// Requests that cannot be answered either: after its patience, Close aborts the connection
// (which fails the READs and unlocks their pages), and still waits for the invalidation.
TEST(SessionGuardTest, CloseGivesUpOnceAfterItsPatienceAndStillWaits) {
  int session = 0;
  SessionGuard guard(&session);
  std::atomic<bool> in_kernel{false}, aborted{false}, returned{false};
  std::atomic<int> aborts{0};
  std::thread invalidation([&] {
    guard.Use([&](void*) {
      in_kernel = true;
      EXPECT_TRUE(WaitFor(aborted));
      std::this_thread::sleep_for(50ms);  // The kernel takes a moment to end the requests.
    });
    returned = true;
  });
  ASSERT_TRUE(WaitFor(in_kernel));
  const auto start = std::chrono::steady_clock::now();
  guard.Close([] { std::this_thread::sleep_for(1ms); }, 100ms, [&] {
    ++aborts;
    aborted = true;
  });
  EXPECT_GE(std::chrono::steady_clock::now() - start, 100ms);
  EXPECT_TRUE(returned);
  EXPECT_EQ(aborts.load(), 1);
  invalidation.join();
}

}  // namespace
}  // namespace bucketfs::fs
