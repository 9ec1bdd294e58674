#include "fuse/filesystem.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <condition_variable>

#include <memory>
#include <mutex>
#include <future>
#include <random>
#include <string>
#include <vector>

#include "cache/block_cache.h"
#include "cache/memory_budget.h"
#include "common/clock.h"
#include "common/task_pool.h"
#include "s3/fake_client.h"
#include "s3/fault_client.h"
#include "s3/forwarding_client.h"
#include "tests/support/eventually.h"

namespace bucketfs::fs {
namespace {

using namespace std::chrono_literals;
using bucketfs::testing::Eventually;

constexpr uint64_t kBlock = 64 * 1024;
constexpr Duration kTtl = 60s;

std::string Body(size_t n, uint64_t seed = 1) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

struct Entry {
  std::string name;
  Attributes attr;
  uint64_t next_offset = 0;
  bool counts_lookup = false;
};

class FilesystemTest : public ::testing::Test {
 protected:
  FilesystemTest()
      : budget_(64 * kBlock, clock_),
        cache_(budget_, CacheOptions(&clock_)),
        pool_(std::make_unique<TaskPool>("fs-test", 2, 64)) {
    FilesystemOptions o;
    o.defaults.uid = 1000;
    o.defaults.gid = 1000;
    o.metadata_ttl = kTtl;
    o.read_ahead.initial_window = kBlock;
    o.read_ahead.max_window = 4 * kBlock;
    o.read_ahead.timeout = 30s;
    o.mount_time = clock_.WallNow();
    o.generation = 42;
    Remake(server_, o);
  }
  // A filesystem with other options, or on another client (which must outlive it), in place
  // of the fixture's.
  void Remake(s3::ObjectClient& client, const FilesystemOptions& o) {
    fs_.reset();
    fs_ = std::make_unique<Filesystem>(
        client, cache::ReadContext{&client, &cache_, &budget_, pool_.get(), &clock_}, o);
  }
  ~FilesystemTest() override {
    fs_.reset();
    pool_.reset();  // Drains prefetches before the cache goes.
  }

  static cache::BlockCacheOptions CacheOptions(Clock* clock) {
    cache::BlockCacheOptions o;
    o.capacity_bytes = 32 * kBlock;
    o.block_size = kBlock;
    o.clock = clock;
    return o;
  }

  InodeId MustLookup(InodeId parent, const std::string& name) {
    auto r = fs_->Lookup(parent, name);
    EXPECT_TRUE(r.ok()) << name << ": " << r.status().ToString();
    return r.ok() ? r->attr.ino : 0;
  }

  std::vector<Entry> ReadDirAll(uint64_t handle, uint64_t offset, bool plus,
                                size_t accept = SIZE_MAX) {
    std::vector<Entry> out;
    Status st = fs_->ReadDir(handle, offset, plus, [&](const DirEntryView& v) {
      if (out.size() >= accept) return false;
      out.push_back(Entry{std::string(v.name), v.attr, v.next_offset, v.counts_lookup});
      return true;
    });
    EXPECT_TRUE(st.ok()) << st.ToString();
    return out;
  }

  static std::vector<std::string> Names(const std::vector<Entry>& v) {
    std::vector<std::string> n;
    for (const auto& e : v) n.push_back(e.name);
    return n;
  }

  std::string MustRead(uint64_t handle, uint64_t offset, size_t size) {
    auto r = fs_->Read(handle, offset, size);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? r->ToString() : "<error>";
  }

  FakeClock clock_;
  s3::FakeObjectClient server_{clock_};
  cache::MemoryBudget budget_;
  cache::BlockCache cache_;
  std::unique_ptr<TaskPool> pool_;
  std::unique_ptr<Filesystem> fs_;
};

// --- Lookup --------------------------------------------------------------------------------

TEST_F(FilesystemTest, LookupOfFileDirectoryAndMissingName) {
  server_.PutDirect("a.txt", "hello");
  server_.PutDirect("d/x", "inner");
  server_.PutDirect(".bucketfs/lease", "lease");

  auto file = fs_->Lookup(kRootInode, "a.txt");
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ(file->attr.type, FileType::kRegular);
  EXPECT_EQ(file->attr.size, 5u);
  EXPECT_NE(file->attr.ino, kRootInode);
  EXPECT_EQ(file->attr.uid, 1000u);
  EXPECT_EQ(file->generation, 42u);
  EXPECT_EQ(file->ttl, kTtl);

  auto dir = fs_->Lookup(kRootInode, "d");
  ASSERT_TRUE(dir.ok()) << dir.status().ToString();
  EXPECT_EQ(dir->attr.type, FileType::kDirectory);
  auto inner = fs_->Lookup(dir->attr.ino, "x");
  ASSERT_TRUE(inner.ok());
  EXPECT_EQ(inner->attr.size, 5u);

  auto missing = fs_->Lookup(kRootInode, "nope");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), ErrorCode::kNotFound);

  auto reserved = fs_->Lookup(kRootInode, ".bucketfs");
  ASSERT_FALSE(reserved.ok());
  EXPECT_EQ(reserved.status().code(), ErrorCode::kNotFound);

  auto under_file = fs_->Lookup(file->attr.ino, "x");
  ASSERT_FALSE(under_file.ok());
  EXPECT_EQ(under_file.status().code(), ErrorCode::kNotDirectory);

  auto too_long = fs_->Lookup(kRootInode, std::string(256, 'n'));
  ASSERT_FALSE(too_long.ok());
  EXPECT_EQ(too_long.status().code(), ErrorCode::kNameTooLong);

  auto dotdot = fs_->Lookup(kRootInode, "..");
  ASSERT_FALSE(dotdot.ok());
  EXPECT_EQ(dotdot.status().code(), ErrorCode::kNotFound);
}

TEST_F(FilesystemTest, LookupOutsideAListingIsOneHeadAndOneSingleKeyList) {
  server_.PutDirect("f", "x");
  server_.ResetCounters();
  MustLookup(kRootInode, "f");
  EXPECT_EQ(server_.calls(s3::Op::kHead), 1u);
  EXPECT_EQ(server_.calls(s3::Op::kList), 1u);
  EXPECT_EQ(server_.total_calls(), 2u);
  EXPECT_EQ(fs_->Stats().probes, 1u);
  // Fresh attributes serve the next lookup without a call.
  MustLookup(kRootInode, "f");
  EXPECT_EQ(server_.total_calls(), 2u);
}

// An answer from cached attributes gives the kernel what is left of their TTL, not a new
// one: a change in the bucket is seen within one TTL, not two.
TEST_F(FilesystemTest, ACachedAnswerGivesTheKernelOnlyWhatIsLeftOfTheTtl) {
  server_.PutDirect("f", "x");
  server_.PutDirect("d/g", "y");
  auto first = fs_->Lookup(kRootInode, "f");
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->ttl, kTtl);
  clock_.Advance(20s);
  auto again = fs_->Lookup(kRootInode, "f");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->ttl, kTtl - 20s);
  auto dir = fs_->Lookup(kRootInode, "d");
  ASSERT_TRUE(dir.ok());
  EXPECT_EQ(dir->ttl, kTtl);

  auto dh = fs_->OpenDir(kRootInode);  // Lists the root: "f" is known from 20 s ago.
  ASSERT_TRUE(dh.ok());
  clock_.Advance(10s);
  bool seen = false;
  ASSERT_TRUE(fs_->ReadDir(*dh, 0, /*plus=*/true, [&](const DirEntryView& e) {
    if (e.name == "f") {
      seen = true;
      // What the mount knows of it is at least 10 s old (the listing's age; the HEAD's is
      // 30 s): at most 50 s left.
      EXPECT_LE(e.ttl, kTtl - 10s);
      EXPECT_GT(e.ttl, 0s);
    }
    return true;
  }).ok());
  EXPECT_TRUE(seen);
  fs_->ReleaseDir(*dh);
}

// Every read-ahead thread busy (a dataset being read): a lookup's requests do not queue
// behind them.
TEST_F(FilesystemTest, ALookupDoesNotWaitForTheReadAheadThreads) {
  server_.PutDirect("d/f", "x");
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  for (int i = 0; i < 2; ++i) {  // The fixture's pool has two threads.
    pool_->Submit([&] {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return release; });
    });
  }
  auto lookup = std::async(std::launch::async, [&] { return fs_->Lookup(kRootInode, "d"); });
  const bool answered = lookup.wait_for(std::chrono::seconds(10)) == std::future_status::ready;
  {
    std::lock_guard lock(mu);
    release = true;
  }
  cv.notify_all();
  EXPECT_TRUE(answered) << "the lookup waited for the busy read-ahead threads";
  auto r = lookup.get();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->attr.type, FileType::kDirectory);
}

// What a listing says is as old as the listing: a lookup answered from a 50 s old listing
// is trusted (and given to the kernel) for the 10 s the listing has left, not a new TTL.
TEST_F(FilesystemTest, AnAnswerFromAListingLastsOnlyAsLongAsTheListing) {
  server_.PutDirect("a", "1");
  auto dh = fs_->OpenDir(kRootInode);
  ASSERT_TRUE(dh.ok());
  fs_->ReleaseDir(*dh);
  clock_.Advance(50s);
  server_.ResetCounters();
  auto r = fs_->Lookup(kRootInode, "a");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->ttl, 10s);
  EXPECT_EQ(server_.total_calls(), 0u) << "answered from the listing";
  clock_.Advance(11s);
  auto attr = fs_->GetAttr(r->attr.ino);
  ASSERT_TRUE(attr.ok()) << attr.status().ToString();
  EXPECT_EQ(server_.calls(s3::Op::kHead), 1u) << "the listing's word has run out: asked again";
}

TEST_F(FilesystemTest, MarkerOnlyDirectoryIsFoundByLookup) {
  server_.PutDirect("m/", "");
  auto m = fs_->Lookup(kRootInode, "m");
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->attr.type, FileType::kDirectory);
}

TEST_F(FilesystemTest, NegativeEntryLastsUntilTheTtlPasses) {
  auto miss = fs_->Lookup(kRootInode, "late");
  ASSERT_FALSE(miss.ok());
  EXPECT_EQ(miss.status().code(), ErrorCode::kNotFound);

  server_.PutDirect("late", "now here");
  server_.ResetCounters();
  clock_.Advance(kTtl - 1s);
  miss = fs_->Lookup(kRootInode, "late");
  ASSERT_FALSE(miss.ok());
  EXPECT_EQ(miss.status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(server_.total_calls(), 0u) << "a negative hit asks nobody";
  EXPECT_EQ(fs_->Stats().negative_hits, 1u);

  clock_.Advance(2s);
  auto hit = fs_->Lookup(kRootInode, "late");
  ASSERT_TRUE(hit.ok()) << hit.status().ToString();
  EXPECT_EQ(hit->attr.size, 8u);
}

TEST_F(FilesystemTest, LookupsAreServedFromAFreshListingWithoutCalls) {
  for (const char* k : {"a", "b", "c", "sub/x"}) server_.PutDirect(k, "data");
  auto dh = fs_->OpenDir(kRootInode);
  ASSERT_TRUE(dh.ok()) << dh.status().ToString();
  EXPECT_EQ(fs_->Stats().listings, 1u);
  server_.ResetCounters();

  for (const char* n : {"a", "b", "c"}) {
    auto r = fs_->Lookup(kRootInode, n);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->attr.type, FileType::kRegular);
    EXPECT_EQ(r->attr.size, 4u);
  }
  auto sub = fs_->Lookup(kRootInode, "sub");
  ASSERT_TRUE(sub.ok());
  EXPECT_EQ(sub->attr.type, FileType::kDirectory);
  auto missing = fs_->Lookup(kRootInode, "zzz");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), ErrorCode::kNotFound);

  EXPECT_EQ(server_.total_calls(), 0u);
  EXPECT_EQ(fs_->Stats().lookups_from_listing, 5u);
  EXPECT_EQ(fs_->Stats().probes, 0u);
  fs_->ReleaseDir(*dh);

  // Once the listing is stale, a lookup asks the server again.
  clock_.Advance(kTtl + 1s);
  MustLookup(kRootInode, "a");
  EXPECT_GT(server_.total_calls(), 0u);
}

// --- ReadDir -------------------------------------------------------------------------------

TEST_F(FilesystemTest, ReadDirOffsetsAndResuming) {
  for (const char* k : {"a", "b", "c", "d/x"}) server_.PutDirect(k, "1");
  auto dh = fs_->OpenDir(kRootInode);
  ASSERT_TRUE(dh.ok());

  std::vector<Entry> all = ReadDirAll(*dh, 0, false);
  EXPECT_EQ(Names(all), (std::vector<std::string>{".", "..", "a", "b", "c", "d"}));
  for (size_t i = 0; i < all.size(); ++i) {
    EXPECT_EQ(all[i].next_offset, i + 1) << all[i].name;
    EXPECT_FALSE(all[i].counts_lookup);
  }
  EXPECT_EQ(all[0].attr.ino, kRootInode);
  EXPECT_EQ(all[0].attr.type, FileType::kDirectory);
  EXPECT_EQ(all[5].attr.type, FileType::kDirectory);
  EXPECT_EQ(all[2].attr.type, FileType::kRegular);
  EXPECT_EQ(fs_->Stats().inodes, 1u) << "plain readdir enters no inodes";

  // A filler that takes three, then resume from the last accepted offset.
  std::vector<Entry> first = ReadDirAll(*dh, 0, false, 3);
  ASSERT_EQ(first.size(), 3u);
  std::vector<Entry> rest = ReadDirAll(*dh, first.back().next_offset, false);
  EXPECT_EQ(Names(rest), (std::vector<std::string>{"b", "c", "d"}));
  EXPECT_EQ(Names(ReadDirAll(*dh, 4, false)), (std::vector<std::string>{"c", "d"}));
  EXPECT_TRUE(ReadDirAll(*dh, 6, false).empty());
  EXPECT_TRUE(ReadDirAll(*dh, 100, false).empty());

  // Plus: the same names and offsets, with real inode numbers.
  std::vector<Entry> plus = ReadDirAll(*dh, 0, true);
  EXPECT_EQ(Names(plus), Names(all));
  for (size_t i = 0; i < plus.size(); ++i) EXPECT_EQ(plus[i].next_offset, i + 1);
  EXPECT_FALSE(plus[0].counts_lookup);
  EXPECT_FALSE(plus[1].counts_lookup);
  for (size_t i = 2; i < plus.size(); ++i) {
    EXPECT_TRUE(plus[i].counts_lookup) << plus[i].name;
    EXPECT_NE(plus[i].attr.ino, kRootInode);
    EXPECT_EQ(plus[i].attr.ino >> 63, 0u) << "a real inode, not a placeholder";
  }
  EXPECT_EQ(Names(ReadDirAll(*dh, 3, true)), (std::vector<std::string>{"b", "c", "d"}));
  fs_->ReleaseDir(*dh);

  Status st = fs_->ReadDir(*dh, 0, false, [](const DirEntryView&) { return true; });
  EXPECT_FALSE(st.ok()) << "a released handle is unknown";
}

TEST_F(FilesystemTest, ReadDirPlusCountsLookupsOnlyForAcceptedEntries) {
  for (const char* k : {"f0", "f1", "f2", "f3"}) server_.PutDirect(k, "1");
  auto dh = fs_->OpenDir(kRootInode);
  ASSERT_TRUE(dh.ok());
  // Accept ".", "..", f0 and f1; refuse f2 (the third real entry).
  std::vector<Entry> got = ReadDirAll(*dh, 0, true, 4);
  ASSERT_EQ(Names(got), (std::vector<std::string>{".", "..", "f0", "f1"}));
  EXPECT_EQ(fs_->Stats().inodes, 3u) << "root, f0, f1; the refused f2 is not kept";

  // One lookup each: a single FORGET of 1 drops each of them.
  fs_->Forget(got[2].attr.ino, 1);
  EXPECT_EQ(fs_->Stats().inodes, 2u);
  fs_->Forget(got[3].attr.ino, 1);
  EXPECT_EQ(fs_->Stats().inodes, 1u);

  // Resuming at f2 and taking the rest counts those.
  std::vector<Entry> rest = ReadDirAll(*dh, got.back().next_offset, true);
  EXPECT_EQ(Names(rest), (std::vector<std::string>{"f2", "f3"}));
  EXPECT_EQ(fs_->Stats().inodes, 3u);
  for (const auto& e : rest) fs_->Forget(e.attr.ino, 1);
  EXPECT_EQ(fs_->Stats().inodes, 1u);
  fs_->ReleaseDir(*dh);
}

TEST_F(FilesystemTest, OpenDirOfAVanishedDirectoryIsStale) {
  server_.PutDirect("gone/x", "1");
  InodeId d = MustLookup(kRootInode, "gone");
  server_.DeleteDirect("gone/x");
  clock_.Advance(kTtl + 1s);
  auto dh = fs_->OpenDir(d);
  ASSERT_FALSE(dh.ok());
  EXPECT_EQ(dh.status().code(), ErrorCode::kStale);
}

// --- Files ---------------------------------------------------------------------------------

TEST_F(FilesystemTest, OpenReadReleaseAreByteExact) {
  const std::string body = Body(3 * kBlock + 123);
  server_.PutDirect("dir/data.bin", body);
  InodeId dir = MustLookup(kRootInode, "dir");
  InodeId ino = MustLookup(dir, "data.bin");
  auto open = fs_->Open(ino, O_RDONLY);
  ASSERT_TRUE(open.ok()) << open.status().ToString();
  EXPECT_EQ(fs_->Stats().open_files, 1u);

  std::string all;
  for (uint64_t off = 0; off < body.size(); off += 40000) all += MustRead(open->handle, off, 40000);
  EXPECT_EQ(all, body);
  EXPECT_EQ(MustRead(open->handle, kBlock - 1, 2), body.substr(kBlock - 1, 2));
  EXPECT_EQ(MustRead(open->handle, body.size() - 5, 100), body.substr(body.size() - 5));
  EXPECT_EQ(MustRead(open->handle, body.size(), 100), "");
  EXPECT_EQ(MustRead(open->handle, body.size() + 1000, 100), "");

  fs_->Release(open->handle);
  EXPECT_EQ(fs_->Stats().open_files, 0u);
  auto after = fs_->Read(open->handle, 0, 10);
  ASSERT_FALSE(after.ok());
  EXPECT_EQ(after.status().code(), ErrorCode::kInvalidArgument);
}

TEST_F(FilesystemTest, OpenForWritingIsReadOnlyAndDirectoriesCannotBeOpened) {
  server_.PutDirect("f", "x");
  server_.PutDirect("d/y", "x");
  InodeId f = MustLookup(kRootInode, "f");
  for (int flags : {O_WRONLY, O_RDWR, O_RDONLY | O_TRUNC, O_WRONLY | O_APPEND}) {
    auto r = fs_->Open(f, flags);
    ASSERT_FALSE(r.ok()) << flags;
    EXPECT_EQ(r.status().code(), ErrorCode::kReadOnly) << flags;
  }
  EXPECT_EQ(fs_->Stats().open_files, 0u);
  InodeId d = MustLookup(kRootInode, "d");
  auto r = fs_->Open(d, O_RDONLY);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kIsDirectory);
}

TEST_F(FilesystemTest, KeepCacheOnlyWhenReopeningTheSameVersion) {
  server_.PutDirect("f", "version one");
  InodeId ino = MustLookup(kRootInode, "f");

  auto o1 = fs_->Open(ino, O_RDONLY);
  ASSERT_TRUE(o1.ok());
  EXPECT_FALSE(o1->keep_cache) << "first open";
  fs_->Release(o1->handle);

  auto o2 = fs_->Open(ino, O_RDONLY);
  ASSERT_TRUE(o2.ok());
  EXPECT_TRUE(o2->keep_cache) << "same ETag as the previous open";
  fs_->Release(o2->handle);

  // Unchanged after the TTL (re-HEAD): still the same version.
  clock_.Advance(kTtl + 1s);
  auto o3 = fs_->Open(ino, O_RDONLY);
  ASSERT_TRUE(o3.ok());
  EXPECT_TRUE(o3->keep_cache);
  fs_->Release(o3->handle);

  server_.PutDirect("f", "version two, longer");
  clock_.Advance(kTtl + 1s);
  auto o4 = fs_->Open(ino, O_RDONLY);
  ASSERT_TRUE(o4.ok()) << o4.status().ToString();
  EXPECT_FALSE(o4->keep_cache) << "the object changed";
  EXPECT_EQ(MustRead(o4->handle, 0, 100), "version two, longer");
  fs_->Release(o4->handle);
}

TEST_F(FilesystemTest, RemoteReplacementWhileOpenIsStaleAndTheNextOpenReadsTheNewBytes) {
  const std::string v1 = Body(2 * kBlock, 1);
  const std::string v2 = Body(kBlock + 7, 2);
  server_.PutDirect("f", v1);
  InodeId ino = MustLookup(kRootInode, "f");
  auto o1 = fs_->Open(ino, O_RDONLY);
  ASSERT_TRUE(o1.ok());
  server_.PutDirect("f", v2);

  auto r = fs_->Read(o1->handle, 0, 4096);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kStale) << r.status().ToString();
  r = fs_->Read(o1->handle, kBlock + 100, 10);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kStale);
  fs_->Release(o1->handle);

  // No TTL has passed: the stale read expired the attributes, so Open asks the server.
  auto o2 = fs_->Open(ino, O_RDONLY);
  ASSERT_TRUE(o2.ok()) << o2.status().ToString();
  EXPECT_FALSE(o2->keep_cache);
  std::string all = MustRead(o2->handle, 0, 4 * kBlock);
  EXPECT_EQ(all, v2);
  auto attr = fs_->GetAttr(ino);
  ASSERT_TRUE(attr.ok());
  EXPECT_EQ(attr->attr.size, v2.size());
  fs_->Release(o2->handle);
}

TEST_F(FilesystemTest, AHandleNeverFollowsAVersionFoundOnTheServerEvenOnceItsNodeHoldsIt) {
  const std::string v1 = Body(8 * kBlock, 1);
  const std::string v2 = Body(8 * kBlock, 2);
  server_.PutDirect("f", v1);
  const InodeId ino = MustLookup(kRootInode, "f");
  auto opened = fs_->Open(ino, O_RDONLY);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EXPECT_EQ(MustRead(opened->handle, 0, 4096), v1.substr(0, 4096));

  // Another client replaces it; a stat after the TTL puts v2's ETag into the node, fresh.
  server_.PutDirect("f", v2);
  clock_.Advance(kTtl + 1s);
  ASSERT_TRUE(fs_->GetAttr(ino).ok());

  // The handle read v1: it must not go on with v2's bytes as if nothing happened.
  auto read = fs_->Read(opened->handle, 7 * kBlock, 4096);
  ASSERT_FALSE(read.ok()) << "read v2's bytes through a handle that read v1";
  EXPECT_EQ(read.status().code(), ErrorCode::kStale) << read.status().ToString();
  fs_->Release(opened->handle);
}

// The old version's blocks are still cached when another open finds the object replaced:
// the old handle must not serve them (they would land in the kernel's pages of the inode,
// which the new version's readers share).
TEST_F(FilesystemTest, AnOldHandleIsStaleOnceAnotherOpenFoundANewVersionEvenWhereItsBlocksAreCached) {
  const std::string v1 = Body(2 * kBlock, 1);
  const std::string v2 = Body(3 * kBlock, 2);
  server_.PutDirect("f", v1);
  const InodeId ino = MustLookup(kRootInode, "f");
  auto old_handle = fs_->Open(ino, O_RDONLY);
  ASSERT_TRUE(old_handle.ok()) << old_handle.status().ToString();
  EXPECT_EQ(MustRead(old_handle->handle, 0, 2 * kBlock), v1);  // Both blocks cached now.

  server_.PutDirect("f", v2);
  clock_.Advance(kTtl + 1s);
  auto new_handle = fs_->Open(ino, O_RDONLY);
  ASSERT_TRUE(new_handle.ok()) << new_handle.status().ToString();
  EXPECT_FALSE(new_handle->keep_cache);

  auto read = fs_->Read(old_handle->handle, 0, 4096);
  ASSERT_FALSE(read.ok()) << "served v1's cached bytes after an open found v2";
  EXPECT_EQ(read.status().code(), ErrorCode::kStale) << read.status().ToString();
  EXPECT_EQ(MustRead(new_handle->handle, 0, 3 * kBlock), v2);
  fs_->Release(old_handle->handle);
  fs_->Release(new_handle->handle);
}

// An open that finds a new version drops the kernel's attributes before it answers (its
// size would stop reads at the old length), with no page lock needed: attributes only.
TEST_F(FilesystemTest, AnOpenOfANewVersionDropsTheKernelsAttributesBeforeItAnswers) {
  std::mutex mu;
  std::vector<std::pair<InodeId, bool>> invalidated;
  fs_->SetInvalidator([&](InodeId ino, bool pages) {
    std::lock_guard lock(mu);
    invalidated.emplace_back(ino, pages);
  });
  server_.PutDirect("f", Body(kBlock, 1));
  const InodeId ino = MustLookup(kRootInode, "f");
  auto first = fs_->Open(ino, O_RDONLY);
  ASSERT_TRUE(first.ok());
  fs_->Release(first->handle);
  {
    std::lock_guard lock(mu);
    EXPECT_TRUE(invalidated.empty()) << "the first open has nothing to drop";
  }
  server_.PutDirect("f", Body(2 * kBlock, 2));
  clock_.Advance(kTtl + 1s);
  auto second = fs_->Open(ino, O_RDONLY);
  ASSERT_TRUE(second.ok());
  {
    std::lock_guard lock(mu);
    EXPECT_NE(std::find(invalidated.begin(), invalidated.end(), std::make_pair(ino, false)),
              invalidated.end())
        << "no attribute invalidation before the OPEN answered";
  }
  fs_->Release(second->handle);
  // The page invalidation runs on the filesystem's thread: done before `invalidated` goes.
  fs_.reset();
  pool_.reset();
}

// The page invalidation of an object replaced remotely is never dropped for want of room:
// here there is no I/O pool at all (it used to run there, and was dropped when the pool's
// queue was full).
TEST_F(FilesystemTest, APageInvalidationIsNotDroppedForWantOfPoolRoom) {
  pool_.reset();
  FilesystemOptions o = fs_->options();
  fs_.reset();
  fs_ = std::make_unique<Filesystem>(
      server_, cache::ReadContext{&server_, &cache_, &budget_, nullptr, &clock_}, o);
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::pair<InodeId, bool>> invalidated;
  fs_->SetInvalidator([&](InodeId ino, bool pages) {
    std::lock_guard lock(mu);
    invalidated.emplace_back(ino, pages);
    cv.notify_all();
  });
  server_.PutDirect("f", Body(kBlock, 1));
  const InodeId ino = MustLookup(kRootInode, "f");
  auto first = fs_->Open(ino, O_RDONLY);
  ASSERT_TRUE(first.ok());
  fs_->Release(first->handle);
  server_.PutDirect("f", Body(2 * kBlock, 2));
  clock_.Advance(kTtl + 1s);
  auto second = fs_->Open(ino, O_RDONLY);
  ASSERT_TRUE(second.ok());
  fs_->Release(second->handle);
  {
    std::unique_lock lock(mu);
    EXPECT_TRUE(cv.wait_for(lock, 5s, [&] {
      return std::find(invalidated.begin(), invalidated.end(), std::make_pair(ino, true)) !=
             invalidated.end();
    })) << "the old version's pages were never invalidated";
  }
  fs_.reset();
}

// GETATTR answers from the cached node for only as long as the node stays fresh, so the
// kernel asks again when this mount would.
TEST_F(FilesystemTest, GetAttrFromTheCacheGivesTheKernelOnlyTheTimeLeft) {
  server_.PutDirect("f", "x");
  const InodeId ino = MustLookup(kRootInode, "f");
  clock_.Advance(kTtl - 10s);
  auto attr = fs_->GetAttr(ino);
  ASSERT_TRUE(attr.ok()) << attr.status().ToString();
  EXPECT_EQ(attr->ttl, Duration(10s));
  clock_.Advance(11s);
  attr = fs_->GetAttr(ino);  // Refreshed by a HEAD: a whole TTL again.
  ASSERT_TRUE(attr.ok()) << attr.status().ToString();
  EXPECT_EQ(attr->ttl, Duration(kTtl));
}

// A server that sends no ETags (HEAD and listings).
class EtagLessClient : public s3::ForwardingClient {
 public:
  using ForwardingClient::ForwardingClient;
  Result<s3::ObjectInfo> Head(const s3::HeadRequest& req, const s3::CallOptions& opts) override {
    auto r = inner().Head(req, opts);
    if (r.ok()) r->etag.clear();
    return r;
  }
  Result<s3::ListPage> List(const s3::ListRequest& req, const s3::CallOptions& opts) override {
    auto r = inner().List(req, opts);
    if (r.ok()) {
      for (auto& o : r->objects) o.etag.clear();
    }
    return r;
  }
};

TEST_F(FilesystemTest, AnObjectWithoutAnEtagIsReadAfreshByEveryOpen) {
  EtagLessClient client(server_);
  FilesystemOptions o;
  o.metadata_ttl = kTtl;
  o.read_ahead.initial_window = kBlock;
  o.read_ahead.max_window = 4 * kBlock;
  o.mount_time = clock_.WallNow();
  Remake(client, o);

  const std::string v1 = Body(3 * kBlock, 1), v2 = Body(3 * kBlock, 2);
  server_.PutDirect("f", v1);
  const InodeId ino = MustLookup(kRootInode, "f");
  auto first = fs_->Open(ino, O_RDONLY);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_TRUE(MustRead(first->handle, 0, v1.size()) == v1);
  fs_->Release(first->handle);

  server_.PutDirect("f", v2);  // Same size; nothing tells the versions apart.
  clock_.Advance(kTtl + 1s);
  auto second = fs_->Open(ino, O_RDONLY);
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_FALSE(second->keep_cache) << "the kernel's pages may be the old version's";
  EXPECT_TRUE(MustRead(second->handle, 0, v2.size()) == v2) << "not the old version's blocks";
  fs_->Release(second->handle);
}

// A directory kept open while another client replaces it with a file of the same name:
// reading the open handle on lists nothing (its node has no path any more; the empty path
// is the root's, and its entries must not be entered there).
TEST_F(FilesystemTest, AnOpenDirectoryReplacedByAFileListsNothingAndEntersNothingAtTheRoot) {
  server_.PutDirect("d/a", "under d");
  const InodeId d = MustLookup(kRootInode, "d");
  auto dh = fs_->OpenDir(d);
  ASSERT_TRUE(dh.ok()) << dh.status().ToString();
  ASSERT_EQ(Names(ReadDirAll(*dh, 0, /*plus=*/true, 2)), (std::vector<std::string>{".", ".."}));

  server_.DeleteDirect("d/a");
  server_.PutDirect("d", "now a file");
  clock_.Advance(kTtl + 1s);
  auto file = fs_->Lookup(kRootInode, "d");
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  ASSERT_EQ(file->attr.type, FileType::kRegular);

  EXPECT_EQ(Names(ReadDirAll(*dh, 2, /*plus=*/true)), std::vector<std::string>{});
  EXPECT_EQ(fs_->Lookup(kRootInode, "a").status().code(), ErrorCode::kNotFound);
  fs_->ReleaseDir(*dh);
}

// rewinddir (READDIR from offset 0 again) on a handle whose snapshot is older than the TTL
// shows what the directory holds now, as POSIX asks; a first pass, or a rewind within the
// TTL, lists nothing again.
TEST_F(FilesystemTest, ARewindAfterTheTtlShowsTheDirectoryAsItIsNow) {
  server_.PutDirect("a", "1");
  server_.PutDirect("b", "2");
  auto dh = fs_->OpenDir(kRootInode);
  ASSERT_TRUE(dh.ok()) << dh.status().ToString();
  server_.ResetCounters();
  EXPECT_EQ(Names(ReadDirAll(*dh, 0, /*plus=*/false)),
            (std::vector<std::string>{".", "..", "a", "b"}));
  server_.PutDirect("c", "3");
  server_.DeleteDirect("a");
  clock_.Advance(kTtl - 1s);
  EXPECT_EQ(Names(ReadDirAll(*dh, 0, /*plus=*/false)),
            (std::vector<std::string>{".", "..", "a", "b"}));
  EXPECT_EQ(server_.calls(s3::Op::kList), 0u) << "within the TTL the snapshot serves";

  clock_.Advance(2s);
  EXPECT_EQ(Names(ReadDirAll(*dh, 0, /*plus=*/true)),
            (std::vector<std::string>{".", "..", "b", "c"}));
  EXPECT_EQ(server_.calls(s3::Op::kList), 1u);
  // Reading on from an offset keeps that pass's snapshot.
  EXPECT_EQ(Names(ReadDirAll(*dh, 3, /*plus=*/false)), (std::vector<std::string>{"c"}));
  fs_->ReleaseDir(*dh);
}

// Counts the pages of listings of one directory (not the one-key lists of lookups).
class DirectoryPageCounter : public s3::ForwardingClient {
 public:
  DirectoryPageCounter(s3::ObjectClient& inner, std::string prefix)
      : ForwardingClient(inner), prefix_(std::move(prefix)) {}
  Result<s3::ListPage> List(const s3::ListRequest& req, const s3::CallOptions& opts) override {
    if (req.prefix == prefix_ && req.max_keys > 1) ++pages;
    return inner().List(req, opts);
  }
  int pages = 0;

 private:
  std::string prefix_;
};

// HEADs of keys under `prefix` wait for a permit each; every other call goes through.
class GatedHeadClient : public s3::ForwardingClient {
 public:
  GatedHeadClient(s3::ObjectClient& inner, std::string prefix)
      : ForwardingClient(inner), prefix_(std::move(prefix)) {}
  Result<s3::ObjectInfo> Head(const s3::HeadRequest& req, const s3::CallOptions& opts) override {
    if (req.key.compare(0, prefix_.size(), prefix_) != 0) {
      std::lock_guard lock(mu_);
      ungated_.push_back(req.key);
    } else {
      std::unique_lock lock(mu_);
      ++started_;
      changed_.notify_all();
      changed_.wait(lock, [&] { return permits_ > 0; });
      --permits_;
    }
    return inner().Head(req, opts);
  }
  void Permit(int n) {
    std::lock_guard lock(mu_);
    permits_ += n;
    changed_.notify_all();
  }
  int started() {
    std::lock_guard lock(mu_);
    return started_;
  }
  bool HeadOf(const std::string& key) {
    std::lock_guard lock(mu_);
    return std::find(ungated_.begin(), ungated_.end(), key) != ungated_.end();
  }
  Result<s3::ListPage> List(const s3::ListRequest& req, const s3::CallOptions& opts) override {
    {
      std::lock_guard lock(mu_);
      listed_.push_back(req.prefix);
    }
    return inner().List(req, opts);
  }
  bool Listed(const std::string& prefix) {
    std::lock_guard lock(mu_);
    return std::find(listed_.begin(), listed_.end(), prefix) != listed_.end();
  }

 private:
  const std::string prefix_;
  std::mutex mu_;
  std::condition_variable changed_;
  int permits_ = 0;
  int started_ = 0;
  std::vector<std::string> ungated_;
  std::vector<std::string> listed_;
};

// A lookup made while an `ls` of a directory of small files has its type checks (a HEAD
// each) queued on the metadata pool goes before them: it waits for one pool thread to be
// free, not for the whole queue.
TEST_F(FilesystemTest, ALookupGoesBeforeTheTypeChecksOfAListingInFlight) {
  constexpr int kSmall = 200;  // Under the 256 checks of one listing; more than the threads.
  for (int i = 0; i < kSmall; ++i) server_.PutDirect(fmt::format("many/{:03}", i), "x");
  server_.PutDirect("other/file", "y");
  GatedHeadClient gated(server_, "many/");
  FilesystemOptions o;
  o.metadata_ttl = kTtl;
  o.mount_time = clock_.WallNow();
  Remake(gated, o);
  const InodeId many = MustLookup(kRootInode, "many");

  auto listed = std::async(std::launch::async, [&] {
    auto dir = fs_->OpenDir(many);
    if (!dir.ok()) return dir.status();
    Status read = fs_->ReadDir(*dir, 0, /*plus=*/true, [](const DirEntryView&) { return true; });
    fs_->ReleaseDir(*dir);
    return read;
  });
  // Every metadata thread waits in a HEAD; the rest of the checks wait in the queue.
  ASSERT_TRUE(Eventually([&] { return gated.started() >= 16; }));
  auto looked_up = std::async(std::launch::async, [&] { return fs_->Lookup(kRootInode, "other"); });
  // Its HEAD comes right after its listing was queued: from here the queue holds it.
  ASSERT_TRUE(Eventually([&] { return gated.HeadOf("other"); }));
  // One HEAD at a time: each lets one thread go on to the next task in the queue, which is
  // either the lookup's listing or another check (which starts, and waits).
  int permits = 0;
  while (!gated.Listed("other/") && permits < kSmall) {
    const int started = gated.started();
    gated.Permit(1);
    ++permits;
    ASSERT_TRUE(Eventually([&] { return gated.started() > started || gated.Listed("other/"); }));
  }
  auto entry = looked_up.get();
  ASSERT_TRUE(entry.ok()) << entry.status().ToString();
  EXPECT_EQ(entry->attr.type, FileType::kDirectory);
  EXPECT_EQ(permits, 1) << "the lookup waited for the type checks queued before it";
  gated.Permit(kSmall);
  EXPECT_TRUE(listed.get().ok());
}

// A program creating files in a large dataset directory: its lookups of new names are not
// answered by listing the directory to its end (thousands of pages for millions of keys),
// and the directory is not listed again for every few names.
TEST_F(FilesystemTest, NewNamesInALargeDirectoryDoNotListItToItsEnd) {
  for (int i = 0; i < 2500; ++i) server_.PutDirect(fmt::format("big/{:05}", i), "x");
  server_.PutDirect("small/a", "x");
  DirectoryPageCounter big_pages(server_, "big/");
  FilesystemOptions o;
  o.metadata_ttl = kTtl;
  o.mount_time = clock_.WallNow();
  Remake(big_pages, o);
  const InodeId big = MustLookup(kRootInode, "big");
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(fs_->Lookup(big, "new-" + std::to_string(i)).status().code(),
              ErrorCode::kNotFound);
  }
  EXPECT_EQ(big_pages.pages, 1) << "one page tells it is large; no more pages, no relisting";
  EXPECT_EQ(fs_->Lookup(big, "00042").status().code(), ErrorCode::kOk);

  // A small directory is still listed once, and that listing answers the next new names.
  const InodeId small = MustLookup(kRootInode, "small");
  EXPECT_EQ(fs_->Lookup(small, "new-1").status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(fs_->Lookup(small, "new-2").status().code(), ErrorCode::kNotFound);
  const uint64_t probes = fs_->Stats().probes;
  EXPECT_EQ(fs_->Lookup(small, "new-3").status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(fs_->Lookup(small, "new-4").status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(fs_->Stats().probes, probes) << "answered by the listing";
}

// A name looked up in vain, then made by another client: a listing fetched since shows it,
// even one not kept in the cache (which would have dropped the negative entry).
TEST_F(FilesystemTest, ReadDirPlusShowsANameMissingOnlyBeforeItsListingWasFetched) {
  FilesystemOptions o;
  o.metadata_ttl = kTtl;
  o.max_cached_listings = 0;
  o.mount_time = clock_.WallNow();
  Remake(server_, o);
  EXPECT_EQ(fs_->Lookup(kRootInode, "late").status().code(), ErrorCode::kNotFound);
  server_.PutDirect("late", "made elsewhere");
  clock_.Advance(1s);
  auto dir = fs_->OpenDir(kRootInode);
  ASSERT_TRUE(dir.ok()) << dir.status().ToString();
  std::vector<std::string> shown;
  ASSERT_TRUE(fs_->ReadDir(*dir, 0, /*plus=*/true, [&](const DirEntryView& e) {
                    if (e.name != "." && e.name != "..") shown.emplace_back(e.name);
                    return true;
                  }).ok());
  fs_->ReleaseDir(*dir);
  EXPECT_EQ(shown, std::vector<std::string>{"late"});
}

TEST_F(FilesystemTest, AnEntryAnotherReaddirplusRefusesStaysKnownToTheOneThatReturnedIt) {
  // Two `ls -l` of one directory at once: one returns the new entry "f" to the kernel
  // while the other's buffer is full and refuses it. The refusal must not drop the node
  // the first one has just handed out (the kernel would hold an inode number this mount
  // no longer knows: ESTALE on every use until the entry times out).
  server_.PutDirect("f", "contents");
  auto outer = fs_->OpenDir(kRootInode);
  auto inner = fs_->OpenDir(kRootInode);
  ASSERT_TRUE(outer.ok() && inner.ok());
  InodeId returned = 0;
  Status listed = fs_->ReadDir(*outer, 0, /*plus=*/true, [&](const DirEntryView& v) {
    if (v.name != "f") return true;
    // The other readdirplus runs between this entry's node and its return.
    Status refused = fs_->ReadDir(*inner, 0, true, [&](const DirEntryView& w) {
      return w.name != "f";
    });
    EXPECT_TRUE(refused.ok()) << refused.ToString();
    returned = v.attr.ino;
    return true;
  });
  ASSERT_TRUE(listed.ok()) << listed.ToString();
  ASSERT_NE(returned, 0u);
  auto attr = fs_->GetAttr(returned);
  ASSERT_TRUE(attr.ok()) << attr.status().ToString();
  EXPECT_EQ(attr->attr.size, 8u);
  fs_->ReleaseDir(*outer);
  fs_->ReleaseDir(*inner);
}

TEST_F(FilesystemTest, AnOldDirectorySnapshotCannotMakeAStaleFileFreshAgain) {
  const std::string v1 = Body(2 * kBlock, 1), v2 = Body(2 * kBlock, 2);
  server_.PutDirect("f", v1);
  auto dh = fs_->OpenDir(kRootInode);
  ASSERT_TRUE(dh.ok());
  ASSERT_EQ(Names(ReadDirAll(*dh, 0, /*plus=*/true)), (std::vector<std::string>{".", "..", "f"}));
  const InodeId ino = MustLookup(kRootInode, "f");
  auto first = fs_->Open(ino, O_RDONLY);
  ASSERT_TRUE(first.ok());
  server_.PutDirect("f", v2);  // Replaced elsewhere.
  auto read = fs_->Read(first->handle, 0, 4096);
  ASSERT_EQ(read.status().code(), ErrorCode::kStale);
  fs_->Release(first->handle);

  // `ls -l` through the handle opened before (rewound): its snapshot still says v1.
  ReadDirAll(*dh, 0, /*plus=*/true);
  // The next open asks the server, as SEMANTICS.md promises after an ESTALE.
  auto second = fs_->Open(ino, O_RDONLY);
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_FALSE(second->keep_cache);
  EXPECT_TRUE(MustRead(second->handle, 0, v2.size()) == v2) << "not v2's bytes";
  fs_->Release(second->handle);
  fs_->ReleaseDir(*dh);
}

TEST_F(FilesystemTest, OpenHandleKeepsTheInodeAfterForget) {
  server_.PutDirect("f", "contents");
  InodeId ino = MustLookup(kRootInode, "f");
  auto o = fs_->Open(ino, O_RDONLY);
  ASSERT_TRUE(o.ok());
  fs_->Forget(ino, 1);
  EXPECT_EQ(fs_->Stats().inodes, 2u);
  EXPECT_EQ(MustRead(o->handle, 0, 100), "contents");
  fs_->Release(o->handle);
  EXPECT_EQ(fs_->Stats().inodes, 1u);
}

// --- Symlinks, attributes, statfs, forget ------------------------------------------------

TEST_F(FilesystemTest, ReadLinkOfAnS3fsSymlinkFoundByLookup) {
  server_.PutDirect("link", "target/file.txt", {{"mode", std::to_string(0120777)}});
  server_.PutDirect("plain", "x");
  auto l = fs_->Lookup(kRootInode, "link");
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  EXPECT_EQ(l->attr.type, FileType::kSymlink);
  EXPECT_EQ(l->attr.permissions, 0777u);

  auto target = fs_->ReadLink(l->attr.ino);
  ASSERT_TRUE(target.ok()) << target.status().ToString();
  EXPECT_EQ(*target, "target/file.txt");
  const uint64_t gets = server_.calls(s3::Op::kGet);
  target = fs_->ReadLink(l->attr.ino);
  ASSERT_TRUE(target.ok());
  EXPECT_EQ(*target, "target/file.txt");
  EXPECT_EQ(server_.calls(s3::Op::kGet), gets) << "the target is remembered";

  auto not_link = fs_->ReadLink(MustLookup(kRootInode, "plain"));
  ASSERT_FALSE(not_link.ok());
  EXPECT_EQ(not_link.status().code(), ErrorCode::kInvalidArgument);
}

// chmod, chown and touch -d of a directory are stored in its marker's metadata (s3fs's
// convention): a lookup, a readdirplus of its parent and a new mount all show them, and a
// directory without a marker shows the mount's defaults.
TEST_F(FilesystemTest, ADirectorysModeOwnerAndMtimeComeFromItsMarker) {
  server_.PutDirect("d/", "", {{"mode", std::to_string(040710)}, {"uid", "7"}, {"gid", "8"},
                               {"mtime", "1600000000"}});
  server_.PutDirect("d/x", "1");
  server_.PutDirect("implicit/y", "2");
  auto expect_marked = [](const Attributes& a) {
    EXPECT_EQ(a.type, FileType::kDirectory);
    EXPECT_EQ(a.permissions, 0710u);
    EXPECT_EQ(a.uid, 7u);
    EXPECT_EQ(a.gid, 8u);
    EXPECT_EQ(a.mtime, WallTime(std::chrono::seconds(1600000000)));
  };
  auto expect_defaults = [this](const Attributes& a) {
    EXPECT_EQ(a.type, FileType::kDirectory);
    EXPECT_EQ(a.permissions, 0755u);
    EXPECT_EQ(a.uid, 1000u);
    EXPECT_EQ(a.mtime, clock_.WallNow());  // The mount's start: nothing is stored.
  };
  {
    SCOPED_TRACE("lookup");
    auto d = fs_->Lookup(kRootInode, "d");
    ASSERT_TRUE(d.ok()) << d.status().ToString();
    expect_marked(d->attr);
    auto implicit = fs_->Lookup(kRootInode, "implicit");
    ASSERT_TRUE(implicit.ok()) << implicit.status().ToString();
    expect_defaults(implicit->attr);
  }
  FilesystemOptions o;
  o.defaults.uid = 1000;
  o.defaults.gid = 1000;
  o.metadata_ttl = kTtl;
  o.mount_time = clock_.WallNow();
  Remake(server_, o);  // A new mount: nothing known.
  {
    SCOPED_TRACE("readdirplus of the parent");
    auto dh = fs_->OpenDir(kRootInode);
    ASSERT_TRUE(dh.ok()) << dh.status().ToString();
    server_.ResetCounters();
    auto entries = ReadDirAll(*dh, 0, /*plus=*/true);
    EXPECT_EQ(server_.total_calls(), 0u) << "opendir checked the markers; readdirplus asks none";
    ASSERT_EQ(Names(entries), (std::vector<std::string>{".", "..", "d", "implicit"}));
    expect_marked(entries[2].attr);
    expect_defaults(entries[3].attr);
    fs_->ReleaseDir(*dh);
  }
  {
    SCOPED_TRACE("lookup from the listing");
    auto d = fs_->Lookup(kRootInode, "d");
    ASSERT_TRUE(d.ok()) << d.status().ToString();
    expect_marked(d->attr);
  }
  {
    SCOPED_TRACE("a listing after the TTL");
    clock_.Advance(kTtl + 1s);
    auto dh = fs_->OpenDir(kRootInode);
    ASSERT_TRUE(dh.ok()) << dh.status().ToString();
    auto entries = ReadDirAll(*dh, 0, /*plus=*/true);
    ASSERT_EQ(entries.size(), 4u);
    expect_marked(entries[2].attr);
    fs_->ReleaseDir(*dh);
  }
}

// A marker whose HEAD fails is not taken for one without metadata: the lookup fails with
// the error rather than showing the defaults for a TTL.
TEST_F(FilesystemTest, ALookupOfADirectoryWhoseMarkerCannotBeReadFails) {
  server_.PutDirect("d/", "", {{"mode", std::to_string(040700)}});
  s3::FaultInjectingClient faulty(server_);
  FilesystemOptions o;
  o.metadata_ttl = kTtl;
  Remake(faulty, o);
  faulty.FailNext(s3::Op::kHead, 1, s3::InjectedError(ErrorCode::kServerError), "d/");
  auto d = fs_->Lookup(kRootInode, "d");
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), ErrorCode::kServerError);
  d = fs_->Lookup(kRootInode, "d");
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->attr.permissions, 0700u);
  fs_.reset();
}

TEST_F(FilesystemTest, GetAttrIsCachedForTheTtlThenReHeads) {
  server_.PutDirect("f", "12345");
  InodeId ino = MustLookup(kRootInode, "f");
  server_.ResetCounters();
  auto a = fs_->GetAttr(ino);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->attr.size, 5u);
  EXPECT_EQ(a->ttl, kTtl);
  EXPECT_EQ(server_.total_calls(), 0u);
  EXPECT_EQ(fs_->Stats().heads, 0u);

  server_.PutDirect("f", "1234567890", {{"uid", "7"}});
  clock_.Advance(kTtl + 1s);
  a = fs_->GetAttr(ino);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(server_.calls(s3::Op::kHead), 1u);
  EXPECT_EQ(fs_->Stats().heads, 1u);
  EXPECT_EQ(a->attr.size, 10u);
  EXPECT_EQ(a->attr.uid, 7u);
  EXPECT_EQ(a->attr.ino, ino);

  // Fresh again: no further HEAD.
  ASSERT_TRUE(fs_->GetAttr(ino).ok());
  EXPECT_EQ(server_.calls(s3::Op::kHead), 1u);

  // Deleted remotely: after the TTL, GetAttr says stale.
  server_.DeleteDirect("f");
  clock_.Advance(kTtl + 1s);
  a = fs_->GetAttr(ino);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().code(), ErrorCode::kStale);

  auto root = fs_->GetAttr(kRootInode);
  ASSERT_TRUE(root.ok());
  EXPECT_EQ(root->attr.type, FileType::kDirectory);
  EXPECT_EQ(root->attr.ino, kRootInode);
}

TEST_F(FilesystemTest, StatFsReportsSaneValues) {
  StatFsReply s = fs_->StatFs();
  EXPECT_GT(s.block_size, 0u);
  EXPECT_GT(s.blocks, 0u);
  EXPECT_GT(s.blocks_free, 0u);
  EXPECT_LE(s.blocks_free, s.blocks);
  EXPECT_GT(s.files, 0u);
  EXPECT_LE(s.files_free, s.files);
  EXPECT_EQ(s.name_max, kMaxNameBytes);
}

TEST_F(FilesystemTest, ForgetAccountingReturnsToTheRootAlone) {
  server_.PutDirect("d/f", "x");
  server_.PutDirect("g", "y");
  EXPECT_EQ(fs_->Stats().inodes, 1u);
  InodeId d = MustLookup(kRootInode, "d");
  InodeId f = 0;
  for (int i = 0; i < 3; ++i) f = MustLookup(d, "f");
  InodeId g = MustLookup(kRootInode, "g");
  EXPECT_EQ(MustLookup(kRootInode, "g"), g) << "same node for the same name";
  EXPECT_EQ(fs_->Stats().inodes, 4u);

  fs_->Forget(f, 2);
  EXPECT_EQ(fs_->Stats().inodes, 4u) << "one lookup of f left";
  fs_->Forget(f, 1);
  EXPECT_EQ(fs_->Stats().inodes, 3u);
  fs_->Forget(g, 5);  // Over-forget: clamped, logged.
  fs_->Forget(d, 1);
  fs_->Forget(kRootInode, 1);     // Never drops the root.
  fs_->Forget(999999, 1);         // Unknown: ignored.
  EXPECT_EQ(fs_->Stats().inodes, 1u);
  EXPECT_TRUE(fs_->GetAttr(kRootInode).ok());

  auto gone = fs_->GetAttr(f);
  ASSERT_FALSE(gone.ok());
  EXPECT_EQ(gone.status().code(), ErrorCode::kStale);
}

}  // namespace
}  // namespace bucketfs::fs
