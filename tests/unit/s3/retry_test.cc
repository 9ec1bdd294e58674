#include "s3/retry.h"

#include <gtest/gtest.h>

namespace bucketfs::s3 {
namespace {

using std::chrono::milliseconds;

TEST(RetryPolicyTest, BackoffStaysUnderExponentialCeilingAndCap) {
  RetryPolicy p;
  std::mt19937_64 rng(1);
  Status err(ErrorCode::kServerError, "x", true);
  for (int attempt = 1; attempt <= 12; ++attempt) {
    Duration ceiling = std::min<Duration>(p.max_delay, p.base_delay * (1LL << (attempt - 1)));
    for (int i = 0; i < 100; ++i) {
      Duration d = p.Backoff(attempt, err, rng);
      EXPECT_GE(d.count(), 0);
      EXPECT_LE(d, ceiling);
    }
  }
}

TEST(RetryPolicyTest, ThrottlingBacksOffFromALargerBase) {
  RetryPolicy p;
  std::mt19937_64 rng(2);
  Status slow(ErrorCode::kSlowDown, "x", true);
  Duration max_seen{};
  for (int i = 0; i < 200; ++i) max_seen = std::max(max_seen, p.Backoff(1, slow, rng));
  EXPECT_GT(max_seen, p.base_delay);  // Jitter reaches above the normal first ceiling.
  EXPECT_LE(max_seen, p.throttle_base_delay);
}

TEST(RetryPolicyTest, OnlyRetryableErrorsWithinAttemptsAndDeadline) {
  RetryPolicy p;
  MonoTime now{};
  MonoTime deadline = now + std::chrono::seconds(10);
  Status transient(ErrorCode::kNetwork, "reset", true);
  Status permanent(ErrorCode::kAccessDenied, "no", false);
  EXPECT_TRUE(p.ShouldRetry(1, transient, now, milliseconds(10), deadline));
  EXPECT_FALSE(p.ShouldRetry(1, permanent, now, milliseconds(10), deadline));
  EXPECT_FALSE(p.ShouldRetry(p.max_attempts, transient, now, milliseconds(10), deadline));
  EXPECT_FALSE(p.ShouldRetry(1, transient, now, std::chrono::seconds(11), deadline));
}

}  // namespace
}  // namespace bucketfs::s3
