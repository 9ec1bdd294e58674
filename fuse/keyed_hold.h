// KeyedHold: keys held in a PrefixGate or KeyLocks, given back when the hold goes.
//
// Contract:
//  - Made only by its Owner (a friend), which it gives the keys back to exactly once:
//    Owner::Release(keys, exclusive) at Release() or destruction, whichever comes first.
//  - Move-only; a moved-from, released or default-made hold holds nothing.
//  - Not thread-safe itself: one thread uses a hold at a time (the owner is thread-safe).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace bucketfs::fs {

template <typename Owner>
class KeyedHold {
 public:
  KeyedHold() = default;
  KeyedHold(KeyedHold&& other) noexcept
      : owner_(std::exchange(other.owner_, nullptr)), keys_(std::move(other.keys_)),
        exclusive_(other.exclusive_) {}
  KeyedHold& operator=(KeyedHold&& other) noexcept {
    if (this != &other) {
      Release();
      owner_ = std::exchange(other.owner_, nullptr);
      keys_ = std::move(other.keys_);
      exclusive_ = other.exclusive_;
    }
    return *this;
  }
  KeyedHold(const KeyedHold&) = delete;
  KeyedHold& operator=(const KeyedHold&) = delete;
  ~KeyedHold() { Release(); }

  void Release() {
    if (owner_ == nullptr) return;
    std::exchange(owner_, nullptr)->Release(keys_, exclusive_);
    keys_.clear();
  }
  // The owner whose keys it holds (nullptr: none), and those keys.
  const Owner* owner() const { return owner_; }
  const std::vector<std::string>& keys() const { return keys_; }

 private:
  friend Owner;
  KeyedHold(Owner* owner, std::vector<std::string> keys, bool exclusive)
      : owner_(owner), keys_(std::move(keys)), exclusive_(exclusive) {}

  Owner* owner_ = nullptr;
  std::vector<std::string> keys_;
  bool exclusive_ = false;
};

}  // namespace bucketfs::fs
