#include "common/exit_code.h"

namespace bucketfs {

ExitCode ExitCodeFor(ErrorCode code) {
  switch (code) {
    case ErrorCode::kOk: return kExitOk;
    case ErrorCode::kInvalidArgument:
    case ErrorCode::kNotDirectory:
    case ErrorCode::kNameTooLong: return kExitUsage;
    case ErrorCode::kAccessDenied:
    case ErrorCode::kInvalidCredentials:
    case ErrorCode::kExpiredCredentials: return kExitCredentials;
    case ErrorCode::kNoSuchBucket: return kExitNoBucket;
    case ErrorCode::kBusy: return kExitBusy;
    case ErrorCode::kTimeout:
    case ErrorCode::kNetwork:
    case ErrorCode::kServerError:
    case ErrorCode::kSlowDown:
    case ErrorCode::kMalformedResponse: return kExitUnreachable;
    case ErrorCode::kNoSpace:
    case ErrorCode::kQuotaExceeded: return kExitNoSpace;
    default: return kExitFailure;
  }
}

}  // namespace bucketfs
