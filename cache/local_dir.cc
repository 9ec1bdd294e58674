#include "cache/local_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>

namespace bucketfs::cache {

Status LocalIoStatus(int err, const std::string& what) {
  const ErrorCode code = err == ENOSPC || err == EDQUOT  ? ErrorCode::kNoSpace
                         : err == EACCES || err == EPERM ? ErrorCode::kAccessDenied
                                                         : ErrorCode::kInternal;
  return Status(code, what + ": " + std::strerror(err));
}

std::string SafeDirName(const std::string& bucket) {
  std::string out;
  for (char c : bucket) {
    out +=
        (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_') ? c : '_';
  }
  if (out.empty() || out == "." || out == "..") out = "_" + out;
  return out;
}

Result<int> LockDirectory(const std::string& dir, const std::string& purpose,
                          const std::string& busy_advice) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return LocalIoStatus(ec.value(), "cannot create " + purpose + " directory '" + dir + "'");
  const std::string lock_path = dir + "/lock";
  const int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return LocalIoStatus(errno, "cannot open '" + lock_path + "'");
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(fd);
    if (err == EWOULDBLOCK) {
      return Status(ErrorCode::kBusy, purpose + " '" + dir +
                                          "' is in use by another bucketfs daemon; " + busy_advice);
    }
    return LocalIoStatus(err, "cannot lock '" + lock_path + "'");
  }
  return fd;
}

}  // namespace bucketfs::cache
