#include "s3/operation.h"

namespace bucketfs::s3 {

std::string_view OpName(Op op) {
  switch (op) {
    case Op::kHead:
      return "HeadObject";
    case Op::kGet:
      return "GetObject";
    case Op::kPut:
      return "PutObject";
    case Op::kCopy:
      return "CopyObject";
    case Op::kDelete:
      return "DeleteObject";
    case Op::kDeleteMany:
      return "DeleteObjects";
    case Op::kList:
      return "ListObjectsV2";
    case Op::kCreateMultipart:
      return "CreateMultipartUpload";
    case Op::kUploadPart:
      return "UploadPart";
    case Op::kUploadPartCopy:
      return "UploadPartCopy";
    case Op::kCompleteMultipart:
      return "CompleteMultipartUpload";
    case Op::kAbortMultipart:
      return "AbortMultipartUpload";
    case Op::kListParts:
      return "ListParts";
    case Op::kListMultipartUploads:
      return "ListMultipartUploads";
  }
  return "UnknownOperation";
}

}  // namespace bucketfs::s3
