#include "cache/mapped_buffer.h"

#include <sys/mman.h>

#include <cstdint>

namespace bucketfs::cache {
namespace {

constexpr size_t kPageSize = 4096;
constexpr size_t kHugePageSize = 2u << 20;

size_t RoundUp(size_t v, size_t a) { return (v + a - 1) / a * a; }

}  // namespace

MappedBuffer MappedBuffer::Allocate(size_t bytes) {
  const size_t length = RoundUp(bytes == 0 ? 1 : bytes, kPageSize);
  const bool huge = length >= kHugePageSize;
  // Over-map by one huge page so that an aligned start can be cut out of the mapping.
  const size_t request = huge ? length + kHugePageSize : length;
  void* raw = mmap(nullptr, request, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return MappedBuffer();
  char* base = static_cast<char*>(raw);
  if (!huge) return MappedBuffer(base, length);
  const auto addr = reinterpret_cast<uintptr_t>(base);
  char* aligned = base + (RoundUp(addr, kHugePageSize) - addr);
  const size_t head = static_cast<size_t>(aligned - base);
  const size_t tail = request - head - length;
  if (head > 0) munmap(base, head);
  if (tail > 0) munmap(aligned + length, tail);
  madvise(aligned, length, MADV_HUGEPAGE);  // A hint: failure only costs speed.
  return MappedBuffer(aligned, length);
}

MappedBuffer::~MappedBuffer() {
  if (data_ != nullptr) munmap(data_, mapped_);
}

MappedBuffer& MappedBuffer::operator=(MappedBuffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) munmap(data_, mapped_);
    data_ = std::exchange(other.data_, nullptr);
    mapped_ = std::exchange(other.mapped_, 0);
  }
  return *this;
}

void MappedBuffer::ShrinkTo(size_t keep) {
  const size_t kept = RoundUp(keep, kPageSize);
  if (data_ == nullptr || kept >= mapped_) return;
  if (kept == 0) {
    munmap(data_, mapped_);
    data_ = nullptr;
    mapped_ = 0;
    return;
  }
  munmap(data_ + kept, mapped_ - kept);
  mapped_ = kept;
}

}  // namespace bucketfs::cache
