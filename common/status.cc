#include "common/status.h"

#include <fmt/format.h>

namespace bucketfs {
namespace {
const std::string kEmpty;
}  // namespace

std::string_view ErrorCodeName(ErrorCode code) {
  switch (code) {
    case ErrorCode::kOk: return "OK";
    case ErrorCode::kNotFound: return "NotFound";
    case ErrorCode::kNoSuchBucket: return "NoSuchBucket";
    case ErrorCode::kNoSuchUpload: return "NoSuchUpload";
    case ErrorCode::kAccessDenied: return "AccessDenied";
    case ErrorCode::kInvalidCredentials: return "InvalidCredentials";
    case ErrorCode::kExpiredCredentials: return "ExpiredCredentials";
    case ErrorCode::kPreconditionFailed: return "PreconditionFailed";
    case ErrorCode::kConflict: return "Conflict";
    case ErrorCode::kInvalidRange: return "InvalidRange";
    case ErrorCode::kEntityTooSmall: return "EntityTooSmall";
    case ErrorCode::kEntityTooLarge: return "EntityTooLarge";
    case ErrorCode::kQuotaExceeded: return "QuotaExceeded";
    case ErrorCode::kBadDigest: return "BadDigest";
    case ErrorCode::kSlowDown: return "SlowDown";
    case ErrorCode::kServerError: return "ServerError";
    case ErrorCode::kNotImplemented: return "NotImplemented";
    case ErrorCode::kTimeout: return "Timeout";
    case ErrorCode::kNetwork: return "Network";
    case ErrorCode::kMalformedResponse: return "MalformedResponse";
    case ErrorCode::kBadRequest: return "BadRequest";
    case ErrorCode::kInvalidArgument: return "InvalidArgument";
    case ErrorCode::kCancelled: return "Cancelled";
    case ErrorCode::kNoSpace: return "NoSpace";
    case ErrorCode::kReadOnly: return "ReadOnly";
    case ErrorCode::kExists: return "Exists";
    case ErrorCode::kNotEmpty: return "NotEmpty";
    case ErrorCode::kNotDirectory: return "NotDirectory";
    case ErrorCode::kIsDirectory: return "IsDirectory";
    case ErrorCode::kStale: return "Stale";
    case ErrorCode::kNotSupported: return "NotSupported";
    case ErrorCode::kNotPermitted: return "NotPermitted";
    case ErrorCode::kBusy: return "Busy";
    case ErrorCode::kNameTooLong: return "NameTooLong";
    case ErrorCode::kInternal: return "Internal";
  }
  return "Unknown";
}

Status::Status(ErrorCode code, std::string message, bool retryable) {
  if (code == ErrorCode::kOk) return;
  state_ = std::make_unique<State>();
  state_->code = code;
  state_->retryable = retryable;
  state_->message = std::move(message);
}

Status::Status(const Status& other)
    : state_(other.state_ ? std::make_unique<State>(*other.state_) : nullptr) {}

Status& Status::operator=(const Status& other) {
  if (this != &other) state_ = other.state_ ? std::make_unique<State>(*other.state_) : nullptr;
  return *this;
}

const std::string& Status::message() const { return state_ ? state_->message : kEmpty; }
const std::string& Status::server_code() const { return state_ ? state_->server_code : kEmpty; }
const std::string& Status::request_id() const { return state_ ? state_->request_id : kEmpty; }

Status& Status::WithServerDetails(int http_status, std::string server_code,
                                  std::string request_id) {
  if (state_) {
    state_->http_status = http_status;
    state_->server_code = std::move(server_code);
    state_->request_id = std::move(request_id);
  }
  return *this;
}

Status& Status::SetRetryable(bool retryable) {
  if (state_) state_->retryable = retryable;
  return *this;
}

Status& Status::Annotate(std::string_view context) {
  if (state_) state_->message = fmt::format("{}: {}", context, state_->message);
  return *this;
}

std::string Status::ToString() const {
  if (!state_) return "OK";
  std::string out = fmt::format("{}: {}", ErrorCodeName(state_->code), state_->message);
  if (state_->http_status != 0) {
    out += fmt::format(" (HTTP {}", state_->http_status);
    if (!state_->server_code.empty()) out += ", server code " + state_->server_code;
    if (!state_->request_id.empty()) out += ", request id " + state_->request_id;
    out += ")";
  }
  return out;
}

}  // namespace bucketfs
