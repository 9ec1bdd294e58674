// MappedBuffer: a large byte buffer that is an anonymous mapping of its own, for the block
// cache's blocks and the writeback's part buffers.
//
// Contract:
//  - Allocate(bytes) maps at least `bytes` (rounded up to pages); an empty buffer (data()
//    nullptr) when the system refuses. The bytes start as zeros (fresh anonymous pages) and
//    are not written by the allocation: the kernel zeroes each page on first touch.
//  - Freeing gives the memory back to the system at once: RSS follows the memory budget,
//    with no allocator arena keeping freed blocks, and nothing is memset twice.
//  - A buffer of 2 MiB or more starts at a 2 MiB boundary and is advised MADV_HUGEPAGE, so
//    transparent huge pages can back it: one page fault per 2 MiB instead of 512. Measured
//    on a cold 1 GiB read, page faults were ~20% of the daemon's CPU with malloc'd blocks.
//  - ShrinkTo(keep) unmaps the pages past `keep` bytes (a block shorter than asked for).
//  - Move-only; not thread-safe (one owner at a time).
#pragma once

#include <cstddef>
#include <utility>

namespace bucketfs::cache {

class MappedBuffer {
 public:
  MappedBuffer() = default;
  static MappedBuffer Allocate(size_t bytes);
  ~MappedBuffer();
  MappedBuffer(MappedBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), mapped_(std::exchange(other.mapped_, 0)) {}
  MappedBuffer& operator=(MappedBuffer&& other) noexcept;
  MappedBuffer(const MappedBuffer&) = delete;
  MappedBuffer& operator=(const MappedBuffer&) = delete;

  char* data() const { return data_; }
  size_t mapped() const { return mapped_; }  // Bytes mapped: a multiple of the page size.
  explicit operator bool() const { return data_ != nullptr; }
  void ShrinkTo(size_t keep);

 private:
  MappedBuffer(char* data, size_t mapped) : data_(data), mapped_(mapped) {}
  char* data_ = nullptr;
  size_t mapped_ = 0;
};

}  // namespace bucketfs::cache
