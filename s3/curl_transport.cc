// HttpTransport on libcurl's multi interface. See http_transport.h for the contract.
//
// Threading: a caller thread builds its easy handle (Prepare), queues it under mu_, wakes
// the loop and waits on the transfer's own condition. The loop thread is the only one that
// touches the multi handle: it adds queued easies, drives curl_multi_perform, and on
// completion removes the easy and signals its waiter. The caller then reads the result and
// returns the easy handle to the pool. Lock order: Engine::mu_ before Transfer::mu.
#include <curl/curl.h>
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "s3/http_transport.h"

namespace bucketfs::s3 {
namespace {

constexpr size_t kMaxErrorBody = 1 << 20;
constexpr long kReceiveBufferSize = 512 * 1024;
constexpr long kUploadBufferSize = 1024 * 1024;

struct CurlGlobal {
  CurlGlobal() { curl_global_init(CURL_GLOBAL_DEFAULT); }
};

void EnsureCurlGlobal() { static CurlGlobal global; }

std::string Lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

bool HasHeader(const HeaderList& headers, std::string_view lower_name) {
  return std::any_of(headers.begin(), headers.end(),
                     [&](const auto& h) { return Lower(h.first) == lower_name; });
}

}  // namespace

const std::string& HttpResponse::Header(std::string_view name) const {
  static const std::string kEmpty;
  for (const auto& [k, v] : headers) {
    if (k == name) return v;
  }
  return kEmpty;
}

struct Transfer {
  const HttpRequest* request = nullptr;
  HttpResponse response;
  CURL* easy = nullptr;
  curl_slist* header_list = nullptr;
  size_t read_offset = 0;
  long body_status = 0;  // HTTP status of the reply whose body is arriving.
  bool overflow = false;
  bool abandoned = false;  // keep_going() said no.
  CURLcode result = CURLE_OK;
  char error_buffer[CURL_ERROR_SIZE] = {};

  std::mutex mu;
  std::condition_variable cv;
  bool done = false;

  static size_t OnHeader(char* data, size_t size, size_t n, void* self) {
    auto* t = static_cast<Transfer*>(self);
    std::string_view line(data, size * n);
    if (line.rfind("HTTP/", 0) == 0) {
      // A new status line (after 100-continue or a redirect) starts a new header block.
      t->response.headers.clear();
      t->body_status = 0;
      return size * n;
    }
    auto colon = line.find(':');
    if (colon != std::string_view::npos) {
      std::string_view value = line.substr(colon + 1);
      while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) {
        value.remove_prefix(1);
      }
      while (!value.empty() && (value.back() == '\r' || value.back() == '\n' ||
                                value.back() == ' ')) {
        value.remove_suffix(1);
      }
      t->response.headers.emplace_back(Lower(line.substr(0, colon)), std::string(value));
    }
    return size * n;
  }

  static size_t OnBody(char* data, size_t size, size_t n, void* self) {
    auto* t = static_cast<Transfer*>(self);
    size_t len = size * n;
    // The status is final once the body starts; ask curl once, not for every chunk.
    if (t->body_status == 0) curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->body_status);
    bool success = t->body_status >= 200 && t->body_status < 300;
    if (success && t->request->response_buffer.data() != nullptr) {
      auto& buf = t->request->response_buffer;
      if (t->response.buffer_bytes + len > buf.size()) {
        t->overflow = true;
        return 0;  // Aborts the transfer with CURLE_WRITE_ERROR.
      }
      std::memcpy(buf.data() + t->response.buffer_bytes, data, len);
      t->response.buffer_bytes += len;
      return len;
    }
    if (!success && t->response.body.size() + len > kMaxErrorBody) return len;  // Drop excess.
    t->response.body.append(data, len);
    return len;
  }

  static size_t OnRead(char* out, size_t size, size_t n, void* self) {
    auto* t = static_cast<Transfer*>(self);
    auto body = t->request->body;
    size_t len = std::min(size * n, body.size() - t->read_offset);
    std::memcpy(out, body.data() + t->read_offset, len);
    t->read_offset += len;
    return len;
  }

  static int OnProgress(void* self, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
    auto* t = static_cast<Transfer*>(self);
    if (t->request->keep_going()) return 0;
    t->abandoned = true;
    return 1;  // Aborts the transfer with CURLE_ABORTED_BY_CALLBACK.
  }

  static int OnSeek(void* self, curl_off_t offset, int origin) {
    auto* t = static_cast<Transfer*>(self);
    if (origin != SEEK_SET || offset < 0 ||
        static_cast<size_t>(offset) > t->request->body.size()) {
      return CURL_SEEKFUNC_CANTSEEK;
    }
    t->read_offset = static_cast<size_t>(offset);
    return CURL_SEEKFUNC_OK;
  }
};

class HttpTransport::Engine {
 public:
  explicit Engine(const TransportOptions& options) : options_(options) {
    EnsureCurlGlobal();
    multi_ = curl_multi_init();
    curl_multi_setopt(multi_, CURLMOPT_MAX_TOTAL_CONNECTIONS,
                      static_cast<long>(options.max_connections));
    curl_multi_setopt(multi_, CURLMOPT_MAX_HOST_CONNECTIONS,
                      static_cast<long>(options.max_connections));
    curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS, static_cast<long>(options.max_connections));
    loop_ = std::thread([this] { Loop(); });
  }

  ~Engine() {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    curl_multi_wakeup(multi_);
    loop_.join();
    for (CURL* e : idle_) curl_easy_cleanup(e);
    curl_multi_cleanup(multi_);
  }

  Result<HttpResponse> Perform(const HttpRequest& request) {
    Transfer t;
    t.request = &request;
    t.easy = AcquireEasy();
    Prepare(&t);
    {
      std::lock_guard lock(mu_);
      if (stopping_) {
        Release(&t);
        return Status(ErrorCode::kCancelled, "transport is shutting down");
      }
      queue_.push_back(&t);
    }
    curl_multi_wakeup(multi_);
    {
      std::unique_lock lock(t.mu);
      t.cv.wait(lock, [&] { return t.done; });
    }
    Status status = Classify(t);
    if (status.ok()) {
      long code = 0;
      curl_easy_getinfo(t.easy, CURLINFO_RESPONSE_CODE, &code);
      t.response.status = static_cast<int>(code);
    }
    Release(&t);
    if (!status.ok()) return status;
    return std::move(t.response);
  }

 private:
  CURL* AcquireEasy() {
    {
      std::lock_guard lock(mu_);
      if (!idle_.empty()) {
        CURL* e = idle_.back();
        idle_.pop_back();
        return e;
      }
    }
    return curl_easy_init();
  }

  void Release(Transfer* t) {
    curl_slist_free_all(t->header_list);
    t->header_list = nullptr;
    curl_easy_reset(t->easy);
    std::lock_guard lock(mu_);
    idle_.push_back(t->easy);
  }

  void Prepare(Transfer* t) {
    const HttpRequest& r = *t->request;
    CURL* e = t->easy;
    curl_easy_setopt(e, CURLOPT_URL, r.url.c_str());
    curl_easy_setopt(e, CURLOPT_PRIVATE, t);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    // S3 keys are not paths: "a/../b" and "a//b" are distinct keys and must be sent as is.
    curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(r.connect_timeout.count()));
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, static_cast<long>(std::max<int64_t>(1, r.timeout.count())));
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME,
                     static_cast<long>(std::max<int64_t>(1, r.stall_timeout.count() / 1000)));
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, kReceiveBufferSize);
    curl_easy_setopt(e, CURLOPT_UPLOAD_BUFFERSIZE, kUploadBufferSize);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->error_buffer);
    if (r.keep_going) {
      curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
      curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, &Transfer::OnProgress);
      curl_easy_setopt(e, CURLOPT_XFERINFODATA, t);
    }
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, &Transfer::OnHeader);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &Transfer::OnBody);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
    if (!options_.user_agent.empty()) {
      curl_easy_setopt(e, CURLOPT_USERAGENT, options_.user_agent.c_str());
    }
    if (!options_.ca_bundle.empty()) curl_easy_setopt(e, CURLOPT_CAINFO, options_.ca_bundle.c_str());
    if (!options_.verify_tls) {
      curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
      curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    }

    if (r.method == "HEAD") {
      curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else if (r.method == "PUT") {
      curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
      curl_easy_setopt(e, CURLOPT_READFUNCTION, &Transfer::OnRead);
      curl_easy_setopt(e, CURLOPT_READDATA, t);
      curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, &Transfer::OnSeek);
      curl_easy_setopt(e, CURLOPT_SEEKDATA, t);
      curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(r.body.size()));
    } else if (r.method == "POST") {
      curl_easy_setopt(e, CURLOPT_POST, 1L);
      curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(r.body.size()));
      curl_easy_setopt(e, CURLOPT_POSTFIELDS, r.body.empty() ? "" : r.body.data());
    } else if (r.method != "GET") {
      curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, r.method.c_str());
    }

    // No "Expect: 100-continue" round trip; curl's own Content-Type for POST is replaced by
    // the caller's or removed.
    t->header_list = curl_slist_append(t->header_list, "Expect:");
    bool has_content_type = false;
    for (const auto& [name, value] : r.headers) {
      if (name == "content-type") has_content_type = true;
      std::string line = value.empty() ? name + ";" : name + ": " + value;
      t->header_list = curl_slist_append(t->header_list, line.c_str());
    }
    if (!has_content_type) t->header_list = curl_slist_append(t->header_list, "Content-Type:");
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->header_list);
  }

  Status Classify(const Transfer& t) const {
    if (t.result == CURLE_OK) return Status::Ok();
    const HttpRequest& r = *t.request;
    std::string detail = t.error_buffer[0] ? t.error_buffer : curl_easy_strerror(t.result);
    std::string what = fmt::format("{} {}", r.method, r.url);
    switch (t.result) {
      case CURLE_ABORTED_BY_CALLBACK:
        if (t.abandoned) {
          return Status(ErrorCode::kCancelled, fmt::format("{}: abandoned in flight", what));
        }
        break;
      case CURLE_WRITE_ERROR:
        if (t.overflow) {
          // Asked for a range, the server sent more: a Range it ignored. Otherwise the
          // caller's buffer was too small for the object.
          const bool ranged = HasHeader(r.headers, "range");
          return Status(ranged ? ErrorCode::kMalformedResponse : ErrorCode::kInternal,
                        fmt::format("{}: the reply (HTTP {}) is larger than the {} bytes asked "
                                    "for{}",
                                    what, t.body_status, r.response_buffer.size(),
                                    ranged ? "; the server (or a proxy) ignored the Range header"
                                           : ""));
        }
        break;
      case CURLE_OPERATION_TIMEDOUT:
        return Status(ErrorCode::kTimeout, fmt::format("{}: {}", what, detail), true);
      case CURLE_COULDNT_RESOLVE_HOST:
      case CURLE_COULDNT_CONNECT:
        return Status(ErrorCode::kNetwork,
                      fmt::format("{}: {} — check that the S3 endpoint is right and the server "
                                  "is running",
                                  what, detail),
                      true);
      case CURLE_SSL_CACERT_BADFILE:
      case CURLE_PEER_FAILED_VERIFICATION:
      case CURLE_SSL_CERTPROBLEM:
        return Status(ErrorCode::kNetwork,
                      fmt::format("{}: TLS verification failed: {} — set AWS_CA_BUNDLE (or "
                                  "--ca-bundle) to the CA file that signed the endpoint's "
                                  "certificate",
                                  what, detail),
                      false);
      default:
        break;
    }
    return Status(ErrorCode::kNetwork, fmt::format("{}: {}", what, detail), true);
  }

  void Loop() {
    int running = 0;
    for (;;) {
      {
        std::lock_guard lock(mu_);
        // `running` counts what the last perform saw: a transfer added just now is not in
        // it yet, so the loop ends only when none was.
        const bool added = !queue_.empty();
        for (Transfer* t : queue_) curl_multi_add_handle(multi_, t->easy);
        queue_.clear();
        if (stopping_ && running == 0 && !added) break;
      }
      curl_multi_perform(multi_, &running);
      int left = 0;
      while (CURLMsg* msg = curl_multi_info_read(multi_, &left)) {
        if (msg->msg != CURLMSG_DONE) continue;
        Transfer* t = nullptr;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &t);
        CURLcode result = msg->data.result;
        curl_multi_remove_handle(multi_, msg->easy_handle);
        std::lock_guard lock(t->mu);
        t->result = result;
        t->done = true;
        t->cv.notify_one();
      }
      curl_multi_poll(multi_, nullptr, 0, 1000, nullptr);
    }
  }

  const TransportOptions options_;
  CURLM* multi_ = nullptr;
  std::thread loop_;
  std::mutex mu_;
  std::deque<Transfer*> queue_;
  std::vector<CURL*> idle_;
  bool stopping_ = false;
};

HttpTransport::HttpTransport(const TransportOptions& options)
    : engine_(std::make_unique<Engine>(options)) {}
HttpTransport::~HttpTransport() = default;

Result<HttpResponse> HttpTransport::Perform(const HttpRequest& request) {
  return engine_->Perform(request);
}

}  // namespace bucketfs::s3
