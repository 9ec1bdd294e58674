// MetricsEndpoint: serves a MetricsRegistry at http://ADDRESS/metrics in Prometheus's text
// format, for the daemon's `--metrics-address` (off by default).
//
// Contract:
//  - Start() binds before it returns, so a wrong or busy address fails the mount at once
//    with a message naming it, instead of a scraper finding nothing later. Port 0 picks a
//    free port; port() and url() tell which.
//  - The address is taken as given: bucketfs does not decide who may scrape. The default is
//    off, and the docs say to use a loopback or pod-local address; the endpoint serves only
//    GET /metrics (404 otherwise) and reveals counters and the bucket's name, never object
//    keys, file names or credentials.
//  - Two serving threads, one request per connection and a 2 s read timeout: a client that
//    stalls cannot keep a scraper out for long, and the data path never waits for the
//    endpoint (a scrape reads atomics and takes each component's stats lock briefly).
//  - The socket does not use SO_REUSEPORT, so two daemons cannot silently share a port.
//  - The destructor stops the server and joins its thread.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "common/metrics.h"
#include "common/status.h"

namespace httplib {
class Server;
}

namespace bucketfs {

class MetricsEndpoint {
 public:
  // `address` is HOST:PORT, [IPV6]:PORT included. `registry` must outlive the endpoint.
  static Result<std::unique_ptr<MetricsEndpoint>> Start(const std::string& address,
                                                        MetricsRegistry& registry);
  MetricsEndpoint(const MetricsEndpoint&) = delete;
  MetricsEndpoint& operator=(const MetricsEndpoint&) = delete;
  ~MetricsEndpoint();

  int port() const { return port_; }
  std::string url() const;  // http://HOST:PORT/metrics

 private:
  MetricsEndpoint() = default;

  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  std::atomic<bool> listening_done_{false};  // listen_after_bind() returned.
  std::string host_;
  int port_ = 0;
};

// Splits HOST:PORT (or [IPV6]:PORT) into its parts; exposed for tests.
Result<std::pair<std::string, int>> ParseHostPort(const std::string& address);

}  // namespace bucketfs
