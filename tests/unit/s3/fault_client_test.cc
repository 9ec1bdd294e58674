#include "s3/fault_client.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "s3/crypto.h"
#include "s3/fake_client.h"

namespace bucketfs::s3 {
namespace {

using namespace std::chrono_literals;

std::string Md5Hex(std::string_view s) { return HexLower(Md5({s.data(), s.size()})); }

class FaultInjectingClientTest : public ::testing::Test {
 protected:
  FaultInjectingClientTest()
      : fake_(FakeObjectClientOptions{"faulty-bucket", 4}, clock_), client_(fake_, clock_) {}

  Result<PutResult> Put(const std::string& key, const std::string& body,
                        WriteCondition cond = WriteCondition::None()) {
    PutRequest req;
    req.key = key;
    req.body = body;
    req.condition = std::move(cond);
    return client_.Put(req);
  }

  Result<GetResult> Get(const std::string& key, std::string* out, CallOptions opts = {}) {
    out->assign(256, '\0');
    Result<GetResult> r = client_.Get({key, std::nullopt, {}}, *out, opts);
    if (r.ok()) out->resize(r->bytes_read);
    return r;
  }

  ErrorCode GetCode(const std::string& key) {
    std::string out;
    return Get(key, &out).status().code();
  }

  FakeClock clock_;
  FakeObjectClient fake_;
  FaultInjectingClient client_;
};

TEST_F(FaultInjectingClientTest, PassesCallsThroughWhenNoRuleMatches) {
  EXPECT_EQ(client_.bucket(), "faulty-bucket");
  Result<PutResult> put = Put("k", "hello");
  ASSERT_TRUE(put.ok());
  EXPECT_EQ(put->etag, Md5Hex("hello"));
  std::string out;
  ASSERT_TRUE(Get("k", &out).ok());
  EXPECT_EQ(out, "hello");
  EXPECT_EQ(client_.calls(Op::kPut), 1u);
  EXPECT_EQ(client_.calls(Op::kGet), 1u);
  EXPECT_EQ(client_.injected_total(), 0u);
  EXPECT_EQ(fake_.calls(Op::kGet), 1u);
}

TEST_F(FaultInjectingClientTest, FailNextFailsExactlyNCallsWithoutReachingInnerClient) {
  fake_.PutDirect("k", "v");
  const auto rule = client_.FailNext(Op::kGet, 2, InjectedError(ErrorCode::kServerError));
  EXPECT_EQ(GetCode("k"), ErrorCode::kServerError);
  EXPECT_EQ(GetCode("k"), ErrorCode::kServerError);
  EXPECT_EQ(GetCode("k"), ErrorCode::kOk);
  EXPECT_EQ(GetCode("k"), ErrorCode::kOk);
  EXPECT_EQ(client_.injected(Op::kGet), 2u);
  EXPECT_EQ(client_.fired(rule), 2u);
  EXPECT_EQ(client_.calls(Op::kGet), 4u);
  EXPECT_EQ(fake_.calls(Op::kGet), 2u);  // The failed calls never reached the server.
}

TEST_F(FaultInjectingClientTest, InjectedErrorsLookLikeRealServerErrors) {
  Status server = InjectedError(ErrorCode::kServerError);
  EXPECT_EQ(server.code(), ErrorCode::kServerError);
  EXPECT_TRUE(server.retryable());
  EXPECT_EQ(server.http_status(), 500);
  EXPECT_EQ(server.server_code(), "InternalError");

  Status slow = InjectedError(ErrorCode::kSlowDown);
  EXPECT_TRUE(slow.retryable());
  EXPECT_EQ(slow.http_status(), 503);
  EXPECT_EQ(slow.server_code(), "SlowDown");

  Status denied = InjectedError(ErrorCode::kAccessDenied);
  EXPECT_FALSE(denied.retryable());
  EXPECT_EQ(denied.http_status(), 403);
  EXPECT_EQ(denied.server_code(), "AccessDenied");

  for (ErrorCode transient : {ErrorCode::kTimeout, ErrorCode::kNetwork}) {
    Status s = InjectedError(transient);
    EXPECT_EQ(s.code(), transient);
    EXPECT_TRUE(s.retryable());
    EXPECT_EQ(s.http_status(), 0);  // No reply from a server.
  }
  EXPECT_EQ(InjectedError(ErrorCode::kPreconditionFailed).http_status(), 412);
  EXPECT_FALSE(InjectedError(ErrorCode::kPreconditionFailed).retryable());
}

TEST_F(FaultInjectingClientTest, InjectedStatusKeepsCodeFlagsAndNamesOperationAndKey) {
  fake_.PutDirect("data/x", "v");
  client_.FailNext(Op::kGet, 1, InjectedError(ErrorCode::kSlowDown));
  std::string out;
  Result<GetResult> r = Get("data/x", &out);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kSlowDown);
  EXPECT_TRUE(r.status().retryable());
  EXPECT_EQ(r.status().http_status(), 503);
  EXPECT_NE(r.status().message().find("GetObject data/x"), std::string::npos)
      << r.status().message();
}

TEST_F(FaultInjectingClientTest, FailAlwaysFailsEveryMatchingCall) {
  client_.FailAlways(Op::kPut, InjectedError(ErrorCode::kAccessDenied));
  for (int i = 0; i < 10; ++i) {
    Result<PutResult> put = Put("k" + std::to_string(i), "v");
    ASSERT_FALSE(put.ok());
    EXPECT_EQ(put.status().code(), ErrorCode::kAccessDenied);
  }
  EXPECT_EQ(client_.injected(Op::kPut), 10u);
  EXPECT_TRUE(fake_.Keys().empty());
}

TEST_F(FaultInjectingClientTest, RuleAppliesOnlyToItsOperation) {
  fake_.PutDirect("k", "v");
  client_.FailAlways(Op::kPut, InjectedError(ErrorCode::kServerError));
  EXPECT_EQ(GetCode("k"), ErrorCode::kOk);
  EXPECT_TRUE(client_.Head({"k", {}}).ok());
  EXPECT_FALSE(Put("k", "v2").ok());
  EXPECT_EQ(client_.injected(Op::kGet), 0u);
  EXPECT_EQ(client_.injected(Op::kPut), 1u);
}

TEST_F(FaultInjectingClientTest, KeyPrefixLimitsRuleToMatchingKeys) {
  fake_.PutDirect("bad/x", "v");
  fake_.PutDirect("good/x", "v");
  client_.FailAlways(Op::kGet, InjectedError(ErrorCode::kNetwork), "bad/");
  EXPECT_EQ(GetCode("bad/x"), ErrorCode::kNetwork);
  EXPECT_EQ(GetCode("good/x"), ErrorCode::kOk);
  EXPECT_EQ(GetCode("bad/x"), ErrorCode::kNetwork);
}

TEST_F(FaultInjectingClientTest, SkipLetsFirstMatchingCallsThrough) {
  // "Fail the third UploadPart."
  const std::string id = *fake_.CreateMultipart({"k", {}, {}});
  FaultRule rule;
  rule.op = Op::kUploadPart;
  rule.skip = 2;
  rule.status = InjectedError(ErrorCode::kServerError);
  client_.AddRule(rule);
  std::vector<ErrorCode> codes;
  for (int n = 1; n <= 4; ++n) {
    codes.push_back(client_.UploadPart({"k", id, n, std::string("abcd")}).status().code());
  }
  EXPECT_EQ(codes, (std::vector<ErrorCode>{ErrorCode::kOk, ErrorCode::kOk, ErrorCode::kServerError,
                                           ErrorCode::kOk}));
  Result<ListPartsPage> parts = fake_.ListParts({"k", id, 0, 1000});
  ASSERT_TRUE(parts.ok());
  EXPECT_EQ(parts->parts.size(), 3u);
}

TEST_F(FaultInjectingClientTest, ProbabilisticRuleIsReproducibleForOneSeed) {
  fake_.PutDirect("k", "v");
  auto run = [&](uint64_t seed) {
    FaultInjectingClient wrapper(fake_, clock_, seed);
    wrapper.FailWithProbability(Op::kGet, 0.5, InjectedError(ErrorCode::kSlowDown));
    std::vector<bool> failed;
    char buf[4];
    for (int i = 0; i < 400; ++i) {
      failed.push_back(!wrapper.Get({"k", std::nullopt, {}}, buf).ok());
    }
    EXPECT_EQ(wrapper.injected(Op::kGet),
              static_cast<uint64_t>(std::count(failed.begin(), failed.end(), true)));
    return failed;
  };
  const std::vector<bool> a = run(42);
  const std::vector<bool> b = run(42);
  const std::vector<bool> c = run(43);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  const auto failures = std::count(a.begin(), a.end(), true);
  EXPECT_GT(failures, 140);
  EXPECT_LT(failures, 260);
}

TEST_F(FaultInjectingClientTest, ProbabilityZeroNeverFiresAndOneAlwaysFires) {
  fake_.PutDirect("k", "v");
  client_.FailWithProbability(Op::kGet, 0.0, InjectedError(ErrorCode::kServerError));
  for (int i = 0; i < 50; ++i) EXPECT_EQ(GetCode("k"), ErrorCode::kOk);
  client_.ClearRules();
  client_.FailWithProbability(Op::kGet, 1.0, InjectedError(ErrorCode::kServerError));
  for (int i = 0; i < 50; ++i) EXPECT_EQ(GetCode("k"), ErrorCode::kServerError);
}

TEST_F(FaultInjectingClientTest, DelaySleepsOnInjectedClockBeforeTheCall) {
  fake_.PutDirect("k", "v");
  client_.DelayNext(Op::kGet, 1, 5s);
  const MonoTime before = clock_.Now();
  std::string out;
  ASSERT_TRUE(Get("k", &out).ok());
  EXPECT_EQ(out, "v");
  EXPECT_EQ(clock_.Now() - before, Duration(5s));
  EXPECT_EQ(clock_.slept(), Duration(5s));
  EXPECT_EQ(client_.injected(Op::kGet), 1u);
  ASSERT_TRUE(Get("k", &out).ok());  // Only the next call was delayed.
  EXPECT_EQ(clock_.slept(), Duration(5s));
}

TEST_F(FaultInjectingClientTest, DelayPastDeadlineTimesOutWithoutCallingInnerClient) {
  client_.DelayNext(Op::kPut, 1, 5s);
  CallOptions opts;
  opts.deadline = clock_.Now() + 1s;
  PutRequest req;
  req.key = "k";
  const std::string body = "v";
  req.body = body;
  Result<PutResult> put = client_.Put(req, opts);
  ASSERT_FALSE(put.ok());
  EXPECT_EQ(put.status().code(), ErrorCode::kTimeout);
  EXPECT_EQ(clock_.slept(), Duration(1s));  // Slept until the deadline, not 5 s.
  EXPECT_EQ(fake_.calls(Op::kPut), 0u);
  EXPECT_FALSE(fake_.Exists("k"));
}

TEST_F(FaultInjectingClientTest, DelayThenFailModelsSlowErrorReply) {
  FaultRule rule;
  rule.op = Op::kHead;
  rule.delay = 2s;
  rule.status = InjectedError(ErrorCode::kServerError);
  client_.AddRule(rule);
  Result<ObjectInfo> head = client_.Head({"k", {}});
  ASSERT_FALSE(head.ok());
  EXPECT_EQ(head.status().code(), ErrorCode::kServerError);
  EXPECT_EQ(clock_.slept(), Duration(2s));
}

TEST_F(FaultInjectingClientTest, ShortReadReportsFewerBytes) {
  fake_.PutDirect("k", "0123456789");
  client_.ShortReadNextGet(1, 3);
  std::string out;
  Result<GetResult> r = Get("k", &out);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->bytes_read, 7u);
  EXPECT_EQ(out, "0123456");
  EXPECT_EQ(r->info.size, 10u);  // The object's size is still reported whole.
  client_.ShortReadNextGet(1, 100);
  r = Get("k", &out);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->bytes_read, 0u);
  r = Get("k", &out);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(out, "0123456789");
}

TEST_F(FaultInjectingClientTest, CorruptByteFlipsExactlyOneReturnedByte) {
  const std::string body = "0123456789";
  fake_.PutDirect("k", body);
  client_.CorruptNextGet(1, 4);
  std::string out;
  Result<GetResult> r = Get("k", &out);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(out.size(), body.size());
  int differing = 0;
  for (size_t i = 0; i < body.size(); ++i) differing += out[i] != body[i];
  EXPECT_EQ(differing, 1);
  EXPECT_NE(out[4], body[4]);
  EXPECT_NE(Md5Hex(out), r->info.etag);  // A checksum over the data catches it.

  client_.CorruptNextGet(1, 1000);  // Past the end: the last byte returned.
  r = Get("k", &out);
  ASSERT_TRUE(r.ok());
  EXPECT_NE(out.back(), body.back());
  EXPECT_EQ(out.substr(0, 9), body.substr(0, 9));
}

TEST_F(FaultInjectingClientTest, FailAfterSuccessAppliesPutButLosesTheReply) {
  client_.FailNextAfterSuccess(Op::kPut, 1, InjectedError(ErrorCode::kNetwork));
  Result<PutResult> put = Put("k", "v1", WriteCondition::CreateOnly());
  ASSERT_FALSE(put.ok());
  EXPECT_EQ(put.status().code(), ErrorCode::kNetwork);
  EXPECT_EQ(fake_.ObjectBody("k"), "v1");  // It did happen.
  // A blind retry of the create-only write now sees its own object.
  Result<PutResult> retry = Put("k", "v1", WriteCondition::CreateOnly());
  ASSERT_FALSE(retry.ok());
  EXPECT_EQ(retry.status().code(), ErrorCode::kPreconditionFailed);
  EXPECT_EQ(fake_.calls(Op::kPut), 2u);
}

TEST_F(FaultInjectingClientTest, FailAfterSuccessOnCompleteLeavesObjectAndConsumesUpload) {
  Result<std::string> id = client_.CreateMultipart({"k", {}, {}});
  ASSERT_TRUE(id.ok());
  Result<PartInfo> p1 = client_.UploadPart({"k", *id, 1, std::string("data")});
  ASSERT_TRUE(p1.ok());
  client_.FailNextAfterSuccess(Op::kCompleteMultipart, 1, InjectedError(ErrorCode::kTimeout));
  Result<PutResult> done = client_.CompleteMultipart({"k", *id, {*p1}, {}});
  ASSERT_FALSE(done.ok());
  EXPECT_EQ(done.status().code(), ErrorCode::kTimeout);
  EXPECT_EQ(fake_.ObjectBody("k"), "data");
  Result<PutResult> again = client_.CompleteMultipart({"k", *id, {*p1}, {}});
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), ErrorCode::kNoSuchUpload);
  EXPECT_EQ(fake_.PendingUploads(), 0u);
}

TEST_F(FaultInjectingClientTest, ClearRulesAndRemoveRuleStopInjection) {
  fake_.PutDirect("k", "v");
  const auto get_rule = client_.FailAlways(Op::kGet, InjectedError(ErrorCode::kServerError));
  client_.FailAlways(Op::kHead, InjectedError(ErrorCode::kServerError));
  EXPECT_EQ(GetCode("k"), ErrorCode::kServerError);
  client_.RemoveRule(get_rule);
  EXPECT_EQ(GetCode("k"), ErrorCode::kOk);
  EXPECT_FALSE(client_.Head({"k", {}}).ok());
  EXPECT_EQ(client_.fired(get_rule), 1u);  // Counts survive removal.
  client_.ClearRules();
  EXPECT_TRUE(client_.Head({"k", {}}).ok());
  EXPECT_EQ(client_.injected_total(), 2u);
}

TEST_F(FaultInjectingClientTest, FirstMatchingRuleWins) {
  fake_.PutDirect("k", "v");
  client_.FailNext(Op::kGet, 1, InjectedError(ErrorCode::kSlowDown));
  client_.FailNext(Op::kGet, 1, InjectedError(ErrorCode::kServerError));
  EXPECT_EQ(GetCode("k"), ErrorCode::kSlowDown);
  EXPECT_EQ(GetCode("k"), ErrorCode::kServerError);
  EXPECT_EQ(GetCode("k"), ErrorCode::kOk);
}

TEST_F(FaultInjectingClientTest, CopyRulesMatchSourceOrDestinationPrefix) {
  fake_.PutDirect("in/a", "v");
  fake_.PutDirect("other", "v");
  client_.FailAlways(Op::kCopy, InjectedError(ErrorCode::kServerError), "in/");
  CopyRequest from_in{"in/a", "out/a", {}, {}, {}, {}, {}};
  CopyRequest to_in{"other", "in/b", {}, {}, {}, {}, {}};
  CopyRequest neither{"other", "out/c", {}, {}, {}, {}, {}};
  EXPECT_EQ(client_.Copy(from_in).status().code(), ErrorCode::kServerError);
  EXPECT_EQ(client_.Copy(to_in).status().code(), ErrorCode::kServerError);
  EXPECT_TRUE(client_.Copy(neither).ok());
}

TEST_F(FaultInjectingClientTest, DeleteManyRuleMatchesAnyKeyOfTheBatch) {
  client_.FailAlways(Op::kDeleteMany, InjectedError(ErrorCode::kServerError), "locked/");
  EXPECT_EQ(client_.DeleteMany({"a", "locked/b"}).status().code(), ErrorCode::kServerError);
  EXPECT_TRUE(client_.DeleteMany({"a", "c"}).ok());
  EXPECT_TRUE(client_.DeleteMany({}).ok());
}

TEST_F(FaultInjectingClientTest, ListRuleMatchesListingsUnderItsPrefix) {
  client_.FailAlways(Op::kList, InjectedError(ErrorCode::kSlowDown), "logs/");
  ListRequest under;
  under.prefix = "logs/2024/";
  EXPECT_EQ(client_.List(under).status().code(), ErrorCode::kSlowDown);
  ListRequest root;
  EXPECT_TRUE(client_.List(root).ok());
}

// Every operation can be failed, and the rule for one operation leaves the others alone.
TEST_F(FaultInjectingClientTest, EveryOperationCanBeFailed) {
  fake_.PutDirect("k", "value");
  const std::string id = *fake_.CreateMultipart({"k", {}, {}});
  const std::string to_abort = *fake_.CreateMultipart({"k", {}, {}});
  const PartInfo part = *fake_.UploadPart({"k", id, 1, std::string("abcd")});
  char buf[16];
  const std::string body = "x";
  struct Case {
    Op op;
    std::function<ErrorCode()> call;
  };
  const std::vector<Case> cases = {
      {Op::kHead,
       [&] {
         return client_.Head({"k", {}}).status().code();
       }},
      {Op::kGet,
       [&] {
         return client_.Get({"k", std::nullopt, {}}, buf).status().code();
       }},
      {Op::kPut,
       [&] {
         return client_.Put({"k2", body, {}, {}, {}}).status().code();
       }},
      {Op::kCopy,
       [&] {
         return client_.Copy({"k", "k3", {}, {}, {}, {}, {}}).status().code();
       }},
      {Op::kDelete, [&] { return client_.Delete("k4").code(); }},
      {Op::kDeleteMany, [&] { return client_.DeleteMany({"k4"}).status().code(); }},
      {Op::kList,
       [&] {
         return client_.List({"k", "/", {}, {}, 10}).status().code();
       }},
      {Op::kCreateMultipart,
       [&] {
         return client_.CreateMultipart({"k5", {}, {}}).status().code();
       }},
      {Op::kUploadPart,
       [&] {
         return client_.UploadPart({"k", id, 2, body}).status().code();
       }},
      {Op::kUploadPartCopy,
       [&] {
         return client_.UploadPartCopy({"k", id, 3, "k", std::nullopt, {}}).status().code();
       }},
      {Op::kListParts,
       [&] {
         return client_.ListParts({"k", id, 0, 10}).status().code();
       }},
      {Op::kListMultipartUploads,
       [&] {
         return client_.ListMultipartUploads({"k", {}, {}, 10}).status().code();
       }},
      {Op::kCompleteMultipart,
       [&] {
         return client_.CompleteMultipart({"k", id, {part}, {}}).status().code();
       }},
      {Op::kAbortMultipart, [&] { return client_.AbortMultipart("k", to_abort).code(); }},
  };
  ASSERT_EQ(cases.size(), kOpCount);
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(OpName(c.op)));
    const uint64_t inner_before = fake_.calls(c.op);
    client_.FailNext(c.op, 1, InjectedError(ErrorCode::kServerError), "k");
    EXPECT_EQ(c.call(), ErrorCode::kServerError);
    EXPECT_EQ(client_.injected(c.op), 1u);
    EXPECT_EQ(fake_.calls(c.op), inner_before);
    EXPECT_EQ(c.call(), ErrorCode::kOk);  // The next call passes through.
    EXPECT_EQ(fake_.calls(c.op), inner_before + 1);
  }
  EXPECT_EQ(client_.injected_total(), kOpCount);
}

TEST_F(FaultInjectingClientTest, ConcurrentCallsAndRuleChangesAreThreadSafe) {
  for (int i = 0; i < 8; ++i) fake_.PutDirect("k" + std::to_string(i), "value");
  client_.FailWithProbability(Op::kGet, 0.3, InjectedError(ErrorCode::kServerError));
  std::atomic<uint64_t> failed{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      char buf[16];
      for (int i = 0; i < 500; ++i) {
        Result<GetResult> r =
            client_.Get({"k" + std::to_string((t + i) % 8), std::nullopt, {}}, buf);
        if (!r.ok()) failed.fetch_add(1);
      }
    });
  }
  std::thread churn([&] {
    while (!stop.load()) {
      const auto id = client_.DelayNext(Op::kHead, 1, 1ms);
      client_.RemoveRule(id);
      static_cast<void>(client_.injected_total());
    }
  });
  for (std::thread& t : threads) t.join();
  stop.store(true);
  churn.join();
  EXPECT_EQ(client_.calls(Op::kGet), 3000u);
  EXPECT_EQ(client_.injected(Op::kGet), failed.load());
  EXPECT_GT(failed.load(), 0u);
  EXPECT_EQ(fake_.calls(Op::kGet), 3000u - failed.load());
}

using FaultInjectingClientDeathTest = FaultInjectingClientTest;

TEST_F(FaultInjectingClientDeathTest, ShortReadRuleForAnotherOperationAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  FaultRule rule;
  rule.op = Op::kPut;
  rule.action = FaultAction::kShortRead;
  EXPECT_DEATH(client_.AddRule(rule), "GetObject only");
}

}  // namespace
}  // namespace bucketfs::s3
