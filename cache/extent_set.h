// ExtentSet: a set of byte offsets kept as disjoint, sorted half-open ranges [begin, end).
//
// Contract:
//  - Adjacent and overlapping ranges merge: the set never holds two ranges that touch.
//  - Not thread-safe: its owner (a DirtyFile) guards it.
//  - Every operation is O(log n + ranges touched).
// Writeback uses it for the bytes of a file that are present in its spool file (written by
// the program, or filled from the object the file started as); the rest still lives only
// in S3 or is a hole.
#pragma once

#include <cstdint>
#include <map>
#include <utility>
#include <vector>

namespace bucketfs::cache {

struct Extent {
  uint64_t begin = 0;
  uint64_t end = 0;  // Exclusive.
  bool operator==(const Extent&) const = default;
};

class ExtentSet {
 public:
  void Add(uint64_t begin, uint64_t end);
  // Drops everything at or past `limit`.
  void TruncateTo(uint64_t limit);
  void Clear() { ranges_.clear(); }

  // True when every byte of [begin, end) is in the set (an empty range is covered).
  bool Covers(uint64_t begin, uint64_t end) const;
  // True when some byte of [begin, end) is in the set.
  bool Intersects(uint64_t begin, uint64_t end) const;
  // The parts of [begin, end) that are not in the set, in order.
  std::vector<Extent> Gaps(uint64_t begin, uint64_t end) const;

  std::vector<Extent> Extents() const;
  bool empty() const { return ranges_.empty(); }

 private:
  std::map<uint64_t, uint64_t> ranges_;  // begin -> end.
};

}  // namespace bucketfs::cache
