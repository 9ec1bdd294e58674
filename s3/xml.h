// S3 XML bodies: parsing replies and building request bodies, on pugixml.
//
// Contract:
//  - Every parser takes the raw reply bytes and returns a value or kMalformedResponse with a
//    message naming what was missing; no input, however truncated or hostile, crashes or
//    reads out of bounds (a libFuzzer target, tests/fuzz/xml_fuzz.cc, holds us to this).
//  - Listings requested with encoding-type=url have their keys and prefixes URL-decoded
//    here when the reply says <EncodingType>url</EncodingType>.
//  - ETags come back without quotes.
//  - Some operations (CompleteMultipartUpload, CopyObject, UploadPartCopy) can answer
//    HTTP 200 with an <Error> body; their parsers return that error as a Status built by
//    ErrorFromServer().
//  - pugixml never appears outside s3/*.cc.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "s3/object_client.h"

namespace bucketfs::s3 {

// The fields of an S3 <Error> document.
struct ServerError {
  std::string code;        // "NoSuchKey", "SignatureDoesNotMatch", ...
  std::string message;
  std::string request_id;
  std::string resource;
};

// Parses an <Error> body. Returns false if `body` is not an S3 error document.
bool ParseErrorBody(std::string_view body, ServerError* out);

// Maps an HTTP status and S3 error code to a Status with the right ErrorCode and retryable
// flag, and a message that says what to do where that is known (e.g. wrong secret key).
// `what` describes the request ("GET data/a.bin").
Status ErrorFromServer(int http_status, const ServerError& err, std::string_view what);

Result<ListPage> ParseListObjectsV2(std::string_view body);
Result<std::string> ParseInitiateMultipartUpload(std::string_view body);  // Upload id.
// The ETag may come back empty: Ceph RGW sends <ETag></ETag>. Callers that need it HEAD.
Result<PutResult> ParseCompleteMultipartUpload(std::string_view body);
Result<PutResult> ParseCopyObjectResult(std::string_view body);
Result<PartInfo> ParseCopyPartResult(std::string_view body);  // part_number/size unset.
Result<DeleteManyResult> ParseDeleteResult(std::string_view body);
Result<ListPartsPage> ParseListParts(std::string_view body);
Result<ListUploadsPage> ParseListMultipartUploads(std::string_view body);

std::string BuildCompleteMultipartUpload(const std::vector<PartInfo>& parts);
// Whether a key can be named in a request body: XML 1.0 has no way to write most control
// characters (\r is escaped, \t and \n pass) nor U+FFFE and U+FFFF. Keys it refuses go
// to the API's bodiless equivalent (DeleteObject instead of DeleteObjects).
bool XmlCanCarryKey(std::string_view key);
std::string BuildDeleteObjects(const std::vector<std::string>& keys, bool quiet);

// "2009-10-12T17:50:30.000Z" (ISO 8601, as in listings) and
// "Wed, 12 Oct 2009 17:50:30 GMT" (RFC 7231, as in Last-Modified headers).
bool ParseIso8601(std::string_view text, WallTime* out);
bool ParseHttpDate(std::string_view text, WallTime* out);

// Strips one pair of surrounding double quotes, if present, and a weak marker before them
// (W/"abc" is abc): every ETag bucketfs keeps and compares is in this one form.
std::string UnquoteEtag(std::string_view etag);

}  // namespace bucketfs::s3
