#include "cache/part_layout.h"

#include <algorithm>

#include "s3/object_client.h"

namespace bucketfs::cache {

PartLayout::PartLayout(uint64_t first_part_size, uint64_t max_part_size)
    : first_(std::clamp(first_part_size, s3::kMinPartSize, s3::kMaxPartSize)),
      max_(std::clamp(max_part_size, first_, s3::kMaxPartSize)),
      max_file_size_(std::min(kMaxObjectSize, PartAt(UINT64_MAX).offset)) {}

PartSpan PartLayout::Part(int number) const {
  uint64_t offset = 0;
  uint64_t size = first_;
  int n = 1;
  // Whole steps of kPartsPerStep parts before `number`.
  while (number - n >= kPartsPerStep) {
    offset += size * kPartsPerStep;
    n += kPartsPerStep;
    size = std::min(size * 2, max_);
  }
  offset += size * static_cast<uint64_t>(number - n);
  return PartSpan{number, offset, size};
}

PartSpan PartLayout::PartAt(uint64_t offset) const {
  uint64_t step_begin = 0;
  uint64_t size = first_;
  int n = 1;
  while (n <= s3::kMaxParts) {
    const uint64_t step_bytes = size * kPartsPerStep;
    if (offset < step_begin + step_bytes) {
      const uint64_t index = (offset - step_begin) / size;
      return PartSpan{n + static_cast<int>(index), step_begin + index * size, size};
    }
    step_begin += step_bytes;
    n += kPartsPerStep;
    size = std::min(size * 2, max_);
  }
  return PartSpan{s3::kMaxParts + 1, step_begin, size};
}

int PartLayout::PartCount(uint64_t size) const {
  if (size == 0) return 0;
  return PartAt(size - 1).number;
}

}  // namespace bucketfs::cache
