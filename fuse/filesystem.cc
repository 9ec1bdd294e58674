#include "fuse/filesystem.h"

#include <fcntl.h>

#include <algorithm>
#include <functional>
#include <future>

#include "common/log.h"

namespace bucketfs::fs {
namespace {

// A placeholder inode number for plain readdir entries of names the kernel has not looked
// up: only `ls -i` shows it. The top bit keeps it apart from real inode numbers.
InodeId PlaceholderIno(const std::string& path) {
  return (std::hash<std::string>{}(path) | (1ull << 63));
}

Status NotFound(const std::string& path) {
  return Status(ErrorCode::kNotFound, "no such file or directory: '" + path + "'");
}

bool IsWriteOpen(int flags) {
  return (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC) != 0;
}

}  // namespace

Filesystem::Filesystem(s3::ObjectClient& client, const cache::ReadContext& reads,
                       FilesystemOptions options)
    : client_(client),
      reads_(reads),
      options_(std::move(options)),
      clock_(reads.clock ? *reads.clock : RealClock()),
      inodes_(DirectoryAttributes(options_.mount_time, options_.defaults),
              options_.generation) {}

Filesystem::~Filesystem() = default;

EntryReply Filesystem::MakeEntry(const Node& node) const {
  return EntryReply{node.attr, inodes_.generation(), options_.metadata_ttl};
}

// --- Metadata caches ---------------------------------------------------------------------

std::shared_ptr<const DirectoryListing> Filesystem::FreshListing(const std::string& dir_path) {
  std::lock_guard lock(mu_);
  auto it = listings_.find(dir_path);
  if (it == listings_.end()) return nullptr;
  if (Now() - it->second->fetched_at >= options_.metadata_ttl) return nullptr;
  return it->second;
}

Result<std::shared_ptr<const DirectoryListing>> Filesystem::FetchListing(
    const std::string& dir_path) {
  counters_.listings.fetch_add(1, std::memory_order_relaxed);
  BFS_ASSIGN_OR_RETURN(auto listing,
                       ListDirectory(client_, dir_path, Now(), Deadline(), problems_));
  if (options_.max_cached_listings == 0 || options_.metadata_ttl <= Duration::zero()) {
    return listing;
  }
  std::lock_guard lock(mu_);
  if (!listings_.contains(dir_path)) {
    listing_order_.push_back(dir_path);
    while (listing_order_.size() > options_.max_cached_listings) {
      listings_.erase(listing_order_.front());
      listing_order_.pop_front();
    }
  }
  listings_[dir_path] = listing;
  // A listing is the newest word on every name in it.
  for (const auto& e : listing->entries) negative_.erase(ChildPath(dir_path, e.name));
  return listing;
}

void Filesystem::ForgetListing(const std::string& dir_path) {
  std::lock_guard lock(mu_);
  if (listings_.erase(dir_path) > 0) {
    listing_order_.remove(dir_path);
  }
}

bool Filesystem::IsNegative(const std::string& path) {
  std::lock_guard lock(mu_);
  auto it = negative_.find(path);
  if (it == negative_.end()) return false;
  if (Now() >= it->second) {
    negative_.erase(it);
    return false;
  }
  return true;
}

void Filesystem::RememberMissing(const std::string& path) {
  if (options_.metadata_ttl <= Duration::zero()) return;
  std::lock_guard lock(mu_);
  if (negative_.size() >= options_.max_negative_entries) {
    // Drop the expired ones; if that frees nothing, start over (a cache, not a record).
    const MonoTime now = Now();
    std::erase_if(negative_, [now](const auto& kv) { return now >= kv.second; });
    if (negative_.size() >= options_.max_negative_entries) negative_.clear();
  }
  negative_[path] = Expiry();
}

void Filesystem::ForgetMissing(const std::string& path) {
  std::lock_guard lock(mu_);
  negative_.erase(path);
}

Node Filesystem::EnterListed(const std::string& path, const ListedEntry& entry,
                             uint64_t lookups) {
  if (auto existing = inodes_.GetByPath(path)) {
    const bool same_version = entry.type == FileType::kDirectory
                                  ? existing->attr.type == FileType::kDirectory
                                  : existing->etag == entry.etag &&
                                        existing->attr.type != FileType::kDirectory;
    if (same_version && Now() < existing->attr_expiry) {
      if (lookups == 0 || inodes_.AddLookups(existing->ino, lookups)) {
        existing->nlookup += lookups;
        return *existing;
      }
    }
    if (same_version && existing->attr.type == FileType::kSymlink) {
      // The listing cannot tell a symlink from a file; HEAD told us before.
      return inodes_.Upsert(path, existing->attr, existing->etag, Expiry(), lookups);
    }
  }
  Attributes attr;
  if (entry.type == FileType::kDirectory) {
    attr = DirectoryAttributes(options_.mount_time, options_.defaults);
  } else {
    s3::ObjectInfo info;
    info.size = entry.size;
    info.last_modified = entry.mtime;
    attr = ObjectAttributes(info, options_.defaults);
  }
  return inodes_.Upsert(path, attr, entry.etag, Expiry(), lookups);
}

// --- Lookup and attributes ---------------------------------------------------------------

Result<Node> Filesystem::Probe(const std::string& path) {
  counters_.probes.fetch_add(1, std::memory_order_relaxed);
  const MonoTime deadline = Deadline();
  // Is anything under `path/`? Runs on the I/O pool while this thread does the HEAD.
  auto list_one = [this, path, deadline]() -> Result<s3::ListPage> {
    s3::ListRequest req;
    req.prefix = DirectoryPrefix(path);
    req.delimiter = "/";
    req.max_keys = 1;
    return client_.List(req, {deadline});
  };
  auto task = std::make_shared<std::packaged_task<Result<s3::ListPage>()>>(list_one);
  std::future<Result<s3::ListPage>> listed = task->get_future();
  if (reads_.pool == nullptr || !reads_.pool->TrySubmit([task] { (*task)(); })) (*task)();

  auto head = client_.Head(s3::HeadRequest{path, {}}, {deadline});
  Result<s3::ListPage> page = listed.get();
  if (!page.ok()) return std::move(page).TakeStatus();
  const bool is_dir = !page->objects.empty() || !page->common_prefixes.empty();
  if (is_dir) {
    if (head.ok()) {
      problems_.Report(path, "both a file and a directory; shown as the directory, the file is hidden");
    }
    WallTime mtime = options_.mount_time;
    if (!page->objects.empty() && page->objects.front().key == DirectoryPrefix(path)) {
      mtime = page->objects.front().last_modified;  // The marker's.
    }
    return inodes_.Upsert(path, DirectoryAttributes(mtime, options_.defaults), "", Expiry(), 0);
  }
  if (!head.ok()) {
    if (head.status().code() == ErrorCode::kNotFound) return NotFound(path);
    return std::move(head).TakeStatus();
  }
  return inodes_.Upsert(path, ObjectAttributes(*head, options_.defaults), head->etag, Expiry(),
                        0);
}

Result<EntryReply> Filesystem::Lookup(InodeId parent, std::string_view name) {
  counters_.lookups.fetch_add(1, std::memory_order_relaxed);
  auto dir = inodes_.Get(parent);
  if (!dir) return Status(ErrorCode::kStale, "directory inode " + std::to_string(parent) + " is gone");
  if (dir->attr.type != FileType::kDirectory) {
    return Status(ErrorCode::kNotDirectory, "'" + dir->path + "' is not a directory");
  }
  if (NameProblem p = CheckName(name); p != NameProblem::kNone) {
    if (p == NameProblem::kTooLong) {
      return Status(ErrorCode::kNameTooLong, "file names are limited to 255 bytes");
    }
    return NotFound(ChildPath(dir->path, name));
  }
  const std::string path = ChildPath(dir->path, name);
  if (path.size() + 1 > kMaxKeyBytes) {
    return Status(ErrorCode::kNameTooLong, "S3 keys are limited to 1024 bytes");
  }
  if (dir->path.empty() && IsReservedKey(path + "/")) return NotFound(path);

  // 1. A fresh listing of the parent knows every name in it, and every name not in it.
  if (auto listing = FreshListing(dir->path)) {
    counters_.lookups_from_listing.fetch_add(1, std::memory_order_relaxed);
    const ListedEntry* entry = listing->Find(name);
    if (entry == nullptr) return NotFound(path);
    return MakeEntry(EnterListed(path, *entry, 1));
  }
  // 2. A node whose attributes are fresh.
  if (auto node = inodes_.GetByPath(path); node && Now() < node->attr_expiry) {
    if (inodes_.AddLookups(node->ino, 1)) return MakeEntry(*node);
  }
  // 3. A name recently found missing.
  if (IsNegative(path)) {
    counters_.negative_hits.fetch_add(1, std::memory_order_relaxed);
    return NotFound(path);
  }
  // 4. Ask the server.
  auto probed = Probe(path);
  if (!probed.ok()) {
    if (probed.status().code() == ErrorCode::kNotFound) RememberMissing(path);
    return std::move(probed).TakeStatus();
  }
  if (!inodes_.AddLookups(probed->ino, 1)) {
    // Forgotten in between (the kernel cannot have forgotten what it never had: only a
    // racing type change can do this); enter it again.
    return MakeEntry(inodes_.Upsert(path, probed->attr, probed->etag, Expiry(), 1));
  }
  return MakeEntry(*probed);
}

void Filesystem::Forget(InodeId ino, uint64_t nlookup) { inodes_.Forget(ino, nlookup); }

Result<Node> Filesystem::Refresh(const Node& node) {
  if (Now() < node.attr_expiry || node.ino == kRootInode) return node;
  if (node.attr.type == FileType::kDirectory) {
    // A directory's attributes do not change with its contents; keep it until a listing of
    // its parent says it is gone.
    return inodes_.Upsert(node.path, node.attr, node.etag, Expiry(), 0);
  }
  counters_.heads.fetch_add(1, std::memory_order_relaxed);
  auto head = client_.Head(s3::HeadRequest{node.path, {}}, {Deadline()});
  if (!head.ok()) {
    if (head.status().code() == ErrorCode::kNotFound) {
      // Gone; or perhaps a directory now: the next lookup will tell.
      RememberMissing(node.path);
      return Status(ErrorCode::kStale, "'" + node.path + "' was removed from the bucket");
    }
    return std::move(head).TakeStatus();
  }
  Node fresh = inodes_.Upsert(node.path, ObjectAttributes(*head, options_.defaults), head->etag,
                              Expiry(), 0);
  if (fresh.ino != node.ino) {
    // Its type changed (a file turned out to be a symlink): the kernel must look it up again.
    return Status(ErrorCode::kStale, "'" + node.path + "' changed type in the bucket");
  }
  return fresh;
}

Result<AttrReply> Filesystem::GetAttr(InodeId ino) {
  auto node = inodes_.Get(ino);
  if (!node) return Status(ErrorCode::kStale, "inode " + std::to_string(ino) + " is gone");
  if (node->path.empty() && ino != kRootInode) {
    return Status(ErrorCode::kStale, "inode " + std::to_string(ino) + " was replaced");
  }
  BFS_ASSIGN_OR_RETURN(Node fresh, Refresh(*node));
  return AttrReply{fresh.attr, options_.metadata_ttl};
}

Result<std::string> Filesystem::ReadLink(InodeId ino) {
  auto node = inodes_.Get(ino);
  if (!node) return Status(ErrorCode::kStale, "inode " + std::to_string(ino) + " is gone");
  if (node->attr.type != FileType::kSymlink) {
    return Status(ErrorCode::kInvalidArgument, "'" + node->path + "' is not a symlink");
  }
  if (!node->symlink_target.empty()) return node->symlink_target;
  if (node->attr.size == 0 || node->attr.size > 4096) {
    return Status(ErrorCode::kMalformedResponse,
                  "symlink object '" + node->path + "' has an unusable size " +
                      std::to_string(node->attr.size));
  }
  std::string target(node->attr.size, '\0');
  auto got = client_.Get(s3::GetRequest{node->path, std::nullopt, node->etag}, target, {Deadline()});
  if (!got.ok()) {
    if (got.status().code() == ErrorCode::kPreconditionFailed) {
      inodes_.Expire(ino);
      return Status(ErrorCode::kStale, "symlink '" + node->path + "' changed in the bucket");
    }
    return std::move(got).TakeStatus();
  }
  target.resize(got->bytes_read);
  inodes_.SetSymlinkTarget(ino, target);
  return target;
}

// --- Directories -------------------------------------------------------------------------

Result<uint64_t> Filesystem::OpenDir(InodeId ino) {
  auto node = inodes_.Get(ino);
  if (!node) return Status(ErrorCode::kStale, "inode " + std::to_string(ino) + " is gone");
  if (node->attr.type != FileType::kDirectory) {
    return Status(ErrorCode::kNotDirectory, "'" + node->path + "' is not a directory");
  }
  auto listing = FreshListing(node->path);
  if (!listing) {
    BFS_ASSIGN_OR_RETURN(listing, FetchListing(node->path));
  }
  if (!listing->exists) {
    ForgetListing(node->path);
    inodes_.Expire(ino);
    return Status(ErrorCode::kStale, "directory '" + node->path + "' was removed from the bucket");
  }
  auto handle = std::make_shared<DirHandle>();
  handle->ino = ino;
  handle->path = node->path;
  handle->self = node->attr;
  handle->listing = std::move(listing);
  std::lock_guard lock(mu_);
  const uint64_t id = next_handle_++;
  dirs_.emplace(id, std::move(handle));
  return id;
}

Status Filesystem::ReadDir(uint64_t dir_handle, uint64_t offset, bool plus,
                           const DirFiller& fill) {
  std::shared_ptr<DirHandle> dir;
  {
    std::lock_guard lock(mu_);
    auto it = dirs_.find(dir_handle);
    if (it == dirs_.end()) return Status(ErrorCode::kInvalidArgument, "unknown directory handle");
    dir = it->second;
  }
  const auto& entries = dir->listing->entries;
  // Offsets: 0 = start; "." is 0 -> 1, ".." 1 -> 2, entry i is (i + 2) -> (i + 3).
  for (uint64_t pos = offset; pos < entries.size() + 2; ++pos) {
    DirEntryView view;
    view.next_offset = pos + 1;
    if (pos < 2) {
      view.name = pos == 0 ? "." : "..";
      view.attr = dir->self;
      if (pos == 1) view.attr.ino = kRootInode;  // The kernel resolves ".." itself.
      if (!fill(view)) return Status::Ok();
      continue;
    }
    const ListedEntry& entry = entries[pos - 2];
    const std::string path = ChildPath(dir->path, entry.name);
    view.name = entry.name;
    if (plus) {
      // The node is entered with no lookup; the accepted entry adds one.
      Node node = EnterListed(path, entry, 0);
      view.attr = node.attr;
      view.counts_lookup = true;
      if (!fill(view)) {
        inodes_.DropIfUnused(node.ino);
        return Status::Ok();
      }
      if (!inodes_.AddLookups(node.ino, 1)) {
        // Cannot happen while we hold no lookup... unless a type change raced; harmless:
        // the kernel will look the name up again when its entry fails.
        Logger("fuse")->debug("readdirplus entry '{}' vanished while being returned", path);
      }
    } else {
      auto existing = inodes_.GetByPath(path);
      view.attr.ino = existing ? existing->ino : PlaceholderIno(path);
      view.attr.type = entry.type;
      view.attr.permissions = entry.type == FileType::kDirectory ? options_.defaults.dir_mode
                                                                  : options_.defaults.file_mode;
      if (!fill(view)) return Status::Ok();
    }
  }
  return Status::Ok();
}

void Filesystem::ReleaseDir(uint64_t dir_handle) {
  std::lock_guard lock(mu_);
  dirs_.erase(dir_handle);
}

// --- Files -------------------------------------------------------------------------------

Result<OpenReply> Filesystem::Open(InodeId ino, int flags) {
  auto node = inodes_.Get(ino);
  if (!node) return Status(ErrorCode::kStale, "inode " + std::to_string(ino) + " is gone");
  if (node->attr.type == FileType::kDirectory) {
    return Status(ErrorCode::kIsDirectory, "'" + node->path + "' is a directory");
  }
  if (IsWriteOpen(flags) && options_.read_only) {
    return Status(ErrorCode::kReadOnly, "the mount is read-only");
  }
  BFS_ASSIGN_OR_RETURN(Node fresh, Refresh(*node));
  if (fresh.path.empty()) return Status(ErrorCode::kStale, "inode was replaced");

  auto handle = std::make_shared<FileHandle>();
  handle->ino = ino;
  handle->key = fresh.path;
  handle->reader = std::make_unique<cache::ReadAhead>(
      reads_, cache::ObjectVersion{fresh.path, fresh.etag, fresh.attr.size}, options_.read_ahead);
  const std::string previous_etag = inodes_.PreviousOpenEtag(ino);
  const bool keep_cache = previous_etag == fresh.etag;
  if (!previous_etag.empty() && !keep_cache) InvalidateKernelCache(ino);
  inodes_.OpenHandle(ino, fresh.etag);
  std::lock_guard lock(mu_);
  const uint64_t id = next_handle_++;
  files_.emplace(id, std::move(handle));
  return OpenReply{id, keep_cache};
}

Result<cache::ReadReply> Filesystem::Read(uint64_t handle, uint64_t offset, size_t size) {
  std::shared_ptr<FileHandle> file;
  {
    std::lock_guard lock(mu_);
    auto it = files_.find(handle);
    if (it == files_.end()) return Status(ErrorCode::kInvalidArgument, "unknown file handle");
    file = it->second;
  }
  auto reply = file->reader->Read(offset, size);
  if (!reply.ok() && reply.status().code() == ErrorCode::kStale) {
    // The object was replaced or deleted: the next open must ask the server.
    inodes_.Expire(file->ino);
    const auto slash = file->key.rfind('/');
    ForgetListing(slash == std::string::npos ? std::string() : file->key.substr(0, slash));
    if (reads_.cache != nullptr) reads_.cache->InvalidateObject(file->key);
  }
  return reply;
}

void Filesystem::Release(uint64_t handle) {
  std::shared_ptr<FileHandle> file;
  {
    std::lock_guard lock(mu_);
    auto it = files_.find(handle);
    if (it == files_.end()) return;
    file = std::move(it->second);
    files_.erase(it);
  }
  inodes_.CloseHandle(file->ino);
}

void Filesystem::SetInvalidator(Invalidator invalidate) {
  std::lock_guard lock(mu_);
  invalidate_ = std::move(invalidate);
}

void Filesystem::InvalidateKernelCache(InodeId ino) {
  Invalidator invalidate;
  {
    std::lock_guard lock(mu_);
    invalidate = invalidate_;
  }
  if (!invalidate) return;
  // Not on this thread: it is serving a request, and the kernel may hold locks that the
  // invalidation needs until that request is answered.
  if (reads_.pool == nullptr || !reads_.pool->TrySubmit([invalidate, ino] { invalidate(ino); })) {
    Logger("fuse")->debug("kernel cache of inode {} not invalidated (I/O pool busy)", ino);
  }
}

StatFsReply Filesystem::StatFs() const {
  // An object store has no fixed capacity: report a large, constant size (1 PiB) so that
  // tools that check free space before writing go ahead, as s3fs and rclone do.
  StatFsReply r;
  r.block_size = 4096;
  r.blocks = (1ull << 50) / r.block_size;
  r.blocks_free = r.blocks;
  r.files = 1ull << 32;
  r.files_free = r.files;
  return r;
}

FilesystemStats Filesystem::Stats() const {
  FilesystemStats s;
  s.lookups = counters_.lookups.load();
  s.lookups_from_listing = counters_.lookups_from_listing.load();
  s.negative_hits = counters_.negative_hits.load();
  s.probes = counters_.probes.load();
  s.listings = counters_.listings.load();
  s.heads = counters_.heads.load();
  s.inodes = inodes_.size();
  std::lock_guard lock(mu_);
  s.open_files = files_.size();
  return s;
}

}  // namespace bucketfs::fs
