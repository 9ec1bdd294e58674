#include "s3/fault_client.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <utility>

namespace bucketfs::s3 {
namespace {

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

std::string Describe(Op op, std::string_view key) { return fmt::format("{} {}", OpName(op), key); }

[[noreturn]] void BadRule(const FaultRule& rule, std::string_view why) {
  std::fprintf(stderr, "FaultInjectingClient::AddRule: invalid rule for %s: %.*s\n",
               std::string(OpName(rule.op)).c_str(), static_cast<int>(why.size()), why.data());
  std::abort();
}

}  // namespace

Status InjectedError(ErrorCode code) {
  int http = 0;
  std::string_view s3_code;
  bool retryable = false;
  switch (code) {
    case ErrorCode::kServerError:
      http = 500;
      s3_code = "InternalError";
      retryable = true;
      break;
    case ErrorCode::kSlowDown:
      http = 503;
      s3_code = "SlowDown";
      retryable = true;
      break;
    case ErrorCode::kConflict:
      http = 409;
      s3_code = "ConditionalRequestConflict";
      retryable = true;
      break;
    case ErrorCode::kTimeout:
    case ErrorCode::kNetwork:
      retryable = true;
      break;
    case ErrorCode::kAccessDenied:
      http = 403;
      s3_code = "AccessDenied";
      break;
    case ErrorCode::kInvalidCredentials:
      http = 403;
      s3_code = "SignatureDoesNotMatch";
      break;
    case ErrorCode::kExpiredCredentials:
      http = 400;
      s3_code = "ExpiredToken";
      break;
    case ErrorCode::kPreconditionFailed:
      http = 412;
      s3_code = "PreconditionFailed";
      break;
    case ErrorCode::kNotFound:
      http = 404;
      s3_code = "NoSuchKey";
      break;
    case ErrorCode::kNoSuchBucket:
      http = 404;
      s3_code = "NoSuchBucket";
      break;
    case ErrorCode::kNoSuchUpload:
      http = 404;
      s3_code = "NoSuchUpload";
      break;
    case ErrorCode::kInvalidRange:
      http = 416;
      s3_code = "InvalidRange";
      break;
    case ErrorCode::kEntityTooSmall:
      http = 400;
      s3_code = "EntityTooSmall";
      break;
    case ErrorCode::kEntityTooLarge:
      http = 400;
      s3_code = "EntityTooLarge";
      break;
    case ErrorCode::kBadDigest:
      http = 400;
      s3_code = "BadDigest";
      break;
    case ErrorCode::kNotImplemented:
      http = 501;
      s3_code = "NotImplemented";
      break;
    case ErrorCode::kBadRequest:
      http = 400;
      s3_code = "InvalidRequest";
      break;
    default:
      break;
  }
  Status status(code, fmt::format("injected fault: {}", ErrorCodeName(code)), retryable);
  if (http != 0) status.WithServerDetails(http, std::string(s3_code), "injected");
  return status;
}

FaultInjectingClient::FaultInjectingClient(ObjectClient& inner, Clock& clock, uint64_t seed)
    : inner_(inner), clock_(clock), rng_(seed) {}

// --- Rules ----------------------------------------------------------------------------

FaultInjectingClient::RuleId FaultInjectingClient::AddRule(FaultRule rule) {
  if ((rule.action == FaultAction::kShortRead || rule.action == FaultAction::kCorruptByte) &&
      rule.op != Op::kGet) {
    BadRule(rule, "short reads and corrupted bytes apply to GetObject only");
  }
  if (rule.times == 0 || rule.times < FaultRule::kEvery) {
    BadRule(rule, "times must be positive or FaultRule::kEvery");
  }
  if (rule.skip < 0) BadRule(rule, "skip must not be negative");
  if (!(rule.probability >= 0.0 && rule.probability <= 1.0)) {
    BadRule(rule, "probability must be within [0, 1]");
  }
  if ((rule.action == FaultAction::kFail || rule.action == FaultAction::kFailAfterSuccess) &&
      rule.status.ok()) {
    BadRule(rule, "a failing rule needs a non-OK status");
  }
  std::lock_guard lock(mu_);
  const RuleId id = next_id_++;
  rules_.push_back(StoredRule{id, std::move(rule)});
  fired_[id] = 0;
  return id;
}

void FaultInjectingClient::RemoveRule(RuleId id) {
  std::lock_guard lock(mu_);
  std::erase_if(rules_, [id](const StoredRule& r) { return r.id == id; });
}

void FaultInjectingClient::ClearRules() {
  std::lock_guard lock(mu_);
  rules_.clear();
}

FaultInjectingClient::RuleId FaultInjectingClient::FailNext(Op op, int n, Status status,
                                                            std::string key_prefix) {
  FaultRule rule;
  rule.op = op;
  rule.key_prefix = std::move(key_prefix);
  rule.times = n;
  rule.status = std::move(status);
  return AddRule(std::move(rule));
}

FaultInjectingClient::RuleId FaultInjectingClient::FailAlways(Op op, Status status,
                                                              std::string key_prefix) {
  return FailNext(op, FaultRule::kEvery, std::move(status), std::move(key_prefix));
}

FaultInjectingClient::RuleId FaultInjectingClient::FailWithProbability(Op op, double p,
                                                                       Status status,
                                                                       std::string key_prefix) {
  FaultRule rule;
  rule.op = op;
  rule.key_prefix = std::move(key_prefix);
  rule.times = FaultRule::kEvery;
  rule.probability = p;
  rule.status = std::move(status);
  return AddRule(std::move(rule));
}

FaultInjectingClient::RuleId FaultInjectingClient::FailNextAfterSuccess(Op op, int n, Status status,
                                                                        std::string key_prefix) {
  FaultRule rule;
  rule.op = op;
  rule.key_prefix = std::move(key_prefix);
  rule.times = n;
  rule.action = FaultAction::kFailAfterSuccess;
  rule.status = std::move(status);
  return AddRule(std::move(rule));
}

FaultInjectingClient::RuleId FaultInjectingClient::DelayNext(Op op, int n, Duration delay,
                                                             std::string key_prefix) {
  FaultRule rule;
  rule.op = op;
  rule.key_prefix = std::move(key_prefix);
  rule.times = n;
  rule.delay = delay;
  rule.action = FaultAction::kNone;
  return AddRule(std::move(rule));
}

FaultInjectingClient::RuleId FaultInjectingClient::ShortReadNextGet(int n, uint64_t dropped_bytes,
                                                                    std::string key_prefix) {
  FaultRule rule;
  rule.op = Op::kGet;
  rule.key_prefix = std::move(key_prefix);
  rule.times = n;
  rule.action = FaultAction::kShortRead;
  rule.short_read_bytes = dropped_bytes;
  return AddRule(std::move(rule));
}

FaultInjectingClient::RuleId FaultInjectingClient::CorruptNextGet(int n, uint64_t offset,
                                                                  std::string key_prefix) {
  FaultRule rule;
  rule.op = Op::kGet;
  rule.key_prefix = std::move(key_prefix);
  rule.times = n;
  rule.action = FaultAction::kCorruptByte;
  rule.corrupt_offset = offset;
  return AddRule(std::move(rule));
}

// --- Counters -------------------------------------------------------------------------

uint64_t FaultInjectingClient::calls(Op op) const {
  std::lock_guard lock(mu_);
  return calls_[static_cast<size_t>(op)];
}

uint64_t FaultInjectingClient::injected(Op op) const {
  std::lock_guard lock(mu_);
  return injected_[static_cast<size_t>(op)];
}

uint64_t FaultInjectingClient::injected_total() const {
  std::lock_guard lock(mu_);
  uint64_t total = 0;
  for (uint64_t n : injected_) total += n;
  return total;
}

uint64_t FaultInjectingClient::fired(RuleId id) const {
  std::lock_guard lock(mu_);
  auto it = fired_.find(id);
  return it == fired_.end() ? 0 : it->second;
}

// --- Machinery ------------------------------------------------------------------------

template <typename Matcher>
std::optional<FaultInjectingClient::Fault> FaultInjectingClient::Decide(Op op,
                                                                        const Matcher& matches) {
  std::lock_guard lock(mu_);
  ++calls_[static_cast<size_t>(op)];
  for (StoredRule& r : rules_) {
    const FaultRule& rule = r.rule;
    if (rule.op != op) continue;
    if (!rule.key_prefix.empty() && !matches(std::string_view(rule.key_prefix))) continue;
    ++r.seen;
    if (r.seen <= rule.skip) continue;
    if (rule.times != FaultRule::kEvery && r.fired >= rule.times) continue;
    if (rule.probability < 1.0) {
      std::uniform_real_distribution<double> draw(0.0, 1.0);
      if (!(draw(rng_) < rule.probability)) continue;
    }
    ++r.fired;
    ++fired_[r.id];
    ++injected_[static_cast<size_t>(op)];
    Fault fault;
    fault.action = rule.action;
    fault.delay = rule.delay;
    fault.status = rule.status;
    fault.short_read_bytes = rule.short_read_bytes;
    fault.corrupt_offset = rule.corrupt_offset;
    return fault;
  }
  return std::nullopt;
}

Status FaultInjectingClient::Sleep(const Fault& fault, const CallOptions& opts,
                                   std::string_view what) {
  if (fault.delay <= Duration::zero()) return Status::Ok();
  const MonoTime wake = clock_.Now() + fault.delay;
  if (opts.deadline.has_value() && *opts.deadline < wake) {
    clock_.SleepUntil(*opts.deadline);
    return Status(
        ErrorCode::kTimeout,
        fmt::format("{}: the call's deadline passed during an injected delay of {} ms", what,
                    std::chrono::duration_cast<std::chrono::milliseconds>(fault.delay).count()));
  }
  clock_.SleepUntil(wake);
  return Status::Ok();
}

template <typename R, typename Matcher, typename F>
R FaultInjectingClient::Run(Op op, std::string_view what, const Matcher& matches,
                            const CallOptions& opts, F&& inner_call) {
  std::optional<Fault> fault = Decide(op, matches);
  if (!fault.has_value()) return inner_call();
  BFS_RETURN_IF_ERROR(Sleep(*fault, opts, what));
  switch (fault->action) {
    case FaultAction::kFail:
      return std::move(fault->status.Annotate(what));
    case FaultAction::kFailAfterSuccess:
      // The request reaches the server and takes effect; only the reply is lost.
      static_cast<void>(inner_call());
      return std::move(fault->status.Annotate(what));
    case FaultAction::kNone:
    case FaultAction::kShortRead:  // Get only; handled there.
    case FaultAction::kCorruptByte:
      break;
  }
  return inner_call();
}

// --- ObjectClient ---------------------------------------------------------------------

const std::string& FaultInjectingClient::bucket() const { return inner_.bucket(); }

Result<ObjectInfo> FaultInjectingClient::Head(const HeadRequest& req, const CallOptions& opts) {
  return Run<Result<ObjectInfo>>(
      Op::kHead, Describe(Op::kHead, req.key),
      [&](std::string_view p) { return StartsWith(req.key, p); }, opts,
      [&] { return inner_.Head(req, opts); });
}

Result<GetResult> FaultInjectingClient::Get(const GetRequest& req, std::span<char> buffer,
                                            const CallOptions& opts) {
  const std::string what = Describe(Op::kGet, req.key);
  std::optional<Fault> fault =
      Decide(Op::kGet, [&](std::string_view p) { return StartsWith(req.key, p); });
  if (!fault.has_value()) return inner_.Get(req, buffer, opts);
  BFS_RETURN_IF_ERROR(Sleep(*fault, opts, what));
  switch (fault->action) {
    case FaultAction::kNone:
      return inner_.Get(req, buffer, opts);
    case FaultAction::kFail:
      return std::move(fault->status.Annotate(what));
    case FaultAction::kFailAfterSuccess:
      static_cast<void>(inner_.Get(req, buffer, opts));
      return std::move(fault->status.Annotate(what));
    case FaultAction::kShortRead: {
      Result<GetResult> result = inner_.Get(req, buffer, opts);
      if (result.ok()) {
        result->bytes_read -= std::min(result->bytes_read, fault->short_read_bytes);
      }
      return result;
    }
    case FaultAction::kCorruptByte: {
      Result<GetResult> result = inner_.Get(req, buffer, opts);
      if (result.ok() && result->bytes_read > 0) {
        const uint64_t at = std::min(fault->corrupt_offset, result->bytes_read - 1);
        buffer[at] = static_cast<char>(~static_cast<unsigned char>(buffer[at]));
      }
      return result;
    }
  }
  return inner_.Get(req, buffer, opts);
}

Result<PutResult> FaultInjectingClient::Put(const PutRequest& req, const CallOptions& opts) {
  return Run<Result<PutResult>>(
      Op::kPut, Describe(Op::kPut, req.key),
      [&](std::string_view p) { return StartsWith(req.key, p); }, opts,
      [&] { return inner_.Put(req, opts); });
}

Result<PutResult> FaultInjectingClient::Copy(const CopyRequest& req, const CallOptions& opts) {
  return Run<Result<PutResult>>(
      Op::kCopy, fmt::format("{} {} -> {}", OpName(Op::kCopy), req.source_key, req.dest_key),
      [&](std::string_view p) {
        return StartsWith(req.source_key, p) || StartsWith(req.dest_key, p);
      },
      opts, [&] { return inner_.Copy(req, opts); });
}

Status FaultInjectingClient::Delete(const std::string& key, const CallOptions& opts) {
  return Run<Status>(
      Op::kDelete, Describe(Op::kDelete, key),
      [&](std::string_view p) { return StartsWith(key, p); }, opts,
      [&] { return inner_.Delete(key, opts); });
}

Result<DeleteManyResult> FaultInjectingClient::DeleteMany(const std::vector<std::string>& keys,
                                                          const CallOptions& opts) {
  return Run<Result<DeleteManyResult>>(
      Op::kDeleteMany, fmt::format("{} ({} keys)", OpName(Op::kDeleteMany), keys.size()),
      [&](std::string_view p) {
        return std::any_of(keys.begin(), keys.end(),
                           [p](const std::string& k) { return StartsWith(k, p); });
      },
      opts, [&] { return inner_.DeleteMany(keys, opts); });
}

Result<ListPage> FaultInjectingClient::List(const ListRequest& req, const CallOptions& opts) {
  return Run<Result<ListPage>>(
      Op::kList, Describe(Op::kList, req.prefix),
      [&](std::string_view p) { return StartsWith(req.prefix, p); }, opts,
      [&] { return inner_.List(req, opts); });
}

Result<std::string> FaultInjectingClient::CreateMultipart(const CreateMultipartRequest& req,
                                                          const CallOptions& opts) {
  return Run<Result<std::string>>(
      Op::kCreateMultipart, Describe(Op::kCreateMultipart, req.key),
      [&](std::string_view p) { return StartsWith(req.key, p); }, opts,
      [&] { return inner_.CreateMultipart(req, opts); });
}

Result<PartInfo> FaultInjectingClient::UploadPart(const UploadPartRequest& req,
                                                  const CallOptions& opts) {
  return Run<Result<PartInfo>>(
      Op::kUploadPart,
      fmt::format("{} {} part {}", OpName(Op::kUploadPart), req.key, req.part_number),
      [&](std::string_view p) { return StartsWith(req.key, p); }, opts,
      [&] { return inner_.UploadPart(req, opts); });
}

Result<PartInfo> FaultInjectingClient::UploadPartCopy(const UploadPartCopyRequest& req,
                                                      const CallOptions& opts) {
  return Run<Result<PartInfo>>(
      Op::kUploadPartCopy,
      fmt::format("{} {} part {} <- {}", OpName(Op::kUploadPartCopy), req.key, req.part_number,
                  req.source_key),
      [&](std::string_view p) { return StartsWith(req.key, p) || StartsWith(req.source_key, p); },
      opts, [&] { return inner_.UploadPartCopy(req, opts); });
}

Result<PutResult> FaultInjectingClient::CompleteMultipart(const CompleteMultipartRequest& req,
                                                          const CallOptions& opts) {
  return Run<Result<PutResult>>(
      Op::kCompleteMultipart, Describe(Op::kCompleteMultipart, req.key),
      [&](std::string_view p) { return StartsWith(req.key, p); }, opts,
      [&] { return inner_.CompleteMultipart(req, opts); });
}

Status FaultInjectingClient::AbortMultipart(const std::string& key, const std::string& upload_id,
                                            const CallOptions& opts) {
  return Run<Status>(
      Op::kAbortMultipart, Describe(Op::kAbortMultipart, key),
      [&](std::string_view p) { return StartsWith(key, p); }, opts,
      [&] { return inner_.AbortMultipart(key, upload_id, opts); });
}

Result<ListPartsPage> FaultInjectingClient::ListParts(const ListPartsRequest& req,
                                                      const CallOptions& opts) {
  return Run<Result<ListPartsPage>>(
      Op::kListParts, Describe(Op::kListParts, req.key),
      [&](std::string_view p) { return StartsWith(req.key, p); }, opts,
      [&] { return inner_.ListParts(req, opts); });
}

Result<ListUploadsPage> FaultInjectingClient::ListMultipartUploads(const ListUploadsRequest& req,
                                                                   const CallOptions& opts) {
  return Run<Result<ListUploadsPage>>(
      Op::kListMultipartUploads, Describe(Op::kListMultipartUploads, req.prefix),
      [&](std::string_view p) { return StartsWith(req.prefix, p); }, opts,
      [&] { return inner_.ListMultipartUploads(req, opts); });
}

}  // namespace bucketfs::s3
