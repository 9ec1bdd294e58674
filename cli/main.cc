// bucketfs: the command line.
//
//   bucketfs mount [BUCKET|ALIAS] [MOUNTPOINT] [options]   the operator's mount (coordinator)
//   bucketfs unmount|status|reload [MOUNTPOINT]             talk to a mount's coordinator
//   bucketfs share PATH [--ttl S]                           a presigned URL for a file
//   bucketfs serve [BUCKET|ALIAS] [MOUNTPOINT] [options]    the FUSE daemon alone
//
// `mount` starts the coordinator (mountd/coordinator.h): it takes the single-pod lease,
// runs `serve` as its child with the same options, and returns 0 once the mount answers (or
// a message and 1). `serve` mounts and serves until unmounted (`fusermount3 -u`, `umount`,
// SIGINT or SIGTERM), with no lease: tests and benchmarks use it. The bucket, endpoint,
// region and keys come from flags or from the platform's variables (S3_BUCKET, S3_ENDPOINT,
// S3_REGION, S3_ACCESS_KEY, S3_SECRET_KEY, S3_BUCKET_<ALIAS>…, and the AWS_* ones): see
// s3/config.h.
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fmt/ranges.h>
#include <systemd/sd-daemon.h>
#include <algorithm>
#include <atomic>
#include <nlohmann/json.hpp>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "cache/block_cache.h"
#include "cache/disk_cache.h"
#include "cache/local_dir.h"
#include "cache/memory_budget.h"
#include "cache/read_ahead.h"
#include "cache/spool.h"
#include "cache/upload_ledger.h"
#include "cache/write_fence.h"
#include "cache/writeback.h"
#include "common/control_channel.h"
#include "common/exit_code.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/metrics_endpoint.h"
#include "common/task_pool.h"
#include "fuse/filesystem.h"
#include "fuse/session.h"
#include "mountd/coordinator.h"
#include "s3/config.h"
#include "s3/credentials.h"
#include "s3/curl_client.h"

namespace bucketfs {
namespace {

constexpr uint64_t kMiB = 1024 * 1024;

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
  std::string debug;  // --debug: "all", or the components ("s3,writeback").
  std::string log_format = "text";
  bool fuse_debug = false;
  std::string log_level = "info";
  std::string log_file;  // Where a background daemon logs; empty: nowhere.
  bool allow_other = geteuid() == 0;
  uint32_t uid = getuid(), gid = getgid();
  std::string file_mode = "0644", dir_mode = "0755";
  double metadata_ttl = 60;
  std::string max_memory;  // Empty: derived from the cgroup limit or RAM.
  std::string block_size;  // Empty: by the memory budget (CheckMountArgs).
  std::string read_ahead = "64M";
  unsigned read_parallelism = 0;  // 0: 64 MiB of GETs in flight, at most 8.
  bool random_fill = false;
  unsigned io_threads = 32;
  unsigned fuse_threads = 16;
  bool unsigned_payload = false;
  std::string spool_dir = "/var/lib/bucketfs/spool";
  std::string part_size = "8M";
  unsigned upload_parallelism = 8;
  bool sync_on_close = false;
  double drain_timeout = 600;  // Seconds unmount waits for uploads.
  std::string metrics_address;  // Empty: no metrics endpoint.
  std::string cache_dir;        // Empty: no disk cache.
  std::string cache_size = "10G";

  // Coordinator (`mount`) only; `serve` accepts and ignores them, so that the coordinator
  // can hand its own command line to the daemon.
  std::string runtime_dir;  // Empty: control::RuntimeDir().
  std::string holder_id;    // Empty: $POD_NAME, else the host name.
  double lease_ttl = 30;
  double lease_margin = 10;
  bool no_wait = false;
  double mount_timeout = 120;

  // Daemon (`serve`) only, set by the coordinator.
  std::string control_socket;
  std::string startup_error_file;
  int64_t lease_valid_until_ns = 0;  // 0: no lease, never fenced.
};

Result<uint32_t> ParseMode(const std::string& text) {
  uint32_t mode = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), mode, 8);
  if (ec != std::errc() || p != text.data() + text.size() || mode > 07777) {
    return Status(ErrorCode::kInvalidArgument, "'" + text + "' is not an octal mode like 0644");
  }
  return mode;
}

// The size, mode and time options of `mount` and `serve`, parsed and checked against each
// other. Checked by main() before anything runs (a typo fails at once, not after the bucket
// probe and the lease), and again by the daemon, which uses the values.
struct CheckedMountArgs {
  uint64_t budget_bytes = 0, block_size = 0, read_ahead = 0, part_size = 0, cache_bytes = 0;
  unsigned read_parallelism = 0;
  uint32_t file_mode = 0, dir_mode = 0;
  cache::BlockCacheOptions cache_options;
};

Result<CheckedMountArgs> CheckMountArgs(const MountArgs& a) {
  CheckedMountArgs c;
  auto option = [](const char* name) {
    return [name](Status s) { return Status(s.code(), std::string(name) + ": " + s.message()); };
  };
  c.budget_bytes = cache::DefaultBudgetBytes();
  if (!a.max_memory.empty()) {
    auto parsed = ParseSize(a.max_memory);
    if (!parsed.ok()) return option("--max-memory")(parsed.status());
    c.budget_bytes = *parsed;
  }
  if (a.block_size.empty()) {
    // The largest of 16, 8 and 4 MiB whose sixteen blocks fit in the block cache: one
    // 16 MiB GET costs RGW and this daemon less than four of 4 MiB (measured: a cold 1 GiB
    // read at 0.92x one curl GET with 16 MiB blocks, 0.84x with 4 MiB; bench/RESULTS.md),
    // and a small budget keeps blocks small enough for a read-ahead window of several.
    c.block_size = kMiB * 4;
    for (uint64_t size : {kMiB * 16, kMiB * 8}) {
      if (size * 16 <= c.budget_bytes / 4 * 3) {
        c.block_size = size;
        break;
      }
    }
  } else {
    auto block = ParseSize(a.block_size);
    if (!block.ok()) return option("--block-size")(block.status());
    c.block_size = *block;
    if (c.block_size == 0) {
      return Status(ErrorCode::kInvalidArgument, "--block-size must be more than 0 (e.g. 4M)");
    }
  }
  // 64 MiB of GETs in flight per sequential reader (4 of 16 MiB), at most 8 GETs.
  c.read_parallelism =
      a.read_parallelism > 0
          ? a.read_parallelism
          : static_cast<unsigned>(std::clamp<uint64_t>(kMiB * 64 / c.block_size, 1, 8));
  auto read_ahead = ParseSize(a.read_ahead);
  if (!read_ahead.ok()) return option("--read-ahead")(read_ahead.status());
  c.read_ahead = *read_ahead;
  // Three quarters of the budget for cached blocks; the rest serves random-read buffers and
  // writeback.
  c.cache_options.block_size = c.block_size;
  c.cache_options.capacity_bytes = c.budget_bytes / 4 * 3 / c.block_size * c.block_size;
  c.cache_options.largest_read = fs::SessionOptions{}.max_read;  // What one FUSE READ asks for.
  {
    const cache::MemoryBudget budget(c.budget_bytes);
    BFS_RETURN_IF_ERROR(cache::BlockCache::Validate(budget, c.cache_options).Annotate(
        "--max-memory " + cache::FormatBytes(c.budget_bytes) + " (three quarters of it for the "
        "block cache) with --block-size " + cache::FormatBytes(c.block_size)));
  }
  if (!a.cache_dir.empty()) {
    auto disk = ParseSize(a.cache_size);
    if (!disk.ok()) return option("--cache-size")(disk.status());
    c.cache_bytes = *disk;
    if (c.cache_bytes < 2 * c.block_size) {
      return Status(ErrorCode::kInvalidArgument,
                    "--cache-size " + cache::FormatBytes(c.cache_bytes) +
                        " holds less than two blocks of --block-size " +
                        cache::FormatBytes(c.block_size) + "; raise it");
    }
  }
  auto file_mode = ParseMode(a.file_mode);
  if (!file_mode.ok()) return option("--file-mode")(file_mode.status());
  c.file_mode = *file_mode;
  auto dir_mode = ParseMode(a.dir_mode);
  if (!dir_mode.ok()) return option("--dir-mode")(dir_mode.status());
  c.dir_mode = *dir_mode;
  if (!a.read_only) {
    auto part = ParseSize(a.part_size);
    if (!part.ok()) return option("--part-size")(part.status());
    c.part_size = *part;
    if (c.part_size < s3::kMinPartSize || c.part_size > s3::kMaxPartSize) {
      return Status(ErrorCode::kInvalidArgument, "--part-size must be between 5M and 5G");
    }
    if (c.part_size * 2 > c.budget_bytes / 4) {
      return Status(ErrorCode::kInvalidArgument,
                    "--part-size " + cache::FormatBytes(c.part_size) + " leaves no room for two "
                    "parts in flight in the quarter of --max-memory " +
                        cache::FormatBytes(c.budget_bytes) + " kept for them; lower it or raise "
                        "--max-memory");
    }
  }
  for (const auto& [name, seconds] : {std::pair{"--drain-timeout", a.drain_timeout},
                                      std::pair{"--mount-timeout", a.mount_timeout}}) {
    if (!(seconds >= 0)) {
      return Status(ErrorCode::kInvalidArgument,
                    fmt::format("{} must be 0 or more seconds, not {}", name, seconds));
    }
  }
  return c;
}

// Everything the daemon owns, in construction order (destroyed in reverse: the filesystem's
// handles first, then the I/O pool is drained, then the cache, the budget and the client).
struct Daemon {
  std::unique_ptr<s3::CurlObjectClient> client;
  std::shared_ptr<s3::CredentialsProvider> credentials;
  // The lease's fence and the client that obeys it: every request that changes the bucket
  // goes through `fenced` (cache/write_fence.h).
  std::unique_ptr<cache::WriteFence> fence;
  std::unique_ptr<cache::FencedObjectClient> fenced;
  std::unique_ptr<cache::MemoryBudget> budget;
  std::unique_ptr<cache::BlockCache> cache;
  std::unique_ptr<cache::DiskCache> disk;  // --cache-dir, or none.
  std::unique_ptr<TaskPool> pool;
  std::unique_ptr<cache::Spool> spool;
  // `fenced`, noting in the spool the multipart uploads it starts (cache/upload_ledger.h):
  // what the writeback and the filesystem's copies write through, when writable.
  std::unique_ptr<cache::LedgeredClient> ledgered;
  std::unique_ptr<cache::Writeback> writeback;
  std::unique_ptr<fs::Filesystem> filesystem;
  std::string bucket, endpoint;
  std::atomic<bool> mounted{false};
  std::atomic<bool> recovering{false};  // Uploading what a previous daemon left.
  // When the coordinator last passed a renewed lease (CLOCK_MONOTONIC ns), for the metrics.
  std::atomic<int64_t> lease_renewed_ns{0};
  std::string metrics_url;  // Empty: no metrics endpoint. Set before the control server starts.
};

// What both the coordinator and the daemon build first: the bucket's settings, its
// credentials (rotatable) and a client.
struct ClientParts {
  s3::BucketSettings settings;
  std::shared_ptr<s3::CredentialsProvider> credentials;
  std::unique_ptr<s3::CurlObjectClient> client;
};

// The credentials a coordinator holds (its variables', or the last `bucketfs reload`'s),
// handed to each daemon it starts in these variables: the daemon's own environment is the
// one the coordinator started with, whose keys may have been revoked since.
constexpr const char* kHandedAccessKey = "BUCKETFS_DAEMON_ACCESS_KEY";
constexpr const char* kHandedSecretKey = "BUCKETFS_DAEMON_SECRET_KEY";
constexpr const char* kHandedSessionToken = "BUCKETFS_DAEMON_SESSION_TOKEN";

enum class CredentialsFrom { kOwnSettings, kCoordinator };

Result<ClientParts> BuildClient(const MountArgs& a,
                                CredentialsFrom from = CredentialsFrom::kOwnSettings) {
  s3::BucketOverrides overrides;
  const s3::EnvLookup env = s3::ProcessEnvironment();
  const bool handed = from == CredentialsFrom::kCoordinator && a.credentials_file.empty() &&
                      env(kHandedAccessKey).has_value();
  if (handed) {
    overrides.access_key = env(kHandedAccessKey);
    overrides.secret_key = env(kHandedSecretKey).value_or("");
    overrides.session_token = env(kHandedSessionToken).value_or("");
  }
  if (!a.endpoint.empty()) overrides.endpoint = a.endpoint;
  if (!a.region.empty()) overrides.region = a.region;
  if (!a.ca_bundle.empty()) overrides.ca_bundle = a.ca_bundle;
  if (a.addressing == "path") overrides.addressing = s3::Addressing::kPath;
  if (a.addressing == "virtual") overrides.addressing = s3::Addressing::kVirtualHost;
  BFS_ASSIGN_OR_RETURN(s3::BucketSettings settings, s3::ResolveBucket(a.name, env, overrides));
  if (handed) {
    settings.credentials_source =
        "the coordinator's credentials (" + std::string(kHandedAccessKey) + ")";
  }
  if (a.unsigned_payload) settings.config.payload_signing = s3::PayloadSigning::kUnsigned;

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

  ClientParts parts;
  parts.settings = settings;
  parts.credentials = creds;
  BFS_ASSIGN_OR_RETURN(parts.client, s3::CurlObjectClient::Create(settings.config, creds));
  return parts;
}

Result<std::unique_ptr<Daemon>> BuildDaemon(const MountArgs& a, std::string* fsname) {
  BFS_ASSIGN_OR_RETURN(ClientParts parts, BuildClient(a, CredentialsFrom::kCoordinator));
  const s3::BucketSettings& settings = parts.settings;
  *fsname = "bucketfs:" + settings.config.bucket;
  auto d = std::make_unique<Daemon>();
  d->credentials = parts.credentials;
  d->bucket = settings.config.bucket;
  SetLogContext("bucket", settings.config.bucket);
  d->endpoint = settings.config.endpoint;
  d->client = std::move(parts.client);
  d->fence = std::make_unique<cache::WriteFence>(
      RealClock(), a.lease_valid_until_ns > 0 ? MonoTime(Duration(a.lease_valid_until_ns))
                                              : MonoTime::max());
  d->fenced = std::make_unique<cache::FencedObjectClient>(*d->client, *d->fence);
  if (a.lease_valid_until_ns > 0) {
    d->lease_renewed_ns.store(RealClock().Now().time_since_epoch().count());
  }

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

  BFS_ASSIGN_OR_RETURN(const CheckedMountArgs checked, CheckMountArgs(a));
  const uint64_t budget_bytes = checked.budget_bytes;
  d->budget = std::make_unique<cache::MemoryBudget>(budget_bytes);
  d->cache = std::make_unique<cache::BlockCache>(*d->budget, checked.cache_options);
  if (!a.cache_dir.empty()) {
    BFS_ASSIGN_OR_RETURN(d->disk, cache::DiskCache::Open({a.cache_dir, checked.cache_bytes},
                                                         settings.config.bucket));
  }
  d->pool = std::make_unique<TaskPool>("bfs-io", a.io_threads, 4096);

  fs::FilesystemOptions options;
  options.defaults = fs::AttributeDefaults{a.uid, a.gid, checked.file_mode, checked.dir_mode};
  options.metadata_ttl = std::chrono::duration_cast<Duration>(
      std::chrono::duration<double>(std::max(0.0, a.metadata_ttl)));
  options.read_only = a.read_only;
  options.sync_on_close = a.sync_on_close;
  options.read_ahead.max_window = checked.read_ahead;
  options.read_ahead.max_parallel_gets = checked.read_parallelism;
  options.read_ahead.random_fill = a.random_fill;
  options.fence = d->fence.get();
  options.mount_time = RealClock().WallNow();
  options.generation = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::seconds>(options.mount_time.time_since_epoch())
          .count());
  cache::ReadContext reads{d->client.get(), d->cache.get(), d->budget.get(), d->pool.get(),
                           nullptr, d->disk.get()};
  if (!a.read_only) {
    BFS_ASSIGN_OR_RETURN(d->spool, cache::Spool::Open(a.spool_dir, settings.config.bucket));
    d->ledgered = std::make_unique<cache::LedgeredClient>(*d->fenced, *d->spool);
    cache::WritebackOptions wb;
    wb.part_size = checked.part_size;
    wb.upload_parallelism = std::max(1u, a.upload_parallelism);
    wb.commit_parallelism = 2 * wb.upload_parallelism;
    d->writeback = std::make_unique<cache::Writeback>(
        cache::WriteContext{d->ledgered.get(), d->budget.get(), d->spool.get(), nullptr}, wb);
  }
  s3::ObjectClient& writes = d->ledgered ? static_cast<s3::ObjectClient&>(*d->ledgered) : *d->fenced;
  d->filesystem = std::make_unique<fs::Filesystem>(writes, reads, d->writeback.get(), options);
  Logger("fuse")->info(
      "bucket {} at {}: memory budget {}, block cache {} in blocks of {}, read-ahead up to {} "
      "with {} GETs in flight, metadata TTL {}s, {}{}",
      settings.config.bucket, settings.config.endpoint, cache::FormatBytes(budget_bytes),
      cache::FormatBytes(checked.cache_options.capacity_bytes),
      cache::FormatBytes(checked.block_size), cache::FormatBytes(checked.read_ahead),
      checked.read_parallelism,
      a.metadata_ttl, a.read_only ? "read-only" : "spool " + d->spool->directory(),
      d->disk ? ", disk cache " + d->disk->directory() : std::string());
  return d;
}

// The daemon's side of the control channel (mountd/coordinator.h is the other side).
nlohmann::json HandleDaemonRequest(Daemon& d, const MountArgs& a, const nlohmann::json& request) {
  using nlohmann::json;
  const std::string op = request.value("op", std::string());
  if (op == "status") {
    const auto fs_stats = d.filesystem->Stats();
    json out{{"ok", true},
             {"pid", getpid()},
             {"mounted", d.mounted.load()},
             {"recovering", d.recovering.load()},
             {"bucket", d.bucket},
             {"endpoint", d.endpoint},
             {"mountpoint", a.mountpoint},
             {"read_only", a.read_only},
             {"open_files", fs_stats.open_files},
             {"inodes", fs_stats.inodes},
             {"new_opens_stopped", d.filesystem->new_opens_stopped()},
             {"fenced", d.fence->closed()},
             {"fence_reason", d.fence->reason()},
             {"memory_budget_bytes", d.budget->capacity()},
             {"memory_used_bytes", d.budget->used()},
             {"memory_peak_bytes", d.budget->peak()},
             {"cache_bytes", d.cache->Stats().bytes_cached},
             {"cache_hits", d.cache->Stats().hits},
             {"cache_misses", d.cache->Stats().misses},
             {"disk_cache_bytes", d.disk ? d.disk->Stats().bytes : 0},
             {"disk_cache_hits", d.disk ? d.disk->Stats().hits : 0},
             {"credentials", d.credentials->Describe()}};
    if (!d.metrics_url.empty()) out["metrics_url"] = d.metrics_url;
    if (d.writeback) {
      const auto wb = d.writeback->GetStats();
      out["spool"] = d.spool->directory();
      out["dirty_files"] = wb.dirty_files;
      out["dirty_bytes"] = wb.dirty_bytes;
      out["uploads_in_flight"] = wb.commits_in_flight;
      out["failing_files"] = wb.failing_files;
      out["upload_error"] = wb.first_error;
      out["commits"] = wb.commits;
      out["failed_commits"] = wb.failed_commits;
      out["bytes_uploaded"] = wb.bytes_uploaded;
    }
    return out;
  }
  if (op == "lease") {
    d.fence->ExtendUntil(MonoTime(Duration(request.value("valid_until_ns", int64_t{0}))));
    d.lease_renewed_ns.store(RealClock().Now().time_since_epoch().count());
    return json{{"ok", true}, {"fenced", d.fence->closed()}};
  }
  if (op == "fence") {
    const std::string reason = request.value("reason", std::string("fenced by the coordinator"));
    d.fence->Close(reason);
    Logger("fuse")->error("writes are fenced from now on: {}", reason);
    return json{{"ok", true}};
  }
  if (op == "stop-opens") {
    d.filesystem->StopNewOpens(request.value("stop", true));
    return json{{"ok", true}};
  }
  if (op == "sync") {
    if (!d.writeback) return json{{"ok", true}};
    const auto deadline =
        RealClock().Now() + std::chrono::milliseconds(request.value("timeout_ms", int64_t{600000}));
    Status drained = d.writeback->Drain(deadline, request.value("closed_only", false));
    if (!drained.ok()) return json{{"ok", false}, {"error", drained.ToString()}};
    return json{{"ok", true}};
  }
  if (op == "reload") {
    if (request.contains("credentials") && request["credentials"].is_object()) {
      auto* fixed = dynamic_cast<s3::StaticCredentialsProvider*>(d.credentials.get());
      if (fixed == nullptr) {
        return json{{"ok", false},
                    {"error", "credentials come from " + d.credentials->Describe() +
                                  ", not from variables: update that file instead"}};
      }
      const json& c = request["credentials"];
      fixed->Set(s3::Credentials{c.value("access_key", std::string()),
                                 c.value("secret_key", std::string()),
                                 c.value("session_token", std::string())});
      return json{{"ok", true}};
    }
    Status reloaded = d.credentials->Reload();
    if (!reloaded.ok()) return json{{"ok", false}, {"error", reloaded.ToString()}};
    return json{{"ok", true}};
  }
  return json{{"ok", false}, {"error", "unknown request '" + op + "'"}};
}

// The daemon's state that lives in its parts, read at each scrape (common/metrics.h). The
// counters of the S3 client and the FUSE adapter register themselves.
void CollectDaemonMetrics(const Daemon& d, MetricsWriter& w) {
  w.Gauge("bucketfs_info", "Always 1; the labels say what is mounted", 1,
          {{"bucket", d.bucket}, {"version", BUCKETFS_VERSION_STRING}});
  w.Gauge("bucketfs_mounted", "1 while the kernel mount is in place", d.mounted.load() ? 1 : 0);
  const auto fs_stats = d.filesystem->Stats();
  w.Gauge("bucketfs_open_files", "Files open through the mount", fs_stats.open_files);
  w.Gauge("bucketfs_inodes", "Inodes the kernel holds references to", fs_stats.inodes);

  const auto budget = d.budget->Stats();
  w.Gauge("bucketfs_memory_budget_bytes", "The memory budget (--max-memory)", budget.capacity);
  w.Gauge("bucketfs_memory_used_bytes",
          "Bytes of the budget in use: cached blocks, read buffers, parts being uploaded",
          budget.used);
  w.Gauge("bucketfs_memory_peak_bytes", "Highest use of the budget since the mount",
          budget.peak);
  w.Gauge("bucketfs_memory_waiters", "Readers and writers waiting for room in the budget",
          budget.waiters);

  const auto cache = d.cache->Stats();
  w.Counter("bucketfs_cache_hits_total", "Block reads served from the block cache",
            cache.hits);
  w.Counter("bucketfs_cache_misses_total", "Block reads that had to fetch from S3",
            cache.misses);
  w.Counter("bucketfs_cache_coalesced_total",
            "Block reads that joined a fetch already in flight", cache.coalesced);
  w.Counter("bucketfs_cache_evictions_total", "Blocks evicted to make room", cache.evictions);
  w.Counter("bucketfs_cache_discarded_total",
            "Blocks dropped behind a sequential reader (the page cache holds them)",
            cache.discarded);
  w.Counter("bucketfs_cache_recycled_total",
            "Block fetches that reused a freed block's memory instead of fresh pages",
            cache.recycled);
  w.Counter("bucketfs_cache_fetch_failures_total", "Block fetches that failed",
            cache.fetch_failures);
  w.Gauge("bucketfs_cache_bytes", "Bytes held by the block cache", cache.bytes_cached);
  w.Gauge("bucketfs_cache_capacity_bytes", "The block cache's capacity", cache.capacity);
  if (d.disk) {
    const auto disk = d.disk->Stats();
    w.Counter("bucketfs_disk_cache_hits_total", "Blocks read from the disk cache (--cache-dir)",
              disk.hits);
    w.Counter("bucketfs_disk_cache_misses_total", "Blocks the disk cache did not have",
              disk.misses);
    w.Counter("bucketfs_disk_cache_evictions_total", "Blocks evicted from the disk cache",
              disk.evictions);
    w.Counter("bucketfs_disk_cache_corrupt_total",
              "Disk cache files found damaged or not matching (deleted, fetched again)",
              disk.corrupt);
    w.Counter("bucketfs_disk_cache_read_failures_total",
              "Disk cache reads that failed with an I/O error (read from S3 instead)",
              disk.read_failures);
    w.Counter("bucketfs_disk_cache_write_failures_total",
              "Blocks that could not be stored in the disk cache (disk full, I/O error)",
              disk.write_failures);
    w.Gauge("bucketfs_disk_cache_bytes", "Bytes held by the disk cache", disk.bytes);
    w.Gauge("bucketfs_disk_cache_capacity_bytes", "The disk cache's capacity (--cache-size)",
            disk.capacity);
  }

  if (d.writeback) {
    const auto wb = d.writeback->GetStats();
    w.Gauge("bucketfs_dirty_files", "Files written and not yet all in S3", wb.dirty_files);
    w.Gauge("bucketfs_dirty_bytes", "Size of the files not yet all in S3", wb.dirty_bytes);
    w.Gauge("bucketfs_upload_queue_depth",
            "Part uploads waiting for an upload slot (at most 4 x --upload-parallelism; writers "
            "wait beyond that)",
            wb.parts_queued);
    w.Gauge("bucketfs_commits_in_flight",
            "File commits (final part uploads and completion) running or waiting",
            wb.commits_in_flight);
    w.Gauge("bucketfs_failing_files",
            "Files whose last upload failed; retried in the background, data kept in the spool",
            wb.failing_files);
    constexpr const char* kCommitsHelp =
        "File commits by result: ok, failed (retried later, data kept in the spool), restarted "
        "(the file changed while it was being committed)";
    w.Counter("bucketfs_commits_total", kCommitsHelp, wb.commits, {{"result", "ok"}});
    w.Counter("bucketfs_commits_total", kCommitsHelp, wb.failed_commits, {{"result", "failed"}});
    w.Counter("bucketfs_commits_total", kCommitsHelp, wb.restarted_commits,
              {{"result", "restarted"}});
    w.Counter("bucketfs_uploaded_bytes_total", "Bytes of file data uploaded by commits",
              wb.bytes_uploaded);
  }

  // The lease is the coordinator's; the daemon sees it through its fence and the renewals
  // the coordinator passes on.
  const bool has_lease = d.lease_renewed_ns.load() != 0;
  const bool fenced = d.fence->closed();
  const char* state = !has_lease ? "none" : fenced ? "lost" : "held";
  for (const char* s : {"held", "lost", "none"}) {
    w.Gauge("bucketfs_lease_state",
            "1 for the lease's state: held (writes allowed), lost (writes fenced), none "
            "(read-only, or serve without a coordinator)",
            std::string_view(s) == state ? 1 : 0, {{"state", s}});
  }
  if (has_lease) {
    const MonoTime now = RealClock().Now();
    w.Gauge("bucketfs_lease_renew_age_seconds",
            "Seconds since the coordinator last passed on a renewed lease",
            std::chrono::duration<double>(now - MonoTime(Duration(d.lease_renewed_ns.load())))
                .count());
    w.Gauge("bucketfs_lease_valid_seconds",
            "Seconds the lease stays valid without another renewal (<= 0: fenced)",
            fenced ? 0.0 : std::chrono::duration<double>(d.fence->deadline() - now).count());
  }
}

// Runs the mount. `report` is called once: "" when the kernel mount is in place, or why not.
int RunMount(const MountArgs& a, const std::function<void(const std::string&)>& report_to_caller) {
  // Blocks and part buffers are mappings of their own (cache/mapped_buffer.h), so RSS
  // follows the memory budget whatever malloc does. What malloc serves are libcurl's
  // per-transfer buffers (512 KiB to receive, 1 MiB to send): with them mmapped, every GET
  // and part upload faulted in and zeroed fresh pages (31,000 faults per GiB read, 14% of
  // the daemon's perf samples), so they stay in the arenas and are reused; an arena gives
  // memory back past 8 MiB free. Fixed values: glibc's dynamic threshold would otherwise
  // move between the two behaviours as buffers come and go.
  mallopt(M_MMAP_THRESHOLD, 2 * 1024 * 1024);
  mallopt(M_TRIM_THRESHOLD, 8 * 1024 * 1024);

  // Under a coordinator, a failure before the mount is also written where it looks for it.
  auto report = [&](const std::string& error) {
    if (!error.empty() && !a.startup_error_file.empty()) {
      const int fd = open(a.startup_error_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                          0600);
      if (fd >= 0) {
        if (write(fd, error.data(), error.size()) < 0) {
          // The coordinator falls back to the exit status.
        }
        close(fd);
      }
    }
    report_to_caller(error);
  };

  std::string fsname;
  auto built = BuildDaemon(a, &fsname);
  if (!built.ok()) {
    report(built.status().ToString());
    return ExitCodeFor(built.status());
  }
  Daemon& d = **built;
  // Declared after `built`: scrapes stop before the daemon's parts are destroyed.
  std::unique_ptr<MetricsEndpoint> metrics;
  MetricsRegistry::CollectorHandle collector;
  if (!a.metrics_address.empty()) {
    collector = Metrics().AddCollector([&d](MetricsWriter& w) { CollectDaemonMetrics(d, w); });
    auto endpoint = MetricsEndpoint::Start(a.metrics_address, Metrics());
    if (!endpoint.ok()) {
      report(endpoint.status().ToString());
      return ExitCodeFor(endpoint.status());
    }
    metrics = std::move(*endpoint);
    d.metrics_url = metrics->url();  // Before the control server can read it.
  }
  std::unique_ptr<control::ControlServer> control;
  if (!a.control_socket.empty()) {
    auto server = control::ControlServer::Start(
        a.control_socket, [&d, &a](const nlohmann::json& request, control::Responder&) {
          return HandleDaemonRequest(d, a, request);
        });
    if (!server.ok()) {
      report(server.status().ToString());
      return ExitCodeFor(server.status());
    }
    control = std::move(*server);
  }
  if (d.writeback) {
    // What a previous daemon left: uploaded before the first file is served, so nobody
    // reads an old object that a closed file should have replaced. The control socket is
    // already up, so the coordinator's renewals keep the fence open meanwhile.
    d.recovering.store(true);
    if (const size_t recovered = d.writeback->Recover(); recovered > 0) {
      Logger("writeback")->info("{} file(s) from the previous mount are now in the bucket",
                                recovered);
    }
    d.recovering.store(false);
  }
  fs::SessionOptions session;
  session.mountpoint = a.mountpoint;
  session.fsname = fsname;
  session.read_only = a.read_only;
  session.allow_other = a.allow_other;
  session.debug = a.fuse_debug;
  session.max_threads = a.fuse_threads;
  bool mounted = false;
  Status st = fs::ServeMount(*d.filesystem, session, [&] {
    mounted = true;
    d.mounted.store(true);
    report("");
  });
  d.mounted.store(false);
  int rc = 0;
  if (!st.ok()) {
    if (!mounted) report(st.ToString());
    Logger("fuse")->error("{}", st.ToString());
    rc = 1;
  }
  if (d.writeback) {
    // Unmounted (or stopped by a signal): every closed file goes to S3 before we exit. A
    // file a program still had open with unclosed writes is half-written (a signal ended
    // the mount under it): uploading it could replace a good object with a torn one. It
    // stays in the spool, and the next mount keeps it in lost+found/, as after a crash.
    const auto deadline = RealClock().Now() + std::chrono::duration_cast<Duration>(
                                                  std::chrono::duration<double>(a.drain_timeout));
    Status drained = d.writeback->Drain(deadline, /*closed_only=*/true);
    if (!drained.ok()) {
      Logger("writeback")->error("unmounted with uploads unfinished: {}", drained.ToString());
      rc = 1;
    } else {
      Logger("writeback")->info("every written file is in the bucket");
    }
  }
  if (control) control->Stop();
  return rc;
}

// What the background child tells the waiting caller through the pipe: progress lines
// ("P<line>\n", printed as they come) and, last, the outcome ("R" then "ok" or the error,
// to the end of the pipe).
using ReportFn = std::function<void(const std::string&)>;

// The caller's signal while it waits: forwarded to the child, which stops waiting for a
// lease, or unmounts once it is up, instead of mounting behind the caller's back.
std::atomic<pid_t> g_background_child{0};
std::atomic<int> g_forwarded_signal{0};
void ForwardToBackgroundChild(int sig) {
  const int saved_errno = errno;
  g_forwarded_signal.store(sig);
  if (const pid_t child = g_background_child.load(); child > 0) kill(child, SIGTERM);
  errno = saved_errno;
}

// Forks before any thread exists (the client's event loop, the I/O pool): the child runs
// `body` detached (its own session, / as working directory) and tells the parent through a
// pipe how it goes, and when it is ready or why it failed. Returns the parent's exit status.
int RunInBackground(const std::string& log_file, const std::string& what,
                    const std::function<int(const ReportFn& report, const ReportFn& progress)>& body) {
  int fds[2];
  // Close-on-exec: the daemon the coordinator starts must not hold the write end, or the
  // caller would wait for its end of file until the daemon exits.
  if (pipe2(fds, O_CLOEXEC) != 0) {
    std::cerr << "bucketfs: pipe: " << strerror(errno) << "\n";
    return 1;
  }
  // A signal between the fork and the handler would end the caller and leave the child to
  // mount behind its back: held until the handler is in place.
  sigset_t held, previous;
  sigemptyset(&held);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&held, sig);
  sigprocmask(SIG_BLOCK, &held, &previous);
  pid_t pid = fork();
  if (pid < 0) {
    sigprocmask(SIG_SETMASK, &previous, nullptr);
    std::cerr << "bucketfs: fork: " << strerror(errno) << "\n";
    return 1;
  }
  if (pid > 0) {
    close(fds[1]);
    g_background_child.store(pid);
    struct sigaction sa {};
    sa.sa_handler = ForwardToBackgroundChild;
    sigemptyset(&sa.sa_mask);
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaction(sig, &sa, nullptr);
    sigprocmask(SIG_SETMASK, &previous, nullptr);
    std::string received, outcome;
    bool outcome_started = false;
    char buf[512];
    for (;;) {
      const ssize_t n = read(fds[0], buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;  // A forwarded signal; the child says the rest.
      if (n <= 0) break;
      received.append(buf, static_cast<size_t>(n));
      while (!outcome_started && !received.empty()) {
        if (received[0] == 'R') {
          outcome_started = true;
          outcome = received.substr(1);
          received.clear();
          break;
        }
        const size_t eol = received.find('\n');
        if (eol == std::string::npos) break;  // A progress line not complete yet.
        std::cerr << "bucketfs: " << received.substr(1, eol - 1) << std::endl;
        received.erase(0, eol + 1);
      }
      if (outcome_started && !received.empty()) {
        outcome += received;
        received.clear();
      }
    }
    close(fds[0]);
    g_background_child.store(0);  // Told: a signal from now on is the caller's own.
    const int forwarded = g_forwarded_signal.load();
    if (outcome == "ok") {
      if (forwarded == 0) return 0;
      std::cerr << "bucketfs: interrupted (" << strsignal(forwarded) << ") as the mount came "
                << "up: it is being unmounted again (see `bucketfs status`)\n";
      return 128 + forwarded;
    }
    // The child exits right after it reported a failure: its status is the cause's
    // (common/exit_code.h).
    int status = 0;
    const bool reaped = waitpid(pid, &status, 0) == pid;
    if (outcome.empty()) outcome = "the " + what + " exited before the mount was ready";
    std::cerr << "bucketfs: " << outcome << "\n";
    // A signal may have come while we waited for the child.
    if (const int signal_seen = g_forwarded_signal.load(); signal_seen != 0) return 128 + signal_seen;
    const int child_code = reaped && WIFEXITED(status) ? WEXITSTATUS(status) : 0;
    return child_code > kExitFailure && child_code <= kExitNoSpace ? child_code : kExitFailure;
  }
  close(fds[0]);
  sigprocmask(SIG_SETMASK, &previous, nullptr);
  setsid();
  if (chdir("/") != 0) _exit(1);
  // Detach at once, as daemons do: nothing may keep the caller's terminal or pipes open (a
  // caller reading our output would wait forever), and what we start inherits the same.
  // Logs go to --log-file; without one they are dropped (run with -f under a service
  // manager to keep them in its journal). Failures reach the caller through the pipe.
  {
    int devnull = open("/dev/null", O_RDWR);
    int log_fd = log_file.empty()
                     ? -1
                     : open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (devnull >= 0) {
      dup2(devnull, STDIN_FILENO);
      dup2(devnull, STDOUT_FILENO);
      dup2(log_fd >= 0 ? log_fd : devnull, STDERR_FILENO);
      if (devnull > STDERR_FILENO) close(devnull);
    }
    if (log_fd > STDERR_FILENO) close(log_fd);
  }
  // Progress lines and the outcome may come from different threads of `body`: one writer
  // at a time.
  std::mutex pipe_mu;
  int write_fd = fds[1];
  auto write_all = [&write_fd](const std::string& bytes) {
    if (write_fd < 0) return;
    if (write(write_fd, bytes.data(), bytes.size()) < 0) {
      // The parent is gone; nothing to tell.
    }
  };
  auto report = [&](const std::string& error) {
    std::lock_guard lock(pipe_mu);
    if (write_fd < 0) return;
    if (!error.empty()) Logger("mountd")->error("{}", error);
    write_all("R" + (error.empty() ? std::string("ok") : error));
    close(write_fd);
    write_fd = -1;
  };
  auto progress = [&](const std::string& line) {
    std::string one_line = line;
    std::replace(one_line.begin(), one_line.end(), '\n', ' ');
    std::lock_guard lock(pipe_mu);
    write_all("P" + one_line + "\n");
  };
  int rc = body(report, progress);
  if (write_fd >= 0) report("the " + what + " stopped before the mount was ready");
  _exit(rc);
}

std::string RuntimeDirOf(const MountArgs& a) {
  return a.runtime_dir.empty() ? control::RuntimeDir() : a.runtime_dir;
}

std::string HostName() {
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) != 0) return "unknown-host";
  return host;
}

// The coordinator (mountd/coordinator.h) of `bucketfs mount`.
int RunCoordinator(const MountArgs& a, const std::vector<std::string>& passthrough,
                   const std::function<void(const std::string&)>& report,
                   const std::function<void(const std::string&)>& progress = nullptr) {
  auto parts = BuildClient(a);
  if (!parts.ok()) {
    report(parts.status().ToString());
    return ExitCodeFor(parts.status());
  }
  const s3::BucketSettings& settings = parts->settings;
  mountd::CoordinatorOptions o;
  o.bucket = settings.config.bucket;
  SetLogContext("bucket", settings.config.bucket);
  o.alias = settings.alias.empty() ? settings.config.bucket : settings.alias;
  o.endpoint = settings.config.endpoint;
  o.mountpoint = a.mountpoint;
  o.runtime_dir = RuntimeDirOf(a);
  o.spool_dir = a.spool_dir + "/" + cache::SafeDirName(settings.config.bucket);  // As Spool.
  o.read_only = a.read_only;
  o.mount_timeout = std::chrono::duration_cast<Duration>(
      std::chrono::duration<double>(a.mount_timeout));
  o.signal_unmount_timeout = std::chrono::duration_cast<Duration>(
      std::chrono::duration<double>(a.drain_timeout));
  char exe[4096] = {};
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  o.daemon_argv = {n > 0 ? std::string(exe, static_cast<size_t>(n)) : "bucketfs", "serve",
                   o.alias, a.mountpoint, "-f"};
  o.daemon_argv.insert(o.daemon_argv.end(), passthrough.begin(), passthrough.end());
  o.lease.ttl = std::chrono::duration_cast<Duration>(std::chrono::duration<double>(a.lease_ttl));
  o.lease.margin =
      std::chrono::duration_cast<Duration>(std::chrono::duration<double>(a.lease_margin));
  o.lease.poll = std::min<Duration>(std::chrono::seconds(1), o.lease.ttl / 6);
  o.lease.wait_for_stale = !a.no_wait;
  const char* pod = std::getenv("POD_NAME");
  o.holder.host = HostName();
  o.holder.holder = !a.holder_id.empty() ? a.holder_id
                    : (pod != nullptr && *pod != '\0') ? std::string(pod)
                                                         : o.holder.host;
  o.holder.mountpoint = a.mountpoint;

  mountd::CoordinatorServices services;
  services.credentials = parts->credentials;
  if (auto fixed = std::dynamic_pointer_cast<s3::StaticCredentialsProvider>(parts->credentials)) {
    services.set_credentials = [fixed](const s3::Credentials& creds) {
      fixed->Set(creds);
      return Status::Ok();
    };
    services.daemon_environment = [fixed] {
      std::vector<std::pair<std::string, std::string>> vars;
      if (auto creds = fixed->Current(); creds.ok()) {
        vars = {{kHandedAccessKey, creds->access_key},
                {kHandedSecretKey, creds->secret_key},
                {kHandedSessionToken, creds->session_token}};
      }
      return vars;
    };
  }
  s3::CurlObjectClient* client = parts->client.get();
  services.presign_get = [client](const std::string& key, int ttl) {
    return client->PresignGet(key, ttl);
  };
  services.spool_holds_files = [root = a.spool_dir, bucket = settings.config.bucket] {
    return cache::Spool::HoldsFiles(root, bucket);
  };
  services.progress = progress;
  mountd::Coordinator coordinator(*client, std::move(services), std::move(o));
  return coordinator.Run(report);
}

// The absolute path of a mountpoint, without touching the mountpoint itself: a mount whose
// daemon died answers ENOTCONN (or hangs) to everything, and that is exactly when `status`,
// `unmount` and `mount` must still work. Resolves the parent and appends the last name.
Result<std::string> ResolveMountpoint(const std::string& path, int links_followed = 0) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  const size_t slash = p.rfind('/');
  const std::string parent = slash == std::string::npos ? "." : slash == 0 ? "/" : p.substr(0, slash);
  const std::string name = slash == std::string::npos ? p : p.substr(slash + 1);
  if (name.empty() || name == "." || name == "..") {
    char resolved[PATH_MAX];
    if (realpath(p.c_str(), resolved) == nullptr) {
      return Status(ErrorCode::kNotFound, "'" + path + "': " + strerror(errno));
    }
    return std::string(resolved);
  }
  char resolved_parent[PATH_MAX];
  if (realpath(parent.c_str(), resolved_parent) == nullptr) {
    return Status(ErrorCode::kNotFound, "'" + parent + "': " + strerror(errno));
  }
  const std::string base = resolved_parent;
  const std::string joined = (base == "/" ? "" : base) + "/" + name;
  // The last component is not stat()ed: a FUSE mount there may be dead (ENOTCONN) or hung
  // (a GETATTR nobody answers would hang `unmount --force`). But a symlink there is
  // followed: the kernel records the mount under the target, and the coordinator looks
  // for it (and for the files open in it) there. readlink() asks the file system nothing
  // (EINVAL for anything but a symlink).
  std::string target(PATH_MAX, '\0');
  const ssize_t n = ::readlink(joined.c_str(), target.data(), target.size());
  if (n >= 0) {
    if (links_followed >= 40) {
      return Status(ErrorCode::kInvalidArgument, "'" + path + "': " + strerror(ELOOP));
    }
    target.resize(static_cast<size_t>(n));
    if (target.empty() || target.front() != '/') target = base + "/" + target;
    return ResolveMountpoint(target, links_followed + 1);
  }
  return joined;
}

// The mount's control socket, or a message saying nothing is mounted there.
Result<std::string> ControlSocketFor(const std::string& runtime_dir, const std::string& path) {
  BFS_ASSIGN_OR_RETURN(std::string mountpoint, ResolveMountpoint(path));
  return mountd::ControlSocketPath(runtime_dir, mountpoint);
}

// Prints the coordinator's answer: its message on success, its error otherwise.
int PrintReply(const Result<nlohmann::json>& reply, const std::string& mountpoint) {
  if (!reply.ok()) {
    std::string advice;
    if (reply.status().code() == ErrorCode::kNotFound) {
      auto resolved = ResolveMountpoint(mountpoint);
      if (resolved.ok() && mountd::IsFuseMounted(*resolved)) {
        // Mounted, and nobody answers for it: its coordinator and daemon were killed (or it
        // was mounted with another --runtime-dir).
        advice = " (a FUSE filesystem is mounted there, but no bucketfs coordinator or daemon "
                 "answers for it: if they were killed, detach it with `fusermount3 -u -z " +
                 *resolved + "`; files closed before they died wait in the spool, and the next "
                 "`bucketfs mount` with it uploads them. If it was mounted with --runtime-dir, "
                 "pass the same here)";
      } else {
        advice = " (is a bucket mounted there with `bucketfs mount`?)";
      }
    }
    std::cerr << "bucketfs: " << mountpoint << ": " << reply.status().ToString() << advice
              << "\n";
    return 1;
  }
  if (!reply->value("ok", false)) {
    std::cerr << "bucketfs: " << reply->value("error", std::string("failed")) << "\n";
    return 1;
  }
  if (reply->contains("message")) std::cout << reply->value("message", std::string()) << "\n";
  return 0;
}

int Unmount(const std::string& runtime_dir, const std::string& mountpoint, double timeout,
            double sync_timeout, bool force) {
  auto socket = ControlSocketFor(runtime_dir, mountpoint);
  if (!socket.ok()) return PrintReply(socket.status(), mountpoint);
  nlohmann::json request{{"op", "unmount"},
                         {"timeout_ms", static_cast<int64_t>(timeout * 1000)},
                         {"sync_timeout_ms", static_cast<int64_t>(sync_timeout * 1000)},
                         {"force", force}};
  const auto wait = std::chrono::duration_cast<Duration>(
      std::chrono::duration<double>(timeout + 2 * sync_timeout + 180));
  auto reply = control::Call(*socket, request, wait, [](const nlohmann::json& progress) {
    std::cout << progress.value("message", std::string()) << std::endl;
  });
  return PrintReply(reply, mountpoint);
}

std::string Seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.0fs", s);
  return buf;
}

int Status_(const std::string& runtime_dir, const std::string& mountpoint, bool as_json) {
  auto socket = ControlSocketFor(runtime_dir, mountpoint);
  if (!socket.ok()) return PrintReply(socket.status(), mountpoint);
  auto reply = control::Call(*socket, {{"op", "status"}}, std::chrono::seconds(15));
  if (!reply.ok() || !reply->value("ok", false)) return PrintReply(reply, mountpoint);
  const nlohmann::json& r = *reply;
  // Healthy (exit 0, what a readiness probe asks): the daemon answers with the mount in place,
  // and a read-write mount holds its lease. Answering but not healthy: exit 2.
  const bool daemon_up = r.contains("daemon") && r["daemon"].value("ok", false) &&
                         r["daemon"].value("mounted", false) && !r["daemon"].value("fenced", false);
  const std::string lease_state = r.contains("lease") ? r["lease"].value("state", "") : "";
  const int health = daemon_up && (lease_state == "held" || lease_state == "none") ? 0 : 2;
  if (as_json) {
    std::cout << r.dump(2) << "\n";
    return health;
  }
  const nlohmann::json& d = r.contains("daemon") ? r["daemon"] : nlohmann::json::object();
  const nlohmann::json& l = r.contains("lease") ? r["lease"] : nlohmann::json::object();
  std::cout << "bucket:      " << r.value("bucket", "") << " at " << r.value("endpoint", "")
            << "\n";
  std::cout << "mountpoint:  " << r.value("mountpoint", "")
            << (r.value("read_only", false) ? " (read-only)" : "")
            << (r.value("unmounting", false) ? " — unmounting" : "") << "\n";
  std::cout << "processes:   coordinator " << r.value("coordinator_pid", 0) << ", daemon "
            << r.value("daemon_pid", 0) << " (restarted " << r.value("daemon_restarts", 0)
            << " times)\n";
  const std::string state = l.value("state", "none");
  std::cout << "lease:       " << state;
  if (state == "held") {
    std::cout << " by " << l.value("holder", "") << " on " << l.value("host", "") << ", epoch "
              << l.value("epoch", 0) << ", renewed " << l.value("renew_seq", 0)
              << " times, next renewal in " << Seconds(l.value("next_renewal_in_s", 0.0))
              << ", valid for " << Seconds(l.value("valid_for_s", 0.0));
  } else if (state == "lost") {
    std::cout << " — " << l.value("lost_reason", "") << " (writes fail with EROFS)";
  } else if (state == "none") {
    std::cout << " (read-only mounts take none)";
  }
  std::cout << "\n";
  if (!d.value("ok", false)) {
    std::cout << "daemon:      not answering: " << d.value("error", "") << "\n";
  } else {
    std::cout << "open files:  " << d.value("open_files", 0) << "\n";
    if (d.contains("dirty_files")) {
      std::cout << "dirty:       " << d.value("dirty_files", 0) << " file(s), "
                << cache::FormatBytes(d.value("dirty_bytes", uint64_t{0})) << ", "
                << d.value("uploads_in_flight", 0) << " commit(s) running or queued; spool "
                << d.value("spool", "") << "\n";
    }
    std::cout << "memory:      " << cache::FormatBytes(d.value("memory_used_bytes", uint64_t{0}))
              << " of " << cache::FormatBytes(d.value("memory_budget_bytes", uint64_t{0}))
              << " (cache " << cache::FormatBytes(d.value("cache_bytes", uint64_t{0})) << ")\n";
    if (d.contains("metrics_url")) {
      std::cout << "metrics:     " << d.value("metrics_url", "") << "\n";
    }
    if (d.value("fenced", false)) {
      std::cout << "fenced:      " << d.value("fence_reason", "") << "\n";
    }
    if (d.value("failing_files", 0) > 0) {
      std::cout << "upload errors: " << d.value("failing_files", 0) << " file(s), e.g. "
                << d.value("upload_error", "") << "\n";
    }
  }
  for (const auto& e : r.value("errors", std::vector<std::string>{})) {
    std::cout << "error:       " << e << "\n";
  }
  return health;
}

int Reload(const std::string& runtime_dir, const std::string& mountpoint) {
  auto socket = ControlSocketFor(runtime_dir, mountpoint);
  if (!socket.ok()) return PrintReply(socket.status(), mountpoint);
  auto status = control::Call(*socket, {{"op", "status"}}, std::chrono::seconds(15));
  if (!status.ok() || !status->value("ok", false)) return PrintReply(status, mountpoint);
  nlohmann::json request{{"op", "reload"}};
  // The keys this shell has for the mount's bucket or alias (a rotated Secret shows up as new
  // variables); without any, the mount re-reads its own source (its credentials file).
  auto settings = s3::ResolveBucket(status->value("alias", std::string()),
                                    s3::ProcessEnvironment());
  if (!settings.ok() && settings.status().code() == ErrorCode::kInvalidCredentials) {
    // Half a key in this shell (a key without its secret): say so, send nothing.
    std::cerr << "bucketfs: " << settings.status().message() << "\n";
    return 1;
  }
  if (settings.ok() && !settings->credentials.empty()) {
    request["credentials"] = {{"access_key", settings->credentials.access_key},
                              {"secret_key", settings->credentials.secret_key},
                              {"session_token", settings->credentials.session_token}};
  }
  return PrintReply(control::Call(*socket, request, std::chrono::seconds(30)), mountpoint);
}

int Share(const std::string& runtime_dir, const std::string& path, int ttl) {
  char resolved[PATH_MAX];
  if (realpath(path.c_str(), resolved) == nullptr) {
    std::cerr << "bucketfs: cannot share '" << path << "': " << strerror(errno) << "\n";
    return 1;
  }
  struct stat st {};
  if (stat(resolved, &st) != 0 || !S_ISREG(st.st_mode)) {
    std::cerr << "bucketfs: cannot share '" << path << "': only regular files can be shared\n";
    return 1;
  }
  // The mount it is under: the nearest ancestor with a coordinator socket.
  std::string dir = resolved;
  while (true) {
    const size_t slash = dir.rfind('/');
    dir = slash == 0 ? "/" : dir.substr(0, slash);
    const std::string socket = mountd::ControlSocketPath(runtime_dir, dir);
    if (access(socket.c_str(), F_OK) == 0) {
      const std::string key = std::string(resolved).substr(dir == "/" ? 1 : dir.size() + 1);
      auto reply = control::Call(socket, {{"op", "share"}, {"key", key}, {"ttl", ttl}},
                                 std::chrono::seconds(30));
      if (!reply.ok() || !reply->value("ok", false)) return PrintReply(reply, dir);
      std::cout << reply->value("url", std::string()) << "\n";
      return 0;
    }
    if (dir == "/") break;
  }
  std::cerr << "bucketfs: '" << path
            << "' is not under a bucket mounted with `bucketfs mount` (see `bucketfs status`)\n";
  return 1;
}

// The command-line tokens of `mount` that the daemon must see too: every option with its
// value, without positionals, -f and the coordinator's own options.
// `path` relative to the working directory made absolute; empty stays empty (not given).
std::string AbsolutePath(const std::string& path) {
  return path.empty() ? path : std::filesystem::absolute(path).lexically_normal().string();
}

std::vector<std::string> PassThrough(CLI::App* mount, const std::vector<std::string>& tokens) {
  static const std::set<std::string> kCoordinatorOnly = {
      "--runtime-dir", "--holder-id", "--lease-ttl", "--lease-margin", "--no-wait",
      "--mount-timeout", "-f", "--foreground", "--log-file"};
  // The daemon runs where the coordinator does, in / once in the background: paths given
  // relative to the caller's directory are handed on absolute.
  static const std::set<std::string> kPaths = {"--credentials-file", "--spool-dir", "--cache-dir",
                                               "--ca-bundle"};
  std::vector<std::string> out;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::string& t = tokens[i];
    if (t == "--") break;                        // Only positionals follow.
    if (t.size() < 2 || t[0] != '-') continue;  // A positional.
    const size_t eq = t.find('=');
    const std::string name = t.substr(0, eq);
    const CLI::Option* opt = mount->get_option_no_throw(name);
    // Flags (expected_min 0) take a value only as --flag=value; get_type_size() is 1 for a
    // parsed flag, so it cannot tell them apart.
    const bool takes_value = opt != nullptr && opt->get_expected_min() > 0;
    const bool value_next = takes_value && eq == std::string::npos;
    const bool path = kPaths.count(name) != 0;
    if (kCoordinatorOnly.count(name) == 0) {
      out.push_back(path && eq != std::string::npos ? name + "=" + AbsolutePath(t.substr(eq + 1))
                                                    : t);
      if (value_next && i + 1 < tokens.size()) {
        out.push_back(path ? AbsolutePath(tokens[i + 1]) : tokens[i + 1]);
      }
    }
    if (value_next) ++i;
  }
  return out;
}

void AddMountOptions(CLI::App* cmd, MountArgs& a) {
  cmd->add_option("bucket", a.name, "Bucket name or alias (default: $S3_BUCKET)");
  cmd->add_option("mountpoint", a.mountpoint, "Where to mount")->capture_default_str();
  cmd->add_option("--endpoint", a.endpoint, "S3 endpoint URL (default: $S3_ENDPOINT)");
  cmd->add_option("--region", a.region, "Region (default: $S3_REGION or us-east-1)");
  cmd->add_option("--ca-bundle", a.ca_bundle, "CA bundle for https endpoints");
  cmd->add_option("--addressing", a.addressing, "path or virtual (default: auto)")
      ->check(CLI::IsMember({"path", "virtual"}));
  cmd->add_option("--credentials-file", a.credentials_file,
                  "AWS-style credentials file, watched for rotation");
  cmd->add_option("--profile", a.profile, "Profile in the credentials file")
      ->capture_default_str();
  cmd->add_flag("--read-only", a.read_only, "Mount read-only (takes no lease)");
  cmd->add_flag("-f,--foreground", a.foreground, "Stay in the foreground");
  cmd->add_flag("--debug{all}", a.debug,
                "Debug logging: --debug for every component, --debug=s3,writeback for some "
                "(components: " + fmt::format("{}", fmt::join(LogComponents(), ", ")) + ")");
  cmd->add_option("--log-format", a.log_format,
                  "text (one line per event, key=value fields) or json (one object per line)")
      ->capture_default_str()
      ->check(CLI::IsMember({"text", "json"}));
  cmd->add_flag("--fuse-debug", a.fuse_debug, "libfuse's trace of every request");
  cmd->add_option("--log-level", a.log_level,
                  "trace|debug|info|warn|error, or per component: s3=debug,fuse=info")
      ->capture_default_str();
  cmd->add_option("--cache-dir", a.cache_dir,
                  "Keep blocks read on this local disk too, so rereads (every epoch, every "
                  "remount) cost no network; validated by ETag (off by default)");
  cmd->add_option("--cache-size", a.cache_size, "Most bytes the disk cache holds (LRU)")
      ->capture_default_str();
  cmd->add_option("--metrics-address", a.metrics_address,
                  "Serve Prometheus metrics at http://HOST:PORT/metrics (off by default; use "
                  "a loopback or pod-local address, e.g. 127.0.0.1:9464)");
  cmd->add_option("--log-file", a.log_file,
                  "Append the log here once it runs in the background");
  cmd->add_flag("!--no-allow-other", a.allow_other,
                "Only the mounting user may use the mount (default when not root)");
  cmd->add_option("--uid", a.uid, "Owner of files without x-amz-meta-uid")->capture_default_str();
  cmd->add_option("--gid", a.gid, "Group of files without x-amz-meta-gid")->capture_default_str();
  cmd->add_option("--file-mode", a.file_mode, "Mode of files without x-amz-meta-mode")
      ->capture_default_str();
  cmd->add_option("--dir-mode", a.dir_mode, "Mode of directories without x-amz-meta-mode on their marker")->capture_default_str();
  cmd->add_option("--metadata-ttl", a.metadata_ttl,
                  "Seconds attributes, entries and listings are cached")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 86400.0));
  cmd->add_option("--max-memory", a.max_memory,
                  "Memory budget for cached and in-flight data (default: a quarter of the "
                  "cgroup limit or RAM, 64M..4G)");
  cmd->add_option("--block-size", a.block_size,
                  "Cache block size, the size of one sequential GET (default: 16M, or 8M or 4M "
                  "when the memory budget's block cache holds fewer than 16 such blocks)");
  cmd->add_option("--read-ahead", a.read_ahead, "Largest read-ahead window per file")
      ->capture_default_str();
  cmd->add_option("--read-parallelism", a.read_parallelism,
                  "Ranged GETs in flight per file being read sequentially (default: 64 MiB "
                  "worth, at most 8: 4 of 16M blocks)");
  cmd->add_flag("--random-fill", a.random_fill,
                "Files read at random that fit in half the cache fill whole blocks in the "
                "background (many more IOPS on re-reads; slower cold random reads)");
  cmd->add_option("--io-threads", a.io_threads, "Threads for background S3 requests")
      ->capture_default_str()
      ->check(CLI::Range(1u, 1024u));
  cmd->add_option("--fuse-threads", a.fuse_threads, "Most threads serving the kernel")
      ->capture_default_str()
      ->check(CLI::Range(1u, 1024u));
  cmd->add_flag("--unsigned-payload", a.unsigned_payload,
                "Send UNSIGNED-PAYLOAD instead of hashing bodies (only over https)");
  cmd->add_option("--spool-dir", a.spool_dir,
                  "Local directory where written data waits for its upload (survives a "
                  "daemon crash; one per mount)")
      ->capture_default_str();
  cmd->add_option("--part-size", a.part_size,
                  "Multipart part size (grows past 500 parts, so 5 TiB fits)")
      ->capture_default_str();
  cmd->add_option("--upload-parallelism", a.upload_parallelism,
                  "Part uploads in flight across all files")
      ->capture_default_str()
      ->check(CLI::Range(1u, 256u));
  cmd->add_flag("--sync-on-close", a.sync_on_close,
                "close() returns only once the file is in the bucket, as fsync() does");
  cmd->add_option("--drain-timeout", a.drain_timeout,
                  "Seconds an unmount (or SIGTERM) waits for open files and for uploads; the "
                  "rest resume on the next mount")
      ->capture_default_str();
  // The coordinator's own.
  cmd->add_option("--runtime-dir", a.runtime_dir,
                  "Where the control sockets live (default: $BUCKETFS_RUNTIME_DIR, "
                  "/run/bucketfs for root, else $XDG_RUNTIME_DIR/bucketfs)");
  cmd->add_option("--holder-id", a.holder_id,
                  "This pod's name in the lease (default: $POD_NAME, else the host name)");
  cmd->add_option("--lease-ttl", a.lease_ttl,
                  "Seconds the lease lasts unrenewed (renewed every third of it)")
      ->capture_default_str()
      ->check(CLI::Range(3.0, 3600.0));
  cmd->add_option("--lease-margin", a.lease_margin,
                  "Extra seconds an abandoned lease must stay unchanged before it is taken "
                  "over (after the TTL)")
      ->capture_default_str()
      ->check(CLI::Range(2.0, 3600.0));
  cmd->add_flag("--no-wait", a.no_wait,
                "Fail at once when another pod holds the lease, instead of watching whether "
                "it is abandoned");
  cmd->add_option("--mount-timeout", a.mount_timeout,
                  "Seconds to wait for the daemon to mount")
      ->capture_default_str();
}

}  // namespace
}  // namespace bucketfs

int main(int argc, char** argv) {
  using namespace bucketfs;
  CLI::App app{"bucketfs: mount an S3 bucket as a filesystem, one pod at a time.\n"
               "Settings come from flags or the platform's variables: S3_ENDPOINT, S3_REGION, "
               "S3_BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY, S3_BUCKET_<ALIAS>[_ACCESS_KEY|"
               "_SECRET_KEY], and the AWS_* ones."};
  app.require_subcommand(1);
  MountArgs a;
  CLI::App* mount = app.add_subcommand(
      "mount",
      "Mount a bucket (default $S3_BUCKET at /mnt-workspace): take the single-pod lease, start "
      "the daemon, return once the mount answers");
  AddMountOptions(mount, a);
  MountArgs serve_args;
  CLI::App* serve = app.add_subcommand(
      "serve",
      "Run the FUSE daemon alone, without coordinator or lease (what `mount` runs; for tests, "
      "benchmarks and debugging)");
  AddMountOptions(serve, serve_args);
  serve->add_option("--control-socket", serve_args.control_socket,
                    "Serve the coordinator's requests here");
  serve->add_option("--startup-error-file", serve_args.startup_error_file,
                    "Write why the mount failed here");
  serve->add_option("--lease-valid-until-ns", serve_args.lease_valid_until_ns,
                    "Fence writes at this CLOCK_MONOTONIC time unless the coordinator extends it");

  std::string runtime_dir;
  std::string target = "/mnt-workspace";
  double timeout = 60, sync_timeout = 600;
  bool force = false, as_json = false;
  CLI::App* unmount = app.add_subcommand(
      "unmount",
      "Stop new opens, wait for open files to close (naming the processes holding them), "
      "upload every dirty file, release the lease, unmount");
  unmount->add_option("mountpoint", target, "The mount")->capture_default_str();
  unmount->add_option("--timeout", timeout, "Seconds to wait for open files to close")
      ->capture_default_str();
  unmount->add_option("--sync-timeout", sync_timeout, "Seconds to wait for uploads")
      ->capture_default_str();
  unmount->add_flag("--force",
                    force, "After the timeouts, detach the mount anyway; data not yet uploaded "
                           "stays in the spool for the next mount");
  unmount->add_option("--runtime-dir", runtime_dir, "Where the control sockets live");
  CLI::App* status = app.add_subcommand(
      "status",
      "Show the mount: lease, open files, dirty data, uploads, memory, errors. Exit 0: mounted "
      "and healthy (lease held, or read-only); 2: answering but not (lease lost, daemon down); "
      "1: nothing mounted there");
  status->add_option("mountpoint", target, "The mount")->capture_default_str();
  status->add_flag("--json", as_json, "Print JSON");
  status->add_option("--runtime-dir", runtime_dir, "Where the control sockets live");
  CLI::App* reload = app.add_subcommand(
      "reload",
      "Re-read credentials without remounting: the S3_* variables of this shell for the "
      "mount's bucket or alias, else the mount's credentials file (SIGHUP to the "
      "coordinator does the latter)");
  reload->add_option("mountpoint", target, "The mount")->capture_default_str();
  reload->add_option("--runtime-dir", runtime_dir, "Where the control sockets live");
  std::string share_path;
  int share_ttl = 900;
  CLI::App* share = app.add_subcommand(
      "share", "Print a presigned GET URL for a file under a mount");
  share->add_option("path", share_path, "The file")->required();
  share->add_option("--ttl", share_ttl, "Seconds the URL is valid (at most 604800, 7 days)")
      ->capture_default_str();
  share->add_option("--runtime-dir", runtime_dir, "Where the control sockets live");

  std::vector<std::string> tokens(argv + 1, argv + argc);
  CLI11_PARSE(app, argc, argv);
  if (runtime_dir.empty()) runtime_dir = control::RuntimeDir();

  if (*unmount) return Unmount(runtime_dir, target, timeout, sync_timeout, force);
  if (*status) return Status_(runtime_dir, target, as_json);
  if (*reload) return Reload(runtime_dir, target);
  if (*share) {
    if (share_ttl < 1 || share_ttl > 604800) {
      std::cerr << "bucketfs: --ttl " << share_ttl
                << " is out of range: a presigned URL lasts 1 s to 7 days (604800 s)\n";
      return kExitUsage;
    }
    return Share(runtime_dir, share_path, share_ttl);
  }

  MountArgs& m = *serve ? serve_args : a;
  if (!m.metrics_address.empty()) {
    if (auto address = ParseHostPort(m.metrics_address); !address.ok()) {
      std::cerr << "bucketfs: --metrics-address: " << address.status().ToString() << "\n";
      return kExitUsage;
    }
  }
  std::string log_spec = m.log_level;
  if (!m.debug.empty()) {
    auto debug = DebugLevelSpec(m.debug);
    if (!debug.ok()) {
      std::cerr << "bucketfs: --debug: " << debug.status().ToString() << "\n";
      return kExitUsage;
    }
    log_spec += "," + *debug;
  }
  if (Status levels = ConfigureLogging(log_spec); !levels.ok()) {
    std::cerr << "bucketfs: " << levels.message() << "\n";
    return kExitUsage;
  }
  if (auto checked = CheckMountArgs(m); !checked.ok()) {
    std::cerr << "bucketfs: " << checked.status().message() << "\n";
    return kExitUsage;
  }
  // In the background the coordinator and the daemon run in / (RunInBackground): a relative
  // path must mean what it meant here.
  for (std::string* path : {&m.credentials_file, &m.spool_dir, &m.cache_dir, &m.ca_bundle,
                            &m.log_file, &m.runtime_dir, &m.control_socket,
                            &m.startup_error_file}) {
    *path = AbsolutePath(*path);
  }
  if (!m.log_file.empty() && !m.foreground) {
    // In the background a log that cannot be opened would be dropped without a word.
    const int fd = open(m.log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) {
      std::cerr << "bucketfs: --log-file " << m.log_file << ": " << strerror(errno) << "\n";
      return kExitUsage;
    }
    close(fd);
  }
  if (Status format = ConfigureLogFormat(m.log_format); !format.ok()) {
    std::cerr << "bucketfs: --log-format: " << format.ToString() << "\n";
    return kExitUsage;
  }
  struct stat st {};
  auto resolved = ResolveMountpoint(m.mountpoint);
  const bool dead_mount = stat(m.mountpoint.c_str(), &st) != 0 && errno == ENOTCONN;
  if (!resolved.ok() || (!dead_mount && (stat(m.mountpoint.c_str(), &st) != 0 ||
                                         !S_ISDIR(st.st_mode)))) {
    std::cerr << "bucketfs: mountpoint '" << m.mountpoint
              << "' is not an existing directory: create it with mkdir -p\n";
    return kExitUsage;
  }
  if (dead_mount && *serve) {
    std::cerr << "bucketfs: '" << m.mountpoint << "' is a mount whose daemon is gone "
              << "(Transport endpoint is not connected): detach it with `fusermount3 -u -z "
              << m.mountpoint << "` (`bucketfs mount` does that itself)\n";
    return kExitUsage;
  }
  m.mountpoint = *resolved;
  if (*serve) {
    if (m.foreground) {
      return RunMount(m, [](const std::string& error) {
        if (!error.empty()) std::cerr << "bucketfs: " << error << "\n";
      });
    }
    return RunInBackground(m.log_file, "daemon", [&m](const auto& report, const auto&) {
      return RunMount(m, report);
    });
  }
  // `mount`: the tokens after "mount" are the ones the daemon gets too.
  std::vector<std::string> mount_tokens;
  auto it = std::find(tokens.begin(), tokens.end(), "mount");
  if (it != tokens.end()) mount_tokens.assign(it + 1, tokens.end());
  const auto passthrough = PassThrough(mount, mount_tokens);
  if (m.foreground) {
    // In the foreground under systemd (Type=notify): ready once the mount answers. Without
    // $NOTIFY_SOCKET sd_notify() does nothing.
    return RunCoordinator(m, passthrough, [&m](const std::string& error) {
      if (!error.empty()) {
        std::cerr << "bucketfs: " << error << "\n";
        return;
      }
      const std::string notice = "READY=1\nSTATUS=serving " + m.mountpoint;
      sd_notify(0, notice.c_str());
    });
  }
  return RunInBackground(m.log_file, "coordinator", [&](const auto& report, const auto& progress) {
    return RunCoordinator(m, passthrough, report, progress);
  });
}
