#include "fuse/attributes.h"

#include <sys/stat.h>

#include <charconv>
#include <cmath>

#include "cache/writeback.h"

namespace bucketfs::fs {
namespace {

template <typename T>
bool ParseDecimal(const std::string& s, T* out) {
  T v{};
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size()) return false;
  *out = v;
  return true;
}

const std::string* Find(const s3::UserMetadata& md, const char* name) {
  auto it = md.find(name);
  return it == md.end() ? nullptr : &it->second;
}

// Mode, owner and mtime from `info`'s metadata over what `a` holds; returns the mode's file
// type bits (0 when there is no valid mode).
uint32_t ApplyMetadata(const s3::ObjectInfo& info, Attributes* a) {
  uint32_t type_bits = 0;
  if (const auto* mode = Find(info.metadata, "mode")) {
    uint32_t m = 0;
    if (ParseDecimal(*mode, &m)) {
      a->permissions = m & 07777;
      type_bits = m & S_IFMT;
    }
  }
  if (const auto* uid = Find(info.metadata, "uid")) ParseDecimal(*uid, &a->uid);
  if (const auto* gid = Find(info.metadata, "gid")) ParseDecimal(*gid, &a->gid);
  if (const auto* mtime = Find(info.metadata, "mtime")) {
    // Seconds, possibly with a fraction ("1700000000" or "1700000000.25"), exactly.
    if (auto t = cache::DecodeMtime(*mtime)) a->mtime = *t;
  }
  return type_bits;
}

}  // namespace

uint32_t Attributes::Mode() const {
  uint32_t type_bits = S_IFREG;
  if (type == FileType::kDirectory) type_bits = S_IFDIR;
  if (type == FileType::kSymlink) type_bits = S_IFLNK;
  return type_bits | (permissions & 07777);
}

Attributes ObjectAttributes(const s3::ObjectInfo& info, const AttributeDefaults& defaults) {
  Attributes a;
  a.type = FileType::kRegular;
  a.size = info.size;
  a.mtime = info.last_modified;
  a.permissions = defaults.file_mode & 07777;
  a.uid = defaults.uid;
  a.gid = defaults.gid;
  if (ApplyMetadata(info, &a) == S_IFLNK) a.type = FileType::kSymlink;
  return a;
}

Attributes MarkerAttributes(const s3::ObjectInfo& marker, const AttributeDefaults& defaults) {
  Attributes a = DirectoryAttributes(marker.last_modified, defaults);
  ApplyMetadata(marker, &a);  // Its type bits mean nothing: the marker makes a directory.
  return a;
}

s3::UserMetadata AttributeMetadata(FileType type, uint32_t permissions, uint32_t uid, uint32_t gid) {
  uint32_t mode = permissions & 07777;
  switch (type) {
    case FileType::kRegular: mode |= S_IFREG; break;
    case FileType::kDirectory: mode |= S_IFDIR; break;
    case FileType::kSymlink: mode |= S_IFLNK; break;
  }
  return {{"mode", std::to_string(mode)}, {"uid", std::to_string(uid)}, {"gid", std::to_string(gid)}};
}

Attributes DirectoryAttributes(WallTime mtime, const AttributeDefaults& defaults) {
  Attributes a;
  a.type = FileType::kDirectory;
  a.permissions = defaults.dir_mode & 07777;
  a.uid = defaults.uid;
  a.gid = defaults.gid;
  a.size = 4096;
  a.mtime = mtime;
  a.nlink = 2;
  return a;
}

}  // namespace bucketfs::fs
