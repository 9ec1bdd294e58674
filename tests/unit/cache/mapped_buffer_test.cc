#include "cache/mapped_buffer.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <utility>

namespace bucketfs::cache {
namespace {

constexpr size_t kMiB = 1u << 20;

// Whether [p, p + bytes) is mapped in this process, from /proc/self/maps.
bool Mapped(const char* p, size_t bytes) {
  std::ifstream maps("/proc/self/maps");
  const auto begin = reinterpret_cast<uintptr_t>(p);
  std::string line;
  while (std::getline(maps, line)) {
    uintptr_t lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx", &lo, &hi) != 2) continue;
    if (lo <= begin && begin + bytes <= hi) return true;
  }
  return false;
}

TEST(MappedBufferTest, LargeBuffersStartOnAHugePageBoundaryAndReadAsZeros) {
  MappedBuffer b = MappedBuffer::Allocate(8 * kMiB + 5);
  ASSERT_TRUE(b);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % (2 * kMiB), 0u);
  EXPECT_EQ(b.mapped(), 8 * kMiB + 4096);
  for (size_t i = 0; i < b.mapped(); i += 4096) ASSERT_EQ(b.data()[i], 0) << i;
  b.data()[b.mapped() - 1] = 'x';  // Every byte is writable.
}

TEST(MappedBufferTest, SmallBuffersArePageSizedAndAZeroSizeIsOnePage) {
  EXPECT_EQ(MappedBuffer::Allocate(1).mapped(), 4096u);
  EXPECT_EQ(MappedBuffer::Allocate(0).mapped(), 4096u);
  EXPECT_EQ(MappedBuffer::Allocate(4097).mapped(), 8192u);
}

TEST(MappedBufferTest, ShrinkUnmapsThePagesPastWhatIsKeptAndZeroFreesAll) {
  MappedBuffer b = MappedBuffer::Allocate(4 * kMiB);
  ASSERT_TRUE(b);
  char* p = b.data();
  b.ShrinkTo(kMiB + 1);
  EXPECT_EQ(b.mapped(), kMiB + 4096);
  EXPECT_TRUE(Mapped(p, kMiB + 4096));
  EXPECT_FALSE(Mapped(p + kMiB + 4096, 4096));
  b.ShrinkTo(8 * kMiB);  // Never grows.
  EXPECT_EQ(b.mapped(), kMiB + 4096);
  b.ShrinkTo(0);
  EXPECT_FALSE(b);
  EXPECT_FALSE(Mapped(p, 4096));
}

TEST(MappedBufferTest, MovingHandsTheMappingOverAndDestructionUnmapsIt) {
  char* p = nullptr;
  {
    MappedBuffer a = MappedBuffer::Allocate(3 * kMiB);
    p = a.data();
    MappedBuffer b = std::move(a);
    EXPECT_FALSE(a);  // NOLINT(bugprone-use-after-move): moved-from is empty by contract.
    EXPECT_EQ(b.data(), p);
    MappedBuffer c;
    c = std::move(b);
    EXPECT_EQ(c.data(), p);
    EXPECT_TRUE(Mapped(p, 3 * kMiB));
  }
  EXPECT_FALSE(Mapped(p, 4096));
}

}  // namespace
}  // namespace bucketfs::cache
