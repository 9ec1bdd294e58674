#include "cache/memory_budget.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "tests/support/eventually.h"

namespace bucketfs::cache {
namespace {

using namespace std::chrono_literals;

constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kGiB = 1ull << 30;

MonoTime Soon(Duration d) { return RealClock().Now() + d; }

// Polls `pred` until it holds or `timeout` passes; for waiting on another thread's progress.
using testing::Eventually;

TEST(MemoryBudgetTest, ReserveThatFitsIsGrantedAtOnceAndCounted) {
  MemoryBudget budget(1000);
  Result<Reservation> r = budget.Reserve(300, Soon(10s));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->bytes(), 300u);
  MemoryBudgetStats s = budget.Stats();
  EXPECT_EQ(s.capacity, 1000u);
  EXPECT_EQ(s.used, 300u);
  EXPECT_EQ(s.peak, 300u);
  EXPECT_EQ(s.waiters, 0u);
}

TEST(MemoryBudgetTest, ReservationDestructorGivesTheBytesBack) {
  MemoryBudget budget(1000);
  {
    Result<Reservation> r = budget.TryReserve(700);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(budget.used(), 700u);
  }
  EXPECT_EQ(budget.used(), 0u);
  EXPECT_EQ(budget.peak(), 700u);
}

TEST(MemoryBudgetTest, ShrinkGivesPartBackEarlyAndClampsToWhatIsHeld) {
  MemoryBudget budget(1000);
  Result<Reservation> r = budget.TryReserve(600);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->Shrink(200), 200u);
  EXPECT_EQ(r->bytes(), 400u);
  EXPECT_EQ(budget.used(), 400u);
  EXPECT_EQ(r->Shrink(10'000), 400u);  // Only what is held.
  EXPECT_TRUE(r->empty());
  EXPECT_EQ(budget.used(), 0u);
  EXPECT_EQ(r->Shrink(1), 0u);  // Nothing left: a no-op.
}

TEST(MemoryBudgetTest, MoveTransfersTheBytesAndAssignmentReleasesTheOld) {
  MemoryBudget budget(1000);
  Result<Reservation> a = budget.TryReserve(100);
  Result<Reservation> b = budget.TryReserve(200);
  ASSERT_TRUE(a.ok() && b.ok());
  Reservation moved(std::move(*a));
  EXPECT_EQ(moved.bytes(), 100u);
  EXPECT_TRUE(a->empty());  // NOLINT(bugprone-use-after-move): moved-from is empty.
  EXPECT_EQ(budget.used(), 300u);
  moved = std::move(*b);  // Gives the 100 back, takes over the 200.
  EXPECT_EQ(moved.bytes(), 200u);
  EXPECT_EQ(budget.used(), 200u);
  moved.Release();
  EXPECT_TRUE(moved.empty());
  EXPECT_EQ(budget.used(), 0u);
}

TEST(MemoryBudgetTest, ZeroBytesIsAnEmptyReservationEvenWhenFull) {
  MemoryBudget budget(10);
  Result<Reservation> all = budget.TryReserve(10);
  ASSERT_TRUE(all.ok());
  Result<Reservation> none = budget.Reserve(0, RealClock().Now());
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  EXPECT_EQ(budget.used(), 10u);
}

TEST(MemoryBudgetTest, OversizeRequestIsRejectedAtOnceAndNeverWaits) {
  MemoryBudget budget(1000);
  MonoTime start = RealClock().Now();
  Result<Reservation> r = budget.Reserve(1001, Soon(1h));
  EXPECT_LT(RealClock().Now() - start, Duration(5s));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_FALSE(r.status().retryable());
  EXPECT_NE(r.status().message().find("can never fit"), std::string::npos) << r.status().message();
  Result<Reservation> t = budget.TryReserve(1001);
  EXPECT_EQ(t.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(budget.Stats().waiters, 0u);
  EXPECT_EQ(budget.used(), 0u);
}

TEST(MemoryBudgetTest, TryReserveIsBusyWhenTheBytesDoNotFit) {
  MemoryBudget budget(1000);
  Result<Reservation> held = budget.TryReserve(900);
  ASSERT_TRUE(held.ok());
  Result<Reservation> r = budget.TryReserve(200);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kBusy);
  EXPECT_TRUE(r.status().retryable());
  EXPECT_NE(r.status().message().find("not available now"), std::string::npos);
  EXPECT_EQ(budget.used(), 900u);
  EXPECT_TRUE(budget.TryReserve(100).ok());  // Exactly what is left fits.
}

TEST(MemoryBudgetTest, ReserveTimesOutAtTheDeadlineWithAClearMessage) {
  MemoryBudget budget(1000);
  Result<Reservation> held = budget.TryReserve(900);
  ASSERT_TRUE(held.ok());
  MonoTime start = RealClock().Now();
  Result<Reservation> r = budget.Reserve(200, start + 50ms);
  EXPECT_GE(RealClock().Now() - start, Duration(50ms));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kTimeout);
  EXPECT_TRUE(r.status().retryable());
  EXPECT_NE(r.status().message().find("before the deadline"), std::string::npos)
      << r.status().message();
  EXPECT_EQ(budget.waiters(), 0u);
  EXPECT_EQ(budget.used(), 900u);
}

TEST(MemoryBudgetTest, DeadlineAlreadyPassedOnTheInjectedClockFailsWithoutBlocking) {
  FakeClock clock;
  MemoryBudget budget(100, clock);
  Result<Reservation> held = budget.TryReserve(100);
  ASSERT_TRUE(held.ok());
  MonoTime real_start = RealClock().Now();
  Result<Reservation> r = budget.Reserve(1, clock.Now());
  EXPECT_LT(RealClock().Now() - real_start, Duration(5s));
  EXPECT_EQ(r.status().code(), ErrorCode::kTimeout);
  held->Release();
  // A past deadline does not matter when the bytes fit right away.
  Result<Reservation> fits = budget.Reserve(50, clock.Now() - 1s);
  ASSERT_TRUE(fits.ok());
  EXPECT_EQ(fits->bytes(), 50u);
}

TEST(MemoryBudgetTest, ReservationDestructorWakesAWaiter) {
  MemoryBudget budget(100);
  std::optional<Result<Reservation>> held(budget.TryReserve(100));
  ASSERT_TRUE(held->ok());
  std::optional<Result<Reservation>> got;
  std::thread waiter([&] { got.emplace(budget.Reserve(60, Soon(30s))); });
  ASSERT_TRUE(Eventually([&] { return budget.waiters() == 1; }));
  MonoTime released = RealClock().Now();
  held.reset();  // Destroys the Reservation.
  waiter.join();
  EXPECT_LT(RealClock().Now() - released, Duration(10s));
  ASSERT_TRUE(got.has_value());
  ASSERT_TRUE(got->ok()) << got->status().ToString();
  EXPECT_EQ((*got)->bytes(), 60u);
  EXPECT_EQ(budget.used(), 60u);
  EXPECT_EQ(budget.waiters(), 0u);
}

TEST(MemoryBudgetTest, WaitersAreServedFirstInFirstOutAndNobodyBarges) {
  MemoryBudget budget(100);
  Result<Reservation> held = budget.TryReserve(100);
  ASSERT_TRUE(held.ok());

  std::optional<Result<Reservation>> big, small;
  std::thread big_thread([&] { big.emplace(budget.Reserve(80, Soon(30s))); });
  ASSERT_TRUE(Eventually([&] { return budget.waiters() == 1; }));
  std::thread small_thread([&] { small.emplace(budget.Reserve(10, Soon(30s))); });
  ASSERT_TRUE(Eventually([&] { return budget.waiters() == 2; }));

  // 30 free: the small waiter would fit, but the big one is ahead of it. Grants happen inside
  // Shrink(), so the state right after it is final.
  EXPECT_EQ(held->Shrink(30), 30u);
  EXPECT_EQ(budget.used(), 70u);
  EXPECT_EQ(budget.waiters(), 2u);
  Result<Reservation> barge = budget.TryReserve(10);
  EXPECT_EQ(barge.status().code(), ErrorCode::kBusy) << "TryReserve jumped the queue";

  // 80 free: the big waiter, first in line, gets them; the small one still waits.
  EXPECT_EQ(held->Shrink(50), 50u);
  big_thread.join();
  ASSERT_TRUE(big->ok()) << big->status().ToString();
  EXPECT_EQ(budget.used(), 100u);
  EXPECT_EQ(budget.waiters(), 1u);

  held->Release();
  small_thread.join();
  ASSERT_TRUE(small->ok()) << small->status().ToString();
  EXPECT_EQ(budget.used(), 90u);
  EXPECT_EQ(budget.waiters(), 0u);
}

TEST(MemoryBudgetTest, BigRequestIsNotStarvedByAStreamOfSmallOnes) {
  MemoryBudget budget(100);
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> small_grants{0};
  std::vector<std::thread> smalls;
  smalls.reserve(4);
  for (int i = 0; i < 4; ++i) {
    smalls.emplace_back([&] {
      while (!stop.load()) {
        Result<Reservation> r = budget.Reserve(30, Soon(30s));
        if (r.ok()) small_grants.fetch_add(1);
        std::this_thread::sleep_for(1ms);  // Hold it a while, then ask again at once.
      }
    });
  }
  // Three of the four small holders fit at a time and a fourth is always asking, so the
  // budget never drains: only the queue's order lets the big request in.
  ASSERT_TRUE(Eventually([&] { return small_grants.load() > 20; }));
  Result<Reservation> big = budget.Reserve(100, Soon(20s));
  stop.store(true);
  EXPECT_TRUE(big.ok()) << big.status().ToString();
  big = Status(ErrorCode::kCancelled, "done");  // Release before the smalls finish.
  for (std::thread& t : smalls) t.join();
  EXPECT_EQ(budget.used(), 0u);
  EXPECT_LE(budget.peak(), 100u);
}

TEST(MemoryBudgetTest, TimedOutHeadWaiterLetsTheNextOneIn) {
  MemoryBudget budget(100);
  Result<Reservation> held = budget.TryReserve(50);
  ASSERT_TRUE(held.ok());
  std::optional<Result<Reservation>> big, small;
  std::thread big_thread([&] { big.emplace(budget.Reserve(80, Soon(200ms))); });
  ASSERT_TRUE(Eventually([&] { return budget.waiters() == 1; }));
  std::thread small_thread([&] { small.emplace(budget.Reserve(40, Soon(30s))); });
  big_thread.join();
  small_thread.join();
  ASSERT_TRUE(big.has_value() && small.has_value());
  EXPECT_EQ(big->status().code(), ErrorCode::kTimeout);
  ASSERT_TRUE(small->ok()) << small->status().ToString();
  EXPECT_EQ(budget.used(), 90u);
}

TEST(MemoryBudgetTest, ConcurrentUseNeverExceedsCapacity) {
  constexpr uint64_t kCapacity = 1000;
  MemoryBudget budget(kCapacity);
  std::atomic<uint64_t> granted{0};
  std::vector<std::thread> threads;
  threads.reserve(4);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(static_cast<unsigned>(t) + 1);
      std::uniform_int_distribution<uint64_t> size(1, 600);
      for (int i = 0; i < 500; ++i) {
        Result<Reservation> r =
            (i % 3 == 0) ? budget.TryReserve(size(rng)) : budget.Reserve(size(rng), Soon(10s));
        if (!r.ok()) continue;
        granted.fetch_add(1);
        EXPECT_LE(budget.used(), kCapacity);
        if (i % 2 == 0) (void)r->Shrink(r->bytes() / 2);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_GT(granted.load(), 0u);
  EXPECT_LE(budget.peak(), kCapacity);
  EXPECT_EQ(budget.used(), 0u);
  EXPECT_EQ(budget.waiters(), 0u);
}

TEST(FormatBytesTest, UsesBinaryUnits) {
  EXPECT_EQ(FormatBytes(0), "0 B");
  EXPECT_EQ(FormatBytes(1023), "1023 B");
  EXPECT_EQ(FormatBytes(1536), "1.5 KiB");
  EXPECT_EQ(FormatBytes(64 * kMiB), "64.0 MiB");
  EXPECT_EQ(FormatBytes(4 * kGiB), "4.0 GiB");
}

// --- The default budget, from cgroup files in a temporary directory. ---

class DefaultBudgetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::temp_directory_path() / "bucketfs-budget-XXXXXX");
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    // One directory is both roots (the file names differ); no /proc/self/cgroup: the roots
    // are the process's own cgroups, as in a pod with its own cgroup namespace.
    sources_.proc_self_cgroup = dir_ / "self-cgroup";
    sources_.cgroup_v2_root = dir_;
    sources_.cgroup_v1_memory_root = dir_;
    sources_.physical_bytes = 16 * kGiB;
  }
  std::string V2Max() const { return dir_ / "memory.max"; }
  std::string V1Limit() const { return dir_ / "memory.limit_in_bytes"; }
  // A cgroup directory under the roots.
  std::filesystem::path Cgroup(const std::string& path) {
    auto d = dir_ / path;
    std::filesystem::create_directories(d);
    return d;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  void Write(const std::string& path, const std::string& text) {
    std::ofstream out(path);
    out << text;
    ASSERT_TRUE(out.good());
  }

  std::filesystem::path dir_;
  MemoryLimitSources sources_;
};

TEST_F(DefaultBudgetTest, MissingCgroupFilesMeanPhysicalMemory) {
  EXPECT_EQ(DetectMemoryLimit(sources_), 16 * kGiB);
  EXPECT_EQ(DefaultBudgetBytes(sources_), 4 * kGiB);
  sources_.physical_bytes = 2 * kGiB;
  EXPECT_EQ(DefaultBudgetBytes(sources_), 512 * kMiB);
}

TEST_F(DefaultBudgetTest, CgroupV2NumberIsTheLimit) {
  Write(V2Max(), "2147483648\n");
  EXPECT_EQ(DetectMemoryLimit(sources_), 2 * kGiB);
  EXPECT_EQ(DefaultBudgetBytes(sources_), 512 * kMiB);
}

TEST_F(DefaultBudgetTest, CgroupV2MaxIsUnlimitedAndFallsBackToV1) {
  Write(V2Max(), "max\n");
  EXPECT_EQ(DetectMemoryLimit(sources_), 16 * kGiB);
  Write(V1Limit(), "1073741824\n");
  EXPECT_EQ(DetectMemoryLimit(sources_), 1 * kGiB);
  EXPECT_EQ(DefaultBudgetBytes(sources_), 256 * kMiB);
}

TEST_F(DefaultBudgetTest, CgroupV1NoLimitSentinelMeansPhysicalMemory) {
  Write(V1Limit(), "9223372036854771712\n");
  sources_.physical_bytes = 8 * kGiB;
  EXPECT_EQ(DetectMemoryLimit(sources_), 8 * kGiB);
  EXPECT_EQ(DefaultBudgetBytes(sources_), 2 * kGiB);
}

TEST_F(DefaultBudgetTest, TheTightestLimitWins) {
  Write(V2Max(), "3221225472\n");
  Write(V1Limit(), "2147483648\n");
  EXPECT_EQ(DetectMemoryLimit(sources_), 2 * kGiB);
  sources_.physical_bytes = 1 * kGiB;  // A cgroup limit above the RAM is no limit.
  EXPECT_EQ(DetectMemoryLimit(sources_), 1 * kGiB);
}

TEST_F(DefaultBudgetTest, UnparsableFilesAreIgnored) {
  for (const char* junk : {"", "lots\n", "-5\n", "12abc\n", "99999999999999999999999\n", "0\n"}) {
    Write(V2Max(), junk);
    Write(V1Limit(), junk);
    EXPECT_EQ(DetectMemoryLimit(sources_), 16 * kGiB) << "contents: '" << junk << "'";
  }
}

TEST_F(DefaultBudgetTest, AQuarterClampedBetween64MiBAnd4GiB) {
  Write(V2Max(), std::to_string(128 * kMiB));
  EXPECT_EQ(DefaultBudgetBytes(sources_), kMinDefaultBudget);  // A quarter would be 32 MiB.
  Write(V2Max(), std::to_string(1 * kGiB));
  EXPECT_EQ(DefaultBudgetBytes(sources_), 256 * kMiB);
  Write(V2Max(), "max");
  sources_.physical_bytes = 512 * kGiB;
  EXPECT_EQ(DefaultBudgetBytes(sources_), kMaxDefaultBudget);
  EXPECT_EQ(kMinDefaultBudget, 64 * kMiB);
  EXPECT_EQ(kMaxDefaultBudget, 4 * kGiB);
}

TEST(DefaultBudgetOnThisMachineTest, IsWithinTheClampRange) {
  EXPECT_GT(DetectMemoryLimit(), 0u);
  uint64_t budget = DefaultBudgetBytes();
  EXPECT_GE(budget, kMinDefaultBudget);
  EXPECT_LE(budget, kMaxDefaultBudget);
}

}  // namespace
// A systemd unit on a cgroup v2 host (no cgroup namespace): its MemoryMax= is in its leaf
// only, named by /proc/self/cgroup; the root has no memory.max at all.
TEST_F(DefaultBudgetTest, TheLimitOfTheProcesssOwnCgroupCounts) {
  Write(sources_.proc_self_cgroup, "0::/system.slice/bucketfs@data.service\n");
  Write(Cgroup("system.slice/bucketfs@data.service") / "memory.max", "1073741824\n");
  Write(Cgroup("system.slice") / "memory.max", "max\n");
  EXPECT_EQ(DetectMemoryLimit(sources_), 1 * kGiB);
  EXPECT_EQ(DefaultBudgetBytes(sources_), 256 * kMiB);
}

// An ancestor's limit bounds every cgroup under it: the tightest on the path wins.
TEST_F(DefaultBudgetTest, AnAncestorsTighterLimitCounts) {
  Write(sources_.proc_self_cgroup, "0::/kubepods/pod-1/ctr/\n");
  Write(Cgroup("kubepods/pod-1/ctr") / "memory.max", "max\n");
  Write(Cgroup("kubepods/pod-1") / "memory.max", "536870912\n");
  Write(Cgroup("kubepods") / "memory.max", "8589934592\n");
  EXPECT_EQ(DetectMemoryLimit(sources_), 512 * kMiB);
}

// cgroup v1: the memory controller's line names the cgroup, among the other controllers.
TEST_F(DefaultBudgetTest, CgroupV1FollowsTheMemoryControllersPath) {
  Write(sources_.proc_self_cgroup,
        "12:cpu,cpuacct:/kubepods/other\n"
        "5:memsw,memory:/kubepods/pod-2\n"
        "1:name=systemd:/kubepods/pod-2\n");
  Write(Cgroup("kubepods/pod-2") / "memory.limit_in_bytes", "2147483648\n");
  Write(Cgroup("kubepods/other") / "memory.limit_in_bytes", "1073741824\n");
  EXPECT_EQ(DetectMemoryLimit(sources_), 2 * kGiB);
}

}  // namespace bucketfs::cache
