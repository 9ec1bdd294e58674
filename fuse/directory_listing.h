// DirectoryListing: one directory of the mount, read from ListObjectsV2 in one pass.
//
// Contract:
//  - ListDirectory() pages through the whole prefix with delimiter '/', following
//    continuation tokens, and returns every entry sorted by name: objects are files, common
//    prefixes and `dir/` marker objects are directories (implicit directories need no
//    marker). The directory's own marker (`dir/` itself) is not an entry.
//  - A name that is both an object `a` and a prefix `a/` is shown once, as the directory;
//    the clash is reported once. Keys whose name cannot be a file name (fuse/names.h) and
//    bucketfs's reserved keys are left out; the odd ones are reported once.
//  - `exists` is false when nothing at all is under the prefix (no objects, no prefixes, no
//    marker): that directory is gone. The root always exists.
//  - Listings carry size, Last-Modified and ETag but no user metadata (see attributes.h).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/status.h"
#include "fuse/attributes.h"
#include "fuse/names.h"
#include "s3/object_client.h"

namespace bucketfs::fs {

struct ListedEntry {
  std::string name;
  FileType type = FileType::kRegular;
  uint64_t size = 0;
  WallTime mtime{};  // Files: Last-Modified. Directories: their marker's, or zero.
  std::string etag;  // Files only.
  // The inode table's tick (fuse/inode_table.h) when this entry was the truth: set by whoever
  // lists or patches it. A node stamped later is newer than the entry.
  uint64_t as_of = 0;
};

struct DirectoryListing {
  std::vector<ListedEntry> entries;  // Sorted by name, unique.
  bool exists = false;
  // The directory's own marker object (`dir/`) is there: it stays a directory when it has
  // no entries left.
  bool has_marker = false;
  MonoTime fetched_at{};

  // The entry named `name`, or nullptr.
  const ListedEntry* Find(std::string_view name) const;
  // Sets the entry named `name` to `entry`, or removes it when `entry` is null; keeps the
  // entries sorted.
  void Set(std::string_view name, const ListedEntry* entry);
};

// `page_deadline` is asked before each page's request: a directory of millions of keys
// takes many pages, and one deadline for them all would fail it however healthy each page.
// A directory with more than `max_pages` pages is not listed to its end: nullptr.
Result<std::shared_ptr<DirectoryListing>> ListDirectory(
    s3::ObjectClient& client, const std::string& dir_path, MonoTime now,
    const std::function<MonoTime()>& page_deadline, OnceLog& problems,
    size_t max_pages = SIZE_MAX);

}  // namespace bucketfs::fs
