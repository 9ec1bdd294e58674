#include "common/task_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <latch>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "tests/support/eventually.h"

namespace bucketfs {
namespace {

using namespace std::chrono_literals;

using testing::Eventually;

TEST(TaskPoolTest, EveryTaskRuns) {
  std::atomic<int> ran{0};
  {
    TaskPool pool("test-pool", 4, 16);
    EXPECT_EQ(pool.threads(), 4u);
    for (int i = 0; i < 1000; ++i) pool.Submit([&ran] { ran.fetch_add(1); });
    EXPECT_TRUE(Eventually([&] { return ran.load() == 1000; }));
  }
  EXPECT_EQ(ran.load(), 1000);
}

TEST(TaskPoolTest, TasksRunOnThePoolThreads) {
  std::mutex mu;
  std::vector<std::thread::id> ids;
  {
    TaskPool pool("test-pool", 2, 8);
    for (int i = 0; i < 50; ++i) {
      pool.Submit([&] {
        std::lock_guard lock(mu);
        ids.push_back(std::this_thread::get_id());
      });
    }
  }
  ASSERT_EQ(ids.size(), 50u);
  for (const auto& id : ids) EXPECT_NE(id, std::this_thread::get_id());
}

TEST(TaskPoolTest, ShutdownRunsTasksThatRunningTasksSubmitAndLeavesThePoolReachable) {
  std::unique_ptr<TaskPool> pool = std::make_unique<TaskPool>("test-pool", 1, 4);
  std::atomic<bool> follow_up_ran{false};
  std::latch started(1);
  // Like a commit that finds its file changed and starts the next commit through its
  // owner's pointer to the pool, while the owner shuts the pool down.
  pool->Submit([&] {
    started.count_down();
    std::this_thread::sleep_for(50ms);
    pool->Submit([&] { follow_up_ran = true; });
  });
  started.wait();
  pool->Shutdown();
  EXPECT_TRUE(follow_up_ran);
  pool->Shutdown();  // Idempotent.
  pool.reset();
}

TEST(TaskPoolTest, SingleThreadRunsTasksInSubmissionOrder) {
  std::vector<int> order;  // Only the one pool thread touches it until the pool is gone.
  {
    TaskPool pool("test-pool", 1, 4);
    for (int i = 0; i < 100; ++i) pool.Submit([&order, i] { order.push_back(i); });
  }
  ASSERT_EQ(order.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(order[static_cast<size_t>(i)], i);
}

TEST(TaskPoolTest, TrySubmitFirstRunsBeforeEveryWaitingTask) {
  std::vector<int> order;  // Only the one pool thread touches it until the pool is gone.
  {
    TaskPool pool("test-pool", 1, 8);
    std::latch started(1), release(1);
    pool.Submit([&] {
      started.count_down();
      release.wait();
    });
    started.wait();  // The thread is busy: what follows waits in the queue.
    for (int i = 1; i <= 3; ++i) pool.Submit([&order, i] { order.push_back(i); });
    ASSERT_TRUE(pool.TrySubmitFirst([&order] { order.push_back(0); }));
    EXPECT_EQ(pool.queued(), 4u);
    release.count_down();
  }
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3}));
}

TEST(TaskPoolTest, TrySubmitRefusesWhenTheQueueIsFull) {
  std::latch release(1);
  std::atomic<int> started{0};
  std::atomic<int> ran{0};
  {
    TaskPool pool("test-pool", 2, 3);
    // Occupy both workers.
    for (int i = 0; i < 2; ++i) {
      ASSERT_TRUE(pool.TrySubmit([&] {
        started.fetch_add(1);
        release.wait();
      }));
    }
    ASSERT_TRUE(Eventually([&] { return started.load() == 2 && pool.queued() == 0; }));

    // Three may wait; the fourth is refused, and refusing it does not queue it.
    for (int i = 0; i < 3; ++i) {
      EXPECT_TRUE(pool.TrySubmit([&ran] { ran.fetch_add(1); })) << i;
    }
    EXPECT_EQ(pool.queued(), 3u);
    EXPECT_FALSE(pool.TrySubmit([&ran] { ran.fetch_add(100); }));
    EXPECT_FALSE(pool.TrySubmit([&ran] { ran.fetch_add(100); }));
    EXPECT_EQ(pool.queued(), 3u);
    EXPECT_EQ(ran.load(), 0);

    release.count_down();
    EXPECT_TRUE(Eventually([&] { return ran.load() == 3 && pool.queued() == 0; }));
    // Room again once the queue drained.
    EXPECT_TRUE(pool.TrySubmit([&ran] { ran.fetch_add(1); }));
  }
  EXPECT_EQ(ran.load(), 4) << "refused tasks must never run";
}

TEST(TaskPoolTest, SubmitWaitsForRoomInsteadOfRefusing) {
  std::latch release(1);
  std::atomic<int> started{0};
  std::atomic<int> ran{0};
  std::atomic<bool> submitted{false};
  {
    TaskPool pool("test-pool", 1, 1);
    pool.Submit([&] {
      started.fetch_add(1);
      release.wait();
    });
    ASSERT_TRUE(Eventually([&] { return started.load() == 1 && pool.queued() == 0; }));
    pool.Submit([&ran] { ran.fetch_add(1); });  // Fills the queue.
    EXPECT_FALSE(pool.TrySubmit([&ran] { ran.fetch_add(100); }));

    std::thread submitter([&] {
      pool.Submit([&ran] { ran.fetch_add(1); });
      submitted.store(true);
    });
    std::this_thread::sleep_for(50ms);
    EXPECT_FALSE(submitted.load()) << "Submit must wait while the queue is full";
    release.count_down();
    submitter.join();
    EXPECT_TRUE(submitted.load());
  }
  EXPECT_EQ(ran.load(), 2);
}

TEST(TaskPoolTest, DestructorRunsEveryQueuedTask) {
  std::latch release(1);
  std::atomic<int> started{0};
  std::atomic<int> ran{0};
  std::thread releaser;
  {
    TaskPool pool("test-pool", 1, 16);
    pool.Submit([&] {
      started.fetch_add(1);
      release.wait();
    });
    ASSERT_TRUE(Eventually([&] { return started.load() == 1 && pool.queued() == 0; }));
    for (int i = 0; i < 10; ++i) {
      ASSERT_TRUE(pool.TrySubmit([&ran] {
        std::this_thread::sleep_for(2ms);
        ran.fetch_add(1);
      }));
    }
    EXPECT_EQ(pool.queued(), 10u);
    EXPECT_EQ(ran.load(), 0);
    // Unblock the worker only once the destructor is (very likely) already waiting.
    releaser = std::thread([&release] {
      std::this_thread::sleep_for(50ms);
      release.count_down();
    });
  }  // ~TaskPool: stops taking tasks, runs the 10 queued ones, joins.
  EXPECT_EQ(ran.load(), 10);
  releaser.join();
}

TEST(TaskPoolTest, ZeroThreadsStillGetsOneThreadAndTheFullQueue) {
  std::latch release(1);
  std::atomic<int> started{0};
  std::atomic<int> ran{0};
  {
    TaskPool pool("test-pool", 0, 2);
    EXPECT_EQ(pool.threads(), 1u);
    pool.Submit([&] {
      started.fetch_add(1);
      release.wait();
    });
    ASSERT_TRUE(Eventually([&] { return started.load() == 1 && pool.queued() == 0; }));
    EXPECT_TRUE(pool.TrySubmit([&ran] { ran.fetch_add(1); }));
    EXPECT_TRUE(pool.TrySubmit([&ran] { ran.fetch_add(1); }));
    EXPECT_FALSE(pool.TrySubmit([&ran] { ran.fetch_add(100); }));
    release.count_down();
  }
  EXPECT_EQ(ran.load(), 2);
}

}  // namespace
}  // namespace bucketfs
