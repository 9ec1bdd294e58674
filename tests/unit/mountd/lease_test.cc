#include "mountd/lease.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/clock.h"
#include "s3/fake_client.h"
#include "s3/fault_client.h"
#include "s3/forwarding_client.h"

namespace bucketfs::mountd {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;

constexpr const char* kKey = ".bucketfs/lease";

// Forwards to another client, with hooks the tests use to play a second party at exactly
// the moment they need: FakeClock::SleepUntil returns at once, so a "concurrent" holder
// cannot run in a thread; it acts from inside the waiter's calls instead.
class HookedClient final : public s3::ForwardingClient {
 public:
  explicit HookedClient(s3::ObjectClient& inner) : s3::ForwardingClient(inner) {}

  // Called before every Get is forwarded, with the 1-based count of Gets so far.
  std::function<void(int)> on_get;
  // Called before every Put is forwarded, on a copy of the request it may change.
  std::function<void(s3::PutRequest&)> on_put;
  int gets = 0;

  Result<s3::GetResult> Get(const s3::GetRequest& req, std::span<char> buffer,
                            const s3::CallOptions& opts) override {
    ++gets;
    if (on_get) on_get(gets);
    return inner().Get(req, buffer, opts);
  }
  Result<s3::PutResult> Put(const s3::PutRequest& req, const s3::CallOptions& opts) override {
    s3::PutRequest copy = req;
    if (on_put) on_put(copy);
    return inner().Put(copy, opts);
  }
};

HolderIdentity Alice() { return {"pod-alice", "node-a", "/mnt/alice"}; }
HolderIdentity Bob() { return {"pod-bob", "node-b", "/mnt/bob"}; }

LeaseRecord SomeRecord(const std::string& holder, const std::string& state, uint64_t epoch) {
  LeaseRecord r;
  r.holder = holder;
  r.host = "node-x";
  r.mountpoint = "/mnt/x";
  r.nonce = "00112233445566ff";
  r.epoch = epoch;
  r.ttl_ms = 30'000;
  r.renew_seq = 3;
  r.state = state;
  r.acquired_at = "2023-11-14T22:00:00.000Z";
  r.renewed_at = "2023-11-14T22:05:00.000Z";
  return r;
}

bool IsLowerHex16(const std::string& s) {
  if (s.size() != 16) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

class LeaseTest : public ::testing::Test {
 protected:
  LeaseTest() : fake_(s3::FakeObjectClientOptions{.bucket = "team-data"}, clock_) {}

  static LeaseOptions Opts(bool wait_for_stale = true) {
    LeaseOptions o;
    o.wait_for_stale = wait_for_stale;
    return o;
  }

  // The record stored in the bucket right now.
  std::optional<LeaseRecord> Stored() const {
    auto body = fake_.ObjectBody(kKey);
    if (!body) return std::nullopt;
    auto r = DecodeLease(*body);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (!r.ok()) return std::nullopt;
    return r.value();
  }
  std::string StoredEtag() const {
    auto info = fake_.ObjectInfoDirect(kKey);
    return info ? info->etag : std::string();
  }

  FakeClock clock_;
  s3::FakeObjectClient fake_;
  std::vector<std::string> progress_;
  std::function<void(const std::string&)> Progress() {
    return [this](const std::string& line) { progress_.push_back(line); };
  }
  bool ProgressMentions(const std::string& a, const std::string& b) const {
    for (const auto& line : progress_) {
      if (line.find(a) != std::string::npos && line.find(b) != std::string::npos) return true;
    }
    return false;
  }
};

// --- The record -------------------------------------------------------------------------

TEST(LeaseRecordTest, EncodeDecodeRoundTripKeepsEveryField) {
  LeaseRecord r;
  r.holder = "pod \"quoted\" \\ ünïcode";
  r.host = "node-7.example";
  r.mountpoint = "/mnt/with space";
  r.nonce = "0123456789abcdef";
  r.epoch = (1ull << 63) + 5;  // Above INT64_MAX: must stay unsigned.
  r.ttl_ms = 45'000;
  r.renew_seq = 123456789;
  r.state = "released";
  r.acquired_at = "2024-01-02T03:04:05.678Z";
  r.renewed_at = "2024-01-02T03:05:05.678Z";

  auto back = DecodeLease(EncodeLease(r));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->holder, r.holder);
  EXPECT_EQ(back->host, r.host);
  EXPECT_EQ(back->mountpoint, r.mountpoint);
  EXPECT_EQ(back->nonce, r.nonce);
  EXPECT_EQ(back->epoch, r.epoch);
  EXPECT_EQ(back->ttl_ms, r.ttl_ms);
  EXPECT_EQ(back->renew_seq, r.renew_seq);
  EXPECT_EQ(back->state, r.state);
  EXPECT_EQ(back->acquired_at, r.acquired_at);
  EXPECT_EQ(back->renewed_at, r.renewed_at);
}

TEST(LeaseRecordTest, EncodeNeverThrowsOnInvalidUtf8) {
  LeaseRecord r = SomeRecord("pod", "held", 1);
  r.mountpoint = std::string("/mnt/\xff\xfe", 7);
  std::string body;
  EXPECT_NO_THROW(body = EncodeLease(r));
  auto back = DecodeLease(body);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->holder, "pod");
}

TEST(LeaseRecordTest, MalformedBodiesAreMalformedResponseSayingWhy) {
  const nlohmann::json good = nlohmann::json::parse(EncodeLease(SomeRecord("pod", "held", 1)));
  auto without = [&](const char* field) {
    nlohmann::json j = good;
    j.erase(field);
    return j.dump();
  };
  auto with = [&](const char* field, nlohmann::json value) {
    nlohmann::json j = good;
    j[field] = std::move(value);
    return j.dump();
  };
  const std::string full = good.dump();
  struct Case {
    std::string body;
    std::string why;
  };
  const std::vector<Case> cases = {
      {"", "not JSON"},
      {"this is not json", "not JSON"},
      {full.substr(0, full.size() / 2), "not JSON"},  // Truncated.
      {"[1, 2]", "not an object"},
      {"\"held\"", "not an object"},
      {without("holder"), "\"holder\" is missing"},
      {without("epoch"), "\"epoch\" is missing"},
      {without("state"), "\"state\" is missing"},
      {without("renewed_at"), "\"renewed_at\" is missing"},
      {with("epoch", "1"), "\"epoch\" is a string"},
      {with("epoch", -1), "\"epoch\" is negative"},
      {with("renew_seq", 1.5), "\"renew_seq\" is a number"},
      {with("ttl_ms", true), "\"ttl_ms\" is a boolean"},
      {with("ttl_ms", 1ull << 63), "\"ttl_ms\" is out of range"},
      {with("holder", 5), "\"holder\" is a number"},
      {with("nonce", nullptr), "\"nonce\" is a null"},
      {with("state", "taken"), "neither \"held\" nor \"released\""},
  };
  for (const Case& c : cases) {
    auto r = DecodeLease(c.body);
    ASSERT_FALSE(r.ok()) << "accepted: " << c.body;
    EXPECT_EQ(r.status().code(), ErrorCode::kMalformedResponse) << c.body;
    EXPECT_THAT(r.status().message(), HasSubstr(c.why)) << c.body;
  }
}

TEST(LeaseRecordTest, UnknownFieldsAreIgnored) {
  nlohmann::json j = nlohmann::json::parse(EncodeLease(SomeRecord("pod", "held", 9)));
  j["future_field"] = {1, 2, 3};
  auto r = DecodeLease(j.dump());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->epoch, 9u);
}

TEST(LeaseRecordTest, NoncesAreSixteenHexCharsAndDiffer) {
  const std::string a = NewNonce();
  const std::string b = NewNonce();
  EXPECT_TRUE(IsLowerHex16(a)) << a;
  EXPECT_TRUE(IsLowerHex16(b)) << b;
  EXPECT_NE(a, b);
}

// --- The probe --------------------------------------------------------------------------

TEST_F(LeaseTest, ProbePassesOnAConformingServerAndLeavesNoProbeObject) {
  Status st = ProbeConditionalWrites(fake_, clock_, Opts());
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_TRUE(fake_.Keys().empty());
  EXPECT_EQ(fake_.calls(s3::Op::kPut), 3u);  // Create, create again, If-Match wrong ETag.
  EXPECT_EQ(fake_.calls(s3::Op::kDelete), 1u);
}

TEST_F(LeaseTest, ProbeUsesAFreshKeyUnderThePrefix) {
  HookedClient client(fake_);
  std::vector<std::string> keys;
  client.on_put = [&](s3::PutRequest& req) { keys.push_back(req.key); };
  ASSERT_TRUE(ProbeConditionalWrites(client, clock_, Opts()).ok());
  ASSERT_TRUE(ProbeConditionalWrites(client, clock_, Opts()).ok());
  ASSERT_EQ(keys.size(), 6u);
  EXPECT_EQ(keys[0].rfind(".bucketfs/probe-", 0), 0u) << keys[0];
  EXPECT_TRUE(IsLowerHex16(keys[0].substr(std::string(".bucketfs/probe-").size()))) << keys[0];
  EXPECT_NE(keys[0], keys[3]);
}

TEST_F(LeaseTest, ProbeRefusesAServerThatIgnoresConditions) {
  HookedClient client(fake_);
  client.on_put = [](s3::PutRequest& req) { req.condition = s3::WriteCondition::None(); };
  Status st = ProbeConditionalWrites(client, clock_, Opts());
  ASSERT_EQ(st.code(), ErrorCode::kNotSupported) << st.ToString();
  EXPECT_THAT(st.message(), HasSubstr("ignores conditional writes"));
  EXPECT_THAT(st.message(), HasSubstr("cannot be made exclusive"));
  EXPECT_THAT(st.message(), HasSubstr("--read-only"));
  EXPECT_THAT(st.message(), HasSubstr("team-data"));
  EXPECT_TRUE(fake_.Keys().empty()) << "the probe object was left behind";
}

TEST_F(LeaseTest, ProbeRefusesAServerThatIgnoresOnlyIfMatch) {
  HookedClient client(fake_);
  client.on_put = [](s3::PutRequest& req) {
    if (req.condition.kind == s3::WriteCondition::Kind::kIfMatch) {
      req.condition = s3::WriteCondition::None();
    }
  };
  Status st = ProbeConditionalWrites(client, clock_, Opts());
  ASSERT_EQ(st.code(), ErrorCode::kNotSupported) << st.ToString();
  EXPECT_THAT(st.message(), HasSubstr("If-Match"));
  EXPECT_TRUE(fake_.Keys().empty());
}

TEST_F(LeaseTest, ProbeReportsOtherFailuresAsThemselves) {
  s3::FaultInjectingClient client(fake_, clock_);
  client.FailNext(s3::Op::kPut, 1, s3::InjectedError(ErrorCode::kAccessDenied));
  Status st = ProbeConditionalWrites(client, clock_, Opts());
  EXPECT_EQ(st.code(), ErrorCode::kAccessDenied) << st.ToString();
  EXPECT_THAT(st.message(), HasSubstr("probing conditional writes"));
}

// --- Acquire ----------------------------------------------------------------------------

TEST_F(LeaseTest, AcquireOnAnEmptyBucketCreatesEpochOne) {
  Lease lease(fake_, clock_, Opts(), Alice());
  const MonoTime start = clock_.Now();
  Status st = lease.Acquire();
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_TRUE(lease.held());
  EXPECT_FALSE(lease.lost());

  const LeaseRecord r = lease.record();
  EXPECT_EQ(r.holder, "pod-alice");
  EXPECT_EQ(r.host, "node-a");
  EXPECT_EQ(r.mountpoint, "/mnt/alice");
  EXPECT_EQ(r.nonce, lease.nonce());
  EXPECT_TRUE(IsLowerHex16(r.nonce));
  EXPECT_EQ(r.epoch, 1u);
  EXPECT_EQ(r.ttl_ms, 30'000);
  EXPECT_EQ(r.renew_seq, 0u);
  EXPECT_EQ(r.state, "held");
  EXPECT_EQ(r.acquired_at, "2023-11-14T22:13:20.000Z");  // FakeClock's wall start.

  auto stored = Stored();
  ASSERT_TRUE(stored.has_value());
  EXPECT_EQ(stored->nonce, lease.nonce());
  EXPECT_EQ(stored->epoch, 1u);
  EXPECT_EQ(stored->state, "held");
  EXPECT_EQ(lease.etag(), StoredEtag());
  EXPECT_EQ(lease.valid_until(), start + 30s);
  EXPECT_EQ(lease.next_renewal(), start + 10s);
  EXPECT_EQ(clock_.slept(), Duration::zero());
}

TEST_F(LeaseTest, AcquireWhileHeldIsRefused) {
  Lease lease(fake_, clock_, Opts(), Alice());
  ASSERT_TRUE(lease.Acquire().ok());
  EXPECT_EQ(lease.Acquire().code(), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(lease.held());
}

TEST_F(LeaseTest, HeldLeaseWithoutWaitingIsBusyAtOnceAndNamesTheHolder) {
  Lease alice(fake_, clock_, Opts(), Alice());
  ASSERT_TRUE(alice.Acquire().ok());
  const std::string etag = StoredEtag();

  Lease bob(fake_, clock_, Opts(/*wait_for_stale=*/false), Bob());
  Status st = bob.Acquire();
  ASSERT_EQ(st.code(), ErrorCode::kBusy) << st.ToString();
  EXPECT_THAT(st.message(), HasSubstr("team-data"));
  EXPECT_THAT(st.message(), HasSubstr("pod-alice"));
  EXPECT_THAT(st.message(), HasSubstr("node-a"));
  EXPECT_THAT(st.message(), HasSubstr("/mnt/alice"));
  EXPECT_THAT(st.message(), HasSubstr("since " + alice.record().acquired_at));
  EXPECT_THAT(st.message(), HasSubstr("last renewed " + alice.record().renewed_at));
  EXPECT_THAT(st.message(), HasSubstr("take it over at 2023-11-14T22:14:00.000Z"));  // +40s.
  EXPECT_THAT(st.message(), HasSubstr("run `bucketfs unmount` there first"));
  EXPECT_FALSE(bob.held());
  EXPECT_EQ(clock_.slept(), Duration::zero());
  EXPECT_EQ(StoredEtag(), etag) << "the holder's record was touched";
  EXPECT_TRUE(alice.held());
}

TEST_F(LeaseTest, OurOwnHostsEarlierMountCountsAsSomeoneElse) {
  Lease crashed(fake_, clock_, Opts(), Alice());
  ASSERT_TRUE(crashed.Acquire().ok());
  Lease restarted(fake_, clock_, Opts(/*wait_for_stale=*/false), Alice());
  EXPECT_NE(restarted.nonce(), crashed.nonce());
  EXPECT_EQ(restarted.Acquire().code(), ErrorCode::kBusy);
}

TEST_F(LeaseTest, WaiterFailsBusyAtOnceWhenTheHolderRenews) {
  Lease alice(fake_, clock_, Opts(), Alice());
  ASSERT_TRUE(alice.Acquire().ok());

  HookedClient client(fake_);
  client.on_get = [&](int n) {
    if (n == 3) {
      clock_.Advance(4s);  // Alice renews while Bob polls (inside his 5 s call deadline).
      ASSERT_TRUE(alice.Renew().ok());
    }
  };
  Lease bob(client, clock_, Opts(), Bob());
  const MonoTime start = clock_.Now();
  Status st = bob.Acquire(Progress());
  ASSERT_EQ(st.code(), ErrorCode::kBusy) << st.ToString();
  EXPECT_THAT(st.message(), HasSubstr("renewed while we waited"));
  EXPECT_THAT(st.message(), HasSubstr("pod-alice"));
  EXPECT_THAT(st.message(), HasSubstr("run `bucketfs unmount` there first"));
  EXPECT_EQ(client.gets, 3) << "the waiter kept polling after the renewal";
  EXPECT_LT(clock_.Now() - start, 40s);
  EXPECT_TRUE(ProgressMentions("pod-alice", "waiting until"));
  EXPECT_FALSE(bob.held());
  EXPECT_TRUE(alice.held());
  auto stored = Stored();
  ASSERT_TRUE(stored.has_value());
  EXPECT_EQ(stored->nonce, alice.nonce());
  EXPECT_EQ(stored->renew_seq, 1u);
}

TEST_F(LeaseTest, WaiterTakesALeaseReleasedWhileItWaits) {
  Lease alice(fake_, clock_, Opts(), Alice());
  ASSERT_TRUE(alice.Acquire().ok());

  HookedClient client(fake_);
  client.on_get = [&](int n) {
    if (n == 4) {
      ASSERT_TRUE(alice.Release().ok());
    }
  };
  Lease bob(client, clock_, Opts(), Bob());
  const MonoTime start = clock_.Now();
  Status st = bob.Acquire();
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_LT(clock_.Now() - start, 30s);
  EXPECT_EQ(bob.record().epoch, 2u);
  EXPECT_FALSE(alice.held());
  ASSERT_TRUE(Stored().has_value());
  EXPECT_EQ(Stored()->holder, "pod-bob");
}

TEST_F(LeaseTest, AbandonedLeaseIsTakenOverOnlyAfterTtlPlusMargin) {
  Lease alice(fake_, clock_, Opts(), Alice());
  ASSERT_TRUE(alice.Acquire().ok());  // ... and then Alice's node dies: no more renewals.

  Lease bob(fake_, clock_, Opts(), Bob());
  const MonoTime start = clock_.Now();
  Status st = bob.Acquire(Progress());
  ASSERT_TRUE(st.ok()) << st.ToString();
  const Duration waited = clock_.Now() - start;
  EXPECT_GE(waited, 40s);                 // ttl 30s + margin 10s, on our clock.
  EXPECT_LE(waited, 40s + 1s);            // And not much more: one poll at most.
  EXPECT_EQ(bob.record().epoch, 2u);
  EXPECT_EQ(bob.record().holder, "pod-bob");
  EXPECT_TRUE(bob.held());
  EXPECT_GE(fake_.calls(s3::Op::kGet), 30u) << "the waiter did not poll every second";
  EXPECT_TRUE(ProgressMentions("pod-alice", "waiting until"));
  EXPECT_TRUE(ProgressMentions("taking it over", "40s"));
  auto stored = Stored();
  ASSERT_TRUE(stored.has_value());
  EXPECT_EQ(stored->nonce, bob.nonce());
  EXPECT_EQ(stored->epoch, 2u);

  // Alice comes back as a zombie: her renew is refused and she fences herself.
  Status renew = alice.Renew();
  EXPECT_EQ(renew.code(), ErrorCode::kReadOnly) << renew.ToString();
  EXPECT_TRUE(alice.lost());
  EXPECT_THAT(alice.lost_reason(), HasSubstr("pod-bob"));
}

TEST_F(LeaseTest, AWaitForAStaleLeaseEndsWhenAskedToStopAndTakesNothing) {
  Lease alice(fake_, clock_, Opts(), Alice());
  ASSERT_TRUE(alice.Acquire().ok());
  const std::string alices = StoredEtag();

  Lease bob(fake_, clock_, Opts(), Bob());
  const MonoTime start = clock_.Now();
  // SIGTERM (Ctrl-C, systemd) 5 s into the 40 s wait.
  Status st = bob.Acquire(Progress(), [&] { return clock_.Now() - start >= 5s; });
  EXPECT_EQ(st.code(), ErrorCode::kCancelled) << st.ToString();
  EXPECT_THAT(st.message(), HasSubstr("not taken"));
  EXPECT_LE(clock_.Now() - start, 6s) << "the wait went on after the stop";
  EXPECT_FALSE(bob.held());
  EXPECT_EQ(StoredEtag(), alices) << "the lease is still Alice's";
}

TEST_F(LeaseTest, TakeoverWaitsForTheLongerOfTheRecordsTtlAndOurs) {
  LeaseRecord old = SomeRecord("pod-slow", "held", 4);
  old.ttl_ms = 120'000;
  fake_.PutDirect(kKey, EncodeLease(old));

  Lease bob(fake_, clock_, Opts(), Bob());
  const MonoTime start = clock_.Now();
  ASSERT_TRUE(bob.Acquire().ok());
  EXPECT_GE(clock_.Now() - start, 130s);  // 120s of the record + our 10s margin.
  EXPECT_EQ(bob.record().epoch, 5u);
}

TEST_F(LeaseTest, UnreadableLeaseCountsAsHeldByAnUnknownHolder) {
  fake_.PutDirect(kKey, "{ this is not a lease");

  Lease hasty(fake_, clock_, Opts(/*wait_for_stale=*/false), Alice());
  Status st = hasty.Acquire();
  ASSERT_EQ(st.code(), ErrorCode::kBusy) << st.ToString();
  EXPECT_THAT(st.message(), HasSubstr("unknown holder"));
  EXPECT_THAT(st.message(), HasSubstr("not JSON"));

  Lease patient(fake_, clock_, Opts(), Bob());
  const MonoTime start = clock_.Now();
  ASSERT_TRUE(patient.Acquire().ok());
  EXPECT_GE(clock_.Now() - start, 40s);
  EXPECT_EQ(patient.record().epoch, 1u);
  ASSERT_TRUE(Stored().has_value());
  EXPECT_EQ(Stored()->holder, "pod-bob");
}

TEST_F(LeaseTest, AcquireOverAReleasedLeaseIsImmediateWithTheNextEpoch) {
  fake_.PutDirect(kKey, EncodeLease(SomeRecord("pod-old", "released", 7)));
  Lease bob(fake_, clock_, Opts(/*wait_for_stale=*/false), Bob());
  Status st = bob.Acquire();
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(bob.record().epoch, 8u);
  EXPECT_EQ(bob.record().renew_seq, 0u);
  EXPECT_EQ(clock_.slept(), Duration::zero());
  ASSERT_TRUE(Stored().has_value());
  EXPECT_EQ(Stored()->nonce, bob.nonce());
  EXPECT_EQ(Stored()->state, "held");
}

TEST_F(LeaseTest, ReleaseThenAnotherLeaseAcquiresAtOnce) {
  Lease alice(fake_, clock_, Opts(), Alice());
  ASSERT_TRUE(alice.Acquire().ok());
  Status released = alice.Release();
  ASSERT_TRUE(released.ok()) << released.ToString();
  EXPECT_FALSE(alice.held());
  EXPECT_FALSE(alice.lost());
  ASSERT_TRUE(Stored().has_value());
  EXPECT_EQ(Stored()->state, "released");
  EXPECT_EQ(Stored()->epoch, 1u);
  EXPECT_EQ(alice.etag(), StoredEtag());
  EXPECT_TRUE(alice.Release().ok()) << "a second release is a no-op";

  Lease bob(fake_, clock_, Opts(/*wait_for_stale=*/false), Bob());
  ASSERT_TRUE(bob.Acquire().ok());
  EXPECT_EQ(bob.record().epoch, 2u);
  EXPECT_EQ(clock_.slept(), Duration::zero());
}

TEST_F(LeaseTest, RaceOnTheInitialCreateIsReReadAndDecidedAgain) {
  // Bob's record appears between Alice's read (absent) and her If-None-Match PUT.
  HookedClient client(fake_);
  bool raced = false;
  client.on_put = [&](s3::PutRequest& req) {
    if (!raced && req.condition.kind == s3::WriteCondition::Kind::kIfNoneMatchAny) {
      raced = true;
      LeaseRecord racer = SomeRecord("pod-bob", "held", 1);
      fake_.PutDirect(kKey, EncodeLease(racer));
    }
  };
  Lease alice(client, clock_, Opts(/*wait_for_stale=*/false), Alice());
  Status st = alice.Acquire();
  ASSERT_TRUE(raced);
  ASSERT_EQ(st.code(), ErrorCode::kBusy) << st.ToString();
  EXPECT_THAT(st.message(), HasSubstr("pod-bob"));
  EXPECT_EQ(client.gets, 2) << "the lease was not read again after the 412";
  EXPECT_FALSE(alice.held());
  ASSERT_TRUE(Stored().has_value());
  EXPECT_EQ(Stored()->holder, "pod-bob") << "the racer's record was overwritten";
}

TEST_F(LeaseTest, RaceOnTheInitialCreateAgainstAReleasedRecordTakesIt) {
  HookedClient client(fake_);
  bool raced = false;
  client.on_put = [&](s3::PutRequest& req) {
    if (!raced && req.condition.kind == s3::WriteCondition::Kind::kIfNoneMatchAny) {
      raced = true;
      fake_.PutDirect(kKey, EncodeLease(SomeRecord("pod-bob", "released", 4)));
    }
  };
  Lease alice(client, clock_, Opts(/*wait_for_stale=*/false), Alice());
  Status st = alice.Acquire();
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_TRUE(raced);
  EXPECT_EQ(alice.record().epoch, 5u);
}

TEST_F(LeaseTest, AnAcquireWhosePutLandedButTimedOutTakesItsRecordAtOnce) {
  s3::FaultInjectingClient client(fake_, clock_);
  client.FailNextAfterSuccess(s3::Op::kPut, 1, s3::InjectedError(ErrorCode::kTimeout));
  Lease alice(client, clock_, Opts(/*wait_for_stale=*/false), Alice());
  Status st = alice.Acquire();
  ASSERT_TRUE(st.ok()) << "a record of ours left behind would keep every pod waiting: "
                       << st.ToString();
  EXPECT_TRUE(alice.held());
  EXPECT_EQ(alice.etag(), StoredEtag());
  EXPECT_EQ(Stored()->nonce, alice.nonce());
  EXPECT_EQ(clock_.slept(), Duration::zero());
}

TEST_F(LeaseTest, AcquireTakesBackItsOwnWriteWhoseReplyWasLost) {
  s3::FaultInjectingClient client(fake_, clock_);
  // Both the PUT and the PUT that takes it back lose their replies: the call fails...
  client.FailNextAfterSuccess(s3::Op::kPut, 2, s3::InjectedError(ErrorCode::kTimeout));
  Lease alice(client, clock_, Opts(/*wait_for_stale=*/false), Alice());
  EXPECT_EQ(alice.Acquire().code(), ErrorCode::kTimeout);
  EXPECT_FALSE(alice.held());
  ASSERT_TRUE(Stored().has_value());
  EXPECT_EQ(Stored()->nonce, alice.nonce()) << "the PUT should have landed";

  Status st = alice.Acquire();
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_TRUE(alice.held());
  EXPECT_EQ(alice.record().epoch, 1u);
  EXPECT_EQ(alice.etag(), StoredEtag());
  EXPECT_EQ(clock_.slept(), Duration::zero());
}

// --- Renew, Release, loss --------------------------------------------------------------

TEST_F(LeaseTest, RenewBumpsRenewSeqAndValidUntil) {
  Lease lease(fake_, clock_, Opts(), Alice());
  ASSERT_TRUE(lease.Acquire().ok());
  const std::string first_etag = lease.etag();
  const std::string acquired_at = lease.record().acquired_at;

  clock_.Advance(10s);
  const MonoTime renew_start = clock_.Now();
  Status st = lease.Renew();
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(lease.record().renew_seq, 1u);
  EXPECT_EQ(lease.valid_until(), renew_start + 30s);
  EXPECT_EQ(lease.next_renewal(), renew_start + 10s);
  EXPECT_NE(lease.etag(), first_etag);
  EXPECT_EQ(lease.etag(), StoredEtag());
  auto stored = Stored();
  ASSERT_TRUE(stored.has_value());
  EXPECT_EQ(stored->renew_seq, 1u);
  EXPECT_EQ(stored->epoch, 1u);
  EXPECT_EQ(stored->acquired_at, acquired_at);
  EXPECT_EQ(stored->renewed_at, "2023-11-14T22:13:30.000Z");

  ASSERT_TRUE(lease.Renew().ok());
  EXPECT_EQ(Stored()->renew_seq, 2u);
}

TEST_F(LeaseTest, ValidUntilCountsFromTheStartOfThePut) {
  HookedClient client(fake_);
  client.on_put = [&](s3::PutRequest&) { clock_.Advance(3s); };  // A slow PUT.
  Lease lease(client, clock_, Opts(), Alice());
  const MonoTime start = clock_.Now();
  ASSERT_TRUE(lease.Acquire().ok());
  EXPECT_EQ(lease.valid_until(), start + 30s);
  EXPECT_EQ(clock_.Now(), start + 3s);
}

TEST_F(LeaseTest, LeaseOverwrittenBySomeoneElseMakesRenewLose) {
  Lease lease(fake_, clock_, Opts(), Alice());
  ASSERT_TRUE(lease.Acquire().ok());
  fake_.PutDirect(kKey, EncodeLease(SomeRecord("pod-bob", "held", 2)));  // No condition.

  Status st = lease.Renew();
  ASSERT_EQ(st.code(), ErrorCode::kReadOnly) << st.ToString();
  EXPECT_THAT(st.message(), HasSubstr("lease was lost"));
  EXPECT_TRUE(lease.lost());
  EXPECT_FALSE(lease.held());
  EXPECT_THAT(lease.lost_reason(), HasSubstr("pod-bob"));
  EXPECT_THAT(lease.lost_reason(), HasSubstr("PreconditionFailed"));
  // Fenced for good: nothing further is written.
  const uint64_t puts = fake_.calls(s3::Op::kPut);
  EXPECT_EQ(lease.Renew().code(), ErrorCode::kReadOnly);
  EXPECT_EQ(lease.Release().code(), ErrorCode::kReadOnly);
  EXPECT_EQ(fake_.calls(s3::Op::kPut), puts);
  EXPECT_EQ(Stored()->holder, "pod-bob");
}

TEST_F(LeaseTest, DeletedLeaseObjectMakesRenewLose) {
  Lease lease(fake_, clock_, Opts(), Alice());
  ASSERT_TRUE(lease.Acquire().ok());
  fake_.DeleteDirect(kKey);

  Status st = lease.Renew();
  ASSERT_EQ(st.code(), ErrorCode::kReadOnly) << st.ToString();
  EXPECT_THAT(st.message(), HasSubstr("lease was lost"));
  EXPECT_TRUE(lease.lost());
  EXPECT_THAT(lease.lost_reason(), HasSubstr("deleted"));
  EXPECT_FALSE(fake_.Exists(kKey)) << "a lost lease must not be recreated by Renew";
}

TEST_F(LeaseTest, ReleaseOfAnOverwrittenLeaseIsLost) {
  Lease lease(fake_, clock_, Opts(), Alice());
  ASSERT_TRUE(lease.Acquire().ok());
  fake_.PutDirect(kKey, EncodeLease(SomeRecord("pod-bob", "held", 2)));
  Status st = lease.Release();
  EXPECT_EQ(st.code(), ErrorCode::kReadOnly) << st.ToString();
  EXPECT_TRUE(lease.lost());
  EXPECT_EQ(Stored()->state, "held") << "someone else's lease was released";
}

TEST_F(LeaseTest, TransientRenewFailureIsReturnedAndNotALoss) {
  s3::FaultInjectingClient client(fake_, clock_);
  Lease lease(client, clock_, Opts(), Alice());
  ASSERT_TRUE(lease.Acquire().ok());
  const MonoTime valid_until = lease.valid_until();

  client.FailNext(s3::Op::kPut, 1, s3::InjectedError(ErrorCode::kServerError));
  Status st = lease.Renew();
  EXPECT_EQ(st.code(), ErrorCode::kServerError) << st.ToString();
  EXPECT_FALSE(lease.lost());
  EXPECT_TRUE(lease.held());
  EXPECT_EQ(lease.valid_until(), valid_until);

  clock_.Advance(2s);
  ASSERT_TRUE(lease.Renew().ok());
  EXPECT_EQ(lease.valid_until(), valid_until + 2s);

  lease.MarkLost("no renewal succeeded before the deadline");
  EXPECT_TRUE(lease.lost());
  EXPECT_FALSE(lease.held());
  EXPECT_EQ(lease.lost_reason(), "no renewal succeeded before the deadline");
  EXPECT_EQ(lease.Renew().code(), ErrorCode::kReadOnly);
}

TEST_F(LeaseTest, ARenewalThatHangsLeavesTimeForAnotherBeforeAShortLeaseRunsOut) {
  s3::FaultInjectingClient client(fake_, clock_);
  LeaseOptions o = Opts();
  o.ttl = 15s;  // The request timeout stays the default 10 s.
  Lease lease(client, clock_, o, Alice());
  ASSERT_TRUE(lease.Acquire().ok());
  const MonoTime valid_until = lease.valid_until();
  clock_.SleepUntil(lease.next_renewal());

  // The server takes the PUT and never answers: the call ends at its deadline.
  client.DelayNext(s3::Op::kPut, 1, 60s);
  Status st = lease.Renew();
  ASSERT_EQ(st.code(), ErrorCode::kTimeout) << st.ToString();
  // A sixth of the TTL (2.5 s), not 10 s: the lease has not run out, and the next renewal
  // still fits in what is left.
  EXPECT_LE(clock_.Now() + 2500ms, valid_until);
  const MonoTime retry = clock_.Now();
  ASSERT_TRUE(lease.Renew().ok());
  EXPECT_EQ(lease.valid_until(), retry + 15s);
  EXPECT_FALSE(lease.lost());
}

TEST_F(LeaseTest, RenewWhoseReplyWasLostIsNotALoss) {
  s3::FaultInjectingClient client(fake_, clock_);
  Lease lease(client, clock_, Opts(), Alice());
  ASSERT_TRUE(lease.Acquire().ok());

  client.FailNextAfterSuccess(s3::Op::kPut, 1, s3::InjectedError(ErrorCode::kTimeout));
  EXPECT_EQ(lease.Renew().code(), ErrorCode::kTimeout);  // Landed; we do not know it.
  EXPECT_EQ(Stored()->renew_seq, 1u);

  Status st = lease.Renew();  // 412 on our stale ETag, but the record is ours.
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_FALSE(lease.lost());
  EXPECT_TRUE(lease.held());
  EXPECT_EQ(Stored()->renew_seq, 2u);
  EXPECT_EQ(lease.etag(), StoredEtag());
}

// A renewal refused (412) while the lease cannot be read to see by whom (a network blip):
// the refusal may be our own landed write, so it is a retryable failure, not a loss.
TEST_F(LeaseTest, ARefusedRenewalWhoseCheckFailsIsRetriedNotALoss) {
  s3::FaultInjectingClient client(fake_, clock_);
  Lease lease(client, clock_, Opts(), Alice());
  ASSERT_TRUE(lease.Acquire().ok());

  client.FailNextAfterSuccess(s3::Op::kPut, 1, s3::InjectedError(ErrorCode::kTimeout));
  EXPECT_EQ(lease.Renew().code(), ErrorCode::kTimeout);  // Landed; we do not know it.
  client.FailNext(s3::Op::kGet, 1, s3::InjectedError(ErrorCode::kTimeout));
  Status st = lease.Renew();  // 412 on our stale ETag, and the check times out.
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.code(), ErrorCode::kReadOnly) << st.ToString();
  EXPECT_TRUE(st.retryable()) << st.ToString();
  EXPECT_FALSE(lease.lost()) << lease.lost_reason();
  EXPECT_TRUE(lease.held());

  st = lease.Renew();  // The blip is over: the record is ours, taken back.
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_FALSE(lease.lost());
  EXPECT_EQ(Stored()->renew_seq, 2u);
  EXPECT_EQ(lease.etag(), StoredEtag());
}

TEST_F(LeaseTest, ReleaseWhoseReplyWasLostStillReleases) {
  s3::FaultInjectingClient client(fake_, clock_);
  Lease lease(client, clock_, Opts(), Alice());
  ASSERT_TRUE(lease.Acquire().ok());
  ASSERT_TRUE(lease.Renew().ok());

  // The renew landed but its reply was lost, so our ETag is stale when we release.
  client.FailNextAfterSuccess(s3::Op::kPut, 1, s3::InjectedError(ErrorCode::kTimeout));
  EXPECT_EQ(lease.Renew().code(), ErrorCode::kTimeout);
  Status st = lease.Release();
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_FALSE(lease.held());
  EXPECT_FALSE(lease.lost());
  EXPECT_EQ(Stored()->state, "released");
}

TEST_F(LeaseTest, EveryCallCarriesTheRequestTimeout) {
  s3::FaultInjectingClient client(fake_, clock_);
  // A Get that stalls past the 10s deadline comes back as kTimeout.
  client.DelayNext(s3::Op::kGet, 1, 11s);
  Lease lease(client, clock_, Opts(), Alice());
  Status st = lease.Acquire();
  EXPECT_EQ(st.code(), ErrorCode::kTimeout) << st.ToString();
  EXPECT_FALSE(lease.held());
}

}  // namespace
}  // namespace bucketfs::mountd
