#include "cache/block_cache.h"

#include <fmt/format.h>
#include <xxhash.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "cache/mapped_buffer.h"

namespace bucketfs::cache {

namespace block_cache_internal {

// One block. Alive while it is in the index or pinned; every field but `key` and `hash` is
// guarded by BlockCache::mu_, and `buffer`/`size` are immutable once `state` is kReady.
struct Entry {
  enum class State { kFilling, kReady, kFailed };

  Entry(const BlockKey& k, uint64_t h) : key(k), hash(h) {}

  const BlockKey key;
  const uint64_t hash;
  State state = State::kFilling;
  uint64_t pins = 0;     // Handles, the fetching caller and callers waiting for the fetch.
  bool in_index = true;  // False once evicted-while-pinned, invalidated or failed.
  bool in_lru = false;   // In BlockCache::lru_: ready, unpinned, in the index.
  bool discard_on_unpin = false;  // Discard() found it pinned: drop it at the last unpin.
  std::list<Entry*>::iterator lru_pos;
  uint64_t charged = 0;  // Bytes counted in BlockCache::charged_ for this entry.
  MappedBuffer buffer;  // Blocks are mappings of their own: see cache/mapped_buffer.h.
  size_t size = 0;
  Reservation reservation;         // The budget's bytes for `buffer`.
  Status error;                    // Set with kFailed.
  std::condition_variable filled;  // With BlockCache::mu_: `state` left kFilling.
};

}  // namespace block_cache_internal

namespace {

std::string Describe(const BlockKey& k) {
  return fmt::format("block {} of {} (ETag {})", k.index, k.key, k.etag);
}

[[noreturn]] void Die(std::string_view what) {
  std::fprintf(stderr, "BlockCache: %.*s\n", static_cast<int>(what.size()), what.data());
  std::abort();
}

}  // namespace

uint64_t HashBlockKey(const BlockKey& key) {
  // Chained seeds: each field is hashed on its own, with its own length, so field boundaries
  // cannot shift.
  uint64_t h = XXH3_64bits_withSeed(key.key.data(), key.key.size(), key.index);
  return XXH3_64bits_withSeed(key.etag.data(), key.etag.size(), h);
}

struct BlockCache::Victims {
  std::vector<std::unique_ptr<Entry>> entries;
  std::vector<SpareBuffer> spares;
  bool empty() const { return entries.empty() && spares.empty(); }
  void clear() {
    entries.clear();
    spares.clear();
  }
};

// --- BlockHandle -------------------------------------------------------------------------

BlockHandle::BlockHandle(BlockCache* cache, block_cache_internal::Entry* entry)
    : cache_(cache), entry_(entry), data_(entry->buffer.data(), entry->size) {}

BlockHandle::BlockHandle(BlockHandle&& other) noexcept
    : cache_(std::exchange(other.cache_, nullptr)),
      entry_(std::exchange(other.entry_, nullptr)),
      data_(std::exchange(other.data_, {})) {}

BlockHandle& BlockHandle::operator=(BlockHandle&& other) noexcept {
  if (this != &other) {
    Reset();
    cache_ = std::exchange(other.cache_, nullptr);
    entry_ = std::exchange(other.entry_, nullptr);
    data_ = std::exchange(other.data_, {});
  }
  return *this;
}

const BlockKey& BlockHandle::key() const { return entry_->key; }

void BlockHandle::Reset() {
  if (entry_ != nullptr) cache_->Unpin(entry_);
  cache_ = nullptr;
  entry_ = nullptr;
  data_ = {};
}

// --- BlockCache: setup -------------------------------------------------------------------

Status BlockCache::Validate(const MemoryBudget& budget, const BlockCacheOptions& options) {
  if (options.block_size == 0) {
    return Status(ErrorCode::kInvalidArgument, "block cache: the block size must not be 0");
  }
  // One read pins every block it spans at once (two across a block edge; a read of
  // largest_read bytes at any offset, its length in blocks plus one): with less room, it
  // would wait for room that only it could make.
  const uint64_t spanned =
      std::max<uint64_t>(2, (options.largest_read + options.block_size - 1) / options.block_size + 1);
  if (options.capacity_bytes < spanned * options.block_size) {
    return Status(
        ErrorCode::kInvalidArgument,
        fmt::format("block cache: capacity {} holds fewer than the {} blocks of {} one read of "
                    "{} may need at once; raise the memory or change the block size",
                    FormatBytes(options.capacity_bytes), spanned, FormatBytes(options.block_size),
                    FormatBytes(std::max(options.largest_read, options.block_size))));
  }
  if (options.capacity_bytes > budget.capacity()) {
    return Status(ErrorCode::kInvalidArgument,
                  fmt::format("block cache: capacity {} exceeds the memory budget of {}; the "
                              "cache must fit inside the budget (and leave writeback a share)",
                              FormatBytes(options.capacity_bytes), FormatBytes(budget.capacity())));
  }
  return Status::Ok();
}

BlockCache::BlockCache(MemoryBudget& budget, BlockCacheOptions options)
    : budget_(budget),
      options_(options),
      clock_(options.clock != nullptr ? *options.clock : RealClock()),
      max_spares_(options.block_size == 0
                      ? 0
                      : std::min<uint64_t>(options.max_spare_blocks,
                                           options.capacity_bytes / 4 / options.block_size)) {
  Status valid = Validate(budget, options);
  if (!valid.ok()) Die(valid.message());
  stats_.capacity = options_.capacity_bytes;
}

BlockCache::~BlockCache() {
  Victims all;
  {
    std::lock_guard lock(mu_);
    if (stats_.pinned_blocks != 0 || orphans_ != 0 || room_waiters_ != 0) {
      Die(
          fmt::format("destroyed with {} pinned blocks, {} dropped-but-pinned blocks and {} "
                      "callers waiting; release every BlockHandle and finish every "
                      "GetOrFetch() first",
                      stats_.pinned_blocks, orphans_, room_waiters_));
    }
    all.entries.reserve(index_.size());
    for (auto& kv : index_) all.entries.emplace_back(kv.second);
    index_.clear();
    lru_.clear();
    all.spares = std::move(spares_);
    spares_.clear();
    charged_ = 0;
  }
  // `all` frees the buffers and gives the budget back here, outside mu_.
}

// --- BlockCache: pins and room -----------------------------------------------------------

void BlockCache::PinLocked(Entry* e) {
  if (e->pins++ == 0) {
    ++stats_.pinned_blocks;
    if (e->in_lru) {
      lru_.erase(e->lru_pos);
      e->in_lru = false;
    }
  }
}

void BlockCache::Unpin(Entry* e) {
  Victims victims;
  {
    std::lock_guard lock(mu_);
    if (--e->pins != 0) return;
    --stats_.pinned_blocks;
    if (!e->in_index) {
      --orphans_;
      RetireLocked(e, &victims, /*keep_spare=*/false);
      NotifyRoomLocked();
    } else if (e->state == Entry::State::kReady) {
      e->lru_pos = lru_.insert(lru_.end(), e);
      e->in_lru = true;
      if (e->discard_on_unpin) DropUnpinnedLocked(e, &victims, /*keep_spare=*/true);
      NotifyRoomLocked();
    }
  }
  // `victims` are freed here, outside mu_.
}

void BlockCache::NotifyRoomLocked() {
  if (room_waiters_ > 0) room_cv_.notify_all();
}

void BlockCache::DropUnpinnedLocked(Entry* e, Victims* victims, bool keep_spare) {
  index_.erase(KeyRef{&e->key, e->hash});
  e->in_index = false;
  lru_.erase(e->lru_pos);
  e->in_lru = false;
  RetireLocked(e, victims, keep_spare);
}

void BlockCache::RetireLocked(Entry* e, Victims* victims, bool keep_spare) {
  charged_ -= e->charged;
  if (keep_spare && e->state == Entry::State::kReady && e->charged == options_.block_size &&
      e->buffer && spares_.size() < max_spares_) {
    spares_.push_back(SpareBuffer{std::move(e->buffer), std::move(e->reservation)});
    charged_ += options_.block_size;
  }
  e->charged = 0;
  victims->entries.emplace_back(e);
}

Status BlockCache::MakeRoomLocked(std::unique_lock<std::mutex>& lock, uint64_t bytes,
                                  MonoTime deadline, Victims* victims, SpareBuffer* reuse) {
  if (reuse != nullptr && !spares_.empty()) {
    // The spare's bytes, already in charged_, become the new block's.
    *reuse = std::move(spares_.back());
    spares_.pop_back();
    ++stats_.recycled;
    return Status::Ok();
  }
  while (charged_ + bytes > options_.capacity_bytes) {
    if (!spares_.empty()) {
      victims->spares.push_back(std::move(spares_.back()));
      spares_.pop_back();
      charged_ -= options_.block_size;
      continue;
    }
    if (!lru_.empty()) {
      Entry* victim = lru_.front();
      if (reuse != nullptr && !reuse->buffer && victim->charged == options_.block_size &&
          victim->buffer) {
        reuse->buffer = std::move(victim->buffer);
        reuse->reservation = std::move(victim->reservation);
        ++stats_.recycled;
      }
      DropUnpinnedLocked(victim, victims, /*keep_spare=*/false);
      ++stats_.evictions;
      continue;
    }
    if (!victims->empty()) {
      // Free what we evicted before sleeping: the budget may be waiting for those bytes.
      lock.unlock();
      victims->clear();
      lock.lock();
      continue;
    }
    MonoTime now = clock_.Now();
    if (now >= deadline) {
      return Status(ErrorCode::kBusy,
                    fmt::format("block cache full: all {} of its {} are pinned by readers or "
                                "being fetched, and none was released before the deadline",
                                FormatBytes(charged_), FormatBytes(options_.capacity_bytes)),
                    /*retryable=*/true);
    }
    ++room_waiters_;
    room_cv_.wait_for(lock, deadline - now);
    --room_waiters_;
  }
  charged_ += bytes;
  stats_.peak_bytes_cached = std::max(stats_.peak_bytes_cached, charged_);
  return Status::Ok();
}

// --- BlockCache: lookups and fills -------------------------------------------------------

std::optional<BlockHandle> BlockCache::Lookup(const BlockKey& key) {
  const uint64_t hash = HashBlockKey(key);
  std::lock_guard lock(mu_);
  auto it = index_.find(KeyRef{&key, hash});
  if (it == index_.end() || it->second->state != Entry::State::kReady) {
    ++stats_.misses;
    return std::nullopt;
  }
  ++stats_.hits;
  PinLocked(it->second);
  return BlockHandle(this, it->second);
}

Result<BlockHandle> BlockCache::GetOrFetch(const BlockKey& key, const FetchFn& fetch,
                                           const FetchOptions& options) {
  const MonoTime deadline =
      options.deadline ? *options.deadline : clock_.Now() + options_.default_timeout;
  const uint64_t bytes = options.size_hint == 0 ? options_.block_size
                                                : std::min(options.size_hint, options_.block_size);
  const uint64_t hash = HashBlockKey(key);

  std::unique_lock lock(mu_);
  if (auto it = index_.find(KeyRef{&key, hash}); it != index_.end()) {
    Entry* e = it->second;
    if (e->state != Entry::State::kReady && options.skip_if_in_flight) {
      ++stats_.coalesced;
      return BlockHandle();
    }
    PinLocked(e);
    if (e->state == Entry::State::kReady) {
      ++stats_.hits;
      return BlockHandle(this, e);
    }
    ++stats_.coalesced;
    return WaitForFill(lock, e, deadline);
  }

  ++stats_.misses;
  Entry* e = new Entry(key, hash);  // Owned by the index from here on.
  index_.emplace(KeyRef{&e->key, hash}, e);
  PinLocked(e);  // Our pin keeps it in kFilling hands until Fill() publishes or fails it.

  Victims victims;
  SpareBuffer reuse;
  Status room = MakeRoomLocked(lock, bytes, deadline, &victims,
                               bytes == options_.block_size ? &reuse : nullptr);
  if (!room.ok()) {
    room.Annotate(fmt::format("caching {}", Describe(key)));
    FailFillLocked(e, room);
    // A buffer taken from an evicted block, not charged: freed with the victims.
    if (reuse.buffer) victims.spares.push_back(std::move(reuse));
    lock.unlock();
    victims.clear();
    Unpin(e);
    return room;
  }
  e->charged = bytes;
  lock.unlock();
  victims.clear();  // Freed before we ask the budget for bytes.
  return Fill(e, bytes, fetch, deadline, std::move(reuse));
}

Result<BlockHandle> BlockCache::WaitForFill(std::unique_lock<std::mutex>& lock, Entry* e,
                                            MonoTime deadline) {
  while (e->state == Entry::State::kFilling) {
    MonoTime now = clock_.Now();
    if (now >= deadline) break;
    e->filled.wait_for(lock, deadline - now);
  }
  if (e->state == Entry::State::kReady) return BlockHandle(this, e);
  Status error = e->state == Entry::State::kFailed
                     ? e->error
                     : Status(ErrorCode::kTimeout,
                              fmt::format("block cache: another reader's fetch of {} did not "
                                          "finish before the deadline",
                                          Describe(e->key)),
                              /*retryable=*/true);
  lock.unlock();
  Unpin(e);
  return error;
}

void BlockCache::FailFillLocked(Entry* e, const Status& error) {
  e->state = Entry::State::kFailed;
  e->error = error;
  if (e->in_index) {
    index_.erase(KeyRef{&e->key, e->hash});
    e->in_index = false;
    ++orphans_;  // Freed by the last Unpin(): ours, or the last waiter's.
  }
  charged_ -= e->charged;
  e->charged = 0;
  ++stats_.fetch_failures;
  e->filled.notify_all();
  NotifyRoomLocked();
}

Result<BlockHandle> BlockCache::Fill(Entry* e, uint64_t bytes, const FetchFn& fetch,
                                     MonoTime deadline, SpareBuffer reuse) {
  auto fail = [&](Status error) -> Result<BlockHandle> {
    {
      std::lock_guard lock(mu_);
      FailFillLocked(e, error);
    }
    Unpin(e);
    return error;
  };

  Result<Reservation> reservation = std::move(reuse.reservation);
  MappedBuffer buffer = std::move(reuse.buffer);
  if (!buffer) {
    reservation = budget_.Reserve(bytes, deadline);
    if (!reservation.ok()) {
      Status error = std::move(reservation).TakeStatus();
      error.Annotate(fmt::format("caching {}", Describe(e->key)));
      return fail(std::move(error));
    }
    buffer = MappedBuffer::Allocate(bytes);
    if (!buffer) {
      return fail(Status(ErrorCode::kInternal,
                         fmt::format("block cache: cannot allocate {} for {}", FormatBytes(bytes),
                                     Describe(e->key))));
    }
  }

  Result<size_t> got = Status(ErrorCode::kInternal, "fetch not run");
  try {
    got = fetch(std::span<char>(buffer.data(), bytes));
  } catch (...) {
    // Waiters must not hang on a fetch that will never finish.
    (void)fail(Status(ErrorCode::kInternal,
                      fmt::format("block cache: the fetch of {} threw", Describe(e->key))));
    throw;
  }
  if (!got.ok()) return fail(std::move(got).TakeStatus());
  const size_t n = *got;
  if (n > bytes) {
    return fail(Status(ErrorCode::kInternal,
                       fmt::format("block cache: the fetch of {} reported {} bytes into a "
                                   "{}-byte buffer",
                                   Describe(e->key), n, bytes)));
  }

  uint64_t charged = bytes;
  if (n < bytes) {
    // A short (last) block: give the unused whole pages back.
    buffer.ShrinkTo(n);
    charged = n;
    (void)reservation->Shrink(bytes - charged);
  }

  std::lock_guard lock(mu_);
  e->buffer = std::move(buffer);
  e->size = n;
  e->reservation = std::move(*reservation);
  charged_ -= e->charged - charged;
  e->charged = charged;
  e->state = Entry::State::kReady;
  e->filled.notify_all();
  if (charged < bytes) NotifyRoomLocked();
  return BlockHandle(this, e);  // Our pin becomes the handle's.
}

// --- BlockCache: invalidation and stats ---------------------------------------------------

size_t BlockCache::InvalidateObject(std::string_view object_key) {
  Victims victims;
  size_t dropped = 0;
  {
    std::lock_guard lock(mu_);
    for (auto it = index_.begin(); it != index_.end();) {
      Entry* e = it->second;
      ++it;  // DropUnpinnedLocked() erases `e` from the index.
      if (e->key.key != object_key) continue;
      ++dropped;
      if (e->pins == 0) {
        DropUnpinnedLocked(e, &victims, /*keep_spare=*/false);
      } else {
        index_.erase(KeyRef{&e->key, e->hash});
        e->in_index = false;
        ++orphans_;  // Freed by its last Unpin().
      }
    }
    stats_.invalidated += dropped;
    if (!victims.empty()) NotifyRoomLocked();
  }
  return dropped;  // `victims` are freed here, outside mu_.
}

bool BlockCache::Discard(const BlockKey& key) {
  const uint64_t hash = HashBlockKey(key);
  Victims victims;
  {
    std::lock_guard lock(mu_);
    auto it = index_.find(KeyRef{&key, hash});
    if (it == index_.end() || it->second->state != Entry::State::kReady) return false;
    Entry* e = it->second;
    if (e->pins > 0) {
      if (!e->discard_on_unpin) ++stats_.discarded;
      e->discard_on_unpin = true;
      return false;
    }
    ++stats_.discarded;
    DropUnpinnedLocked(e, &victims, /*keep_spare=*/true);
    NotifyRoomLocked();
  }
  return true;  // `victims` are freed here, outside mu_.
}

BlockCacheStats BlockCache::Stats() const {
  std::lock_guard lock(mu_);
  BlockCacheStats s = stats_;
  s.bytes_cached = charged_;
  s.spare_bytes = spares_.size() * options_.block_size;
  s.blocks = index_.size();
  s.waiting_for_room = room_waiters_;
  return s;
}

}  // namespace bucketfs::cache
