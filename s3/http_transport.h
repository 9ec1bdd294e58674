// HttpTransport: performs HTTP requests for the S3 client over kept-alive connections.
//
// Contract:
//  - Thread-safe: many threads call Perform() at once; each call blocks its thread until
//    its transfer ends. All transfers share one connection pool, bounded by
//    `max_connections`, so parallel ranged GETs and part uploads reuse warm connections.
//  - Design: one libcurl multi handle driven by one event-loop thread (curl_multi_poll,
//    woken by curl_multi_wakeup when work arrives). Callers prepare their easy handle on
//    their own thread, hand it over, and wait; the loop only moves bytes. Easy handles are
//    pooled and reused.
//  - Response bytes of successful replies are written straight into the caller's buffer
//    (`response_buffer`) when one is given — no intermediate copy of large bodies; error
//    replies and small XML replies go to `HttpResponse::body` (capped).
//  - Request bodies are read straight from the caller's span.
//  - A transport failure (connect, reset, timeout, stall, TLS) is a non-OK Status with
//    kNetwork or kTimeout and the right retryable flag; HTTP statuses are not errors here.
//  - Destroy it only once every Perform() has returned: the destructor finishes the
//    transfers already handed to the loop, but a call still running touches the engine.
//  - No libcurl type appears in this header.
#pragma once

#include <chrono>
#include <memory>
#include <span>
#include <functional>
#include <string>

#include "common/status.h"
#include "s3/sigv4.h"

namespace bucketfs::s3 {

struct HttpRequest {
  std::string method;  // GET HEAD PUT POST DELETE
  std::string url;
  HeaderList headers;
  std::span<const char> body;
  // If non-empty, a 2xx reply body is written here; more bytes than fit is an error.
  std::span<char> response_buffer;
  std::chrono::milliseconds timeout{30000};
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds stall_timeout{20000};
  // Polled about once a second (and as data moves) while the request is in flight; false
  // abandons it (kCancelled). Unset: runs to its timeout.
  std::function<bool()> keep_going;
};

struct HttpResponse {
  int status = 0;
  HeaderList headers;  // Names lower-cased.
  std::string body;    // Non-buffer replies and error bodies (capped at 1 MiB for errors).
  uint64_t buffer_bytes = 0;  // Bytes written into response_buffer.
  // Returns the first header value with this lower-case name, or empty.
  const std::string& Header(std::string_view name) const;
};

struct TransportOptions {
  int max_connections = 64;
  std::string ca_bundle;
  bool verify_tls = true;
  std::string user_agent;
};

class HttpTransport {
 public:
  explicit HttpTransport(const TransportOptions& options);
  ~HttpTransport();
  HttpTransport(const HttpTransport&) = delete;
  HttpTransport& operator=(const HttpTransport&) = delete;

  Result<HttpResponse> Perform(const HttpRequest& request);

 private:
  class Engine;
  std::unique_ptr<Engine> engine_;
};

}  // namespace bucketfs::s3
