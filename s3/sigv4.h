// AWS Signature Version 4, as a pure function of (request, credentials, time).
//
// Contract:
//  - No I/O, no clock reads, no global state: the same inputs always give the same
//    signature, so the AWS documentation's examples are unit tests (tests/unit/s3/).
//  - The canonical URI is given already encoded (S3 encodes each key byte once and never
//    normalises the path); query names and values are given raw and encoded here.
//  - A query key without a value ("?uploads") is canonicalised as "uploads=".
//  - Header names are lower-cased and values trimmed, with inner runs of spaces folded;
//    every header passed in is signed. `host` must be among them.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "s3/credentials.h"

namespace bucketfs::s3 {

using QueryParams = std::vector<std::pair<std::string, std::string>>;
using HeaderList = std::vector<std::pair<std::string, std::string>>;

inline constexpr const char* kUnsignedPayload = "UNSIGNED-PAYLOAD";
inline constexpr const char* kEmptyPayloadSha256 =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

struct SigningInput {
  std::string method;         // "GET", "PUT", ...
  std::string canonical_uri;  // "/bucket/key%20name", already URI-encoded.
  QueryParams query;          // Raw names and values.
  HeaderList headers;         // Headers to sign, including host.
  std::string payload_hash;   // Hex SHA-256 of the body, or kUnsignedPayload.
};

struct SigningScope {
  std::string region;
  std::string service = "s3";
  WallTime now;
};

struct SignedRequest {
  // Headers to add to the request: x-amz-date, x-amz-content-sha256 (when requested),
  // x-amz-security-token (with temporary credentials), authorization.
  HeaderList headers_to_add;
  // Exposed for tests and debugging (never logged: it names the key id).
  std::string canonical_request;
  std::string string_to_sign;
  std::string signature;
};

// "20150830T123600Z" and "20150830".
std::string AmzDate(WallTime t);
std::string AmzDay(WallTime t);

// "a=1&b=&c=x%2Fy", sorted by encoded name then value.
std::string CanonicalQueryString(const QueryParams& query);

// Signs for the Authorization header. With add_content_sha256 (S3 requires it), an
// x-amz-content-sha256 header carrying payload_hash is added and signed.
SignedRequest SignRequest(const SigningInput& input, const Credentials& creds,
                          const SigningScope& scope, bool add_content_sha256 = true);

// A presigned URL (query-string authentication), valid for `expires_seconds` (1..604800)
// from scope.now. `base_url` is "scheme://host[:port]"; `host` is the Host header value.
std::string PresignUrl(const std::string& method, const std::string& base_url,
                       const std::string& host, const std::string& canonical_uri,
                       QueryParams query, const Credentials& creds, const SigningScope& scope,
                       int expires_seconds);

}  // namespace bucketfs::s3
