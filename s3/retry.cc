#include "s3/retry.h"

#include <algorithm>

namespace bucketfs::s3 {

Duration RetryPolicy::Backoff(int attempt, const Status& last_error,
                              std::mt19937_64& rng) const {
  Duration base = last_error.code() == ErrorCode::kSlowDown ? throttle_base_delay : base_delay;
  int shift = std::clamp(attempt - 1, 0, 20);
  Duration ceiling = std::min<Duration>(max_delay, base * (1LL << shift));
  std::uniform_int_distribution<Duration::rep> dist(0, ceiling.count());
  return Duration(dist(rng));
}

bool RetryPolicy::ShouldRetry(int attempts, const Status& error, MonoTime now, Duration backoff,
                              MonoTime deadline) const {
  if (!error.retryable()) return false;
  if (attempts >= max_attempts) return false;
  return now + backoff < deadline;
}

}  // namespace bucketfs::s3
