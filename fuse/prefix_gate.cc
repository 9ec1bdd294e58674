#include "fuse/prefix_gate.h"

#include <algorithm>

namespace bucketfs::fs {
namespace {

// `path` is under the directory prefix `prefix` ("d/"), or is the directory "d" itself.
bool IsCoveredBy(const std::string& path, const std::string& prefix) {
  return path.starts_with(prefix) ||
         (path.size() + 1 == prefix.size() && prefix.starts_with(path));
}

}  // namespace

bool PrefixGate::Covered(const std::string& path) const {
  return std::any_of(exclusive_.begin(), exclusive_.end(),
                     [&](const std::string& prefix) { return IsCoveredBy(path, prefix); });
}

bool PrefixGate::EnteredUnder(const std::string& prefix,
                              const std::vector<std::string>& own) const {
  auto under = [&](const std::string& path) { return IsCoveredBy(path, prefix); };
  return std::count_if(entered_.begin(), entered_.end(), under) >
         std::count_if(own.begin(), own.end(), under);
}

uint64_t PrefixGate::epoch() {
  std::lock_guard lock(mu_);
  return epoch_;
}

std::pair<PrefixGate::Hold, bool> PrefixGate::Enter(std::vector<std::string> paths, uint64_t seen) {
  std::unique_lock lock(mu_);
  bool waited = epoch_ != seen;
  while (std::any_of(paths.begin(), paths.end(), [&](const std::string& p) { return Covered(p); })) {
    waited = true;
    changed_.wait(lock);
  }
  entered_.insert(entered_.end(), paths.begin(), paths.end());
  return {Hold(this, std::move(paths), false), waited};
}

PrefixGate::Hold PrefixGate::Exclusive(std::vector<std::string> prefixes, const Hold& own) {
  const std::vector<std::string> own_paths = own.owner() == this ? own.keys() : std::vector<std::string>{};
  std::unique_lock lock(mu_);
  ++epoch_;
  exclusive_.insert(exclusive_.end(), prefixes.begin(), prefixes.end());
  changed_.wait(lock, [&] {
    return std::none_of(prefixes.begin(), prefixes.end(),
                        [&](const std::string& p) { return EnteredUnder(p, own_paths); });
  });
  return Hold(this, std::move(prefixes), true);
}

void PrefixGate::Release(const std::vector<std::string>& keys, bool exclusive) {
  {
    std::lock_guard lock(mu_);
    auto& from = exclusive ? exclusive_ : entered_;
    for (const std::string& key : keys) {
      if (auto it = std::find(from.begin(), from.end(), key); it != from.end()) from.erase(it);
    }
  }
  changed_.notify_all();
}

}  // namespace bucketfs::fs
