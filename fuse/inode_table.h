// InodeTable: the inode numbers the kernel knows, with the kernel's lookup counts.
//
// Contract:
//  - Thread-safe (one mutex; every method is a hash lookup or two).
//  - Inode numbers are never reused within a daemon's life (a 64-bit counter), so a stale
//    inode number can never reach another file. The generation (the mount's start time in
//    seconds) separates the numbers of one daemon run from the next.
//  - nlookup is the kernel's count: every reply that hands the kernel an inode (lookup,
//    readdirplus entry, create) adds one through Upsert(...lookups=1) or AddLookups(); the
//    kernel's FORGET subtracts. A node is dropped when its count reaches zero and no handle
//    has it open; the root is never dropped. Forgetting more than was looked up, or an
//    unknown inode, is logged and ignored (never a crash or a use-after-free).
//  - A path maps to at most one live node. When a path's type changes (a file became a
//    directory, or a HEAD shows a listed file is a symlink), Upsert gives the path a new
//    inode number: the kernel must never see one inode change type. The old node stays
//    until the kernel forgets it, reachable only by its number.
//  - Accessors return copies (Node by value), never pointers into the table.
//  - Every node carries a stamp (`stored`) from the table's logical clock: when what it says
//    was known true. Tick() advances the clock; a caller takes a tick before it asks the
//    server, and whatever the server answers was true no earlier than that tick. Upsert
//    (the caller's own news: a commit, a dirty file) stamps with a fresh tick;
//    UpsertUnlessNewer stores an answer stamped with the tick taken before its request, and
//    keeps the node instead if the node's stamp is later. Whoever keeps a copy of what the
//    server said (a directory listing, its entries) records its tick too, and a node with a
//    later stamp wins over the copy. Stamping with the time of knowledge, not of storing,
//    matters: an old copy stored again late must not look new. A counter, not a clock: two
//    stamps are never tied, whatever the clock's resolution (or a test's fake clock).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "common/clock.h"
#include "fuse/attributes.h"

namespace bucketfs::fs {

struct Node {
  InodeId ino = 0;
  std::string path;   // Empty for the root; see fuse/names.h.
  Attributes attr;    // attr.ino == ino.
  std::string etag;   // Files: the version the attributes describe.
  MonoTime attr_expiry{};
  uint64_t nlookup = 0;
  uint32_t open_handles = 0;
  std::string last_open_etag;  // The version the previous open read (for keep_cache).
  std::string symlink_target;  // Symlinks, once read.
  bool unlinked = false;       // Removed from the namespace while the kernel or a handle had it.
  uint64_t stored = 0;         // The tick at which attr/etag were known true.
  // The last version this mount made itself (a commit, a copy: stored by Upsert), never one
  // only found on the server. An open handle may follow the file to it.
  std::string own_etag;
};

class InodeTable {
 public:
  InodeTable(Attributes root_attributes, uint64_t generation);

  uint64_t generation() const { return generation_; }

  // The node of `path`, created if missing, with `attr`/`etag`/`expiry` stored and
  // `lookups` added to its count: the caller's own news, so a non-empty `etag` also
  // becomes the node's own_etag. Returns the node after the update.
  Node Upsert(const std::string& path, const Attributes& attr, const std::string& etag,
              MonoTime expiry, uint64_t lookups);
  // Upsert of what was true at tick `as_of` (a server's reply to a request sent then, a
  // listing entry): if the node of `path` is stamped later, it is newer (a commit finished
  // while the HEAD was in flight) and is kept, only `lookups` are added; else the reply is
  // stored, stamped `as_of`.
  Node UpsertUnlessNewer(const std::string& path, const Attributes& attr,
                         const std::string& etag, MonoTime expiry, uint64_t lookups,
                         uint64_t as_of);
  // UpsertUnlessNewer of a refresh of node `ino`, only while `path` is still its path:
  // nullopt if an unlink or a rename took the path from it meanwhile (the reply must not
  // bring a node back at a path that was just removed).
  std::optional<Node> RefreshIfStillAt(InodeId ino, const std::string& path,
                                       const Attributes& attr, const std::string& etag,
                                       MonoTime expiry, uint64_t as_of);
  // Upsert that keeps the ETag the node of `path` has (none if new), read and written under
  // one lock: a dirty file's attributes come from the spool, its ETag from the last commit,
  // which may be landing meanwhile.
  Node UpsertKeepingEtag(const std::string& path, const Attributes& attr, MonoTime expiry,
                         uint64_t lookups);
  std::optional<Node> Get(InodeId ino) const;
  std::optional<Node> GetByPath(const std::string& path) const;

  // Adds to the count of a live node; false if it is gone.
  bool AddLookups(InodeId ino, uint64_t n);
  // The kernel's FORGET.
  void Forget(InodeId ino, uint64_t n);
  // Drops a node that has no lookups and no open handles (an entry the kernel refused).
  void DropIfUnused(InodeId ino);

  // Open handles keep a node alive after the kernel forgets it.
  void OpenHandle(InodeId ino, const std::string& etag);
  void CloseHandle(InodeId ino);
  // The ETag the previous open of `ino` read (before this one), for keep_cache.
  std::string PreviousOpenEtag(InodeId ino) const;

  // Takes `path` out of the namespace (unlink, rmdir): its node stays, unlinked and reachable
  // only by number, until the kernel forgets it and its handles close.
  void Detach(const std::string& path);
  // Moves the node of `from` and every node under `from/` to `to` (and under `to/`),
  // keeping their numbers and stamping them anew (at their new paths they are newer than
  // anything listed there before); nodes that were at those paths are detached.
  void Rename(const std::string& from, const std::string& to);

  // Marks the attributes stale, so the next GetAttr/Open asks the server. Stamped anew: an
  // answer from before (a directory handle's old listing) cannot make them fresh again.
  void Expire(InodeId ino);
  void SetSymlinkTarget(InodeId ino, std::string target);
  // The attributes of `ino` if it is unlinked (a chmod through a descriptor still open on
  // it): no path, so no listing or server answer can replace them.
  void SetUnlinkedAttributes(InodeId ino, const Attributes& attr);

  size_t size() const;
  // Advances the logical clock; returns the new tick.
  uint64_t Tick();

 private:
  // Require mu_.
  Node UpsertLocked(const std::string& path, const Attributes& attr, const std::string& etag,
                    MonoTime expiry, uint64_t lookups, uint64_t stamp, bool own);
  void MaybeDropLocked(std::unordered_map<InodeId, std::unique_ptr<Node>>::iterator it);

  const uint64_t generation_;
  mutable std::mutex mu_;
  InodeId next_ino_ = kRootInode + 1;                             // Guarded by mu_.
  uint64_t ticks_ = 0;                                            // Guarded by mu_.
  std::unordered_map<InodeId, std::unique_ptr<Node>> nodes_;      // Guarded by mu_.
  std::unordered_map<std::string, InodeId> by_path_;              // Guarded by mu_.
};

}  // namespace bucketfs::fs
