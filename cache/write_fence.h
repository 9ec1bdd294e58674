// WriteFence: whether this daemon may still change the bucket, and the ObjectClient decorator
// that enforces it on every request that would.
//
// Contract:
//  - The mount coordinator (mountd/) holds the single-pod lease. While the daemon runs under
//    a coordinator, the fence is open only until the lease's validity deadline, which the
//    coordinator pushes forward after each renewal (ExtendUntil). When that deadline passes
//    without a renewal — the coordinator died, hung, or cannot reach S3 — the fence closes
//    on its own, on this host's monotonic clock, before another pod may take the lease over
//    (it waits TTL + margin on its own clock). Close() fences at once (the lease was lost).
//  - Close() is final for the life of the daemon: a lost lease is never silently regained.
//    A fence its deadline closed opens again when the coordinator pushes a later deadline
//    (ExtendUntil): it does so only after a renewal succeeded with If-Match of its own lease
//    record, which proves no other pod took the lease in the gap. A renewal that was slow
//    (a server timing out, a stalled coordinator) costs EROFS in the gap, not the mount.
//  - A daemon without a coordinator (tests, benchmarks, `bucketfs serve` by hand) calls
//    Unlimited(): nothing fences it.
//  - FencedObjectClient refuses, with kReadOnly and the reason, every request that changes
//    the bucket (Put, Copy, Delete, DeleteMany, CreateMultipart, UploadPart, UploadPartCopy,
//    CompleteMultipart) once the fence is closed, before anything is sent, and gives those it
//    lets through a guard (s3::CallOptions::guard) that the client checks before every
//    attempt and polls while one is in flight: no retry is sent, and a request in flight is
//    abandoned, once the fence closes. The caller's deadline stays as it was: a long copy
//    runs as long as renewals keep the fence open. (A server-side copy or a completion
//    abandoned in flight may still finish on the server: the same is true of any request
//    whose reply is lost, and the takeover margin is there for it.)
//    Reads and
//    AbortMultipart (which only throws away an unfinished upload of ours) still pass. The
//    writeback keeps refused data in its spool: nothing is lost, and the next mount that
//    holds the lease uploads it.
//  - Thread-safe and lock-free on the hot path (one atomic load per check while open).
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>

#include "common/clock.h"
#include "common/status.h"
#include "s3/object_client.h"

namespace bucketfs::cache {

class WriteFence {
 public:
  // Starts open until `deadline` (MonoTime::max(): unlimited).
  explicit WriteFence(Clock& clock, MonoTime deadline = MonoTime::max());

  void Unlimited();
  // Opens the fence until `deadline`: never moves it backwards, reopens a fence its deadline
  // closed if `deadline` is still ahead, and is ignored once Close() was called.
  void ExtendUntil(MonoTime deadline);
  // Fences for good; the first reason is kept.
  void Close(const std::string& reason);

  // Ok while changes are allowed; else kReadOnly saying why.
  Status Check() const;
  bool closed() const;
  std::string reason() const;
  MonoTime deadline() const;

 private:
  // Closes the fence (first reason kept); `for_good` (Close) forbids reopening. Without it,
  // only if the deadline has still passed under mu_ (a renewal may just have moved it).
  // Returns whether the fence is closed. Const: Check() closes it when the deadline passed.
  bool Fence(const std::string& reason, bool for_good) const;

  Clock& clock_;
  std::atomic<int64_t> deadline_ns_;  // steady_clock ticks since epoch; max: unlimited.
  mutable std::atomic<bool> closed_{false};
  mutable std::mutex mu_;
  mutable std::string reason_;  // Guarded by mu_.
  mutable bool closed_for_good_ = false;  // Guarded by mu_.
};

// Forwards to `inner`, refusing mutations while `fence` is closed.
class FencedObjectClient final : public s3::ObjectClient {
 public:
  FencedObjectClient(s3::ObjectClient& inner, const WriteFence& fence)
      : inner_(inner), fence_(fence) {}

  const std::string& bucket() const override { return inner_.bucket(); }
  Result<s3::ObjectInfo> Head(const s3::HeadRequest& req, const s3::CallOptions& opts) override;
  Result<s3::GetResult> Get(const s3::GetRequest& req, std::span<char> buffer,
                            const s3::CallOptions& opts) override;
  Result<s3::PutResult> Put(const s3::PutRequest& req, const s3::CallOptions& opts) override;
  Result<s3::PutResult> Copy(const s3::CopyRequest& req, const s3::CallOptions& opts) override;
  Status Delete(const std::string& key, const s3::CallOptions& opts) override;
  Result<s3::DeleteManyResult> DeleteMany(const std::vector<std::string>& keys,
                                          const s3::CallOptions& opts) override;
  Result<s3::ListPage> List(const s3::ListRequest& req, const s3::CallOptions& opts) override;
  Result<std::string> CreateMultipart(const s3::CreateMultipartRequest& req,
                                      const s3::CallOptions& opts) override;
  Result<s3::PartInfo> UploadPart(const s3::UploadPartRequest& req,
                                  const s3::CallOptions& opts) override;
  Result<s3::PartInfo> UploadPartCopy(const s3::UploadPartCopyRequest& req,
                                      const s3::CallOptions& opts) override;
  Result<s3::PutResult> CompleteMultipart(const s3::CompleteMultipartRequest& req,
                                          const s3::CallOptions& opts) override;
  Status AbortMultipart(const std::string& key, const std::string& upload_id,
                        const s3::CallOptions& opts) override;
  Result<s3::ListPartsPage> ListParts(const s3::ListPartsRequest& req,
                                      const s3::CallOptions& opts) override;
  Result<s3::ListUploadsPage> ListMultipartUploads(const s3::ListUploadsRequest& req,
                                                   const s3::CallOptions& opts) override;

 private:
  s3::ObjectClient& inner_;
  const WriteFence& fence_;
};

}  // namespace bucketfs::cache
