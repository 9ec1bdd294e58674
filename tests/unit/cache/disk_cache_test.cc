#include "cache/disk_cache.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cache/block_cache.h"
#include "cache/memory_budget.h"
#include "cache/read_ahead.h"
#include "common/task_pool.h"
#include "s3/fake_client.h"

namespace bucketfs::cache {
namespace {

namespace fs = std::filesystem;
constexpr uint64_t kBlock = 16 * 1024;

std::string Body(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

// A block's bytes, or a miss; printed by size and hash so that a failure stays readable.
struct Blob {
  std::optional<std::string> bytes;
  Blob(std::nullopt_t) {}                                      // NOLINT: implicit.
  Blob(std::string b) : bytes(std::move(b)) {}                 // NOLINT: implicit.
  Blob(std::optional<std::string> b) : bytes(std::move(b)) {}  // NOLINT: implicit.
  bool operator==(const Blob&) const = default;
  friend void PrintTo(const Blob& b, std::ostream* os) {
    if (!b.bytes) {
      *os << "(miss)";
    } else {
      *os << b.bytes->size() << " bytes, hash " << std::hash<std::string>{}(*b.bytes);
    }
  }
};

class DiskCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("bfs-dc-" + std::to_string(getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::permissions(root_, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(root_, ec);
  }

  std::unique_ptr<DiskCache> MustOpen(
      uint64_t capacity,
      std::chrono::steady_clock::duration touch_interval = std::chrono::minutes(1)) {
    auto c = DiskCache::Open({root_.string(), capacity, touch_interval}, "bucket");
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return c.ok() ? std::move(*c) : nullptr;
  }

  // Stores `data` as block `index` of (key, etag).
  static void Store(DiskCache& c, const std::string& key, const std::string& etag, uint64_t index,
                    const std::string& data) {
    c.Store(BlockKey{key, etag, index}, kBlock, {data.data(), data.size()});
  }
  // The block if cached with `length` bytes.
  static Blob Read(DiskCache& c, const std::string& key, const std::string& etag, uint64_t index,
                   size_t length) {
    std::string out(length, '\0');
    if (!c.Read(BlockKey{key, etag, index}, kBlock, {out.data(), out.size()})) {
      return std::nullopt;
    }
    return out;
  }

  // Bytes [offset, offset + length) of block 0 of ("k", "e"), `block_length` long, or a miss.
  static Blob RangeOf(DiskCache& c, uint64_t block_size, uint64_t block_length, uint64_t offset,
                      size_t length) {
    std::string out(length, '\0');
    if (!c.ReadRange(BlockKey{"k", "e", 0}, block_size, block_length, offset,
                     {out.data(), length})) {
      return std::nullopt;
    }
    return out;
  }

  std::vector<fs::path> BlockFiles() const {
    std::vector<fs::path> out;
    for (const auto& e : fs::directory_iterator(root_ / "bucket" / "blocks")) {
      out.push_back(e.path());
    }
    return out;
  }

  // Flips one bit of byte `at` of the data of the cache's only block file (whose data of
  // `data_size` bytes ends the file).
  void FlipDataByteOfTheOnlyBlock(uint64_t data_size, uint64_t at) {
    const auto files = BlockFiles();
    ASSERT_EQ(files.size(), 1u);
    const auto size = fs::file_size(files[0]);
    const auto pos = static_cast<std::streamoff>(size - data_size + at);
    std::fstream io(files[0], std::ios::in | std::ios::out | std::ios::binary);
    char byte = 0;
    io.seekg(pos);
    io.read(&byte, 1);
    byte = static_cast<char>(byte ^ 1);
    io.seekp(pos);
    io.write(&byte, 1);
  }

  fs::path root_;
};

TEST_F(DiskCacheTest, AStoredBlockReadsBackExactlyAndOnlyForItsKeyEtagAndIndex) {
  auto c = MustOpen(1 << 20);
  ASSERT_NE(c, nullptr);
  const std::string data = Body(kBlock, 1);
  Store(*c, "models/w.bin", "etag-1", 3, data);
  EXPECT_EQ(Read(*c, "models/w.bin", "etag-1", 3, kBlock), data);
  EXPECT_EQ(Read(*c, "models/w.bin", "etag-2", 3, kBlock), std::nullopt) << "another version";
  EXPECT_EQ(Read(*c, "models/w.bin", "etag-1", 4, kBlock), std::nullopt) << "another block";
  EXPECT_EQ(Read(*c, "models/w.bi", "etag-1", 3, kBlock), std::nullopt) << "another key";
  DiskCacheStats s = c->Stats();
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.misses, 3u);
  EXPECT_EQ(s.stores, 1u);
  EXPECT_EQ(s.blocks, 1u);
  EXPECT_GE(s.bytes, kBlock);
  // Asked for with another length (one version has one size): a miss, not damage, and the
  // file goes so that the block of that length can be stored.
  EXPECT_EQ(Read(*c, "models/w.bin", "etag-1", 3, kBlock - 1), std::nullopt);
  s = c->Stats();
  EXPECT_EQ(s.corrupt, 0u);
  EXPECT_EQ(s.blocks, 0u);
  const std::string shorter = Body(kBlock - 1, 9);
  Store(*c, "models/w.bin", "etag-1", 3, shorter);
  EXPECT_EQ(Read(*c, "models/w.bin", "etag-1", 3, kBlock - 1), shorter);
}

TEST_F(DiskCacheTest, AFileUnderAnotherBlocksNameIsNeverServedForIt) {
  // As after a hash collision, or a file copied by hand: the header names another block.
  auto c = MustOpen(1 << 20);
  ASSERT_NE(c, nullptr);
  Store(*c, "a", "e", 0, Body(kBlock, 1));
  const auto a_file = BlockFiles().at(0);
  Store(*c, "b", "e", 0, Body(kBlock, 2));
  fs::path b_file;
  for (const auto& f : BlockFiles()) {
    if (f != a_file) b_file = f;
  }
  ASSERT_FALSE(b_file.empty());
  fs::copy_file(a_file, b_file, fs::copy_options::overwrite_existing);
  EXPECT_EQ(Read(*c, "b", "e", 0, kBlock), std::nullopt);
  EXPECT_EQ(c->Stats().corrupt, 1u);
  EXPECT_FALSE(fs::exists(b_file));
  EXPECT_EQ(Read(*c, "a", "e", 0, kBlock), Body(kBlock, 1)) << "the real owner still reads";
}

TEST_F(DiskCacheTest, AFullDiskLowersTheCapacityAndLeavesNoPartialFile) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to mount a small tmpfs as the full disk";
  fs::create_directories(root_);
  ASSERT_EQ(::mount("tmpfs", root_.c_str(), "tmpfs", 0, "size=1m"), 0) << strerror(errno);
  struct Unmount {
    fs::path dir;
    ~Unmount() { ::umount2(dir.c_str(), MNT_DETACH); }
  } unmount{root_};
  // Asked for far more than the disk holds: cut at open to what fits, less a tenth.
  auto c = MustOpen(1ull << 30);
  ASSERT_NE(c, nullptr);
  EXPECT_LT(c->Stats().capacity, 1u << 20);
  // Something else fills the disk, then the cache tries to store.
  {
    std::ofstream filler(root_ / "filler", std::ios::binary);
    const std::string chunk(64 * 1024, 'x');
    for (int i = 0; i < 16 && filler; ++i) filler.write(chunk.data(), chunk.size());
  }
  const uint64_t before = c->Stats().capacity;
  for (uint64_t i = 0; i < 8; ++i) Store(*c, "k", "e", i, Body(kBlock, i));
  const DiskCacheStats s = c->Stats();
  EXPECT_GT(s.write_failures, 0u);
  EXPECT_LT(s.capacity, before) << "a full disk did not lower the capacity";
  EXPECT_LE(s.bytes, s.capacity);
  for (const auto& f : BlockFiles()) {
    EXPECT_NE(f.extension(), ".tmp") << "a partial block was left: " << f;
  }
  // What was stored still reads back intact.
  for (uint64_t i = 0; i < 8; ++i) {
    const Blob got = Read(*c, "k", "e", i, kBlock);
    if (got.bytes) {
      EXPECT_EQ(got, Body(kBlock, i)) << i;
    }
  }
}

TEST_F(DiskCacheTest, BlocksSurviveAReopenAndTheLeastRecentlyUsedGoFirst) {
  const std::string a = Body(kBlock, 1), b = Body(kBlock, 2), c3 = Body(kBlock, 3);
  {
    auto c = MustOpen(10 * kBlock, std::chrono::seconds(0));  // Every hit touches.
    ASSERT_NE(c, nullptr);
    Store(*c, "k", "e", 0, a);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // Distinct mtimes.
    Store(*c, "k", "e", 1, b);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    Store(*c, "k", "e", 2, c3);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    ASSERT_EQ(Read(*c, "k", "e", 0, kBlock), a);  // Block 0 is now the most recent.
  }
  // A cache with room for two blocks keeps the two most recently used: 0 and 2.
  auto c = MustOpen(2 * kBlock + 2 * 1024);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->Stats().blocks, 2u);
  EXPECT_EQ(c->Stats().evictions, 1u);
  EXPECT_EQ(Read(*c, "k", "e", 0, kBlock), a);
  EXPECT_EQ(Read(*c, "k", "e", 2, kBlock), c3);
  EXPECT_EQ(Read(*c, "k", "e", 1, kBlock), std::nullopt);
  EXPECT_EQ(BlockFiles().size(), 2u) << "an evicted block's file is deleted";
}

// A block read early in every run (within the touch interval of the start, a minute by
// default) still has its recency written at its first hit of the run, so at the next start
// it is not taken for the oldest block because its file keeps the mtime of its store.
TEST_F(DiskCacheTest, TheFirstHitAfterAReopenRecordsItsRecency) {
  const std::string a = Body(kBlock, 1), b = Body(kBlock, 2);
  {
    auto c = MustOpen(10 * kBlock);
    ASSERT_NE(c, nullptr);
    Store(*c, "k", "e", 0, a);
  }
  // Block 0 was stored a day ago; block 1 now.
  const timespec day_ago[2] = {{time(nullptr) - 86400, 0}, {time(nullptr) - 86400, 0}};
  for (const auto& f : BlockFiles()) ASSERT_EQ(::utimensat(AT_FDCWD, f.c_str(), day_ago, 0), 0);
  {
    auto c = MustOpen(10 * kBlock);
    ASSERT_NE(c, nullptr);
    Store(*c, "k", "e", 1, b);
  }
  {
    auto c = MustOpen(10 * kBlock);  // The default touch interval: a minute.
    ASSERT_NE(c, nullptr);
    ASSERT_EQ(Read(*c, "k", "e", 0, kBlock), a);  // Read at the start of this run.
  }
  // Room for one block: the most recently used, block 0, is the one kept.
  auto c = MustOpen(kBlock + 2 * 1024);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->Stats().blocks, 1u);
  EXPECT_EQ(Read(*c, "k", "e", 0, kBlock), a) << "the block just read was evicted first";
  EXPECT_EQ(Read(*c, "k", "e", 1, kBlock), std::nullopt);
}

// A cache that a full disk shrank below one block writes nothing more: a file it cannot
// hold would be written, renamed, and unlinked at once, for every block read.
TEST_F(DiskCacheTest, ABlockLargerThanTheWholeCacheIsNotWritten) {
  auto c = MustOpen(kBlock / 2);
  ASSERT_NE(c, nullptr);
  Store(*c, "k", "e", 0, Body(kBlock, 1));
  const DiskCacheStats s = c->Stats();
  EXPECT_EQ(s.stores, 0u);
  EXPECT_EQ(s.evictions, 0u) << "written only to be evicted";
  EXPECT_TRUE(BlockFiles().empty());
}

TEST_F(DiskCacheTest, StoresNeverTakeTheCacheOverItsCapacity) {
  const uint64_t capacity = 5 * kBlock;
  auto c = MustOpen(capacity);
  ASSERT_NE(c, nullptr);
  for (uint64_t i = 0; i < 20; ++i) {
    Store(*c, "big", "e", i, Body(kBlock, i));
    ASSERT_LE(c->Stats().bytes, capacity);
  }
  uint64_t on_disk = 0;
  for (const auto& f : BlockFiles()) on_disk += fs::file_size(f);
  EXPECT_LE(on_disk, capacity);
  EXPECT_EQ(on_disk, c->Stats().bytes);
  EXPECT_GT(c->Stats().evictions, 0u);
  // The newest blocks are the ones kept.
  EXPECT_EQ(Read(*c, "big", "e", 19, kBlock), Body(kBlock, 19));
  EXPECT_EQ(Read(*c, "big", "e", 0, kBlock), std::nullopt);
}

TEST_F(DiskCacheTest, ADamagedOrTruncatedFileIsAMissAndIsDeleted) {
  auto c = MustOpen(1 << 20);
  ASSERT_NE(c, nullptr);
  Store(*c, "k", "e", 0, Body(kBlock, 1));
  Store(*c, "k", "e", 1, Body(kBlock, 2));
  auto files = BlockFiles();
  ASSERT_EQ(files.size(), 2u);
  // One file gets a flipped byte in its data, the other loses its tail.
  for (const auto& f : files) {
    const auto size = fs::file_size(f);
    if (f == files[0]) {
      std::fstream io(f, std::ios::in | std::ios::out | std::ios::binary);
      io.seekg(static_cast<std::streamoff>(size - 100));
      char byte = 0;
      io.read(&byte, 1);
      io.seekp(static_cast<std::streamoff>(size - 100));
      byte = static_cast<char>(byte ^ 0x5a);
      io.write(&byte, 1);
    } else {
      fs::resize_file(f, size - 10);
    }
  }
  EXPECT_EQ(Read(*c, "k", "e", 0, kBlock), std::nullopt);
  EXPECT_EQ(Read(*c, "k", "e", 1, kBlock), std::nullopt);
  EXPECT_EQ(c->Stats().corrupt, 2u);
  EXPECT_EQ(c->Stats().blocks, 0u);
  EXPECT_EQ(c->Stats().bytes, 0u);
  EXPECT_TRUE(BlockFiles().empty());
  // Stored again, it reads back.
  Store(*c, "k", "e", 0, Body(kBlock, 1));
  EXPECT_EQ(Read(*c, "k", "e", 0, kBlock), Body(kBlock, 1));
}

TEST_F(DiskCacheTest, ARangeReadChecksOnlyItsChunksAndFindsDamageInThem) {
  // A block of four and a half 64 KiB chunks.
  constexpr uint64_t kBig = 512 * 1024;
  constexpr uint64_t kChunk = 64 * 1024;
  const std::string data = Body(4 * kChunk + kChunk / 2, 3);
  auto c = MustOpen(4 << 20);
  ASSERT_NE(c, nullptr);
  c->Store(BlockKey{"k", "e", 0}, kBig, {data.data(), data.size()});
  auto range = [&](uint64_t offset, size_t length) {
    return RangeOf(*c, kBig, data.size(), offset, length);
  };
  EXPECT_EQ(range(0, 4096), data.substr(0, 4096));
  EXPECT_EQ(range(kChunk - 100, 200), data.substr(kChunk - 100, 200));  // Across two chunks.
  EXPECT_EQ(range(4 * kChunk + 10, kChunk / 2 - 10), data.substr(4 * kChunk + 10));  // The tail.
  EXPECT_EQ(range(data.size() - 10, 20), std::nullopt) << "past the block's end";
  // A flipped byte in chunk 2: ranges elsewhere still read, a range in chunk 2 is a miss
  // and the damaged file goes.
  ASSERT_NO_FATAL_FAILURE(FlipDataByteOfTheOnlyBlock(data.size(), 2 * kChunk + 7));
  EXPECT_EQ(range(0, 4096), data.substr(0, 4096)) << "an intact chunk";
  EXPECT_EQ(range(2 * kChunk, 4096), std::nullopt) << "the damaged chunk";
  EXPECT_EQ(c->Stats().corrupt, 1u);
  EXPECT_TRUE(BlockFiles().empty());
}

// Every range of a block, at and around chunk edges, reads back its bytes: whole chunks
// inside the range go straight into the caller's buffer, the edge chunks through a small
// one, and a damaged chunk inside a long range is found as surely as one at its edge.
TEST_F(DiskCacheTest, RangesAcrossChunkEdgesReadBackExactly) {
  constexpr uint64_t kBig = 512 * 1024;
  constexpr uint64_t kChunk = 64 * 1024;
  const std::string data = Body(5 * kChunk + 300, 4);
  auto c = MustOpen(4 << 20);
  ASSERT_NE(c, nullptr);
  c->Store(BlockKey{"k", "e", 0}, kBig, {data.data(), data.size()});
  auto range = [&](uint64_t offset, size_t length) {
    return RangeOf(*c, kBig, data.size(), offset, length);
  };
  const uint64_t edges[] = {0, 1, kChunk - 1, kChunk, kChunk + 1, 2 * kChunk, 3 * kChunk - 5,
                            5 * kChunk, data.size() - 1};
  for (uint64_t from : edges) {
    for (uint64_t to : edges) {
      if (to <= from) continue;
      for (uint64_t end : {to, to + 1}) {
        if (end > data.size()) continue;
        ASSERT_EQ(range(from, end - from), data.substr(from, end - from)) << from << ".." << end;
      }
    }
  }
  EXPECT_EQ(range(0, data.size()), data);
  // Damage inside a long range (chunk 3 of 0..5): found.
  ASSERT_NO_FATAL_FAILURE(FlipDataByteOfTheOnlyBlock(data.size(), 3 * kChunk + 11));
  EXPECT_EQ(range(100, data.size() - 200), std::nullopt) << "the damaged chunk inside";
  EXPECT_EQ(c->Stats().corrupt, 1u);
}

TEST_F(DiskCacheTest, LeftoversOfAStoreCutShortAreRemovedAtOpen) {
  {
    auto c = MustOpen(1 << 20);
    ASSERT_NE(c, nullptr);
  }
  const fs::path leftover = root_ / "bucket" / "blocks" / "abc-1-2.123.0.tmp";
  std::ofstream(leftover) << "half a block";
  auto c = MustOpen(1 << 20);
  ASSERT_NE(c, nullptr);
  EXPECT_FALSE(fs::exists(leftover));
  EXPECT_EQ(c->Stats().blocks, 0u);
}

TEST_F(DiskCacheTest, TwoDaemonsCannotShareOneCache) {
  auto first = MustOpen(1 << 20);
  ASSERT_NE(first, nullptr);
  auto second = DiskCache::Open({root_.string(), 1 << 20}, "bucket");
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), ErrorCode::kBusy);
  EXPECT_NE(second.status().ToString().find("--cache-dir"), std::string::npos)
      << second.status().ToString();
  // Another bucket under the same root is another cache.
  EXPECT_TRUE(DiskCache::Open({root_.string(), 1 << 20}, "other").ok());
}

TEST_F(DiskCacheTest, AZeroCapacityOrAPathThatIsNotADirectoryIsRefusedWithThePath) {
  auto zero = DiskCache::Open({root_.string(), 0}, "bucket");
  ASSERT_FALSE(zero.ok());
  EXPECT_EQ(zero.status().code(), ErrorCode::kInvalidArgument);
  // A file where the directory should be (refused even for root, unlike a permission).
  std::ofstream(root_) << "a file";
  auto unusable = DiskCache::Open({root_.string(), 1 << 20}, "bucket");
  ASSERT_FALSE(unusable.ok());
  EXPECT_NE(unusable.status().ToString().find(root_.string()), std::string::npos)
      << unusable.status().ToString();
  EXPECT_NE(unusable.status().ToString().find("--cache-dir"), std::string::npos)
      << unusable.status().ToString();
}

TEST_F(DiskCacheTest, AFailedStoreIsCountedAndTheReadGoesOn) {
  auto c = MustOpen(1 << 20);
  ASSERT_NE(c, nullptr);
  // The blocks directory replaced by a file: every store fails (as on a full disk).
  fs::remove_all(root_ / "bucket" / "blocks");
  std::ofstream(root_ / "bucket" / "blocks") << "not a directory";
  Store(*c, "k", "e", 0, Body(kBlock, 1));
  EXPECT_EQ(c->Stats().write_failures, 1u);
  EXPECT_EQ(c->Stats().blocks, 0u);
  EXPECT_EQ(Read(*c, "k", "e", 0, kBlock), std::nullopt);
}

// A daemon's memory side, fresh (as after a remount): budget, block cache and I/O pool. The
// pool is declared last, so it drains before the cache goes.
struct FreshMemory {
  MemoryBudget budget{64 * kBlock};
  BlockCache cache{budget, [] {
                     BlockCacheOptions o;
                     o.capacity_bytes = 16 * kBlock;
                     o.block_size = kBlock;
                     return o;
                   }()};
  std::unique_ptr<TaskPool> pool = std::make_unique<TaskPool>("dc-test", 2, 64);
  ReadContext Context(s3::ObjectClient& server, DiskCache* disk) {
    return ReadContext{&server, &cache, &budget, pool.get(), nullptr, disk};
  }
};

// Through ReadAhead: a second reader of the same version (a later epoch, a remount with the
// same --cache-dir) gets every block from disk; a new version of the object is read from S3.
TEST_F(DiskCacheTest, ReadAheadServesRereadsFromDiskAndANewVersionFromS3) {
  s3::FakeObjectClient server;
  const std::string v1 = Body(5 * kBlock + 123, 7);
  const std::string etag1 = server.PutDirect("data/shard-0", v1);
  auto read_all = [&](DiskCache* disk, const std::string& etag, size_t size) {
    FreshMemory memory;  // As after a remount.
    std::string out;
    {
      ReadAhead ra(memory.Context(server, disk), ObjectVersion{"data/shard-0", etag, size});
      for (uint64_t off = 0; off < size; off += 4096) {
        auto r = ra.Read(off, 4096);
        EXPECT_TRUE(r.ok()) << r.status().ToString();
        if (!r.ok()) break;
        out += r->ToString();
      }
    }
    return out;
  };
  auto disk = MustOpen(1 << 20);
  ASSERT_NE(disk, nullptr);
  EXPECT_TRUE(read_all(disk.get(), etag1, v1.size()) == v1);
  const uint64_t gets_first = server.calls(s3::Op::kGet);
  EXPECT_GT(gets_first, 0u);
  EXPECT_EQ(disk->Stats().stores, 6u);  // Five whole blocks and the short last one.

  server.ResetCounters();
  EXPECT_TRUE(read_all(disk.get(), etag1, v1.size()) == v1);
  EXPECT_EQ(server.calls(s3::Op::kGet), 0u) << "a reread went to S3";
  EXPECT_EQ(disk->Stats().hits, 6u);

  // Random reads too (a shuffled epoch): from disk, no GET.
  server.ResetCounters();
  {
    FreshMemory memory;
    {
      ReadAhead ra(memory.Context(server, disk.get()),
                   ObjectVersion{"data/shard-0", etag1, v1.size()});
      for (uint64_t off : {4 * kBlock + 100, 1 * kBlock + 5000, 3 * kBlock + 9, 50ul, 2 * kBlock}) {
        auto r = ra.Read(off, 1000);
        ASSERT_TRUE(r.ok()) << r.status().ToString();
        EXPECT_EQ(r->ToString(), v1.substr(off, 1000)) << off;
      }
      EXPECT_GT(ra.Stats().random_reads, 0u) << "no read was taken as random";
    }
  }
  EXPECT_EQ(server.calls(s3::Op::kGet), 0u) << "a random read went to S3";

  // An object seen without an ETag is never cached: nothing would tell its versions apart.
  const uint64_t stores_before = disk->Stats().stores;
  EXPECT_TRUE(read_all(disk.get(), "", v1.size()) == v1);
  EXPECT_EQ(disk->Stats().stores, stores_before);

  // The object replaced in S3: its new ETag finds nothing on disk; the bytes are the new ones.
  const std::string v2 = Body(2 * kBlock, 8);
  const std::string etag2 = server.PutDirect("data/shard-0", v2);
  ASSERT_NE(etag1, etag2);
  server.ResetCounters();
  EXPECT_TRUE(read_all(disk.get(), etag2, v2.size()) == v2);
  EXPECT_GT(server.calls(s3::Op::kGet), 0u);
}

}  // namespace
}  // namespace bucketfs::cache
