// ClientConfig and where it comes from: flags, the platform's S3_* variables (with
// per-bucket aliases) and the standard AWS_* variables.
//
// Contract:
//  - ResolveBucket() is pure over its EnvLookup, so every rule below is unit-tested.
//  - Precedence: explicit values in `overrides` > S3_BUCKET_<ALIAS>_* > S3_* > AWS_*.
//  - An alias "user-uploads" reads S3_BUCKET_USER_UPLOADS (upper-cased, '-' and '.' as '_')
//    and its keys S3_BUCKET_USER_UPLOADS_ACCESS_KEY / _SECRET_KEY; without alias keys it
//    falls back to S3_ACCESS_KEY / S3_SECRET_KEY. A name that is no alias is a bucket name.
//  - Credentials are one set (key, secret, session token) from one family of variables:
//    the alias's, else S3_*, else AWS_* (AWS_SESSION_TOKEN goes only with AWS_ACCESS_KEY_ID).
//    A family with its key but not its secret, or the reverse, is kInvalidCredentials.
//  - Errors say which variable to set.
#pragma once

#include <optional>
#include <string>

#include "common/clock.h"
#include "common/status.h"
#include "s3/credentials.h"
#include "s3/retry.h"

namespace bucketfs::s3 {

enum class Addressing { kAuto, kPath, kVirtualHost };
enum class PayloadSigning { kSha256, kUnsigned };

struct ClientConfig {
  std::string endpoint;  // "http://127.0.0.1:7480"; empty = AWS for `region`.
  std::string region = "us-east-1";
  std::string bucket;
  Addressing addressing = Addressing::kAuto;  // Auto: virtual host on AWS, path elsewhere.
  std::string ca_bundle;                       // Empty: the system's CAs.
  bool verify_tls = true;
  // Body integrity: SHA-256 of every body, signed (the server verifies it), or
  // UNSIGNED-PAYLOAD (only sensible over https, where TLS protects the bytes).
  PayloadSigning payload_signing = PayloadSigning::kSha256;
  std::chrono::milliseconds connect_timeout{5000};
  // Default deadline of a call that moves little data; calls that move data get
  // `request_timeout + bytes / min_throughput_bytes_per_sec` unless they pass their own.
  std::chrono::milliseconds request_timeout{30000};
  double min_throughput_bytes_per_sec = 2.0 * 1024 * 1024;
  // An attempt that receives nothing for this long is abandoned and retried; a copy or a
  // multipart completion, which the server may answer only when done, after 5 minutes.
  std::chrono::milliseconds stall_timeout{20000};
  int max_connections = 64;
  RetryPolicy retry;
  std::string user_agent = "bucketfs/0.1";
};

// What `bucketfs mount [NAME]` resolves to.
struct BucketSettings {
  ClientConfig config;
  Credentials credentials;
  std::string credentials_source;  // "S3_BUCKET_USER_UPLOADS_ACCESS_KEY", … for messages.
  std::string alias;               // Empty when NAME was a bucket or omitted.
};

struct BucketOverrides {
  std::optional<std::string> endpoint, region, access_key, secret_key, session_token,
      ca_bundle;
  std::optional<Addressing> addressing;
};

// `name`: empty (use S3_BUCKET), an alias, or a bucket name.
Result<BucketSettings> ResolveBucket(const std::string& name, const EnvLookup& env,
                                     const BucketOverrides& overrides = {});

// The environment-variable stem for an alias: "user-uploads" -> "S3_BUCKET_USER_UPLOADS".
std::string AliasVariable(const std::string& alias);

// Parsed endpoint pieces: scheme, host (no brackets for IPv6 kept as given), port.
struct Endpoint {
  std::string scheme;  // "http" or "https".
  std::string host;
  int port = 0;  // 0 = scheme default.
  // "host" or "host:port" as the Host header carries it.
  std::string HostHeader() const;
  std::string BaseUrl() const;  // "scheme://host[:port]"
};
Result<Endpoint> ParseEndpoint(const std::string& url);

}  // namespace bucketfs::s3
