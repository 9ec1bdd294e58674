// Status and Result<T>: the only way an error crosses a module boundary in bucketfs.
//
// Contract:
//  - A Status is either OK or carries an ErrorCode, a retryable flag and a human message
//    that says what failed, on which object, and (where it helps) what to do.
//  - Errors that came from an S3 server also carry the HTTP status, the server's error code
//    string (e.g. "SignatureDoesNotMatch") and its request id, so logs can be matched with
//    the server's.
//  - Both types are [[nodiscard]]: an ignored error is a compile error under -Werror.
//  - An OK Status allocates nothing; copying an error copies its details.
//  - errno is chosen from a Status in exactly one place: ToErrno() in common/errno_map.h.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace bucketfs {

enum class ErrorCode {
  kOk = 0,
  // Object-store outcomes.
  kNotFound,            // NoSuchKey / 404 on an object.
  kNoSuchBucket,        // The bucket itself does not exist.
  kNoSuchUpload,        // Multipart upload id unknown (aborted or completed).
  kAccessDenied,        // 403 AccessDenied: the credentials lack permission.
  kInvalidCredentials,  // SignatureDoesNotMatch / InvalidAccessKeyId: wrong key or secret.
  kExpiredCredentials,  // ExpiredToken / RequestTimeTooSkewed.
  kPreconditionFailed,  // 412: If-Match / If-None-Match did not hold.
  kConflict,            // 409: concurrent conditional operation in progress.
  kInvalidRange,        // 416: range outside the object.
  kEntityTooSmall,      // Multipart part below the server's minimum size.
  kEntityTooLarge,      // Object or part above the server's maximum size.
  kBadDigest,           // The payload checksum the server computed did not match.
  kQuotaExceeded,       // The server's quota for the bucket or user, or its storage, is full.
  kSlowDown,            // 503 SlowDown / 429: throttled.
  kServerError,         // Other 5xx.
  kNotImplemented,      // 501: the server lacks the operation.
  kTimeout,             // The call's deadline passed.
  kNetwork,             // Connection refused/reset, DNS, TLS.
  kMalformedResponse,   // The server's reply could not be parsed.
  kBadRequest,          // Other 4xx.
  // Local outcomes.
  kInvalidArgument,  // The caller passed something that cannot work.
  kCancelled,
  kNoSpace,       // Local disk (spool) full.
  kReadOnly,      // Mount is read-only or fenced after losing the lease.
  kExists,        // Target already exists.
  kNotEmpty,      // Directory not empty.
  kNotDirectory,  // A path component is not a directory.
  kIsDirectory,
  kNameTooLong,  // A file name or key over the limits (255-byte names, 1024-byte keys).
  kStale,  // The object changed underneath an open handle.
  kNotSupported,
  kNotPermitted,  // The operation is never allowed here (hard links).
  kBusy,
  kInternal,
};

// Short stable name of a code ("PreconditionFailed"), for logs and tests.
std::string_view ErrorCodeName(ErrorCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK.
  Status(ErrorCode code, std::string message, bool retryable = false);

  Status(const Status& other);
  Status& operator=(const Status& other);
  Status(Status&&) noexcept = default;
  Status& operator=(Status&&) noexcept = default;
  ~Status() = default;

  static Status Ok() { return Status(); }

  bool ok() const { return state_ == nullptr; }
  ErrorCode code() const { return state_ ? state_->code : ErrorCode::kOk; }
  bool retryable() const { return state_ && state_->retryable; }
  const std::string& message() const;

  // Server details; empty/0 when the error did not come from a server reply.
  int http_status() const { return state_ ? state_->http_status : 0; }
  const std::string& server_code() const;
  const std::string& request_id() const;

  Status& WithServerDetails(int http_status, std::string server_code, std::string request_id);
  Status& SetRetryable(bool retryable);
  // Prepends context: "reading data/a.bin: <message>".
  Status& Annotate(std::string_view context);

  // "PreconditionFailed: <message> (HTTP 412, server code X, request id Y)".
  std::string ToString() const;

  void IgnoreError() const {}

 private:
  struct State {
    ErrorCode code;
    bool retryable;
    int http_status = 0;
    std::string message;
    std::string server_code;
    std::string request_id;
  };
  std::unique_ptr<State> state_;
};

inline bool operator==(const Status& a, ErrorCode c) { return a.code() == c; }

// Result<T>: a value or a non-OK Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Status status) : status_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    if (status_.ok()) status_ = Status(ErrorCode::kInternal, "Result built from an OK Status");
  }

  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }
  Status TakeStatus() && { return std::move(status_); }

  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace bucketfs

#define BFS_CONCAT_INNER(a, b) a##b
#define BFS_CONCAT(a, b) BFS_CONCAT_INNER(a, b)

// Returns the Status from the enclosing function if `expr` is not OK.
#define BFS_RETURN_IF_ERROR(expr)                   \
  do {                                              \
    ::bucketfs::Status bfs_status_ = (expr);        \
    if (!bfs_status_.ok()) return bfs_status_;      \
  } while (false)

// `BFS_ASSIGN_OR_RETURN(auto x, MakeX());` binds the value or returns the error.
#define BFS_ASSIGN_OR_RETURN(lhs, expr) \
  BFS_ASSIGN_OR_RETURN_IMPL(BFS_CONCAT(bfs_result_, __LINE__), lhs, expr)
#define BFS_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr)     \
  auto tmp = (expr);                                  \
  if (!tmp.ok()) return std::move(tmp).TakeStatus(); \
  lhs = std::move(tmp).value()
