// ForwardingClient: an ObjectClient that passes every call to another one (not owned).
//
// Contract:
//  - Each method calls the same method of `inner` with the same arguments and returns its
//    answer; nothing is added, retried or locked here. Thread-safe exactly as `inner` is.
//  - A wrapper that changes a few operations (records them, delays them, plays another
//    server's quirks, or acts between a reply and its return) derives from this and
//    overrides only those; the rest keep forwarding. `inner()` is the wrapped client.
//  - `inner` must outlive the wrapper.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "s3/object_client.h"

namespace bucketfs::s3 {

class ForwardingClient : public ObjectClient {
 public:
  explicit ForwardingClient(ObjectClient& inner) : inner_(inner) {}

  const std::string& bucket() const override { return inner_.bucket(); }
  Result<ObjectInfo> Head(const HeadRequest& req, const CallOptions& opts) override {
    return inner_.Head(req, opts);
  }
  Result<GetResult> Get(const GetRequest& req, std::span<char> buffer,
                        const CallOptions& opts) override {
    return inner_.Get(req, buffer, opts);
  }
  Result<PutResult> Put(const PutRequest& req, const CallOptions& opts) override {
    return inner_.Put(req, opts);
  }
  Result<PutResult> Copy(const CopyRequest& req, const CallOptions& opts) override {
    return inner_.Copy(req, opts);
  }
  Status Delete(const std::string& key, const CallOptions& opts) override {
    return inner_.Delete(key, opts);
  }
  Result<DeleteManyResult> DeleteMany(const std::vector<std::string>& keys,
                                      const CallOptions& opts) override {
    return inner_.DeleteMany(keys, opts);
  }
  Result<ListPage> List(const ListRequest& req, const CallOptions& opts) override {
    return inner_.List(req, opts);
  }
  Result<std::string> CreateMultipart(const CreateMultipartRequest& req,
                                      const CallOptions& opts) override {
    return inner_.CreateMultipart(req, opts);
  }
  Result<PartInfo> UploadPart(const UploadPartRequest& req, const CallOptions& opts) override {
    return inner_.UploadPart(req, opts);
  }
  Result<PartInfo> UploadPartCopy(const UploadPartCopyRequest& req,
                                  const CallOptions& opts) override {
    return inner_.UploadPartCopy(req, opts);
  }
  Result<PutResult> CompleteMultipart(const CompleteMultipartRequest& req,
                                      const CallOptions& opts) override {
    return inner_.CompleteMultipart(req, opts);
  }
  Status AbortMultipart(const std::string& key, const std::string& upload_id,
                        const CallOptions& opts) override {
    return inner_.AbortMultipart(key, upload_id, opts);
  }
  Result<ListPartsPage> ListParts(const ListPartsRequest& req, const CallOptions& opts) override {
    return inner_.ListParts(req, opts);
  }
  Result<ListUploadsPage> ListMultipartUploads(const ListUploadsRequest& req,
                                               const CallOptions& opts) override {
    return inner_.ListMultipartUploads(req, opts);
  }

 protected:
  ObjectClient& inner() { return inner_; }

 private:
  ObjectClient& inner_;
};

}  // namespace bucketfs::s3
