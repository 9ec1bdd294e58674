// LedgeredClient and AbortLeftoverUploads: no multipart upload outlives a killed daemon.
//
// A multipart upload keeps its parts on the server, and costs their storage, until it is
// completed or aborted. A daemon killed mid-upload (SIGKILL, OOM, a node reboot) leaves one
// behind; the next daemon re-uploads the file from the spool under a new upload, so the old
// one would never be touched again.
//
// Contract:
//  - LedgeredClient forwards every call to `inner`. A CreateMultipart that succeeds is
//    noted in the spool's ledger (Spool::NoteUpload) before the upload id is returned; a
//    CompleteMultipart or AbortMultipart that succeeds, or finds the upload gone
//    (kNoSuchUpload), forgets it. Every other answer leaves the note: the caller may still
//    retry or abort, and if it never does, the next daemon aborts the upload.
//  - AbortLeftoverUploads aborts every upload noted by an earlier daemon of this spool. It
//    must run before the daemon starts uploads of its own (Writeback::Recover runs it
//    first). An upload already gone counts as done. At the first other failure (the server
//    unreachable) it stops and keeps the remaining notes for the next mount. Returns the
//    number of uploads aborted.
//  - Not covered: an upload whose CreateMultipart reply was lost (the client retried and
//    got a second one); no id was ever seen. A lifecycle rule with
//    AbortIncompleteMultipartUpload covers it (docs/SEMANTICS.md).
#pragma once

#include <cstddef>
#include <string>

#include "cache/spool.h"
#include "common/clock.h"
#include "s3/forwarding_client.h"

namespace bucketfs::cache {

class LedgeredClient final : public s3::ForwardingClient {
 public:
  LedgeredClient(s3::ObjectClient& inner, const Spool& spool)
      : s3::ForwardingClient(inner), spool_(spool) {}

  Result<std::string> CreateMultipart(const s3::CreateMultipartRequest& req,
                                      const s3::CallOptions& opts) override;
  Result<s3::PutResult> CompleteMultipart(const s3::CompleteMultipartRequest& req,
                                          const s3::CallOptions& opts) override;
  Status AbortMultipart(const std::string& key, const std::string& upload_id,
                        const s3::CallOptions& opts) override;

 private:
  const Spool& spool_;
};

size_t AbortLeftoverUploads(const Spool& spool, s3::ObjectClient& client, MonoTime deadline);

}  // namespace bucketfs::cache
