#include "s3/fake_client.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <tuple>
#include <utility>

namespace bucketfs::s3 {
namespace {

constexpr size_t kMaxKeyBytes = 1024;
constexpr size_t kMaxMetadataBytes = 2048;
constexpr int kMaxListKeys = 1000;
constexpr int kMaxListParts = 1000;
constexpr int kMaxListUploads = 1000;
constexpr std::string_view kDefaultContentType = "binary/octet-stream";
constexpr std::string_view kStorageClass = "STANDARD";
constexpr std::string_view kTokenMagic = "fake1:";
constexpr std::string_view kUploadIdPrefix = "fakeupload-";

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

std::string EtagOf(std::string_view body) {
  return HexLower(Md5(std::span<const char>(body.data(), body.size())));
}

// "HeadObject a/b: <text>".
std::string Msg(std::string_view op, std::string_view key, std::string_view text) {
  return fmt::format("{} {}: {}", op, key, text);
}

// The smallest string greater than every string that starts with `prefix`, or nullopt if
// there is none (prefix empty or all 0xff bytes).
std::optional<std::string> PrefixSuccessor(std::string prefix) {
  while (!prefix.empty() && static_cast<unsigned char>(prefix.back()) == 0xff) {
    prefix.pop_back();
  }
  if (prefix.empty()) return std::nullopt;
  prefix.back() = static_cast<char>(static_cast<unsigned char>(prefix.back()) + 1);
  return prefix;
}

// Continuation tokens: where the previous page stopped. kAfterKey resumes after one key,
// kAfterPrefix after every key under a common prefix already returned.
enum class ResumeKind : char { kAfterKey = 'K', kAfterPrefix = 'P' };

std::string EncodeToken(ResumeKind kind, std::string_view key) {
  std::string token(kTokenMagic);
  token.push_back(static_cast<char>(kind));
  token +=
      HexLower(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(key.data()), key.size()));
  return token;
}

std::optional<std::pair<ResumeKind, std::string>> DecodeToken(std::string_view token) {
  if (!StartsWith(token, kTokenMagic)) return std::nullopt;
  token.remove_prefix(kTokenMagic.size());
  if (token.empty()) return std::nullopt;
  const char kind = token.front();
  if (kind != static_cast<char>(ResumeKind::kAfterKey) &&
      kind != static_cast<char>(ResumeKind::kAfterPrefix)) {
    return std::nullopt;
  }
  token.remove_prefix(1);
  if (token.size() % 2 != 0) return std::nullopt;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  std::string key;
  key.reserve(token.size() / 2);
  for (size_t i = 0; i < token.size(); i += 2) {
    const int hi = nibble(token[i]);
    const int lo = nibble(token[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    key.push_back(static_cast<char>(hi * 16 + lo));
  }
  return std::pair{static_cast<ResumeKind>(kind), std::move(key)};
}

std::string UploadIdFor(uint64_t seq) { return fmt::format("{}{:016x}", kUploadIdPrefix, seq); }

std::optional<uint64_t> UploadSeqOf(std::string_view upload_id) {
  if (!StartsWith(upload_id, kUploadIdPrefix)) return std::nullopt;
  upload_id.remove_prefix(kUploadIdPrefix.size());
  if (upload_id.size() != 16) return std::nullopt;
  uint64_t seq = 0;
  for (char c : upload_id) {
    int v = -1;
    if (c >= '0' && c <= '9') v = c - '0';
    if (c >= 'a' && c <= 'f') v = c - 'a' + 10;
    if (v < 0) return std::nullopt;
    seq = seq * 16 + static_cast<uint64_t>(v);
  }
  return seq;
}

UserMetadata NormalizeMetadata(const UserMetadata& metadata) {
  UserMetadata out;
  for (const auto& [name, value] : metadata) {
    std::string lower = name;
    std::transform(lower.begin(), lower.end(), lower.begin(), [](char c) {
      return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
    });
    out[std::move(lower)] = value;
  }
  return out;
}

bool IsMultipartEtag(std::string_view etag) { return etag.find('-') != std::string_view::npos; }

}  // namespace

FakeObjectClient::FakeObjectClient() : FakeObjectClient(FakeObjectClientOptions{}, RealClock()) {}

FakeObjectClient::FakeObjectClient(Clock& clock)
    : FakeObjectClient(FakeObjectClientOptions{}, clock) {}

FakeObjectClient::FakeObjectClient(FakeObjectClientOptions options, Clock& clock)
    : options_(std::move(options)), clock_(clock) {}

// --- Helpers ------------------------------------------------------------------------------

Status FakeObjectClient::Begin(Op op, const CallOptions& opts) {
  calls_[static_cast<size_t>(op)].fetch_add(1, std::memory_order_relaxed);
  if (opts.deadline.has_value() && *opts.deadline <= clock_.Now()) {
    return Status(ErrorCode::kTimeout,
                  fmt::format("{}: the call's deadline passed before it was sent", OpName(op)));
  }
  return Status::Ok();
}

Status FakeObjectClient::S3Error(ErrorCode code, int http_status, std::string_view s3_code,
                                 std::string message) {
  Status status(code, std::move(message));
  status.WithServerDetails(
      http_status, std::string(s3_code),
      fmt::format("fake-{}", next_request_id_.fetch_add(1, std::memory_order_relaxed)));
  return status;
}

Status FakeObjectClient::CheckKey(const std::string& key, std::string_view op) {
  if (key.empty()) {
    return Status(ErrorCode::kInvalidArgument, fmt::format("{}: the object key is empty", op));
  }
  if (key.size() > kMaxKeyBytes) {
    return S3Error(ErrorCode::kBadRequest, 400, "KeyTooLongError",
                   Msg(op, key.substr(0, 64) + "...", "Your key is too long"));
  }
  return Status::Ok();
}

Status FakeObjectClient::CheckMetadata(const UserMetadata& metadata, std::string_view op,
                                       const std::string& key) {
  size_t total = 0;
  for (const auto& [name, value] : metadata) total += name.size() + value.size();
  if (total > kMaxMetadataBytes) {
    return S3Error(ErrorCode::kBadRequest, 400, "MetadataTooLarge",
                   Msg(op, key,
                       fmt::format("Your metadata headers exceed the maximum allowed metadata "
                                   "size ({} > {} bytes)",
                                   total, kMaxMetadataBytes)));
  }
  return Status::Ok();
}

Status FakeObjectClient::CheckCondition(const WriteCondition& cond, const std::string& key,
                                        const Object* current, std::string_view op) {
  switch (cond.kind) {
    case WriteCondition::Kind::kNone:
      return Status::Ok();
    case WriteCondition::Kind::kIfNoneMatchAny:
      if (current != nullptr) {
        return S3Error(ErrorCode::kPreconditionFailed, 412, "PreconditionFailed",
                       Msg(op, key,
                           "At least one of the pre-conditions you specified did not hold "
                           "(If-None-Match: *, the object exists)"));
      }
      return Status::Ok();
    case WriteCondition::Kind::kIfMatch:
      if (cond.etag.empty()) {
        return Status(ErrorCode::kInvalidArgument, Msg(op, key, "If-Match with an empty ETag"));
      }
      if (current == nullptr) {
        // AWS answers 404 NoSuchKey, not 412, when If-Match names a key with no object.
        return S3Error(ErrorCode::kNotFound, 404, "NoSuchKey",
                       Msg(op, key, "The specified key does not exist (If-Match)"));
      }
      if (current->etag != cond.etag) {
        return S3Error(ErrorCode::kPreconditionFailed, 412, "PreconditionFailed",
                       Msg(op, key,
                           fmt::format("At least one of the pre-conditions you specified did "
                                       "not hold (If-Match: {}, current ETag {})",
                                       cond.etag, current->etag)));
      }
      return Status::Ok();
  }
  return Status(ErrorCode::kInternal, Msg(op, key, "unknown write condition"));
}

FakeObjectClient::Upload* FakeObjectClient::FindUpload(const std::string& key,
                                                       const std::string& upload_id) {
  auto it = uploads_.find(upload_id);
  if (it == uploads_.end() || it->second.key != key) return nullptr;
  return &it->second;
}

Status FakeObjectClient::NoSuchUpload(std::string_view op, const std::string& key,
                                      const std::string& upload_id) {
  return S3Error(ErrorCode::kNoSuchUpload, 404, "NoSuchUpload",
                 Msg(op, key,
                     fmt::format("The specified upload {} does not exist. The upload ID may be "
                                 "invalid, or the upload may have been aborted or completed.",
                                 upload_id)));
}

FakeObjectClient::Object FakeObjectClient::MakeObject(Body body, std::string etag,
                                                      std::string content_type,
                                                      UserMetadata metadata) const {
  Object obj;
  obj.body = std::move(body);
  obj.etag = std::move(etag);
  // S3's Last-Modified header has whole seconds.
  obj.last_modified = std::chrono::floor<std::chrono::seconds>(clock_.WallNow());
  obj.content_type =
      content_type.empty() ? std::string(kDefaultContentType) : std::move(content_type);
  obj.metadata = std::move(metadata);
  return obj;
}

ObjectInfo FakeObjectClient::InfoOf(const std::string& key, const Object& obj) {
  ObjectInfo info;
  info.key = key;
  info.size = obj.body->size();
  info.etag = obj.etag;
  info.last_modified = obj.last_modified;
  info.content_type = obj.content_type;
  info.metadata = obj.metadata;
  return info;
}

// --- Direct access --------------------------------------------------------------------

std::optional<std::string> FakeObjectClient::ObjectBody(const std::string& key) const {
  Body body;
  {
    std::shared_lock lock(mu_);
    auto it = objects_.find(key);
    if (it == objects_.end()) return std::nullopt;
    body = it->second.body;
  }
  return *body;
}

std::optional<ObjectInfo> FakeObjectClient::ObjectInfoDirect(const std::string& key) const {
  std::shared_lock lock(mu_);
  auto it = objects_.find(key);
  if (it == objects_.end()) return std::nullopt;
  return InfoOf(key, it->second);
}

bool FakeObjectClient::Exists(const std::string& key) const {
  std::shared_lock lock(mu_);
  return objects_.contains(key);
}

std::string FakeObjectClient::PutDirect(const std::string& key, std::string_view body,
                                        const UserMetadata& metadata,
                                        const std::string& content_type) {
  auto stored = std::make_shared<const std::string>(body);
  std::string etag = EtagOf(body);
  Object obj = MakeObject(std::move(stored), etag, content_type, NormalizeMetadata(metadata));
  std::unique_lock lock(mu_);
  objects_.insert_or_assign(key, std::move(obj));
  return etag;
}

void FakeObjectClient::DeleteDirect(const std::string& key) {
  std::unique_lock lock(mu_);
  objects_.erase(key);
}

std::vector<std::string> FakeObjectClient::Keys() const {
  std::shared_lock lock(mu_);
  std::vector<std::string> keys;
  keys.reserve(objects_.size());
  for (const auto& [key, obj] : objects_) keys.push_back(key);
  return keys;
}

size_t FakeObjectClient::PendingUploads() const {
  std::shared_lock lock(mu_);
  return uploads_.size();
}

// --- Counters -------------------------------------------------------------------------

uint64_t FakeObjectClient::calls(Op op) const {
  return calls_[static_cast<size_t>(op)].load(std::memory_order_relaxed);
}

uint64_t FakeObjectClient::total_calls() const {
  uint64_t total = 0;
  for (const auto& c : calls_) total += c.load(std::memory_order_relaxed);
  return total;
}

uint64_t FakeObjectClient::bytes_sent() const {
  return bytes_sent_.load(std::memory_order_relaxed);
}

uint64_t FakeObjectClient::bytes_received() const {
  return bytes_received_.load(std::memory_order_relaxed);
}

void FakeObjectClient::ResetCounters() {
  for (auto& c : calls_) c.store(0, std::memory_order_relaxed);
  bytes_sent_.store(0, std::memory_order_relaxed);
  bytes_received_.store(0, std::memory_order_relaxed);
}

// --- Objects --------------------------------------------------------------------------

const std::string& FakeObjectClient::bucket() const { return options_.bucket; }

Result<ObjectInfo> FakeObjectClient::Head(const HeadRequest& req, const CallOptions& opts) {
  constexpr std::string_view kOp = "HeadObject";
  BFS_RETURN_IF_ERROR(Begin(Op::kHead, opts));
  BFS_RETURN_IF_ERROR(CheckKey(req.key, kOp));
  std::shared_lock lock(mu_);
  auto it = objects_.find(req.key);
  if (it == objects_.end()) {
    return S3Error(ErrorCode::kNotFound, 404, "NoSuchKey",
                   Msg(kOp, req.key, "The specified key does not exist."));
  }
  if (!req.if_match.empty() && req.if_match != it->second.etag) {
    return S3Error(ErrorCode::kPreconditionFailed, 412, "PreconditionFailed",
                   Msg(kOp, req.key,
                       fmt::format("If-Match {} does not match the current ETag {}", req.if_match,
                                   it->second.etag)));
  }
  return InfoOf(req.key, it->second);
}

Result<GetResult> FakeObjectClient::Get(const GetRequest& req, std::span<char> buffer,
                                        const CallOptions& opts) {
  constexpr std::string_view kOp = "GetObject";
  BFS_RETURN_IF_ERROR(Begin(Op::kGet, opts));
  BFS_RETURN_IF_ERROR(CheckKey(req.key, kOp));
  if (req.range.has_value() && req.range->length == 0) {
    return Status(ErrorCode::kInvalidArgument, Msg(kOp, req.key, "range of length 0"));
  }
  Object obj;
  {
    std::shared_lock lock(mu_);
    auto it = objects_.find(req.key);
    if (it == objects_.end()) {
      return S3Error(ErrorCode::kNotFound, 404, "NoSuchKey",
                     Msg(kOp, req.key, "The specified key does not exist."));
    }
    if (!req.if_match.empty() && req.if_match != it->second.etag) {
      return S3Error(ErrorCode::kPreconditionFailed, 412, "PreconditionFailed",
                     Msg(kOp, req.key,
                         fmt::format("If-Match {} does not match the current ETag {}", req.if_match,
                                     it->second.etag)));
    }
    obj = it->second;  // Shares the body; the copy into `buffer` happens unlocked.
  }
  const uint64_t size = obj.body->size();
  uint64_t offset = 0;
  uint64_t length = size;
  if (req.range.has_value()) {
    offset = req.range->offset;
    if (offset >= size) {
      return S3Error(ErrorCode::kInvalidRange, 416, "InvalidRange",
                     Msg(kOp, req.key,
                         fmt::format("The requested range is not satisfiable (bytes={}-{}, "
                                     "object size {})",
                                     offset, offset + req.range->length - 1, size)));
    }
    length = std::min(req.range->length, size - offset);
  }
  if (length > buffer.size()) {
    return Status(ErrorCode::kInternal,
                  Msg(kOp, req.key,
                      fmt::format("reply of {} bytes does not fit the caller's {}-byte buffer",
                                  length, buffer.size())));
  }
  if (length > 0) std::memcpy(buffer.data(), obj.body->data() + offset, length);
  bytes_received_.fetch_add(length, std::memory_order_relaxed);
  GetResult result;
  result.info = InfoOf(req.key, obj);
  result.bytes_read = length;
  return result;
}

Result<PutResult> FakeObjectClient::Put(const PutRequest& req, const CallOptions& opts) {
  constexpr std::string_view kOp = "PutObject";
  BFS_RETURN_IF_ERROR(Begin(Op::kPut, opts));
  bytes_sent_.fetch_add(req.body.size(), std::memory_order_relaxed);
  BFS_RETURN_IF_ERROR(CheckKey(req.key, kOp));
  BFS_RETURN_IF_ERROR(CheckMetadata(req.metadata, kOp, req.key));
  if (req.body.size() > kMaxSinglePutSize) {
    return S3Error(ErrorCode::kEntityTooLarge, 400, "EntityTooLarge",
                   Msg(kOp, req.key, "Your proposed upload exceeds the maximum allowed size"));
  }
  auto body = std::make_shared<const std::string>(req.body.data(), req.body.size());
  std::string etag = EtagOf(*body);
  Object obj = MakeObject(std::move(body), etag, req.content_type, NormalizeMetadata(req.metadata));
  std::unique_lock lock(mu_);
  auto it = objects_.find(req.key);
  BFS_RETURN_IF_ERROR(
      CheckCondition(req.condition, req.key, it == objects_.end() ? nullptr : &it->second, kOp));
  objects_.insert_or_assign(req.key, std::move(obj));
  return PutResult{std::move(etag)};
}

Result<PutResult> FakeObjectClient::Copy(const CopyRequest& req, const CallOptions& opts) {
  constexpr std::string_view kOp = "CopyObject";
  BFS_RETURN_IF_ERROR(Begin(Op::kCopy, opts));
  BFS_RETURN_IF_ERROR(CheckKey(req.source_key, kOp));
  BFS_RETURN_IF_ERROR(CheckKey(req.dest_key, kOp));
  const bool replace = req.directive == CopyRequest::MetadataDirective::kReplace;
  if (replace) BFS_RETURN_IF_ERROR(CheckMetadata(req.metadata, kOp, req.dest_key));
  Object src;
  {
    std::shared_lock lock(mu_);
    auto it = objects_.find(req.source_key);
    if (it == objects_.end()) {
      return S3Error(ErrorCode::kNotFound, 404, "NoSuchKey",
                     Msg(kOp, req.source_key, "The specified (source) key does not exist."));
    }
    if (!req.source_if_match.empty() && req.source_if_match != it->second.etag) {
      return S3Error(ErrorCode::kPreconditionFailed, 412, "PreconditionFailed",
                     Msg(kOp, req.source_key,
                         fmt::format("x-amz-copy-source-if-match {} does not match the "
                                     "source's ETag {}",
                                     req.source_if_match, it->second.etag)));
    }
    src = it->second;
  }
  if (req.source_key == req.dest_key && !replace) {
    return S3Error(ErrorCode::kBadRequest, 400, "InvalidRequest",
                   Msg(kOp, req.dest_key,
                       "This copy request is illegal because it is trying to copy an object to "
                       "itself without changing the object's metadata, storage class, website "
                       "redirect location or encryption attributes."));
  }
  // A copy is a new single-part object: a multipart source's "-N" ETag becomes an MD5.
  std::string etag = IsMultipartEtag(src.etag) ? EtagOf(*src.body) : src.etag;
  Object obj = replace
                   ? MakeObject(src.body, etag, req.content_type, NormalizeMetadata(req.metadata))
                   : MakeObject(src.body, etag, src.content_type, src.metadata);
  std::unique_lock lock(mu_);
  auto it = objects_.find(req.dest_key);
  BFS_RETURN_IF_ERROR(CheckCondition(req.condition, req.dest_key,
                                     it == objects_.end() ? nullptr : &it->second, kOp));
  objects_.insert_or_assign(req.dest_key, std::move(obj));
  return PutResult{std::move(etag)};
}

Status FakeObjectClient::Delete(const std::string& key, const CallOptions& opts) {
  BFS_RETURN_IF_ERROR(Begin(Op::kDelete, opts));
  BFS_RETURN_IF_ERROR(CheckKey(key, "DeleteObject"));
  std::unique_lock lock(mu_);
  objects_.erase(key);  // A missing key is not an error in S3.
  return Status::Ok();
}

Result<DeleteManyResult> FakeObjectClient::DeleteMany(const std::vector<std::string>& keys,
                                                      const CallOptions& opts) {
  BFS_RETURN_IF_ERROR(Begin(Op::kDeleteMany, opts));
  if (keys.size() > kMaxDeleteBatch) {
    return Status(ErrorCode::kInvalidArgument,
                  fmt::format("DeleteObjects: {} keys in one request; at most {} are allowed",
                              keys.size(), kMaxDeleteBatch));
  }
  DeleteManyResult result;
  std::unique_lock lock(mu_);
  for (const std::string& key : keys) {
    if (key.empty()) {
      result.errors.push_back({key, "UserKeyMustBeSpecified", "The key is empty"});
      continue;
    }
    if (key.size() > kMaxKeyBytes) {
      result.errors.push_back({key, "KeyTooLongError", "Your key is too long"});
      continue;
    }
    objects_.erase(key);
    result.deleted.push_back(key);
  }
  return result;
}

Result<ListPage> FakeObjectClient::List(const ListRequest& req, const CallOptions& opts) {
  constexpr std::string_view kOp = "ListObjectsV2";
  BFS_RETURN_IF_ERROR(Begin(Op::kList, opts));
  if (req.max_keys < 0) {
    return S3Error(ErrorCode::kInvalidArgument, 400, "InvalidArgument",
                   Msg(kOp, req.prefix, "max-keys must be non-negative"));
  }
  const int max_keys = std::min(req.max_keys, kMaxListKeys);

  // Where to resume: after a key (start_after or a token), or past a common prefix.
  std::optional<std::pair<ResumeKind, std::string>> resume;
  if (!req.continuation_token.empty()) {
    resume = DecodeToken(req.continuation_token);
    if (!resume.has_value()) {
      return S3Error(ErrorCode::kBadRequest, 400, "InvalidArgument",
                     Msg(kOp, req.prefix, "The continuation token provided is incorrect"));
    }
  } else if (!req.start_after.empty()) {
    resume = std::pair{ResumeKind::kAfterKey, req.start_after};
  }

  ListPage page;
  if (max_keys == 0) return page;

  std::shared_lock lock(mu_);
  auto it = objects_.lower_bound(req.prefix);
  auto advance_past = [&](ResumeKind kind, const std::string& key) {
    decltype(it) next;
    if (kind == ResumeKind::kAfterKey) {
      next = objects_.upper_bound(key);
    } else {
      const std::optional<std::string> succ = PrefixSuccessor(key);
      next = succ.has_value() ? objects_.lower_bound(*succ) : objects_.end();
    }
    // Never move backwards (a start_after before the prefix leaves `it` where it is).
    if (it == objects_.end()) return;
    if (next == objects_.end() || next->first > it->first) it = next;
  };
  if (resume.has_value()) advance_past(resume->first, resume->second);

  int count = 0;
  ResumeKind last_kind = ResumeKind::kAfterKey;
  std::string last;
  while (it != objects_.end() && StartsWith(it->first, req.prefix)) {
    if (count == max_keys) {
      page.is_truncated = true;
      break;
    }
    const std::string& key = it->first;
    size_t pos = std::string::npos;
    if (!req.delimiter.empty()) pos = key.find(req.delimiter, req.prefix.size());
    if (pos != std::string::npos) {
      std::string common = key.substr(0, pos + req.delimiter.size());
      page.common_prefixes.push_back(common);
      last_kind = ResumeKind::kAfterPrefix;
      last = std::move(common);
      ++count;
      advance_past(ResumeKind::kAfterPrefix, last);
      continue;
    }
    ObjectInfo info;
    info.key = key;
    info.size = it->second.body->size();
    info.etag = it->second.etag;
    info.last_modified = it->second.last_modified;
    info.storage_class = std::string(kStorageClass);
    page.objects.push_back(std::move(info));
    last_kind = ResumeKind::kAfterKey;
    last = key;
    ++count;
    ++it;
  }
  if (page.is_truncated) page.next_continuation_token = EncodeToken(last_kind, last);
  return page;
}

// --- Multipart ------------------------------------------------------------------------

Result<std::string> FakeObjectClient::CreateMultipart(const CreateMultipartRequest& req,
                                                      const CallOptions& opts) {
  constexpr std::string_view kOp = "CreateMultipartUpload";
  BFS_RETURN_IF_ERROR(Begin(Op::kCreateMultipart, opts));
  BFS_RETURN_IF_ERROR(CheckKey(req.key, kOp));
  BFS_RETURN_IF_ERROR(CheckMetadata(req.metadata, kOp, req.key));
  Upload upload;
  upload.key = req.key;
  upload.initiated = std::chrono::floor<std::chrono::seconds>(clock_.WallNow());
  upload.content_type = req.content_type;
  upload.metadata = NormalizeMetadata(req.metadata);
  std::unique_lock lock(mu_);
  upload.seq = next_upload_seq_++;
  std::string id = UploadIdFor(upload.seq);
  uploads_.emplace(id, std::move(upload));
  return id;
}

Result<PartInfo> FakeObjectClient::UploadPart(const UploadPartRequest& req,
                                              const CallOptions& opts) {
  constexpr std::string_view kOp = "UploadPart";
  BFS_RETURN_IF_ERROR(Begin(Op::kUploadPart, opts));
  bytes_sent_.fetch_add(req.body.size(), std::memory_order_relaxed);
  if (req.part_number < 1 || req.part_number > kMaxParts) {
    return S3Error(ErrorCode::kInvalidArgument, 400, "InvalidArgument",
                   Msg(kOp, req.key,
                       fmt::format("Part number must be an integer between 1 and {}, "
                                   "inclusive (got {})",
                                   kMaxParts, req.part_number)));
  }
  if (req.body.size() > kMaxPartSize) {
    return S3Error(ErrorCode::kEntityTooLarge, 400, "EntityTooLarge",
                   Msg(kOp, req.key, "Your proposed upload exceeds the maximum allowed size"));
  }
  Part part;
  part.body = std::make_shared<const std::string>(req.body.data(), req.body.size());
  part.md5 = Md5(req.body);
  part.etag = HexLower(part.md5);
  PartInfo info{req.part_number, part.etag, req.body.size()};
  std::unique_lock lock(mu_);
  Upload* upload = FindUpload(req.key, req.upload_id);
  if (upload == nullptr) return NoSuchUpload(kOp, req.key, req.upload_id);
  upload->parts.insert_or_assign(req.part_number, std::move(part));
  return info;
}

Result<PartInfo> FakeObjectClient::UploadPartCopy(const UploadPartCopyRequest& req,
                                                  const CallOptions& opts) {
  constexpr std::string_view kOp = "UploadPartCopy";
  BFS_RETURN_IF_ERROR(Begin(Op::kUploadPartCopy, opts));
  if (req.part_number < 1 || req.part_number > kMaxParts) {
    return S3Error(ErrorCode::kInvalidArgument, 400, "InvalidArgument",
                   Msg(kOp, req.key,
                       fmt::format("Part number must be an integer between 1 and {}, "
                                   "inclusive (got {})",
                                   kMaxParts, req.part_number)));
  }
  BFS_RETURN_IF_ERROR(CheckKey(req.source_key, kOp));
  Body source;
  {
    std::shared_lock lock(mu_);
    if (FindUpload(req.key, req.upload_id) == nullptr) {
      return NoSuchUpload(kOp, req.key, req.upload_id);
    }
    auto it = objects_.find(req.source_key);
    if (it == objects_.end()) {
      return S3Error(ErrorCode::kNotFound, 404, "NoSuchKey",
                     Msg(kOp, req.source_key, "The specified (source) key does not exist."));
    }
    if (!req.source_if_match.empty() && req.source_if_match != it->second.etag) {
      return S3Error(ErrorCode::kPreconditionFailed, 412, "PreconditionFailed",
                     Msg(kOp, req.source_key,
                         fmt::format("x-amz-copy-source-if-match {} does not match the "
                                     "source's ETag {}",
                                     req.source_if_match, it->second.etag)));
    }
    source = it->second.body;
  }
  Part part;
  if (req.source_range.has_value()) {
    const ByteRange& r = *req.source_range;
    if (r.length == 0 || r.offset >= source->size() || r.length > source->size() - r.offset) {
      return S3Error(ErrorCode::kInvalidRange, 400, "InvalidArgument",
                     Msg(kOp, req.source_key,
                         fmt::format("Range specified is not valid for source object of size: "
                                     "{} (offset {}, length {})",
                                     source->size(), r.offset, r.length)));
    }
    part.body = std::make_shared<const std::string>(source->substr(r.offset, r.length));
  } else {
    part.body = source;  // Whole object: share it.
  }
  if (part.body->size() > kMaxPartSize) {
    return S3Error(ErrorCode::kEntityTooLarge, 400, "EntityTooLarge",
                   Msg(kOp, req.key, "Your proposed upload exceeds the maximum allowed size"));
  }
  part.md5 = Md5(std::span<const char>(part.body->data(), part.body->size()));
  part.etag = HexLower(part.md5);
  PartInfo info{req.part_number, part.etag, part.body->size()};
  std::unique_lock lock(mu_);
  Upload* upload = FindUpload(req.key, req.upload_id);
  if (upload == nullptr) return NoSuchUpload(kOp, req.key, req.upload_id);
  upload->parts.insert_or_assign(req.part_number, std::move(part));
  return info;
}

Result<PutResult> FakeObjectClient::CompleteMultipart(const CompleteMultipartRequest& req,
                                                      const CallOptions& opts) {
  constexpr std::string_view kOp = "CompleteMultipartUpload";
  BFS_RETURN_IF_ERROR(Begin(Op::kCompleteMultipart, opts));
  // Validate and snapshot the parts under a shared lock, assemble the object unlocked, then
  // install it under the exclusive lock if no listed part changed meanwhile (else redo).
  for (;;) {
    std::vector<Part> parts;
    std::string content_type;
    UserMetadata metadata;
    {
      std::shared_lock lock(mu_);
      Upload* upload = FindUpload(req.key, req.upload_id);
      if (upload == nullptr) return NoSuchUpload(kOp, req.key, req.upload_id);
      if (req.parts.empty()) {
        return S3Error(ErrorCode::kBadRequest, 400, "MalformedXML",
                       Msg(kOp, req.key, "The request lists no parts"));
      }
      for (size_t i = 1; i < req.parts.size(); ++i) {
        if (req.parts[i].part_number <= req.parts[i - 1].part_number) {
          return S3Error(ErrorCode::kBadRequest, 400, "InvalidPartOrder",
                         Msg(kOp, req.key,
                             fmt::format("The list of parts was not in ascending order (part "
                                         "{} after part {})",
                                         req.parts[i].part_number, req.parts[i - 1].part_number)));
        }
      }
      parts.reserve(req.parts.size());
      for (const PartInfo& listed : req.parts) {
        auto it = upload->parts.find(listed.part_number);
        if (it == upload->parts.end() || it->second.etag != listed.etag) {
          return S3Error(
              ErrorCode::kBadRequest, 400, "InvalidPart",
              Msg(kOp, req.key,
                  fmt::format("One or more of the specified parts could not be found or its "
                              "entity tag did not match (part {}, ETag {})",
                              listed.part_number, listed.etag)));
        }
        parts.push_back(it->second);
      }
      for (size_t i = 0; i + 1 < parts.size(); ++i) {
        if (parts[i].body->size() < options_.min_part_size) {
          return S3Error(ErrorCode::kEntityTooSmall, 400, "EntityTooSmall",
                         Msg(kOp, req.key,
                             fmt::format("Your proposed upload is smaller than the minimum "
                                         "allowed object size (part {} has {} bytes, the "
                                         "minimum is {})",
                                         req.parts[i].part_number, parts[i].body->size(),
                                         options_.min_part_size)));
        }
      }
      content_type = upload->content_type;
      metadata = upload->metadata;
    }

    Body body;
    std::string digests;
    digests.reserve(parts.size() * sizeof(Md5Digest));
    for (const Part& p : parts) {
      digests.append(reinterpret_cast<const char*>(p.md5.data()), p.md5.size());
    }
    std::string etag = fmt::format("{}-{}", EtagOf(digests), parts.size());
    if (parts.size() == 1) {
      body = parts.front().body;
    } else {
      size_t total = 0;
      for (const Part& p : parts) total += p.body->size();
      std::string joined;
      joined.reserve(total);
      for (const Part& p : parts) joined += *p.body;
      body = std::make_shared<const std::string>(std::move(joined));
    }
    Object obj = MakeObject(std::move(body), etag, std::move(content_type), std::move(metadata));

    std::unique_lock lock(mu_);
    Upload* upload = FindUpload(req.key, req.upload_id);
    if (upload == nullptr) return NoSuchUpload(kOp, req.key, req.upload_id);
    bool changed = false;
    for (size_t i = 0; i < parts.size() && !changed; ++i) {
      auto it = upload->parts.find(req.parts[i].part_number);
      changed = it == upload->parts.end() || it->second.body != parts[i].body;
    }
    if (changed) continue;  // A part was re-uploaded while we assembled: validate again.
    auto it = objects_.find(req.key);
    BFS_RETURN_IF_ERROR(
        CheckCondition(req.condition, req.key, it == objects_.end() ? nullptr : &it->second, kOp));
    objects_.insert_or_assign(req.key, std::move(obj));
    uploads_.erase(req.upload_id);
    return PutResult{std::move(etag)};
  }
}

Status FakeObjectClient::AbortMultipart(const std::string& key, const std::string& upload_id,
                                        const CallOptions& opts) {
  BFS_RETURN_IF_ERROR(Begin(Op::kAbortMultipart, opts));
  std::unique_lock lock(mu_);
  if (FindUpload(key, upload_id) == nullptr) {
    return NoSuchUpload("AbortMultipartUpload", key, upload_id);
  }
  uploads_.erase(upload_id);
  return Status::Ok();
}

Result<ListPartsPage> FakeObjectClient::ListParts(const ListPartsRequest& req,
                                                  const CallOptions& opts) {
  constexpr std::string_view kOp = "ListParts";
  BFS_RETURN_IF_ERROR(Begin(Op::kListParts, opts));
  if (req.max_parts < 0 || req.part_number_marker < 0) {
    return S3Error(ErrorCode::kInvalidArgument, 400, "InvalidArgument",
                   Msg(kOp, req.key, "max-parts and part-number-marker must be non-negative"));
  }
  const int max_parts = std::min(req.max_parts, kMaxListParts);
  std::shared_lock lock(mu_);
  Upload* upload = FindUpload(req.key, req.upload_id);
  if (upload == nullptr) return NoSuchUpload(kOp, req.key, req.upload_id);
  ListPartsPage page;
  if (max_parts == 0) return page;  // Like ListObjectsV2 with max-keys 0.
  for (auto it = upload->parts.upper_bound(req.part_number_marker); it != upload->parts.end();
       ++it) {
    if (static_cast<int>(page.parts.size()) == max_parts) {
      page.is_truncated = true;
      break;
    }
    page.parts.push_back({it->first, it->second.etag, it->second.body->size()});
  }
  if (!page.parts.empty()) page.next_part_number_marker = page.parts.back().part_number;
  return page;
}

Result<ListUploadsPage> FakeObjectClient::ListMultipartUploads(const ListUploadsRequest& req,
                                                               const CallOptions& opts) {
  constexpr std::string_view kOp = "ListMultipartUploads";
  BFS_RETURN_IF_ERROR(Begin(Op::kListMultipartUploads, opts));
  if (req.max_uploads < 0) {
    return S3Error(ErrorCode::kInvalidArgument, 400, "InvalidArgument",
                   Msg(kOp, req.prefix, "max-uploads must be non-negative"));
  }
  // S3 ignores upload-id-marker without key-marker.
  std::optional<uint64_t> id_marker_seq;
  if (!req.key_marker.empty() && !req.upload_id_marker.empty()) {
    id_marker_seq = UploadSeqOf(req.upload_id_marker);
    if (!id_marker_seq.has_value()) {
      return S3Error(
          ErrorCode::kBadRequest, 400, "InvalidArgument",
          Msg(kOp, req.prefix, fmt::format("Invalid upload id marker {}", req.upload_id_marker)));
    }
  }
  const int max_uploads = std::min(req.max_uploads, kMaxListUploads);

  struct Entry {
    const std::string* key;
    uint64_t seq;
    const std::string* id;
    WallTime initiated;
  };
  ListUploadsPage page;
  if (max_uploads == 0) return page;  // Like ListObjectsV2 with max-keys 0.
  std::shared_lock lock(mu_);
  std::vector<Entry> entries;
  for (const auto& [id, upload] : uploads_) {
    if (!StartsWith(upload.key, req.prefix)) continue;
    if (!req.key_marker.empty()) {
      const bool after_key = upload.key > req.key_marker;
      const bool after_id =
          upload.key == req.key_marker && id_marker_seq.has_value() && upload.seq > *id_marker_seq;
      if (!after_key && !after_id) continue;
    }
    entries.push_back({&upload.key, upload.seq, &id, upload.initiated});
  }
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return std::tie(*a.key, a.seq) < std::tie(*b.key, b.seq);
  });
  for (const Entry& e : entries) {
    if (static_cast<int>(page.uploads.size()) == max_uploads) {
      page.is_truncated = true;
      break;
    }
    page.uploads.push_back({*e.key, *e.id, e.initiated});
  }
  if (page.is_truncated) {
    page.next_key_marker = page.uploads.back().key;
    page.next_upload_id_marker = page.uploads.back().upload_id;
  }
  return page;
}

}  // namespace bucketfs::s3
