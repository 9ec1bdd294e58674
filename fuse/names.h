// Names: how object keys map to file names and back.
//
// Contract:
//  - A directory's path is its key prefix without the trailing '/'; the root is "". A file's
//    path is its key. ChildPath("a/b", "c") == "a/b/c"; ChildPath("", "c") == "c".
//  - A key component is a file name only if it is non-empty, not "." or "..", at most
//    kMaxNameBytes bytes and has no NUL byte. Keys with any other component (from "//",
//    "a/./b", a 300-byte component, a leading '/') cannot be shown as files: the listing
//    hides them and logs each once (DESIGN.md), and S3 still holds them untouched.
//  - Keys under kReservedPrefix at the root belong to bucketfs itself (the lease object of
//    the mount coordinator) and never appear in the mount.
#pragma once

#include <mutex>
#include <string>
#include <string_view>
#include <unordered_set>

namespace bucketfs::fs {

inline constexpr size_t kMaxNameBytes = 255;
inline constexpr size_t kMaxKeyBytes = 1024;  // S3's limit on a key.
inline constexpr std::string_view kReservedPrefix = ".bucketfs/";

enum class NameProblem { kNone, kEmpty, kDot, kTooLong, kNul };

NameProblem CheckName(std::string_view name);
inline bool IsValidName(std::string_view name) { return CheckName(name) == NameProblem::kNone; }
// "an empty path component ('//')", "longer than 255 bytes", ...
std::string_view DescribeNameProblem(NameProblem problem);

std::string ChildPath(std::string_view parent, std::string_view name);
// The inverse: ParentOf("a/b/c") == "a/b", NameOf("a/b/c") == "c"; ParentOf("c") == "".
std::string ParentOf(const std::string& path);
std::string NameOf(const std::string& path);
// The ListObjects prefix of a directory: "" for the root, "a/b/" otherwise.
std::string DirectoryPrefix(std::string_view dir_path);
bool IsReservedKey(std::string_view key);

}  // namespace bucketfs::fs

namespace bucketfs::fs {

// Logs each hidden key or name clash once per daemon (at most kMaxRemembered keys, then
// every further one is logged as it comes), so a bucket full of odd keys does not flood the
// log on every listing. Thread-safe.
class OnceLog {
 public:
  static constexpr size_t kMaxRemembered = 100000;
  // Logs "`what`: <key>" at warning level the first time `key` is reported.
  void Report(const std::string& key, std::string_view what);
  size_t reported() const;

 private:
  mutable std::mutex mu_;
  std::unordered_set<std::string> seen_;  // Guarded by mu_.
};

}  // namespace bucketfs::fs
