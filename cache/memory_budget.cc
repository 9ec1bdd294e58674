#include "cache/memory_budget.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>
#include <string_view>
#include <utility>

#include "common/log.h"

namespace bucketfs::cache {

// --- Reservation -----------------------------------------------------------------------

Reservation::Reservation(Reservation&& other) noexcept
    : budget_(std::exchange(other.budget_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

Reservation& Reservation::operator=(Reservation&& other) noexcept {
  if (this != &other) {
    Release();
    budget_ = std::exchange(other.budget_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

uint64_t Reservation::Shrink(uint64_t n) {
  n = std::min(n, bytes_);
  if (n == 0) return 0;
  bytes_ -= n;
  budget_->Give(n);
  return n;
}

void Reservation::Release() {
  if (bytes_ > 0) budget_->Give(bytes_);
  bytes_ = 0;
  budget_ = nullptr;
}

// --- MemoryBudget ----------------------------------------------------------------------

MemoryBudget::MemoryBudget(uint64_t capacity_bytes, Clock& clock)
    : capacity_(capacity_bytes), clock_(clock) {}

MemoryBudget::~MemoryBudget() {
  std::lock_guard lock(mu_);
  if (used_ != 0 || !queue_.empty()) {
    std::fprintf(stderr,
                 "MemoryBudget destroyed with %llu bytes still reserved and %zu waiters; every "
                 "Reservation must be released before its budget\n",
                 static_cast<unsigned long long>(used_), queue_.size());
    std::abort();
  }
}

void MemoryBudget::TakeLocked(uint64_t bytes) {
  used_ += bytes;
  peak_ = std::max(peak_, used_);
}

void MemoryBudget::GrantLocked() {
  while (!queue_.empty() && queue_.front()->bytes <= capacity_ - used_) {
    Waiter* w = queue_.front();
    queue_.pop_front();
    TakeLocked(w->bytes);
    w->granted = true;
    // Notified under mu_: the waiter cannot return (and destroy `cv`) before we unlock.
    w->cv.notify_one();
  }
}

void MemoryBudget::Give(uint64_t bytes) {
  std::lock_guard lock(mu_);
  used_ -= bytes;
  GrantLocked();
}

std::string MemoryBudget::DescribeLocked() const {
  return fmt::format("{} of {} in use, {} waiting", FormatBytes(used_), FormatBytes(capacity_),
                     queue_.size());
}

Result<Reservation> MemoryBudget::TryReserve(uint64_t bytes) {
  if (bytes == 0) return Reservation();
  if (bytes > capacity_) {
    return Status(ErrorCode::kInvalidArgument,
                  fmt::format("memory budget: a reservation of {} can never fit the budget of {}",
                              FormatBytes(bytes), FormatBytes(capacity_)));
  }
  std::lock_guard lock(mu_);
  if (!queue_.empty() || bytes > capacity_ - used_) {
    return Status(ErrorCode::kBusy,
                  fmt::format("memory budget: {} not available now ({})", FormatBytes(bytes),
                              DescribeLocked()),
                  /*retryable=*/true);
  }
  TakeLocked(bytes);
  return Reservation(this, bytes);
}

Result<Reservation> MemoryBudget::Reserve(uint64_t bytes, MonoTime deadline) {
  if (bytes == 0) return Reservation();
  if (bytes > capacity_) {
    return Status(ErrorCode::kInvalidArgument,
                  fmt::format("memory budget: a reservation of {} can never fit the budget of {}",
                              FormatBytes(bytes), FormatBytes(capacity_)));
  }
  std::unique_lock lock(mu_);
  if (queue_.empty() && bytes <= capacity_ - used_) {
    TakeLocked(bytes);
    return Reservation(this, bytes);
  }
  Waiter self;
  self.bytes = bytes;
  auto pos = queue_.insert(queue_.end(), &self);
  while (!self.granted) {
    MonoTime now = clock_.Now();
    if (now >= deadline) break;
    self.cv.wait_for(lock, deadline - now);
  }
  if (self.granted) return Reservation(this, bytes);  // GrantLocked() dequeued us.
  queue_.erase(pos);
  // If we were the head, the waiters behind us may fit now.
  GrantLocked();
  return Status(ErrorCode::kTimeout,
                fmt::format("memory budget: {} not available before the deadline ({}); "
                            "the daemon is at its memory limit: raise the budget or do less "
                            "at once",
                            FormatBytes(bytes), DescribeLocked()),
                /*retryable=*/true);
}

uint64_t MemoryBudget::used() const {
  std::lock_guard lock(mu_);
  return used_;
}

uint64_t MemoryBudget::peak() const {
  std::lock_guard lock(mu_);
  return peak_;
}

uint64_t MemoryBudget::waiters() const {
  std::lock_guard lock(mu_);
  return queue_.size();
}

MemoryBudgetStats MemoryBudget::Stats() const {
  std::lock_guard lock(mu_);
  return {capacity_, used_, peak_, queue_.size()};
}

// --- Default budget --------------------------------------------------------------------

namespace {

enum class LimitKind { kBytes, kUnlimited, kMissing, kUnreadable };

struct Limit {
  LimitKind kind = LimitKind::kMissing;
  uint64_t bytes = 0;
};

// Reads a cgroup limit file: a decimal byte count, or "max" (cgroup v2's "no limit").
Limit ReadLimitFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return {LimitKind::kMissing, 0};
  std::stringstream buf;
  buf << in.rdbuf();
  std::string text = buf.str();
  std::string_view v = text;
  while (!v.empty() && std::isspace(static_cast<unsigned char>(v.back()))) v.remove_suffix(1);
  while (!v.empty() && std::isspace(static_cast<unsigned char>(v.front()))) v.remove_prefix(1);
  if (v == "max") return {LimitKind::kUnlimited, 0};
  uint64_t bytes = 0;
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), bytes);
  if (v.empty() || ec != std::errc() || end != v.data() + v.size()) {
    Logger("cache")->warn("memory limit: cannot parse {} (\"{}\"); ignoring it", path,
                          v.substr(0, 64));
    return {LimitKind::kUnreadable, 0};
  }
  return {LimitKind::kBytes, bytes};
}

uint64_t PhysicalBytes(const MemoryLimitSources& sources) {
  if (sources.physical_bytes) return *sources.physical_bytes;
  long pages = sysconf(_SC_PHYS_PAGES);
  long page_size = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page_size <= 0) return std::numeric_limits<uint64_t>::max();
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size);
}

}  // namespace

namespace {

// This process's cgroup paths from /proc/self/cgroup: the v2 one ("0::PATH") and the v1
// memory controller's ("N:a,memory,b:PATH"). "/" for one that is not listed: the root.
struct OwnCgroups {
  std::string v2 = "/";
  std::string v1_memory = "/";
};

OwnCgroups ReadOwnCgroups(const std::string& path) {
  OwnCgroups own;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    const auto first = line.find(':');
    const auto second = first == std::string::npos ? first : line.find(':', first + 1);
    if (second == std::string::npos) continue;
    const std::string_view controllers = std::string_view(line).substr(first + 1, second - first - 1);
    std::string cgroup = line.substr(second + 1);
    if (cgroup.empty() || cgroup.front() != '/') continue;
    if (line.compare(0, first, "0") == 0 && controllers.empty()) {
      own.v2 = std::move(cgroup);
      continue;
    }
    for (size_t at = 0; at <= controllers.size();) {
      const size_t comma = std::min(controllers.find(',', at), controllers.size());
      if (controllers.substr(at, comma - at) == "memory") own.v1_memory = cgroup;
      at = comma + 1;
    }
  }
  return own;
}

// The smallest limit in `file` of the cgroup at `root` + `cgroup` and of each ancestor up to
// `root` itself; `limit` if none is lower.
uint64_t TightestOnThePath(const std::string& root, const std::string& cgroup,
                           const char* file, uint64_t limit) {
  std::string level = cgroup;
  for (;;) {
    while (level.size() > 1 && level.back() == '/') level.pop_back();
    const Limit l = ReadLimitFile(root + (level == "/" ? std::string() : level) + "/" + file);
    // cgroup v1 says "no limit" with a huge number (LONG_MAX rounded to pages): min() drops it.
    if (l.kind == LimitKind::kBytes && l.bytes > 0) limit = std::min(limit, l.bytes);
    if (level == "/" || level.empty()) return limit;
    const auto slash = level.rfind('/');
    level = slash == 0 || slash == std::string::npos ? "/" : level.substr(0, slash);
  }
}

}  // namespace

uint64_t DetectMemoryLimit(const MemoryLimitSources& sources) {
  const OwnCgroups own = ReadOwnCgroups(sources.proc_self_cgroup);
  uint64_t limit = PhysicalBytes(sources);
  limit = TightestOnThePath(sources.cgroup_v2_root, own.v2, "memory.max", limit);
  limit = TightestOnThePath(sources.cgroup_v1_memory_root, own.v1_memory,
                            "memory.limit_in_bytes", limit);
  return limit;
}

uint64_t DefaultBudgetBytes(const MemoryLimitSources& sources) {
  return std::clamp(DetectMemoryLimit(sources) / 4, kMinDefaultBudget, kMaxDefaultBudget);
}

}  // namespace bucketfs::cache
