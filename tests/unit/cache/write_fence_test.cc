#include "cache/write_fence.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "s3/fake_client.h"
#include "s3/object_client.h"
#include "s3/operation.h"

namespace bucketfs::cache {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
using ::testing::Not;

// --- WriteFence ----------------------------------------------------------------------------

TEST(WriteFenceTest, UnlimitedFenceNeverCloses) {
  FakeClock clock;
  WriteFence fence(clock);
  EXPECT_EQ(fence.deadline(), MonoTime::max());
  EXPECT_TRUE(fence.Check().ok());
  clock.Advance(24h * 365 * 100);
  EXPECT_TRUE(fence.Check().ok()) << fence.Check().ToString();
  EXPECT_FALSE(fence.closed());
  EXPECT_EQ(fence.reason(), "");

  // Unlimited() lifts a deadline that has not passed yet.
  WriteFence limited(clock, clock.Now() + 30s);
  limited.Unlimited();
  EXPECT_EQ(limited.deadline(), MonoTime::max());
  clock.Advance(24h * 365 * 100);
  EXPECT_TRUE(limited.Check().ok()) << limited.Check().ToString();
}

TEST(WriteFenceTest, FenceIsOpenBeforeItsDeadlineAndReadOnlyFromItOnSayingTheLeaseLapsed) {
  FakeClock clock;
  WriteFence fence(clock, clock.Now() + 30s);
  clock.Advance(30s - 1ns);
  EXPECT_TRUE(fence.Check().ok()) << fence.Check().ToString();
  EXPECT_FALSE(fence.closed());

  clock.Advance(1ns);  // Exactly the deadline: another pod may take over from here.
  Status checked = fence.Check();
  EXPECT_EQ(checked.code(), ErrorCode::kReadOnly) << checked.ToString();
  EXPECT_THAT(checked.message(), HasSubstr("lease"));
  EXPECT_THAT(checked.message(), HasSubstr("deadline"));
  EXPECT_TRUE(fence.closed());
  EXPECT_THAT(fence.reason(), HasSubstr("lease"));
  EXPECT_THAT(fence.reason(), HasSubstr("deadline"));
}

TEST(WriteFenceTest, FenceClosedByItsDeadlineOpensAgainWhenALateRenewalExtendsIt) {
  // A renewal that took longer than the lease had left (S3 timing out, then answering):
  // writes were refused in the gap; the renewal, If-Match of our own record, proves nobody
  // took the lease, so the mount goes on rather than stay read-only while holding it.
  FakeClock clock;
  WriteFence fence(clock, clock.Now() + 30s);
  clock.Advance(31s);
  Status lapsed = fence.Check();
  ASSERT_EQ(lapsed.code(), ErrorCode::kReadOnly);
  EXPECT_THAT(lapsed.message(), HasSubstr("deadline"));

  fence.ExtendUntil(clock.Now() + 29s);
  EXPECT_TRUE(fence.Check().ok()) << fence.Check().ToString();
  EXPECT_FALSE(fence.closed());
  EXPECT_EQ(fence.reason(), "");
  EXPECT_EQ(fence.deadline(), clock.Now() + 29s);
  clock.Advance(29s);
  EXPECT_EQ(fence.Check().code(), ErrorCode::kReadOnly) << "and closes at the new deadline";
}

// The deadline closes the fence whether or not anyone asked in between, and a renewal whose
// deadline has passed as well opens nothing.
TEST(WriteFenceTest, DeadlinePassedWithoutACheckStaysClosedForARenewalAlsoPast) {
  FakeClock clock;
  WriteFence fence(clock, clock.Now() + 30s);
  clock.Advance(31s);  // Lapsed; no Check(), closed() or reason() call until the renewal.

  fence.ExtendUntil(clock.Now() - 1s);
  Status checked = fence.Check();
  EXPECT_EQ(checked.code(), ErrorCode::kReadOnly) << checked.ToString();
  EXPECT_THAT(checked.message(), HasSubstr("deadline"));
  fence.ExtendUntil(clock.Now() + 30s);
  EXPECT_TRUE(fence.Check().ok());
}

// A FakeClock that runs `hook` inside the next Now() call, once: a way to act between a
// Check()'s reading of the time and what it does with it.
class InterruptingClock final : public Clock {
 public:
  MonoTime Now() const override {
    std::function<void()> hook;
    {
      std::lock_guard lock(mu_);
      hook = std::exchange(hook_, nullptr);
    }
    const MonoTime now = clock_.Now();
    if (hook) hook();
    return now;
  }
  WallTime WallNow() const override { return clock_.WallNow(); }
  void SleepUntil(MonoTime when) override { clock_.SleepUntil(when); }
  void Advance(Duration d) { clock_.Advance(d); }
  void OnNextNow(std::function<void()> hook) {
    std::lock_guard lock(mu_);
    hook_ = std::move(hook);
  }

 private:
  mutable FakeClock clock_;
  mutable std::mutex mu_;
  mutable std::function<void()> hook_;
};

TEST(WriteFenceTest, AChecksLateLookNeverUndoesTheRenewalThatReopenedTheFence) {
  // A writer's Check() reads the time just past the deadline; before it acts on it, the
  // coordinator's renewal moves the deadline (on another thread). The writer must not close
  // the fence that renewal just opened.
  InterruptingClock clock;
  WriteFence fence(clock, clock.Now() + 30s);
  clock.Advance(31s);
  clock.OnNextNow([&] {
    std::thread renewal([&] { fence.ExtendUntil(clock.Now() + 30s); });
    renewal.join();
  });
  EXPECT_TRUE(fence.Check().ok()) << "the renewal landed before this check acted";
  EXPECT_TRUE(fence.Check().ok()) << fence.Check().ToString();
  EXPECT_FALSE(fence.closed());
}

TEST(WriteFenceTest, ExtendUntilBeforeTheDeadlineKeepsTheFenceOpenPastTheOldOne) {
  FakeClock clock;
  WriteFence fence(clock, clock.Now() + 30s);
  clock.Advance(20s);
  fence.ExtendUntil(clock.Now() + 30s);  // The renewal: 50 s after the start.
  EXPECT_EQ(fence.deadline(), clock.Now() + 30s);
  clock.Advance(29s);  // 49 s: past the first deadline, before the second.
  EXPECT_TRUE(fence.Check().ok()) << fence.Check().ToString();
  clock.Advance(1s);
  EXPECT_EQ(fence.Check().code(), ErrorCode::kReadOnly);
}

TEST(WriteFenceTest, ExtendUntilNeverMovesTheDeadlineBackwards) {
  FakeClock clock;
  const MonoTime start = clock.Now();
  WriteFence fence(clock, start + 60s);
  fence.ExtendUntil(start + 10s);
  EXPECT_EQ(fence.deadline(), start + 60s);
  clock.Advance(30s);  // Past the earlier deadline that was refused.
  EXPECT_TRUE(fence.Check().ok()) << fence.Check().ToString();

  fence.ExtendUntil(start + 90s);
  EXPECT_EQ(fence.deadline(), start + 90s);
  fence.ExtendUntil(start + 70s);
  EXPECT_EQ(fence.deadline(), start + 90s);

  // An unlimited fence stays unlimited.
  WriteFence unlimited(clock);
  unlimited.ExtendUntil(clock.Now() + 1s);
  EXPECT_EQ(unlimited.deadline(), MonoTime::max());
  clock.Advance(1h);
  EXPECT_TRUE(unlimited.Check().ok());
}

TEST(WriteFenceTest, CloseFencesAtOnceAndKeepsTheFirstReason) {
  FakeClock clock;
  WriteFence fence(clock);
  fence.Close("the lease was lost: 412");
  Status checked = fence.Check();
  EXPECT_EQ(checked.code(), ErrorCode::kReadOnly);
  EXPECT_THAT(checked.message(), HasSubstr("the lease was lost: 412"));
  EXPECT_EQ(fence.reason(), "the lease was lost: 412");

  fence.Close("fenced by the coordinator");
  EXPECT_EQ(fence.reason(), "the lease was lost: 412");
  EXPECT_THAT(fence.Check().message(), Not(HasSubstr("fenced by the coordinator")));
}

TEST(WriteFenceTest, ClosedFenceKeepsItsReasonWhenItsDeadlineAlsoPasses) {
  FakeClock clock;
  WriteFence fence(clock, clock.Now() + 30s);
  fence.Close("the lease was lost");
  clock.Advance(1min);
  EXPECT_EQ(fence.reason(), "the lease was lost");
  EXPECT_THAT(fence.Check().message(), Not(HasSubstr("deadline")));
}

TEST(WriteFenceTest, CloseIsFinalEvenForARenewal) {
  FakeClock clock;
  WriteFence fence(clock, clock.Now() + 30s);
  fence.Close("the lease was lost");
  fence.ExtendUntil(clock.Now() + 1h);
  EXPECT_EQ(fence.Check().code(), ErrorCode::kReadOnly);
  EXPECT_TRUE(fence.closed());
  EXPECT_EQ(fence.reason(), "the lease was lost");
}

// --- FencedObjectClient --------------------------------------------------------------------

// Forwards to another client and remembers the CallOptions each operation last carried.
class RecordingClient final : public s3::ObjectClient {
 public:
  explicit RecordingClient(s3::ObjectClient& inner) : inner_(inner) {}

  // The deadline the last call of `op` carried; nullopt inside if it carried none. Fails the
  // test if no call of `op` arrived.
  std::optional<MonoTime> DeadlineOf(s3::Op op) const {
    std::lock_guard lock(mu_);
    auto it = seen_.find(op);
    if (it == seen_.end()) {
      ADD_FAILURE() << s3::OpName(op) << " never reached the inner client";
      return std::nullopt;
    }
    return it->second.deadline;
  }
  // The guard the last call of `op` carried (empty if none, or if no call arrived).
  std::function<Status()> GuardOf(s3::Op op) const {
    std::lock_guard lock(mu_);
    auto it = seen_.find(op);
    return it == seen_.end() ? nullptr : it->second.guard;
  }

  const std::string& bucket() const override { return inner_.bucket(); }
  Result<s3::ObjectInfo> Head(const s3::HeadRequest& req, const s3::CallOptions& opts) override {
    Seen(s3::Op::kHead, opts);
    return inner_.Head(req, opts);
  }
  Result<s3::GetResult> Get(const s3::GetRequest& req, std::span<char> buffer,
                            const s3::CallOptions& opts) override {
    Seen(s3::Op::kGet, opts);
    return inner_.Get(req, buffer, opts);
  }
  Result<s3::PutResult> Put(const s3::PutRequest& req, const s3::CallOptions& opts) override {
    Seen(s3::Op::kPut, opts);
    return inner_.Put(req, opts);
  }
  Result<s3::PutResult> Copy(const s3::CopyRequest& req, const s3::CallOptions& opts) override {
    Seen(s3::Op::kCopy, opts);
    return inner_.Copy(req, opts);
  }
  Status Delete(const std::string& key, const s3::CallOptions& opts) override {
    Seen(s3::Op::kDelete, opts);
    return inner_.Delete(key, opts);
  }
  Result<s3::DeleteManyResult> DeleteMany(const std::vector<std::string>& keys,
                                          const s3::CallOptions& opts) override {
    Seen(s3::Op::kDeleteMany, opts);
    return inner_.DeleteMany(keys, opts);
  }
  Result<s3::ListPage> List(const s3::ListRequest& req, const s3::CallOptions& opts) override {
    Seen(s3::Op::kList, opts);
    return inner_.List(req, opts);
  }
  Result<std::string> CreateMultipart(const s3::CreateMultipartRequest& req,
                                      const s3::CallOptions& opts) override {
    Seen(s3::Op::kCreateMultipart, opts);
    return inner_.CreateMultipart(req, opts);
  }
  Result<s3::PartInfo> UploadPart(const s3::UploadPartRequest& req,
                                  const s3::CallOptions& opts) override {
    Seen(s3::Op::kUploadPart, opts);
    return inner_.UploadPart(req, opts);
  }
  Result<s3::PartInfo> UploadPartCopy(const s3::UploadPartCopyRequest& req,
                                      const s3::CallOptions& opts) override {
    Seen(s3::Op::kUploadPartCopy, opts);
    return inner_.UploadPartCopy(req, opts);
  }
  Result<s3::PutResult> CompleteMultipart(const s3::CompleteMultipartRequest& req,
                                          const s3::CallOptions& opts) override {
    Seen(s3::Op::kCompleteMultipart, opts);
    return inner_.CompleteMultipart(req, opts);
  }
  Status AbortMultipart(const std::string& key, const std::string& upload_id,
                        const s3::CallOptions& opts) override {
    Seen(s3::Op::kAbortMultipart, opts);
    return inner_.AbortMultipart(key, upload_id, opts);
  }
  Result<s3::ListPartsPage> ListParts(const s3::ListPartsRequest& req,
                                      const s3::CallOptions& opts) override {
    Seen(s3::Op::kListParts, opts);
    return inner_.ListParts(req, opts);
  }
  Result<s3::ListUploadsPage> ListMultipartUploads(const s3::ListUploadsRequest& req,
                                                   const s3::CallOptions& opts) override {
    Seen(s3::Op::kListMultipartUploads, opts);
    return inner_.ListMultipartUploads(req, opts);
  }

 private:
  void Seen(s3::Op op, const s3::CallOptions& opts) {
    std::lock_guard lock(mu_);
    seen_[op] = opts;
  }

  s3::ObjectClient& inner_;
  mutable std::mutex mu_;
  std::map<s3::Op, s3::CallOptions> seen_;  // Guarded by mu_.
};

const std::string kBody = "body";
const std::string kPartBody(s3::kMinPartSize, 'p');

// One call of each operation that changes the bucket, through `client`.
struct Mutation {
  s3::Op op;
  std::function<Status(s3::ObjectClient&, const s3::CallOptions&)> call;
};

class FencedObjectClientTest : public ::testing::Test {
 protected:
  FencedObjectClientTest() {
    fake_.PutDirect("src", "source bytes");
    fake_.PutDirect("keep", "kept");
    auto id = fake_.CreateMultipart({"upload", "", {}});
    if (!id.ok()) std::abort();
    upload_id_ = *id;
    auto part = fake_.UploadPart({"upload", upload_id_, 1, kPartBody});
    if (!part.ok()) std::abort();
    part_ = *part;
    fake_.ResetCounters();
  }

  // Every mutating operation once, each aimed at keys whose state the tests check after.
  std::vector<Mutation> Mutations() const {
    const std::string id = upload_id_;
    const s3::PartInfo part = part_;
    return {
        {s3::Op::kPut,
         [](s3::ObjectClient& c, const s3::CallOptions& o) {
           return c.Put({"put", kBody, "", {}, {}}, o).status();
         }},
        {s3::Op::kCopy,
         [](s3::ObjectClient& c, const s3::CallOptions& o) {
           s3::CopyRequest req;
           req.source_key = "src";
           req.dest_key = "copy";
           return c.Copy(req, o).status();
         }},
        {s3::Op::kDelete,
         [](s3::ObjectClient& c, const s3::CallOptions& o) { return c.Delete("keep", o); }},
        {s3::Op::kDeleteMany,
         [](s3::ObjectClient& c, const s3::CallOptions& o) {
           return c.DeleteMany({"keep", "src"}, o).status();
         }},
        {s3::Op::kCreateMultipart,
         [](s3::ObjectClient& c, const s3::CallOptions& o) {
           return c.CreateMultipart({"created", "", {}}, o).status();
         }},
        {s3::Op::kUploadPart,
         [id](s3::ObjectClient& c, const s3::CallOptions& o) {
           return c.UploadPart({"upload", id, 2, kBody}, o).status();
         }},
        {s3::Op::kUploadPartCopy,
         [id](s3::ObjectClient& c, const s3::CallOptions& o) {
           return c.UploadPartCopy({"upload", id, 3, "src", std::nullopt, ""}, o).status();
         }},
        {s3::Op::kCompleteMultipart,
         [id, part](s3::ObjectClient& c, const s3::CallOptions& o) {
           return c.CompleteMultipart({"upload", id, {part}, {}}, o).status();
         }},
    };
  }

  // The bucket as the fixture left it: nothing the mutations aim at has changed.
  void ExpectBucketUntouched() {
    EXPECT_EQ(fake_.Keys(), (std::vector<std::string>{"keep", "src"}));
    EXPECT_EQ(fake_.ObjectBody("keep"), "kept");
    EXPECT_EQ(fake_.ObjectBody("src"), "source bytes");
    EXPECT_FALSE(fake_.Exists("put"));
    EXPECT_FALSE(fake_.Exists("copy"));
    EXPECT_FALSE(fake_.Exists("created"));
    EXPECT_FALSE(fake_.Exists("upload"));
    EXPECT_EQ(fake_.PendingUploads(), 1u);
    auto parts = fake_.ListParts({"upload", upload_id_, 0, 1000});
    ASSERT_TRUE(parts.ok()) << parts.status().ToString();
    ASSERT_EQ(parts->parts.size(), 1u);
    EXPECT_EQ(parts->parts[0].part_number, 1);
  }

  FakeClock clock_;
  s3::FakeObjectClient fake_{clock_};
  std::string upload_id_;
  s3::PartInfo part_;
};

TEST_F(FencedObjectClientTest, ClosedFenceRefusesEveryMutationWithReadOnlyAndSendsNothing) {
  WriteFence fence(clock_);
  FencedObjectClient fenced(fake_, fence);
  fence.Close("the lease was lost");
  for (const Mutation& m : Mutations()) {
    SCOPED_TRACE(std::string(s3::OpName(m.op)));
    Status s = m.call(fenced, {clock_.Now() + 60s});
    EXPECT_EQ(s.code(), ErrorCode::kReadOnly) << s.ToString();
    EXPECT_THAT(s.message(), HasSubstr("the lease was lost"));
    EXPECT_EQ(fake_.calls(m.op), 0u);
  }
  EXPECT_EQ(fake_.total_calls(), 0u);
  ExpectBucketUntouched();
}

TEST_F(FencedObjectClientTest, FenceWhoseDeadlinePassedRefusesEveryMutationAndSendsNothing) {
  WriteFence fence(clock_, clock_.Now() + 30s);
  FencedObjectClient fenced(fake_, fence);
  clock_.Advance(30s);
  for (const Mutation& m : Mutations()) {
    SCOPED_TRACE(std::string(s3::OpName(m.op)));
    Status s = m.call(fenced, {});
    EXPECT_EQ(s.code(), ErrorCode::kReadOnly) << s.ToString();
    EXPECT_THAT(s.message(), HasSubstr("deadline"));
  }
  EXPECT_EQ(fake_.total_calls(), 0u);
  ExpectBucketUntouched();
}

TEST_F(FencedObjectClientTest, ClosedFenceStillPassesReadsAndAbortMultipart) {
  WriteFence fence(clock_);
  FencedObjectClient fenced(fake_, fence);
  fence.Close("the lease was lost");
  EXPECT_EQ(fenced.bucket(), fake_.bucket());

  auto head = fenced.Head({"src", ""}, {});
  ASSERT_TRUE(head.ok()) << head.status().ToString();
  EXPECT_EQ(head->size, 12u);

  std::string buffer(64, '\0');
  auto got = fenced.Get({"src", std::nullopt, ""}, {buffer.data(), buffer.size()}, {});
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(buffer.substr(0, got->bytes_read), "source bytes");

  s3::ListRequest list;
  auto listed = fenced.List(list, {});
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  ASSERT_EQ(listed->objects.size(), 2u);
  EXPECT_EQ(listed->objects[0].key, "keep");
  EXPECT_EQ(listed->objects[1].key, "src");

  auto uploads = fenced.ListMultipartUploads({}, {});
  ASSERT_TRUE(uploads.ok()) << uploads.status().ToString();
  ASSERT_EQ(uploads->uploads.size(), 1u);
  EXPECT_EQ(uploads->uploads[0].upload_id, upload_id_);

  auto parts = fenced.ListParts({"upload", upload_id_, 0, 1000}, {});
  ASSERT_TRUE(parts.ok()) << parts.status().ToString();
  ASSERT_EQ(parts->parts.size(), 1u);
  EXPECT_EQ(parts->parts[0].etag, part_.etag);

  // Throwing away our own unfinished upload changes no object.
  Status aborted = fenced.AbortMultipart("upload", upload_id_, {});
  ASSERT_TRUE(aborted.ok()) << aborted.ToString();
  EXPECT_EQ(fake_.PendingUploads(), 0u);
  EXPECT_EQ(fake_.calls(s3::Op::kAbortMultipart), 1u);
}

// A mutation keeps its caller's deadline (a copy of many GiB may outlast the lease's
// validity while renewals keep the fence open), and carries a guard that says no once the
// fence closes: the client sends no retry after that, and abandons a request in flight.
TEST_F(FencedObjectClientTest, OpenFenceKeepsTheCallersDeadlineAndGuardsEveryMutation) {
  RecordingClient recorder(fake_);
  const MonoTime start = clock_.Now();
  WriteFence fence(clock_, start + 30s);
  FencedObjectClient fenced(recorder, fence);

  for (const Mutation& m : Mutations()) {
    SCOPED_TRACE(std::string(s3::OpName(m.op)));
    (void)m.call(fenced, {clock_.Now() + 120s});
    EXPECT_EQ(recorder.DeadlineOf(m.op), std::optional<MonoTime>(start + 120s));
    (void)m.call(fenced, {});
    EXPECT_FALSE(recorder.DeadlineOf(m.op).has_value());
    const auto guard = recorder.GuardOf(m.op);
    ASSERT_TRUE(guard) << "no guard";
    EXPECT_TRUE(guard().ok());
  }
  const auto guard = recorder.GuardOf(s3::Op::kCopy);
  clock_.Advance(30s);  // The fence's deadline passes in the middle of the call.
  EXPECT_EQ(guard().code(), ErrorCode::kReadOnly);
  fence.ExtendUntil(clock_.Now() + 30s);  // A renewal: the call may go on.
  EXPECT_TRUE(guard().ok());
  fence.Close("the lease was lost");
  Status lost = guard();
  EXPECT_EQ(lost.code(), ErrorCode::kReadOnly);
  EXPECT_THAT(lost.message(), HasSubstr("the lease was lost"));
}

// The caller's own guard still applies under the fence's.
TEST_F(FencedObjectClientTest, TheFencesGuardKeepsTheCallersOwn) {
  RecordingClient recorder(fake_);
  WriteFence fence(clock_, clock_.Now() + 30s);
  FencedObjectClient fenced(recorder, fence);
  bool caller_says_stop = false;
  s3::CallOptions opts;
  opts.guard = [&]() {
    return caller_says_stop ? Status(ErrorCode::kCancelled, "the caller stopped") : Status::Ok();
  };
  (void)fenced.Put({"put", kBody, "", {}, {}}, opts);
  const auto guard = recorder.GuardOf(s3::Op::kPut);
  ASSERT_TRUE(guard);
  EXPECT_TRUE(guard().ok());
  caller_says_stop = true;
  EXPECT_EQ(guard().code(), ErrorCode::kCancelled);
}

TEST_F(FencedObjectClientTest, UnlimitedFenceLeavesTheCallersDeadlineAsItWas) {
  RecordingClient recorder(fake_);
  WriteFence fence(clock_);
  FencedObjectClient fenced(recorder, fence);
  const MonoTime later = clock_.Now() + 1h;

  for (const Mutation& m : Mutations()) {
    SCOPED_TRACE(std::string(s3::OpName(m.op)));
    (void)m.call(fenced, {later});
    EXPECT_EQ(recorder.DeadlineOf(m.op), std::optional<MonoTime>(later));
    (void)m.call(fenced, {});
    EXPECT_FALSE(recorder.DeadlineOf(m.op).has_value());
    EXPECT_FALSE(recorder.GuardOf(m.op)) << "an unlimited fence needs no guard";
  }
}

}  // namespace
}  // namespace bucketfs::cache
