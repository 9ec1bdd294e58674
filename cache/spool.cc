#include "cache/spool.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <xxhash.h>

#include "cache/local_dir.h"
#include "common/log.h"

namespace bucketfs::cache {
namespace {

namespace stdfs = std::filesystem;
using nlohmann::json;

json ToJson(const SpoolRecord& r) {
  json present = json::array();
  for (const Extent& e : r.present) present.push_back({e.begin, e.end});
  return json{{"version", 1},
              {"id", r.id},
              {"key", r.key},
              {"base_etag", r.base_etag},
              {"base_limit", r.base_limit},
              {"create_only", r.create_only},
              {"size", r.size},
              {"present", present},
              {"metadata", r.metadata},
              {"closed", r.closed},
              {"landing_etag", r.landing_etag},
              {"seq", r.seq}};
}

SpoolRecord FromJson(const json& j) {
  SpoolRecord r;
  r.id = j.at("id").get<std::string>();
  r.key = j.at("key").get<std::string>();
  r.base_etag = j.at("base_etag").get<std::string>();
  r.base_limit = j.at("base_limit").get<uint64_t>();
  r.create_only = j.at("create_only").get<bool>();
  r.size = j.at("size").get<uint64_t>();
  for (const auto& e : j.at("present")) r.present.push_back({e.at(0).get<uint64_t>(), e.at(1).get<uint64_t>()});
  r.metadata = j.at("metadata").get<s3::UserMetadata>();
  r.closed = j.at("closed").get<bool>();
  r.landing_etag = j.value("landing_etag", std::string());  // Absent in older records.
  r.seq = j.value("seq", uint64_t{0});                         // Absent in older records.
  return r;
}

std::string NewId() {
  static std::atomic<uint64_t> counter{0};
  static const uint64_t salt = std::random_device{}();
  const auto now = std::chrono::system_clock::now().time_since_epoch().count();
  char buf[64];
  std::snprintf(buf, sizeof buf, "%016llx-%08llx-%06llx", static_cast<unsigned long long>(now),
                static_cast<unsigned long long>(salt & 0xffffffffu),
                static_cast<unsigned long long>(counter.fetch_add(1)));
  return buf;
}

}  // namespace

Result<std::unique_ptr<Spool>> Spool::Open(const std::string& root, const std::string& bucket) {
  const std::string dir = (stdfs::path(root) / SafeDirName(bucket)).string();
  std::error_code ec;
  for (const char* sub : {"files", "lost+found", "uploads"}) {
    stdfs::create_directories(stdfs::path(dir) / sub, ec);
    if (ec) {
      return LocalIoStatus(ec.value(), "cannot create the spool directory '" + dir + "/" + sub +
                                         "' (set --spool-dir to a writable local directory)");
    }
  }
  BFS_ASSIGN_OR_RETURN(const int fd,
                       LockDirectory(dir, "the spool", "give each mount its own --spool-dir"));
  return std::unique_ptr<Spool>(new Spool(dir, fd));
}

Spool::Spool(std::string dir, int lock_fd)
    : dir_(std::move(dir)),
      lock_fd_(lock_fd),
      next_seq_(static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                          std::chrono::system_clock::now().time_since_epoch())
                                          .count())) {}

Spool::~Spool() { ::close(lock_fd_); }

std::string Spool::DataPath(const std::string& id) const { return dir_ + "/files/" + id + ".data"; }

Result<std::pair<std::string, int>> Spool::CreateData() {
  const std::string id = NewId();
  const std::string path = DataPath(id);
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return LocalIoStatus(errno, "cannot create spool file '" + path + "'");
  return std::make_pair(id, fd);
}

Result<int> Spool::OpenData(const std::string& id) const {
  const std::string path = DataPath(id);
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return LocalIoStatus(errno, "cannot open spool file '" + path + "'");
  return fd;
}

namespace {

// Writes all of `text` at `offset`; false with errno set on failure.
bool PwriteAll(int fd, const std::string& text, off_t offset) {
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::pwrite(fd, text.data() + done, text.size() - done,
                               offset + static_cast<off_t>(done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    done += static_cast<size_t>(n);
  }
  return true;
}

// The largest record rewritten in place: one page, which a write copies whole or not at all.
constexpr size_t kInPlaceRecordBytes = 4096;

}  // namespace

Status Spool::WriteRecord(const SpoolRecord& record) const {
  const std::string path = dir_ + "/files/" + record.id + ".json";
  const std::string tmp = path + ".tmp";
  SpoolRecord stamped = record;
  stamped.seq = next_seq_.fetch_add(1, std::memory_order_relaxed);
  std::string text = ToJson(stamped).dump();
  if (text.size() <= kInPlaceRecordBytes) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return LocalIoStatus(errno, "cannot write spool journal '" + path + "'");
    struct stat st {};
    if (::fstat(fd, &st) == 0 && static_cast<uint64_t>(st.st_size) <= kInPlaceRecordBytes) {
      // Padded to the old length, so no byte of the old record is left after the new one.
      if (text.size() < static_cast<size_t>(st.st_size)) {
        text.append(static_cast<size_t>(st.st_size) - text.size(), ' ');
      }
      const bool written = PwriteAll(fd, text, 0);
      const int err = errno;
      ::close(fd);
      if (!written) {
        // A record just created and left empty (a full disk) would read as damaged.
        if (st.st_size == 0) ::unlink(path.c_str());
        return LocalIoStatus(err, "cannot write spool journal '" + path + "'");
      }
      return Status::Ok();
    }
    ::close(fd);  // A larger record was there: replace it whole.
  }
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return LocalIoStatus(errno, "cannot write spool journal '" + tmp + "'");
  if (!PwriteAll(fd, text, 0)) {
    const int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    return LocalIoStatus(err, "cannot write spool journal '" + tmp + "'");
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return LocalIoStatus(err, "cannot replace spool journal '" + path + "'");
  }
  return Status::Ok();
}

void Spool::RemoveRecord(const std::string& id) const {
  ::unlink((dir_ + "/files/" + id + ".json").c_str());
}

void Spool::Remove(const std::string& id) const {
  RemoveRecord(id);
  ::unlink(DataPath(id).c_str());
}

void Spool::Quarantine(const std::string& id, const std::string& why) const {
  for (const char* ext : {".data", ".json"}) {
    const std::string from = dir_ + "/files/" + id + ext;
    const std::string to = dir_ + "/lost+found/" + id + ext;
    ::rename(from.c_str(), to.c_str());
  }
  Logger("writeback")->error("spool file {} moved to {}/lost+found/: {}", id, dir_, why);
}

bool Spool::HoldsFiles(const std::string& root, const std::string& bucket) {
  std::error_code ec;
  for (const auto& entry :
       stdfs::directory_iterator(stdfs::path(root) / SafeDirName(bucket) / "files", ec)) {
    if (entry.path().extension() == ".json") return true;
  }
  return false;
}

std::vector<SpoolRecord> Spool::Scan() const {
  std::vector<SpoolRecord> records;
  std::vector<std::string> data_ids;
  std::error_code ec;
  for (const auto& entry : stdfs::directory_iterator(stdfs::path(dir_) / "files", ec)) {
    const std::string name = entry.path().filename().string();
    const std::string ext = entry.path().extension().string();
    const std::string id = entry.path().stem().string();
    if (ext == ".data") {
      data_ids.push_back(id);
      continue;
    }
    if (ext == ".tmp") {  // A record replacement cut short; the old record still stands.
      stdfs::remove(entry.path(), ec);
      continue;
    }
    if (ext != ".json") continue;
    std::ifstream in(entry.path());
    std::stringstream text;
    text << in.rdbuf();
    try {
      SpoolRecord record = FromJson(json::parse(text.str()));
      if (record.id != id) throw std::runtime_error("its id does not match the file name");
      // Records written from now on come after every one found (a clock set back).
      uint64_t next = next_seq_.load(std::memory_order_relaxed);
      while (next <= record.seq &&
             !next_seq_.compare_exchange_weak(next, record.seq + 1, std::memory_order_relaxed)) {
      }
      records.push_back(std::move(record));
    } catch (const std::exception& e) {
      Quarantine(id, std::string("unreadable journal record: ") + e.what());
    }
  }
  for (const std::string& id : data_ids) {
    const bool has_record = std::any_of(records.begin(), records.end(),
                                        [&](const SpoolRecord& r) { return r.id == id; });
    if (!has_record && stdfs::exists(stdfs::path(dir_) / "files" / (id + ".data"), ec)) {
      ::unlink(DataPath(id).c_str());  // Committed or unlinked before the daemon stopped.
    }
  }
  return records;
}

namespace {

// uploads/<XXH3 of the upload id>.json: upload ids are the server's and may hold any byte.
std::string UploadEntryPath(const std::string& dir, const std::string& upload_id) {
  char name[32];
  std::snprintf(name, sizeof name, "%016llx.json",
                static_cast<unsigned long long>(XXH3_64bits(upload_id.data(), upload_id.size())));
  return dir + "/uploads/" + name;
}

}  // namespace

void Spool::NoteUpload(const StartedUpload& upload) const {
  const std::string path = UploadEntryPath(dir_, upload.upload_id);
  const std::string text = json{{"key", upload.key}, {"upload_id", upload.upload_id}}.dump();
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  const bool written = fd >= 0 && PwriteAll(fd, text, 0);
  const int err = errno;
  if (fd >= 0) ::close(fd);
  if (!written) {
    if (fd >= 0) ::unlink(path.c_str());
    Logger("writeback")->warn(
        "cannot note the multipart upload of '{}' in {} ({}): if the daemon is killed before it "
        "completes, abort upload {} by hand or let a lifecycle rule do it",
        upload.key, path, std::strerror(err), upload.upload_id);
  }
}

void Spool::ForgetUpload(const std::string& upload_id) const {
  ::unlink(UploadEntryPath(dir_, upload_id).c_str());
}

std::vector<StartedUpload> Spool::NotedUploads() const {
  std::vector<StartedUpload> uploads;
  std::error_code ec;
  for (const auto& entry : stdfs::directory_iterator(stdfs::path(dir_) / "uploads", ec)) {
    std::ifstream in(entry.path());
    std::stringstream text;
    text << in.rdbuf();
    try {
      const json j = json::parse(text.str());
      uploads.push_back({j.at("key").get<std::string>(), j.at("upload_id").get<std::string>()});
    } catch (const std::exception&) {
      stdfs::remove(entry.path(), ec);  // Cut short by a crash: it names no upload.
    }
  }
  return uploads;
}

Status Spool::IoError(int err, const std::string& what) const {
  if (err == ENOSPC || err == EDQUOT) {
    return Status(ErrorCode::kNoSpace, what + ": the spool disk is full (" + dir_ +
                                           "); free space there or give --spool-dir more room");
  }
  return LocalIoStatus(err, what);
}

uint64_t Spool::FreeBytes() const {
  struct statvfs st {};
  if (::statvfs(dir_.c_str(), &st) != 0) return 0;
  return static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
}

}  // namespace bucketfs::cache
