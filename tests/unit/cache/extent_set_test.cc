#include "cache/extent_set.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace bucketfs::cache {
namespace {

using Extents = std::vector<Extent>;

std::string Show(const Extents& v) {
  std::string s;
  for (const Extent& e : v) s += "[" + std::to_string(e.begin) + "," + std::to_string(e.end) + ")";
  return s.empty() ? "{}" : s;
}

// The set's own invariant: sorted, non-empty ranges that neither overlap nor touch.
::testing::AssertionResult WellFormed(const ExtentSet& set) {
  const Extents v = set.Extents();
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i].begin >= v[i].end) {
      return ::testing::AssertionFailure() << "empty range in " << Show(v);
    }
    if (i > 0 && v[i - 1].end >= v[i].begin) {
      return ::testing::AssertionFailure() << "ranges touch or overlap in " << Show(v);
    }
  }
  if (set.empty() != v.empty()) return ::testing::AssertionFailure() << "empty() disagrees";
  return ::testing::AssertionSuccess();
}

// --- Add -----------------------------------------------------------------------------------

TEST(ExtentSetTest, StartsEmptyAndIgnoresEmptyRanges) {
  ExtentSet set;
  EXPECT_TRUE(set.empty());
  set.Add(5, 5);
  set.Add(9, 3);  // begin > end: nothing.
  EXPECT_TRUE(set.empty());
  EXPECT_EQ(set.Extents(), Extents{});
}

TEST(ExtentSetTest, DisjointRangesStaySeparateAndSorted) {
  ExtentSet set;
  set.Add(20, 30);
  set.Add(0, 5);
  set.Add(10, 12);
  EXPECT_EQ(set.Extents(), (Extents{{0, 5}, {10, 12}, {20, 30}}));
  EXPECT_TRUE(WellFormed(set));
}

TEST(ExtentSetTest, OverlappingRangesMerge) {
  ExtentSet set;
  set.Add(0, 10);
  set.Add(5, 15);  // Overlaps the end.
  EXPECT_EQ(set.Extents(), (Extents{{0, 15}}));
  set.Add(20, 30);
  set.Add(18, 22);  // Overlaps the start of [20, 30).
  EXPECT_EQ(set.Extents(), (Extents{{0, 15}, {18, 30}}));
  set.Add(12, 19);  // Bridges both.
  EXPECT_EQ(set.Extents(), (Extents{{0, 30}}));
  EXPECT_TRUE(WellFormed(set));
}

TEST(ExtentSetTest, AdjacentRangesMergeOnEitherSide) {
  ExtentSet set;
  set.Add(10, 20);
  set.Add(20, 25);  // Touches the end.
  EXPECT_EQ(set.Extents(), (Extents{{10, 25}}));
  set.Add(5, 10);  // Touches the start.
  EXPECT_EQ(set.Extents(), (Extents{{5, 25}}));
  set.Add(30, 40);
  set.Add(25, 30);  // Fills the gap exactly: one range.
  EXPECT_EQ(set.Extents(), (Extents{{5, 40}}));
  EXPECT_TRUE(WellFormed(set));
}

TEST(ExtentSetTest, ContainedRangeChangesNothingAndContainingRangeSwallowsAll) {
  ExtentSet set;
  set.Add(10, 50);
  set.Add(20, 30);
  set.Add(10, 50);
  EXPECT_EQ(set.Extents(), (Extents{{10, 50}}));

  set.Add(60, 70);
  set.Add(80, 90);
  set.Add(0, 100);  // Contains every range.
  EXPECT_EQ(set.Extents(), (Extents{{0, 100}}));
  EXPECT_TRUE(WellFormed(set));
}

TEST(ExtentSetTest, ClearEmptiesTheSet) {
  ExtentSet set;
  set.Add(1, 2);
  set.Add(5, 9);
  set.Clear();
  EXPECT_TRUE(set.empty());
  EXPECT_FALSE(set.Intersects(0, 100));
}

// --- TruncateTo ------------------------------------------------------------------------------

TEST(ExtentSetTest, TruncateToDropsWholeRangesPastTheLimitAndClipsTheOneAcrossIt) {
  ExtentSet set;
  set.Add(0, 10);
  set.Add(20, 30);
  set.Add(40, 50);
  set.TruncateTo(25);
  EXPECT_EQ(set.Extents(), (Extents{{0, 10}, {20, 25}}));
  EXPECT_TRUE(WellFormed(set));
}

TEST(ExtentSetTest, TruncateToAtARangeBoundary) {
  ExtentSet set;
  set.Add(0, 10);
  set.Add(20, 30);
  set.TruncateTo(20);  // [20, 30) starts exactly at the limit: gone entirely.
  EXPECT_EQ(set.Extents(), (Extents{{0, 10}}));
  set.TruncateTo(10);  // Ends exactly at the limit: kept whole.
  EXPECT_EQ(set.Extents(), (Extents{{0, 10}}));
  set.TruncateTo(15);  // Past everything: nothing changes.
  EXPECT_EQ(set.Extents(), (Extents{{0, 10}}));
  set.TruncateTo(0);
  EXPECT_TRUE(set.empty());
}

TEST(ExtentSetTest, TruncateToInAGapKeepsEverythingBefore) {
  ExtentSet set;
  set.Add(0, 10);
  set.Add(20, 30);
  set.TruncateTo(15);
  EXPECT_EQ(set.Extents(), (Extents{{0, 10}}));
}

// --- Covers / Intersects / Gaps ------------------------------------------------------------

TEST(ExtentSetTest, CoversOnlyWhenEveryByteIsInOneRange) {
  ExtentSet set;
  set.Add(10, 20);
  set.Add(30, 40);
  EXPECT_TRUE(set.Covers(10, 20));
  EXPECT_TRUE(set.Covers(12, 18));
  EXPECT_TRUE(set.Covers(5, 5));  // Empty ranges are covered.
  EXPECT_TRUE(set.Covers(25, 25));
  EXPECT_FALSE(set.Covers(9, 20));   // One byte before.
  EXPECT_FALSE(set.Covers(10, 21));  // One byte after.
  EXPECT_FALSE(set.Covers(15, 35));  // Spans a gap.
  EXPECT_FALSE(set.Covers(0, 5));
  EXPECT_FALSE(set.Covers(50, 60));
  EXPECT_FALSE(ExtentSet().Covers(0, 1));
}

TEST(ExtentSetTest, IntersectsWhenAnyByteIsIn) {
  ExtentSet set;
  set.Add(10, 20);
  set.Add(30, 40);
  EXPECT_TRUE(set.Intersects(0, 11));
  EXPECT_TRUE(set.Intersects(19, 25));
  EXPECT_TRUE(set.Intersects(15, 35));
  EXPECT_TRUE(set.Intersects(0, 100));
  EXPECT_FALSE(set.Intersects(0, 10));   // Ends where a range starts.
  EXPECT_FALSE(set.Intersects(20, 30));  // Exactly the gap.
  EXPECT_FALSE(set.Intersects(40, 50));  // Starts where a range ends.
  EXPECT_FALSE(set.Intersects(15, 15));  // Empty range.
  EXPECT_FALSE(ExtentSet().Intersects(0, 100));
}

TEST(ExtentSetTest, GapsListsTheMissingPiecesInOrder) {
  ExtentSet set;
  set.Add(10, 20);
  set.Add(30, 40);
  EXPECT_EQ(set.Gaps(0, 50), (Extents{{0, 10}, {20, 30}, {40, 50}}));
  EXPECT_EQ(set.Gaps(15, 35), (Extents{{20, 30}}));
  EXPECT_EQ(set.Gaps(10, 40), (Extents{{20, 30}}));
  EXPECT_EQ(set.Gaps(12, 18), Extents{});  // Covered.
  EXPECT_EQ(set.Gaps(20, 30), (Extents{{20, 30}}));
  EXPECT_EQ(set.Gaps(5, 5), Extents{});  // Empty range.
  EXPECT_EQ(ExtentSet().Gaps(3, 7), (Extents{{3, 7}}));
}

// --- Against a model -----------------------------------------------------------------------

// Runs of set bits of `bits`, as extents.
Extents Runs(const std::vector<bool>& bits) {
  Extents out;
  for (uint64_t i = 0; i < bits.size();) {
    if (!bits[i]) {
      ++i;
      continue;
    }
    uint64_t j = i;
    while (j < bits.size() && bits[j]) ++j;
    out.push_back({i, j});
    i = j;
  }
  return out;
}

TEST(ExtentSetTest, RandomOperationsMatchABitmapModel) {
  constexpr uint64_t kSpace = 256;
  std::mt19937_64 rng(20240611);
  auto pick = [&](uint64_t bound) { return static_cast<uint64_t>(rng() % bound); };
  for (int round = 0; round < 50; ++round) {
    ExtentSet set;
    std::vector<bool> model(kSpace, false);
    for (int step = 0; step < 200; ++step) {
      const uint64_t a = pick(kSpace + 1);
      const uint64_t b = pick(kSpace + 1);
      const uint64_t lo = std::min(a, b), hi = std::max(a, b);
      if (pick(8) == 0) {
        set.TruncateTo(lo);
        for (uint64_t i = lo; i < kSpace; ++i) model[i] = false;
      } else {
        // Mostly short ranges, so that merging of neighbours is exercised often.
        const uint64_t end = pick(3) == 0 ? hi : std::min(kSpace, lo + pick(12));
        set.Add(lo, end);
        for (uint64_t i = lo; i < end; ++i) model[i] = true;
      }
      ASSERT_TRUE(WellFormed(set)) << "round " << round << " step " << step;
      ASSERT_EQ(set.Extents(), Runs(model)) << "round " << round << " step " << step;

      // Queries on a random range.
      const uint64_t c = pick(kSpace + 1), d = pick(kSpace + 1);
      const uint64_t qb = std::min(c, d), qe = std::max(c, d);
      bool all = true, any = false;
      std::vector<bool> missing(kSpace, false);
      for (uint64_t i = qb; i < qe; ++i) {
        all = all && model[i];
        any = any || model[i];
        missing[i] = !model[i];
      }
      ASSERT_EQ(set.Covers(qb, qe), all) << "[" << qb << "," << qe << ") in " << Show(set.Extents());
      ASSERT_EQ(set.Intersects(qb, qe), any)
          << "[" << qb << "," << qe << ") in " << Show(set.Extents());
      ASSERT_EQ(set.Gaps(qb, qe), Runs(missing))
          << "[" << qb << "," << qe << ") in " << Show(set.Extents());
    }
  }
}

}  // namespace
}  // namespace bucketfs::cache
