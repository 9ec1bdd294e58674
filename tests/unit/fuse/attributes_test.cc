#include "fuse/attributes.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <string>

namespace bucketfs::fs {
namespace {

using namespace std::chrono_literals;

const WallTime kLastModified = WallTime(std::chrono::seconds(1'600'000'000));

s3::ObjectInfo Info(s3::UserMetadata md = {}, uint64_t size = 42) {
  s3::ObjectInfo info;
  info.key = "k";
  info.size = size;
  info.etag = "etag";
  info.last_modified = kLastModified;
  info.metadata = std::move(md);
  return info;
}

AttributeDefaults Defaults() {
  AttributeDefaults d;
  d.uid = 500;
  d.gid = 501;
  d.file_mode = 0640;
  d.dir_mode = 0750;
  return d;
}

TEST(AttributesTest, NoMetadataUsesTheDefaultsAndLastModified) {
  Attributes a = ObjectAttributes(Info(), Defaults());
  EXPECT_EQ(a.type, FileType::kRegular);
  EXPECT_EQ(a.size, 42u);
  EXPECT_EQ(a.permissions, 0640u);
  EXPECT_EQ(a.uid, 500u);
  EXPECT_EQ(a.gid, 501u);
  EXPECT_EQ(a.mtime, kLastModified);
  EXPECT_EQ(a.nlink, 1u);
  EXPECT_EQ(a.Mode(), S_IFREG | 0640u);
}

TEST(AttributesTest, S3fsDecimalModeOfARegularFile) {
  Attributes a = ObjectAttributes(Info({{"mode", "33188"}}), Defaults());  // 0100644
  EXPECT_EQ(a.type, FileType::kRegular);
  EXPECT_EQ(a.permissions, 0644u);
  EXPECT_EQ(a.Mode(), S_IFREG | 0644u);
}

TEST(AttributesTest, SymlinkModeMakesASymlink) {
  ASSERT_EQ(0120777, 41471);
  Attributes a = ObjectAttributes(Info({{"mode", "41471"}}, 11), Defaults());
  EXPECT_EQ(a.type, FileType::kSymlink);
  EXPECT_EQ(a.permissions, 0777u);
  EXPECT_EQ(a.Mode(), S_IFLNK | 0777u);
  EXPECT_EQ(a.size, 11u);
}

TEST(AttributesTest, OtherTypeBitsAreIgnored) {
  // A directory mode on an object: still a file (structure decides), permissions kept.
  Attributes a = ObjectAttributes(Info({{"mode", std::to_string(040755)}}), Defaults());
  EXPECT_EQ(a.type, FileType::kRegular);
  EXPECT_EQ(a.permissions, 0755u);
  // Setuid/sticky bits are part of the permissions.
  a = ObjectAttributes(Info({{"mode", std::to_string(0104755)}}), Defaults());
  EXPECT_EQ(a.permissions, 04755u);
}

TEST(AttributesTest, UidGidAndFractionalMtime) {
  Attributes a = ObjectAttributes(
      Info({{"uid", "1000"}, {"gid", "1001"}, {"mtime", "1700000000.5"}}), Defaults());
  EXPECT_EQ(a.uid, 1000u);
  EXPECT_EQ(a.gid, 1001u);
  EXPECT_EQ(a.mtime, WallTime(std::chrono::milliseconds(1'700'000'000'500)));
  a = ObjectAttributes(Info({{"mtime", "1700000000"}}), Defaults());
  EXPECT_EQ(a.mtime, WallTime(std::chrono::seconds(1'700'000'000)));
}

TEST(AttributesTest, GarbageMetadataIsIgnored) {
  for (const char* bad : {"", "abc", "0x1ff", "12a", "-1", "420 ", "99999999999999999999"}) {
    Attributes a = ObjectAttributes(
        Info({{"mode", bad}, {"uid", bad}, {"gid", bad}}), Defaults());
    EXPECT_EQ(a.type, FileType::kRegular) << bad;
    EXPECT_EQ(a.permissions, 0640u) << bad;
    EXPECT_EQ(a.uid, 500u) << bad;
    EXPECT_EQ(a.gid, 501u) << bad;
  }
  for (const char* bad : {"", "soon", "-5", "inf", "nan", "1700000000x", "1.5.5"}) {
    Attributes a = ObjectAttributes(Info({{"mtime", bad}}), Defaults());
    EXPECT_EQ(a.mtime, kLastModified) << bad;
  }
}

TEST(AttributesTest, DirectoryAttributes) {
  const WallTime t = WallTime(std::chrono::seconds(1'234'567'890));
  Attributes a = DirectoryAttributes(t, Defaults());
  EXPECT_EQ(a.type, FileType::kDirectory);
  EXPECT_EQ(a.permissions, 0750u);
  EXPECT_EQ(a.uid, 500u);
  EXPECT_EQ(a.gid, 501u);
  EXPECT_EQ(a.mtime, t);
  EXPECT_EQ(a.nlink, 2u);
  EXPECT_EQ(a.Mode(), S_IFDIR | 0750u);
}

}  // namespace
}  // namespace bucketfs::fs
