#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "mountd/coordinator.h"

namespace bucketfs::mountd {
namespace {

TEST(DecodeMountInfoPath, DecodesTheKernelsOctalEscapes) {
  EXPECT_EQ(DecodeMountInfoPath("/mnt-workspace"), "/mnt-workspace");
  EXPECT_EQ(DecodeMountInfoPath("/mnt/my\\040data"), "/mnt/my data");
  EXPECT_EQ(DecodeMountInfoPath("/a\\011b\\012c\\134d"), "/a\tb\nc\\d");
  // Not an escape: left as it is.
  EXPECT_EQ(DecodeMountInfoPath("/x\\09"), "/x\\09");
  EXPECT_EQ(DecodeMountInfoPath("/x\\04"), "/x\\04");
  EXPECT_EQ(DecodeMountInfoPath("/x\\"), "/x\\");
}

TEST(IsFuseMounted, ADirectoryThatIsNoFuseMountIsNot) {
  EXPECT_FALSE(IsFuseMounted("/"));  // Mounted, but not FUSE.
  EXPECT_FALSE(IsFuseMounted("/no/such/mount point"));
}

}  // namespace
}  // namespace bucketfs::mountd
