#include "cache/object_copy.h"

#include <algorithm>

#include "cache/lost_reply.h"

namespace bucketfs::cache {
namespace {

constexpr uint64_t kCopyPartSize = 1ull << 30;

Result<std::string> SingleCopy(s3::ObjectClient& client, const CopySpec& spec, MonoTime deadline) {
  s3::CopyRequest req;
  req.source_key = spec.from;
  req.dest_key = spec.to;
  req.source_if_match = spec.source_etag;
  req.condition = spec.condition;
  if (spec.metadata) {
    req.directive = s3::CopyRequest::MetadataDirective::kReplace;
    req.metadata = *spec.metadata;
  }
  BFS_ASSIGN_OR_RETURN(s3::PutResult put, client.Copy(req, {deadline}));
  return put.etag;
}

Result<std::string> MultipartCopy(s3::ObjectClient& client, const CopySpec& spec,
                                  MonoTime deadline) {
  s3::UserMetadata metadata;
  if (spec.metadata) {
    metadata = *spec.metadata;
  } else {
    BFS_ASSIGN_OR_RETURN(s3::ObjectInfo head, client.Head({spec.from, spec.source_etag}, {deadline}));
    metadata = head.metadata;
  }
  BFS_ASSIGN_OR_RETURN(std::string upload_id,
                       client.CreateMultipart({spec.to, "", metadata}, {deadline}));
  s3::CompleteMultipartRequest complete;
  complete.key = spec.to;
  complete.upload_id = upload_id;
  complete.condition = spec.condition;
  Status failure;
  for (uint64_t offset = 0; offset < spec.size; offset += kCopyPartSize) {
    s3::UploadPartCopyRequest part;
    part.key = spec.to;
    part.upload_id = upload_id;
    part.part_number = static_cast<int>(offset / kCopyPartSize) + 1;
    part.source_key = spec.from;
    part.source_range = s3::ByteRange{offset, std::min(kCopyPartSize, spec.size - offset)};
    part.source_if_match = spec.source_etag;
    auto copied = client.UploadPartCopy(part, {deadline});
    if (!copied.ok()) {
      failure = copied.status();
      break;
    }
    complete.parts.push_back(*copied);
  }
  if (failure.ok()) {
    auto done = client.CompleteMultipart(complete, {deadline});
    if (done.ok()) return done->etag;
    failure = done.status();
    // A Complete retried after its reply was lost finds the upload gone (lost_reply.h).
    if (failure.code() == ErrorCode::kNoSuchUpload ||
        failure.code() == ErrorCode::kPreconditionFailed) {
      if (auto landed = LandedAs(client, spec.to, MultipartEtag(complete.parts), {}, deadline)) {
        return *landed;
      }
    }
  }
  (void)client.AbortMultipart(spec.to, upload_id, {deadline});
  return failure;
}

}  // namespace

Result<std::string> CopyObject(s3::ObjectClient& client, const CopySpec& spec, MonoTime deadline) {
  if (spec.size <= s3::kMaxSinglePutSize) return SingleCopy(client, spec, deadline);
  return MultipartCopy(client, spec, deadline);
}

}  // namespace bucketfs::cache
