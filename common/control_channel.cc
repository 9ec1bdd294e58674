#include "common/control_channel.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <system_error>
#include <utility>

#include "common/log.h"

namespace bucketfs::control {
namespace {

using nlohmann::json;
// poll() waits in real time, so the deadlines it is given are real (steady) time too: an
// injected FakeClock could not make a socket answer sooner.
using SteadyClock = std::chrono::steady_clock;

constexpr size_t kHeaderBytes = 4;
// How much of a peer-supplied string (an "op", an exception message) goes into a log line
// or an error reply.
constexpr size_t kMaxQuotedBytes = 200;

std::shared_ptr<spdlog::logger> Log() { return Logger("control"); }

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { reset(); }
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() { return std::exchange(fd_, -1); }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

std::string Seconds(Duration d) {
  return fmt::format("{:g} s", std::chrono::duration<double>(d).count());
}

// A peer-supplied string made safe for one log line: bounded, control characters replaced.
std::string Printable(std::string_view text) {
  std::string out;
  for (char c : text.substr(0, kMaxQuotedBytes)) {
    out += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? '?' : c;
  }
  if (text.size() > kMaxQuotedBytes) out += "...";
  return out;
}

Status MakeAddress(const std::string& path, sockaddr_un* addr) {
  *addr = {};
  addr->sun_family = AF_UNIX;
  if (path.empty()) return Status(ErrorCode::kInvalidArgument, "empty control socket path");
  if (path.find('\0') != std::string::npos) {
    return Status(ErrorCode::kInvalidArgument, "control socket path contains a NUL byte");
  }
  // One byte stays for the terminating NUL, which the kernel does not need but every tool
  // that prints the address (ss, lsof) does.
  if (path.size() >= sizeof(addr->sun_path)) {
    return Status(ErrorCode::kInvalidArgument,
                  fmt::format("control socket path {} is {} bytes; a Unix socket path can be at "
                              "most {} bytes (use a shorter --runtime-dir or "
                              "BUCKETFS_RUNTIME_DIR)",
                              path, path.size(), sizeof(addr->sun_path) - 1));
  }
  std::memcpy(addr->sun_path, path.data(), path.size());
  return Status::Ok();
}

sockaddr* AsSockaddr(sockaddr_un* addr) { return reinterpret_cast<sockaddr*>(addr); }

// now + d, saturating: a caller's "wait forever" (Duration::max()) must not overflow.
SteadyClock::time_point DeadlineAfter(Duration d) {
  const auto now = SteadyClock::now();
  if (d > SteadyClock::time_point::max() - now) return SteadyClock::time_point::max();
  return now + d;
}

// Milliseconds for poll() to wait until `deadline`: rounded up so a wait never ends just short
// of its deadline and spins; 0 once it has passed.
int PollTimeoutMs(SteadyClock::time_point deadline) {
  const auto left = deadline - SteadyClock::now();
  if (left <= Duration::zero()) return 0;
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
  return static_cast<int>(std::min<int64_t>(ms, INT_MAX));
}

enum class Wait { kReady, kTimeout, kStopped, kError };

// Waits until `fd` reports `events` (or an error or hangup, which the next call on it then
// reports), `deadline` passes, or `wake_fd` (when >= 0) becomes readable.
Wait WaitFor(int fd, short events, SteadyClock::time_point deadline, int wake_fd, int* err) {
  for (;;) {
    pollfd fds[2] = {{fd, events, 0}, {wake_fd, POLLIN, 0}};
    const nfds_t count = wake_fd >= 0 ? 2 : 1;
    const int rc = ::poll(fds, count, PollTimeoutMs(deadline));
    if (rc < 0) {
      if (errno == EINTR) continue;
      *err = errno;
      return Wait::kError;
    }
    if (count == 2 && fds[1].revents != 0) return Wait::kStopped;
    if (fds[0].revents != 0) return Wait::kReady;
    if (SteadyClock::now() >= deadline) return Wait::kTimeout;
  }
}

// Sends all of `data` before `deadline`: 0, or the errno (ETIMEDOUT when the peer did not take
// it in time). MSG_DONTWAIT makes every send non-blocking whatever the descriptor's mode, so
// the deadline holds; MSG_NOSIGNAL turns a closed peer into EPIPE instead of SIGPIPE.
int SendAll(int fd, std::string_view data, SteadyClock::time_point deadline) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n =
        ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return errno;
    int err = 0;
    switch (WaitFor(fd, POLLOUT, deadline, -1, &err)) {
      case Wait::kReady:
      case Wait::kStopped:  // Not watched here.
        break;
      case Wait::kTimeout:
        return ETIMEDOUT;
      case Wait::kError:
        return err;
    }
  }
  return 0;
}

enum class ReadError {
  kNone,
  kClosed,     // End of stream before the first byte of a message: the peer had no more.
  kTruncated,  // End of stream inside a message.
  kTooLarge,   // The length prefix is over kMaxMessageBytes; the body was not read.
  kTimeout,
  kStopped,  // The server began stopping while waiting.
  kFailed,   // recv() failed (ECONNRESET, ...): `err`.
};

struct Frame {
  ReadError error = ReadError::kNone;
  uint64_t declared = 0;   // The length prefix, once read.
  size_t received = 0;     // Bytes received of the part being read when it stopped.
  bool in_header = false;  // The stop came inside the length prefix.
  int err = 0;
  std::string body;
};

// Receives exactly `n` bytes. kClosed means end of stream, with *got saying how far it got.
ReadError RecvExact(int fd, char* buf, size_t n, size_t* got, SteadyClock::time_point deadline,
                    int wake_fd, int* err) {
  *got = 0;
  while (*got < n) {
    const ssize_t r = ::recv(fd, buf + *got, n - *got, MSG_DONTWAIT);
    if (r > 0) {
      *got += static_cast<size_t>(r);
      continue;
    }
    if (r == 0) return ReadError::kClosed;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      *err = errno;
      return ReadError::kFailed;
    }
    switch (WaitFor(fd, POLLIN, deadline, wake_fd, err)) {
      case Wait::kReady:
        break;
      case Wait::kTimeout:
        return ReadError::kTimeout;
      case Wait::kStopped:
        return ReadError::kStopped;
      case Wait::kError:
        return ReadError::kFailed;
    }
  }
  return ReadError::kNone;
}

// Reads one length-prefixed message. The body is read only once its length is known to be
// within kMaxMessageBytes, so a peer's length prefix never sizes an allocation past that.
Frame ReadFrame(int fd, SteadyClock::time_point deadline, int wake_fd) {
  Frame frame;
  unsigned char header[kHeaderBytes];
  ReadError e = RecvExact(fd, reinterpret_cast<char*>(header), kHeaderBytes, &frame.received,
                          deadline, wake_fd, &frame.err);
  if (e != ReadError::kNone) {
    frame.in_header = true;
    frame.error = e == ReadError::kClosed && frame.received > 0 ? ReadError::kTruncated : e;
    return frame;
  }
  frame.declared = (uint64_t{header[0]} << 24) | (uint64_t{header[1]} << 16) |
                   (uint64_t{header[2]} << 8) | uint64_t{header[3]};
  frame.received = 0;
  if (frame.declared > kMaxMessageBytes) {
    frame.error = ReadError::kTooLarge;
    return frame;
  }
  frame.body.resize(frame.declared);
  e = RecvExact(fd, frame.body.data(), frame.body.size(), &frame.received, deadline, wake_fd,
                &frame.err);
  frame.error = e == ReadError::kClosed ? ReadError::kTruncated : e;
  return frame;
}

// Words for why a frame could not be read, for an error reply or a Status.
std::string DescribeReadError(const Frame& frame, Duration timeout) {
  switch (frame.error) {
    case ReadError::kNone:
      return "no error";
    case ReadError::kClosed:
      return "connection closed";
    case ReadError::kTruncated:
      return frame.in_header
                 ? fmt::format(
                       "truncated message: the connection ended after {} of the {} "
                       "length bytes",
                       frame.received, kHeaderBytes)
                 : fmt::format("truncated message: the connection ended after {} of {} bytes",
                               frame.received, frame.declared);
    case ReadError::kTooLarge:
      return fmt::format("message of {} bytes exceeds the limit of {} bytes", frame.declared,
                         kMaxMessageBytes);
    case ReadError::kTimeout:
      return fmt::format("no complete message within {}", Seconds(timeout));
    case ReadError::kStopped:
      return "server is stopping";
    case ReadError::kFailed:
      return std::string("receive failed: ") + std::strerror(frame.err);
  }
  return "unknown read error";
}

// Whether arrays/objects in `text` nest at most `limit` deep, counted without parsing
// (brackets inside strings do not count). Invalid JSON may pass; the parser rejects it.
bool NestingWithin(std::string_view text, int limit) {
  int depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit) return false;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return true;
}

// Parses a message body into a JSON object, or says why it is not one. The parser's own
// message quotes the input, which may hold a secret, so only the byte offset is reported.
bool ParseObject(const std::string& body, json* out, std::string* why) {
  if (!NestingWithin(body, kMaxNestingDepth)) {
    *why = fmt::format("JSON nested deeper than {} levels", kMaxNestingDepth);
    return false;
  }
  try {
    *out = json::parse(body);
  } catch (const json::parse_error& e) {
    *why = fmt::format("invalid JSON at byte {}", e.byte);
    return false;
  } catch (const json::exception&) {
    *why = "invalid JSON";
    return false;
  }
  if (!out->is_object()) {
    *why = fmt::format("message is a JSON {}, not an object", out->type_name());
    return false;
  }
  return true;
}

// A message as a frame. The replace handler turns invalid UTF-8 in a string (a handler
// passing on an S3 key's raw bytes) into U+FFFD instead of throwing.
Result<std::string> EncodeFrame(const json& message) {
  const std::string body = message.dump(-1, ' ', false, json::error_handler_t::replace);
  if (body.size() > kMaxMessageBytes) {
    return Status(ErrorCode::kInvalidArgument,
                  fmt::format("message of {} bytes exceeds the limit of {} bytes", body.size(),
                              kMaxMessageBytes));
  }
  std::string frame(kHeaderBytes, '\0');
  const auto n = static_cast<uint32_t>(body.size());
  frame[0] = static_cast<char>((n >> 24) & 0xff);
  frame[1] = static_cast<char>((n >> 16) & 0xff);
  frame[2] = static_cast<char>((n >> 8) & 0xff);
  frame[3] = static_cast<char>(n & 0xff);
  frame += body;
  return frame;
}

json ErrorReply(const std::string& why) {
  return json{{"type", "result"}, {"ok", false}, {"error", why}};
}

// SO_SNDTIMEO / SO_RCVTIMEO; 0 would mean "forever", so a spent timeout becomes 1 ms.
void SetSocketTimeout(int fd, int option, Duration d) {
  const auto us =
      std::max<int64_t>(std::chrono::duration_cast<std::chrono::microseconds>(d).count(), 1000);
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(us / 1'000'000);
  tv.tv_usec = static_cast<suseconds_t>(us % 1'000'000);
  ::setsockopt(fd, SOL_SOCKET, option, &tv, sizeof tv);
}

// Connects a non-blocking probe to `addr`: 0 when something listens, else the errno
// (ECONNREFUSED for a socket file nobody listens on, EAGAIN for a live but swamped server).
int ProbeConnect(sockaddr_un addr) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return errno;
  while (::connect(fd.get(), AsSockaddr(&addr), sizeof addr) != 0) {
    if (errno != EINTR) return errno;
  }
  return 0;
}

}  // namespace

// --- Responder -------------------------------------------------------------------------

Responder::Responder(int fd, uid_t peer_uid, pid_t peer_pid, Duration send_timeout,
                     const std::atomic<bool>* stopping)
    : fd_(fd),
      peer_uid_(peer_uid),
      peer_pid_(peer_pid),
      send_timeout_(send_timeout),
      stopping_(stopping) {}

bool Responder::stopping() const { return stopping_->load(); }

bool Responder::Progress(const json& fields) {
  if (gone_) return false;
  if (!fields.is_null() && !fields.is_object()) {
    Log()->error(
        "a control handler sent a progress message that is a JSON {}, not an object; "
        "dropped",
        fields.type_name());
    return true;
  }
  json message = fields.is_null() ? json::object() : fields;
  message["type"] = "progress";
  Result<std::string> frame = EncodeFrame(message);
  if (!frame.ok()) {
    Log()->error("a control handler's progress message was dropped: {}", frame.status().message());
    return true;
  }
  const int err = SendAll(fd_, *frame, DeadlineAfter(send_timeout_));
  if (err != 0) {
    Log()->debug("control peer pid {} gone during progress: {}", peer_pid_, std::strerror(err));
    gone_ = true;
  }
  return !gone_;
}

// --- ControlServer ---------------------------------------------------------------------

ControlServer::ControlServer(std::string path, Handler handler, ControlServerOptions options,
                             int listen_fd, int wake_read_fd, int wake_write_fd, dev_t dev,
                             ino_t ino)
    : path_(std::move(path)),
      handler_(std::move(handler)),
      options_(options),
      listen_fd_(listen_fd),
      wake_read_fd_(wake_read_fd),
      wake_write_fd_(wake_write_fd),
      dev_(dev),
      ino_(ino) {}

ControlServer::~ControlServer() { Stop(); }

Result<std::unique_ptr<ControlServer>> ControlServer::Start(std::string socket_path,
                                                            Handler handler,
                                                            ControlServerOptions options) {
  const std::string& path = socket_path;
  if (!handler) {
    return Status(ErrorCode::kInvalidArgument, "control server for " + path + " has no handler");
  }
  if (options.max_connections == 0) {
    return Status(ErrorCode::kInvalidArgument,
                  "control server for " + path + ": max_connections must be at least 1");
  }
  sockaddr_un addr;
  BFS_RETURN_IF_ERROR(MakeAddress(path, &addr));

  // Whatever is at the path: a live server's socket is left alone, a dead one's replaced.
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return Status(ErrorCode::kExists,
                    path +
                        " exists and is not a socket; not replacing it (remove it if it "
                        "is not needed)");
    }
    const int err = ProbeConnect(addr);
    if (err == 0 || err == EAGAIN) {
      return Status(ErrorCode::kBusy, "another process is already serving " + path);
    }
    if (err == EACCES || err == EPERM) {
      return Status(ErrorCode::kAccessDenied,
                    "cannot check the existing socket " + path + ": " + std::strerror(err));
    }
    if (err == ECONNREFUSED) {
      Log()->info("replacing the stale control socket {} (nothing listens on it)", path);
      if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
        const int unlink_err = errno;
        return Status(unlink_err == EACCES || unlink_err == EPERM ? ErrorCode::kAccessDenied
                                                                  : ErrorCode::kInternal,
                      "cannot remove the stale socket " + path + ": " + std::strerror(unlink_err));
      }
    } else if (err != ENOENT) {
      return Status(ErrorCode::kInternal,
                    "cannot check the existing socket " + path + ": " + std::strerror(err));
    }
  } else if (errno != ENOENT) {
    const int err = errno;
    return Status(err == EACCES ? ErrorCode::kAccessDenied : ErrorCode::kInternal,
                  "cannot stat " + path + ": " + std::strerror(err));
  }

  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) {
    return Status(ErrorCode::kInternal,
                  std::string("cannot create a Unix socket: ") + std::strerror(errno));
  }
  // bind() creates the file with 0777 & ~umask: the umask makes it 0600 from its first
  // instant, so no other user can connect in the window before the chmod below. umask is
  // process-wide: a file another thread creates during bind() comes out 0600 at worst. The
  // chmod covers a caller that changed the umask again meanwhile.
  const mode_t old_umask = ::umask(0177);
  const int bind_rc = ::bind(fd.get(), AsSockaddr(&addr), sizeof addr);
  const int bind_err = errno;
  ::umask(old_umask);
  if (bind_rc != 0) {
    switch (bind_err) {
      case EADDRINUSE:
        return Status(ErrorCode::kBusy, "another process bound " + path + " just now");
      case EACCES:
      case EPERM:
        return Status(ErrorCode::kAccessDenied,
                      "cannot create the control socket " + path + ": " + std::strerror(bind_err));
      case ENOENT:
      case ENOTDIR:
        return Status(ErrorCode::kNotFound, "cannot create the control socket " + path +
                                                ": its directory does not exist");
      default:
        return Status(ErrorCode::kInternal,
                      "cannot create the control socket " + path + ": " + std::strerror(bind_err));
    }
  }
  // From here on a failure removes the file it created.
  auto fail = [&](const std::string& what) {
    const int err = errno;
    ::unlink(path.c_str());
    return Status(ErrorCode::kInternal, what + " " + path + ": " + std::strerror(err));
  };
  if (::chmod(path.c_str(), 0600) != 0) return fail("cannot chmod the control socket");
  if (::lstat(path.c_str(), &st) != 0) return fail("cannot stat the control socket");
  if (::listen(fd.get(), SOMAXCONN) != 0) return fail("cannot listen on");
  int wake[2];
  if (::pipe2(wake, O_CLOEXEC | O_NONBLOCK) != 0) return fail("cannot create a pipe for");

  std::unique_ptr<ControlServer> server(new ControlServer(std::move(socket_path),
                                                          std::move(handler), options, fd.release(),
                                                          wake[0], wake[1], st.st_dev, st.st_ino));
  try {
    server->accept_thread_ = std::thread(&ControlServer::AcceptLoop, server.get());
  } catch (const std::system_error& e) {
    // ~ControlServer (Stop) closes the descriptors and removes the socket file.
    return Status(ErrorCode::kInternal,
                  "cannot start the control server thread for " + server->path() + ": " + e.what());
  }
  Log()->info("serving control requests on {}", server->path());
  return server;
}

void ControlServer::AcceptLoop() {
  const uid_t self = ::geteuid();
  // After a failure accept() may fail again at once (EMFILE leaves the connection queued and
  // the socket readable): pause, still wakeable by Stop(), instead of spinning.
  auto pause = [this] {
    pollfd wake{wake_read_fd_, POLLIN, 0};
    ::poll(&wake, 1, 100);
  };
  for (;;) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_read_fd_, POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      Log()->error("poll on control socket {}: {}", path_, std::strerror(errno));
      pause();
      continue;
    }
    if (fds[1].revents != 0) return;
    if (fds[0].revents == 0) continue;

    UniqueFd conn(::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!conn.valid()) {
      const int err = errno;
      if (err == EINTR || err == EAGAIN || err == EWOULDBLOCK || err == ECONNABORTED) continue;
      Log()->warn("accept on control socket {}: {}", path_, std::strerror(err));
      pause();
      continue;
    }
    ucred cred{};
    socklen_t cred_len = sizeof cred;
    if (::getsockopt(conn.get(), SOL_SOCKET, SO_PEERCRED, &cred, &cred_len) != 0) {
      Log()->warn("control connection on {} closed: cannot read its credentials: {}", path_,
                  std::strerror(errno));
      continue;
    }
    if (cred.uid != self && cred.uid != 0) {
      Log()->warn(
          "control connection on {} from uid {} pid {} closed unanswered: only uid {} "
          "(this process's) and root are served",
          path_, cred.uid, cred.pid, self);
      continue;
    }

    std::lock_guard lock(mu_);
    ReapFinishedLocked();
    if (connections_.size() >= options_.max_connections) {
      Log()->warn("control connection on {} from pid {} refused: {} already being served", path_,
                  cred.pid, connections_.size());
      // A fresh socket's buffer is empty: this small reply never blocks.
      Result<std::string> busy = EncodeFrame(ErrorReply("busy"));
      if (busy.ok())
        (void)::send(conn.get(), busy->data(), busy->size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      continue;
    }
    const uint64_t id = next_id_++;
    const int raw = conn.get();
    try {
      std::thread& slot = connections_[id];
      try {
        slot = std::thread([this, id, raw, uid = cred.uid, pid = cred.pid] {
          Serve(raw, uid, pid);
          std::lock_guard finished_lock(mu_);
          finished_.push_back(id);
        });
        conn.release();  // The thread owns it now.
      } catch (...) {
        connections_.erase(id);
        throw;
      }
    } catch (const std::exception& e) {
      Log()->error("control connection on {} dropped: cannot start its thread: {}", path_,
                   e.what());
    }
  }
}

void ControlServer::ReapFinishedLocked() {
  for (const uint64_t id : finished_) {
    auto it = connections_.find(id);
    if (it == connections_.end()) continue;
    it->second.join();  // The thread is past its last use of mu_: this returns at once.
    connections_.erase(it);
  }
  finished_.clear();
}

void ControlServer::Serve(int raw_fd, uid_t uid, pid_t pid) {
  UniqueFd fd(raw_fd);
  // Nothing may escape a connection thread: an exception here would terminate the process.
  try {
    const Frame frame = ReadFrame(fd.get(), DeadlineAfter(options_.receive_timeout), wake_read_fd_);
    auto reply_error = [&](const std::string& why) {
      Log()->warn("control request on {} from uid {} pid {} rejected: {}", path_, uid, pid, why);
      Result<std::string> out = EncodeFrame(ErrorReply(why));
      // The peer may have closed: the reply is sent when the socket still allows it.
      if (out.ok()) (void)SendAll(fd.get(), *out, DeadlineAfter(options_.send_timeout));
    };
    if (frame.error == ReadError::kClosed || frame.error == ReadError::kFailed) {
      // A peer that connects and leaves (Start()'s probe of a live server does that) or
      // resets: nothing to answer and nobody to answer.
      Log()->debug("control connection on {} from pid {} ended without a request: {}", path_, pid,
                   DescribeReadError(frame, options_.receive_timeout));
      return;
    }
    if (frame.error != ReadError::kNone) {
      reply_error(DescribeReadError(frame, options_.receive_timeout));
      return;
    }
    json request;
    std::string why;
    if (!ParseObject(frame.body, &request, &why)) {
      reply_error(why);
      return;
    }
    const auto op = request.find("op");
    if (op == request.end() || !op->is_string()) {
      reply_error("request has no string \"op\"");
      return;
    }
    const std::string op_name = Printable(op->get_ref<const std::string&>());

    Responder out(fd.get(), uid, pid, options_.send_timeout, &stopping_);
    const auto started = SteadyClock::now();
    json reply;
    try {
      reply = handler_(request, out);
    } catch (const std::exception& e) {
      Log()->error("control handler for op {} on {} threw: {}", op_name, path_,
                   Printable(e.what()));
      reply = ErrorReply("internal error: " + Printable(e.what()));
    } catch (...) {
      Log()->error("control handler for op {} on {} threw a non-exception", op_name, path_);
      reply = ErrorReply("internal error: unknown exception");
    }
    if (reply.is_null()) reply = json::object();
    if (!reply.is_object()) {
      Log()->error("control handler for op {} on {} returned a JSON {}, not an object", op_name,
                   path_, reply.type_name());
      reply = ErrorReply(
          fmt::format("internal error: the handler returned a JSON {}", reply.type_name()));
    }
    reply["type"] = "result";
    Result<std::string> encoded = EncodeFrame(reply);
    if (!encoded.ok()) {
      Log()->error("control reply for op {} on {} not sent: {}", op_name, path_,
                   encoded.status().message());
      encoded =
          EncodeFrame(ErrorReply("internal error: reply too large: " + encoded.status().message()));
    }
    if (encoded.ok()) {
      const int err = SendAll(fd.get(), *encoded, DeadlineAfter(options_.send_timeout));
      if (err != 0) {
        Log()->debug("control reply for op {} on {} to pid {} not delivered: {}", op_name, path_,
                     pid, std::strerror(err));
      }
    }
    Log()->debug("control op {} on {} from uid {} pid {} took {}", op_name, path_, uid, pid,
                 Seconds(SteadyClock::now() - started));
  } catch (const std::exception& e) {
    Log()->error("control connection on {} from pid {} failed: {}", path_, pid, e.what());
  } catch (...) {
    Log()->error("control connection on {} from pid {} failed", path_, pid);
  }
}

void ControlServer::Stop() {
  std::lock_guard stop_lock(stop_mu_);
  if (stopped_) return;
  stopped_ = true;
  stopping_.store(true);
  const char byte = 1;
  while (::write(wake_write_fd_, &byte, 1) < 0 && errno == EINTR) {
  }
  if (accept_thread_.joinable()) accept_thread_.join();
  // Closing the listening socket resets connections still in its backlog, so their clients
  // fail at once instead of waiting out their timeout.
  ::close(listen_fd_);
  // Only our own socket file: if someone replaced it meanwhile, theirs stays.
  struct stat st {};
  if (::lstat(path_.c_str(), &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_) {
    ::unlink(path_.c_str());
  }
  std::map<uint64_t, std::thread> threads;
  {
    std::lock_guard lock(mu_);
    threads.swap(connections_);
  }
  for (auto& [id, thread] : threads) thread.join();
  {
    std::lock_guard lock(mu_);
    finished_.clear();
  }
  ::close(wake_read_fd_);
  ::close(wake_write_fd_);
  Log()->info("stopped serving control requests on {}", path_);
}

// --- Client ----------------------------------------------------------------------------

Result<json> Call(const std::string& socket_path, const json& request, Duration timeout,
                  const std::function<void(const json&)>& on_progress) {
  const auto deadline = DeadlineAfter(timeout);
  const std::string& path = socket_path;
  const auto op = request.is_object() ? request.find("op") : request.end();
  if (!request.is_object() || op == request.end() || !op->is_string()) {
    return Status(ErrorCode::kInvalidArgument,
                  "a control request must be a JSON object with a string \"op\"");
  }
  sockaddr_un addr;
  BFS_RETURN_IF_ERROR(MakeAddress(path, &addr));
  Result<std::string> frame = EncodeFrame(request);
  if (!frame.ok()) return std::move(frame).TakeStatus().Annotate("request to " + path);

  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) {
    return Status(ErrorCode::kInternal,
                  std::string("cannot create a Unix socket: ") + std::strerror(errno));
  }
  // A blocking connect() to a server whose backlog is full waits for room; SO_SNDTIMEO bounds
  // that wait (EAGAIN once it passes). Everything after uses MSG_DONTWAIT and poll().
  SetSocketTimeout(fd.get(), SO_SNDTIMEO, deadline - SteadyClock::now());
  while (::connect(fd.get(), AsSockaddr(&addr), sizeof addr) != 0) {
    const int err = errno;
    switch (err) {
      case EINTR:
        continue;
      case ENOENT:
      case ECONNREFUSED:
      case ENOTDIR:
        return Status(ErrorCode::kNotFound, "nothing serves " + path + ": is it mounted?");
      case EACCES:
      case EPERM:
        return Status(ErrorCode::kAccessDenied, "not allowed to connect to " + path + " (" +
                                                    std::strerror(err) +
                                                    "): it belongs to another user");
      case EAGAIN:
      case ETIMEDOUT:
        return Status(ErrorCode::kTimeout, fmt::format("{} did not accept the connection "
                                                       "within {}",
                                                       path, Seconds(timeout)));
      default:
        return Status(ErrorCode::kNetwork, "cannot connect to " + path + ": " + std::strerror(err));
    }
  }

  const int send_err = SendAll(fd.get(), *frame, deadline);
  if (send_err == ETIMEDOUT) {
    return Status(ErrorCode::kTimeout,
                  fmt::format("{} did not take the request within {}", path, Seconds(timeout)));
  }
  // EPIPE / ECONNRESET: the server closed early, perhaps after answering "busy" or
  // rejecting the request: what it said is still there to read.
  if (send_err != 0 && send_err != EPIPE && send_err != ECONNRESET) {
    return Status(ErrorCode::kNetwork,
                  "cannot send the request to " + path + ": " + std::strerror(send_err));
  }

  for (;;) {
    Frame reply = ReadFrame(fd.get(), deadline, -1);
    switch (reply.error) {
      case ReadError::kNone:
        break;
      case ReadError::kTimeout:
        return Status(ErrorCode::kTimeout,
                      fmt::format("no reply from {} within {}", path, Seconds(timeout)));
      case ReadError::kTooLarge:
        return Status(ErrorCode::kMalformedResponse,
                      "malformed reply from " + path + ": " + DescribeReadError(reply, timeout));
      case ReadError::kClosed:
      case ReadError::kTruncated:
      case ReadError::kFailed:
      case ReadError::kStopped:
        return Status(ErrorCode::kNetwork, path +
                                               " closed the connection before its final "
                                               "reply (" +
                                               DescribeReadError(reply, timeout) + ")");
    }
    json message;
    std::string why;
    if (!ParseObject(reply.body, &message, &why)) {
      return Status(ErrorCode::kMalformedResponse, "malformed reply from " + path + ": " + why);
    }
    const auto type = message.find("type");
    if (type == message.end() || !type->is_string()) {
      return Status(ErrorCode::kMalformedResponse,
                    "malformed reply from " + path + ": no string \"type\"");
    }
    const std::string type_name = type->get<std::string>();
    message.erase("type");
    if (type_name == "progress") {
      if (on_progress) on_progress(message);
      continue;
    }
    if (type_name == "result") return message;
    return Status(
        ErrorCode::kMalformedResponse,
        "malformed reply from " + path + ": unknown type \"" + Printable(type_name) + "\"");
  }
}

// --- Runtime directory -----------------------------------------------------------------

std::string RuntimeDir() {
  if (const char* dir = std::getenv("BUCKETFS_RUNTIME_DIR"); dir != nullptr && *dir != '\0') {
    return dir;
  }
  const uid_t uid = ::geteuid();
  if (uid == 0) return "/run/bucketfs";
  if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg != nullptr && *xdg != '\0') {
    return std::string(xdg) + "/bucketfs";
  }
  return "/tmp/bucketfs-" + std::to_string(uid);
}

Status EnsureRuntimeDir(const std::string& dir) {
  if (dir.empty()) return Status(ErrorCode::kInvalidArgument, "empty runtime directory path");
  if (::mkdir(dir.c_str(), 0700) == 0) {
    // The umask may have taken bits from 0700 (leaving a directory we cannot use); it
    // cannot have added any.
    if (::chmod(dir.c_str(), 0700) != 0) {
      return Status(ErrorCode::kInternal,
                    "cannot chmod the runtime directory " + dir + ": " + std::strerror(errno));
    }
  } else if (errno != EEXIST) {
    const int err = errno;
    return Status(err == EACCES || err == EPERM || err == EROFS ? ErrorCode::kAccessDenied
                  : err == ENOENT                               ? ErrorCode::kNotFound
                                                                : ErrorCode::kInternal,
                  "cannot create the runtime directory " + dir + ": " + std::strerror(err));
  }
  // Checked whether we created it or not: in /tmp, someone else may have been first. A
  // symlink is judged by its own owner too, or another user's link to our directory would
  // pass.
  const uid_t self = ::geteuid();
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) {
    return Status(ErrorCode::kInternal,
                  "cannot stat the runtime directory " + dir + ": " + std::strerror(errno));
  }
  if (S_ISLNK(st.st_mode) && st.st_uid != self) {
    return Status(ErrorCode::kAccessDenied,
                  fmt::format("refusing the runtime directory {}: it is a symlink owned by uid "
                              "{}, not by us (uid {})",
                              dir, st.st_uid, self));
  }
  if (::stat(dir.c_str(), &st) != 0) {
    return Status(ErrorCode::kInternal,
                  "cannot stat the runtime directory " + dir + ": " + std::strerror(errno));
  }
  if (!S_ISDIR(st.st_mode)) {
    return Status(ErrorCode::kNotDirectory,
                  "the runtime directory " + dir + " exists and is not a directory");
  }
  if (st.st_uid != self) {
    return Status(ErrorCode::kAccessDenied,
                  fmt::format("refusing the runtime directory {}: it is owned by uid {}, not by "
                              "us (uid {}); remove it or set BUCKETFS_RUNTIME_DIR",
                              dir, st.st_uid, self));
  }
  if ((st.st_mode & 077) != 0) {
    return Status(ErrorCode::kAccessDenied,
                  fmt::format("refusing the runtime directory {}: it is open to others (mode "
                              "{:04o}); chmod 700 it or remove it",
                              dir, st.st_mode & 07777));
  }
  return Status::Ok();
}

}  // namespace bucketfs::control
