#include "common/clock.h"

#include <gtest/gtest.h>

namespace bucketfs {
namespace {

using namespace std::chrono_literals;

TEST(FakeClockTest, SleepAdvancesBothClocksWithoutBlocking) {
  FakeClock clock;
  MonoTime m0 = clock.Now();
  WallTime w0 = clock.WallNow();
  clock.SleepFor(5s);
  EXPECT_EQ(clock.Now() - m0, Duration(5s));
  EXPECT_EQ(clock.WallNow() - w0, std::chrono::duration_cast<WallTime::duration>(5s));
  EXPECT_EQ(clock.slept(), Duration(5s));
}

TEST(FakeClockTest, SleepIntoThePastDoesNothing) {
  FakeClock clock;
  MonoTime m0 = clock.Now();
  clock.SleepUntil(m0 - 1s);
  EXPECT_EQ(clock.Now(), m0);
  clock.Advance(2s);
  EXPECT_EQ(clock.slept(), Duration(0));
  EXPECT_EQ(clock.Now() - m0, Duration(2s));
}

TEST(RealClockTest, IsMonotonic) {
  MonoTime a = RealClock().Now();
  MonoTime b = RealClock().Now();
  EXPECT_LE(a, b);
}

}  // namespace
}  // namespace bucketfs
