#include "fuse/filesystem.h"

#include <fcntl.h>

#include <algorithm>
#include <functional>
#include <future>
#include <latch>

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

// HEADs and single-key listings in flight at once for lookups and type checks; more wait.
constexpr size_t kMetadataThreads = 16;
constexpr size_t kMetadataQueue = 1024;

}  // namespace

Filesystem::Filesystem(s3::ObjectClient& client, const cache::ReadContext& reads,
                       FilesystemOptions options)
    : Filesystem(client, reads, nullptr, std::move(options)) {}

Filesystem::Filesystem(s3::ObjectClient& client, const cache::ReadContext& reads,
                       cache::Writeback* writeback, FilesystemOptions options)
    : client_(client),
      reads_(reads),
      writeback_(writeback),
      options_(std::move(options)),
      clock_(reads.clock ? *reads.clock : RealClock()),
      inodes_(DirectoryAttributes(options_.mount_time, options_.defaults),
              options_.generation) {
  metadata_pool_ = std::make_unique<TaskPool>("bfs-meta", kMetadataThreads, kMetadataQueue);
  page_invalidations_ = std::make_unique<PageInvalidations>([this](uint64_t ino) {
    if (Invalidator invalidate = CurrentInvalidator()) invalidate(ino, /*pages=*/true);
  });
  if (writeback_ != nullptr) {
    writeback_->SetListener([this](const cache::CommittedObject& c) { OnCommitted(c); });
  }
}

Filesystem::~Filesystem() {
  if (writeback_ != nullptr) writeback_->SetListener(nullptr);
  page_invalidations_.reset();  // Its thread calls CurrentInvalidator().
}

EntryReply Filesystem::MakeEntry(const Node& node) const {
  return EntryReply{node.attr, inodes_.generation(), KernelTtl(node)};
}

Duration Filesystem::KernelTtl(const Node& node) const {
  // (Directories too: their attributes are their markers', and a directory entered with
  // attributes nobody read is expired at once, for the kernel to ask again.)
  const MonoTime now = Now();
  // (Expire() sets MonoTime::min(): subtracting now from it would overflow.)
  if (node.attr_expiry <= now) return Duration::zero();
  return std::min<Duration>(node.attr_expiry - now, options_.metadata_ttl);
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
    const std::string& dir_path, size_t max_pages) {
  counters_.listings.fetch_add(1, std::memory_order_relaxed);
  uint64_t forgets_before = 0;
  {
    std::lock_guard lock(mu_);
    FetchInFlight& f = fetches_in_flight_[dir_path];
    ++f.fetches;
    forgets_before = f.forgets;
  }
  // Taken before the request: what it returns was true no earlier than this.
  const uint64_t as_of = inodes_.Tick();
  auto listed =
      ListDirectory(client_, dir_path, Now(), [this] { return Deadline(); }, problems_, max_pages);

  std::lock_guard lock(mu_);
  auto f = fetches_in_flight_.find(dir_path);
  const bool forgotten = f->second.forgets != forgets_before;
  std::vector<PendingPatch> patches;
  if (--f->second.fetches == 0) {
    patches = std::move(f->second.patches);
    fetches_in_flight_.erase(f);
  } else {
    patches = f->second.patches;  // Another fetch of it is still in flight and needs them too.
  }
  if (!listed.ok()) return std::move(listed).TakeStatus();
  std::shared_ptr<DirectoryListing> listing = std::move(listed).value();
  if (listing == nullptr) return std::shared_ptr<const DirectoryListing>();  // Too large.
  for (auto& e : listing->entries) e.as_of = as_of;
  // This mount's changes that the server may have answered without: a commit that landed
  // after the LIST was answered. Those made before the request was sent, it shows.
  for (const auto& patch : patches) {
    if (patch.as_of > as_of) listing->Set(patch.name, patch.entry ? &*patch.entry : nullptr);
  }
  if (options_.max_cached_listings == 0 || options_.metadata_ttl <= Duration::zero() ||
      forgotten) {
    // (forgotten: the directory, or one above it, was renamed or removed meanwhile; the
    // answer is for this call only.)
    return std::shared_ptr<const DirectoryListing>(std::move(listing));
  }
  CacheListingLocked(dir_path, listing);
  // A listing is the newest word on every name in it.
  for (const auto& e : listing->entries) negative_.erase(ChildPath(dir_path, e.name));
  return std::shared_ptr<const DirectoryListing>(std::move(listing));
}

std::optional<ListedEntry> Filesystem::NewerCachedEntry(const std::string& dir_path,
                                                        const std::string& name,
                                                        uint64_t as_of) {
  std::lock_guard lock(mu_);
  auto it = listings_.find(dir_path);
  if (it == listings_.end()) return std::nullopt;
  const ListedEntry* entry = it->second->Find(name);
  if (entry == nullptr || entry->as_of <= as_of) return std::nullopt;
  return *entry;
}

void Filesystem::CacheListingLocked(const std::string& dir_path,
                                    std::shared_ptr<const DirectoryListing> listing) {
  if (!listings_.contains(dir_path)) {
    listing_order_.push_back(dir_path);
    while (listing_order_.size() > options_.max_cached_listings) {
      listings_.erase(listing_order_.front());
      listing_order_.pop_front();
    }
  }
  listings_[dir_path] = std::move(listing);
}

void Filesystem::ForgetListing(const std::string& dir_path) {
  std::lock_guard lock(mu_);
  NoteForgetLocked(dir_path, /*under=*/false);
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

bool Filesystem::MissingSince(const std::string& path, MonoTime since) {
  std::lock_guard lock(mu_);
  auto it = negative_.find(path);
  // An entry's expiry is one TTL after it was remembered.
  return it != negative_.end() && Now() < it->second &&
         it->second - options_.metadata_ttl >= since;
}

void Filesystem::RememberMissing(const std::string& path) {
  if (options_.metadata_ttl <= Duration::zero()) return;
  std::lock_guard lock(mu_);
  checked_.erase(path);
  if (negative_.size() >= options_.max_negative_entries) {
    // Drop the expired ones; if that frees nothing, start over (a cache, not a record).
    const MonoTime now = Now();
    std::erase_if(negative_, [now](const auto& kv) { return now >= kv.second; });
    if (negative_.size() >= options_.max_negative_entries) negative_.clear();
  }
  negative_[path] = Expiry();
}

uint64_t Filesystem::ChangesSoFar() const {
  std::lock_guard lock(mu_);
  return changes_;
}

void Filesystem::ForgetMissing(const std::string& path) {
  std::lock_guard lock(mu_);
  ++changes_;
  negative_.erase(path);
  // This mount just made the object: a HEAD's word on an earlier one with the same ETag (a
  // chmod copies the bytes onto themselves; a symlink rewritten as a file of the same bytes)
  // no longer holds.
  checked_.erase(path);
}

void Filesystem::ForgetMissingUnder(const std::string& prefix) {
  std::lock_guard lock(mu_);
  ++changes_;
  std::erase_if(negative_, [&](const auto& kv) { return kv.first.starts_with(prefix); });
  std::erase_if(checked_, [&](const auto& kv) { return kv.first.starts_with(prefix); });
}

Node Filesystem::EnterListed(const std::string& path, const ListedEntry& entry,
                             uint64_t lookups, MonoTime listed_at) {
  // What a listing says is as old as the listing: it is trusted until the listing's TTL
  // ends, not for a whole TTL from now (a stat answered from a 59 s old listing would
  // otherwise be believed, and handed to the kernel, for another minute).
  const MonoTime expiry = listed_at + options_.metadata_ttl;
  auto existing = inodes_.GetByPath(path);
  if (existing) {
    if (existing->stored > entry.as_of) {
      // The node was known after the entry was true: a directory handle's snapshot read
      // after a commit, or a listing fetched while the commit ran. It shows the new size and
      // ETag; the entry would give the kernel the size the file had when it was created.
      // Newer, even when its attributes have expired: the entry is older still.
      if (lookups == 0 || inodes_.AddLookups(existing->ino, lookups)) {
        existing->nlookup += lookups;
        return *existing;
      }
    }
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
    if (same_version && existing->attr.type != FileType::kDirectory) {
      // The same version: what a HEAD told before (symlink, mode, owner, the mtime in its
      // metadata) still holds, and the listing cannot tell it.
      return inodes_.UpsertUnlessNewer(path, existing->attr, existing->etag, expiry, lookups,
                                       entry.as_of);
    }
  }
  Attributes attr;
  if (entry.type == FileType::kDirectory) {
    if (auto checked = CheckedAttributes(path, entry)) {
      attr = *checked;  // A HEAD of its marker: the mode, owner and mtime stored there.
    } else {
      // Not checked (its HEAD failed, or past the checks one opening makes): what this
      // mount knew of it, or the defaults, expired at once, so that the kernel asks again
      // (GetAttr HEADs the marker) instead of trusting a mode nobody read for a TTL.
      attr = existing && existing->attr.type == FileType::kDirectory
                 ? existing->attr
                 : DirectoryAttributes(options_.mount_time, options_.defaults);
      return inodes_.UpsertUnlessNewer(path, attr, "", Now(), lookups, entry.as_of);
    }
  } else if (auto checked = CheckedAttributes(path, entry)) {
    attr = *checked;  // A HEAD saw this version: its type (symlink?), mode and owner.
  } else {
    s3::ObjectInfo info;
    info.size = entry.size;
    info.last_modified = entry.mtime;
    attr = ObjectAttributes(info, options_.defaults);
  }
  return inodes_.UpsertUnlessNewer(path, attr, entry.etag, expiry, lookups, entry.as_of);
}

bool Filesystem::NodeNewerThan(const std::string& path, uint64_t as_of) const {
  auto node = inodes_.GetByPath(path);
  return node && node->stored > as_of;
}

// Symlinks are small objects whose type is in their metadata, which listings do not carry.
// An object below this size, listed but never HEADed, is checked before the kernel sees it.
// So is a directory: its mode, owner and mtime are in its marker's metadata.
constexpr uint64_t kSymlinkMaxSize = 4096;
constexpr size_t kMaxEntryChecks = 256;

bool Filesystem::NeedsCheck(const std::string& path, const ListedEntry& entry) {
  const auto existing = inodes_.GetByPath(path);
  if (entry.type == FileType::kDirectory) {
    if (existing && existing->attr.type == FileType::kDirectory &&
        Now() < existing->attr_expiry) {
      return false;
    }
  } else {
    if (entry.type != FileType::kRegular || entry.size == 0 || entry.size >= kSymlinkMaxSize) {
      return false;
    }
    // Seen by HEAD (or written here) in this version: its type is known.
    if (existing && existing->etag == entry.etag &&
        (existing->attr.type == FileType::kSymlink || Now() < existing->attr_expiry)) {
      return false;
    }
  }
  return !CheckedAttributes(path, entry).has_value();
}

std::optional<Attributes> Filesystem::CheckedAttributes(const std::string& path,
                                                        const ListedEntry& entry) {
  const bool directory = entry.type == FileType::kDirectory;
  std::lock_guard lock(mu_);
  auto it = checked_.find(path);
  if (it == checked_.end() || Now() >= it->second.expiry ||
      (it->second.attr.type == FileType::kDirectory) != directory ||
      (!directory && it->second.etag != entry.etag)) {
    return std::nullopt;
  }
  return it->second.attr;
}

void Filesystem::Check(const std::string& path, const ListedEntry& entry) {
  counters_.heads.fetch_add(1, std::memory_order_relaxed);
  // Trusted for a TTL from when it was asked: a chmod here while the HEAD is in flight
  // keeps its node fresh for longer than this answer (the node goes first, then this).
  const MonoTime expiry = Expiry();
  const uint64_t changes = ChangesSoFar();
  Attributes attr;
  if (entry.type == FileType::kDirectory) {
    auto head = client_.Head(s3::HeadRequest{DirectoryPrefix(path), {}}, {Deadline()});
    if (head.ok()) {
      attr = MarkerAttributes(*head, options_.defaults);
    } else if (head.status().code() == ErrorCode::kNotFound) {
      // No marker: a directory only through the keys under it, with nothing stored.
      attr = DirectoryAttributes(options_.mount_time, options_.defaults);
    } else {
      return;  // Unknown: EnterListed hands the entry out expired, and the kernel asks again.
    }
  } else {
    auto head = client_.Head(s3::HeadRequest{path, {}}, {Deadline()});
    if (!head.ok() || head->etag != entry.etag) return;  // Changed or gone: the listing is stale.
    attr = ObjectAttributes(*head, options_.defaults);
  }
  std::lock_guard lock(mu_);
  // Something was made or changed here while the HEAD was in flight (a chmod, a mkdir over
  // a removed directory): the answer may be from before it, and its ForgetMissing is done.
  if (changes_ != changes) return;
  if (checked_.size() >= options_.max_negative_entries) checked_.clear();  // A cache.
  checked_[path] = CheckedEntry{entry.etag, attr, expiry};
}

Node Filesystem::EnterListedChecked(const std::string& path, const ListedEntry& entry,
                                    uint64_t lookups, MonoTime listed_at) {
  if (NeedsCheck(path, entry)) Check(path, entry);
  return EnterListed(path, entry, lookups, listed_at);
}

void Filesystem::CheckListedEntries(const std::string& dir_path, const DirectoryListing& listing) {
  std::vector<std::pair<std::string, const ListedEntry*>> todo;  // Path, entry.
  for (const auto& entry : listing.entries) {
    if (todo.size() >= kMaxEntryChecks) break;
    std::string path = ChildPath(dir_path, entry.name);
    if (NeedsCheck(path, entry)) todo.emplace_back(std::move(path), &entry);
  }
  if (todo.empty()) return;
  std::latch done(static_cast<std::ptrdiff_t>(todo.size()));
  for (const auto& item : todo) {
    auto check = [this, &item, &done] {
      Check(item.first, *item.second);
      done.count_down();
    };
    if (!metadata_pool_->TrySubmit(check)) check();
  }
  done.wait();
}

// --- Lookup and attributes ---------------------------------------------------------------

Result<Node> Filesystem::Probe(const std::string& path) {
  counters_.probes.fetch_add(1, std::memory_order_relaxed);
  const MonoTime deadline = Deadline();
  // Is anything under `path/`? Runs on the metadata pool while this thread does the HEAD.
  auto list_one = [this, path, deadline]() -> Result<s3::ListPage> {
    s3::ListRequest req;
    req.prefix = DirectoryPrefix(path);
    req.delimiter = "/";
    req.max_keys = 1;
    return client_.List(req, {deadline});
  };
  auto task = std::make_shared<std::packaged_task<Result<s3::ListPage>()>>(list_one);
  std::future<Result<s3::ListPage>> listed = task->get_future();
  const uint64_t as_of = inodes_.Tick();  // Before either request is sent.
  // First in line: an opendir's checks (CheckListedEntries) may fill the queue, and
  // this lookup is what a program waits on.
  if (!metadata_pool_->TrySubmitFirst([task] { (*task)(); })) (*task)();

  auto head = client_.Head(s3::HeadRequest{path, {}}, {deadline});
  Result<s3::ListPage> page = listed.get();
  if (!page.ok()) return std::move(page).TakeStatus();
  const bool is_dir = !page->objects.empty() || !page->common_prefixes.empty();
  if (is_dir) {
    if (head.ok()) {
      problems_.Report(path, "both a file and a directory; shown as the directory, the file is hidden");
    }
    Attributes attr = DirectoryAttributes(options_.mount_time, options_.defaults);
    if (!page->objects.empty() && page->objects.front().key == DirectoryPrefix(path)) {
      // Its marker: what chmod, chown and touch -d stored is in its metadata.
      counters_.heads.fetch_add(1, std::memory_order_relaxed);
      auto marker = client_.Head(s3::HeadRequest{DirectoryPrefix(path), {}}, {deadline});
      if (marker.ok()) {
        attr = MarkerAttributes(*marker, options_.defaults);
      } else if (marker.status().code() == ErrorCode::kNotFound) {
        attr.mtime = page->objects.front().last_modified;  // Removed meanwhile: as listed.
      } else {
        return std::move(marker).TakeStatus();
      }
    }
    return inodes_.UpsertUnlessNewer(path, attr, "", Expiry(), 0, as_of);
  }
  if (!head.ok()) {
    if (head.status().code() == ErrorCode::kNotFound) return NotFound(path);
    return std::move(head).TakeStatus();
  }
  return inodes_.UpsertUnlessNewer(path, ObjectAttributes(*head, options_.defaults), head->etag,
                                   Expiry(), 0, as_of);
}

Result<std::string> Filesystem::ChildKey(InodeId parent, std::string_view name, Node* parent_node) {
  auto dir = inodes_.Get(parent);
  if (!dir) return Status(ErrorCode::kStale, "directory inode " + std::to_string(parent) + " is gone");
  if (dir->attr.type != FileType::kDirectory) {
    return Status(ErrorCode::kNotDirectory, "'" + dir->path + "' is not a directory");
  }
  if (dir->unlinked) return Status(ErrorCode::kNotFound, "the directory was removed");
  if (dir->path.empty() && dir->ino != kRootInode) {
    // Replaced in the bucket (by a file of the same name): an empty path is the root's, and
    // this inode must never stand for it.
    return Status(ErrorCode::kStale, "directory inode " + std::to_string(parent) + " was replaced");
  }
  if (NameProblem p = CheckName(name); p != NameProblem::kNone) {
    if (p == NameProblem::kTooLong) {
      return Status(ErrorCode::kNameTooLong, "file names are limited to 255 bytes");
    }
    return Status(ErrorCode::kInvalidArgument,
                  "'" + std::string(name) + "' cannot be a name in an S3 bucket");
  }
  std::string path = ChildPath(dir->path, name);
  // A file's key is the path; a directory's marker (MkDir checks) is one byte longer.
  if (path.size() > kMaxKeyBytes) {
    return Status(ErrorCode::kNameTooLong, "S3 keys are limited to 1024 bytes");
  }
  if (dir->path.empty() && IsReservedKey(path + "/")) {
    return Status(ErrorCode::kAccessDenied, "'" + path + "' is reserved for bucketfs");
  }
  if (parent_node != nullptr) *parent_node = *dir;
  return path;
}

Result<Node> Filesystem::Resolve(const std::string& dir_path, std::string_view name,
                                 const std::string& path) {
  // 0. Names unlinked while open are gone; dirty files are what the spool says.
  {
    std::lock_guard lock(mu_);
    if (hidden_.contains(path)) return NotFound(path);
  }
  if (auto dirty = FindDirty(path)) return EnterDirty(path, *dirty, 0);
  // 1. A fresh listing of the parent knows every name in it, and every name not in it.
  if (auto listing = FreshListing(dir_path)) {
    counters_.lookups_from_listing.fetch_add(1, std::memory_order_relaxed);
    const ListedEntry* entry = listing->Find(name);
    if (entry == nullptr) return NotFound(path);
    return EnterListedChecked(path, *entry, 0, listing->fetched_at);
  }
  // 2. A node whose attributes are fresh.
  if (auto node = inodes_.GetByPath(path); node && Now() < node->attr_expiry) return *node;
  // 3. A name recently found missing.
  if (IsNegative(path)) {
    counters_.negative_hits.fetch_add(1, std::memory_order_relaxed);
    return NotFound(path);
  }
  // 4. A second name found missing in the same directory within the TTL: a program is
  //    creating files there (cp -r, tar x, a loop of writes). One listing then answers
  //    every further lookup in it, and creates keep it current, instead of a HEAD and a
  //    one-key listing per new name.
  //    Only a directory of one page (1,000 entries) is listed so: listing a large one to
  //    its end for every few new names would cost far more than the lookups it saves.
  bool list_instead = false;
  {
    std::lock_guard lock(mu_);
    auto it = misses_.find(dir_path);
    list_instead = it != misses_.end() && Now() < it->second.until && !it->second.too_large;
  }
  if (list_instead) {
    auto listing = FetchListing(dir_path, /*max_pages=*/1);
    {
      std::lock_guard lock(mu_);
      if (listing.ok() && *listing == nullptr) {
        misses_[dir_path] = MissHint{Expiry(), /*too_large=*/true};
      } else {
        misses_.erase(dir_path);  // Listed, or failed: a failure is not tried again at once.
      }
    }
    if (listing.ok() && *listing != nullptr && (*listing)->exists) {
      const ListedEntry* entry = (*listing)->Find(name);
      if (entry == nullptr) return NotFound(path);
      return EnterListedChecked(path, *entry, 0, (*listing)->fetched_at);
    }
  }
  // 5. Ask the server.
  auto probed = Probe(path);
  if (!probed.ok() && probed.status().code() == ErrorCode::kNotFound) {
    RememberMissing(path);
    if (options_.metadata_ttl > Duration::zero()) {
      std::lock_guard lock(mu_);
      if (misses_.size() > 1024) misses_.clear();  // A hint, not a record.
      MissHint& hint = misses_[dir_path];
      if (!(hint.too_large && Now() < hint.until)) hint = MissHint{Expiry(), false};
    }
  }
  return probed;
}

Result<EntryReply> Filesystem::Lookup(InodeId parent, std::string_view name) {
  counters_.lookups.fetch_add(1, std::memory_order_relaxed);
  Node dir;
  auto path = ChildKey(parent, name, &dir);
  if (!path.ok()) {
    // A name S3 cannot hold, or the reserved prefix: simply not there.
    const ErrorCode code = path.status().code();
    if (code == ErrorCode::kInvalidArgument || code == ErrorCode::kAccessDenied) {
      return NotFound(std::string(name));
    }
    return std::move(path).TakeStatus();
  }
  BFS_ASSIGN_OR_RETURN(Node node, Resolve(dir.path, name, *path));
  return MakeEntry(TakeLookup(*path, node));
}

Node Filesystem::TakeLookup(const std::string& path, const Node& node) {
  if (inodes_.AddLookups(node.ino, 1)) return node;
  // Dropped in between (it had no lookups yet): enter it again, with this one.
  return inodes_.UpsertUnlessNewer(path, node.attr, node.etag, node.attr_expiry, 1,
                                   node.stored);
}

void Filesystem::Forget(InodeId ino, uint64_t nlookup) { inodes_.Forget(ino, nlookup); }

Result<Node> Filesystem::MovedMeanwhile(const Node& node) {
  // Renamed while its attributes were fetched: the node under its new name, as it is (the
  // reply was about the old name). Removed: stale.
  if (auto now = inodes_.Get(node.ino); now && !now->unlinked && !now->path.empty()) return *now;
  return Status(ErrorCode::kStale, "'" + node.path + "' was removed while its attributes were "
                                   "fetched");
}

Result<Node> Filesystem::Refresh(const Node& node) {
  if (Now() < node.attr_expiry || node.ino == kRootInode) return node;
  counters_.heads.fetch_add(1, std::memory_order_relaxed);
  const uint64_t as_of = inodes_.Tick();
  if (node.attr.type == FileType::kDirectory) {
    // Its attributes are its marker's. A directory stays one until a listing of its parent
    // says it is gone: without a marker it is a directory through its keys, with defaults.
    auto marker = client_.Head(s3::HeadRequest{DirectoryPrefix(node.path), {}}, {Deadline()});
    Attributes attr = DirectoryAttributes(options_.mount_time, options_.defaults);
    if (marker.ok()) {
      attr = MarkerAttributes(*marker, options_.defaults);
    } else if (marker.status().code() != ErrorCode::kNotFound) {
      return std::move(marker).TakeStatus();
    }
    if (auto kept = inodes_.RefreshIfStillAt(node.ino, node.path, attr, node.etag, Expiry(),
                                             as_of)) {
      return *kept;
    }
    return MovedMeanwhile(node);
  }
  auto head = client_.Head(s3::HeadRequest{node.path, {}}, {Deadline()});
  if (!head.ok()) {
    if (head.status().code() == ErrorCode::kNotFound) {
      // Gone; or perhaps a directory now: the next lookup will tell.
      RememberMissing(node.path);
      return Status(ErrorCode::kStale, "'" + node.path + "' was removed from the bucket");
    }
    return std::move(head).TakeStatus();
  }
  // A commit of this mount that finished while the HEAD was in flight stored a newer node.
  auto refreshed = inodes_.RefreshIfStillAt(
      node.ino, node.path, ObjectAttributes(*head, options_.defaults), head->etag, Expiry(), as_of);
  if (!refreshed) return MovedMeanwhile(node);
  const Node& fresh = *refreshed;
  if (fresh.ino != node.ino) {
    // Its type changed (a file turned out to be a symlink): the kernel must look it up again.
    return Status(ErrorCode::kStale, "'" + node.path + "' changed type in the bucket");
  }
  return fresh;
}

Result<AttrReply> Filesystem::GetAttr(InodeId ino) {
  auto node = inodes_.Get(ino);
  if (!node) return Status(ErrorCode::kStale, "inode " + std::to_string(ino) + " is gone");
  if (node->unlinked) {
    // Unlinked while open (fstat on the descriptor): what it was, with no links. A dirty
    // one still grows through its handles.
    Attributes attr = node->attr;
    if (auto open = DirtyHandleOf(ino, /*writers_only=*/false)) {
      attr = DirtyAttributesOf(*open->dirty);
      attr.ino = ino;
    }
    attr.nlink = 0;
    return AttrReply{attr, Duration::zero()};
  }
  if (node->path.empty() && ino != kRootInode) {
    return Status(ErrorCode::kStale, "inode " + std::to_string(ino) + " was replaced");
  }
  if (auto dirty = FindDirty(node->path)) {
    return AttrReply{EnterDirty(node->path, *dirty, 0).attr, options_.metadata_ttl};
  }
  BFS_ASSIGN_OR_RETURN(Node fresh, Refresh(*node));
  // Only for as long as this mount trusts them itself: the kernel must ask again when the
  // node would be refreshed, not a whole TTL after a cached answer.
  return AttrReply{fresh.attr, KernelTtl(fresh)};
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

Result<std::shared_ptr<const DirectoryListing>> Filesystem::HandleListing(
    InodeId ino, const std::string& dir_path) {
  std::shared_ptr<const DirectoryListing> listing = FreshListing(dir_path);
  if (!listing) {
    BFS_ASSIGN_OR_RETURN(listing, FetchListing(dir_path));
  }
  if (!listing->exists) {
    ForgetListing(dir_path);
    inodes_.Expire(ino);
    return Status(ErrorCode::kStale, "directory '" + dir_path + "' was removed from the bucket");
  }
  // What the server does not know yet: files still in the spool; and what it still shows
  // but is gone: files unlinked while open.
  const std::string prefix = DirectoryPrefix(dir_path);
  std::vector<ListedEntry> extra;
  const uint64_t now_tick = inodes_.Tick();  // When the spool's sizes below were true.
  if (writeback_ != nullptr) {
    for (const auto& dirty : writeback_->Under(prefix)) {
      const std::string key = dirty->key();
      const std::string name = key.substr(prefix.size());
      if (name.empty() || name.find('/') != std::string::npos || listing->Find(name)) continue;
      const auto attrs = dirty->Attributes();
      extra.push_back(ListedEntry{name, FileType::kRegular, attrs.size, attrs.mtime, "",
                                  now_tick});
    }
  }
  bool hides = false;
  {
    std::lock_guard lock(mu_);
    for (const auto& [path, ino_hidden] : hidden_) {
      if (path.compare(0, prefix.size(), prefix) == 0) hides = true;
    }
  }
  if (!extra.empty() || hides) {
    auto merged = std::make_shared<DirectoryListing>(*listing);
    if (hides) {
      std::lock_guard lock(mu_);
      std::erase_if(merged->entries, [&](const ListedEntry& e) {
        return hidden_.contains(ChildPath(dir_path, e.name));
      });
    }
    merged->entries.insert(merged->entries.end(), extra.begin(), extra.end());
    std::sort(merged->entries.begin(), merged->entries.end(),
              [](const ListedEntry& a, const ListedEntry& b) { return a.name < b.name; });
    listing = std::move(merged);
  }
  CheckListedEntries(dir_path, *listing);
  return listing;
}

Result<uint64_t> Filesystem::OpenDir(InodeId ino) {
  auto node = inodes_.Get(ino);
  if (!node) return Status(ErrorCode::kStale, "inode " + std::to_string(ino) + " is gone");
  if (node->attr.type != FileType::kDirectory) {
    return Status(ErrorCode::kNotDirectory, "'" + node->path + "' is not a directory");
  }
  auto handle = std::make_shared<DirHandle>();
  handle->ino = ino;
  handle->path = node->path;
  handle->self = node->attr;
  if (node->unlinked) {
    // Removed while the kernel still had it (a shell's working directory): empty, as a
    // local directory is after rmdir. Its path is empty now; it must not list the root.
    handle->listing = std::make_shared<const DirectoryListing>();
    std::lock_guard lock(mu_);
    const uint64_t id = next_handle_++;
    dirs_.emplace(id, std::move(handle));
    return id;
  }
  if (node->path.empty() && ino != kRootInode) {
    return Status(ErrorCode::kStale, "directory inode " + std::to_string(ino) + " was replaced");
  }
  BFS_ASSIGN_OR_RETURN(handle->listing, HandleListing(ino, node->path));
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
  // Where the directory is now: renamed since this handle was opened, its entries are under
  // the new name (entered under the old one, they would be new nodes there, and a write
  // through them would make objects there). Removed since: nothing is in it.
  static const std::vector<ListedEntry> kNothing;
  std::string dir_path = dir->path;
  bool removed = false;
  // (A node whose path was taken by a file, its type changed, has no path left: the empty
  // path is the root's, and its entries would be entered there.)
  if (auto now = inodes_.Get(dir->ino);
      now && !now->unlinked && (!now->path.empty() || dir->ino == kRootInode) &&
      now->attr.type == FileType::kDirectory) {
    dir_path = now->path;
  } else {
    removed = true;
  }
  std::shared_ptr<const DirectoryListing> listing;
  {
    std::lock_guard lock(mu_);
    listing = dir->listing;
  }
  if (offset == 0 && !removed && dir->read.exchange(true) &&
      Now() >= listing->fetched_at + options_.metadata_ttl) {
    // From the start again (rewinddir, or a handle kept open to be read again) with a
    // snapshot older than the TTL: what the directory holds now, as a new opendir sees it.
    // (Within one pass the snapshot stays: offsets are positions in it.)
    auto fresh = HandleListing(dir->ino, dir_path);
    if (fresh.ok()) {
      listing = *fresh;
      std::lock_guard lock(mu_);
      dir->listing = listing;
    } else if (fresh.status().code() == ErrorCode::kStale) {
      removed = true;
    }  // Otherwise (the server unreachable) the old snapshot serves.
  }
  const auto& entries = removed ? kNothing : listing->entries;
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
    const std::string path = ChildPath(dir_path, entry.name);
    view.name = entry.name;
    if (plus) {
      // The node is entered with no lookup; the entry takes one below.
      // The snapshot's entry, unless the cached listing learnt something newer of the name
      // since (a commit, or a listing fetched after this handle's): the kernel keeps what
      // it is given for the TTL.
      ListedEntry best = entry;
      if (auto newer = NewerCachedEntry(dir_path, entry.name, entry.as_of)) best = *newer;
      Node node;
      if (auto dirty = FindDirty(path)) {
        node = EnterDirty(path, *dirty, 0);
      } else if (MissingSince(path, listing->fetched_at)) {
        // Removed or renamed away since the snapshot: an entry would give the kernel a name
        // that is gone.
        continue;
      } else if (best.type == FileType::kRegular && best.etag.empty() &&
                 !NodeNewerThan(path, best.as_of)) {
        // Listed while it was being written, committed (or removed) since, and nothing here
        // knows what it became (the node forgotten, the listing evicted): the entry's size is
        // the one it had then. Ask.
        auto now = Resolve(dir_path, entry.name, path);
        if (!now.ok() && now.status().code() == ErrorCode::kNotFound) continue;  // Gone.
        node = now.ok() ? *now : EnterListed(path, best, 0, listing->fetched_at);
      } else {
        node = EnterListed(path, best, 0, listing->fetched_at);
      }
      // The lookup the entry gives the kernel is taken before the entry is handed out: a
      // concurrent readdirplus that refuses the same new node could drop it otherwise.
      node = TakeLookup(path, node);
      view.attr = node.attr;
      view.counts_lookup = true;
      view.ttl = KernelTtl(node);
      if (!fill(view)) {
        inodes_.Forget(node.ino, 1);  // Not returned: the lookup goes back.
        return Status::Ok();
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
  return OpenFile(ino, flags, /*for_setattr=*/false);
}

Result<OpenReply> Filesystem::OpenFile(InodeId ino, int flags, bool for_setattr) {
  auto node = inodes_.Get(ino);
  if (!node) return Status(ErrorCode::kStale, "inode " + std::to_string(ino) + " is gone");
  if (node->attr.type == FileType::kDirectory) {
    return Status(ErrorCode::kIsDirectory, "'" + node->path + "' is a directory");
  }
  if (!for_setattr || FindDirty(node->path) == nullptr) BFS_RETURN_IF_ERROR(CheckOpensAllowed());
  // A write open starts a file at its key: not while a directory rename moves it (gate_),
  // nor while a rename or unlink of the file itself moves or deletes the key (key_locks_).
  PrefixGate::Hold entered;
  KeyLocks::Hold writing;
  if (IsWriteOpen(flags)) {
    BFS_RETURN_IF_ERROR(CheckWritable());
    for (;;) {
      BFS_ASSIGN_OR_RETURN(entered, EnterInode(ino, &node));
      const std::string key = node->path;
      writing = key_locks_.Share(key);
      node = inodes_.Get(ino);
      if (!node) return Status(ErrorCode::kStale, "inode " + std::to_string(ino) + " is gone");
      if (node->path != key) {
        // Renamed while this open waited for the key: the key to write at is the new one.
        writing.Release();
        entered.Release();
        continue;
      }
      break;
    }
  }
  if (node->unlinked || node->path.empty()) {
    return Status(ErrorCode::kStale, "'" + node->path + "' was removed or replaced");
  }
  auto handle = std::make_shared<FileHandle>();
  handle->ino = ino;
  handle->key = node->path;
  if (IsWriteOpen(flags)) {
    if (node->attr.type != FileType::kRegular) {
      return Status(ErrorCode::kInvalidArgument, "'" + node->path + "' is not a regular file");
    }
    // A file being written is joined as it is. Otherwise the object is the base: the
    // version to keep untouched bytes of and to If-Match on commit, with all of its
    // metadata (a rewrite must not drop what another tool stored there).
    handle->dirty = writeback_->ReopenForWrite(node->path);
    if (!handle->dirty) {
      std::optional<cache::BaseObject> base;
      s3::UserMetadata metadata;
      auto head = client_.Head(s3::HeadRequest{node->path, {}}, {Deadline()});
      if (!head.ok() && head.status().code() != ErrorCode::kNotFound) {
        return std::move(head).TakeStatus();
      }
      if (head.ok()) {
        const Attributes found = ObjectAttributes(*head, options_.defaults);
        if (found.type != FileType::kRegular) {
          // A symlink (s3fs's convention) that a listing showed as a file: only its metadata
          // says what it is, and a listing HEADs only so many small objects. Written to, it
          // would be rewritten as a link to another target. The kernel looks it up again
          // (ESTALE), finds the link, and follows it.
          inodes_.Expire(ino);
          ForgetListing(ParentOf(node->path));
          return Status(ErrorCode::kStale, "'" + node->path + "' is not a regular file: " +
                                               "its listing did not say so");
        }
        base = cache::BaseObject{head->etag, head->size, found.mtime};
        metadata = head->metadata;
      }
      const auto own = AttributeMetadata(FileType::kRegular, node->attr.permissions,
                                         node->attr.uid, node->attr.gid);
      for (const auto& [k, v] : own) metadata.try_emplace(k, v);
      BFS_ASSIGN_OR_RETURN(handle->dirty,
                           writeback_->OpenForWrite(node->path, base, metadata, false));
    }
    handle->writer = true;
    if ((flags & O_TRUNC) != 0) {
      // Emptied: not a file to upload until this writer closes. Marked before the
      // truncation, so that another descriptor's close meanwhile cannot journal the empty
      // file as closed (a crash would then upload it).
      MarkChanged(*handle);
      Status truncated = handle->dirty->Truncate(0);
      if (!truncated.ok()) {
        writeback_->ReleaseWriter(handle->dirty, handle->changed_since_flush.exchange(false));
        return truncated;
      }
    }
    inodes_.OpenHandle(ino, "");
    InvalidateKernelCache(ino);  // Its pages were of the old object's size, perhaps.
    return OpenReply{AddFile(std::move(handle)), false};
  }
  if (auto dirty = FindDirty(node->path)) {
    handle->dirty = std::move(dirty);
    inodes_.OpenHandle(ino, "");
    return OpenReply{AddFile(std::move(handle)), false};
  }
  BFS_ASSIGN_OR_RETURN(Node fresh, Refresh(*node));
  if (fresh.path.empty()) return Status(ErrorCode::kStale, "inode was replaced");
  handle->key = fresh.path;
  handle->reader = std::make_shared<cache::ReadAhead>(
      reads_, cache::ObjectVersion{fresh.path, fresh.etag, fresh.attr.size}, options_.read_ahead);
  const std::string previous_etag = inodes_.PreviousOpenEtag(ino);
  // An object without an ETag (a server that sends none) cannot be told from its next
  // version: every open starts without the pages and blocks an earlier one read.
  const bool unversioned = fresh.etag.empty();
  const bool keep_cache = !unversioned && previous_etag == fresh.etag;
  if (unversioned || (!previous_etag.empty() && !keep_cache)) {
    if (unversioned && reads_.cache != nullptr) reads_.cache->InvalidateObject(fresh.path);
    // Another version: the reply drops the kernel's pages (no keep_cache), but its size
    // stays until its attributes expire, and reads would stop there. Forget them first.
    InvalidateKernelAttributes(ino);
    InvalidateKernelCache(ino);
  }
  inodes_.OpenHandle(ino, fresh.etag);
  return OpenReply{AddFile(std::move(handle)), keep_cache};
}

uint64_t Filesystem::AddFile(std::shared_ptr<FileHandle> handle) {
  std::lock_guard lock(mu_);
  const uint64_t id = next_handle_++;
  files_.emplace(id, std::move(handle));
  return id;
}

std::shared_ptr<Filesystem::FileHandle> Filesystem::DirtyHandleOf(InodeId ino,
                                                                   bool writers_only) {
  std::lock_guard lock(mu_);
  for (const auto& [id, f] : files_) {
    if (f->ino == ino && f->dirty && (f->writer || !writers_only)) return f;
  }
  return nullptr;
}

std::shared_ptr<Filesystem::FileHandle> Filesystem::FindFile(uint64_t handle) {
  std::lock_guard lock(mu_);
  auto it = files_.find(handle);
  return it == files_.end() ? nullptr : it->second;
}

Result<cache::ReadReply> Filesystem::Read(uint64_t handle, uint64_t offset, size_t size) {
  std::shared_ptr<FileHandle> file = FindFile(handle);
  if (!file) return Status(ErrorCode::kInvalidArgument, "unknown file handle");
  if (file->dirty) return file->dirty->Read(offset, size);
  // Written through another handle since this one opened: read what was written.
  const auto node = inodes_.Get(file->ino);
  if (node && !node->path.empty()) {
    if (auto dirty = FindDirty(node->path)) return dirty->Read(offset, size);
  }
  std::shared_ptr<cache::ReadAhead> reader;
  {
    std::lock_guard lock(file->reader_mu);
    reader = file->reader;
  }
  // The node knows a version other than the handle's (a commit or copy of this mount, an
  // open that found the object replaced, a listing).
  const bool node_moved_on = node && !node->path.empty() && !node->etag.empty() &&
                             (node->path != reader->object().key ||
                              node->etag != reader->object().etag);
  const auto follow = [&] {
    // This mount renamed or rewrote the file, and its node holds the version this mount
    // made: follow it, as a local file's descriptor would. A version found on the server
    // (someone else's) is never followed: the handle would mix two versions; ESTALE.
    std::lock_guard lock(file->reader_mu);
    if (file->reader == reader) {
      file->reader = std::make_shared<cache::ReadAhead>(
          reads_, cache::ObjectVersion{node->path, node->etag, node->attr.size},
          options_.read_ahead);
    }
    reader = file->reader;
  };
  Result<cache::ReadReply> reply = Status(ErrorCode::kStale, "");
  if (node_moved_on && node->etag == node->own_etag) {
    // Before reading: blocks of the old version may still be cached, and would serve it.
    follow();
    reply = reader->Read(offset, size);
  } else if (node_moved_on && node->path == reader->object().key) {
    // Replaced by someone else, and this mount knows it (another open saw the new version):
    // reading on would put the old version's bytes in the kernel's pages of the inode,
    // which the new version's readers share. The node, blocks and pages are the new
    // version's: nothing to forget.
    return Status(ErrorCode::kStale, "'" + node->path + "' was replaced since it was opened");
  } else {
    reply = reader->Read(offset, size);
    if (!reply.ok() && reply.status().code() == ErrorCode::kStale && node_moved_on &&
        node->etag == node->own_etag) {
      follow();
      reply = reader->Read(offset, size);
    }
  }
  if (!reply.ok() && reply.status().code() == ErrorCode::kStale) {
    // The object was replaced or deleted: the next open must ask the server, and the kernel
    // must not keep the old version's size or pages.
    inodes_.Expire(file->ino);
    ForgetListing(ParentOf(file->key));
    if (reads_.cache != nullptr) reads_.cache->InvalidateObject(file->key);
    InvalidateKernelCache(file->ino);
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
  if (file->writer) {
    writeback_->ReleaseWriter(file->dirty, file->changed_since_flush.exchange(false));
    if (file->dirty->torn()) ForgetSetAside(file->ino, *file->dirty);
  }
  inodes_.CloseHandle(file->ino);
  FinishDeferredDelete(file->ino);
}

void Filesystem::SetInvalidator(Invalidator invalidate) {
  std::lock_guard lock(mu_);
  invalidate_ = std::move(invalidate);
}

Filesystem::Invalidator Filesystem::CurrentInvalidator() {
  std::lock_guard lock(mu_);
  return invalidate_;
}

void Filesystem::InvalidateKernelCache(InodeId ino) {
  if (!CurrentInvalidator()) return;  // No session (unit tests, or the mount is going).
  // Not on this thread: it is serving a request, and the kernel may hold locks that the
  // invalidation needs until that request is answered.
  page_invalidations_->Post(ino);
}

void Filesystem::InvalidateKernelAttributes(InodeId ino) {
  if (Invalidator invalidate = CurrentInvalidator()) invalidate(ino, /*pages=*/false);
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
