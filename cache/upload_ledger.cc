#include "cache/upload_ledger.h"

#include "common/log.h"

namespace bucketfs::cache {
namespace {

// The upload no longer exists on the server, whoever ended it.
bool Ended(const Status& s) { return s.ok() || s.code() == ErrorCode::kNoSuchUpload; }

}  // namespace

Result<std::string> LedgeredClient::CreateMultipart(const s3::CreateMultipartRequest& req,
                                                    const s3::CallOptions& opts) {
  auto created = inner().CreateMultipart(req, opts);
  if (created.ok()) spool_.NoteUpload({req.key, *created});
  return created;
}

Result<s3::PutResult> LedgeredClient::CompleteMultipart(const s3::CompleteMultipartRequest& req,
                                                        const s3::CallOptions& opts) {
  auto completed = inner().CompleteMultipart(req, opts);
  if (Ended(completed.status())) spool_.ForgetUpload(req.upload_id);
  return completed;
}

Status LedgeredClient::AbortMultipart(const std::string& key, const std::string& upload_id,
                                      const s3::CallOptions& opts) {
  Status aborted = inner().AbortMultipart(key, upload_id, opts);
  if (Ended(aborted)) spool_.ForgetUpload(upload_id);
  return aborted;
}

size_t AbortLeftoverUploads(const Spool& spool, s3::ObjectClient& client, MonoTime deadline) {
  size_t aborted = 0;
  for (const StartedUpload& upload : spool.NotedUploads()) {
    Status s = client.AbortMultipart(upload.key, upload.upload_id, {deadline});
    if (!Ended(s)) {
      Logger("writeback")->warn(
          "cannot abort the multipart upload {} of '{}' that the previous daemon left: {}; "
          "the next mount tries again",
          upload.upload_id, upload.key, s.ToString());
      return aborted;
    }
    spool.ForgetUpload(upload.upload_id);  // Also when `client` is not a LedgeredClient.
    if (s.ok()) ++aborted;
  }
  if (aborted > 0) {
    Logger("writeback")->info("aborted {} multipart upload(s) the previous daemon left unfinished",
                              aborted);
  }
  return aborted;
}

}  // namespace bucketfs::cache
