#include "s3/sigv4.h"

#include <fmt/format.h>

#include <algorithm>
#include <ctime>

#include "s3/crypto.h"
#include "s3/uri.h"

namespace bucketfs::s3 {
namespace {

std::tm UtcTm(WallTime t) {
  std::time_t secs = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  return tm;
}

std::string Lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Trims and folds inner runs of whitespace to one space, as SigV4 requires.
std::string CanonicalHeaderValue(const std::string& v) {
  std::string out;
  out.reserve(v.size());
  bool pending_space = false;
  for (char c : v) {
    if (c == ' ' || c == '\t') {
      pending_space = !out.empty();
      continue;
    }
    if (pending_space) out.push_back(' ');
    pending_space = false;
    out.push_back(c);
  }
  return out;
}

std::string Scope(const SigningScope& scope) {
  return fmt::format("{}/{}/{}/aws4_request", AmzDay(scope.now), scope.region, scope.service);
}

Sha256Digest SigningKey(const Credentials& creds, const SigningScope& scope) {
  std::string k = "AWS4" + creds.secret_key;
  auto as_bytes = [](const auto& d) { return std::span<const uint8_t>(d.data(), d.size()); };
  Sha256Digest date = HmacSha256({reinterpret_cast<const uint8_t*>(k.data()), k.size()},
                                 AmzDay(scope.now));
  Sha256Digest region = HmacSha256(as_bytes(date), scope.region);
  Sha256Digest service = HmacSha256(as_bytes(region), scope.service);
  return HmacSha256(as_bytes(service), "aws4_request");
}

struct Canonical {
  std::string request;
  std::string signed_headers;
};

Canonical BuildCanonicalRequest(const std::string& method, const std::string& uri,
                                const QueryParams& query, const HeaderList& headers,
                                const std::string& payload_hash) {
  std::vector<std::pair<std::string, std::string>> sorted;
  sorted.reserve(headers.size());
  for (const auto& [name, value] : headers) {
    sorted.emplace_back(Lower(name), CanonicalHeaderValue(value));
  }
  std::sort(sorted.begin(), sorted.end());
  std::string canonical_headers, signed_headers;
  for (size_t i = 0; i < sorted.size(); ++i) {
    // Repeated header names are joined with commas, in order.
    if (i > 0 && sorted[i].first == sorted[i - 1].first) {
      canonical_headers.pop_back();
      canonical_headers += "," + sorted[i].second + "\n";
      continue;
    }
    canonical_headers += sorted[i].first + ":" + sorted[i].second + "\n";
    if (!signed_headers.empty()) signed_headers += ";";
    signed_headers += sorted[i].first;
  }
  Canonical c;
  c.request = fmt::format("{}\n{}\n{}\n{}\n{}\n{}", method, uri, CanonicalQueryString(query),
                          canonical_headers, signed_headers, payload_hash);
  c.signed_headers = std::move(signed_headers);
  return c;
}

std::string Sign(const Credentials& creds, const SigningScope& scope,
                 const std::string& canonical_request, std::string* string_to_sign) {
  *string_to_sign = fmt::format("AWS4-HMAC-SHA256\n{}\n{}\n{}", AmzDate(scope.now),
                                Scope(scope), Sha256Hex(canonical_request));
  Sha256Digest key = SigningKey(creds, scope);
  return HexLower(HmacSha256(key, *string_to_sign));
}

}  // namespace

std::string AmzDate(WallTime t) {
  std::tm tm = UtcTm(t);
  return fmt::format("{:04}{:02}{:02}T{:02}{:02}{:02}Z", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}
std::string AmzDay(WallTime t) { return AmzDate(t).substr(0, 8); }

std::string CanonicalQueryString(const QueryParams& query) {
  std::vector<std::pair<std::string, std::string>> encoded;
  encoded.reserve(query.size());
  for (const auto& [name, value] : query) {
    encoded.emplace_back(UriEncode(name, true), UriEncode(value, true));
  }
  std::sort(encoded.begin(), encoded.end());
  std::string out;
  for (const auto& [name, value] : encoded) {
    if (!out.empty()) out += '&';
    out += name + "=" + value;
  }
  return out;
}

SignedRequest SignRequest(const SigningInput& input, const Credentials& creds,
                          const SigningScope& scope, bool add_content_sha256) {
  SignedRequest out;
  HeaderList headers = input.headers;
  out.headers_to_add.emplace_back("x-amz-date", AmzDate(scope.now));
  if (add_content_sha256) out.headers_to_add.emplace_back("x-amz-content-sha256", input.payload_hash);
  if (!creds.session_token.empty()) {
    out.headers_to_add.emplace_back("x-amz-security-token", creds.session_token);
  }
  headers.insert(headers.end(), out.headers_to_add.begin(), out.headers_to_add.end());
  Canonical c = BuildCanonicalRequest(input.method, input.canonical_uri, input.query, headers,
                                      input.payload_hash);
  out.canonical_request = std::move(c.request);
  out.signature = Sign(creds, scope, out.canonical_request, &out.string_to_sign);
  out.headers_to_add.emplace_back(
      "authorization",
      fmt::format("AWS4-HMAC-SHA256 Credential={}/{}, SignedHeaders={}, Signature={}",
                  creds.access_key, Scope(scope), c.signed_headers, out.signature));
  return out;
}

std::string PresignUrl(const std::string& method, const std::string& base_url,
                       const std::string& host, const std::string& canonical_uri,
                       QueryParams query, const Credentials& creds, const SigningScope& scope,
                       int expires_seconds) {
  query.emplace_back("X-Amz-Algorithm", "AWS4-HMAC-SHA256");
  query.emplace_back("X-Amz-Credential", creds.access_key + "/" + Scope(scope));
  query.emplace_back("X-Amz-Date", AmzDate(scope.now));
  query.emplace_back("X-Amz-Expires", std::to_string(expires_seconds));
  if (!creds.session_token.empty()) query.emplace_back("X-Amz-Security-Token", creds.session_token);
  query.emplace_back("X-Amz-SignedHeaders", "host");
  Canonical c = BuildCanonicalRequest(method, canonical_uri, query, {{"host", host}},
                                      kUnsignedPayload);
  std::string string_to_sign;
  std::string signature = Sign(creds, scope, c.request, &string_to_sign);
  return fmt::format("{}{}?{}&X-Amz-Signature={}", base_url, canonical_uri,
                     CanonicalQueryString(query), signature);
}

}  // namespace bucketfs::s3
