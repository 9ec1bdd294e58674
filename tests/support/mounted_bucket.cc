#include "tests/support/mounted_bucket.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#ifndef BUCKETFS_BINARY
#error "BUCKETFS_BINARY must name the bucketfs executable"
#endif

namespace bucketfs::testing {

std::string Pattern(uint64_t seed, uint64_t offset, size_t length) {
  std::string out(length, '\0');
  for (size_t i = 0; i < length; ++i) {
    const uint64_t at = offset + i;
    const uint64_t word = at / 8 + (seed << 40);
    out[i] = static_cast<char>((word >> (8 * (at % 8))) & 0xff);
  }
  return out;
}

const char kPatternPython[] = R"PY(
from array import array
def pattern(seed, offset, n):
    first = offset // 8
    last = (offset + n + 7) // 8
    words = array('Q', range(first + (seed << 40), last + (seed << 40)))
    skip = offset - first * 8
    return words.tobytes()[skip:skip + n]
class PatternReader:
    def __init__(self, seed, size):
        self.seed, self.size, self.pos = seed, size, 0
    def read(self, n=-1):
        if n is None or n < 0: n = self.size - self.pos
        n = min(n, self.size - self.pos)
        out = pattern(self.seed, self.pos, n)
        self.pos += n
        return out
)PY";

bool SanitizedBuild() {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  return true;
#else
  return false;
#endif
}

MountedBucket::MountedBucket(const S3Server& server, std::string bucket)
    : server_(server), bucket_(std::move(bucket)) {
  static std::atomic<int> counter{0};
  dir_ = "/tmp/bfs-fuse-" + std::to_string(getpid()) + "-" + std::to_string(counter++);
  std::filesystem::create_directories(dir_);
  log_path_ = dir_ + ".log";
}

MountedBucket::~MountedBucket() {
  if (pid_ > 0) {
    if (Unmount() == -1 && pid_ > 0) {
      kill(pid_, SIGKILL);
      WaitExit(10);
    }
  }
  if (IsMounted()) {
    // The daemon is gone but the kernel mount lingers: detach it.
    RunCommand("fusermount3 -uz " + dir_);
  }
  std::error_code ec;
  std::filesystem::remove(dir_, ec);
  std::filesystem::remove_all(dir_ + ".spool", ec);
  std::filesystem::remove(log_path_, ec);
}

bool IsBucketfsMountedAt(const std::string& dir) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string id, parent, dev, root, point;
    f >> id >> parent >> dev >> root >> point;
    if (point == dir && line.find(" - fuse.bucketfs ") != std::string::npos) return true;
  }
  return false;
}

bool MountedBucket::IsMounted() const { return IsBucketfsMountedAt(dir_); }

bool MountedBucket::Mount(const std::vector<std::string>& extra_args) {
  std::vector<std::string> args = {BUCKETFS_BINARY, "serve", bucket_, dir_, "-f",
                                   "--endpoint", server_.endpoint, "--region", server_.region};
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  if (std::find(extra_args.begin(), extra_args.end(), "--spool-dir") == extra_args.end()) {
    // Each mount its own spool, removed with it (tests that remount pass their own).
    args.push_back("--spool-dir");
    args.push_back(dir_ + ".spool");
  }
  pid_ = fork();
  if (pid_ == 0) {
    int fd = open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd >= 0) {
      dup2(fd, STDOUT_FILENO);
      dup2(fd, STDERR_FILENO);
    }
    setenv("S3_ACCESS_KEY", server_.access_key.c_str(), 1);
    setenv("S3_SECRET_KEY", server_.secret_key.c_str(), 1);
    unsetenv("S3_BUCKET");
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    if (IsMounted()) return true;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      ADD_FAILURE() << "bucketfs exited before mounting (status " << status << "):\n" << Log();
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ADD_FAILURE() << "bucketfs did not mount within 30 s:\n" << Log();
  return false;
}

int MountedBucket::WaitExit(int timeout_seconds) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return -1;
}

int MountedBucket::Unmount() {
  if (pid_ <= 0) return -1;
  CommandResult r = RunCommand("fusermount3 -u " + dir_);
  EXPECT_EQ(r.exit_code, 0) << "fusermount3 -u " << dir_ << ": " << r.output;
  return WaitExit(30);
}

int MountedBucket::Signal(int signal) {
  if (pid_ <= 0) return -1;
  kill(pid_, signal);
  return WaitExit(30);
}

int MountedBucket::Kill() {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGKILL);
  const int status = WaitExit(30);
  CommandResult r = RunCommand("fusermount3 -u -z " + dir_);
  EXPECT_EQ(r.exit_code, 0) << "fusermount3 -u -z " << dir_ << ": " << r.output;
  return status;
}

std::string MountedBucket::Log() const {
  std::ifstream in(log_path_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

uint64_t MountedBucket::PeakRss() const {
  std::ifstream in("/proc/" + std::to_string(pid_) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path << ": " << strerror(errno);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace bucketfs::testing
