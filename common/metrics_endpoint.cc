#include "common/metrics_endpoint.h"

#include <httplib.h>
#include <sys/socket.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>

#include "common/log.h"

namespace bucketfs {

Result<std::pair<std::string, int>> ParseHostPort(const std::string& address) {
  const auto bad = [&](const std::string& why) {
    return Status(ErrorCode::kInvalidArgument,
                  "metrics address '" + address + "' " + why +
                      " (expected HOST:PORT, e.g. 127.0.0.1:9464 or [::1]:9464)");
  };
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) return bad("has no port");
  std::string host = address.substr(0, colon);
  const std::string port_text = address.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  } else if (host.find(':') != std::string::npos) {
    return bad("has an IPv6 host without brackets");
  }
  if (host.empty()) return bad("has no host");
  int port = -1;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc() || end != port_text.data() + port_text.size() || port < 0 || port > 65535) {
    return bad("has no valid port");
  }
  return std::make_pair(host, port);
}

Result<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Start(const std::string& address,
                                                                MetricsRegistry& registry) {
  BFS_ASSIGN_OR_RETURN(auto host_port, ParseHostPort(address));
  std::unique_ptr<MetricsEndpoint> endpoint(new MetricsEndpoint());
  endpoint->host_ = host_port.first;
  endpoint->server_ = std::make_unique<httplib::Server>();
  httplib::Server& server = *endpoint->server_;
  // Two threads, one request per connection, short timeouts: a scraper that connects and
  // stalls, or keeps its connection open, cannot keep Prometheus out for long.
  server.new_task_queue = [] { return new httplib::ThreadPool(2); };
  server.set_keep_alive_max_count(1);
  server.set_read_timeout(std::chrono::seconds(2));
  server.set_write_timeout(std::chrono::seconds(5));
  // SO_REUSEADDR only (httplib's default adds SO_REUSEPORT, which would let a second
  // daemon bind the same port and split the scrapes between the two).
  server.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  server.Get("/metrics", [&registry](const httplib::Request&, httplib::Response& res) {
    res.set_content(registry.Render(), "text/plain; version=0.0.4; charset=utf-8");
  });

  errno = 0;
  int port = host_port.second;
  bool bound = false;
  if (port == 0) {
    port = server.bind_to_any_port(endpoint->host_);
    bound = port > 0;
  } else {
    bound = server.bind_to_port(endpoint->host_, port);
  }
  if (!bound) {
    const int err = errno;
    return Status(ErrorCode::kInvalidArgument,
                  "cannot serve metrics at " + address + ": " +
                      (err != 0 ? std::string(strerror(err))
                                : std::string("the host does not resolve to a local address")) +
                      "; choose another --metrics-address");
  }
  endpoint->port_ = port;
  MetricsEndpoint* self = endpoint.get();
  endpoint->thread_ = std::thread([self] {
    self->server_->listen_after_bind();
    self->listening_done_.store(true);
  });
  Logger("metrics")->info("metrics at {}", endpoint->url());
  return endpoint;
}

MetricsEndpoint::~MetricsEndpoint() {
  // httplib's stop() does nothing until the accept loop runs, and the loop may not have
  // started yet: stop until the loop has ended.
  while (thread_.joinable() && !listening_done_.load()) {
    server_->stop();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (thread_.joinable()) thread_.join();
}

std::string MetricsEndpoint::url() const {
  const bool v6 = host_.find(':') != std::string::npos;
  return "http://" + (v6 ? "[" + host_ + "]" : host_) + ":" + std::to_string(port_) + "/metrics";
}

}  // namespace bucketfs
