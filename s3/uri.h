// URI encoding as SigV4 and S3 define it (RFC 3986 unreserved set: A-Z a-z 0-9 - . _ ~).
// Contract: pure functions. UriEncode(s, /*encode_slash=*/false) is how an object key
// becomes a request path; query names and values are encoded with encode_slash = true.
#pragma once

#include <string>
#include <string_view>

namespace bucketfs::s3 {

std::string UriEncode(std::string_view in, bool encode_slash);
// Decodes %XX escapes (and, with plus_as_space, '+' as ' ' — form encoding used by
// ListObjectsV2's encoding-type=url replies). Malformed escapes are kept literally.
std::string UriDecode(std::string_view in, bool plus_as_space = false);

}  // namespace bucketfs::s3
