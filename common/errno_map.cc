#include "common/errno_map.h"

#include <cerrno>

namespace bucketfs {

int ToErrno(const Status& status) {
  switch (status.code()) {
    case ErrorCode::kOk: return 0;
    case ErrorCode::kNotFound:
    case ErrorCode::kNoSuchBucket: return ENOENT;
    case ErrorCode::kAccessDenied:
    case ErrorCode::kInvalidCredentials:
    case ErrorCode::kExpiredCredentials: return EACCES;
    case ErrorCode::kPreconditionFailed:
    case ErrorCode::kStale: return ESTALE;
    case ErrorCode::kInvalidRange:
    case ErrorCode::kInvalidArgument: return EINVAL;
    case ErrorCode::kEntityTooLarge: return EFBIG;
    case ErrorCode::kNoSpace: return ENOSPC;
    case ErrorCode::kQuotaExceeded: return EDQUOT;
    case ErrorCode::kReadOnly: return EROFS;
    case ErrorCode::kExists: return EEXIST;
    case ErrorCode::kNotEmpty: return ENOTEMPTY;
    case ErrorCode::kNotDirectory: return ENOTDIR;
    case ErrorCode::kIsDirectory: return EISDIR;
    case ErrorCode::kNameTooLong: return ENAMETOOLONG;
    case ErrorCode::kNotSupported:
    case ErrorCode::kNotImplemented: return ENOTSUP;
    case ErrorCode::kBusy: return EBUSY;
    case ErrorCode::kNotPermitted: return EPERM;
    case ErrorCode::kCancelled: return EINTR;
    case ErrorCode::kTimeout: return ETIMEDOUT;
    case ErrorCode::kNoSuchUpload:
    case ErrorCode::kConflict:
    case ErrorCode::kEntityTooSmall:
    case ErrorCode::kBadDigest:
    case ErrorCode::kSlowDown:
    case ErrorCode::kServerError:
    case ErrorCode::kNetwork:
    case ErrorCode::kMalformedResponse:
    case ErrorCode::kBadRequest:
    case ErrorCode::kInternal: return EIO;
  }
  return EIO;
}

}  // namespace bucketfs
