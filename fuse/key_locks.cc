#include "fuse/key_locks.h"

#include <algorithm>

namespace bucketfs::fs {

KeyLocks::Hold KeyLocks::Share(const std::string& key) {
  std::unique_lock lock(mu_);
  // Looked up on every wake: a Release() meanwhile may have dropped the key's entry.
  changed_.wait(lock, [&] {
    const State& state = keys_[key];
    return !state.exclusive && state.exclusive_waiters == 0;
  });
  ++keys_[key].shared;
  return Hold(this, {key}, /*exclusive=*/false);
}

KeyLocks::Hold KeyLocks::Exclusive(std::vector<std::string> keys) {
  std::sort(keys.begin(), keys.end());
  keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
  std::unique_lock lock(mu_);
  for (const auto& key : keys) ++keys_[key].exclusive_waiters;
  changed_.wait(lock, [&] {
    return std::all_of(keys.begin(), keys.end(), [&](const std::string& key) {
      const State& state = keys_[key];
      return !state.exclusive && state.shared == 0;
    });
  });
  for (const auto& key : keys) {
    State& state = keys_[key];
    --state.exclusive_waiters;
    state.exclusive = true;
  }
  return Hold(this, std::move(keys), /*exclusive=*/true);
}

size_t KeyLocks::tracked() {
  std::lock_guard lock(mu_);
  return keys_.size();
}

void KeyLocks::Release(const std::vector<std::string>& keys, bool exclusive) {
  {
    std::lock_guard lock(mu_);
    for (const auto& key : keys) {
      auto it = keys_.find(key);
      if (it == keys_.end()) continue;
      if (exclusive) {
        it->second.exclusive = false;
      } else {
        --it->second.shared;
      }
      Prune(it);
    }
  }
  changed_.notify_all();
}

void KeyLocks::Prune(std::map<std::string, State>::iterator it) {
  const State& state = it->second;
  if (state.shared == 0 && !state.exclusive && state.exclusive_waiters == 0) keys_.erase(it);
}

}  // namespace bucketfs::fs
