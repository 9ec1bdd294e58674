// The libcurl client against a scripted HTTP server on 127.0.0.1 that answers what each
// test tells it to: 5xx, throttling, malformed and truncated replies, 200 with an <Error>.
// These are the replies a real server gives only rarely, so they are tested here.
#include <arpa/inet.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <algorithm>
#include <ctime>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>

#include "common/errno_map.h"
#include "s3/curl_client.h"

namespace bucketfs::s3 {
namespace {

struct Reply {
  std::string raw;         // Full HTTP reply bytes.
  bool close_after = false;  // Close the connection after sending.
  std::chrono::milliseconds delay{};  // Waited before answering (the server thread blocks).
};

Reply Http(int status, const std::string& body, const std::string& extra_headers = "") {
  return Reply{fmt::format("HTTP/1.1 {} X\r\nContent-Length: {}\r\nx-amz-request-id: req-{}\r\n{}"
                           "\r\n{}",
                           status, body.size(), status, extra_headers, body)};
}

std::string ErrorXml(const std::string& code, const std::string& message) {
  return fmt::format("<?xml version=\"1.0\"?><Error><Code>{}</Code><Message>{}</Message>"
                     "<RequestId>rid-1</RequestId></Error>",
                     code, message);
}

// Serves scripted replies in order, one per request, on any number of connections.
class ScriptedServer {
 public:
  ScriptedServer() {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    EXPECT_EQ(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(::listen(listen_fd_, 16), 0);
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { Run(); });
  }
  ~ScriptedServer() { Stop(); }

  // Stops serving: closes the listener and every connection, as a killed server would.
  void Stop() {
    if (stop_.exchange(true)) return;
    thread_.join();
    ::close(listen_fd_);
  }

  void Push(Reply r) {
    std::lock_guard lock(mu_);
    replies_.push_back(std::move(r));
  }
  int requests() const { return requests_.load(); }
  std::vector<std::string> request_lines() {
    std::lock_guard lock(mu_);
    return request_lines_;
  }
  // Request line and headers of each request, lower-cased.
  std::vector<std::string> request_heads() {
    std::lock_guard lock(mu_);
    return request_heads_;
  }
  std::string endpoint() const { return fmt::format("http://127.0.0.1:{}", port_); }

 private:
  void Run() {
    std::vector<int> conns;
    std::map<int, std::string> pending;
    while (!stop_) {
      std::vector<pollfd> fds{{listen_fd_, POLLIN, 0}};
      for (int c : conns) fds.push_back({c, POLLIN, 0});
      if (::poll(fds.data(), fds.size(), 50) <= 0) continue;
      if (fds[0].revents & POLLIN) conns.push_back(::accept(listen_fd_, nullptr, nullptr));
      for (size_t i = 1; i < fds.size(); ++i) {
        if (!(fds[i].revents & (POLLIN | POLLHUP))) continue;
        int c = fds[i].fd;
        char buf[65536];
        ssize_t n = ::recv(c, buf, sizeof(buf), 0);
        if (n <= 0) {
          ::close(c);
          conns.erase(std::find(conns.begin(), conns.end(), c));
          pending.erase(c);
          continue;
        }
        pending[c].append(buf, static_cast<size_t>(n));
        if (!HandleIfComplete(c, &pending[c])) {
          ::close(c);
          conns.erase(std::find(conns.begin(), conns.end(), c));
          pending.erase(c);
        }
      }
    }
    for (int c : conns) ::close(c);
  }

  // Returns false if the connection should be closed.
  bool HandleIfComplete(int c, std::string* data) {
    auto end = data->find("\r\n\r\n");
    if (end == std::string::npos) return true;
    size_t body_len = 0;
    auto cl = data->find("Content-Length: ");
    if (cl == std::string::npos) cl = data->find("content-length: ");
    if (cl != std::string::npos && cl < end) body_len = std::stoul(data->substr(cl + 16));
    if (data->size() < end + 4 + body_len) return true;
    std::string line = data->substr(0, data->find("\r\n"));
    std::string data_head = data->substr(0, end);
    data->erase(0, end + 4 + body_len);
    Reply reply;
    {
      std::lock_guard lock(mu_);
      request_lines_.push_back(line);
      std::string head = data_head;
      for (auto& ch : head) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      request_heads_.push_back(head);
      if (replies_.empty()) {
        reply = Http(500, ErrorXml("InternalError", "script ran out"));
      } else {
        reply = replies_.front();
        replies_.pop_front();
      }
    }
    ++requests_;
    std::this_thread::sleep_for(reply.delay);
    ::send(c, reply.raw.data(), reply.raw.size(), MSG_NOSIGNAL);
    return !reply.close_after;
  }

  int listen_fd_ = -1;
  int port_ = 0;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<int> requests_{0};
  std::mutex mu_;
  std::deque<Reply> replies_;
  std::vector<std::string> request_lines_;
  std::vector<std::string> request_heads_;
};

class CurlClientScriptedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ClientConfig config;
    config.endpoint = server_.endpoint();
    config.bucket = "bucket";
    config.retry.base_delay = std::chrono::milliseconds(1);
    config.retry.throttle_base_delay = std::chrono::milliseconds(2);
    config.retry.max_attempts = 4;
    config.request_timeout = std::chrono::seconds(10);
    auto c = CurlObjectClient::Create(
        config, std::make_shared<StaticCredentialsProvider>(Credentials{"AK", "SK", ""}));
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    client_ = std::move(c).value();
  }
  ScriptedServer server_;
  std::unique_ptr<CurlObjectClient> client_;
};

TEST_F(CurlClientScriptedTest, ServerErrorsAreRetriedUntilSuccess) {
  server_.Push(Http(500, ErrorXml("InternalError", "boom")));
  server_.Push(Http(503, ErrorXml("SlowDown", "slow down")));
  server_.Push(Http(200, "", "ETag: \"abc\"\r\n"));
  std::string body = "hello";
  auto r = client_->Put({"k", {body.data(), body.size()}, "", {}, {}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->etag, "abc");
  EXPECT_EQ(server_.requests(), 3);
  EXPECT_EQ(client_->stats().retries, 2u);
}

TEST_F(CurlClientScriptedTest, PersistentThrottlingEndsAsSlowDownAfterMaxAttempts) {
  for (int i = 0; i < 4; ++i) server_.Push(Http(503, ErrorXml("SlowDown", "reduce rate")));
  auto r = client_->Head({"k", ""});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kSlowDown);
  EXPECT_EQ(server_.requests(), 4);
  EXPECT_NE(r.status().message().find("after 4 attempts"), std::string::npos)
      << r.status().ToString();
}

// A call's guard (the write fence) that says no stops it before anything is sent, and a
// retry after an error is not sent either.
TEST_F(CurlClientScriptedTest, AGuardThatSaysNoSendsNothingAndNoRetry) {
  std::string body = "hello";
  CallOptions opts;
  opts.guard = [] { return Status(ErrorCode::kReadOnly, "writes are fenced: test"); };
  auto refused = client_->Put({"k", {body.data(), body.size()}, "", {}, {}}, opts);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), ErrorCode::kReadOnly) << refused.status().ToString();
  EXPECT_EQ(server_.requests(), 0);

  opts.guard = [&] {
    // Open until the first attempt reached the server: its 500 would be retried otherwise.
    return server_.requests() == 0 ? Status::Ok()
                                   : Status(ErrorCode::kReadOnly, "writes are fenced");
  };
  server_.Push(Http(500, ErrorXml("InternalError", "boom")));
  server_.Push(Http(200, "", "ETag: \"abc\"\r\n"));
  auto stopped = client_->Put({"k", {body.data(), body.size()}, "", {}, {}}, opts);
  ASSERT_FALSE(stopped.ok());
  EXPECT_EQ(stopped.status().code(), ErrorCode::kReadOnly) << stopped.status().ToString();
  EXPECT_EQ(server_.requests(), 1) << "a retry was sent after the guard said no";
}

// A request in flight is abandoned soon after its guard says no, long before its deadline
// (a copy under a fence that closed must not go on for minutes).
TEST_F(CurlClientScriptedTest, ARequestInFlightIsAbandonedSoonAfterItsGuardSaysNo) {
  Reply slow = Http(200, "", "ETag: \"abc\"\r\n");
  slow.delay = std::chrono::seconds(4);
  server_.Push(slow);
  const auto start = std::chrono::steady_clock::now();
  CallOptions opts;
  opts.deadline = RealClock().Now() + std::chrono::seconds(60);
  opts.guard = [start] {
    return std::chrono::steady_clock::now() - start < std::chrono::milliseconds(300)
               ? Status::Ok()
               : Status(ErrorCode::kReadOnly, "writes are fenced: the lease was lost");
  };
  std::string body = "hello";
  auto r = client_->Put({"k", {body.data(), body.size()}, "", {}, {}}, opts);
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kReadOnly) << r.status().ToString();
  EXPECT_LT(took, std::chrono::milliseconds(3500)) << "ran on to the server's reply";
}

// Abandoned because the guard said no once, the call says the guard's reason even if the
// guard says yes again right after (a renewal reopened the fence): not "cancelled".
TEST_F(CurlClientScriptedTest, ARequestAbandonedByItsGuardFailsWithTheGuardsReason) {
  Reply slow = Http(200, "", "ETag: \"abc\"\r\n");
  slow.delay = std::chrono::seconds(4);
  server_.Push(slow);
  const auto start = std::chrono::steady_clock::now();
  std::atomic<bool> said_no{false};
  CallOptions opts;
  opts.guard = [&] {
    if (std::chrono::steady_clock::now() - start > std::chrono::milliseconds(300) &&
        !said_no.exchange(true)) {
      return Status(ErrorCode::kReadOnly, "writes are fenced: the lease is late");
    }
    return Status::Ok();
  };
  std::string body = "hello";
  auto r = client_->Put({"k", {body.data(), body.size()}, "", {}, {}}, opts);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kReadOnly) << r.status().ToString();
  EXPECT_TRUE(said_no.load());
}

TEST_F(CurlClientScriptedTest, ClientErrorsAreNotRetried) {
  server_.Push(Http(403, ErrorXml("AccessDenied", "no")));
  std::string buf(4, '\0');
  auto r = client_->Get({"k", std::nullopt, ""}, {buf.data(), buf.size()});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kAccessDenied);
  EXPECT_EQ(r.status().request_id(), "rid-1");
  EXPECT_EQ(server_.requests(), 1);
}

// Credentials rotated in their file between the periodic looks (at most one a second): a
// request the server refuses with the old ones is sent once more, signed with the new ones.
class CurlClientRotationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           fmt::format("bucketfs-rotation-{}-{}", ::getpid(), reinterpret_cast<uintptr_t>(this));
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / "credentials").string();
    Write("AKOLD", "SKOLD", "token-old");
    provider_ = std::make_shared<FileCredentialsProvider>(path_, "default", clock_);
    ASSERT_TRUE(provider_->Current().ok());
    ClientConfig config;
    config.endpoint = server_.endpoint();
    config.bucket = "bucket";
    config.retry.base_delay = std::chrono::milliseconds(1);
    config.retry.max_attempts = 4;
    auto c = CurlObjectClient::Create(config, provider_);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    client_ = std::move(c).value();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  void Write(const std::string& ak, const std::string& sk, const std::string& token) {
    std::ofstream f(path_, std::ios::trunc);
    f << "S3_ACCESS_KEY=" << ak << "\nS3_SECRET_KEY=" << sk << "\nS3_SESSION_TOKEN=" << token
      << "\n";
  }
  // The access key each request was signed with, in order.
  std::vector<std::string> SignedKeys() {
    std::vector<std::string> out;
    for (const std::string& head : server_.request_heads()) {
      auto at = head.find("credential=");
      out.push_back(at == std::string::npos ? "" : head.substr(at + 11, head.find('/', at) - at - 11));
    }
    return out;
  }

  ScriptedServer server_;
  FakeClock clock_;  // Never advances: only a reload can see the new file.
  std::filesystem::path dir_;
  std::string path_;
  std::shared_ptr<FileCredentialsProvider> provider_;
  std::unique_ptr<CurlObjectClient> client_;
};

TEST_F(CurlClientRotationTest, AnExpiredTokenIsRetriedOnceWithTheRotatedCredentials) {
  Write("AKNEW", "SKNEW", "token-new");
  server_.Push(Http(400, ErrorXml("ExpiredToken", "The provided token has expired.")));
  server_.Push(Http(200, "", "ETag: \"abc\"\r\n"));
  std::string body = "hello";
  auto r = client_->Put({"k", {body.data(), body.size()}, "", {}, {}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(SignedKeys(), (std::vector<std::string>{"akold", "aknew"}));
  EXPECT_NE(server_.request_heads()[1].find("x-amz-security-token: token-new"),
            std::string::npos);
}

// A HEAD's 403 has no body to tell a stale signature from a policy: it is retried too, once
// the credentials have changed.
TEST_F(CurlClientRotationTest, ABodiless403OnHeadIsRetriedWithTheRotatedCredentials) {
  Write("AKNEW", "SKNEW", "token-new");
  server_.Push(Http(403, ""));
  server_.Push(Http(200, "", "ETag: \"abc\"\r\nContent-Length: 0\r\n"));
  auto r = client_->Head({"k", ""});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(SignedKeys(), (std::vector<std::string>{"akold", "aknew"}));
}

// Unchanged credentials are not retried: the refusal is the answer, at once.
TEST_F(CurlClientRotationTest, ARefusalWithUnchangedCredentialsIsNotRetried) {
  server_.Push(Http(403, ErrorXml("SignatureDoesNotMatch", "no")));
  server_.Push(Http(200, "", "ETag: \"abc\"\r\n"));
  std::string body = "hello";
  auto r = client_->Put({"k", {body.data(), body.size()}, "", {}, {}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidCredentials) << r.status().ToString();
  EXPECT_EQ(server_.requests(), 1);
}

// A source that has new credentials at every reload: one retry, then the server's answer
// (never a loop of reloads and refusals).
class EverChangingCredentials final : public CredentialsProvider {
 public:
  Result<Credentials> Current() override {
    return Credentials{fmt::format("AK{}", generation_.load()), "SK", ""};
  }
  Status Reload() override {
    generation_.fetch_add(1);
    return Status::Ok();
  }
  std::string Describe() const override { return "test"; }

 private:
  std::atomic<int> generation_{0};
};

TEST(CurlClientRotation, RotatedCredentialsAreTriedOnlyOnce) {
  ScriptedServer server;
  ClientConfig config;
  config.endpoint = server.endpoint();
  config.bucket = "bucket";
  config.retry.base_delay = std::chrono::milliseconds(1);
  config.retry.max_attempts = 4;
  auto client = CurlObjectClient::Create(config, std::make_shared<EverChangingCredentials>());
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  for (int i = 0; i < 3; ++i) server.Push(Http(403, ErrorXml("InvalidAccessKeyId", "no")));
  std::string buf(4, '\0');
  auto r = (*client)->Get({"k", std::nullopt, ""}, {buf.data(), buf.size()});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidCredentials) << r.status().ToString();
  EXPECT_EQ(server.requests(), 2);
}

// An AccessDenied the server names is its policy's answer, whatever the credentials: no
// reload, no second try.
TEST(CurlClientRotation, ANamedAccessDeniedIsNotRetriedWithReloadedCredentials) {
  ScriptedServer server;
  ClientConfig config;
  config.endpoint = server.endpoint();
  config.bucket = "bucket";
  auto client = CurlObjectClient::Create(config, std::make_shared<EverChangingCredentials>());
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  server.Push(Http(403, ErrorXml("AccessDenied", "not yours")));
  server.Push(Http(200, "0123", "ETag: \"e\"\r\n"));
  std::string buf(4, '\0');
  auto denied = (*client)->Get({"k", std::nullopt, ""}, {buf.data(), buf.size()});
  ASSERT_FALSE(denied.ok());
  EXPECT_EQ(denied.status().code(), ErrorCode::kAccessDenied) << denied.status().ToString();
  EXPECT_EQ(server.requests(), 1);
}

// A reply that does not start within the stall timeout: a GET is cut (and would be sent
// again), but a multipart completion, which a server may answer only once it has assembled
// the object, is waited for until its deadline. One attempt each: the scripted server
// answers one request at a time, so a retry would wait behind the silent reply.
TEST(CurlClientStall, AStalledGetIsCutButASilentCompletionIsWaitedFor) {
  ScriptedServer server;
  ClientConfig config;
  config.endpoint = server.endpoint();
  config.bucket = "bucket";
  config.retry.max_attempts = 1;
  config.stall_timeout = std::chrono::seconds(1);
  auto client = CurlObjectClient::Create(
      config, std::make_shared<StaticCredentialsProvider>(Credentials{"AK", "SK", ""}));
  ASSERT_TRUE(client.ok()) << client.status().ToString();

  Reply silent = Http(200, "0123", "ETag: \"e\"\r\n");
  silent.delay = std::chrono::seconds(4);
  server.Push(silent);
  std::string buf(4, '\0');
  const auto start = std::chrono::steady_clock::now();
  auto got = (*client)->Get({"k", std::nullopt, ""}, {buf.data(), buf.size()});
  ASSERT_FALSE(got.ok()) << "a GET silent for 4 s was not cut by a 1 s stall timeout";
  EXPECT_EQ(got.status().code(), ErrorCode::kTimeout) << got.status().ToString();
  EXPECT_TRUE(got.status().retryable());
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(3500));

  Reply assembling = Http(200,
                          "<CompleteMultipartUploadResult><ETag>\"m-1\"</ETag>"
                          "</CompleteMultipartUploadResult>");
  // Longer than the GET's: curl measures speed over the last few seconds, and the request
  // body it just sent would keep a shorter silence above the limit.
  assembling.delay = std::chrono::seconds(8);
  server.Push(assembling);
  auto done = (*client)->CompleteMultipart({"k", "upload-1", {{1, "e1", 5}}, {}});
  ASSERT_TRUE(done.ok()) << done.status().ToString();
  EXPECT_EQ(done->etag, "m-1");
}

// A HEAD's refusal has no body to say why; its headers still can, and the message says it.
TEST_F(CurlClientScriptedTest, ABodilessRefusalIsExplainedByTheClockAndRegionHeaders) {
  // An hour ahead of this host: "Tue, 24 Nov 2026 21:00:00 GMT" style, formatted here.
  const std::time_t later = std::time(nullptr) + 3600;
  std::tm tm{};
  ::gmtime_r(&later, &tm);
  char date[64];
  std::strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  server_.Push(Http(403, "", fmt::format("Date: {}\r\n", date)));
  auto skewed = client_->Head({"k", ""});
  ASSERT_FALSE(skewed.ok());
  EXPECT_EQ(skewed.status().code(), ErrorCode::kExpiredCredentials) << skewed.status().ToString();
  EXPECT_NE(skewed.status().message().find("ahead of this host's"), std::string::npos)
      << skewed.status().ToString();
  EXPECT_NE(skewed.status().message().find("synchronise it (NTP)"), std::string::npos)
      << skewed.status().ToString();

  server_.Push(Http(301, "", "x-amz-bucket-region: eu-west-1\r\n"));
  auto moved = client_->Head({"k", ""});
  ASSERT_FALSE(moved.ok());
  EXPECT_EQ(moved.status().code(), ErrorCode::kBadRequest) << moved.status().ToString();
  EXPECT_NE(moved.status().message().find("in region eu-west-1, not us-east-1"),
            std::string::npos)
      << moved.status().ToString();
  EXPECT_NE(moved.status().message().find("set S3_REGION"), std::string::npos)
      << moved.status().ToString();

  // A plain 403 with a clock in step stays what it is.
  const std::time_t now = std::time(nullptr);
  ::gmtime_r(&now, &tm);
  std::strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  server_.Push(Http(403, "", fmt::format("Date: {}\r\n", date)));
  auto denied = client_->Head({"k", ""});
  ASSERT_FALSE(denied.ok());
  EXPECT_EQ(denied.status().code(), ErrorCode::kAccessDenied) << denied.status().ToString();
}

TEST_F(CurlClientScriptedTest, MalformedListingIsAnErrorNotACrash) {
  server_.Push(Http(200, "<ListBucketResult><Contents><Key>a</Key><Size>notanumber"));
  auto r = client_->List({});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kMalformedResponse) << r.status().ToString();
}

TEST_F(CurlClientScriptedTest, NonXmlErrorBodyStillMapsByStatus) {
  server_.Push(Http(404, "<html>not found</html>"));
  auto r = client_->List({});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().http_status(), 404);
}

TEST_F(CurlClientScriptedTest, TruncatedBodyIsRetriedThenSucceeds) {
  // Promises 10 bytes, sends 4, closes: curl reports a partial transfer; the call retries.
  server_.Push(Reply{"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nETag: \"e\"\r\n\r\n0123", true});
  server_.Push(Http(200, "0123456789", "ETag: \"e\"\r\n"));
  std::string buf(10, '\0');
  auto r = client_->Get({"k", std::nullopt, ""}, {buf.data(), buf.size()});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(buf, "0123456789");
  EXPECT_EQ(server_.requests(), 2);
}

TEST_F(CurlClientScriptedTest, CompleteAnswering200WithErrorIsAnError) {
  server_.Push(Http(200, ErrorXml("InternalError", "failed late")));
  server_.Push(Http(200, ErrorXml("InternalError", "failed late")));
  server_.Push(Http(200, ErrorXml("InternalError", "failed late")));
  server_.Push(Http(200, ErrorXml("InternalError", "failed late")));
  auto r = client_->CompleteMultipart({"k", "upload-1", {{1, "e1", 5}}, {}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kServerError) << r.status().ToString();
  EXPECT_EQ(server_.requests(), 4) << "each 200 with an <Error> was retried";
}

TEST_F(CurlClientScriptedTest, ATransientErrorAfterA200IsRetriedInsideTheCall) {
  server_.Push(Http(200, ErrorXml("InternalError", "failed late")));
  server_.Push(Http(200, "<CopyObjectResult><ETag>\"n\"</ETag></CopyObjectResult>"));
  auto copied = client_->Copy({.source_key = "a", .dest_key = "b"});
  ASSERT_TRUE(copied.ok()) << copied.status().ToString();
  EXPECT_EQ(copied->etag, "n");
  EXPECT_EQ(server_.requests(), 2);

  server_.Push(Http(200, ErrorXml("SlowDown", "reduce your request rate")));
  server_.Push(Http(200, "<CopyPartResult><ETag>\"p\"</ETag></CopyPartResult>"));
  auto part = client_->UploadPartCopy({.key = "b", .upload_id = "u", .part_number = 1,
                                       .source_key = "a"});
  ASSERT_TRUE(part.ok()) << part.status().ToString();
  EXPECT_EQ(part->etag, "p");
  EXPECT_EQ(server_.requests(), 4);

  // A permanent one is not retried.
  server_.Push(Http(200, ErrorXml("AccessDenied", "no")));
  auto denied = client_->Copy({.source_key = "a", .dest_key = "b"});
  EXPECT_EQ(denied.status().code(), ErrorCode::kAccessDenied) << denied.status().ToString();
  EXPECT_EQ(server_.requests(), 5);
}

TEST_F(CurlClientScriptedTest, ACompletedUploadWhoseEtagHeadFailsIsStillComplete) {
  // RGW leaves the ETag out; the HEAD that would find it fails: the object is there all
  // the same, so the call succeeds with the ETag unknown rather than report a failure.
  server_.Push(Http(200, "<CompleteMultipartUploadResult><ETag></ETag>"
                         "</CompleteMultipartUploadResult>"));
  for (int i = 0; i < 4; ++i) server_.Push(Http(500, ""));
  auto r = client_->CompleteMultipart({"k", "upload-1", {{1, "e1", 5}}, {}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->etag, "");
}

TEST_F(CurlClientScriptedTest, MissingEtagOnPutIsReportedAsEmptyEtag) {
  server_.Push(Http(200, ""));
  std::string body = "x";
  auto r = client_->Put({"k", {body.data(), body.size()}, "", {}, {}});
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->etag.empty());
}

TEST_F(CurlClientScriptedTest, RequestsUseEncodedKeysAndBareSubresources) {
  server_.Push(Http(200, "<InitiateMultipartUploadResult><UploadId>u1</UploadId>"
                         "</InitiateMultipartUploadResult>"));
  auto r = client_->CreateMultipart({"dir/a b+c", "", {}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, "u1");
  ASSERT_EQ(server_.request_lines().size(), 1u);
  EXPECT_EQ(server_.request_lines()[0], "POST /bucket/dir/a%20b%2Bc?uploads HTTP/1.1");
}

// A proxy that recompresses marks ETags weak: the client keeps the bare ETag (the one a
// listing gives for the same version) and sends it back in the form If-Match accepts.
TEST_F(CurlClientScriptedTest, AWeakEtagIsKeptBareAndSentBackAsAStrongOne) {
  server_.Push(Http(200, "", "ETag: W/\"abc\"\r\n"));
  server_.Push(Http(206, "xy", "ETag: W/\"abc\"\r\nContent-Range: bytes 0-1/2\r\n"));
  auto head = client_->Head({"k", ""});
  ASSERT_TRUE(head.ok()) << head.status().ToString();
  EXPECT_EQ(head->etag, "abc");
  std::string buf(2, '\0');
  auto got = client_->Get({"k", ByteRange{0, 2}, head->etag}, {buf.data(), buf.size()});
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  auto heads = server_.request_heads();
  ASSERT_EQ(heads.size(), 2u);
  EXPECT_NE(heads[1].find("if-match: \"abc\"\r\n"), std::string::npos) << heads[1];
}

TEST_F(CurlClientScriptedTest, PreconditionHeadersAreSentInTheFormServersAccept) {
  server_.Push(Http(200, "<CopyObjectResult><ETag>\"n\"</ETag></CopyObjectResult>"));
  server_.Push(Http(200, "", "ETag: \"p\"\r\n"));
  server_.Push(Http(200, "", "ETag: \"p\"\r\n"));
  CopyRequest copy{.source_key = "src key", .dest_key = "dst"};
  copy.source_if_match = "abc";
  ASSERT_TRUE(client_->Copy(copy).ok());
  std::string body = "b";
  PutRequest put{.key = "k", .body = {body.data(), body.size()}};
  put.condition = WriteCondition::IfMatch("\"etag1\"");
  ASSERT_TRUE(client_->Put(put).ok());
  put.condition = WriteCondition::CreateOnly();
  ASSERT_TRUE(client_->Put(put).ok());
  auto heads = server_.request_heads();
  ASSERT_EQ(heads.size(), 3u);
  EXPECT_NE(heads[0].find("x-amz-copy-source: /bucket/src%20key\r\n"), std::string::npos) << heads[0];
  EXPECT_NE(heads[0].find("x-amz-copy-source-if-match: \"abc\"\r\n"), std::string::npos);
  // Write preconditions go unquoted (RGW compares them raw; AWS and MinIO accept it).
  EXPECT_NE(heads[1].find("if-match: etag1\r\n"), std::string::npos) << heads[1];
  EXPECT_NE(heads[2].find("if-none-match: *\r\n"), std::string::npos) << heads[2];
  // Every request is signed with a payload hash the server can verify.
  EXPECT_NE(heads[1].find("x-amz-content-sha256: "
                          "3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d"),
            std::string::npos);  // SHA-256 of "b".
  EXPECT_NE(heads[1].find("authorization: aws4-hmac-sha256 credential=ak/"), std::string::npos);
}

TEST_F(CurlClientScriptedTest, CopyReplyWith200ErrorIsAnError) {
  server_.Push(Http(200, ErrorXml("AccessDenied", "copy refused late")));
  auto r = client_->Copy({.source_key = "a", .dest_key = "b"});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kAccessDenied);
}

TEST_F(CurlClientScriptedTest, NoSuchKeyOnAnUploadMeansTheUploadIsGone) {
  server_.Push(Http(404, ErrorXml("NoSuchKey", "")));
  auto r = client_->ListParts({"k", "upload-9"});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kNoSuchUpload);
  EXPECT_NE(r.status().message().find("upload-9"), std::string::npos);
}

// The server answers once, then stops: later calls retry, then fail with a Network error
// that names the endpoint, within their deadline.
TEST_F(CurlClientScriptedTest, ServerStoppedMidTestGivesNetworkErrorWithinDeadline) {
  server_.Push(Http(200, "", "ETag: \"e\"\r\n"));
  ASSERT_TRUE(client_->Head({"k", ""}).ok());
  server_.Stop();
  auto start = std::chrono::steady_clock::now();
  auto r = client_->Head({"k", ""}, {start + std::chrono::seconds(3)});
  auto elapsed = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kNetwork) << r.status().ToString();
  EXPECT_NE(r.status().message().find("127.0.0.1"), std::string::npos);
  EXPECT_NE(r.status().message().find("after 4 attempts"), std::string::npos);
  EXPECT_LT(elapsed, std::chrono::seconds(3));
}

// XML 1.0 cannot carry most control bytes: a key with one is deleted on its own, the rest
// in one DeleteObjects batch, and the results are merged.
TEST_F(CurlClientScriptedTest, DeleteManySendsXmlIllegalKeysSingly) {
  server_.Push(Http(204, ""));
  server_.Push(Http(200,
                    "<DeleteResult><Deleted><Key>a</Key></Deleted><Deleted><Key>b</Key></Deleted>"
                    "</DeleteResult>"));
  auto r = client_->DeleteMany({"a", std::string("bell\x07"), "b"});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->deleted, (std::vector<std::string>{"a", "b", std::string("bell\x07")}));
  EXPECT_TRUE(r->errors.empty());
  auto lines = server_.request_lines();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0], "DELETE /bucket/bell%07 HTTP/1.1");
  EXPECT_EQ(lines[1], "POST /bucket?delete HTTP/1.1");
  EXPECT_NE(server_.request_heads()[1].find("content-md5: "), std::string::npos);
}

// U+FFFF is no XML character either; a single delete that fails reports the server's code,
// as an <Error> entry of a batch would.
TEST_F(CurlClientScriptedTest, DeleteManySendsNonCharacterKeysSinglyAndKeepsTheServersCode) {
  server_.Push(Http(403, ErrorXml("AccessDenied", "not yours")));
  server_.Push(Http(200, "<DeleteResult><Deleted><Key>a</Key></Deleted></DeleteResult>"));
  auto r = client_->DeleteMany({"a", "x\xEF\xBF\xBF"});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->deleted, (std::vector<std::string>{"a"}));
  ASSERT_EQ(r->errors.size(), 1u);
  EXPECT_EQ(r->errors[0].key, "x\xEF\xBF\xBF");
  EXPECT_EQ(r->errors[0].code, "AccessDenied");
  auto lines = server_.request_lines();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0], "DELETE /bucket/x%EF%BF%BF HTTP/1.1");
}

TEST_F(CurlClientScriptedTest, RangeLongerThanBufferFailsCleanly) {
  server_.Push(Http(206, "0123456789", "Content-Range: bytes 0-9/100\r\n"));
  std::string buf(4, '\0');
  auto r = client_->Get({"k", ByteRange{0, 4}, ""}, {buf.data(), buf.size()});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kMalformedResponse) << r.status().ToString();
  EXPECT_NE(r.status().message().find("larger than the 4 bytes asked for"), std::string::npos)
      << r.status().ToString();
  EXPECT_EQ(ToErrno(r.status()), EIO);
}

// A 206 must hold the range asked for: other bytes would land at the offset asked for, in
// every cache that keeps the block.
TEST_F(CurlClientScriptedTest, AReplyForAnotherRangeIsRefusedNotTakenForTheBytesAskedFor) {
  struct Case {
    const char* content_range;
    const char* body;
    const char* says;
  };
  const Case cases[] = {
      {"bytes 0-3/10", "0123", "is not the range asked for (bytes 4-7)"},  // Another start.
      {"bytes 4-5/10", "45", "is not the range asked for"},   // Short of what the object has.
      {"bytes 4-7/10", "456", "does not match the 3 bytes of the body"},
      {"bytes 4-7", "4567", "is not 'bytes FIRST-LAST/TOTAL'"},
      {"bytes 7-4/10", "4567", "is not 'bytes FIRST-LAST/TOTAL'"},
      {"bytes 4-11/10", "4567", "is not 'bytes FIRST-LAST/TOTAL'"},
  };
  for (const Case& c : cases) {
    server_.Push(Http(206, c.body, fmt::format("Content-Range: {}\r\n", c.content_range)));
    std::string buf(4, '\0');
    auto r = client_->Get({"k", ByteRange{4, 4}, ""}, {buf.data(), buf.size()});
    ASSERT_FALSE(r.ok()) << c.content_range;
    EXPECT_EQ(r.status().code(), ErrorCode::kMalformedResponse) << r.status().ToString();
    EXPECT_NE(r.status().message().find(c.says), std::string::npos) << r.status().ToString();
  }
  // The range asked for, and one the object's end cuts short, are taken.
  server_.Push(Http(206, "4567", "Content-Range: bytes 4-7/10\r\n"));
  server_.Push(Http(206, "89", "Content-Range: bytes 8-9/10\r\n"));
  std::string buf(4, '\0');
  auto r = client_->Get({"k", ByteRange{4, 4}, ""}, {buf.data(), buf.size()});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->bytes_read, 4u);
  EXPECT_EQ(r->info.size, 10u);
  EXPECT_EQ(buf, "4567");
  r = client_->Get({"k", ByteRange{8, 4}, ""}, {buf.data(), buf.size()});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->bytes_read, 2u);
  EXPECT_EQ(buf.substr(0, 2), "89");
}

// HTTP lets a server ignore Range and answer 200 with the whole object. From offset 0, a
// whole object that fits is the bytes asked for; from further in, it never is.
TEST_F(CurlClientScriptedTest, AWholeObjectAnsweringARangeFurtherInIsRefused) {
  server_.Push(Http(200, "0123"));
  server_.Push(Http(200, "01"));
  std::string buf(4, '\0');
  auto r = client_->Get({"k", ByteRange{2, 2}, ""}, {buf.data(), buf.size()});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kMalformedResponse) << r.status().ToString();
  EXPECT_NE(r.status().message().find("ignoring the Range header"), std::string::npos)
      << r.status().ToString();
  r = client_->Get({"k", ByteRange{0, 4}, ""}, {buf.data(), buf.size()});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->bytes_read, 2u);
  EXPECT_EQ(r->info.size, 2u);
}

}  // namespace
}  // namespace bucketfs::s3
