#define FUSE_USE_VERSION 314
#include "fuse/adapter.h"

#include <fmt/format.h>
#include <fuse_lowlevel.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <string_view>
#include <vector>

#include "common/errno_map.h"
#include "common/log.h"
#include "common/metrics.h"
#include "fuse/filesystem.h"

namespace bucketfs::fs {
namespace {

Filesystem& Fs(fuse_req_t req) {
  return *static_cast<AdapterContext*>(fuse_req_userdata(req))->filesystem;
}

double Seconds(Duration d) { return std::chrono::duration<double>(d).count(); }

// What the metrics endpoint shows of the kernel's requests (common/metrics.h).
struct AdapterMetrics {
  Family<Histogram>& latency = Metrics().HistogramFamily(
      "bucketfs_fuse_operation_duration_seconds",
      "Time from a FUSE request's arrival to its reply, by operation", {"operation"});
  Family<Counter>& errors = Metrics().CounterFamily(
      "bucketfs_fuse_errors_total",
      "FUSE requests answered with an error, by operation and errno (ENOENT on lookup is the "
      "normal answer for a missing name)",
      {"operation", "errno"});
  Counter& read_bytes =
      Metrics()
          .CounterFamily("bucketfs_read_bytes_total", "Bytes returned to programs by read()")
          .Get();
  Counter& written_bytes =
      Metrics()
          .CounterFamily("bucketfs_written_bytes_total", "Bytes programs wrote with write()")
          .Get();
};

AdapterMetrics& TheMetrics() {
  static AdapterMetrics metrics;
  return metrics;
}

// An operation's name as a template argument, for Timed below.
template <size_t N>
struct OpName {
  constexpr OpName(const char (&name)[N]) { std::copy_n(name, N, text); }  // NOLINT: implicit.
  char text[N] = {};
};

// Timed<"read", Read>::Call is Read, timed into bucketfs_fuse_operation_duration_seconds:
// every handler replies before it returns, so its duration is the request's.
template <OpName kName, auto kOp>
struct Timed;

template <OpName kName, typename... Args, void (*kOp)(fuse_req_t, Args...)>
struct Timed<kName, kOp> {
  static void Call(fuse_req_t req, Args... args) {
    static Histogram& latency = TheMetrics().latency.With({std::string_view(kName.text)});
    const auto start = std::chrono::steady_clock::now();
    kOp(req, args...);
    latency.Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
                        .count());
  }
};

struct stat ToStat(const Attributes& a) {
  struct stat st {};
  st.st_ino = a.ino;
  st.st_mode = a.Mode();
  st.st_nlink = a.nlink;
  st.st_uid = a.uid;
  st.st_gid = a.gid;
  st.st_size = static_cast<off_t>(a.size);
  st.st_blksize = 1 << 20;  // Tools size their I/O by it (cp, dd's defaults).
  st.st_blocks = static_cast<blkcnt_t>((a.size + 511) / 512);
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(a.mtime.time_since_epoch());
  st.st_mtim.tv_sec = static_cast<time_t>(ns.count() / 1'000'000'000);
  st.st_mtim.tv_nsec = static_cast<long>(ns.count() % 1'000'000'000);
  st.st_atim = st.st_mtim;
  st.st_ctim = st.st_mtim;
  return st;
}

fuse_entry_param ToEntry(const EntryReply& e) {
  fuse_entry_param p{};
  p.ino = e.attr.ino;
  p.generation = e.generation;
  p.attr = ToStat(e.attr);
  p.attr_timeout = Seconds(e.ttl);
  p.entry_timeout = Seconds(e.ttl);
  return p;
}

// Replies with the errno of `status`, logging what is worth a line: a missing name is the
// normal answer to a lookup, everything else says what went wrong.
void ReplyError(fuse_req_t req, const char* op, const Status& status) {
  const int err = ToErrno(status);
  // The normal answers of a namespace (mkdir -p, rm -r, O_EXCL) are not problems.
  const bool expected = err == ENOENT || err == EEXIST || err == ENOTEMPTY;
  const auto level = expected ? spdlog::level::debug : spdlog::level::warn;
  const char* known = strerrorname_np(err);  // "ENOENT"; null for a number it does not know.
  const std::string errno_name = known != nullptr ? std::string(known) : std::to_string(err);
  TheMetrics().errors.With({op, errno_name}).Add();
  spdlog::logger& log = *Logger("fuse");
  if (log.should_log(level)) {  // Lookups of missing names are many: format only if shown.
    LogEvent(log, level, fmt::format("{}: {} ({})", op, status.ToString(), strerror(err)),
             {{"op", op}, {"errno", errno_name}});
  }
  fuse_reply_err(req, err);
}

Caller CallerOf(fuse_req_t req) {
  const fuse_ctx* ctx = fuse_req_ctx(req);
  return Caller{static_cast<uint32_t>(ctx->uid), static_cast<uint32_t>(ctx->gid)};
}

void ReplyEntry(fuse_req_t req, const char* op, const Result<EntryReply>& r) {
  if (!r.ok()) return ReplyError(req, op, r.status());
  fuse_entry_param e = ToEntry(*r);
  if (fuse_reply_entry(req, &e) != 0) Fs(req).Forget(e.ino, 1);
}

void ReplyStatus(fuse_req_t req, const char* op, const Status& status) {
  if (!status.ok()) return ReplyError(req, op, status);
  fuse_reply_err(req, 0);
}

void Init(void* userdata, fuse_conn_info* conn) {
  const auto* context = static_cast<const AdapterContext*>(userdata);
  conn->max_read = context->max_read;
  // readdirplus always: `ls -l` then needs no lookup per entry, and its attributes come
  // from the listing (no HEAD per entry).
  if (conn->capable & FUSE_CAP_READDIRPLUS) conn->want |= FUSE_CAP_READDIRPLUS;
  conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
  if (conn->capable & FUSE_CAP_ASYNC_READ) conn->want |= FUSE_CAP_ASYNC_READ;
  // The page cache is dropped on open when the ETag changed (no keep_cache) and when
  // attributes show a new size or mtime.
  if (conn->capable & FUSE_CAP_AUTO_INVAL_DATA) conn->want |= FUSE_CAP_AUTO_INVAL_DATA;
  if (conn->capable & FUSE_CAP_PARALLEL_DIROPS) conn->want |= FUSE_CAP_PARALLEL_DIROPS;
  if (conn->capable & FUSE_CAP_CACHE_SYMLINKS) conn->want |= FUSE_CAP_CACHE_SYMLINKS;
  conn->max_readahead = context->max_read;
  // 1 MiB writes (the kernel splits larger ones): fewer round trips per byte.
  conn->max_write = context->max_read;
  // open(O_TRUNC) arrives as one OPEN, not an OPEN then a SETATTR(size=0).
  if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC) conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
  // No FUSE_CAP_POSIX_LOCKS: the kernel keeps locks local to the mount, which is right
  // because the lease makes the mount the bucket's only writer.
}

void Lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  auto r = Fs(req).Lookup(parent, name);
  if (!r.ok()) return ReplyError(req, "lookup", r.status());
  fuse_entry_param e = ToEntry(*r);
  if (fuse_reply_entry(req, &e) != 0) Fs(req).Forget(e.ino, 1);  // The kernel never got it.
}

void Forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  Fs(req).Forget(ino, nlookup);
  fuse_reply_none(req);
}

void ForgetMulti(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  for (size_t i = 0; i < count; ++i) Fs(req).Forget(forgets[i].ino, forgets[i].nlookup);
  fuse_reply_none(req);
}

void GetAttr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* /*fi*/) {
  auto r = Fs(req).GetAttr(ino);
  if (!r.ok()) return ReplyError(req, "getattr", r.status());
  struct stat st = ToStat(r->attr);
  fuse_reply_attr(req, &st, Seconds(r->ttl));
}

void ReadLink(fuse_req_t req, fuse_ino_t ino) {
  auto r = Fs(req).ReadLink(ino);
  if (!r.ok()) return ReplyError(req, "readlink", r.status());
  fuse_reply_readlink(req, r->c_str());
}

void Open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  auto r = Fs(req).Open(ino, fi->flags);
  if (!r.ok()) return ReplyError(req, "open", r.status());
  fi->fh = r->handle;
  fi->keep_cache = r->keep_cache ? 1 : 0;
  if (fuse_reply_open(req, fi) != 0) Fs(req).Release(r->handle);
}

void Read(fuse_req_t req, fuse_ino_t /*ino*/, size_t size, off_t off, fuse_file_info* fi) {
  auto r = Fs(req).Read(fi->fh, static_cast<uint64_t>(off), size);
  if (!r.ok()) return ReplyError(req, "read", r.status());
  // The pieces point into pinned cache blocks: the kernel copies them straight from there.
  std::vector<iovec> iov;
  iov.reserve(r->pieces.size());
  size_t bytes = 0;
  for (const auto& p : r->pieces) {
    iov.push_back(iovec{const_cast<char*>(p.data()), p.size()});  // NOLINT: writev's API.
    bytes += p.size();
  }
  fuse_reply_iov(req, iov.data(), static_cast<int>(iov.size()));
  TheMetrics().read_bytes.Add(bytes);
}

void Release(fuse_req_t req, fuse_ino_t /*ino*/, fuse_file_info* fi) {
  Fs(req).Release(fi->fh);
  fuse_reply_err(req, 0);
}

void Create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
            fuse_file_info* fi) {
  auto r = Fs(req).Create(parent, name, mode & 07777, fi->flags, CallerOf(req));
  if (!r.ok()) return ReplyError(req, "create", r.status());
  fuse_entry_param e = ToEntry(r->entry);
  fi->fh = r->open.handle;
  fi->keep_cache = r->open.keep_cache ? 1 : 0;
  if (fuse_reply_create(req, &e, fi) != 0) {
    Fs(req).Release(r->open.handle);
    Fs(req).Forget(e.ino, 1);
  }
}

void Write(fuse_req_t req, fuse_ino_t /*ino*/, const char* buf, size_t size, off_t off,
           fuse_file_info* fi) {
  auto r = Fs(req).Write(fi->fh, static_cast<uint64_t>(off), {buf, size});
  if (!r.ok()) return ReplyError(req, "write", r.status());
  fuse_reply_write(req, *r);
  TheMetrics().written_bytes.Add(*r);
}

void Flush(fuse_req_t req, fuse_ino_t /*ino*/, fuse_file_info* fi) {
  ReplyStatus(req, "close", Fs(req).Flush(fi->fh));
}

void Fsync(fuse_req_t req, fuse_ino_t /*ino*/, int /*datasync*/, fuse_file_info* fi) {
  ReplyStatus(req, "fsync", Fs(req).Fsync(fi->fh));
}

WallTime ToWallTime(const timespec& ts) {
  return WallTime(std::chrono::duration_cast<WallTime::duration>(
      std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec)));
}

void SetAttr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info* fi) {
  SetAttrRequest r;
  if (to_set & FUSE_SET_ATTR_MODE) r.permissions = attr->st_mode & 07777;
  if (to_set & FUSE_SET_ATTR_UID) r.uid = attr->st_uid;
  if (to_set & FUSE_SET_ATTR_GID) r.gid = attr->st_gid;
  if (to_set & FUSE_SET_ATTR_SIZE) r.size = static_cast<uint64_t>(attr->st_size);
  if (to_set & FUSE_SET_ATTR_MTIME_NOW) {
    r.mtime = std::chrono::time_point_cast<WallTime::duration>(std::chrono::system_clock::now());
  } else if (to_set & FUSE_SET_ATTR_MTIME) {
    r.mtime = ToWallTime(attr->st_mtim);
  }
  if (fi != nullptr) r.handle = fi->fh;
  // Only the access time (or ctime) changing: nothing is stored for them.
  auto result = Fs(req).SetAttr(ino, r);
  if (!result.ok()) return ReplyError(req, "setattr", result.status());
  struct stat st = ToStat(result->attr);
  fuse_reply_attr(req, &st, Seconds(result->ttl));
}

void MkDir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  ReplyEntry(req, "mkdir", Fs(req).MkDir(parent, name, mode & 07777, CallerOf(req)));
}

void RmDir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  ReplyStatus(req, "rmdir", Fs(req).RmDir(parent, name));
}

void Unlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  ReplyStatus(req, "unlink", Fs(req).Unlink(parent, name));
}

void Symlink(fuse_req_t req, const char* target, fuse_ino_t parent, const char* name) {
  ReplyEntry(req, "symlink", Fs(req).Symlink(target, parent, name, CallerOf(req)));
}

void Rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t new_parent,
            const char* new_name, unsigned int flags) {
  ReplyStatus(req, "rename", Fs(req).Rename(parent, name, new_parent, new_name, flags));
}

void Link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t new_parent, const char* new_name) {
  ReplyError(req, "link", Fs(req).Link(ino, new_parent, new_name));
}

void OpenDir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  auto r = Fs(req).OpenDir(ino);
  if (!r.ok()) return ReplyError(req, "opendir", r.status());
  fi->fh = *r;
  fi->cache_readdir = 0;
  if (fuse_reply_open(req, fi) != 0) Fs(req).ReleaseDir(*r);
}

void ReadDirCommon(fuse_req_t req, size_t size, off_t off, fuse_file_info* fi, bool plus) {
  std::vector<char> buf(size);
  size_t used = 0;
  Filesystem& fs = Fs(req);
  std::vector<fuse_ino_t> counted;  // Lookups to take back if the reply does not arrive.
  auto fill = [&](const DirEntryView& e) {
    const std::string name(e.name);
    const off_t next = static_cast<off_t>(e.next_offset);
    size_t need = 0;
    if (plus) {
      fuse_entry_param p{};
      p.attr = ToStat(e.attr);
      if (e.counts_lookup) {
        p.ino = e.attr.ino;
        p.generation = fs.options().generation;
        p.attr_timeout = Seconds(e.ttl);
        p.entry_timeout = p.attr_timeout;
      }
      need = fuse_add_direntry_plus(req, buf.data() + used, size - used, name.c_str(), &p, next);
    } else {
      struct stat st {};
      st.st_ino = e.attr.ino;
      st.st_mode = e.attr.Mode();
      need = fuse_add_direntry(req, buf.data() + used, size - used, name.c_str(), &st, next);
    }
    if (need > size - used) return false;
    used += need;
    if (plus && e.counts_lookup) counted.push_back(e.attr.ino);
    return true;
  };
  Status st = fs.ReadDir(fi->fh, static_cast<uint64_t>(off), plus, fill);
  if (!st.ok()) {
    for (auto ino : counted) fs.Forget(ino, 1);
    return ReplyError(req, plus ? "readdirplus" : "readdir", st);
  }
  if (fuse_reply_buf(req, buf.data(), used) != 0) {
    for (auto ino : counted) fs.Forget(ino, 1);
  }
}

void ReadDir(fuse_req_t req, fuse_ino_t /*ino*/, size_t size, off_t off, fuse_file_info* fi) {
  ReadDirCommon(req, size, off, fi, false);
}

void ReadDirPlus(fuse_req_t req, fuse_ino_t /*ino*/, size_t size, off_t off,
                 fuse_file_info* fi) {
  ReadDirCommon(req, size, off, fi, true);
}

void ReleaseDir(fuse_req_t req, fuse_ino_t /*ino*/, fuse_file_info* fi) {
  Fs(req).ReleaseDir(fi->fh);
  fuse_reply_err(req, 0);
}

void StatFs(fuse_req_t req, fuse_ino_t /*ino*/) {
  StatFsReply r = Fs(req).StatFs();
  struct statvfs sv {};
  sv.f_bsize = r.block_size;
  sv.f_frsize = r.block_size;
  sv.f_blocks = r.blocks;
  sv.f_bfree = r.blocks_free;
  sv.f_bavail = r.blocks_free;
  sv.f_files = r.files;
  sv.f_ffree = r.files_free;
  sv.f_favail = r.files_free;
  sv.f_namemax = r.name_max;
  fuse_reply_statfs(req, &sv);
}

fuse_lowlevel_ops MakeOps() {
  fuse_lowlevel_ops ops{};
  ops.init = Init;
  ops.lookup = Timed<"lookup", Lookup>::Call;
  ops.forget = Timed<"forget", Forget>::Call;
  ops.forget_multi = Timed<"forget", ForgetMulti>::Call;
  ops.getattr = Timed<"getattr", GetAttr>::Call;
  ops.readlink = Timed<"readlink", ReadLink>::Call;
  ops.open = Timed<"open", Open>::Call;
  ops.read = Timed<"read", Read>::Call;
  ops.release = Timed<"release", Release>::Call;
  ops.opendir = Timed<"opendir", OpenDir>::Call;
  ops.readdir = Timed<"readdir", ReadDir>::Call;
  ops.readdirplus = Timed<"readdirplus", ReadDirPlus>::Call;
  ops.releasedir = Timed<"releasedir", ReleaseDir>::Call;
  ops.statfs = Timed<"statfs", StatFs>::Call;
  ops.create = Timed<"create", Create>::Call;
  ops.write = Timed<"write", Write>::Call;
  ops.flush = Timed<"close", Flush>::Call;  // FLUSH comes with every close().
  ops.fsync = Timed<"fsync", Fsync>::Call;
  ops.setattr = Timed<"setattr", SetAttr>::Call;
  ops.mkdir = Timed<"mkdir", MkDir>::Call;
  ops.rmdir = Timed<"rmdir", RmDir>::Call;
  ops.unlink = Timed<"unlink", Unlink>::Call;
  ops.symlink = Timed<"symlink", Symlink>::Call;
  ops.rename = Timed<"rename", Rename>::Call;
  ops.link = Timed<"link", Link>::Call;
  // No xattr operations: libfuse answers ENOSYS, after which the kernel stops asking and
  // answers EOPNOTSUPP (ENOTSUP) itself. S3 metadata is not a fit for arbitrary binary
  // attributes, and `cp -a`/`rsync -X` handle ENOTSUP (docs/SEMANTICS.md).
  return ops;
}

const fuse_lowlevel_ops kOps = MakeOps();

}  // namespace

const void* LowLevelOps() { return &kOps; }
size_t LowLevelOpsSize() { return sizeof(kOps); }

}  // namespace bucketfs::fs
