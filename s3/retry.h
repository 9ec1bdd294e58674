// RetryPolicy: when and how long to wait before retrying a failed S3 attempt.
//
// Contract: pure and thread-safe apart from the RNG passed in. Backoff is capped
// exponential with full jitter (AWS architecture blog, "Exponential Backoff And Jitter"):
// delay(n) = uniform(0, min(cap, base * 2^n)). Throttling (SlowDown/429) starts from a
// larger base so a throttled server gets real relief. Only errors whose Status is
// retryable are retried, and never past the call's deadline.
#pragma once

#include <chrono>
#include <random>

#include "common/clock.h"
#include "common/status.h"

namespace bucketfs::s3 {

struct RetryPolicy {
  int max_attempts = 8;
  Duration base_delay = std::chrono::milliseconds(50);
  Duration throttle_base_delay = std::chrono::milliseconds(500);
  Duration max_delay = std::chrono::seconds(5);

  // Delay before attempt `attempt` (1-based count of attempts already made).
  Duration Backoff(int attempt, const Status& last_error, std::mt19937_64& rng) const;

  // True if another attempt should be made after `attempts` attempts ended in `error`,
  // and the backoff still leaves time before `deadline`.
  bool ShouldRetry(int attempts, const Status& error, MonoTime now, Duration backoff,
                   MonoTime deadline) const;
};

}  // namespace bucketfs::s3
