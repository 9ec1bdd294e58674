#include "common/status.h"

#include <gtest/gtest.h>

#include <cerrno>

#include "common/errno_map.h"
#include "common/exit_code.h"

namespace bucketfs {
namespace {

Result<int> Half(int x) {
  if (x % 2 != 0) return Status(ErrorCode::kInvalidArgument, "odd");
  return x / 2;
}

Result<int> Quarter(int x) {
  BFS_ASSIGN_OR_RETURN(int h, Half(x));
  return Half(h);
}

Status Check(int x) {
  BFS_RETURN_IF_ERROR(Quarter(x).status());
  return Status::Ok();
}

TEST(StatusTest, OkHasNoDetails) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.code(), ErrorCode::kOk);
  EXPECT_FALSE(s.retryable());
  EXPECT_EQ(s.ToString(), "OK");
}

TEST(StatusTest, ErrorCarriesServerDetailsIntoItsString) {
  Status s(ErrorCode::kPreconditionFailed, "PUT a/b", false);
  s.WithServerDetails(412, "PreconditionFailed", "tx-1").Annotate("uploading");
  EXPECT_EQ(s.ToString(),
            "PreconditionFailed: uploading: PUT a/b (HTTP 412, server code PreconditionFailed, "
            "request id tx-1)");
  Status copy = s;
  EXPECT_EQ(copy.request_id(), "tx-1");
  EXPECT_EQ(copy.http_status(), 412);
}

TEST(StatusTest, MacrosPropagateTheFirstError) {
  EXPECT_EQ(*Quarter(8), 2);
  EXPECT_EQ(Quarter(6).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(Check(4).ok());
  EXPECT_EQ(Check(2).code(), ErrorCode::kInvalidArgument);
}

TEST(StatusTest, ResultFromOkStatusIsAnInternalError) {
  Result<int> r{Status::Ok()};
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kInternal);
}

TEST(ErrnoMapTest, MapsEachCodeToItsErrno) {
  EXPECT_EQ(ToErrno(Status()), 0);
  EXPECT_EQ(ToErrno(Status(ErrorCode::kNotFound, "")), ENOENT);
  EXPECT_EQ(ToErrno(Status(ErrorCode::kAccessDenied, "")), EACCES);
  EXPECT_EQ(ToErrno(Status(ErrorCode::kInvalidCredentials, "")), EACCES);
  EXPECT_EQ(ToErrno(Status(ErrorCode::kPreconditionFailed, "")), ESTALE);
  EXPECT_EQ(ToErrno(Status(ErrorCode::kStale, "")), ESTALE);
  EXPECT_EQ(ToErrno(Status(ErrorCode::kNoSpace, "")), ENOSPC);
  EXPECT_EQ(ToErrno(Status(ErrorCode::kReadOnly, "")), EROFS);
  EXPECT_EQ(ToErrno(Status(ErrorCode::kNotEmpty, "")), ENOTEMPTY);
  EXPECT_EQ(ToErrno(Status(ErrorCode::kTimeout, "")), ETIMEDOUT);
  EXPECT_EQ(ToErrno(Status(ErrorCode::kServerError, "")), EIO);
  EXPECT_EQ(ToErrno(Status(ErrorCode::kNotSupported, "")), ENOTSUP);
  // Every code maps to a positive errno.
  for (int c = 1; c <= static_cast<int>(ErrorCode::kInternal); ++c) {
    EXPECT_GT(ToErrno(Status(static_cast<ErrorCode>(c), "")), 0) << c;
    EXPECT_NE(ErrorCodeName(static_cast<ErrorCode>(c)), "Unknown");
  }
}

TEST(ExitCodeTest, EachCauseOfAFailedMountHasItsOwnStatus) {
  EXPECT_EQ(ExitCodeFor(Status()), kExitOk);
  EXPECT_EQ(ExitCodeFor(Status(ErrorCode::kInvalidArgument, "")), kExitUsage);
  EXPECT_EQ(ExitCodeFor(Status(ErrorCode::kInvalidCredentials, "")), kExitCredentials);
  EXPECT_EQ(ExitCodeFor(Status(ErrorCode::kExpiredCredentials, "")), kExitCredentials);
  EXPECT_EQ(ExitCodeFor(Status(ErrorCode::kAccessDenied, "")), kExitCredentials);
  EXPECT_EQ(ExitCodeFor(Status(ErrorCode::kNoSuchBucket, "")), kExitNoBucket);
  EXPECT_EQ(ExitCodeFor(Status(ErrorCode::kBusy, "")), kExitBusy);
  EXPECT_EQ(ExitCodeFor(Status(ErrorCode::kNetwork, "")), kExitUnreachable);
  EXPECT_EQ(ExitCodeFor(Status(ErrorCode::kTimeout, "")), kExitUnreachable);
  EXPECT_EQ(ExitCodeFor(Status(ErrorCode::kServerError, "")), kExitUnreachable);
  EXPECT_EQ(ExitCodeFor(Status(ErrorCode::kNoSpace, "")), kExitNoSpace);
  EXPECT_EQ(ExitCodeFor(Status(ErrorCode::kInternal, "")), kExitFailure);
  // Every failure is a failure: never 0, never a code a signal would give (128 + N).
  for (int c = 1; c <= static_cast<int>(ErrorCode::kInternal); ++c) {
    const int code = ExitCodeFor(static_cast<ErrorCode>(c));
    EXPECT_GE(code, 1) << ErrorCodeName(static_cast<ErrorCode>(c));
    EXPECT_LT(code, 100) << ErrorCodeName(static_cast<ErrorCode>(c));
  }
}

}  // namespace
}  // namespace bucketfs
