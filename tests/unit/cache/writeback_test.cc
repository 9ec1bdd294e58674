#include "cache/writeback.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cache/memory_budget.h"
#include "cache/spool.h"
#include "cache/upload_ledger.h"
#include "cache/write_fence.h"
#include "common/clock.h"
#include "s3/fake_client.h"
#include "s3/fault_client.h"
#include "s3/forwarding_client.h"
#include "s3/object_client.h"
#include "tests/support/eventually.h"

namespace bucketfs::cache {
namespace {

using namespace std::chrono_literals;
namespace stdfs = std::filesystem;
using testing::Eventually;

constexpr uint64_t kMiB = 1ull << 20;
// The smallest part S3 allows; PartLayout clamps anything smaller to it.
constexpr uint64_t kPart = s3::kMinPartSize;
constexpr Duration kWait = 5s;

const s3::UserMetadata kMeta = {{"mode", "33188"}, {"uid", "1000"}, {"gid", "1000"}};
// The FakeClock's wall time (1'700'000'000 s), as the commit stores it.
const std::string kMtime = "1700000000";

s3::UserMetadata Stored(s3::UserMetadata md) {
  md["mtime"] = kMtime;
  return md;
}

std::string Body(size_t n, uint64_t seed = 1) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint64_t v = rng();
    std::memcpy(&s[i], &v, 8);
  }
  for (; i < n; ++i) s[i] = static_cast<char>(rng());
  return s;
}

std::span<const char> Bytes(const std::string& s) { return {s.data(), s.size()}; }

// Compares bodies without printing megabytes on a mismatch.
::testing::AssertionResult SameBytes(const std::optional<std::string>& got, const std::string& want) {
  if (!got) return ::testing::AssertionFailure() << "no such object";
  if (got->size() != want.size()) {
    return ::testing::AssertionFailure() << "size " << got->size() << ", expected " << want.size();
  }
  const auto diff = std::mismatch(got->begin(), got->end(), want.begin());
  if (diff.first != got->end()) {
    return ::testing::AssertionFailure() << "first difference at byte " << (diff.first - got->begin());
  }
  return ::testing::AssertionSuccess();
}

// Plays RGW where the fake plays AWS: CompleteMultipartUpload is refused (InvalidPart) while
// the upload holds parts numbered past the last one listed. Everything else is forwarded.
// For tests of parts in flight, an UploadPart of a held part number waits until released.
class RgwLikeClient final : public s3::ForwardingClient {
 public:
  explicit RgwLikeClient(s3::ObjectClient& inner) : s3::ForwardingClient(inner) {}

  int refused_completes() const {
    std::lock_guard lock(mu_);
    return refused_;
  }
  void HoldPart(int number) {
    std::lock_guard lock(mu_);
    held_.insert(number);
  }
  void ReleasePart(int number) {
    std::lock_guard lock(mu_);
    held_.erase(number);
    released_.notify_all();
  }
  // UploadPart calls waiting on a held part number now.
  int waiting() const {
    std::lock_guard lock(mu_);
    return waiting_;
  }

  Result<s3::PartInfo> UploadPart(const s3::UploadPartRequest& req,
                                  const s3::CallOptions& opts) override {
    {
      std::unique_lock lock(mu_);
      ++waiting_;
      released_.wait(lock, [&] { return !held_.contains(req.part_number); });
      --waiting_;
    }
    auto r = inner().UploadPart(req, opts);
    if (r.ok()) Record(req.upload_id, req.part_number);
    return r;
  }
  Result<s3::PartInfo> UploadPartCopy(const s3::UploadPartCopyRequest& req,
                                      const s3::CallOptions& opts) override {
    auto r = inner().UploadPartCopy(req, opts);
    if (r.ok()) Record(req.upload_id, req.part_number);
    return r;
  }
  Result<s3::PutResult> CompleteMultipart(const s3::CompleteMultipartRequest& req,
                                          const s3::CallOptions& opts) override {
    {
      std::lock_guard lock(mu_);
      int last_listed = 0;
      for (const auto& p : req.parts) last_listed = std::max(last_listed, p.part_number);
      const auto& sent = parts_[req.upload_id];
      if (!sent.empty() && *sent.rbegin() > last_listed) {
        ++refused_;
        return Status(ErrorCode::kBadRequest,
                      "InvalidPart: part " + std::to_string(*sent.rbegin()) +
                          " was uploaded but is not listed")
            .WithServerDetails(400, "InvalidPart", "rgw-like");
      }
    }
    auto r = inner().CompleteMultipart(req, opts);
    if (r.ok()) Forget(req.upload_id);
    return r;
  }
  Status AbortMultipart(const std::string& key, const std::string& upload_id,
                        const s3::CallOptions& opts) override {
    Forget(upload_id);
    return inner().AbortMultipart(key, upload_id, opts);
  }

 private:
  void Record(const std::string& upload_id, int number) {
    std::lock_guard lock(mu_);
    parts_[upload_id].insert(number);
  }
  void Forget(const std::string& upload_id) {
    std::lock_guard lock(mu_);
    parts_.erase(upload_id);
  }

  mutable std::mutex mu_;
  std::map<std::string, std::set<int>> parts_;  // Guarded by mu_.
  int refused_ = 0;                             // Guarded by mu_.
  std::set<int> held_;                          // Guarded by mu_.
  int waiting_ = 0;                             // Guarded by mu_.
  std::condition_variable released_;            // With mu_: a part was released.
};

// CreateMultipart waits until the test opens the gate, then answers `answer` (or forwards
// when it is Ok): a server slow to refuse the upload. Everything else is forwarded.
class GatedCreateClient final : public s3::ForwardingClient {
 public:
  explicit GatedCreateClient(s3::ObjectClient& inner) : s3::ForwardingClient(inner) {}

  void Open(Status answer) {
    std::lock_guard lock(mu_);
    open_ = true;
    answer_ = std::move(answer);
    changed_.notify_all();
  }
  int calls() const {
    std::lock_guard lock(mu_);
    return calls_;
  }
  int waiting() const {
    std::lock_guard lock(mu_);
    return waiting_;
  }

  Result<std::string> CreateMultipart(const s3::CreateMultipartRequest& req,
                                      const s3::CallOptions& opts) override {
    {
      std::unique_lock lock(mu_);
      ++calls_;
      ++waiting_;
      changed_.wait(lock, [&] { return open_; });
      --waiting_;
      if (!answer_.ok()) return answer_;
    }
    return inner().CreateMultipart(req, opts);
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable changed_;  // With mu_: the gate opened.
  bool open_ = false;                // Guarded by mu_.
  Status answer_;                    // Guarded by mu_.
  int calls_ = 0;                    // Guarded by mu_.
  int waiting_ = 0;                  // Guarded by mu_.
};

// UploadPart waits for a permit each; everything else is forwarded.
class GatedPartClient final : public s3::ForwardingClient {
 public:
  explicit GatedPartClient(s3::ObjectClient& inner) : s3::ForwardingClient(inner) {}
  void Permit(int n) {
    std::lock_guard lock(mu_);
    permits_ += n;
    changed_.notify_all();
  }
  Result<s3::PartInfo> UploadPart(const s3::UploadPartRequest& req,
                                  const s3::CallOptions& opts) override {
    {
      std::unique_lock lock(mu_);
      changed_.wait(lock, [&] { return permits_ > 0; });
      --permits_;
    }
    return inner().UploadPart(req, opts);
  }

 private:
  std::mutex mu_;
  std::condition_variable changed_;  // With mu_: permits_ grew.
  int permits_ = 0;                  // Guarded by mu_.
};

class WritebackTest : public ::testing::Test {
 protected:
  WritebackTest() : budget_(64 * kMiB, clock_) {
    std::string tmpl = (stdfs::temp_directory_path() / "bucketfs-writeback-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) std::abort();
    root_ = tmpl;
    spool_ = OpenSpool();
  }
  ~WritebackTest() override {
    wb_.reset();
    spool_.reset();
    std::error_code ec;
    stdfs::remove_all(root_, ec);
  }

  std::unique_ptr<Spool> OpenSpool() {
    auto spool = Spool::Open(root_.string(), "bucket");
    if (!spool.ok()) {
      ADD_FAILURE() << spool.status().ToString();
      return nullptr;
    }
    return std::move(spool).value();
  }

  static WritebackOptions Options() {
    WritebackOptions o;
    o.part_size = kPart;
    o.upload_parallelism = 4;
    o.commit_parallelism = 4;
    o.request_timeout = 120s;
    // On the FakeClock: a failed commit is retried in the background only when a test
    // advances the clock.
    o.first_retry = 5s;
    o.max_retry = 60s;
    return o;
  }

  void Start(s3::ObjectClient& client, MemoryBudget* budget = nullptr,
             const WritebackOptions& options = Options()) {
    wb_ = std::make_unique<Writeback>(
        WriteContext{&client, budget ? budget : &budget_, spool_.get(), &clock_}, options);
  }

  std::shared_ptr<DirtyFile> MustOpen(const std::string& key,
                                      std::optional<BaseObject> base = std::nullopt,
                                      const s3::UserMetadata& metadata = kMeta,
                                      bool create_only = false) {
    auto file = wb_->OpenForWrite(key, base, metadata, create_only);
    EXPECT_TRUE(file.ok()) << key << ": " << file.status().ToString();
    return file.ok() ? *file : nullptr;
  }

  // A base object for OpenForWrite: the fake's current version of `key`.
  BaseObject BaseOf(const std::string& key) {
    auto info = fake_.ObjectInfoDirect(key);
    EXPECT_TRUE(info.has_value()) << key;
    return info ? BaseObject{info->etag, info->size} : BaseObject{};
  }

  static ::testing::AssertionResult WriteAll(DirtyFile& file, const std::string& data,
                                             size_t chunk, uint64_t at = 0) {
    for (size_t off = 0; off < data.size(); off += chunk) {
      const size_t n = std::min(chunk, data.size() - off);
      Status s = file.Write(at + off, std::span<const char>(data.data() + off, n));
      if (!s.ok()) return ::testing::AssertionFailure() << "at " << off << ": " << s.ToString();
    }
    return ::testing::AssertionSuccess();
  }

  static std::string MustRead(DirtyFile& file, uint64_t offset, size_t size) {
    auto r = file.Read(offset, size);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? r->ToString() : "<error>";
  }

  // After the last writer's release: the file leaves the writeback once committed.
  bool WaitCommitted(const std::string& key) {
    return Eventually([&] { return wb_->Find(key) == nullptr; }, kWait);
  }

  bool WaitFailedCommits(uint64_t n) {
    return Eventually([&] { return wb_->GetStats().failed_commits >= n; }, kWait);
  }

  // Writes `text` at `offset` to `file` and to `expected`, the bytes the file should hold.
  static ::testing::AssertionResult WriteBoth(DirtyFile& file, std::string* expected,
                                              uint64_t offset, const std::string& text) {
    expected->replace(offset, text.size(), text);
    Status wrote = file.Write(offset, Bytes(text));
    if (!wrote.ok()) return ::testing::AssertionFailure() << wrote.ToString();
    return ::testing::AssertionSuccess();
  }

  // Starts an fsync of `file` on a thread, with the upload of part 1 held by rgw_, and
  // returns once that upload waits: the caller writes meanwhile, releases the part, joins.
  std::thread SyncHeldAtPart1(const std::shared_ptr<DirtyFile>& file, Status* synced) {
    rgw_.HoldPart(1);
    *synced = Status(ErrorCode::kInternal, "not run");
    std::thread fsync([this, file, synced] { *synced = wb_->Sync(file); });
    EXPECT_TRUE(Eventually([&] { return rgw_.waiting() == 1; }, kWait));
    return fsync;
  }

  // `file->Write(offset, data)` while files may not grow past `limit` bytes (RLIMIT_FSIZE):
  // a write that the spool's disk cuts short, as a full one would.
  static Status WriteUnderFileSizeLimit(DirtyFile& file, uint64_t offset, const std::string& data,
                                        rlim_t limit) {
    struct rlimit saved {};
    struct rlimit lowered {};
    // Ignored first: a write past the limit raises SIGXFSZ, which would end the process.
    const auto old_handler = signal(SIGXFSZ, SIG_IGN);
    if (getrlimit(RLIMIT_FSIZE, &saved) != 0 || (lowered = saved, lowered.rlim_cur = limit,
                                                 setrlimit(RLIMIT_FSIZE, &lowered) != 0)) {
      ADD_FAILURE() << "cannot lower RLIMIT_FSIZE: " << std::strerror(errno);
      signal(SIGXFSZ, old_handler);
      return Status::Ok();  // Read as "not cut short" by the caller's assertion.
    }
    Status wrote = file.Write(offset, Bytes(data));
    const bool restored = setrlimit(RLIMIT_FSIZE, &saved) == 0;
    signal(SIGXFSZ, old_handler);
    if (!restored) ADD_FAILURE() << "cannot restore RLIMIT_FSIZE";
    return wrote;
  }

  std::optional<SpoolRecord> RecordOf(const std::string& key) {
    for (auto& r : spool_->Scan()) {
      if (r.key == key) return r;
    }
    return std::nullopt;
  }

  size_t FilesInSpool() const {
    size_t n = 0;
    for (const auto& e : stdfs::directory_iterator(root_ / "bucket" / "files")) {
      (void)e;
      ++n;
    }
    return n;
  }
  std::vector<std::string> LostAndFound() const {
    std::vector<std::string> names;
    for (const auto& e : stdfs::directory_iterator(root_ / "bucket" / "lost+found")) {
      names.push_back(e.path().filename().string());
    }
    std::sort(names.begin(), names.end());
    return names;
  }

  // Records what the writeback's listener hears (the commits it reports), from now on.
  void HearCommits() {
    wb_->SetListener([this](const CommittedObject& c) {
      std::lock_guard lock(heard_mu_);
      heard_.push_back(c);
    });
  }
  std::vector<CommittedObject> Heard() {
    std::lock_guard lock(heard_mu_);
    return heard_;
  }

  std::mutex heard_mu_;
  std::vector<CommittedObject> heard_;
  FakeClock clock_;
  s3::FakeObjectClient fake_{clock_};
  s3::FaultInjectingClient faulty_{fake_, clock_};
  RgwLikeClient rgw_{fake_};
  MemoryBudget budget_;
  std::unique_ptr<MemoryBudget> small_budget_;  // For tests of a tight budget.
  stdfs::path root_;
  std::unique_ptr<Spool> spool_;
  std::unique_ptr<Writeback> wb_;
};

// --- The listener --------------------------------------------------------------------------

// The filesystem clears its listener when it is destroyed, while the retry thread may be
// telling it of a commit: clearing must wait for that call, or the call runs on a destroyed
// filesystem.
TEST_F(WritebackTest, ClearingTheListenerWaitsForACallInProgress) {
  Start(fake_);
  std::promise<void> entered;
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<bool> call_ended{false};
  wb_->SetListener([&](const CommittedObject&) {
    entered.set_value();
    released.wait();
    call_ended = true;
  });
  auto file = MustOpen("listened.txt");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes("x")).ok());
  wb_->ReleaseWriter(file);
  ASSERT_EQ(entered.get_future().wait_for(std::chrono::seconds(30)), std::future_status::ready);

  std::atomic<bool> cleared{false};
  std::thread clearing([&] {
    wb_->SetListener(nullptr);
    cleared = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_FALSE(cleared) << "SetListener(nullptr) returned while the listener was running";
  release.set_value();
  clearing.join();
  EXPECT_TRUE(call_ended) << "SetListener(nullptr) returned before the call it replaced ended";
  ASSERT_TRUE(WaitCommitted("listened.txt"));
}

// --- New files -----------------------------------------------------------------------------

TEST_F(WritebackTest, NewFileIsCommittedAfterTheLastReleaseWithItsBytesAndMetadata) {
  Start(fake_);
  HearCommits();

  auto file = MustOpen("dir/new.txt");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes("hello, ")).ok());
  ASSERT_TRUE(file->Write(7, Bytes("world")).ok());
  EXPECT_EQ(wb_->Find("dir/new.txt"), file);
  EXPECT_EQ(file->Attributes().size, 12u);
  EXPECT_FALSE(fake_.Exists("dir/new.txt"));  // Nothing is uploaded before the close.

  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("dir/new.txt"));
  EXPECT_EQ(fake_.ObjectBody("dir/new.txt"), "hello, world");
  auto info = fake_.ObjectInfoDirect("dir/new.txt");
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->metadata, Stored(kMeta));

  const std::vector<CommittedObject> heard = Heard();
  ASSERT_EQ(heard.size(), 1u);
  EXPECT_EQ(heard[0].key, "dir/new.txt");
  EXPECT_EQ(heard[0].size, 12u);
  EXPECT_EQ(heard[0].etag, info->etag);
  EXPECT_EQ(heard[0].metadata, Stored(kMeta));
  EXPECT_TRUE(file->Error().ok());
}

TEST_F(WritebackTest, CommittedFileLeavesNothingInTheSpool) {
  Start(fake_);
  auto file = MustOpen("a");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes("x")).ok());
  EXPECT_EQ(FilesInSpool(), 2u);  // Its data and its record.
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("a"));
  file.reset();
  EXPECT_TRUE(Eventually([&] { return FilesInSpool() == 0; }, kWait)) << FilesInSpool();
  EXPECT_TRUE(spool_->Scan().empty());
  EXPECT_EQ(wb_->GetStats().dirty_files, 0u);
}

TEST_F(WritebackTest, SyncReturnsOnlyOnceTheObjectIsStoredAndIsFreeWhenNothingChanged) {
  Start(fake_);
  auto file = MustOpen("s");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes("synced")).ok());
  Status synced = wb_->Sync(file);
  ASSERT_TRUE(synced.ok()) << synced.ToString();
  // No waiting: Sync's return is the guarantee.
  EXPECT_EQ(fake_.ObjectBody("s"), "synced");
  EXPECT_EQ(wb_->Find("s"), file);  // Still open for writing.
  EXPECT_EQ(wb_->GetStats().commits, 1u);

  const uint64_t calls = fake_.total_calls();
  EXPECT_TRUE(wb_->Sync(file).ok());
  EXPECT_EQ(fake_.total_calls(), calls);  // Nothing changed: no request.

  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("s"));
  EXPECT_EQ(fake_.calls(s3::Op::kPut), 1u);
  EXPECT_EQ(fake_.ObjectBody("s"), "synced");
}

TEST_F(WritebackTest, WritesAfterASyncAreCommittedOverTheVersionItMade) {
  Start(fake_);
  auto file = MustOpen("v");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes("first")).ok());
  ASSERT_TRUE(wb_->Sync(file).ok());
  ASSERT_TRUE(file->Write(5, Bytes(" second")).ok());
  Status synced = wb_->Sync(file);
  ASSERT_TRUE(synced.ok()) << synced.ToString();
  EXPECT_EQ(fake_.ObjectBody("v"), "first second");
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("v"));
  EXPECT_EQ(fake_.ObjectBody("v"), "first second");
}

TEST_F(WritebackTest, EmptyNewFileCommitsAnEmptyObject) {
  Start(fake_);
  auto file = MustOpen("empty");
  ASSERT_NE(file, nullptr);
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("empty"));
  EXPECT_EQ(fake_.ObjectBody("empty"), "");
  auto info = fake_.ObjectInfoDirect("empty");
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->size, 0u);
  EXPECT_EQ(info->metadata, Stored(kMeta));
}

// A shell's `printf x > f` opens f, closes that first descriptor (FLUSH) after dup2, writes
// through the second and closes it (FLUSH, then RELEASE). One PUT, of the written bytes.
TEST_F(WritebackTest, FlushOfTheOnlyWriterJournalsClosedAndOnlyTheReleaseCommits) {
  Start(fake_);
  auto file = MustOpen("f");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(wb_->Flushed(file).ok());  // The first descriptor, before anything is written.
  auto record = RecordOf("f");
  ASSERT_TRUE(record.has_value());
  EXPECT_TRUE(record->closed);  // A crash now would upload the empty file close() returned for.
  EXPECT_EQ(wb_->GetStats().commits_in_flight, 0u);  // But nothing is sent yet.

  ASSERT_TRUE(file->Write(0, Bytes("one")).ok());  // Through the dup'd descriptor.
  record = RecordOf("f");
  ASSERT_TRUE(record.has_value());
  EXPECT_FALSE(record->closed);  // Being rewritten: a crash must not upload it.

  ASSERT_TRUE(wb_->Flushed(file).ok());
  record = RecordOf("f");
  ASSERT_TRUE(record.has_value());
  EXPECT_TRUE(record->closed);
  EXPECT_EQ(wb_->GetStats().commits_in_flight, 0u);
  EXPECT_FALSE(fake_.ObjectBody("f").has_value());

  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("f"));
  EXPECT_EQ(fake_.ObjectBody("f"), "one");
  EXPECT_EQ(fake_.calls(s3::Op::kPut), 1u);  // No empty object first.
  file.reset();
  EXPECT_TRUE(Eventually([&] { return FilesInSpool() == 0; }, kWait));
}

// A multipart upload stores the metadata of its creation; the listener (which tells the
// filesystem what the file now shows) must hear that mtime, not the last write's, or a stat
// would change once the cached attributes expire.
TEST_F(WritebackTest, AMultipartCommitReportsTheMtimeItStored) {
  Start(fake_);
  HearCommits();
  auto file = MustOpen("big");
  ASSERT_NE(file, nullptr);
  const std::string data = Body(kPart + 100, 7);
  ASSERT_TRUE(file->Write(0, Bytes(data.substr(0, kPart + 50))).ok());
  ASSERT_TRUE(Eventually([&] { return fake_.calls(s3::Op::kCreateMultipart) == 1; }, kWait));
  clock_.Advance(10s);
  ASSERT_TRUE(file->Write(kPart + 50, Bytes(data.substr(kPart + 50))).ok());
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("big"));
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("big"), data));
  auto info = fake_.ObjectInfoDirect("big");
  ASSERT_TRUE(info.has_value());
  const std::vector<CommittedObject> heard = Heard();
  ASSERT_EQ(heard.size(), 1u);
  EXPECT_EQ(heard[0].metadata, info->metadata);
  EXPECT_EQ(heard[0].metadata.at("mtime"), kMtime) << "the mtime of the upload's creation";
}

class WritebackSizeTest : public WritebackTest, public ::testing::WithParamInterface<uint64_t> {};

TEST_P(WritebackSizeTest, CommitHasExactlyTheBytesWritten) {
  const uint64_t size = GetParam();
  Start(fake_);
  const std::string data = Body(size, size);
  auto file = MustOpen("sized");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(WriteAll(*file, data, kMiB + 3));  // Chunks that straddle part boundaries.
  Status synced = wb_->Sync(file);
  ASSERT_TRUE(synced.ok()) << synced.ToString();
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("sized"), data));
  if (size > kPart) {
    EXPECT_EQ(fake_.calls(s3::Op::kCompleteMultipart), 1u);
    EXPECT_EQ(fake_.calls(s3::Op::kPut), 0u);
    auto info = fake_.ObjectInfoDirect("sized");
    ASSERT_TRUE(info.has_value());
    EXPECT_EQ(info->metadata.at("mode"), "33188");
  } else if (size < kPart) {
    EXPECT_EQ(fake_.calls(s3::Op::kPut), 1u);
    EXPECT_EQ(fake_.calls(s3::Op::kCreateMultipart), 0u);
  }
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("sized"));
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("sized"), data));
  EXPECT_EQ(fake_.PendingUploads(), 0u);
  EXPECT_EQ(budget_.used(), 0u);
}

INSTANTIATE_TEST_SUITE_P(AroundPartSizes, WritebackSizeTest,
                         ::testing::Values(uint64_t{1}, kPart - 1, kPart, kPart + 1, 3 * kPart + 17),
                         [](const ::testing::TestParamInfo<uint64_t>& param) {
                           const uint64_t s = param.param;
                           if (s == 1) return std::string("OneByte");
                           if (s == kPart - 1) return std::string("PartMinusOne");
                           if (s == kPart) return std::string("OnePart");
                           if (s == kPart + 1) return std::string("PartPlusOne");
                           return std::string("ThreePartsPlus17");
                         });

// --- Preconditions -------------------------------------------------------------------------

TEST_F(WritebackTest, CreateOnlyOntoAnExistingKeyFailsStaleAndTheErrorSticks) {
  Start(fake_);
  fake_.PutDirect("taken", "theirs");
  auto file = MustOpen("taken", std::nullopt, kMeta, /*create_only=*/true);
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes("mine")).ok());

  Status synced = wb_->Sync(file);
  ASSERT_FALSE(synced.ok());
  EXPECT_EQ(synced.code(), ErrorCode::kStale) << synced.ToString();
  EXPECT_EQ(file->Error().code(), ErrorCode::kStale);
  Status write = file->Write(4, Bytes("more"));
  EXPECT_EQ(write.code(), ErrorCode::kStale) << write.ToString();
  EXPECT_EQ(wb_->Sync(file).code(), ErrorCode::kStale);  // Not retried into success.
  EXPECT_EQ(fake_.ObjectBody("taken"), "theirs");
  // The data written here is kept for a person to look at.
  EXPECT_TRUE(RecordOf("taken").has_value());
}

TEST_F(WritebackTest, CreateOnlyOfAFreeKeyCommits) {
  Start(fake_);
  auto file = MustOpen("free", std::nullopt, kMeta, /*create_only=*/true);
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes("mine")).ok());
  ASSERT_TRUE(wb_->Sync(file).ok());
  EXPECT_EQ(fake_.ObjectBody("free"), "mine");
  // After its first commit the file is ours: a second commit must not fail If-None-Match.
  ASSERT_TRUE(file->Write(4, Bytes("!")).ok());
  Status again = wb_->Sync(file);
  EXPECT_TRUE(again.ok()) << again.ToString();
  EXPECT_EQ(fake_.ObjectBody("free"), "mine!");
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("free"));
}

// --- Existing objects ----------------------------------------------------------------------

TEST_F(WritebackTest, OverwriteInTheMiddleUploadsOnePartAndCopiesTheRestServerSide) {
  Start(fake_);
  const std::string base = Body(3 * kPart + 100, 7);
  fake_.PutDirect("big", base, kMeta);
  auto file = MustOpen("big", BaseOf("big"));
  ASSERT_NE(file, nullptr);
  EXPECT_EQ(file->Attributes().size, base.size());

  const uint64_t at = kPart + 12345;
  ASSERT_TRUE(file->Write(at, Bytes("0123456789")).ok());
  std::string expected = base;
  expected.replace(at, 10, "0123456789");

  Status synced = wb_->Sync(file);
  ASSERT_TRUE(synced.ok()) << synced.ToString();
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("big"), expected));
  const auto stats = wb_->GetStats();
  // Parts 1 and 3 (whole) and 4 (the 100-byte tail) are untouched: copied, not sent.
  EXPECT_EQ(stats.parts_copied, 3u);
  EXPECT_EQ(stats.parts_uploaded, 1u);
  EXPECT_EQ(stats.bytes_uploaded, kPart);
  EXPECT_EQ(fake_.calls(s3::Op::kUploadPartCopy), 3u);
  EXPECT_EQ(fake_.ObjectInfoDirect("big")->metadata, Stored(kMeta));

  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("big"));
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("big"), expected));
  EXPECT_EQ(fake_.PendingUploads(), 0u);
}

TEST_F(WritebackTest, ReadsShowBaseBytesWhereUntouchedAndNewBytesWhereWritten) {
  Start(fake_);
  const std::string base = Body(100000, 3);
  fake_.PutDirect("r", base);
  auto file = MustOpen("r", BaseOf("r"));
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(500, Bytes("XYZ")).ok());
  ASSERT_TRUE(file->Write(99998, Bytes("tail")).ok());  // Extends the file by 2 bytes.
  std::string expected = base;
  expected.replace(500, 3, "XYZ");
  expected.resize(100002);
  expected.replace(99998, 4, "tail");

  EXPECT_EQ(file->Attributes().size, 100002u);
  EXPECT_EQ(MustRead(*file, 499, 5), expected.substr(499, 5));
  EXPECT_EQ(MustRead(*file, 0, 100), base.substr(0, 100));
  EXPECT_TRUE(SameBytes(MustRead(*file, 0, 1 << 20), expected));  // Clipped to the size.
  EXPECT_EQ(MustRead(*file, 100002, 10), "");
  // A second read is served from the spool.
  const uint64_t gets = fake_.calls(s3::Op::kGet);
  EXPECT_EQ(MustRead(*file, 1000, 50000), expected.substr(1000, 50000));
  EXPECT_EQ(fake_.calls(s3::Op::kGet), gets);
  EXPECT_EQ(fake_.ObjectBody("r"), base);  // Reading uploads nothing.
}

// A read that fetches base bytes while the file's own commit lands a new version: the GET
// (If-Match the old base) is refused, and the read tries again on the new version instead
// of failing ESTALE, which programs take as fatal.
class CommitDuringFirstGet final : public s3::ForwardingClient {
 public:
  using ForwardingClient::ForwardingClient;
  std::function<void()> before_first_get;
  Result<s3::GetResult> Get(const s3::GetRequest& req, std::span<char> buffer,
                            const s3::CallOptions& opts) override {
    if (auto hook = std::exchange(before_first_get, nullptr)) hook();
    return inner().Get(req, buffer, opts);
  }
};

TEST_F(WritebackTest, AReadRacingTheFilesOwnCommitReadsTheNewVersionNotEstale) {
  CommitDuringFirstGet client(fake_);
  Start(client);
  const std::string base = Body(100000, 5);
  fake_.PutDirect("own", base);
  auto file = MustOpen("own", BaseOf("own"));
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes("new")).ok());
  std::string expected = base;
  expected.replace(0, 3, "new");
  const std::string old_etag = fake_.ObjectInfoDirect("own")->etag;
  Status synced = Status(ErrorCode::kInternal, "not run");
  client.before_first_get = [&] { synced = wb_->Sync(file); };

  EXPECT_EQ(MustRead(*file, 50000, 100), expected.substr(50000, 100));
  ASSERT_TRUE(synced.ok()) << synced.ToString();
  EXPECT_NE(fake_.ObjectInfoDirect("own")->etag, old_etag) << "the commit did not land first";
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("own"), expected));
}

TEST_F(WritebackTest, ReplacedBaseMakesTheCommitStaleAndNothingIsOverwritten) {
  Start(fake_);
  fake_.PutDirect("big", Body(3 * kPart + 100, 7));
  auto file = MustOpen("big", BaseOf("big"));
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(kPart + 1, Bytes("mine")).ok());

  const std::string theirs = Body(2 * kPart, 99);
  fake_.PutDirect("big", theirs);  // Someone else replaces it.

  Status synced = wb_->Sync(file);
  ASSERT_FALSE(synced.ok());
  EXPECT_EQ(synced.code(), ErrorCode::kStale) << synced.ToString();
  EXPECT_EQ(file->Error().code(), ErrorCode::kStale);
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("big"), theirs));
}

TEST_F(WritebackTest, ReplacedBaseFailsIfMatchEvenWhenEveryByteWasRewritten) {
  Start(fake_);
  fake_.PutDirect("small", "aaaa");
  auto file = MustOpen("small", BaseOf("small"));
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes("bbbb")).ok());  // Nothing left to read from the base.
  fake_.PutDirect("small", "cccc");
  Status synced = wb_->Sync(file);
  EXPECT_EQ(synced.code(), ErrorCode::kStale) << synced.ToString();
  EXPECT_EQ(fake_.ObjectBody("small"), "cccc");
}

TEST_F(WritebackTest, DeletedBaseMakesTheCommitStaleAndNothingIsRecreated) {
  Start(fake_);
  fake_.PutDirect("small", "aaaa");
  auto file = MustOpen("small", BaseOf("small"));
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes("bbbb")).ok());
  fake_.DeleteDirect("small");
  Status synced = wb_->Sync(file);
  EXPECT_EQ(synced.code(), ErrorCode::kStale) << synced.ToString();
  EXPECT_FALSE(fake_.Exists("small"));
}

// A write can land and its reply be lost; its retry then meets its own object (412 for a
// conditional write, cache/lost_reply.h). That is a success, not someone else's change.

TEST_F(WritebackTest, ACreateOnlyPutWhoseReplyWasLostIsFoundLandedNotAConflict) {
  Start(faulty_);
  auto file = MustOpen("free", std::nullopt, kMeta, /*create_only=*/true);
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes("mine")).ok());
  faulty_.FailNextAfterSuccess(s3::Op::kPut, 1, s3::InjectedError(ErrorCode::kTimeout));
  EXPECT_EQ(wb_->Sync(file).code(), ErrorCode::kTimeout);
  ASSERT_EQ(fake_.ObjectBody("free"), "mine") << "the PUT landed";

  Status synced = wb_->Sync(file);  // If-None-Match: * now gets 412: the object is ours.
  ASSERT_TRUE(synced.ok()) << synced.ToString();
  EXPECT_TRUE(file->Error().ok());
  ASSERT_TRUE(file->Write(4, Bytes("+more")).ok()) << "no sticky conflict";
  ASSERT_TRUE(wb_->Sync(file).ok());
  EXPECT_EQ(fake_.ObjectBody("free"), "mine+more");
}

TEST_F(WritebackTest, AnIfMatchPutWhoseReplyWasLostIsFoundLandedNotAConflict) {
  Start(faulty_);
  fake_.PutDirect("k", "old");
  auto file = MustOpen("k", BaseOf("k"));
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes("new")).ok());
  faulty_.FailNextAfterSuccess(s3::Op::kPut, 1, s3::InjectedError(ErrorCode::kNetwork));
  EXPECT_EQ(wb_->Sync(file).code(), ErrorCode::kNetwork);
  Status synced = wb_->Sync(file);  // If-Match of "old"'s ETag gets 412.
  ASSERT_TRUE(synced.ok()) << synced.ToString();
  EXPECT_EQ(fake_.ObjectBody("k"), "new");
  EXPECT_EQ(fake_.calls(s3::Op::kHead), 1u) << "one HEAD told the two apart";
}

TEST_F(WritebackTest, AConditionalCompleteRetriedIntoA412FindsItsObjectLanded) {
  Start(faulty_);
  fake_.PutDirect("big", Body(kPart, 3));
  auto file = MustOpen("big", BaseOf("big"));
  ASSERT_NE(file, nullptr);
  const std::string data = Body(2 * kPart + 5, 4);
  ASSERT_TRUE(file->Write(0, Bytes(data)).ok());
  // The Complete lands; the client's retry of it answers 412 (If-Match no longer holds).
  faulty_.FailNextAfterSuccess(s3::Op::kCompleteMultipart, 1,
                               s3::InjectedError(ErrorCode::kPreconditionFailed));
  Status synced = wb_->Sync(file);
  ASSERT_TRUE(synced.ok()) << synced.ToString();
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("big"), data));
  EXPECT_EQ(fake_.PendingUploads(), 0u);
}

TEST_F(WritebackTest, AMetadataCopyWhoseReplyWasLostIsFoundLandedNotAConflict) {
  Start(faulty_);
  // A multipart object: copying it onto itself gives it a new (plain MD5) ETag, so the
  // retried copy's x-amz-copy-source-if-match no longer holds.
  const std::string data = Body(2 * kPart, 5);
  {
    auto writer = MustOpen("mp");
    ASSERT_NE(writer, nullptr);
    ASSERT_TRUE(writer->Write(0, Bytes(data)).ok());
    ASSERT_TRUE(wb_->Sync(writer).ok());
    wb_->ReleaseWriter(writer);
    ASSERT_TRUE(WaitCommitted("mp"));
  }
  ASSERT_NE(BaseOf("mp").etag.find('-'), std::string::npos) << "a multipart ETag";
  auto file = MustOpen("mp", BaseOf("mp"));
  ASSERT_NE(file, nullptr);
  file->SetMetadata({{"mode", "33261"}}, std::nullopt);
  faulty_.FailNextAfterSuccess(s3::Op::kCopy, 1, s3::InjectedError(ErrorCode::kTimeout));
  EXPECT_EQ(wb_->Sync(file).code(), ErrorCode::kTimeout);
  Status synced = wb_->Sync(file);
  ASSERT_TRUE(synced.ok()) << synced.ToString();
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("mp"), data));
  EXPECT_EQ(fake_.ObjectInfoDirect("mp")->metadata.at("mode"), "33261");
  ASSERT_TRUE(file->Write(0, Bytes("x")).ok()) << "no sticky conflict";
}

TEST_F(WritebackTest, A412WhoseObjectIsNotOursIsStillAConflict) {
  Start(faulty_);
  auto file = MustOpen("race", std::nullopt, kMeta, /*create_only=*/true);
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes("mine")).ok());
  faulty_.FailNextAfterSuccess(s3::Op::kPut, 1, s3::InjectedError(ErrorCode::kTimeout));
  EXPECT_EQ(wb_->Sync(file).code(), ErrorCode::kTimeout);
  fake_.PutDirect("race", "theirs");  // Another client replaced it since.
  EXPECT_EQ(wb_->Sync(file).code(), ErrorCode::kStale);
  EXPECT_EQ(fake_.ObjectBody("race"), "theirs");
}

TEST_F(WritebackTest, AnO_ExclFileMeetingSomeoneElsesIdenticalBytesIsStillAConflict) {
  Start(faulty_);
  auto file = MustOpen("lock", std::nullopt, kMeta, /*create_only=*/true);
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes("1")).ok());
  faulty_.FailNext(s3::Op::kPut, 1, s3::InjectedError(ErrorCode::kTimeout));  // Never landed.
  EXPECT_EQ(wb_->Sync(file).code(), ErrorCode::kTimeout);
  fake_.PutDirect("lock", "1", {{"mode", "33188"}, {"uid", "0"}});  // Someone else's lock.
  EXPECT_EQ(wb_->Sync(file).code(), ErrorCode::kStale) << "the same bytes, not our file";
  EXPECT_EQ(fake_.ObjectInfoDirect("lock")->metadata.at("uid"), "0");
}

// RGW leaves CompleteMultipartUpload's ETag empty; the commit learns it with a HEAD.
class BlankCompleteEtagClient final : public s3::ForwardingClient {
 public:
  using s3::ForwardingClient::ForwardingClient;
  Result<s3::PutResult> CompleteMultipart(const s3::CompleteMultipartRequest& req,
                                          const s3::CallOptions& opts) override {
    auto r = inner().CompleteMultipart(req, opts);
    if (r.ok()) r->etag.clear();
    return r;
  }
};

TEST_F(WritebackTest, ACommitThatCannotLearnItsEtagStaysConditionalAfterwards) {
  BlankCompleteEtagClient rgw_etagless(faulty_);
  Start(rgw_etagless);
  fake_.PutDirect("mp", "old");
  auto file = MustOpen("mp", BaseOf("mp"));
  ASSERT_NE(file, nullptr);
  const std::string mine = Body(2 * kPart, 21);
  ASSERT_TRUE(file->Write(0, Bytes(mine)).ok());
  // The HEAD after the Complete fails: without the new ETag, the next commit of this file
  // could not carry If-Match.
  faulty_.FailNext(s3::Op::kHead, 1, s3::InjectedError(ErrorCode::kNetwork));
  (void)wb_->Sync(file);
  ASSERT_TRUE(wb_->Sync(file).ok());
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("mp"), mine));

  fake_.PutDirect("mp", "theirs");  // Another client replaces it.
  ASSERT_TRUE(file->Write(0, Bytes("more")).ok());
  Status synced = wb_->Sync(file);
  EXPECT_EQ(synced.code(), ErrorCode::kStale) << synced.ToString();
  EXPECT_EQ(fake_.ObjectBody("mp"), "theirs") << "overwritten by an unconditional upload";
}

// A new file's multipart object landed, but the HEAD that would tell its ETag (RGW gives
// none) fails: the commit still knows its bytes are at the key, so a rename right after
// moves the object instead of leaving it behind at the old name.
TEST_F(WritebackTest, ANewFileWhoseEtagHeadFailsKnowsItLandedAndARenameMovesTheObject) {
  BlankCompleteEtagClient rgw_etagless(faulty_);
  Start(rgw_etagless);
  auto file = MustOpen("new.bin");
  ASSERT_NE(file, nullptr);
  const std::string mine = Body(2 * kPart, 23);
  ASSERT_TRUE(file->Write(0, Bytes(mine)).ok());
  faulty_.FailNext(s3::Op::kHead, 1, s3::InjectedError(ErrorCode::kNetwork));
  Status synced = wb_->Sync(file);
  ASSERT_TRUE(synced.ok()) << synced.ToString();
  ASSERT_TRUE(SameBytes(fake_.ObjectBody("new.bin"), mine));
  auto renamed = wb_->Rename("new.bin", "moved.bin");
  ASSERT_TRUE(renamed.ok()) << renamed.status().ToString();
  EXPECT_EQ(*renamed, Writeback::RenameOutcome::kCopied)
      << "the object at the old key was taken for nothing: it would stay there";
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("moved.bin"), mine));

  // The next commit is conditional on the ETag it took: another client's change is a
  // conflict, not overwritten.
  fake_.PutDirect("moved.bin", "theirs");
  ASSERT_TRUE(file->Write(0, Bytes("more")).ok());
  EXPECT_EQ(wb_->Sync(file).code(), ErrorCode::kStale);
  EXPECT_EQ(fake_.ObjectBody("moved.bin"), "theirs");
  file.reset();
}

// --- Truncate ------------------------------------------------------------------------------

TEST_F(WritebackTest, TruncateGrowReadsAndCommitsZeros) {
  Start(fake_);
  auto file = MustOpen("t");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes("abc")).ok());
  ASSERT_TRUE(file->Truncate(10).ok());
  const std::string expected = std::string("abc") + std::string(7, '\0');
  EXPECT_EQ(file->Attributes().size, 10u);
  EXPECT_EQ(MustRead(*file, 0, 100), expected);
  ASSERT_TRUE(wb_->Sync(file).ok());
  EXPECT_EQ(fake_.ObjectBody("t"), expected);
}

TEST_F(WritebackTest, TruncateShrinkDropsTheTail) {
  Start(fake_);
  auto file = MustOpen("t");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes("abcdef")).ok());
  ASSERT_TRUE(file->Truncate(3).ok());
  EXPECT_EQ(MustRead(*file, 0, 100), "abc");
  ASSERT_TRUE(file->Write(5, Bytes("Z")).ok());  // Past the end: a hole of zeros before it.
  const std::string expected = std::string("abc") + std::string(2, '\0') + "Z";
  EXPECT_EQ(MustRead(*file, 0, 100), expected);
  ASSERT_TRUE(wb_->Sync(file).ok());
  EXPECT_EQ(fake_.ObjectBody("t"), expected);
}

TEST_F(WritebackTest, ShrinkThenGrowOfAnExistingObjectShowsZerosNotItsOldBytes) {
  Start(fake_);
  const std::string base = Body(100, 4);
  fake_.PutDirect("b", base);
  auto file = MustOpen("b", BaseOf("b"));
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Truncate(50).ok());
  ASSERT_TRUE(file->Truncate(80).ok());
  const std::string expected = base.substr(0, 50) + std::string(30, '\0');
  EXPECT_EQ(MustRead(*file, 0, 200), expected);
  ASSERT_TRUE(wb_->Sync(file).ok());
  EXPECT_EQ(fake_.ObjectBody("b"), expected);
}

TEST_F(WritebackTest, TruncateToZeroOfAnExistingObjectCommitsAnEmptyObject) {
  Start(fake_);
  fake_.PutDirect("b", "hello");
  auto file = MustOpen("b", BaseOf("b"));
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Truncate(0).ok());
  ASSERT_TRUE(wb_->Sync(file).ok());
  EXPECT_EQ(fake_.ObjectBody("b"), "");
}

// The test double itself: without this, the regression test below could pass vacuously.
TEST_F(WritebackTest, RgwLikeClientRefusesACompleteThatLeavesOutHigherParts) {
  auto upload = rgw_.CreateMultipart({"k", "", {}}, {});
  ASSERT_TRUE(upload.ok());
  const std::string part = Body(kPart, 1);
  std::vector<s3::PartInfo> sent;
  for (int n = 1; n <= 3; ++n) {
    auto p = rgw_.UploadPart({"k", *upload, n, Bytes(part)}, {});
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    sent.push_back(*p);
  }
  auto refused = rgw_.CompleteMultipart({"k", *upload, {sent[0], sent[1]}, {}}, {});
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().server_code(), "InvalidPart");
  EXPECT_EQ(rgw_.refused_completes(), 1);
  auto completed = rgw_.CompleteMultipart({"k", *upload, sent, {}}, {});
  EXPECT_TRUE(completed.ok()) << completed.status().ToString();
}

// Regression: RGW refuses CompleteMultipartUpload while parts past the listed ones exist;
// a file shrunk below parts already uploaded early must still commit, with the right bytes.
TEST_F(WritebackTest, ShrinkBelowEagerlyUploadedPartsStillCommitsOnAStrictServer) {
  Start(rgw_);
  const std::string data = Body(3 * kPart + 17, 11);
  auto file = MustOpen("shrunk");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes(data)).ok());
  // Parts 1-3 are complete: they go up early, while the file is still open.
  ASSERT_TRUE(Eventually([&] { return wb_->GetStats().parts_uploaded >= 3; }, kWait));

  ASSERT_TRUE(file->Truncate(kPart + 10).ok());
  Status synced = wb_->Sync(file);
  ASSERT_TRUE(synced.ok()) << synced.ToString();
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("shrunk"), data.substr(0, kPart + 10)));
  EXPECT_EQ(rgw_.refused_completes(), 0);
  EXPECT_EQ(fake_.PendingUploads(), 0u);  // The upload with the extra parts was aborted.
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("shrunk"));
}

TEST_F(WritebackTest, ShrinkWithinTheEagerPartsReuploadsTheShortenedLastPart) {
  Start(rgw_);
  const std::string data = Body(3 * kPart, 12);
  auto file = MustOpen("shrunk");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes(data)).ok());
  ASSERT_TRUE(Eventually([&] { return wb_->GetStats().parts_uploaded >= 3; }, kWait));
  ASSERT_TRUE(file->Truncate(2 * kPart + 10).ok());  // Part 3 now holds 10 bytes.
  Status synced = wb_->Sync(file);
  ASSERT_TRUE(synced.ok()) << synced.ToString();
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("shrunk"), data.substr(0, 2 * kPart + 10)));
  EXPECT_EQ(rgw_.refused_completes(), 0);
}

// An early part creates a multipart upload; a file then emptied has no part to complete it
// with (S3 refuses a CompleteMultipartUpload of zero parts): it must still commit, empty.
TEST_F(WritebackTest, TruncateToZeroAfterAnEarlyPartCommitsAnEmptyObject) {
  Start(fake_);
  auto file = MustOpen("emptied");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes(Body(kPart, 13))).ok());  // Part 1 is complete: sent early.
  ASSERT_TRUE(Eventually([&] { return wb_->GetStats().parts_uploaded >= 1; }, kWait));
  ASSERT_TRUE(file->Truncate(0).ok());
  Status synced = wb_->Sync(file);
  ASSERT_TRUE(synced.ok()) << synced.ToString();
  EXPECT_EQ(fake_.ObjectBody("emptied"), "");
  EXPECT_EQ(fake_.PendingUploads(), 0u);
}

TEST_F(WritebackTest, MetadataChangedAfterTheUploadBeganIsAppliedToTheObject) {
  Start(fake_);
  const std::string data = Body(kPart + 1, 14);
  auto file = MustOpen("chmod");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes(data)).ok());
  // Part 1 went up early: its upload carries the metadata of that moment.
  ASSERT_TRUE(Eventually([&] { return wb_->GetStats().parts_uploaded >= 1; }, kWait));
  file->SetMetadata({{"mode", "33152"}}, std::nullopt);
  EXPECT_EQ(file->Attributes().metadata.at("mode"), "33152");
  Status synced = wb_->Sync(file);
  ASSERT_TRUE(synced.ok()) << synced.ToString();
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("chmod"), data));
  s3::UserMetadata want = kMeta;
  want["mode"] = "33152";
  EXPECT_EQ(fake_.ObjectInfoDirect("chmod")->metadata, Stored(want));
}

TEST_F(WritebackTest, MetadataOnlyChangeOfAnExistingObjectKeepsItsBytes) {
  Start(fake_);
  const std::string base = Body(3 * kPart + 1, 15);
  fake_.PutDirect("meta", base, kMeta);
  auto file = MustOpen("meta", BaseOf("meta"));
  ASSERT_NE(file, nullptr);
  file->SetMetadata({{"uid", "0"}}, std::nullopt);
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("meta"));
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("meta"), base));
  s3::UserMetadata want = kMeta;
  want["uid"] = "0";
  EXPECT_EQ(fake_.ObjectInfoDirect("meta")->metadata, Stored(want));
  EXPECT_EQ(fake_.calls(s3::Op::kUploadPart), 0u);  // No byte was sent again.
  EXPECT_EQ(fake_.calls(s3::Op::kPut), 0u);
}

// --- Faults --------------------------------------------------------------------------------

// FaultInjectingClient has no retries of its own (the curl client's are not in play): a
// failed early part is simply sent again by the commit.
TEST_F(WritebackTest, FailedEarlyPartIsSentAgainByTheCommitAndTheObjectArrives) {
  Start(faulty_);
  faulty_.FailNext(s3::Op::kUploadPart, 1, s3::InjectedError(ErrorCode::kServerError));
  const std::string data = Body(3 * kPart + 17, 5);
  auto file = MustOpen("flaky");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes(data)).ok());  // Parts 1-3 are sent early; one fails.
  Status synced = wb_->Sync(file);
  ASSERT_TRUE(synced.ok()) << synced.ToString();
  EXPECT_EQ(faulty_.injected(s3::Op::kUploadPart), 1u);
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("flaky"), data));
  EXPECT_TRUE(file->Error().ok());
  EXPECT_EQ(wb_->GetStats().failed_commits, 0u);
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("flaky"));
}

// A server that is down (every UploadPart fails; in real life each after a whole request
// deadline): after the first failure no more parts are started, early or in the commit, so
// fsync reports the error after one deadline's worth of requests instead of one per part.
// Once the server is back, the background retry sends the parts and the object is whole.
TEST_F(WritebackTest, AServerThatIsDownFailsTheCommitAfterTheFirstFailedPartsNotEveryPart) {
  Start(faulty_);
  const auto down = faulty_.FailAlways(s3::Op::kUploadPart, s3::InjectedError(ErrorCode::kTimeout));
  constexpr int kParts = 16;
  const std::string data = Body(kParts * kPart, 9);
  auto file = MustOpen("down");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(WriteAll(*file, data, kMiB));
  EXPECT_EQ(wb_->Sync(file).code(), ErrorCode::kTimeout);
  // Early parts: at most the 2 x 4 that may be in flight or queued when the first fails;
  // the commit: at most one per upload thread (4). Without stopping, the commit alone
  // would try all 16.
  const uint64_t tried = faulty_.calls(s3::Op::kUploadPart);
  EXPECT_LE(tried, 2 * Options().upload_parallelism + Options().upload_parallelism);
  EXPECT_GE(tried, 1u);

  faulty_.RemoveRule(down);
  clock_.Advance(Options().first_retry + 1s);
  EXPECT_TRUE(Eventually([&] { return file->Error().ok(); }, kWait))
      << "still failing: " << file->Error().ToString();
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("down"), data));
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("down"));
}

// One failed early part pauses early uploads for the first retry delay, not for the rest of
// the write: a passing error must not turn a long write into one big upload at close.
TEST_F(WritebackTest, AFailedEarlyPartPausesEarlyUploadsForTheRetryDelayOnly) {
  Start(faulty_);
  faulty_.FailNext(s3::Op::kUploadPart, 1, s3::InjectedError(ErrorCode::kTimeout));
  const std::string data = Body(3 * kPart, 4);
  const auto part = [&](int n) { return std::span<const char>(data.data() + n * kPart, kPart); };
  auto file = MustOpen("paused");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, part(0)).ok());  // Part 1 goes early, and fails.
  ASSERT_TRUE(Eventually([&] {
    return faulty_.injected(s3::Op::kUploadPart) == 1 && wb_->GetStats().eager_parts == 0;
  }, kWait));
  ASSERT_TRUE(file->Write(kPart, part(1)).ok());  // Paused: part 2 waits for the commit.
  EXPECT_EQ(wb_->GetStats().eager_parts, 0u);
  EXPECT_EQ(faulty_.calls(s3::Op::kUploadPart), 1u);

  clock_.Advance(Options().first_retry + 1s);
  ASSERT_TRUE(file->Write(2 * kPart, part(2)).ok());  // Part 3 goes early again.
  EXPECT_TRUE(Eventually([&] { return faulty_.calls(s3::Op::kUploadPart) == 2; }, kWait));
  Status synced = wb_->Sync(file);
  ASSERT_TRUE(synced.ok()) << synced.ToString();
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("paused"), data));
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("paused"));
}

TEST_F(WritebackTest, AnFsyncWhosePartIsWrittenToWhileItUploadsStoresTheWritesBeforeIt) {
  Start(rgw_);
  std::string data = Body(2 * kPart + 100, 9);
  auto file = MustOpen("overtaken");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes(data)).ok());
  ASSERT_TRUE(Eventually([&] { return wb_->GetStats().parts_uploaded == 2; }, kWait))
      << "parts 1 and 2 sent early";

  // Written before the fsync: part 1 must go again, and its upload is held.
  ASSERT_TRUE(WriteBoth(*file, &data, 10, "A"));
  Status synced;
  std::thread fsync = SyncHeldAtPart1(file, &synced);
  // Written while the commit uploads part 1: that upload may hold either version.
  ASSERT_TRUE(WriteBoth(*file, &data, 20, "B"));
  rgw_.ReleasePart(1);
  fsync.join();

  // The fsync did not complete with part 1's ETag from its early upload (S3 refuses that:
  // the part's number now holds other bytes, InvalidPart, which was an EIO to the program
  // and a sticky error on the file): it sent the part again and stored the file as it is.
  ASSERT_TRUE(synced.ok()) << synced.ToString();
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("overtaken"), data));
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("overtaken"));
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("overtaken"), data));
}

// A part chosen to be copied server-side (untouched base bytes) is written to before its
// copy starts: the copy would hold the base bytes, not the write. It is sent from the spool
// instead; recorded as the part's current version, the copy was reused by the retry of
// this commit (another part changed while uploading) and the write was lost for good.
TEST_F(WritebackTest, APartWrittenBeforeItsQueuedCopyStartsIsSentWithTheWrite) {
  WritebackOptions o = Options();
  o.upload_parallelism = 1;  // Part 3's copy waits behind part 1's upload.
  Start(rgw_, nullptr, o);
  std::string data = Body(3 * kPart, 21);
  fake_.PutDirect("copied", data, kMeta);
  auto file = MustOpen("copied", BaseOf("copied"));
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(WriteBoth(*file, &data, 10, "A"));
  Status synced;
  std::thread fsync = SyncHeldAtPart1(file, &synced);
  // While part 1 uploads: part 1 changes (this attempt is cancelled and retried), and
  // part 3, queued as a copy of the base, gets a write.
  ASSERT_TRUE(WriteBoth(*file, &data, 20, "B"));
  ASSERT_TRUE(WriteBoth(*file, &data, 2 * kPart + 5, "C"));
  rgw_.ReleasePart(1);
  fsync.join();
  ASSERT_TRUE(synced.ok()) << synced.ToString();
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("copied"), data));
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("copied"));
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("copied"), data));
}

TEST_F(WritebackTest, AnUploadAbortedOnTheServerIsStartedOverAndTheFsyncSucceeds) {
  Start(fake_);
  std::string data = Body(2 * kPart, 12);
  auto file = MustOpen("aborted");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes(data)).ok());
  ASSERT_TRUE(Eventually([&] { return wb_->GetStats().parts_uploaded == 2; }, kWait))
      << "parts 1 and 2 sent early";
  // A lifecycle rule (or another client) aborts the upload while the file is still open.
  auto uploads = fake_.ListMultipartUploads({}, {});
  ASSERT_TRUE(uploads.ok()) << uploads.status().ToString();
  ASSERT_EQ(uploads->uploads.size(), 1u);
  ASSERT_TRUE(fake_.AbortMultipart("aborted", uploads->uploads[0].upload_id, {}).ok());

  data += "tail";  // Part 3, not sent early: the commit's UploadPart finds the upload gone.
  ASSERT_TRUE(file->Write(2 * kPart, Bytes("tail")).ok());
  Status synced = wb_->Sync(file);
  ASSERT_TRUE(synced.ok()) << synced.ToString();
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("aborted"), data));
  EXPECT_EQ(fake_.PendingUploads(), 0u);
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("aborted"));
}

TEST_F(WritebackTest, PartBuffersAreReusedWhileUploadsRunAndFreedOnceIdle) {
  Start(rgw_);
  rgw_.HoldPart(1);
  rgw_.HoldPart(2);
  const std::string data = Body(3 * kPart, 6);
  const auto part = [&](int n) { return std::span<const char>(data.data() + n * kPart, kPart); };
  auto file = MustOpen("reused");
  ASSERT_NE(file, nullptr);

  ASSERT_TRUE(file->Write(0, part(0)).ok());
  ASSERT_TRUE(file->Write(kPart, part(1)).ok());
  ASSERT_TRUE(Eventually([&] { return budget_.used() == 2 * kPart; }, kWait))
      << "two part buffers out, their uploads held";

  rgw_.ReleasePart(2);  // Part 2 is sent; part 1 is still on its way.
  ASSERT_TRUE(Eventually([&] { return wb_->GetStats().parts_uploaded == 1; }, kWait));
  EXPECT_EQ(budget_.used(), 2 * kPart) << "part 1's buffer, and part 2's kept as a spare";

  ASSERT_TRUE(file->Write(2 * kPart, part(2)).ok());
  ASSERT_TRUE(Eventually([&] { return wb_->GetStats().parts_uploaded == 2; }, kWait));
  EXPECT_EQ(wb_->GetStats().part_buffers_reused, 1u) << "part 3 was read into the spare";
  EXPECT_EQ(budget_.peak(), 2 * kPart) << "and took no new memory";

  rgw_.ReleasePart(1);
  Status synced = wb_->Sync(file);
  ASSERT_TRUE(synced.ok()) << synced.ToString();
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("reused"), data));
  EXPECT_EQ(budget_.used(), 0u) << "no part in flight: no spare kept";
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("reused"));
}

TEST_F(WritebackTest, FailedBackgroundCommitIsRetriedAfterItsBackoff) {
  Start(faulty_);
  faulty_.FailNext(s3::Op::kPut, 1, s3::InjectedError(ErrorCode::kServerError));
  auto file = MustOpen("later");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes("eventually")).ok());
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitFailedCommits(1));
  EXPECT_FALSE(fake_.Exists("later"));
  EXPECT_EQ(file->Error().code(), ErrorCode::kServerError);
  EXPECT_NE(wb_->Find("later"), nullptr);

  clock_.Advance(Options().first_retry + 1s);  // The backoff has passed.
  ASSERT_TRUE(WaitCommitted("later"));
  EXPECT_EQ(fake_.ObjectBody("later"), "eventually");
  EXPECT_TRUE(file->Error().ok());
}

TEST_F(WritebackTest, PersistentFailureIsStickyKeepsTheSpoolRecordAndASyncLaterSucceeds) {
  Start(faulty_);
  const auto rule =
      faulty_.FailAlways(s3::Op::kUploadPart, s3::InjectedError(ErrorCode::kServerError));
  const std::string data = Body(2 * kPart + 33, 6);
  auto file = MustOpen("stuck");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(WriteAll(*file, data, kMiB));

  Status synced = wb_->Sync(file);
  ASSERT_FALSE(synced.ok());
  EXPECT_EQ(synced.code(), ErrorCode::kServerError) << synced.ToString();
  EXPECT_EQ(file->Error().code(), ErrorCode::kServerError);
  EXPECT_EQ(file->Write(0, Bytes("x")).code(), ErrorCode::kServerError);
  EXPECT_FALSE(fake_.Exists("stuck"));
  auto record = RecordOf("stuck");
  ASSERT_TRUE(record.has_value());
  EXPECT_FALSE(record->closed);

  wb_->ReleaseWriter(file);  // Its commit fails again, in the background.
  ASSERT_TRUE(WaitFailedCommits(2));
  record = RecordOf("stuck");
  ASSERT_TRUE(record.has_value());
  EXPECT_TRUE(record->closed);
  EXPECT_EQ(record->size, data.size());
  EXPECT_EQ(file->Error().code(), ErrorCode::kServerError);

  faulty_.RemoveRule(rule);
  synced = wb_->Sync(file);
  ASSERT_TRUE(synced.ok()) << synced.ToString();
  EXPECT_TRUE(file->Error().ok());
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("stuck"), data));
  EXPECT_EQ(wb_->Find("stuck"), nullptr);
  EXPECT_FALSE(RecordOf("stuck").has_value());
  file.reset();
  EXPECT_TRUE(Eventually([&] { return FilesInSpool() == 0; }, kWait));
}

// The contract: a failed commit's error is sticky "until a retry succeeds", and failed commits
// are "retried in the background with backoff". A commit started while the handle stays open
// (fsync) must be retried too: otherwise every
// write() of the still-open file fails with the old error long after S3 is back.
TEST_F(WritebackTest, FailedCommitWhileAWriterIsStillOpenIsRetriedInTheBackground) {
  Start(faulty_);
  faulty_.FailNext(s3::Op::kPut, 1, s3::InjectedError(ErrorCode::kServerError));
  auto file = MustOpen("open");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes("abc")).ok());
  EXPECT_EQ(wb_->Sync(file).code(), ErrorCode::kServerError);  // fsync; the handle stays open.
  ASSERT_TRUE(WaitFailedCommits(1));
  EXPECT_EQ(file->Error().code(), ErrorCode::kServerError);

  clock_.Advance(Options().first_retry + 1s);  // The backoff has passed.
  EXPECT_TRUE(Eventually([&] { return file->Error().ok(); }, 3s))
      << "still failing: " << file->Error().ToString();
  EXPECT_EQ(fake_.ObjectBody("open"), "abc");
  EXPECT_TRUE(file->Write(3, Bytes("d")).ok());
  wb_->ReleaseWriter(file);
}

TEST_F(WritebackTest, DrainCommitsEveryDirtyFileEvenWithWritersOpen) {
  Start(fake_);
  auto a = MustOpen("a");
  auto b = MustOpen("b");
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(a->Write(0, Bytes("aaa")).ok());
  ASSERT_TRUE(WriteAll(*b, Body(2 * kPart + 1, 16), kMiB));
  Status drained = wb_->Drain(clock_.Now() + 60s);
  ASSERT_TRUE(drained.ok()) << drained.ToString();
  EXPECT_EQ(fake_.ObjectBody("a"), "aaa");
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("b"), Body(2 * kPart + 1, 16)));
  wb_->ReleaseWriter(a);
  wb_->ReleaseWriter(b);
}

TEST_F(WritebackTest, DrainReportsFilesThatCouldNotBeUploaded) {
  Start(faulty_);
  faulty_.FailAlways(s3::Op::kPut, s3::InjectedError(ErrorCode::kServerError));
  auto a = MustOpen("a");
  ASSERT_NE(a, nullptr);
  ASSERT_TRUE(a->Write(0, Bytes("aaa")).ok());
  wb_->ReleaseWriter(a);
  Status drained = wb_->Drain(clock_.Now() + 60s);
  ASSERT_FALSE(drained.ok());
  EXPECT_NE(drained.message().find(spool_->directory()), std::string::npos) << drained.ToString();
  EXPECT_FALSE(fake_.Exists("a"));
  EXPECT_TRUE(RecordOf("a").has_value());  // Kept for the next mount.
}

// A forced unmount drains with closed_only: what a program still has open is half-written.
TEST_F(WritebackTest, ClosedOnlyDrainCommitsClosedFilesButNotOpenOnesAndSaysHowManyWereLeft) {
  Start(faulty_);
  // The commit the release starts fails, so the object that arrives is Drain's own commit.
  faulty_.FailNext(s3::Op::kPut, 1, s3::InjectedError(ErrorCode::kServerError), "closed");
  auto open = MustOpen("open");
  auto closed = MustOpen("closed");
  auto flushed = MustOpen("flushed");
  ASSERT_TRUE(open && closed && flushed);
  ASSERT_TRUE(open->Write(0, Bytes("still writing")).ok());
  wb_->WriterChanged(open);  // As the filesystem reports each handle's writes.
  ASSERT_TRUE(closed->Write(0, Bytes("done")).ok());
  wb_->WriterChanged(closed);
  wb_->ReleaseWriter(closed, /*writer_changed=*/true);
  ASSERT_TRUE(WaitFailedCommits(1));
  ASSERT_FALSE(fake_.Exists("closed"));
  // Its program closed it (FLUSH), but the RELEASE has not arrived: done all the same.
  ASSERT_TRUE(flushed->Write(0, Bytes("closed, not released")).ok());
  wb_->WriterChanged(flushed);
  ASSERT_TRUE(wb_->Flushed(flushed, /*writer_changed=*/true).ok());

  Status drained = wb_->Drain(clock_.Now() + 60s, /*closed_only=*/true);
  EXPECT_EQ(drained.code(), ErrorCode::kBusy) << drained.ToString();
  EXPECT_THAT(drained.message(), ::testing::StartsWith("1 file(s) still open for writing"));
  EXPECT_EQ(fake_.ObjectBody("closed"), "done");
  EXPECT_EQ(fake_.ObjectBody("flushed"), "closed, not released");
  EXPECT_FALSE(fake_.Exists("open"));
  auto record = RecordOf("open");
  ASSERT_TRUE(record.has_value());
  EXPECT_FALSE(record->closed);
  EXPECT_EQ(wb_->Find("open"), open);
  wb_->ReleaseWriter(open);
  wb_->ReleaseWriter(flushed);
}

TEST_F(WritebackTest, PlainDrainCommitsBothTheClosedAndTheStillOpenFile) {
  Start(fake_);
  auto open = MustOpen("open");
  auto closed = MustOpen("closed");
  ASSERT_TRUE(open && closed);
  ASSERT_TRUE(open->Write(0, Bytes("still writing")).ok());
  ASSERT_TRUE(closed->Write(0, Bytes("done")).ok());
  wb_->ReleaseWriter(closed);
  Status drained = wb_->Drain(clock_.Now() + 60s);
  ASSERT_TRUE(drained.ok()) << drained.ToString();
  EXPECT_EQ(fake_.ObjectBody("closed"), "done");
  EXPECT_EQ(fake_.ObjectBody("open"), "still writing");
  wb_->ReleaseWriter(open);
}

// --- Fenced mounts (cache/write_fence.h) ------------------------------------------------

// The daemon's wiring: the writeback's requests go through the fence, which the filesystem
// found closed when it refused a write and marked the file torn.
TEST_F(WritebackTest, ATornFileIsNeverUploadedAndIsSetAsideAtItsLastRelease) {
  WriteFence fence(clock_, clock_.Now() + 10s);
  FencedObjectClient fenced(fake_, fence);
  Start(fenced);
  auto torn = MustOpen("torn");
  ASSERT_NE(torn, nullptr);
  const std::string torn_id = torn->id();
  ASSERT_TRUE(torn->Write(0, Bytes("first half")).ok());
  clock_.Advance(11s);  // No renewal in time: the fence closes by its deadline.
  ASSERT_FALSE(fence.Check().ok());
  torn->MarkTorn();  // The second half was refused.
  // The renewal comes late, the fence opens again: the file stays torn all the same.
  fence.ExtendUntil(clock_.Now() + 60s);
  ASSERT_TRUE(fence.Check().ok());
  ASSERT_TRUE(torn->Write(20, Bytes("third")).ok());
  // fsync and close(2) say the file will not be uploaded.
  EXPECT_EQ(wb_->Sync(torn).code(), ErrorCode::kReadOnly);
  Status closed = wb_->Flushed(torn);
  EXPECT_EQ(closed.code(), ErrorCode::kReadOnly) << closed.ToString();
  EXPECT_EQ(wb_->GetStats().commits, 0u);
  EXPECT_NE(RecordOf("torn"), std::nullopt);
  EXPECT_FALSE(RecordOf("torn")->closed);

  // The last release sets it aside: kept in lost+found/ whole, never committed.
  wb_->ReleaseWriter(torn);
  torn.reset();
  EXPECT_EQ(wb_->Find("torn"), nullptr);
  EXPECT_EQ(LostAndFound(), (std::vector<std::string>{torn_id + ".data", torn_id + ".json"}));
  std::ifstream kept(root_ / "bucket" / "lost+found" / (torn_id + ".data"), std::ios::binary);
  const std::string kept_bytes((std::istreambuf_iterator<char>(kept)), {});
  EXPECT_EQ(kept_bytes, std::string("first half") + std::string(10, '\0') + "third");
  EXPECT_EQ(fake_.calls(s3::Op::kPut), 0u);
  EXPECT_FALSE(fake_.Exists("torn"));

  // The key opens again as a new file, which uploads as usual.
  auto again = MustOpen("torn");
  ASSERT_NE(again, nullptr);
  EXPECT_NE(again->id(), torn_id);
  ASSERT_TRUE(again->Write(0, Bytes("whole")).ok());
  ASSERT_TRUE(wb_->Flushed(again).ok());
  wb_->ReleaseWriter(again);
  ASSERT_TRUE(WaitCommitted("torn"));
  EXPECT_EQ(fake_.ObjectBody("torn"), "whole");
  again.reset();
  wb_.reset();  // Before `fenced` goes.
}

TEST_F(WritebackTest, AFileClosedThenRefusedOnItsFirstWriteKeepsItsClosedVersionForTheUpload) {
  // Closed (journaled closed, its commit not done yet), then opened again, and the first
  // write refused (the mount fenced): nothing changed since the close, so the version its
  // program closed, and was told was safe, still goes to S3, not to lost+found/.
  const s3::FaultInjectingClient::RuleId failing =
      faulty_.FailAlways(s3::Op::kPut, s3::InjectedError(ErrorCode::kServerError));
  Start(faulty_);
  auto file = MustOpen("f");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes("closed")).ok());
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitFailedCommits(1));
  ASSERT_TRUE(RecordOf("f")->closed);
  auto again = wb_->ReopenForWrite("f");
  ASSERT_EQ(again, file);
  EXPECT_FALSE(file->MarkTorn());
  EXPECT_FALSE(file->torn());
  EXPECT_TRUE(RecordOf("f")->closed) << "a restart uploads it";
  wb_->ReleaseWriter(file);
  again.reset();
  EXPECT_TRUE(LostAndFound().empty());

  faulty_.RemoveRule(failing);
  clock_.Advance(Options().max_retry + 1s);
  ASSERT_TRUE(WaitCommitted("f"));
  EXPECT_EQ(fake_.ObjectBody("f"), "closed");
}

TEST_F(WritebackTest, ATornFileStillOpenWhenTheDaemonStopsIsQuarantinedByRecover) {
  std::string torn_id;
  {
    WriteFence fence(clock_);
    FencedObjectClient fenced(fake_, fence);
    Start(fenced);
    auto torn = MustOpen("torn");
    ASSERT_NE(torn, nullptr);
    torn_id = torn->id();
    ASSERT_TRUE(torn->Write(0, Bytes("first half")).ok());
    fence.Close("the lease was lost");
    torn->MarkTorn();
    // The daemon stops with the file still open.
    torn.reset();
    wb_.reset();
    auto record = RecordOf("torn");
    ASSERT_TRUE(record.has_value());
    EXPECT_FALSE(record->closed);
    spool_.reset();
  }
  EXPECT_EQ(fake_.calls(s3::Op::kPut), 0u);

  // The next mount holds the lease: nothing fences it.
  spool_ = OpenSpool();
  ASSERT_NE(spool_, nullptr);
  Start(fake_);
  EXPECT_EQ(wb_->Recover(), 0u);
  EXPECT_FALSE(fake_.Exists("torn"));
  EXPECT_EQ(wb_->Find("torn"), nullptr);
  EXPECT_EQ(LostAndFound(), (std::vector<std::string>{torn_id + ".data", torn_id + ".json"}));
  EXPECT_EQ(FilesInSpool(), 0u);
}

// The contrast: a file closed whole while fenced loses nothing; the next mount uploads it.
TEST_F(WritebackTest, FileClosedWhileFencedStaysJournaledClosedAndTheNextMountUploadsIt) {
  {
    WriteFence fence(clock_);
    FencedObjectClient fenced(fake_, fence);
    Start(fenced);
    auto file = MustOpen("whole");
    ASSERT_NE(file, nullptr);
    ASSERT_TRUE(file->Write(0, Bytes("all of it")).ok());
    fence.Close("the lease was lost");
    wb_->ReleaseWriter(file);
    ASSERT_TRUE(WaitFailedCommits(1));
    EXPECT_EQ(file->Error().code(), ErrorCode::kReadOnly) << file->Error().ToString();
    file.reset();
    wb_.reset();
    auto record = RecordOf("whole");
    ASSERT_TRUE(record.has_value());
    EXPECT_TRUE(record->closed);
    spool_.reset();
  }
  EXPECT_FALSE(fake_.Exists("whole"));

  spool_ = OpenSpool();
  ASSERT_NE(spool_, nullptr);
  Start(fake_);
  EXPECT_EQ(wb_->Recover(), 1u);
  EXPECT_EQ(fake_.ObjectBody("whole"), "all of it");
  EXPECT_TRUE(LostAndFound().empty());
}

TEST_F(WritebackTest, EarlyPartsWaitingOnAFailedCreateMultipartDoNotEachAskAgain) {
  GatedCreateClient gate(fake_);
  Start(gate);
  auto file = MustOpen("gated");
  ASSERT_NE(file, nullptr);
  // Three full parts: three early uploads, one creating the upload, two waiting on it.
  ASSERT_TRUE(WriteAll(*file, Body(3 * kPart, 91), kMiB));
  ASSERT_TRUE(Eventually([&] { return gate.waiting() == 1; }, kWait));
  EXPECT_EQ(wb_->GetStats().eager_parts, 3u);
  gate.Open(s3::InjectedError(ErrorCode::kServerError));
  ASSERT_TRUE(Eventually([&] { return wb_->GetStats().eager_parts == 0; }, kWait));
  // The parts that waited took the failure as theirs: one request, not one per part,
  // each with its own deadline against a server that does not answer.
  EXPECT_EQ(gate.calls(), 1);
}

// An fsync that waits for early parts which then reach their deadline reports that
// timeout; it does not ask the same server again at once, which against a server that does
// not answer made fsync wait out a second deadline (about 4 minutes instead of 2).
TEST_F(WritebackTest, AnFsyncWhoseEarlyPartsTimeOutWhileItWaitsReportsTheTimeoutAtOnce) {
  GatedCreateClient gate(fake_);
  Start(gate);
  auto file = MustOpen("gated-sync");
  ASSERT_NE(file, nullptr);
  const std::string data = Body(3 * kPart, 93);
  ASSERT_TRUE(WriteAll(*file, data, kMiB));
  ASSERT_TRUE(Eventually([&] { return gate.waiting() == 1; }, kWait));
  std::packaged_task<Status()> sync([&] { return wb_->Sync(file); });
  std::future<Status> synced = sync.get_future();
  std::thread syncer(std::move(sync));
  ASSERT_TRUE(Eventually([&] { return wb_->GetStats().commits_in_flight == 1; }, kWait));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // Into its wait.
  gate.Open(s3::InjectedError(ErrorCode::kTimeout));
  const Status result = synced.get();
  syncer.join();
  EXPECT_EQ(result.code(), ErrorCode::kTimeout) << result.ToString();
  EXPECT_EQ(gate.calls(), 1) << "the fsync created the upload again";
  gate.Open(Status::Ok());  // The server is back.
  EXPECT_FALSE(file->Error().ok()) << "the error is sticky until a retry succeeds";
  EXPECT_FALSE(fake_.Exists("gated-sync"));

  // The background retry, and the next fsync, still send everything.
  clock_.Advance(Options().first_retry + 1s);
  EXPECT_TRUE(Eventually([&] { return file->Error().ok(); }, kWait))
      << "still failing: " << file->Error().ToString();
  const Status again = wb_->Sync(file);
  ASSERT_TRUE(again.ok()) << again.ToString();
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("gated-sync"), data));
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("gated-sync"));
}

// --- Crash recovery ------------------------------------------------------------------------

TEST_F(WritebackTest, RecoverCommitsWhatAStoppedDaemonLeftClosedInTheSpool) {
  const std::string multipart = Body(2 * kPart + 5, 21);
  const std::string base = Body(1000, 22);
  fake_.PutDirect("based", base, kMeta);
  std::string based = base;
  based.replace(10, 3, "xyz");
  {
    // A daemon whose uploads all fail: nothing commits before it stops.
    faulty_.FailAlways(s3::Op::kPut, s3::InjectedError(ErrorCode::kServerError));
    faulty_.FailAlways(s3::Op::kUploadPart, s3::InjectedError(ErrorCode::kServerError));
    Start(faulty_);
    auto small = MustOpen("small");
    auto large = MustOpen("large");
    auto existing = MustOpen("based", BaseOf("based"));
    ASSERT_TRUE(small && large && existing);
    ASSERT_TRUE(small->Write(0, Bytes("tiny")).ok());
    ASSERT_TRUE(WriteAll(*large, multipart, kMiB));
    ASSERT_TRUE(existing->Write(10, Bytes("xyz")).ok());
    wb_->ReleaseWriter(small);
    wb_->ReleaseWriter(large);
    wb_->ReleaseWriter(existing);
    ASSERT_TRUE(WaitFailedCommits(3));
    small.reset();
    large.reset();
    existing.reset();

    const MonoTime before = RealClock().Now();
    wb_.reset();  // No Drain: stopping must not wait for the failing uploads.
    EXPECT_LT(RealClock().Now() - before, 2s);
    spool_.reset();
  }
  EXPECT_FALSE(fake_.Exists("small"));
  EXPECT_FALSE(fake_.Exists("large"));
  EXPECT_EQ(fake_.ObjectBody("based"), base);

  spool_ = OpenSpool();
  ASSERT_NE(spool_, nullptr);
  faulty_.ClearRules();
  Start(fake_);
  EXPECT_EQ(wb_->Recover(), 3u);
  EXPECT_EQ(fake_.ObjectBody("small"), "tiny");
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("large"), multipart));
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("based"), based));
  for (const char* key : {"small", "large", "based"}) {
    auto info = fake_.ObjectInfoDirect(key);
    ASSERT_TRUE(info.has_value()) << key;
    EXPECT_EQ(info->metadata, Stored(kMeta)) << key;
    EXPECT_EQ(wb_->Find(key), nullptr) << key;
  }
  EXPECT_TRUE(Eventually([&] { return FilesInSpool() == 0; }, kWait)) << FilesInSpool();
  EXPECT_TRUE(LostAndFound().empty());
}

TEST_F(WritebackTest, AWriteCutShortKeepsTheBaseBytesItNeverReached) {
  // A rewrite of an object whose bytes were never fetched: the write of [60, 100) stops at
  // byte 80. The file is the object with [60, 80) written, not zeros after byte 80.
  fake_.PutDirect("f", std::string(100, 'o'), kMeta);
  Start(fake_);
  auto file = MustOpen("f", BaseOf("f"));
  ASSERT_NE(file, nullptr);
  Status wrote = WriteUnderFileSizeLimit(*file, 60, std::string(40, 'n'), 80);
  ASSERT_FALSE(wrote.ok()) << "the limit did not cut the write short";
  auto shown = file->Read(0, 1000);
  ASSERT_TRUE(shown.ok()) << shown.status().ToString();
  EXPECT_EQ(shown->ToString(), std::string(60, 'o') + std::string(20, 'n') + std::string(20, 'o'));
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("f"));
  EXPECT_EQ(fake_.ObjectBody("f"), std::string(60, 'o') + std::string(20, 'n') + std::string(20, 'o'));
}

// A rewrite of a few bytes of an object, committed while the spool's disk is full: the
// object's other bytes are fetched into memory for the upload, and their copy into the
// spool (which needs room) is skipped, not made a reason for the commit to fail for ever.
TEST_F(WritebackTest, ACommitNeedsNoSpoolRoomForTheBaseBytesItFetches) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to mount a small tmpfs as the full disk";
  wb_.reset();
  spool_.reset();
  const stdfs::path disk = root_ / "small-disk";
  stdfs::create_directories(disk);
  ASSERT_EQ(::mount("tmpfs", disk.c_str(), "tmpfs", 0, "size=2m"), 0) << std::strerror(errno);
  struct Unmount {
    stdfs::path dir;
    ~Unmount() { ::umount2(dir.c_str(), MNT_DETACH); }
  } unmount{disk};
  auto opened = Spool::Open(disk.string(), "bucket");
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  spool_ = std::move(opened).value();
  Start(fake_);

  std::string data = Body(1 * kMiB, 31);
  fake_.PutDirect("edited", data, kMeta);
  auto file = MustOpen("edited", BaseOf("edited"));
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes("EDIT")).ok());
  data.replace(0, 4, "EDIT");
  {  // Something else fills the disk.
    std::ofstream filler(disk / "filler", std::ios::binary);
    const std::string chunk(64 * 1024, 'x');
    for (int i = 0; i < 64 && filler; ++i) filler.write(chunk.data(), chunk.size());
  }
  Status synced = wb_->Sync(file);
  ASSERT_TRUE(synced.ok()) << synced.ToString();
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("edited"), data));
  auto shown = file->Read(0, 100);  // And reads too fetch what the spool has no room for.
  ASSERT_TRUE(shown.ok()) << shown.status().ToString();
  EXPECT_EQ(shown->ToString(), data.substr(0, 100));
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("edited"));
  file.reset();
  wb_.reset();
  spool_.reset();
}

TEST_F(WritebackTest, AFileLargerThanItsPartsCouldEverUploadIsEfbigAtOnce) {
  // 64 MiB of budget: parts of at most 8 MiB, so 500 × 5 MiB + 9,500 × 8 MiB at most. A
  // larger file could never be uploaded (a part bigger than the budget cannot be read
  // into memory): the write that would make it says so, not the commit after close.
  Start(fake_);
  const uint64_t largest = 500 * kPart + 9500 * 8 * kMiB;
  EXPECT_EQ(wb_->max_file_size(), largest);
  auto file = MustOpen("huge");
  ASSERT_NE(file, nullptr);
  Status past = file->Write(largest, Bytes("x"));
  EXPECT_EQ(past.code(), ErrorCode::kEntityTooLarge) << past.ToString();
  EXPECT_NE(past.message().find("--max-memory"), std::string::npos) << past.ToString();
  EXPECT_EQ(file->Truncate(largest + 1).code(), ErrorCode::kEntityTooLarge);
  EXPECT_TRUE(file->Truncate(largest).ok());  // Sparse: nothing written.
  EXPECT_EQ(file->Attributes().size, largest);
  EXPECT_TRUE(file->Truncate(3).ok());
  ASSERT_TRUE(file->Write(0, Bytes("abc")).ok());
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("huge"));
  EXPECT_EQ(fake_.ObjectBody("huge"), "abc");
}

TEST_F(WritebackTest, AWriteThatFailsPastTheEndStillUploadsTheBytesItOverwroteBeforeTheEnd) {
  // A write from inside the file to past its end that fails half-way (here the file size
  // limit; in life a full spool disk) has overwritten the bytes before the end: S3 must
  // get what the mount now shows, not keep the old bytes under a "clean" file.
  const std::string old_bytes(100, 'o');
  Start(fake_);
  auto file = MustOpen("f");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes(old_bytes)).ok());
  ASSERT_TRUE(wb_->Sync(file).ok());
  ASSERT_TRUE(file->Write(0, Bytes("o")).ok());  // Journaled open again, before the limit.
  ASSERT_TRUE(wb_->Sync(file).ok());
  ASSERT_EQ(fake_.ObjectBody("f"), old_bytes);

  // The write of [60, 160) stops at byte 150.
  Status wrote = WriteUnderFileSizeLimit(*file, 60, std::string(100, 'n'), 150);
  ASSERT_FALSE(wrote.ok()) << "the limit did not cut the write short";

  auto shown = file->Read(0, 1000);
  ASSERT_TRUE(shown.ok()) << shown.status().ToString();
  const std::string mount_view = shown->ToString();
  EXPECT_EQ(mount_view.size(), 100u) << "the failed write does not grow the file";
  EXPECT_EQ(mount_view.substr(60), std::string(40, 'n'));
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("f"));
  EXPECT_EQ(fake_.ObjectBody("f"), mount_view);
}

// Runs `before_put` once, in the committing thread, before the first PUT goes out.
class BeforePutClient final : public s3::ForwardingClient {
 public:
  explicit BeforePutClient(s3::ObjectClient& inner) : s3::ForwardingClient(inner) {}
  std::function<void()> before_put;
  Result<s3::PutResult> Put(const s3::PutRequest& req, const s3::CallOptions& opts) override {
    if (auto hook = std::exchange(before_put, nullptr)) hook();
    return inner().Put(req, opts);
  }
};

// Copies the spool's files/ aside right after a request of `op` returns OK: the spool as a
// daemon killed at that moment (its request landed, its record not yet removed) leaves it.
class SnapshotAfterClient final : public s3::ForwardingClient {
 public:
  SnapshotAfterClient(s3::ObjectClient& inner, stdfs::path files, stdfs::path aside)
      : s3::ForwardingClient(inner), files_(std::move(files)), aside_(std::move(aside)) {}
  Result<s3::PutResult> Put(const s3::PutRequest& req, const s3::CallOptions& opts) override {
    auto r = inner().Put(req, opts);
    if (r.ok()) Snapshot();
    return r;
  }
  Result<s3::PutResult> CompleteMultipart(const s3::CompleteMultipartRequest& req,
                                          const s3::CallOptions& opts) override {
    auto r = inner().CompleteMultipart(req, opts);
    if (r.ok()) Snapshot();
    return r;
  }

 private:
  void Snapshot() {
    stdfs::create_directories(aside_);
    stdfs::copy(files_, aside_, stdfs::copy_options::recursive | stdfs::copy_options::overwrite_existing);
  }
  stdfs::path files_, aside_;
};

TEST_F(WritebackTest, ACommitThatLandedJustBeforeTheDaemonDiedIsNotTakenForAConflict) {
  // An append to an existing object, and a rewrite in parts of another: each commit lands,
  // and the daemon dies before its record is removed. The base the records name is gone
  // (replaced by our own commit): fetching or If-Matching it would fail, a false conflict.
  fake_.PutDirect("log", "base", kMeta);
  const std::string big = Body(2 * kPart + 9, 41);
  fake_.PutDirect("big", Body(kPart + 1, 42), kMeta);
  const stdfs::path aside = root_ / "aside";
  {
    SnapshotAfterClient snap(fake_, root_ / "bucket" / "files", aside);
    Start(snap);
    auto log = MustOpen("log", BaseOf("log"));
    ASSERT_NE(log, nullptr);
    ASSERT_TRUE(log->Write(4, Bytes("+more")).ok());  // The spool holds only these bytes.
    wb_->ReleaseWriter(log);
    ASSERT_TRUE(WaitCommitted("log"));
    auto file = MustOpen("big", BaseOf("big"));
    ASSERT_NE(file, nullptr);
    ASSERT_TRUE(file->Truncate(0).ok());
    ASSERT_TRUE(WriteAll(*file, big, kMiB));
    wb_->ReleaseWriter(file);
    ASSERT_TRUE(WaitCommitted("big"));
    log.reset();
    file.reset();
    wb_.reset();
    spool_.reset();
  }
  ASSERT_EQ(fake_.ObjectBody("log"), "base+more");
  ASSERT_TRUE(SameBytes(fake_.ObjectBody("big"), big));
  const std::string log_etag = fake_.ObjectInfoDirect("log")->etag;
  const std::string big_etag = fake_.ObjectInfoDirect("big")->etag;
  // The spool as the killed daemon left it: both records, closed, naming the old bases.
  stdfs::copy(aside, root_ / "bucket" / "files",
              stdfs::copy_options::recursive | stdfs::copy_options::overwrite_existing);

  spool_ = OpenSpool();
  ASSERT_NE(spool_, nullptr);
  ASSERT_EQ(spool_->Scan().size(), 2u);
  Start(fake_);
  EXPECT_EQ(wb_->Recover(), 2u);
  EXPECT_EQ(fake_.ObjectInfoDirect("log")->etag, log_etag) << "nothing to upload again";
  EXPECT_EQ(fake_.ObjectInfoDirect("big")->etag, big_etag);
  EXPECT_TRUE(LostAndFound().empty());
  EXPECT_TRUE(Eventually([&] { return FilesInSpool() == 0; }, kWait)) << FilesInSpool();
}

TEST_F(WritebackTest, ALandingEtagMetBySomeoneElsesIdenticalBytesIsStillAConflict) {
  // An O_EXCL lock file lands; the daemon dies before its record goes; someone else then
  // deletes it and creates the same bytes with their own metadata. Same ETag, not ours.
  const stdfs::path aside = root_ / "aside";
  {
    SnapshotAfterClient snap(fake_, root_ / "bucket" / "files", aside);
    Start(snap);
    auto lock = MustOpen("lock", std::nullopt, kMeta, /*create_only=*/true);
    ASSERT_NE(lock, nullptr);
    ASSERT_TRUE(lock->Write(0, Bytes("pid 42")).ok());
    wb_->ReleaseWriter(lock);
    ASSERT_TRUE(WaitCommitted("lock"));
    lock.reset();
    wb_.reset();
    spool_.reset();
  }
  const s3::UserMetadata theirs = {{"mode", "33188"}, {"uid", "0"}, {"gid", "0"}, {"mtime", "1"}};
  fake_.DeleteDirect("lock");
  fake_.PutDirect("lock", "pid 42", theirs);
  stdfs::copy(aside, root_ / "bucket" / "files",
              stdfs::copy_options::recursive | stdfs::copy_options::overwrite_existing);

  spool_ = OpenSpool();
  ASSERT_NE(spool_, nullptr);
  Start(fake_);
  EXPECT_EQ(wb_->Recover(), 0u);
  EXPECT_EQ(fake_.ObjectInfoDirect("lock")->metadata, theirs) << "their object was taken for ours";
  auto kept = wb_->Find("lock");
  ASSERT_NE(kept, nullptr) << "our data is kept, as for any conflict";
  EXPECT_EQ(kept->Error().code(), ErrorCode::kStale) << kept->Error().ToString();
}

TEST_F(WritebackTest, AChmodDuringACommitLeavesTheRecordNamingTheVersionJustCommitted) {
  // rsync's pattern: the data commit runs after close, a chmod arrives meanwhile, and the
  // daemon dies before the metadata copy that follows is done. The next mount must not
  // take the object it committed itself for someone else's change.
  fake_.PutDirect("f", "base", kMeta);
  BeforePutClient hooked(faulty_);
  Start(hooked);
  auto file = MustOpen("f", BaseOf("f"));
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes("new contents")).ok());
  hooked.before_put = [&] { file->SetMetadata({{"mode", "33152"}}, std::nullopt); };
  faulty_.FailAlways(s3::Op::kCopy, s3::InjectedError(ErrorCode::kServerError));
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(Eventually([&] { return fake_.ObjectBody("f") == "new contents"; }, kWait));
  ASSERT_TRUE(WaitFailedCommits(1));  // The metadata copy.
  const std::string committed = fake_.ObjectInfoDirect("f")->etag;
  auto record = RecordOf("f");
  ASSERT_TRUE(record.has_value());
  EXPECT_EQ(record->base_etag, committed);
  file.reset();
  wb_.reset();  // The daemon stops before the copy succeeds.
  spool_.reset();

  spool_ = OpenSpool();
  ASSERT_NE(spool_, nullptr);
  faulty_.ClearRules();
  Start(fake_);
  EXPECT_EQ(wb_->Recover(), 1u);
  EXPECT_EQ(fake_.ObjectBody("f"), "new contents");
  EXPECT_EQ(fake_.ObjectInfoDirect("f")->metadata.at("mode"), "33152");
  EXPECT_TRUE(LostAndFound().empty());
}

TEST_F(WritebackTest, AnObjectLargerThanTheCappedLayoutHoldsCanStillBeWrittenWhereItsPartsFit) {
  // A 100 GiB object opened for writing on a 64 MiB budget: its untouched parts would be
  // copied server-side, so it is not refused; a write to an early (small) part is taken,
  // one to a part larger than a buffer the budget allows is EFBIG, naming the part size.
  Start(fake_);
  const uint64_t huge = 100ull << 30;
  ASSERT_GT(huge, wb_->max_file_size());
  auto file = MustOpen("huge", BaseObject{"\"0123456789abcdef0123456789abcdef\"", huge});
  ASSERT_NE(file, nullptr);
  EXPECT_TRUE(file->Write(0, Bytes("head")).ok());
  Status late = file->Write(99ull << 30, Bytes("tail"));
  EXPECT_EQ(late.code(), ErrorCode::kEntityTooLarge) << late.ToString();
  EXPECT_NE(late.message().find("--max-memory"), std::string::npos) << late.ToString();
  EXPECT_EQ(file->Truncate(huge + kMiB).code(), ErrorCode::kEntityTooLarge) << "grows a big part";
  EXPECT_TRUE(file->Truncate(huge - kMiB).ok()) << "shrinking writes nothing";
  EXPECT_EQ(file->Attributes().size, huge - kMiB);
  // Never committed (the object is not in the fake): the daemon stops with it open.
  file.reset();
  wb_.reset();
}

TEST_F(WritebackTest, RecoverAbortsTheMultipartUploadAKilledDaemonLeftBeforeUploadingAnew) {
  const std::string body = Body(3 * kPart + 7, 31);
  {
    // A daemon whose upload of a multipart file never completes nor aborts: then killed.
    LedgeredClient ledgered(faulty_, *spool_);
    faulty_.FailAlways(s3::Op::kCompleteMultipart, s3::InjectedError(ErrorCode::kServerError));
    faulty_.FailAlways(s3::Op::kAbortMultipart, s3::InjectedError(ErrorCode::kServerError));
    Start(ledgered);
    auto file = MustOpen("checkpoint");
    ASSERT_NE(file, nullptr);
    ASSERT_TRUE(WriteAll(*file, body, kMiB));
    wb_->ReleaseWriter(file);
    ASSERT_TRUE(WaitFailedCommits(1));
    file.reset();
    wb_.reset();
    spool_.reset();
  }
  const size_t left = fake_.PendingUploads();
  ASSERT_GE(left, 1u) << "the killed daemon's upload is still on the server";

  spool_ = OpenSpool();
  ASSERT_NE(spool_, nullptr);
  faulty_.ClearRules();
  LedgeredClient ledgered(faulty_, *spool_);
  Start(ledgered);
  EXPECT_EQ(wb_->Recover(), 1u);
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("checkpoint"), body));
  EXPECT_EQ(fake_.PendingUploads(), 0u) << "the old upload's parts stay stored on the server";
  EXPECT_TRUE(spool_->NotedUploads().empty());
  wb_.reset();  // Before `ledgered` goes.
}

TEST_F(WritebackTest, RecoverQuarantinesARecordStillOpenInsteadOfUploadingIt) {
  std::string open_id;
  {
    Start(fake_);
    auto open = MustOpen("half-written");
    ASSERT_NE(open, nullptr);
    open_id = open->id();
    ASSERT_TRUE(open->Write(0, Bytes("half")).ok());
    // Never released: the daemon stops with the file open.
    open.reset();
    wb_.reset();
    spool_.reset();
  }
  spool_ = OpenSpool();
  ASSERT_NE(spool_, nullptr);
  Start(fake_);
  EXPECT_EQ(wb_->Recover(), 0u);
  EXPECT_FALSE(fake_.Exists("half-written"));
  EXPECT_EQ(wb_->Find("half-written"), nullptr);
  EXPECT_EQ(LostAndFound(), (std::vector<std::string>{open_id + ".data", open_id + ".json"}));
  EXPECT_EQ(FilesInSpool(), 0u);
}

TEST_F(WritebackTest, RecoverUploadsTheNewestRecordOfAKeyAndQuarantinesTheOlder) {
  // Two closed records of one key, as two daemons in turn could leave them.
  std::vector<std::string> ids;
  for (const std::string text : {"older", "newer"}) {
    auto created = spool_->CreateData();
    ASSERT_TRUE(created.ok());
    ASSERT_EQ(::pwrite(created->second, text.data(), text.size(), 0),
              static_cast<ssize_t>(text.size()));
    ::close(created->second);
    SpoolRecord r;
    r.id = created->first;
    r.key = "twice";
    r.size = text.size();
    r.present = {{0, text.size()}};
    r.metadata = Stored(kMeta);
    r.closed = true;
    ASSERT_TRUE(spool_->WriteRecord(r).ok());
    ids.push_back(r.id);
  }
  ASSERT_LT(ids[0], ids[1]);  // Ids sort by creation.
  Start(fake_);
  EXPECT_EQ(wb_->Recover(), 1u);
  EXPECT_EQ(fake_.ObjectBody("twice"), "newer");
  EXPECT_EQ(fake_.ObjectInfoDirect("twice")->metadata, Stored(kMeta));
  EXPECT_EQ(LostAndFound(), (std::vector<std::string>{ids[0] + ".data", ids[0] + ".json"}));
}

// A rename over a dirty file journals the moved file under the key before the replaced
// file's record goes; killed between the two, the spool holds both, the replaced one with
// the later id. The later written wins: the renamed file's bytes are uploaded.
TEST_F(WritebackTest, RecoverUploadsTheLaterWrittenRecordOfAKeyWhateverItsId) {
  std::vector<std::string> ids;
  for (const std::string text : {"renamed here", "replaced"}) {
    auto created = spool_->CreateData();
    ASSERT_TRUE(created.ok());
    ASSERT_EQ(::pwrite(created->second, text.data(), text.size(), 0),
              static_cast<ssize_t>(text.size()));
    ::close(created->second);
    ids.push_back(created->first);
  }
  ASSERT_LT(ids[0], ids[1]);
  const auto record = [&](const std::string& id, const std::string& key, size_t size) {
    SpoolRecord r;
    r.id = id;
    r.key = key;
    r.size = size;
    r.present = {{0, size}};
    r.metadata = Stored(kMeta);
    r.closed = true;
    return r;
  };
  // In the order Rename writes them: the replaced file's record (as it was), then the
  // moved file's under the key it was renamed to.
  ASSERT_TRUE(spool_->WriteRecord(record(ids[1], "b", 8)).ok());
  ASSERT_TRUE(spool_->WriteRecord(record(ids[0], "b", 12)).ok());
  // A new spool, as the next daemon opens it (its clock may be behind the records').
  spool_.reset();
  spool_ = OpenSpool();
  ASSERT_NE(spool_, nullptr);
  Start(fake_);
  EXPECT_EQ(wb_->Recover(), 1u);
  EXPECT_EQ(fake_.ObjectBody("b"), "renamed here");
  EXPECT_EQ(LostAndFound(), (std::vector<std::string>{ids[1] + ".data", ids[1] + ".json"}));
}

TEST_F(WritebackTest, RecoverKeepsTheFilesMtimeExactly) {
  auto created = spool_->CreateData();
  ASSERT_TRUE(created.ok());
  ASSERT_EQ(::pwrite(created->second, "data", 4, 0), 4);
  ::close(created->second);
  SpoolRecord r;
  r.id = created->first;
  r.key = "timed";
  r.size = 4;
  r.present = {{0, 4}};
  r.metadata = kMeta;
  r.metadata["mtime"] = "1763838654.123456789";  // As EncodeMtime writes a real clock's time.
  r.closed = true;
  ASSERT_TRUE(spool_->WriteRecord(r).ok());
  Start(fake_);
  EXPECT_EQ(wb_->Recover(), 1u);
  auto info = fake_.ObjectInfoDirect("timed");
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->metadata.at("mtime"), "1763838654.123456789");
}

TEST_F(WritebackTest, RecoverOfAFileWhoseObjectChangedMeanwhileKeepsItsData) {
  fake_.PutDirect("moved-on", "version 1");
  const std::string old_etag = fake_.ObjectInfoDirect("moved-on")->etag;
  fake_.PutDirect("moved-on", "version 2 by someone else");
  auto created = spool_->CreateData();
  ASSERT_TRUE(created.ok());
  ASSERT_EQ(::pwrite(created->second, "mine", 4, 0), 4);
  ::close(created->second);
  SpoolRecord r;
  r.id = created->first;
  r.key = "moved-on";
  r.base_etag = old_etag;
  r.base_limit = 4;
  r.size = 4;
  r.present = {{0, 4}};
  r.metadata = Stored(kMeta);
  r.closed = true;
  ASSERT_TRUE(spool_->WriteRecord(r).ok());
  Start(fake_);
  EXPECT_EQ(wb_->Recover(), 0u);
  EXPECT_EQ(fake_.ObjectBody("moved-on"), "version 2 by someone else");
  ASSERT_NE(wb_->Find("moved-on"), nullptr);
  EXPECT_EQ(wb_->Find("moved-on")->Error().code(), ErrorCode::kStale);
  EXPECT_TRUE(RecordOf("moved-on").has_value());  // Kept for a person.
}

// --- Namespace -----------------------------------------------------------------------------

TEST_F(WritebackTest, UnlinkedDirtyFileIsNeverCommitted) {
  Start(fake_);
  auto file = MustOpen("gone");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes("never stored")).ok());
  wb_->Unlink("gone");
  EXPECT_EQ(wb_->Find("gone"), nullptr);
  // The program may go on writing to its descriptor; nothing reaches the bucket.
  EXPECT_TRUE(file->Write(12, Bytes("!")).ok());
  EXPECT_TRUE(wb_->Sync(file).ok());
  wb_->ReleaseWriter(file);
  file.reset();
  EXPECT_FALSE(fake_.Exists("gone"));
  EXPECT_EQ(fake_.calls(s3::Op::kPut), 0u);
  EXPECT_EQ(fake_.calls(s3::Op::kCompleteMultipart), 0u);
  EXPECT_EQ(FilesInSpool(), 0u);
  EXPECT_EQ(wb_->GetStats().dirty_files, 0u);
}

TEST_F(WritebackTest, UnlinkAbortsAnUploadAlreadyStarted) {
  Start(fake_);
  auto file = MustOpen("gone");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes(Body(2 * kPart + 5))).ok());
  ASSERT_TRUE(Eventually([&] { return wb_->GetStats().parts_uploaded >= 2; }, kWait));
  EXPECT_EQ(fake_.PendingUploads(), 1u);
  wb_->Unlink("gone");
  EXPECT_EQ(fake_.PendingUploads(), 0u);
  wb_->ReleaseWriter(file);
  EXPECT_FALSE(fake_.Exists("gone"));
  EXPECT_EQ(fake_.calls(s3::Op::kCompleteMultipart), 0u);
}

// Makes the spool's next replace-whole write of `file`'s record fail (a directory where its
// temporary file goes): the record must first be too big to rewrite in place (4 KiB), which
// 600 separate extents make it.
void MakeRecordUnwritable(const stdfs::path& root, const std::shared_ptr<DirtyFile>& file) {
  for (int i = 0; i < 600; ++i) ASSERT_TRUE(file->Write(2 * i, Bytes("x")).ok());
  stdfs::create_directory(root / "bucket" / "files" / (file->id() + ".json.tmp"));
}

TEST_F(WritebackTest, ACloseWhoseJournalCannotBeWrittenFailsAndTheNextOneJournalsIt) {
  Start(fake_);
  auto file = MustOpen("j");
  ASSERT_NE(file, nullptr);
  MakeRecordUnwritable(root_, file);
  Status closed = wb_->Flushed(file);
  EXPECT_EQ(closed.code(), ErrorCode::kInternal) << closed.ToString();  // EISDIR: EIO.
  ASSERT_TRUE(RecordOf("j").has_value());
  EXPECT_FALSE(RecordOf("j")->closed) << "a crash now keeps it in lost+found/";

  stdfs::remove(root_ / "bucket" / "files" / (file->id() + ".json.tmp"));
  ASSERT_TRUE(wb_->Flushed(file).ok());
  EXPECT_TRUE(RecordOf("j")->closed);
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("j"));
  EXPECT_EQ(fake_.ObjectBody("j")->size(), 1199u);
}

TEST_F(WritebackTest, AWriteAfterACloseIsRefusedWhileTheJournalCannotSayOpen) {
  Start(fake_);
  auto file = MustOpen("j");
  ASSERT_NE(file, nullptr);
  for (int i = 0; i < 600; ++i) ASSERT_TRUE(file->Write(2 * i, Bytes("x")).ok());
  ASSERT_TRUE(wb_->Flushed(file).ok());
  ASSERT_TRUE(RecordOf("j")->closed);
  stdfs::create_directory(root_ / "bucket" / "files" / (file->id() + ".json.tmp"));
  // Written again through another descriptor: the record must say open first.
  Status wrote = file->Write(0, Bytes("y"));
  EXPECT_EQ(wrote.code(), ErrorCode::kInternal) << wrote.ToString();
  Status again = file->Write(0, Bytes("y"));
  EXPECT_EQ(again.code(), ErrorCode::kInternal) << "the second write slipped through";
  EXPECT_TRUE(RecordOf("j")->closed);
  auto read = file->Read(0, 1);
  ASSERT_TRUE(read.ok()) << read.status().ToString();
  EXPECT_EQ(read->ToString(), "x") << "a refused write changed the file";
  stdfs::remove(root_ / "bucket" / "files" / (file->id() + ".json.tmp"));
  wb_->ReleaseWriter(file);
}

TEST_F(WritebackTest, AChmodAfterCloseIsInTheRecordARestartUploads) {
  Start(faulty_);
  faulty_.FailNext(s3::Op::kPut, 1000, s3::InjectedError(ErrorCode::kServerError));
  auto file = MustOpen("m");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes("data")).ok());
  ASSERT_TRUE(wb_->Flushed(file).ok());
  wb_->ReleaseWriter(file);  // Closed; its upload fails and waits for a retry.
  ASSERT_TRUE(RecordOf("m")->closed);
  file->SetMetadata({{"mode", "33261"}}, std::nullopt);  // chmod 755 meanwhile.
  auto record = RecordOf("m");
  ASSERT_TRUE(record.has_value());
  EXPECT_EQ(record->metadata["mode"], "33261");
}

TEST_F(WritebackTest, ReopenForWriteJoinsOnlyAFileStillDirty) {
  Start(fake_);
  EXPECT_EQ(wb_->ReopenForWrite("k"), nullptr);  // Nothing dirty: the caller asks S3.
  EXPECT_EQ(FilesInSpool(), 0u) << "and nothing was created";

  auto first = MustOpen("k");
  ASSERT_NE(first, nullptr);
  ASSERT_TRUE(first->Write(0, Bytes("one")).ok());
  auto second = wb_->ReopenForWrite("k");
  ASSERT_EQ(second, first);  // The same file, one more writer.
  wb_->ReleaseWriter(first);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_FALSE(fake_.Exists("k")) << "committed while a writer still had it open";
  ASSERT_TRUE(second->Write(3, Bytes("two")).ok());
  wb_->ReleaseWriter(second);
  ASSERT_TRUE(WaitCommitted("k"));
  EXPECT_EQ(fake_.ObjectBody("k"), "onetwo");
  // Once settled it is gone from the writeback: reopening it must start from the object.
  EXPECT_EQ(wb_->ReopenForWrite("k"), nullptr);
}

TEST_F(WritebackTest, AHeldFileCommitsOnlyOnceTheHoldEnds) {
  Start(fake_);
  EXPECT_FALSE(wb_->Find("nobody"));
  { Writeback::CommitHold nothing = wb_->HoldCommits("nobody"); }  // An empty hold.

  auto file = MustOpen("held");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes("kept")).ok());
  {
    Writeback::CommitHold hold = wb_->HoldCommits("held");
    wb_->ReleaseWriter(file);  // The close's commit starts, and waits for the hold.
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    EXPECT_FALSE(fake_.Exists("held"));
    EXPECT_NE(wb_->Find("held"), nullptr);
  }  // Let go without Discard(): the operation failed, the file goes on.
  ASSERT_TRUE(Eventually([&] { return wb_->Find("held") == nullptr; }, kWait));
  EXPECT_EQ(fake_.ObjectBody("held"), "kept");
}

TEST_F(WritebackTest, ADiscardedHoldDropsOnlyTheHeldFile) {
  Start(fake_);
  auto file = MustOpen("t");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes(Body(2 * kPart + 5))).ok());
  ASSERT_TRUE(Eventually([&] { return wb_->GetStats().parts_uploaded >= 2; }, kWait));
  Writeback::CommitHold hold = wb_->HoldCommits("t");
  // Another file takes the key meanwhile (a rename of a file being written onto it).
  auto other = MustOpen("s");
  ASSERT_NE(other, nullptr);
  ASSERT_TRUE(other->Write(0, Bytes("new")).ok());
  ASSERT_EQ(*wb_->Rename("s", "t"), Writeback::RenameOutcome::kMoved);
  hold.Discard();
  EXPECT_EQ(fake_.PendingUploads(), 0u);  // The held file's upload is aborted.
  ASSERT_NE(wb_->Find("t"), nullptr);     // The moved file is untouched.
  wb_->ReleaseWriter(file);
  wb_->ReleaseWriter(other);
  ASSERT_TRUE(Eventually([&] { return wb_->Find("t") == nullptr; }, kWait));
  EXPECT_EQ(fake_.ObjectBody("t"), "new");
  file.reset();
  other.reset();
  EXPECT_EQ(FilesInSpool(), 0u);
}

TEST_F(WritebackTest, RenameOfAFileNeverCommittedMovesItAndItCommitsAtTheNewKeyOnly) {
  Start(fake_);
  EXPECT_EQ(*wb_->Rename("nobody", "else"), Writeback::RenameOutcome::kNotDirty);

  const std::string data = Body(2 * kPart + 5, 31);
  auto file = MustOpen("from");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes(data)).ok());
  // Parts already sent early belong to an upload of the old key.
  ASSERT_TRUE(Eventually([&] { return wb_->GetStats().parts_uploaded >= 2; }, kWait));

  auto renamed = wb_->Rename("from", "to");
  ASSERT_TRUE(renamed.ok()) << renamed.status().ToString();
  EXPECT_EQ(*renamed, Writeback::RenameOutcome::kMoved);
  EXPECT_EQ(wb_->Find("from"), nullptr);
  EXPECT_EQ(wb_->Find("to"), file);
  EXPECT_EQ(file->key(), "to");

  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("to"));
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("to"), data));
  EXPECT_FALSE(fake_.Exists("from"));
  EXPECT_EQ(fake_.PendingUploads(), 0u);
  EXPECT_EQ(fake_.ObjectInfoDirect("to")->metadata, Stored(kMeta));
}

// A file never committed is journaled under its new name before the rename changes
// anything: when that journal cannot be written, the rename fails and the file stays
// where it was, so a killed daemon never uploads it under a name its program gave up.
TEST_F(WritebackTest, RenameOfAFileNeverCommittedFailsWhenItsJournalCannotBeWritten) {
  Start(fake_);
  auto file = MustOpen("stay");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes("kept at its name")).ok());
  const stdfs::path record = stdfs::path(spool_->directory()) / "files" / (file->id() + ".json");
  ASSERT_TRUE(stdfs::exists(record));
  // A directory where the record goes: no write of it can succeed.
  stdfs::remove(record);
  stdfs::create_directory(record);

  auto renamed = wb_->Rename("stay", "moved");
  ASSERT_FALSE(renamed.ok());
  EXPECT_NE(renamed.status().message().find("spool journal"), std::string::npos)
      << renamed.status().ToString();
  EXPECT_EQ(wb_->Find("stay"), file);
  EXPECT_EQ(wb_->Find("moved"), nullptr);
  EXPECT_EQ(file->key(), "stay");

  stdfs::remove(record);
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("stay"));
  EXPECT_EQ(fake_.ObjectBody("stay"), "kept at its name");
  EXPECT_FALSE(fake_.Exists("moved"));
}

// `mv` of a file a program is still streaming into: the rename waits for the parts already
// on their way, not for the writer to stop. Here a part is always in flight when the next
// one is written, so a rename that let new parts start beside it would wait forever.
TEST_F(WritebackTest, ARenameOfAFileBeingStreamedDoesNotWaitForTheWriterToStop) {
  GatedPartClient gated(fake_);
  Start(gated);
  auto file = MustOpen("stream");
  ASSERT_NE(file, nullptr);
  const std::string part = Body(kPart, 5);
  ASSERT_TRUE(file->Write(0, Bytes(part)).ok());
  ASSERT_TRUE(file->Write(kPart, Bytes(part)).ok());  // Parts 1 and 2 wait at the server.
  auto renamed = std::async(std::launch::async, [&] { return wb_->Rename("stream", "moved"); });
  uint64_t size = 2 * kPart;
  for (int i = 0; i < 40 && renamed.wait_for(50ms) != std::future_status::ready; ++i) {
    ASSERT_TRUE(file->Write(size, Bytes(part)).ok());  // A new part, before an old one ends.
    size += kPart;
    gated.Permit(1);
  }
  const bool done = renamed.wait_for(0s) == std::future_status::ready;
  gated.Permit(1000);  // Whatever happened, nothing waits at the server any more.
  ASSERT_TRUE(done) << "the rename waited for the writer";
  auto outcome = renamed.get();
  ASSERT_TRUE(outcome.ok()) << outcome.status().ToString();
  EXPECT_EQ(*outcome, Writeback::RenameOutcome::kMoved);
  EXPECT_EQ(file->key(), "moved");

  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("moved"));
  std::string expected;
  for (uint64_t n = 0; n < size / kPart; ++n) expected += part;
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("moved"), expected));
  EXPECT_FALSE(fake_.Exists("stream"));
}

// `mv` of a file a program still has open for writing: its half-written bytes never
// reach S3. The new name gets the object as it was, and the program's changes at close.
TEST_F(WritebackTest, RenameOfAFileStillOpenForWritingCopiesItsLastVersionNotItsHalfWrittenBytes) {
  Start(fake_);
  fake_.PutDirect("r1", "the good version");
  auto file = MustOpen("r1", BaseOf("r1"));
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes("HALF")).ok());

  auto renamed = wb_->Rename("r1", "r2");
  ASSERT_TRUE(renamed.ok()) << renamed.status().ToString();
  EXPECT_EQ(*renamed, Writeback::RenameOutcome::kCopied);
  EXPECT_EQ(fake_.ObjectBody("r2"), "the good version");
  EXPECT_EQ(fake_.ObjectBody("r1"), "the good version") << "uploaded while open";
  EXPECT_EQ(wb_->GetStats().commits, 0u);
  fake_.DeleteDirect("r1");  // As the filesystem does after kCopied.

  ASSERT_TRUE(file->Write(4, Bytes(" new")).ok());
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("r2"));
  EXPECT_EQ(fake_.ObjectBody("r2"), "HALF new version");
  EXPECT_FALSE(fake_.Exists("r1"));
  EXPECT_TRUE(file->Error().ok()) << file->Error().ToString();
}

TEST_F(WritebackTest, RenameOntoAnotherDirtyFileReplacesIt) {
  Start(fake_);
  auto a = MustOpen("a");
  auto b = MustOpen("b");
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(a->Write(0, Bytes("from a")).ok());
  ASSERT_TRUE(b->Write(0, Bytes("from b")).ok());
  auto renamed = wb_->Rename("a", "b");
  ASSERT_TRUE(renamed.ok()) << renamed.status().ToString();
  EXPECT_EQ(*renamed, Writeback::RenameOutcome::kMoved);
  EXPECT_EQ(wb_->Find("b"), a);
  wb_->ReleaseWriter(b);  // The replaced file: its data must never land.
  wb_->ReleaseWriter(a);
  ASSERT_TRUE(WaitCommitted("b"));
  EXPECT_EQ(fake_.ObjectBody("b"), "from a");
  EXPECT_FALSE(fake_.Exists("a"));
  EXPECT_EQ(wb_->GetStats().commits, 1u);
}

// Synced, modified and closed, its upload failed (to be retried): the rename commits it and
// copies the new bytes. (Still open, it would copy the synced version: see above.)
TEST_F(WritebackTest, RenameOfACommittedAndModifiedFileCopiesItsNewBytes) {
  Start(faulty_);
  auto file = MustOpen("c1");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes("version one")).ok());
  ASSERT_TRUE(wb_->Sync(file).ok());
  ASSERT_TRUE(file->Write(11, Bytes(" and two")).ok());
  const s3::FaultInjectingClient::RuleId failing =
      faulty_.FailAlways(s3::Op::kPut, s3::InjectedError(ErrorCode::kServerError));
  wb_->ReleaseWriter(file);  // Closed: its commit fails, and waits for its retry.
  ASSERT_TRUE(WaitFailedCommits(1));
  faulty_.RemoveRule(failing);

  auto renamed = wb_->Rename("c1", "c2");
  ASSERT_TRUE(renamed.ok()) << renamed.status().ToString();
  EXPECT_EQ(*renamed, Writeback::RenameOutcome::kCopied);
  EXPECT_EQ(fake_.ObjectBody("c2"), "version one and two");
  EXPECT_EQ(fake_.ObjectInfoDirect("c2")->metadata, Stored(kMeta));
  EXPECT_EQ(wb_->Find("c1"), nullptr);
  // Deleting the old key is the caller's part (kCopied).
  EXPECT_EQ(wb_->Find("c2"), nullptr) << "nothing left to upload";
}

TEST_F(WritebackTest, WritesAfterARenameWithCopyCommitToTheNewKey) {
  Start(fake_);
  auto file = MustOpen("c1");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes("one")).ok());
  ASSERT_TRUE(wb_->Sync(file).ok());
  auto renamed = wb_->Rename("c1", "c2");
  ASSERT_TRUE(renamed.ok()) << renamed.status().ToString();
  EXPECT_EQ(*renamed, Writeback::RenameOutcome::kCopied);
  ASSERT_TRUE(fake_.Exists("c1"));
  fake_.DeleteDirect("c1");  // As the filesystem does after kCopied.
  ASSERT_TRUE(file->Write(3, Bytes("two")).ok());
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("c2"));
  EXPECT_EQ(fake_.ObjectBody("c2"), "onetwo");
  EXPECT_FALSE(fake_.Exists("c1"));
  EXPECT_TRUE(file->Error().ok()) << file->Error().ToString();
}

// --- Part assembly (a streaming writer's parts in memory) ----------------------------------

TEST_F(WritebackTest, AStreamingWriterAssemblesEachFullPartAfterTheFirstAndSendsItFromMemory) {
  Start(fake_);
  const std::string data = Body(4 * kPart + 123, 81);
  auto file = MustOpen("stream");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(WriteAll(*file, data, kMiB));
  // Parts 2, 3 and 4 were filled in memory (part 1 goes to the spool: most files are one
  // part); the 123 bytes of part 5 are still assembling.
  EXPECT_EQ(wb_->GetStats().parts_assembled, 3u);
  EXPECT_TRUE(SameBytes(MustRead(*file, 0, data.size()), data));
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("stream"));
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("stream"), data));
  // Early uploads had the assembled bytes at hand (the fake answers at once, so a part
  // never waits behind a full set of uploads here).
  EXPECT_GE(wb_->GetStats().parts_sent_from_memory, 1u);
}

TEST_F(WritebackTest, WithoutAssemblyEveryByteGoesThroughTheSpool) {
  WritebackOptions options = Options();
  options.assemble_parts = false;
  Start(fake_, nullptr, options);
  const std::string data = Body(4 * kPart + 123, 82);
  auto file = MustOpen("spooled");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(WriteAll(*file, data, kMiB));
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("spooled"));
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("spooled"), data));
  EXPECT_EQ(wb_->GetStats().parts_assembled, 0u);
  EXPECT_EQ(wb_->GetStats().parts_sent_from_memory, 0u);
}

TEST_F(WritebackTest, AReadOfAssembledBytesSeesThemAndTheWriterGoesOn) {
  Start(fake_);
  const std::string data = Body(3 * kPart + 7, 83);
  auto file = MustOpen("read-back");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(WriteAll(*file, data.substr(0, kPart + kMiB + 10), kMiB));
  // Bytes in part 2 are only in memory: a read across the part boundary sees them.
  EXPECT_EQ(MustRead(*file, kPart - 5, kMiB + 15), data.substr(kPart - 5, kMiB + 15));
  ASSERT_TRUE(WriteAll(*file, data.substr(kPart + kMiB + 10), kMiB, kPart + kMiB + 10));
  EXPECT_TRUE(SameBytes(MustRead(*file, 0, data.size()), data));
  // The read copied part 2's bytes from memory and its assembly went on; part 3 started a
  // new one at its boundary.
  EXPECT_EQ(wb_->GetStats().parts_assembled, 2u);
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("read-back"));
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("read-back"), data));
}

TEST_F(WritebackTest, RewritesAndTruncatesOfAssembledBytesLandInTheObject) {
  Start(fake_);
  std::string want = Body(kPart + 3 * kMiB, 84);
  auto file = MustOpen("rewritten");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(WriteAll(*file, want, kMiB));
  // A write inside the assembled range (not where the writer left off).
  const std::string patch = Body(100, 85);
  ASSERT_TRUE(file->Write(kPart + 10, Bytes(patch)).ok());
  want.replace(kPart + 10, patch.size(), patch);
  // Appends again, then cuts into what the appends wrote.
  const std::string more = Body(2 * kPart, 86);
  ASSERT_TRUE(WriteAll(*file, more, kMiB, want.size()));
  want += more;
  ASSERT_TRUE(file->Truncate(want.size() - kMiB - 3).ok());
  want.resize(want.size() - kMiB - 3);
  // Grown again: what was cut off reads as zeros, not as the bytes it held.
  ASSERT_TRUE(file->Truncate(want.size() + 2 * kMiB).ok());
  want.resize(want.size() + 2 * kMiB, '\0');
  const std::string tail = Body(kPart, 87);
  ASSERT_TRUE(WriteAll(*file, tail, kMiB, want.size()));
  want += tail;
  EXPECT_TRUE(SameBytes(MustRead(*file, 0, want.size()), want));
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("rewritten"));
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("rewritten"), want));
}

TEST_F(WritebackTest, AFileIsJournaledClosedOnceEveryWriterThatChangedItHasClosed) {
  Start(fake_);
  auto a = MustOpen("k");
  auto b = wb_->ReopenForWrite("k");  // A second open file of the same file.
  ASSERT_TRUE(a && b);
  wb_->WriterChanged(a);
  ASSERT_TRUE(a->Write(0, Bytes("a")).ok());
  wb_->WriterChanged(b);
  ASSERT_TRUE(b->Write(1, Bytes("b")).ok());
  ASSERT_TRUE(wb_->Flushed(a, /*writer_changed=*/true).ok());
  EXPECT_FALSE(RecordOf("k")->closed) << "b has not closed: a crash must not upload it";
  // b's close(): both RELEASEs are still on their way, yet every close() has returned.
  ASSERT_TRUE(wb_->Flushed(b, /*writer_changed=*/true).ok());
  EXPECT_TRUE(RecordOf("k")->closed) << "a crash now would keep a closed file out of S3";
  wb_->ReleaseWriter(a);
  wb_->ReleaseWriter(b);
  ASSERT_TRUE(WaitCommitted("k"));
  EXPECT_EQ(fake_.ObjectBody("k"), "ab");
}

TEST_F(WritebackTest, AWriterThatChangedNothingDoesNotKeepAClosedFileJournaledOpen) {
  Start(fake_);
  auto reader_writer = MustOpen("k");  // Opened O_RDWR, say, and only read.
  auto writer = wb_->ReopenForWrite("k");
  ASSERT_TRUE(reader_writer && writer);
  wb_->WriterChanged(writer);
  ASSERT_TRUE(writer->Write(0, Bytes("data")).ok());
  ASSERT_TRUE(wb_->Flushed(writer, /*writer_changed=*/true).ok());
  EXPECT_TRUE(RecordOf("k")->closed);
  wb_->ReleaseWriter(writer);
  EXPECT_FALSE(fake_.Exists("k")) << "the other writer is still open";
  wb_->ReleaseWriter(reader_writer);
  ASSERT_TRUE(WaitCommitted("k"));
  EXPECT_EQ(fake_.ObjectBody("k"), "data");
}

TEST_F(WritebackTest, EveryCloseOfASharedFilePutsTheAssembledBytesOnTheSpoolDisk) {
  Start(fake_);
  auto file = MustOpen("shared");
  auto second = MustOpen("shared");  // Another writer of the same file (a second open).
  ASSERT_TRUE(file && second);
  ASSERT_EQ(file, second);
  const std::string data = Body(kPart + 3 * kMiB, 92);
  ASSERT_TRUE(WriteAll(*file, data, kMiB));
  const std::string path = spool_->DataPath(file->id());
  EXPECT_EQ(stdfs::file_size(path), kPart);  // Part 2's bytes are in memory.
  ASSERT_TRUE(wb_->Flushed(file).ok());  // close() of one descriptor; the other stays open.
  EXPECT_EQ(stdfs::file_size(path), data.size());
  wb_->ReleaseWriter(file);
  wb_->ReleaseWriter(second);
  ASSERT_TRUE(WaitCommitted("shared"));
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("shared"), data));
}

// A writer that stops mid-part (a log between bursts, a program waiting on its input) does
// not keep the part's bytes only in memory, nor its buffer: after assembly_idle without a
// write they are on the spool disk, where a daemon killed now leaves them for lost+found/.
TEST_F(WritebackTest, AWriterThatPausesMidPartHasItsAssembledBytesWrittenToTheSpool) {
  Start(fake_);
  auto file = MustOpen("pausing");
  ASSERT_NE(file, nullptr);
  const std::string data = Body(kPart + 3 * kMiB, 95);
  ASSERT_TRUE(WriteAll(*file, data, kMiB));
  const std::string path = spool_->DataPath(file->id());
  EXPECT_EQ(stdfs::file_size(path), kPart);  // Part 2's bytes are in memory.
  EXPECT_EQ(wb_->GetStats().assemblies, 1u);

  // Not idle long enough yet: a check of the background loop (every second) leaves it.
  clock_.Advance(Options().assembly_idle - 1s);
  std::this_thread::sleep_for(1500ms);
  EXPECT_EQ(wb_->GetStats().assemblies, 1u);
  EXPECT_EQ(stdfs::file_size(path), kPart);

  clock_.Advance(2s);
  ASSERT_TRUE(Eventually([&] { return wb_->GetStats().assemblies == 0; }, kWait));
  std::ifstream in(path, std::ios::binary);
  const std::string spooled((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_TRUE(SameBytes(spooled, data));

  // The writer goes on where it stopped; the next part assembles again.
  const std::string more = Body(2 * kPart, 96);
  ASSERT_TRUE(WriteAll(*file, more, kMiB, data.size()));
  EXPECT_EQ(wb_->GetStats().parts_assembled, 1u);  // Part 3, filled from its start.
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("pausing"));
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("pausing"), data + more));
}

TEST_F(WritebackTest, OnlyAsManyFilesAssembleAtOnceAsTheBudgetAllows) {
  // 64 MiB budget, 5 MiB parts: an eighth of the budget is one assembly.
  Start(fake_);
  auto slow = MustOpen("slow-appender");
  auto fast = MustOpen("fast-writer");
  ASSERT_TRUE(slow && fast);
  const std::string log = Body(kPart + kMiB, 93);
  ASSERT_TRUE(WriteAll(*slow, log, kMiB));  // Holds an assembly for part 2.
  const std::string big = Body(4 * kPart, 94);
  ASSERT_TRUE(WriteAll(*fast, big, kMiB));
  EXPECT_EQ(wb_->GetStats().parts_assembled, 0u);  // Its parts went through the spool.
  wb_->ReleaseWriter(fast);
  wb_->ReleaseWriter(slow);
  ASSERT_TRUE(WaitCommitted("fast-writer"));
  ASSERT_TRUE(WaitCommitted("slow-appender"));
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("fast-writer"), big));
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("slow-appender"), log));
  slow.reset();
  fast.reset();
  EXPECT_TRUE(Eventually([&] { return budget_.used() == 0; }, kWait)) << budget_.used();
}

TEST_F(WritebackTest, ADaemonKilledAfterCloseLosesNoAssembledByte) {
  const std::string data = Body(2 * kPart + 3 * kMiB + 1, 88);
  {
    // No upload gets through: everything stays local until the "kill".
    faulty_.FailAlways(s3::Op::kUploadPart, s3::InjectedError(ErrorCode::kServerError));
    faulty_.FailAlways(s3::Op::kPut, s3::InjectedError(ErrorCode::kServerError));
    Start(faulty_);
    auto file = MustOpen("killed");
    ASSERT_NE(file, nullptr);
    ASSERT_TRUE(WriteAll(*file, data, kMiB));
    EXPECT_EQ(wb_->GetStats().parts_assembled, 1u);  // Part 2; part 3 is partly in memory.
    // close(): FLUSH journals the file closed; the daemon dies before the RELEASE.
    Status flushed = wb_->Flushed(file);
    ASSERT_TRUE(flushed.ok()) << flushed.ToString();
    file.reset();
    wb_.reset();
    spool_.reset();
  }
  EXPECT_FALSE(fake_.Exists("killed"));
  spool_ = OpenSpool();
  ASSERT_NE(spool_, nullptr);
  faulty_.ClearRules();
  Start(fake_);
  EXPECT_EQ(wb_->Recover(), 1u);
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("killed"), data));
  EXPECT_TRUE(LostAndFound().empty());
}

TEST_F(WritebackTest, AWritebackStoppedWhileAFileIsMidPartGivesTheAssembledMemoryBack) {
  Start(fake_);
  auto file = MustOpen("mid-part");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(WriteAll(*file, Body(kPart + 2 * kMiB, 89), kMiB));
  EXPECT_GE(budget_.used(), kPart);  // Part 2's buffer, assembling.
  file.reset();  // The writeback alone holds the file now (a forced stop mid-write).
  wb_.reset();
  EXPECT_EQ(budget_.used(), 0u);
}

// --- Memory --------------------------------------------------------------------------------

TEST_F(WritebackTest, SixtyFourMiBThroughASixteenMiBBudgetCommitsAndGivesEveryByteBack) {
  small_budget_ = std::make_unique<MemoryBudget>(16 * kMiB, clock_);
  MemoryBudget& small = *small_budget_;
  Start(fake_, &small);
  const std::string data = Body(64 * kMiB, 64);
  auto file = MustOpen("large");
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(WriteAll(*file, data, kMiB));
  Status synced = wb_->Sync(file);
  ASSERT_TRUE(synced.ok()) << synced.ToString();
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("large"), data));
  EXPECT_EQ(small.used(), 0u);
  EXPECT_LE(small.peak(), 16 * kMiB);
  EXPECT_GE(small.peak(), kPart);  // Parts were charged to it.
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("large"));
  file.reset();
  wb_.reset();
  EXPECT_EQ(small.used(), 0u);
}

// Runs a hook once, in the committing thread, inside the first request of its kind (a
// ranged GET of the base, or the CreateMultipartUpload), and records every version that lands (after
// a PUT or a CompleteMultipart): each must be one the file held at some moment.
class TruncatedMidCommitClient final : public s3::ForwardingClient {
 public:
  TruncatedMidCommitClient(s3::FakeObjectClient& inner, std::string key)
      : s3::ForwardingClient(inner), fake_(inner), key_(std::move(key)) {}
  std::function<void()> during_get, during_create;
  std::vector<std::string> landed() {
    std::lock_guard lock(mu_);
    return landed_;
  }
  Result<s3::GetResult> Get(const s3::GetRequest& req, std::span<char> buffer,
                            const s3::CallOptions& opts) override {
    if (auto hook = Take(during_get)) hook();
    return inner().Get(req, buffer, opts);
  }
  Result<std::string> CreateMultipart(const s3::CreateMultipartRequest& req,
                                      const s3::CallOptions& opts) override {
    if (auto hook = Take(during_create)) hook();
    return inner().CreateMultipart(req, opts);
  }
  Result<s3::PutResult> Put(const s3::PutRequest& req, const s3::CallOptions& opts) override {
    auto r = inner().Put(req, opts);
    if (r.ok()) Record();
    return r;
  }
  Result<s3::PutResult> CompleteMultipart(const s3::CompleteMultipartRequest& req,
                                          const s3::CallOptions& opts) override {
    auto r = inner().CompleteMultipart(req, opts);
    if (r.ok()) Record();
    return r;
  }

 private:
  std::function<void()> Take(std::function<void()>& hook) {
    std::lock_guard lock(mu_);
    return std::exchange(hook, nullptr);
  }
  void Record() {
    std::lock_guard lock(mu_);
    landed_.push_back(fake_.ObjectBody(key_).value_or("<none>"));
  }
  s3::FakeObjectClient& fake_;
  const std::string key_;
  std::mutex mu_;
  std::vector<std::string> landed_;  // Guarded by mu_.
};

// An fsync's commit reads the file while another descriptor opens it with O_TRUNC and
// writes anew: the bytes read after the cut are the new file's (or zeros past its end),
// those read before are the old one's. Put together they are a version nobody wrote; the
// commit starts over from the file as it is now instead.
TEST_F(WritebackTest, AFileTruncatedWhileItsCommitReadsItIsNotUploadedHalfOldHalfNew) {
  const std::string base = Body(100, 7);
  fake_.PutDirect("f", base, kMeta);
  TruncatedMidCommitClient client(fake_, "f");
  Start(client);
  auto file = MustOpen("f", BaseOf("f"));
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes("0123456789")).ok());  // The rest is the base's: a GET.
  const std::string first = "0123456789" + base.substr(10);
  client.during_get = [&] {
    ASSERT_TRUE(file->Truncate(0).ok());
    ASSERT_TRUE(file->Write(0, Bytes("tiny")).ok());
  };
  Status synced = wb_->Sync(file);
  ASSERT_TRUE(synced.ok()) << synced.ToString();
  EXPECT_FALSE(client.during_get) << "the commit fetched nothing from the base";
  for (const std::string& body : client.landed()) {
    EXPECT_TRUE(body == first || body == "tiny")
        << "landed a version the file never held: " << body.size() << " bytes, starting "
        << ::testing::PrintToString(body.substr(0, 12));
  }
  EXPECT_EQ(fake_.ObjectBody("f"), "tiny");
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("f"));
  EXPECT_EQ(fake_.ObjectBody("f"), "tiny");
}

// A rename commits a file that exists in S3 before copying it. When a truncate overtakes
// that commit (it reads the base while the file is cut), the rename commits again, as an
// fsync does, rather than failing with the commit's "changed meanwhile".
TEST_F(WritebackTest, ARenameCommitsAgainWhenATruncateOvertakesItsCommit) {
  const std::string base = Body(100, 7);
  fake_.PutDirect("f", base, kMeta);
  TruncatedMidCommitClient truncating(fake_, "f");
  s3::FaultInjectingClient client(truncating, clock_);
  Start(client);
  auto file = MustOpen("f", BaseOf("f"));
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->Write(0, Bytes("0123456789")).ok());
  // Its commit at close fails reading the base, and waits for a retry that the fake clock
  // never brings: the file is dirty, with no writer and no commit, when the rename comes,
  // and the rename's commit reads the base.
  client.FailNext(s3::Op::kGet, 1, s3::InjectedError(ErrorCode::kServerError));
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitFailedCommits(1));
  // A truncate by path (`truncate -s 0 f`) while the rename's commit reads the base.
  truncating.during_get = [&] { ASSERT_TRUE(file->Truncate(0).ok()); };
  auto renamed = wb_->Rename("f", "g");
  ASSERT_TRUE(renamed.ok()) << renamed.status().ToString();
  EXPECT_EQ(*renamed, Writeback::RenameOutcome::kCopied);
  EXPECT_FALSE(truncating.during_get) << "the rename's commit fetched nothing from the base";
  for (const std::string& body : truncating.landed()) {
    EXPECT_EQ(body, "") << "landed a version the file never held";
  }
  EXPECT_EQ(fake_.ObjectBody("g"), "");
  file.reset();
}

TEST_F(WritebackTest, AFileTruncatedBeforeItsPartsAreReadIsNotCompletedAsZeros) {
  // Cut after the commit took its size, before it read a part: every part read is of the
  // new file, each at its current version, and only the size is the old one's.
  TruncatedMidCommitClient client(fake_, "big");
  Start(client);
  auto file = MustOpen("big");
  ASSERT_NE(file, nullptr);
  const std::string first = Body(3 * kPart, 11);
  // Written back to front: no write completes a part, so none goes early, and the commit
  // creates the upload.
  for (uint64_t at = first.size(); at > 0; at -= kMiB) {
    ASSERT_TRUE(file->Write(at - kMiB, std::span<const char>(first.data() + at - kMiB, kMiB)).ok());
  }
  client.during_create = [&] {
    ASSERT_TRUE(file->Truncate(0).ok());
    ASSERT_TRUE(file->Write(0, Bytes("tiny")).ok());
  };
  Status synced = wb_->Sync(file);
  ASSERT_TRUE(synced.ok()) << synced.ToString();
  EXPECT_FALSE(client.during_create) << "the commit created no upload";
  for (const std::string& body : client.landed()) {
    EXPECT_TRUE(body == "tiny" || SameBytes(body, first))
        << "completed a version the file never held: " << body.size() << " bytes, starting "
        << ::testing::PrintToString(body.substr(0, 12));
  }
  EXPECT_EQ(fake_.ObjectBody("big"), "tiny");
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("big"));
  EXPECT_EQ(fake_.ObjectBody("big"), "tiny");
}

// Under a tight memory budget, a part waiting for budget bytes gets the buffer the part
// before it gives back: kept as a spare, it would sit on exactly those bytes, and the
// waiting part (and the commit, the fsync) would wait out its whole request deadline.
TEST_F(WritebackTest, APartWaitingForMemoryGetsTheBufferAnotherPartGivesBack) {
  MemoryBudget small(8 * kPart, clock_);  // Room for one spare part (an eighth).
  auto others = small.TryReserve(7 * kPart);  // The read cache, say: one part is left.
  ASSERT_TRUE(others.ok()) << others.status().ToString();
  GatedPartClient gated(fake_);
  WritebackOptions options = Options();
  options.upload_parallelism = 2;
  options.assemble_parts = false;
  options.request_timeout = 3s;
  Start(gated, &small, options);
  auto file = MustOpen("big");
  ASSERT_NE(file, nullptr);
  const std::string body = Body(3 * kPart, 5);
  // Written back to front: no write completes a part, so none goes early.
  for (uint64_t at = body.size(); at > 0; at -= kMiB) {
    ASSERT_TRUE(file->Write(at - kMiB, std::span<const char>(body.data() + at - kMiB, kMiB)).ok());
  }
  std::atomic<bool> done{false};
  Status synced;
  std::thread sync([&] {
    synced = wb_->Sync(file);
    done = true;
  });
  // One part holds the only free part of the budget, at the server; the other waits for it.
  const bool one_waits = Eventually([&] { return small.waiters() == 1; }, kWait);
  gated.Permit(1000);
  const bool finished = Eventually([&] { return done.load(); }, 10s);
  // Still waiting: its deadline is on the fake clock, which moves only when told to.
  if (!finished) clock_.Advance(options.request_timeout + 1s);
  sync.join();
  ASSERT_TRUE(one_waits) << "no part waited for memory";
  EXPECT_TRUE(finished) << "the waiting part did not get the buffer given back";
  ASSERT_TRUE(synced.ok()) << synced.ToString();
  EXPECT_TRUE(SameBytes(fake_.ObjectBody("big"), body));
  wb_->ReleaseWriter(file);
  ASSERT_TRUE(WaitCommitted("big"));
  file.reset();
  wb_.reset();  // Before `small`: its buffers are charged to it.
}

}  // namespace
}  // namespace bucketfs::cache
