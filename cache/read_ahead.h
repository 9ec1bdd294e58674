// ReadAhead: how one open file handle reads one version of an object, fast.
//
// Contract:
//  - A ReadAhead serves Read(offset, length) for one object version (key, ETag, size) fixed
//    at open. Every GET it makes carries If-Match of that ETag; an object replaced or deleted
//    since then is kStale (ESTALE), never a mix of two versions.
//  - Thread-safe: the kernel sends several reads of one handle at once (async reads), and
//    they may arrive out of order.
//  - A ReadReply pins what it returns (cache blocks, or a buffer charged to the budget) until
//    it is destroyed, so the FUSE adapter hands the bytes to the kernel without copying them.
//  - Reads at or past the end return an empty reply; a read running past the end is clipped.
//  - Every wait is bounded by ReadAheadOptions::timeout: for memory, for room in the cache,
//    for a GET (retries happen inside the object client).
//
// How it works (the design essay):
//  - Data comes in blocks of the shared BlockCache (1 MiB by default), keyed by
//    (key, ETag, index), so every handle reading the same object shares the same blocks and
//    a block fetched once serves all of them.
//  - Sequential detection. A read is sequential when it starts inside the window around
//    where the previous read ended: [last_end - window, last_end + window]. The slack on
//    both sides is there because the kernel issues its own read-ahead as several concurrent
//    requests that can overtake one another. The first read at offset 0 counts as
//    sequential: most files are read from the start.
//  - The window. Each sequential read that enters a new block doubles the window, from
//    `initial_window` (1 MiB, and at least a quarter block) up to `max_window` (64 MiB by
//    default). After serving a read that ends in block b, the blocks (b, b + window/block_size] are prefetched by tasks on
//    the shared TaskPool, at most `max_parallel_gets` GETs in flight per handle. A prefetch
//    is a BlockCache::GetOrFetch whose handle is dropped at once: the block lands unpinned in
//    the cache, where the reader (or any other handle) finds it, or joins its fetch while it
//    is still in flight (single flight). So a forward seek inside the window reuses what is
//    already fetched or in flight, and nothing is fetched twice.
//  - Drop-behind. Once a sequential stream is a whole block past a block, that block is
//    discarded from the cache (BlockCache::Discard): the kernel's page cache holds its bytes
//    now (a re-read of the same version is served from there: keep_cache), so keeping a
//    second copy would only fill the cache, and the freed buffer is reused by the next
//    block's fetch instead of fresh pages that the kernel must zero. A long read thus
//    cycles about a window of blocks, whatever the file's size. One block is kept behind
//    because the kernel's concurrent reads can arrive slightly out of order.
//  - Random reads (outside the window) reset the window to its initial size and fetch only
//    the bytes asked for, aligned out to `random_alignment` (4 KiB), with one ranged GET
//    into a buffer of that size: a 4 KiB pread costs one small GET, not a 4 MiB block and not
//    a burst of prefetches. Blocks already in the cache still serve random reads. With
//    `random_fill` (off by default, see there), an object that fits in half the cache also
//    gets the block a random read touched prefetched in the background (after the small GET
//    answered, one at a time per handle), so a file read at random soon reads from memory;
//    a larger object does not, since random reads over a big dataset would fetch a block
//    per 4 KiB asked and evict everything else.
//  - Memory. Blocks live in the BlockCache, which is bounded by its capacity and charged to
//    the daemon's one MemoryBudget; random-read buffers are charged to the same budget, and
//    a reader waits (back-pressure) rather than the daemon growing. Prefetches never wait
//    for memory: a prefetch that finds no room in the cache or no budget at once fails, and
//    that failure halves the handle's window (it shrinks under memory pressure) instead of
//    occupying a pool thread. The window is also never more than a quarter of the cache, so
//    four sequential readers can each keep a full window, and a prefetched block is rarely
//    evicted before its reader arrives. A handle holds no block pins between reads.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "cache/block_cache.h"
#include "cache/disk_cache.h"
#include "cache/memory_budget.h"
#include "common/clock.h"
#include "common/status.h"
#include "common/task_pool.h"
#include "s3/object_client.h"

namespace bucketfs::cache {

// The version of an object a handle reads: fixed at open.
struct ObjectVersion {
  std::string key;
  std::string etag;
  uint64_t size = 0;
};

struct ReadAheadOptions {
  uint64_t initial_window = 1ull << 20;
  uint64_t max_window = 64ull << 20;  // Capped further at a quarter of the cache.
  size_t max_parallel_gets = 8;       // Prefetch GETs in flight per handle.
  uint64_t random_alignment = 4096;   // Random reads fetch [align_down, align_up).
  // Fill the blocks that random reads touch, in the background, for objects that fit in
  // half the cache. Off by default: measured on 2 cores, it took fio's 4 KiB random reads
  // of a 1 GiB file from 358 to 27k-34k IOPS, but doubled the latency of cold random reads
  // (2-3 ms to 6-7 ms mean) because the fills compete with them for the server.
  bool random_fill = false;
  // Discard blocks a sequential read has passed (see "Drop-behind"). Measured on a cold 1 GiB
  // read: zeroing fresh pages for every block was ~25% of the daemon's CPU.
  bool drop_behind = true;
  Duration timeout = std::chrono::seconds(60);
};

// What the daemon shares among all handles. Everything must outlive every ReadAhead, and
// the pool must be drained (destroyed) before the cache is.
struct ReadContext {
  s3::ObjectClient* client = nullptr;
  BlockCache* cache = nullptr;
  MemoryBudget* budget = nullptr;
  TaskPool* pool = nullptr;
  Clock* clock = nullptr;  // nullptr: RealClock().
  DiskCache* disk = nullptr;  // --cache-dir; nullptr: blocks come from S3 only.
};

// The bytes of one read, pinned until destroyed: `pieces` in order, backed by `pins` or by
// `owned`.
struct ReadReply {
  std::vector<std::span<const char>> pieces;
  std::vector<BlockHandle> pins;
  std::unique_ptr<char[]> owned;
  Reservation owned_charge;

  size_t size() const;
  // Copies the pieces out (tests, and callers that need one contiguous buffer).
  std::string ToString() const;
};

struct ReadAheadStats {
  uint64_t sequential_reads = 0;
  uint64_t random_reads = 0;
  uint64_t direct_gets = 0;        // Random reads served by a small ranged GET.
  uint64_t random_fills = 0;       // Blocks prefetched after random reads (objects that fit
                                   // in half the cache).
  uint64_t prefetches_issued = 0;
  uint64_t prefetches_failed = 0;  // No room, no budget, or the GET failed.
  uint64_t window = 0;             // Current window in bytes.
};

class ReadAhead {
 public:
  ReadAhead(const ReadContext& context, ObjectVersion object, ReadAheadOptions options = {});
  ReadAhead(const ReadAhead&) = delete;
  ReadAhead& operator=(const ReadAhead&) = delete;
  // Returns at once; prefetches still in flight finish into the cache on their own.
  ~ReadAhead();

  Result<ReadReply> Read(uint64_t offset, size_t length);

  const ObjectVersion& object() const { return shared_->object; }
  ReadAheadStats Stats() const;

 private:
  // What prefetch tasks share with the handle; kept alive by the tasks after the handle
  // closes.
  struct Shared {
    ReadContext context;
    ObjectVersion object;
    Duration timeout{};
    std::atomic<size_t> inflight{0};
    std::atomic<bool> pressure{false};  // A prefetch failed for room or budget.
    std::atomic<uint64_t> issued{0};
    std::atomic<uint64_t> failed{0};
    // Blocks below this were dropped behind: a prefetch of one that runs late is skipped.
    std::atomic<uint64_t> dropped_below{0};
  };

  // Fetches block `index` into `into` with If-Match: the BlockCache fetch function.
  static Result<size_t> FetchBlock(const Shared& shared, uint64_t index, std::span<char> into,
                                   MonoTime deadline);
  // `*fetched` (if given) is set when this call ran the fetch itself. A `prefetch` of a
  // missing block the reader has dropped behind fails with kCancelled instead of fetching.
  static Result<BlockHandle> GetBlock(const Shared& shared, uint64_t index,
                                      const FetchOptions& options, MonoTime get_deadline,
                                      bool* fetched = nullptr, bool prefetch = false);
  // Queues a prefetch of block `index` on the pool; false if refused (GETs in flight at the
  // cap, or the pool's queue full).
  bool SubmitPrefetch(uint64_t index);
  // Queues prefetches of blocks up to `last_block` that are not yet issued. Requires mu_.
  void Prefetch(uint64_t last_block);
  // The blocks a sequential read has passed, to discard: [*first, *last). Requires mu_.
  void BlocksBehindLocked(uint64_t* first, uint64_t* last);
  Result<ReadReply> ReadFromBlocks(uint64_t offset, uint64_t length, MonoTime deadline);
  // A cached block is exactly as long as this handle's version makes that block. Blocks are
  // keyed by ETag, so only an object without one can find another version's block here.
  bool HasVersionSize(const BlockHandle& h) const;
  Result<ReadReply> ReadDirect(uint64_t offset, uint64_t length, MonoTime deadline);
  uint64_t InitialWindow() const;
  uint64_t MaxWindow() const;

  const std::shared_ptr<Shared> shared_;
  const ReadAheadOptions options_;
  Clock& clock_;
  const uint64_t block_size_;
  const uint64_t block_count_;

  mutable std::mutex mu_;
  uint64_t last_end_ = 0;           // Guarded by mu_. Where the latest read ended.
  uint64_t window_ = 0;             // Guarded by mu_.
  uint64_t next_prefetch_ = 0;      // Guarded by mu_. First block not yet prefetched.
  uint64_t next_growth_block_ = 0;  // Guarded by mu_. Entering it doubles the window.
  uint64_t next_discard_ = 0;       // Guarded by mu_. First block not yet dropped behind.
  bool started_ = false;            // Guarded by mu_.
  ReadAheadStats stats_;            // Guarded by mu_ (prefetch counters from shared_).
};

}  // namespace bucketfs::cache
