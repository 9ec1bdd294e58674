#include "fuse/session_guard.h"

#include <mutex>

namespace bucketfs::fs {

bool SessionGuard::Use(const std::function<void(void*)>& fn) {
  if (closing_.load()) return false;
  std::shared_lock lock(mu_);
  if (session_ == nullptr || closing_.load()) return false;
  fn(session_);
  return true;
}

void SessionGuard::Close(const std::function<void()>& serve_some,
                         std::chrono::milliseconds patience,
                         const std::function<void()>& give_up) {
  closing_.store(true);
  const auto give_up_at = std::chrono::steady_clock::now() + patience;
  bool gave_up = false;
  // Not a blocking lock: a Use call in progress may be waiting for requests that only
  // serve_some() answers.
  while (!mu_.try_lock()) {
    serve_some();
    if (!gave_up && std::chrono::steady_clock::now() >= give_up_at) {
      gave_up = true;
      give_up();
    }
  }
  session_ = nullptr;
  mu_.unlock();
}

}  // namespace bucketfs::fs
