#include "fuse/names.h"

#include <fmt/format.h>

#include "common/log.h"

namespace bucketfs::fs {

NameProblem CheckName(std::string_view name) {
  if (name.empty()) return NameProblem::kEmpty;
  if (name == "." || name == "..") return NameProblem::kDot;
  if (name.size() > kMaxNameBytes) return NameProblem::kTooLong;
  if (name.find('\0') != std::string_view::npos) return NameProblem::kNul;
  return NameProblem::kNone;
}

std::string_view DescribeNameProblem(NameProblem problem) {
  switch (problem) {
    case NameProblem::kNone: return "a valid name";
    case NameProblem::kEmpty: return "an empty path component (from '//' or a leading '/')";
    case NameProblem::kDot: return "a '.' or '..' path component";
    case NameProblem::kTooLong: return "a path component longer than 255 bytes";
    case NameProblem::kNul: return "a NUL byte in a path component";
  }
  return "an unusable name";
}

std::string ParentOf(const std::string& path) {
  const auto slash = path.rfind('/');
  return slash == std::string::npos ? std::string() : path.substr(0, slash);
}

std::string NameOf(const std::string& path) {
  const auto slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string ChildPath(std::string_view parent, std::string_view name) {
  std::string out;
  out.reserve(parent.size() + 1 + name.size());
  out.append(parent);
  if (!parent.empty()) out.push_back('/');
  out.append(name);
  return out;
}

std::string DirectoryPrefix(std::string_view dir_path) {
  if (dir_path.empty()) return {};
  std::string out(dir_path);
  out.push_back('/');
  return out;
}

bool IsReservedKey(std::string_view key) { return key.starts_with(kReservedPrefix); }

}  // namespace bucketfs::fs

namespace bucketfs::fs {

void OnceLog::Report(const std::string& key, std::string_view what) {
  {
    std::lock_guard lock(mu_);
    if (seen_.contains(key)) return;
    if (seen_.size() < kMaxRemembered) seen_.insert(key);
  }
  LogEvent(*Logger("fuse"), spdlog::level::warn,
           fmt::format("{} (shown once; the object is left untouched in S3)", what),
           {{"key", key}});
}

size_t OnceLog::reported() const {
  std::lock_guard lock(mu_);
  return seen_.size();
}

}  // namespace bucketfs::fs
