// CurlObjectClient: builds S3 requests, signs them, retries them, and parses the replies.
// The HTTP mechanics (connection pool, event loop) live in curl_transport.cc.
#include "s3/curl_client.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <mutex>

#include "common/log.h"
#include "common/metrics.h"
#include "s3/crypto.h"
#include "s3/http_transport.h"
#include "s3/sigv4.h"
#include "s3/uri.h"
#include "s3/xml.h"

namespace bucketfs::s3 {

// How long a copy or a multipart completion may go without a byte before it is taken for a
// dead connection: the server may say nothing until it has copied or assembled the object.
constexpr std::chrono::milliseconds kSilentServerWork = std::chrono::minutes(5);
namespace {

constexpr int kMaxPresignSeconds = 7 * 24 * 3600;

// What the metrics endpoint shows of the client (common/metrics.h): every attempt, its
// status and latency, by S3 operation.
struct ClientMetrics {
  Family<Counter>& requests = Metrics().CounterFamily(
      "bucketfs_s3_requests_total",
      "HTTP requests sent to S3 (every attempt), by S3 operation and HTTP status, or the "
      "client-side error when no status came back",
      {"operation", "status"});
  Family<Counter>& retries = Metrics().CounterFamily(
      "bucketfs_s3_retries_total", "Attempts after the first, by S3 operation", {"operation"});
  Family<Counter>& failures = Metrics().CounterFamily(
      "bucketfs_s3_failures_total",
      "S3 calls that failed for good (after any retries), by S3 operation and error",
      {"operation", "error"});
  Family<Histogram>& duration = Metrics().HistogramFamily(
      "bucketfs_s3_request_duration_seconds",
      "Time of one HTTP attempt, from sending to the end of the reply, by S3 operation",
      {"operation"});
  Counter& bytes_sent =
      Metrics()
          .CounterFamily("bucketfs_s3_sent_bytes_total",
                         "Request body bytes of successful S3 requests (object data uploaded)")
          .Get();
  Counter& bytes_received =
      Metrics()
          .CounterFamily("bucketfs_s3_received_bytes_total",
                         "Reply body bytes of successful S3 requests (object data downloaded)")
          .Get();
};

ClientMetrics& TheMetrics() {
  static ClientMetrics metrics;
  return metrics;
}

// One S3 operation before signing: what to send and where the reply goes.
struct Operation {
  std::string name;  // "GET", "PutObject", … for messages.
  std::string method;
  std::string key;  // Empty for bucket-level requests.
  bool bucket_level = false;
  QueryParams query;
  HeaderList headers;  // Lower-case names; all are signed.
  std::span<const char> body;
  std::string owned_body;  // For bodies we build (XML).
  std::span<char> response_buffer;
  uint64_t bytes_moved = 0;  // Scales the default deadline.
  // CopyObject, UploadPartCopy and CompleteMultipartUpload may fail after the 200 OK has
  // been sent, with an <Error> body: such a reply is that error, retried like any other.
  // They are also the calls the server may answer only once its work is done, so they are
  // cut as stalled only after kSilentServerWork, not ClientConfig::stall_timeout.
  bool error_may_follow_ok = false;
};

Operation ObjectOp(std::string name, std::string method, std::string key) {
  Operation op;
  op.name = std::move(name);
  op.method = std::move(method);
  op.key = std::move(key);
  return op;
}

Operation BucketOp(std::string name, std::string method) {
  Operation op;
  op.name = std::move(name);
  op.method = std::move(method);
  op.bucket_level = true;
  return op;
}

std::string QuoteEtag(const std::string& etag) {
  if (etag.size() >= 2 && etag.front() == '"') return etag;
  return "\"" + etag + "\"";
}

std::string Describe(const Operation& op) {
  return op.key.empty() ? op.name : fmt::format("{} {}", op.name, op.key);
}

bool ParseUint(std::string_view text, uint64_t* out) {
  if (text.empty()) return false;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), *out);
  return ec == std::errc() && p == text.data() + text.size();
}

// Write preconditions carry the ETag without quotes: Ceph RGW compares the header with
// the unquoted ETag byte for byte (a quoted value never matches), and AWS S3 and MinIO
// accept the unquoted form too. Read preconditions (GET/HEAD If-Match) stay quoted, as
// HTTP specifies and every server accepts.
void AddCondition(const WriteCondition& c, HeaderList* headers) {
  if (c.kind == WriteCondition::Kind::kIfNoneMatchAny) headers->emplace_back("if-none-match", "*");
  if (c.kind == WriteCondition::Kind::kIfMatch) {
    std::string etag = c.etag;
    if (etag.size() >= 2 && etag.front() == '"' && etag.back() == '"') {
      etag = etag.substr(1, etag.size() - 2);
    }
    headers->emplace_back("if-match", etag);
  }
}

void AddMetadata(const UserMetadata& md, HeaderList* headers) {
  for (const auto& [k, v] : md) headers->emplace_back("x-amz-meta-" + k, v);
}

Status CheckPartNumber(std::string_view op, const std::string& key, int part_number) {
  if (part_number >= 1 && part_number <= kMaxParts) return Status::Ok();
  return Status(ErrorCode::kInvalidArgument,
                fmt::format("{} {}: part number {} outside 1..{}", op, key, part_number,
                            kMaxParts));
}

// Requests addressed to a multipart upload id: a 404 means the upload is gone. S3 says
// NoSuchUpload; Ceph RGW says NoSuchKey for some of them (ListParts). One code for callers.
Status UploadGone(Status s, const std::string& upload_id) {
  if (s.code() != ErrorCode::kNotFound) return s;
  Status gone(ErrorCode::kNoSuchUpload,
              fmt::format("{} (upload {} no longer exists: completed or aborted)", s.message(),
                          upload_id));
  gone.WithServerDetails(s.http_status(), s.server_code(), s.request_id());
  return gone;
}

}  // namespace

class CurlObjectClient::Impl {
 public:
  Impl(ClientConfig config, Endpoint endpoint, std::shared_ptr<CredentialsProvider> creds,
       Clock& clock)
      : config_(std::move(config)),
        endpoint_(std::move(endpoint)),
        creds_(std::move(creds)),
        clock_(clock),
        transport_(TransportOptions{config_.max_connections, config_.ca_bundle,
                                    config_.verify_tls, config_.user_agent}),
        log_(Logger("s3")) {
    bool aws = endpoint_.host.ends_with("amazonaws.com");
    virtual_host_ = config_.addressing == Addressing::kVirtualHost ||
                    (config_.addressing == Addressing::kAuto && aws &&
                     config_.bucket.find('.') == std::string::npos);
  }

  const ClientConfig& config() const { return config_; }

  // Host header value and the canonical (encoded) path of a request.
  std::pair<std::string, std::string> Target(const Operation& op) const {
    std::string key_path = op.bucket_level ? "" : UriEncode(op.key, /*encode_slash=*/false);
    if (virtual_host_) {
      Endpoint ep = endpoint_;
      ep.host = config_.bucket + "." + ep.host;
      return {ep.HostHeader(), "/" + key_path};
    }
    std::string path = "/" + UriEncode(config_.bucket, true);
    if (!op.bucket_level) path += "/" + key_path;
    return {endpoint_.HostHeader(), path};
  }

  std::string BaseUrl(const std::string& host) const {
    return fmt::format("{}://{}", endpoint_.scheme, host);
  }

  // Sends `op` until it succeeds, fails for good, or the deadline passes.
  Result<HttpResponse> Execute(Operation& op, const CallOptions& opts) {
    if (!op.owned_body.empty()) op.body = {op.owned_body.data(), op.owned_body.size()};
    MonoTime start = clock_.Now();
    MonoTime deadline = opts.deadline.value_or(
        start + config_.request_timeout +
        std::chrono::milliseconds(static_cast<int64_t>(
            1000.0 * static_cast<double>(op.bytes_moved) / config_.min_throughput_bytes_per_sec)));

    std::string payload_hash = kEmptyPayloadSha256;
    if (!op.body.empty()) {
      payload_hash = config_.payload_signing == PayloadSigning::kSha256
                         ? HexLower(Sha256(op.body))
                         : std::string(kUnsignedPayload);
    }
    auto [host, path] = Target(op);
    std::string url = BaseUrl(host) + path;
    std::string query = UrlQuery(op.query);
    if (!query.empty()) url += "?" + query;

    Status last;
    bool refreshed_credentials = false;  // At most one immediate retry with reloaded ones.
    for (int attempt = 1;; ++attempt) {
      if (opts.guard) {
        // Not even a retry is sent once the guard says no (a write fence that closed).
        if (Status allowed = opts.guard(); !allowed.ok()) {
          failures_.fetch_add(1, std::memory_order_relaxed);
          return allowed.Annotate(Describe(op));
        }
      }
      MonoTime now = clock_.Now();
      if (now >= deadline) {
        failures_.fetch_add(1, std::memory_order_relaxed);
        TheMetrics().failures.With({op.name, std::string(ErrorCodeName(ErrorCode::kTimeout))}).Add();
        return Status(ErrorCode::kTimeout,
                      fmt::format("{}: deadline of {} ms passed after {} attempt(s){}",
                                  Describe(op), ToMs(deadline - start), attempt - 1,
                                  last.ok() ? "" : "; last error: " + last.ToString()),
                      true);
      }
      bool abandoned = false;  // By the guard, in flight.
      Credentials signed_with;
      Result<HttpResponse> r = Attempt(op, url, host, path, payload_hash, deadline - now,
                                       opts.guard, &abandoned, &signed_with);
      const Duration took = clock_.Now() - now;
      requests_.fetch_add(1, std::memory_order_relaxed);
      if (attempt > 1) retries_.fetch_add(1, std::memory_order_relaxed);
      ClientMetrics& metrics = TheMetrics();
      metrics
          .requests.With({op.name, r.ok() ? std::to_string(r->status)
                                          : std::string(ErrorCodeName(r.status().code()))})
          .Add();
      if (attempt > 1) metrics.retries.With({op.name}).Add();
      metrics.duration.With({op.name}).Observe(std::chrono::duration<double>(took).count());
      Status status = r.ok() ? StatusOf(op, *r) : r.status();
      const std::string request_id = r.ok() ? r->Header("x-amz-request-id") : std::string();
      if (status.ok()) {
        const uint64_t received = r->buffer_bytes + r->body.size();
        bytes_sent_.fetch_add(op.body.size(), std::memory_order_relaxed);
        bytes_received_.fetch_add(received, std::memory_order_relaxed);
        metrics.bytes_sent.Add(op.body.size());
        metrics.bytes_received.Add(received);
        LogEvent(*log_, spdlog::level::debug, "S3 request done",
                 {{"op", op.name}, {"key", op.key}, {"status", r->status},
                  {"request_id", request_id}, {"latency_ms", ToMs(took)}, {"attempt", attempt},
                  {"bytes_sent", op.body.size()}, {"bytes_received", received}});
        return r;
      }
      if (opts.guard) {
        // Abandoned in flight (its status is the guard's), or failed while the guard
        // closed: say why it stopped, and send no retry.
        Status allowed = abandoned ? status : opts.guard();
        if (!allowed.ok()) {
          failures_.fetch_add(1, std::memory_order_relaxed);
          return allowed.Annotate(Describe(op));
        }
      }
      if (!refreshed_credentials && MayBeStaleCredentials(status) &&
          CredentialsChangedSince(signed_with)) {
        // Rotated under this request (the file provider looks at most once a second): the
        // server refused what it was signed with, so send it once more with the new ones
        // rather than fail a read or an upload for a rotation that already happened.
        refreshed_credentials = true;
        LogEvent(*log_, spdlog::level::info,
                 "S3 request refused with credentials that have since been rotated; retrying "
                 "with the new ones",
                 {{"op", op.name}, {"key", op.key}, {"error", status.ToString()},
                  {"request_id", request_id}, {"source", creds_->Describe()}});
        last = std::move(status);
        continue;
      }
      Duration backoff = config_.retry.Backoff(attempt, status, JitterRng());
      if (!config_.retry.ShouldRetry(attempt, status, clock_.Now(), backoff, deadline)) {
        failures_.fetch_add(1, std::memory_order_relaxed);
        metrics.failures.With({op.name, std::string(ErrorCodeName(status.code()))}).Add();
        if (status.retryable() && attempt > 1) {
          status.Annotate(fmt::format("after {} attempts", attempt));
        }
        LogEvent(*log_, spdlog::level::debug, "S3 request failed",
                 {{"op", op.name}, {"key", op.key}, {"error", status.ToString()},
                  {"request_id", request_id}, {"latency_ms", ToMs(took)}, {"attempt", attempt}});
        return status;
      }
      LogEvent(*log_, spdlog::level::debug, "S3 request failed; retrying",
               {{"op", op.name}, {"key", op.key}, {"error", status.ToString()},
                {"request_id", request_id}, {"latency_ms", ToMs(took)}, {"attempt", attempt},
                {"retry_in_ms", ToMs(backoff)}});
      last = std::move(status);
      clock_.SleepFor(backoff);
    }
  }

  Result<std::string> Presign(const std::string& key, int ttl_seconds) {
    if (ttl_seconds < 1 || ttl_seconds > kMaxPresignSeconds) {
      return Status(ErrorCode::kInvalidArgument,
                    fmt::format("TTL {} s is outside 1..{} s (S3 allows presigned URLs for at "
                                "most 7 days)",
                                ttl_seconds, kMaxPresignSeconds));
    }
    BFS_ASSIGN_OR_RETURN(Credentials creds, creds_->Current());
    auto [host, path] = Target(ObjectOp("GetObject", "GET", key));
    return PresignUrl("GET", BaseUrl(host), host, path, {}, creds,
                      SigningScope{config_.region, "s3", clock_.WallNow()}, ttl_seconds);
  }

  ClientStats stats() const {
    return ClientStats{requests_.load(), retries_.load(), failures_.load(), bytes_sent_.load(),
                       bytes_received_.load()};
  }

 private:
  static int64_t ToMs(Duration d) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
  }

  // The URL's query: like the canonical one, but a bare key ("uploads") stays bare.
  static std::string UrlQuery(const QueryParams& query) {
    std::string out;
    for (const auto& [name, value] : query) {
      if (!out.empty()) out += '&';
      out += UriEncode(name, true);
      if (!value.empty()) out += "=" + UriEncode(value, true);
    }
    return out;
  }

  // Backoff jitter: one generator per thread, so retries never contend on a lock.
  static std::mt19937_64& JitterRng() {
    thread_local std::mt19937_64 rng(std::random_device{}());
    return rng;
  }

  Result<HttpResponse> Attempt(const Operation& op, const std::string& url,
                               const std::string& host, const std::string& path,
                               const std::string& payload_hash, Duration remaining,
                               const std::function<Status()>& guard, bool* abandoned,
                               Credentials* signed_with) {
    BFS_ASSIGN_OR_RETURN(Credentials creds, creds_->Current());
    *signed_with = creds;
    SigningInput in;
    in.method = op.method;
    in.canonical_uri = path;
    in.query = op.query;
    in.headers = op.headers;
    in.headers.emplace_back("host", host);
    in.payload_hash = payload_hash;
    SignedRequest signed_req =
        SignRequest(in, creds, SigningScope{config_.region, "s3", clock_.WallNow()});

    HttpRequest req;
    req.method = op.method;
    req.url = url;
    req.headers = op.headers;
    req.headers.insert(req.headers.end(), signed_req.headers_to_add.begin(),
                       signed_req.headers_to_add.end());
    req.body = op.body;
    req.response_buffer = op.response_buffer;
    auto remaining_ms = std::chrono::duration_cast<std::chrono::milliseconds>(remaining);
    req.timeout = std::max(std::chrono::milliseconds(1), remaining_ms);
    req.connect_timeout = std::min(config_.connect_timeout, req.timeout);
    // A copy or a completion may be silent while the server works (RGW and AWS send
    // whitespace as they go, other servers nothing until done): minutes of silence, not the
    // stall timeout's seconds, before it is taken for a dead connection and sent again.
    req.stall_timeout =
        op.error_may_follow_ok
            ? std::min<std::chrono::milliseconds>(
                  req.timeout, std::max<std::chrono::milliseconds>(config_.stall_timeout,
                                                                   kSilentServerWork))
            : config_.stall_timeout;
    // Abandoned in flight: the guard's reason is the call's error (the fence may open again
    // before anyone asks, and "cancelled" would say nothing true).
    Status stopped;
    if (guard) {
      req.keep_going = [&guard, &stopped] {
        Status allowed = guard();
        if (allowed.ok()) return true;
        stopped = std::move(allowed);
        return false;
      };
    }
    Result<HttpResponse> response = transport_.Perform(req);
    if (!response.ok() && !stopped.ok()) {
      *abandoned = true;
      return stopped;
    }
    return response;
  }

  // A refusal that newer credentials could turn into a success. A HEAD's 403 has no body
  // to say whether the signature, the token or the policy was refused, hence kAccessDenied.
  static bool MayBeStaleCredentials(const Status& s) {
    // An AccessDenied the server named is its policy's answer, not the key's.
    return s.code() == ErrorCode::kInvalidCredentials ||
           s.code() == ErrorCode::kExpiredCredentials ||
           (s.code() == ErrorCode::kAccessDenied && s.server_code().empty());
  }

  // Re-reads the provider's source now (not at its next periodic look) and says whether it
  // now holds other credentials than `used`. A reload that fails keeps the old ones: false.
  bool CredentialsChangedSince(const Credentials& used) {
    if (used.empty() || !creds_->Reload().ok()) return false;
    Result<Credentials> now = creds_->Current();
    return now.ok() && !(*now == used);
  }

  // Turns an HTTP reply into OK or the server's error.
  Status StatusOf(const Operation& op, const HttpResponse& r) const {
    ServerError err;
    if (r.status >= 200 && r.status < 300) {
      if (!op.error_may_follow_ok || !ParseErrorBody(r.body, &err)) return Status::Ok();
    } else {
      ParseErrorBody(r.body, &err);
    }
    if (err.request_id.empty()) err.request_id = r.Header("x-amz-request-id");
    if (err.code.empty() && r.status >= 300) ExplainBodiless(r, &err);
    return ErrorFromServer(r.status, err, Describe(op));
  }

  // A refusal without an error body (a HEAD's) says only its status; two headers can still
  // say what the body would have: the bucket's region, and the server's clock.
  void ExplainBodiless(const HttpResponse& r, ServerError* err) const {
    const std::string& region = r.Header("x-amz-bucket-region");
    if (!region.empty() && region != config_.region &&
        (r.status == 301 || r.status == 400 || r.status == 403)) {
      err->code = "PermanentRedirect";
      err->message = fmt::format("the bucket is in region {}, not {}", region, config_.region);
      return;
    }
    WallTime server_time;
    if (r.status == 403 && ParseHttpDate(r.Header("date"), &server_time)) {
      // S3 refuses signatures more than 15 minutes off its clock.
      const auto skew =
          std::chrono::duration_cast<std::chrono::seconds>(server_time - clock_.WallNow());
      if (skew > std::chrono::minutes(15) || skew < -std::chrono::minutes(15)) {
        err->code = "RequestTimeTooSkewed";
        err->message = fmt::format("the server's clock ({}) is {} s {} this host's",
                                   r.Header("date"), std::abs(skew.count()),
                                   skew.count() > 0 ? "ahead of" : "behind");
      }
    }
  }

  const ClientConfig config_;
  const Endpoint endpoint_;
  std::shared_ptr<CredentialsProvider> creds_;
  Clock& clock_;
  HttpTransport transport_;
  std::shared_ptr<spdlog::logger> log_;
  bool virtual_host_ = false;
  std::atomic<uint64_t> requests_{0}, retries_{0}, failures_{0}, bytes_sent_{0},
      bytes_received_{0};
};

namespace {

// Fills what HEAD and GET share from the reply headers.
Status ParseObjectHeaders(const HttpResponse& r, const std::string& key, ObjectInfo* info) {
  info->key = key;
  info->etag = UnquoteEtag(r.Header("etag"));
  info->content_type = r.Header("content-type");
  if (const auto& lm = r.Header("last-modified"); !lm.empty()) {
    ParseHttpDate(lm, &info->last_modified);
  }
  for (const auto& [name, value] : r.headers) {
    if (name.rfind("x-amz-meta-", 0) == 0) info->metadata[name.substr(11)] = value;
  }
  const std::string& length = r.Header("content-length");
  if (!ParseUint(length, &info->size)) {
    return Status(ErrorCode::kMalformedResponse,
                  fmt::format("{}: reply has no valid Content-Length ('{}')", key, length));
  }
  return Status::Ok();
}

// The object's total size from a 206 reply's "Content-Range: bytes FIRST-LAST/TOTAL", once
// the reply is checked to hold exactly the bytes asked for: the first byte asked, every byte
// of the range that the object has, and as many as Content-Length says. Another range would
// put other bytes at the offset the caller asked for, in every cache that keeps them.
Result<uint64_t> CheckContentRange(const HttpResponse& r, const GetRequest& req,
                                   uint64_t body_length) {
  const std::string& cr = r.Header("content-range");
  const auto bad = [&](std::string_view why) {
    return Status(ErrorCode::kMalformedResponse,
                  fmt::format("GET {}: Content-Range '{}' {}", req.key, cr, why));
  };
  constexpr std::string_view kUnit = "bytes ";
  const auto dash = cr.find('-');
  const auto slash = cr.rfind('/');
  uint64_t first = 0, last = 0, total = 0;
  if (cr.rfind(kUnit, 0) != 0 || dash == std::string::npos || slash == std::string::npos ||
      dash > slash || !ParseUint(cr.substr(kUnit.size(), dash - kUnit.size()), &first) ||
      !ParseUint(cr.substr(dash + 1, slash - dash - 1), &last) ||
      !ParseUint(cr.substr(slash + 1), &total) || last < first || last >= total) {
    return bad("is not 'bytes FIRST-LAST/TOTAL'");
  }
  if (last - first + 1 != body_length) {
    return bad(fmt::format("does not match the {} bytes of the body", body_length));
  }
  if (!req.range) return total;  // Not asked for a range: the body is what it says it is.
  const uint64_t want_end = std::min(req.range->offset + req.range->length, total);
  if (first != req.range->offset || last + 1 != want_end) {
    return bad(fmt::format("is not the range asked for (bytes {}-{})", req.range->offset,
                           req.range->offset + req.range->length - 1));
  }
  return total;
}

}  // namespace

Result<std::unique_ptr<CurlObjectClient>> CurlObjectClient::Create(
    ClientConfig config, std::shared_ptr<CredentialsProvider> credentials, Clock& clock) {
  if (config.bucket.empty()) {
    return Status(ErrorCode::kInvalidArgument, "no bucket name given");
  }
  if (credentials == nullptr) {
    return Status(ErrorCode::kInvalidArgument, "no credentials provider given");
  }
  BFS_ASSIGN_OR_RETURN(Endpoint ep, ParseEndpoint(config.endpoint));
  auto impl = std::make_unique<Impl>(std::move(config), std::move(ep), std::move(credentials),
                                     clock);
  return std::unique_ptr<CurlObjectClient>(new CurlObjectClient(std::move(impl)));
}

CurlObjectClient::CurlObjectClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CurlObjectClient::~CurlObjectClient() = default;

const std::string& CurlObjectClient::bucket() const { return impl_->config().bucket; }
const ClientConfig& CurlObjectClient::config() const { return impl_->config(); }
ClientStats CurlObjectClient::stats() const { return impl_->stats(); }

Result<std::string> CurlObjectClient::PresignGet(const std::string& key, int ttl_seconds) {
  return impl_->Presign(key, ttl_seconds);
}

Result<ObjectInfo> CurlObjectClient::Head(const HeadRequest& req, const CallOptions& opts) {
  Operation op = ObjectOp("HeadObject", "HEAD", req.key);
  if (!req.if_match.empty()) op.headers.emplace_back("if-match", QuoteEtag(req.if_match));
  BFS_ASSIGN_OR_RETURN(HttpResponse r, impl_->Execute(op, opts));
  ObjectInfo info;
  BFS_RETURN_IF_ERROR(ParseObjectHeaders(r, req.key, &info));
  return info;
}

Result<GetResult> CurlObjectClient::Get(const GetRequest& req, std::span<char> buffer,
                                        const CallOptions& opts) {
  Operation op = ObjectOp("GetObject", "GET", req.key);
  if (req.range) {
    if (req.range->length == 0) {
      return Status(ErrorCode::kInvalidArgument, fmt::format("GET {}: empty range", req.key));
    }
    op.headers.emplace_back("range", fmt::format("bytes={}-{}", req.range->offset,
                                                 req.range->offset + req.range->length - 1));
  }
  if (!req.if_match.empty()) op.headers.emplace_back("if-match", QuoteEtag(req.if_match));
  // A zero-length buffer would send the body to the error string; give curl a real target.
  char empty_target = 0;
  op.response_buffer = buffer.empty() ? std::span<char>(&empty_target, 0) : buffer;
  op.bytes_moved = req.range ? req.range->length : buffer.size();
  BFS_ASSIGN_OR_RETURN(HttpResponse r, impl_->Execute(op, opts));

  GetResult out;
  BFS_RETURN_IF_ERROR(ParseObjectHeaders(r, req.key, &out.info));
  uint64_t body_length = out.info.size;
  if (r.status == 206) {
    BFS_ASSIGN_OR_RETURN(out.info.size, CheckContentRange(r, req, body_length));
  } else if (req.range && req.range->offset > 0) {
    // A server or proxy may ignore Range (HTTP allows it): the body is then the object from
    // its first byte, which must not be taken for the bytes asked for.
    return Status(ErrorCode::kMalformedResponse,
                  fmt::format("GET {} bytes {}-{}: the server answered {} with the whole object, "
                              "ignoring the Range header; a proxy in between may strip it",
                              req.key, req.range->offset,
                              req.range->offset + req.range->length - 1, r.status));
  }
  out.bytes_read = r.buffer_bytes;
  if (out.bytes_read != body_length) {
    return Status(ErrorCode::kNetwork,
                  fmt::format("GET {}: received {} of {} bytes", req.key, out.bytes_read,
                              body_length),
                  true);
  }
  return out;
}

Result<PutResult> CurlObjectClient::Put(const PutRequest& req, const CallOptions& opts) {
  Operation op = ObjectOp("PutObject", "PUT", req.key);
  op.body = req.body;
  op.bytes_moved = req.body.size();
  if (!req.content_type.empty()) op.headers.emplace_back("content-type", req.content_type);
  AddMetadata(req.metadata, &op.headers);
  AddCondition(req.condition, &op.headers);
  BFS_ASSIGN_OR_RETURN(HttpResponse r, impl_->Execute(op, opts));
  return PutResult{UnquoteEtag(r.Header("etag"))};
}

Result<PutResult> CurlObjectClient::Copy(const CopyRequest& req, const CallOptions& opts) {
  Operation op = ObjectOp("CopyObject", "PUT", req.dest_key);
  op.error_may_follow_ok = true;
  op.headers.emplace_back("x-amz-copy-source",
                          "/" + UriEncode(bucket(), true) + "/" + UriEncode(req.source_key, false));
  if (req.directive == CopyRequest::MetadataDirective::kReplace) {
    op.headers.emplace_back("x-amz-metadata-directive", "REPLACE");
    if (!req.content_type.empty()) op.headers.emplace_back("content-type", req.content_type);
    AddMetadata(req.metadata, &op.headers);
  }
  if (!req.source_if_match.empty()) {
    op.headers.emplace_back("x-amz-copy-source-if-match", QuoteEtag(req.source_if_match));
  }
  AddCondition(req.condition, &op.headers);
  BFS_ASSIGN_OR_RETURN(HttpResponse r, impl_->Execute(op, opts));
  return ParseCopyObjectResult(r.body);
}

Status CurlObjectClient::Delete(const std::string& key, const CallOptions& opts) {
  Operation op = ObjectOp("DeleteObject", "DELETE", key);
  auto r = impl_->Execute(op, opts);
  if (!r.ok() && r.status().code() != ErrorCode::kNotFound) return r.status();
  return Status::Ok();
}

Result<DeleteManyResult> CurlObjectClient::DeleteMany(const std::vector<std::string>& keys,
                                                      const CallOptions& opts) {
  if (keys.empty()) return DeleteManyResult{};
  if (keys.size() > kMaxDeleteBatch) {
    return Status(ErrorCode::kInvalidArgument,
                  fmt::format("DeleteObjects takes at most {} keys, got {}", kMaxDeleteBatch,
                              keys.size()));
  }
  // Keys XML cannot carry are deleted one by one so the rest of the batch is not refused
  // as MalformedXML.
  std::vector<std::string> batch;
  DeleteManyResult singles;
  for (const auto& key : keys) {
    if (XmlCanCarryKey(key)) {
      batch.push_back(key);
      continue;
    }
    Status s = Delete(key, opts);
    if (s.ok()) {
      singles.deleted.push_back(key);
    } else {
      // The server's own code where it gave one, as a batch's <Error> entries carry.
      singles.errors.push_back({key,
                                s.server_code().empty() ? std::string(ErrorCodeName(s.code()))
                                                        : s.server_code(),
                                s.message()});
    }
  }
  if (batch.empty()) return singles;
  Operation op = BucketOp("DeleteObjects", "POST");
  op.query = {{"delete", ""}};
  op.owned_body = BuildDeleteObjects(batch, /*quiet=*/false);
  Md5Digest md5 = Md5({op.owned_body.data(), op.owned_body.size()});
  op.headers.emplace_back("content-md5", Base64(md5));
  op.headers.emplace_back("content-type", "application/xml");
  BFS_ASSIGN_OR_RETURN(HttpResponse r, impl_->Execute(op, opts));
  BFS_ASSIGN_OR_RETURN(DeleteManyResult result, ParseDeleteResult(r.body));
  result.deleted.insert(result.deleted.end(), singles.deleted.begin(), singles.deleted.end());
  result.errors.insert(result.errors.end(), singles.errors.begin(), singles.errors.end());
  return result;
}

Result<ListPage> CurlObjectClient::List(const ListRequest& req, const CallOptions& opts) {
  Operation op = BucketOp("ListObjectsV2", "GET");
  op.query = {{"list-type", "2"}, {"encoding-type", "url"},
              {"max-keys", std::to_string(req.max_keys)}};
  if (!req.prefix.empty()) op.query.emplace_back("prefix", req.prefix);
  if (!req.delimiter.empty()) op.query.emplace_back("delimiter", req.delimiter);
  if (!req.continuation_token.empty()) {
    op.query.emplace_back("continuation-token", req.continuation_token);
  }
  if (!req.start_after.empty()) op.query.emplace_back("start-after", req.start_after);
  BFS_ASSIGN_OR_RETURN(HttpResponse r, impl_->Execute(op, opts));
  return ParseListObjectsV2(r.body);
}

Result<std::string> CurlObjectClient::CreateMultipart(const CreateMultipartRequest& req,
                                                      const CallOptions& opts) {
  Operation op = ObjectOp("CreateMultipartUpload", "POST", req.key);
  op.query = {{"uploads", ""}};
  if (!req.content_type.empty()) op.headers.emplace_back("content-type", req.content_type);
  AddMetadata(req.metadata, &op.headers);
  BFS_ASSIGN_OR_RETURN(HttpResponse r, impl_->Execute(op, opts));
  return ParseInitiateMultipartUpload(r.body);
}

Result<PartInfo> CurlObjectClient::UploadPart(const UploadPartRequest& req,
                                              const CallOptions& opts) {
  BFS_RETURN_IF_ERROR(CheckPartNumber("UploadPart", req.key, req.part_number));
  Operation op = ObjectOp("UploadPart", "PUT", req.key);
  op.query = {{"partNumber", std::to_string(req.part_number)}, {"uploadId", req.upload_id}};
  op.body = req.body;
  op.bytes_moved = req.body.size();
  auto r = impl_->Execute(op, opts);
  if (!r.ok()) return UploadGone(std::move(r).TakeStatus(), req.upload_id);
  return PartInfo{req.part_number, UnquoteEtag(r->Header("etag")), req.body.size()};
}

Result<PartInfo> CurlObjectClient::UploadPartCopy(const UploadPartCopyRequest& req,
                                                  const CallOptions& opts) {
  BFS_RETURN_IF_ERROR(CheckPartNumber("UploadPartCopy", req.key, req.part_number));
  Operation op = ObjectOp("UploadPartCopy", "PUT", req.key);
  op.error_may_follow_ok = true;
  op.query = {{"partNumber", std::to_string(req.part_number)}, {"uploadId", req.upload_id}};
  op.headers.emplace_back("x-amz-copy-source",
                          "/" + UriEncode(bucket(), true) + "/" + UriEncode(req.source_key, false));
  uint64_t size = 0;
  if (req.source_range) {
    if (req.source_range->length == 0) {
      return Status(ErrorCode::kInvalidArgument,
                    fmt::format("UploadPartCopy {}: empty source range", req.key));
    }
    op.headers.emplace_back(
        "x-amz-copy-source-range",
        fmt::format("bytes={}-{}", req.source_range->offset,
                    req.source_range->offset + req.source_range->length - 1));
    size = req.source_range->length;
  }
  if (!req.source_if_match.empty()) {
    op.headers.emplace_back("x-amz-copy-source-if-match", QuoteEtag(req.source_if_match));
  }
  BFS_ASSIGN_OR_RETURN(HttpResponse r, impl_->Execute(op, opts));
  BFS_ASSIGN_OR_RETURN(PartInfo part, ParseCopyPartResult(r.body));
  part.part_number = req.part_number;
  part.size = size;
  return part;
}

Result<PutResult> CurlObjectClient::CompleteMultipart(const CompleteMultipartRequest& req,
                                                      const CallOptions& opts) {
  Operation op = ObjectOp("CompleteMultipartUpload", "POST", req.key);
  op.error_may_follow_ok = true;
  op.query = {{"uploadId", req.upload_id}};
  op.owned_body = BuildCompleteMultipartUpload(req.parts);
  op.headers.emplace_back("content-type", "application/xml");
  AddCondition(req.condition, &op.headers);
  auto r = impl_->Execute(op, opts);
  if (!r.ok()) return UploadGone(std::move(r).TakeStatus(), req.upload_id);
  BFS_ASSIGN_OR_RETURN(PutResult done, ParseCompleteMultipartUpload(r->body));
  if (done.etag.empty()) {
    // Some servers (Ceph RGW) leave the ETag out of the reply; the object has it. The
    // upload is complete whatever this HEAD answers: if it fails, the ETag stays unknown
    // (empty), as for a server that sends none.
    auto info = Head({req.key, ""}, opts);
    if (info.ok()) done.etag = info->etag;
  }
  return done;
}

Status CurlObjectClient::AbortMultipart(const std::string& key, const std::string& upload_id,
                                        const CallOptions& opts) {
  Operation op = ObjectOp("AbortMultipartUpload", "DELETE", key);
  op.query = {{"uploadId", upload_id}};
  auto r = impl_->Execute(op, opts);
  return r.ok() ? Status::Ok() : UploadGone(std::move(r).TakeStatus(), upload_id);
}

Result<ListPartsPage> CurlObjectClient::ListParts(const ListPartsRequest& req,
                                                  const CallOptions& opts) {
  Operation op = ObjectOp("ListParts", "GET", req.key);
  op.query = {{"uploadId", req.upload_id}, {"max-parts", std::to_string(req.max_parts)}};
  if (req.part_number_marker > 0) {
    op.query.emplace_back("part-number-marker", std::to_string(req.part_number_marker));
  }
  auto r = impl_->Execute(op, opts);
  if (!r.ok()) return UploadGone(std::move(r).TakeStatus(), req.upload_id);
  return ParseListParts(r->body);
}

Result<ListUploadsPage> CurlObjectClient::ListMultipartUploads(const ListUploadsRequest& req,
                                                               const CallOptions& opts) {
  Operation op = BucketOp("ListMultipartUploads", "GET");
  op.query = {{"uploads", ""}, {"encoding-type", "url"},
              {"max-uploads", std::to_string(req.max_uploads)}};
  if (!req.prefix.empty()) op.query.emplace_back("prefix", req.prefix);
  if (!req.key_marker.empty()) op.query.emplace_back("key-marker", req.key_marker);
  if (!req.upload_id_marker.empty()) {
    op.query.emplace_back("upload-id-marker", req.upload_id_marker);
  }
  BFS_ASSIGN_OR_RETURN(HttpResponse r, impl_->Execute(op, opts));
  return ParseListMultipartUploads(r.body);
}

Status CurlObjectClient::CreateBucket(const CallOptions& opts) {
  Operation op = BucketOp("CreateBucket", "PUT");
  if (impl_->config().region != "us-east-1") {
    op.owned_body = fmt::format(
        "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
        "<LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
        impl_->config().region);
  }
  auto r = impl_->Execute(op, opts);
  return r.ok() ? Status::Ok() : r.status();
}

Status CurlObjectClient::DeleteBucket(const CallOptions& opts) {
  Operation op = BucketOp("DeleteBucket", "DELETE");
  auto r = impl_->Execute(op, opts);
  return r.ok() ? Status::Ok() : r.status();
}

}  // namespace bucketfs::s3
