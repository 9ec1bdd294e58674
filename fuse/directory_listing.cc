#include "fuse/directory_listing.h"

#include <algorithm>
#include <map>

namespace bucketfs::fs {

const ListedEntry* DirectoryListing::Find(std::string_view name) const {
  auto it = std::lower_bound(entries.begin(), entries.end(), name,
                             [](const ListedEntry& e, std::string_view n) { return e.name < n; });
  return it != entries.end() && it->name == name ? &*it : nullptr;
}

void DirectoryListing::Set(std::string_view name, const ListedEntry* entry) {
  auto it = std::lower_bound(entries.begin(), entries.end(), name,
                             [](const ListedEntry& e, std::string_view n) { return e.name < n; });
  const bool found = it != entries.end() && it->name == name;
  if (entry == nullptr) {
    if (found) entries.erase(it);
  } else if (found) {
    *it = *entry;
  } else {
    entries.insert(it, *entry);
  }
}

Result<std::shared_ptr<DirectoryListing>> ListDirectory(
    s3::ObjectClient& client, const std::string& dir_path, MonoTime now,
    const std::function<MonoTime()>& page_deadline, OnceLog& problems, size_t max_pages) {
  const std::string prefix = DirectoryPrefix(dir_path);
  auto listing = std::make_shared<DirectoryListing>();
  listing->fetched_at = now;
  listing->exists = dir_path.empty();

  // Files and directories arrive in two sorted streams; a map merges them and resolves the
  // clash of `a` and `a/` in the directory's favour.
  std::map<std::string, ListedEntry, std::less<>> merged;
  auto usable = [&](const std::string& key, std::string_view name) {
    if (dir_path.empty() && IsReservedKey(key)) return false;
    if (NameProblem p = CheckName(name); p != NameProblem::kNone) {
      problems.Report(key, std::string("hidden: the key has ") +
                               std::string(DescribeNameProblem(p)));
      return false;
    }
    return true;
  };

  s3::ListRequest req;
  req.prefix = prefix;
  req.delimiter = "/";
  for (size_t pages = 1;; ++pages) {
    BFS_ASSIGN_OR_RETURN(s3::ListPage page, client.List(req, {page_deadline()}));
    for (auto& obj : page.objects) {
      listing->exists = true;
      std::string_view name = std::string_view(obj.key).substr(prefix.size());
      if (name.empty()) {  // The directory's own marker.
        listing->has_marker = true;
        continue;
      }
      if (!usable(obj.key, name)) continue;
      ListedEntry e;
      e.name = std::string(name);
      e.type = FileType::kRegular;
      e.size = obj.size;
      e.mtime = obj.last_modified;
      e.etag = std::move(obj.etag);
      auto [it, inserted] = merged.try_emplace(e.name, std::move(e));
      if (!inserted) {
        problems.Report(obj.key,
                        "both a file and a directory; shown as the directory, the file is hidden");
      }
    }
    for (auto& cp : page.common_prefixes) {
      listing->exists = true;
      // "prefix/name/": strip the prefix and the trailing '/'.
      std::string_view name = std::string_view(cp).substr(prefix.size());
      if (!name.empty() && name.back() == '/') name.remove_suffix(1);
      if (!usable(cp, name)) continue;
      ListedEntry e;
      e.name = std::string(name);
      e.type = FileType::kDirectory;
      auto it = merged.find(e.name);
      if (it != merged.end()) {
        if (it->second.type == FileType::kRegular) {
          problems.Report(prefix + e.name,
                          "both a file and a directory; shown as the directory, the file is hidden");
        }
        it->second = std::move(e);
      } else {
        merged.emplace(e.name, std::move(e));
      }
    }
    if (!page.is_truncated || page.next_continuation_token.empty()) break;
    if (pages == max_pages) return std::shared_ptr<DirectoryListing>();
    req.continuation_token = std::move(page.next_continuation_token);
  }
  listing->entries.reserve(merged.size());
  for (auto& [name, e] : merged) listing->entries.push_back(std::move(e));
  return listing;
}

}  // namespace bucketfs::fs
