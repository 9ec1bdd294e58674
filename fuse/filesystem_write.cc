// The Filesystem's modifying operations: writes through the writeback, and the namespace
// (create, mkdir, rmdir, unlink, symlink, rename, setattr). See fuse/filesystem.h for the
// contract and docs/SEMANTICS.md for what each does to the bucket.
#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "cache/object_copy.h"
#include "common/log.h"
#include "fuse/filesystem.h"

namespace bucketfs::fs {
namespace {

bool IsUnder(const std::string& path, const std::string& dir) {
  return path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 && path[dir.size()] == '/';
}

}  // namespace

// --- Helpers -----------------------------------------------------------------------------

Status Filesystem::CheckWritable() const {
  if (options_.read_only || writeback_ == nullptr) {
    return Status(ErrorCode::kReadOnly, "the mount is read-only");
  }
  if (options_.fence != nullptr) return options_.fence->Check();
  return Status::Ok();
}

Status Filesystem::CheckOpensAllowed() const {
  if (opens_stopped_.load()) {
    return Status(ErrorCode::kBusy,
                  "the mount is being unmounted: no new files are opened while it drains");
  }
  return Status::Ok();
}

std::shared_ptr<cache::DirtyFile> Filesystem::FindDirty(const std::string& path) const {
  if (writeback_ == nullptr || path.empty()) return nullptr;
  return writeback_->Find(path);
}

Attributes Filesystem::DirtyAttributesOf(const cache::DirtyFile& dirty) const {
  const cache::DirtyAttributes d = dirty.Attributes();
  s3::ObjectInfo info;
  info.size = d.size;
  info.metadata = d.metadata;
  Attributes attr = ObjectAttributes(info, options_.defaults);
  attr.type = FileType::kRegular;
  attr.mtime = d.mtime;
  return attr;
}

Node Filesystem::EnterDirty(const std::string& path, const cache::DirtyFile& dirty,
                            uint64_t lookups) {
  return inodes_.UpsertKeepingEtag(path, DirtyAttributesOf(dirty), Expiry(), lookups);
}

void Filesystem::PatchListing(const std::string& dir_path, const std::string& name,
                              const ListedEntry* entry) {
  std::optional<ListedEntry> patch;
  if (entry != nullptr) {
    patch = *entry;
    if (patch->as_of == 0) patch->as_of = inodes_.Tick();
  }
  const uint64_t as_of = patch ? patch->as_of : inodes_.Tick();
  std::lock_guard lock(mu_);
  if (auto f = fetches_in_flight_.find(dir_path); f != fetches_in_flight_.end()) {
    f->second.patches.push_back(PendingPatch{name, patch, as_of});
  }
  auto it = listings_.find(dir_path);
  if (it == listings_.end()) return;
  // Copy-on-write, unless the cache holds the only reference (no open directory handle
  // reads it): a burst of creates in a large directory must not copy it every time.
  std::shared_ptr<DirectoryListing> patched;
  if (it->second.use_count() == 1) {
    patched = std::const_pointer_cast<DirectoryListing>(it->second);
  } else {
    patched = std::make_shared<DirectoryListing>(*it->second);
  }
  patched->Set(name, patch ? &*patch : nullptr);
  it->second = std::move(patched);
}

void Filesystem::NoteForgetLocked(const std::string& dir_path, bool under) {
  for (auto& [path, fetch] : fetches_in_flight_) {
    if (path == dir_path || (under && (dir_path.empty() || IsUnder(path, dir_path)))) {
      ++fetch.forgets;
    }
  }
}

void Filesystem::ForgetListingsUnder(const std::string& dir_path) {
  std::lock_guard lock(mu_);
  NoteForgetLocked(dir_path, /*under=*/true);
  for (auto it = listings_.begin(); it != listings_.end();) {
    if (dir_path.empty() || it->first == dir_path || IsUnder(it->first, dir_path)) {
      listing_order_.remove(it->first);
      it = listings_.erase(it);
    } else {
      ++it;
    }
  }
}

void Filesystem::RememberEmptyDirectory(const std::string& dir_path) {
  if (options_.max_cached_listings == 0 || options_.metadata_ttl <= Duration::zero()) return;
  auto listing = std::make_shared<DirectoryListing>();
  listing->exists = true;
  listing->fetched_at = Now();
  std::lock_guard lock(mu_);
  CacheListingLocked(dir_path, std::move(listing));
}

void Filesystem::OnCommitted(const cache::CommittedObject& committed) {
  s3::ObjectInfo info;
  info.key = committed.key;
  info.size = committed.size;
  info.etag = committed.etag;
  info.metadata = committed.metadata;
  info.last_modified = clock_.WallNow();
  const Attributes attr = ObjectAttributes(info, options_.defaults);
  uint64_t as_of = 0;  // Now, unless the node below says when.
  if (auto node = inodes_.GetByPath(committed.key); node && node->attr.type == FileType::kRegular) {
    as_of = inodes_.Upsert(committed.key, attr, committed.etag, Expiry(), 0).stored;
  }
  const ListedEntry entry{NameOf(committed.key), FileType::kRegular, committed.size, attr.mtime,
                          committed.etag, as_of};
  PatchListing(ParentOf(committed.key), entry.name, &entry);
  ForgetMissing(committed.key);
}

void Filesystem::ForgetSetAside(InodeId ino, const cache::DirtyFile& dirty) {
  auto node = inodes_.Get(ino);
  if (!node || FindDirty(node->path).get() == &dirty) return;  // Still open elsewhere.
  // Set aside, never uploaded: what S3 holds for the name is all there is again (the node
  // and its directory's listing showed the file as written here).
  inodes_.Expire(ino);
  ForgetListing(ParentOf(node->path));
  InvalidateKernelCache(ino);
}

void Filesystem::FinishDeferredDelete(InodeId ino) {
  std::string key;
  {
    std::lock_guard lock(mu_);
    auto it = deferred_deletes_.find(ino);
    if (it == deferred_deletes_.end()) return;
    if (auto node = inodes_.Get(ino); node && node->open_handles > 0) return;
    key = it->second;
    deferred_deletes_.erase(it);
    deleting_at_close_.insert(key);
  }
  Logger("fuse")->debug("last close of unlinked '{}': deleting it", key);
  Status deleted = client_.Delete(key, {Deadline()});
  if (!deleted.ok()) {
    Logger("fuse")->error("'{}' was unlinked while open, but deleting it at its last close "
                          "failed: {} (it stays hidden here; reusing its name deletes it)",
                          key, deleted.ToString());
  }
  bool still_hidden = false;
  {
    std::lock_guard lock(mu_);
    deleting_at_close_.erase(key);
    // Failed: still hidden, and the next reuse of the name deletes it (Unhide).
    if (auto h = hidden_.find(key); deleted.ok() && h != hidden_.end() && h->second == ino) {
      hidden_.erase(h);
      still_hidden = true;
    }
  }
  deleted_at_close_.notify_all();
  if (still_hidden) {
    // A listing fetched since the unlink still shows the object (it was there until now).
    PatchListing(ParentOf(key), NameOf(key), nullptr);
    RememberMissing(key);
  }
}

Status Filesystem::ClaimFreeName(const std::string& dir_path, std::string_view name,
                                 const std::string& path) {
  auto existing = Resolve(dir_path, name, path);
  if (existing.ok()) return Status(ErrorCode::kExists, "'" + path + "' exists");
  if (existing.status().code() != ErrorCode::kNotFound) return std::move(existing).TakeStatus();
  return Unhide(path);
}

Status Filesystem::CheckDirectoryKeyFits(const std::string& path) {
  if (DirectoryPrefix(path).size() > kMaxKeyBytes) {
    return Status(ErrorCode::kNameTooLong,
                  "a directory here would need the key '" + path.substr(0, 40) +
                      "…/' of more than 1024 bytes, the S3 limit (a file of this name fits)");
  }
  return Status::Ok();
}

void Filesystem::KeepEmptiedDirectory(const std::string& dir_path) {
  if (dir_path.empty()) return;  // The bucket itself needs no marker.
  auto listing = FreshListing(dir_path);
  if (!listing || listing->has_marker) return;
  // What keeps a directory without a marker is a key under it in S3. A file created here
  // and not uploaded yet (in the listing by Create's patch, with no ETag) is no such key:
  // if it were all that is left, the directory would vanish until its upload lands.
  const bool kept = std::any_of(
      listing->entries.begin(), listing->entries.end(), [&](const ListedEntry& e) {
        return !(e.type == FileType::kRegular && e.etag.empty() &&
                 FindDirty(ChildPath(dir_path, e.name)) != nullptr);
      });
  if (kept) return;
  auto node = inodes_.GetByPath(dir_path);
  const Attributes attr = node ? node->attr : Attributes{};
  // With what it shows (for its mtime, the mount's start): not changed by its marker.
  auto put = PutSmallObject(DirectoryPrefix(dir_path), "",
                            AttributeMetadata(FileType::kDirectory,
                                              node ? attr.permissions : options_.defaults.dir_mode,
                                              node ? attr.uid : options_.defaults.uid,
                                              node ? attr.gid : options_.defaults.gid),
                            node ? attr.mtime : options_.mount_time);
  if (!put.ok()) {
    Logger("fuse")->warn("'{}' has no marker and its last entry is gone; writing one failed, "
                         "so it may vanish: {}", dir_path, put.status().ToString());
    return;
  }
  std::lock_guard lock(mu_);
  auto it = listings_.find(dir_path);
  if (it == listings_.end()) return;
  auto marked = std::make_shared<DirectoryListing>(*it->second);
  marked->has_marker = true;
  it->second = std::move(marked);
}

Status Filesystem::UnhideUnder(const std::string& prefix) {
  std::vector<std::string> paths;
  {
    std::lock_guard lock(mu_);
    for (const auto& [path, ino] : hidden_) {
      if (path.starts_with(prefix)) paths.push_back(path);
    }
  }
  for (const auto& path : paths) BFS_RETURN_IF_ERROR(Unhide(path));
  return Status::Ok();
}

Status Filesystem::Unhide(const std::string& path) {
  InodeId ino = 0;
  {
    std::unique_lock lock(mu_);
    // The predecessor's last close (or another reuse of the name) is deleting it: once that
    // DELETE is answered the name is free, or (it failed) still hidden, and deleted here.
    deleted_at_close_.wait(lock, [&] { return !deleting_at_close_.contains(path); });
    auto h = hidden_.find(path);
    if (h == hidden_.end()) return Status::Ok();
    ino = h->second;
    hidden_.erase(h);
    deferred_deletes_.erase(ino);
    // Another reuse of the name (two creates share the key lock) waits for this DELETE.
    deleting_at_close_.insert(path);
  }
  // The old object goes now, before the new file can be committed: deleting it at the old
  // file's last close could delete the new one. Its open handles read from their spool, or
  // get ESTALE for what only the deleted object held.
  Logger("fuse")->debug("'{}' made anew while its unlinked predecessor is open: deleting that "
                        "one now", path);
  Status deleted = client_.Delete(path, {Deadline()});
  {
    std::lock_guard lock(mu_);
    deleting_at_close_.erase(path);
    if (!deleted.ok()) {
      // The name is not made anew (the caller fails): the predecessor stays hidden, and is
      // deleted at its last close, or by the next attempt to reuse its name.
      hidden_.try_emplace(path, ino);
      deferred_deletes_.try_emplace(ino, path);
    }
  }
  deleted_at_close_.notify_all();
  if (!deleted.ok()) FinishDeferredDelete(ino);  // Its last handle may have closed meanwhile.
  return deleted;
}

Result<std::string> Filesystem::PutSmallObject(const std::string& key, std::string_view body,
                                               s3::UserMetadata metadata,
                                               std::optional<WallTime> mtime) {
  metadata["mtime"] = cache::EncodeMtime(mtime.value_or(clock_.WallNow()));
  s3::PutRequest put;
  put.key = key;
  put.body = std::span<const char>(body.data(), body.size());
  put.metadata = std::move(metadata);
  BFS_ASSIGN_OR_RETURN(s3::PutResult done, client_.Put(put, {Deadline()}));
  return done.etag;
}

// --- Writing -----------------------------------------------------------------------------

Result<CreateReply> Filesystem::Create(InodeId parent, std::string_view name,
                                       uint32_t permissions, int flags, const Caller& caller) {
  BFS_RETURN_IF_ERROR(CheckOpensAllowed());
  BFS_RETURN_IF_ERROR(CheckWritable());
  Node dir;
  PrefixGate::Hold entered;
  BFS_ASSIGN_OR_RETURN(std::string path, EnterChild(parent, name, &dir, &entered));
  // From the look at the name to the new file's start: a rename onto it (or an unlink of
  // it) comes before or after, never in between (it would be truncated by the new file).
  KeyLocks::Hold writing = key_locks_.Share(path);
  auto existing = Resolve(dir.path, name, path);
  if (existing.ok()) {
    if ((flags & O_EXCL) != 0) return Status(ErrorCode::kExists, "'" + path + "' exists");
    if (existing->attr.type == FileType::kDirectory) {
      return Status(ErrorCode::kIsDirectory, "'" + path + "' is a directory");
    }
    // Open() takes the gate and the key itself (one hold of each per thread at a time).
    writing.Release();
    entered.Release();
    BFS_ASSIGN_OR_RETURN(OpenReply opened, Open(existing->ino, flags));
    Node node = *existing;
    if (!inodes_.AddLookups(node.ino, 1)) {
      node = inodes_.UpsertUnlessNewer(path, node.attr, node.etag, node.attr_expiry, 1,
                                       node.stored);
    }
    if (auto dirty = FindDirty(path)) node = EnterDirty(path, *dirty, 0);
    return CreateReply{MakeEntry(node), opened};
  }
  if (existing.status().code() != ErrorCode::kNotFound) return std::move(existing).TakeStatus();

  const s3::UserMetadata metadata =
      AttributeMetadata(FileType::kRegular, permissions, caller.uid, caller.gid);
  BFS_RETURN_IF_ERROR(Unhide(path));
  BFS_ASSIGN_OR_RETURN(auto dirty, writeback_->OpenForWrite(path, std::nullopt, metadata,
                                                            (flags & O_EXCL) != 0));
  const Node node = EnterDirty(path, *dirty, 1);
  auto handle = std::make_shared<FileHandle>();
  handle->ino = node.ino;
  handle->key = path;
  handle->dirty = std::move(dirty);
  handle->writer = true;
  MarkChanged(*handle);  // A new file: uploaded once its creator closes it.
  inodes_.OpenHandle(node.ino, "");
  const ListedEntry entry{std::string(name), FileType::kRegular, 0, node.attr.mtime, "",
                          node.stored};
  PatchListing(dir.path, entry.name, &entry);
  ForgetMissing(path);
  return CreateReply{MakeEntry(node), OpenReply{AddFile(std::move(handle)), false}};
}

Result<size_t> Filesystem::Write(uint64_t handle, uint64_t offset, std::span<const char> data) {
  auto file = FindFile(handle);
  if (!file) return Status(ErrorCode::kInvalidArgument, "unknown file handle");
  if (!file->writer) return Status(ErrorCode::kInvalidArgument, "the file is not open for writing");
  // A fenced daemon (lease lost) takes no more bytes: what was written before stays in the
  // spool, and the program learns at once (EROFS) instead of at close.
  if (options_.fence != nullptr) {
    if (Status fenced = options_.fence->Check(); !fenced.ok()) {
      // Unless nothing changed since its last close; once per descriptor (a program that
      // retries its write while fenced would log each time).
      if (!file->write_refused.exchange(true)) (void)file->dirty->MarkTorn();
      return fenced;
    }
  }
  if (file->write_refused.load()) {
    return Status(ErrorCode::kReadOnly,
                  "an earlier write through this descriptor was refused (the mount was "
                  "fenced); close and reopen the file to write again");
  }
  MarkChanged(*file);
  BFS_RETURN_IF_ERROR(file->dirty->Write(offset, data));
  return data.size();
}

void Filesystem::MarkChanged(FileHandle& file) {
  if (!file.changed_since_flush.exchange(true)) writeback_->WriterChanged(file.dirty);
}

Status Filesystem::Flush(uint64_t handle) {
  auto file = FindFile(handle);
  if (!file || !file->writer) return Status::Ok();
  if (options_.sync_on_close) {
    BFS_RETURN_IF_ERROR(writeback_->Flushed(file->dirty, file->changed_since_flush.exchange(false)));
    return writeback_->Sync(file->dirty);
  }
  BFS_RETURN_IF_ERROR(file->dirty->Error());
  BFS_RETURN_IF_ERROR(writeback_->Flushed(file->dirty, file->changed_since_flush.exchange(false)));
  // Fenced (the lease is lost): what was written is journaled as closed above, so a mount
  // that holds the lease again uploads it, but this close() must not pretend it will be.
  if (options_.fence != nullptr) BFS_RETURN_IF_ERROR(options_.fence->Check());
  return Status::Ok();
}

Status Filesystem::Fsync(uint64_t handle) {
  auto file = FindFile(handle);
  if (!file) return Status(ErrorCode::kInvalidArgument, "unknown file handle");
  auto dirty = file->dirty;
  if (!dirty) {
    if (auto node = inodes_.Get(file->ino); node && !node->path.empty()) dirty = FindDirty(node->path);
  }
  if (!dirty) return Status::Ok();  // Nothing written: what S3 has is the file.
  return writeback_->Sync(dirty);
}

namespace {

// A regular file's mode, uid and gid as `request` changes them, as object metadata.
s3::UserMetadata MetadataChanges(const SetAttrRequest& request) {
  s3::UserMetadata changes;
  if (request.permissions) {
    changes["mode"] = std::to_string((*request.permissions & 07777) | S_IFREG);
  }
  if (request.uid) changes["uid"] = std::to_string(*request.uid);
  if (request.gid) changes["gid"] = std::to_string(*request.gid);
  return changes;
}

}  // namespace

Result<AttrReply> Filesystem::SetAttrOfUnlinked(InodeId ino, const Node& node,
                                                const SetAttrRequest& request) {
  // Its object goes at the last close: nothing is stored, but the open file shows the
  // change until then, as a local one would (fchmod and futimens on its descriptor reach
  // here without the descriptor's handle).
  // A writer's file left the writeback at the unlink (nothing of it is journaled or
  // uploaded any more); a reader's may be a committed file's, which would journal it.
  std::shared_ptr<FileHandle> writer = DirtyHandleOf(ino, /*writers_only=*/true);
  Attributes attr = node.attr;
  if (request.permissions) attr.permissions = *request.permissions & 07777;
  if (request.uid) attr.uid = *request.uid;
  if (request.gid) attr.gid = *request.gid;
  if (request.mtime) attr.mtime = *request.mtime;  // A chmod changes the ctime only.
  inodes_.SetUnlinkedAttributes(ino, attr);  // What its readers see once the writers close.
  if (writer) {
    writer->dirty->SetMetadata(MetadataChanges(request), request.mtime);
    attr = DirtyAttributesOf(*writer->dirty);
  }
  attr.ino = ino;
  attr.nlink = 0;
  return AttrReply{attr, Duration::zero()};
}

Result<AttrReply> Filesystem::SetAttr(InodeId ino, const SetAttrRequest& request) {
  auto node = inodes_.Get(ino);
  if (!node) return Status(ErrorCode::kStale, "inode " + std::to_string(ino) + " is gone");
  const bool changes_metadata = request.permissions || request.uid || request.gid || request.mtime;
  if (!changes_metadata && !request.size) return GetAttr(ino);
  BFS_RETURN_IF_ERROR(CheckWritable());

  if (node->attr.type == FileType::kDirectory) {
    if (request.size) return Status(ErrorCode::kIsDirectory, "'" + node->path + "' is a directory");
    if (ino == kRootInode) return GetAttr(ino);  // The bucket itself has no marker to hold it.
    // Its marker is written at its key: not while a rename moves it.
    BFS_ASSIGN_OR_RETURN(PrefixGate::Hold entered, EnterInode(ino, &node));
    if (node->unlinked || node->path.empty()) {
      // Removed or replaced: its empty path is the root's, and a marker for it would be a
      // PUT to the bucket itself.
      return Status(ErrorCode::kStale, "directory inode " + std::to_string(ino) +
                                           " was removed or replaced");
    }
    Attributes attr = node->attr;
    if (request.permissions) attr.permissions = *request.permissions & 07777;
    if (request.uid) attr.uid = *request.uid;
    if (request.gid) attr.gid = *request.gid;
    // touch -d stores the time it was given; chmod and chown keep the directory's (they
    // change its ctime only, which S3 has no place for).
    if (request.mtime) attr.mtime = *request.mtime;
    BFS_RETURN_IF_ERROR(PutSmallObject(DirectoryPrefix(node->path), "",
                                       AttributeMetadata(FileType::kDirectory, attr.permissions,
                                                         attr.uid, attr.gid),
                                       attr.mtime)
                            .status());
    ForgetMissing(node->path);  // What a HEAD of the marker found before holds no longer.
    return AttrReply{inodes_.Upsert(node->path, attr, "", Expiry(), 0).attr, options_.metadata_ttl};
  }
  if (node->attr.type == FileType::kSymlink) {
    // A symlink's own mode means nothing on Linux; its owner and time are not worth a
    // rewrite of the object. Answer as if done (chown -h and touch -h succeed elsewhere too).
    return AttrReply{node->attr, options_.metadata_ttl};
  }

  // A writer's own handle (ftruncate, futimens) or, for a path, a writer of our own that
  // is released at the end: that starts the commit.
  std::shared_ptr<cache::DirtyFile> dirty;
  if (request.handle) {
    if (auto file = FindFile(*request.handle); file && file->writer) {
      if (request.size && file->write_refused.load()) {
        return Status(ErrorCode::kReadOnly,
                      "an earlier write through this descriptor was refused (the mount was "
                      "fenced); close and reopen the file to change it");
      }
      dirty = file->dirty;
      if (request.size) MarkChanged(*file);  // ftruncate changes it like a write.
    }
  }
  if (!dirty && node->unlinked && !request.size) return SetAttrOfUnlinked(ino, *node, request);
  std::optional<uint64_t> own_handle;
  if (!dirty) {
    if (node->unlinked || node->path.empty()) {
      return Status(ErrorCode::kStale, "the file was removed");
    }
    BFS_ASSIGN_OR_RETURN(OpenReply opened, OpenFile(ino, O_WRONLY, /*for_setattr=*/true));
    own_handle = opened.handle;
    dirty = FindFile(opened.handle)->dirty;
  }
  Status applied = Status::Ok();
  if (request.size) applied = dirty->Truncate(*request.size);
  if (applied.ok() && changes_metadata) dirty->SetMetadata(MetadataChanges(request), request.mtime);
  Attributes attr = DirtyAttributesOf(*dirty);
  attr.ino = ino;
  if (own_handle) Release(*own_handle);
  BFS_RETURN_IF_ERROR(applied);
  return AttrReply{attr, options_.metadata_ttl};
}

// --- Namespace ---------------------------------------------------------------------------

Result<EntryReply> Filesystem::MkDir(InodeId parent, std::string_view name, uint32_t permissions,
                                     const Caller& caller) {
  BFS_RETURN_IF_ERROR(CheckWritable());
  Node dir;
  PrefixGate::Hold entered;
  BFS_ASSIGN_OR_RETURN(std::string path, EnterChild(parent, name, &dir, &entered));
  BFS_RETURN_IF_ERROR(CheckDirectoryKeyFits(path));
  BFS_RETURN_IF_ERROR(ClaimFreeName(dir.path, name, path));
  BFS_RETURN_IF_ERROR(PutSmallObject(DirectoryPrefix(path), "",
                                     AttributeMetadata(FileType::kDirectory, permissions,
                                                       caller.uid, caller.gid))
                          .status());
  Attributes attr = DirectoryAttributes(clock_.WallNow(), options_.defaults);
  attr.permissions = permissions & 07777;
  attr.uid = caller.uid;
  attr.gid = caller.gid;
  const Node node = inodes_.Upsert(path, attr, "", Expiry(), 1);
  const ListedEntry entry{std::string(name), FileType::kDirectory, 0, attr.mtime, ""};
  PatchListing(dir.path, entry.name, &entry);
  RememberEmptyDirectory(path);
  ForgetMissing(path);
  return MakeEntry(node);
}

Result<PrefixGate::Hold> Filesystem::EnterInode(InodeId ino, std::optional<Node>* node) {
  for (;;) {
    const uint64_t seen = gate_.epoch();
    *node = inodes_.Get(ino);  // Again after a wait: a directory rename may have moved it.
    if (!*node) return Status(ErrorCode::kStale, "inode " + std::to_string(ino) + " is gone");
    auto [entered, waited] = gate_.Enter({(*node)->path}, seen);
    if (!waited) return std::move(entered);
  }
}

Result<std::string> Filesystem::EnterChild(InodeId parent, std::string_view name, Node* dir,
                                            PrefixGate::Hold* hold) {
  for (;;) {
    const uint64_t seen = gate_.epoch();
    BFS_ASSIGN_OR_RETURN(std::string path, ChildKey(parent, name, dir));
    auto [entered, waited] = gate_.Enter({path}, seen);
    // A directory rename held it: the parent may have moved; look again.
    if (waited) continue;
    *hold = std::move(entered);
    return path;
  }
}

Result<s3::DeleteManyResult> Filesystem::DeleteInBatches(const std::vector<std::string>& keys,
                                                        bool stop_at_first_failure) {
  s3::DeleteManyResult result;
  for (size_t i = 0; i < keys.size(); i += s3::kMaxDeleteBatch) {
    const size_t end = std::min(keys.size(), i + s3::kMaxDeleteBatch);
    auto deleted = client_.DeleteMany({keys.begin() + static_cast<std::ptrdiff_t>(i),
                                       keys.begin() + static_cast<std::ptrdiff_t>(end)},
                                      {Deadline()});
    if (!deleted.ok()) {
      if (stop_at_first_failure) return std::move(deleted).TakeStatus();
      continue;
    }
    result.errors.insert(result.errors.end(), deleted->errors.begin(), deleted->errors.end());
    if (stop_at_first_failure && !result.errors.empty()) break;
  }
  return result;
}

Result<bool> Filesystem::CheckEmptyDirectory(const std::string& path) {
  const std::string prefix = DirectoryPrefix(path);
  std::set<std::string> hidden;  // Unlinked while open: not in the directory any more.
  {
    std::lock_guard lock(mu_);
    for (const auto& [key, ino] : hidden_) {
      if (key.starts_with(prefix)) hidden.insert(key);
    }
  }
  s3::ListRequest list;
  list.prefix = prefix;
  // The marker, if any, sorts first; past it and the hidden keys, one more means not empty.
  list.max_keys = static_cast<int>(std::min<size_t>(hidden.size() + 2, 1000));
  bool has_marker = false;
  for (;;) {
    BFS_ASSIGN_OR_RETURN(s3::ListPage page, client_.List(list, {Deadline()}));
    for (const auto& object : page.objects) {
      if (object.key == prefix) {
        has_marker = true;
      } else if (!hidden.contains(object.key)) {
        return Status(ErrorCode::kNotEmpty, "'" + path + "' is not empty");
      }
    }
    if (!page.is_truncated) return has_marker;
    list.continuation_token = page.next_continuation_token;
  }
}

Status Filesystem::RmDir(InodeId parent, std::string_view name) {
  BFS_RETURN_IF_ERROR(CheckWritable());
  Node dir;
  PrefixGate::Hold entered;
  BFS_ASSIGN_OR_RETURN(std::string path, EnterChild(parent, name, &dir, &entered));
  BFS_ASSIGN_OR_RETURN(Node node, Resolve(dir.path, name, path));
  if (node.attr.type != FileType::kDirectory) {
    return Status(ErrorCode::kNotDirectory, "'" + path + "' is not a directory");
  }
  const std::string prefix = DirectoryPrefix(path);
  if (writeback_ != nullptr && !writeback_->Under(prefix).empty()) {
    return Status(ErrorCode::kNotEmpty, "'" + path + "' is not empty");
  }
  BFS_ASSIGN_OR_RETURN(const bool has_marker, CheckEmptyDirectory(path));
  // Files unlinked while open are gone from the directory already; their objects, kept
  // for their open descriptors, go now that it is removed (as when their name is reused).
  BFS_RETURN_IF_ERROR(UnhideUnder(prefix));
  if (has_marker) BFS_RETURN_IF_ERROR(client_.Delete(prefix, {Deadline()}));
  inodes_.Detach(path);
  PatchListing(dir.path, std::string(name), nullptr);
  ForgetListingsUnder(path);
  RememberMissing(path);
  KeepEmptiedDirectory(dir.path);
  return Status::Ok();
}

Status Filesystem::Unlink(InodeId parent, std::string_view name) {
  BFS_RETURN_IF_ERROR(CheckWritable());
  Node dir;
  PrefixGate::Hold entered;
  BFS_ASSIGN_OR_RETURN(std::string path, EnterChild(parent, name, &dir, &entered));
  // Not while a write open starts the file at its key: it would start after the delete and
  // bring the file back, or unnoticed (no handle yet) by the choice of a deferred delete.
  KeyLocks::Hold removing = key_locks_.Exclusive({path});
  BFS_ASSIGN_OR_RETURN(Node node, Resolve(dir.path, name, path));
  if (node.attr.type == FileType::kDirectory) {
    return Status(ErrorCode::kIsDirectory, "'" + path + "' is a directory");
  }
  const auto current = inodes_.Get(node.ino);
  const bool open = current && current->open_handles > 0;
  Logger("fuse")->debug("unlink '{}'{}", path, open ? " (open: deleted at its last close)" : "");
  // First the dirty data: its commit, if one is in flight, must land before the DELETE,
  // or it would bring the object back. A file still open is unlinked from the writeback at
  // once (its data dies with its last descriptor); a closed one's data is held back from
  // committing and dropped only once the DELETE succeeded: an unlink that fails (EIO)
  // leaves the file as it was, its data still to be uploaded.
  cache::Writeback::CommitHold held;
  if (writeback_ != nullptr) {
    if (open) {
      writeback_->Unlink(path);
    } else {
      held = writeback_->HoldCommits(path);
    }
  }
  if (open) {
    // POSIX: its open descriptors keep working; the object goes at the last close.
    {
      std::lock_guard lock(mu_);
      deferred_deletes_[node.ino] = path;
      hidden_[path] = node.ino;
    }
    // The last handle may have closed between the count above and now (RELEASE and UNLINK
    // run on different threads): then nobody else would finish it.
    FinishDeferredDelete(node.ino);
  } else {
    BFS_RETURN_IF_ERROR(client_.Delete(path, {Deadline()}));
    held.Discard();
  }
  inodes_.Detach(path);
  PatchListing(dir.path, std::string(name), nullptr);
  RememberMissing(path);
  KeepEmptiedDirectory(dir.path);
  return Status::Ok();
}

Result<EntryReply> Filesystem::Symlink(std::string_view target, InodeId parent,
                                       std::string_view name, const Caller& caller) {
  BFS_RETURN_IF_ERROR(CheckWritable());
  if (target.empty() || target.size() > 4095) {
    return Status(ErrorCode::kNameTooLong, "symlink targets are 1 to 4095 bytes");
  }
  Node dir;
  PrefixGate::Hold entered;
  BFS_ASSIGN_OR_RETURN(std::string path, EnterChild(parent, name, &dir, &entered));
  BFS_RETURN_IF_ERROR(ClaimFreeName(dir.path, name, path));
  BFS_ASSIGN_OR_RETURN(std::string etag,
                       PutSmallObject(path, target,
                                      AttributeMetadata(FileType::kSymlink, 0777, caller.uid,
                                                        caller.gid)));
  Attributes attr;
  attr.type = FileType::kSymlink;
  attr.permissions = 0777;
  attr.uid = caller.uid;
  attr.gid = caller.gid;
  attr.size = target.size();
  attr.mtime = clock_.WallNow();
  const Node node = inodes_.Upsert(path, attr, etag, Expiry(), 1);
  inodes_.SetSymlinkTarget(node.ino, std::string(target));
  const ListedEntry entry{std::string(name), FileType::kRegular, attr.size, attr.mtime, etag};
  PatchListing(dir.path, entry.name, &entry);
  ForgetMissing(path);
  return MakeEntry(node);
}

Status Filesystem::Link(InodeId, InodeId, std::string_view) {
  return Status(ErrorCode::kNotPermitted, "hard links cannot be stored in S3");
}

Node Filesystem::EnterCopy(const std::string& path, const Attributes& attr,
                           const std::string& etag) {
  Node node = inodes_.Upsert(path, attr, etag, Expiry(), 0);
  if (etag.empty()) inodes_.Expire(node.ino);
  return node;
}

namespace {

// What a rename says when its copies are made but old keys could not be deleted: `kept`
// names them.
Status OldKeysKept(Status deleted, const std::string& from, const std::string& to,
                   const std::string& kept) {
  return deleted.Annotate("renamed '" + from + "' to '" + to + "', but could not delete " + kept +
                          " (the old name shows it again; remove it once the cause is fixed)");
}

}  // namespace

Status Filesystem::DeleteRenamedKey(const std::string& from, const std::string& to) {
  Status deleted = client_.Delete(from, {Deadline()});
  return deleted.ok() ? deleted : OldKeysKept(std::move(deleted), from, to, "'" + from + "'");
}

Status Filesystem::RenameFile(const Node& source, const std::string& from, const std::string& to,
                              Status* old_keys_kept) {
  using Outcome = cache::Writeback::RenameOutcome;
  std::string copy_etag;
  BFS_ASSIGN_OR_RETURN(Outcome moved, writeback_->Rename(from, to, &copy_etag));
  if (moved != Outcome::kNotDirty) {
    // The file's dirty state has moved to `to` already: whatever the delete of `from` (for
    // kCopied) says, the nodes follow it there, before that delete, so that a read meanwhile
    // goes to the copy and never to a key being deleted (ESTALE).
    inodes_.Rename(from, to);
    if (auto dirty = FindDirty(to)) {
      if (moved == Outcome::kCopied) {
        // Committed, then copied: the node needs the copy's ETag (a copy of a multipart
        // object has another). With nothing left to commit, no commit would bring it, and
        // an open of `to` would pin the old one and fail (ESTALE); a descriptor open on the
        // file follows it to the copy.
        if (auto node = inodes_.GetByPath(to)) EnterCopy(to, node->attr, copy_etag);
      }
      const auto attrs = dirty->Attributes();
      const ListedEntry entry{NameOf(to), FileType::kRegular, attrs.size, attrs.mtime, ""};
      PatchListing(ParentOf(to), entry.name, &entry);
    } else {
      // Committed and copied: learn the copy's ETag and attributes (a listing would show
      // Last-Modified, not the mtime the file carries in its metadata).
      auto head = client_.Head(s3::HeadRequest{to, {}}, {Deadline()});
      if (head.ok()) {
        inodes_.Upsert(to, ObjectAttributes(*head, options_.defaults), head->etag, Expiry(), 0);
        const ListedEntry entry{NameOf(to), FileType::kRegular, head->size,
                                head->last_modified, head->etag};
        PatchListing(ParentOf(to), entry.name, &entry);
      } else {
        ForgetListing(ParentOf(to));
        inodes_.Expire(source.ino);
      }
    }
    if (moved == Outcome::kCopied) *old_keys_kept = DeleteRenamedKey(from, to);
    return Status::Ok();
  }
  // The source's current version: RGW ignores x-amz-copy-source-if-match, so look first.
  BFS_ASSIGN_OR_RETURN(s3::ObjectInfo head, client_.Head(s3::HeadRequest{from, {}}, {Deadline()}));
  BFS_ASSIGN_OR_RETURN(std::string etag,
                       cache::CopyObject(client_,
                                         cache::CopySpec{from, to, head.size, head.etag,
                                                         std::nullopt, {}},
                                         Deadline()));
  Attributes attr = source.attr.type == FileType::kSymlink ? source.attr
                                                           : ObjectAttributes(head, options_.defaults);
  if (source.attr.type == FileType::kSymlink) attr.type = FileType::kSymlink;
  // The node follows the copy before `from` is deleted (see above).
  inodes_.Rename(from, to);
  EnterCopy(to, attr, etag);
  const ListedEntry entry{NameOf(to), FileType::kRegular, head.size, attr.mtime, etag};
  PatchListing(ParentOf(to), entry.name, &entry);
  *old_keys_kept = DeleteRenamedKey(from, to);
  return Status::Ok();
}

Status Filesystem::MoveBack(const std::string& dest, const std::string& key) {
  BFS_ASSIGN_OR_RETURN(auto back, writeback_->Rename(dest, key));
  if (back != cache::Writeback::RenameOutcome::kNotDirty) return Status::Ok();
  // Its commit finished meanwhile: its data is only at `dest`, so copy it back before the
  // caller deletes `dest`.
  BFS_ASSIGN_OR_RETURN(s3::ObjectInfo head, client_.Head(s3::HeadRequest{dest, {}}, {Deadline()}));
  return cache::CopyObject(client_, cache::CopySpec{dest, key, head.size, head.etag, std::nullopt, {}},
                           Deadline())
      .status();
}

Status Filesystem::RenameDirectory(const Attributes& attr, const std::string& from,
                                   const std::string& to, Status* old_keys_kept) {
  const std::string from_prefix = DirectoryPrefix(from);
  const std::string to_prefix = DirectoryPrefix(to);
  // An unlinked file still open inside is not moved: copied, it would appear under the
  // new name, and its last close would delete only the old key.
  BFS_RETURN_IF_ERROR(UnhideUnder(from_prefix));
  std::vector<std::string> sources;  // Keys to delete once everything is copied.
  // Each copy's key and ETag (empty when the server did not say), for the moved nodes.
  std::vector<std::pair<std::string, std::string>> copies;
  const auto copy = [&](const std::string& key, uint64_t size,
                        const std::string& etag) -> Status {
    const std::string dest = to_prefix + key.substr(from_prefix.size());
    BFS_ASSIGN_OR_RETURN(std::string copy_etag,
                         cache::CopyObject(client_,
                                           cache::CopySpec{key, dest, size, etag, std::nullopt, {}},
                                           Deadline()));
    copies.emplace_back(dest, copy_etag);
    sources.push_back(key);
    return Status::Ok();
  };
  // Files being written are moved last, by the writeback: a copy that fails before then
  // leaves them where they are, with the rest of the directory.
  std::set<std::string> dirty;
  if (writeback_ != nullptr) {
    for (const auto& file : writeback_->Under(from_prefix)) dirty.insert(file->key());
  }
  // Everything is listed before anything is copied: a key that would not fit under the
  // new name must refuse the rename while nothing has moved.
  s3::ListRequest list;
  list.prefix = from_prefix;
  std::optional<s3::ObjectInfo> marker;  // Copied last: see take_back.
  std::vector<s3::ObjectInfo> listed;
  size_t longest = 0;  // The longest key under `from`, past its prefix.
  for (const std::string& key : dirty) longest = std::max(longest, key.size() - from_prefix.size());
  for (;;) {
    BFS_ASSIGN_OR_RETURN(s3::ListPage page, client_.List(list, {Deadline()}));
    for (auto& object : page.objects) {
      if (object.key == from_prefix) {
        marker = std::move(object);
        continue;
      }
      if (dirty.contains(object.key)) continue;
      longest = std::max(longest, object.key.size() - from_prefix.size());
      listed.push_back(std::move(object));
    }
    if (!page.is_truncated) break;
    list.continuation_token = page.next_continuation_token;
  }
  if (to_prefix.size() + longest > kMaxKeyBytes) {
    return Status(ErrorCode::kNameTooLong,
                  "'" + to.substr(0, 40) + "…' would give a file under it a key of " +
                      std::to_string(to_prefix.size() + longest) +
                      " bytes, past S3's 1024; choose a shorter name (nothing was moved)");
  }
  // Files being written that have moved to the new name: (old key, new key).
  std::vector<std::pair<std::string, std::string>> moved_dirty;
  // A step failed before anything was deleted: take back what was done, so the directory
  // is as it was and the rename can be tried again. The files being written move back
  // first (one that cannot stays at its new key with its data, and its copy is kept); then
  // the copies go. The new name's marker is made last, when nothing can fail any more: an
  // empty directory the rename replaces keeps its own, and none is left where there was
  // none.
  const auto take_back = [&](Status failed) -> Status {
    std::set<std::string> stranded;
    for (auto it = moved_dirty.rbegin(); it != moved_dirty.rend(); ++it) {
      const auto& [key, dest] = *it;
      Status back = MoveBack(dest, key);
      if (!back.ok()) {
        stranded.insert(dest);
        Logger("fuse")->warn("rename of '{}' to '{}' failed, and '{}' could not move back: {}",
                             from, to, dest, back.ToString());
      }
    }
    // The copies, and the new keys of the files moved back (one committed meanwhile left an
    // object there too), once each.
    std::set<std::string> made;
    for (const auto& [dest, etag] : copies) {
      made.insert(dest);
    }
    for (const auto& [key, dest] : moved_dirty) made.insert(dest);
    for (const std::string& dest : stranded) made.erase(dest);
    (void)DeleteInBatches({made.begin(), made.end()}, /*stop_at_first_failure=*/false);
    // A file moved back after its commit was copied back: a multipart copy has another
    // ETag, so its node must ask the server. A commit that landed under the new name
    // meanwhile patched a listing there with what is now deleted.
    for (const auto& [key, dest] : moved_dirty) {
      if (auto node = inodes_.GetByPath(key)) inodes_.Expire(node->ino);
    }
    ForgetListingsUnder(to);
    return failed.Annotate("renaming '" + from + "' to '" + to + "' (" +
                           (stranded.empty() ? std::string("nothing was moved")
                                             : "'" + *stranded.begin() + "' stayed there") +
                           ")");
  };
  for (const auto& object : listed) {
    Status copied = copy(object.key, object.size, object.etag);
    if (!copied.ok()) return take_back(std::move(copied));
  }
  for (const std::string& key : dirty) {
    const std::string dest = to_prefix + key.substr(from_prefix.size());
    std::string copy_etag;
    auto moved = writeback_->Rename(key, dest, &copy_etag);
    if (!moved.ok()) return take_back(std::move(moved).TakeStatus());
    if (*moved == cache::Writeback::RenameOutcome::kCopied) {
      // Committed, then copied by the writeback: the node needs the copy's ETag (a copy of a
      // multipart object has another), or a descriptor open on it could not follow it.
      sources.push_back(key);
      copies.emplace_back(dest, copy_etag);
    }
    if (*moved != cache::Writeback::RenameOutcome::kNotDirty) {
      moved_dirty.emplace_back(key, dest);
      continue;
    }
    // Committed since the listing skipped it: copy its object like the others.
    auto head = client_.Head(s3::HeadRequest{key, {}}, {Deadline()});
    if (!head.ok() && head.status().code() == ErrorCode::kNotFound) continue;  // Unlinked.
    if (!head.ok()) return take_back(std::move(head).TakeStatus());
    Status copied = copy(key, head->size, head->etag);
    if (!copied.ok()) return take_back(std::move(copied));
  }
  if (marker) {
    Status copied = copy(marker->key, marker->size, marker->etag);
    if (!copied.ok()) return take_back(std::move(copied));
  } else {
    // The directory had no marker (it existed through its files): give the new one a
    // marker, so it stays a directory whatever happens to its files, with the attributes
    // it showed (the defaults, and the mount's start for its mtime).
    Status marked = PutSmallObject(to_prefix, "",
                                   AttributeMetadata(FileType::kDirectory, attr.permissions,
                                                     attr.uid, attr.gid),
                                   attr.mtime)
                        .status();
    if (!marked.ok()) return take_back(std::move(marked));
  }
  // Everything is copied, and the files being written have moved: the rename has
  // happened, whatever the deletes say (see RenameFile's contract in the header).
  inodes_.Rename(from, to);
  // The moved nodes hold their copy's ETag, fresh: a descriptor open on one follows it to
  // the new key (Read), as on a local disk; the source's ETag would fail its If-Match (a
  // copy of a multipart object has another ETag). Unknown: ask the server next time.
  // Before the deletes: a read meanwhile goes to the copy, never to a key being deleted
  // (which would fail it with ESTALE).
  for (const auto& [dest, etag] : copies) {
    auto node = inodes_.GetByPath(dest);
    if (!node || node->attr.type == FileType::kDirectory) continue;
    EnterCopy(dest, node->attr, etag);
  }
  auto deleted = DeleteInBatches(sources, /*stop_at_first_failure=*/true);
  const std::string kept = "old keys under '" + from + "/'";
  if (!deleted.ok()) {
    *old_keys_kept = OldKeysKept(std::move(deleted).TakeStatus(), from, to, kept);
  } else if (!deleted->errors.empty()) {
    *old_keys_kept = OldKeysKept(
        s3::DeleteErrorStatus(deleted->errors.front()), from, to, kept);
  }
  return Status::Ok();
}

Status Filesystem::Rename(InodeId parent, std::string_view name, InodeId new_parent,
                          std::string_view new_name, unsigned flags) {
  BFS_RETURN_IF_ERROR(CheckWritable());
  if ((flags & kRenameExchange) != 0) {
    return Status(ErrorCode::kInvalidArgument,
                  "RENAME_EXCHANGE is not supported: S3 cannot swap two keys atomically");
  }
  if ((flags & ~kRenameNoReplace) != 0) {
    return Status(ErrorCode::kInvalidArgument, "unsupported rename flags " + std::to_string(flags));
  }
  Node from_dir, to_dir;
  std::string from, to;
  Node source;
  // One directory rename at a time holds the gate while it waits for an Exclusive() (see
  // prefix_gate.h): taken before the gate, by directory renames only.
  std::unique_lock<std::mutex> directory_rename(directory_rename_mu_, std::defer_lock);
  PrefixGate::Hold entered;
  for (;;) {
    const uint64_t seen = gate_.epoch();
    BFS_ASSIGN_OR_RETURN(from, ChildKey(parent, name, &from_dir));
    BFS_ASSIGN_OR_RETURN(to, ChildKey(new_parent, new_name, &to_dir));
    BFS_ASSIGN_OR_RETURN(source, Resolve(from_dir.path, name, from));
    if (source.attr.type == FileType::kDirectory && !directory_rename.owns_lock()) {
      directory_rename.lock();
    }
    auto [hold, waited] = gate_.Enter({from, to}, seen);
    if (waited) continue;  // Moved by a directory rename meanwhile: look again.
    entered = std::move(hold);
    break;
  }
  if (from == to) return Status::Ok();
  Logger("fuse")->debug("rename '{}' -> '{}'", from, to);
  KeyLocks::Hold moving_keys;
  if (source.attr.type != FileType::kDirectory) {
    // Not while a write open starts the file at `from` (its data would be committed under
    // the old name) or a new file at `to` (it would replace the renamed one). Looked at
    // again once held: an unlink or rename of `from` may have run while this one waited.
    moving_keys = key_locks_.Exclusive({from, to});
    BFS_ASSIGN_OR_RETURN(source, Resolve(from_dir.path, name, from));
    if (source.attr.type == FileType::kDirectory) {
      return Status(ErrorCode::kStale, "'" + from + "' was replaced by a directory meanwhile");
    }
  }
  const bool source_is_dir = source.attr.type == FileType::kDirectory;
  if (source_is_dir) BFS_RETURN_IF_ERROR(CheckDirectoryKeyFits(to));
  if (source_is_dir && IsUnder(to, from)) {
    return Status(ErrorCode::kInvalidArgument, "cannot move '" + from + "' into itself");
  }
  auto target = Resolve(to_dir.path, new_name, to);
  if (!target.ok() && target.status().code() != ErrorCode::kNotFound) {
    return std::move(target).TakeStatus();
  }
  // A file being written at `to` is replaced only if the rename succeeds: until then it
  // must neither commit (its upload would land over the renamed object) nor lose its data.
  cache::Writeback::CommitHold replaced;
  if (target.ok()) {
    if ((flags & kRenameNoReplace) != 0) return Status(ErrorCode::kExists, "'" + to + "' exists");
    const bool target_is_dir = target->attr.type == FileType::kDirectory;
    if (source_is_dir && !target_is_dir) {
      return Status(ErrorCode::kNotDirectory, "'" + to + "' is not a directory");
    }
    if (!source_is_dir && target_is_dir) {
      return Status(ErrorCode::kIsDirectory, "'" + to + "' is a directory");
    }
    if (target_is_dir) {
      // Only over an empty directory, and nothing is deleted otherwise.
      if (writeback_ != nullptr && !writeback_->Under(DirectoryPrefix(to)).empty()) {
        return Status(ErrorCode::kNotEmpty, "'" + to + "' is not empty");
      }
      BFS_RETURN_IF_ERROR(CheckEmptyDirectory(to).status());
      BFS_RETURN_IF_ERROR(UnhideUnder(DirectoryPrefix(to)));  // See RmDir.
    } else if (writeback_ != nullptr) {
      replaced = writeback_->HoldCommits(to);
    }
  }

  BFS_RETURN_IF_ERROR(Unhide(to));
  Status old_keys_kept;  // The rename happened, but (some of) `from` is still in S3.
  if (source_is_dir) {
    // Nothing is created, removed or renamed under either name while the keys move.
    PrefixGate::Hold moving = gate_.Exclusive({DirectoryPrefix(from), DirectoryPrefix(to)}, entered);
    BFS_RETURN_IF_ERROR(RenameDirectory(source.attr, from, to, &old_keys_kept));
    ForgetListingsUnder(from);
    ForgetListingsUnder(to);
    // Names looked up in vain under `to` before (`rmdir b; mv a b`) may exist now; what
    // HEADs found under either name holds no longer.
    ForgetMissingUnder(DirectoryPrefix(to));
    ForgetMissingUnder(DirectoryPrefix(from));
    const ListedEntry entry{std::string(new_name), FileType::kDirectory, 0, source.attr.mtime, ""};
    PatchListing(to_dir.path, entry.name, &entry);
  } else {
    BFS_RETURN_IF_ERROR(RenameFile(source, from, to, &old_keys_kept));
    replaced.Discard();
  }
  ForgetMissing(to);
  if (!old_keys_kept.ok()) {
    // The rename happened at `to`, and the kernel must hear that it did: on an error it
    // keeps its entry of `from` on the moved inode (it drops cached names on ENOENT only),
    // so `rm from` or a write to it would act on `to`. What is left of `from` shows again
    // at its next lookup or listing, and the log says why it is there.
    ForgetListing(from_dir.path);
    Logger("fuse")->error("{}", old_keys_kept.ToString());
    return Status::Ok();
  }
  PatchListing(from_dir.path, std::string(name), nullptr);
  RememberMissing(from);
  if (from_dir.path != to_dir.path) KeepEmptiedDirectory(from_dir.path);
  return Status::Ok();
}

}  // namespace bucketfs::fs
