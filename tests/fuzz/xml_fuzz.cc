// libFuzzer target for s3/xml.h: every reply parser, the error-body parser and the date
// parsers on the same bytes. The contract under test: no input crashes, reads out of
// bounds or trips a sanitizer, and a failed parse is kMalformedResponse (or, for an
// <Error> document, the server's error) and never an OK Status without a value.
//
//   clang++ -std=c++20 -fsanitize=fuzzer,address,undefined -I. tests/fuzz/xml_fuzz.cc \
//       s3/xml.cc s3/uri.cc common/status.cc -lpugixml -lfmt -o /tmp/xml_fuzz
//   /tmp/xml_fuzz -max_total_time=60 tests/fuzz/corpus
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "s3/xml.h"

namespace {

using bucketfs::Status;

// A parser's failure must carry a code; touching the message and ToString() makes the
// sanitizers look at every byte we formatted.
template <typename T>
void Check(const bucketfs::Result<T>& result) {
  if (result.ok()) return;
  const Status& status = result.status();
  if (status.ok()) std::abort();
  (void)status.ToString();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace s3 = bucketfs::s3;
  const std::string_view body(reinterpret_cast<const char*>(data), size);

  Check(s3::ParseListObjectsV2(body));
  Check(s3::ParseInitiateMultipartUpload(body));
  Check(s3::ParseCompleteMultipartUpload(body));
  Check(s3::ParseCopyObjectResult(body));
  Check(s3::ParseCopyPartResult(body));
  Check(s3::ParseDeleteResult(body));
  Check(s3::ParseListParts(body));
  Check(s3::ParseListMultipartUploads(body));

  s3::ServerError err;
  if (s3::ParseErrorBody(body, &err)) {
    // Any status, including ones that are not HTTP statuses at all.
    const int http_status = size > 0 ? static_cast<int>(data[0]) * 3 : 0;
    (void)s3::ErrorFromServer(http_status, err, "fuzz").ToString();
  }

  bucketfs::WallTime t;
  (void)s3::ParseIso8601(body, &t);
  (void)s3::ParseHttpDate(body, &t);
  (void)s3::UnquoteEtag(body);

  // Building must survive whatever a key holds: the input as one key, and as ETag.
  if (size <= 4096) {
    (void)s3::BuildDeleteObjects({std::string(body)}, /*quiet=*/size % 2 == 0);
    (void)s3::BuildCompleteMultipartUpload({{1, std::string(body), 0}});
  }
  return 0;
}
