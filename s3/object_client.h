// ObjectClient: the S3 object API that every other layer of bucketfs sees.
//
// Contract:
//  - Thread-safe: any number of threads may call any method at once. Implementations are
//    the libcurl client (s3/curl_client.h), the in-memory fake (s3/fake_client.h) and a
//    fault-injecting wrapper around either (s3/fault_client.h).
//  - One client talks to one bucket; keys are object keys, raw (not URL-encoded), any bytes
//    S3 accepts.
//  - Every call has a deadline: `CallOptions::deadline`, or the client's default timeout
//    from now. Retries of transient failures (5xx, SlowDown/429, timeouts of one attempt,
//    connection resets) happen inside the call with capped exponential backoff and jitter;
//    a call never outlives its deadline by more than one connect timeout.
//  - Errors come back as Status with an ErrorCode (NotFound, PreconditionFailed, ...), the
//    server's code, message and request id. A malformed or truncated reply is
//    kMalformedResponse, never a crash.
//  - ETags are carried without surrounding quotes; implementations add them on the wire.
//  - Bodies are never copied more than needed: Get writes into the caller's buffer; Put and
//    UploadPart read from the caller's span, which must stay valid for the call.
//  - No libcurl, OpenSSL or pugixml type appears here.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/status.h"

namespace bucketfs::s3 {

// x-amz-meta-* user metadata, names lower-case and without the prefix ("mode" -> "0644").
using UserMetadata = std::map<std::string, std::string>;

struct CallOptions {
  // Absolute deadline on the monotonic clock of the client; unset = client default.
  std::optional<MonoTime> deadline;
  // What may end a call early (the write fence, cache/write_fence.h): checked before every
  // attempt, which is not sent while it fails, and polled about once a second while one is
  // in flight, which is then abandoned. The call returns its status. Unset: nothing.
  std::function<Status()> guard;
};

// A write precondition. S3 supports If-None-Match: * (create only) and If-Match: <etag>.
// A failed condition is kPreconditionFailed; If-Match on a key that does not exist is
// kNotFound (AWS answers 404 NoSuchKey there), so callers treat both as "not what I saw".
struct WriteCondition {
  enum class Kind { kNone, kIfNoneMatchAny, kIfMatch };
  Kind kind = Kind::kNone;
  std::string etag;  // For kIfMatch.

  static WriteCondition None() { return {}; }
  static WriteCondition CreateOnly() { return {Kind::kIfNoneMatchAny, {}}; }
  static WriteCondition IfMatch(std::string etag) { return {Kind::kIfMatch, std::move(etag)}; }
};

struct ObjectInfo {
  std::string key;
  uint64_t size = 0;
  std::string etag;
  WallTime last_modified{};
  std::string storage_class;  // From listings; empty from HEAD.
  std::string content_type;   // From HEAD/GET; empty from listings.
  UserMetadata metadata;      // From HEAD/GET; listings do not return it.
};

struct HeadRequest {
  std::string key;
  std::string if_match;  // Empty: unconditional.
};

struct ByteRange {
  uint64_t offset = 0;
  uint64_t length = 0;  // Must be > 0.
};

struct GetRequest {
  std::string key;
  std::optional<ByteRange> range;  // Unset: whole object.
  std::string if_match;            // Empty: unconditional. Mismatch: kPreconditionFailed.
};

struct GetResult {
  ObjectInfo info;         // info.size is the whole object's size, not the range's.
  uint64_t bytes_read = 0;  // Bytes written into the caller's buffer.
};

struct PutRequest {
  std::string key;
  std::span<const char> body;
  std::string content_type;
  UserMetadata metadata;
  WriteCondition condition;
};

struct PutResult {
  std::string etag;
};

struct CopyRequest {
  std::string source_key;
  std::string dest_key;
  // kCopy keeps the source's metadata; kReplace sets `metadata` and `content_type`.
  enum class MetadataDirective { kCopy, kReplace };
  MetadataDirective directive = MetadataDirective::kCopy;
  UserMetadata metadata;
  std::string content_type;
  // x-amz-copy-source-if-match. Ceph RGW 16 ignores it on CopyObject (see
  // docs/S3-COMPATIBILITY.md): HEAD the source first where it matters.
  std::string source_if_match;
  WriteCondition condition;  // On the destination.
};

struct DeleteError {
  std::string key;
  std::string code;
  std::string message;
};
// One key's failure in a DeleteObjects reply, as the Status a DELETE of it alone would give
// (the server code mapped as for any reply: AccessDenied is kAccessDenied).
Status DeleteErrorStatus(const DeleteError& error);

struct DeleteManyResult {
  std::vector<std::string> deleted;
  std::vector<DeleteError> errors;
};

struct ListRequest {
  std::string prefix;
  std::string delimiter;  // Usually "/" or empty.
  std::string continuation_token;
  std::string start_after;
  int max_keys = 1000;
};

struct ListPage {
  std::vector<ObjectInfo> objects;
  std::vector<std::string> common_prefixes;
  bool is_truncated = false;
  std::string next_continuation_token;
};

struct CreateMultipartRequest {
  std::string key;
  std::string content_type;
  UserMetadata metadata;
};

struct PartInfo {
  int part_number = 0;
  std::string etag;
  uint64_t size = 0;
};

struct UploadPartRequest {
  std::string key;
  std::string upload_id;
  int part_number = 0;  // 1..10000.
  std::span<const char> body;
};

struct UploadPartCopyRequest {
  std::string key;
  std::string upload_id;
  int part_number = 0;
  std::string source_key;
  std::optional<ByteRange> source_range;  // Unset: the whole source.
  std::string source_if_match;
};

struct CompleteMultipartRequest {
  std::string key;
  std::string upload_id;
  std::vector<PartInfo> parts;  // Ascending part numbers.
  WriteCondition condition;
};

struct ListPartsRequest {
  std::string key;
  std::string upload_id;
  int part_number_marker = 0;
  int max_parts = 1000;
};

struct ListPartsPage {
  std::vector<PartInfo> parts;
  bool is_truncated = false;
  int next_part_number_marker = 0;
};

struct ListUploadsRequest {
  std::string prefix;
  std::string key_marker;
  std::string upload_id_marker;
  int max_uploads = 1000;
};

struct MultipartUpload {
  std::string key;
  std::string upload_id;
  WallTime initiated{};
};

struct ListUploadsPage {
  std::vector<MultipartUpload> uploads;
  bool is_truncated = false;
  std::string next_key_marker;
  std::string next_upload_id_marker;
};

// S3's limits, shared by every implementation and by the layers that plan uploads.
inline constexpr uint64_t kMinPartSize = 5ull << 20;        // All parts but the last.
inline constexpr uint64_t kMaxPartSize = 5ull << 30;
inline constexpr int kMaxParts = 10000;
inline constexpr uint64_t kMaxSinglePutSize = 5ull << 30;
inline constexpr size_t kMaxDeleteBatch = 1000;

class ObjectClient {
 public:
  virtual ~ObjectClient() = default;

  // The bucket this client talks to.
  virtual const std::string& bucket() const = 0;

  virtual Result<ObjectInfo> Head(const HeadRequest& req, const CallOptions& opts = {}) = 0;

  // Reads the object (or req.range of it) into `buffer`, which must be at least as large as
  // the bytes that will arrive; a larger reply is kInternal, never an overflow. A range that
  // starts at or past the end is kInvalidRange; one that runs past the end is clipped.
  virtual Result<GetResult> Get(const GetRequest& req, std::span<char> buffer,
                                const CallOptions& opts = {}) = 0;

  virtual Result<PutResult> Put(const PutRequest& req, const CallOptions& opts = {}) = 0;
  virtual Result<PutResult> Copy(const CopyRequest& req, const CallOptions& opts = {}) = 0;

  // Deleting a missing key succeeds, as in S3.
  virtual Status Delete(const std::string& key, const CallOptions& opts = {}) = 0;
  // At most kMaxDeleteBatch keys; per-key failures are in the result, not the Status.
  virtual Result<DeleteManyResult> DeleteMany(const std::vector<std::string>& keys,
                                              const CallOptions& opts = {}) = 0;

  virtual Result<ListPage> List(const ListRequest& req, const CallOptions& opts = {}) = 0;

  virtual Result<std::string> CreateMultipart(const CreateMultipartRequest& req,
                                              const CallOptions& opts = {}) = 0;
  virtual Result<PartInfo> UploadPart(const UploadPartRequest& req,
                                      const CallOptions& opts = {}) = 0;
  virtual Result<PartInfo> UploadPartCopy(const UploadPartCopyRequest& req,
                                          const CallOptions& opts = {}) = 0;
  virtual Result<PutResult> CompleteMultipart(const CompleteMultipartRequest& req,
                                              const CallOptions& opts = {}) = 0;
  virtual Status AbortMultipart(const std::string& key, const std::string& upload_id,
                                const CallOptions& opts = {}) = 0;
  virtual Result<ListPartsPage> ListParts(const ListPartsRequest& req,
                                          const CallOptions& opts = {}) = 0;
  virtual Result<ListUploadsPage> ListMultipartUploads(const ListUploadsRequest& req,
                                                       const CallOptions& opts = {}) = 0;
};

}  // namespace bucketfs::s3
