// Op: the S3 operations of ObjectClient, named once for every layer that counts, logs or
// injects faults per operation (the fake client's counters, the fault-injecting wrapper,
// metrics). Contract: OpName() returns the S3 API name ("GetObject"), stable for logs.
#pragma once

#include <cstddef>
#include <string_view>

namespace bucketfs::s3 {

// The ObjectClient operations, one per virtual method that talks to the server.
enum class Op {
  kHead,
  kGet,
  kPut,
  kCopy,
  kDelete,
  kDeleteMany,
  kList,
  kCreateMultipart,
  kUploadPart,
  kUploadPartCopy,
  kCompleteMultipart,
  kAbortMultipart,
  kListParts,
  kListMultipartUploads,
};
inline constexpr size_t kOpCount = static_cast<size_t>(Op::kListMultipartUploads) + 1;

// "GetObject", "PutObject", ... (the S3 API names), for messages.
std::string_view OpName(Op op);

}  // namespace bucketfs::s3
