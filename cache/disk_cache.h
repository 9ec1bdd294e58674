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
//    out by LRU). A header that does not name the same key and ETag (a hash collision), a
//    length that is not the one expected, or a checksum that does not match (a torn or
//    damaged file) is a miss: the file is deleted and the block fetched again.
//  - Best effort: Read() and Store() never fail a read. An I/O error or a full disk is
//    counted and logged (once per kind), and the block comes from S3.
//  - Bounded: the files' bytes stay at or under `capacity_bytes` after every Store(),
//    evicting the least recently used blocks. Recency survives restarts through the files'
//    modification times (a hit touches its file). Per block ~150 bytes of memory are used
//    for the index.
//  - Thread-safe; file I/O runs without the index lock held.
#pragma once

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
};

struct DiskCacheStats {
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t stores = 0;
  uint64_t evictions = 0;
  uint64_t corrupt = 0;         // Files found damaged or not matching (deleted).
  uint64_t write_failures = 0;  // Blocks that could not be stored (disk full, I/O error).
  uint64_t bytes = 0;           // Bytes of cached blocks on disk now.
  uint64_t capacity = 0;
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
    uint64_t bytes = 0;  // The file's size.
  };
  DiskCache(std::string dir, int lock_fd, uint64_t capacity);
  void Index();        // Fills the LRU from the directory (Open only).
  void EvictLocked();  // Down to capacity; mu_ held. Unlinks files.
  void Forget(const std::string& name, bool corrupt);
  // Copies [offset, offset + into.size()) of the block into `into` after checking the file
  // is this block, of `block_length`, and the chunks read are intact; counts the outcome.
  bool ReadChecked(const BlockKey& key, uint64_t block_size, uint64_t block_length, uint64_t offset,
                   std::span<char> into);
  std::string PathOf(const std::string& name) const { return dir_ + "/blocks/" + name; }

  const std::string dir_;
  const int lock_fd_;
  const uint64_t capacity_;

  mutable std::mutex mu_;
  std::list<Entry> lru_;  // Front: most recently used. Guarded by mu_.
  std::unordered_map<std::string, std::list<Entry>::iterator> index_;  // Guarded by mu_.
  DiskCacheStats stats_;                                               // Guarded by mu_.
  bool warned_write_ = false;                                          // Guarded by mu_.
};

}  // namespace bucketfs::cache
