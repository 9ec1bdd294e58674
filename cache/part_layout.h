// PartLayout: where each multipart part of a file begins and ends, as a pure function of
// the offset, so parts can be uploaded while the file is still being written and its final
// size is unknown.
//
// Contract:
//  - Part numbers are 1-based, as in S3. Parts 1..500 are `first_part_size` bytes; the size
//    doubles every 500 parts, capped at `max_part_size` (at most S3's 5 GiB). Uncapped,
//    10,000 parts of a 5 MiB first size hold more than 5 TiB (S3's object limit); the 8 MiB
//    default reaches 5 TiB within 5,600 parts.
//  - A part is uploaded from a buffer of its own size, so the writeback caps the size at
//    what its memory budget can hold; the largest file is then max_file_size(), less than
//    5 TiB when the cap is low (10,000 parts of 8 MiB hold 78 GiB).
//  - The last part of a file is clipped to the file's end; every other part has its full
//    size, which is at least 5 MiB (S3's minimum for all parts but the last).
#pragma once

#include <cstdint>

namespace bucketfs::cache {

struct PartSpan {
  int number = 0;       // 1-based.
  uint64_t offset = 0;  // In the file.
  uint64_t size = 0;    // Full size (not clipped to any file end).
  uint64_t end() const { return offset + size; }
};

class PartLayout {
 public:
  static constexpr int kPartsPerStep = 500;
  static constexpr uint64_t kMaxObjectSize = 5ull << 40;  // S3: 5 TiB.

  // `first_part_size` is clamped to [5 MiB, 5 GiB], `max_part_size` to [first, 5 GiB].
  explicit PartLayout(uint64_t first_part_size, uint64_t max_part_size = UINT64_MAX);

  uint64_t first_part_size() const { return first_; }
  uint64_t max_part_size() const { return max_; }
  // The largest file the layout holds in 10,000 parts, at most S3's 5 TiB.
  uint64_t max_file_size() const { return max_file_size_; }
  // The part holding byte `offset`; offsets past the last part give part kMaxParts + 1.
  PartSpan PartAt(uint64_t offset) const;
  PartSpan Part(int number) const;
  // How many parts a file of `size` bytes has (0 for an empty file).
  int PartCount(uint64_t size) const;

 private:
  uint64_t first_;
  uint64_t max_;
  uint64_t max_file_size_;  // Set once: checked on every write.
};

}  // namespace bucketfs::cache
