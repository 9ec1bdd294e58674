// Attributes: what stat() shows for an object or a directory, and where each field comes from.
//
// Contract:
//  - Size and ETag come from the object; mtime from `x-amz-meta-mtime` (seconds, s3fs's
//    convention, fractions allowed) or else Last-Modified; mode, uid and gid from
//    `x-amz-meta-mode|uid|gid` (decimal, as s3fs writes them: the mode includes the file type
//    bits) or else the mount's defaults. A mode whose type bits say symlink makes a symlink
//    (the object's body is the target); any other type bits are ignored: whether a name is
//    a file or a directory is decided by the bucket's structure, not by metadata.
//  - Listings carry no user metadata: entries filled from a listing use the defaults until a
//    HEAD of the object (of a directory: of its marker) refreshes them.
//  - Pure functions: no I/O, no clock.
#pragma once

#include <cstdint>
#include <string>

#include "common/clock.h"
#include "s3/object_client.h"

namespace bucketfs::fs {

using InodeId = uint64_t;
inline constexpr InodeId kRootInode = 1;

enum class FileType { kRegular, kDirectory, kSymlink };

struct Attributes {
  InodeId ino = 0;
  FileType type = FileType::kRegular;
  uint32_t permissions = 0;  // The low 12 bits of st_mode.
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint64_t size = 0;
  WallTime mtime{};
  uint32_t nlink = 1;

  // st_mode: type bits | permissions.
  uint32_t Mode() const;
};

struct AttributeDefaults {
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint32_t file_mode = 0644;
  uint32_t dir_mode = 0755;
};

// Attributes of an object seen by HEAD or GET (metadata present) or in a listing (absent).
Attributes ObjectAttributes(const s3::ObjectInfo& info, const AttributeDefaults& defaults);
// The x-amz-meta-mode|uid|gid that store `type`, `permissions`, `uid` and `gid` (s3fs's
// convention: decimal, the mode with its file type bits). The mtime is added by whoever
// writes the object (cache::EncodeMtime).
s3::UserMetadata AttributeMetadata(FileType type, uint32_t permissions, uint32_t uid, uint32_t gid);

// Attributes of a directory; `mtime` from its marker object, or the mount's start.
Attributes DirectoryAttributes(WallTime mtime, const AttributeDefaults& defaults);
// Attributes of a directory whose marker object (`dir/`) a HEAD saw: mode, uid, gid and
// mtime from the marker's metadata as for a file (chmod, chown and touch -d of a directory
// store them there), else the defaults and the marker's Last-Modified.
Attributes MarkerAttributes(const s3::ObjectInfo& marker, const AttributeDefaults& defaults);

}  // namespace bucketfs::fs
