#include "common/control_channel.h"

#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <latch>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/eventually.h"

namespace bucketfs::control {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using testing::Eventually;

// --- Raw wire helpers, written independently of the implementation ------------------

std::string Frame(std::string_view body, std::optional<uint32_t> declared = std::nullopt) {
  const uint32_t n = declared.value_or(static_cast<uint32_t>(body.size()));
  std::string out;
  out += static_cast<char>((n >> 24) & 0xff);
  out += static_cast<char>((n >> 16) & 0xff);
  out += static_cast<char>((n >> 8) & 0xff);
  out += static_cast<char>(n & 0xff);
  out += body;
  return out;
}

sockaddr_un Address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

int ConnectRaw(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_un addr = Address(path);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// A listening socket that nobody accepts from, or that the test accepts from itself.
int ListenRaw(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_un addr = Address(path);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd, 8) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

bool SendBytes(int fd, std::string_view data) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (n < 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

// Reads exactly n bytes within `timeout`; false on end of stream, error or timeout.
bool RecvExact(int fd, char* buf, size_t n, Duration timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  size_t got = 0;
  while (got < n) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        end - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
    const ssize_t r = ::recv(fd, buf + got, n - got, 0);
    if (r <= 0) return false;
    got += static_cast<size_t>(r);
  }
  return true;
}

// One message from the server, parsed; nullopt on end of stream or timeout.
std::optional<json> ReadMessage(int fd, Duration timeout = 5s) {
  unsigned char h[4];
  if (!RecvExact(fd, reinterpret_cast<char*>(h), 4, timeout)) return std::nullopt;
  const uint32_t n = (uint32_t{h[0]} << 24) | (uint32_t{h[1]} << 16) | (uint32_t{h[2]} << 8) | h[3];
  if (n > kMaxMessageBytes) return std::nullopt;
  std::string body(n, '\0');
  if (!RecvExact(fd, body.data(), n, timeout)) return std::nullopt;
  return json::parse(body);
}

// Whether the server closed the connection (end of stream or reset) within `timeout`.
bool ClosedByPeer(int fd, Duration timeout = 5s) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1,
             static_cast<int>(
                 std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count())) <= 0) {
    return false;
  }
  char c;
  return ::recv(fd, &c, 1, 0) <= 0;
}

bool HasPendingData(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) > 0;
}

json Echo(const json& request, Responder&) { return {{"ok", true}, {"echo", request}}; }

class ControlChannelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/bfs-cc-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/s.sock";
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  std::unique_ptr<ControlServer> StartOrDie(ControlServer::Handler handler,
                                            ControlServerOptions options = {}) {
    auto server = ControlServer::Start(path_, std::move(handler), options);
    EXPECT_TRUE(server.ok()) << server.status().ToString();
    return server.ok() ? std::move(server).value() : nullptr;
  }

  // The server still answers a normal call.
  void ExpectServes() {
    auto reply = Call(path_, {{"op", "ping"}}, 5s);
    ASSERT_TRUE(reply.ok()) << reply.status().ToString();
    EXPECT_EQ((*reply)["echo"]["op"], "ping");
  }

  std::string dir_;
  std::string path_;
};

// --- Round trips ------------------------------------------------------------------------

TEST_F(ControlChannelTest, RoundTripCarriesRequestAndReplyAndPeerCredentials) {
  auto server = StartOrDie([](const json& request, Responder& out) -> json {
    return {{"ok", true},
            {"op", request["op"]},
            {"arg", request["arg"]},
            {"uid", out.peer_uid()},
            {"pid", out.peer_pid()}};
  });
  ASSERT_NE(server, nullptr);
  EXPECT_EQ(server->path(), path_);
  auto reply = Call(path_, {{"op", "status"}, {"arg", {{"n", 42}, {"s", "x\u00e9"}}}}, 5s);
  ASSERT_TRUE(reply.ok()) << reply.status().ToString();
  // Exactly the handler's fields: the framing's "type" is removed.
  EXPECT_EQ(*reply, (json{{"ok", true},
                          {"op", "status"},
                          {"arg", {{"n", 42}, {"s", "x\u00e9"}}},
                          {"uid", ::geteuid()},
                          {"pid", ::getpid()}}));
}

TEST_F(ControlChannelTest, FinalReplyOnTheWireIsTypedResultThenClose) {
  auto server = StartOrDie(Echo);
  ASSERT_NE(server, nullptr);
  const int fd = ConnectRaw(path_);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendBytes(fd, Frame(R"({"op":"x"})")));
  auto message = ReadMessage(fd);
  ASSERT_TRUE(message.has_value());
  EXPECT_EQ((*message)["type"], "result");
  EXPECT_EQ((*message)["ok"], true);
  EXPECT_TRUE(ClosedByPeer(fd));
  ::close(fd);
}

TEST_F(ControlChannelTest, ProgressMessagesArriveInOrderBeforeTheResult) {
  auto server = StartOrDie([](const json&, Responder& out) -> json {
    for (int i = 0; i < 20; ++i) {
      if (!out.Progress({{"i", i}})) return {{"ok", false}};
    }
    return {{"ok", true}, {"done", 20}};
  });
  ASSERT_NE(server, nullptr);

  // Through Call: every progress message, in order, reaches on_progress before Call returns.
  std::vector<json> progress;
  auto reply =
      Call(path_, {{"op", "work"}}, 5s, [&](const json& message) { progress.push_back(message); });
  ASSERT_TRUE(reply.ok()) << reply.status().ToString();
  EXPECT_EQ(*reply, (json{{"ok", true}, {"done", 20}}));
  ASSERT_EQ(progress.size(), 20u);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(progress[static_cast<size_t>(i)], (json{{"i", i}}));

  // On the wire: 20 typed progress messages, then the result, then the end.
  const int fd = ConnectRaw(path_);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendBytes(fd, Frame(R"({"op":"work"})")));
  for (int i = 0; i < 20; ++i) {
    auto message = ReadMessage(fd);
    ASSERT_TRUE(message.has_value()) << i;
    EXPECT_EQ(*message, (json{{"type", "progress"}, {"i", i}}));
  }
  auto result = ReadMessage(fd);
  ASSERT_TRUE(result.has_value());
  EXPECT_EQ((*result)["type"], "result");
  EXPECT_TRUE(ClosedByPeer(fd));
  ::close(fd);
}

TEST_F(ControlChannelTest, HandlerExceptionBecomesErrorReplyAndServerGoesOn) {
  auto server = StartOrDie([](const json& request, Responder& out) -> json {
    if (request["op"] == "throw") throw std::runtime_error("boom");
    return Echo(request, out);
  });
  ASSERT_NE(server, nullptr);
  auto reply = Call(path_, {{"op", "throw"}}, 5s);
  ASSERT_TRUE(reply.ok()) << reply.status().ToString();
  EXPECT_EQ(*reply, (json{{"ok", false}, {"error", "internal error: boom"}}));
  ExpectServes();
}

TEST_F(ControlChannelTest, HandlerReturningNullRepliesEmptyAndNonObjectIsInternalError) {
  auto server = StartOrDie([](const json& request, Responder&) -> json {
    if (request["op"] == "null") return {};
    return json::array({1, 2});
  });
  ASSERT_NE(server, nullptr);
  auto empty = Call(path_, {{"op", "null"}}, 5s);
  ASSERT_TRUE(empty.ok()) << empty.status().ToString();
  EXPECT_EQ(*empty, json::object());
  auto bad = Call(path_, {{"op", "array"}}, 5s);
  ASSERT_TRUE(bad.ok()) << bad.status().ToString();
  EXPECT_EQ((*bad)["ok"], false);
  EXPECT_NE((*bad)["error"].get<std::string>().find("internal error"), std::string::npos);
}

TEST_F(ControlChannelTest, HandlerReplyOverTheLimitBecomesErrorReply) {
  auto server = StartOrDie([](const json&, Responder& out) -> json {
    // A progress message over the limit is dropped; the peer is still there.
    EXPECT_TRUE(out.Progress({{"blob", std::string(kMaxMessageBytes + 1, 'p')}}));
    return {{"ok", true}, {"blob", std::string(kMaxMessageBytes + 1, 'x')}};
  });
  ASSERT_NE(server, nullptr);
  int progress = 0;
  auto reply = Call(path_, {{"op", "big"}}, 5s, [&](const json&) { ++progress; });
  ASSERT_TRUE(reply.ok()) << reply.status().ToString();
  EXPECT_EQ(progress, 0);
  EXPECT_EQ((*reply)["ok"], false);
  EXPECT_NE((*reply)["error"].get<std::string>().find("exceeds the limit"), std::string::npos);
}

TEST_F(ControlChannelTest, InvalidUtf8InHandlerReplyIsReplacedNotFatal) {
  auto server = StartOrDie([](const json&, Responder&) -> json {
    return {{"ok", true},
            {"key", std::string("a\xff"
                                "b")}};
  });
  ASSERT_NE(server, nullptr);
  auto reply = Call(path_, {{"op", "x"}}, 5s);
  ASSERT_TRUE(reply.ok()) << reply.status().ToString();
  EXPECT_EQ((*reply)["key"],
            "a\xef\xbf\xbd"
            "b");  // U+FFFD
}

// --- Malformed requests -----------------------------------------------------------------

class MalformedRequestTest : public ControlChannelTest {
 protected:
  void SetUp() override {
    ControlChannelTest::SetUp();
    server_ = StartOrDie([this](const json& request, Responder& out) -> json {
      handled_.fetch_add(1);
      return Echo(request, out);
    });
    ASSERT_NE(server_, nullptr);
  }

  // Sends `bytes` (then half-closes when asked), expects one final error reply whose error
  // contains `why`, then the close; the handler never ran and the server still serves.
  void ExpectRejected(const std::string& bytes, const std::string& why, bool half_close = false) {
    const int fd = ConnectRaw(path_);
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(SendBytes(fd, bytes));
    if (half_close) ::shutdown(fd, SHUT_WR);
    auto reply = ReadMessage(fd);
    ASSERT_TRUE(reply.has_value()) << "no reply; expected one about " << why;
    EXPECT_EQ((*reply)["type"], "result");
    EXPECT_EQ((*reply)["ok"], false);
    const std::string error = (*reply)["error"].get<std::string>();
    EXPECT_NE(error.find(why), std::string::npos) << error;
    EXPECT_TRUE(ClosedByPeer(fd));
    ::close(fd);
    EXPECT_EQ(handled_.load(), 0);
    ExpectServes();
    handled_.store(0);
  }

  std::atomic<int> handled_{0};
  std::unique_ptr<ControlServer> server_;
};

TEST_F(MalformedRequestTest, OversizedLengthPrefixIsRejectedWithoutReadingTheBody) {
  // 2 MiB announced, a little sent: the server answers from the prefix alone.
  ExpectRejected(Frame(std::string(100, '{'), 2u << 20),
                 "message of 2097152 bytes exceeds the limit of 1048576 bytes");
  ExpectRejected(Frame("", 0xffffffffu), "exceeds the limit");
}

TEST_F(MalformedRequestTest, InvalidJsonIsRejected) {
  ExpectRejected(Frame(R"({"op": )"), "invalid JSON");
  ExpectRejected(Frame(""), "invalid JSON");
  ExpectRejected(Frame("{\"op\":\"a\xff\"}"), "invalid JSON");  // Not UTF-8.
  ExpectRejected(Frame(R"({"op":"x"} trailing)"), "invalid JSON");
}

TEST_F(MalformedRequestTest, JsonThatIsNotAnObjectIsRejected) {
  ExpectRejected(Frame("[1,2,3]"), "not an object");
  ExpectRejected(Frame(R"("op")"), "not an object");
  ExpectRejected(Frame("42"), "not an object");
}

TEST_F(MalformedRequestTest, MissingOrNonStringOpIsRejected) {
  ExpectRejected(Frame(R"({"x":1})"), "no string \"op\"");
  ExpectRejected(Frame(R"({"op":5})"), "no string \"op\"");
  ExpectRejected(Frame(R"({"OP":"status"})"), "no string \"op\"");
}

TEST_F(MalformedRequestTest, DeeplyNestedJsonIsRejected) {
  std::string deep =
      R"({"op":"x","a":)" + std::string(100000, '[') + std::string(100000, ']') + "}";
  ExpectRejected(Frame(deep), "nested deeper than");
}

TEST_F(MalformedRequestTest, TruncatedFrameIsAnsweredWhenTheSocketStillAllowsIt) {
  // Body cut short, then the client half-closes: it can still read the answer.
  ExpectRejected(Frame(R"({"op":"x"})", 100), "truncated message", /*half_close=*/true);
  // Length prefix itself cut short.
  ExpectRejected(std::string("\0\0", 2), "truncated message", /*half_close=*/true);
}

TEST_F(MalformedRequestTest, TruncatedFrameThenCloseLeavesTheServerServing) {
  for (int i = 0; i < 5; ++i) {
    const int fd = ConnectRaw(path_);
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(SendBytes(fd, Frame(R"({"op":"x"})", 1000)));
    ::close(fd);
  }
  const int fd = ConnectRaw(path_);  // Connects and leaves without a byte.
  ASSERT_GE(fd, 0);
  ::close(fd);
  ExpectServes();
  EXPECT_EQ(handled_.load(), 1);  // Only ExpectServes' own call.
}

TEST_F(ControlChannelTest, CallRefusesARequestWithoutOpAndSendsNothing) {
  std::atomic<int> handled{0};
  auto server = StartOrDie([&](const json&, Responder&) -> json {
    handled.fetch_add(1);
    return {};
  });
  ASSERT_NE(server, nullptr);
  auto no_op = Call(path_, {{"x", 1}}, 5s);
  ASSERT_FALSE(no_op.ok());
  EXPECT_EQ(no_op.status().code(), ErrorCode::kInvalidArgument);
  auto not_object = Call(path_, json::array({"op"}), 5s);
  ASSERT_FALSE(not_object.ok());
  EXPECT_EQ(not_object.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(handled.load(), 0);
}

// --- Slow, vanishing and many peers -------------------------------------------------------

TEST_F(ControlChannelTest, SilentClientTimesOutOnTheServerWithoutBlockingOthers) {
  ControlServerOptions options;
  options.receive_timeout = 1s;
  auto server = StartOrDie(Echo, options);
  ASSERT_NE(server, nullptr);

  const auto connected = std::chrono::steady_clock::now();
  const int silent = ConnectRaw(path_);
  ASSERT_GE(silent, 0);
  // Another client is served while the silent one is still waited for.
  ExpectServes();
  EXPECT_FALSE(HasPendingData(silent)) << "the silent client was answered before its timeout";

  auto reply = ReadMessage(silent, 10s);
  const auto waited = std::chrono::steady_clock::now() - connected;
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ((*reply)["ok"], false);
  EXPECT_NE((*reply)["error"].get<std::string>().find("no complete message within 1 s"),
            std::string::npos)
      << (*reply)["error"];
  EXPECT_GE(waited, 900ms);
  EXPECT_LT(waited, 8s);
  EXPECT_TRUE(ClosedByPeer(silent));
  ::close(silent);
  ExpectServes();
}

TEST_F(ControlChannelTest, ClientGoneDuringProgressMakesProgressReturnFalse) {
  std::promise<std::pair<bool, int>> outcome;  // (Progress returned false, messages sent)
  auto server = StartOrDie([&](const json& request, Responder& out) -> json {
    if (request["op"] != "stream") return Echo(request, out);
    const auto end = std::chrono::steady_clock::now() + 20s;
    int sent = 0;
    bool gone = false;
    while (std::chrono::steady_clock::now() < end) {
      if (!out.Progress({{"i", sent}, {"pad", std::string(1000, 'p')}})) {
        gone = true;
        break;
      }
      ++sent;
    }
    // Once gone, it stays gone.
    if (gone) {
      EXPECT_FALSE(out.Progress({{"again", true}}));
    }
    outcome.set_value({gone, sent});
    return {{"ok", true}};
  });
  ASSERT_NE(server, nullptr);

  const int fd = ConnectRaw(path_);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendBytes(fd, Frame(R"({"op":"stream"})")));
  auto first = ReadMessage(fd);
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ((*first)["type"], "progress");
  ::close(fd);  // Walks away mid-stream, with unread progress in its buffer.

  auto future = outcome.get_future();
  ASSERT_EQ(future.wait_for(15s), std::future_status::ready);
  const auto [gone, sent] = future.get();
  EXPECT_TRUE(gone);
  EXPECT_GE(sent, 1);
  ExpectServes();
}

TEST_F(ControlChannelTest, ConcurrentCallsFromSeveralThreadsAllGetTheirOwnReply) {
  std::atomic<int> in_flight{0};
  std::atomic<int> max_in_flight{0};
  ControlServerOptions options;
  options.max_connections = 64;  // Room for every caller plus threads still finishing.
  auto server = StartOrDie(
      [&](const json& request, Responder& out) -> json {
        const int now = in_flight.fetch_add(1) + 1;
        int seen = max_in_flight.load();
        while (now > seen && !max_in_flight.compare_exchange_weak(seen, now)) {
        }
        out.Progress({{"n", request["n"]}});
        std::this_thread::sleep_for(5ms);
        in_flight.fetch_sub(1);
        return {{"n", request["n"]}, {"t", request["t"]}};
      },
      options);
  ASSERT_NE(server, nullptr);

  constexpr int kThreads = 8;
  constexpr int kCalls = 25;
  std::atomic<int> good{0};
  std::latch start(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      for (int n = 0; n < kCalls; ++n) {
        json progress;
        auto reply = Call(path_, {{"op", "work"}, {"t", t}, {"n", n}}, 10s,
                          [&](const json& p) { progress = p; });
        if (reply.ok() && *reply == json{{"n", n}, {"t", t}} && progress == json{{"n", n}}) {
          good.fetch_add(1);
        } else {
          ADD_FAILURE() << "thread " << t << " call " << n << ": "
                        << (reply.ok() ? reply->dump() : reply.status().ToString());
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(good.load(), kThreads * kCalls);
  EXPECT_GT(max_in_flight.load(), 1) << "calls never overlapped";
}

TEST_F(ControlChannelTest, OneConnectionOverTheLimitIsAnsweredBusy) {
  ControlServerOptions options;
  options.max_connections = 1;
  auto server = StartOrDie(Echo, options);
  ASSERT_NE(server, nullptr);
  const int holder = ConnectRaw(path_);  // Accepted first (the backlog is FIFO), holds the slot.
  ASSERT_GE(holder, 0);
  auto reply = Call(path_, {{"op", "ping"}}, 5s);
  ASSERT_TRUE(reply.ok()) << reply.status().ToString();
  EXPECT_EQ(*reply, (json{{"ok", false}, {"error", "busy"}}));
  ::close(holder);
  // Once the holder's thread has finished, the slot is free again.
  EXPECT_TRUE(Eventually([&] {
    auto again = Call(path_, {{"op", "ping"}}, 5s);
    return again.ok() && (*again)["ok"] == true;
  }));
}

size_t OpenDescriptors() {
  size_t n = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/self/fd"))
    ++n;
  return n;
}

TEST_F(ControlChannelTest, NoDescriptorOutlivesTheServerOrACall) {
  const size_t before = OpenDescriptors();
  {
    auto server = StartOrDie([](const json& request, Responder& out) -> json {
      out.Progress({{"p", 1}});
      return Echo(request, out);
    });
    ASSERT_NE(server, nullptr);
    for (int i = 0; i < 10; ++i) ExpectServes();
    const int fd = ConnectRaw(path_);
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(SendBytes(fd, Frame("[]")));
    ASSERT_TRUE(ReadMessage(fd).has_value());
    ::close(fd);
    ExpectServes();
  }
  auto missing = Call(path_, {{"op", "x"}}, 1s);
  EXPECT_EQ(missing.status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(OpenDescriptors(), before);
}

// --- The socket file --------------------------------------------------------------------

TEST_F(ControlChannelTest, SocketFileIsMode0600EvenUnderAPermissiveUmask) {
  const mode_t old = ::umask(0);
  auto server = StartOrDie(Echo);
  ::umask(old);
  ASSERT_NE(server, nullptr);
  struct stat st {};
  ASSERT_EQ(::lstat(path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(st.st_uid, ::geteuid());
}

TEST_F(ControlChannelTest, StaleSocketFileIsReplaced) {
  const int dead = ListenRaw(path_);
  ASSERT_GE(dead, 0);
  ::close(dead);  // Its file stays, with nobody listening.
  struct stat st {};
  ASSERT_EQ(::lstat(path_.c_str(), &st), 0);
  auto before = Call(path_, {{"op", "ping"}}, 5s);
  ASSERT_FALSE(before.ok());
  EXPECT_EQ(before.status().code(), ErrorCode::kNotFound);  // ECONNREFUSED.

  auto server = StartOrDie(Echo);
  ASSERT_NE(server, nullptr);
  ExpectServes();
}

TEST_F(ControlChannelTest, SecondServerOnALivePathIsBusyAndTheFirstGoesOn) {
  auto first = StartOrDie(Echo);
  ASSERT_NE(first, nullptr);
  auto second = ControlServer::Start(path_, Echo);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), ErrorCode::kBusy);
  EXPECT_NE(second.status().message().find(path_), std::string::npos) << second.status().message();
  ExpectServes();
}

TEST_F(ControlChannelTest, FileThatIsNotASocketIsNeverReplaced) {
  { std::ofstream(path_) << "precious"; }
  auto server = ControlServer::Start(path_, Echo);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), ErrorCode::kExists);
  std::ifstream in(path_);
  std::string content;
  in >> content;
  EXPECT_EQ(content, "precious");
}

TEST_F(ControlChannelTest, PathTooLongForSunPathIsInvalidArgumentSayingHowLong) {
  const std::string long_path = dir_ + "/" + std::string(120, 'x');
  auto server = ControlServer::Start(long_path, Echo);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(server.status().message().find(std::to_string(long_path.size()) + " bytes"),
            std::string::npos)
      << server.status().message();
  auto call = Call(long_path, {{"op", "x"}}, 1s);
  ASSERT_FALSE(call.ok());
  EXPECT_EQ(call.status().code(), ErrorCode::kInvalidArgument);
}

TEST_F(ControlChannelTest, StopUnlinksThePathAndIsIdempotent) {
  auto server = StartOrDie(Echo);
  ASSERT_NE(server, nullptr);
  ASSERT_TRUE(std::filesystem::exists(path_));
  server->Stop();
  EXPECT_FALSE(std::filesystem::exists(path_));
  server->Stop();
  auto reply = Call(path_, {{"op", "ping"}}, 1s);
  ASSERT_FALSE(reply.ok());
  EXPECT_EQ(reply.status().code(), ErrorCode::kNotFound);
  server.reset();  // The destructor's Stop() is a no-op too.
}

TEST_F(ControlChannelTest, StopLeavesASuccessorsSocketAlone) {
  auto server = StartOrDie(Echo);
  ASSERT_NE(server, nullptr);
  ASSERT_EQ(::unlink(path_.c_str()), 0);
  const int other = ListenRaw(path_);  // Someone else's socket now at the path.
  ASSERT_GE(other, 0);
  server->Stop();
  EXPECT_TRUE(std::filesystem::exists(path_));
  ::close(other);
}

TEST_F(ControlChannelTest, StopWaitsForARunningHandler) {
  std::atomic<bool> entered{false};
  std::atomic<bool> finished{false};
  std::atomic<bool> saw_stopping{false};
  auto server = StartOrDie([&](const json&, Responder& out) -> json {
    entered.store(true);
    // Runs until told the server is stopping, then takes a while more to wrap up.
    EXPECT_TRUE(Eventually([&] { return out.stopping(); }));
    saw_stopping.store(true);
    std::this_thread::sleep_for(200ms);
    finished.store(true);
    return {{"ok", true}, {"late", true}};
  });
  ASSERT_NE(server, nullptr);
  std::optional<Result<json>> reply;
  std::thread caller([&] { reply.emplace(Call(path_, {{"op", "long"}}, 10s)); });
  ASSERT_TRUE(Eventually([&] { return entered.load(); }));
  server->Stop();
  EXPECT_TRUE(finished.load()) << "Stop() returned while the handler ran";
  EXPECT_TRUE(saw_stopping.load());
  caller.join();
  // The handler's reply still reached its caller.
  ASSERT_TRUE(reply.has_value());
  ASSERT_TRUE(reply->ok()) << reply->status().ToString();
  EXPECT_EQ((**reply)["late"], true);
}

TEST_F(ControlChannelTest, StopAnswersAClientStillSendingItsRequest) {
  auto server = StartOrDie(Echo);  // Default 10 s receive timeout.
  ASSERT_NE(server, nullptr);
  const int fd = ConnectRaw(path_);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendBytes(fd, Frame(R"({"op":"x"})", 100)));
  // Connections are accepted in order: once a later call is answered, the server holds ours.
  ExpectServes();
  const auto before = std::chrono::steady_clock::now();
  server->Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - before, 5s) << "Stop() waited out the timeout";
  auto reply = ReadMessage(fd, 1s);
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ((*reply)["error"], "server is stopping");
  ::close(fd);
}

// --- Client outcomes ----------------------------------------------------------------------

TEST_F(ControlChannelTest, CallOnAMissingPathIsNotFoundAskingWhetherItIsMounted) {
  auto reply = Call(path_, {{"op", "status"}}, 1s);
  ASSERT_FALSE(reply.ok());
  EXPECT_EQ(reply.status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(reply.status().message(), "nothing serves " + path_ + ": is it mounted?");
}

TEST_F(ControlChannelTest, CallToAServerThatNeverAnswersTimesOutWithinTheTimeout) {
  const int listener = ListenRaw(path_);  // Connections queue; nobody ever accepts.
  ASSERT_GE(listener, 0);
  const auto start = std::chrono::steady_clock::now();
  auto reply = Call(path_, {{"op", "status"}}, 300ms);
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(reply.ok());
  EXPECT_EQ(reply.status().code(), ErrorCode::kTimeout) << reply.status().ToString();
  EXPECT_GE(took, 290ms);
  EXPECT_LT(took, 3s);
  ::close(listener);
}

TEST_F(ControlChannelTest, CallTimesOutWhenOnlyProgressArrives) {
  std::atomic<bool> release{false};
  auto server = StartOrDie([&](const json&, Responder& out) -> json {
    out.Progress({{"step", 1}});
    Eventually([&] { return release.load(); });
    return {};
  });
  ASSERT_NE(server, nullptr);
  int progress = 0;
  auto reply = Call(path_, {{"op", "slow"}}, 300ms, [&](const json&) { ++progress; });
  release.store(true);
  ASSERT_FALSE(reply.ok());
  EXPECT_EQ(reply.status().code(), ErrorCode::kTimeout);
  EXPECT_EQ(progress, 1);
}

// A one-shot fake server: accepts one connection, reads the request, sends `bytes`, then
// closes at once or waits for the client to close.
class FakeReplyServer {
 public:
  FakeReplyServer(const std::string& path, std::string bytes, bool close_at_once = false)
      : listener_(ListenRaw(path)) {
    if (listener_ < 0) return;
    thread_ = std::thread([this, bytes = std::move(bytes), close_at_once] {
      const int fd = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) return;
      char buf[4096];
      (void)::recv(fd, buf, sizeof buf, 0);
      SendBytes(fd, bytes);
      if (!close_at_once) {
        pollfd p{fd, POLLIN, 0};
        ::poll(&p, 1, 10000);
      }
      ::close(fd);
    });
  }
  ~FakeReplyServer() {
    if (thread_.joinable()) thread_.join();
    ::close(listener_);
  }
  bool ok() const { return listener_ >= 0; }

 private:
  int listener_;
  std::thread thread_;
};

TEST_F(ControlChannelTest, ReplyBiggerThanTheMaxIsMalformedResponse) {
  std::string bytes = Frame(std::string(1000, ' '), 2u << 20);  // 2 MiB announced.
  FakeReplyServer fake(path_, bytes);
  ASSERT_TRUE(fake.ok());
  auto reply = Call(path_, {{"op", "status"}}, 5s);
  ASSERT_FALSE(reply.ok());
  EXPECT_EQ(reply.status().code(), ErrorCode::kMalformedResponse) << reply.status().ToString();
  EXPECT_NE(reply.status().message().find("exceeds the limit"), std::string::npos);
}

TEST_F(ControlChannelTest, MalformedRepliesAreMalformedResponse) {
  const std::vector<std::string> bodies = {
      "not json",
      "[1,2]",
      R"({"ok":true})",                        // No "type".
      R"({"type":7})",                         // "type" not a string.
      R"({"type":"surprise"})",                // Unknown type.
      "{\"type\":\"result\",\"s\":\"\xc3\"}",  // Not UTF-8.
      R"({"type":"result","a":)" + std::string(1000, '[') + std::string(1000, ']') + "}",
  };
  for (const std::string& body : bodies) {
    std::filesystem::remove(path_);
    FakeReplyServer fake(path_, Frame(body));
    ASSERT_TRUE(fake.ok());
    auto reply = Call(path_, {{"op", "status"}}, 5s);
    ASSERT_FALSE(reply.ok()) << body;
    EXPECT_EQ(reply.status().code(), ErrorCode::kMalformedResponse)
        << body << ": " << reply.status().ToString();
  }
}

TEST_F(ControlChannelTest, ServerClosingBeforeTheFinalReplyIsNetworkError) {
  const std::vector<std::string> replies = {
      "",                                     // Closes without a word.
      Frame(R"({"type":"progress","i":0})"),  // Progress, then closes.
      Frame(R"({"type":"progress","i":0})") + Frame("{}", 50).substr(0, 6),  // Cut short.
  };
  for (const std::string& bytes : replies) {
    std::filesystem::remove(path_);
    FakeReplyServer fake(path_, bytes, /*close_at_once=*/true);
    ASSERT_TRUE(fake.ok());
    const auto start = std::chrono::steady_clock::now();
    auto reply = Call(path_, {{"op", "status"}}, 5s);
    ASSERT_FALSE(reply.ok());
    EXPECT_EQ(reply.status().code(), ErrorCode::kNetwork) << reply.status().ToString();
    EXPECT_LT(std::chrono::steady_clock::now() - start, 4s) << "waited for the timeout";
  }
}

// --- Other users --------------------------------------------------------------------------

// Runs `body` in a child process as uid/gid 65534 and returns its exit status (or -1).
// The child only makes system calls and exits: no allocation, no logging.
template <typename Body>
int RunAsNobody(Body body) {
  const pid_t child = ::fork();
  if (child == 0) {
    if (::setgroups(0, nullptr) != 0 || ::setgid(65534) != 0 || ::setuid(65534) != 0) _exit(90);
    _exit(body());
  }
  int status = 0;
  if (child < 0 || ::waitpid(child, &status, 0) != child || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

TEST_F(ControlChannelTest, AnotherUserCannotConnectAndCallSaysAccessDenied) {
  auto server = StartOrDie(Echo);
  ASSERT_NE(server, nullptr);
  if (::geteuid() == 0) {
    // Let others through the directory so that only the socket's own 0600 stops them.
    ASSERT_EQ(::chmod(dir_.c_str(), 0711), 0);
    const std::string path = path_;
    const int code = RunAsNobody([&path] {
      auto reply = Call(path, {{"op", "status"}}, 2s);
      if (reply.ok()) return 1;
      return reply.status().code() == ErrorCode::kAccessDenied ? 0 : 2;
    });
    EXPECT_EQ(code, 0) << "1: connected, 2: another error, 90: could not drop privileges";
  } else {
    // Not root: a mode that shuts out the owner too gives the same EACCES.
    ASSERT_EQ(::chmod(path_.c_str(), 0), 0);
    auto reply = Call(path_, {{"op", "status"}}, 2s);
    ASSERT_FALSE(reply.ok());
    EXPECT_EQ(reply.status().code(), ErrorCode::kAccessDenied) << reply.status().ToString();
  }
}

TEST_F(ControlChannelTest, PeerOfAnotherUidIsClosedUnanswered) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to connect as another uid";
  std::atomic<int> handled{0};
  auto server = StartOrDie([&](const json& request, Responder& out) -> json {
    handled.fetch_add(1);
    return Echo(request, out);
  });
  ASSERT_NE(server, nullptr);
  // Open the file and the directory to everyone, so that only the SO_PEERCRED check remains.
  ASSERT_EQ(::chmod(dir_.c_str(), 0755), 0);
  ASSERT_EQ(::chmod(path_.c_str(), 0666), 0);
  const std::string request = Frame(R"({"op":"status"})");
  const sockaddr_un addr = Address(path_);
  const int code = RunAsNobody([&] {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a = addr;
    if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return 3;
    (void)::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 5000) <= 0) return 4;  // Neither answered nor closed.
    char c;
    return ::recv(fd, &c, 1, 0) <= 0 ? 0 : 1;  // 0: closed without a byte of reply.
  });
  EXPECT_EQ(code, 0) << "1: answered, 3: could not connect, 4: left hanging";
  EXPECT_EQ(handled.load(), 0);
  ExpectServes();
}

// --- Runtime directory ----------------------------------------------------------------------

TEST_F(ControlChannelTest, EnsureRuntimeDirCreatesItMode0700) {
  const std::string dir = dir_ + "/run";
  const mode_t old = ::umask(0);  // Would leave 0700 alone...
  Status created = EnsureRuntimeDir(dir);
  ::umask(old);
  ASSERT_TRUE(created.ok()) << created.ToString();
  struct stat st {};
  ASSERT_EQ(::stat(dir.c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  EXPECT_TRUE(EnsureRuntimeDir(dir).ok());  // An existing good one is fine.

  const std::string dir2 = dir_ + "/run2";
  const mode_t old2 = ::umask(0277);  // ...this one would take the owner's write bit.
  Status created2 = EnsureRuntimeDir(dir2);
  ::umask(old2);
  ASSERT_TRUE(created2.ok()) << created2.ToString();
  ASSERT_EQ(::stat(dir2.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
}

TEST_F(ControlChannelTest, EnsureRuntimeDirRefusesADirectoryOpenToOthers) {
  const std::string dir = dir_ + "/open";
  ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0);
  ASSERT_EQ(::chmod(dir.c_str(), 0777), 0);
  Status status = EnsureRuntimeDir(dir);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), ErrorCode::kAccessDenied);
  EXPECT_NE(status.message().find(dir), std::string::npos) << status.message();
  EXPECT_NE(status.message().find("0777"), std::string::npos) << status.message();
  // Refused, not repaired.
  struct stat st {};
  ASSERT_EQ(::stat(dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0777u);

  ASSERT_EQ(::chmod(dir.c_str(), 0750), 0);  // Group access alone is refused too.
  EXPECT_EQ(EnsureRuntimeDir(dir).code(), ErrorCode::kAccessDenied);
}

TEST_F(ControlChannelTest, EnsureRuntimeDirRefusesAnotherUsersDirectoryAndNonDirectories) {
  const std::string file = dir_ + "/file";
  { std::ofstream(file) << "x"; }
  EXPECT_EQ(EnsureRuntimeDir(file).code(), ErrorCode::kNotDirectory);

  if (::geteuid() == 0) {
    const std::string theirs = dir_ + "/theirs";
    ASSERT_EQ(::mkdir(theirs.c_str(), 0700), 0);
    ASSERT_EQ(::chown(theirs.c_str(), 65534, 65534), 0);
    Status status = EnsureRuntimeDir(theirs);
    EXPECT_EQ(status.code(), ErrorCode::kAccessDenied);
    EXPECT_NE(status.message().find(theirs), std::string::npos) << status.message();

    // A symlink someone else planted, pointing at a directory of ours.
    const std::string ours = dir_ + "/ours";
    ASSERT_EQ(::mkdir(ours.c_str(), 0700), 0);
    const std::string link = dir_ + "/link";
    ASSERT_EQ(::symlink(ours.c_str(), link.c_str()), 0);
    ASSERT_EQ(::lchown(link.c_str(), 65534, 65534), 0);
    EXPECT_EQ(EnsureRuntimeDir(link).code(), ErrorCode::kAccessDenied);
  }
}

class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value) {
      ::setenv(name, value, 1);
    } else {
      ::unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

TEST(RuntimeDirTest, FollowsTheDocumentedOrder) {
  {
    ScopedEnv runtime("BUCKETFS_RUNTIME_DIR", "/somewhere/else");
    ScopedEnv xdg("XDG_RUNTIME_DIR", "/run/user/1234");
    EXPECT_EQ(RuntimeDir(), "/somewhere/else");
  }
  ScopedEnv runtime("BUCKETFS_RUNTIME_DIR", nullptr);
  {
    ScopedEnv xdg("XDG_RUNTIME_DIR", "/run/user/1234");
    EXPECT_EQ(RuntimeDir(), ::geteuid() == 0 ? "/run/bucketfs" : "/run/user/1234/bucketfs");
  }
  ScopedEnv xdg("XDG_RUNTIME_DIR", nullptr);
  EXPECT_EQ(RuntimeDir(), ::geteuid() == 0 ? std::string("/run/bucketfs")
                                           : "/tmp/bucketfs-" + std::to_string(::geteuid()));
}

}  // namespace
}  // namespace bucketfs::control
