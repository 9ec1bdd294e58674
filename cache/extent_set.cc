#include "cache/extent_set.h"

#include <algorithm>

namespace bucketfs::cache {

void ExtentSet::Add(uint64_t begin, uint64_t end) {
  if (begin >= end) return;
  // The first range that could touch [begin, end): the one starting at or before `begin`.
  auto it = ranges_.upper_bound(begin);
  if (it != ranges_.begin()) {
    auto prev = std::prev(it);
    if (prev->second >= begin) it = prev;
  }
  while (it != ranges_.end() && it->first <= end) {
    begin = std::min(begin, it->first);
    end = std::max(end, it->second);
    it = ranges_.erase(it);
  }
  ranges_.emplace(begin, end);
}

void ExtentSet::TruncateTo(uint64_t limit) {
  auto it = ranges_.lower_bound(limit);
  ranges_.erase(it, ranges_.end());
  if (!ranges_.empty()) {
    auto last = std::prev(ranges_.end());
    last->second = std::min(last->second, limit);
    if (last->first >= last->second) ranges_.erase(last);
  }
}

bool ExtentSet::Covers(uint64_t begin, uint64_t end) const {
  if (begin >= end) return true;
  auto it = ranges_.upper_bound(begin);
  if (it == ranges_.begin()) return false;
  --it;
  return it->first <= begin && it->second >= end;
}

bool ExtentSet::Intersects(uint64_t begin, uint64_t end) const {
  if (begin >= end) return false;
  auto it = ranges_.lower_bound(end);  // First range starting at or past `end`.
  if (it == ranges_.begin()) return false;
  --it;
  return it->second > begin;
}

std::vector<Extent> ExtentSet::Gaps(uint64_t begin, uint64_t end) const {
  std::vector<Extent> gaps;
  if (begin >= end) return gaps;
  auto it = ranges_.upper_bound(begin);
  if (it != ranges_.begin()) {
    auto prev = std::prev(it);
    if (prev->second > begin) begin = prev->second;
  }
  for (; begin < end && it != ranges_.end() && it->first < end; ++it) {
    if (it->first > begin) gaps.push_back({begin, it->first});
    begin = std::max(begin, it->second);
  }
  if (begin < end) gaps.push_back({begin, end});
  return gaps;
}

std::vector<Extent> ExtentSet::Extents() const {
  std::vector<Extent> out;
  out.reserve(ranges_.size());
  for (const auto& [b, e] : ranges_) out.push_back({b, e});
  return out;
}

}  // namespace bucketfs::cache
