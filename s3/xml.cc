// S3 XML bodies on pugixml. See s3/xml.h for the contract.
//
// Parsing: every reply is loaded with load_buffer (pugixml's own copy, nothing else), its
// root element checked by local name, and the fields we use read by local name, so the
// default xmlns S3 sends, a prefixed namespace, or none at all are all the same to us.
// Unknown elements are ignored; elements we rely on are required, and a missing one is
// kMalformedResponse naming it. Numbers go through std::from_chars over the whole text
// (no sign for sizes, no spaces, no overflow). Dates are converted with the proleptic
// Gregorian calendar in std::chrono, never the process time zone.
//
// Building: request bodies are built with pugixml so &, <, > in keys are escaped by the
// library. Two things XML cannot carry are handled by hand (see EscapingWriter and
// KeyText below): a carriage return, which the server's parser would turn into '\n', and
// NUL, which pugixml would silently cut the key at.
#include "s3/xml.h"

#include <fmt/format.h>

#include <array>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <optional>
#include <pugixml.hpp>
#include <system_error>
#include <utility>

#include "s3/uri.h"

namespace bucketfs::s3 {
namespace {

constexpr const char* kS3Namespace = "http://s3.amazonaws.com/doc/2006-03-01/";

// parse_ws_pcdata_single keeps whitespace-only text when it is an element's only child:
// without it a key of " " would read as "" (parse_default drops whitespace-only text),
// while the indentation between elements is still dropped.
constexpr unsigned kParseOptions = pugi::parse_default | pugi::parse_ws_pcdata_single;

// Server-controlled text quoted in our messages is clipped so a hostile or broken reply
// cannot flood the logs.
std::string Clip(std::string_view text, size_t max = 200) {
  if (text.size() <= max) return std::string(text);
  return fmt::format("{}... ({} bytes)", text.substr(0, max), text.size());
}

Status Malformed(std::string_view what, std::string_view detail) {
  return Status(ErrorCode::kMalformedResponse, fmt::format("{}: {}", what, detail));
}

// ---- Reading elements --------------------------------------------------------------------

// "s3:Key" and "Key" are the same element to us.
std::string_view LocalName(pugi::xml_node node) {
  std::string_view name = node.name();
  size_t colon = name.find(':');
  return colon == std::string_view::npos ? name : name.substr(colon + 1);
}

bool Is(pugi::xml_node node, std::string_view local) {
  return node.type() == pugi::node_element && LocalName(node) == local;
}

// The first child element named `local`, or a null node.
pugi::xml_node Child(pugi::xml_node parent, std::string_view local) {
  for (pugi::xml_node c : parent.children()) {
    if (Is(c, local)) return c;
  }
  return {};
}

// All text and CDATA directly inside `element`, joined: "a<![CDATA[b]]>c" is "abc".
std::string TextOf(pugi::xml_node element) {
  std::string out;
  for (pugi::xml_node c : element.children()) {
    if (c.type() == pugi::node_pcdata || c.type() == pugi::node_cdata) out += c.value();
  }
  return out;
}

std::string OptionalText(pugi::xml_node parent, std::string_view local) {
  return TextOf(Child(parent, local));
}

Result<std::string> RequiredText(pugi::xml_node parent, std::string_view local,
                                 std::string_view what) {
  pugi::xml_node c = Child(parent, local);
  if (!c) return Malformed(what, fmt::format("<{}> has no <{}>", LocalName(parent), local));
  return TextOf(c);
}

// Upload ids and ETags must not only be present but usable.
Result<std::string> RequiredNonEmpty(pugi::xml_node parent, std::string_view local,
                                     std::string_view what) {
  BFS_ASSIGN_OR_RETURN(std::string text, RequiredText(parent, local, what));
  if (text.empty()) return Malformed(what, fmt::format("<{}> is empty", local));
  return text;
}

// The whole of `text` as a decimal number: no sign for unsigned types, no spaces, no
// overflow.
template <typename T>
std::optional<T> Decimal(std::string_view text) {
  T value{};
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec != std::errc() || ptr != end) return std::nullopt;
  return value;
}

Result<uint64_t> RequiredSize(pugi::xml_node parent, std::string_view local,
                              std::string_view what) {
  BFS_ASSIGN_OR_RETURN(std::string text, RequiredText(parent, local, what));
  std::optional<uint64_t> value = Decimal<uint64_t>(text);
  if (!value) return Malformed(what, fmt::format("<{}> is not a size: '{}'", local, Clip(text)));
  return *value;
}

// An int in [min, INT_MAX]: part numbers (min 1) and part number markers (min 0).
Result<int> ParseIntAtLeast(std::string_view text, int min, std::string_view local,
                            std::string_view what) {
  std::optional<int> value = Decimal<int>(text);
  if (!value || *value < min) {
    return Malformed(what, fmt::format("<{}> is not a number >= {}: '{}'", local, min, Clip(text)));
  }
  return *value;
}

Result<bool> RequiredBool(pugi::xml_node parent, std::string_view local, std::string_view what) {
  BFS_ASSIGN_OR_RETURN(std::string text, RequiredText(parent, local, what));
  if (text == "true") return true;
  if (text == "false") return false;
  return Malformed(what, fmt::format("<{}> is not true or false: '{}'", local, Clip(text)));
}

Result<WallTime> RequiredTime(pugi::xml_node parent, std::string_view local,
                              std::string_view what) {
  BFS_ASSIGN_OR_RETURN(std::string text, RequiredText(parent, local, what));
  WallTime t;
  if (!ParseIso8601(text, &t)) {
    return Malformed(what, fmt::format("<{}> is not an ISO 8601 time: '{}'", local, Clip(text)));
  }
  return t;
}

// Listings asked for with encoding-type=url say so with <EncodingType>url</EncodingType>
// and then form-encode keys: ' ' as '+', '+' as %2B (botocore decodes them with
// urllib's unquote_plus, and so do we).
bool UrlEncoded(pugi::xml_node root) { return OptionalText(root, "EncodingType") == "url"; }

std::string DecodeKey(std::string text, bool url_encoded) {
  if (!url_encoded) return text;
  return UriDecode(text, /*plus_as_space=*/true);
}

ServerError ReadServerError(pugi::xml_node error) {
  return ServerError{OptionalText(error, "Code"), OptionalText(error, "Message"),
                     OptionalText(error, "RequestId"), OptionalText(error, "Resource")};
}

// Parses `body` into `doc` and returns its root element, which must be <root>. An <Error>
// root, which S3 may send with HTTP 200, becomes the error it reports.
Result<pugi::xml_node> LoadRoot(std::string_view body, std::string_view root, std::string_view what,
                                pugi::xml_document* doc) {
  pugi::xml_parse_result parsed =
      doc->load_buffer(body.data(), body.size(), kParseOptions, pugi::encoding_utf8);
  if (!parsed) {
    return Malformed(what, fmt::format("{} at offset {}", parsed.description(), parsed.offset));
  }
  pugi::xml_node element = doc->document_element();
  if (LocalName(element) == root) return element;
  if (LocalName(element) == "Error") return ErrorFromServer(200, ReadServerError(element), what);
  return Malformed(what, fmt::format("expected <{}>, got <{}>", root, Clip(element.name())));
}

// ---- Mapping server errors ---------------------------------------------------------------

struct Mapping {
  ErrorCode code;
  bool retryable;
  std::string_view hint;  // What to do, appended to the message; may be empty.
};

constexpr std::string_view kCredentialsHint =
    "check S3_ACCESS_KEY/S3_SECRET_KEY (or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)";
constexpr std::string_view kAccessHint =
    "check that the access key is allowed this operation on the bucket (bucket and IAM "
    "policies)";
constexpr std::string_view kSessionHint =
    "refresh the session credentials (S3_SESSION_TOKEN or AWS_SESSION_TOKEN)";
constexpr std::string_view kRegionHint =
    "the bucket is served elsewhere; set S3_REGION (and S3_ENDPOINT) to the bucket's";
constexpr std::string_view kQuotaHint =
    "the server refuses more data for this bucket or user; free space in the bucket or ask "
    "its administrator to raise the quota (what was written stays in the spool and is "
    "uploaded on a later attempt)";
constexpr std::string_view kCorruptHint = "the body may have been corrupted in transit";

struct CodeEntry {
  std::string_view server_code;
  Mapping mapping;
};

constexpr CodeEntry kServerCodes[] = {
    {"NoSuchKey", {ErrorCode::kNotFound, false, {}}},
    {"NoSuchVersion", {ErrorCode::kNotFound, false, {}}},
    {"NoSuchBucket",
     {ErrorCode::kNoSuchBucket, false, "check the bucket name and S3_ENDPOINT/S3_REGION"}},
    {"NoSuchUpload",
     {ErrorCode::kNoSuchUpload, false, "the upload was aborted, completed or expired"}},
    {"AccessDenied", {ErrorCode::kAccessDenied, false, kAccessHint}},
    {"InvalidObjectState",
     {ErrorCode::kAccessDenied, false,
      "the object is archived (a Glacier or Deep Archive storage class); restore it first "
      "(e.g. `aws s3api restore-object`), then read it"}},
    {"BucketAlreadyOwnedByYou", {ErrorCode::kExists, false, {}}},
    {"BucketAlreadyExists",
     {ErrorCode::kExists, false, "bucket names are global: another account owns this one"}},
    {"BucketNotEmpty", {ErrorCode::kNotEmpty, false, {}}},
    {"AllAccessDisabled", {ErrorCode::kAccessDenied, false, kAccessHint}},
    {"SignatureDoesNotMatch", {ErrorCode::kInvalidCredentials, false, kCredentialsHint}},
    {"InvalidAccessKeyId", {ErrorCode::kInvalidCredentials, false, kCredentialsHint}},
    {"InvalidToken", {ErrorCode::kInvalidCredentials, false, kSessionHint}},
    {"ExpiredToken", {ErrorCode::kExpiredCredentials, false, kSessionHint}},
    {"TokenRefreshRequired", {ErrorCode::kExpiredCredentials, false, kSessionHint}},
    {"RequestTimeTooSkewed",
     {ErrorCode::kExpiredCredentials, false,
      "this host's clock is more than 15 minutes off the server's; synchronise it (NTP)"}},
    {"PreconditionFailed", {ErrorCode::kPreconditionFailed, false, {}}},
    {"ConditionalRequestConflict", {ErrorCode::kConflict, true, {}}},
    {"OperationAborted", {ErrorCode::kConflict, true, {}}},
    {"InvalidRange", {ErrorCode::kInvalidRange, false, {}}},
    {"EntityTooSmall",
     {ErrorCode::kEntityTooSmall, false, "every part but the last must be at least 5 MiB"}},
    {"EntityTooLarge", {ErrorCode::kEntityTooLarge, false, {}}},
    // Ceph RGW's bucket and user quotas (403), MinIO's quotas and full disks.
    {"QuotaExceeded", {ErrorCode::kQuotaExceeded, false, kQuotaHint}},
    {"XMinioAdminBucketQuotaExceeded", {ErrorCode::kQuotaExceeded, false, kQuotaHint}},
    {"XMinioStorageFull", {ErrorCode::kQuotaExceeded, false, kQuotaHint}},
    {"BadDigest", {ErrorCode::kBadDigest, true, kCorruptHint}},
    {"InvalidDigest", {ErrorCode::kBadDigest, true, kCorruptHint}},
    {"XAmzContentSHA256Mismatch", {ErrorCode::kBadDigest, true, kCorruptHint}},
    {"SlowDown", {ErrorCode::kSlowDown, true, {}}},
    {"RequestLimitExceeded", {ErrorCode::kSlowDown, true, {}}},
    {"Throttling", {ErrorCode::kSlowDown, true, {}}},
    {"ThrottlingException", {ErrorCode::kSlowDown, true, {}}},
    {"ServiceUnavailable", {ErrorCode::kSlowDown, true, {}}},
    {"InternalError", {ErrorCode::kServerError, true, {}}},
    {"NotImplemented", {ErrorCode::kNotImplemented, false, {}}},
    {"RequestTimeout", {ErrorCode::kTimeout, true, {}}},
    {"PermanentRedirect", {ErrorCode::kBadRequest, false, kRegionHint}},
    {"AuthorizationHeaderMalformed", {ErrorCode::kBadRequest, false, kRegionHint}},
};

std::optional<Mapping> MapServerCode(std::string_view server_code) {
  for (const CodeEntry& entry : kServerCodes) {
    if (entry.server_code == server_code) return entry.mapping;
  }
  return std::nullopt;
}

// For replies without a code we know: HEAD has no body, and proxies send HTML.
Mapping MapHttpStatus(int http_status) {
  switch (http_status) {
    // 304 only answers If-None-Match/If-Modified-Since, which we do not send; if it comes,
    // the object's state did not let the request proceed, as with 412.
    case 304:
      return {ErrorCode::kPreconditionFailed, false, {}};
    case 401:
      return {ErrorCode::kInvalidCredentials, false, kCredentialsHint};
    // Without a body a 403 may as well be a wrong secret key as a missing permission.
    case 403:
      return {ErrorCode::kAccessDenied, false,
              "check that the access key is allowed this operation on the bucket, and "
              "S3_ACCESS_KEY/S3_SECRET_KEY (or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"};
    case 404:
      return {ErrorCode::kNotFound, false, {}};
    case 408:
      return {ErrorCode::kTimeout, true, {}};
    case 409:
      return {ErrorCode::kConflict, true, {}};
    case 412:
      return {ErrorCode::kPreconditionFailed, false, {}};
    case 413:
      return {ErrorCode::kEntityTooLarge, false, {}};
    case 416:
      return {ErrorCode::kInvalidRange, false, {}};
    case 429:
      return {ErrorCode::kSlowDown, true, {}};
    case 501:
      return {ErrorCode::kNotImplemented, false, {}};
    case 507:  // Insufficient Storage: resending the body cannot help.
      return {ErrorCode::kQuotaExceeded, false, kQuotaHint};
    case 503:
      return {ErrorCode::kSlowDown, true, {}};
    default:
      break;
  }
  if (http_status >= 300 && http_status < 400) {
    return {ErrorCode::kBadRequest, false, kRegionHint};  // A redirect we do not follow.
  }
  if (http_status >= 400 && http_status < 500) return {ErrorCode::kBadRequest, false, {}};
  // 5xx, and an <Error> inside a 200 (CompleteMultipartUpload, CopyObject): the server
  // failed after accepting the request, so another attempt may succeed.
  return {ErrorCode::kServerError, true, {}};
}

std::string ReasonPhrase(int http_status) {
  switch (http_status) {
    case 304:
      return "Not Modified";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 409:
      return "Conflict";
    case 411:
      return "Length Required";
    case 412:
      return "Precondition Failed";
    case 413:
      return "Content Too Large";
    case 416:
      return "Range Not Satisfiable";
    case 429:
      return "Too Many Requests";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    case 507:
      return "Insufficient Storage";
    default:
      return fmt::format("HTTP {}", http_status);
  }
}

// ---- Reply elements ----------------------------------------------------------------------

constexpr std::string_view kListObjects = "ListObjectsV2 reply";
constexpr std::string_view kListParts = "ListParts reply";
constexpr std::string_view kListUploads = "ListMultipartUploads reply";

Result<ObjectInfo> ParseContents(pugi::xml_node contents, bool url_encoded) {
  ObjectInfo info;
  BFS_ASSIGN_OR_RETURN(std::string key, RequiredText(contents, "Key", kListObjects));
  info.key = DecodeKey(std::move(key), url_encoded);
  BFS_ASSIGN_OR_RETURN(info.size, RequiredSize(contents, "Size", kListObjects));
  BFS_ASSIGN_OR_RETURN(std::string etag, RequiredText(contents, "ETag", kListObjects));
  info.etag = UnquoteEtag(etag);
  BFS_ASSIGN_OR_RETURN(info.last_modified, RequiredTime(contents, "LastModified", kListObjects));
  info.storage_class = OptionalText(contents, "StorageClass");
  return info;
}

Result<PartInfo> ParsePart(pugi::xml_node part) {
  PartInfo info;
  BFS_ASSIGN_OR_RETURN(std::string number, RequiredText(part, "PartNumber", kListParts));
  BFS_ASSIGN_OR_RETURN(info.part_number, ParseIntAtLeast(number, 1, "PartNumber", kListParts));
  BFS_ASSIGN_OR_RETURN(std::string etag, RequiredNonEmpty(part, "ETag", kListParts));
  info.etag = UnquoteEtag(etag);
  BFS_ASSIGN_OR_RETURN(info.size, RequiredSize(part, "Size", kListParts));
  return info;
}

Result<MultipartUpload> ParseUpload(pugi::xml_node upload, bool url_encoded) {
  MultipartUpload out;
  BFS_ASSIGN_OR_RETURN(std::string key, RequiredText(upload, "Key", kListUploads));
  out.key = DecodeKey(std::move(key), url_encoded);
  BFS_ASSIGN_OR_RETURN(out.upload_id, RequiredNonEmpty(upload, "UploadId", kListUploads));
  BFS_ASSIGN_OR_RETURN(out.initiated, RequiredTime(upload, "Initiated", kListUploads));
  return out;
}

Result<DeleteError> ParseDeleteError(pugi::xml_node error) {
  DeleteError out;
  BFS_ASSIGN_OR_RETURN(out.key, RequiredText(error, "Key", "DeleteObjects reply"));
  out.code = OptionalText(error, "Code");
  out.message = OptionalText(error, "Message");
  return out;
}

// Root elements that only carry an ETag: the results of Complete, CopyObject, UploadPartCopy.
Result<std::string> ParseEtagResult(std::string_view body, std::string_view root,
                                    std::string_view what, bool etag_required = true) {
  pugi::xml_document doc;
  BFS_ASSIGN_OR_RETURN(pugi::xml_node element, LoadRoot(body, root, what, &doc));
  if (!etag_required) return UnquoteEtag(OptionalText(element, "ETag"));
  BFS_ASSIGN_OR_RETURN(std::string etag, RequiredNonEmpty(element, "ETag", what));
  return UnquoteEtag(etag);
}

// ---- Building request bodies -------------------------------------------------------------

// Collects pugixml's output, writing '\r' as "&#13;": pugixml leaves a carriage return in
// text as it is, and the server's XML parser would then read "\r" and "\r\n" as "\n" and
// act on another key. With format_raw a '\r' can only come from text we set.
class EscapingWriter final : public pugi::xml_writer {
 public:
  void write(const void* data, size_t size) override {
    std::string_view chunk(static_cast<const char*>(data), size);
    for (char c : chunk) {
      if (c == '\r') {
        out_ += "&#13;";
      } else {
        out_ += c;
      }
    }
  }
  std::string Take() && { return std::move(out_); }

 private:
  std::string out_;
};

// pugixml stores C strings, so a key "a\0b" would be written as "a" and the request would
// act on a different object. XML 1.0 cannot carry U+0000 anyway; \x01 becomes "&#01;",
// which is as illegal, so a conforming server rejects the whole body (MalformedXML)
// instead. Other control characters are written by pugixml the same way, with the same
// outcome: such keys cannot be named in an XML body at all.
std::string KeyText(std::string_view key) {
  std::string text(key);
  for (char& c : text) {
    if (c == '\0') c = '\x01';
  }
  return text;
}

pugi::xml_node StartRequest(pugi::xml_document* doc, const char* root) {
  pugi::xml_node decl = doc->append_child(pugi::node_declaration);
  decl.append_attribute("version") = "1.0";
  decl.append_attribute("encoding") = "UTF-8";
  pugi::xml_node element = doc->append_child(root);
  element.append_attribute("xmlns") = kS3Namespace;
  return element;
}

std::string Serialize(const pugi::xml_document& doc) {
  EscapingWriter writer;
  doc.save(writer, "", pugi::format_raw, pugi::encoding_utf8);
  return std::move(writer).Take();
}

// ---- Dates -------------------------------------------------------------------------------

// Reads a fixed date layout left to right.
class DateScanner {
 public:
  explicit DateScanner(std::string_view text) : text_(text) {}

  // Exactly `n` ASCII digits (n <= 9).
  bool Digits(size_t n, int* out) {
    if (text_.size() - pos_ < n) return false;
    int value = 0;
    for (size_t i = 0; i < n; ++i) {
      char c = text_[pos_ + i];
      if (c < '0' || c > '9') return false;
      value = value * 10 + (c - '0');
    }
    pos_ += n;
    *out = value;
    return true;
  }

  bool Literal(std::string_view s) {
    if (text_.substr(pos_, s.size()) != s) return false;
    pos_ += s.size();
    return true;
  }

  bool Peek(char c) const { return pos_ < text_.size() && text_[pos_] == c; }

  // One of `names` (each the same length); *index is its position.
  template <size_t N>
  bool OneOf(const std::array<std::string_view, N>& names, int* index) {
    for (size_t i = 0; i < N; ++i) {
      if (Literal(names[i])) {
        *index = static_cast<int>(i);
        return true;
      }
    }
    return false;
  }

  // A fraction of a second after the '.': one or more digits, kept to nanoseconds.
  bool Fraction(int64_t* nanos) {
    int64_t value = 0;
    int kept = 0;
    size_t start = pos_;
    while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
      if (kept < 9) {
        value = value * 10 + (text_[pos_] - '0');
        ++kept;
      }
      ++pos_;
    }
    for (; kept < 9; ++kept) value *= 10;
    *nanos = value;
    return pos_ > start;
  }

  bool AtEnd() const { return pos_ == text_.size(); }

 private:
  std::string_view text_;
  size_t pos_ = 0;
};

struct CivilTime {
  int year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0;
  int64_t nanos = 0;
};

// UTC civil time to WallTime without timegm() and the process time zone. Rejects dates
// that do not exist (Feb 29 of 2023, month 13), a leap second, and times WallTime
// (nanoseconds since 1970 in 64 bits: years 1678..2262) cannot hold.
bool ToWallTime(const CivilTime& t, WallTime* out) {
  namespace chr = std::chrono;
  const chr::year_month_day date{chr::year{t.year}, chr::month{static_cast<unsigned>(t.month)},
                                 chr::day{static_cast<unsigned>(t.day)}};
  if (!date.ok() || t.hour > 23 || t.minute > 59 || t.second > 59) return false;
  const int64_t days = chr::sys_days{date}.time_since_epoch().count();
  const int64_t seconds = days * 86400 + t.hour * 3600 + t.minute * 60 + t.second;
  constexpr int64_t kLimit =
      chr::duration_cast<chr::seconds>(WallTime::duration::max()).count() - 1;
  if (seconds > kLimit || seconds < -kLimit) return false;
  *out = WallTime(chr::duration_cast<WallTime::duration>(chr::seconds{seconds}) +
                  chr::duration_cast<WallTime::duration>(chr::nanoseconds{t.nanos}));
  return true;
}

constexpr std::array<std::string_view, 7> kWeekdays = {"Mon", "Tue", "Wed", "Thu",
                                                       "Fri", "Sat", "Sun"};
constexpr std::array<std::string_view, 12> kMonths = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                      "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

}  // namespace

// ---- Errors --------------------------------------------------------------------------------

bool ParseErrorBody(std::string_view body, ServerError* out) {
  pugi::xml_document doc;
  if (!doc.load_buffer(body.data(), body.size(), kParseOptions, pugi::encoding_utf8)) return false;
  pugi::xml_node root = doc.document_element();
  if (LocalName(root) != "Error") return false;
  if (out != nullptr) *out = ReadServerError(root);
  return true;
}

Status ErrorFromServer(int http_status, const ServerError& err, std::string_view what) {
  // The server's code is more precise than the HTTP status (a 403 may be AccessDenied or
  // SignatureDoesNotMatch); the status is the fallback for bodiless replies (HEAD).
  const Mapping mapping = MapServerCode(err.code).value_or(MapHttpStatus(http_status));
  std::string detail = !err.message.empty() ? Clip(err.message, 512)
                       : !err.code.empty()  ? Clip(err.code)
                                            : ReasonPhrase(http_status);
  std::string message = fmt::format("{}: {}", what, detail);
  if (!mapping.hint.empty()) message += fmt::format("; {}", mapping.hint);
  Status status(mapping.code, std::move(message), mapping.retryable);
  status.WithServerDetails(http_status, err.code, err.request_id);
  return status;
}

Status DeleteErrorStatus(const DeleteError& error) {
  return ErrorFromServer(0, ServerError{error.code, error.message, {}, error.key},
                         "DELETE " + error.key);
}

// ---- Replies -------------------------------------------------------------------------------

Result<ListPage> ParseListObjectsV2(std::string_view body) {
  pugi::xml_document doc;
  BFS_ASSIGN_OR_RETURN(pugi::xml_node root, LoadRoot(body, "ListBucketResult", kListObjects, &doc));
  const bool url_encoded = UrlEncoded(root);
  ListPage page;
  for (pugi::xml_node c : root.children()) {
    if (Is(c, "Contents")) {
      BFS_ASSIGN_OR_RETURN(ObjectInfo info, ParseContents(c, url_encoded));
      page.objects.push_back(std::move(info));
    } else if (Is(c, "CommonPrefixes")) {
      BFS_ASSIGN_OR_RETURN(std::string prefix, RequiredText(c, "Prefix", kListObjects));
      page.common_prefixes.push_back(DecodeKey(std::move(prefix), url_encoded));
    }
  }
  BFS_ASSIGN_OR_RETURN(page.is_truncated, RequiredBool(root, "IsTruncated", kListObjects));
  // The token is opaque and never URL-encoded.
  page.next_continuation_token = OptionalText(root, "NextContinuationToken");
  // Without a token a truncated listing could only be restarted from the top, forever.
  if (page.is_truncated && page.next_continuation_token.empty()) {
    return Malformed(kListObjects, "truncated, but <NextContinuationToken> is missing");
  }
  return page;
}

Result<std::string> ParseInitiateMultipartUpload(std::string_view body) {
  constexpr std::string_view kWhat = "CreateMultipartUpload reply";
  pugi::xml_document doc;
  BFS_ASSIGN_OR_RETURN(pugi::xml_node root,
                       LoadRoot(body, "InitiateMultipartUploadResult", kWhat, &doc));
  return RequiredNonEmpty(root, "UploadId", kWhat);
}

Result<PutResult> ParseCompleteMultipartUpload(std::string_view body) {
  // Ceph RGW answers <ETag></ETag>; the caller learns the ETag with a HEAD then.
  BFS_ASSIGN_OR_RETURN(std::string etag,
                       ParseEtagResult(body, "CompleteMultipartUploadResult",
                                       "CompleteMultipartUpload reply", /*etag_required=*/false));
  return PutResult{std::move(etag)};
}

Result<PutResult> ParseCopyObjectResult(std::string_view body) {
  BFS_ASSIGN_OR_RETURN(std::string etag,
                       ParseEtagResult(body, "CopyObjectResult", "CopyObject reply"));
  return PutResult{std::move(etag)};
}

Result<PartInfo> ParseCopyPartResult(std::string_view body) {
  BFS_ASSIGN_OR_RETURN(std::string etag,
                       ParseEtagResult(body, "CopyPartResult", "UploadPartCopy reply"));
  PartInfo part;
  part.etag = std::move(etag);
  return part;
}

Result<DeleteManyResult> ParseDeleteResult(std::string_view body) {
  pugi::xml_document doc;
  BFS_ASSIGN_OR_RETURN(pugi::xml_node root,
                       LoadRoot(body, "DeleteResult", "DeleteObjects reply", &doc));
  DeleteManyResult result;
  for (pugi::xml_node c : root.children()) {
    if (Is(c, "Deleted")) {
      BFS_ASSIGN_OR_RETURN(std::string key, RequiredText(c, "Key", "DeleteObjects reply"));
      result.deleted.push_back(std::move(key));
    } else if (Is(c, "Error")) {
      BFS_ASSIGN_OR_RETURN(DeleteError error, ParseDeleteError(c));
      result.errors.push_back(std::move(error));
    }
  }
  return result;
}

Result<ListPartsPage> ParseListParts(std::string_view body) {
  pugi::xml_document doc;
  BFS_ASSIGN_OR_RETURN(pugi::xml_node root, LoadRoot(body, "ListPartsResult", kListParts, &doc));
  ListPartsPage page;
  for (pugi::xml_node c : root.children()) {
    if (!Is(c, "Part")) continue;
    BFS_ASSIGN_OR_RETURN(PartInfo part, ParsePart(c));
    page.parts.push_back(std::move(part));
  }
  BFS_ASSIGN_OR_RETURN(page.is_truncated, RequiredBool(root, "IsTruncated", kListParts));
  pugi::xml_node marker = Child(root, "NextPartNumberMarker");
  if (marker) {
    BFS_ASSIGN_OR_RETURN(page.next_part_number_marker,
                         ParseIntAtLeast(TextOf(marker), 0, "NextPartNumberMarker", kListParts));
  } else if (page.is_truncated) {
    return Malformed(kListParts, "truncated, but <NextPartNumberMarker> is missing");
  }
  return page;
}

Result<ListUploadsPage> ParseListMultipartUploads(std::string_view body) {
  pugi::xml_document doc;
  BFS_ASSIGN_OR_RETURN(pugi::xml_node root,
                       LoadRoot(body, "ListMultipartUploadsResult", kListUploads, &doc));
  const bool url_encoded = UrlEncoded(root);
  ListUploadsPage page;
  for (pugi::xml_node c : root.children()) {
    if (!Is(c, "Upload")) continue;
    BFS_ASSIGN_OR_RETURN(MultipartUpload upload, ParseUpload(c, url_encoded));
    page.uploads.push_back(std::move(upload));
  }
  BFS_ASSIGN_OR_RETURN(page.is_truncated, RequiredBool(root, "IsTruncated", kListUploads));
  // NextKeyMarker is a key and encoded like one; the upload id marker is opaque.
  page.next_key_marker = DecodeKey(OptionalText(root, "NextKeyMarker"), url_encoded);
  page.next_upload_id_marker = OptionalText(root, "NextUploadIdMarker");
  if (page.is_truncated && page.next_key_marker.empty()) {
    return Malformed(kListUploads, "truncated, but <NextKeyMarker> is missing");
  }
  return page;
}

// ---- Requests ------------------------------------------------------------------------------

std::string BuildCompleteMultipartUpload(const std::vector<PartInfo>& parts) {
  pugi::xml_document doc;
  pugi::xml_node root = StartRequest(&doc, "CompleteMultipartUpload");
  for (const PartInfo& part : parts) {
    pugi::xml_node element = root.append_child("Part");
    element.append_child("PartNumber").text().set(part.part_number);
    // Quoted on the wire; UnquoteEtag first so a quoted ETag is not quoted twice.
    std::string etag = fmt::format("\"{}\"", UnquoteEtag(part.etag));
    element.append_child("ETag").text().set(KeyText(etag).c_str());
  }
  return Serialize(doc);
}

bool XmlCanCarryKey(std::string_view key) {
  for (size_t i = 0; i < key.size(); ++i) {
    const auto c = static_cast<unsigned char>(key[i]);
    if (c < 0x20 && c != '\t' && c != '\n' && c != '\r') return false;
    // U+FFFE and U+FFFF, in UTF-8 EF BF BE and EF BF BF: not XML characters.
    if (c == 0xEF && i + 2 < key.size() && static_cast<unsigned char>(key[i + 1]) == 0xBF &&
        (static_cast<unsigned char>(key[i + 2]) & 0xFE) == 0xBE) {
      return false;
    }
  }
  return true;
}

std::string BuildDeleteObjects(const std::vector<std::string>& keys, bool quiet) {
  pugi::xml_document doc;
  pugi::xml_node root = StartRequest(&doc, "Delete");
  for (const std::string& key : keys) {
    root.append_child("Object").append_child("Key").text().set(KeyText(key).c_str());
  }
  // After the objects, in the order of the API's schema (and botocore's).
  if (quiet) root.append_child("Quiet").text().set("true");
  return Serialize(doc);
}

// ---- Dates and ETags -------------------------------------------------------------------------

bool ParseIso8601(std::string_view text, WallTime* out) {
  DateScanner s(text);
  CivilTime t;
  if (!(s.Digits(4, &t.year) && s.Literal("-") && s.Digits(2, &t.month) && s.Literal("-") &&
        s.Digits(2, &t.day) && s.Literal("T") && s.Digits(2, &t.hour) && s.Literal(":") &&
        s.Digits(2, &t.minute) && s.Literal(":") && s.Digits(2, &t.second))) {
    return false;
  }
  if (s.Peek('.') && !(s.Literal(".") && s.Fraction(&t.nanos))) return false;
  if (!(s.Literal("Z") && s.AtEnd())) return false;
  return ToWallTime(t, out);
}

bool ParseHttpDate(std::string_view text, WallTime* out) {
  // IMF-fixdate only, the form RFC 7231 says senders must use; the weekday must be a
  // weekday name but is not checked against the date.
  DateScanner s(text);
  CivilTime t;
  int weekday = 0;
  if (!(s.OneOf(kWeekdays, &weekday) && s.Literal(", ") && s.Digits(2, &t.day) && s.Literal(" ") &&
        s.OneOf(kMonths, &t.month) && s.Literal(" ") && s.Digits(4, &t.year) && s.Literal(" ") &&
        s.Digits(2, &t.hour) && s.Literal(":") && s.Digits(2, &t.minute) && s.Literal(":") &&
        s.Digits(2, &t.second) && s.Literal(" GMT") && s.AtEnd())) {
    return false;
  }
  t.month += 1;  // OneOf counts from 0.
  return ToWallTime(t, out);
}

std::string UnquoteEtag(std::string_view etag) {
  // A proxy that recompresses may mark the origin's ETag weak (W/"..."). It names the same
  // version as the bare one a listing gives, and only the bare one can be sent in If-Match
  // (which compares strongly, and which the proxy forwards to the origin).
  if (etag.starts_with("W/\"")) etag.remove_prefix(2);
  if (etag.size() >= 2 && etag.front() == '"' && etag.back() == '"') {
    etag = etag.substr(1, etag.size() - 2);
  }
  return std::string(etag);
}

}  // namespace bucketfs::s3
