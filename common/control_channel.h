// Control channel: how the bucketfs CLI, the mount coordinator and the FUSE daemon talk to
// each other. A Unix stream socket that only its owner can open, carrying JSON messages.
//
// Wire format: every message is a 4-byte big-endian length followed by that many bytes of
// UTF-8 JSON, which must be an object of at most kMaxMessageBytes and nested at most
// kMaxNestingDepth deep. A connection carries exactly one request (an object with a string
// "op"); the server then sends zero or more progress messages ({"type":"progress", ...}) and
// exactly one final reply ({"type":"result", ...}) and closes. "type" is the framing's own
// field: a handler's "type" is overwritten, and Call() removes it before handing a message
// to its caller, so the caller sees exactly the fields the handler produced.
//
// Contract:
//  - Nothing a peer sends can crash, hang or exhaust the other side: lengths, nesting, UTF-8,
//    and the shape of every message are checked before use; every read and write has a
//    deadline; the server serves a bounded number of connections at once.
//  - A malformed request gets a final {"ok":false,"error":"<why>"} when the socket still
//    allows it, and its connection is closed; the server goes on serving others.
//  - Only the socket's owner (and root) are served: the socket file is mode 0600 and the
//    server also checks each peer's SO_PEERCRED uid, since a file mode alone is only as good
//    as the directory it sits in.
//  - Errors are Status; no exception leaves this module (a handler's exception becomes an
//    error reply). Call() lets an exception from the caller's own on_progress through.
//  - No SIGPIPE: sends use MSG_NOSIGNAL. Every descriptor is close-on-exec.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "common/status.h"

namespace bucketfs::control {

inline constexpr size_t kMaxMessageBytes = size_t{1} << 20;
// Deeper JSON is rejected before parsing: control messages are shallow, and code that walks
// a message recursively (dump(), a handler's own traversal) must not be given a
// stack-overflowing 500000-deep array by a peer.
inline constexpr int kMaxNestingDepth = 64;

struct ControlServerOptions {
  // Connections served at once; one more is answered {"ok":false,"error":"busy"} and closed.
  size_t max_connections = 16;
  // Time a peer has to deliver its whole request after being accepted. A whole-request
  // deadline rather than a per-read one, so a peer trickling a byte at a time cannot pin a
  // thread either.
  Duration receive_timeout = std::chrono::seconds(10);
  // Time each outgoing message may take to reach the peer's socket buffer; a peer that stops
  // reading is treated as gone (Responder::Progress returns false).
  Duration send_timeout = std::chrono::seconds(10);
};

// Handed to a handler to send progress messages on its connection. Used only on the
// connection's thread, during the handler call; not to be kept beyond it.
class Responder {
 public:
  Responder(const Responder&) = delete;
  Responder& operator=(const Responder&) = delete;

  // Sends {"type":"progress", ...fields}. `fields` must be an object (null sends none).
  // Returns false once the peer has gone (closed, reset, or not reading for send_timeout),
  // and from then on without sending: the handler should wrap up, as its final reply goes
  // nowhere. A message that cannot be sent as asked (not an object, over kMaxMessageBytes)
  // is a bug in the handler: it is logged and dropped, and the return value still says
  // whether the peer is there.
  bool Progress(const nlohmann::json& fields);

  uid_t peer_uid() const { return peer_uid_; }
  pid_t peer_pid() const { return peer_pid_; }
  // True once ControlServer::Stop() has begun: a long-running handler should finish, since
  // Stop() waits for it.
  bool stopping() const;

 private:
  friend class ControlServer;
  Responder(int fd, uid_t peer_uid, pid_t peer_pid, Duration send_timeout,
            const std::atomic<bool>* stopping);

  const int fd_;
  const uid_t peer_uid_;
  const pid_t peer_pid_;
  const Duration send_timeout_;
  const std::atomic<bool>* const stopping_;
  bool gone_ = false;
};

class ControlServer {
 public:
  // Called on the connection's own thread with the validated request (an object with a
  // string "op"). Returns the final reply's fields: an object, or null for none (so that
  // `return {};` works). Anything else, or an exception, becomes
  // {"ok":false,"error":"internal error: ..."}. Must be thread-safe: connections run at once.
  using Handler = std::function<nlohmann::json(const nlohmann::json& request, Responder& out)>;

  // Binds `socket_path` with mode 0600 (umask around bind, then chmod as well), listens, and
  // serves each connection on its own thread (at most `max_connections` at once; one over
  // gets a final {"ok":false,"error":"busy"} and is closed).
  //  - A socket file left by a dead server (connect gives ECONNREFUSED) is replaced; one with
  //    a live server is kBusy naming the path; a path that is not a socket is kExists (it is
  //    never deleted: it may be someone's file).
  //  - A path too long for sun_path is kInvalidArgument saying how long it is.
  //  - A peer whose SO_PEERCRED uid is neither ours nor root is closed unanswered (logged).
  // Two servers started on one stale path at the same instant may both replace it: callers
  // must not race two Start()s for one path (the stale check and bind are not one atomic step).
  static Result<std::unique_ptr<ControlServer>> Start(std::string socket_path, Handler handler,
                                                      ControlServerOptions options = {});

  // Idempotent: stops accepting, wakes connections still waiting for their request (they
  // are answered "server is stopping"), waits for every connection thread, including running
  // handlers, and unlinks the path if it is still our socket. Never call it from a handler:
  // it would wait for itself.
  void Stop();
  ~ControlServer();

  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  const std::string& path() const { return path_; }

 private:
  ControlServer(std::string path, Handler handler, ControlServerOptions options, int listen_fd,
                int wake_read_fd, int wake_write_fd, dev_t dev, ino_t ino);

  void AcceptLoop();
  void Serve(int fd, uid_t uid, pid_t pid);
  void ReapFinishedLocked();

  const std::string path_;
  const Handler handler_;
  const ControlServerOptions options_;
  const int listen_fd_;
  // Self-pipe: Stop() writes one byte and never drains it, so every poll() on the read end
  // (the accept loop's and each connection's) wakes and stays woken.
  const int wake_read_fd_;
  const int wake_write_fd_;
  // Identity of the socket file we bound, so Stop() never unlinks a successor's socket.
  const dev_t dev_;
  const ino_t ino_;

  std::atomic<bool> stopping_{false};
  std::mutex stop_mu_;  // Serializes Stop() calls; held for the whole of the first.
  bool stopped_ = false;
  std::thread accept_thread_;

  std::mutex mu_;
  uint64_t next_id_ = 0;
  std::map<uint64_t, std::thread> connections_;  // Guarded by mu_.
  std::vector<uint64_t> finished_;               // Guarded by mu_: threads about to exit.
};

// One request; calls on_progress for each progress message (without "type") as it arrives,
// then returns the final reply object (without "type"). `timeout` bounds the whole call.
//  - The request must be an object with a string "op", at most kMaxMessageBytes: else
//    kInvalidArgument, nothing sent.
//  - Missing socket / ECONNREFUSED -> kNotFound ("nothing serves <path>: is it mounted?");
//    EACCES -> kAccessDenied; no final reply within `timeout` -> kTimeout; a malformed reply
//    (oversized, invalid JSON, not an object, no or unknown "type", too deep) ->
//    kMalformedResponse; the server closing before its final reply -> kNetwork.
Result<nlohmann::json> Call(const std::string& socket_path, const nlohmann::json& request,
                            Duration timeout,
                            const std::function<void(const nlohmann::json&)>& on_progress = {});

// Where sockets live: $BUCKETFS_RUNTIME_DIR if set, else /run/bucketfs for root, else
// $XDG_RUNTIME_DIR/bucketfs, else /tmp/bucketfs-<uid>.
std::string RuntimeDir();

// Creates `dir` (not its parents) mode 0700 if missing. Refuses with kAccessDenied, naming
// the path, a directory (or a symlink to one) owned by someone else or with any group/other
// permission bit, since whoever can write there can replace our sockets; kNotDirectory if
// it is something else.
Status EnsureRuntimeDir(const std::string& dir);

}  // namespace bucketfs::control
