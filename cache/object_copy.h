// CopyObject: a server-side copy of one object to another key, whatever its size.
//
// Contract:
//  - Objects up to 5 GiB are one CopyObject; larger ones a multipart copy (UploadPartCopy
//    of 1 GiB ranges, with If-Match of the source ETag on every part), since S3 refuses a
//    single copy past 5 GiB.
//  - `metadata` set: the copy carries it (the REPLACE directive); unset: the source's.
//  - The source's ETag is checked where the server honours it; RGW ignores it on a
//    single CopyObject (docs/S3-COMPATIBILITY.md), so callers that must not copy a changed
//    source HEAD it first (the ETag passed here is that HEAD's).
//  - Returns the new object's ETag. A failed multipart copy is aborted.
#pragma once

#include <optional>
#include <string>

#include "common/clock.h"
#include "common/status.h"
#include "s3/object_client.h"

namespace bucketfs::cache {

struct CopySpec {
  std::string from;
  std::string to;
  uint64_t size = 0;        // The source's size.
  std::string source_etag;  // Empty: unconditional.
  std::optional<s3::UserMetadata> metadata;
  s3::WriteCondition condition;  // On the destination.
};

Result<std::string> CopyObject(s3::ObjectClient& client, const CopySpec& spec, MonoTime deadline);

}  // namespace bucketfs::cache
