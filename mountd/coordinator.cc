#include "mountd/coordinator.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <optional>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <future>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "common/control_channel.h"
#include "common/exit_code.h"
#include "common/format_bytes.h"
#include "common/log.h"

namespace bucketfs::mountd {
namespace {

using nlohmann::json;
using std::chrono::duration_cast;
using std::chrono::milliseconds;

constexpr Duration kTick = milliseconds(200);
constexpr Duration kDaemonCallTimeout = std::chrono::seconds(10);

// Signals not yet handled, one bit each, so that a SIGHUP never hides a SIGTERM.
std::atomic<unsigned> g_signals{0};
constexpr unsigned kStopSignal = 1, kReloadSignal = 2;
void OnSignal(int sig) { g_signals.fetch_or(sig == SIGHUP ? kReloadSignal : kStopSignal); }

std::string MountHash(const std::string& mountpoint) {
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx",
                static_cast<unsigned long long>(XXH64(mountpoint.data(), mountpoint.size(), 0)));
  return hex;
}

std::string Relative(const std::string& path, const std::string& mountpoint) {
  if (path == mountpoint) return ".";
  if (path.size() > mountpoint.size() && path.compare(0, mountpoint.size(), mountpoint) == 0) {
    return path.substr(mountpoint.size() + 1);
  }
  return path;
}

bool Under(const std::string& path, const std::string& mountpoint) {
  return path == mountpoint ||
         (path.size() > mountpoint.size() && path.compare(0, mountpoint.size(), mountpoint) == 0 &&
          path[mountpoint.size()] == '/');
}

std::string ReadLink(const std::string& path) {
  char buf[4096];
  const ssize_t n = readlink(path.c_str(), buf, sizeof buf);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

// The argv of execv, built before fork: between fork and exec in a process with threads,
// only async-signal-safe calls (no allocation, no stdio) are allowed.
std::vector<char*> ExecArgs(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  return args;
}

// The environment of execve, built before fork (see ExecArgs): ours, with `extra`'s names
// set to its values. `storage` owns the strings the pointers point into.
std::vector<char*> ExecEnvironment(const std::vector<std::pair<std::string, std::string>>& extra,
                                   std::vector<std::string>& storage) {
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string_view entry(*e);
    const std::string_view name = entry.substr(0, entry.find('='));
    const bool replaced = std::any_of(extra.begin(), extra.end(),
                                      [&](const auto& var) { return var.first == name; });
    if (!replaced) storage.emplace_back(entry);
  }
  for (const auto& [name, value] : extra) storage.push_back(name + "=" + value);
  std::vector<char*> env;
  for (auto& entry : storage) env.push_back(entry.data());
  env.push_back(nullptr);
  return env;
}

// In a child between fork and exec: descriptors above stderr (S3 connections, control
// sockets, the spool lock of nobody) must not leak into what we run.
void CloseInheritedDescriptors() { syscall(SYS_close_range, 3U, ~0U, 0U); }

// Runs `argv` and waits; returns its exit status (or -1 if it could not run).
int RunAndWait(const std::vector<std::string>& argv) {
  std::vector<char*> args = ExecArgs(argv);
  const pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    int devnull = open("/dev/null", O_RDWR);
    if (devnull >= 0) dup2(devnull, STDOUT_FILENO);
    CloseInheritedDescriptors();
    execvp(args[0], args.data());
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// A FUSE mount whose daemon is gone: the kernel answers ENOTCONN. For a mount whose daemon
// is known to have exited: statfs, not stat. FUSE answers a stat of the root from
// attributes the kernel still caches (any `ls` just before the daemon died refreshed
// them), with no request to find the connection gone; a statfs always asks, and would
// wait for a daemon that is alive but hung.
bool IsDeadMount(const std::string& mountpoint) {
  struct statfs st {};
  return statfs(mountpoint.c_str(), &st) != 0 && errno == ENOTCONN;
}

// The same for whatever is mounted at a mountpoint at start, which may be a live daemon
// that hangs: stat, answered from the cache when the kernel has the root's attributes (a
// mount left by a crash long ago has none left, and answers ENOTCONN).
bool LooksLikeADeadMount(const std::string& mountpoint) {
  struct stat st {};
  return stat(mountpoint.c_str(), &st) != 0 && errno == ENOTCONN;
}

}  // namespace

std::string DecodeMountInfoPath(std::string_view field) {
  std::string out;
  out.reserve(field.size());
  for (size_t i = 0; i < field.size(); ++i) {
    const auto octal = [&](size_t at) { return field[at] >= '0' && field[at] <= '7'; };
    if (field[i] == '\\' && i + 3 < field.size() && octal(i + 1) && octal(i + 2) &&
        octal(i + 3)) {
      out.push_back(static_cast<char>((field[i + 1] - '0') * 64 + (field[i + 2] - '0') * 8 +
                                      (field[i + 3] - '0')));
      i += 3;
    } else {
      out.push_back(field[i]);
    }
  }
  return out;
}

bool IsFuseMounted(const std::string& mountpoint) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string id, parent, dev, root, point;
    fields >> id >> parent >> dev >> root >> point;
    // The filesystem type follows the optional fields' " - " separator: "fuse" or "fuse.X".
    const size_t separator = line.find(" - ");
    if (separator == std::string::npos) continue;
    std::istringstream tail(line.substr(separator + 3));
    std::string type;
    tail >> type;
    if ((type == "fuse" || type.starts_with("fuse.")) && DecodeMountInfoPath(point) == mountpoint) {
      return true;
    }
  }
  return false;
}

std::string ControlSocketPath(const std::string& runtime_dir, const std::string& mountpoint) {
  return runtime_dir + "/" + MountHash(mountpoint) + ".sock";
}
std::string DaemonSocketPath(const std::string& runtime_dir, const std::string& mountpoint) {
  return runtime_dir + "/" + MountHash(mountpoint) + ".daemon.sock";
}

std::vector<Holder> FindHolders(const std::string& mountpoint, const std::vector<pid_t>& except,
                                size_t* unreadable) {
  std::vector<Holder> holders;
  size_t skipped = 0;
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return holders;
  while (dirent* entry = readdir(proc)) {
    char* end = nullptr;
    const long pid = std::strtol(entry->d_name, &end, 10);
    if (*end != '\0' || pid <= 0) continue;
    if (pid == getpid() || std::find(except.begin(), except.end(), pid) != except.end()) continue;
    const std::string base = std::string("/proc/") + entry->d_name;
    std::string command;
    {
      std::ifstream comm(base + "/comm");
      std::getline(comm, command);
    }
    const std::string cwd = ReadLink(base + "/cwd");
    DIR* fds = opendir((base + "/fd").c_str());
    if (fds == nullptr) {
      if (errno == EACCES) ++skipped;
      continue;
    }
    bool holds_file = false;
    while (dirent* fd = readdir(fds)) {
      if (fd->d_name[0] == '.') continue;
      const std::string target = ReadLink(base + "/fd/" + fd->d_name);
      if (!target.empty() && Under(target, mountpoint)) {
        holders.push_back({static_cast<pid_t>(pid), command, target, false});
        holds_file = true;
      }
    }
    closedir(fds);
    if (!holds_file) {
      // A file mapped in memory (np.memmap, torch.load(mmap=True)) keeps its handle open
      // after its descriptor is closed.
      std::ifstream maps(base + "/maps");
      std::string line;
      while (std::getline(maps, line)) {
        const size_t slash = line.find('/');
        if (slash == std::string::npos) continue;
        const std::string path = line.substr(slash);
        if (Under(path, mountpoint)) {
          holders.push_back({static_cast<pid_t>(pid), command, path, false, true});
          holds_file = true;
          break;
        }
      }
    }
    if (!holds_file && Under(cwd, mountpoint)) {
      holders.push_back({static_cast<pid_t>(pid), command, cwd, true});
    }
  }
  closedir(proc);
  if (unreadable != nullptr) *unreadable = skipped;
  return holders;
}

std::string DescribeHolders(const std::vector<Holder>& holders, const std::string& mountpoint) {
  std::string out;
  for (const auto& h : holders) {
    if (!out.empty()) out += "; ";
    out += "pid " + std::to_string(h.pid) + " (" + h.command + ") ";
    out += h.cwd      ? "has its working directory in " + Relative(h.path, mountpoint)
           : h.mapped ? "has " + Relative(h.path, mountpoint) + " mapped in memory"
                      : "holds " + Relative(h.path, mountpoint);
  }
  return out;
}

// ------------------------------------------------------------------------------------------

struct Coordinator::State {
  s3::ObjectClient& client;
  CoordinatorServices services;
  CoordinatorOptions options;
  Clock& clock = RealClock();
  std::unique_ptr<Lease> lease;
  std::mutex lease_mu;  // Serialises Renew (main loop) and Release (an unmount's thread).
  // The lease is lost and the running daemon said it is fenced (main loop only; a restarted
  // daemon must be told again).
  std::atomic<bool> daemon_fence_confirmed{false};
  std::unique_ptr<control::ControlServer> server;
  std::string daemon_socket;
  std::string startup_error_file;
  int daemon_exit_code = 0;  // Of the last daemon that exited before its mount was ready.

  std::mutex mu;                // Guards the fields below.
  pid_t daemon_pid = -1;
  int daemon_restarts = 0;
  bool ready = false;           // Run() reported the mount ready; requests may act on it.
  bool restart_pending = false;  // The daemon died and is not serving again yet.
  bool starting = false;        // StartDaemon() runs (first start or a restart).
  bool unmounting = false;      // An unmount owns the daemon: do not restart it.
  bool finished = false;        // Unmounted: Run() returns.
  int exit_code = 0;
  std::string lease_state = "none";  // none | held | lost | released | kept
  std::vector<std::string> errors;   // Recent, for status.
  std::condition_variable changed;

  State(s3::ObjectClient& c, CoordinatorServices s, CoordinatorOptions o)
      : client(c), services(std::move(s)), options(std::move(o)) {}

  void NoteError(const std::string& message) {
    Logger("mountd")->error("{}", message);
    std::lock_guard lock(mu);
    errors.push_back(message);
    if (errors.size() > 10) errors.erase(errors.begin());
  }

  std::string Where() const {
    return "bucket '" + options.bucket + "' at " + options.mountpoint;
  }

  Result<json> CallDaemon(const json& request, Duration timeout = kDaemonCallTimeout) {
    return control::Call(daemon_socket, request, timeout);
  }
  // A request whose failure is only worth a line in the log.
  // Sends `request`; true once the daemon said ok (a failure is logged).
  bool TellDaemon(const json& request) {
    auto reply = CallDaemon(request);
    if (!reply.ok() || !reply->value("ok", false)) {
      Logger("mountd")->warn("daemon request {}: {}", request.dump(),
                             reply.ok() ? reply->dump() : reply.status().ToString());
      return false;
    }
    return true;
  }

  // Starts `bucketfs serve` and waits until it reports the kernel mount in place.
  Status StartDaemon() {
    std::vector<std::string> argv = options.daemon_argv;
    argv.push_back("--control-socket");
    argv.push_back(daemon_socket);
    argv.push_back("--startup-error-file");
    argv.push_back(startup_error_file);
    if (lease) {
      // A lease lost (or released) must never be handed to a new daemon: 1 ns after boot is
      // long past, so it starts fenced and only keeps what is in the spool.
      const bool valid = lease->held() && !lease->lost();
      argv.push_back("--lease-valid-until-ns");
      argv.push_back(valid ? std::to_string(lease->valid_until().time_since_epoch().count())
                           : "1");
    }
    unlink(startup_error_file.c_str());
    // /proc/self/exe: the binary we run, even if a package upgrade replaced its path.
    std::vector<char*> args = ExecArgs(argv);
    std::vector<std::string> env_storage;
    std::vector<char*> env = ExecEnvironment(
        services.daemon_environment ? services.daemon_environment()
                                    : std::vector<std::pair<std::string, std::string>>{},
        env_storage);
    const pid_t parent = getpid();
    const pid_t pid = fork();
    if (pid < 0) return Status(ErrorCode::kInternal, std::string("fork: ") + strerror(errno));
    if (pid == 0) {
      // The daemon goes when we go: it drains and unmounts on SIGTERM, and its fence closes
      // at the lease deadline we can no longer extend. Its own process group: a Ctrl-C or a
      // group-wide SIGTERM meant for us must not unmount it behind our back.
      prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (getppid() != parent) _exit(1);
      setpgid(0, 0);
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, nullptr);
      CloseInheritedDescriptors();
      execve("/proc/self/exe", args.data(), env.data());
      static const char kMessage[] = "bucketfs: cannot run the daemon (/proc/self/exe)\n";
      if (write(STDERR_FILENO, kMessage, sizeof kMessage - 1) < 0) {
      }
      _exit(127);
    }
    {
      std::lock_guard lock(mu);
      daemon_pid = pid;
    }
    daemon_fence_confirmed = false;  // A new daemon: fenced only by its start argument yet.
    daemon_exit_code = 0;
    Logger("mountd")->info("daemon pid {} starting for {}", pid, Where());
    MonoTime deadline = clock.Now() + options.mount_timeout;
    while (clock.Now() < deadline) {
      int status = 0;
      const pid_t done = waitpid(pid, &status, WNOHANG);
      if (done == pid) {
        std::lock_guard lock(mu);
        daemon_pid = -1;
        daemon_exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 0;
        std::string why;
        std::ifstream err(startup_error_file);
        std::getline(err, why, '\0');
        if (why.empty()) {
          why = WIFEXITED(status) ? "the daemon exited with status " +
                                        std::to_string(WEXITSTATUS(status))
                                  : "the daemon was killed by signal " +
                                        std::to_string(WTERMSIG(status));
          why += " before the mount was ready (see its log)";
        }
        return Status(ErrorCode::kInternal, why);
      }
      auto reply = CallDaemon(json{{"op", "status"}}, std::chrono::seconds(2));
      if (reply.ok() && reply->value("mounted", false)) {
        Logger("mountd")->info("daemon pid {} serves {}", pid, Where());
        return Status::Ok();
      }
      if (reply.ok() && reply->value("recovering", false)) {
        // Uploading what a previous daemon left, before serving: however long that takes,
        // it is progress, not a hang.
        deadline = std::max(deadline, clock.Now() + options.mount_timeout);
      }
      // The lease lives on while the daemon starts (its fence follows each renewal).
      TendLease();
      clock.SleepFor(kTick);
    }
    kill(pid, SIGKILL);
    while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    {
      std::lock_guard lock(mu);
      daemon_pid = -1;
    }
    return Status(ErrorCode::kTimeout, "the daemon did not mount " + Where() + " within " +
                                           std::to_string(duration_cast<std::chrono::seconds>(
                                                              options.mount_timeout)
                                                              .count()) +
                                           " s");
  }

  // StartDaemon() with `starting` set, so that an unmount waits for its outcome; refused
  // once an unmount began.
  Status StartDaemonGuarded() {
    {
      std::lock_guard lock(mu);
      if (unmounting || finished) {
        return Status(ErrorCode::kCancelled, "an unmount began; the daemon is not started");
      }
      starting = true;
    }
    Status started = StartDaemon();
    {
      std::lock_guard lock(mu);
      starting = false;
    }
    changed.notify_all();
    return started;
  }

  // Reaps the daemon if it exited. Returns true when it did. `unless_unmounting`: not while
  // an unmount is under way, decided under the same lock as the reaping, since the unmount
  // reaps (or kills) the PID it took itself: reaped here, that PID could be reused.
  bool ReapDaemon(int* status_out = nullptr, bool unless_unmounting = false) {
    std::lock_guard lock(mu);
    if (unless_unmounting && (unmounting || finished)) return false;
    if (daemon_pid <= 0) return false;
    int status = 0;
    if (waitpid(daemon_pid, &status, WNOHANG) != daemon_pid) return false;
    daemon_pid = -1;
    if (status_out) *status_out = status;
    return true;
  }

  // Only a mount whose daemon is gone (ENOTCONN): a live one is someone's.
  void DetachDeadMount() {
    if (IsDeadMount(options.mountpoint)) {
      RunAndWait({"fusermount3", "-u", "-z", options.mountpoint});
    }
  }

  // Passes the lease's deadline to the daemon, or, once the lease is lost, fences it: a
  // lost lease's deadline (the last renewal's) may lie ahead still, and a daemon started
  // since the loss (a restart) has never been fenced.
  void PushLeaseToDaemon() {
    if (!lease) return;
    if (lease->lost() || !lease->held()) {
      FenceDaemonUntilConfirmed();
      return;
    }
    auto reply = CallDaemon(
        json{{"op", "lease"},
             {"valid_until_ns", lease->valid_until().time_since_epoch().count()}});
    if (!reply.ok()) {
      Logger("mountd")->warn("could not pass the renewed lease to the daemon: {}",
                             reply.status().ToString());
    } else if (reply->value("fenced", false)) {
      Logger("mountd")->error("the lease is renewed but the daemon stays fenced (its deadline "
                              "passed before this renewal reached it); writes fail with EROFS");
    }
  }

  // Returns whether the daemon confirmed it is fenced.
  bool FenceDaemon(const std::string& reason) {
    auto reply = CallDaemon(json{{"op", "fence"}, {"reason", reason}});
    if (!reply.ok()) {
      Logger("mountd")->warn("could not fence the daemon ({}); asking again, and its fence "
                             "closes at the lease deadline on its own",
                             reply.status().ToString());
      return false;
    }
    return reply->value("ok", false);
  }

  // While the lease is lost, every tick until the daemon confirms (a daemon that did not
  // answer, or one restarted since).
  void FenceDaemonUntilConfirmed() {
    if (daemon_fence_confirmed) return;
    daemon_fence_confirmed = FenceDaemon("the lease was lost: " + lease->lost_reason());
  }

  // One step of the lease's life, from the main loop.
  void TendLease() {
    std::lock_guard lease_lock(lease_mu);
    if (!lease) return;
    if (lease->lost()) {  // (A lost lease is not held() either.)
      FenceDaemonUntilConfirmed();
      return;
    }
    if (!lease->held()) return;
    const MonoTime now = clock.Now();
    if (now < lease->next_renewal()) return;
    Status renewed = lease->Renew();
    if (renewed.ok()) {
      PushLeaseToDaemon();
      return;
    }
    if (lease->lost()) {
      NoteError("lost the lease of " + Where() + ": " + lease->lost_reason() +
                "; writes now fail with EROFS and unsynced data stays in the spool " +
                options.spool_dir + ". Make sure no other pod mounts the bucket, then run "
                "`bucketfs unmount --force` and mount again (that mount uploads the spool)");
      {
        std::lock_guard lock(mu);
        lease_state = "lost";
      }
      FenceDaemonUntilConfirmed();
      return;
    }
    if (clock.Now() >= lease->valid_until()) {
      lease->MarkLost("no renewal succeeded before the deadline: " + renewed.ToString());
      NoteError("the lease of " + Where() + " expired unrenewed (" + renewed.ToString() +
                "); writes now fail with EROFS. Check that this pod reaches S3; then run "
                "`bucketfs unmount --force` and mount again (that mount uploads the spool " +
                options.spool_dir + ")");
      {
        std::lock_guard lock(mu);
        lease_state = "lost";
      }
      FenceDaemonUntilConfirmed();
      return;
    }
    Logger("mountd")->warn("lease renewal failed, retrying: {}", renewed.ToString());
  }

  void TendDaemon() {
    bool resume = false;
    {
      std::lock_guard lock(mu);
      resume = restart_pending && daemon_pid <= 0 && !starting && !unmounting && !finished;
    }
    if (resume) {
      // A restart an unmount interrupted, and the unmount gave up: nothing else would ever
      // start the daemon again, and the lease would be held for a mount that serves nothing.
      RestartDaemon();
      return;
    }
    int status = 0;
    if (!ReapDaemon(&status, /*unless_unmounting=*/true)) return;
    if (WIFEXITED(status) && !IsFuseMounted(options.mountpoint)) {
      // The daemon ended by itself after its mount went away (`umount`, `fusermount3 -u`,
      // SIGTERM to it): someone unmounted it on purpose. It uploaded what it could before
      // exiting; its status says whether anything stayed in the spool.
      const bool clean = WEXITSTATUS(status) == 0;
      Logger("mountd")->info("{} was unmounted outside `bucketfs unmount`; the daemon exited "
                             "with status {}",
                             Where(), WEXITSTATUS(status));
      std::unique_lock lease_lock(lease_mu);
      if (lease && lease->held() && !lease->lost()) {
        if (clean) {
          Status released = lease->Release();
          std::lock_guard lock(mu);
          lease_state = released.ok() ? "released" : "kept";
        } else {
          NoteError("data stayed in the spool " + options.spool_dir +
                    "; the lease is left to expire so that no other pod mounts the bucket "
                    "before the next mount here uploads it");
          std::lock_guard lock(mu);
          lease_state = "kept";
        }
      }
      lease_lock.unlock();
      std::lock_guard lock(mu);
      finished = true;
      exit_code = clean ? 0 : 1;
      changed.notify_all();
      return;
    }
    const std::string how = WIFEXITED(status)
                                ? "exited with status " + std::to_string(WEXITSTATUS(status))
                                : "was killed by signal " + std::to_string(WTERMSIG(status));
    NoteError("the daemon serving " + Where() + " " + how + "; restarting it");
    DetachDeadMount();
    {
      std::lock_guard lock(mu);
      restart_pending = true;
    }
    RestartDaemon();
  }

  // Starts the daemon again until it serves. An unmount (or the end) interrupts it; the
  // restart stays pending, and TendDaemon resumes it if that unmount gives up.
  void RestartDaemon() {
    Duration backoff = std::chrono::seconds(1);
    for (;;) {
      {
        std::lock_guard lock(mu);
        if (unmounting || finished) return;
        ++daemon_restarts;
      }
      Status started = StartDaemonGuarded();
      if (started.ok()) {
        {
          std::lock_guard lock(mu);
          restart_pending = false;
        }
        PushLeaseToDaemon();
        return;
      }
      if (started.code() == ErrorCode::kCancelled) return;
      NoteError("restarting the daemon failed: " + started.ToString());
      DetachDeadMount();
      // The backoff is waited in ticks that tend the lease (renewals come every TTL/3, and
      // a wait of 30 s would let it lapse, and another pod take the bucket while the spool
      // holds files to upload) and notice a stop or an unmount at once.
      const MonoTime retry_at = clock.Now() + backoff;
      backoff = std::min<Duration>(backoff * 2, std::chrono::seconds(30));
      while (clock.Now() < retry_at) {
        clock.SleepFor(std::min<Duration>(kTick, retry_at - clock.Now()));
        TendLease();
        if ((g_signals.load() & kStopSignal) != 0) return;
        std::lock_guard lock(mu);
        if (unmounting || finished) return;
      }
    }
  }

  json Status_() {
    json out{{"ok", true},
             {"bucket", options.bucket},
             {"alias", options.alias},
             {"endpoint", options.endpoint},
             {"mountpoint", options.mountpoint},
             {"read_only", options.read_only},
             {"spool", options.spool_dir},
             {"coordinator_pid", getpid()}};
    {
      std::lock_guard lock(mu);
      out["daemon_pid"] = daemon_pid;
      out["daemon_restarts"] = daemon_restarts;
      out["unmounting"] = unmounting;
      out["errors"] = errors;
      json l{{"state", lease_state}};
      if (lease) {
        const LeaseRecord rec = lease->record();
        const MonoTime now = clock.Now();
        l["key"] = lease->options().key;
        l["holder"] = rec.holder;
        l["host"] = rec.host;
        l["epoch"] = rec.epoch;
        l["renew_seq"] = rec.renew_seq;
        l["acquired_at"] = rec.acquired_at;
        l["renewed_at"] = rec.renewed_at;
        l["ttl_s"] = duration_cast<milliseconds>(lease->options().ttl).count() / 1000.0;
        l["next_renewal_in_s"] =
            duration_cast<milliseconds>(lease->next_renewal() - now).count() / 1000.0;
        l["valid_for_s"] = duration_cast<milliseconds>(lease->valid_until() - now).count() / 1000.0;
        if (lease->lost()) l["lost_reason"] = lease->lost_reason();
      }
      out["lease"] = l;
    }
    auto daemon = CallDaemon(json{{"op", "status"}}, std::chrono::seconds(5));
    if (daemon.ok()) {
      out["daemon"] = *daemon;
    } else {
      out["daemon"] = json{{"ok", false}, {"error", daemon.status().ToString()}};
    }
    return out;
  }

  // The unmount that loses nothing (see the header).
  // `sync_limit` unset: the sync gets what is left of `handle_timeout` (at least 5 s), so
  // the whole unmount fits in it (SIGTERM, whose grace period is --drain-timeout).
  json Unmount(Duration handle_timeout, std::optional<Duration> sync_limit, bool force,
               const std::function<void(const std::string&)>& progress) {
    {
      std::lock_guard lock(mu);
      if (finished) return json{{"ok", true}, {"message", "already unmounted"}};
      if (unmounting) return json{{"ok", false}, {"error", "an unmount is already under way"}};
      unmounting = true;
    }
    auto give_up = [&](const std::string& error) {
      TellDaemon(json{{"op", "stop-opens"}, {"stop", false}});
      std::lock_guard lock(mu);
      unmounting = false;
      return json{{"ok", false}, {"error", error}};
    };
    pid_t daemon;
    {
      // A daemon being (re)started is waited for: its outcome decides what there is to sync.
      std::unique_lock lock(mu);
      changed.wait(lock, [&] { return !starting; });
      daemon = daemon_pid;
    }
    if (daemon <= 0 && !options.read_only && !force) {
      return give_up("the daemon of " + Where() + " is not running (see `bucketfs status`); "
                     "what it left in the spool " + options.spool_dir +
                     " is uploaded when it runs again. Nothing was unmounted; add --force to "
                     "stop anyway and leave the spool for the next mount.");
    }
    progress("unmounting " + Where() + ": no new files are opened from now on");
    // Until the daemon has said it opens nothing more, a file may be opened and half-written
    // after any count of open files: asked again at every tick, and without its word only
    // closed files are synced.
    const json stop_opens{{"op", "stop-opens"}, {"stop", true}};
    bool opens_stopped = daemon <= 0 || TellDaemon(stop_opens);

    // 1. Open handles.
    const MonoTime handles_deadline = clock.Now() + handle_timeout;
    MonoTime next_report{};
    bool forced = false;
    for (;;) {
      // A daemon that does not answer is not one with no open files: until it says how many
      // there are, files may be half-written, and a sync of them would upload that.
      std::optional<uint64_t> open_files;
      std::string why_unknown;
      if (daemon <= 0) {
        open_files = 0;
      } else {
        auto st = CallDaemon(json{{"op", "status"}});
        if (st.ok() && st->value("ok", false) && st->contains("open_files") &&
            (*st)["open_files"].is_number_unsigned()) {
          open_files = (*st)["open_files"].get<uint64_t>();
          // Asked again only of a daemon that answers (one that does not would make every
          // tick wait out a second call). A count taken before opens stopped may be short
          // of a file opened since: once they stop, the files are counted again.
          if (!opens_stopped && (opens_stopped = TellDaemon(stop_opens))) continue;
        } else {
          why_unknown = !st.ok() ? st.status().ToString()
                                 : st->value("error", std::string("its reply had no count"));
        }
      }
      if (open_files == 0) break;
      std::string what;
      if (open_files) {
        const auto holders = FindHolders(options.mountpoint, {daemon});
        what = std::to_string(*open_files) + " file(s) are still open in " + Where() + ": " +
               (holders.empty() ? "no process this one can see (they may run in another "
                                  "container without a shared PID namespace, or as another "
                                  "user)"
                                : DescribeHolders(holders, options.mountpoint));
      } else {
        what = "the daemon of " + Where() + " did not say whether files are open (" +
               why_unknown + ")";
      }
      if (clock.Now() >= handles_deadline) {
        if (!force) {
          return give_up(what +
                         ". Nothing was unmounted. Stop those processes (or close the files) "
                         "and run `bucketfs unmount` again, or add --force to detach the mount "
                         "anyway (data not yet uploaded stays in the spool).");
        }
        progress("timed out: " + what + "; --force: going on, uploading closed files only");
        forced = true;
        break;
      }
      if (clock.Now() >= next_report) {
        progress("waiting: " + what);
        next_report = clock.Now() + std::chrono::seconds(2);
      }
      clock.SleepFor(kTick);
    }

    const Duration sync_timeout =
        sync_limit ? *sync_limit
                   : std::max<Duration>(std::chrono::seconds(5), handles_deadline - clock.Now());
    // 2. Sync every dirty file, reporting what is left.
    bool synced = daemon > 0 || options.read_only;
    std::string sync_error = synced ? "" : "the daemon was not running";
    if (daemon > 0 && !options.read_only) {
      auto sync = std::async(std::launch::async, [&] {
        // Forced past open files, or never told that opens stopped: only closed files are
        // uploaded; one still open may be half-written, and stays in the spool.
        return CallDaemon(json{{"op", "sync"},
                               {"timeout_ms", duration_cast<milliseconds>(sync_timeout).count()},
                               {"closed_only", forced || !opens_stopped}},
                          sync_timeout + std::chrono::seconds(30));
      });
      MonoTime next = clock.Now();
      while (sync.wait_for(std::chrono::milliseconds(200)) != std::future_status::ready) {
        if (clock.Now() < next) continue;
        next = clock.Now() + std::chrono::seconds(1);
        auto st = CallDaemon(json{{"op", "status"}});
        if (st.ok() && st->value("dirty_files", uint64_t{0}) > 0) {
          progress("syncing: " + std::to_string(st->value("dirty_files", uint64_t{0})) +
                   " file(s), " + FormatBytes(st->value("dirty_bytes", uint64_t{0})) +
                   " left, " + std::to_string(st->value("uploads_in_flight", uint64_t{0})) +
                   " upload(s) in flight");
        }
      }
      auto result = sync.get();
      if (!result.ok()) {
        synced = false;
        sync_error = result.status().ToString();
      } else if (!result->value("ok", false)) {
        synced = false;
        sync_error = result->value("error", std::string("sync failed"));
      }
      bool fenced = false;
      {
        std::lock_guard lock(mu);
        fenced = lease_state == "lost";
      }
      if (!synced && !force && fenced) {
        return give_up("could not sync " + Where() + ": it lost its lease, so it may not write "
                       "to the bucket any more (" + sync_error + "). The data stays in the "
                       "spool " + options.spool_dir + ". Run `bucketfs unmount --force` to "
                       "detach it; a later mount with this spool uploads what was closed, "
                       "with preconditions that refuse to overwrite newer objects.");
      }
      if (!synced && !force) {
        return give_up("could not sync " + Where() + ": " + sync_error +
                       ". Nothing was unmounted; the data is in the spool " + options.spool_dir +
                       ". Fix the cause and run `bucketfs unmount` again, or add --force to "
                       "detach the mount and leave the data for the next mount.");
      }
      if (synced) progress("every file is in the bucket");
    }

    // 3. Unmount, and wait for the daemon to end.
    bool detached_lazily = false;
    if (forced || !synced) {
      FenceDaemon("forced unmount");
      RunAndWait({"fusermount3", "-u", "-z", options.mountpoint});
      detached_lazily = true;
    } else if (IsFuseMounted(options.mountpoint) &&
               RunAndWait({"fusermount3", "-u", options.mountpoint}) != 0) {
      const auto holders = FindHolders(options.mountpoint, {daemon});
      if (!force) {
        return give_up("the kernel refused to unmount " + options.mountpoint +
                       " (busy): " + DescribeHolders(holders, options.mountpoint) +
                       ". Every file is synced; move those processes out of the mount and run "
                       "`bucketfs unmount` again, or add --force.");
      }
      // Everything is synced, but the detached mount lives on for the processes in it: it
      // must change nothing in the bucket once the lease is released.
      FenceDaemon("unmounted while busy (--force)");
      RunAndWait({"fusermount3", "-u", "-z", options.mountpoint});
      detached_lazily = true;
    }
    if (daemon > 0) {
      // After a clean unmount the daemon exits at once (nothing left to upload). A lazily
      // detached mount lives on while programs hold files or directories in it: do not
      // wait for them.
      const MonoTime deadline =
          clock.Now() + (detached_lazily ? std::chrono::seconds(10) : std::chrono::seconds(60));
      int status = 0;
      bool reaped = false;
      while (!(reaped = ReapDaemon(&status)) && clock.Now() < deadline) clock.SleepFor(kTick);
      if (!reaped) {
        // Killing it loses nothing if it says nothing is left to upload (it was synced and
        // fenced, and no file could be opened since).
        bool nothing_left = false;
        if (synced) {
          auto st = CallDaemon(json{{"op", "status"}});
          nothing_left = st.ok() && st->value("ok", false) &&
                         st->value("dirty_files", uint64_t{1}) == 0 &&
                         st->value("fenced", false);
        }
        kill(daemon, SIGKILL);
        while (waitpid(daemon, nullptr, 0) < 0 && errno == EINTR) {
        }
        std::lock_guard lock(mu);
        daemon_pid = -1;
        if (!nothing_left) synced = false;
      } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        synced = false;  // The daemon says something stayed in the spool.
      }
    }

    // 4. The lease: released only when nothing is left to upload.
    std::string lease_note;
    std::unique_lock lease_lock(lease_mu);
    if (lease && lease->held() && !lease->lost()) {
      if (synced) {
        Status released = lease->Release();
        lease_note = released.ok() ? "; lease released"
                                   : "; the lease could not be released (" + released.ToString() +
                                         "): it expires in " +
                                         std::to_string(duration_cast<std::chrono::seconds>(
                                                            lease->options().ttl)
                                                            .count()) +
                                         " s";
        std::lock_guard lock(mu);
        lease_state = released.ok() ? "released" : "kept";
      } else {
        lease_note = "; the lease is kept until it expires, so that no other pod mounts the "
                     "bucket before the next mount here uploads what is in the spool";
        std::lock_guard lock(mu);
        lease_state = "kept";
      }
    }
    lease_lock.unlock();
    {
      std::lock_guard lock(mu);
      finished = true;
      exit_code = synced ? 0 : 1;
    }
    changed.notify_all();
    if (synced) {
      return json{{"ok", true}, {"message", "unmounted " + Where() + lease_note}};
    }
    return json{{"ok", false},
                {"forced", true},
                {"error", "detached " + Where() + " with data not yet uploaded (" +
                              (sync_error.empty() ? "see the log" : sync_error) +
                              "); it stays in the spool " + options.spool_dir +
                              " and the next mount with it uploads it" + lease_note}};
  }

  json Reload(const json& request) {
    std::string how;
    if (request.contains("credentials") && request["credentials"].is_object()) {
      const json& c = request["credentials"];
      s3::Credentials creds{c.value("access_key", std::string()),
                            c.value("secret_key", std::string()),
                            c.value("session_token", std::string())};
      if (creds.empty()) return json{{"ok", false}, {"error", "the new credentials are empty"}};
      if (!services.set_credentials) {
        return json{{"ok", false},
                    {"error", "this mount reads its credentials from " +
                                  services.credentials->Describe() +
                                  ": update that file and run `bucketfs reload` without new "
                                  "variables"}};
      }
      Status set = services.set_credentials(creds);
      if (!set.ok()) return json{{"ok", false}, {"error", set.ToString()}};
      how = "now using " + creds.Redacted();
    } else if (services.set_credentials) {
      // Keys from variables: nothing to re-read here; new ones come with the request.
      return json{{"ok", false},
                  {"error", "this mount's credentials came from " +
                                services.credentials->Describe() +
                                ", and none came with this reload: run `bucketfs reload` in a "
                                "shell where the new key and secret are set in the same "
                                "variables (a SIGHUP cannot carry them)"}};
    } else {
      Status reloaded = services.credentials->Reload();
      if (!reloaded.ok()) return json{{"ok", false}, {"error", reloaded.ToString()}};
      how = "re-read " + services.credentials->Describe();
    }
    auto forwarded = CallDaemon(request);
    if (!forwarded.ok()) {
      return json{{"ok", false},
                  {"error", "the coordinator has the new credentials but the daemon did not "
                            "take them: " +
                                forwarded.status().ToString()}};
    }
    if (!forwarded->value("ok", false)) return *forwarded;
    Logger("mountd")->info("credentials reloaded: {}", how);
    return json{{"ok", true}, {"message", "credentials reloaded for " + Where() + ": " + how}};
  }

  json Share(const json& request) {
    const std::string key = request.value("key", std::string());
    const int ttl = request.value("ttl", 900);
    if (key.empty()) return json{{"ok", false}, {"error", "no key to share"}};
    if (ttl < 1 || ttl > 604800) {
      return json{{"ok", false},
                  {"error", "--ttl " + std::to_string(ttl) +
                                " is out of range: S3 presigned URLs last 1 s to 7 days (604800)"}};
    }
    auto head = client.Head(s3::HeadRequest{key, {}},
                            {clock.Now() + std::chrono::seconds(30)});
    if (!head.ok()) {
      return json{{"ok", false},
                  {"error", "cannot share '" + key + "': " + head.status().ToString() +
                                (head.status().code() == ErrorCode::kNotFound
                                     ? " (a file still being written is shared once it is "
                                       "synced: run sync or close it first)"
                                     : "")}};
    }
    auto url = services.presign_get(key, ttl);
    if (!url.ok()) return json{{"ok", false}, {"error", url.status().ToString()}};
    return json{{"ok", true}, {"url", *url}, {"expires_in_s", ttl}};
  }

  json Handle(const json& request, control::Responder& out) {
    const std::string op = request.value("op", std::string());
    if (op == "status") return Status_();
    {
      std::lock_guard lock(mu);
      if (!ready) {
        return json{{"ok", false},
                    {"error", Where() + " is still being mounted (lease, daemon start); try "
                              "again once `bucketfs mount` has returned"}};
      }
    }
    if (op == "reload") return Reload(request);
    if (op == "share") return Share(request);
    if (op == "unmount") {
      const Duration handles = milliseconds(request.value("timeout_ms", int64_t{60000}));
      const Duration sync = milliseconds(request.value("sync_timeout_ms", int64_t{600000}));
      return Unmount(handles, sync, request.value("force", false), [&](const std::string& line) {
        Logger("mountd")->info("{}", line);
        out.Progress(json{{"message", line}});
      });
    }
    return json{{"ok", false}, {"error", "unknown request '" + op + "'"}};
  }
};

Coordinator::Coordinator(s3::ObjectClient& client, CoordinatorServices services,
                         CoordinatorOptions options)
    : state_(std::make_unique<State>(client, std::move(services), std::move(options))) {}

Coordinator::~Coordinator() = default;

int Coordinator::Run(const std::function<void(const std::string&)>& ready) {
  State& s = *state_;
  const auto& o = s.options;
  Status dir = control::EnsureRuntimeDir(o.runtime_dir);
  if (!dir.ok()) {
    ready(dir.ToString());
    return ExitCodeFor(dir);
  }
  s.daemon_socket = DaemonSocketPath(o.runtime_dir, o.mountpoint);
  s.startup_error_file = o.runtime_dir + "/" + MountHash(o.mountpoint) + ".startup-error";

  // The control socket first: a second coordinator for the same mountpoint fails here.
  auto server = control::ControlServer::Start(
      ControlSocketPath(o.runtime_dir, o.mountpoint),
      [&s](const nlohmann::json& request, control::Responder& out) {
        return s.Handle(request, out);
      });
  if (!server.ok()) {
    ready(server.status().code() == ErrorCode::kBusy
              ? o.mountpoint + " is already mounted by bucketfs (" + server.status().ToString() +
                    "); see `bucketfs status " + o.mountpoint + "`"
              : server.status().ToString());
    return ExitCodeFor(server.status());
  }
  s.server = std::move(*server);

  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGHUP, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  if (!o.read_only) {
    Status probe = ProbeConditionalWrites(s.client, s.clock, o.lease);
    if (!probe.ok()) {
      ready(probe.ToString());
      return ExitCodeFor(probe);
    }
    auto lease = std::make_unique<Lease>(s.client, s.clock, o.lease, o.holder);
    Status acquired = lease->Acquire(
        [&s](const std::string& line) {
          Logger("mountd")->info("{}", line);
          if (s.services.progress) s.services.progress(line);
        },
        [] { return (g_signals.load() & kStopSignal) != 0; });
    if (!acquired.ok()) {
      ready(acquired.ToString());
      return ExitCodeFor(acquired);
    }
    std::lock_guard lock(s.mu);
    s.lease = std::move(lease);
    s.lease_state = "held";
  }

  if (LooksLikeADeadMount(o.mountpoint)) {
    // A dead mount left by a crashed daemon (we hold the lease now, or it is a read-only
    // mount): detach it so that the mountpoint can be used again.
    s.DetachDeadMount();
  } else if (IsFuseMounted(o.mountpoint)) {
    if (s.lease) {
      Status released = s.lease->Release();
      (void)released;
    }
    ready(o.mountpoint + " already has a FUSE filesystem mounted on it (see /proc/mounts); "
          "unmount it first or choose another mountpoint");
    return kExitBusy;
  }
  Status started = s.StartDaemonGuarded();
  if (!started.ok()) {
    s.DetachDeadMount();
    std::string lease_note;
    if (s.lease && s.lease->held()) {
      if (s.services.spool_holds_files && s.services.spool_holds_files()) {
        // Files a previous mount here closed but did not upload: the daemon that failed
        // would have uploaded them first. Another pod must not mount the bucket (and change
        // those keys) before a mount here does, so the lease is left to expire.
        lease_note = "; the lease is kept until it expires (TTL), because the spool " +
                     o.spool_dir + " holds files a mount here must upload first";
      } else {
        Status released = s.lease->Release();
        (void)released;  // Logged by the lease; it expires on its own otherwise.
      }
    }
    // The message, not ToString(): a daemon's own error already starts with its cause.
    ready("cannot mount " + s.Where() + ": " + started.message() + lease_note);
    // The daemon's own status says what failed (credentials, bucket, …) when it has one.
    // Only the documented causes (2-7): 127 (exec failed) or a parser's 100+ say nothing.
    // A daemon that did not mount in time says nothing of the server either.
    if (s.daemon_exit_code > kExitFailure && s.daemon_exit_code <= kExitNoSpace) {
      return s.daemon_exit_code;
    }
    return started.code() == ErrorCode::kTimeout ? kExitFailure : ExitCodeFor(started);
  }
  s.PushLeaseToDaemon();  // Renewals may have happened while it started.
  {
    std::lock_guard lock(s.mu);
    s.ready = true;
  }
  ready("");

  std::thread unmounter;
  for (;;) {
    {
      std::unique_lock lock(s.mu);
      if (s.finished) break;
      s.changed.wait_for(lock, kTick);
      if (s.finished) break;
    }
    const unsigned signals = g_signals.exchange(0);
    if ((signals & kReloadSignal) != 0 && s.services.set_credentials) {
      // Keys from variables: a signal cannot carry new ones (`bucketfs reload` can).
      Logger("mountd")->warn("SIGHUP: this mount's credentials came from {}; nothing to re-read. "
                             "Run `bucketfs reload` where the new ones are set",
                             s.services.credentials->Describe());
    } else if ((signals & kReloadSignal) != 0) {
      json reply = s.Reload(json{{"op", "reload"}});
      if (!reply.value("ok", false)) {
        s.NoteError("SIGHUP reload: " + reply.value("error", std::string()));
      }
    }
    if ((signals & kStopSignal) != 0 && !unmounter.joinable()) {
      Logger("mountd")->info("SIGTERM/SIGINT: unmounting {}", s.Where());
      unmounter = std::thread([&s] {
        // An unmount already under way (from `bucketfs unmount`) is waited for; if it gives
        // up, this one goes on with force: the pod is going away.
        for (;;) {
          json reply = s.Unmount(s.options.signal_unmount_timeout, std::nullopt,
                                 true, [](const std::string& line) {
                                   Logger("mountd")->info("{}", line);
                                 });
          if (reply.value("error", std::string()) == "an unmount is already under way") {
            std::this_thread::sleep_for(std::chrono::milliseconds(500));
            continue;
          }
          if (!reply.value("ok", false)) s.NoteError(reply.value("error", std::string()));
          break;
        }
      });
    }
    s.TendLease();
    s.TendDaemon();
  }
  if (unmounter.joinable()) unmounter.join();
  // Let the `unmount` caller read its reply before the socket goes away.
  s.server->Stop();
  unlink(s.startup_error_file.c_str());
  std::lock_guard lock(s.mu);
  return s.exit_code;
}

}  // namespace bucketfs::mountd
