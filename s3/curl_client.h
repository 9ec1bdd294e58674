// CurlObjectClient: the ObjectClient that talks to a real S3 server over HTTP(S).
//
// Contract: as ObjectClient (thread-safe, deadlines, retries inside, typed errors). Also:
//  - Credentials are read from the provider for every attempt, so rotation applies to the
//    next request; every attempt is signed afresh (SigV4 dates expire). A request the
//    server refuses (bad signature, unknown key, expired token, a HEAD's bodiless 403) is
//    sent once more at once if reloading the provider gives other credentials than it was
//    signed with: a rotation between the provider's periodic looks fails nothing.
//  - Bodies are hashed once per call (not per attempt) for x-amz-content-sha256, which the
//    server verifies; DeleteObjects carries Content-MD5 as S3 requires.
//  - CopyObject, UploadPartCopy and CompleteMultipartUpload can fail after their 200 OK with
//    an <Error> body: that is their reply's error, retried inside the call if transient.
//  - Listings ask for encoding-type=url so keys with bytes XML cannot carry survive.
//  - Bucket-level helpers (CreateBucket/DeleteBucket) exist for tests, benchmarks and the
//    quick-start script; the filesystem never calls them.
//  - libcurl is hidden behind HttpTransport; this header has no libcurl type.
#pragma once

#include <atomic>
#include <memory>
#include <random>

#include "common/clock.h"
#include "s3/config.h"
#include "s3/credentials.h"
#include "s3/object_client.h"

namespace bucketfs::s3 {

struct ClientStats {
  uint64_t requests = 0;   // HTTP attempts sent.
  uint64_t retries = 0;    // Attempts after the first.
  uint64_t failures = 0;   // Calls that returned an error.
  uint64_t bytes_sent = 0;
  uint64_t bytes_received = 0;
};

class CurlObjectClient final : public ObjectClient {
 public:
  // Validates the configuration (endpoint, bucket name) and starts the transport.
  static Result<std::unique_ptr<CurlObjectClient>> Create(
      ClientConfig config, std::shared_ptr<CredentialsProvider> credentials,
      Clock& clock = RealClock());
  ~CurlObjectClient() override;

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
  Result<PartInfo> UploadPart(const UploadPartRequest& req,
                              const CallOptions& opts = {}) override;
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

  Status CreateBucket(const CallOptions& opts = {});
  // The bucket must be empty, as in S3.
  Status DeleteBucket(const CallOptions& opts = {});

  // A presigned GET URL for `key`, valid `ttl_seconds` (1..604800, S3's maximum of 7 days).
  Result<std::string> PresignGet(const std::string& key, int ttl_seconds);

  ClientStats stats() const;
  const ClientConfig& config() const;

 private:
  class Impl;
  explicit CurlObjectClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace bucketfs::s3
