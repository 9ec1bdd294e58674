// Filesystem: the mount's operations on inode numbers, free of libfuse.
//
// Contract:
//  - Every method is thread-safe and maps one kernel request; the adapter (fuse/adapter.cc)
//    turns replies and Status into libfuse calls, and a Status into an errno only through
//    ToErrno() (common/errno_map.h). Unit tests drive it with the in-memory fake client.
//  - Names and keys: see fuse/names.h. Directories are prefixes: common prefixes and `dir/`
//    markers both count (fuse/directory_listing.h). Attributes: fuse/attributes.h.
//  - Lookup counts follow the kernel's rules (fuse/inode_table.h): each successful Lookup and
//    each readdirplus entry the filler accepts (except "." and "..") adds one; Forget
//    subtracts.
//  - Metadata caching, all bounded by `metadata_ttl` (the kernel's entry and attribute
//    timeouts are the same value): a directory listing serves lookups of its names, positive
//    and negative, while fresh; a node's attributes serve GetAttr and Open while fresh; a
//    name found missing is remembered as missing. A Lookup outside a fresh listing costs one
//    HEAD of the key and, concurrently, one single-key listing of `key/` (to see a
//    directory, and a file/directory clash), then for a directory with a marker a HEAD of
//    it (its attributes); a listing costs ListObjectsV2 pages, and no HEAD per entry except
//    for entries whose attributes only a HEAD tells (at most 256 per directory opened, in
//    parallel, each once per TTL): small objects (under 4 KiB: a symlink is such an object
//    and only its metadata says so) and subdirectories (their markers). A directory whose
//    marker was not read is handed out expired, and GetAttr reads it. The mount is the
//    bucket's single writer (the lease), so caching for the TTL does not hide anyone
//    else's writes that should have been seen.
//  - Reads: Open pins the ETag (and size) it sees (fresh attributes, or a HEAD); the handle
//    reads that version only, through a ReadAhead (cache/read_ahead.h). If it is replaced or
//    deleted remotely, reads fail with kStale (ESTALE), the node's attributes are expired,
//    and the next Open sees the new version; an Open that finds a new ETag also has the
//    kernel drop the inode's cached attributes (the old size) through the Invalidator. keep_cache is set when the ETag is the one the
//    previous open of the same inode read, so the kernel's page cache survives reopening an
//    unchanged file and is dropped when it changed.
//  - Writing (cache/writeback.h): a file opened for writing, or created, becomes a
//    DirtyFile whose bytes live in the spool until committed; while it is dirty its size,
//    mtime and mode come from it (a listing or HEAD would show the old object), and every
//    handle of the file reads through it. Release of the last writer starts the commit;
//    Fsync waits for it; Flush reports the sticky error (and, with `sync_on_close`,
//    commits). With `read_only`, or without a Writeback, every modifying call is kReadOnly.
//  - Namespace operations (docs/SEMANTICS.md): mkdir writes a `dir/` marker; rmdir is
//    kNotEmpty while anything is under the prefix; rename copies server-side then deletes
//    (directories key by key), and is not atomic; unlink of a file that is open defers the
//    DELETE to the last close, and hides the name at once; hard links are kNotPermitted;
//    RENAME_EXCHANGE is kInvalidArgument. A mutation updates the cached listing of its
//    directory in place instead of dropping it, so `ls` after a burst of creates costs
//    nothing.
//  - The caller's uid and gid (Caller) are stored as the new object's x-amz-meta-uid|gid.
//  - Symlinks (s3fs convention: x-amz-meta-mode with S_IFLNK, body = target) are recognised
//    from HEAD. Listings carry no metadata, so a small listed object (under 4 KiB) is HEADed
//    before the kernel first sees it (opendir checks up to 256 entries per directory in
//    parallel, small objects and subdirectories alike; a lookup from a listing checks its
//    one name). In a directory with more of them than that, readdirplus may show a symlink
//    beyond the first 256 as a file until a lookup after metadata_ttl.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "cache/read_ahead.h"
#include "cache/write_fence.h"
#include "cache/writeback.h"
#include "common/clock.h"
#include "common/status.h"
#include "common/task_pool.h"
#include "fuse/attributes.h"
#include "fuse/directory_listing.h"
#include "fuse/inode_table.h"
#include "fuse/key_locks.h"
#include "fuse/names.h"
#include "fuse/page_invalidations.h"
#include "fuse/prefix_gate.h"
#include "s3/object_client.h"

namespace bucketfs::fs {

struct FilesystemOptions {
  AttributeDefaults defaults;
  Duration metadata_ttl = std::chrono::seconds(60);
  bool read_only = true;
  bool sync_on_close = false;  // Flush (close) commits and waits, as fsync does.
  cache::ReadAheadOptions read_ahead;
  Duration request_timeout = std::chrono::seconds(60);  // Bounds each operation's S3 calls.
  size_t max_cached_listings = 256;
  size_t max_negative_entries = 100000;
  WallTime mount_time{};  // Directories without a marker show this mtime.
  uint64_t generation = 0;
  // The lease's fence (cache/write_fence.h): once closed, every modifying call and every
  // write(2) is kReadOnly (EROFS) with its reason. nullptr: never fenced.
  const cache::WriteFence* fence = nullptr;
};

struct EntryReply {
  Attributes attr;
  uint64_t generation = 0;
  Duration ttl{};  // Entry and attribute timeout.
};

struct AttrReply {
  Attributes attr;
  Duration ttl{};
};

struct OpenReply {
  uint64_t handle = 0;
  bool keep_cache = false;
};

// One directory entry offered to the adapter's buffer.
struct DirEntryView {
  std::string_view name;
  Attributes attr;           // attr.ino is the entry's inode (plus) or a placeholder.
  uint64_t next_offset = 0;  // The offset to resume after this entry.
  bool counts_lookup = false;  // readdirplus entry that adds to nlookup when accepted.
  Duration ttl{};              // readdirplus: how long the kernel may keep the entry.
};

struct CreateReply {
  EntryReply entry;
  OpenReply open;
};

// Who asks: the owner of what they create.
struct Caller {
  uint32_t uid = 0;
  uint32_t gid = 0;
};

// SETATTR: the fields present are changed.
struct SetAttrRequest {
  std::optional<uint32_t> permissions;
  std::optional<uint32_t> uid;
  std::optional<uint32_t> gid;
  std::optional<uint64_t> size;
  std::optional<WallTime> mtime;
  std::optional<uint64_t> handle;  // ftruncate/futimens: the handle it came through.
};

// rename(2) flags (the values of <linux/fs.h>, which the adapter passes through).
inline constexpr unsigned kRenameNoReplace = 1u << 0;
inline constexpr unsigned kRenameExchange = 1u << 1;

struct StatFsReply {
  uint64_t block_size = 4096;
  uint64_t blocks = 0;
  uint64_t blocks_free = 0;
  uint64_t files = 0;
  uint64_t files_free = 0;
  uint32_t name_max = kMaxNameBytes;
};

struct FilesystemStats {
  uint64_t lookups = 0;
  uint64_t lookups_from_listing = 0;
  uint64_t negative_hits = 0;
  uint64_t probes = 0;    // Lookups that asked the server (HEAD + single-key list).
  uint64_t listings = 0;  // Directory listings fetched.
  uint64_t heads = 0;     // Attribute refreshes by HEAD.
  uint64_t inodes = 0;
  uint64_t open_files = 0;
};

class Filesystem {
 public:
  // Returns false when the adapter's buffer is full: the entry was not taken.
  using DirFiller = std::function<bool(const DirEntryView&)>;

  // `client`, everything in `reads` and `writeback` must outlive the Filesystem. Without a
  // writeback the mount is read-only whatever the options say.
  Filesystem(s3::ObjectClient& client, const cache::ReadContext& reads,
             FilesystemOptions options);
  Filesystem(s3::ObjectClient& client, const cache::ReadContext& reads,
             cache::Writeback* writeback, FilesystemOptions options);
  Filesystem(const Filesystem&) = delete;
  Filesystem& operator=(const Filesystem&) = delete;
  ~Filesystem();

  Result<EntryReply> Lookup(InodeId parent, std::string_view name);
  void Forget(InodeId ino, uint64_t nlookup);
  Result<AttrReply> GetAttr(InodeId ino);
  Result<std::string> ReadLink(InodeId ino);

  Result<uint64_t> OpenDir(InodeId ino);
  // Offers entries from `offset` (0: the start; else a next_offset given earlier) until the
  // filler refuses one or the directory ends.
  Status ReadDir(uint64_t dir_handle, uint64_t offset, bool plus, const DirFiller& fill);
  void ReleaseDir(uint64_t dir_handle);

  // `flags` as open(2) passes them (O_ACCMODE, O_TRUNC, ...).
  Result<OpenReply> Open(InodeId ino, int flags);
  Result<cache::ReadReply> Read(uint64_t handle, uint64_t offset, size_t size);
  void Release(uint64_t handle);

  // --- Writing (fuse/filesystem_write.cc) ---
  Result<CreateReply> Create(InodeId parent, std::string_view name, uint32_t permissions,
                             int flags, const Caller& caller);
  // Returns the bytes written (all of them, or an error).
  Result<size_t> Write(uint64_t handle, uint64_t offset, std::span<const char> data);
  Status Flush(uint64_t handle);
  Status Fsync(uint64_t handle);
  Result<AttrReply> SetAttr(InodeId ino, const SetAttrRequest& request);

  // --- Namespace (fuse/filesystem_write.cc) ---
  Result<EntryReply> MkDir(InodeId parent, std::string_view name, uint32_t permissions,
                           const Caller& caller);
  Status RmDir(InodeId parent, std::string_view name);
  Status Unlink(InodeId parent, std::string_view name);
  Result<EntryReply> Symlink(std::string_view target, InodeId parent, std::string_view name,
                             const Caller& caller);
  Status Rename(InodeId parent, std::string_view name, InodeId new_parent,
                std::string_view new_name, unsigned flags);
  Status Link(InodeId ino, InodeId new_parent, std::string_view new_name);

  StatFsReply StatFs() const;

  // How the Filesystem tells the kernel to drop what it caches of an inode: its attributes,
  // and with `pages` its cached pages too. Set by the session once the mount exists. With
  // `pages` it is called from an I/O pool thread, never from inside a request (the kernel
  // may hold page locks until the request is answered); attributes alone take no lock a
  // request holds, so an OPEN may drop them before it answers.
  using Invalidator = std::function<void(InodeId, bool pages)>;
  void SetInvalidator(Invalidator invalidate);
  FilesystemStats Stats() const;
  const FilesystemOptions& options() const { return options_; }

  // Unmount is under way (mountd drains the mount): new Open and Create calls fail with
  // kBusy (EBUSY) so that the open handles can only go down; handles already open work on.
  // StopNewOpens(false) takes it back (an unmount that timed out leaves the mount intact).
  void StopNewOpens(bool stop) { opens_stopped_.store(stop); }
  bool new_opens_stopped() const { return opens_stopped_.load(); }

 private:
  // Open(); `for_setattr`: the file's own open for a chmod, utimens or truncate by path,
  // which joins a file already being written even while an unmount stops new opens (the
  // kernel sends fchmod and futimens without the descriptor's handle).
  Result<OpenReply> OpenFile(InodeId ino, int flags, bool for_setattr);
  // The inode `ino` (into `node`), its path entered in gate_ (waiting out a directory
  // rename that covers it). kStale if the inode is gone.
  Result<PrefixGate::Hold> EnterInode(InodeId ino, std::optional<Node>* node);
  // SetAttr() of a file unlinked while open (no size change): applied to what its open
  // descriptors show, never stored.
  Result<AttrReply> SetAttrOfUnlinked(InodeId ino, const Node& node, const SetAttrRequest& request);
  // A torn file's last writer released it and the writeback set it aside: the node and
  // listing forget what it showed.
  void ForgetSetAside(InodeId ino, const cache::DirtyFile& dirty);
  // ChildKey(), entered in gate_ (waiting out a directory rename that covers it).
  Result<std::string> EnterChild(InodeId parent, std::string_view name, Node* dir,
                                 PrefixGate::Hold* hold);
  // Deletes `keys` in DeleteObjects batches; the keys the server could not delete are in
  // the result's errors. `stop_at_first_failure`: no batch after one that failed (an error,
  // or keys left); otherwise every batch is tried (a best-effort cleanup).
  Result<s3::DeleteManyResult> DeleteInBatches(const std::vector<std::string>& keys,
                                               bool stop_at_first_failure);
  // kNotEmpty unless the directory at `path` holds nothing in S3 but its marker and files
  // unlinked while open (hidden_); returns whether it has a marker. Deletes nothing.
  Result<bool> CheckEmptyDirectory(const std::string& path);

  struct FileHandle {
    InodeId ino = 0;
    std::string key;
    // Reads of the clean object, if any. Shared: a read in flight keeps the one it started
    // with alive while another thread replaces it (a file renamed or rewritten here).
    std::shared_ptr<cache::ReadAhead> reader;
    std::shared_ptr<cache::DirtyFile> dirty;   // Set for writers (and readers of a dirty file).
    bool writer = false;
    // A writer changed the file since its last FLUSH (Writeback::WriterChanged).
    std::atomic<bool> changed_since_flush{false};
    // A write through this descriptor was refused (fenced): it takes no more, or its file
    // would get the bytes after the refused ones without them.
    std::atomic<bool> write_refused{false};
    std::mutex reader_mu;  // Guards `reader` (the pointer, not the ReadAhead).
  };
  struct DirHandle {
    InodeId ino = 0;
    std::string path;
    Attributes self;
    std::shared_ptr<const DirectoryListing> listing;  // Replaced under mu_ (a rewind).
    std::atomic<bool> read{false};  // A READDIR has been answered from `listing`.
  };
  // The listing a directory handle of `ino` at `dir_path` serves: the cached or a fetched
  // listing, with files still in the spool added and files unlinked while open left out.
  // kStale if the directory is gone from the bucket.
  Result<std::shared_ptr<const DirectoryListing>> HandleListing(InodeId ino,
                                                                const std::string& dir_path);

  // The path of child `name` of directory `parent`, checked (name rules, key length, the
  // reserved prefix).
  Result<std::string> ChildKey(InodeId parent, std::string_view name, Node* parent_node = nullptr);
  // What `path` (child `name` of `dir_path`) is, with no lookup counted; kNotFound if nothing.
  Result<Node> Resolve(const std::string& dir_path, std::string_view name, const std::string& path);
  // The node of a dirty file, its attributes from the spool.
  Node EnterDirty(const std::string& path, const cache::DirtyFile& dirty, uint64_t lookups);
  Attributes DirtyAttributesOf(const cache::DirtyFile& dirty) const;
  std::shared_ptr<cache::DirtyFile> FindDirty(const std::string& path) const;
  Status CheckWritable() const;
  Status CheckOpensAllowed() const;
  std::shared_ptr<FileHandle> FindFile(uint64_t handle);
  // A handle open on `ino` with a dirty file (only a writer's if `writers_only`), or null.
  std::shared_ptr<FileHandle> DirtyHandleOf(InodeId ino, bool writers_only);
  uint64_t AddFile(std::shared_ptr<FileHandle> handle);
  // Updates cached listings after a mutation: the entry `name` of `dir_path` set (or
  // removed, when `entry` is null). `entry->as_of` is when it was true (the stamp of the
  // caller's node), or 0 for now. Listings not cached are left to the next fetch; a fetch of
  // `dir_path` in flight replays the patch onto what it brings back.
  void PatchListing(const std::string& dir_path, const std::string& name, const ListedEntry* entry);
  // Drops every cached listing of `dir_path` and of the directories under it.
  void ForgetListingsUnder(const std::string& dir_path);
  // Installs an empty fresh listing of a directory just made (it has nothing in it).
  void RememberEmptyDirectory(const std::string& dir_path);
  // The writeback's listener: a commit finished.
  void OnCommitted(const cache::CommittedObject& committed);
  // Deletes what must go once nothing has `ino` open (an unlinked open file).
  void FinishDeferredDelete(InodeId ino);
  // `path` is about to be used again: if it is hidden (unlinked while open), its old object
  // is deleted now instead of at the last close.
  Status Unhide(const std::string& path);
  // Adds the lookup a reply hands the kernel to `node` (of `path`), entering it again if it
  // was dropped meanwhile (it had none yet). Returns the node the reply must carry.
  Node TakeLookup(const std::string& path, const Node& node);
  // Stores what a copy made at `path` (a rename): its ETag is this mount's own version. An
  // unknown ETag (the server did not say) is no version to follow: the node expires, and
  // the server is asked next time.
  Node EnterCopy(const std::string& path, const Attributes& attr, const std::string& etag);
  // A writer's handle changes the file: the first change since its last FLUSH tells the
  // writeback (Writeback::WriterChanged).
  void MarkChanged(FileHandle& file);
  // Unhide() of every hidden path under `prefix` (a directory that is going away: removed,
  // or renamed, whose unlinked-but-open files must neither keep it non-empty nor move).
  Status UnhideUnder(const std::string& prefix);
  // An entry of `dir_path` was just removed. If the directory's cached listing shows it
  // empty now and it has no marker (it existed through its files), writes the marker, so
  // that `rm d/*` leaves `d` as a local disk would. Best effort: a failure is logged, and
  // without a fresh listing nothing is done (no LIST per unlink).
  void KeepEmptiedDirectory(const std::string& dir_path);
  // kNameTooLong unless a directory at `path` fits S3's key limit (its marker, `path/`).
  static Status CheckDirectoryKeyFits(const std::string& path);
  // kExists unless nothing is at `path` (child `name` of `dir_path`); then claims it
  // (Unhide) for a new object.
  Status ClaimFreeName(const std::string& dir_path, std::string_view name,
                       const std::string& path);
  // The two halves of Rename(). An error return means nothing moved. Once the copies are
  // made the rename has happened at `to` (the caches say so), even if deleting the old
  // keys then fails: `*old_keys_kept` is that failure, logged as an error; the old keys
  // show again under `from`, and Rename() succeeds (the copies are the data: taking them
  // back could lose a replaced target for good, while the leftover old keys lose nothing;
  // and a failed rename would leave the kernel's entry of `from` on the moved inode).
  Status RenameFile(const Node& source, const std::string& from, const std::string& to,
                    Status* old_keys_kept);
  // `attr`: the directory's, stored in the new marker when it had none.
  Status RenameDirectory(const Attributes& attr, const std::string& from, const std::string& to,
                         Status* old_keys_kept);
  // Deletes a file rename's old key: Ok, or the failure as `*old_keys_kept` tells it.
  Status DeleteRenamedKey(const std::string& from, const std::string& to);
  // A directory rename that failed takes back a file being written that it had moved from
  // `key` to `dest`: its dirty data, or its object if it committed meanwhile, is at `key`
  // again (the caller then deletes `dest`).
  Status MoveBack(const std::string& dest, const std::string& key);
  // Writes an object with no data body besides `body` (markers, symlinks), stamped with
  // `mtime` (default: now).
  Result<std::string> PutSmallObject(const std::string& key, std::string_view body,
                                     s3::UserMetadata metadata,
                                     std::optional<WallTime> mtime = std::nullopt);

  MonoTime Now() const { return clock_.Now(); }
  MonoTime Deadline() const { return Now() + options_.request_timeout; }
  MonoTime Expiry() const { return Now() + options_.metadata_ttl; }
  EntryReply MakeEntry(const Node& node) const;
  // How long the kernel may keep what `node` says: what is left of its attributes' TTL (a
  // cached answer must not start a new TTL in the kernel); a directory's for the whole TTL.
  Duration KernelTtl(const Node& node) const;

  // The cached listing of `dir_path` if younger than the TTL, else nullptr.
  std::shared_ptr<const DirectoryListing> FreshListing(const std::string& dir_path);
  // Lists `dir_path` from the server and caches the result. A directory of more than
  // `max_pages` pages is not listed to its end: nullptr, nothing cached.
  Result<std::shared_ptr<const DirectoryListing>> FetchListing(const std::string& dir_path,
                                                               size_t max_pages = SIZE_MAX);
  void ForgetListing(const std::string& dir_path);
  // Requires mu_. Counts a forget of `dir_path` (and, if `under`, every directory under it)
  // against the fetches in flight.
  void NoteForgetLocked(const std::string& dir_path, bool under);
  // The entry `name` of the cached listing of `dir_path`, whatever its age, if it was true
  // after `as_of`.
  std::optional<ListedEntry> NewerCachedEntry(const std::string& dir_path, const std::string& name,
                                              uint64_t as_of);
  // Requires mu_. Caches `listing` of `dir_path`, dropping the oldest beyond the limit.
  void CacheListingLocked(const std::string& dir_path,
                          std::shared_ptr<const DirectoryListing> listing);
  // The node for a listed entry of a listing fetched at `listed_at`, with `lookups` added;
  // trusted until that listing's TTL ends. Keeps a fresh node's attributes when they
  // describe the same version (they may hold metadata a listing lacks).
  Node EnterListed(const std::string& path, const ListedEntry& entry, uint64_t lookups,
                   MonoTime listed_at);
  // True if the node of `path` was known after `as_of`.
  bool NodeNewerThan(const std::string& path, uint64_t as_of) const;
  // As EnterListed, but an entry whose attributes only a HEAD can tell, and not yet seen by
  // one, is looked at with one HEAD first: a small object (it could be a symlink), or a
  // directory (its marker holds its mode, owner and mtime).
  Node EnterListedChecked(const std::string& path, const ListedEntry& entry, uint64_t lookups,
                          MonoTime listed_at);
  // The HEADs EnterListedChecked would do, for up to kMaxEntryChecks entries of a listing,
  // in parallel on the I/O pool (opendir: readdirplus then needs none).
  void CheckListedEntries(const std::string& dir_path, const DirectoryListing& listing);
  // True if `entry`'s attributes are not all in the listing (see EnterListedChecked) and
  // nothing here knows them yet.
  bool NeedsCheck(const std::string& path, const ListedEntry& entry);
  // HEADs `entry` (a directory: its marker) and remembers its attributes: a file's for its
  // listed ETag, if it still has it.
  void Check(const std::string& path, const ListedEntry& entry);
  // Attributes a HEAD found for this entry (a file: this version of it), while fresh.
  std::optional<Attributes> CheckedAttributes(const std::string& path, const ListedEntry& entry);
  // Asks the server what `path` is: HEAD and a single-key listing, concurrently.
  Result<Node> Probe(const std::string& path);
  // Fresh attributes of `node`: as cached, or refreshed by HEAD.
  Result<Node> Refresh(const Node& node);
  // What a refresh of `node` answers when its path was taken from it meanwhile.
  Result<Node> MovedMeanwhile(const Node& node);

  // Asks the kernel, asynchronously, to forget the attributes and pages of `ino`: its object
  // changed (the kernel would otherwise keep the old size until its attribute timeout).
  void InvalidateKernelCache(InodeId ino);
  Invalidator CurrentInvalidator();  // A copy, called without mu_ held.
  // Makes the kernel forget the attributes of `ino` now, before the request answers: an
  // OPEN of a new version, whose reads must not stop at the old version's size.
  void InvalidateKernelAttributes(InodeId ino);

  bool IsNegative(const std::string& path);
  // Whether `path` was found or made missing after `since` (and still is).
  bool MissingSince(const std::string& path, MonoTime since);
  void RememberMissing(const std::string& path);
  void ForgetMissing(const std::string& path);
  // ForgetMissing() of every path under `prefix` (a directory renamed onto it). O(entries).
  void ForgetMissingUnder(const std::string& prefix);
  // How many ForgetMissing*() calls (things made or changed by this mount) came so far: a
  // Check whose HEAD overlapped one keeps nothing.
  uint64_t ChangesSoFar() const;

  s3::ObjectClient& client_;
  const cache::ReadContext reads_;
  cache::Writeback* const writeback_;
  const FilesystemOptions options_;
  Clock& clock_;
  InodeTable inodes_;
  OnceLog problems_;

  mutable std::mutex mu_;
  uint64_t next_handle_ = 1;                                                  // Guarded by mu_.
  std::unordered_map<uint64_t, std::shared_ptr<FileHandle>> files_;           // Guarded by mu_.
  std::unordered_map<uint64_t, std::shared_ptr<DirHandle>> dirs_;             // Guarded by mu_.
  // Listings, least recently fetched first in `listing_order_`.
  std::unordered_map<std::string, std::shared_ptr<const DirectoryListing>> listings_;  // mu_
  std::list<std::string> listing_order_;                                      // Guarded by mu_.
  // Listings being fetched, by directory: the patches made to it meanwhile (a LIST answered
  // before a commit but cached after it would otherwise hide the commit for the TTL), and
  // how often its cached listing was forgotten meanwhile (a rename or removal under it: the
  // answer must not be cached). The entry goes when its last fetch ends.        // mu_.
  struct PendingPatch {
    std::string name;
    std::optional<ListedEntry> entry;  // Empty: removed.
    uint64_t as_of = 0;
  };
  struct FetchInFlight {
    int fetches = 0;
    uint64_t forgets = 0;
    std::vector<PendingPatch> patches;
  };
  std::unordered_map<std::string, FetchInFlight> fetches_in_flight_;
  std::unordered_map<std::string, MonoTime> negative_;                        // Guarded by mu_.
  // Directories where a lookup recently found a name missing, until when; or, until
  // when, known too large for a listing to answer lookups there.              // mu_.
  struct MissHint {
    MonoTime until;
    bool too_large = false;
  };
  std::unordered_map<std::string, MissHint> misses_;
  // What HEADs of listed entries found (type, mode, owner, mtime), by path.      // mu_.
  struct CheckedEntry {
    std::string etag;
    Attributes attr;
    MonoTime expiry{};
  };
  std::unordered_map<std::string, CheckedEntry> checked_;
  uint64_t changes_ = 0;  // See ChangesSoFar().                                 // mu_.
  Invalidator invalidate_;                                                    // Guarded by mu_.
  // Unlinked while open: the key to DELETE when the last handle closes.     // Guarded by mu_.
  std::unordered_map<InodeId, std::string> deferred_deletes_;
  std::unordered_map<std::string, InodeId> hidden_;  // Their paths, hidden meanwhile. mu_.
  // Keys whose last close's DELETE is in flight (mu_): a new file at the key waits for it
  // (Unhide), or that DELETE, landing late, would remove the new file.
  std::unordered_set<std::string> deleting_at_close_;
  std::condition_variable deleted_at_close_;  // With mu_: deleting_at_close_ shrank.

  struct Counters {
    std::atomic<uint64_t> lookups{0}, lookups_from_listing{0}, negative_hits{0}, probes{0},
        listings{0}, heads{0};
  };
  mutable Counters counters_;
  std::atomic<bool> opens_stopped_{false};
  // Namespace operations stay out of the keys a directory rename is moving.
  PrefixGate gate_;
  std::mutex directory_rename_mu_;  // Held by a directory rename, before gate_.Enter().
  // A write open (shared) of a file's key and a rename or unlink of it (exclusive) do not
  // interleave: taken after gate_.Enter().
  KeyLocks key_locks_;
  // The lookups' single-key listings and the type checks' HEADs: threads of their own, not
  // the read-ahead pool, where they would queue behind the 4 MiB GETs of every file being
  // read (an `ls` waiting on a dataset's prefetches).
  std::unique_ptr<TaskPool> metadata_pool_;
  // Last: its thread calls into the rest, so it goes first.
  std::unique_ptr<PageInvalidations> page_invalidations_;
};

}  // namespace bucketfs::fs
