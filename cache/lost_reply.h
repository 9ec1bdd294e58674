// Lost replies: telling a write that landed, but whose reply was lost, from a real conflict.
//
// A write can reach S3 and its reply still be lost: a reset connection, a deadline, a 500
// sent after the commit. Retrying it then meets its own result. A conditional PUT or copy
// gets 412, because the object is no longer the version it was conditioned on (or now
// exists); a repeated CompleteMultipartUpload gets NoSuchUpload, because the upload became
// the object. Taken at face value, a write that succeeded would look like a conflict with
// another client (ESTALE, the data kept in the spool for a person) or a failed rename (EIO).
//
// Contract:
//  - Each check HEADs the key once and says whether the object there is the one the write
//    would have made: by ETag where S3 derives it from the bytes (the MD5 of a single PUT's
//    body; the MD5 of the parts' MD5s and "-N" for a multipart upload), with every metadata
//    entry the write carried (mode, owner, the nanosecond mtime); for a copy that only
//    rewrites metadata, by size and those entries.
//  - Returns the object's ETag if it is, nullopt if it is not or the HEAD failed: the caller
//    then reports its original error. Where ETags are not MD5s (SSE-KMS, SSE-C) nothing
//    matches, and the original error stands.
//  - An object someone else wrote with the same bytes and the same metadata down to the
//    nanosecond mtime is taken for ours: nothing tells them apart, and nothing differs.
//  - Not covered: an upload whose reply was lost after every retry of its call, followed by
//    new writes before the next commit. That commit's 412 compares against the new bytes,
//    and ends as a conflict (ESTALE, the data kept in the spool).
#pragma once

#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/clock.h"
#include "s3/object_client.h"

namespace bucketfs::cache {

// The ETag S3 gives an object stored by one PUT of `body` (without SSE-KMS/SSE-C).
std::string SinglePutEtag(std::span<const char> body);

// The ETag S3 gives a multipart object made of `parts`: MD5 of the parts' binary MD5s, "-N".
std::string MultipartEtag(const std::vector<s3::PartInfo>& parts);

// The ETag of the object at `key` if it is `expected_etag` and carries every entry of
// `metadata` with the same value.
std::optional<std::string> LandedAs(s3::ObjectClient& client, const std::string& key,
                                    const std::string& expected_etag,
                                    const s3::UserMetadata& metadata, MonoTime deadline);

// The ETag of the object at `key` if it has `size` bytes and carries every entry of
// `metadata` with the same value.
std::optional<std::string> LandedWithMetadata(s3::ObjectClient& client, const std::string& key,
                                              uint64_t size, const s3::UserMetadata& metadata,
                                              MonoTime deadline);

}  // namespace bucketfs::cache
