#include "cache/disk_cache.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <memory>
#include <vector>

#include "cache/local_dir.h"
#include "common/log.h"

namespace bucketfs::cache {
namespace {

// The fixed part of a block file's header; then the key, the ETag, one XXH3-64 per chunk,
// and the bytes.
struct Header {
  char magic[8];
  uint32_t key_len;
  uint32_t etag_len;
  uint64_t data_len;
  uint64_t block_size;
  uint64_t index;
  uint32_t chunk_size;
  uint32_t chunk_count;
};
constexpr char kMagic[8] = {'B', 'F', 'S', 'B', 'L', 'K', '0', '2'};
constexpr uint32_t kChunk = 64 * 1024;

std::string NameOf(const BlockKey& key, uint64_t block_size) {
  std::string id = key.key;
  id.push_back('\0');
  id += key.etag;
  const XXH128_hash_t h = XXH3_128bits(id.data(), id.size());
  return fmt::format("{:016x}{:016x}-{}-{}", h.high64, h.low64, block_size, key.index);
}

// pread of the whole span, or false: errno set on an I/O error, 0 when the file ends first.
bool ReadFully(int fd, char* data, size_t size, uint64_t offset) {
  while (size > 0) {
    const ssize_t n = ::pread(fd, data, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0) errno = 0;  // Shorter than its header says: damage, not an I/O error.
      return false;
    }
    data += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return true;
}

bool WriteFully(int fd, const char* data, size_t size) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

Result<std::unique_ptr<DiskCache>> DiskCache::Open(const DiskCacheOptions& options,
                                                   const std::string& bucket) {
  if (options.capacity_bytes == 0) {
    return Status(ErrorCode::kInvalidArgument, "--cache-size must be above zero");
  }
  const std::string dir = (std::filesystem::path(options.root) / SafeDirName(bucket)).string();
  auto locked = LockDirectory(dir, "the disk cache", "give each mount its own --cache-dir");
  if (!locked.ok()) {
    if (locked.status().code() == ErrorCode::kBusy) return locked.status();
    return Status(locked.status().code(),
                  locked.status().message() + " (set --cache-dir to a writable local directory)");
  }
  const int lock_fd = *locked;
  std::error_code ec;
  std::filesystem::create_directories(dir + "/blocks", ec);
  if (ec) {
    ::close(lock_fd);
    return LocalIoStatus(ec.value(), "cannot create the disk cache directory '" + dir +
                                         "/blocks' (set --cache-dir to a writable local "
                                         "directory)");
  }
  std::unique_ptr<DiskCache> cache(new DiskCache(dir, lock_fd, options));
  cache->Index();
  // No more than the disk can hold: what is cached plus the free space, less a tenth of the
  // disk for everything else on it (the spool, when it shares the disk).
  struct statvfs vfs {};
  if (::statvfs(dir.c_str(), &vfs) == 0) {
    const uint64_t free_bytes = uint64_t{vfs.f_bavail} * vfs.f_frsize;
    const uint64_t reserve = uint64_t{vfs.f_blocks} * vfs.f_frsize / 10;
    std::lock_guard lock(cache->mu_);
    const uint64_t room = cache->stats_.bytes + free_bytes;
    const uint64_t fits = room > reserve ? room - reserve : 0;
    if (fits < cache->capacity_) {
      Logger("cache")->warn("disk cache: --cache-size {} does not fit on the disk of {}; using {}",
                            options.capacity_bytes, dir, fits);
      cache->capacity_ = fits;
      cache->stats_.capacity = fits;
      cache->EvictLocked();
    }
  }
  return cache;
}

DiskCache::DiskCache(std::string dir, int lock_fd, const DiskCacheOptions& options)
    : dir_(std::move(dir)),
      lock_fd_(lock_fd),
      touch_interval_(options.touch_interval),
      capacity_(options.capacity_bytes) {
  stats_.capacity = options.capacity_bytes;
}

DiskCache::~DiskCache() { ::close(lock_fd_); }

void DiskCache::Index() {
  struct Found {
    std::string name;
    uint64_t bytes;
    int64_t mtime_ns;
  };
  std::vector<Found> found;
  const std::string blocks = dir_ + "/blocks";
  DIR* d = ::opendir(blocks.c_str());
  if (d == nullptr) return;
  while (dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    const std::string path = blocks + "/" + name;
    if (name.ends_with(".tmp")) {  // A store cut short by a crash.
      ::unlink(path.c_str());
      continue;
    }
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    found.push_back({name, static_cast<uint64_t>(st.st_size),
                     static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec});
  }
  ::closedir(d);
  // Most recently used first, as the LRU keeps them.
  std::sort(found.begin(), found.end(),
            [](const Found& a, const Found& b) { return a.mtime_ns > b.mtime_ns; });
  std::lock_guard lock(mu_);
  // Not touched in this run yet: the first hit of each writes its mtime, so a block read
  // early in every run does not keep the mtime of its first store and go first.
  const auto untouched = std::chrono::steady_clock::now() - touch_interval_;
  for (Found& f : found) {
    lru_.push_back(Entry{std::move(f.name), f.bytes, untouched});
    index_[lru_.back().name] = std::prev(lru_.end());
    stats_.bytes += f.bytes;
  }
  EvictLocked();
  stats_.blocks = lru_.size();
}

void DiskCache::EvictLocked() {
  while (stats_.bytes > capacity_ && !lru_.empty()) {
    const Entry& victim = lru_.back();
    ::unlink(PathOf(victim.name).c_str());
    stats_.bytes -= victim.bytes;
    ++stats_.evictions;
    index_.erase(victim.name);
    lru_.pop_back();
  }
  stats_.blocks = lru_.size();
}

void DiskCache::Forget(const std::string& name) {
  std::lock_guard lock(mu_);
  auto it = index_.find(name);
  if (it == index_.end()) return;
  ::unlink(PathOf(name).c_str());
  stats_.bytes -= it->second->bytes;
  lru_.erase(it->second);
  index_.erase(it);
  stats_.blocks = lru_.size();
}

void DiskCache::WarnOnce(bool* warned, const std::string& message) {
  {
    std::lock_guard lock(mu_);
    if (*warned) return;
    *warned = true;
  }
  Logger("cache")->warn("disk cache: {} (shown once)", message);
}

bool DiskCache::Read(const BlockKey& key, uint64_t block_size, std::span<char> into) {
  int error = 0;
  const Outcome outcome = ReadChecked(key, block_size, into.size(), 0, into, &error);
  return Finish(NameOf(key, block_size), key, outcome, error);
}

bool DiskCache::ReadRange(const BlockKey& key, uint64_t block_size, uint64_t block_length,
                          uint64_t offset, std::span<char> into) {
  if (offset + into.size() > block_length) return false;
  int error = 0;
  const Outcome outcome = ReadChecked(key, block_size, block_length, offset, into, &error);
  return Finish(NameOf(key, block_size), key, outcome, error);
}

bool DiskCache::Finish(const std::string& name, const BlockKey& key, Outcome outcome, int error) {
  switch (outcome) {
    case Outcome::kHit: {
      std::lock_guard lock(mu_);
      ++stats_.hits;
      return true;
    }
    case Outcome::kMiss:
      break;
    case Outcome::kWrongLength:
      Forget(name);  // So that the block of the length asked for can be stored.
      break;
    case Outcome::kCorrupt:
      WarnOnce(&warned_corrupt_, fmt::format("block {} of '{}' in {} was damaged or not this "
                                             "object's; deleted, read from S3 instead",
                                             key.index, key.key, PathOf(name)));
      Forget(name);
      {
        std::lock_guard lock(mu_);
        ++stats_.corrupt;
      }
      break;
    case Outcome::kIoError:
      WarnOnce(&warned_read_, "cannot read " + PathOf(name) + ": " + std::strerror(error) +
                                  "; reading from S3 instead");
      {
        std::lock_guard lock(mu_);
        ++stats_.read_failures;
      }
      break;
  }
  std::lock_guard lock(mu_);
  ++stats_.misses;
  return false;
}

DiskCache::Outcome DiskCache::ReadChecked(const BlockKey& key, uint64_t block_size,
                                          uint64_t block_length, uint64_t offset,
                                          std::span<char> into, int* error) {
  const std::string name = NameOf(key, block_size);
  {
    std::lock_guard lock(mu_);
    if (index_.find(name) == index_.end()) return Outcome::kMiss;
  }
  const int fd = ::open(PathOf(name).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *error = errno;
    if (*error != ENOENT) return Outcome::kIoError;  // EMFILE, EACCES...: the file may be fine.
    Forget(name);                                    // Gone from under us.
    return Outcome::kMiss;
  }
  // Whatever ends the read: the descriptor is closed, an I/O error told apart from damage.
  auto failed = [&](Outcome damage) {
    *error = errno;
    ::close(fd);
    return *error != 0 ? Outcome::kIoError : damage;
  };
  Header h{};
  std::string stored_id(key.key.size() + key.etag.size(), '\0');
  // The file named after this block must say it is this block (else: damage, or a hash
  // collision) ...
  if (!ReadFully(fd, reinterpret_cast<char*>(&h), sizeof h, 0)) return failed(Outcome::kCorrupt);
  errno = 0;
  if (std::memcmp(h.magic, kMagic, sizeof kMagic) != 0 || h.key_len != key.key.size() ||
      h.etag_len != key.etag.size() || h.block_size != block_size || h.index != key.index ||
      h.chunk_size != kChunk || h.chunk_count != (h.data_len + kChunk - 1) / kChunk) {
    return failed(Outcome::kCorrupt);
  }
  if (!ReadFully(fd, stored_id.data(), stored_id.size(), sizeof h)) {
    return failed(Outcome::kCorrupt);
  }
  errno = 0;
  if (stored_id.compare(0, key.key.size(), key.key) != 0 ||
      stored_id.compare(key.key.size(), key.etag.size(), key.etag) != 0) {
    return failed(Outcome::kCorrupt);
  }
  // ... of the length the reader expects ...
  if (h.data_len != block_length) return failed(Outcome::kWrongLength);
  // ... with the chunks that hold the bytes asked for intact.
  if (!into.empty()) {
    const uint64_t first = offset / kChunk;
    const uint64_t last = (offset + into.size() - 1) / kChunk;
    const uint64_t sums_at = sizeof h + stored_id.size();
    const uint64_t data_at = sums_at + uint64_t{8} * h.chunk_count;
    std::vector<uint64_t> sums(last - first + 1);
    if (!ReadFully(fd, reinterpret_cast<char*>(sums.data()), sums.size() * 8,
                   sums_at + first * 8)) {
      return failed(Outcome::kCorrupt);
    }
    // Runs of whole chunks inside the range are read straight into `into` and checked
    // there; only the chunks at its two edges go through a chunk-sized buffer. (A buffer of
    // every chunk touched would be a block's worth per FUSE thread, outside the budget.)
    const uint64_t range_end = offset + into.size();
    const auto chunk_end = [&](uint64_t c) { return std::min<uint64_t>((c + 1) * kChunk, h.data_len); };
    const auto intact = [&](const char* bytes, uint64_t c) {
      return XXH3_64bits(bytes, chunk_end(c) - c * kChunk) == sums[c - first];
    };
    std::unique_ptr<char[]> edge;
    for (uint64_t c = first; c <= last;) {
      const uint64_t begin = c * kChunk;
      if (begin >= offset && chunk_end(c) <= range_end) {
        uint64_t run_last = c;
        while (run_last < last && chunk_end(run_last + 1) <= range_end) ++run_last;
        char* at = into.data() + (begin - offset);
        if (!ReadFully(fd, at, chunk_end(run_last) - begin, data_at + begin)) {
          return failed(Outcome::kCorrupt);
        }
        for (uint64_t k = c; k <= run_last; ++k) {
          if (!intact(at + (k * kChunk - begin), k)) {
            errno = 0;
            return failed(Outcome::kCorrupt);
          }
        }
        c = run_last + 1;
        continue;
      }
      if (!edge) edge = std::make_unique<char[]>(kChunk);
      if (!ReadFully(fd, edge.get(), chunk_end(c) - begin, data_at + begin)) {
        return failed(Outcome::kCorrupt);
      }
      if (!intact(edge.get(), c)) {
        errno = 0;
        return failed(Outcome::kCorrupt);
      }
      const uint64_t from = std::max(offset, begin);
      const uint64_t to = std::min(range_end, chunk_end(c));
      std::memcpy(into.data() + (from - offset), edge.get() + (from - begin), to - from);
      ++c;
    }
  }
  // Recency: to the front of the LRU, and (at most once a minute) into the file's mtime, so
  // that it survives a restart (see Index()).
  bool touch = false;
  {
    std::lock_guard lock(mu_);
    auto it = index_.find(name);
    if (it != index_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second);
      const auto now = std::chrono::steady_clock::now();
      if (now - it->second->touched >= touch_interval_) {
        it->second->touched = now;
        touch = true;
      }
    }
  }
  if (touch) ::futimens(fd, nullptr);
  ::close(fd);
  return Outcome::kHit;
}

void DiskCache::Store(const BlockKey& key, uint64_t block_size, std::span<const char> data) {
  const std::string name = NameOf(key, block_size);
  const uint64_t chunk_count = (data.size() + kChunk - 1) / kChunk;
  const uint64_t bytes = sizeof(Header) + key.key.size() + key.etag.size() + chunk_count * 8 +
                         data.size();
  {
    std::lock_guard lock(mu_);
    if (index_.count(name) != 0) return;
    // A file the cache cannot hold (a full disk shrank it below a block) would be written
    // only to be evicted at once: not written at all.
    if (bytes > capacity_) return;
  }
  static std::atomic<uint64_t> counter{0};
  const std::string tmp = PathOf(fmt::format("{}.{}.{}.tmp", name, ::getpid(), counter++));
  Header h{};
  std::memcpy(h.magic, kMagic, sizeof kMagic);
  h.key_len = static_cast<uint32_t>(key.key.size());
  h.etag_len = static_cast<uint32_t>(key.etag.size());
  h.data_len = data.size();
  h.block_size = block_size;
  h.index = key.index;
  h.chunk_size = kChunk;
  h.chunk_count = static_cast<uint32_t>(chunk_count);
  std::vector<uint64_t> sums(h.chunk_count);
  for (uint32_t c = 0; c < h.chunk_count; ++c) {
    const uint64_t begin = uint64_t{c} * kChunk;
    sums[c] = XXH3_64bits(data.data() + begin, std::min<uint64_t>(kChunk, data.size() - begin));
  }
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  bool ok = fd >= 0;
  ok = ok && WriteFully(fd, reinterpret_cast<const char*>(&h), sizeof h) &&
       WriteFully(fd, key.key.data(), key.key.size()) &&
       WriteFully(fd, key.etag.data(), key.etag.size()) &&
       WriteFully(fd, reinterpret_cast<const char*>(sums.data()), sums.size() * 8) &&
       WriteFully(fd, data.data(), data.size());
  int err = errno;
  if (fd >= 0 && ::close(fd) != 0 && ok) {
    ok = false;
    err = errno;
  }
  std::unique_lock lock(mu_);
  if (ok && index_.count(name) != 0) {  // Stored by another caller meanwhile: same bytes.
    ::unlink(tmp.c_str());
    return;
  }
  // The rename under mu_: the index and the directory change together, so an eviction can
  // never unlink this file after its rename without also dropping its entry.
  if (ok && ::rename(tmp.c_str(), PathOf(name).c_str()) != 0) {
    ok = false;
    err = errno;
  }
  if (!ok) {
    ::unlink(tmp.c_str());
    ++stats_.write_failures;
    if (err == ENOSPC || err == EDQUOT) {
      // The disk is full: hold less from now on, and give room back at once.
      capacity_ = stats_.bytes - stats_.bytes / 10;
      stats_.capacity = capacity_;
      EvictLocked();
    }
    const bool warn = !warned_write_;
    warned_write_ = true;
    lock.unlock();
    if (warn) {
      Logger("cache")->warn(
          "disk cache: cannot store blocks in {}: {}{} (reads go on from S3; "
          "shown once)",
          dir_, std::strerror(err),
          err == ENOSPC || err == EDQUOT ? "; holding less from now on" : "");
    }
    return;
  }
  lru_.push_front(Entry{name, bytes, std::chrono::steady_clock::now()});
  index_[name] = lru_.begin();
  stats_.bytes += bytes;
  ++stats_.stores;
  EvictLocked();
}

DiskCacheStats DiskCache::Stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

}  // namespace bucketfs::cache
