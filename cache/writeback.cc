#include "cache/writeback.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <latch>
#include <tuple>

#include "cache/lost_reply.h"
#include "cache/mapped_buffer.h"
#include "cache/object_copy.h"
#include "cache/upload_ledger.h"
#include "common/format_bytes.h"
#include "common/log.h"
#include "s3/crypto.h"

namespace bucketfs::cache {
namespace {

Status SpoolIoError(int err, const std::string& what, const Spool& spool) {
  return spool.IoError(err, what);
}

// `done` (optional): the bytes written, also when it fails.
Status PwriteAll(int fd, const char* data, size_t size, uint64_t offset, const Spool& spool,
                 uint64_t* done = nullptr) {
  while (size > 0) {
    const ssize_t n = ::pwrite(fd, data, size, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return SpoolIoError(errno, "writing the spool file", spool);
    }
    data += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
    if (done != nullptr) *done += static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

// One O_DIRECT pread or pwrite (`io`), retried on EINTR only: the bytes it moved, 0 when it
// was refused. The caller moves the rest through the buffered descriptor, which also
// reports any error.
template <typename Io>
uint64_t DirectTransfer(Io io) {
  for (;;) {
    const ssize_t n = io();
    if (n < 0 && errno == EINTR) continue;
    return n > 0 ? static_cast<uint64_t>(n) : 0;
  }
}

// Reads [offset, offset + size); bytes past the spool file's end read as zeros (a file
// truncated meanwhile: the part's version check discards what this read).
Status PreadAll(int fd, char* data, size_t size, uint64_t offset, const Spool& spool) {
  while (size > 0) {
    const ssize_t n = ::pread(fd, data, size, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return SpoolIoError(errno, "reading the spool file", spool);
    }
    if (n == 0) {
      std::memset(data, 0, size);
      return Status::Ok();
    }
    data += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

}  // namespace

std::string EncodeMtime(WallTime t) {
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
  const long long secs = ns / 1'000'000'000;
  const long long frac = ns % 1'000'000'000;
  if (frac == 0) return std::to_string(secs);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%lld.%09lld", secs, frac);
  std::string s = buf;
  while (s.back() == '0') s.pop_back();
  return s;
}

std::optional<WallTime> DecodeMtime(const std::string& text) {
  const auto dot = text.find('.');
  const std::string whole = text.substr(0, dot);
  const std::string frac = dot == std::string::npos ? "" : text.substr(dot + 1);
  auto digits = [](const std::string& s) {
    return std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
  };
  if (whole.empty() || whole.size() > 12 || !digits(whole) || !digits(frac) ||
      (dot != std::string::npos && frac.empty())) {
    return std::nullopt;
  }
  int64_t ns = 0;
  for (size_t i = 0; i < 9; ++i) ns = ns * 10 + (i < frac.size() ? frac[i] - '0' : 0);
  return WallTime(std::chrono::duration_cast<WallTime::duration>(
      std::chrono::seconds(std::stoll(whole)) + std::chrono::nanoseconds(ns)));
}

namespace {

// A failed commit, as the program and the log should see it.
Status Explain(const Status& s, const std::string& key, const std::string& spool_path) {
  switch (s.code()) {
    case ErrorCode::kPreconditionFailed:
    case ErrorCode::kNotFound:
      return Status(ErrorCode::kStale,
                    "'" + key + "' was changed or deleted in the bucket by someone else while "
                    "it was being written here; not overwritten. The data written here is "
                    "kept in " + spool_path);
    default:
      return s;
  }
}

}  // namespace

// --- DirtyFile ---------------------------------------------------------------------------

DirtyFile::DirtyFile(Writeback& owner, std::string key, std::string id, int fd)
    : owner_(owner), id_(std::move(id)), fd_(fd), key_(std::move(key)), layout_(&owner.layout_) {}

Status DirtyFile::CheckWriteRange(uint64_t begin, uint64_t end) const {
  if (end <= begin) return Status::Ok();
  if (end > layout_->max_file_size()) return owner_.FileTooLarge();
  // A file on the layout without the cap (it started as an object larger than the capped
  // one holds): parts are copied server-side where untouched, but a written part is read
  // into memory, so it must fit the cap.
  if (layout_ == &owner_.layout_) return Status::Ok();  // Every part fits the cap.
  const uint64_t cap = owner_.layout_.max_part_size();
  for (PartSpan span = layout_->PartAt(begin); span.offset < end; span = layout_->Part(span.number + 1)) {
    if (span.size > cap) {
      return Status(ErrorCode::kEntityTooLarge,
                    "this file is written in parts of " + FormatBytes(span.size) +
                        " from offset " + FormatBytes(span.offset) + ", and a part written to "
                        "is uploaded from memory: at most " + FormatBytes(cap) + " with --max-memory " +
                        FormatBytes(owner_.budget_.capacity()) + "; mount with a larger --max-memory "
                        "to change this part of the file");
    }
  }
  return Status::Ok();
}

DirtyFile::~DirtyFile() {
  if (assembly_) {
    // A file still open for writing when the daemon stops: its spool file (kept for
    // lost+found) gets what was assembled too.
    if (!unlinked_ && assembly_->filled > 0) {
      if (Status spilled = WriteAssemblyLocked(); !spilled.ok()) {
        Logger("writeback")->error("{} bytes of '{}' after offset {} never reached the spool: {}",
                                   assembly_->filled, key_, assembly_->span.offset,
                                   spilled.ToString());
      }
    }
    owner_.GiveAssemblyBuffer(std::move(assembly_->buffer));
  }
  if (direct_fd_ >= 0) ::close(direct_fd_);
  ::close(fd_);
  if (remove_on_destroy_) owner_.spool_.Remove(id_);
}

std::string DirtyFile::key() const {
  std::lock_guard lock(mu_);
  return key_;
}

DirtyAttributes DirtyFile::Attributes() const {
  std::lock_guard lock(mu_);
  return DirtyAttributes{size_, mtime_, metadata_};
}

Status DirtyFile::Error() const {
  std::lock_guard lock(mu_);
  return error_;
}

void DirtyFile::TouchLocked(uint64_t begin, uint64_t end) {
  if (begin >= end) return;
  const int first = layout_->PartAt(begin).number;
  const int last = layout_->PartAt(end - 1).number;
  for (int n = first; n <= last; ++n) ++parts_[n].version;
}

std::vector<int> DirtyFile::EagerPartsLocked(uint64_t begin, uint64_t end) {
  std::vector<int> eager;
  if (unlinked_ || committing_ || eager_waiters_ > 0 || begin >= end) return eager;
  if (owner_.clock_.Now() < eager_paused_until_) return eager;
  const size_t cap = owner_.options_.upload_parallelism * 2;
  for (PartSpan span = layout_->PartAt(begin); span.offset < end;
       span = layout_->Part(span.number + 1)) {
    if (span.number > s3::kMaxParts) break;
    // Only parts this write finished, that lie wholly inside the file and are all here.
    if (span.end() > end || span.end() > size_) continue;
    if (!present_.Covers(span.offset, span.end())) continue;
    PartState& part = parts_[span.number];
    if (part.eager_in_flight) continue;
    if (!part.etag.empty() && part.uploaded_version == part.version) continue;
    if (static_cast<size_t>(eager_in_flight_) >= cap) break;  // The commit will send it.
    part.eager_in_flight = true;
    ++eager_in_flight_;
    eager.push_back(span.number);
  }
  return eager;
}

Status DirtyFile::Write(uint64_t offset, std::span<const char> data) {
  BFS_RETURN_IF_ERROR(CheckWriteRange(offset, offset + data.size()));
  if (data.empty()) return Status::Ok();  // POSIX: no effect, not even on the size.
  std::vector<int> eager;
  std::vector<AssembledPart> full;  // Parts this write completed in memory.
  bool hold_buffers = false;
  Status result = Status::Ok();
  {
    std::lock_guard lock(mu_);
    if (!error_.ok() && !unlinked_) return error_;
    if (closed_ && !unlinked_) {
      // Written again after a close (through a dup'd descriptor): a crash now must not
      // upload a half-rewritten file. Refused (nothing written) until the record says so.
      BFS_RETURN_IF_ERROR(JournalReopenedLocked());
    }
    // Part by part: the streaming writer's bytes go into the assembly; the others to the
    // spool, up to the next part boundary, where an assembly may start.
    size_t done = 0;
    while (done < data.size() && result.ok()) {
      Result<size_t> took = AssembleLocked(offset + done, data.subspan(done), full);
      if (!took.ok()) {
        result = took.status();
      } else if (*took > 0) {
        done += *took;
      } else {
        const uint64_t at = offset + done;
        const size_t n = static_cast<size_t>(
            std::min<uint64_t>(data.size() - done, layout_->PartAt(at).end() - at));
        result = SpillLocked();
        if (result.ok()) result = WriteSpoolLocked(at, data.subspan(done, n));
        if (result.ok()) done += n;
      }
    }
    if (done > 0 || result.ok()) mtime_ = owner_.clock_.WallNow();
    if (result.ok()) eager = EagerPartsLocked(offset, offset + data.size());
    // A part that waits behind a full set of uploads gives its buffer back (its upload
    // reads it from disk by O_DIRECT): memory holds the parts being sent, not the queue.
    hold_buffers = static_cast<size_t>(eager_in_flight_) <= owner_.options_.upload_parallelism;
  }
  for (int number : eager) {
    std::optional<AssembledPart> assembled;
    for (AssembledPart& part : full) {
      if (hold_buffers && part.number == number && part.buffer.buffer) {
        assembled = std::move(part);
      }
    }
    // std::function needs a copyable task: the buffer rides in a shared holder.
    auto holder = std::make_shared<std::optional<AssembledPart>>(std::move(assembled));
    owner_.parts_pool_->Submit([self = shared_from_this(), number, holder] {
      self->RunEagerPart(number, std::move(*holder));
    });
  }
  for (AssembledPart& part : full) {  // Not sent early: the commit reads the spool.
    if (part.buffer.buffer) owner_.GivePartBuffer(std::move(part.buffer));
  }
  return result;
}

Status DirtyFile::WriteSpoolLocked(uint64_t begin, std::span<const char> data) {
  const uint64_t end = begin + data.size();
  uint64_t done = 0;
  Status written = PwriteAll(fd_, data.data(), data.size(), begin, owner_.spool_, &done);
  if (!written.ok()) {
    // The prefix that reached the spool is the file's now (as on a local disk after a
    // failed write), up to its old size: past it, the spool is cut back and the size kept.
    // The rest holds what it held.
    const uint64_t written_end = std::min(begin + done, size_);
    if (end > size_) (void)::ftruncate(fd_, static_cast<off_t>(size_));
    if (begin < written_end) {
      present_.Add(begin, written_end);
      TouchLocked(begin, written_end);
      ++data_generation_;
    }
    return written;
  }
  present_.Add(begin, end);
  TouchLocked(begin, end);
  size_ = std::max(size_, end);
  ++data_generation_;
  return Status::Ok();
}

Result<size_t> DirtyFile::AssembleLocked(uint64_t offset, std::span<const char> data,
                                         std::vector<AssembledPart>& full) {
  if (assembly_ && offset != assembly_->span.offset + assembly_->filled) return 0;
  if (!assembly_) {
    if (!owner_.options_.assemble_parts) return 0;
    const PartSpan span = layout_->PartAt(offset);
    // A fresh part at the file's end: none of its bytes is in the spool or the base object.
    // The first part is left to the spool: most files are no bigger, and go as one PUT.
    if (span.number < 2 || span.number > s3::kMaxParts || offset != span.offset ||
        offset < size_ || offset < base_limit_ || unlinked_ || committing_) {
      return 0;
    }
    // A bigger part would hold the file's lock for its whole O_DIRECT write.
    if (span.size > kMaxAssembledPart) return 0;
    std::optional<PartBuffer> buffer = owner_.TakeAssemblyBuffer(span.size);
    if (!buffer) return 0;
    assembly_.emplace(Assembly{span, 0, std::move(*buffer)});
  }
  Assembly& a = *assembly_;
  const size_t n = static_cast<size_t>(std::min<uint64_t>(data.size(), a.span.size - a.filled));
  const uint64_t old_size = size_;
  std::memcpy(a.buffer.buffer.data() + a.filled, data.data(), n);
  a.filled += n;
  a.touched = owner_.clock_.Now();
  size_ = a.span.offset + a.filled;  // The assembly always ends the file.
  TouchLocked(offset, offset + n);
  ++data_generation_;
  if (a.filled < a.span.size) return n;
  if (Status spilled = WriteAssemblyLocked(); !spilled.ok()) {
    a.filled -= n;  // This write did not happen; the bytes before it wait in memory.
    size_ = old_size;
    return spilled;
  }
  owner_.counters_.parts_assembled.fetch_add(1, std::memory_order_relaxed);
  owner_.AssemblyBecomesPart();
  full.push_back(AssembledPart{a.span.number, parts_[a.span.number].version,
                               std::move(a.buffer)});
  assembly_.reset();
  return n;
}

int DirtyFile::DirectFdLocked() {
  if (!direct_tried_) {
    direct_tried_ = true;
    direct_fd_ = ::open(owner_.spool_.DataPath(id_).c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);
    if (direct_fd_ < 0) {
      Logger("writeback")->debug("the spool's filesystem refuses O_DIRECT ({}): buffered writes",
                                 std::strerror(errno));
    }
  }
  return direct_fd_;
}

Status DirtyFile::WriteAssemblyLocked() {
  Assembly& a = *assembly_;
  const char* bytes = a.buffer.buffer.data();
  uint64_t written = 0;
  struct stat before {};
  if (::fstat(fd_, &before) != 0) {
    return SpoolIoError(errno, "reading the spool file's size", owner_.spool_);
  }
  // A whole, page-aligned part in a page-aligned buffer goes around the page cache.
  constexpr uint64_t kAlign = 4096;
  if (a.filled == a.span.size && a.span.offset % kAlign == 0 && a.filled % kAlign == 0) {
    // Refused (EINVAL: an alignment the device wants) or short (a full disk): the
    // buffered descriptor writes the rest below, and reports the error if there is one.
    if (const int direct = DirectFdLocked(); direct >= 0) {
      written = DirectTransfer(
          [&] { return ::pwrite(direct, bytes, a.filled, static_cast<off_t>(a.span.offset)); });
    }
  }
  Status rest = PwriteAll(fd_, bytes + written, a.filled - written, a.span.offset + written,
                          owner_.spool_);
  if (!rest.ok()) {
    // Whatever prefix reached the disk goes again (the assembly still has every byte): the
    // spool must hold nothing past the file's end that could later show through as content
    // (a hole, or a truncate that grows the file).
    (void)::ftruncate(fd_, before.st_size);
    return rest;
  }
  present_.Add(a.span.offset, a.span.offset + a.filled);
  PartState& part = parts_[a.span.number];
  part.direct_version = written == a.filled ? part.version : 0;
  return Status::Ok();
}

Status DirtyFile::SpillLocked() {
  if (!assembly_) return Status::Ok();
  BFS_RETURN_IF_ERROR(WriteAssemblyLocked());
  owner_.GiveAssemblyBuffer(std::move(assembly_->buffer));
  assembly_.reset();
  return Status::Ok();
}

void DirtyFile::SpillIfIdle(MonoTime idle_since) {
  std::lock_guard lock(mu_);
  if (!assembly_ || assembly_->touched > idle_since) return;
  if (Status spilled = SpillLocked(); !spilled.ok()) {
    Logger("writeback")->debug("idle assembly of '{}' stays in memory: {}", key_,
                               spilled.ToString());
  }
}

Status DirtyFile::Truncate(uint64_t size) {
  std::lock_guard lock(mu_);
  // Growing writes zeros to upload; shrinking writes nothing.
  BFS_RETURN_IF_ERROR(CheckWriteRange(size_, size));
  mtime_ = owner_.clock_.WallNow();
  if (size == size_) return Status::Ok();
  if (assembly_ && size < size_) {
    // The cut bytes need no disk (a full disk must not refuse the truncate that frees it):
    // the assembly is shortened, or let go when the cut reaches its start.
    if (size <= assembly_->span.offset) {
      owner_.GiveAssemblyBuffer(std::move(assembly_->buffer));
      assembly_.reset();
    } else {
      assembly_->filled = size - assembly_->span.offset;
    }
  } else {
    BFS_RETURN_IF_ERROR(SpillLocked());  // Grown: the assembly no longer ends the file.
  }
  if (closed_ && !unlinked_) BFS_RETURN_IF_ERROR(JournalReopenedLocked());
  if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) {
    return SpoolIoError(errno, "truncating the spool file", owner_.spool_);
  }
  if (size < size_) {
    present_.TruncateTo(size);
    base_limit_ = std::min(base_limit_, size);
    TouchLocked(size, size_);
  } else {
    TouchLocked(size_, size);  // Zeros now follow the old end: its part changed.
  }
  size_ = size;
  min_size_since_snapshot_ = std::min(min_size_since_snapshot_, size);
  ++data_generation_;
  return Status::Ok();
}

void DirtyFile::SetMetadata(const s3::UserMetadata& changes, std::optional<WallTime> mtime) {
  std::lock_guard lock(mu_);
  for (const auto& [k, v] : changes) metadata_[k] = v;
  if (mtime) mtime_ = *mtime;
  ++meta_generation_;
  // A closed file's record is what a restart uploads: it must carry the change (chmod or
  // touch after close, before the upload). An open file's is rewritten at its close.
  if (closed_ && !torn_ && !unlinked_) {
    if (Status journaled = JournalLocked(); !journaled.ok()) {
      Logger("writeback")->error("cannot journal the new attributes of '{}' (a restart would "
                                 "upload it without them): {}", key_, journaled.ToString());
    }
  }
}

s3::UserMetadata DirtyFile::UploadMetadataLocked() const {
  s3::UserMetadata md = metadata_;
  md["mtime"] = EncodeMtime(mtime_);
  return md;
}

Status DirtyFile::ReadThrough(uint64_t begin, uint64_t end, std::span<char> into) {
  std::vector<Extent> fetched;
  for (int attempt = 1;; ++attempt) {
    std::string key, etag;
    fetched.clear();
    Status filled = FillFrom(begin, end, into, &key, &etag, &fetched);
    if (filled.ok()) break;
    if (filled.code() != ErrorCode::kStale || attempt == 3) return filled;
    // The base moved on under the GET: this file's own commit (or a rename) landed a new
    // version, whose bytes outside what was written here are the same. Read those; it is
    // someone else's change only if the base is still the one the GET asked for.
    std::lock_guard lock(mu_);
    if (key_ == key && base_etag_ == etag) return filled;
  }
  // Everything not fetched just now comes from the spool (fetched extents are in order).
  uint64_t at = begin;
  fetched.push_back({end, end});
  for (const Extent& done : fetched) {
    if (done.begin > at) {
      BFS_RETURN_IF_ERROR(
          PreadAll(fd_, into.data() + (at - begin), done.begin - at, at, owner_.spool_));
    }
    at = std::max(at, done.end);
  }
  return Status::Ok();
}

Status DirtyFile::FillFrom(uint64_t begin, uint64_t end, std::span<char> scratch,
                           std::string* used_key, std::string* used_etag,
                           std::vector<Extent>* fetched) {
  std::vector<Extent> gaps;
  std::string key, etag;
  {
    std::lock_guard lock(mu_);
    const uint64_t limit = std::min(end, base_limit_);
    if (begin < limit) gaps = present_.Gaps(begin, limit);
    key = key_;
    etag = base_etag_;
  }
  *used_key = key;
  *used_etag = etag;
  for (const Extent& gap : gaps) {
    std::span<char> into = scratch.subspan(gap.begin - begin, gap.end - gap.begin);
    s3::GetRequest get{key, s3::ByteRange{gap.begin, gap.end - gap.begin}, etag};
    auto got = owner_.client_.Get(get, into, {owner_.Deadline()});
    if (!got.ok()) return Explain(got.status(), key, owner_.spool_.DataPath(id_));
    if (got->bytes_read < into.size()) {
      return Status(ErrorCode::kMalformedResponse,
                    "short read of '" + key + "' while filling the spool");
    }
    std::lock_guard lock(mu_);
    // Only what is still missing: the program may have written some of it meanwhile.
    const uint64_t limit = std::min(gap.end, base_limit_);
    if (gap.begin >= limit) continue;
    for (const Extent& missing : present_.Gaps(gap.begin, limit)) {
      fetched->push_back(missing);
      // Kept in the spool so that the next read or commit needs no GET, when there is room:
      // a full spool disk must not fail a commit whose bytes are in memory already.
      Status kept = PwriteAll(fd_, scratch.data() + (missing.begin - begin),
                              missing.end - missing.begin, missing.begin, owner_.spool_);
      if (kept.ok()) {
        present_.Add(missing.begin, missing.end);
      } else if (kept.code() != ErrorCode::kNoSpace) {
        return kept;
      }
    }
  }
  return Status::Ok();
}

Result<ReadReply> DirtyFile::Read(uint64_t offset, size_t size) {
  ReadReply reply;
  std::span<char> buffer;
  uint64_t spool_end = 0;  // [offset, spool_end) comes from the spool, the rest from memory.
  {
    std::lock_guard lock(mu_);
    if (offset >= size_ || size == 0) return ReadReply{};
    const uint64_t end = std::min<uint64_t>(offset + size, size_);
    reply.owned = std::make_unique<char[]>(end - offset);
    buffer = std::span<char>(reply.owned.get(), end - offset);
    spool_end = end;
    // Bytes still assembled are copied from memory: a read needs no disk space, and the
    // writer's assembly goes on. (The assembly ends the file, so it holds all of
    // [its start, end); bytes a writer assembles after `end` meanwhile are not read.)
    if (assembly_ && end > assembly_->span.offset) {
      const Assembly& a = *assembly_;
      const uint64_t from = std::max(offset, a.span.offset);
      if (a.span.offset + a.filled >= end) {
        std::memcpy(buffer.data() + (from - offset),
                    a.buffer.buffer.data() + (from - a.span.offset), end - from);
        spool_end = from;
      } else {
        BFS_RETURN_IF_ERROR(SpillLocked());
      }
    }
  }
  if (spool_end > offset) {
    BFS_RETURN_IF_ERROR(ReadThrough(offset, spool_end, buffer.subspan(0, spool_end - offset)));
  }
  reply.pieces.push_back({buffer.data(), buffer.size()});
  return reply;
}

Status DirtyFile::EnsureUpload(const s3::UserMetadata& metadata, uint64_t meta_generation,
                               bool early) {
  std::unique_lock lock(mu_);
  changed_.wait(lock, [&] { return !creating_upload_; });
  if (!upload_id_.empty()) return Status::Ok();
  // An early part after a failed creation (the one it waited on, or one just before) takes
  // that failure as its own: asking again at once would cost every queued part its own
  // deadline, one after the other, against a server that does not answer (an fsync waited
  // 30 minutes so). The commit clears the pause and asks again.
  if (early && owner_.clock_.Now() < eager_paused_until_) {
    if (!create_error_.ok()) return create_error_;
    // Paused by a failed part (its upload vanished: NoSuchUpload), not by a creation.
    return Status(ErrorCode::kCancelled, "early uploads of '" + key_ +
                                             "' are paused after a failed part; the commit "
                                             "sends this one");
  }
  creating_upload_ = true;
  const std::string key = key_;
  lock.unlock();
  auto created = owner_.client_.CreateMultipart({key, "", metadata}, {owner_.Deadline()});
  lock.lock();
  creating_upload_ = false;
  changed_.notify_all();
  if (!created.ok()) {
    create_error_ = created.status();
    if (early) eager_paused_until_ = owner_.clock_.Now() + owner_.options_.first_retry;
    return created.status();
  }
  upload_id_ = *created;
  create_error_ = Status::Ok();  // A later pause is not this old failure's.
  upload_meta_generation_ = meta_generation;
  const auto mtime = metadata.find("mtime");
  upload_mtime_ = mtime != metadata.end() ? mtime->second : std::string();
  highest_part_sent_ = 0;
  return Status::Ok();
}

Status DirtyFile::UploadPart(int number, uint64_t file_size, bool copy,
                             std::optional<AssembledPart> assembled) {
  const PartSpan span = layout_->Part(number);
  const uint64_t end = std::min(span.end(), file_size);
  const uint64_t length = end - span.offset;
  uint64_t version = 0;
  std::string key, upload_id, base_etag;
  int direct_fd = -1;  // Set when the part's bytes are on disk only (written O_DIRECT).
  {
    std::lock_guard lock(mu_);
    version = parts_[number].version;
    // Chosen as a copy of untouched base bytes, but written (or cut by a truncate) since:
    // a copy now would hold the base bytes and be taken for this version. Sent from the
    // spool instead, as it is now.
    if (copy && (present_.Intersects(span.offset, end) || end > base_limit_)) copy = false;
    if (parts_[number].direct_version == version && version != 0 && length == span.size &&
        span.offset >= base_limit_) {
      direct_fd = DirectFdLocked();
    }
    key = key_;
    upload_id = upload_id_;
    base_etag = base_etag_;
  }
  if (upload_id.empty()) {
    // Dropped since the caller made sure of it (another part found it gone, a rename, a
    // commit that shrank the file): a request without one would not be a part of anything.
    if (assembled) owner_.GivePartBuffer(std::move(assembled->buffer));
    return Status(ErrorCode::kCancelled, "the multipart upload of '" + key +
                                             "' was dropped; part " + std::to_string(number) +
                                             " is sent again in a new one");
  }
  // The assembled bytes serve only while the part is as they were and whole in the file.
  const bool from_memory = !copy && assembled && assembled->number == number &&
                           assembled->version == version && length == span.size;
  if (assembled && !from_memory) {
    owner_.GivePartBuffer(std::move(assembled->buffer));
    assembled.reset();
  }
  Result<s3::PartInfo> sent = Status(ErrorCode::kInternal, "part not sent");
  if (copy) {
    s3::UploadPartCopyRequest req{key, upload_id, number, key, s3::ByteRange{span.offset, length},
                                  base_etag};
    sent = owner_.client_.UploadPartCopy(req, {owner_.Deadline()});
    if (sent.ok()) owner_.counters_.parts_copied.fetch_add(1, std::memory_order_relaxed);
  } else {
    Writeback::PartBuffer buffer;
    Status read = Status::Ok();
    if (from_memory) {
      buffer = std::move(assembled->buffer);
      owner_.counters_.parts_sent_from_memory.fetch_add(1, std::memory_order_relaxed);
    } else {
      BFS_ASSIGN_OR_RETURN(buffer, owner_.TakePartBuffer(length));
    }
    std::span<char> bytes(buffer.buffer.data(), length);
    if (!from_memory) {
      // Bytes written around the page cache are read around it too: a buffered read would
      // fetch them from disk into the cache and copy them again.
      uint64_t got = 0;
      if (direct_fd >= 0) {
        got = DirectTransfer([&] {
          return ::pread(direct_fd, bytes.data(), length, static_cast<off_t>(span.offset));
        });
        if (got < length) {
          read = PreadAll(fd_, bytes.data() + got, length - got, span.offset + got, owner_.spool_);
        }
      } else {
        read = ReadThrough(span.offset, end, bytes);
      }
    }
    if (read.ok()) {
      sent = owner_.client_.UploadPart({key, upload_id, number, bytes}, {owner_.Deadline()});
    }
    owner_.GivePartBuffer(std::move(buffer));
    BFS_RETURN_IF_ERROR(read);
    if (sent.ok()) {
      owner_.counters_.parts_uploaded.fetch_add(1, std::memory_order_relaxed);
      owner_.counters_.bytes_uploaded.fetch_add(length, std::memory_order_relaxed);
    }
  }
  if (!sent.ok() && sent.status().code() == ErrorCode::kNoSuchUpload) {
    // The upload is gone (a lifecycle rule that aborts old incomplete uploads, another
    // client): keeping its id would fail every retry the same way. Start a new one; the
    // caller tries again at once (kCancelled), sending every part.
    std::lock_guard lock(mu_);
    if (upload_id_ == upload_id) {
      upload_id_.clear();
      highest_part_sent_ = 0;
      for (auto& entry : parts_) entry.second.etag.clear();
    }
    return Status(ErrorCode::kCancelled,
                  "the multipart upload of '" + key + "' is gone from the server (aborted by " +
                      "a lifecycle rule or another client); starting it over: " +
                      sent.status().ToString());
  }
  if (!sent.ok()) return Explain(sent.status(), key, owner_.spool_.DataPath(id_));
  std::lock_guard lock(mu_);
  PartState& part = parts_[number];
  if (upload_id_ == upload_id) highest_part_sent_ = std::max(highest_part_sent_, number);
  if (part.version == version && upload_id_ == upload_id) {
    part.etag = sent->etag;
    part.uploaded_version = version;
    part.uploaded_size = length;
  }
  return Status::Ok();
}

void DirtyFile::RunEagerPart(int number, std::optional<AssembledPart> assembled) {
  s3::UserMetadata metadata;
  uint64_t size = 0, meta_generation = 0;
  bool skip = false;
  {
    std::lock_guard lock(mu_);
    metadata = UploadMetadataLocked();
    meta_generation = meta_generation_;
    size = size_;
    // Queued before another part failed: the commit sends it.
    skip = owner_.clock_.Now() < eager_paused_until_;
  }
  Status s = Status::Ok();
  if (!skip) {
    s = EnsureUpload(metadata, meta_generation, /*early=*/true);
    if (s.ok()) s = UploadPart(number, size, /*copy=*/false, std::move(assembled));
    if (!s.ok()) {
      Logger("writeback")->debug(
          "early upload of part {} of '{}' failed (the commit sends it): {}", number, key(),
          s.ToString());
    }
  }
  if (assembled && assembled->buffer.buffer) owner_.GivePartBuffer(std::move(assembled->buffer));
  std::lock_guard lock(mu_);
  if (!s.ok()) eager_paused_until_ = owner_.clock_.Now() + owner_.options_.first_retry;
  if (s.code() == ErrorCode::kTimeout) {
    ++eager_timeouts_;
    eager_timeout_error_ = s;
  }
  parts_[number].eager_in_flight = false;
  --eager_in_flight_;
  changed_.notify_all();
}

void DirtyFile::NoteLandedLocked(const std::string& etag, uint64_t size,
                                 uint64_t data_generation) {
  base_etag_ = etag;
  base_limit_ = std::min(size, min_size_since_snapshot_);
  exists_remotely_ = true;
  create_only_ = false;
  committed_data_generation_ = data_generation;
  upload_id_.clear();
  parts_.clear();
}

Status DirtyFile::CutWhileReadLocked(const std::string& key, uint64_t size) const {
  // Truncated (O_TRUNC, ftruncate) since the commit took its size: the bytes it read after
  // the cut are the new file's, or zeros up to the old size, and those before it the old
  // one's; uploaded together they would be a version nobody wrote. Start over from the
  // file as it is now (the caller tries again at once).
  if (min_size_since_snapshot_ >= size) return Status::Ok();
  return Status(ErrorCode::kCancelled, "'" + key + "' was truncated while its commit read it");
}

Result<std::string> DirtyFile::PutWhole(const std::string& key, uint64_t size,
                                        const s3::UserMetadata& metadata,
                                        const s3::WriteCondition& condition) {
  BFS_ASSIGN_OR_RETURN(Reservation charge, owner_.budget_.Reserve(size, owner_.Deadline()));
  // Most such files are small: a mapping of their own would cost two system calls.
  auto buffer = std::make_unique_for_overwrite<char[]>(std::max<uint64_t>(size, 1));
  std::span<char> bytes(buffer.get(), size);
  BFS_RETURN_IF_ERROR(ReadThrough(0, size, bytes));
  {
    std::lock_guard lock(mu_);
    BFS_RETURN_IF_ERROR(CutWhileReadLocked(key, size));
    JournalLandingLocked(SinglePutEtag(bytes));
  }
  s3::PutRequest put;
  put.key = key;
  put.body = bytes;
  put.metadata = metadata;
  put.condition = condition;
  auto done = owner_.client_.Put(put, {owner_.Deadline()});
  if (!done.ok()) {
    // A PUT retried after its reply was lost meets its own object (lost_reply.h).
    if (done.status().code() != ErrorCode::kPreconditionFailed) return done.status();
    auto landed =
        LandedAs(owner_.client_, key, SinglePutEtag(bytes), metadata, owner_.Deadline());
    if (!landed) return done.status();
    done = s3::PutResult{*landed};
  }
  owner_.counters_.bytes_uploaded.fetch_add(size, std::memory_order_relaxed);
  return done->etag;
}

Result<std::string> DirtyFile::UploadMultipart(const std::string& key, uint64_t size,
                                               const s3::UserMetadata& metadata,
                                               uint64_t meta_generation,
                                               const s3::WriteCondition& condition) {
  const int count = layout_->PartCount(size);
  if (count > s3::kMaxParts) {
    return Status(ErrorCode::kEntityTooLarge, "'" + key + "' needs more than 10,000 parts");
  }
  std::string dropped_upload;
  {
    std::lock_guard lock(mu_);
    if (highest_part_sent_ > count) {
      // The file shrank below parts already sent early. S3 would complete with just the
      // parts listed, but RGW refuses (InvalidPart) while others exist: start over.
      dropped_upload = std::exchange(upload_id_, std::string());
      parts_.clear();
      highest_part_sent_ = 0;
    }
  }
  if (!dropped_upload.empty()) {
    (void)owner_.client_.AbortMultipart(key, dropped_upload, {owner_.Deadline()});
  }
  BFS_RETURN_IF_ERROR(EnsureUpload(metadata, meta_generation));
  // Which parts to send, and how.
  struct Job {
    int number;
    bool copy;
    Status result;
    uint64_t version;  // The part's version when chosen: the upload must hold at least it.
  };
  std::vector<Job> jobs;
  {
    std::lock_guard lock(mu_);
    for (int n = 1; n <= count; ++n) {
      const PartSpan span = layout_->Part(n);
      const uint64_t end = std::min(span.end(), size);
      const PartState& part = parts_[n];
      if (!part.etag.empty() && part.uploaded_version == part.version &&
          part.uploaded_size == end - span.offset) {
        continue;  // Sent early and unchanged since.
      }
      // Untouched bytes of the object the file started as: copy them server-side.
      const bool copy = !base_etag_.empty() && end <= base_limit_ &&
                        !present_.Intersects(span.offset, end) &&
                        (end - span.offset >= s3::kMinPartSize || n == count);
      jobs.push_back({n, copy, Status::Ok(), part.version});
    }
  }
  if (!jobs.empty()) {
    // After the first failure the parts not started yet are not sent: the commit fails
    // within one request deadline (the parts in flight), not one per wave of parts, and
    // its retry sends only the parts S3 does not have.
    std::atomic<bool> failed{false};
    std::latch done(static_cast<std::ptrdiff_t>(jobs.size()));
    for (Job& job : jobs) {
      owner_.parts_pool_->Submit([this, &job, &done, &failed, size] {
        if (!failed.load(std::memory_order_relaxed)) {
          job.result = UploadPart(job.number, size, job.copy);
          if (!job.result.ok()) failed.store(true, std::memory_order_relaxed);
        }
        done.count_down();
      });
    }
    done.wait();
    for (const Job& job : jobs) {
      if (!job.result.ok()) return job.result;
    }
  }
  s3::CompleteMultipartRequest complete;
  complete.key = key;
  complete.condition = condition;
  {
    std::lock_guard lock(mu_);
    BFS_RETURN_IF_ERROR(CutWhileReadLocked(key, size));
    complete.upload_id = upload_id_;
    // A part written to while this commit uploaded it keeps its older ETag (UploadPart
    // drops an upload whose bytes may be torn). Completing with that ETag cannot work: S3
    // now holds the newer upload under the part's number and refuses it (InvalidPart), and
    // that part would lack the writes this commit is for anyway. Start over instead.
    for (const Job& job : jobs) {
      if (parts_[job.number].uploaded_version < job.version) {
        return Status(ErrorCode::kCancelled, "part " + std::to_string(job.number) + " of '" +
                                                 key + "' changed while uploading");
      }
    }
    for (int n = 1; n <= count; ++n) {
      const PartState& part = parts_[n];
      if (part.etag.empty()) {
        return Status(ErrorCode::kCancelled,
                      "part " + std::to_string(n) + " of '" + key + "' changed while uploading");
      }
      complete.parts.push_back({n, part.etag, part.uploaded_size});
    }
    JournalLandingLocked(MultipartEtag(complete.parts));
  }
  auto completed = owner_.client_.CompleteMultipart(complete, {owner_.Deadline()});
  if (completed.ok() && completed->etag.empty()) {
    // RGW answers CompleteMultipartUpload with an empty ETag (docs/S3-COMPATIBILITY.md). A
    // HEAD tells it; if the HEAD fails, the ETag these parts make (lost_reply.h) does: the
    // bytes have landed, and a commit failed now would leave the file not knowing it (a
    // rename before the retry would leave a copy at this key). Where ETags are not MD5s
    // (SSE-KMS) a wrong one costs the next commit a conflict, never data.
    auto head = owner_.client_.Head({key, ""}, {owner_.Deadline()});
    return head.ok() ? head->etag : MultipartEtag(complete.parts);
  }
  if (completed.ok()) return completed->etag;
  const ErrorCode code = completed.status().code();
  if (code == ErrorCode::kNoSuchUpload || code == ErrorCode::kPreconditionFailed) {
    // A Complete retried after its reply was lost finds the upload gone or, conditional,
    // the object no longer the version it was conditioned on: the object is ours if its
    // ETag is the one these parts make (lost_reply.h).
    // The parts' MD5s are of this file's bytes: no metadata to compare (the upload carries
    // that of its creation; a copy applies newer metadata after).
    auto landed =
        LandedAs(owner_.client_, key, MultipartEtag(complete.parts), {}, owner_.Deadline());
    if (landed) return *landed;
  }
  if (code == ErrorCode::kNoSuchUpload) {
    std::lock_guard lock(mu_);
    upload_id_.clear();  // Gone: the next attempt starts a new upload.
    parts_.clear();
  }
  return completed.status();
}

Status DirtyFile::CommitOnce() {
  std::string key;
  uint64_t size = 0, data_generation = 0, meta_generation = 0;
  bool data_dirty = false, meta_dirty = false;
  s3::UserMetadata metadata;
  s3::WriteCondition condition;
  bool multipart = false;
  {
    std::unique_lock lock(mu_);
    const uint64_t timeouts_before = eager_timeouts_;
    changed_.wait(lock, [&] { return eager_in_flight_ == 0; });
    // The commit reads the spool: bytes still assembled in memory go there first.
    BFS_RETURN_IF_ERROR(SpillLocked());
    // Its last writer is gone, but the spill at its release failed: journal it closed now
    // that every byte is on disk, or a restart would treat it as never closed.
    // A record that cannot be rewritten (a full spool disk) must not stop the upload,
    // which is what frees the spool: MarkClosedLocked() logs it, and the commit goes on.
    if (writers_ == 0 && !closed_ && !unlinked_) (void)MarkClosedLocked();
    // Early parts reached their deadline while this commit waited for them: asking the
    // same server again now would make the caller wait out a second deadline for the same
    // answer. The background retry goes on.
    if (eager_timeouts_ != timeouts_before) return eager_timeout_error_;
    eager_paused_until_ = MonoTime{};  // This commit sends what failed.
    key = key_;
    size = size_;
    min_size_since_snapshot_ = size_;
    data_generation = data_generation_;
    meta_generation = meta_generation_;
    committing_data_generation_ = data_generation;
    committing_meta_generation_ = meta_generation;
    data_dirty = data_generation_ != committed_data_generation_ || !exists_remotely_;
    meta_dirty = meta_generation_ != committed_meta_generation_;
    metadata = UploadMetadataLocked();
    if (create_only_ && !exists_remotely_) {
      condition = s3::WriteCondition::CreateOnly();
    } else if (!base_etag_.empty()) {
      condition = s3::WriteCondition::IfMatch(base_etag_);
    }
    // A file that shrank to one part or less is one PUT even if parts went early (a
    // multipart upload needs at least one part; its leftovers are aborted below).
    multipart = size > layout_->first_part_size();
  }
  if (!data_dirty && !meta_dirty) return Status::Ok();
  const MonoTime started = owner_.clock_.Now();
  spdlog::logger& log = *Logger("writeback");
  if (log.should_log(spdlog::level::debug)) {
    LogEvent(log, spdlog::level::debug,
             fmt::format("commit starts:{}{}{}", data_dirty ? " data" : "",
                         meta_dirty ? " metadata" : "",
                         condition.kind == s3::WriteCondition::Kind::kIfNoneMatchAny
                             ? ", if none match"
                         : condition.kind == s3::WriteCondition::Kind::kIfMatch
                             ? ", if match " + condition.etag
                             : ""),
             {{"key", key}, {"bytes", size}, {"spool", id_}});
  }

  std::string etag;
  // Whether the object will lack metadata set since its upload began (or, with no data to
  // upload, since the last commit).
  bool stale_metadata = !data_dirty;
  if (data_dirty) {
    Result<std::string> uploaded =
        multipart ? UploadMultipart(key, size, metadata, meta_generation, condition)
                  : PutWhole(key, size, metadata, condition);
    if (!uploaded.ok()) return Explain(uploaded.status(), key, owner_.spool_.DataPath(id_));
    etag = *uploaded;
    if (!multipart) {
      std::string leftover;
      {
        std::lock_guard lock(mu_);
        leftover = std::exchange(upload_id_, std::string());
      }
      if (!leftover.empty()) (void)owner_.client_.AbortMultipart(key, leftover, {owner_.Deadline()});
    }
    if (multipart) {
      // The upload carries the metadata of its creation: the mtime of the first part (not
      // worth a copy), and mode/uid/gid unless set since (worth one).
      std::lock_guard lock(mu_);
      stale_metadata = upload_meta_generation_ != meta_generation;
      // Its mtime is that of the first part, which the file shows from now on (as it will
      // after the cached attributes expire, and after a remount).
      if (!stale_metadata && !upload_mtime_.empty()) metadata["mtime"] = upload_mtime_;
    }
    if (etag.empty()) {
      // A server that answered the PUT without an ETag. The object is there, but without
      // its ETag the next commit could not be conditional, nor a metadata copy: a failed
      // HEAD fails this commit, and its retry finds the object landed (lost_reply.h).
      auto head = owner_.client_.Head({key, ""}, {owner_.Deadline()});
      if (!head.ok()) return Explain(head.status(), key, owner_.spool_.DataPath(id_));
      etag = head->etag;
    }
    // The bytes are in S3 at `key`, whatever fails from here (the metadata copy): they are
    // the base of what comes next. A retry copies only the metadata, and a rename copies
    // the object and deletes `key` rather than leave it behind as a stray file.
    std::lock_guard lock(mu_);
    // (The record keeps the old base and this landing's ETag until the commit ends: a
    // restart finds the object landed, or copied with the metadata, or re-uploads it.)
    NoteLandedLocked(etag, size, data_generation);
  } else {
    std::lock_guard lock(mu_);
    etag = base_etag_;
  }
  if (stale_metadata) {
    // Set it by copying the object onto itself, server-side.
    CopySpec spec{key, key, size, etag, metadata, s3::WriteCondition::IfMatch(etag)};
    auto copied = CopyObject(owner_.client_, spec, owner_.Deadline());
    if (!copied.ok() && copied.status().code() == ErrorCode::kPreconditionFailed) {
      // Retried after its reply was lost, the copy finds the object already rewritten, with
      // a new ETag if it was a multipart one (lost_reply.h).
      if (auto landed = LandedWithMetadata(owner_.client_, key, size, metadata, owner_.Deadline())) {
        copied = *landed;
      }
    }
    if (!copied.ok()) return Explain(copied.status(), key, owner_.spool_.DataPath(id_));
    etag = *copied;
  }

  CommittedObject committed{key, etag, size, metadata};
  {
    std::lock_guard lock(mu_);
    if (data_dirty) {
      base_etag_ = etag;  // The metadata copy's version.
    } else {
      NoteLandedLocked(etag, size, data_generation);
    }
    committed_meta_generation_ = meta_generation;
    error_ = Status::Ok();
    conflict_ = false;
    retry_delay_ = {};
    // The next commit must If-Match this version, and a crash before it must not recover
    // from the old base (its If-Match would fail, a false conflict): a record that stays
    // (a writer, or changes since, data or metadata) is rewritten. One that is clean now
    // is removed by Settle, or rewritten there if a rename holds it.
    if (!unlinked_ && (writers_ > 0 || data_generation_ != data_generation ||
                       meta_generation_ != meta_generation)) {
      (void)JournalLocked();
    }
  }
  owner_.Notify(committed);
  LogEvent(log, spdlog::level::debug, "commit done",
           {{"key", key},
            {"bytes", size},
            {"spool", id_},
            {"latency_ms",
             std::chrono::duration_cast<std::chrono::milliseconds>(owner_.clock_.Now() - started)
                 .count()}});
  return Status::Ok();
}

Status DirtyFile::Commit(bool unless_being_written) {
  {
    std::unique_lock lock(mu_);
    changed_.wait(lock, [&] { return !committing_; });
    if (unlinked_) return Status::Ok();
    // Changes pending (a write or truncate reopened the record): a refused write, or one
    // that got the sticky error, changed nothing, and the closed version goes up whole.
    if (unless_being_written && writers_ > 0 && unflushed_writers_ > 0 && !closed_) {
      return Status::Ok();
    }
    // Not a failure to retry (error_ stays): a torn file is never uploaded (MarkTorn).
    if (torn_) return TornLocked();
    committing_ = true;
  }
  Status result = CommitOnce();
  std::string abandoned_upload, key;
  {
    std::lock_guard lock(mu_);
    committing_ = false;
    if (!result.ok()) {
      error_ = result;
      conflict_ = result.code() == ErrorCode::kStale;
      if (result.code() == ErrorCode::kCancelled) error_ = Status::Ok();  // Changed: retry.
      // A conflict is not retried: its multipart upload would be left behind.
      if (conflict_) {
        abandoned_upload = std::exchange(upload_id_, std::string());
        parts_.clear();
        highest_part_sent_ = 0;
      }
      key = key_;
    }
    changed_.notify_all();
  }
  if (!abandoned_upload.empty()) {
    (void)owner_.client_.AbortMultipart(key, abandoned_upload, {owner_.Deadline()});
  }
  return result;
}

SpoolRecord DirtyFile::RecordLocked() const {
  SpoolRecord r;
  r.id = id_;
  r.key = key_;
  r.base_etag = exists_remotely_ ? base_etag_ : "";
  r.base_limit = base_limit_;
  r.create_only = create_only_;
  r.size = size_;
  r.present = present_.Extents();
  r.metadata = UploadMetadataLocked();
  r.closed = closed_;
  if (landing_data_generation_ == data_generation_ && landing_meta_generation_ == meta_generation_) {
    r.landing_etag = landing_etag_;
  }
  return r;
}

Status DirtyFile::JournalLocked() { return owner_.spool_.WriteRecord(RecordLocked()); }

void DirtyFile::MarkUnlinkedLocked() {
  unlinked_ = true;
  remove_on_destroy_ = true;
  owner_.spool_.RemoveRecord(id_);
}

Status DirtyFile::JournalReopenedLocked() {
  closed_ = false;
  Status journaled = JournalLocked();
  if (!journaled.ok()) closed_ = true;  // The record still says closed: change nothing.
  return journaled;
}

bool DirtyFile::torn() const {
  std::lock_guard lock(mu_);
  return torn_;
}

bool DirtyFile::MarkTorn() {
  std::lock_guard lock(mu_);
  if (torn_) return true;
  if (closed_ && !unlinked_) {
    // Journaled closed and unchanged since: the refused write was the first of a reopen,
    // and the version every program closed is whole. Tearing it would send the data a
    // close(2) reported as safe to lost+found/ instead of the bucket.
    LogEvent(*Logger("writeback"), spdlog::level::warn,
             "a write was refused; the file's last closed version is kept for its upload",
             {{"key", key_}});
    return false;
  }
  torn_ = true;
  LogEvent(*Logger("writeback"), spdlog::level::err,
           "a write was refused; the file will not be uploaded, its spool file goes to "
           "lost+found/",
           {{"key", key_}});
  return true;
}

void DirtyFile::JournalLandingLocked(const std::string& etag) {
  if (!closed_ || unlinked_ || torn_ || etag.empty()) return;
  landing_etag_ = etag;
  landing_data_generation_ = committing_data_generation_;
  landing_meta_generation_ = committing_meta_generation_;
  // Best effort: without it, a crash in the window costs a false conflict, not data.
  (void)JournalLocked();
}

Status DirtyFile::TornLocked() const {
  return Status(ErrorCode::kReadOnly,
                "a write to '" + key_ + "' was refused while the mount had lost its lease, so "
                "the file is not what its program wrote: it is not uploaded, and its spool file "
                "goes to lost+found/ when it is last closed; write it again");
}

Status DirtyFile::MarkClosedLocked() {
  if (closed_ || torn_) return Status::Ok();
  // The journal must not call the file closed while some of its bytes are only in memory.
  if (Status spilled = SpillLocked(); !spilled.ok()) {
    Logger("writeback")->error("cannot journal '{}' as closed: {}", key_, spilled.ToString());
    return spilled;
  }
  closed_ = true;
  Status journaled = JournalLocked();
  if (!journaled.ok()) {
    // The record still says open: a crash now would keep the file in lost+found/, not
    // upload it, so close() must not report success. The next close or commit tries again.
    closed_ = false;
    Logger("writeback")->error("cannot journal '{}' as closed: {}", key_, journaled.ToString());
    return journaled;
  }
  return Status::Ok();
}

// --- Writeback ---------------------------------------------------------------------------

namespace {

// Spare and assembly buffers together stay within an eighth of the budget each.
uint64_t PartsInAnEighthOf(const MemoryBudget& budget, uint64_t part_size) {
  return part_size == 0 ? 0 : budget.capacity() / 8 / part_size;
}

}  // namespace

Status Writeback::FileTooLarge() const {
  if (layout_.max_file_size() == PartLayout::kMaxObjectSize) {
    return Status(ErrorCode::kEntityTooLarge, "S3 objects are limited to 5 TiB");
  }
  return Status(ErrorCode::kEntityTooLarge,
                "this mount uploads files of at most " + FormatBytes(layout_.max_file_size()) +
                    " (10,000 parts of at most " + FormatBytes(layout_.max_part_size()) +
                    ", an eighth of its memory budget of " + FormatBytes(budget_.capacity()) +
                    "); mount with a larger --max-memory to write larger files");
}

Writeback::Writeback(const WriteContext& context, WritebackOptions options)
    : client_(*context.client),
      budget_(*context.budget),
      spool_(*context.spool),
      clock_(context.clock ? *context.clock : RealClock()),
      options_(options),
      layout_(options.part_size, budget_.capacity() / 8),
      uncapped_layout_(options.part_size),
      // Enough for a streaming file's early uploads (2 × parallelism) and its assembly.
      max_spare_parts_(std::min<uint64_t>(2 * options.upload_parallelism + 1,
                                          PartsInAnEighthOf(budget_, options.part_size))),
      max_assemblies_(!options.assemble_parts
                          ? 0
                          : std::min<uint64_t>(options.upload_parallelism,
                                               PartsInAnEighthOf(budget_, options.part_size))),
      parts_pool_(std::make_unique<TaskPool>("upload", std::max<size_t>(1, options.upload_parallelism),
                                             4 * std::max<size_t>(1, options.upload_parallelism))),
      commit_pool_(std::make_unique<TaskPool>("commit", std::max<size_t>(1, options.commit_parallelism),
                                              1 << 20)) {
  retry_thread_ = std::thread([this] { RetryLoop(); });
}

Writeback::~Writeback() {
  {
    std::unique_lock lock(mu_);
    stopping_ = true;
    settled_.notify_all();
  }
  retry_thread_.join();
  // Runs the commits already queued. Not reset(): that nulls commit_pool_ while the pool
  // joins its threads, and a commit still running may start the next through it (Settle ->
  // StartCommit: the file changed while it was committed).
  commit_pool_->Shutdown();
  parts_pool_->Shutdown();
  commit_pool_.reset();
  parts_pool_.reset();
  // The files go while every member still exists: a file's destructor gives its assembly's
  // buffer back to the spares, which are declared after files_ (and so destroyed first).
  std::unordered_map<std::string, std::shared_ptr<DirtyFile>> files;
  {
    std::lock_guard lock(mu_);
    files.swap(files_);
  }
  files.clear();
}

std::optional<PartBuffer> Writeback::TakeSpareLocked(uint64_t bytes) {
  if (bytes != options_.part_size || spare_parts_.empty()) return std::nullopt;
  PartBuffer part = std::move(spare_parts_.back());
  spare_parts_.pop_back();
  counters_.part_buffers_reused.fetch_add(1, std::memory_order_relaxed);
  return part;
}

Result<Writeback::PartBuffer> Writeback::TakePartBuffer(uint64_t bytes) {
  {
    std::lock_guard lock(spare_mu_);
    ++parts_out_;
    if (std::optional<PartBuffer> spare = TakeSpareLocked(bytes)) return std::move(*spare);
  }
  PartBuffer part;
  Result<Reservation> charge = budget_.TryReserve(bytes);
  if (!charge.ok()) {
    // The budget is short. Spares would sit on the bytes this part waits for (the wrong
    // size, or given back while it waits): they go, and none is kept until it has its own.
    std::vector<PartBuffer> freed;
    {
      std::lock_guard lock(spare_mu_);
      ++part_waiters_;
      freed.swap(spare_parts_);
    }
    freed.clear();
    charge = budget_.Reserve(bytes, Deadline());
    std::lock_guard lock(spare_mu_);
    --part_waiters_;
  }
  if (charge.ok()) {
    part.charge = std::move(*charge);
    part.buffer = MappedBuffer::Allocate(bytes);  // No memset, no malloc arena.
  }
  if (!charge.ok() || !part.buffer) {
    std::vector<PartBuffer> freed;
    {
      std::lock_guard lock(spare_mu_);
      if (--parts_out_ == 0) freed.swap(spare_parts_);
    }
    if (!charge.ok()) return std::move(charge).TakeStatus();
    return Status(ErrorCode::kInternal, "cannot map a part buffer of " + FormatBytes(bytes));
  }
  return part;
}

bool Writeback::KeepsAsSpareLocked(const PartBuffer& part) const {
  // Never while anything waits for memory: the waiter needs the bytes more than a spare.
  return part_waiters_ == 0 && budget_.waiters() == 0 &&
         part.charge.bytes() == options_.part_size && spare_parts_.size() < max_spare_parts_;
}

void Writeback::GivePartBuffer(PartBuffer part) {
  std::vector<PartBuffer> freed;  // Unmapped after the lock is dropped.
  {
    std::lock_guard lock(spare_mu_);
    --parts_out_;
    if (KeepsAsSpareLocked(part)) {
      spare_parts_.push_back(std::move(part));
    } else {
      freed.push_back(std::move(part));
    }
    // No part in flight: an idle daemon keeps no spare memory.
    if (parts_out_ == 0) {
      for (auto& spare : spare_parts_) freed.push_back(std::move(spare));
      spare_parts_.clear();
    }
  }
}

std::optional<PartBuffer> Writeback::TakeAssemblyBuffer(uint64_t bytes) {
  {
    std::lock_guard lock(spare_mu_);
    if (assemblies_ >= max_assemblies_) return std::nullopt;
    if (std::optional<PartBuffer> spare = TakeSpareLocked(bytes)) {
      ++assemblies_;
      return spare;
    }
  }
  Result<Reservation> charge = budget_.TryReserve(bytes);
  if (!charge.ok()) return std::nullopt;
  PartBuffer part{MappedBuffer::Allocate(bytes), std::move(*charge)};
  if (!part.buffer) return std::nullopt;
  std::lock_guard lock(spare_mu_);
  if (assemblies_ >= max_assemblies_) return std::nullopt;  // Another file took the slot.
  ++assemblies_;
  return part;
}

void Writeback::AssemblyBecomesPart() {
  std::lock_guard lock(spare_mu_);
  --assemblies_;
  ++parts_out_;
}

void Writeback::GiveAssemblyBuffer(PartBuffer part) {
  std::vector<PartBuffer> freed;  // Unmapped after the lock is dropped.
  std::lock_guard lock(spare_mu_);
  --assemblies_;
  // A spare only while parts are out (an idle daemon keeps none).
  if (parts_out_ > 0 && KeepsAsSpareLocked(part)) {
    spare_parts_.push_back(std::move(part));
  } else {
    freed.push_back(std::move(part));
  }
}

void Writeback::SetListener(Listener listener) {
  // Exclusive: waits out every call of the old listener (its owner may be going away).
  std::unique_lock lock(listener_mu_);
  listener_ = std::move(listener);
}

void Writeback::Notify(const CommittedObject& committed) {
  counters_.commits.fetch_add(1, std::memory_order_relaxed);
  std::shared_lock lock(listener_mu_);  // Held through the call: see SetListener.
  if (listener_) listener_(committed);
}

Result<std::shared_ptr<DirtyFile>> Writeback::OpenForWrite(const std::string& key,
                                                           const std::optional<BaseObject>& base,
                                                           const s3::UserMetadata& metadata,
                                                           bool create_only) {
  std::lock_guard lock(mu_);
  if (auto it = files_.find(key); it != files_.end()) {
    auto file = it->second;
    std::lock_guard file_lock(file->mu_);
    ++file->writers_;  // Journaled as open again only by a write (DirtyFile::Write).
    return file;
  }
  BFS_ASSIGN_OR_RETURN(auto created, spool_.CreateData());
  auto file = std::shared_ptr<DirtyFile>(new DirtyFile(*this, key, created.first, created.second));
  std::lock_guard file_lock(file->mu_);
  file->metadata_ = metadata;
  file->metadata_.erase("mtime");
  file->mtime_ = base && base->mtime ? *base->mtime : clock_.WallNow();
  file->create_only_ = create_only;
  if (base) {
    if (::ftruncate(file->fd_, static_cast<off_t>(base->size)) != 0) {
      file->remove_on_destroy_ = true;
      return SpoolIoError(errno, "sizing the spool file", spool_);
    }
    file->base_etag_ = base->etag;
    file->base_limit_ = base->size;
    file->size_ = base->size;
    file->exists_remotely_ = true;
    if (base->size > layout_.max_file_size()) file->layout_ = &uncapped_layout_;
  } else {
    file->data_generation_ = 1;  // A new file is committed even if nothing is written.
  }
  file->writers_ = 1;
  Status journaled = file->JournalLocked();
  if (!journaled.ok()) {
    file->remove_on_destroy_ = true;
    return journaled;
  }
  files_.emplace(key, file);
  return file;
}

std::shared_ptr<DirtyFile> Writeback::ReopenForWrite(const std::string& key) {
  std::lock_guard lock(mu_);
  auto it = files_.find(key);
  if (it == files_.end()) return nullptr;
  std::lock_guard file_lock(it->second->mu_);
  ++it->second->writers_;  // Journaled as open again only by a write (DirtyFile::Write).
  return it->second;
}

void Writeback::WriterChanged(const std::shared_ptr<DirtyFile>& file) {
  std::lock_guard lock(file->mu_);
  ++file->unflushed_writers_;
}

Status Writeback::Flushed(const std::shared_ptr<DirtyFile>& file, bool writer_changed) {
  // Journaled only: the commit waits for the RELEASE. A FLUSH is every close(2) of a
  // descriptor, and the open file may still be written through another one: a shell's
  // `printf x > f` closes the file's first descriptor before it writes, so committing here
  // would upload an empty object and then the file again.
  std::lock_guard lock(file->mu_);
  if (writer_changed && file->unflushed_writers_ > 0) --file->unflushed_writers_;
  if (file->unlinked_) return Status::Ok();
  // Every close(2) puts what its descriptor wrote on the spool disk, or says why not.
  BFS_RETURN_IF_ERROR(file->SpillLocked());
  // close(2) says that what it closed will not be uploaded (also to a program that joined
  // the file after the refused write).
  if (file->torn_) return file->TornLocked();
  if (file->unflushed_writers_ != 0) return Status::Ok();
  return file->MarkClosedLocked();
}

void Writeback::ReleaseWriter(const std::shared_ptr<DirtyFile>& file, bool writer_changed) {
  bool set_aside = false;
  {
    std::lock_guard lock(file->mu_);
    if (writer_changed && file->unflushed_writers_ > 0) --file->unflushed_writers_;
    const int writers_left = --file->writers_;
    if (file->unlinked_) return;
    if (file->torn_) {
      // Never committed (see MarkTorn): set aside at its last release.
      if (writers_left > 0) return;
      set_aside = true;
    } else if (writers_left > 0) {
      if (file->unflushed_writers_ == 0) (void)file->MarkClosedLocked();
      return;
    } else {
      // A failed spill leaves the file journaled open; the commit tries the spill again and
      // keeps failing (and being retried) until the bytes reach the spool.
      (void)file->MarkClosedLocked();
    }
  }
  if (set_aside) {
    SetAsideTorn(file);
    return;
  }
  StartCommit(file);
}

void Writeback::SetAsideTorn(const std::shared_ptr<DirtyFile>& file) {
  std::string key, upload_id;
  {
    std::lock_guard lock(mu_);
    std::lock_guard file_lock(file->mu_);
    // Reopened since its last release (still torn for the new writer, who learns it at
    // close), or already gone.
    if (file->writers_ > 0 || file->unlinked_) return;
    // Detached from its key already if a rename moved its name (Rename).
    auto it = files_.find(file->key_);
    if (it != files_.end() && it->second == file) files_.erase(it);
    (void)file->SpillLocked();  // lost+found/ gets what was collected in memory too.
    // Detached: the next open of the key starts from the object in S3, and nothing of this
    // file is committed, journaled or removed from here on.
    file->unlinked_ = true;
    file->remove_on_destroy_ = false;
    key = file->key_;
    upload_id = std::exchange(file->upload_id_, std::string());  // Parts sent early.
    spool_.Quarantine(file->id_, "'" + key +
                                     "' had a write refused while the mount had lost its "
                                     "lease; it was not uploaded");
  }
  if (!upload_id.empty()) (void)client_.AbortMultipart(key, upload_id, {Deadline()});
}

void Writeback::StartCommit(const std::shared_ptr<DirtyFile>& file, bool unless_being_written) {
  {
    std::lock_guard lock(mu_);
    ++commits_in_flight_;
  }
  SubmitCommit(file, unless_being_written);
}

void Writeback::SubmitCommit(const std::shared_ptr<DirtyFile>& file, bool unless_being_written) {
  commit_pool_->Submit([this, file, unless_being_written] {
    Settle(file, file->Commit(unless_being_written));
  });
}

Status Writeback::Sync(const std::shared_ptr<DirtyFile>& file) { return CommitNow(file); }

Status Writeback::CommitNow(const std::shared_ptr<DirtyFile>& file) {
  {
    std::lock_guard lock(mu_);
    ++commits_in_flight_;
  }
  // A commit that another write overtook (kCancelled) is tried again here, not reported:
  // fsync has no "try again" answer (EINTR would be taken for a failure). Each attempt sends
  // only the parts that changed; a writer that keeps rewriting the same part through all
  // of them gets EINTR.
  Status result = file->Commit();
  for (int attempt = 1; attempt < kSyncAttempts && result.code() == ErrorCode::kCancelled;
       ++attempt) {
    result = file->Commit();
  }
  Settle(file, result);
  return result;
}

void Writeback::Settle(const std::shared_ptr<DirtyFile>& file, const Status& result) {
  bool commit_again = false;
  {
    std::lock_guard lock(mu_);
    --commits_in_flight_;
    std::lock_guard file_lock(file->mu_);
    if (!result.ok()) {
      if (result.code() == ErrorCode::kCancelled) {
        // Not a failure: the file changed while it was being committed.
        counters_.restarted_commits.fetch_add(1, std::memory_order_relaxed);
        commit_again = file->writers_ == 0;
      } else if (file->torn_) {
        // Refused, not failed: never retried (MarkTorn).
      } else {
        counters_.failed_commits.fetch_add(1, std::memory_order_relaxed);
        if (!file->conflict_) {
          file->retry_delay_ = file->retry_delay_ == Duration::zero()
                                   ? options_.first_retry
                                   : std::min(file->retry_delay_ * 2, options_.max_retry);
          file->next_retry_ = clock_.Now() + file->retry_delay_;
          LogEvent(*Logger("writeback"), spdlog::level::err,
                   "upload failed, will retry; the data is kept in the spool: " +
                       result.ToString(),
                   {{"key", file->key_},
                    {"retry_in_s",
                     std::chrono::duration_cast<std::chrono::seconds>(file->retry_delay_).count()},
                    {"spool_path", spool_.DataPath(file->id_)}});
        } else {
          Logger("writeback")->error("{}", result.ToString());
        }
      }
    } else if (!file->unlinked_ && file->writers_ == 0 && !file->committing_) {
      const bool clean = file->data_generation_ == file->committed_data_generation_ &&
                         file->meta_generation_ == file->committed_meta_generation_;
      if (clean) {
        auto it = files_.find(file->key_);
        if (it != files_.end() && it->second == file) files_.erase(it);
        spool_.RemoveRecord(file->id_);
        file->remove_on_destroy_ = true;
      } else {
        commit_again = true;  // Changed while committing (a chmod after close).
      }
    } else if (result.ok() && !file->unlinked_ && file->committing_) {
      // Committed and clean, but a rename holds it (HoldCommits): its record stays for now,
      // so it must name the version just committed, not the one the commit started from.
      (void)file->JournalLocked();
    }
    // The commit that follows counts as in flight from now: a Drain or Recover woken here
    // must not see none in flight and return before it ran.
    if (commit_again) ++commits_in_flight_;
    settled_.notify_all();
  }
  if (commit_again) SubmitCommit(file);
}

void Writeback::RetryLoop() {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    settled_.wait_for(lock, std::chrono::seconds(1));
    if (stopping_) break;
    const MonoTime now = clock_.Now();
    const MonoTime idle_since = now - options_.assembly_idle;
    std::vector<std::shared_ptr<DirtyFile>> due, idle;
    for (const auto& [key, file] : files_) {
      std::lock_guard file_lock(file->mu_);
      if (file->assembly_ && file->assembly_->touched <= idle_since) idle.push_back(file);
      // Writers may still have it open: their writes fail with the sticky error until a
      // retry succeeds, so the retry must not wait for them to close.
      if (!file->error_.ok() && !file->conflict_ && !file->committing_ &&
          now >= file->next_retry_) {
        file->next_retry_ = now + options_.max_retry;  // Until Settle sets the real one.
        due.push_back(file);
      }
    }
    lock.unlock();
    for (const auto& file : due) StartCommit(file);
    // Outside mu_: a spill is a disk write.
    for (const auto& file : idle) file->SpillIfIdle(idle_since);
    lock.lock();
  }
}

std::shared_ptr<DirtyFile> Writeback::Find(const std::string& key) const {
  std::lock_guard lock(mu_);
  auto it = files_.find(key);
  return it == files_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<DirtyFile>> Writeback::Under(const std::string& prefix) const {
  std::vector<std::shared_ptr<DirtyFile>> out;
  std::lock_guard lock(mu_);
  for (const auto& [key, file] : files_) {
    if (key.compare(0, prefix.size(), prefix) == 0) out.push_back(file);
  }
  return out;
}

void Writeback::Unlink(const std::string& key) {
  std::shared_ptr<DirtyFile> file;
  {
    std::lock_guard lock(mu_);
    auto it = files_.find(key);
    if (it == files_.end()) return;
    file = it->second;
    files_.erase(it);
  }
  std::string upload_id;
  {
    std::unique_lock lock(file->mu_);
    file->MarkUnlinkedLocked();
    file->changed_.wait(lock, [&] { return !file->committing_ && file->eager_in_flight_ == 0; });
    upload_id = std::exchange(file->upload_id_, std::string());
  }
  if (!upload_id.empty()) (void)client_.AbortMultipart(key, upload_id, {Deadline()});
}

void DirtyFile::WaitUntilSettledLocked(std::unique_lock<std::mutex>& lock) {
  ++eager_waiters_;
  changed_.wait(lock, [&] { return !committing_ && eager_in_flight_ == 0; });
  --eager_waiters_;
}

Writeback::CommitHold Writeback::HoldCommits(const std::string& key) {
  std::shared_ptr<DirtyFile> file = Find(key);
  if (!file) return CommitHold();
  std::unique_lock lock(file->mu_);
  file->WaitUntilSettledLocked(lock);
  // Commit(), early parts, the retry loop and Drain() all stand back from a file marked
  // committing.
  file->committing_ = true;
  return CommitHold(this, std::move(file));
}

Writeback::CommitHold& Writeback::CommitHold::operator=(CommitHold&& other) noexcept {
  if (this != &other) {
    Release();
    owner_ = std::exchange(other.owner_, nullptr);
    file_ = std::move(other.file_);
  }
  return *this;
}

Writeback::CommitHold::~CommitHold() { Release(); }

void Writeback::CommitHold::Release() {
  if (!file_) return;
  std::shared_ptr<DirtyFile> file = std::move(file_);
  {
    std::lock_guard lock(file->mu_);
    file->committing_ = false;
    file->changed_.notify_all();
  }
  // Drain() may be waiting for this file to settle.
  std::lock_guard lock(owner_->mu_);
  owner_->settled_.notify_all();
}

void Writeback::CommitHold::Discard() {
  if (!file_) return;
  std::shared_ptr<DirtyFile> file = std::move(file_);
  std::string key, upload_id;
  {
    std::lock_guard lock(owner_->mu_);
    std::lock_guard file_lock(file->mu_);
    auto it = owner_->files_.find(file->key_);
    if (it != owner_->files_.end() && it->second == file) owner_->files_.erase(it);
    file->MarkUnlinkedLocked();
    file->committing_ = false;
    file->changed_.notify_all();
    key = file->key_;
    upload_id = std::exchange(file->upload_id_, std::string());
    owner_->settled_.notify_all();
  }
  if (!upload_id.empty()) (void)owner_->client_.AbortMultipart(key, upload_id, {owner_->Deadline()});
}

Result<Writeback::RenameOutcome> Writeback::Rename(const std::string& from,
                                                   const std::string& to,
                                                   std::string* copy_etag) {
  auto file = Find(from);
  if (!file) return RenameOutcome::kNotDirty;
  {
    // A torn file is never committed (MarkTorn): it lets go of the name, which the caller
    // renames as the object S3 holds, and goes to lost+found/ at its last release.
    std::lock_guard lock(mu_);
    std::lock_guard file_lock(file->mu_);
    if (file->torn_) {
      auto it = files_.find(from);
      if (it != files_.end() && it->second == file) files_.erase(it);
      return RenameOutcome::kNotDirty;
    }
  }
  // Make the object at `from` (if any) hold the file's current bytes and metadata, so
  // that one server-side copy carries them; a file never committed needs no server work
  // at all. A commit in flight decides which: wait for it first. A file a program still
  // has open is not committed: its bytes may be half-written (no such version reaches S3,
  // docs/SEMANTICS.md), so the copy is of the object as it was, and the file's changes
  // land at `to` when it is closed.
  bool exists_remotely = false;
  bool writers_open = false;
  {
    std::unique_lock lock(file->mu_);
    file->WaitUntilSettledLocked(lock);
    exists_remotely = file->exists_remotely_;
    writers_open = file->writers_ > 0;
  }
  if (exists_remotely && !writers_open) {
    // Overtaken by a change (a truncate by path meanwhile): tried again, as by Sync.
    BFS_RETURN_IF_ERROR(CommitNow(file));
  }
  // Hold the file's commits off while its key changes.
  std::string upload_id;
  {
    std::unique_lock lock(file->mu_);
    file->WaitUntilSettledLocked(lock);
    exists_remotely = file->exists_remotely_;
    if (!exists_remotely) {
      // Nothing of the file is in S3: journal it under `to` before anything changes, so
      // that a daemon killed from here on uploads it there, never at `from` (a name the
      // caller gave up). A journal that cannot be written (a full spool disk) fails the
      // rename with nothing changed.
      SpoolRecord moved = file->RecordLocked();
      moved.key = to;
      moved.create_only = false;
      if (Status journaled = spool_.WriteRecord(moved); !journaled.ok()) return journaled;
    }
    file->committing_ = true;
    upload_id = std::exchange(file->upload_id_, std::string());
    file->parts_.clear();
  }
  if (!upload_id.empty()) (void)client_.AbortMultipart(from, upload_id, {Deadline()});
  Status copied = Status::Ok();
  std::string etag;
  uint64_t size = 0;
  if (exists_remotely) {
    std::string base_etag;
    {
      std::lock_guard lock(file->mu_);
      base_etag = file->base_etag_;
      size = file->base_limit_;  // Committed just now: the object's size.
    }
    if (writers_open) {
      // Not committed: the object is the one the file was opened on, whose size the file
      // no longer knows once it was truncated.
      auto head = client_.Head({from, ""}, {Deadline()});
      if (!head.ok()) {
        copied = head.status();
      } else if (!base_etag.empty() && head->etag != base_etag) {
        copied = Status(ErrorCode::kStale, "'" + from +
                                               "' changed in the bucket since it was opened "
                                               "for writing; close it before renaming it");
      } else {
        size = head->size;
      }
    }
    if (copied.ok()) {
      auto copy =
          CopyObject(client_, CopySpec{from, to, size, base_etag, std::nullopt, {}}, Deadline());
      if (copy.ok()) {
        etag = *copy;
      } else {
        copied = copy.status();
      }
    }
  }
  std::shared_ptr<DirtyFile> replaced;
  {
    std::lock_guard lock(mu_);
    std::lock_guard file_lock(file->mu_);
    file->committing_ = false;
    file->changed_.notify_all();
    if (!copied.ok()) return copied;
    auto it = files_.find(from);
    if (it != files_.end() && it->second == file) files_.erase(it);
    if (auto target = files_.find(to); target != files_.end()) replaced = target->second;
    if (replaced) files_.erase(to);
    file->key_ = to;
    file->create_only_ = false;
    if (exists_remotely) {
      file->base_etag_ = etag;
    } else {
      ++file->data_generation_;  // Nothing at `to` yet: it must be uploaded.
    }
    const bool clean = exists_remotely && file->writers_ == 0 &&
                       file->data_generation_ == file->committed_data_generation_ &&
                       file->meta_generation_ == file->committed_meta_generation_;
    if (clean) {
      // Its bytes are all in the copy: nothing left to upload.
      spool_.RemoveRecord(file->id_);
      file->remove_on_destroy_ = true;
    } else {
      files_[to] = file;
      file->remove_on_destroy_ = false;
      if (Status journaled = file->JournalLocked(); !journaled.ok()) {
        // Never committed: the record written above already names `to`. Copied: the
        // record still names `from` and the base `from` had, which the caller deletes
        // next, so a daemon killed before this file's next upload would find its base
        // gone and keep the data in lost+found/ rather than at `to`. Nothing is lost;
        // say so, since the rename itself has happened.
        LogEvent(*Logger("writeback"), spdlog::level::err,
                 exists_remotely
                     ? "renamed, but the spool journal could not record the new name; if "
                       "the daemon dies before the file's next upload, its data goes to "
                       "lost+found/ instead"
                     : "renamed, but the spool journal could not record the file's new state",
                 {{"from", from}, {"to", to}, {"error", journaled.ToString()}});
      }
    }
  }
  if (replaced) {
    std::lock_guard lock(replaced->mu_);
    replaced->MarkUnlinkedLocked();
  }
  if (exists_remotely) {
    // The copy's ETag from RGW may be empty on some paths; the next commit would then
    // If-Match nothing: learn it.
    if (etag.empty()) {
      auto head = client_.Head({to, ""}, {Deadline()});
      if (head.ok()) {
        std::lock_guard lock(file->mu_);
        file->base_etag_ = head->etag;
        etag = head->etag;
      }
    }
    if (copy_etag != nullptr) *copy_etag = etag;
  }
  return exists_remotely ? RenameOutcome::kCopied : RenameOutcome::kMoved;
}

std::shared_ptr<DirtyFile> Writeback::Adopt(const SpoolRecord& record, int fd) {
  auto file = std::shared_ptr<DirtyFile>(new DirtyFile(*this, record.key, record.id, fd));
  std::lock_guard lock(file->mu_);
  file->base_etag_ = record.base_etag;
  file->base_limit_ = record.base_limit;
  // Left by a daemon with a larger budget, or a large object rewritten in place.
  if (record.size > layout_.max_file_size()) file->layout_ = &uncapped_layout_;
  file->exists_remotely_ = !record.base_etag.empty();
  file->create_only_ = record.create_only;
  file->size_ = record.size;
  for (const Extent& e : record.present) file->present_.Add(e.begin, e.end);
  file->metadata_ = record.metadata;
  if (auto it = file->metadata_.find("mtime"); it != file->metadata_.end()) {
    if (auto mtime = DecodeMtime(it->second)) file->mtime_ = *mtime;
    file->metadata_.erase(it);
  }
  file->data_generation_ = 1;
  file->closed_ = true;
  return file;
}

void Writeback::AdoptLanded(DirtyFile& file, const SpoolRecord& record) {
  auto head = client_.Head({record.key, ""}, {Deadline()});
  if (!head.ok() || head->etag != record.landing_etag) return;  // Not landed: commit it.
  // A PUT stores the record's metadata exactly, down to the nanosecond mtime: someone
  // else's object of the same bytes (an identical O_EXCL file) is not ours (lost_reply.h).
  const bool multipart = record.landing_etag.find('-') != std::string::npos;
  if (!multipart && head->metadata != record.metadata) return;
  Logger("writeback")->info("'{}' had reached S3 before the previous daemon stopped",
                            record.key);
  std::lock_guard lock(file.mu_);
  file.base_etag_ = head->etag;
  file.base_limit_ = head->size;
  file.exists_remotely_ = true;
  file.create_only_ = false;
  file.committed_data_generation_ = file.data_generation_;
  // Mode, uid and gid set after the upload began need a copy still (the mtime a multipart
  // upload carries is that of its start, as in a commit that did not stop).
  for (const char* name : {"mode", "uid", "gid"}) {
    auto want = file.metadata_.find(name);
    auto have = head->metadata.find(name);
    const bool same = (want == file.metadata_.end()) == (have == head->metadata.end()) &&
                      (want == file.metadata_.end() || want->second == have->second);
    if (!same) ++file.meta_generation_;
  }
}

size_t Writeback::Recover() {
  // Before any upload of this daemon's own starts: every note is a previous daemon's.
  AbortLeftoverUploads(spool_, client_, Deadline());
  std::vector<SpoolRecord> records = spool_.Scan();
  // Oldest written first: the later written record of a key wins (SpoolRecord::seq;
  // records of older daemons have none, and go by their ids, which start with their
  // creation time).
  std::sort(records.begin(), records.end(), [](const SpoolRecord& a, const SpoolRecord& b) {
    return std::tie(a.seq, a.id) < std::tie(b.seq, b.id);
  });
  std::vector<std::shared_ptr<DirtyFile>> adopted;
  for (const SpoolRecord& record : records) {
    if (!record.closed) {
      spool_.Quarantine(record.id, "'" + record.key +
                                       "' was still open for writing when the previous daemon "
                                       "stopped; it was not uploaded, to not replace the object "
                                       "with a half-written file");
      continue;
    }
    auto fd = spool_.OpenData(record.id);
    if (!fd.ok()) {
      spool_.Quarantine(record.id, fd.status().ToString());
      continue;
    }
    auto file = Adopt(record, *fd);
    if (!record.landing_etag.empty()) AdoptLanded(*file, record);
    std::shared_ptr<DirtyFile> superseded;
    {
      std::lock_guard lock(mu_);
      if (auto it = files_.find(record.key); it != files_.end()) superseded = it->second;
      files_[record.key] = file;
    }
    if (superseded) {
      std::erase(adopted, superseded);
      spool_.Quarantine(superseded->id_, "superseded by a newer spool record of '" + record.key + "'");
    }
    adopted.push_back(file);
  }
  if (adopted.empty()) return 0;
  Logger("writeback")->info("finishing {} upload(s) left in the spool by the previous daemon",
                            adopted.size());
  for (const auto& file : adopted) StartCommit(file);
  size_t committed = 0;
  std::unique_lock lock(mu_);
  settled_.wait(lock, [&] { return commits_in_flight_ == 0; });
  for (const auto& file : adopted) {
    std::lock_guard file_lock(file->mu_);
    if (file->error_.ok()) ++committed;
  }
  return committed;
}

Status Writeback::Drain(MonoTime deadline, bool closed_only) {
  std::vector<std::shared_ptr<DirtyFile>> pending;
  {
    std::lock_guard lock(mu_);
    for (const auto& [key, file] : files_) pending.push_back(file);
  }
  size_t left_open = 0;
  for (const auto& file : pending) {
    bool needs_commit = false;
    {
      std::lock_guard lock(file->mu_);
      // A writer that closed (FLUSH) but whose RELEASE has not come is done: only changes
      // not yet closed make a file half-written.
      if (file->torn_ || (closed_only && file->unflushed_writers_ > 0)) {
        ++left_open;
        continue;
      }
      needs_commit = !file->unlinked_ && !file->committing_ &&
                     (!file->error_.ok() ? !file->conflict_
                                         : file->data_generation_ != file->committed_data_generation_ ||
                                               file->meta_generation_ != file->committed_meta_generation_);
    }
    // Not only closed files: what is there goes up, being written or not.
    if (needs_commit) StartCommit(file, /*unless_being_written=*/closed_only);
  }
  std::unique_lock lock(mu_);
  while (commits_in_flight_ > 0) {
    const Duration left = deadline - clock_.Now();
    if (left <= Duration::zero()) {
      return Status(ErrorCode::kTimeout, std::to_string(commits_in_flight_) +
                                             " upload(s) still running at the deadline; their "
                                             "data stays in the spool for the next mount");
    }
    settled_.wait_for(lock, std::min<Duration>(left, std::chrono::seconds(1)));
  }
  size_t failed = 0;
  for (const auto& [key, file] : files_) {
    std::lock_guard file_lock(file->mu_);
    if (!file->error_.ok()) ++failed;
  }
  if (failed > 0) {
    return Status(ErrorCode::kServerError,
                  std::to_string(failed) + " file(s) could not be uploaded; their data stays in " +
                      spool_.directory() + " and the next mount retries");
  }
  if (left_open > 0) {
    return Status(ErrorCode::kBusy,
                  std::to_string(left_open) + " file(s) still open for writing were not uploaded; "
                  "they stay in " + spool_.directory() +
                      " (the next mount keeps them in lost+found/ unless they are closed first)");
  }
  return Status::Ok();
}

Writeback::Stats Writeback::GetStats() const {
  Stats s;
  {
    std::lock_guard lock(mu_);
    s.dirty_files = files_.size();
    s.commits_in_flight = commits_in_flight_;
    for (const auto& [key, file] : files_) {
      std::lock_guard file_lock(file->mu_);
      s.dirty_bytes += file->size_;
      s.eager_parts += static_cast<size_t>(file->eager_in_flight_);
      if (!file->error_.ok()) {
        if (s.failing_files++ == 0) s.first_error = key + ": " + file->error_.ToString();
      }
    }
  }
  s.commits = counters_.commits.load();
  s.failed_commits = counters_.failed_commits.load();
  s.restarted_commits = counters_.restarted_commits.load();
  s.parts_queued = parts_pool_->queued();
  s.parts_uploaded = counters_.parts_uploaded.load();
  s.parts_copied = counters_.parts_copied.load();
  s.part_buffers_reused = counters_.part_buffers_reused.load();
  {
    std::lock_guard lock(spare_mu_);
    s.assemblies = assemblies_;
  }
  s.parts_assembled = counters_.parts_assembled.load();
  s.parts_sent_from_memory = counters_.parts_sent_from_memory.load();
  s.bytes_uploaded = counters_.bytes_uploaded.load();
  return s;
}

}  // namespace bucketfs::cache
