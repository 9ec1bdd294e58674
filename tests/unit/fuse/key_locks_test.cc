#include "fuse/key_locks.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>
#include <vector>

namespace bucketfs::fs {
namespace {

using namespace std::chrono_literals;

// Whether `f` finishes (generous: a loaded machine or TSan may be slow to run it), or stays
// blocked for a while (it can only pass wrongly: a thread not yet scheduled looks blocked).
bool FinishesSoon(std::future<void>& f) { return f.wait_for(10s) == std::future_status::ready; }
bool StaysBlocked(std::future<void>& f) { return f.wait_for(100ms) == std::future_status::timeout; }

TEST(KeyLocksTest, SharersOfOneKeyAndHoldersOfOtherKeysNeverWait) {
  KeyLocks locks;
  KeyLocks::Hold a = locks.Share("k");
  KeyLocks::Hold b = locks.Share("k");  // Two write opens of one file.
  auto other = std::async(std::launch::async, [&] { KeyLocks::Hold c = locks.Exclusive({"x", "y"}); });
  EXPECT_TRUE(FinishesSoon(other)) << "a rename of other keys waited for opens of k";
  other.get();
}

TEST(KeyLocksTest, AnExclusiveWaitsForTheSharersThenHoldsNewOnesBack) {
  KeyLocks locks;
  KeyLocks::Hold open = locks.Share("a");
  std::atomic<bool> renamed{false};
  auto rename = std::async(std::launch::async, [&] {
    KeyLocks::Hold moving = locks.Exclusive({"a", "b"});
    renamed = true;
    std::this_thread::sleep_for(50ms);
  });
  EXPECT_TRUE(StaysBlocked(rename)) << "the rename ran while a write open of its key ran";
  // The rename waits for both keys (b's entry exists only for its waiter) before the open.
  for (int i = 0; i < 1000 && locks.tracked() < 2; ++i) std::this_thread::sleep_for(10ms);
  ASSERT_EQ(locks.tracked(), 2u);
  // A new open of either key queues behind the waiting rename, not ahead of it.
  std::atomic<bool> opened_during_rename{false};
  auto later_open = std::async(std::launch::async, [&] {
    KeyLocks::Hold h = locks.Share("b");
    opened_during_rename = !renamed.load();
  });
  EXPECT_TRUE(StaysBlocked(later_open));
  open.Release();
  EXPECT_TRUE(FinishesSoon(rename));
  EXPECT_TRUE(FinishesSoon(later_open));
  rename.get();
  later_open.get();
  EXPECT_TRUE(renamed.load());
  EXPECT_FALSE(opened_during_rename.load()) << "the open of b got ahead of the waiting rename";
  EXPECT_EQ(locks.tracked(), 0u) << "released keys stay in the map";
}

TEST(KeyLocksTest, ExclusivesOfCrossedKeysTakeThemAllAtOnceAndNeverDeadlock) {
  KeyLocks locks;
  std::vector<std::thread> threads;
  std::atomic<int> inside{0};
  std::atomic<bool> overlapped{false};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 500; ++i) {
        // mv a b and mv b a, mv a a (the same key twice), and an unlink of a.
        std::vector<std::string> keys = t == 0 ? std::vector<std::string>{"a", "b"}
                                        : t == 1 ? std::vector<std::string>{"b", "a"}
                                        : t == 2 ? std::vector<std::string>{"a", "a"}
                                                 : std::vector<std::string>{"a"};
        KeyLocks::Hold h = locks.Exclusive(keys);
        if (inside.fetch_add(1) != 0) overlapped = true;
        inside.fetch_sub(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_FALSE(overlapped.load()) << "two exclusive holders of a at once";
  EXPECT_EQ(locks.tracked(), 0u);
}

TEST(KeyLocksTest, AMovedHoldReleasesOnce) {
  KeyLocks locks;
  KeyLocks::Hold first = locks.Share("k");
  KeyLocks::Hold second = std::move(first);
  first.Release();  // Moved from: nothing to release.
  auto rename = std::async(std::launch::async, [&] { KeyLocks::Hold h = locks.Exclusive({"k"}); });
  EXPECT_TRUE(StaysBlocked(rename)) << "the moved hold no longer held k";
  second = KeyLocks::Hold();
  EXPECT_TRUE(FinishesSoon(rename));
  rename.get();
  EXPECT_EQ(locks.tracked(), 0u);
}

}  // namespace
}  // namespace bucketfs::fs
