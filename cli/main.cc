// bucketfs: the command line.
//
//   bucketfs mount [BUCKET|ALIAS] [MOUNTPOINT] [options]
//
// Mounts one bucket and serves it until unmounted (`fusermount3 -u MOUNTPOINT`, `umount`,
// SIGINT or SIGTERM). Without -f it returns once the mount answers, with status 0, or with
// a message and status 1 when it cannot mount; the daemon goes on in the background. The
// bucket, endpoint, region and keys come from flags or from the platform's variables
// (S3_BUCKET, S3_ENDPOINT, S3_REGION, S3_ACCESS_KEY, S3_SECRET_KEY, S3_BUCKET_<ALIAS>…, and
// the AWS_* ones): see s3/config.h. The coordinator (mountd, the single-pod lease, drain and
// sync before unmount) is built on this command by a later issue.
#include <fcntl.h>
#include <malloc.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>
#include <string>

#include "cache/block_cache.h"
#include "cache/memory_budget.h"
#include "cache/read_ahead.h"
#include "cache/spool.h"
#include "cache/writeback.h"
#include "common/log.h"
#include "common/task_pool.h"
#include "fuse/filesystem.h"
#include "fuse/session.h"
#include "s3/config.h"
#include "s3/credentials.h"
#include "s3/curl_client.h"

namespace bucketfs {
namespace {

// "512M", "2G", "1048576", "64KiB" -> bytes.
Result<uint64_t> ParseSize(const std::string& text) {
  uint64_t value = 0;
  const char* begin = text.data();
  const char* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(begin, end, value);
  if (ec != std::errc() || p == begin) {
    return Status(ErrorCode::kInvalidArgument, "'" + text + "' is not a size (e.g. 512M, 2G)");
  }
  std::string unit(p, end);
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (unit.ends_with("IB")) unit.resize(unit.size() - 2);
  if (unit.ends_with("B")) unit.resize(unit.size() - 1);
  int shift = 0;
  if (unit.empty()) shift = 0;
  else if (unit == "K") shift = 10;
  else if (unit == "M") shift = 20;
  else if (unit == "G") shift = 30;
  else if (unit == "T") shift = 40;
  else return Status(ErrorCode::kInvalidArgument, "unknown size unit in '" + text + "'");
  if (value > (UINT64_MAX >> shift)) {
    return Status(ErrorCode::kInvalidArgument, "size '" + text + "' is too large");
  }
  return value << shift;
}

struct MountArgs {
  std::string name;  // Bucket or alias; empty: $S3_BUCKET.
  std::string mountpoint = "/mnt-workspace";
  std::string endpoint, region, ca_bundle, credentials_file, profile = "default";
  std::string addressing;  // "path" or "virtual"
  bool read_only = false;
  bool foreground = false;
  bool debug = false;
  bool fuse_debug = false;
  std::string log_level = "info";
  std::string log_file;  // Where a background daemon logs; empty: nowhere.
  bool allow_other = geteuid() == 0;
  uint32_t uid = getuid(), gid = getgid();
  std::string file_mode = "0644", dir_mode = "0755";
  double metadata_ttl = 60;
  std::string max_memory;  // Empty: derived from the cgroup limit or RAM.
  std::string block_size = "4M";
  std::string read_ahead = "64M";
  unsigned read_parallelism = 8;
  bool random_fill = false;
  unsigned io_threads = 32;
  unsigned fuse_threads = 16;
  bool unsigned_payload = false;
  std::string spool_dir = "/var/lib/bucketfs/spool";
  std::string part_size = "8M";
  unsigned upload_parallelism = 8;
  bool sync_on_close = false;
  double drain_timeout = 600;  // Seconds unmount waits for uploads.
};

Result<uint32_t> ParseMode(const std::string& text) {
  uint32_t mode = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), mode, 8);
  if (ec != std::errc() || p != text.data() + text.size() || mode > 07777) {
    return Status(ErrorCode::kInvalidArgument, "'" + text + "' is not an octal mode like 0644");
  }
  return mode;
}

// Everything the daemon owns, in construction order (destroyed in reverse: the filesystem's
// handles first, then the I/O pool is drained, then the cache, the budget and the client).
struct Daemon {
  std::unique_ptr<s3::CurlObjectClient> client;
  std::unique_ptr<cache::MemoryBudget> budget;
  std::unique_ptr<cache::BlockCache> cache;
  std::unique_ptr<TaskPool> pool;
  std::unique_ptr<cache::Spool> spool;
  std::unique_ptr<cache::Writeback> writeback;
  std::unique_ptr<fs::Filesystem> filesystem;
};

Result<std::unique_ptr<Daemon>> BuildDaemon(const MountArgs& a, std::string* fsname) {
  s3::BucketOverrides overrides;
  if (!a.endpoint.empty()) overrides.endpoint = a.endpoint;
  if (!a.region.empty()) overrides.region = a.region;
  if (!a.ca_bundle.empty()) overrides.ca_bundle = a.ca_bundle;
  if (a.addressing == "path") overrides.addressing = s3::Addressing::kPath;
  if (a.addressing == "virtual") overrides.addressing = s3::Addressing::kVirtualHost;
  BFS_ASSIGN_OR_RETURN(s3::BucketSettings settings,
                       s3::ResolveBucket(a.name, s3::ProcessEnvironment(), overrides));
  if (a.unsigned_payload) settings.config.payload_signing = s3::PayloadSigning::kUnsigned;
  *fsname = "bucketfs:" + settings.config.bucket;

  std::shared_ptr<s3::CredentialsProvider> creds;
  if (!a.credentials_file.empty()) {
    auto file = std::make_shared<s3::FileCredentialsProvider>(a.credentials_file, a.profile,
                                                              RealClock());
    BFS_RETURN_IF_ERROR(file->Reload());
    creds = file;
  } else {
    if (settings.credentials.empty()) {
      return Status(ErrorCode::kInvalidCredentials,
                    "no credentials: set S3_ACCESS_KEY and S3_SECRET_KEY (or AWS_ACCESS_KEY_ID "
                    "and AWS_SECRET_ACCESS_KEY), or pass --credentials-file");
    }
    creds = std::make_shared<s3::StaticCredentialsProvider>(settings.credentials,
                                                            settings.credentials_source);
  }

  auto d = std::make_unique<Daemon>();
  BFS_ASSIGN_OR_RETURN(d->client, s3::CurlObjectClient::Create(settings.config, creds));

  // Can we see the bucket at all? A wrong key, a missing bucket or an unreachable endpoint
  // is reported now, with its advice, instead of as EIO on the first ls.
  s3::ListRequest probe;
  probe.max_keys = 1;
  auto listed = d->client->List(probe, {RealClock().Now() + std::chrono::seconds(30)});
  if (!listed.ok()) {
    return Status(listed.status())
        .Annotate("cannot list bucket '" + settings.config.bucket + "' at " +
                  (settings.config.endpoint.empty() ? "AWS" : settings.config.endpoint));
  }

  uint64_t budget_bytes = cache::DefaultBudgetBytes();
  if (!a.max_memory.empty()) {
    BFS_ASSIGN_OR_RETURN(budget_bytes, ParseSize(a.max_memory));
  }
  BFS_ASSIGN_OR_RETURN(uint64_t block_size, ParseSize(a.block_size));
  BFS_ASSIGN_OR_RETURN(uint64_t read_ahead, ParseSize(a.read_ahead));
  d->budget = std::make_unique<cache::MemoryBudget>(budget_bytes);
  cache::BlockCacheOptions cache_options;
  cache_options.block_size = block_size;
  // Three quarters of the budget for cached blocks; the rest serves random-read buffers now
  // and writeback later.
  cache_options.capacity_bytes = std::max(block_size, budget_bytes / 4 * 3 / block_size * block_size);
  BFS_RETURN_IF_ERROR(cache::BlockCache::Validate(*d->budget, cache_options).Annotate(
      "--max-memory " + cache::FormatBytes(budget_bytes) + " with --block-size " +
      cache::FormatBytes(block_size)));
  d->cache = std::make_unique<cache::BlockCache>(*d->budget, cache_options);
  d->pool = std::make_unique<TaskPool>("bfs-io", a.io_threads, 4096);

  BFS_ASSIGN_OR_RETURN(uint32_t file_mode, ParseMode(a.file_mode));
  BFS_ASSIGN_OR_RETURN(uint32_t dir_mode, ParseMode(a.dir_mode));
  fs::FilesystemOptions options;
  options.defaults = fs::AttributeDefaults{a.uid, a.gid, file_mode, dir_mode};
  options.metadata_ttl = std::chrono::duration_cast<Duration>(
      std::chrono::duration<double>(std::max(0.0, a.metadata_ttl)));
  options.read_only = a.read_only;
  options.sync_on_close = a.sync_on_close;
  options.read_ahead.max_window = read_ahead;
  options.read_ahead.max_parallel_gets = std::max(1u, a.read_parallelism);
  options.read_ahead.random_fill = a.random_fill;
  options.mount_time = RealClock().WallNow();
  options.generation = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::seconds>(options.mount_time.time_since_epoch())
          .count());
  cache::ReadContext reads{d->client.get(), d->cache.get(), d->budget.get(), d->pool.get(),
                           nullptr};
  if (!a.read_only) {
    BFS_ASSIGN_OR_RETURN(d->spool, cache::Spool::Open(a.spool_dir, settings.config.bucket));
    BFS_ASSIGN_OR_RETURN(uint64_t part_size, ParseSize(a.part_size));
    if (part_size < s3::kMinPartSize || part_size > s3::kMaxPartSize) {
      return Status(ErrorCode::kInvalidArgument, "--part-size must be between 5M and 5G");
    }
    if (part_size * 2 > budget_bytes / 4) {
      return Status(ErrorCode::kInvalidArgument,
                    "--part-size " + cache::FormatBytes(part_size) + " leaves no room for two "
                    "parts in flight in the quarter of --max-memory " +
                        cache::FormatBytes(budget_bytes) + " kept for them; lower it or raise "
                        "--max-memory");
    }
    cache::WritebackOptions wb;
    wb.part_size = part_size;
    wb.upload_parallelism = std::max(1u, a.upload_parallelism);
    wb.commit_parallelism = 2 * wb.upload_parallelism;
    d->writeback = std::make_unique<cache::Writeback>(
        cache::WriteContext{d->client.get(), d->budget.get(), d->spool.get(), nullptr}, wb);
    // What a previous daemon left: uploaded before the first file is served, so nobody
    // reads an old object that a closed file should have replaced.
    if (const size_t recovered = d->writeback->Recover(); recovered > 0) {
      Logger("writeback")->info("{} file(s) from the previous mount are now in the bucket",
                                recovered);
    }
  }
  d->filesystem =
      std::make_unique<fs::Filesystem>(*d->client, reads, d->writeback.get(), options);
  Logger("fuse")->info(
      "bucket {} at {}: memory budget {}, block cache {}, read-ahead up to {}, metadata TTL {}s, "
      "{}",
      settings.config.bucket, settings.config.endpoint, cache::FormatBytes(budget_bytes),
      cache::FormatBytes(cache_options.capacity_bytes), cache::FormatBytes(read_ahead),
      a.metadata_ttl, a.read_only ? "read-only" : "spool " + d->spool->directory());
  return d;
}

// Runs the mount. `ready` is called once the kernel mount is in place.
int RunMount(const MountArgs& a, const std::function<void(const std::string&)>& report) {
  // Every large buffer is its own mmap, so freeing it gives the memory back to the system
  // at once: RSS then follows the memory budget instead of glibc's per-thread arenas
  // keeping freed 1 MiB blocks (its dynamic threshold would otherwise move them to the heap).
  mallopt(M_MMAP_THRESHOLD, 256 * 1024);

  std::string fsname;
  auto daemon = BuildDaemon(a, &fsname);
  if (!daemon.ok()) {
    report(daemon.status().ToString());
    return 1;
  }
  fs::SessionOptions session;
  session.mountpoint = a.mountpoint;
  session.fsname = fsname;
  session.read_only = a.read_only;
  session.allow_other = a.allow_other;
  session.debug = a.fuse_debug;
  session.max_threads = a.fuse_threads;
  bool mounted = false;
  Status st = fs::ServeMount(*(*daemon)->filesystem, session, [&] {
    mounted = true;
    report("");
  });
  int rc = 0;
  if (!st.ok()) {
    if (!mounted) report(st.ToString());
    Logger("fuse")->error("{}", st.ToString());
    rc = 1;
  }
  if ((*daemon)->writeback) {
    // Unmounted (or stopped by a signal): every closed file goes to S3 before we exit.
    const auto deadline = RealClock().Now() + std::chrono::duration_cast<Duration>(
                                                  std::chrono::duration<double>(a.drain_timeout));
    Status drained = (*daemon)->writeback->Drain(deadline);
    if (!drained.ok()) {
      Logger("writeback")->error("unmounted with uploads unfinished: {}", drained.ToString());
      rc = 1;
    } else {
      Logger("writeback")->info("every written file is in the bucket");
    }
  }
  return rc;
}

// Forks before any thread exists (the client's event loop, the I/O pool): the child becomes
// the daemon and tells the parent through a pipe when the mount is ready, or why it failed.
int MountInBackground(const MountArgs& a) {
  int fds[2];
  if (pipe(fds) != 0) {
    std::cerr << "bucketfs: pipe: " << strerror(errno) << "\n";
    return 1;
  }
  pid_t pid = fork();
  if (pid < 0) {
    std::cerr << "bucketfs: fork: " << strerror(errno) << "\n";
    return 1;
  }
  if (pid > 0) {
    close(fds[1]);
    std::string message;
    char buf[512];
    ssize_t n;
    while ((n = read(fds[0], buf, sizeof buf)) > 0) message.append(buf, static_cast<size_t>(n));
    close(fds[0]);
    if (message == "ok") return 0;
    if (message.empty()) {
      int status = 0;
      waitpid(pid, &status, 0);
      message = "the daemon exited before the mount was ready";
    }
    std::cerr << "bucketfs: " << message << "\n";
    return 1;
  }
  close(fds[0]);
  setsid();
  if (chdir("/") != 0) _exit(1);
  int write_fd = fds[1];
  auto report = [&](const std::string& error) {
    if (write_fd < 0) return;
    std::string msg = error.empty() ? "ok" : error;
    if (write(write_fd, msg.data(), msg.size()) < 0) {
      // The parent is gone; nothing to tell.
    }
    close(write_fd);
    write_fd = -1;
    // Detach once the parent has its answer, as daemons do: nothing may keep the caller's
    // terminal or pipes open (a caller reading our output would wait forever). Logs go to
    // --log-file; without one they are dropped (run with -f under a service manager to keep
    // them in its journal).
    int devnull = open("/dev/null", O_RDWR);
    int log_fd = a.log_file.empty()
                     ? -1
                     : open(a.log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (devnull >= 0) {
      dup2(devnull, STDIN_FILENO);
      dup2(devnull, STDOUT_FILENO);
      dup2(log_fd >= 0 ? log_fd : devnull, STDERR_FILENO);
      if (devnull > STDERR_FILENO) close(devnull);
    }
    if (log_fd > STDERR_FILENO) close(log_fd);
  };
  int rc = RunMount(a, report);
  if (write_fd >= 0) report("the daemon stopped before the mount was ready");
  _exit(rc);
}

}  // namespace
}  // namespace bucketfs

int main(int argc, char** argv) {
  using namespace bucketfs;
  CLI::App app{"bucketfs: mount an S3 bucket as a filesystem"};
  app.require_subcommand(1);
  MountArgs a;
  CLI::App* mount = app.add_subcommand("mount", "Mount a bucket and serve it until unmounted");
  mount->add_option("bucket", a.name, "Bucket name or alias (default: $S3_BUCKET)");
  mount->add_option("mountpoint", a.mountpoint, "Where to mount")->capture_default_str();
  mount->add_option("--endpoint", a.endpoint, "S3 endpoint URL (default: $S3_ENDPOINT)");
  mount->add_option("--region", a.region, "Region (default: $S3_REGION or us-east-1)");
  mount->add_option("--ca-bundle", a.ca_bundle, "CA bundle for https endpoints");
  mount->add_option("--addressing", a.addressing, "path or virtual (default: auto)")
      ->check(CLI::IsMember({"path", "virtual"}));
  mount->add_option("--credentials-file", a.credentials_file,
                    "AWS-style credentials file, watched for rotation");
  mount->add_option("--profile", a.profile, "Profile in the credentials file")
      ->capture_default_str();
  mount->add_flag("--read-only", a.read_only, "Mount read-only");
  mount->add_flag("-f,--foreground", a.foreground, "Stay in the foreground");
  mount->add_flag("--debug", a.debug, "Debug logging of every component");
  mount->add_flag("--fuse-debug", a.fuse_debug, "libfuse's trace of every request");
  mount->add_option("--log-level", a.log_level,
                    "trace|debug|info|warn|error, or per component: s3=debug,fuse=info")
      ->capture_default_str();
  mount->add_option("--log-file", a.log_file,
                    "Append the daemon's log here once it runs in the background");
  mount->add_flag("!--no-allow-other", a.allow_other,
                  "Only the mounting user may use the mount (default when not root)");
  mount->add_option("--uid", a.uid, "Owner of files without x-amz-meta-uid")
      ->capture_default_str();
  mount->add_option("--gid", a.gid, "Group of files without x-amz-meta-gid")
      ->capture_default_str();
  mount->add_option("--file-mode", a.file_mode, "Mode of files without x-amz-meta-mode")
      ->capture_default_str();
  mount->add_option("--dir-mode", a.dir_mode, "Mode of directories")->capture_default_str();
  mount->add_option("--metadata-ttl", a.metadata_ttl,
                    "Seconds attributes, entries and listings are cached")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 86400.0));
  mount->add_option("--max-memory", a.max_memory,
                    "Memory budget for cached and in-flight data (default: a quarter of the "
                    "cgroup limit or RAM, 64M..4G)");
  mount->add_option("--block-size", a.block_size, "Cache block size")->capture_default_str();
  mount->add_option("--read-ahead", a.read_ahead, "Largest read-ahead window per file")
      ->capture_default_str();
  mount->add_option("--read-parallelism", a.read_parallelism,
                    "Ranged GETs in flight per file being read sequentially")
      ->capture_default_str();
  mount->add_flag("--random-fill", a.random_fill,
                  "Files read at random that fit in half the cache fill whole blocks in the "
                  "background (many more IOPS on re-reads; slower cold random reads)");
  mount->add_option("--io-threads", a.io_threads, "Threads for background S3 requests")
      ->capture_default_str()
      ->check(CLI::Range(1u, 1024u));
  mount->add_option("--fuse-threads", a.fuse_threads, "Most threads serving the kernel")
      ->capture_default_str()
      ->check(CLI::Range(1u, 1024u));
  mount->add_flag("--unsigned-payload", a.unsigned_payload,
                  "Send UNSIGNED-PAYLOAD instead of hashing bodies (only over https)");

  mount->add_option("--spool-dir", a.spool_dir,
                    "Local directory where written data waits for its upload (survives a "
                    "daemon crash; one per mount)")
      ->capture_default_str();
  mount->add_option("--part-size", a.part_size,
                    "Multipart part size (grows past 500 parts, so 5 TiB fits)")
      ->capture_default_str();
  mount->add_option("--upload-parallelism", a.upload_parallelism,
                    "Part uploads in flight across all files")
      ->capture_default_str()
      ->check(CLI::Range(1u, 256u));
  mount->add_flag("--sync-on-close", a.sync_on_close,
                  "close() returns only once the file is in the bucket, as fsync() does");
  mount->add_option("--drain-timeout", a.drain_timeout,
                    "Seconds an unmount waits for uploads still running (the rest resume on "
                    "the next mount)")
      ->capture_default_str();

  CLI11_PARSE(app, argc, argv);
  ConfigureLogging(a.debug ? "debug" : a.log_level);

  struct stat st {};
  if (stat(a.mountpoint.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    std::cerr << "bucketfs: mountpoint '" << a.mountpoint
              << "' is not an existing directory: create it with mkdir -p\n";
    return 1;
  }
  if (a.foreground) {
    return RunMount(a, [](const std::string& error) {
      if (!error.empty()) std::cerr << "bucketfs: " << error << "\n";
    });
  }
  return MountInBackground(a);
}
