#include "fuse/prefix_gate.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>

namespace bucketfs::fs {
namespace {

using namespace std::chrono_literals;

// Whether `f` finishes within a short time (it is blocked otherwise).
bool FinishesSoon(std::future<void>& f) { return f.wait_for(200ms) == std::future_status::ready; }

TEST(PrefixGateTest, EnteringUnrelatedPathsNeverWaits) {
  PrefixGate gate;
  auto [a, waited_a] = gate.Enter({"d/x", "e"}, gate.epoch());
  auto [b, waited_b] = gate.Enter({"d/x"}, gate.epoch());  // The same path twice: two holders.
  EXPECT_FALSE(waited_a);
  EXPECT_FALSE(waited_b);
  PrefixGate::Hold none;
  PrefixGate::Hold f = gate.Exclusive({"f/"}, none);  // Nothing entered under f/.
  auto [c, waited_c] = gate.Enter({"ff", "d/y"}, gate.epoch());
  EXPECT_FALSE(waited_c) << "ff is not under f/";
}

TEST(PrefixGateTest, PathsComputedBeforeARenameBeganAreLookedAtAgain) {
  // A thread reads the epoch and computes "d/new" from its inodes, then is descheduled;
  // `mv d e` runs whole meanwhile. Its path is stale though nothing covers it any more.
  PrefixGate gate;
  const uint64_t seen = gate.epoch();
  {
    PrefixGate::Hold none;
    PrefixGate::Hold moving = gate.Exclusive({"d/", "e/"}, none);
  }
  auto [stale, look_again] = gate.Enter({"d/new"}, seen);
  EXPECT_TRUE(look_again);
  auto [fresh, again] = gate.Enter({"e/new"}, gate.epoch());
  EXPECT_FALSE(again);
}

TEST(PrefixGateTest, AnExclusivePrefixHoldsBackEntriesUnderItAndTheDirectoryItself) {
  PrefixGate gate;
  PrefixGate::Hold none;
  PrefixGate::Hold moving = gate.Exclusive({"d/"}, none);
  for (const char* path : {"d/new", "d/sub/deep", "d"}) {
    std::atomic<bool> waited{false};
    auto entered = std::async(std::launch::async, [&] { waited = gate.Enter({"z", path}, gate.epoch()).second; });
    EXPECT_FALSE(FinishesSoon(entered)) << path << " entered during the rename";
    moving.Release();
    EXPECT_TRUE(FinishesSoon(entered)) << path;
    entered.get();
    EXPECT_TRUE(waited.load()) << path;
    moving = gate.Exclusive({"d/"}, none);
  }
}

TEST(PrefixGateTest, AnExclusiveWaitsForEntriesUnderItButNotForItsOwn) {
  PrefixGate gate;
  auto [own, unused_own] = gate.Enter({"d", "e"}, gate.epoch());  // The rename's own names.
  auto [other, unused_other] = gate.Enter({"d/file"}, gate.epoch());
  auto exclusive = std::async(std::launch::async, [&] {
    PrefixGate::Hold h = gate.Exclusive({"d/", "e/"}, own);
  });
  EXPECT_FALSE(FinishesSoon(exclusive)) << "d/file was still being created";
  // New entries under d/ wait from the moment the exclusive is asked for.
  auto late = std::async(std::launch::async, [&] { (void)gate.Enter({"d/late"}, gate.epoch()); });
  EXPECT_FALSE(FinishesSoon(late));
  other.Release();
  EXPECT_TRUE(FinishesSoon(exclusive));
  exclusive.get();
  EXPECT_TRUE(FinishesSoon(late));
  late.get();
}

}  // namespace
}  // namespace bucketfs::fs
