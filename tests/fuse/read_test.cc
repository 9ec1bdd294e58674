// The read path through a real mount: bucketfs mounted through /dev/fuse on a bucket of the
// test's Ceph RGW, with every object written by boto3 (an independent client) and every
// byte read back through the kernel checked against what boto3 wrote.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "common/exit_code.h"
#include "tests/support/mounted_bucket.h"
#include "tests/support/s3_test_env.h"

namespace bucketfs::testing {
namespace {

constexpr uint64_t kMiB = 1ull << 20;

class FuseReadTest : public S3IntegrationTest {
 protected:
  // Puts `size` bytes of Pattern(seed) at `key` with boto3 (multipart when large).
  void PutPattern(const std::string& key, uint64_t seed, uint64_t size,
                  const std::string& extra_args = "{}") {
    Boto3(std::string(kPatternPython) +
          fmt::format("from boto3.s3.transfer import TransferConfig\n"
                      "s3.upload_fileobj(PatternReader({}, {}), bucket, {}, ExtraArgs={},\n"
                      "    Config=TransferConfig(multipart_threshold=64 << 20,\n"
                      "        multipart_chunksize=64 << 20, max_concurrency=4))\n",
                      seed, size, PyStr(key), extra_args));
  }
  void PutBytes(const std::string& key, const std::string& body, const std::string& meta = "{}") {
    Boto3(fmt::format("s3.put_object(Bucket=bucket, Key={}, Body=bytes.fromhex('{}'), "
                      "Metadata={})\n",
                      PyStr(key), Hex(body), meta));
  }
  static std::string Hex(const std::string& s) {
    std::string out;
    for (unsigned char c : s) out += fmt::format("{:02x}", c);
    return out;
  }
  // A Python bytes-to-str literal of any key (UTF-8 or not).
  static std::string PyStr(const std::string& key) {
    return fmt::format("bytes.fromhex('{}').decode('utf-8', 'surrogateescape')", Hex(key));
  }

  std::unique_ptr<MountedBucket> MountBucket(const std::vector<std::string>& args = {}) {
    auto m = std::make_unique<MountedBucket>(*server_, bucket_);
    if (!m->Mount(args)) return nullptr;
    return m;
  }

  // pread of exactly what the kernel returns for [offset, offset + length).
  static std::string PRead(int fd, uint64_t offset, size_t length) {
    std::string out(length, '\0');
    size_t done = 0;
    while (done < length) {
      ssize_t n = pread(fd, out.data() + done, length - done, static_cast<off_t>(offset + done));
      if (n < 0) {
        ADD_FAILURE() << "pread at " << offset + done << ": " << strerror(errno);
        return {};
      }
      if (n == 0) break;
      done += static_cast<size_t>(n);
    }
    out.resize(done);
    return out;
  }

  // Expected bytes of a pattern object of `size` for a read of [offset, offset + length).
  static std::string Expected(uint64_t seed, uint64_t size, uint64_t offset, size_t length) {
    if (offset >= size) return {};
    return Pattern(seed, offset, std::min<uint64_t>(length, size - offset));
  }
};

TEST_F(FuseReadTest, SmallAndBlockSizedFilesReadBackExactly) {
  const std::map<std::string, uint64_t> sizes = {
      {"empty", 0},          {"one", 1},
      {"page", 4096},        {"mib-minus-1", kMiB - 1},
      {"mib", kMiB},         {"mib-plus-1", kMiB + 1},
      {"block-4m", 4 * kMiB}, {"nine-mib-odd", 9 * kMiB + 12345}};
  uint64_t seed = 1;
  for (const auto& [key, size] : sizes) PutPattern(key, seed++, size);
  auto m = MountBucket();
  ASSERT_NE(m, nullptr);
  seed = 1;
  for (const auto& [key, size] : sizes) {
    SCOPED_TRACE(key);
    struct stat st {};
    ASSERT_EQ(stat(m->Path(key).c_str(), &st), 0) << strerror(errno);
    EXPECT_EQ(static_cast<uint64_t>(st.st_size), size);
    EXPECT_TRUE(S_ISREG(st.st_mode));
    const std::string got = ReadFile(m->Path(key));
    ASSERT_EQ(got.size(), size);
    EXPECT_TRUE(got == Pattern(seed, 0, size)) << "content differs";
    ++seed;
  }
  EXPECT_EQ(m->Unmount(), 0) << m->Log();
}

TEST_F(FuseReadTest, ReadsAtEveryBoundary) {
  // 1 MiB blocks so that block edges are many and cheap.
  const uint64_t bs = kMiB;
  const uint64_t size = 3 * bs + 123;
  PutPattern("edges.bin", 7, size);
  auto m = MountBucket({"--block-size", "1M"});
  ASSERT_NE(m, nullptr);
  int fd = open(m->Path("edges.bin").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0) << strerror(errno);
  const std::vector<uint64_t> offsets = {0,          1,          bs - 1,   bs,       bs + 1,
                                         2 * bs - 1, 2 * bs,     3 * bs,   size - 1, size,
                                         size + 1,   size + bs};
  const std::vector<size_t> lengths = {1, 4095, 4096, 4097, static_cast<size_t>(bs),
                                       static_cast<size_t>(bs + 1)};
  for (uint64_t off : offsets) {
    for (size_t len : lengths) {
      SCOPED_TRACE(fmt::format("offset {} length {}", off, len));
      EXPECT_TRUE(PRead(fd, off, len) == Expected(7, size, off, len));
    }
  }
  close(fd);
  EXPECT_EQ(m->Unmount(), 0) << m->Log();
}

TEST_F(FuseReadTest, LargeObjectSequentialThenRandomReads) {
  // 1 GiB in release builds, as the issue asks; sanitizer builds run the same test on
  // 128 MiB because they are 5-15x slower per byte and the code paths are the same.
  const uint64_t size = SanitizedBuild() ? 128 * kMiB : 1024 * kMiB;
  PutPattern("large.bin", 11, size);
  auto m = MountBucket();
  ASSERT_NE(m, nullptr);
  int fd = open(m->Path("large.bin").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0) << strerror(errno);
  // Sequential, in 1 MiB reads, each compared.
  std::string buf(kMiB, '\0');
  uint64_t off = 0;
  uint64_t mismatches = 0;
  while (off < size) {
    ssize_t n = read(fd, buf.data(), buf.size());
    ASSERT_GT(n, 0) << "read at " << off << ": " << strerror(errno);
    if (std::string_view(buf.data(), static_cast<size_t>(n)) !=
        Pattern(11, off, static_cast<size_t>(n))) {
      ++mismatches;
    }
    off += static_cast<uint64_t>(n);
  }
  EXPECT_EQ(read(fd, buf.data(), buf.size()), 0);
  EXPECT_EQ(mismatches, 0u);
  close(fd);
  EXPECT_EQ(m->Unmount(), 0) << m->Log();

  // Random reads on a fresh mount (cold: no kernel page cache, no block cache).
  m = MountBucket();
  ASSERT_NE(m, nullptr);
  fd = open(m->Path("large.bin").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0) << strerror(errno);
  std::mt19937_64 rng(42);
  for (int i = 0; i < 300; ++i) {
    const uint64_t at = rng() % (size + 100);
    const size_t len = 1 + rng() % (256 * 1024);
    ASSERT_TRUE(PRead(fd, at, len) == Expected(11, size, at, len))
        << "random read " << i << " at " << at << " length " << len;
  }
  close(fd);
  EXPECT_EQ(m->Unmount(), 0) << m->Log();
}

TEST_F(FuseReadTest, NestedAndImplicitDirectoriesListRecursively) {
  for (const char* key : {"top.txt", "a/b/c/deep.txt", "a/b/file1", "a/sibling", "marker/",
                          "marker/inside", "empty-marker/", "implicit/only/child"}) {
    PutBytes(key, std::string("data of ") + key);
  }
  auto m = MountBucket();
  ASSERT_NE(m, nullptr);
  std::set<std::string> seen;
  for (const auto& e : std::filesystem::recursive_directory_iterator(m->dir())) {
    std::string rel = std::filesystem::relative(e.path(), m->dir()).string();
    seen.insert(rel + (e.is_directory() ? "/" : ""));
  }
  const std::set<std::string> expected = {
      "top.txt", "a/",     "a/b/",         "a/b/c/",        "a/b/c/deep.txt", "a/b/file1",
      "a/sibling", "marker/", "marker/inside", "empty-marker/", "implicit/",   "implicit/only/",
      "implicit/only/child"};
  EXPECT_EQ(seen, expected);
  EXPECT_EQ(ReadFile(m->Path("a/b/c/deep.txt")), "data of a/b/c/deep.txt");
  CommandResult ls = RunCommand("ls -lR " + m->dir());
  EXPECT_EQ(ls.exit_code, 0) << ls.output;
  EXPECT_NE(ls.output.find("deep.txt"), std::string::npos) << ls.output;
  // A directory is a directory whether reached through a listing or a lookup.
  struct stat st {};
  ASSERT_EQ(stat(m->Path("implicit/only").c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(stat(m->Path("a/missing").c_str(), &st), -1);
  EXPECT_EQ(errno, ENOENT);
  EXPECT_EQ(stat(m->Path("top.txt/x").c_str(), &st), -1);
  EXPECT_EQ(errno, ENOTDIR);
  EXPECT_EQ(m->Unmount(), 0) << m->Log();
}

TEST_F(FuseReadTest, TenThousandObjectDirectoryListsCompletely) {
  constexpr int kCount = 10000;
  Boto3(fmt::format(
      "from concurrent.futures import ThreadPoolExecutor\n"
      "def put(i): s3.put_object(Bucket=bucket, Key='many/f%05d' % i, Body=b'x' * (i % 7))\n"
      "with ThreadPoolExecutor(32) as ex: list(ex.map(put, range({})))\n",
      kCount));
  auto m = MountBucket();
  ASSERT_NE(m, nullptr);
  std::set<std::string> names;
  uint64_t total_size = 0;
  for (const auto& e : std::filesystem::directory_iterator(m->Path("many"))) {
    names.insert(e.path().filename().string());
    total_size += e.file_size();
  }
  ASSERT_EQ(names.size(), static_cast<size_t>(kCount));
  EXPECT_EQ(*names.begin(), "f00000");
  EXPECT_EQ(*names.rbegin(), fmt::format("f{:05d}", kCount - 1));
  uint64_t expected_size = 0;
  for (int i = 0; i < kCount; ++i) expected_size += static_cast<uint64_t>(i % 7);
  EXPECT_EQ(total_size, expected_size);
  CommandResult ls = RunCommand("ls -l " + m->Path("many") + " | wc -l");
  EXPECT_EQ(ls.output, fmt::format("{}\n", kCount + 1));  // Plus the "total" line.
  EXPECT_EQ(m->Unmount(), 0) << m->Log();
}

TEST_F(FuseReadTest, SpecialCharacterNamesAndHiddenKeys) {
  const std::vector<std::string> visible = {
      "with space.txt", "plus+percent%25=amp&q?hash#", "quote'dq\"", "semi;colon",
      "ünïcødé-名前.txt", "emoji-🙂", "tab\tname", "dir with space/inner file"};
  for (const auto& k : visible) PutBytes(k, "body:" + k);
  // Keys that cannot be file names: hidden, logged, left in S3.
  const std::string long_component(300, 'L');
  for (const auto& k : {std::string("bad//double-slash"), std::string("./dot-first"),
                        std::string("a/../dotdot"), long_component + "/x",
                        std::string(".bucketfs/lease")}) {
    PutBytes(k, "hidden");
  }
  auto m = MountBucket();
  ASSERT_NE(m, nullptr);
  for (const auto& k : visible) {
    SCOPED_TRACE(k);
    EXPECT_EQ(ReadFile(m->Path(k)), "body:" + k);
  }
  std::set<std::string> top;
  for (const auto& e : std::filesystem::directory_iterator(m->dir())) {
    top.insert(e.path().filename().string());
  }
  EXPECT_FALSE(top.contains(".bucketfs"));
  EXPECT_FALSE(top.contains(long_component));
  EXPECT_TRUE(top.contains("bad"));  // "bad/" is a real prefix; only the "" child is hidden.
  std::set<std::string> in_bad;
  for (const auto& e : std::filesystem::directory_iterator(m->Path("bad"))) {
    in_bad.insert(e.path().filename().string());
  }
  EXPECT_TRUE(in_bad.empty());
  // The hidden keys are still in S3, untouched.
  EXPECT_NE(Boto3("print(s3.get_object(Bucket=bucket, Key='bad//double-slash')['Body'].read())")
                .find("hidden"),
            std::string::npos);
  EXPECT_EQ(m->Unmount(), 0) << m->Log();
  EXPECT_NE(m->Log().find("hidden: the key has an empty path component"), std::string::npos)
      << m->Log();
}

TEST_F(FuseReadTest, RemoteReplacementWhileOpenGivesEstaleAndReopenReadsNewVersion) {
  const uint64_t size = 8 * kMiB;
  PutPattern("victim.bin", 21, size);
  // 1 MiB blocks and a 1 MiB window, so that offset 7 MiB is not fetched before we ask.
  auto m = MountBucket({"--block-size", "1M", "--read-ahead", "1M"});
  ASSERT_NE(m, nullptr);
  int fd = open(m->Path("victim.bin").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0) << strerror(errno);
  EXPECT_TRUE(PRead(fd, 0, 4096) == Pattern(21, 0, 4096));
  const uint64_t new_size = size + 2 * kMiB + 5;
  PutPattern("victim.bin", 22, new_size);  // Other bytes and size: a new ETag.
  char buf[4096];
  errno = 0;
  EXPECT_EQ(pread(fd, buf, sizeof buf, static_cast<off_t>(7 * kMiB)), -1);
  EXPECT_EQ(errno, ESTALE);
  close(fd);
  // The next open sees the new version. It also has the kernel drop the old size it caches
  // for the attribute TTL (60 s): asynchronously, so stat may need a moment to show it.
  fd = open(m->Path("victim.bin").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0) << strerror(errno);
  EXPECT_TRUE(PRead(fd, 0, 4096) == Pattern(22, 0, 4096));
  struct stat st {};
  for (int i = 0; i < 250; ++i) {
    ASSERT_EQ(stat(m->Path("victim.bin").c_str(), &st), 0);
    if (static_cast<uint64_t>(st.st_size) == new_size) break;
    usleep(20000);
  }
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), new_size) << "the kernel kept the old size";
  close(fd);
  // All of it, every byte of the new version (the old version's cached pages were dropped).
  const std::string now = ReadFile(m->Path("victim.bin"));
  ASSERT_EQ(now.size(), new_size);
  EXPECT_TRUE(now == Pattern(22, 0, new_size));
  EXPECT_EQ(m->Unmount(), 0) << m->Log();
}

TEST_F(FuseReadTest, ConcurrentReadersOfOneFileAllSeeTheSameBytes) {
  const uint64_t size = (SanitizedBuild() ? 24 : 96) * kMiB + 777;
  PutPattern("shared.bin", 31, size);
  auto m = MountBucket({"--max-memory", "64M"});
  ASSERT_NE(m, nullptr);
  std::vector<std::thread> readers;
  std::atomic<int> ok{0};
  for (int r = 0; r < 4; ++r) {
    readers.emplace_back([&, r] {
      int fd = open(m->Path("shared.bin").c_str(), O_RDONLY);
      if (fd < 0) return;
      // Each reader starts at another offset and wraps around.
      const uint64_t start = (size / 4) * static_cast<uint64_t>(r) / kMiB * kMiB;
      bool same = true;
      std::string buf(kMiB, '\0');
      for (uint64_t done = 0; done < size;) {
        const uint64_t at = (start + done) % size;
        const size_t len = static_cast<size_t>(std::min<uint64_t>(kMiB, size - at));
        ssize_t n = pread(fd, buf.data(), len, static_cast<off_t>(at));
        if (n <= 0 || std::string_view(buf.data(), static_cast<size_t>(n)) !=
                          Pattern(31, at, static_cast<size_t>(n))) {
          same = false;
          break;
        }
        done += static_cast<uint64_t>(n);
      }
      close(fd);
      if (same) ++ok;
    });
  }
  for (auto& t : readers) t.join();
  EXPECT_EQ(ok.load(), 4);
  EXPECT_EQ(m->Unmount(), 0) << m->Log();
}

TEST_F(FuseReadTest, MetadataAttributesAndSymlinksInS3fsConvention) {
  // s3fs writes the whole st_mode in decimal: 0100755 = 33261, 0120777 = 41471.
  PutBytes("script.sh", "#!/bin/sh\n",
           "{'mode': '33261', 'uid': '1234', 'gid': '5678', 'mtime': '1600000000'}");
  PutBytes("target.txt", "the target");
  PutBytes("link", "target.txt", "{'mode': '41471'}");
  auto m = MountBucket();
  ASSERT_NE(m, nullptr);
  // Looked up directly (no listing first): HEAD supplies the metadata.
  struct stat st {};
  ASSERT_EQ(stat(m->Path("script.sh").c_str(), &st), 0) << strerror(errno);
  EXPECT_EQ(st.st_mode & 07777, 0755u);
  EXPECT_EQ(st.st_uid, 1234u);
  EXPECT_EQ(st.st_gid, 5678u);
  EXPECT_EQ(st.st_mtime, 1600000000);
  ASSERT_EQ(lstat(m->Path("link").c_str(), &st), 0) << strerror(errno);
  EXPECT_TRUE(S_ISLNK(st.st_mode));
  char target[256] = {};
  ASSERT_EQ(readlink(m->Path("link").c_str(), target, sizeof target - 1), 10);
  EXPECT_STREQ(target, "target.txt");
  EXPECT_EQ(ReadFile(m->Path("link")), "the target");  // Followed by the kernel.
  EXPECT_EQ(m->Unmount(), 0) << m->Log();
}

TEST_F(FuseReadTest, ReadOnlyMountRefusesWritesAndStatfsAnswers) {
  PutBytes("exists.txt", "x");
  auto m = MountBucket({"--read-only"});
  ASSERT_NE(m, nullptr);
  int fd = open(m->Path("new.txt").c_str(), O_WRONLY | O_CREAT, 0644);
  EXPECT_EQ(fd, -1);
  EXPECT_EQ(errno, EROFS);
  fd = open(m->Path("exists.txt").c_str(), O_WRONLY);
  EXPECT_EQ(fd, -1);
  EXPECT_EQ(errno, EROFS);
  EXPECT_EQ(mkdir(m->Path("d").c_str(), 0755), -1);
  EXPECT_EQ(errno, EROFS);
  struct statvfs sv {};
  ASSERT_EQ(statvfs(m->dir().c_str(), &sv), 0) << strerror(errno);
  EXPECT_EQ(sv.f_namemax, 255u);
  EXPECT_GT(sv.f_bavail, 0u);
  // Nothing was written to the bucket.
  EXPECT_EQ(Boto3("print(sorted(o['Key'] for o in s3.list_objects_v2(Bucket=bucket)"
                  ".get('Contents', [])))"),
            "['exists.txt']\n");
  EXPECT_EQ(m->Unmount(), 0) << m->Log();
}

TEST_F(FuseReadTest, SigtermUnmountsCleanly) {
  PutBytes("f", "x");
  auto m = MountBucket();
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(ReadFile(m->Path("f")), "x");
  EXPECT_EQ(m->Signal(SIGTERM), 0) << m->Log();
  CommandResult mounts = RunCommand("grep -c ' " + m->dir() + " ' /proc/mounts || true");
  EXPECT_EQ(mounts.output, "0\n");
}

TEST_F(FuseReadTest, WrongSecretOrMissingBucketFailsTheMountWithAdvice) {
  std::string out;
  {
    MountedBucket m(*server_, bucket_);
    CommandResult r = RunCommand(fmt::format(
        "S3_ACCESS_KEY={} S3_SECRET_KEY=wrong-secret {} mount {} {} --endpoint {} 2>&1",
        server_->access_key, BUCKETFS_BINARY, bucket_, m.dir(), server_->endpoint));
    EXPECT_EQ(r.exit_code, kExitCredentials) << r.output;
    EXPECT_NE(r.output.find("S3_SECRET_KEY"), std::string::npos) << r.output;
    r = RunCommand(fmt::format("S3_ACCESS_KEY={} S3_SECRET_KEY={} {} mount no-such-bucket-{} {} "
                               "--endpoint {} 2>&1",
                               server_->access_key, server_->secret_key, BUCKETFS_BINARY,
                               getpid(), m.dir(), server_->endpoint));
    EXPECT_EQ(r.exit_code, kExitNoBucket) << r.output;
    EXPECT_NE(r.output.find("NoSuchBucket"), std::string::npos) << r.output;
  }
}

TEST_F(FuseReadTest, BackgroundMountReturnsOnlyOnceTheMountAnswers) {
  PutBytes("hello.txt", "hello");
  MountedBucket m(*server_, bucket_);  // For its directory; mounted by the command below.
  CommandResult r = RunCommand(fmt::format(
      "S3_ACCESS_KEY={} S3_SECRET_KEY={} {} serve {} {} --endpoint {} --log-file {}.bg.log 2>&1",
      server_->access_key, server_->secret_key, BUCKETFS_BINARY, bucket_, m.dir(),
      server_->endpoint, m.dir()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // No waiting: the command returned, so the mount is there.
  EXPECT_EQ(ReadFile(m.Path("hello.txt")), "hello");
  // Find the daemon by its unique mountpoint in its command line, to wait for it by PID.
  // ("[/]" keeps the pattern from matching the shell that runs this loop.)
  CommandResult pids = RunCommand(
      "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -q 'serve " +
      bucket_ + " [/]" + m.dir().substr(1) + "' && basename $p; done; true");
  EXPECT_FALSE(pids.output.empty());
  EXPECT_EQ(RunCommand("fusermount3 -u " + m.dir()).exit_code, 0);
  const pid_t pid = static_cast<pid_t>(std::atoi(pids.output.c_str()));
  ASSERT_GT(pid, 0) << pids.output;
  for (int i = 0; i < 500 && kill(pid, 0) == 0; ++i) usleep(20000);
  EXPECT_NE(kill(pid, 0), 0) << "the daemon " << pid << " did not exit after unmount";
  if (kill(pid, 0) == 0) kill(pid, SIGKILL);
  // Its log went to --log-file, mount and unmount included.
  const std::string log = ReadFile(m.dir() + ".bg.log");
  EXPECT_NE(log.find("unmounted " + m.dir()), std::string::npos) << log;
  std::filesystem::remove(m.dir() + ".bg.log");
}

TEST_F(FuseReadTest, MemoryStaysInBudgetWhileReadingEightTimesIt) {
  // Release builds: reading 512 MiB through a 64 MiB budget keeps the daemon's peak RSS
  // under the budget plus a fixed overhead. Sanitizer runtimes add shadow memory and
  // quarantines that dwarf the budget, so there the check cannot mean anything.
  if (SanitizedBuild()) GTEST_SKIP() << "RSS is not meaningful under ASan/TSan";
  const uint64_t size = 512 * kMiB;
  PutPattern("big.bin", 41, size);
  auto m = MountBucket({"--max-memory", "64M"});
  ASSERT_NE(m, nullptr);
  int fd = open(m->Path("big.bin").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  std::string buf(kMiB, '\0');
  uint64_t total = 0;
  for (ssize_t n; (n = read(fd, buf.data(), buf.size())) > 0;) total += static_cast<uint64_t>(n);
  close(fd);
  EXPECT_EQ(total, size);
  const uint64_t peak = m->PeakRss();
  RecordProperty("peak_rss_mib", static_cast<int>(peak / kMiB));
  std::printf("daemon peak RSS reading %llu MiB with a 64 MiB budget: %llu MiB\n",
              static_cast<unsigned long long>(size / kMiB),
              static_cast<unsigned long long>(peak / kMiB));
  EXPECT_LT(peak, 64 * kMiB + 48 * kMiB) << "peak RSS " << peak / kMiB << " MiB";
  EXPECT_EQ(m->Unmount(), 0) << m->Log();
}

}  // namespace
}  // namespace bucketfs::testing
