// DiskCache: an optional second level under the BlockCache, on local disk (--cache-dir), so
// that blocks read once (model weights, a dataset read every epoch) are read again from disk
// instead of from S3, across handles, mounts and daemon restarts.
//
// Layout under `<cache-dir>/<bucket>/`:
//   lock            flock()ed while a daemon uses the cache: two daemons never share one.
//   blocks/NAME     one file per cached block; NAME is a hash of (key, ETag, block size,
//                   index). The file starts with a header holding the key and the ETag in
//                   full and an XXH3 checksum of every 64 KiB chunk, then the bytes. Chunk
//                   checksums let a random 4 KiB read check 64 KiB, not the whole block.
//   blocks/*.tmp    a block being written (write, then rename: a reader never sees half).
//
// Contract:
//  - Validated by ETag: a block is found only for the exact (key, ETag) it was read from,
//    so an object replaced in S3 is never served from the old version's blocks (those age
//    out by LRU). Like the memory cache, a hit sends no request: a file opened within
//    --metadata-ttl of a replacement by another client reads the version its ETag names,
//    as with blocks in memory. Objects without an ETag are never cached (the caller checks
//    CacheableEtag()).
//  - Damage is a miss, never wrong bytes: a header that does not name the same key, ETag and
//    block (a hash collision, another format), a file shorter than its header says, or a
//    chunk whose checksum does not match is deleted and counted as corrupt. A block of
//    another length than the one asked for is deleted too (one version has one size), but
//    not counted as corrupt.
//  - Best effort: Read(), ReadRange() and Store() never fail a read. An I/O error is counted
//    and logged once per kind; the file is kept (the disk may come back). A full disk
//    (ENOSPC, EDQUOT) lowers the capacity to what the cache holds then, minus a tenth, and
//    evicts down to it: the cache gives room back to the spool that may share the disk.
//  - Bounded: the files' bytes stay at or under the capacity after every Store(), evicting
//    the least recently used blocks; at Open the capacity is also cut to what the disk can
//    hold (cached bytes plus free space, less a tenth of the disk). Blocks being written
//    (.tmp) are not counted: at most one block per fetching thread above the capacity.
//    Recency survives restarts through the files' modification times (a hit touches its
//    file at most once per touch_interval, a minute by default). Per block ~200 bytes of
//    memory hold the index.
//  - Thread-safe. Reads and writes of block files run without the index lock; renames and
//    unlinks, which keep the index and the directory in step, run under it.
#pragma once

#include <chrono>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>

#include "cache/block_cache.h"
#include "common/status.h"

namespace bucketfs::cache {

struct DiskCacheOptions {
  std::string root;             // --cache-dir; the bucket's directory is made under it.
  uint64_t capacity_bytes = 0;  // --cache-size; > 0.
  // A hit writes the file's mtime (recency across restarts) at most this often per block:
  // a random 4 KiB read should not write inode metadata every time.
  std::chrono::steady_clock::duration touch_interval = std::chrono::minutes(1);
};

struct DiskCacheStats {
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t stores = 0;
  uint64_t evictions = 0;
  uint64_t corrupt = 0;         // Files found damaged or not matching (deleted).
  uint64_t read_failures = 0;   // Reads that failed with an I/O error (file kept).
  uint64_t write_failures = 0;  // Blocks that could not be stored (disk full, I/O error).
  uint64_t bytes = 0;           // Bytes of cached blocks on disk now.
  uint64_t capacity = 0;        // Now: lowered by a full disk, see the contract.
  uint64_t blocks = 0;
};

class DiskCache {
 public:
  // Creates and locks `<root>/<bucket>`, indexes what an earlier mount left there (evicting
  // down to the capacity). kBusy if another daemon uses it; kAccessDenied / kNoSpace /
  // kInternal with the path when it cannot be used; kInvalidArgument for a zero capacity.
  static Result<std::unique_ptr<DiskCache>> Open(const DiskCacheOptions& options,
                                                 const std::string& bucket);
  ~DiskCache();
  DiskCache(const DiskCache&) = delete;
  DiskCache& operator=(const DiskCache&) = delete;

  // Whether blocks of an object with this ETag may be cached: not without one, since then
  // nothing tells its versions apart.
  static bool CacheableEtag(const std::string& etag) { return !etag.empty(); }

  // Copies the block into `into` if it is cached with exactly into.size() bytes (the block's
  // length: a whole block, or the object's shorter last one). True on a hit.
  bool Read(const BlockKey& key, uint64_t block_size, std::span<char> into);
  // Copies bytes [offset, offset + into.size()) of a cached block whose length is
  // `block_length` into `into`, checking only the chunks they lie in. True on a hit.
  bool ReadRange(const BlockKey& key, uint64_t block_size, uint64_t block_length, uint64_t offset,
                 std::span<char> into);
  // Stores a block just fetched from S3 (best effort, see the contract).
  void Store(const BlockKey& key, uint64_t block_size, std::span<const char> data);

  DiskCacheStats Stats() const;
  const std::string& directory() const { return dir_; }

 private:
  struct Entry {
    std::string name;
    uint64_t bytes = 0;                             // The file's size.
    std::chrono::steady_clock::time_point touched;  // Last mtime update we made.
  };
  enum class Outcome { kHit, kMiss, kCorrupt, kWrongLength, kIoError };

  DiskCache(std::string dir, int lock_fd, const DiskCacheOptions& options);
  void Index();  // Fills the LRU from the directory (Open only).
  // Down to the capacity; mu_ held. Unlinks the victims' files (under mu_, so a block being
  // stored anew under the same name is never unlinked after its rename).
  void EvictLocked();
  // Drops `name` from the index and deletes its file.
  void Forget(const std::string& name);
  Outcome ReadChecked(const BlockKey& key, uint64_t block_size, uint64_t block_length,
                      uint64_t offset, std::span<char> into, int* error);
  bool Finish(const std::string& name, const BlockKey& key, Outcome outcome, int error);
  void WarnOnce(bool* warned, const std::string& message);
  std::string PathOf(const std::string& name) const { return dir_ + "/blocks/" + name; }

  const std::string dir_;
  const int lock_fd_;
  const std::chrono::steady_clock::duration touch_interval_;

  mutable std::mutex mu_;
  uint64_t capacity_;     // Guarded by mu_.
  std::list<Entry> lru_;  // Front: most recently used. Guarded by mu_.
  std::unordered_map<std::string, std::list<Entry>::iterator> index_;         // Guarded by mu_.
  DiskCacheStats stats_;                                                      // Guarded by mu_.
  bool warned_write_ = false, warned_read_ = false, warned_corrupt_ = false;  // Guarded by mu_.
};

}  // namespace bucketfs::cache
