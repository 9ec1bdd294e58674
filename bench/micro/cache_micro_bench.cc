// Micro-benchmarks of the block cache's hot path: hits under contention from several
// threads, misses that evict, and the block-key hash.
#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include <cstring>
#include <memory>

#include "cache/block_cache.h"
#include "cache/memory_budget.h"

namespace bucketfs::cache {
namespace {

constexpr uint64_t kBlock = 64 * 1024;  // Small blocks: the benchmark measures bookkeeping.
constexpr int kHotBlocks = 256;

struct Fixture {
  MemoryBudget budget{kHotBlocks * kBlock * 2};
  BlockCache cache{budget, BlockCacheOptions{.capacity_bytes = kHotBlocks * kBlock,
                                             .block_size = kBlock}};
};

Fixture& Shared() {
  static auto* f = new Fixture();  // Lives for the process: handles never outlive it.
  return *f;
}

Result<size_t> Fill(std::span<char> into) {
  std::memset(into.data(), 'x', into.size());
  return into.size();
}

BlockKey Key(int i) { return BlockKey{fmt::format("datasets/shard-{:05}.tar", i / 16), "etag-1", static_cast<uint64_t>(i % 16)}; }

// Every thread reads blocks that are all cached: lookup, pin, unpin.
void BM_HitUnderContention(benchmark::State& state) {
  Fixture& f = Shared();
  if (state.thread_index() == 0) {
    for (int i = 0; i < kHotBlocks; ++i) (void)f.cache.GetOrFetch(Key(i), Fill);
  }
  int i = state.thread_index() * 37;
  for (auto _ : state) {
    auto h = f.cache.Lookup(Key(i++ % kHotBlocks));
    benchmark::DoNotOptimize(h);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_HitUnderContention)->Threads(1)->Threads(2)->Threads(4)->UseRealTime();

// Every access misses and evicts the coldest block: the admission path.
void BM_MissWithEviction(benchmark::State& state) {
  MemoryBudget budget(kHotBlocks * kBlock);
  BlockCache cache(budget, BlockCacheOptions{.capacity_bytes = kHotBlocks * kBlock / 2,
                                             .block_size = kBlock});
  int i = 0;
  for (auto _ : state) {
    auto h = cache.GetOrFetch(Key(i++), Fill);
    benchmark::DoNotOptimize(h);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_MissWithEviction);

void BM_HashBlockKey(benchmark::State& state) {
  BlockKey key = Key(12345);
  for (auto _ : state) benchmark::DoNotOptimize(HashBlockKey(key));
}
BENCHMARK(BM_HashBlockKey);

}  // namespace
}  // namespace bucketfs::cache
