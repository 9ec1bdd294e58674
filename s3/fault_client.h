// FaultInjectingClient: an ObjectClient that wraps another one (not owned) and makes chosen
// calls fail, stall or return damaged data, so the layers above s3/ can be tested against
// the failures real S3 produces (the pattern of leveldb's FaultInjectionTestEnv and
// mountpoint-s3's failure_client).
//
// Contract:
//  - Thread-safe. Rules may be added and removed while other threads call the client; the
//    inner client is called without any lock of this wrapper held, and a delay sleeps on
//    the injected Clock without holding a lock either.
//  - A rule names one operation (`Op`) and optionally a key prefix, and says when it fires
//    (skip the first `skip` matching calls, then the next `times` of them, or every one;
//    each eligible call fires with `probability`, drawn from an RNG seeded at construction,
//    so a run is reproducible) and what it does:
//      kFail              return `status` without calling the inner client;
//      kFailAfterSuccess  call the inner client, then return `status` whatever it answered:
//                         the request reached the server but the reply was lost (for
//                         idempotency tests: the Put/Complete did happen);
//      kShortRead (Get)   call the inner client, then report `short_read_bytes` fewer bytes;
//      kCorruptByte (Get) call the inner client, then flip the returned byte at
//                         `corrupt_offset` (clamped to the last byte returned);
//      kNone              nothing besides `delay`.
//    Any rule may also carry a `delay`, slept on the Clock before the call. If the call's
//    deadline falls inside the delay, the wrapper sleeps until the deadline and returns
//    kTimeout without calling the inner client.
//  - At most one rule fires per call: the first, in the order added, whose conditions hold.
//  - Key matching: the request key (Copy and UploadPartCopy: the source or the destination
//    key; DeleteMany: any key of the batch; List and ListMultipartUploads: the request's
//    prefix must start with the rule's prefix). An empty rule prefix matches every call.
//  - Injected statuses are annotated with the operation and key, and keep the rule status'
//    code, retryable flag and server details. InjectedError() builds realistic ones.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.h"
#include "common/status.h"
#include "s3/object_client.h"
#include "s3/operation.h"

namespace bucketfs::s3 {



// A Status like the one a real client returns for `code` after its retries: the S3 error
// code and HTTP status where there is one (kServerError: 500 InternalError, kSlowDown: 503
// SlowDown, kAccessDenied: 403 AccessDenied, kPreconditionFailed: 412, kNotFound: 404
// NoSuchKey, kConflict: 409 ConditionalRequestConflict, ...), retryable for the transient
// codes (kServerError, kSlowDown, kTimeout, kNetwork, kConflict).
Status InjectedError(ErrorCode code);

enum class FaultAction { kNone, kFail, kFailAfterSuccess, kShortRead, kCorruptByte };

struct FaultRule {
  static constexpr int kEvery = -1;

  Op op = Op::kGet;
  std::string key_prefix;  // Empty: every key.
  int skip = 0;            // Let this many matching calls through before firing.
  int times = 1;           // Fire on this many calls, then never again; kEvery: no limit.
  double probability = 1.0;
  Duration delay{};  // Slept on the wrapper's Clock before the call (any action).
  FaultAction action = FaultAction::kFail;
  Status status = InjectedError(ErrorCode::kServerError);  // kFail, kFailAfterSuccess.
  uint64_t short_read_bytes = 1;                           // kShortRead.
  uint64_t corrupt_offset = 0;                             // kCorruptByte.
};

class FaultInjectingClient final : public ObjectClient {
 public:
  using RuleId = uint64_t;

  // `inner` and `clock` must outlive this client. `seed` drives probabilistic rules.
  explicit FaultInjectingClient(ObjectClient& inner, Clock& clock = RealClock(),
                                uint64_t seed = 0x5eed);

  // Adds a rule (see the contract above) and returns its id. A kShortRead or kCorruptByte
  // rule for an operation other than kGet, times == 0 or < kEvery, skip < 0, a
  // probability outside [0, 1], or a failing rule with an OK status is a programming
  // error: the process aborts with a message.
  RuleId AddRule(FaultRule rule);
  void RemoveRule(RuleId id);
  void ClearRules();

  // Shorthands for the common rules.
  RuleId FailNext(Op op, int n, Status status, std::string key_prefix = {});
  RuleId FailAlways(Op op, Status status, std::string key_prefix = {});
  RuleId FailWithProbability(Op op, double p, Status status, std::string key_prefix = {});
  RuleId FailNextAfterSuccess(Op op, int n, Status status, std::string key_prefix = {});
  RuleId DelayNext(Op op, int n, Duration delay, std::string key_prefix = {});
  RuleId ShortReadNextGet(int n, uint64_t dropped_bytes, std::string key_prefix = {});
  RuleId CorruptNextGet(int n, uint64_t offset, std::string key_prefix = {});

  // Counters: calls that reached this wrapper, faults injected (per operation and in
  // total), and how often one rule fired.
  uint64_t calls(Op op) const;
  uint64_t injected(Op op) const;
  uint64_t injected_total() const;
  uint64_t fired(RuleId id) const;

  // ObjectClient.
  const std::string& bucket() const override;
  Result<ObjectInfo> Head(const HeadRequest& req, const CallOptions& opts = {}) override;
  Result<GetResult> Get(const GetRequest& req, std::span<char> buffer,
                        const CallOptions& opts = {}) override;
  Result<PutResult> Put(const PutRequest& req, const CallOptions& opts = {}) override;
  Result<PutResult> Copy(const CopyRequest& req, const CallOptions& opts = {}) override;
  Status Delete(const std::string& key, const CallOptions& opts = {}) override;
  Result<DeleteManyResult> DeleteMany(const std::vector<std::string>& keys,
                                      const CallOptions& opts = {}) override;
  Result<ListPage> List(const ListRequest& req, const CallOptions& opts = {}) override;
  Result<std::string> CreateMultipart(const CreateMultipartRequest& req,
                                      const CallOptions& opts = {}) override;
  Result<PartInfo> UploadPart(const UploadPartRequest& req, const CallOptions& opts = {}) override;
  Result<PartInfo> UploadPartCopy(const UploadPartCopyRequest& req,
                                  const CallOptions& opts = {}) override;
  Result<PutResult> CompleteMultipart(const CompleteMultipartRequest& req,
                                      const CallOptions& opts = {}) override;
  Status AbortMultipart(const std::string& key, const std::string& upload_id,
                        const CallOptions& opts = {}) override;
  Result<ListPartsPage> ListParts(const ListPartsRequest& req,
                                  const CallOptions& opts = {}) override;
  Result<ListUploadsPage> ListMultipartUploads(const ListUploadsRequest& req,
                                               const CallOptions& opts = {}) override;

 private:
  // What the wrapper does with one call, decided under mu_ and acted on without it.
  struct Fault {
    FaultAction action = FaultAction::kNone;
    Duration delay{};
    Status status;
    uint64_t short_read_bytes = 0;
    uint64_t corrupt_offset = 0;
  };
  struct StoredRule {
    RuleId id = 0;
    FaultRule rule;
    int64_t seen = 0;   // Matching calls so far.
    int64_t fired = 0;  // Calls it fired on.
  };

  // Counts the call and picks the first rule that fires, if any. `matches(prefix)` says
  // whether the call touches keys under a rule's prefix.
  template <typename Matcher>
  std::optional<Fault> Decide(Op op, const Matcher& matches);
  // Sleeps for the fault's delay; kTimeout if the call's deadline passes first.
  Status Sleep(const Fault& fault, const CallOptions& opts, std::string_view what);
  // Runs `inner_call` with the fault applied (delay, fail before or after the call).
  template <typename R, typename Matcher, typename F>
  R Run(Op op, std::string_view what, const Matcher& matches, const CallOptions& opts,
        F&& inner_call);

  ObjectClient& inner_;
  Clock& clock_;

  mutable std::mutex mu_;
  std::mt19937_64 rng_;                        // Guarded by mu_.
  std::vector<StoredRule> rules_;              // Guarded by mu_; in the order added.
  std::map<RuleId, uint64_t> fired_;           // Guarded by mu_; outlives RemoveRule().
  RuleId next_id_ = 1;                         // Guarded by mu_.
  std::array<uint64_t, kOpCount> calls_{};     // Guarded by mu_.
  std::array<uint64_t, kOpCount> injected_{};  // Guarded by mu_.
};

}  // namespace bucketfs::s3
