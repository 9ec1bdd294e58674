// BlockCache: the daemon-wide cache of object data, in fixed-size blocks, bounded by bytes.
//
// Contract:
//  - A block is identified by BlockKey (object key, ETag, block index): block i holds bytes
//    [i * block_size, (i + 1) * block_size) of that version of the object, or fewer for the
//    last block. A new ETag is a different block, so a replaced object can never be served
//    from the old one's bytes; InvalidateObject() frees the old ones early.
//  - Thread-safe: any number of threads may call any method at once.
//  - Lookup() returns a BlockHandle for a block that is ready, or nothing; it never blocks
//    and never fetches.
//  - GetOrFetch() returns the block, fetching it on a miss by calling `fetch` on the caller's
//    thread with no lock held. `fetch` writes the block's bytes straight into the cache's
//    buffer (pass the span to ObjectClient::Get: no extra copy) and returns how many it wrote;
//    fewer than into.size() means the object ends inside this block. Concurrent callers for
//    the same missing block wait for that one fetch (single flight) instead of issuing their
//    own; their `fetch` is never called. A failed fetch returns its Status to the fetching
//    caller and to every waiter, and is not cached: the next call fetches again.
//  - A BlockHandle pins its block: while any handle to it is alive the block is neither
//    evicted nor freed, and its bytes never change. Handles are move-only; every handle must
//    be released before the cache is destroyed (destroying it earlier aborts the process).
//  - Memory: the bytes of every block (ready, being fetched, or dropped but still pinned)
//    count against `capacity_bytes` and are charged to the MemoryBudget; neither bound is
//    ever exceeded. Per-entry bookkeeping (key strings, ~200 bytes) is not charged.
//  - Deadlines (FetchOptions::deadline, default `default_timeout` from now) bound all waiting
//    inside GetOrFetch: for cache room, for the budget, for another caller's fetch. The fetch
//    itself is bounded by the caller's own ObjectClient CallOptions inside `fetch`.
//    Errors: kBusy (retryable) when no room could be made in the cache before the deadline;
//    kTimeout (retryable) when the budget or another caller's fetch did not come through in
//    time; the fetch's own Status otherwise. A waiter that joined someone else's fetch gets
//    that fetch's outcome, including a budget timeout judged on the fetching caller's deadline.
//
// Design:
//  - Admission of a miss, in order: (1) room in the cache: evict least-recently-used
//    unpinned ready blocks until the new block fits under capacity_bytes; (2) bytes from the
//    MemoryBudget, which is shared with writeback and read-ahead and queues callers FIFO
//    (back-pressure). Evicted blocks are freed, and their budget bytes given back, before
//    step 2 asks for new ones.
//  - When everything is pinned or being fetched, step (1) waits until a handle is released,
//    a fetch fails or a block is invalidated, and fails with kBusy at the deadline. It never
//    goes past capacity_bytes, not even while the budget has room: the budget's remainder
//    belongs to writeback, and the cache cannot be made to give memory back on demand (no
//    reclaim hook yet), so capacity_bytes must leave writeback its share. Pins are short (a
//    reader holds one while copying out of the block), so the wait is short unless callers
//    hold handles while waiting for others: a caller that holds pins and waits can wait out
//    its deadline if all the others do the same.
//  - Eviction is exact LRU over unpinned ready blocks: a block leaves the LRU list while
//    pinned and goes back at the most-recent end when its last handle is released. LRU over
//    CLOCK because with one lock both are O(1) per operation, and CLOCK's advantage (hits
//    that take no lock) does not matter at one lookup per block. A long sequential read can
//    flush the cache; read-ahead may later insert such blocks at the cold end.
//  - One mutex, not shards, and not oneTBB: every critical section is a hash lookup or a
//    list splice, and none covers an allocation, a free, a copy, a fetch or a budget call.
//    At 1 MiB blocks a 10 GB/s read stream takes ~10^4 locks per second, far below where
//    one uncontended-most-of-the-time mutex costs anything measurable. One lock buys an exact
//    global LRU and exact byte accounting; per-shard capacity (leveldb's ShardedLRUCache)
//    would split a 64 MiB cache of 1 MiB blocks into 16 shards of 4 blocks each.
//    tbb::concurrent_hash_map would make the index finer-grained, but the LRU list, the byte
//    count and the fill state still need a lock of their own, which is two locks per
//    operation instead of one. Keys are hashed with XXH3, so sharding the index later, if a
//    profile asks for it, is a local change behind this interface.
//  - Buffers are anonymous mappings of their own (2 MiB-aligned with a transparent-huge-page
//    hint from 2 MiB up), so freeing one returns its memory to the system at once. They are
//    charged their data bytes; the rest of the last 4 KiB page is bookkeeping, like the key.
//  - Short blocks: FetchOptions::size_hint (the caller knows the object's size) sizes the
//    buffer of a last block exactly. If a fetch still returns less than the buffer, the
//    pages past the data are unmapped and the unused bytes go back to the cache and the
//    budget, so a small file costs its size, not a block.
//  - Recycling. Zeroing fresh pages was ~25% of the daemon's CPU on a cold sequential read
//    (the kernel clears each new page on first touch), so a full-size block's buffer is
//    reused rather than unmapped when it can be: a miss that must evict takes the evicted
//    block's buffer and budget bytes as they are; a block dropped by Discard() is kept as
//    a spare, up to `max_spare_blocks` and a quarter of the capacity, for the next miss.
//    Spares count in the cache's bytes and keep their budget bytes; a miss that needs room
//    frees spares before it evicts a block. (Invalidated blocks are freed: their object is
//    gone, and that is rare.) The stale bytes of a reused buffer are never shown: a fetch
//    writes the block, and only the bytes it wrote are served.
//  - Discard(key) is for a reader done with a block that the kernel's page cache now holds
//    (read-ahead's drop-behind, cache/read_ahead.h): the block leaves at once, or at its
//    last unpin, and its buffer becomes a spare. A long sequential read then cycles a few
//    buffers instead of filling the cache with a second copy of the page cache.
//  - InvalidateObject() scans the index: O(cached blocks), which at 1 MiB blocks is a few
//    thousand entries, on a rare event (an object replaced, renamed or deleted).
//
// Lock order: BlockCache::mu_ is held only around index/LRU/accounting updates and while
// waiting on condition variables bound to it. It is never held while calling the
// MemoryBudget, `fetch`, malloc/free of block buffers, or user code; the only lock taken
// under it is the Clock's (FakeClock's mutex, a leaf). Freed blocks are destroyed (buffer
// freed, Reservation given back) after mu_ is dropped.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "cache/mapped_buffer.h"
#include "cache/memory_budget.h"
#include "common/clock.h"
#include "common/status.h"

namespace bucketfs::cache {

struct BlockKey {
  std::string key;     // Object key.
  std::string etag;    // The version the bytes were read from (unquoted).
  uint64_t index = 0;  // Block number within the object.

  bool operator==(const BlockKey&) const = default;
};

// XXH3-64 of the key, the ETag and the index (each field hashed separately, so
// ("ab", "c") and ("a", "bc") differ).
uint64_t HashBlockKey(const BlockKey& key);

inline constexpr uint64_t kDefaultBlockSize = 1ull << 20;

struct BlockCacheOptions {
  // <= the budget's capacity, and room for every block one read pins at once: two (a read
  // across a block edge), or what `largest_read` bytes at any offset span.
  uint64_t capacity_bytes = 0;
  uint64_t block_size = kDefaultBlockSize;
  // The most bytes one read asks for (the FUSE max_read); 0: at most a block.
  uint64_t largest_read = 0;
  // Buffers of blocks that left the cache kept for the next miss (see "Recycling"); at most
  // a quarter of the capacity. 0: none.
  size_t max_spare_blocks = 16;
  // Deadline of a GetOrFetch() that does not give one.
  Duration default_timeout = std::chrono::seconds(30);
  Clock* clock = nullptr;  // Judges deadlines; nullptr: RealClock(). Must outlive the cache.
};

struct FetchOptions {
  // Bounds waiting for room, for the budget and for another caller's fetch (not the fetch).
  std::optional<MonoTime> deadline;
  // Bytes this block will hold, when the caller knows (the object's last block); 0: a whole
  // block. Larger than block_size: block_size.
  uint64_t size_hint = 0;
  // For prefetches: when another caller is already fetching the block, return an empty
  // handle at once (the block will land in the cache) instead of waiting for that fetch.
  bool skip_if_in_flight = false;
};

struct BlockCacheStats {
  uint64_t hits = 0;            // Lookup()/GetOrFetch() found the block ready.
  uint64_t misses = 0;          // Lookup() found nothing ready; GetOrFetch() started a fetch.
  uint64_t coalesced = 0;       // GetOrFetch() joined a fetch already in flight.
  uint64_t evictions = 0;       // Blocks evicted to make room.
  uint64_t invalidated = 0;     // Blocks dropped by InvalidateObject().
  uint64_t fetch_failures = 0;  // Fetches that failed (fetch error, no room, no budget).
  uint64_t discarded = 0;       // Blocks dropped by Discard() (now or at their last unpin).
  uint64_t recycled = 0;        // Misses that filled a reused buffer (no fresh pages).
  uint64_t bytes_cached = 0;    // Bytes held by blocks (ready, being fetched, or dropped
                                // but still pinned) and by spare buffers. Never above
                                // capacity.
  uint64_t spare_bytes = 0;     // Of bytes_cached: spare buffers.
  uint64_t peak_bytes_cached = 0;
  uint64_t blocks = 0;            // Blocks in the index (ready or being fetched).
  uint64_t pinned_blocks = 0;     // Blocks with at least one handle or waiter.
  uint64_t waiting_for_room = 0;  // GetOrFetch() callers waiting for room right now.
  uint64_t capacity = 0;
};

namespace block_cache_internal {
struct Entry;
}  // namespace block_cache_internal

class BlockCache;

// A pinned, read-only view of one ready block. Move-only; an empty handle (default
// constructed, moved from, or Reset()) pins nothing.
class BlockHandle {
 public:
  BlockHandle() = default;
  BlockHandle(BlockHandle&& other) noexcept;
  BlockHandle& operator=(BlockHandle&& other) noexcept;
  BlockHandle(const BlockHandle&) = delete;
  BlockHandle& operator=(const BlockHandle&) = delete;
  ~BlockHandle() { Reset(); }

  // The block's bytes; stable for the handle's lifetime.
  std::span<const char> data() const { return data_; }
  size_t size() const { return data_.size(); }
  const BlockKey& key() const;  // Requires a non-empty handle.
  explicit operator bool() const { return entry_ != nullptr; }

  // Releases the pin now.
  void Reset();

 private:
  friend class BlockCache;
  BlockHandle(BlockCache* cache, block_cache_internal::Entry* entry);

  BlockCache* cache_ = nullptr;
  block_cache_internal::Entry* entry_ = nullptr;
  std::span<const char> data_;
};

class BlockCache {
 public:
  // Writes the block's bytes into `into` and returns how many it wrote (<= into.size()).
  using FetchFn = std::function<Result<size_t>(std::span<char> into)>;

  // kInvalidArgument, saying why, unless 0 < block_size <= capacity_bytes <= budget capacity.
  static Status Validate(const MemoryBudget& budget, const BlockCacheOptions& options);

  // `budget` must outlive the cache. Options that fail Validate() abort the process: check
  // configuration with Validate() first.
  BlockCache(MemoryBudget& budget, BlockCacheOptions options);
  BlockCache(const BlockCache&) = delete;
  BlockCache& operator=(const BlockCache&) = delete;
  // Frees every block. Aborts if a handle is alive or a GetOrFetch() is in progress.
  ~BlockCache();

  // The ready block, pinned, or nullopt (missing or still being fetched). Never blocks.
  std::optional<BlockHandle> Lookup(const BlockKey& key);

  // The block, pinned: from the cache, from a fetch in flight, or fetched now by `fetch`.
  Result<BlockHandle> GetOrFetch(const BlockKey& key, const FetchFn& fetch,
                                 const FetchOptions& options = {});

  // Drops every block of `object_key`, whatever its ETag. Blocks that are pinned or being
  // fetched leave the index at once (the next GetOrFetch fetches anew) and are freed when
  // their last handle is released. Returns the number of blocks dropped.
  size_t InvalidateObject(std::string_view object_key);

  // The caller is done with this block (the kernel's page cache has its bytes): drop it now
  // if it is ready and unpinned, or at its last unpin if it is pinned; its buffer becomes a
  // spare. A block still being fetched, or absent, is left alone. True if dropped now.
  bool Discard(const BlockKey& key);

  uint64_t block_size() const { return options_.block_size; }
  uint64_t capacity() const { return options_.capacity_bytes; }
  BlockCacheStats Stats() const;

 private:
  friend class BlockHandle;
  using Entry = block_cache_internal::Entry;
  // A buffer of a full block, with its budget bytes, between two blocks.
  struct SpareBuffer {
    MappedBuffer buffer;
    Reservation reservation;
  };
  // What leaves the cache under mu_, to be freed after it is dropped (block_cache.cc).
  struct Victims;

  // The index is keyed by a reference to the key stored in the entry itself, with its hash
  // computed once, outside the lock.
  struct KeyRef {
    const BlockKey* key;
    uint64_t hash;
  };
  struct KeyRefHash {
    size_t operator()(const KeyRef& r) const { return static_cast<size_t>(r.hash); }
  };
  struct KeyRefEq {
    bool operator()(const KeyRef& a, const KeyRef& b) const {
      return a.hash == b.hash && *a.key == *b.key;
    }
  };

  // Adds a pin. Requires mu_.
  void PinLocked(Entry* e);
  // Drops a pin; frees the entry (outside mu_) if it was the last pin of a dropped block.
  void Unpin(Entry* e);
  // Frees spares, evicts LRU blocks, or waits, until `bytes` fit under capacity; then
  // charges them. With `reuse` (a full block), a spare or the first full-size evicted
  // block's buffer is moved into it instead (its bytes charged to the new block).
  // kBusy at the deadline. May drop and retake `lock` (to free victims, and while waiting).
  Status MakeRoomLocked(std::unique_lock<std::mutex>& lock, uint64_t bytes, MonoTime deadline,
                        Victims* victims, SpareBuffer* reuse);
  // Removes an unpinned ready block from the index and the LRU list, keeping its buffer as
  // a spare if `keep_spare` and there is room for one. Requires mu_.
  void DropUnpinnedLocked(Entry* e, Victims* victims, bool keep_spare);
  // Uncharges an entry that is leaving (unpinned, out of the index and the LRU list) and
  // queues it for freeing; keeps its buffer as a spare if `keep_spare` allows. Requires mu_.
  void RetireLocked(Entry* e, Victims* victims, bool keep_spare);
  // Ends a fetch with an error: wakes its waiters, removes it from the index. Requires mu_.
  void FailFillLocked(Entry* e, const Status& error);
  // Waits for another caller's fetch of `e` (pinned by us) to end. Consumes the pin on error.
  Result<BlockHandle> WaitForFill(std::unique_lock<std::mutex>& lock, Entry* e, MonoTime deadline);
  // Steps 2 and 3 of a miss, without mu_: budget, buffer, fetch; publishes or fails `e`.
  // A non-empty `reuse` is the buffer to fill, its bytes already reserved.
  Result<BlockHandle> Fill(Entry* e, uint64_t bytes, const FetchFn& fetch, MonoTime deadline,
                           SpareBuffer reuse);
  // Wakes callers waiting for room, if any. Requires mu_.
  void NotifyRoomLocked();

  MemoryBudget& budget_;
  const BlockCacheOptions options_;
  Clock& clock_;
  const size_t max_spares_;

  mutable std::mutex mu_;
  std::unordered_map<KeyRef, Entry*, KeyRefHash, KeyRefEq> index_;  // Guarded by mu_.
  std::list<Entry*> lru_;            // Guarded by mu_. Unpinned ready blocks, coldest first.
  uint64_t charged_ = 0;             // Guarded by mu_. Every live entry's `charged`, plus
                                     // the spares' bytes.
  std::vector<SpareBuffer> spares_;  // Guarded by mu_. Each exactly one full block.
  uint64_t orphans_ = 0;             // Guarded by mu_. Live entries not in the index.
  uint64_t room_waiters_ = 0;        // Guarded by mu_.
  std::condition_variable room_cv_;  // With mu_: room may have appeared.
  BlockCacheStats stats_;            // Guarded by mu_; bytes/blocks/pinned filled by Stats().
};

}  // namespace bucketfs::cache
