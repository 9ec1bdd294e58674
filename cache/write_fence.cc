#include "cache/write_fence.h"

#include <limits>

namespace bucketfs::cache {
namespace {

constexpr int64_t kUnlimited = std::numeric_limits<int64_t>::max();

int64_t Ticks(MonoTime t) {
  return t == MonoTime::max() ? kUnlimited : t.time_since_epoch().count();
}

}  // namespace

WriteFence::WriteFence(Clock& clock, MonoTime deadline)
    : clock_(clock), deadline_ns_(Ticks(deadline)) {}

void WriteFence::Unlimited() { deadline_ns_.store(kUnlimited); }

void WriteFence::ExtendUntil(MonoTime deadline) {
  // A deadline that has passed closed the fence, whether or not a Check() saw it yet: a
  // late renewal must not reopen it (Check() records the closing).
  if (!Check().ok()) return;
  const int64_t ticks = Ticks(deadline);
  int64_t current = deadline_ns_.load();
  while (current < ticks && !deadline_ns_.compare_exchange_weak(current, ticks)) {
  }
}

void WriteFence::Close(const std::string& reason) { Fence(reason); }

void WriteFence::Fence(const std::string& reason) const {
  std::lock_guard lock(mu_);
  if (closed_.load()) return;
  reason_ = reason;
  closed_.store(true);
}

Status WriteFence::Check() const {
  if (!closed_.load()) {
    const int64_t deadline = deadline_ns_.load();
    if (deadline == kUnlimited || clock_.Now().time_since_epoch().count() < deadline) {
      return Status::Ok();
    }
    // Not renewed in time: from here on another pod may take the lease over, so this
    // daemon must not change the bucket again, even if a late renewal arrives.
    Fence(
        "the lease was not renewed before its deadline (is the coordinator running, and can "
        "it reach S3?)");
  }
  std::lock_guard lock(mu_);
  return Status(ErrorCode::kReadOnly, "writes are fenced: " + reason_);
}

bool WriteFence::closed() const { return !Check().ok(); }

std::string WriteFence::reason() const {
  if (Check().ok()) return "";
  std::lock_guard lock(mu_);
  return reason_;
}

MonoTime WriteFence::deadline() const {
  const int64_t ticks = deadline_ns_.load();
  return ticks == kUnlimited ? MonoTime::max() : MonoTime(Duration(ticks));
}

// --- FencedObjectClient ---------------------------------------------------------------

namespace {
// A call that changes the bucket must not be retried past the fence's deadline: the client
// retries inside its deadline, so one that passed Check() just before the lease ran out
// could otherwise be sent again after another pod took the bucket over.
s3::CallOptions Clamped(s3::CallOptions opts, const WriteFence& fence) {
  const MonoTime limit = fence.deadline();
  if (limit != MonoTime::max() && (!opts.deadline || *opts.deadline > limit)) {
    opts.deadline = limit;
  }
  return opts;
}
}  // namespace

Result<s3::ObjectInfo> FencedObjectClient::Head(const s3::HeadRequest& req,
                                                const s3::CallOptions& opts) {
  return inner_.Head(req, opts);
}
Result<s3::GetResult> FencedObjectClient::Get(const s3::GetRequest& req, std::span<char> buffer,
                                              const s3::CallOptions& opts) {
  return inner_.Get(req, buffer, opts);
}
Result<s3::PutResult> FencedObjectClient::Put(const s3::PutRequest& req,
                                              const s3::CallOptions& opts) {
  BFS_RETURN_IF_ERROR(fence_.Check());
  return inner_.Put(req, Clamped(opts, fence_));
}
Result<s3::PutResult> FencedObjectClient::Copy(const s3::CopyRequest& req,
                                               const s3::CallOptions& opts) {
  BFS_RETURN_IF_ERROR(fence_.Check());
  return inner_.Copy(req, Clamped(opts, fence_));
}
Status FencedObjectClient::Delete(const std::string& key, const s3::CallOptions& opts) {
  BFS_RETURN_IF_ERROR(fence_.Check());
  return inner_.Delete(key, Clamped(opts, fence_));
}
Result<s3::DeleteManyResult> FencedObjectClient::DeleteMany(const std::vector<std::string>& keys,
                                                            const s3::CallOptions& opts) {
  BFS_RETURN_IF_ERROR(fence_.Check());
  return inner_.DeleteMany(keys, Clamped(opts, fence_));
}
Result<s3::ListPage> FencedObjectClient::List(const s3::ListRequest& req,
                                              const s3::CallOptions& opts) {
  return inner_.List(req, opts);
}
Result<std::string> FencedObjectClient::CreateMultipart(const s3::CreateMultipartRequest& req,
                                                        const s3::CallOptions& opts) {
  BFS_RETURN_IF_ERROR(fence_.Check());
  return inner_.CreateMultipart(req, Clamped(opts, fence_));
}
Result<s3::PartInfo> FencedObjectClient::UploadPart(const s3::UploadPartRequest& req,
                                                    const s3::CallOptions& opts) {
  BFS_RETURN_IF_ERROR(fence_.Check());
  return inner_.UploadPart(req, Clamped(opts, fence_));
}
Result<s3::PartInfo> FencedObjectClient::UploadPartCopy(const s3::UploadPartCopyRequest& req,
                                                        const s3::CallOptions& opts) {
  BFS_RETURN_IF_ERROR(fence_.Check());
  return inner_.UploadPartCopy(req, Clamped(opts, fence_));
}
Result<s3::PutResult> FencedObjectClient::CompleteMultipart(
    const s3::CompleteMultipartRequest& req, const s3::CallOptions& opts) {
  BFS_RETURN_IF_ERROR(fence_.Check());
  return inner_.CompleteMultipart(req, Clamped(opts, fence_));
}
Status FencedObjectClient::AbortMultipart(const std::string& key, const std::string& upload_id,
                                          const s3::CallOptions& opts) {
  return inner_.AbortMultipart(key, upload_id, opts);
}
Result<s3::ListPartsPage> FencedObjectClient::ListParts(const s3::ListPartsRequest& req,
                                                        const s3::CallOptions& opts) {
  return inner_.ListParts(req, opts);
}
Result<s3::ListUploadsPage> FencedObjectClient::ListMultipartUploads(
    const s3::ListUploadsRequest& req, const s3::CallOptions& opts) {
  return inner_.ListMultipartUploads(req, opts);
}

}  // namespace bucketfs::cache
