// PageInvalidations: never blocks the poster, never drops, runs each waiting inode once.
#include "fuse/page_invalidations.h"

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <vector>

namespace bucketfs::fs {
namespace {

using namespace std::chrono_literals;

// An invalidate callback that the test holds inside the kernel (blocked) at will.
struct Recorder {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<uint64_t> done;
  bool held = false;   // The next call waits until released.
  bool inside = false;  // A call is waiting.

  void Invalidate(uint64_t ino) {
    std::unique_lock lock(mu);
    inside = true;
    cv.notify_all();
    cv.wait(lock, [&] { return !held; });
    inside = false;
    done.push_back(ino);
    cv.notify_all();
  }
  void Hold() {
    std::lock_guard lock(mu);
    held = true;
  }
  void Release() {
    std::lock_guard lock(mu);
    held = false;
    cv.notify_all();
  }
  bool WaitInside() {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, 5s, [&] { return inside; });
  }
  // Posts `ino` to `q` and returns once its invalidation is held inside the callback.
  bool PostAndHold(PageInvalidations& q, uint64_t ino) {
    Hold();
    q.Post(ino);
    return WaitInside();
  }
  bool WaitDone(size_t n) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, 5s, [&] { return done.size() >= n; });
  }
};

TEST(PageInvalidationsTest, RunsWhatIsPostedInOrder) {
  Recorder r;
  PageInvalidations q([&](uint64_t ino) { r.Invalidate(ino); }, 1);
  q.Post(3);
  ASSERT_TRUE(r.WaitDone(1));
  q.Post(1);
  ASSERT_TRUE(r.WaitDone(2));
  std::lock_guard lock(r.mu);
  EXPECT_EQ(r.done, (std::vector<uint64_t>{3, 1}));
}

// While one invalidation waits in the kernel (behind a READ nobody answered yet), posting
// returns at once however many are posted, and an inode waiting is queued once: ten
// thousand posts of five inodes wait as five.
TEST(PageInvalidationsTest, PostingNeverBlocksAndAnInodeWaitsOnce) {
  Recorder r;
  PageInvalidations q([&](uint64_t ino) { r.Invalidate(ino); }, 1);
  ASSERT_TRUE(r.PostAndHold(q, 100));
  auto posted = std::async(std::launch::async, [&] {
    for (int i = 0; i < 10000; ++i) q.Post(static_cast<uint64_t>(i % 5));
  });
  ASSERT_EQ(posted.wait_for(5s), std::future_status::ready) << "Post blocked";
  EXPECT_EQ(q.waiting(), 5u);
  r.Release();
  ASSERT_TRUE(r.WaitDone(6));
  std::lock_guard lock(r.mu);
  EXPECT_EQ(r.done, (std::vector<uint64_t>{100, 0, 1, 2, 3, 4}));
}

// Posted again while its invalidation runs (the file changed again meanwhile): it runs
// again, since the pages cached since may be of the older content.
TEST(PageInvalidationsTest, AnInodePostedWhileItRunsRunsAgain) {
  Recorder r;
  PageInvalidations q([&](uint64_t ino) { r.Invalidate(ino); }, 1);
  ASSERT_TRUE(r.PostAndHold(q, 7));
  q.Post(7);
  EXPECT_EQ(q.waiting(), 1u);
  r.Release();
  ASSERT_TRUE(r.WaitDone(2));
  std::lock_guard lock(r.mu);
  EXPECT_EQ(r.done, (std::vector<uint64_t>{7, 7}));
}

// The destructor waits for the invalidation in progress and runs none still waiting.
TEST(PageInvalidationsTest, DestructionWaitsForTheRunningOneAndDropsTheRest) {
  Recorder r;
  std::promise<void> stopping;
  auto q = std::make_unique<PageInvalidations>([&](uint64_t ino) { r.Invalidate(ino); }, 1,
                                               [&] { stopping.set_value(); });
  ASSERT_TRUE(r.PostAndHold(*q, 1));
  q->Post(2);
  auto destroyed = std::async(std::launch::async, [&] { q.reset(); });
  ASSERT_EQ(stopping.get_future().wait_for(5s), std::future_status::ready);
  EXPECT_EQ(destroyed.wait_for(100ms), std::future_status::timeout)
      << "destroyed while an invalidation was still running";
  r.Release();
  ASSERT_EQ(destroyed.wait_for(5s), std::future_status::ready);
  std::lock_guard lock(r.mu);
  EXPECT_EQ(r.done, (std::vector<uint64_t>{1}));
}

// With more than one thread, an invalidation stuck in the kernel (behind a READ not
// answered yet) holds up no other inode's.
TEST(PageInvalidationsTest, OneStuckInvalidationHoldsUpNoOther) {
  Recorder r;
  std::mutex mu;
  std::condition_variable cv;
  std::vector<uint64_t> others;
  PageInvalidations q(
      [&](uint64_t ino) {
        if (ino == 1) return r.Invalidate(ino);
        std::lock_guard lock(mu);
        others.push_back(ino);
        cv.notify_all();
      },
      2);
  ASSERT_TRUE(r.PostAndHold(q, 1));
  q.Post(2);
  q.Post(3);
  {
    std::unique_lock lock(mu);
    EXPECT_TRUE(cv.wait_for(lock, 5s, [&] { return others.size() == 2; }))
        << "inodes 2 and 3 waited behind inode 1";
  }
  r.Release();
}

}  // namespace
}  // namespace bucketfs::fs
