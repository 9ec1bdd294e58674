#include "cache/part_layout.h"

#include <gtest/gtest.h>

#include <cstdint>

#include "s3/object_client.h"

namespace bucketfs::cache {
namespace {

constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kGiB = 1ull << 30;
constexpr uint64_t kTiB = 1ull << 40;

TEST(PartLayoutTest, TheFirstFiveHundredPartsHaveTheFirstSize) {
  const PartLayout layout(8 * kMiB);
  EXPECT_EQ(layout.first_part_size(), 8 * kMiB);
  for (int n : {1, 2, 3, 250, 500}) {
    const PartSpan p = layout.Part(n);
    EXPECT_EQ(p.number, n);
    EXPECT_EQ(p.size, 8 * kMiB) << "part " << n;
    EXPECT_EQ(p.offset, static_cast<uint64_t>(n - 1) * 8 * kMiB) << "part " << n;
    EXPECT_EQ(p.end(), p.offset + p.size);
  }
}

TEST(PartLayoutTest, SizeDoublesEveryFiveHundredParts) {
  const PartLayout layout(5 * kMiB);
  EXPECT_EQ(layout.Part(500).size, 5 * kMiB);
  EXPECT_EQ(layout.Part(501).size, 10 * kMiB);
  EXPECT_EQ(layout.Part(501).offset, 500 * 5 * kMiB);
  EXPECT_EQ(layout.Part(1000).size, 10 * kMiB);
  EXPECT_EQ(layout.Part(1001).size, 20 * kMiB);
  EXPECT_EQ(layout.Part(1001).offset, 500 * 5 * kMiB + 500 * 10 * kMiB);
  EXPECT_EQ(layout.Part(1501).size, 40 * kMiB);
  // Step k (parts 500k+1 .. 500k+500) holds 5 MiB * 2^k parts, up to the cap.
  for (int step = 0; step < 10; ++step) {
    EXPECT_EQ(layout.Part(step * 500 + 1).size, (5 * kMiB) << step) << "step " << step;
    EXPECT_EQ(layout.Part(step * 500 + 500).size, (5 * kMiB) << step) << "step " << step;
  }
}

TEST(PartLayoutTest, SizeIsCappedAtFiveGiB) {
  {
    const PartLayout layout(5 * kMiB);  // 5 MiB * 2^10 is exactly 5 GiB: parts 5001 on.
    EXPECT_EQ(layout.Part(4501).size, 2560 * kMiB);
    EXPECT_EQ(layout.Part(5001).size, 5 * kGiB);
    EXPECT_EQ(layout.Part(5501).size, 5 * kGiB);
    EXPECT_EQ(layout.Part(s3::kMaxParts).size, 5 * kGiB);
  }
  {
    const PartLayout layout(8 * kMiB);  // 8 MiB * 2^10 = 8 GiB would be over: capped.
    EXPECT_EQ(layout.Part(4501).size, 4 * kGiB);
    EXPECT_EQ(layout.Part(5001).size, 5 * kGiB);
    EXPECT_EQ(layout.Part(s3::kMaxParts).size, 5 * kGiB);
  }
  {
    const PartLayout layout(1 * kGiB);  // 1, 2, 4, then 5 (not 8) GiB.
    EXPECT_EQ(layout.Part(1001).size, 4 * kGiB);
    EXPECT_EQ(layout.Part(1501).size, 5 * kGiB);
    EXPECT_EQ(layout.Part(2001).size, 5 * kGiB);
    EXPECT_EQ(layout.Part(1501).offset, 500 * (1 + 2 + 4) * kGiB);
    EXPECT_EQ(layout.PartAt(500 * (1 + 2 + 4) * kGiB).number, 1501);
  }
}

TEST(PartLayoutTest, PartsAreContiguousAndPartAtFindsEachOfThem) {
  for (uint64_t first : {5 * kMiB, 8 * kMiB, 64 * kMiB}) {
    const PartLayout layout(first);
    for (int n = 1; n <= s3::kMaxParts; ++n) {
      const PartSpan p = layout.Part(n);
      ASSERT_EQ(p.number, n);
      ASSERT_GE(p.size, s3::kMinPartSize) << "first " << first << " part " << n;
      ASSERT_LE(p.size, s3::kMaxPartSize) << "first " << first << " part " << n;
      if (n > 1) {
        ASSERT_EQ(p.offset, layout.Part(n - 1).end()) << "first " << first << " part " << n;
      }
      const PartSpan at_start = layout.PartAt(p.offset);
      ASSERT_EQ(at_start.number, n) << "first " << first << " part " << n;
      ASSERT_EQ(at_start.offset, p.offset);
      ASSERT_EQ(at_start.size, p.size);
      ASSERT_EQ(layout.PartAt(p.end() - 1).number, n) << "first " << first << " part " << n;
      ASSERT_EQ(layout.PartAt(p.offset + p.size / 2).number, n);
    }
  }
}

TEST(PartLayoutTest, OffsetsPastTheLastPartGiveOnePastTheLimit) {
  const PartLayout layout(5 * kMiB);
  const PartSpan last = layout.Part(s3::kMaxParts);
  EXPECT_EQ(layout.PartAt(last.end() - 1).number, s3::kMaxParts);
  EXPECT_EQ(layout.PartAt(last.end()).number, s3::kMaxParts + 1);
  EXPECT_EQ(layout.PartAt(last.end() + 123 * kGiB).number, s3::kMaxParts + 1);
}

TEST(PartLayoutTest, PartCountOfSizesAroundPartBoundaries) {
  const PartLayout layout(5 * kMiB);
  EXPECT_EQ(layout.PartCount(0), 0);
  EXPECT_EQ(layout.PartCount(1), 1);
  EXPECT_EQ(layout.PartCount(5 * kMiB - 1), 1);
  EXPECT_EQ(layout.PartCount(5 * kMiB), 1);
  EXPECT_EQ(layout.PartCount(5 * kMiB + 1), 2);
  EXPECT_EQ(layout.PartCount(3 * 5 * kMiB + 17), 4);
  EXPECT_EQ(layout.PartCount(500 * 5 * kMiB), 500);
  EXPECT_EQ(layout.PartCount(500 * 5 * kMiB + 1), 501);
  EXPECT_EQ(layout.PartCount(500 * 5 * kMiB + 10 * kMiB), 501);
  EXPECT_EQ(layout.PartCount(500 * 5 * kMiB + 10 * kMiB + 1), 502);
}

TEST(PartLayoutTest, FiveTiBFitsInTenThousandParts) {
  for (uint64_t first : {5 * kMiB, 8 * kMiB}) {
    const PartLayout layout(first);
    const int count = layout.PartCount(PartLayout::kMaxObjectSize);
    EXPECT_LE(count, s3::kMaxParts) << "first part size " << first;
    const PartSpan last = layout.Part(count);
    EXPECT_GE(last.end(), PartLayout::kMaxObjectSize);
    EXPECT_LT(last.offset, PartLayout::kMaxObjectSize);
  }
  EXPECT_EQ(PartLayout::kMaxObjectSize, 5 * kTiB);
  // The header's claim for the default 8 MiB: 5 TiB within 5,600 parts.
  EXPECT_LE(PartLayout(8 * kMiB).PartCount(PartLayout::kMaxObjectSize), 5600);
}

TEST(PartLayoutTest, AMaxPartSizeCapsTheGrowthAndBoundsTheLargestFile) {
  // The writeback's cap: an eighth of its memory budget (8 MiB of 64 MiB, 32 MiB of 256).
  const PartLayout none(8 * kMiB, 8 * kMiB);
  EXPECT_EQ(none.Part(501).size, 8 * kMiB);
  EXPECT_EQ(none.Part(10000).size, 8 * kMiB);
  EXPECT_EQ(none.max_file_size(), 10000 * 8 * kMiB);
  EXPECT_EQ(none.PartAt(none.max_file_size() - 1).number, s3::kMaxParts);
  EXPECT_EQ(none.PartAt(none.max_file_size()).number, s3::kMaxParts + 1);

  const PartLayout capped(8 * kMiB, 32 * kMiB);
  EXPECT_EQ(capped.max_part_size(), 32 * kMiB);
  EXPECT_EQ(capped.Part(501).size, 16 * kMiB);
  EXPECT_EQ(capped.Part(1001).size, 32 * kMiB);
  EXPECT_EQ(capped.Part(1501).size, 32 * kMiB);
  EXPECT_EQ(capped.Part(10000).size, 32 * kMiB);
  EXPECT_EQ(capped.max_file_size(), 500 * 8 * kMiB + 500 * 16 * kMiB + 9000 * 32 * kMiB);
  for (int n = 1; n <= s3::kMaxParts; n += 97) EXPECT_LE(capped.Part(n).size, 32 * kMiB) << n;
  // A cap that is not a doubling of the first size is reached and kept.
  const PartLayout odd(5 * kMiB, 8 * kMiB);
  EXPECT_EQ(odd.Part(501).size, 8 * kMiB);
  EXPECT_EQ(odd.Part(501).offset, 500 * 5 * kMiB);

  // Uncapped, the largest file is S3's; a cap below the first size is the first size.
  EXPECT_EQ(PartLayout(8 * kMiB).max_file_size(), PartLayout::kMaxObjectSize);
  EXPECT_EQ(PartLayout(8 * kMiB, kMiB).max_part_size(), 8 * kMiB);
}

TEST(PartLayoutTest, FirstSizeIsClampedToSThreesLimits) {
  EXPECT_EQ(PartLayout(1 * kMiB).first_part_size(), s3::kMinPartSize);
  EXPECT_EQ(PartLayout(0).first_part_size(), s3::kMinPartSize);
  EXPECT_EQ(PartLayout(5 * kMiB - 1).first_part_size(), 5 * kMiB);
  EXPECT_EQ(PartLayout(10 * kGiB).first_part_size(), s3::kMaxPartSize);
  // A clamped layout behaves as one made with 5 MiB.
  const PartLayout small(1 * kMiB);
  EXPECT_EQ(small.Part(1).size, 5 * kMiB);
  EXPECT_EQ(small.Part(2).offset, 5 * kMiB);
  EXPECT_EQ(small.PartAt(5 * kMiB - 1).number, 1);
  EXPECT_EQ(small.PartAt(5 * kMiB).number, 2);
  EXPECT_EQ(small.PartCount(6 * kMiB), 2);
}

}  // namespace
}  // namespace bucketfs::cache
