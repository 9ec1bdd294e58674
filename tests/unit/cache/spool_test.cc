#include "cache/spool.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

namespace bucketfs::cache {
namespace {

namespace stdfs = std::filesystem;

class SpoolTest : public ::testing::Test {
 protected:
  SpoolTest() {
    std::string tmpl = (stdfs::temp_directory_path() / "bucketfs-spool-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) std::abort();
    root_ = tmpl;
  }
  ~SpoolTest() override {
    std::error_code ec;
    stdfs::remove_all(root_, ec);
  }

  std::unique_ptr<Spool> MustOpen(const std::string& bucket = "bucket") {
    auto spool = Spool::Open(root_.string(), bucket);
    EXPECT_TRUE(spool.ok()) << spool.status().ToString();
    return spool.ok() ? std::move(spool).value() : nullptr;
  }

  stdfs::path Files() const { return root_ / "bucket" / "files"; }
  stdfs::path LostFound() const { return root_ / "bucket" / "lost+found"; }

  static void WriteText(const stdfs::path& path, const std::string& text) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
  }

  static std::vector<std::string> Ids(const std::vector<SpoolRecord>& records) {
    std::vector<std::string> ids;
    for (const auto& r : records) ids.push_back(r.id);
    std::sort(ids.begin(), ids.end());
    return ids;
  }

  stdfs::path root_;
};

TEST_F(SpoolTest, OpenCreatesTheDirectoriesAndTheLock) {
  auto spool = MustOpen();
  ASSERT_NE(spool, nullptr);
  EXPECT_EQ(spool->directory(), (root_ / "bucket").string());
  EXPECT_TRUE(stdfs::is_directory(Files()));
  EXPECT_TRUE(stdfs::is_directory(LostFound()));
  EXPECT_TRUE(stdfs::exists(root_ / "bucket" / "lock"));
  EXPECT_GT(spool->FreeBytes(), 0u);
}

TEST_F(SpoolTest, OpenCreatesAMissingRootToo) {
  const stdfs::path deep = root_ / "not" / "yet";
  auto spool = Spool::Open(deep.string(), "b");
  ASSERT_TRUE(spool.ok()) << spool.status().ToString();
  EXPECT_TRUE(stdfs::is_directory(deep / "b" / "files"));
}

TEST_F(SpoolTest, ABucketNameCannotReachOutsideTheRoot) {
  for (const std::string bucket : {"..", "a/../../b", "."}) {
    auto spool = Spool::Open(root_.string(), bucket);
    ASSERT_TRUE(spool.ok()) << bucket << ": " << spool.status().ToString();
    const stdfs::path dir = stdfs::weakly_canonical((*spool)->directory());
    const stdfs::path root = stdfs::weakly_canonical(root_);
    EXPECT_EQ(dir.parent_path(), root) << bucket << " -> " << dir;
  }
}

TEST_F(SpoolTest, SecondOpenOfTheSameSpoolIsBusyAndNamesTheOption) {
  auto first = MustOpen();
  ASSERT_NE(first, nullptr);
  auto second = Spool::Open(root_.string(), "bucket");
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), ErrorCode::kBusy);
  EXPECT_NE(second.status().message().find("--spool-dir"), std::string::npos)
      << second.status().ToString();

  // Another bucket under the same root is another spool.
  auto other = Spool::Open(root_.string(), "other-bucket");
  EXPECT_TRUE(other.ok()) << other.status().ToString();

  // Once the first lets go, the spool can be opened again.
  first.reset();
  auto third = Spool::Open(root_.string(), "bucket");
  EXPECT_TRUE(third.ok()) << third.status().ToString();
}

TEST_F(SpoolTest, RecordRoundTripsEveryField) {
  auto spool = MustOpen();
  ASSERT_NE(spool, nullptr);
  SpoolRecord r;
  r.id = "0000000000000001-abcdef01-000001";
  r.key = "dir/sub/file with spaces \xc3\xa9.bin";
  r.base_etag = "0123456789abcdef0123456789abcdef-3";
  r.base_limit = 15728657;
  r.create_only = true;
  r.size = (5ull << 40) - 1;
  r.present = {{0, 10}, {4096, 8192}, {15728640, 15728657}};
  r.metadata = {{"mode", "33188"}, {"uid", "1000"}, {"gid", "1000"}, {"mtime", "1700000000.5"}};
  r.closed = true;
  r.landing_etag = "fedcba9876543210fedcba9876543210-4";
  ASSERT_TRUE(spool->WriteRecord(r).ok());
  EXPECT_TRUE(stdfs::exists(Files() / (r.id + ".json")));

  const std::vector<SpoolRecord> records = spool->Scan();
  ASSERT_EQ(records.size(), 1u);
  const SpoolRecord& got = records[0];
  EXPECT_EQ(got.id, r.id);
  EXPECT_EQ(got.key, r.key);
  EXPECT_EQ(got.base_etag, r.base_etag);
  EXPECT_EQ(got.base_limit, r.base_limit);
  EXPECT_EQ(got.create_only, r.create_only);
  EXPECT_EQ(got.size, r.size);
  EXPECT_EQ(got.present, r.present);
  EXPECT_EQ(got.metadata, r.metadata);
  EXPECT_EQ(got.closed, r.closed);
  EXPECT_EQ(got.landing_etag, r.landing_etag);

  // The opposite booleans and empty fields survive too, and a rewrite replaces the record.
  r.create_only = false;
  r.closed = false;
  r.base_etag.clear();
  r.present.clear();
  r.metadata.clear();
  r.landing_etag.clear();
  ASSERT_TRUE(spool->WriteRecord(r).ok());
  const std::vector<SpoolRecord> again = spool->Scan();
  ASSERT_EQ(again.size(), 1u);
  EXPECT_FALSE(again[0].create_only);
  EXPECT_FALSE(again[0].closed);
  EXPECT_TRUE(again[0].base_etag.empty());
  EXPECT_TRUE(again[0].present.empty());
  EXPECT_TRUE(again[0].metadata.empty());
  EXPECT_TRUE(again[0].landing_etag.empty());
  // No temporary file is left behind by the atomic replacement.
  EXPECT_FALSE(stdfs::exists(Files() / (r.id + ".json.tmp")));
}

TEST_F(SpoolTest, ASmallRecordIsRewrittenInPlaceAndAShorterOneReadsBackExactly) {
  auto spool = MustOpen();
  ASSERT_NE(spool, nullptr);
  SpoolRecord r;
  r.id = "0000000000000002-abcdef01-000001";
  r.key = "logs/a-rather-long-name-for-the-first-version-of-this-record.txt";
  r.size = 4096;
  r.present = {{0, 4096}};
  r.metadata = {{"mode", "33188"}, {"mtime", "1700000000.5"}};
  ASSERT_TRUE(spool->WriteRecord(r).ok());
  const stdfs::path path = Files() / (r.id + ".json");
  struct stat before {};
  ASSERT_EQ(::stat(path.c_str(), &before), 0);

  // Shorter: no key suffix, no extents, no metadata; closed.
  r.key = "logs/a.txt";
  r.present.clear();
  r.metadata.clear();
  r.closed = true;
  ASSERT_TRUE(spool->WriteRecord(r).ok());
  struct stat after {};
  ASSERT_EQ(::stat(path.c_str(), &after), 0);
  EXPECT_EQ(after.st_ino, before.st_ino) << "rewritten in place, not replaced";
  EXPECT_EQ(after.st_size, before.st_size) << "padded to the old length";
  EXPECT_FALSE(stdfs::exists(Files() / (r.id + ".json.tmp")));

  const std::vector<SpoolRecord> records = spool->Scan();
  ASSERT_EQ(records.size(), 1u) << "the padding is JSON whitespace, not damage";
  EXPECT_EQ(records[0].key, "logs/a.txt");
  EXPECT_TRUE(records[0].present.empty());
  EXPECT_TRUE(records[0].metadata.empty());
  EXPECT_TRUE(records[0].closed);
  EXPECT_TRUE(stdfs::is_empty(LostFound()));
}

TEST_F(SpoolTest, ARecordLargerThanAPageIsReplacedWhole) {
  auto spool = MustOpen();
  ASSERT_NE(spool, nullptr);
  SpoolRecord r;
  r.id = "0000000000000003-abcdef01-000001";
  r.key = "big";
  for (uint64_t i = 0; i < 400; ++i) r.present.push_back({i * 8192, i * 8192 + 4096});
  ASSERT_TRUE(spool->WriteRecord(r).ok());
  const stdfs::path path = Files() / (r.id + ".json");
  struct stat before {};
  ASSERT_EQ(::stat(path.c_str(), &before), 0);
  ASSERT_GT(before.st_size, 4096) << "the test needs a record of more than a page";

  r.present.resize(1);  // Now small; the old record is still larger than a page.
  ASSERT_TRUE(spool->WriteRecord(r).ok());
  struct stat after {};
  ASSERT_EQ(::stat(path.c_str(), &after), 0);
  EXPECT_NE(after.st_ino, before.st_ino) << "written beside and renamed over the old one";
  EXPECT_LT(after.st_size, 4096);
  const std::vector<SpoolRecord> records = spool->Scan();
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].present.size(), 1u);
}

TEST_F(SpoolTest, CreateDataGivesUniqueWritableFiles) {
  auto spool = MustOpen();
  ASSERT_NE(spool, nullptr);
  auto a = spool->CreateData();
  auto b = spool->CreateData();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(a->first, b->first);
  EXPECT_EQ(spool->DataPath(a->first), (Files() / (a->first + ".data")).string());
  ASSERT_EQ(::pwrite(a->second, "abc", 3, 10), 3);
  ::close(a->second);
  ::close(b->second);
  auto reopened = spool->OpenData(a->first);
  ASSERT_TRUE(reopened.ok()) << reopened.status().ToString();
  char buf[13] = {};
  EXPECT_EQ(::pread(*reopened, buf, sizeof buf, 0), 13);
  EXPECT_EQ(std::string(buf + 10, 3), "abc");
  EXPECT_EQ(std::string(buf, 10), std::string(10, '\0'));  // Sparse: holes read as zeros.
  ::close(*reopened);
  EXPECT_FALSE(spool->OpenData("no-such-id").ok());
}

TEST_F(SpoolTest, UnreadableRecordIsQuarantinedWithItsDataAndNotReturned) {
  auto spool = MustOpen();
  ASSERT_NE(spool, nullptr);
  SpoolRecord good;
  good.id = "good";
  good.key = "k";
  ASSERT_TRUE(spool->WriteRecord(good).ok());
  WriteText(Files() / "good.data", "x");

  WriteText(Files() / "garbage.json", "{ this is not json");
  WriteText(Files() / "garbage.data", "bytes a person may want back");
  WriteText(Files() / "partial.json", R"({"version":1,"id":"partial","key":"k"})");  // Fields missing.
  // A record whose id is not its file name's.
  SpoolRecord other;
  other.id = "renamed";
  other.key = "k2";
  ASSERT_TRUE(spool->WriteRecord(other).ok());
  stdfs::rename(Files() / "renamed.json", Files() / "mismatch.json");

  const std::vector<SpoolRecord> records = spool->Scan();
  EXPECT_EQ(Ids(records), std::vector<std::string>{"good"});

  for (const char* id : {"garbage", "partial", "mismatch"}) {
    EXPECT_FALSE(stdfs::exists(Files() / (std::string(id) + ".json"))) << id;
    EXPECT_TRUE(stdfs::exists(LostFound() / (std::string(id) + ".json"))) << id;
  }
  EXPECT_FALSE(stdfs::exists(Files() / "garbage.data"));
  ASSERT_TRUE(stdfs::exists(LostFound() / "garbage.data"));
  std::ifstream kept(LostFound() / "garbage.data");
  std::string text((std::istreambuf_iterator<char>(kept)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "bytes a person may want back");
  EXPECT_TRUE(stdfs::exists(Files() / "good.data"));  // Untouched.

  // A second scan finds the same (the quarantined ones are out of the way).
  EXPECT_EQ(Ids(spool->Scan()), std::vector<std::string>{"good"});
}

TEST_F(SpoolTest, ScanRemovesDataWithoutARecordAndLeftoverTemporaryRecords) {
  auto spool = MustOpen();
  ASSERT_NE(spool, nullptr);
  auto orphan = spool->CreateData();
  ASSERT_TRUE(orphan.ok());
  ::close(orphan->second);
  ASSERT_TRUE(stdfs::exists(spool->DataPath(orphan->first)));

  auto kept = spool->CreateData();
  ASSERT_TRUE(kept.ok());
  ::close(kept->second);
  SpoolRecord r;
  r.id = kept->first;
  r.key = "kept";
  ASSERT_TRUE(spool->WriteRecord(r).ok());
  WriteText(Files() / (kept->first + ".json.tmp"), "{ half a replacement");

  const std::vector<SpoolRecord> records = spool->Scan();
  EXPECT_EQ(Ids(records), std::vector<std::string>{kept->first});
  EXPECT_FALSE(stdfs::exists(spool->DataPath(orphan->first)));
  EXPECT_TRUE(stdfs::exists(spool->DataPath(kept->first)));
  EXPECT_FALSE(stdfs::exists(Files() / (kept->first + ".json.tmp")));
  EXPECT_TRUE(stdfs::is_empty(LostFound()));
}

TEST_F(SpoolTest, RemoveRecordKeepsTheDataAndRemoveDropsBoth) {
  auto spool = MustOpen();
  ASSERT_NE(spool, nullptr);
  auto a = spool->CreateData();
  auto b = spool->CreateData();
  ASSERT_TRUE(a.ok() && b.ok());
  ::close(a->second);
  ::close(b->second);
  for (const auto& id : {a->first, b->first}) {
    SpoolRecord r;
    r.id = id;
    r.key = "k-" + id;
    ASSERT_TRUE(spool->WriteRecord(r).ok());
  }

  spool->RemoveRecord(a->first);
  EXPECT_FALSE(stdfs::exists(Files() / (a->first + ".json")));
  EXPECT_TRUE(stdfs::exists(spool->DataPath(a->first)));

  spool->Remove(b->first);
  EXPECT_FALSE(stdfs::exists(Files() / (b->first + ".json")));
  EXPECT_FALSE(stdfs::exists(spool->DataPath(b->first)));

  EXPECT_TRUE(spool->Scan().empty());
  // Removing what is already gone is harmless.
  spool->Remove(b->first);
  spool->RemoveRecord(a->first);
}

TEST_F(SpoolTest, QuarantineMovesDataAndRecordToLostAndFound) {
  auto spool = MustOpen();
  ASSERT_NE(spool, nullptr);
  auto a = spool->CreateData();
  ASSERT_TRUE(a.ok());
  ::close(a->second);
  SpoolRecord r;
  r.id = a->first;
  r.key = "k";
  ASSERT_TRUE(spool->WriteRecord(r).ok());
  spool->Quarantine(a->first, "test");
  EXPECT_TRUE(stdfs::exists(LostFound() / (a->first + ".data")));
  EXPECT_TRUE(stdfs::exists(LostFound() / (a->first + ".json")));
  EXPECT_TRUE(spool->Scan().empty());
}

}  // namespace
}  // namespace bucketfs::cache
