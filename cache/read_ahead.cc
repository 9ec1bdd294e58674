#include "cache/read_ahead.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "common/log.h"

namespace bucketfs::cache {
namespace {

uint64_t AlignDown(uint64_t v, uint64_t a) { return v / a * a; }
uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

// A GET that found another version (If-Match failed) or no object at all: the handle's
// version is gone.
Status StaleError(const ObjectVersion& object, const Status& cause) {
  return Status(ErrorCode::kStale,
                "'" + object.key + "' changed in the bucket since it was opened (" +
                    std::string(ErrorCodeName(cause.code())) +
                    "); close and reopen the file to read the new version");
}

// What a failed If-Match GET of the handle's version means to the reader: gone (stale) when
// the server found another version or none, else the error with the key.
Status GetFailure(const ObjectVersion& object, const Status& st) {
  if (st.code() == ErrorCode::kPreconditionFailed || st.code() == ErrorCode::kNotFound ||
      st.code() == ErrorCode::kInvalidRange) {
    return StaleError(object, st);
  }
  return Status(st).Annotate("reading '" + object.key + "'");
}

}  // namespace

size_t ReadReply::size() const {
  size_t n = 0;
  for (const auto& p : pieces) n += p.size();
  return n;
}

std::string ReadReply::ToString() const {
  std::string out;
  out.reserve(size());
  for (const auto& p : pieces) out.append(p.data(), p.size());
  return out;
}

ReadAhead::ReadAhead(const ReadContext& context, ObjectVersion object, ReadAheadOptions options)
    : shared_(std::make_shared<Shared>()),
      options_(options),
      clock_(context.clock ? *context.clock : RealClock()),
      block_size_(context.cache->block_size()),
      block_count_((object.size + context.cache->block_size() - 1) /
                   context.cache->block_size()) {
  shared_->context = context;
  shared_->object = std::move(object);
  shared_->timeout = options.timeout;
  window_ = InitialWindow();
}

ReadAhead::~ReadAhead() = default;

uint64_t ReadAhead::InitialWindow() const {
  // At least a quarter block: the window doubles once per block entered, so prefetching
  // starts in the second block whatever the block size (from a 1 MiB window, 16 MiB blocks
  // would read their first 48 MiB on demand, one GET at a time).
  return std::min(std::max(options_.initial_window, block_size_ / 4), MaxWindow());
}

uint64_t ReadAhead::MaxWindow() const {
  uint64_t cap = std::max<uint64_t>(shared_->context.cache->capacity() / 4, block_size_);
  return std::max<uint64_t>(std::min(options_.max_window, cap), block_size_);
}

ReadAheadStats ReadAhead::Stats() const {
  std::lock_guard lock(mu_);
  ReadAheadStats s = stats_;
  s.prefetches_issued = shared_->issued.load();
  s.prefetches_failed = shared_->failed.load();
  s.window = window_;
  return s;
}

Result<size_t> ReadAhead::FetchBlock(const Shared& shared, uint64_t index, std::span<char> into,
                                     MonoTime deadline) {
  const uint64_t block_size = shared.context.cache->block_size();
  DiskCache* disk = DiskCache::CacheableEtag(shared.object.etag) ? shared.context.disk : nullptr;
  const BlockKey key{shared.object.key, shared.object.etag, index};
  // `into` is exactly the block's length (GetBlock's size hint), which the disk cache checks.
  if (disk != nullptr && disk->Read(key, block_size, into)) return into.size();
  s3::GetRequest req;
  req.key = shared.object.key;
  req.range = s3::ByteRange{index * block_size, into.size()};
  req.if_match = shared.object.etag;
  auto got = shared.context.client->Get(req, into, {deadline});
  if (!got.ok()) return GetFailure(shared.object, got.status());
  if (got->bytes_read != into.size()) {
    // The pinned version has these bytes (its If-Match held): a shorter body is a server's
    // or a proxy's fault, not the end of the object. Cached, it would end the file early
    // for every reader of this version. (An object without an ETag, fetched without
    // If-Match, may have been replaced by a shorter one: an error too, until a HEAD after
    // the TTL gives the new size.)
    return Status(ErrorCode::kMalformedResponse,
                  fmt::format("reading '{}': S3 sent {} bytes of the {}-byte range at {}",
                              shared.object.key, got->bytes_read, into.size(),
                              index * block_size),
                  /*retryable=*/true);
  }
  if (disk != nullptr) disk->Store(key, block_size, into);
  return into.size();
}

Result<BlockHandle> ReadAhead::GetBlock(const Shared& shared, uint64_t index,
                                        const FetchOptions& options, MonoTime get_deadline,
                                        bool* fetched, bool prefetch) {
  const uint64_t block_size = shared.context.cache->block_size();
  FetchOptions fetch_options = options;
  // The object's last block is shorter: size it exactly (a small file costs its size).
  const uint64_t begin = index * block_size;
  fetch_options.size_hint = std::min(block_size, shared.object.size - begin);
  BlockKey key{shared.object.key, shared.object.etag, index};
  return shared.context.cache->GetOrFetch(
      key,
      [&](std::span<char> into) -> Result<size_t> {
        if (fetched != nullptr) *fetched = true;
        // Checked once the block is known to be missing: the reader sets dropped_below before
        // it discards, so a prefetch that runs this late never fetches a block twice.
        if (prefetch && index < shared.dropped_below.load(std::memory_order_relaxed)) {
          return Status(ErrorCode::kCancelled, "the reader has passed this block");
        }
        return FetchBlock(shared, index, into, get_deadline);
      },
      fetch_options);
}

bool ReadAhead::SubmitPrefetch(uint64_t index) {
  if (shared_->inflight.load(std::memory_order_relaxed) >= options_.max_parallel_gets) {
    return false;
  }
  shared_->inflight.fetch_add(1);
  shared_->issued.fetch_add(1, std::memory_order_relaxed);
  std::shared_ptr<Shared> shared = shared_;
  bool queued = shared_->context.pool->TrySubmit([shared, index] {
    Clock& clock = shared->context.clock ? *shared->context.clock : RealClock();
    const MonoTime now = clock.Now();
    // The reader went past this block (and dropped it behind) before the pool ran us.
    if (index < shared->dropped_below.load(std::memory_order_relaxed)) {
      shared->inflight.fetch_sub(1);
      return;
    }
    // No waiting for room or budget (deadline now): under memory pressure a prefetch is
    // the first thing to give up, and the handle's window shrinks. Nor for a fetch of the
    // block already in flight (a reader's): that is no failure, the block is coming.
    FetchOptions prefetch_options{now, 0};
    prefetch_options.skip_if_in_flight = true;
    auto block = GetBlock(*shared, index, prefetch_options, now + shared->timeout, nullptr,
                          /*prefetch=*/true);
    if (!block.ok() && block.status().code() != ErrorCode::kCancelled) {
      shared->failed.fetch_add(1, std::memory_order_relaxed);
      const ErrorCode code = block.status().code();
      if (code == ErrorCode::kBusy || code == ErrorCode::kTimeout) {
        shared->pressure.store(true);
      }
      Logger("cache")->debug("prefetch of block {} of '{}' failed: {}", index,
                             shared->object.key, block.status().ToString());
    }
    shared->inflight.fetch_sub(1);
  });
  if (!queued) {
    // The pool's queue is full: every GET thread is busy.
    shared_->inflight.fetch_sub(1);
    shared_->issued.fetch_sub(1, std::memory_order_relaxed);
  }
  return queued;
}

void ReadAhead::Prefetch(uint64_t last_block) {
  // Requires mu_ (called with it held): next_prefetch_ is ours.
  last_block = std::min(last_block, block_count_ - 1);
  while (next_prefetch_ <= last_block) {
    // Refused (GETs in flight at the cap, or the pool full): try again on the next read.
    if (!SubmitPrefetch(next_prefetch_)) return;
    ++next_prefetch_;
  }
}

void ReadAhead::BlocksBehindLocked(uint64_t* first, uint64_t* last) {
  *first = *last = 0;
  if (!options_.drop_behind) return;
  // Keep the last block read (the one holding byte last_end_ - 1) and the one before it.
  if (last_end_ == 0) return;
  const uint64_t current = (last_end_ - 1) / block_size_;
  if (current < 2) return;
  const uint64_t until = current - 1;
  // A stream that jumped ahead inside the window skipped blocks it never read; look back no
  // further than a window's worth (plus slack) so the work per read stays bounded.
  const uint64_t reach = window_ / block_size_ + 2;
  *first = std::max(next_discard_, until > reach ? until - reach : 0);
  *last = until;
  next_discard_ = std::max(next_discard_, until);
  shared_->dropped_below.store(next_discard_, std::memory_order_relaxed);
}

Result<ReadReply> ReadAhead::Read(uint64_t offset, size_t length) {
  const uint64_t size = shared_->object.size;
  if (length == 0 || offset >= size) return ReadReply{};
  const uint64_t end = std::min<uint64_t>(size, offset + length);
  const MonoTime deadline = clock_.Now() + options_.timeout;
  const uint64_t first_block = offset / block_size_;
  const uint64_t last_block = (end - 1) / block_size_;

  bool sequential = false;
  uint64_t discard_first = 0, discard_last = 0;
  {
    std::lock_guard lock(mu_);
    if (shared_->pressure.exchange(false)) {
      window_ = std::max(block_size_, window_ / 2);
    }
    if (!started_) {
      sequential = offset == 0;
    } else {
      const uint64_t low = last_end_ > window_ ? last_end_ - window_ : 0;
      sequential = offset >= low && offset <= last_end_ + window_;
    }
    started_ = true;
    if (sequential) {
      ++stats_.sequential_reads;
      // Grow when the stream enters a new block.
      if (last_block >= next_growth_block_) {
        window_ = std::min(MaxWindow(), window_ * 2);
        next_growth_block_ = last_block + 1;
      }
      last_end_ = std::max(last_end_, end);
      // Prefetch beyond this read before waiting for it, so the GETs overlap.
      next_prefetch_ = std::max(next_prefetch_, first_block);
      Prefetch(last_block + window_ / block_size_);
      BlocksBehindLocked(&discard_first, &discard_last);
    } else {
      ++stats_.random_reads;
      window_ = InitialWindow();
      last_end_ = end;
      next_prefetch_ = last_block + 1;
      next_growth_block_ = last_block + 1;
      next_discard_ = first_block;
      shared_->dropped_below.store(0, std::memory_order_relaxed);
    }
  }

  if (sequential) {
    for (uint64_t b = discard_first; b < discard_last; ++b) {
      shared_->context.cache->Discard(BlockKey{shared_->object.key, shared_->object.etag, b});
    }
    return ReadFromBlocks(offset, end - offset, deadline);
  }

  // Random: blocks already cached serve it; otherwise one small aligned GET.
  ReadReply reply;
  bool all_cached = true;
  for (uint64_t b = first_block; b <= last_block; ++b) {
    auto h = shared_->context.cache->Lookup(BlockKey{shared_->object.key, shared_->object.etag, b});
    if (!h) {
      all_cached = false;
      break;
    }
    reply.pins.push_back(std::move(*h));
  }
  if (all_cached) {
    for (auto& h : reply.pins) {
      if (!HasVersionSize(h)) {
        return StaleError(shared_->object,
                          Status(ErrorCode::kInvalidRange, "cached block of another size"));
      }
      const uint64_t block_begin = h.key().index * block_size_;
      const uint64_t from = std::max(offset, block_begin) - block_begin;
      const uint64_t to = std::min<uint64_t>(end, block_begin + h.size()) - block_begin;
      if (to > from) reply.pieces.push_back(h.data().subspan(from, to - from));
    }
    return reply;
  }
  reply.pins.clear();
  auto direct = ReadDirect(offset, end - offset, deadline);
  // An object that fits in half the cache and is read at random (an index, a database
  // file, fio) gets the blocks it touches filled in the background, so that it soon reads
  // from memory. Larger objects do not: random reads over a big dataset would fetch a block
  // for every 4 KiB asked and evict everything else.
  // One fill at a time per handle, so that the fills never crowd out the small GETs that
  // answer the reader.
  if (direct.ok() && options_.random_fill && size <= shared_->context.cache->capacity() / 2 &&
      shared_->inflight.load(std::memory_order_relaxed) == 0) {
    std::lock_guard lock(mu_);
    if (SubmitPrefetch(first_block)) ++stats_.random_fills;
  }
  return direct;
}

bool ReadAhead::HasVersionSize(const BlockHandle& h) const {
  const uint64_t begin = h.key().index * block_size_;
  const uint64_t size = shared_->object.size;
  return begin < size && h.size() == std::min<uint64_t>(block_size_, size - begin);
}

Result<ReadReply> ReadAhead::ReadFromBlocks(uint64_t offset, uint64_t length, MonoTime deadline) {
  ReadReply reply;
  const uint64_t end = offset + length;
  for (uint64_t b = offset / block_size_; b <= (end - 1) / block_size_; ++b) {
    // Joining a prefetch's fetch of this block gives its outcome, and a prefetch gives up at
    // once when it finds no room or budget (kBusy, kTimeout). The reader waits up to its own
    // deadline instead: the failed fetch has left the cache, so trying again fetches anew
    // (with this reader as the fetcher, whose own failure is final).
    bool fetched_here = false;
    Result<BlockHandle> got =
        GetBlock(*shared_, b, FetchOptions{deadline, 0}, deadline, &fetched_here);
    // A prefetch that found the block behind the reader gives it up (kCancelled): this reader
    // went back for it, so fetch it anew.
    while (!got.ok() && !fetched_here &&
           (got.status().code() == ErrorCode::kBusy ||
            got.status().code() == ErrorCode::kTimeout ||
            got.status().code() == ErrorCode::kCancelled) &&
           clock_.Now() < deadline) {
      got = GetBlock(*shared_, b, FetchOptions{deadline, 0}, deadline, &fetched_here);
    }
    if (!got.ok()) return std::move(got).TakeStatus();
    BlockHandle h = std::move(got).value();
    const uint64_t block_begin = b * block_size_;
    const uint64_t from = std::max(offset, block_begin) - block_begin;
    const uint64_t to = std::min<uint64_t>(end, block_begin + h.size()) - block_begin;
    if (to <= from || !HasVersionSize(h)) {
      // The block is not as long as the size seen at open makes it: the object changed
      // underneath (or, without an ETag, another version's block has this key).
      return StaleError(shared_->object,
                        Status(ErrorCode::kInvalidRange, "block of another size than expected"));
    }
    reply.pieces.push_back(h.data().subspan(from, to - from));
    reply.pins.push_back(std::move(h));
  }
  return reply;
}

Result<ReadReply> ReadAhead::ReadDirect(uint64_t offset, uint64_t length, MonoTime deadline) {
  const uint64_t size = shared_->object.size;
  const uint64_t align = std::max<uint64_t>(options_.random_alignment, 1);
  const uint64_t begin = AlignDown(offset, align);
  const uint64_t stop = std::min(size, AlignUp(offset + length, align));
  const uint64_t bytes = stop - begin;

  ReadReply reply;
  BFS_ASSIGN_OR_RETURN(reply.owned_charge, shared_->context.budget->Reserve(bytes, deadline));
  reply.owned.reset(new char[bytes]);
  // A range inside one block that the disk cache holds (read in an earlier epoch or mount):
  // from disk, checking only the chunks it lies in.
  const uint64_t block = begin / block_size_;
  // (Random reads only use the disk cache: they do not store the small ranges they fetch;
  // blocks get there from sequential reads and --random-fill.)
  if (DiskCache* disk = shared_->context.disk;
      disk != nullptr && DiskCache::CacheableEtag(shared_->object.etag) && bytes > 0 &&
      (stop - 1) / block_size_ == block) {
    const uint64_t block_begin = block * block_size_;
    const uint64_t block_length = std::min(block_size_, size - block_begin);
    if (disk->ReadRange(BlockKey{shared_->object.key, shared_->object.etag, block}, block_size_,
                        block_length, begin - block_begin,
                        std::span<char>(reply.owned.get(), bytes))) {
      reply.pieces.emplace_back(reply.owned.get() + (offset - begin), length);
      return reply;
    }
  }
  s3::GetRequest req;
  req.key = shared_->object.key;
  req.range = s3::ByteRange{begin, bytes};
  req.if_match = shared_->object.etag;
  auto got = shared_->context.client->Get(req, std::span<char>(reply.owned.get(), bytes),
                                          {deadline});
  {
    std::lock_guard lock(mu_);
    ++stats_.direct_gets;
  }
  if (!got.ok()) return GetFailure(shared_->object, got.status());
  if (got->bytes_read < offset + length - begin) {
    return StaleError(shared_->object, Status(ErrorCode::kInvalidRange, "short read"));
  }
  reply.pieces.emplace_back(reply.owned.get() + (offset - begin), length);
  return reply;
}

}  // namespace bucketfs::cache
