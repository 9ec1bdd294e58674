// Writeback: every file being written, from the first write(2) until its bytes are an object
// in S3: spooled on local disk, uploaded in parallel parts while the program still writes,
// committed on close, durable on fsync, resumed after a crash.
//
// Contract:
//  - Thread-safe. One DirtyFile per key at a time; every handle writing the key shares it.
//  - Data path: write() puts the bytes in the file's spool file (cache/spool.h) and returns.
//    A part (cache/part_layout.h) whose bytes are all written is uploaded at once, in the
//    background, while the program writes on ("eager" parts); on commit the rest of the
//    parts are uploaded in parallel and the upload completed. A file of at most one part is
//    a single PUT. Part buffers are charged to the global MemoryBudget: writers wait for
//    memory instead of the daemon growing.
//  - Part assembly (the streaming writer's fast path): from the second part on, a program
//    appending at the file's end at a part boundary has its bytes copied into a part buffer
//    instead of the spool. When the part is full it is written to the spool in one
//    O_DIRECT write (no page-cache copy, no dirty pages for the kernel to flush) and the
//    same buffer is uploaded, without reading the spool back; a full part that waits
//    behind a full set of uploads gives its buffer back and is later read with O_DIRECT
//    too. Before this the daemon spent about half its CPU of a 1 GiB `dd` copying into the
//    spool's page cache.
//    - Whatever else touches the file first writes the assembled bytes to the spool
//      ("spill"): another write, close (every FLUSH), fsync, a commit, a truncate that
//      grows the file; and the background loop, once no write touched the assembly for
//      `assembly_idle` (2 s). A read of assembled bytes copies them from memory, and a
//      truncate into them shortens the assembly: neither needs disk space.
//    - Bounds: one part per file; at most `upload_parallelism` files at once (and an
//      eighth of the budget); only parts up to 64 MiB (the file's lock is held during the
//      O_DIRECT write); only when the budget has room at once (TryReserve). Otherwise the
//      bytes go to the spool as before.
//    - A failed spill (a full spool disk) keeps the bytes in memory and returns kNoSpace
//      to that write, close or fsync; the file is journaled closed only once they reach
//      the spool (the retried commit does it). What a program wrote but never closed is
//      not promised after a crash: what it wrote in the last `assembly_idle` or so (at most
//      one part) may be missing from lost+found/.
//  - Files that started as an existing object (opened without O_TRUNC): the bytes not
//    written stay in S3; reads fill them into the spool on demand (GET with If-Match of the
//    base ETag); on commit, a part no byte of which was written is copied server-side
//    (UploadPartCopy) instead of being downloaded and sent again.
//  - Commit: when the last writer releases the file (close), a commit starts at once in
//    the background; Sync() (fsync) commits now and returns only when S3 has the object,
//    or with the error. The first failed commit's error is sticky: Write(), Sync() and the
//    next close report it (EIO, ENOSPC, EACCES, ESTALE as fits) until a retry succeeds;
//    the data stays in the spool and failed commits are retried in the background with
//    backoff (a precondition failure — someone else changed the object — is not retried:
//    it needs a person, and the spool file is kept for them).
//  - Preconditions: a file created with O_EXCL commits with If-None-Match: *; a file that
//    started as an existing object commits with If-Match of that object's ETag (of the
//    version this daemon last committed, after the first commit).
//  - Journal: the spool record of a file is "open" while a writer has it and "closed" after
//    the last release; Recover() (before the mount is served) commits every closed record
//    a previous daemon left. Records still "open" (their writer never closed) are moved to
//    the spool's lost+found/ and logged: uploading them could replace a good object with a
//    half-written one. Multipart uploads the previous daemon started and never finished
//    are aborted first (cache/upload_ledger.h).
//  - Part buffers: a part is read from the spool into a buffer of its own, charged to the
//    budget. Buffers of the standard part size are kept between parts while uploads are
//    running (at most 2 × `upload_parallelism` + 1, and an eighth of the budget), so a long
//    write reuses them instead of mapping fresh pages the kernel must zero; when no part is
//    in flight the spares are freed, so an idle daemon holds none. So no part may be
//    larger than an eighth of the budget (two in flight fit in the quarter the cache
//    leaves): part sizes grow along the file (cache/part_layout.h) only up to that, and a
//    write or truncate past the largest file such parts hold (max_file_size()) is
//    kEntityTooLarge (EFBIG), saying to raise --max-memory, instead of a file that could
//    never be uploaded. A file that starts as a larger object keeps the uncapped layout:
//    its untouched parts are copied server-side, and only a write to a part larger than
//    the cap is EFBIG.
//  - Integrity: every part and PUT is sent with its SHA-256 payload hash in the SigV4
//    signature, which the server verifies (a mismatch is kBadDigest, retried by the client,
//    then reported).
//  - Listener: after each successful commit the listener hears the key's new ETag, size and
//    metadata (the filesystem updates its inode and listings from it).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "cache/extent_set.h"
#include "cache/mapped_buffer.h"
#include "cache/memory_budget.h"
#include "cache/part_layout.h"
#include "cache/read_ahead.h"
#include "cache/spool.h"
#include "common/clock.h"
#include "common/status.h"
#include "common/task_pool.h"
#include "s3/object_client.h"

namespace bucketfs::cache {

struct WritebackOptions {
  uint64_t part_size = 8ull << 20;    // The first parts' size; see PartLayout.
  size_t upload_parallelism = 8;      // Part uploads in flight, across all files.
  size_t commit_parallelism = 16;     // Files committing at once (a small file is one PUT).
  bool assemble_parts = true;         // See "Part assembly" (off: every byte via the spool).
  // A part being assembled that no write touched for this long is written to the spool
  // (checked every second): a writer that pauses mid-part neither holds a part buffer nor
  // leaves its bytes only in memory for longer.
  Duration assembly_idle = std::chrono::seconds(2);
  Duration request_timeout = std::chrono::seconds(120);  // Deadline of each S3 call.
  Duration first_retry = std::chrono::seconds(5);        // Then doubling, up to max_retry.
  Duration max_retry = std::chrono::minutes(5);
};

struct WriteContext {
  s3::ObjectClient* client = nullptr;
  MemoryBudget* budget = nullptr;
  Spool* spool = nullptr;
  Clock* clock = nullptr;  // nullptr: RealClock().
};

// x-amz-meta-mtime as s3fs writes it: decimal seconds, with a fraction only when needed.
std::string EncodeMtime(WallTime t);
// Its inverse, exact to the nanosecond ("1700000000", "1700000000.25"); nullopt if `text`
// is not such a number.
std::optional<WallTime> DecodeMtime(const std::string& text);

// What a file starts as when opened for writing without O_TRUNC.
struct BaseObject {
  std::string etag;
  uint64_t size = 0;
  // The object's mtime (x-amz-meta-mtime, else Last-Modified): the file keeps it until a
  // write, a truncate or utimens changes it, so that a chmod or an open that writes
  // nothing does not stamp the object with the time of day. Unset: now.
  std::optional<WallTime> mtime;
};

// What the listener hears after a commit.
struct CommittedObject {
  std::string key;
  std::string etag;
  uint64_t size = 0;
  s3::UserMetadata metadata;
};

// The attributes a dirty file shows.
struct DirtyAttributes {
  uint64_t size = 0;
  WallTime mtime{};
  s3::UserMetadata metadata;  // As it will be stored (mode, uid, gid; mtime added on commit).
};

class Writeback;

// A part's buffer with its budget bytes (see "Part buffers"). Taken from and given back to
// the Writeback (TakePartBuffer / GivePartBuffer), which keeps spares.
struct PartBuffer {
  MappedBuffer buffer;
  Reservation charge;
};

class DirtyFile : public std::enable_shared_from_this<DirtyFile> {
 public:
  const std::string& id() const { return id_; }
  std::string key() const;

  // Writes `data` at `offset`. kNoSpace when the spool disk is full; the sticky error of a
  // failed commit otherwise.
  Status Write(uint64_t offset, std::span<const char> data);
  Status Truncate(uint64_t size);
  // Reads [offset, offset + size) clipped to the file's size.
  Result<ReadReply> Read(uint64_t offset, size_t size);
  // Replaces the stored metadata entries in `changes` (mode, uid, gid) and the mtime.
  void SetMetadata(const s3::UserMetadata& changes, std::optional<WallTime> mtime);

  DirtyAttributes Attributes() const;
  // The sticky error, if a commit failed.
  Status Error() const;
  // A write to this file was refused (the mount is fenced): its bytes are no longer what its
  // program wrote, so it is never journaled as closed nor committed from here on (fsync
  // and every close(2) fail with kReadOnly saying so). At its last release it is set aside:
  // its spool file moves to lost+found/, and the next open of the key starts from S3. A
  // daemon stopped before then leaves its record "open", and the next Recover() moves it
  // to lost+found/ instead of uploading a torn file.
  // Except when nothing changed since its last close (the refused write was the first of a
  // reopen): then the closed version is whole, stays committable (now or by the next
  // mount), and false is returned; the caller refuses further writes of that descriptor.
  bool MarkTorn();
  bool torn() const;

  ~DirtyFile();

 private:
  friend class Writeback;
  struct PartState {
    uint64_t version = 0;           // Bumped by every change to the part's bytes.
    uint64_t uploaded_version = 0;  // The version `etag` holds (valid when etag is set).
    uint64_t uploaded_size = 0;
    uint64_t direct_version = 0;    // The version written to the spool by O_DIRECT, if any.
    std::string etag;
    bool eager_in_flight = false;
  };
  struct CommitPlan;
  // Parts above this are not assembled: the file's lock is held for the O_DIRECT write.
  static constexpr uint64_t kMaxAssembledPart = 64ull << 20;
  // The part a streaming writer is filling (see "Part assembly"). It always ends at size_:
  // any write elsewhere spills it first.
  struct Assembly {
    PartSpan span;
    uint64_t filled = 0;  // Bytes [span.offset, span.offset + filled) are in `buffer`.
    PartBuffer buffer;
    MonoTime touched{};  // The last write into it.
  };
  // A full part just written to the spool, with its bytes still in memory for the upload.
  struct AssembledPart {
    int number = 0;
    uint64_t version = 0;  // The part's version the bytes are; stale once it changes.
    PartBuffer buffer;
  };

  DirtyFile(Writeback& owner, std::string key, std::string id, int fd);
  // kEntityTooLarge when writing [begin, end) would make a file that cannot be uploaded.
  Status CheckWriteRange(uint64_t begin, uint64_t end) const;

  // Requires mu_. Takes the front of `data` (at `offset`), up to the part's end, into the
  // assembly when it continues it, or starts one when the write opens a fresh part at the
  // file's end; returns the bytes taken (0: the caller writes them to the spool, after
  // SpillLocked). A part made full is written to the spool and appended to `full`.
  Result<size_t> AssembleLocked(uint64_t offset, std::span<const char> data,
                                std::vector<AssembledPart>& full);
  // Requires mu_. Writes `data` at `begin` to the spool file (the assembly must not
  // overlap it).
  Status WriteSpoolLocked(uint64_t begin, std::span<const char> data);
  // Requires mu_. Writes the assembled bytes to the spool (O_DIRECT when the part is full
  // and aligned). On failure the assembly is kept, for the next spill to retry.
  Status WriteAssemblyLocked();
  // Requires mu_. Writes the assembled bytes to the spool and frees the buffer; Ok when
  // there is no assembly.
  Status SpillLocked();
  // Spills the assembly if no write touched it since `idle_since`. A failure (a full disk)
  // keeps it; the next write, close or spill reports it.
  void SpillIfIdle(MonoTime idle_since);
  // Requires mu_. An O_DIRECT descriptor of the spool file, or -1 when the spool's
  // filesystem refuses O_DIRECT (the buffered one is used then).
  int DirectFdLocked();

  // Requires mu_. Marks [begin, end) changed: bumps the versions of the parts it touches.
  void TouchLocked(uint64_t begin, uint64_t end);
  // Requires mu_. Parts completely written by now that are worth uploading early.
  std::vector<int> EagerPartsLocked(uint64_t begin, uint64_t end);
  // Reads [begin, end) of the file into `into`: the spool's bytes, and the base object's
  // ([0, base_limit)) where the spool lacks them, kept in the spool when it has room (a
  // full spool disk fails no read or commit: the fetched bytes are in `into` already).
  // Tried again (twice at most) when the base changed under it to this file's own newer
  // version (its commit landed): kStale only for someone else's change.
  Status ReadThrough(uint64_t begin, uint64_t end, std::span<char> into);
  // One try at the base object's part of ReadThrough: GETs what the spool lacks into
  // `scratch` (laid out from `begin`), says which key and ETag it read and which extents
  // it fetched (in order).
  Status FillFrom(uint64_t begin, uint64_t end, std::span<char> scratch, std::string* used_key,
                  std::string* used_etag, std::vector<Extent>* fetched);
  // Creates the multipart upload unless there is one; `meta_generation` is that of
  // `metadata`. `early`: for an early part (which gives up while early uploads are paused
  // by a failure, and pauses them when its own creation fails).
  Status EnsureUpload(const s3::UserMetadata& metadata, uint64_t meta_generation,
                      bool early = false);
  // Uploads part `number` as it is now (copying it server-side when `copy`). `assembled`:
  // the part's bytes, already in memory (used when still current, else the spool is read).
  Status UploadPart(int number, uint64_t file_size, bool copy,
                    std::optional<AssembledPart> assembled = std::nullopt);
  void RunEagerPart(int number, std::optional<AssembledPart> assembled);
  // Uploads the file as it is now. Requires committing_ (set by Commit).
  Status CommitOnce();
  // CommitOnce, serialised with other commits of this file. `unless_being_written` (the
  // commits the writeback starts on its own: at a last close, a retry, a change after a
  // commit): does nothing while a writer has changed the file since its last FLUSH, since
  // its bytes may be half-written (no such version reaches S3); the writer's close starts
  // the commit again. fsync, a rename and Drain() commit what is there.
  Status Commit(bool unless_being_written = false);
  // The whole upload of a multipart file of `size` bytes; returns the new ETag.
  Result<std::string> UploadMultipart(const std::string& key, uint64_t size,
                                      const s3::UserMetadata& metadata, uint64_t meta_generation,
                                      const s3::WriteCondition& condition);
  // The commit's bytes (data_generation, `size` of them) are in S3 as `etag`: the base
  // of the next commit, and an object a rename must move.
  void NoteLandedLocked(const std::string& etag, uint64_t size, uint64_t data_generation);
  // kCancelled if the file was cut below `size` (the commit's) since the commit began.
  Status CutWhileReadLocked(const std::string& key, uint64_t size) const;
  Result<std::string> PutWhole(const std::string& key, uint64_t size,
                               const s3::UserMetadata& metadata,
                               const s3::WriteCondition& condition);
  // Requires mu_. The metadata an upload starting now stores.
  s3::UserMetadata UploadMetadataLocked() const;
  SpoolRecord RecordLocked() const;
  Status JournalLocked();
  // Waits until no commit and no early part is under way; no new early part starts while
  // it waits (eager_waiters_). `lock` holds mu_.
  void WaitUntilSettledLocked(std::unique_lock<std::mutex>& lock);
  // Requires mu_ and closed_. Journals the file as open again (a crash from here on keeps it
  // in lost+found/); on failure it stays closed, and the caller must change nothing.
  Status JournalReopenedLocked();
  // Requires mu_. Never committed again; its spool record goes now, its data with the file.
  void MarkUnlinkedLocked();
  // Requires mu_. Spills the assembly and journals the file as closed (a crash from here on
  // uploads it). Not Ok (and not journaled closed) when the spill or the journal failed.
  Status MarkClosedLocked();
  // Requires mu_. Why a torn file is not committed.
  Status TornLocked() const;
  // Requires mu_. Journals that the commit under way lands as `etag` (a closed file only:
  // an open one is not recovered).
  void JournalLandingLocked(const std::string& etag);

  Writeback& owner_;
  const std::string id_;
  const int fd_;
  int direct_fd_ = -1;         // Opened at the first full assembled part; -1 before/never.
  bool direct_tried_ = false;

  mutable std::mutex mu_;
  std::condition_variable changed_;  // With mu_: a commit or an eager part finished.
  std::string key_;
  std::string base_etag_;      // Empty: no object to keep bytes from, or to If-Match.
  uint64_t base_limit_ = 0;    // Bytes [0, base_limit_) not present come from the base.
  bool create_only_ = false;
  bool exists_remotely_ = false;  // An object is at key_ (the base, or our commit).
  uint64_t size_ = 0;
  ExtentSet present_;
  WallTime mtime_{};
  s3::UserMetadata metadata_;
  uint64_t data_generation_ = 0, committed_data_generation_ = 0;
  uint64_t meta_generation_ = 0, committed_meta_generation_ = 0;
  std::map<int, PartState> parts_;
  std::optional<Assembly> assembly_;
  // The commit under way: the generations it uploads, and the ETag it will land as once
  // its final request is sent (SpoolRecord::landing_etag; valid while the generations
  // still match the file's).
  uint64_t committing_data_generation_ = 0, committing_meta_generation_ = 0;
  std::string landing_etag_;
  uint64_t landing_data_generation_ = 0, landing_meta_generation_ = 0;
  const PartLayout* layout_;  // The owner's layout_, or uncapped_layout_ (set once, at open).
  std::string upload_id_;
  uint64_t upload_meta_generation_ = 0;  // The metadata the multipart upload carries.
  std::string upload_mtime_;  // Its "mtime" entry: what the object will store.
  int highest_part_sent_ = 0;             // Of upload_id_.
  bool creating_upload_ = false;
  Status create_error_;  // What the last failed CreateMultipart answered.
  int eager_in_flight_ = 0;
  // Callers waiting for eager_in_flight_ to reach 0 (a rename, a commit hold): no new early
  // part starts meanwhile, or a writer streaming faster than the uploads would keep it
  // above 0, and `mv` of a file being downloaded would wait for the download to end.
  int eager_waiters_ = 0;
  // An eager part failed: no more are started (nor those queued sent) until this time
  // (options' first_retry later) or the next commit, so that a server that is down costs
  // a commit one request deadline, not one per part, and a passing error does not stop
  // early uploads for the rest of a long write.
  MonoTime eager_paused_until_{};
  // Early parts that failed at their deadline (the server did not answer in time), and the
  // last such error. A commit that waited for early parts and saw this count rise reports
  // that error instead of sending the parts again at once, so an fsync against a server
  // that does not answer fails after one deadline, not two. Quicker failures (a 5xx after
  // the client's retries) are sent again by the commit: that costs little.
  uint64_t eager_timeouts_ = 0;
  Status eager_timeout_error_;
  bool committing_ = false;
  int writers_ = 0;
  int unflushed_writers_ = 0;  // Writers that changed the file since their last FLUSH.
  bool closed_ = false;     // The journal says closed.
  bool torn_ = false;       // A write was refused: never journal closed (MarkTorn).
  bool unlinked_ = false;   // Never commit again; remove the spool when the last user goes.
  bool conflict_ = false;   // A precondition failed: do not retry.
  bool remove_on_destroy_ = false;  // Drop the spool data when the last user lets go.
  uint64_t min_size_since_snapshot_ = 0;  // Lowest size_ since the commit's snapshot.
  Status error_;
  MonoTime next_retry_{};
  Duration retry_delay_{};
};

class Writeback {
 public:
  Writeback(const WriteContext& context, WritebackOptions options);
  // Waits for commits in flight (call Drain() first to commit everything).
  ~Writeback();
  Writeback(const Writeback&) = delete;
  Writeback& operator=(const Writeback&) = delete;

  // Told of every commit, on the thread that made it, with no lock of the writeback's held
  // but the listener's own. SetListener returns once no call of the listener it replaces is
  // running, so the old listener's owner may be destroyed then (a commit of the retry thread
  // can end while the filesystem that listens is being torn down).
  using Listener = std::function<void(const CommittedObject&)>;
  void SetListener(Listener listener);

  // Opens `key` for writing: the existing DirtyFile, or a new one starting as `base`
  // (nullopt: an empty new file, with `metadata`). Every call must be paired with
  // ReleaseWriter().
  Result<std::shared_ptr<DirtyFile>> OpenForWrite(const std::string& key,
                                                  const std::optional<BaseObject>& base,
                                                  const s3::UserMetadata& metadata,
                                                  bool create_only);
  // Opens the existing DirtyFile of `key` for writing (pair it with ReleaseWriter()), or
  // nullptr when there is none. Opening an existing file goes through this first, and
  // only on nullptr asks S3 for the base: a dirty file that settles between a Find() and
  // OpenForWrite(key, nullopt, ...) would otherwise be reopened as a new empty file, and
  // its commit would overwrite the object.
  std::shared_ptr<DirtyFile> ReopenForWrite(const std::string& key);
  // A writer (an open file of the kernel's, a FUSE handle) changed the file for the first
  // time since its last FLUSH: until it flushes, a crash must not upload the file.
  void WriterChanged(const std::shared_ptr<DirtyFile>& file);
  // A writer's close(2) (FLUSH); `writer_changed`: it had called WriterChanged() since its
  // last FLUSH. Once no writer has unflushed changes, the file is journaled as closed: the
  // kernel's RELEASEs come later, asynchronously, and a crash must not lose a file every
  // close() returned for, even while another writer that wrote nothing since its own
  // close is still open. The commit starts at the last RELEASE (ReleaseWriter), when no
  // descriptor is left to write through. Not Ok when the bytes still assembled in memory
  // cannot reach the spool (kNoSpace), or the record cannot say closed: close() must say so.
  Status Flushed(const std::shared_ptr<DirtyFile>& file, bool writer_changed = false);
  // A writer's release (`writer_changed`: released with unflushed changes). The last one
  // journals the file as closed and starts its commit; an earlier one journals it closed
  // if no writer left has unflushed changes (a change of our own, like a truncate by path,
  // reopened it).
  void ReleaseWriter(const std::shared_ptr<DirtyFile>& file, bool writer_changed = false);
  // Commits now and waits (fsync). Ok at once when nothing changed since the last commit.
  Status Sync(const std::shared_ptr<DirtyFile>& file);

  // The dirty file of `key`, or nullptr.
  std::shared_ptr<DirtyFile> Find(const std::string& key) const;
  // Dirty files whose keys start with `prefix`.
  std::vector<std::shared_ptr<DirtyFile>> Under(const std::string& prefix) const;

  // `from` is being renamed to `to`. A file never committed just changes key (kMoved); one
  // that exists in S3 is committed first and its object copied to `to` (kCopied: the
  // caller deletes `from`). kNotDirty: no dirty file has `from`; the caller renames the
  // object itself. (Asking Find() first would race with a commit that just finished.)
  // `copy_etag` (optional): for kCopied, the copy's ETag, which differs from the source's
  // when that is a multipart object (empty when the server told none).
  enum class RenameOutcome { kNotDirty, kMoved, kCopied };
  Result<RenameOutcome> Rename(const std::string& from, const std::string& to,
                               std::string* copy_etag = nullptr);
  // The key is unlinked: its dirty data will never be committed.
  void Unlink(const std::string& key);

  // Keeps the dirty file of a key from committing while an operation that may replace it
  // runs (a rename over it): the hold waits for a commit or early parts in flight, then no
  // commit starts until it ends. Discard() when the operation succeeded: the held file's
  // data is dropped, as Unlink() would, but only that file's (a file moved to the key
  // meanwhile is not touched). Let it go without Discard() when the operation failed: the
  // file is as it was, and its commit, retry or the next close goes on. Move-only; an
  // empty hold (no dirty file had the key) does nothing.
  class CommitHold {
   public:
    CommitHold() = default;
    CommitHold(CommitHold&& other) noexcept
        : owner_(std::exchange(other.owner_, nullptr)), file_(std::move(other.file_)) {}
    CommitHold& operator=(CommitHold&& other) noexcept;
    CommitHold(const CommitHold&) = delete;
    CommitHold& operator=(const CommitHold&) = delete;
    ~CommitHold();
    void Discard();

   private:
    friend class Writeback;
    // Ends the hold without discarding: commits may start again.
    void Release();
    CommitHold(Writeback* owner, std::shared_ptr<DirtyFile> file)
        : owner_(owner), file_(std::move(file)) {}
    Writeback* owner_ = nullptr;
    std::shared_ptr<DirtyFile> file_;
  };
  CommitHold HoldCommits(const std::string& key);

  // The largest file this writeback can upload (see "Part buffers" above).
  uint64_t max_file_size() const { return layout_.max_file_size(); }

  // Commits every closed file a previous daemon left in the spool. Returns the number
  // committed; failures are logged and kept in the spool (and retried in the background).
  // First aborts the multipart uploads a killed daemon left unfinished
  // (cache/upload_ledger.h; noted only when the context's client is a LedgeredClient).
  size_t Recover();
  // Commits every dirty file and waits, until `deadline`. Not OK if any failed (their data
  // stays in the spool for the next mount). With `closed_only`, files a program changed and
  // has not closed since are not committed (a forced unmount, or a daemon stopped by a
  // signal, must not upload a half-written file); they count as not drained (kBusy).
  Status Drain(MonoTime deadline, bool closed_only = false);

  using PartBuffer = cache::PartBuffer;

  struct Stats {
    size_t dirty_files = 0;
    uint64_t dirty_bytes = 0;
    size_t commits_in_flight = 0;  // Commits running or waiting for a thread (one file may
                                   // have a second queued behind a running one).
    size_t parts_queued = 0;       // Part uploads waiting for an upload slot.
    size_t eager_parts = 0;        // Early part uploads queued or running.
    size_t failing_files = 0;  // Files whose last commit failed (sticky error).
    std::string first_error;   // One of their errors, for `bucketfs status`.
    // commits: succeeded; failed_commits: failed (retried later); restarted_commits: given up
    // because the file changed meanwhile, and started again.
    uint64_t commits = 0, failed_commits = 0, restarted_commits = 0, parts_uploaded = 0,
             parts_copied = 0,
             bytes_uploaded = 0;
    uint64_t part_buffers_reused = 0;  // Parts read into a spare buffer (no fresh pages).
    size_t assemblies = 0;         // Parts being filled in memory now.
    uint64_t parts_assembled = 0;  // Full parts a streaming writer filled in memory.
    uint64_t parts_sent_from_memory = 0;  // Of those, uploaded without reading the spool.
  };
  Stats GetStats() const;

 private:
  friend class DirtyFile;
  // Commits an fsync tries when writes keep overtaking them (see Sync()).
  static constexpr int kSyncAttempts = 4;

  std::shared_ptr<DirtyFile> Adopt(const SpoolRecord& record, int fd);
  // `record` names the ETag its last commit was landing as: if the key has it, that commit
  // landed before the daemon stopped, and `file` has only metadata left to commit, if any.
  void AdoptLanded(DirtyFile& file, const SpoolRecord& record);
  // A torn file's last writer is gone: moves its spool file to lost+found/ and forgets it.
  void SetAsideTorn(const std::shared_ptr<DirtyFile>& file);
  // Counts a commit of `file` in flight and runs it in the background; by default it
  // waits for a writer with changes pending (DirtyFile::Commit).
  void StartCommit(const std::shared_ptr<DirtyFile>& file, bool unless_being_written = true);
  // Runs it; the caller has counted it in flight already (under mu_).
  void SubmitCommit(const std::shared_ptr<DirtyFile>& file, bool unless_being_written = true);
  // Commits `file` on this thread, counted in flight, trying again (up to kSyncAttempts in
  // all) a commit that a change overtook, and settles it; returns the last attempt's status.
  Status CommitNow(const std::shared_ptr<DirtyFile>& file);
  // After a commit of `file` ended (ok or not): drop it when clean, or schedule a retry.
  void Settle(const std::shared_ptr<DirtyFile>& file, const Status& result);
  void RetryLoop();
  void Notify(const CommittedObject& committed);
  // A buffer of `bytes` for a part: a spare when one fits, else budget bytes (waiting for
  // them, until the request deadline, with the spares freed) and a new mapping. Give it
  // back with GivePartBuffer.
  Result<PartBuffer> TakePartBuffer(uint64_t bytes);
  // Keeps `part` as a spare if allowed (nothing waits for budget bytes), else frees it;
  // frees every spare once no part buffer is out.
  void GivePartBuffer(PartBuffer part);
  // Requires spare_mu_. Whether a given-back `part` may stay as a spare: a whole part's
  // size, room among the spares, and nothing waiting for a part buffer or budget bytes.
  bool KeepsAsSpareLocked(const PartBuffer& part) const;
  // Requires spare_mu_. A spare buffer for `bytes` (counted as reused), or nullopt.
  std::optional<PartBuffer> TakeSpareLocked(uint64_t bytes);
  // A buffer of `bytes` for an assembly now, or nullopt: when fewer than max_assemblies_
  // exist, a spare or budget bytes that fit without waiting. Assembly buffers are not
  // parts out: a slow appender's assembly may live for hours, and must not keep the spares.
  std::optional<PartBuffer> TakeAssemblyBuffer(uint64_t bytes);
  // An assembly's part is full: its buffer now counts as a part out (GivePartBuffer it).
  void AssemblyBecomesPart();
  // An assembly's buffer, spilled or dropped.
  void GiveAssemblyBuffer(PartBuffer part);
  MonoTime Deadline() const { return clock_.Now() + options_.request_timeout; }
  // Why a file cannot grow past layout_.max_file_size().
  Status FileTooLarge() const;

  s3::ObjectClient& client_;
  MemoryBudget& budget_;
  Spool& spool_;
  Clock& clock_;
  const WritebackOptions options_;
  const PartLayout layout_;  // Parts capped at an eighth of the budget (see "Part buffers").
  // For files that start as an object larger than layout_ holds: their untouched parts are
  // copied server-side, so only the parts written to must fit the cap.
  const PartLayout uncapped_layout_;

  mutable std::mutex mu_;
  std::condition_variable settled_;  // With mu_: a commit ended, or stopping_.
  std::unordered_map<std::string, std::shared_ptr<DirtyFile>> files_;  // Guarded by mu_.
  size_t commits_in_flight_ = 0;                                       // Guarded by mu_.
  bool stopping_ = false;                                              // Guarded by mu_.
  std::shared_mutex listener_mu_;  // Shared while the listener is called; see SetListener.
  Listener listener_;              // Guarded by listener_mu_.

  struct Counters {
    std::atomic<uint64_t> commits{0}, failed_commits{0}, restarted_commits{0}, parts_uploaded{0},
        parts_copied{0},
        bytes_uploaded{0}, part_buffers_reused{0}, parts_assembled{0}, parts_sent_from_memory{0};
  };
  Counters counters_;

  mutable std::mutex spare_mu_;
  std::vector<PartBuffer> spare_parts_;  // Guarded by spare_mu_. Each options_.part_size.
  size_t parts_out_ = 0;                 // Guarded by spare_mu_. Buffers taken, not given.
  // TakePartBuffer()s waiting for budget bytes (spare_mu_): while any waits, or anything
  // else waits for budget bytes (a small file's PUT, the read cache), a buffer given back
  // is freed, not kept as a spare that the waiter could not use.
  size_t part_waiters_ = 0;
  const size_t max_spare_parts_;
  size_t assemblies_ = 0;  // Guarded by spare_mu_. Assembly buffers held by files.
  // At most upload_parallelism, and an eighth of the budget: idle appenders (a log) keep
  // theirs for as long as their part takes to fill.
  const size_t max_assemblies_;

  // Declared last: destroyed first, so no task runs on a half-destroyed Writeback.
  std::unique_ptr<TaskPool> parts_pool_;
  std::unique_ptr<TaskPool> commit_pool_;
  std::thread retry_thread_;
};

}  // namespace bucketfs::cache
