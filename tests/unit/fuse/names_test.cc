#include "fuse/names.h"

#include <gtest/gtest.h>

#include <string>

namespace bucketfs::fs {
namespace {

using namespace std::string_literals;

TEST(NamesTest, CheckNameAcceptsOrdinaryNames) {
  EXPECT_EQ(CheckName("a"), NameProblem::kNone);
  EXPECT_EQ(CheckName("file.txt"), NameProblem::kNone);
  EXPECT_EQ(CheckName("..."), NameProblem::kNone);
  EXPECT_EQ(CheckName(".hidden"), NameProblem::kNone);
  EXPECT_EQ(CheckName("with space and ünïcode"), NameProblem::kNone);
  EXPECT_EQ(CheckName(std::string(kMaxNameBytes, 'x')), NameProblem::kNone);
  EXPECT_TRUE(IsValidName("ok"));
}

TEST(NamesTest, CheckNameRejectsUnusableNames) {
  EXPECT_EQ(CheckName(""), NameProblem::kEmpty);
  EXPECT_EQ(CheckName("."), NameProblem::kDot);
  EXPECT_EQ(CheckName(".."), NameProblem::kDot);
  EXPECT_EQ(CheckName(std::string(kMaxNameBytes + 1, 'x')), NameProblem::kTooLong);
  EXPECT_EQ(CheckName(std::string(300, 'x')), NameProblem::kTooLong);
  EXPECT_EQ(CheckName("a\0b"s), NameProblem::kNul);
  EXPECT_FALSE(IsValidName(""));
  EXPECT_FALSE(IsValidName(".."));
}

TEST(NamesTest, DescribeNameProblemSaysSomething) {
  for (NameProblem p : {NameProblem::kNone, NameProblem::kEmpty, NameProblem::kDot,
                        NameProblem::kTooLong, NameProblem::kNul}) {
    EXPECT_FALSE(DescribeNameProblem(p).empty());
  }
  EXPECT_NE(DescribeNameProblem(NameProblem::kTooLong).find("255"), std::string_view::npos);
}

TEST(NamesTest, ChildPath) {
  EXPECT_EQ(ChildPath("", "c"), "c");
  EXPECT_EQ(ChildPath("a/b", "c"), "a/b/c");
  EXPECT_EQ(ChildPath("a", "b.txt"), "a/b.txt");
}

TEST(NamesTest, DirectoryPrefix) {
  EXPECT_EQ(DirectoryPrefix(""), "");
  EXPECT_EQ(DirectoryPrefix("a"), "a/");
  EXPECT_EQ(DirectoryPrefix("a/b"), "a/b/");
  EXPECT_EQ(DirectoryPrefix(ChildPath("a", "b")) + "c", "a/b/c");
}

TEST(NamesTest, IsReservedKey) {
  EXPECT_TRUE(IsReservedKey(".bucketfs/"));
  EXPECT_TRUE(IsReservedKey(".bucketfs/lease"));
  EXPECT_FALSE(IsReservedKey(".bucketfs"));
  EXPECT_FALSE(IsReservedKey(".bucketfsx/lease"));
  EXPECT_FALSE(IsReservedKey("a/.bucketfs/lease"));
  EXPECT_FALSE(IsReservedKey(""));
}

TEST(OnceLogTest, ReportsEachKeyOnce) {
  OnceLog log;
  log.Report("k1", "hidden");
  log.Report("k1", "hidden");
  log.Report("k2", "hidden");
  EXPECT_EQ(log.reported(), 2u);
}

}  // namespace
}  // namespace bucketfs::fs
