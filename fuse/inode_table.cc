#include "fuse/inode_table.h"

#include <vector>

#include "common/log.h"

namespace bucketfs::fs {

InodeTable::InodeTable(Attributes root_attributes, uint64_t generation) : generation_(generation) {
  auto root = std::make_unique<Node>();
  root->ino = kRootInode;
  root->attr = root_attributes;
  root->attr.ino = kRootInode;
  root->attr.type = FileType::kDirectory;
  root->attr_expiry = MonoTime::max();
  root->nlookup = 1;  // The kernel never forgets the root.
  by_path_.emplace("", kRootInode);
  nodes_.emplace(kRootInode, std::move(root));
}

Node InodeTable::Upsert(const std::string& path, const Attributes& attr, const std::string& etag,
                        MonoTime expiry, uint64_t lookups) {
  std::lock_guard lock(mu_);
  return UpsertLocked(path, attr, etag, expiry, lookups, ++ticks_, /*own=*/true);
}

Node InodeTable::UpsertLocked(const std::string& path, const Attributes& attr,
                              const std::string& etag, MonoTime expiry, uint64_t lookups,
                              uint64_t stamp, bool own) {
  Node* node = nullptr;
  if (auto p = by_path_.find(path); p != by_path_.end()) {
    Node* existing = nodes_.at(p->second).get();
    if (existing->attr.type == attr.type || existing->ino == kRootInode) {
      node = existing;
    } else {
      // Type changed: detach the old node from the path; the kernel keeps its number until
      // it forgets it.
      existing->path.clear();
      by_path_.erase(p);
      MaybeDropLocked(nodes_.find(existing->ino));
    }
  }
  if (node == nullptr) {
    auto fresh = std::make_unique<Node>();
    fresh->ino = next_ino_++;
    fresh->path = path;
    node = fresh.get();
    by_path_.emplace(path, node->ino);
    nodes_.emplace(node->ino, std::move(fresh));
  }
  if (node->ino != kRootInode) {
    if (node->etag != etag) node->symlink_target.clear();
    node->attr = attr;
    node->attr.ino = node->ino;
    node->etag = etag;
    node->attr_expiry = expiry;
    node->stored = stamp;
    if (own && !etag.empty()) node->own_etag = etag;
  }
  node->nlookup += lookups;
  return *node;
}

std::optional<Node> InodeTable::RefreshIfStillAt(InodeId ino, const std::string& path,
                                                 const Attributes& attr, const std::string& etag,
                                                 MonoTime expiry, uint64_t as_of) {
  std::lock_guard lock(mu_);
  auto p = by_path_.find(path);
  if (p == by_path_.end() || p->second != ino) return std::nullopt;
  Node* existing = nodes_.at(p->second).get();
  if (existing->stored > as_of) return *existing;
  return UpsertLocked(path, attr, etag, expiry, 0, as_of, /*own=*/false);
}

Node InodeTable::UpsertUnlessNewer(const std::string& path, const Attributes& attr,
                                   const std::string& etag, MonoTime expiry, uint64_t lookups,
                                   uint64_t as_of) {
  std::lock_guard lock(mu_);
  if (auto p = by_path_.find(path); p != by_path_.end()) {
    Node* existing = nodes_.at(p->second).get();
    if (existing->stored > as_of) {
      existing->nlookup += lookups;
      return *existing;
    }
  }
  return UpsertLocked(path, attr, etag, expiry, lookups, as_of, /*own=*/false);
}

Node InodeTable::UpsertKeepingEtag(const std::string& path, const Attributes& attr,
                                   MonoTime expiry, uint64_t lookups) {
  std::lock_guard lock(mu_);
  std::string etag;
  if (auto p = by_path_.find(path); p != by_path_.end()) etag = nodes_.at(p->second)->etag;
  return UpsertLocked(path, attr, etag, expiry, lookups, ++ticks_, /*own=*/false);
}

std::optional<Node> InodeTable::Get(InodeId ino) const {
  std::lock_guard lock(mu_);
  auto it = nodes_.find(ino);
  if (it == nodes_.end()) return std::nullopt;
  return *it->second;
}

std::optional<Node> InodeTable::GetByPath(const std::string& path) const {
  std::lock_guard lock(mu_);
  auto p = by_path_.find(path);
  if (p == by_path_.end()) return std::nullopt;
  return *nodes_.at(p->second);
}

bool InodeTable::AddLookups(InodeId ino, uint64_t n) {
  std::lock_guard lock(mu_);
  auto it = nodes_.find(ino);
  if (it == nodes_.end()) return false;
  it->second->nlookup += n;
  return true;
}

void InodeTable::Forget(InodeId ino, uint64_t n) {
  if (ino == kRootInode) return;
  std::lock_guard lock(mu_);
  auto it = nodes_.find(ino);
  if (it == nodes_.end()) {
    Logger("fuse")->warn("FORGET of unknown inode {} ignored", ino);
    return;
  }
  Node& node = *it->second;
  if (n > node.nlookup) {
    Logger("fuse")->warn("FORGET of {} lookups on inode {} that has {}; clamped", n, ino,
                         node.nlookup);
    n = node.nlookup;
  }
  node.nlookup -= n;
  MaybeDropLocked(it);
}

void InodeTable::DropIfUnused(InodeId ino) {
  std::lock_guard lock(mu_);
  auto it = nodes_.find(ino);
  if (it != nodes_.end()) MaybeDropLocked(it);
}

void InodeTable::MaybeDropLocked(std::unordered_map<InodeId, std::unique_ptr<Node>>::iterator it) {
  Node& node = *it->second;
  if (node.ino == kRootInode || node.nlookup > 0 || node.open_handles > 0) return;
  if (auto p = by_path_.find(node.path); p != by_path_.end() && p->second == node.ino) {
    by_path_.erase(p);
  }
  nodes_.erase(it);
}

void InodeTable::OpenHandle(InodeId ino, const std::string& etag) {
  std::lock_guard lock(mu_);
  auto it = nodes_.find(ino);
  if (it == nodes_.end()) return;
  ++it->second->open_handles;
  it->second->last_open_etag = etag;
}

void InodeTable::CloseHandle(InodeId ino) {
  std::lock_guard lock(mu_);
  auto it = nodes_.find(ino);
  if (it == nodes_.end() || it->second->open_handles == 0) return;
  --it->second->open_handles;
  MaybeDropLocked(it);
}

std::string InodeTable::PreviousOpenEtag(InodeId ino) const {
  std::lock_guard lock(mu_);
  auto it = nodes_.find(ino);
  return it == nodes_.end() ? std::string() : it->second->last_open_etag;
}

void InodeTable::Detach(const std::string& path) {
  if (path.empty()) return;
  std::lock_guard lock(mu_);
  auto p = by_path_.find(path);
  if (p == by_path_.end()) return;
  auto it = nodes_.find(p->second);
  by_path_.erase(p);
  it->second->path.clear();
  it->second->unlinked = true;
  MaybeDropLocked(it);
}

void InodeTable::Rename(const std::string& from, const std::string& to) {
  if (from.empty() || to.empty() || from == to) return;
  auto under = [](const std::string& path, const std::string& dir) {
    return path == dir || (path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 &&
                           path[dir.size()] == '/');
  };
  std::lock_guard lock(mu_);
  std::vector<std::pair<std::string, InodeId>> moving, replaced;
  for (const auto& [path, ino] : by_path_) {
    if (under(path, from)) moving.emplace_back(path, ino);
    else if (under(path, to)) replaced.emplace_back(path, ino);
  }
  for (const auto& [path, ino] : replaced) {
    by_path_.erase(path);
    auto it = nodes_.find(ino);
    it->second->path.clear();
    it->second->unlinked = true;
    MaybeDropLocked(it);
  }
  for (const auto& [path, ino] : moving) by_path_.erase(path);
  for (const auto& [path, ino] : moving) {
    const std::string moved = to + path.substr(from.size());
    Node& node = *nodes_.at(ino);
    node.path = moved;
    node.stored = ++ticks_;
    by_path_[moved] = ino;
  }
}

void InodeTable::Expire(InodeId ino) {
  std::lock_guard lock(mu_);
  auto it = nodes_.find(ino);
  if (it != nodes_.end() && ino != kRootInode) {
    it->second->attr_expiry = MonoTime::min();
    // Known stale now: a listing or reply from before cannot make it fresh again.
    it->second->stored = ++ticks_;
  }
}

void InodeTable::SetUnlinkedAttributes(InodeId ino, const Attributes& attr) {
  std::lock_guard lock(mu_);
  auto it = nodes_.find(ino);
  if (it == nodes_.end() || !it->second->unlinked) return;
  const InodeId kept = it->second->attr.ino;
  it->second->attr = attr;
  it->second->attr.ino = kept;
}

void InodeTable::SetSymlinkTarget(InodeId ino, std::string target) {
  std::lock_guard lock(mu_);
  auto it = nodes_.find(ino);
  if (it != nodes_.end()) it->second->symlink_target = std::move(target);
}

uint64_t InodeTable::Tick() {
  std::lock_guard lock(mu_);
  return ++ticks_;
}

size_t InodeTable::size() const {
  std::lock_guard lock(mu_);
  return nodes_.size();
}

}  // namespace bucketfs::fs
