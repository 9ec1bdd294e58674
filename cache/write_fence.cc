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
  const int64_t ticks = Ticks(deadline);
  std::lock_guard lock(mu_);
  if (closed_for_good_) return;  // The lease was lost: never silently regained.
  if (ticks > deadline_ns_.load()) deadline_ns_.store(ticks);
  // A fence its deadline closed (whether a Check() saw it yet or not) opens again if the new
  // deadline is ahead. The coordinator pushes a deadline only after a renewal succeeded with
  // If-Match of its own lease record, which proves no other pod took the lease meanwhile (a
  // takeover rewrites that record), and none can before this deadline plus the takeover
  // margin. Writes in the gap were refused; nothing else changes.
  if (closed_.load() && deadline_ns_.load() > clock_.Now().time_since_epoch().count()) {
    reason_.clear();
    closed_.store(false);
  }
}

void WriteFence::Close(const std::string& reason) { (void)Fence(reason, /*for_good=*/true); }

bool WriteFence::Fence(const std::string& reason, bool for_good) const {
  std::lock_guard lock(mu_);
  if (for_good) {
    closed_for_good_ = true;
  } else {
    // Closing for a deadline seen to pass: a renewal may have moved it since (ExtendUntil
    // holds mu_), and must not be undone by this late look.
    const int64_t deadline = deadline_ns_.load();
    if (deadline == kUnlimited || clock_.Now().time_since_epoch().count() < deadline) {
      return closed_.load();
    }
  }
  if (!closed_.load()) {
    reason_ = reason;
    closed_.store(true);
  }
  return true;
}

Status WriteFence::Check() const {
  if (!closed_.load()) {
    const int64_t deadline = deadline_ns_.load();
    if (deadline == kUnlimited || clock_.Now().time_since_epoch().count() < deadline) {
      return Status::Ok();
    }
    // Not renewed in time: another pod may take the lease over once the margin has passed,
    // so this daemon must not change the bucket until a renewal proves it still holds it.
    if (!Fence("the lease was not renewed before its deadline (is the coordinator running, "
               "and can it reach S3?)",
               /*for_good=*/false)) {
      return Status::Ok();
    }
  }
  std::lock_guard lock(mu_);
  if (!closed_.load()) return Status::Ok();  // Reopened by a renewal just now.
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
// A call that changes the bucket runs only while the fence is open: the client checks the
// guard before every attempt (a retry is not sent after the lease ran out, when another pod
// may have taken the bucket over) and polls it while one is in flight, abandoning it when
// the fence closes. Its own deadline stays: a copy of many GiB may take minutes, and each
// renewal keeps the fence open for it, where a deadline fixed at the start would cut it
// at the lease's validity (20 to 30 s ahead with the defaults) however healthy the lease.
s3::CallOptions Guarded(s3::CallOptions opts, const WriteFence& fence) {
  if (fence.deadline() == MonoTime::max() && !fence.closed()) return opts;  // Unlimited.
  opts.guard = [&fence, outer = std::move(opts.guard)]() -> Status {
    BFS_RETURN_IF_ERROR(fence.Check());
    return outer ? outer() : Status::Ok();
  };
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
  return inner_.Put(req, Guarded(opts, fence_));
}
Result<s3::PutResult> FencedObjectClient::Copy(const s3::CopyRequest& req,
                                               const s3::CallOptions& opts) {
  BFS_RETURN_IF_ERROR(fence_.Check());
  return inner_.Copy(req, Guarded(opts, fence_));
}
Status FencedObjectClient::Delete(const std::string& key, const s3::CallOptions& opts) {
  BFS_RETURN_IF_ERROR(fence_.Check());
  return inner_.Delete(key, Guarded(opts, fence_));
}
Result<s3::DeleteManyResult> FencedObjectClient::DeleteMany(const std::vector<std::string>& keys,
                                                            const s3::CallOptions& opts) {
  BFS_RETURN_IF_ERROR(fence_.Check());
  return inner_.DeleteMany(keys, Guarded(opts, fence_));
}
Result<s3::ListPage> FencedObjectClient::List(const s3::ListRequest& req,
                                              const s3::CallOptions& opts) {
  return inner_.List(req, opts);
}
Result<std::string> FencedObjectClient::CreateMultipart(const s3::CreateMultipartRequest& req,
                                                        const s3::CallOptions& opts) {
  BFS_RETURN_IF_ERROR(fence_.Check());
  return inner_.CreateMultipart(req, Guarded(opts, fence_));
}
Result<s3::PartInfo> FencedObjectClient::UploadPart(const s3::UploadPartRequest& req,
                                                    const s3::CallOptions& opts) {
  BFS_RETURN_IF_ERROR(fence_.Check());
  return inner_.UploadPart(req, Guarded(opts, fence_));
}
Result<s3::PartInfo> FencedObjectClient::UploadPartCopy(const s3::UploadPartCopyRequest& req,
                                                        const s3::CallOptions& opts) {
  BFS_RETURN_IF_ERROR(fence_.Check());
  return inner_.UploadPartCopy(req, Guarded(opts, fence_));
}
Result<s3::PutResult> FencedObjectClient::CompleteMultipart(
    const s3::CompleteMultipartRequest& req, const s3::CallOptions& opts) {
  BFS_RETURN_IF_ERROR(fence_.Check());
  return inner_.CompleteMultipart(req, Guarded(opts, fence_));
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
