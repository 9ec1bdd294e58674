#include "cache/block_cache.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cache/memory_budget.h"
#include "common/clock.h"
#include "s3/fake_client.h"
#include "s3/fault_client.h"
#include "s3/object_client.h"
#include "tests/support/eventually.h"

namespace bucketfs::cache {
namespace {

using namespace std::chrono_literals;

constexpr uint64_t kBlock = 4096;

MonoTime Soon(Duration d) { return RealClock().Now() + d; }

using testing::Eventually;

BlockCacheOptions Options(uint64_t capacity_blocks) {
  BlockCacheOptions o;
  o.capacity_bytes = capacity_blocks * kBlock;
  o.block_size = kBlock;
  return o;
}

FetchOptions Within(Duration d, uint64_t size_hint = 0) {
  FetchOptions o;
  o.deadline = Soon(d);
  o.size_hint = size_hint;
  return o;
}

std::string Str(const BlockHandle& h) { return std::string(h.data().begin(), h.data().end()); }

// Deterministic contents for a block: differs by key, ETag and index.
std::string Pattern(const BlockKey& k, size_t n) {
  uint64_t seed = HashBlockKey(k);
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((seed >> ((i % 8) * 8)) ^ i);
  return s;
}

// A fetch that writes `content` (as much as fits) and counts its calls.
BlockCache::FetchFn Writes(std::string content, std::atomic<int>* calls = nullptr) {
  return [content = std::move(content), calls](std::span<char> into) -> Result<size_t> {
    if (calls != nullptr) calls->fetch_add(1);
    size_t n = std::min(content.size(), into.size());
    std::memcpy(into.data(), content.data(), n);
    return n;
  };
}

// Reads the block from S3 straight into the cache's buffer, pinned to the block's ETag.
BlockCache::FetchFn FromS3(s3::ObjectClient& client, const BlockKey& k) {
  return [&client, k](std::span<char> into) -> Result<size_t> {
    s3::GetRequest req;
    req.key = k.key;
    req.range = s3::ByteRange{k.index * kBlock, into.size()};
    req.if_match = k.etag;
    BFS_ASSIGN_OR_RETURN(s3::GetResult got, client.Get(req, into));
    return static_cast<size_t>(got.bytes_read);
  };
}

// A fetch that must never run.
Result<size_t> NoFetch(std::span<char>) {
  ADD_FAILURE() << "fetch called";
  return Status(ErrorCode::kInternal, "fetch called");
}

BlockHandle Must(Result<BlockHandle> r) {
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? std::move(r).value() : BlockHandle();
}

TEST(BlockCacheTest, MissFetchesStraightIntoTheBlockThenHits) {
  s3::FakeObjectClient server;
  std::string body = Pattern({"body", "", 0}, 3 * kBlock + 100);
  BlockKey k{"data/a.bin", server.PutDirect("data/a.bin", body), 1};
  MemoryBudget budget(16 * kBlock);
  BlockCache cache(budget, Options(8));

  const char* fetched_into = nullptr;
  BlockCache::FetchFn from_s3 = FromS3(server, k);
  BlockHandle h = Must(cache.GetOrFetch(
      k,
      [&](std::span<char> into) {
        fetched_into = into.data();
        return from_s3(into);
      },
      Within(10s)));
  EXPECT_EQ(Str(h), body.substr(kBlock, kBlock));
  EXPECT_EQ(h.data().data(), fetched_into) << "the block must be the buffer the fetch wrote";
  EXPECT_EQ(h.key(), k);
  EXPECT_EQ(server.calls(s3::Op::kGet), 1u);

  BlockHandle again = Must(cache.GetOrFetch(k, NoFetch, Within(10s)));
  std::optional<BlockHandle> looked = cache.Lookup(k);
  ASSERT_TRUE(looked.has_value());
  EXPECT_EQ(looked->data().data(), h.data().data());
  EXPECT_EQ(server.calls(s3::Op::kGet), 1u);

  BlockCacheStats s = cache.Stats();
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.hits, 2u);
  EXPECT_EQ(s.blocks, 1u);
  EXPECT_EQ(s.bytes_cached, kBlock);
  EXPECT_EQ(s.pinned_blocks, 1u);
  EXPECT_EQ(budget.used(), kBlock);
}

TEST(BlockCacheTest, LookupOfAMissingBlockNeitherFetchesNorBlocks) {
  MemoryBudget budget(4 * kBlock);
  BlockCache cache(budget, Options(4));
  EXPECT_FALSE(cache.Lookup({"k", "e", 0}).has_value());
  BlockCacheStats s = cache.Stats();
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.hits, 0u);
  EXPECT_EQ(s.blocks, 0u);
  EXPECT_EQ(budget.used(), 0u);
}

TEST(BlockCacheTest, SkipIfInFlightReturnsAnEmptyHandleInsteadOfWaiting) {
  MemoryBudget budget(16 * kBlock);
  BlockCache cache(budget, Options(8));
  BlockKey k{"obj", "e1", 0};
  std::atomic<bool> in_fetch{false};
  std::atomic<bool> release{false};
  std::thread fetcher([&] {
    BlockHandle h = Must(cache.GetOrFetch(
        k,
        [&](std::span<char> into) -> Result<size_t> {
          in_fetch.store(true);
          while (!release.load()) std::this_thread::sleep_for(1ms);
          std::memset(into.data(), 'x', into.size());
          return into.size();
        },
        Within(10s)));
    EXPECT_EQ(h.size(), kBlock);
  });
  ASSERT_TRUE(Eventually([&] { return in_fetch.load(); }));

  FetchOptions skip = Within(10s);
  skip.skip_if_in_flight = true;
  Result<BlockHandle> joined = cache.GetOrFetch(k, NoFetch, skip);
  ASSERT_TRUE(joined.ok()) << joined.status().ToString();
  EXPECT_FALSE(*joined) << "an in-flight block gives an empty handle, not a wait";
  EXPECT_EQ(cache.Stats().coalesced, 1u);

  release.store(true);
  fetcher.join();
  // Ready blocks are returned as usual.
  Result<BlockHandle> ready = cache.GetOrFetch(k, NoFetch, skip);
  ASSERT_TRUE(ready.ok());
  ASSERT_TRUE(*ready);
  EXPECT_EQ(Str(*ready), std::string(kBlock, 'x'));
}

TEST(BlockCacheTest, ShortLastBlockCostsOnlyItsBytes) {
  MemoryBudget budget(4 * kBlock);
  BlockCache cache(budget, Options(4));
  BlockKey k{"small.txt", "e1", 0};
  BlockHandle h = Must(cache.GetOrFetch(k, Writes("hello"), Within(10s)));
  EXPECT_EQ(Str(h), "hello");
  EXPECT_EQ(cache.Stats().bytes_cached, 5u);
  EXPECT_EQ(budget.used(), 5u);

  BlockHandle empty = Must(cache.GetOrFetch({"empty", "e0", 0}, Writes(""), Within(10s)));
  EXPECT_EQ(empty.size(), 0u);
  EXPECT_EQ(cache.Stats().bytes_cached, 5u);
  EXPECT_EQ(budget.used(), 5u);
}

TEST(BlockCacheTest, SizeHintSizesTheBufferAndIsCappedAtTheBlockSize) {
  MemoryBudget budget(4 * kBlock);
  BlockCache cache(budget, Options(4));
  size_t seen = 0;
  auto record = [&](std::span<char> into) -> Result<size_t> {
    seen = into.size();
    std::memset(into.data(), 'x', into.size());
    return into.size();
  };
  BlockHandle a = Must(cache.GetOrFetch({"k", "e", 0}, record, Within(10s, 100)));
  EXPECT_EQ(seen, 100u);
  EXPECT_EQ(a.size(), 100u);
  BlockHandle b = Must(cache.GetOrFetch({"k", "e", 1}, record, Within(10s, 10 * kBlock)));
  EXPECT_EQ(seen, kBlock);
  EXPECT_EQ(budget.used(), 100u + kBlock);
}

TEST(BlockCacheTest, PinnedBlockSurvivesEviction) {
  MemoryBudget budget(8 * kBlock);
  BlockCache cache(budget, Options(2));
  BlockKey a{"a", "e", 0}, b{"b", "e", 0}, c{"c", "e", 0};
  Must(cache.GetOrFetch(a, Writes(Pattern(a, kBlock)), Within(10s))).Reset();
  Must(cache.GetOrFetch(b, Writes(Pattern(b, kBlock)), Within(10s))).Reset();
  // a is the least recently released, but pinned again: c must evict b instead.
  std::optional<BlockHandle> pinned = cache.Lookup(a);
  ASSERT_TRUE(pinned.has_value());
  BlockHandle hc = Must(cache.GetOrFetch(c, Writes(Pattern(c, kBlock)), Within(10s)));

  EXPECT_EQ(Str(*pinned), Pattern(a, kBlock));
  EXPECT_TRUE(cache.Lookup(a).has_value());
  EXPECT_FALSE(cache.Lookup(b).has_value());
  BlockCacheStats s = cache.Stats();
  EXPECT_EQ(s.evictions, 1u);
  EXPECT_EQ(s.bytes_cached, 2 * kBlock);
  EXPECT_EQ(budget.used(), 2 * kBlock);
}

TEST(BlockCacheTest, EvictsTheLeastRecentlyUsedBlock) {
  MemoryBudget budget(8 * kBlock);
  BlockCache cache(budget, Options(3));
  BlockKey a{"a", "e", 0}, b{"b", "e", 0}, c{"c", "e", 0}, d{"d", "e", 0};
  std::string full(kBlock, 'z');
  for (const BlockKey& k : {a, b, c}) Must(cache.GetOrFetch(k, Writes(full), Within(10s)));
  ASSERT_TRUE(cache.Lookup(a).has_value());  // a becomes the most recently used.
  Must(cache.GetOrFetch(d, Writes(full), Within(10s)));
  EXPECT_FALSE(cache.Lookup(b).has_value()) << "b was the least recently used";
  EXPECT_TRUE(cache.Lookup(a).has_value());
  EXPECT_TRUE(cache.Lookup(c).has_value());
  EXPECT_TRUE(cache.Lookup(d).has_value());
  BlockCacheStats s = cache.Stats();
  EXPECT_EQ(s.evictions, 1u);
  EXPECT_EQ(s.blocks, 3u);
  EXPECT_EQ(budget.used(), 3 * kBlock);
}

TEST(BlockCacheTest, WhenEverythingIsPinnedAMissFailsBusyAtItsDeadline) {
  MemoryBudget budget(8 * kBlock);
  BlockCache cache(budget, Options(2));
  std::string full(kBlock, 'p');
  BlockHandle a = Must(cache.GetOrFetch({"a", "e", 0}, Writes(full), Within(10s)));
  BlockHandle b = Must(cache.GetOrFetch({"b", "e", 0}, Writes(full), Within(10s)));

  MonoTime start = RealClock().Now();
  Result<BlockHandle> r = cache.GetOrFetch({"c", "e", 0}, NoFetch, Within(50ms));
  EXPECT_GE(RealClock().Now() - start, Duration(50ms));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kBusy);
  EXPECT_TRUE(r.status().retryable());
  EXPECT_NE(r.status().message().find("block cache full"), std::string::npos)
      << r.status().message();

  EXPECT_EQ(Str(a), full);
  EXPECT_FALSE(cache.Lookup({"c", "e", 0}).has_value());
  BlockCacheStats s = cache.Stats();
  EXPECT_EQ(s.blocks, 2u);
  EXPECT_EQ(s.bytes_cached, 2 * kBlock);
  EXPECT_EQ(s.fetch_failures, 1u);
  EXPECT_EQ(s.waiting_for_room, 0u);
  EXPECT_EQ(budget.used(), 2 * kBlock);
}

TEST(BlockCacheTest, WhenEverythingIsPinnedAMissProceedsOnceAHandleIsReleased) {
  MemoryBudget budget(8 * kBlock);
  BlockCache cache(budget, Options(2));
  std::string full(kBlock, 'p');
  BlockHandle a = Must(cache.GetOrFetch({"a", "e", 0}, Writes(full), Within(10s)));
  BlockHandle b = Must(cache.GetOrFetch({"b", "e", 0}, Writes(full), Within(10s)));

  std::optional<Result<BlockHandle>> c;
  std::thread t([&] { c.emplace(cache.GetOrFetch({"c", "e", 0}, Writes("see"), Within(30s))); });
  ASSERT_TRUE(Eventually([&] { return cache.Stats().waiting_for_room == 1; }));
  a.Reset();
  t.join();
  ASSERT_TRUE(c.has_value());
  ASSERT_TRUE(c->ok()) << c->status().ToString();
  EXPECT_EQ(Str(**c), "see");
  EXPECT_FALSE(cache.Lookup({"a", "e", 0}).has_value()) << "a should have made room";
  EXPECT_EQ(cache.Stats().evictions, 1u);
  EXPECT_LE(cache.Stats().peak_bytes_cached, 2 * kBlock);
}

TEST(BlockCacheTest, ConcurrentMissesOfOneBlockFetchOnce) {
  constexpr int kThreads = 8;
  MemoryBudget budget(8 * kBlock);
  BlockCache cache(budget, Options(4));
  BlockKey k{"shared", "e", 3};
  std::atomic<int> fetches{0};
  auto slow_fetch = [&](std::span<char> into) -> Result<size_t> {
    fetches.fetch_add(1);
    // Hold the fetch open until every other caller has joined it.
    EXPECT_TRUE(Eventually([&] { return cache.Stats().coalesced == kThreads - 1; }));
    std::string p = Pattern(k, kBlock);
    std::memcpy(into.data(), p.data(), p.size());
    return p.size();
  };
  std::vector<std::optional<Result<BlockHandle>>> results(kThreads);
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back(
        [&, i] { results[i].emplace(cache.GetOrFetch(k, slow_fetch, Within(30s))); });
  }
  for (std::thread& t : threads) t.join();

  EXPECT_EQ(fetches.load(), 1);
  const char* data = nullptr;
  for (auto& r : results) {
    ASSERT_TRUE(r.has_value());
    ASSERT_TRUE(r->ok()) << r->status().ToString();
    EXPECT_EQ(Str(**r), Pattern(k, kBlock));
    if (data == nullptr) data = (*r)->data().data();
    EXPECT_EQ((*r)->data().data(), data) << "every caller must share the one block";
  }
  BlockCacheStats s = cache.Stats();
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.coalesced, static_cast<uint64_t>(kThreads - 1));
  EXPECT_EQ(s.blocks, 1u);
  EXPECT_EQ(budget.used(), kBlock);
}

TEST(BlockCacheTest, FailedFetchIsNotCachedAndReachesEveryWaiter) {
  constexpr int kThreads = 6;
  s3::FakeObjectClient fake;
  s3::FaultInjectingClient faulty(fake);
  std::string body = Pattern({"obj", "", 0}, 2 * kBlock);
  BlockKey k{"obj", fake.PutDirect("obj", body), 1};
  faulty.FailNext(s3::Op::kGet, 1, s3::InjectedError(ErrorCode::kServerError));
  MemoryBudget budget(8 * kBlock);
  BlockCache cache(budget, Options(4));

  BlockCache::FetchFn from_s3 = FromS3(faulty, k);
  auto fetch_after_all_joined = [&](std::span<char> into) -> Result<size_t> {
    EXPECT_TRUE(Eventually([&] { return cache.Stats().coalesced == kThreads - 1; }));
    return from_s3(into);
  };
  std::vector<std::optional<Result<BlockHandle>>> results(kThreads);
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back(
        [&, i] { results[i].emplace(cache.GetOrFetch(k, fetch_after_all_joined, Within(30s))); });
  }
  for (std::thread& t : threads) t.join();

  for (auto& r : results) {
    ASSERT_TRUE(r.has_value());
    ASSERT_FALSE(r->ok());
    EXPECT_EQ(r->status().code(), ErrorCode::kServerError);
    EXPECT_TRUE(r->status().retryable());
  }
  EXPECT_EQ(faulty.calls(s3::Op::kGet), 1u);
  BlockCacheStats s = cache.Stats();
  EXPECT_EQ(s.fetch_failures, 1u);
  EXPECT_EQ(s.blocks, 0u);
  EXPECT_EQ(s.bytes_cached, 0u);
  EXPECT_EQ(s.pinned_blocks, 0u);
  EXPECT_EQ(budget.used(), 0u);
  EXPECT_FALSE(cache.Lookup(k).has_value());

  // Not cached: the next caller fetches again, and this time the server answers.
  BlockHandle h = Must(cache.GetOrFetch(k, from_s3, Within(10s)));
  EXPECT_EQ(Str(h), body.substr(kBlock));
  EXPECT_EQ(faulty.calls(s3::Op::kGet), 2u);
}

TEST(BlockCacheTest, FetchThatClaimsMoreThanItsBufferIsAnErrorNotAnOverflow) {
  MemoryBudget budget(4 * kBlock);
  BlockCache cache(budget, Options(4));
  Result<BlockHandle> r = cache.GetOrFetch(
      {"k", "e", 0}, [](std::span<char> into) -> Result<size_t> { return into.size() + 1; },
      Within(10s));
  EXPECT_EQ(r.status().code(), ErrorCode::kInternal);
  EXPECT_EQ(cache.Stats().blocks, 0u);
  EXPECT_EQ(budget.used(), 0u);
}

TEST(BlockCacheTest, ThrowingFetchLeavesNothingBehind) {
  MemoryBudget budget(4 * kBlock);
  BlockCache cache(budget, Options(4));
  BlockKey k{"k", "e", 0};
  EXPECT_THROW((void)cache.GetOrFetch(
                   k, [](std::span<char>) -> Result<size_t> { throw std::runtime_error("boom"); },
                   Within(10s)),
               std::runtime_error);
  BlockCacheStats s = cache.Stats();
  EXPECT_EQ(s.blocks, 0u);
  EXPECT_EQ(s.pinned_blocks, 0u);
  EXPECT_EQ(s.bytes_cached, 0u);
  EXPECT_EQ(budget.used(), 0u);
  BlockHandle h = Must(cache.GetOrFetch(k, Writes("ok"), Within(10s)));
  EXPECT_EQ(Str(h), "ok");
}

TEST(BlockCacheTest, DifferentEtagIsADifferentBlock) {
  s3::FakeObjectClient server;
  std::string v1 = Pattern({"v1", "", 0}, 2 * kBlock);
  std::string v2 = Pattern({"v2", "", 0}, 2 * kBlock);
  std::string e1 = server.PutDirect("model.bin", v1);
  MemoryBudget budget(8 * kBlock);
  BlockCache cache(budget, Options(4));

  BlockKey old_block{"model.bin", e1, 0};
  BlockHandle h1 = Must(cache.GetOrFetch(old_block, FromS3(server, old_block), Within(10s)));
  std::string e2 = server.PutDirect("model.bin", v2);  // Another writer replaces the object.
  ASSERT_NE(e1, e2);
  BlockKey new_block{"model.bin", e2, 0};
  BlockHandle h2 = Must(cache.GetOrFetch(new_block, FromS3(server, new_block), Within(10s)));

  EXPECT_EQ(Str(h1), v1.substr(0, kBlock));
  EXPECT_EQ(Str(h2), v2.substr(0, kBlock));
  EXPECT_EQ(cache.Stats().misses, 2u);
  std::optional<BlockHandle> old_again = cache.Lookup(old_block);
  ASSERT_TRUE(old_again.has_value());
  EXPECT_EQ(Str(*old_again), v1.substr(0, kBlock));

  // A block of the old version that was never cached cannot be fetched any more: the fetch
  // pins the ETag, and the failure is not cached.
  BlockKey old_second{"model.bin", e1, 1};
  Result<BlockHandle> stale = cache.GetOrFetch(old_second, FromS3(server, old_second), Within(10s));
  EXPECT_EQ(stale.status().code(), ErrorCode::kPreconditionFailed);
  EXPECT_FALSE(cache.Lookup(old_second).has_value());
}

TEST(BlockCacheTest, InvalidateDropsAllVersions) {
  MemoryBudget budget(8 * kBlock);
  BlockCache cache(budget, Options(8));
  std::string full(kBlock, 'v');
  std::vector<BlockKey> doomed = {{"k", "e1", 0}, {"k", "e1", 1}, {"k", "e2", 0}};
  BlockKey other{"k2", "e1", 0};
  for (const BlockKey& b : doomed) Must(cache.GetOrFetch(b, Writes(full), Within(10s)));
  Must(cache.GetOrFetch(other, Writes(full), Within(10s)));
  ASSERT_EQ(budget.used(), 4 * kBlock);

  EXPECT_EQ(cache.InvalidateObject("k"), 3u);
  for (const BlockKey& b : doomed) EXPECT_FALSE(cache.Lookup(b).has_value());
  EXPECT_TRUE(cache.Lookup(other).has_value());
  BlockCacheStats s = cache.Stats();
  EXPECT_EQ(s.invalidated, 3u);
  EXPECT_EQ(s.blocks, 1u);
  EXPECT_EQ(s.bytes_cached, kBlock);
  EXPECT_EQ(budget.used(), kBlock);
  EXPECT_EQ(cache.InvalidateObject("k"), 0u);
}

TEST(BlockCacheTest, InvalidatedPinnedBlockStaysReadableUntilReleased) {
  MemoryBudget budget(8 * kBlock);
  BlockCache cache(budget, Options(4));
  BlockKey k{"k", "e", 0};
  std::string old_bytes(kBlock, 'o');
  BlockHandle old_handle = Must(cache.GetOrFetch(k, Writes(old_bytes), Within(10s)));

  EXPECT_EQ(cache.InvalidateObject("k"), 1u);
  EXPECT_EQ(Str(old_handle), old_bytes) << "a pinned block must not change or go away";
  EXPECT_FALSE(cache.Lookup(k).has_value());
  std::atomic<int> fetches{0};
  BlockHandle fresh =
      Must(cache.GetOrFetch(k, Writes(std::string(kBlock, 'n'), &fetches), Within(10s)));
  EXPECT_EQ(fetches.load(), 1) << "an invalidated block is fetched anew";
  EXPECT_EQ(cache.Stats().bytes_cached, 2 * kBlock);
  EXPECT_EQ(budget.used(), 2 * kBlock);

  old_handle.Reset();
  EXPECT_EQ(cache.Stats().bytes_cached, kBlock);
  EXPECT_EQ(budget.used(), kBlock);
  EXPECT_EQ(Str(fresh), std::string(kBlock, 'n'));
}

TEST(BlockCacheTest, BlockInvalidatedWhileBeingFetchedIsReturnedButNotCached) {
  MemoryBudget budget(8 * kBlock);
  BlockCache cache(budget, Options(4));
  BlockKey k{"k", "e", 0};
  size_t dropped = 0;
  BlockHandle h = Must(cache.GetOrFetch(
      k,
      [&](std::span<char> into) -> Result<size_t> {
        dropped = cache.InvalidateObject("k");  // The object changes while we read it.
        std::memset(into.data(), 'f', into.size());
        return into.size();
      },
      Within(10s)));
  EXPECT_EQ(dropped, 1u);
  EXPECT_EQ(Str(h), std::string(kBlock, 'f'));
  EXPECT_FALSE(cache.Lookup(k).has_value());
  EXPECT_EQ(budget.used(), kBlock);
  h.Reset();
  EXPECT_EQ(cache.Stats().bytes_cached, 0u);
  EXPECT_EQ(budget.used(), 0u);
}

TEST(BlockCacheTest, MissWaitsForTheSharedBudget) {
  MemoryBudget budget(4 * kBlock);
  BlockCache cache(budget, Options(2));
  // Writeback holds the whole budget: the cache has room but the daemon has no memory.
  Result<Reservation> writeback = budget.TryReserve(4 * kBlock);
  ASSERT_TRUE(writeback.ok());

  Result<BlockHandle> late = cache.GetOrFetch({"k", "e", 0}, NoFetch, Within(50ms));
  EXPECT_EQ(late.status().code(), ErrorCode::kTimeout);
  EXPECT_TRUE(late.status().retryable());
  EXPECT_EQ(cache.Stats().bytes_cached, 0u);
  EXPECT_EQ(cache.Stats().blocks, 0u);

  std::optional<Result<BlockHandle>> got;
  std::thread t([&] {
    got.emplace(cache.GetOrFetch({"k", "e", 0}, Writes(std::string(kBlock, 'w')), Within(30s)));
  });
  ASSERT_TRUE(Eventually([&] { return budget.waiters() == 1; }));
  writeback->Release();
  t.join();
  ASSERT_TRUE(got.has_value());
  ASSERT_TRUE(got->ok()) << got->status().ToString();
  EXPECT_EQ(budget.used(), kBlock);
}

TEST(BlockCacheTest, WaiterGivesUpAtItsDeadlineWhileTheFetchGoesOn) {
  MemoryBudget budget(4 * kBlock);
  BlockCache cache(budget, Options(4));
  BlockKey k{"k", "e", 0};
  std::atomic<bool> release_fetch{false};
  std::optional<Result<BlockHandle>> first;
  std::thread fetcher([&] {
    first.emplace(cache.GetOrFetch(
        k,
        [&](std::span<char> into) -> Result<size_t> {
          EXPECT_TRUE(Eventually([&] { return release_fetch.load(); }));
          std::memset(into.data(), 'a', into.size());
          return into.size();
        },
        Within(30s)));
  });
  ASSERT_TRUE(Eventually([&] { return cache.Stats().misses == 1; }));
  Result<BlockHandle> impatient = cache.GetOrFetch(k, NoFetch, Within(50ms));
  EXPECT_EQ(impatient.status().code(), ErrorCode::kTimeout);
  release_fetch.store(true);
  fetcher.join();
  ASSERT_TRUE(first.has_value() && first->ok());
  EXPECT_EQ(cache.Stats().pinned_blocks, 1u);  // Only `first` still pins it.
  first.reset();
  EXPECT_TRUE(cache.Lookup(k).has_value());
}

TEST(BlockCacheTest, HandleMovesItsPin) {
  MemoryBudget budget(4 * kBlock);
  BlockCache cache(budget, Options(4));
  BlockHandle a = Must(cache.GetOrFetch({"a", "e", 0}, Writes("a"), Within(10s)));
  BlockHandle moved(std::move(a));
  EXPECT_FALSE(a);  // NOLINT(bugprone-use-after-move): moved-from is empty.
  EXPECT_TRUE(moved);
  EXPECT_EQ(cache.Stats().pinned_blocks, 1u);
  BlockHandle b = Must(cache.GetOrFetch({"b", "e", 0}, Writes("b"), Within(10s)));
  EXPECT_EQ(cache.Stats().pinned_blocks, 2u);
  moved = std::move(b);  // Releases a's pin, takes b's.
  EXPECT_EQ(cache.Stats().pinned_blocks, 1u);
  EXPECT_EQ(Str(moved), "b");
  moved.Reset();
  EXPECT_EQ(cache.Stats().pinned_blocks, 0u);
}

TEST(BlockCacheTest, HashSeparatesEveryField) {
  EXPECT_EQ(HashBlockKey({"ab", "c", 0}), HashBlockKey({"ab", "c", 0}));
  EXPECT_NE(HashBlockKey({"ab", "c", 0}), HashBlockKey({"a", "bc", 0}));
  EXPECT_NE(HashBlockKey({"ab", "c", 0}), HashBlockKey({"ab", "c", 1}));
  EXPECT_NE(HashBlockKey({"ab", "c", 0}), HashBlockKey({"ab", "d", 0}));
}

TEST(BlockCacheTest, ValidateRejectsOptionsThatCannotWork) {
  MemoryBudget budget(8 * kBlock);
  BlockCacheOptions o = Options(4);
  EXPECT_TRUE(BlockCache::Validate(budget, o).ok());
  o.block_size = 0;
  EXPECT_EQ(BlockCache::Validate(budget, o).code(), ErrorCode::kInvalidArgument);
  o = Options(4);
  o.capacity_bytes = kBlock - 1;
  EXPECT_EQ(BlockCache::Validate(budget, o).code(), ErrorCode::kInvalidArgument);
  // One block is not enough either: a read across a block edge pins two.
  o = Options(1);
  Status one = BlockCache::Validate(budget, o);
  EXPECT_EQ(one.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(one.message().find("fewer than the 2 blocks"), std::string::npos) << one.ToString();
  EXPECT_TRUE(BlockCache::Validate(budget, Options(2)).ok());
  // A read of 3.5 blocks at an unaligned offset spans 5 of them.
  o = Options(4);
  o.largest_read = 3 * kBlock + kBlock / 2;
  Status short_of_a_read = BlockCache::Validate(budget, o);
  EXPECT_EQ(short_of_a_read.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(short_of_a_read.message().find("fewer than the 5 blocks"), std::string::npos)
      << short_of_a_read.ToString();
  o = Options(5);
  o.largest_read = 3 * kBlock + kBlock / 2;
  EXPECT_TRUE(BlockCache::Validate(budget, o).ok());
  o = Options(9);
  Status too_big = BlockCache::Validate(budget, o);
  EXPECT_EQ(too_big.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(too_big.message().find("exceeds the memory budget"), std::string::npos);
  EXPECT_EQ(BlockCacheOptions().block_size, 1u << 20);
}

TEST(BlockCacheTest, DestroyingTheCacheGivesEveryByteBack) {
  MemoryBudget budget(8 * kBlock);
  {
    BlockCache cache(budget, Options(4));
    for (uint64_t i = 0; i < 6; ++i) {
      Must(cache.GetOrFetch({"k", "e", i}, Writes(std::string(kBlock, 'd')), Within(10s)));
    }
    EXPECT_EQ(budget.used(), 4 * kBlock);
  }
  EXPECT_EQ(budget.used(), 0u);
  EXPECT_LE(budget.peak(), 4 * kBlock);
}

// Many threads, random blocks, pins held across fetches, invalidations, and a writeback
// stand-in competing for the same budget: neither bound is ever exceeded, and every block
// read has the right bytes.
TEST(BlockCacheTest, NeverExceedsBudgetUnderRandomLoad) {
  constexpr uint64_t kBudgetBlocks = 12;
  constexpr uint64_t kCacheBlocks = 8;
  constexpr int kReaders = 4;
  constexpr int kOpsPerReader = 1500;
  MemoryBudget budget(kBudgetBlocks * kBlock);
  std::atomic<uint64_t> ok{0}, busy{0}, timeouts{0}, max_budget{0}, max_cache{0};
  std::atomic<bool> stop{false};
  {
    BlockCache cache(budget, Options(kCacheBlocks));
    auto size_of = [](const BlockKey& k) { return k.index == 5 ? kBlock / 3 : kBlock; };

    std::vector<std::thread> threads;
    threads.reserve(kReaders + 1);
    for (int t = 0; t < kReaders; ++t) {
      threads.emplace_back([&, t] {
        std::mt19937 rng(static_cast<unsigned>(t) * 7919 + 1);
        std::vector<BlockHandle> held;
        for (int i = 0; i < kOpsPerReader; ++i) {
          BlockKey k{"obj" + std::to_string(rng() % 6), "etag" + std::to_string(rng() % 2),
                     rng() % 6};
          if (rng() % 100 == 0) (void)cache.InvalidateObject(k.key);
          const uint64_t n = size_of(k);
          Result<BlockHandle> r =
              cache.GetOrFetch(k, Writes(Pattern(k, n)), Within(2s, rng() % 2 ? n : 0));
          if (!r.ok()) {
            (r.status().code() == ErrorCode::kBusy ? busy : timeouts).fetch_add(1);
            EXPECT_TRUE(r.status().code() == ErrorCode::kBusy ||
                        r.status().code() == ErrorCode::kTimeout)
                << r.status().ToString();
            continue;
          }
          ok.fetch_add(1);
          EXPECT_EQ(r->key(), k);
          ASSERT_EQ(r->size(), n);
          ASSERT_EQ(Str(*r), Pattern(k, n))
              << "wrong bytes for block " << k.index << " of " << k.key;
          held.push_back(std::move(r).value());
          // Keep at most one pin across the next fetch, so readers rarely starve each other.
          if (held.size() > 1 || rng() % 2) held.erase(held.begin());
        }
      });
    }
    threads.emplace_back([&] {  // Writeback stand-in: takes budget bytes in bursts.
      std::mt19937 rng(42);
      while (!stop.load()) {
        Result<Reservation> r = budget.Reserve((1 + rng() % 4) * kBlock, Soon(100ms));
        std::this_thread::sleep_for(std::chrono::microseconds(rng() % 500));
      }
    });
    std::thread sampler([&] {
      while (!stop.load()) {
        uint64_t used = budget.used(), cached = cache.Stats().bytes_cached;
        if (used > max_budget.load()) max_budget.store(used);
        if (cached > max_cache.load()) max_cache.store(cached);
        std::this_thread::yield();
      }
    });
    for (int t = 0; t < kReaders; ++t) threads[t].join();
    stop.store(true);
    threads.back().join();
    sampler.join();

    BlockCacheStats s = cache.Stats();
    EXPECT_EQ(s.pinned_blocks, 0u);
    EXPECT_LE(s.peak_bytes_cached, kCacheBlocks * kBlock);
    EXPECT_LE(s.bytes_cached, kCacheBlocks * kBlock);
    EXPECT_EQ(budget.used(), s.bytes_cached) << "only the cache holds budget bytes now";
    EXPECT_GT(s.hits, 0u);
    EXPECT_GT(s.evictions, 0u);
  }
  EXPECT_EQ(budget.used(), 0u);
  EXPECT_LE(budget.peak(), kBudgetBlocks * kBlock);
  EXPECT_LE(max_budget.load(), kBudgetBlocks * kBlock);
  EXPECT_LE(max_cache.load(), kCacheBlocks * kBlock);
  EXPECT_GT(ok.load(), static_cast<uint64_t>(kReaders * kOpsPerReader / 2))
      << busy.load() << " busy, " << timeouts.load() << " timeouts";
}

// --- Recycling: spares and drop-behind ---------------------------------------------------

// A fetch that records where the cache asked it to write, then writes `content`.
BlockCache::FetchFn WritesAt(std::string content, const char** where) {
  return [content = std::move(content), where](std::span<char> into) -> Result<size_t> {
    *where = into.data();
    size_t n = std::min(content.size(), into.size());
    std::memcpy(into.data(), content.data(), n);
    return n;
  };
}

TEST(BlockCacheTest, DiscardDropsAReadyBlockAndItsBufferServesTheNextMiss) {
  MemoryBudget budget(16 * kBlock);
  BlockCache cache(budget, Options(8));  // Up to 2 spares (a quarter of the capacity).
  BlockKey a{"a", "e", 0}, b{"a", "e", 1};
  const char* a_buffer = nullptr;
  Must(cache.GetOrFetch(a, WritesAt(Pattern(a, kBlock), &a_buffer), Within(10s))).Reset();

  EXPECT_TRUE(cache.Discard(a));
  EXPECT_FALSE(cache.Lookup(a).has_value());
  BlockCacheStats s = cache.Stats();
  EXPECT_EQ(s.discarded, 1u);
  EXPECT_EQ(s.blocks, 0u);
  EXPECT_EQ(s.spare_bytes, kBlock);
  EXPECT_EQ(s.bytes_cached, kBlock) << "a spare counts against the capacity";
  EXPECT_EQ(budget.used(), kBlock) << "and keeps its budget bytes";

  const char* b_buffer = nullptr;
  BlockHandle hb = Must(cache.GetOrFetch(b, WritesAt(Pattern(b, kBlock), &b_buffer), Within(10s)));
  EXPECT_EQ(b_buffer, a_buffer) << "the miss filled the discarded block's buffer";
  EXPECT_EQ(Str(hb), Pattern(b, kBlock)) << "with its own bytes";
  s = cache.Stats();
  EXPECT_EQ(s.recycled, 1u);
  EXPECT_EQ(s.spare_bytes, 0u);
  EXPECT_EQ(s.bytes_cached, kBlock);
  EXPECT_EQ(budget.used(), kBlock);
}

TEST(BlockCacheTest, DiscardOfAPinnedBlockDropsItAtItsLastUnpin) {
  MemoryBudget budget(16 * kBlock);
  BlockCache cache(budget, Options(8));
  BlockKey a{"a", "e", 0};
  BlockHandle h1 = Must(cache.GetOrFetch(a, Writes(Pattern(a, kBlock)), Within(10s)));
  std::optional<BlockHandle> h2 = cache.Lookup(a);
  ASSERT_TRUE(h2.has_value());

  EXPECT_FALSE(cache.Discard(a)) << "pinned: not dropped yet";
  EXPECT_EQ(Str(h1), Pattern(a, kBlock));
  h1.Reset();
  EXPECT_EQ(cache.Stats().blocks, 1u) << "still pinned by the second handle";
  EXPECT_EQ(Str(*h2), Pattern(a, kBlock));
  h2->Reset();
  BlockCacheStats s = cache.Stats();
  EXPECT_EQ(s.blocks, 0u);
  EXPECT_EQ(s.spare_bytes, kBlock);
  EXPECT_FALSE(cache.Lookup(a).has_value());
}

TEST(BlockCacheTest, DiscardLeavesBlocksBeingFetchedAndAbsentOnesAlone) {
  MemoryBudget budget(16 * kBlock);
  BlockCache cache(budget, Options(8));
  BlockKey a{"a", "e", 0};
  EXPECT_FALSE(cache.Discard(a));
  std::atomic<bool> release{false};
  std::thread fetcher([&] {
    Must(cache.GetOrFetch(
        a,
        [&](std::span<char> into) -> Result<size_t> {
          while (!release.load()) std::this_thread::sleep_for(1ms);
          std::memset(into.data(), 'x', into.size());
          return into.size();
        },
        Within(10s)));
  });
  ASSERT_TRUE(Eventually([&] { return cache.Stats().blocks == 1; }));
  EXPECT_FALSE(cache.Discard(a)) << "being fetched";
  release = true;
  fetcher.join();
  EXPECT_TRUE(cache.Lookup(a).has_value()) << "the fetch published it";
  EXPECT_EQ(cache.Stats().discarded, 0u);
}

TEST(BlockCacheTest, SparesAreBoundedAndFreedBeforeAnyBlockIsEvicted) {
  MemoryBudget budget(16 * kBlock);
  BlockCache cache(budget, Options(8));  // At most 2 spares.
  std::vector<BlockKey> keys;
  for (uint64_t i = 0; i < 8; ++i) keys.push_back(BlockKey{"k", "e", i});
  for (const BlockKey& k : keys) Must(cache.GetOrFetch(k, Writes(Pattern(k, kBlock)), Within(10s)));
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(cache.Discard(keys[i]));
  BlockCacheStats s = cache.Stats();
  EXPECT_EQ(s.spare_bytes, 2 * kBlock) << "two kept, two freed";
  EXPECT_EQ(s.bytes_cached, 6 * kBlock);
  EXPECT_EQ(budget.used(), 6 * kBlock);

  // Five short blocks of 3/4 of a block (a spare serves only a full block) need more than
  // the two free blocks: the spares are freed for them before any cached block is evicted.
  for (uint64_t i = 0; i < 5; ++i) {
    BlockKey k{"short", "e", i};
    Must(cache.GetOrFetch(k, Writes(std::string(kBlock * 3 / 4, 's')),
                          Within(10s, kBlock * 3 / 4)));
  }
  s = cache.Stats();
  EXPECT_EQ(s.evictions, 0u);
  EXPECT_EQ(s.spare_bytes, 0u);
  EXPECT_EQ(s.recycled, 0u);
  for (uint64_t i = 4; i < 8; ++i) EXPECT_TRUE(cache.Lookup(keys[i]).has_value());
  EXPECT_LE(s.peak_bytes_cached, cache.capacity());
  EXPECT_LE(budget.peak(), 8 * kBlock);
}

TEST(BlockCacheTest, AMissThatEvictsFillsTheEvictedBlocksBuffer) {
  MemoryBudget budget(16 * kBlock);
  BlockCache cache(budget, Options(2));
  BlockKey a{"a", "e", 0}, b{"b", "e", 0}, c{"c", "e", 0};
  const char* a_buffer = nullptr;
  const char* c_buffer = nullptr;
  Must(cache.GetOrFetch(a, WritesAt(Pattern(a, kBlock), &a_buffer), Within(10s))).Reset();
  Must(cache.GetOrFetch(b, Writes(Pattern(b, kBlock)), Within(10s))).Reset();
  BlockHandle hc = Must(cache.GetOrFetch(c, WritesAt(Pattern(c, kBlock), &c_buffer), Within(10s)));
  EXPECT_EQ(c_buffer, a_buffer);
  EXPECT_EQ(Str(hc), Pattern(c, kBlock));
  BlockCacheStats s = cache.Stats();
  EXPECT_EQ(s.evictions, 1u);
  EXPECT_EQ(s.recycled, 1u);
  EXPECT_EQ(s.bytes_cached, 2 * kBlock);
  EXPECT_EQ(budget.used(), 2 * kBlock);
  EXPECT_FALSE(cache.Lookup(a).has_value());
}

TEST(BlockCacheTest, ARecycledBufferFilledShortShowsOnlyTheBytesWritten) {
  MemoryBudget budget(16 * kBlock);
  BlockCache cache(budget, Options(8));
  BlockKey a{"a", "e", 0}, b{"b", "e", 0};
  Must(cache.GetOrFetch(a, Writes(std::string(kBlock, 'A')), Within(10s))).Reset();
  ASSERT_TRUE(cache.Discard(a));
  // The object turned out shorter than a block: 100 bytes written into the reused buffer.
  BlockHandle hb = Must(cache.GetOrFetch(b, Writes(std::string(100, 'b')), Within(10s)));
  EXPECT_EQ(Str(hb), std::string(100, 'b')) << "none of the old block's bytes";
  BlockCacheStats s = cache.Stats();
  EXPECT_EQ(s.recycled, 1u);
  EXPECT_EQ(s.bytes_cached, 100u) << "the unused pages went back";
  EXPECT_EQ(budget.used(), 100u);
}

}  // namespace
}  // namespace bucketfs::cache
