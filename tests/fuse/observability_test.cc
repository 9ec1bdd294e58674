// What an operator sees of a running mount: the Prometheus endpoint (--metrics-address) and
// the structured log (--log-format json, --debug=COMPONENTS), through a real mount on the
// test's Ceph RGW. The exposition is parsed by prometheus_client (Python), an independent
// parser, and the data the counters describe is checked with boto3.
#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "common/exit_code.h"
#include "tests/support/eventually.h"
#include "tests/support/metrics_scrape.h"
#include "tests/support/mounted_bucket.h"
#include "tests/support/s3_test_env.h"

namespace bucketfs::testing {
namespace {

using nlohmann::json;
constexpr uint64_t kMiB = 1ull << 20;

class ObservabilityTest : public S3IntegrationTest {
 protected:
  // The endpoint's URL, from the daemon's log line "metrics at URL".
  static std::string MetricsUrl(const MountedBucket& m) {
    std::smatch match;
    const std::string log = m.Log();
    static const std::regex kLine("metrics at (http://127\\.0\\.0\\.1:[0-9]+/metrics)");
    if (!std::regex_search(log, match, kLine)) {
      ADD_FAILURE() << "no metrics URL in the log:\n" << log;
      return {};
    }
    return match[1];
  }

  void PutPattern(const std::string& key, uint64_t seed, uint64_t size) {
    Boto3(std::string(kPatternPython) +
          fmt::format("s3.upload_fileobj(PatternReader({}, {}), bucket, '{}')\n", seed, size, key));
  }

  static void ReadAll(const std::string& path, uint64_t expect_size) {
    const int fd = open(path.c_str(), O_RDONLY);
    ASSERT_GE(fd, 0) << path << ": " << strerror(errno);
    std::string buf(kMiB, '\0');
    uint64_t total = 0;
    for (;;) {
      const ssize_t n = read(fd, buf.data(), buf.size());
      ASSERT_GE(n, 0) << strerror(errno);
      if (n == 0) break;
      total += static_cast<uint64_t>(n);
    }
    close(fd);
    EXPECT_EQ(total, expect_size);
  }
};

TEST_F(ObservabilityTest, MetricsEndpointCountersMoveWithReadsAndWrites) {
  // An object larger than the block cache (3/4 of 64 MiB): read through a cache that cycles.
  const uint64_t object_size = 80 * kMiB;
  PutPattern("data/weights.bin", 7, object_size);
  MountedBucket m(*server_, bucket_);
  ASSERT_TRUE(m.Mount({"--metrics-address", "127.0.0.1:0", "--max-memory", "64M"}));
  const std::string url = MetricsUrl(m);
  ASSERT_FALSE(url.empty());

  const MetricSamples before = ScrapeMetrics(url);
  ASSERT_FALSE(before.empty());
  EXPECT_EQ(SumSamples(before, "bucketfs_memory_budget_bytes"), 64.0 * kMiB);
  EXPECT_EQ(SumSamples(before, "bucketfs_mounted"), 1);
  EXPECT_EQ(SumSamples(before, "bucketfs_info", {{"bucket", bucket_}}), 1);
  // `serve` alone has no coordinator, hence no lease.
  EXPECT_EQ(SumSamples(before, "bucketfs_lease_state", {{"state", "none"}}), 1);
  EXPECT_EQ(SumSamples(before, "bucketfs_lease_state", {{"state", "held"}}), 0);

  // Read the object; write a new file and make it durable; look up a missing name.
  ReadAll(m.Path("data/weights.bin"), object_size);
  const std::string written = Pattern(3, 0, 10 * kMiB);
  {
    const int fd = open(m.Path("out.bin").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(fd, 0) << strerror(errno);
    ASSERT_EQ(write(fd, written.data(), written.size()), static_cast<ssize_t>(written.size()));
    ASSERT_EQ(fsync(fd), 0) << strerror(errno);
    ASSERT_EQ(close(fd), 0) << strerror(errno);
  }
  struct stat st {};
  EXPECT_NE(stat(m.Path("no-such-file").c_str(), &st), 0);

  // The claim the counters make is true: boto3 sees the object written.
  EXPECT_EQ(Boto3("print(s3.head_object(Bucket=bucket, Key='out.bin')['ContentLength'])\n"),
            std::to_string(written.size()) + "\n");

  MetricSamples after;
  // Gauges settle once the upload's bookkeeping is done (fsync returned after S3 had it).
  EXPECT_TRUE(Eventually([&] {
    after = ScrapeMetrics(url);
    return SumSamples(after, "bucketfs_dirty_bytes") == 0 &&
           SumSamples(after, "bucketfs_dirty_files") == 0;
  })) << "dirty bytes "
      << SumSamples(after, "bucketfs_dirty_bytes");
  auto delta = [&](const std::string& name, const std::map<std::string, std::string>& want = {}) {
    return SumSamples(after, name, want) - SumSamples(before, name, want);
  };

  // FUSE: bytes through read() and write(), and each operation's latency histogram.
  EXPECT_EQ(delta("bucketfs_read_bytes_total"), static_cast<double>(object_size));
  EXPECT_EQ(delta("bucketfs_written_bytes_total"), static_cast<double>(written.size()));
  EXPECT_GT(delta("bucketfs_fuse_operation_duration_seconds_count", {{"operation", "read"}}), 0);
  EXPECT_GT(delta("bucketfs_fuse_operation_duration_seconds_count", {{"operation", "write"}}), 0);
  EXPECT_GE(delta("bucketfs_fuse_operation_duration_seconds_count", {{"operation", "fsync"}}), 1);
  EXPECT_GE(delta("bucketfs_fuse_errors_total", {{"operation", "lookup"}, {"errno", "ENOENT"}}), 1);

  // S3: requests by operation and status, their latencies, and the bytes moved.
  EXPECT_GT(
      delta("bucketfs_s3_requests_total", {{"operation", "GetObject"}, {"status", "206"}}) +
          delta("bucketfs_s3_requests_total", {{"operation", "GetObject"}, {"status", "200"}}),
      0);
  EXPECT_GT(
      delta("bucketfs_s3_requests_total", {{"operation", "PutObject"}, {"status", "200"}}) +
          delta("bucketfs_s3_requests_total", {{"operation", "UploadPart"}, {"status", "200"}}),
      0);
  EXPECT_GT(delta("bucketfs_s3_request_duration_seconds_count", {{"operation", "GetObject"}}), 0);
  EXPECT_GE(delta("bucketfs_s3_received_bytes_total"), static_cast<double>(object_size));
  EXPECT_GE(delta("bucketfs_s3_sent_bytes_total"), static_cast<double>(written.size()));

  // Caches and memory: blocks fetched (misses), read-ahead served (hits), the blocks read
  // dropped behind the reader and their memory reused, and the budget never exceeded.
  EXPECT_GT(delta("bucketfs_cache_misses_total"), 0);
  EXPECT_GT(delta("bucketfs_cache_hits_total"), 0);
  EXPECT_GT(delta("bucketfs_cache_discarded_total"), 0);
  EXPECT_GT(delta("bucketfs_cache_recycled_total"), 0);
  EXPECT_LE(SumSamples(after, "bucketfs_cache_bytes"),
            SumSamples(after, "bucketfs_cache_capacity_bytes"));
  EXPECT_LE(SumSamples(after, "bucketfs_memory_peak_bytes"), 64.0 * kMiB);
  EXPECT_GT(SumSamples(after, "bucketfs_memory_peak_bytes"), 0);

  // Writeback: one commit, its bytes, nothing left queued or failing.
  EXPECT_GE(delta("bucketfs_commits_total", {{"result", "ok"}}), 1);
  EXPECT_GE(delta("bucketfs_uploaded_bytes_total"), static_cast<double>(written.size()));
  EXPECT_EQ(SumSamples(after, "bucketfs_upload_queue_depth"), 0);
  EXPECT_EQ(SumSamples(after, "bucketfs_failing_files"), 0);
  EXPECT_EQ(m.Unmount(), 0) << m.Log();
}

TEST_F(ObservabilityTest, ASequentialReadLeavesTheCacheHoldingAboutAWindowNotTheFile) {
  // The budget has room for the whole file: only drop-behind keeps the cache small.
  const uint64_t object_size = 256 * kMiB;
  PutPattern("data/shard.bin", 9, object_size);
  MountedBucket m(*server_, bucket_);
  // 4 MiB blocks (not the default's 16): enough of them for the counts below to mean much.
  ASSERT_TRUE(m.Mount(
      {"--metrics-address", "127.0.0.1:0", "--max-memory", "1G", "--block-size", "4M"}));
  const std::string url = MetricsUrl(m);
  ASSERT_FALSE(url.empty());

  const int fd = open(m.Path("data/shard.bin").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0) << strerror(errno);
  std::string buf(kMiB, '\0');
  uint64_t total = 0;
  int mismatches = 0;
  for (;;) {
    const ssize_t n = read(fd, buf.data(), buf.size());
    ASSERT_GE(n, 0) << strerror(errno);
    if (n == 0) break;
    if (buf.compare(0, static_cast<size_t>(n), Pattern(9, total, static_cast<size_t>(n))) != 0) {
      ++mismatches;
    }
    total += static_cast<uint64_t>(n);
  }
  close(fd);
  EXPECT_EQ(total, object_size);
  EXPECT_EQ(mismatches, 0) << "MiB chunks that differ from what boto3 wrote";

  const MetricSamples after = ScrapeMetrics(url);
  // 64 blocks of 4 MiB: all but the last two dropped behind the reader, their memory reused.
  EXPECT_GE(SumSamples(after, "bucketfs_cache_discarded_total"), 50);
  EXPECT_GE(SumSamples(after, "bucketfs_cache_recycled_total"), 30);
  // The 64 MiB window, the blocks being read and kept behind, and at most 16 spare blocks:
  // well under the 256 MiB a cache keeping every block read would have held.
  EXPECT_LE(SumSamples(after, "bucketfs_memory_peak_bytes"), 192.0 * kMiB);
  EXPECT_LE(SumSamples(after, "bucketfs_cache_bytes"), 160.0 * kMiB);
  EXPECT_EQ(m.Unmount(), 0) << m.Log();
}

// The block size follows the memory budget unless given: 16 MiB GETs (four in flight) when
// the block cache holds sixteen of them, smaller blocks for a small budget.
TEST_F(ObservabilityTest, TheDefaultBlockSizeFollowsTheMemoryBudget) {
  PutPattern("sized.bin", 3, 3 * kMiB);
  for (const auto& [budget, says] :
       {std::pair<std::string, std::string>{"4G", "in blocks of 16.0 MiB, read-ahead up to "
                                                  "64.0 MiB with 4 GETs in flight"},
        {"256M", "in blocks of 8.0 MiB, read-ahead up to 64.0 MiB with 8 GETs in flight"},
        {"64M", "in blocks of 4.0 MiB, read-ahead up to 64.0 MiB with 8 GETs in flight"}}) {
    MountedBucket m(*server_, bucket_);
    ASSERT_TRUE(m.Mount({"--max-memory", budget}));
    EXPECT_TRUE(ReadFile(m.Path("sized.bin")) == Pattern(3, 0, 3 * kMiB)) << budget;
    EXPECT_EQ(m.Unmount(), 0) << m.Log();
    EXPECT_NE(m.Log().find(says), std::string::npos) << budget << "\n" << m.Log();
  }
}

TEST_F(ObservabilityTest, JsonLogLinesCarryBucketKeyRequestIdAndLatency) {
  PutPattern("logs/a b.txt", 11, 5000);
  MountedBucket m(*server_, bucket_);
  ASSERT_TRUE(m.Mount({"--log-format", "json", "--debug=s3"}));
  ReadAll(m.Path("logs/a b.txt"), 5000);
  ASSERT_EQ(m.Unmount(), 0) << m.Log();

  const std::string log = m.Log();
  std::stringstream lines(log);
  std::string line;
  int parsed = 0;
  bool saw_request = false;
  bool saw_fuse_debug = false;
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    json j = json::parse(line, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << "not a JSON line: " << line;
    ++parsed;
    EXPECT_TRUE(j.contains("ts") && j.contains("level") && j.contains("component") &&
                j.contains("msg"))
        << line;
    EXPECT_EQ(j.value("bucket", ""), bucket_) << line;
    // --debug=s3: debug lines of the s3 component only.
    if (j.value("level", "") == "debug" && j.value("component", "") != "s3") {
      saw_fuse_debug = true;
    }
    if (j.value("component", "") == "s3" && j.value("op", "") == "GetObject" &&
        j.value("key", "") == "logs/a b.txt") {
      saw_request = true;
      EXPECT_FALSE(j.value("request_id", "").empty()) << line;
      EXPECT_TRUE(j["latency_ms"].is_number()) << line;
      EXPECT_TRUE(j["status"].is_number()) << line;
    }
  }
  EXPECT_GT(parsed, 0);
  EXPECT_TRUE(saw_request) << "no structured line for the GET of the key:\n" << log;
  EXPECT_FALSE(saw_fuse_debug) << "--debug=s3 turned on another component's debug:\n" << log;
  // Credentials never appear, whatever the format.
  EXPECT_EQ(log.find(server_->secret_key), std::string::npos);
  EXPECT_EQ(log.find("Signature="), std::string::npos);
}

// --cache-dir: blocks read once come from local disk on the next mount (no GET at all, as
// the metrics show), and an object replaced in S3 is read anew, never from the old blocks.
TEST_F(ObservabilityTest, TheDiskCacheServesARemountWithoutS3AndNeverAReplacedObject) {
  const uint64_t size = 24 * kMiB + 5;
  PutPattern("weights/model.bin", 21, size);
  const std::string cache_dir = fmt::format("/tmp/bfs-dc-{}-{}", getpid(), bucket_);
  const std::vector<std::string> args = {"--cache-dir", cache_dir, "--cache-size", "1G",
                                         "--metrics-address", "127.0.0.1:0", "--block-size",
                                         "4M"};
  auto mount_and_read = [&](MetricSamples* metrics) {
    MountedBucket m(*server_, bucket_);
    if (!m.Mount(args)) return std::string();
    const std::string bytes = ReadFile(m.Path("weights/model.bin"));
    *metrics = ScrapeMetrics(MetricsUrl(m));
    EXPECT_EQ(m.Unmount(), 0) << m.Log();
    return bytes;
  };
  MetricSamples first, second, third;
  EXPECT_TRUE(mount_and_read(&first) == Pattern(21, 0, size)) << "first read differs";
  EXPECT_GT(SumSamples(first, "bucketfs_s3_requests_total", {{"operation", "GetObject"}}), 0);
  EXPECT_GT(SumSamples(first, "bucketfs_disk_cache_bytes"), static_cast<double>(size));

  EXPECT_TRUE(mount_and_read(&second) == Pattern(21, 0, size)) << "reread from disk differs";
  EXPECT_EQ(SumSamples(second, "bucketfs_s3_requests_total", {{"operation", "GetObject"}}), 0)
      << "the remount read the object from S3 again";
  EXPECT_GE(SumSamples(second, "bucketfs_disk_cache_hits_total"), 6);  // 24 MiB of 4 MiB blocks.

  // Replaced by another client: the new version's ETag finds nothing on disk.
  PutPattern("weights/model.bin", 22, size);
  EXPECT_TRUE(mount_and_read(&third) == Pattern(22, 0, size)) << "served the replaced version";
  EXPECT_GT(SumSamples(third, "bucketfs_s3_requests_total", {{"operation", "GetObject"}}), 0);
  EXPECT_EQ(SumSamples(third, "bucketfs_disk_cache_corrupt_total"), 0);
  std::error_code ec;
  std::filesystem::remove_all(cache_dir, ec);
}

// A shell's `printf x > f` closes the file's first descriptor (a FLUSH) before it writes
// through the second. The commit waits for the RELEASE, so each file is one PUT of its
// bytes: no empty object is uploaded first (the kernel's real FLUSH/RELEASE order, counted
// by the daemon's metrics and the bytes checked with boto3).
TEST_F(ObservabilityTest, AShellRedirectionUploadsEachFileOnce) {
  MountedBucket m(*server_, bucket_);
  ASSERT_TRUE(m.Mount({"--metrics-address", "127.0.0.1:0"}));
  const std::string url = MetricsUrl(m);
  ASSERT_FALSE(url.empty());
  constexpr int kFiles = 20;
  const MetricSamples before = ScrapeMetrics(url);
  const CommandResult wrote = RunCommand(fmt::format(
      "set -e; for i in $(seq 1 {}); do printf 'file %s' $i > {}/redirect-$i.txt; done", kFiles,
      m.Path("")));
  ASSERT_EQ(wrote.exit_code, 0) << wrote.output;
  MetricSamples after;
  ASSERT_TRUE(Eventually(
      [&] {
        after = ScrapeMetrics(url);
        return SumSamples(after, "bucketfs_dirty_files") == 0;
      },
      std::chrono::seconds(30)));
  const auto puts = [](const MetricSamples& samples) {
    return SumSamples(samples, "bucketfs_s3_requests_total", {{"operation", "PutObject"}});
  };
  EXPECT_EQ(puts(after) - puts(before), kFiles);
  const std::string listed = Boto3(
      "for o in s3.list_objects_v2(Bucket=bucket, Prefix='redirect-')['Contents']:\n"
      "    print(o['Key'], s3.get_object(Bucket=bucket, Key=o['Key'])['Body'].read().decode())\n");
  for (int i = 1; i <= kFiles; ++i) {
    EXPECT_NE(listed.find(fmt::format("redirect-{}.txt file {}\n", i, i)), std::string::npos)
        << listed;
  }
  EXPECT_EQ(m.Unmount(), 0) << m.Log();
}

TEST_F(ObservabilityTest, ABusyMetricsAddressFailsTheMountAndSaysSo) {
  // Hold a port on the loopback, then ask bucketfs to serve metrics there.
  const int sock = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(sock, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(sock, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(sock, 1), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(sock, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string address = fmt::format("127.0.0.1:{}", ntohs(addr.sin_port));

  MountedBucket m(*server_, bucket_);  // For its directory; mounted by the command below.
  CommandResult r = RunCommand(fmt::format(
      "S3_ACCESS_KEY={} S3_SECRET_KEY={} {} serve {} {} --endpoint {} --spool-dir {}.spool "
      "--metrics-address {} 2>&1",
      server_->access_key, server_->secret_key, BUCKETFS_BINARY, bucket_, m.dir(),
      server_->endpoint, m.dir(), address));
  close(sock);
  EXPECT_EQ(r.exit_code, kExitUsage) << r.output;
  EXPECT_NE(r.output.find(address), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("in use"), std::string::npos) << r.output;
  EXPECT_FALSE(IsBucketfsMountedAt(m.dir()));

  r =
      RunCommand(fmt::format("S3_ACCESS_KEY={} S3_SECRET_KEY={} {} serve {} {} --endpoint {} "
                             "--metrics-address 9464 2>&1",
                             server_->access_key, server_->secret_key, BUCKETFS_BINARY, bucket_,
                             m.dir(), server_->endpoint));
  EXPECT_EQ(r.exit_code, kExitUsage) << r.output;
  EXPECT_NE(r.output.find("HOST:PORT"), std::string::npos) << r.output;
  EXPECT_FALSE(IsBucketfsMountedAt(m.dir()));
}

}  // namespace
}  // namespace bucketfs::testing
