// s3_throughput: PUTs and GETs one object through bucketfs's object client and reports
// MB/s, so the client can be compared with curl on the same server in the same run
// (bench/s3_client_vs_curl.sh). Credentials and endpoint come from the S3_* variables.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <random>
#include <vector>

#include "s3/config.h"
#include "s3/crypto.h"
#include "s3/curl_client.h"

using namespace bucketfs;
using namespace bucketfs::s3;

int main(int argc, char** argv) {
  CLI::App app{"PUT and GET one object through the bucketfs object client; prints MB/s"};
  std::string bucket, key = "bench/s3_throughput.bin", mode = "putget", signing = "sha256";
  size_t size_mib = 1024;
  bool create_bucket = false;
  app.add_option("--bucket", bucket, "Bucket (default: $S3_BUCKET)");
  app.add_option("--key", key, "Object key");
  app.add_option("--size-mib", size_mib, "Object size in MiB")->check(CLI::Range(1, 8192));
  app.add_option("--mode", mode, "put, get or putget")->check(CLI::IsMember({"put", "get", "putget"}));
  app.add_option("--payload", signing, "sha256 or unsigned")->check(CLI::IsMember({"sha256", "unsigned"}));
  app.add_flag("--create-bucket", create_bucket, "Create the bucket first");
  CLI11_PARSE(app, argc, argv);

  auto settings = ResolveBucket(bucket, ProcessEnvironment());
  if (!settings.ok()) {
    fmt::print(stderr, "s3_throughput: {}\n", settings.status().ToString());
    return 2;
  }
  settings->config.payload_signing =
      signing == "unsigned" ? PayloadSigning::kUnsigned : PayloadSigning::kSha256;
  settings->config.request_timeout = std::chrono::minutes(10);
  auto client = CurlObjectClient::Create(
      settings->config,
      std::make_shared<StaticCredentialsProvider>(settings->credentials, settings->credentials_source));
  if (!client.ok()) {
    fmt::print(stderr, "s3_throughput: {}\n", client.status().ToString());
    return 2;
  }
  if (create_bucket) (*client)->CreateBucket().IgnoreError();

  const size_t size = size_mib << 20;
  std::vector<char> data(size);
  std::mt19937_64 rng(42);
  for (size_t i = 0; i + 8 <= size; i += 8) {
    uint64_t v = rng();
    std::memcpy(data.data() + i, &v, 8);
  }
  auto mbps = [&](std::chrono::steady_clock::duration d) {
    return static_cast<double>(size) / 1e6 / std::chrono::duration<double>(d).count();
  };
  if (mode != "get") {
    auto t0 = std::chrono::steady_clock::now();
    auto r = (*client)->Put({key, {data.data(), data.size()}, "", {}, {}});
    auto t1 = std::chrono::steady_clock::now();
    if (!r.ok()) {
      fmt::print(stderr, "s3_throughput: PUT failed: {}\n", r.status().ToString());
      return 1;
    }
    fmt::print("put_mbps {:.1f}\n", mbps(t1 - t0));
  }
  if (mode != "put") {
    std::vector<char> out(size);
    auto t0 = std::chrono::steady_clock::now();
    auto r = (*client)->Get({key, std::nullopt, ""}, {out.data(), out.size()});
    auto t1 = std::chrono::steady_clock::now();
    if (!r.ok()) {
      fmt::print(stderr, "s3_throughput: GET failed: {}\n", r.status().ToString());
      return 1;
    }
    if (mode == "putget" && out != data) {
      fmt::print(stderr, "s3_throughput: GET returned different bytes than were PUT\n");
      return 1;
    }
    fmt::print("get_mbps {:.1f}\n", mbps(t1 - t0));
  }
  return 0;
}
