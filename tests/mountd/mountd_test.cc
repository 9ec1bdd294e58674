// The coordinator through real mounts: `bucketfs mount` / `unmount` / `status` / `reload` /
// `share` run as an operator runs them, against a bucket on the test's Ceph RGW, mounted
// through /dev/fuse. Two coordinators on this machine stand for two pods: each has its own
// holder identity, mountpoint, spool and runtime directory, and they share the bucket.
// What they wrote is checked with boto3, an independent client.
//
// Leases here last 6 s (renewed every 2 s) with a 3 s takeover margin, so that takeover
// tests take seconds. Waits are bounded polls, never timing assertions, except where the
// protocol itself promises a lower bound (a takeover never happens before TTL + margin).
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/exit_code.h"
#include "tests/support/eventually.h"
#include "tests/support/metrics_scrape.h"
#include "tests/support/mounted_bucket.h"
#include "tests/support/s3_test_env.h"

namespace bucketfs::testing {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr double kTtl = 6, kMargin = 3;

bool IsMountedAt(const std::string& dir) { return IsBucketfsMountedAt(dir); }

bool Alive(pid_t pid) { return pid > 0 && kill(pid, 0) == 0; }

// One pod: a coordinator with its own identity, mountpoint, spool and runtime directory.
class Pod {
 public:
  Pod(const S3Server& server, std::string bucket, std::string name)
      : server_(server), bucket_(std::move(bucket)), name_(std::move(name)) {
    static std::atomic<int> counter{0};
    base_ = "/tmp/bfs-md-" + std::to_string(getpid()) + "-" + std::to_string(counter++);
    fs::create_directories(dir());
    access_key_ = server_.access_key;
    secret_key_ = server_.secret_key;
  }
  ~Pod() {
    if (IsMountedAt(dir())) RunCommand(Cli("unmount " + dir() + " --timeout 2 --force"));
    // Whatever is left (a test that killed things): by PID, then the mount itself.
    for (pid_t pid : {coordinator_pid_, daemon_pid_}) {
      if (Alive(pid)) kill(pid, SIGKILL);
    }
    if (IsMountedAt(dir())) RunCommand("fusermount3 -u -z " + dir());
    std::error_code ec;
    fs::remove_all(base_, ec);
  }

  std::string dir() const { return base_ + "/mnt"; }
  std::string spool() const { return base_ + "/spool"; }
  std::string runtime() const { return base_ + "/run"; }
  std::string log() const {
    std::ifstream in(base_ + "/bucketfs.log");
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  void UseKeys(std::string access, std::string secret) {
    access_key_ = std::move(access);
    secret_key_ = std::move(secret);
  }

  // `bucketfs ARGS` with this pod's credentials in the environment.
  std::string Cli(const std::string& args) const {
    return fmt::format("env -u S3_BUCKET S3_ACCESS_KEY={} S3_SECRET_KEY={} {} {} 2>&1",
                       access_key_, secret_key_, BUCKETFS_BINARY, args);
  }

  // The path the commands name (dir() itself unless a test names it through a symlink).
  std::string named() const { return named_.empty() ? dir() : named_; }
  void NameThrough(std::string path) { named_ = std::move(path); }

  CommandResult Mount(const std::string& extra = "") {
    CommandResult r = RunCommand(Cli(fmt::format(
        "mount {} {} --endpoint {} --region {} --runtime-dir {} --spool-dir {} --holder-id {} "
        "--lease-ttl {} --lease-margin {} --log-file {}/bucketfs.log {}",
        bucket_, named(), server_.endpoint, server_.region, runtime(), spool(), name_, kTtl,
        kMargin, base_, extra)));
    if (r.exit_code == 0) RefreshPids();
    return r;
  }
  CommandResult Unmount(const std::string& extra = "") {
    return RunCommand(Cli(fmt::format("unmount {} --runtime-dir {} {}", named(), runtime(), extra)));
  }
  json Status() {
    CommandResult r =
        RunCommand(Cli(fmt::format("status {} --runtime-dir {} --json", named(), runtime())));
    // Exit 2 (answering, not healthy) still prints the whole status.
    if (r.exit_code != 0 && r.exit_code != 2) return json{{"cli_error", r.output}};
    json j = json::parse(r.output, nullptr, false);
    if (!j.is_discarded()) j["cli_exit_code"] = r.exit_code;
    return j.is_discarded() ? json{{"cli_error", r.output}} : j;
  }
  void RefreshPids() {
    json s = Status();
    coordinator_pid_ = s.value("coordinator_pid", -1);
    daemon_pid_ = s.value("daemon_pid", -1);
  }
  pid_t coordinator_pid() const { return coordinator_pid_; }
  pid_t daemon_pid() const { return daemon_pid_; }

 private:
  const S3Server& server_;
  const std::string bucket_;
  const std::string name_;
  std::string base_;
  std::string access_key_, secret_key_;
  std::string named_;
  pid_t coordinator_pid_ = -1, daemon_pid_ = -1;
};

class MountdTest : public S3IntegrationTest {
 protected:
  // Whether, within a minute, a daemon other than `first` serves `pod`'s mount (the
  // coordinator restarted it); the pod then knows the new daemon's pid.
  bool ServedByANewDaemon(Pod& pod, pid_t first) {
    const bool served = Eventually(
        [&] {
          json s = pod.Status();
          return s.value("daemon_pid", -1) > 0 && s.value("daemon_pid", -1) != first &&
                 s.contains("daemon") && s["daemon"].value("mounted", false);
        },
        std::chrono::seconds(60));
    if (served) pod.RefreshPids();
    return served;
  }

  // Someone else takes the lease (as a pod that wrongly took over would).
  void StealLease() {
    Boto3("s3.put_object(Bucket=bucket, Key='.bucketfs/lease', Body=b'{\"holder\":\"thief\","
          "\"host\":\"elsewhere\",\"state\":\"held\",\"epoch\":9,\"ttl_ms\":6000,"
          "\"renew_seq\":0,\"nonce\":\"x\",\"mountpoint\":\"/m\",\"acquired_at\":\"\","
          "\"renewed_at\":\"\"}')\n");
  }

  // A process that holds `path` open for writing after writing `line` to it; returns once
  // the line is there.
  pid_t HoldOpenForWriting(const std::string& path, const std::string& line) {
    const pid_t holder = fork();
    if (holder == 0) {
      execl("/bin/bash", "bash", "-c",
            ("exec 3>" + path + "; echo '" + line + "' >&3; exec sleep 120").c_str(),
            static_cast<char*>(nullptr));
      _exit(127);
    }
    EXPECT_TRUE(Eventually([&] { return fs::exists(path) && fs::file_size(path) > 0; }));
    return holder;
  }

  json LeaseObject() {
    const std::string out = Boto3(
        "import json\n"
        "print(s3.get_object(Bucket=bucket, Key='.bucketfs/lease')['Body'].read().decode())\n");
    return json::parse(out, nullptr, false);
  }
  std::string Get(const std::string& key) {
    return Boto3(fmt::format(
        "import sys\nsys.stdout.write(s3.get_object(Bucket=bucket, Key='{}')['Body'].read()"
        ".decode())\n",
        key));
  }
  bool Exists(const std::string& key) {
    return Boto3(fmt::format("try:\n  s3.head_object(Bucket=bucket, Key='{}')\n  print('yes')\n"
                             "except Exception:\n  print('no')\n",
                             key)) == "yes\n";
  }
  static void WriteFile(const std::string& path, const std::string& data) {
    const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(fd, 0) << path << ": " << strerror(errno);
    ASSERT_EQ(write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
    ASSERT_EQ(close(fd), 0) << strerror(errno);
  }
};

TEST_F(MountdTest, SecondPodIsRefusedWhileTheFirstHoldsTheLeaseAndMountsAfterItsUnmount) {
  Pod a(*server_, bucket_, "pod-a"), b(*server_, bucket_, "pod-b");
  CommandResult ra = a.Mount();
  ASSERT_EQ(ra.exit_code, 0) << ra.output << a.log();
  ASSERT_TRUE(IsMountedAt(a.dir()));
  json lease = LeaseObject();
  EXPECT_EQ(lease.value("holder", ""), "pod-a") << lease.dump();
  EXPECT_EQ(lease.value("state", ""), "held") << lease.dump();
  // The lease object is the bucket's, not the mount's: it never shows.
  EXPECT_FALSE(fs::exists(a.dir() + "/.bucketfs"));

  // B watches the lease, sees A renew it, and gives up naming A.
  CommandResult rb = b.Mount();
  EXPECT_EQ(rb.exit_code, kExitBusy) << rb.output;
  EXPECT_NE(rb.output.find("pod-a"), std::string::npos) << rb.output;
  EXPECT_NE(rb.output.find(bucket_), std::string::npos) << rb.output;
  EXPECT_FALSE(IsMountedAt(b.dir()));
  // And with --no-wait at once.
  CommandResult rb2 = b.Mount("--no-wait");
  EXPECT_EQ(rb2.exit_code, kExitBusy) << rb2.output;
  EXPECT_NE(rb2.output.find("pod-a"), std::string::npos) << rb2.output;

  WriteFile(a.dir() + "/from-a.txt", "written by pod a\n");
  CommandResult ua = a.Unmount();
  ASSERT_EQ(ua.exit_code, 0) << ua.output << a.log();
  EXPECT_FALSE(IsMountedAt(a.dir()));
  // Unmount returned 0: the file is in S3 already, no waiting.
  EXPECT_EQ(Get("from-a.txt"), "written by pod a\n");
  EXPECT_EQ(LeaseObject().value("state", ""), "released");

  rb = b.Mount();
  ASSERT_EQ(rb.exit_code, 0) << rb.output << b.log();
  EXPECT_EQ(LeaseObject().value("holder", ""), "pod-b");
  EXPECT_EQ(ReadFile(b.dir() + "/from-a.txt"), "written by pod a\n");
  EXPECT_EQ(b.Unmount().exit_code, 0);
}

TEST_F(MountdTest, AKilledHoldersLeaseIsTakenOverOnlyAfterTtlPlusMargin) {
  Pod a(*server_, bucket_, "pod-a"), b(*server_, bucket_, "pod-b");
  ASSERT_EQ(a.Mount().exit_code, 0) << a.log();
  ASSERT_TRUE(Alive(a.coordinator_pid()));
  WriteFile(a.dir() + "/closed.txt", "closed before the crash\n");
  // A synced file: the pod dies without releasing anything.
  ASSERT_TRUE(Eventually([&] { return Exists("closed.txt"); }, std::chrono::seconds(30)));
  kill(a.coordinator_pid(), SIGKILL);
  ASSERT_TRUE(Eventually([&] { return !Alive(a.coordinator_pid()); }));

  const auto start = std::chrono::steady_clock::now();
  CommandResult rb = b.Mount();
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_EQ(rb.exit_code, 0) << rb.output << b.log();
  EXPECT_GE(waited, kTtl + kMargin) << "took over an abandoned lease too early";
  // The person waiting saw why (the log is a file they may not know of).
  EXPECT_NE(rb.output.find("pod-a"), std::string::npos) << rb.output;
  EXPECT_NE(rb.output.find("waiting until"), std::string::npos) << rb.output;
  json lease = LeaseObject();
  EXPECT_EQ(lease.value("holder", ""), "pod-b");
  EXPECT_EQ(lease.value("epoch", 0), 2) << lease.dump();
  EXPECT_EQ(ReadFile(b.dir() + "/closed.txt"), "closed before the crash\n");
  EXPECT_EQ(b.Unmount().exit_code, 0);
}

// Ctrl-C on a `bucketfs mount` waiting for an abandoned lease: the wait ends there, and the
// coordinator it started does not take the lease and mount later behind the person's back.
TEST_F(MountdTest, AnInterruptedMountWaitingForTheLeaseNeverMountsLater) {
  Pod a(*server_, bucket_, "pod-a"), b(*server_, bucket_, "pod-b");
  ASSERT_EQ(a.Mount().exit_code, 0) << a.log();
  kill(a.coordinator_pid(), SIGKILL);  // Its lease stays "held" until taken over.
  ASSERT_TRUE(Eventually([&] { return !Alive(a.coordinator_pid()); }));
  ASSERT_TRUE(Eventually([&] { return !IsMountedAt(a.dir()); }, std::chrono::seconds(30)));

  CommandResult rb = RunCommand("timeout -s INT 2 " + b.Cli(fmt::format(
      "mount {} {} --endpoint {} --region {} --runtime-dir {} --spool-dir {} --holder-id pod-b "
      "--lease-ttl {} --lease-margin {} --log-file {}/../bucketfs.log",
      bucket_, b.dir(), server_->endpoint, server_->region, b.runtime(), b.spool(), kTtl,
      kMargin, b.spool())));
  EXPECT_NE(rb.exit_code, 0) << rb.output;
  EXPECT_NE(rb.output.find("waiting until"), std::string::npos) << rb.output;
  // Past the moment the wait would have taken the lease over.
  std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int>((kTtl + kMargin) * 1000)));
  EXPECT_FALSE(IsMountedAt(b.dir())) << b.log();
  EXPECT_EQ(LeaseObject().value("holder", ""), "pod-a") << b.log();
}

// Coordinator and daemon both killed: the mount is dead and nothing answers for it. The
// unmount says how to detach it instead of asking whether anything is mounted.
TEST_F(MountdTest, UnmountOfAMountWhoseProcessesWereKilledSaysHowToDetachIt) {
  Pod a(*server_, bucket_, "pod-a");
  ASSERT_EQ(a.Mount().exit_code, 0) << a.log();
  // Stopped first, so that it neither restarts the daemon nor has it unmount on its death.
  ASSERT_EQ(kill(a.coordinator_pid(), SIGSTOP), 0);
  ASSERT_EQ(kill(a.daemon_pid(), SIGKILL), 0);
  ASSERT_EQ(kill(a.coordinator_pid(), SIGKILL), 0);
  ASSERT_TRUE(Eventually([&] { return !Alive(a.coordinator_pid()) && !Alive(a.daemon_pid()); }));
  ASSERT_TRUE(IsMountedAt(a.dir()));
  CommandResult r = a.Unmount();
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("fusermount3 -u -z " + a.dir()), std::string::npos) << r.output;
  ASSERT_EQ(RunCommand("fusermount3 -u -z " + a.dir()).exit_code, 0);
  EXPECT_FALSE(IsMountedAt(a.dir()));
}

TEST_F(MountdTest, ALeaseTakenAwayFencesWritesWithErofsAndKeepsUnsyncedDataInTheSpool) {
  Pod a(*server_, bucket_, "pod-a");
  ASSERT_EQ(a.Mount().exit_code, 0) << a.log();
  const std::string path = a.dir() + "/unsynced.bin";
  const std::string before = "written while the lease was held\n";
  // The writer is a process of its own that starts nothing: every close of a descriptor of a
  // file being written commits it (FUSE FLUSH), and that includes the close-on-exec in a
  // child forked by whoever holds it, as the boto3 calls below would be.
  const std::string report = a.dir() + ".writer";
  const pid_t writer = fork();
  if (writer == 0) {
    const std::string script = fmt::format(R"PY(
import errno, os, time
fd = os.open('{0}', os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, b'{1}')
open('{2}.ready', 'w').close()
out = []
deadline = time.time() + 30
while time.time() < deadline:
    try:
        os.write(fd, b'x')
    except OSError as e:
        out.append('write ' + errno.errorcode[e.errno])
        break
    time.sleep(0.05)
try:
    os.close(fd)
    out.append('close ok')
except OSError as e:
    out.append('close ' + errno.errorcode[e.errno])
open('{2}', 'w').write(' '.join(out))
)PY",
                                           path, "written while the lease was held\\n", report);
    execl("/usr/bin/python3", "python3", "-c", script.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  ASSERT_TRUE(Eventually([&] { return fs::exists(report + ".ready"); }));

  // Someone else takes the lease (as a pod that wrongly took over would).
  StealLease();
  // Within one renew period (2 s) plus slack, writes fail with EROFS, and so does close.
  ASSERT_TRUE(Eventually([&] { return fs::exists(report); },
                         std::chrono::seconds(static_cast<int>(kTtl / 3) + 5)))
      << a.log();
  waitpid(writer, nullptr, 0);
  EXPECT_EQ(ReadFile(report), "write EROFS close EROFS");

  json status = a.Status();
  EXPECT_EQ(status["lease"].value("state", ""), "lost") << status.dump(2);
  EXPECT_EQ(status.value("cli_exit_code", -1), 2) << "a fenced mount is not healthy";
  EXPECT_TRUE(status["daemon"].value("fenced", false)) << status.dump(2);
  // Nothing reached S3, and the data is still in the spool, whole.
  EXPECT_FALSE(Exists("unsynced.bin")) << a.log();
  auto spooled = [&] {
    std::string found;
    for (const auto& e : fs::recursive_directory_iterator(a.spool())) {
      if (e.path().extension() == ".data") {
        std::ifstream in(e.path(), std::ios::binary);
        std::stringstream ss;
        ss << in.rdbuf();
        if (ss.str().find(before) != std::string::npos) found = e.path();
      }
    }
    return found;
  };
  EXPECT_FALSE(spooled().empty()) << "the unsynced bytes are not in the spool " << a.spool();
  // A forced unmount leaves it there, and says so.
  CommandResult u = a.Unmount("--timeout 1 --sync-timeout 5 --force");
  EXPECT_FALSE(IsMountedAt(a.dir()));
  EXPECT_FALSE(spooled().empty()) << u.output;
  // The thief's lease was not touched.
  EXPECT_EQ(LeaseObject().value("holder", ""), "thief");
}

// The lease is lost, then the daemon dies before the last renewal's deadline: the daemon
// started in its place must be fenced too (the lost lease's deadline lies ahead still).
TEST_F(MountdTest, ADaemonRestartedAfterTheLeaseWasLostStaysFenced) {
  Pod a(*server_, bucket_, "pod-a");
  ASSERT_EQ(a.Mount().exit_code, 0) << a.log();
  const pid_t first = a.daemon_pid();
  StealLease();
  ASSERT_TRUE(Eventually([&] { return a.Status()["lease"].value("state", "") == "lost"; },
                         std::chrono::seconds(static_cast<int>(kTtl / 3) + 5)))
      << a.log();
  kill(first, SIGKILL);
  ASSERT_TRUE(ServedByANewDaemon(a, first)) << a.log();
  // For the next 3 s (the lost lease's deadline was at most 4 s after the loss was seen, and
  // the coordinator hands the new daemon its lease state once it serves), no file can be
  // made.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  int attempts = 0;
  while (std::chrono::steady_clock::now() < until) {
    ++attempts;
    const int fd = open((a.dir() + "/after-loss.txt").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      const ssize_t wrote = write(fd, "x", 1);
      const int write_errno = wrote < 0 ? errno : 0;
      const int closed = close(fd);
      ADD_FAILURE() << "attempt " << attempts << ": the restarted daemon accepted a file while "
                    << "the lease is lost (write " << (wrote < 0 ? strerror(write_errno) : "ok")
                    << ", close " << (closed < 0 ? strerror(errno) : "ok") << ")\n" << a.log();
      break;
    }
    ASSERT_EQ(errno, EROFS) << strerror(errno);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(Eventually([&] { return a.Status()["daemon"].value("fenced", false); }))
      << a.Status().dump(2);
  CommandResult u = a.Unmount("--timeout 1 --sync-timeout 5 --force");
  EXPECT_FALSE(IsMountedAt(a.dir())) << u.output << a.log();
  EXPECT_FALSE(Exists("after-loss.txt"));
  EXPECT_EQ(LeaseObject().value("holder", ""), "thief");
}

// A daemon that does not answer (stopped here) may have files half-written: the unmount must
// not take its silence for "no open files" and upload them; it gives up and says why.
TEST_F(MountdTest, UnmountOfADaemonThatDoesNotSayWhatIsOpenGivesUpAndUploadsNothing) {
  Pod a(*server_, bucket_, "pod-a");
  ASSERT_EQ(a.Mount().exit_code, 0) << a.log();
  const std::string held = a.dir() + "/half-written.txt";
  const pid_t holder = HoldOpenForWriting(held, "the first half");
  ASSERT_EQ(kill(a.daemon_pid(), SIGSTOP), 0);
  CommandResult u = a.Unmount("--timeout 1 --sync-timeout 1");
  ASSERT_EQ(kill(a.daemon_pid(), SIGCONT), 0);
  EXPECT_NE(u.exit_code, 0) << u.output;
  EXPECT_NE(u.output.find("did not say whether files are open"), std::string::npos) << u.output;
  EXPECT_NE(u.output.find("Nothing was unmounted"), std::string::npos) << u.output;
  EXPECT_TRUE(IsMountedAt(a.dir()));
  EXPECT_FALSE(Exists("half-written.txt")) << "a file still being written was uploaded";

  kill(holder, SIGKILL);
  waitpid(holder, nullptr, 0);
  u = a.Unmount("--timeout 30");
  ASSERT_EQ(u.exit_code, 0) << u.output << a.log();
  EXPECT_EQ(Get("half-written.txt"), "the first half\n");
}

// Everything synced, but a shell's working directory keeps the mount busy: --force detaches
// it lazily. Nothing is left to upload, so that is a clean unmount: the lease is released,
// and the detached daemon (fenced) changes nothing in the bucket any more.
TEST_F(MountdTest, AForcedUnmountBusyOnlyWithAWorkingDirectoryIsCleanAndReleasesTheLease) {
  Pod a(*server_, bucket_, "pod-a");
  ASSERT_EQ(a.Mount().exit_code, 0) << a.log();
  WriteFile(a.dir() + "/synced.txt", "all in the bucket\n");
  ASSERT_TRUE(fs::create_directory(a.dir() + "/sub"));
  const pid_t holder = fork();
  if (holder == 0) {
    if (chdir((a.dir() + "/sub").c_str()) != 0) _exit(126);
    execl("/bin/sleep", "sleep", "120", static_cast<char*>(nullptr));
    _exit(127);
  }
  ASSERT_TRUE(Eventually([&] {
    char link[64];
    std::snprintf(link, sizeof link, "/proc/%d/cwd", holder);
    std::error_code ec;
    return fs::read_symlink(link, ec).string().find("/sub") != std::string::npos;
  }));
  CommandResult u = a.Unmount("--timeout 2 --force");
  kill(holder, SIGKILL);
  waitpid(holder, nullptr, 0);
  EXPECT_EQ(u.exit_code, 0) << u.output << a.log();
  EXPECT_EQ(u.output.find("not yet uploaded"), std::string::npos) << u.output;
  EXPECT_EQ(LeaseObject().value("state", ""), "released") << u.output << a.log();
  EXPECT_FALSE(IsMountedAt(a.dir()));
  EXPECT_EQ(Get("synced.txt"), "all in the bucket\n");
}

// A file mapped in memory keeps the mount busy after its descriptor is closed (np.memmap,
// torch.load(mmap=True)): the unmount names the process that maps it.
TEST_F(MountdTest, UnmountNamesAProcessThatHasAFileMappedInMemory) {
  Pod a(*server_, bucket_, "pod-a");
  ASSERT_EQ(a.Mount().exit_code, 0) << a.log();
  WriteFile(a.dir() + "/weights.bin", std::string(8192, 'w'));
  const std::string ready = a.dir() + ".mapped";
  const pid_t mapper = fork();
  if (mapper == 0) {
    const std::string script = fmt::format(R"PY(
import ctypes, os, time
# libc's mmap, not Python's (which keeps a duplicate of the descriptor open).
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
fd = os.open('{0}/weights.bin', os.O_RDONLY)
addr = libc.mmap(None, 8192, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
assert addr not in (None, ctypes.c_void_p(-1).value), 'mmap failed'
os.close(fd)
open('{1}', 'w').close()
time.sleep(120)
)PY",
                                           a.dir(), ready);
    execl("/usr/bin/python3", "python3", "-c", script.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  ASSERT_TRUE(Eventually([&] { return fs::exists(ready); }));
  CommandResult u = a.Unmount("--timeout 2");
  kill(mapper, SIGKILL);
  waitpid(mapper, nullptr, 0);
  EXPECT_NE(u.exit_code, 0) << u.output;
  EXPECT_NE(u.output.find("pid " + std::to_string(mapper) + " (python3) has weights.bin mapped "
                          "in memory"),
            std::string::npos)
      << u.output;
  ASSERT_EQ(a.Unmount("--timeout 30").exit_code, 0) << a.log();
}

TEST_F(MountdTest, UnmountWaitsForAnOpenFileNamesItsHolderAndTimesOutLeavingTheMountIntact) {
  Pod a(*server_, bucket_, "pod-a");
  ASSERT_EQ(a.Mount().exit_code, 0) << a.log();
  const std::string held = a.dir() + "/held.txt";
  const pid_t holder = HoldOpenForWriting(held, "written by the holder");

  CommandResult u = a.Unmount("--timeout 2");
  EXPECT_NE(u.exit_code, 0) << u.output;
  EXPECT_NE(u.output.find("pid " + std::to_string(holder)), std::string::npos) << u.output;
  EXPECT_NE(u.output.find("held.txt"), std::string::npos) << u.output;
  EXPECT_NE(u.output.find("Nothing was unmounted"), std::string::npos) << u.output;
  // Intact: still mounted, new files open again.
  EXPECT_TRUE(IsMountedAt(a.dir()));
  WriteFile(a.dir() + "/after-timeout.txt", "still works\n");

  kill(holder, SIGKILL);
  waitpid(holder, nullptr, 0);
  u = a.Unmount("--timeout 30");
  ASSERT_EQ(u.exit_code, 0) << u.output << a.log();
  EXPECT_FALSE(IsMountedAt(a.dir()));
  EXPECT_EQ(Get("held.txt"), "written by the holder\n");
  EXPECT_EQ(Get("after-timeout.txt"), "still works\n");
}

TEST_F(MountdTest, UnmountSyncsEveryWriterBeforeItReturns) {
  Pod a(*server_, bucket_, "pod-a");
  ASSERT_EQ(a.Mount().exit_code, 0) << a.log();
  std::string big(24 << 20, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 7919) >> 3);
  WriteFile(a.dir() + "/big.bin", big);
  for (int i = 0; i < 20; ++i) {
    WriteFile(a.dir() + fmt::format("/small-{}.txt", i), fmt::format("small {}\n", i));
  }
  CommandResult u = a.Unmount();
  ASSERT_EQ(u.exit_code, 0) << u.output << a.log();
  // Checked at once: unmount's 0 promises it.
  const std::string out = Boto3(
      "import hashlib\n"
      "b = s3.get_object(Bucket=bucket, Key='big.bin')['Body'].read()\n"
      "print(len(b), hashlib.sha256(b).hexdigest())\n"
      "print(sum(1 for o in s3.list_objects_v2(Bucket=bucket, Prefix='small-')['Contents']))\n");
  std::string expected_hash = Boto3(fmt::format(
      "import hashlib\nb = bytes(((i * 7919) >> 3) & 0xff for i in range({}))\n"
      "print(len(b), hashlib.sha256(b).hexdigest())\n",
      big.size()));
  EXPECT_EQ(out, expected_hash + "20\n");
}

TEST_F(MountdTest, AKilledDaemonIsRestartedAndNoClosedDataIsLost) {
  Pod a(*server_, bucket_, "pod-a");
  ASSERT_EQ(a.Mount().exit_code, 0) << a.log();
  const pid_t first = a.daemon_pid();
  ASSERT_TRUE(Alive(first));
  WriteFile(a.dir() + "/closed-before-kill.txt", "closed, then the daemon died\n");
  // The kernel now caches the root's attributes: a stat of the dead mount is answered from
  // them, so the coordinator must not take a stat's success for a live mount (it mounted
  // the new daemon on top of the dead one, which stayed after the unmount).
  struct stat root {};
  ASSERT_EQ(stat(a.dir().c_str(), &root), 0);
  kill(first, SIGKILL);
  // The coordinator detaches the dead mount and mounts again with a new daemon, which
  // uploads the closed file from the spool before serving.
  ASSERT_TRUE(ServedByANewDaemon(a, first)) << a.log();
  EXPECT_EQ(a.Status().value("daemon_restarts", 0), 1);
  EXPECT_EQ(ReadFile(a.dir() + "/closed-before-kill.txt"), "closed, then the daemon died\n");
  EXPECT_EQ(Get("closed-before-kill.txt"), "closed, then the daemon died\n");
  WriteFile(a.dir() + "/after-restart.txt", "the new daemon writes\n");
  ASSERT_EQ(a.Unmount().exit_code, 0) << a.log();
  EXPECT_EQ(Get("after-restart.txt"), "the new daemon writes\n");
  EXPECT_FALSE(IsMountedAt(a.dir())) << "a mount is left under the unmounted one\n" << a.log();
}

// The restarted daemon cannot start (its credentials file is gone; the coordinator keeps
// the keys it read), and the restarts back off up to 30 s. The lease is renewed all along:
// a gap of TTL + margin would let another pod take the bucket while this one's spool still
// holds files to upload.
// /mnt-workspace may be a symlink to the real directory: the kernel records the mount under
// the target, and unmount must find it there (it used to skip fusermount3, kill the daemon
// after a minute, say data was left, and keep the lease).
TEST_F(MountdTest, AMountpointNamedThroughASymlinkMountsAndUnmountsCleanly) {
  Pod a(*server_, bucket_, "pod-a");
  const std::string link = a.dir() + "-link";
  fs::create_directory_symlink(a.dir(), link);
  a.NameThrough(link);
  ASSERT_EQ(a.Mount().exit_code, 0) << a.log();
  ASSERT_TRUE(IsMountedAt(a.dir()));
  WriteFile(link + "/through-link.txt", "written through the symlink\n");
  EXPECT_EQ(a.Status().value("mountpoint", ""), a.dir());
  const auto start = std::chrono::steady_clock::now();
  CommandResult u = a.Unmount();
  EXPECT_EQ(u.exit_code, 0) << u.output << a.log();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30)) << u.output;
  EXPECT_FALSE(IsMountedAt(a.dir())) << u.output;
  EXPECT_EQ(Get("through-link.txt"), "written through the symlink\n");
  EXPECT_EQ(LeaseObject().value("state", ""), "released");
  fs::remove(link);
}

TEST_F(MountdTest, TheLeaseIsRenewedWhileFailedDaemonRestartsBackOff) {
  Pod a(*server_, bucket_, "pod-a");
  const std::string creds = a.dir() + "-credentials";
  WriteFile(creds, fmt::format("S3_ACCESS_KEY={}\nS3_SECRET_KEY={}\n", server_->access_key,
                               server_->secret_key));
  ASSERT_EQ(a.Mount("--credentials-file " + creds).exit_code, 0) << a.log();
  const pid_t first = a.daemon_pid();
  ASSERT_TRUE(Alive(first));
  fs::remove(creds);
  kill(first, SIGKILL);
  // Long enough for the backoff to pass 16 s; the renewals come every TTL/3 = 2 s.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(40);
  uint64_t last_seq = LeaseObject().value("renew_seq", uint64_t{0});
  auto last_change = std::chrono::steady_clock::now();
  double longest_gap = 0;
  while (std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    const json lease = LeaseObject();
    const auto now = std::chrono::steady_clock::now();
    ASSERT_EQ(lease.value("holder", ""), "pod-a") << lease.dump() << a.log();
    const uint64_t seq = lease.value("renew_seq", uint64_t{0});
    if (seq != last_seq) {
      last_seq = seq;
      last_change = now;
    }
    longest_gap = std::max(longest_gap, std::chrono::duration<double>(now - last_change).count());
  }
  EXPECT_LT(longest_gap, kTtl) << "the lease went unrenewed for " << longest_gap << " s\n"
                               << a.log();
  EXPECT_GE(a.Status().value("daemon_restarts", 0), 3) << a.Status().dump(2);
  CommandResult u = a.Unmount("--timeout 1 --force");
  EXPECT_FALSE(IsMountedAt(a.dir())) << u.output << a.log();
  EXPECT_TRUE(Eventually([&] { return !Alive(a.coordinator_pid()); })) << u.output;
}

TEST_F(MountdTest, ACoordinatorStalledPastTheLeaseDeadlineFencesUntilItRenewsThenWritesAgain) {
  Pod a(*server_, bucket_, "pod-a");
  ASSERT_EQ(a.Mount().exit_code, 0) << a.log();
  WriteFile(a.dir() + "/before.txt", "written before the stall\n");
  // The coordinator stalls (CPU starvation, a debugger, a slow S3) past the lease's validity:
  // the daemon's fence closes on its own, since another pod may soon take the bucket over.
  ASSERT_EQ(kill(a.coordinator_pid(), SIGSTOP), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int>(kTtl * 1000) + 1000));
  const int fd = open((a.dir() + "/during.txt").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  const int create_errno = fd < 0 ? errno : 0;
  if (fd >= 0) close(fd);
  ASSERT_EQ(kill(a.coordinator_pid(), SIGCONT), 0);
  EXPECT_EQ(create_errno, EROFS) << "no write while the lease may be someone else's";

  // Nobody took it: the coordinator's next renewal (If-Match of its own record) succeeds,
  // and the mount writes again instead of staying read-only while holding the lease.
  ASSERT_TRUE(Eventually(
      [&] {
        json s = a.Status();
        return s.contains("lease") && s["lease"].value("state", "") == "held" &&
               s.contains("daemon") && !s["daemon"].value("fenced", true);
      },
      std::chrono::seconds(static_cast<int>(kTtl) + 10)))
      << a.Status().dump() << "\n" << a.log();
  WriteFile(a.dir() + "/after.txt", "written after the renewal\n");
  ASSERT_EQ(a.Unmount().exit_code, 0) << a.log();
  EXPECT_EQ(Get("after.txt"), "written after the renewal\n");
  EXPECT_EQ(Get("before.txt"), "written before the stall\n");
}

TEST_F(MountdTest, AMountThatFailsToStartKeepsTheLeaseWhileItsSpoolHoldsFilesToUpload) {
  Pod a(*server_, bucket_, "pod-a");
  // What an earlier mount here left: the journal record of a file closed, not yet uploaded.
  const std::filesystem::path files = std::filesystem::path(a.spool()) / bucket_ / "files";
  std::filesystem::create_directories(files);
  std::ofstream(files / "left-behind.json") << "{}";
  // The daemon fails after the lease is taken: its disk cache cannot be made (under a file).
  const std::string not_a_dir = a.spool() + "/../not-a-dir";
  std::ofstream(not_a_dir) << "a file\n";
  CommandResult r = a.Mount("--cache-dir " + not_a_dir + "/cache");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("not-a-dir"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("the lease is kept until it expires"), std::string::npos) << r.output;
  // Released, another pod could mount and change those keys before they are uploaded.
  EXPECT_EQ(LeaseObject().value("state", ""), "held") << LeaseObject().dump();
}

TEST_F(MountdTest, AnInvalidOptionIsRefusedBeforeTheBucketIsTouched) {
  Pod a(*server_, bucket_, "pod-a");
  struct Case {
    std::string options, says;
  };
  for (const Case& c : {Case{"--part-size 1M", "--part-size must be between 5M and 5G"},
                        Case{"--block-size 0", "--block-size must be more than 0"},
                        Case{"--max-memory 1X", "--max-memory: unknown size unit in '1X'"},
                        Case{"--file-mode 0999", "--file-mode: '0999' is not an octal mode"},
                        Case{"--log-level INFO", "--log-level: unknown level 'INFO'"},
                        Case{"--drain-timeout -1", "--drain-timeout must be 0 or more seconds"}}) {
    CommandResult r = a.Mount(c.options);
    EXPECT_EQ(r.exit_code, kExitUsage) << c.options << ": " << r.output;
    EXPECT_NE(r.output.find(c.says), std::string::npos) << c.options << ": " << r.output;
    EXPECT_EQ(r.output.find("signal"), std::string::npos) << c.options << ": " << r.output;
  }
  // Refused before the probe and the lease: nothing was written to the bucket.
  EXPECT_FALSE(Exists(".bucketfs/lease"));
  EXPECT_FALSE(IsMountedAt(a.dir()));
}

// A script or an init container tells "fix the configuration" from "try again later" by
// the exit status alone (common/exit_code.h); the message still says what to do.
TEST_F(MountdTest, EachKindOfMountFailureHasItsOwnExitStatus) {
  Pod a(*server_, bucket_, "pod-a");
  struct Case {
    std::string what, args;
    int exit_code;
    std::string says;
  };
  const std::string common = fmt::format("--runtime-dir {} --spool-dir {} --log-file {}/../log",
                                         a.runtime(), a.spool(), a.spool());
  const std::string here = fmt::format("--endpoint {} --region {}", server_->endpoint,
                                       server_->region);
  const std::vector<Case> cases = {
      {"no such bucket", fmt::format("nobucket-{} {} {} {}", getpid(), a.dir(), here, common),
       kExitNoBucket, "NoSuchBucket"},
      {"no such bucket, read-only",
       fmt::format("nobucket-{} {} {} {} --read-only", getpid(), a.dir(), here, common),
       kExitNoBucket, "NoSuchBucket"},
      {"nothing listening", fmt::format("{} {} --endpoint http://127.0.0.1:1 --region {} {}",
                                        bucket_, a.dir(), server_->region, common),
       kExitUnreachable, "check that the S3 endpoint is right"},
      {"no mountpoint", fmt::format("{} {}/absent {} {}", bucket_, a.dir(), here, common),
       kExitUsage, "mkdir -p"},
  };
  for (const Case& c : cases) {
    CommandResult r = RunCommand(a.Cli("mount " + c.args));
    EXPECT_EQ(r.exit_code, c.exit_code) << c.what << ": " << r.output;
    EXPECT_NE(r.output.find(c.says), std::string::npos) << c.what << ": " << r.output;
    EXPECT_FALSE(IsMountedAt(a.dir())) << c.what;
  }
  // A wrong secret, for the writable mount (refused by the coordinator's probe) and the
  // read-only one (refused by the daemon, whose status the coordinator passes on).
  a.UseKeys(server_->access_key, "not-the-secret");
  for (const std::string extra : {"", "--read-only"}) {
    CommandResult r = a.Mount(extra);
    EXPECT_EQ(r.exit_code, kExitCredentials) << extra << ": " << r.output;
    EXPECT_NE(r.output.find("S3_SECRET_KEY"), std::string::npos) << extra << ": " << r.output;
    EXPECT_EQ(r.output.find("Internal"), std::string::npos) << extra << ": " << r.output;
    EXPECT_FALSE(IsMountedAt(a.dir())) << extra;
  }
}

TEST_F(MountdTest, RelativePathsMeanWhatTheyMeantWhereTheMountWasRun) {
  Pod a(*server_, bucket_, "pod-a");
  const std::string cwd = a.spool() + "/../cwd";
  fs::create_directories(cwd);
  const std::string unique = "bfs-rel-" + std::to_string(getpid());
  // In the background the coordinator and daemon run in /: before, these landed at
  // /<unique>.log and /<unique>-spool.
  CommandResult r = RunCommand(
      "cd " + cwd + " && " +
      a.Cli(fmt::format("mount {} {} --endpoint {} --region {} --runtime-dir {} --holder-id "
                        "pod-a --lease-ttl {} --lease-margin {} --spool-dir {}-spool "
                        "--log-file {}.log",
                        bucket_, a.dir(), server_->endpoint, server_->region, a.runtime(), kTtl,
                        kMargin, unique, unique)));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  a.RefreshPids();
  WriteFile(a.dir() + "/relative.txt", "spooled where asked\n");
  ASSERT_EQ(a.Unmount().exit_code, 0);
  EXPECT_EQ(Get("relative.txt"), "spooled where asked\n");
  EXPECT_TRUE(fs::is_directory(cwd + "/" + unique + "-spool/" + bucket_));
  EXPECT_GT(fs::file_size(cwd + "/" + unique + ".log"), 0u);
  EXPECT_FALSE(fs::exists("/" + unique + "-spool"));
  EXPECT_FALSE(fs::exists("/" + unique + ".log"));
}

TEST_F(MountdTest, AnUnmountFromOutsideEndsTheCoordinatorAndReleasesTheLease) {
  Pod a(*server_, bucket_, "pod-a");
  ASSERT_EQ(a.Mount().exit_code, 0) << a.log();
  WriteFile(a.dir() + "/closed.txt", "closed, then umount\n");
  // As `umount` or a service manager would: the daemon uploads, exits 0, and the
  // coordinator takes that as the end of the mount, not as a crash to recover from.
  CommandResult r = RunCommand("fusermount3 -u " + a.dir());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(Eventually([&] { return !Alive(a.coordinator_pid()); }, std::chrono::seconds(30)))
      << a.log();
  EXPECT_FALSE(IsMountedAt(a.dir()));
  EXPECT_EQ(Get("closed.txt"), "closed, then umount\n");
  EXPECT_EQ(LeaseObject().value("state", ""), "released") << a.log();
}

TEST_F(MountdTest, SigtermToTheCoordinatorDrainsSyncsReleasesAndUnmounts) {
  Pod a(*server_, bucket_, "pod-a");
  ASSERT_EQ(a.Mount().exit_code, 0) << a.log();
  std::string data(6 << 20, 'q');
  WriteFile(a.dir() + "/on-sigterm.bin", data);
  // A pod's termination: SIGTERM to the coordinator, nothing else.
  ASSERT_EQ(kill(a.coordinator_pid(), SIGTERM), 0);
  ASSERT_TRUE(Eventually([&] { return !Alive(a.coordinator_pid()); }, std::chrono::seconds(60)))
      << a.log();
  EXPECT_FALSE(IsMountedAt(a.dir()));
  EXPECT_FALSE(Alive(a.daemon_pid()));
  EXPECT_EQ(Boto3("print(s3.head_object(Bucket=bucket, Key='on-sigterm.bin')['ContentLength'])\n"),
            std::to_string(data.size()) + "\n");
  EXPECT_EQ(LeaseObject().value("state", ""), "released") << a.log();
}

TEST_F(MountdTest, AReadOnlyMountTakesNoLeaseAndWorksBesideTheHolder) {
  Pod a(*server_, bucket_, "pod-a"), reader(*server_, bucket_, "reader");
  ASSERT_EQ(a.Mount().exit_code, 0) << a.log();
  WriteFile(a.dir() + "/shared.txt", "for readers\n");
  ASSERT_TRUE(Eventually([&] { return Exists("shared.txt"); }, std::chrono::seconds(30)));
  CommandResult r = reader.Mount("--read-only --no-wait");
  ASSERT_EQ(r.exit_code, 0) << r.output << reader.log();
  EXPECT_EQ(ReadFile(reader.dir() + "/shared.txt"), "for readers\n");
  const int fd = open((reader.dir() + "/nope.txt").c_str(), O_WRONLY | O_CREAT, 0644);
  EXPECT_LT(fd, 0);
  EXPECT_EQ(errno, EROFS);
  if (fd >= 0) close(fd);
  json s = reader.Status();
  EXPECT_EQ(s["lease"].value("state", ""), "none") << s.dump(2);
  EXPECT_EQ(LeaseObject().value("holder", ""), "pod-a");  // Untouched by the reader.
  EXPECT_EQ(reader.Unmount().exit_code, 0);
  EXPECT_EQ(a.Unmount().exit_code, 0);
}

TEST_F(MountdTest, AnAliasPicksItsBucketAndKeysFromThePlatformVariables) {
  Pod a(*server_, bucket_, "pod-a");
  // No bucket name and no keys of the usual names: only S3_BUCKET_DATASETS and its keys.
  const std::string cmd = fmt::format(
      "env -u S3_BUCKET -u S3_ACCESS_KEY -u S3_SECRET_KEY -u AWS_ACCESS_KEY_ID "
      "-u AWS_SECRET_ACCESS_KEY S3_ENDPOINT={} S3_REGION={} S3_BUCKET_DATASETS={} "
      "S3_BUCKET_DATASETS_ACCESS_KEY={} S3_BUCKET_DATASETS_SECRET_KEY={} {} mount datasets {} "
      "--runtime-dir {} --spool-dir {} --holder-id pod-a --lease-ttl {} --lease-margin {} 2>&1",
      server_->endpoint, server_->region, bucket_, server_->access_key, server_->secret_key,
      BUCKETFS_BINARY, a.dir(), a.runtime(), a.spool(), kTtl, kMargin);
  CommandResult r = RunCommand(cmd);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  a.RefreshPids();
  WriteFile(a.dir() + "/via-alias.txt", "alias\n");
  json s = a.Status();
  EXPECT_EQ(s.value("bucket", ""), bucket_) << s.dump(2);
  EXPECT_EQ(s.value("alias", ""), "datasets") << s.dump(2);
  EXPECT_EQ(a.Unmount().exit_code, 0);
  EXPECT_EQ(Get("via-alias.txt"), "alias\n");
}

TEST_F(MountdTest, ReloadTakesARotatedKeyWithoutRemounting) {
  ASSERT_FALSE(server_->state_dir.empty());
  const std::string rgw = std::string(BUCKETFS_SOURCE_DIR) + "/tests/s3server/rgw.sh";
  auto add_key = [&](std::string* access, std::string* secret) {
    auto added = RunCommand(rgw + " add-key " + server_->state_dir);
    ASSERT_EQ(added.exit_code, 0) << added.output;
    std::istringstream words(added.output);
    words >> *access >> *secret;
    ASSERT_FALSE(secret->empty()) << added.output;
  };
  std::string old_access, old_secret, new_access, new_secret;
  add_key(&old_access, &old_secret);
  Pod a(*server_, bucket_, "pod-a");
  a.UseKeys(old_access, old_secret);
  ASSERT_EQ(a.Mount().exit_code, 0) << a.log();
  WriteFile(a.dir() + "/before.txt", "before rotation\n");
  ASSERT_TRUE(Eventually([&] { return Exists("before.txt"); }, std::chrono::seconds(30)));

  // A reload from a shell without the variables: nothing to take, and it says so (it used
  // to report the keys "re-read" while keeping the old ones).
  CommandResult bare = RunCommand(fmt::format(
      "env -u S3_ACCESS_KEY -u S3_SECRET_KEY -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY {} "
      "reload {} --runtime-dir {} 2>&1",
      BUCKETFS_BINARY, a.dir(), a.runtime()));
  EXPECT_NE(bare.exit_code, 0) << bare.output;
  EXPECT_NE(bare.output.find("S3_ACCESS_KEY"), std::string::npos) << bare.output;
  EXPECT_NE(bare.output.find("none came with this reload"), std::string::npos) << bare.output;
  // Half a key in the shell: that is what is said, and nothing is sent.
  CommandResult half = RunCommand(fmt::format(
      "env -u S3_SECRET_KEY -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY S3_ACCESS_KEY=new {} "
      "reload {} --runtime-dir {} 2>&1",
      BUCKETFS_BINARY, a.dir(), a.runtime()));
  EXPECT_NE(half.exit_code, 0) << half.output;
  EXPECT_NE(half.output.find("S3_ACCESS_KEY is set but S3_SECRET_KEY is not"), std::string::npos)
      << half.output;

  add_key(&new_access, &new_secret);
  a.UseKeys(new_access, new_secret);  // The operator's shell now has the new Secret.
  CommandResult r = RunCommand(a.Cli("reload " + a.dir() + " --runtime-dir " + a.runtime()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto removed = RunCommand(rgw + " rm-key " + server_->state_dir + " " + old_access);
  ASSERT_EQ(removed.exit_code, 0) << removed.output;

  // Reads and writes go on, through the daemon and the coordinator's lease renewals alike.
  WriteFile(a.dir() + "/after.txt", "after rotation\n");
  const int fd = open((a.dir() + "/after.txt").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(fsync(fd), 0) << strerror(errno);
  close(fd);
  EXPECT_EQ(Get("after.txt"), "after rotation\n");
  std::this_thread::sleep_for(std::chrono::seconds(static_cast<int>(kTtl / 3) + 1));
  json s = a.Status();
  EXPECT_EQ(s["lease"].value("state", ""), "held") << s.dump(2);
  EXPECT_GE(s["lease"].value("renew_seq", 0), 1) << s.dump(2);

  // A daemon the coordinator restarts gets the new key too: its environment is the one the
  // coordinator started with, whose key is revoked now.
  const pid_t first = a.daemon_pid();
  kill(first, SIGKILL);
  ASSERT_TRUE(ServedByANewDaemon(a, first)) << a.log();
  WriteFile(a.dir() + "/after-restart.txt", "the restarted daemon has the new key\n");
  const int fd2 = open((a.dir() + "/after-restart.txt").c_str(), O_RDONLY);
  ASSERT_GE(fd2, 0);
  EXPECT_EQ(fsync(fd2), 0) << strerror(errno) << "\n" << a.log();
  close(fd2);
  EXPECT_EQ(Get("after-restart.txt"), "the restarted daemon has the new key\n");
  ASSERT_EQ(a.Unmount().exit_code, 0) << a.log();
}

TEST_F(MountdTest, ShareGivesAPresignedUrlThatServesTheFile) {
  Pod a(*server_, bucket_, "pod-a");
  ASSERT_EQ(a.Mount().exit_code, 0) << a.log();
  fs::create_directories(a.dir() + "/docs");
  WriteFile(a.dir() + "/docs/report.txt", "shared contents\n");
  const int fd = open((a.dir() + "/docs/report.txt").c_str(), O_RDONLY);
  ASSERT_EQ(fsync(fd), 0);
  close(fd);
  CommandResult r = RunCommand(a.Cli(fmt::format("share {}/docs/report.txt --ttl 120 "
                                                 "--runtime-dir {}",
                                                 a.dir(), a.runtime())));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::string url = r.output.substr(0, r.output.find('\n'));
  EXPECT_NE(url.find("X-Amz-Expires=120"), std::string::npos) << url;
  CommandResult got = RunCommand("curl -sS --fail '" + url + "'");
  EXPECT_EQ(got.exit_code, 0) << got.output;
  EXPECT_EQ(got.output, "shared contents\n");

  r = RunCommand(a.Cli(fmt::format("share {}/docs/report.txt --ttl 604801 --runtime-dir {}",
                                   a.dir(), a.runtime())));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("7 days"), std::string::npos) << r.output;
  r = RunCommand(a.Cli(fmt::format("share /etc/hostname --runtime-dir {}", a.runtime())));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("not under a bucket mounted"), std::string::npos) << r.output;
  EXPECT_EQ(a.Unmount().exit_code, 0);
}

TEST_F(MountdTest, TheMetricsShowTheLeaseHeldRenewedThenLost) {
  Pod a(*server_, bucket_, "pod-a");
  ASSERT_EQ(a.Mount("--metrics-address 127.0.0.1:0").exit_code, 0) << a.log();
  const json status = a.Status();
  const std::string url =
      status.contains("daemon") ? status["daemon"].value("metrics_url", "") : "";
  ASSERT_FALSE(url.empty()) << "`bucketfs status` shows no metrics URL: " << status.dump();
  // Past the first lease's validity (TTL 6 s): still held only because the renewals reach the
  // daemon, and the last one is younger than the TTL.
  std::this_thread::sleep_for(std::chrono::seconds(static_cast<int>(kTtl) + 2));
  MetricSamples m = ScrapeMetrics(url);
  EXPECT_EQ(SumSamples(m, "bucketfs_lease_state", {{"state", "held"}}), 1);
  EXPECT_EQ(SumSamples(m, "bucketfs_lease_state", {{"state", "lost"}}), 0);
  EXPECT_LT(SumSamples(m, "bucketfs_lease_renew_age_seconds"), kTtl);
  EXPECT_GT(SumSamples(m, "bucketfs_lease_valid_seconds"), 0);

  // Someone else takes the lease: within a renew period the daemon is fenced, and says so.
  StealLease();
  EXPECT_TRUE(Eventually(
      [&] {
        m = ScrapeMetrics(url);
        return SumSamples(m, "bucketfs_lease_state", {{"state", "lost"}}) == 1;
      },
      std::chrono::seconds(static_cast<int>(kTtl / 3) + 10)))
      << a.log();
  EXPECT_EQ(SumSamples(m, "bucketfs_lease_state", {{"state", "held"}}), 0);
  EXPECT_EQ(SumSamples(m, "bucketfs_lease_valid_seconds"), 0);
}

TEST_F(MountdTest, NoLogLevelEverShowsASecretOrASignature) {
  for (const char* format : {"text", "json"}) {
    SCOPED_TRACE(std::string("--log-format ") + format);
    Pod a(*server_, bucket_, "pod-a");
    // Everything a mount logs, at the most verbose level, through a day's operations.
    ASSERT_EQ(a.Mount(fmt::format("--log-level trace --fuse-debug --log-format {}", format))
                  .exit_code,
              0)
        << a.log();
    WriteFile(a.dir() + "/f.txt", "logged operations\n");
    EXPECT_EQ(ReadFile(a.dir() + "/f.txt"), "logged operations\n");
    const int fd = open((a.dir() + "/f.txt").c_str(), O_RDONLY);
    ASSERT_EQ(fsync(fd), 0);
    close(fd);
    CommandResult shared = RunCommand(a.Cli(fmt::format("share {}/f.txt --runtime-dir {}",
                                                        a.dir(), a.runtime())));
    ASSERT_EQ(shared.exit_code, 0) << shared.output;
    ASSERT_EQ(RunCommand(a.Cli("reload " + a.dir() + " --runtime-dir " + a.runtime())).exit_code, 0);
    ASSERT_EQ(a.Unmount().exit_code, 0);
    const std::string log = a.log();
    ASSERT_NE(log.find("f.txt"), std::string::npos) << "the log is not the verbose one:\n" << log;
    EXPECT_EQ(log.find(server_->secret_key), std::string::npos) << "the secret key is in the log";
    for (const char* leak : {"Signature=", "X-Amz-Signature", "Authorization:", "authorization:",
                             "\"authorization\"", "\"Authorization\"", "Credential="}) {
      EXPECT_EQ(log.find(leak), std::string::npos) << "'" << leak << "' is in the log";
    }
  }
}

TEST_F(MountdTest, TheControlSocketRejectsGarbageAndKeepsServing) {
  Pod a(*server_, bucket_, "pod-a");
  ASSERT_EQ(a.Mount().exit_code, 0) << a.log();
  json s = a.Status();
  ASSERT_TRUE(s.value("ok", false)) << s.dump();
  // Find the coordinator's socket: the one .sock in the runtime dir that is not the daemon's.
  std::string socket;
  for (const auto& e : fs::directory_iterator(a.runtime())) {
    const std::string p = e.path();
    if (p.ends_with(".sock") && !p.ends_with(".daemon.sock")) socket = p;
  }
  ASSERT_FALSE(socket.empty());
  struct stat st {};
  ASSERT_EQ(stat(socket.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  const std::string out = Boto3(fmt::format(R"PY(
import socket, struct
def send(raw):
    c = socket.socket(socket.AF_UNIX)
    c.settimeout(10)
    c.connect('{}')
    c.sendall(raw)
    try:
        data = c.recv(65536)
    except Exception as e:
        data = repr(e).encode()
    c.close()
    return data
print(b'error' in send(struct.pack('>I', 64 << 20)))      # oversized length
print(b'error' in send(struct.pack('>I', 5) + b'{{nope'))  # not JSON
print(b'error' in send(struct.pack('>I', 2) + b'[]'))     # not an object
print(b'error' in send(struct.pack('>I', 12) + b'{{"op":"xyz"}}'))  # unknown request
)PY",
                                            socket));
  EXPECT_EQ(out, "True\nTrue\nTrue\nTrue\n");
  s = a.Status();
  EXPECT_TRUE(s.value("ok", false)) << s.dump();
  EXPECT_EQ(s.value("coordinator_pid", -1), a.coordinator_pid());
  EXPECT_EQ(a.Unmount().exit_code, 0);
}

TEST(MountdHelp, EveryCommandDocumentsItsOptions) {
  const std::vector<std::pair<std::string, std::vector<std::string>>> commands = {
      {"mount", {"--read-only", "--lease-ttl", "--holder-id", "--spool-dir", "--drain-timeout"}},
      {"unmount", {"--timeout", "--force", "--sync-timeout"}},
      {"status", {"--json"}},
      {"reload", {"MOUNTPOINT", "mountpoint"}},
      {"share", {"--ttl"}},
      {"serve", {"--control-socket"}}};
  for (const auto& [command, words] : commands) {
    CommandResult r = RunCommand(std::string(BUCKETFS_BINARY) + " " + command + " --help 2>&1");
    EXPECT_EQ(r.exit_code, 0) << command << ": " << r.output;
    bool any = false;
    for (const auto& w : words) {
      if (command == "reload") {
        any = any || r.output.find(w) != std::string::npos;
      } else {
        EXPECT_NE(r.output.find(w), std::string::npos) << command << " --help lacks " << w;
      }
    }
    if (command == "reload") {
      EXPECT_TRUE(any) << r.output;
    }
  }
}

TEST(MountdErrors, StatusOfNothingMountedSaysWhatToDo) {
  CommandResult r = RunCommand(std::string(BUCKETFS_BINARY) +
                               " status /tmp --runtime-dir /tmp/bfs-md-none 2>&1");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("/tmp"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("bucketfs mount"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace bucketfs::testing
