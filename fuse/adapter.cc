#define FUSE_USE_VERSION 314
#include "fuse/adapter.h"

#include <fuse_lowlevel.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "common/errno_map.h"
#include "common/log.h"
#include "fuse/filesystem.h"

namespace bucketfs::fs {
namespace {

Filesystem& Fs(fuse_req_t req) {
  return *static_cast<AdapterContext*>(fuse_req_userdata(req))->filesystem;
}

double Seconds(Duration d) { return std::chrono::duration<double>(d).count(); }

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
  if (err != ENOENT) Logger("fuse")->warn("{}: {} ({})", op, status.ToString(), strerror(err));
  fuse_reply_err(req, err);
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
  for (const auto& p : r->pieces) {
    iov.push_back(iovec{const_cast<char*>(p.data()), p.size()});  // NOLINT: writev's API.
  }
  fuse_reply_iov(req, iov.data(), static_cast<int>(iov.size()));
}

void Release(fuse_req_t req, fuse_ino_t /*ino*/, fuse_file_info* fi) {
  Fs(req).Release(fi->fh);
  fuse_reply_err(req, 0);
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
        p.attr_timeout = Seconds(fs.options().metadata_ttl);
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
  ops.lookup = Lookup;
  ops.forget = Forget;
  ops.forget_multi = ForgetMulti;
  ops.getattr = GetAttr;
  ops.readlink = ReadLink;
  ops.open = Open;
  ops.read = Read;
  ops.release = Release;
  ops.opendir = OpenDir;
  ops.readdir = ReadDir;
  ops.readdirplus = ReadDirPlus;
  ops.releasedir = ReleaseDir;
  ops.statfs = StatFs;
  return ops;
}

const fuse_lowlevel_ops kOps = MakeOps();

}  // namespace

const void* LowLevelOps() { return &kOps; }
size_t LowLevelOpsSize() { return sizeof(kOps); }

}  // namespace bucketfs::fs
