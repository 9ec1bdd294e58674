// FakeObjectClient: an in-memory ObjectClient that behaves like AWS S3, for the unit tests
// of every layer above s3/ (block cache, read-ahead, writeback, filesystem, lease).
//
// Contract:
//  - Thread-safe. Object bodies are immutable and shared, so a Get copies into the caller's
//    buffer after dropping the lock, and concurrent Gets never wait on each other. Every
//    mutation is atomic: a conditional write checks its condition and installs the object
//    under one exclusive lock, so two racing If-None-Match: * Puts never both succeed.
//  - Semantics are AWS S3's, error for error (code, HTTP status and S3 error code in the
//    Status' server details, request ids "fake-<n>"). The choices that are easy to get
//    wrong:
//    * ETag: hex MD5 of the body; after CompleteMultipart hex(MD5(binary part MD5s))-N, as
//      S3 computes it. Copy gives the destination the MD5 of its body.
//    * Head/Get If-Match mismatch: kPreconditionFailed (412). Missing key: kNotFound (404).
//    * Get ranges: offset >= size is kInvalidRange (416), including every range on an
//      empty object; a range that runs past the end is clipped; length 0 is
//      kInvalidArgument (the interface requires > 0). A buffer smaller than the bytes to
//      return is kInternal and the buffer is not written.
//    * Write conditions (Put, Copy destination, CompleteMultipart): If-None-Match: * on an
//      existing key is kPreconditionFailed (412). If-Match with another ETag is
//      kPreconditionFailed (412); If-Match on a key that does not exist is kNotFound
//      (404 NoSuchKey), which is what AWS answers (S3 user guide, "Conditional writes",
//      error responses; ceph/s3-tests pins 404 NoSuchKey for PutObject and
//      CompleteMultipartUpload). Callers such as the lease must treat both as "lost".
//    * Copy: kCopy keeps the source's content type and metadata, kReplace sets the
//      request's; copying a key onto itself with kCopy is kBadRequest (400 InvalidRequest)
//      as in S3; a missing source is kNotFound; source_if_match mismatch is 412.
//    * Delete of a missing key succeeds. DeleteMany takes at most kMaxDeleteBatch keys
//      (more: kInvalidArgument) and reports every key as deleted, missing ones included.
//    * List is ListObjectsV2: keys in byte order; delimiter rolls keys up into
//      CommonPrefixes, each of which counts toward max_keys like a key; start_after is
//      used when there is no continuation token; max_keys 0 gives an empty, untruncated
//      page; above 1000 it is clamped to 1000; negative is kInvalidArgument. Continuation
//      tokens are opaque; a token this client did not make is kBadRequest.
//    * Multipart: part numbers 1..kMaxParts, else kInvalidArgument; uploading a part
//      number again replaces it. CompleteMultipart: no parts is kBadRequest
//      (MalformedXML), part numbers not strictly ascending kBadRequest (InvalidPartOrder),
//      a part that was not uploaded or whose ETag differs kBadRequest (InvalidPart), a part
//      other than the last smaller than the minimum part size kEntityTooSmall; then the
//      write condition. Parts uploaded but not listed are dropped. After Complete or Abort
//      the upload id is gone: every later call with it (a second Complete included) is
//      kNoSuchUpload, and so is a key that does not match the upload's key.
//      UploadPartCopy ranges must lie inside the source (else kInvalidRange, HTTP 400
//      InvalidArgument as S3 answers for x-amz-copy-source-range).
//    * Keys must be 1..1024 bytes (empty: kInvalidArgument; longer: kBadRequest
//      KeyTooLongError). User metadata names are lower-cased, and names plus values may
//      total at most 2 KiB (kBadRequest MetadataTooLarge). An empty content type is stored
//      as "binary/octet-stream". Last-Modified is the Clock's wall time in whole seconds.
//  - Deadlines: a call whose CallOptions::deadline is at or before Clock::Now() fails with
//    kTimeout and changes nothing; otherwise deadlines are ignored.
//  - Counters (calls per operation, request and reply body bytes) count every call made
//    through the ObjectClient interface, failed ones included; the *Direct accessors for
//    tests bypass them.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.h"
#include "common/status.h"
#include "s3/crypto.h"
#include "s3/operation.h"
#include "s3/object_client.h"

namespace bucketfs::s3 {

struct FakeObjectClientOptions {
  std::string bucket = "fake-bucket";
  // All parts of a multipart upload but the last must be at least this large. Tests of the
  // upper layers lower it to work with small parts.
  uint64_t min_part_size = kMinPartSize;
};

class FakeObjectClient final : public ObjectClient {
 public:
  FakeObjectClient();
  // `clock` must outlive the client; it stamps Last-Modified and judges deadlines.
  explicit FakeObjectClient(Clock& clock);
  explicit FakeObjectClient(FakeObjectClientOptions options, Clock& clock = RealClock());
  FakeObjectClient(const FakeObjectClient&) = delete;
  FakeObjectClient& operator=(const FakeObjectClient&) = delete;

  // --- Direct access for tests: no counters, no conditions, no deadlines. ---
  std::optional<std::string> ObjectBody(const std::string& key) const;
  std::optional<ObjectInfo> ObjectInfoDirect(const std::string& key) const;
  bool Exists(const std::string& key) const;
  // Stores an object as a single-part Put would (ETag = MD5), e.g. to play another writer
  // replacing an object under an open handle. Returns the new ETag.
  std::string PutDirect(const std::string& key, std::string_view body,
                        const UserMetadata& metadata = {}, const std::string& content_type = {});
  void DeleteDirect(const std::string& key);
  std::vector<std::string> Keys() const;  // In byte order.
  size_t PendingUploads() const;          // Multipart uploads neither completed
                                          // nor aborted.

  // --- Counters. ---
  uint64_t calls(Op op) const;
  uint64_t total_calls() const;
  uint64_t bytes_sent() const;      // Request bodies: Put and UploadPart.
  uint64_t bytes_received() const;  // Reply bodies: bytes Get wrote into buffers.
  void ResetCounters();

  // --- ObjectClient. ---
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
  using Body = std::shared_ptr<const std::string>;  // Immutable once stored.

  struct Object {
    Body body;
    std::string etag;
    WallTime last_modified{};
    std::string content_type;
    UserMetadata metadata;
  };
  struct Part {
    Body body;
    Md5Digest md5{};
    std::string etag;
  };
  struct Upload {
    std::string key;
    uint64_t seq = 0;  // Creation order; uploads of one key are listed in this order.
    WallTime initiated{};
    std::string content_type;
    UserMetadata metadata;
    std::map<int, Part> parts;
  };

  // Counts the call; kTimeout if its deadline has passed.
  Status Begin(Op op, const CallOptions& opts);
  // An error as S3 would send it: code, HTTP status, S3 error code, a request id.
  Status S3Error(ErrorCode code, int http_status, std::string_view s3_code, std::string message);
  // Write-condition check against the current object at `key` (nullptr: none).
  Status CheckCondition(const WriteCondition& cond, const std::string& key, const Object* current,
                        std::string_view op);
  Status CheckKey(const std::string& key, std::string_view op);
  Status CheckMetadata(const UserMetadata& metadata, std::string_view op, const std::string& key);
  // The upload `upload_id` for `key`, or nullptr. Requires mu_.
  Upload* FindUpload(const std::string& key, const std::string& upload_id);
  Status NoSuchUpload(std::string_view op, const std::string& key, const std::string& upload_id);
  Object MakeObject(Body body, std::string etag, std::string content_type,
                    UserMetadata metadata) const;
  static ObjectInfo InfoOf(const std::string& key, const Object& obj);

  const FakeObjectClientOptions options_;
  Clock& clock_;

  mutable std::shared_mutex mu_;
  std::map<std::string, Object> objects_;  // Guarded by mu_. Byte order.
  std::map<std::string, Upload> uploads_;  // Guarded by mu_. By upload id.
  uint64_t next_upload_seq_ = 1;           // Guarded by mu_.

  std::array<std::atomic<uint64_t>, kOpCount> calls_{};
  std::atomic<uint64_t> bytes_sent_{0};
  std::atomic<uint64_t> bytes_received_{0};
  std::atomic<uint64_t> next_request_id_{1};
};

}  // namespace bucketfs::s3
