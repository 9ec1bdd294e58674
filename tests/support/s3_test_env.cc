#include "tests/support/s3_test_env.h"

#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>

namespace bucketfs::testing {
namespace {

std::map<std::string, std::string> ReadEnvFile(const std::string& path) {
  std::map<std::string, std::string> vars;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("export ", 0) == 0) line = line.substr(7);
    auto eq = line.find('=');
    if (eq == std::string::npos || line[0] == '#') continue;
    std::string value = line.substr(eq + 1);
    if (value.size() >= 2 && (value.front() == '"' || value.front() == '\'') &&
        value.back() == value.front()) {
      value = value.substr(1, value.size() - 2);
    }
    vars[line.substr(0, eq)] = value;
  }
  return vars;
}

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

}  // namespace

const S3Server* TestServer(std::string* skip_reason) {
  static std::once_flag once;
  static std::unique_ptr<S3Server> server;
  static std::string failure;
  std::call_once(once, [] {
    const char* mode = std::getenv("BUCKETFS_TEST_S3");  // NOLINT(concurrency-mt-unsafe)
    if (mode && std::string(mode) == "off") {
      failure = "skip:BUCKETFS_TEST_S3=off disables the integration tier";
      return;
    }
    const char* path = std::getenv("BUCKETFS_RGW_ENV_FILE");  // NOLINT(concurrency-mt-unsafe)
    if (!path) {
      failure = "BUCKETFS_RGW_ENV_FILE is not set: run integration tests through ctest, which "
                "starts the S3 server (or set BUCKETFS_TEST_S3=off to skip them)";
      return;
    }
    auto vars = ReadEnvFile(path);
    if (vars["S3_ENDPOINT"].empty()) {
      failure = fmt::format("no S3_ENDPOINT in {}: did the rgw_start fixture fail?", path);
      return;
    }
    server = std::make_unique<S3Server>(S3Server{vars["S3_ENDPOINT"], vars["S3_REGION"],
                                                 vars["S3_ACCESS_KEY"], vars["S3_SECRET_KEY"],
                                                 vars["BUCKETFS_RGW_STATE"]});
  });
  if (!server) *skip_reason = failure;
  return server.get();
}

std::string UniqueBucketName(const std::string& suffix) {
  static std::atomic<int> counter{0};
  std::string name = fmt::format("bfs-it-{}-{}-{}", ::getpid(), counter++, suffix);
  for (auto& c : name) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-') c = '-';
  }
  if (name.size() > 63) name.resize(63);
  while (!name.empty() && name.back() == '-') name.pop_back();
  return name;
}

CommandResult RunCommand(const std::string& command) {
  CommandResult result;
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return result;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) result.output.append(buf.data(), n);
  int status = ::pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

s3::ClientConfig S3IntegrationTest::BaseConfig() const {
  s3::ClientConfig config;
  config.endpoint = server_->endpoint;
  config.region = server_->region.empty() ? "us-east-1" : server_->region;
  config.bucket = bucket_;
  config.request_timeout = std::chrono::seconds(60);
  return config;
}

std::unique_ptr<s3::CurlObjectClient> S3IntegrationTest::MakeClient(
    std::shared_ptr<s3::CredentialsProvider> creds, s3::ClientConfig config) {
  if (config.endpoint.empty()) config = BaseConfig();
  if (config.bucket.empty()) config.bucket = bucket_;
  if (!creds) {
    creds = std::make_shared<s3::StaticCredentialsProvider>(
        s3::Credentials{server_->access_key, server_->secret_key, ""}, "test server");
  }
  auto client = s3::CurlObjectClient::Create(config, creds);
  EXPECT_TRUE(client.ok()) << client.status().ToString();
  return client.ok() ? std::move(client).value() : nullptr;
}

void S3IntegrationTest::SetUp() {
  std::string reason;
  server_ = TestServer(&reason);
  if (!server_) {
    if (reason.rfind("skip:", 0) == 0) GTEST_SKIP() << reason.substr(5);
    FAIL() << reason;
  }
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  bucket_ = UniqueBucketName(info->name());
  client_ = MakeClient();
  ASSERT_NE(client_, nullptr);
  Status created = client_->CreateBucket();
  ASSERT_TRUE(created.ok()) << created.ToString();
}

void S3IntegrationTest::TearDown() {
  if (!client_) return;
  // Empty the bucket (objects and unfinished uploads), then delete it.
  s3::ListRequest list;
  for (;;) {
    auto page = client_->List(list);
    if (!page.ok() || page->objects.empty()) break;
    std::vector<std::string> keys;
    for (const auto& o : page->objects) keys.push_back(o.key);
    (void)client_->DeleteMany(keys);
    if (!page->is_truncated) break;
  }
  if (auto uploads = client_->ListMultipartUploads({}); uploads.ok()) {
    for (const auto& u : uploads->uploads) (void)client_->AbortMultipart(u.key, u.upload_id);
  }
  client_->DeleteBucket().IgnoreError();
}

std::string S3IntegrationTest::Boto3(const std::string& script) {
  const std::string prelude =
      "import boto3, botocore, hashlib, json, os, sys\n"
      "from botocore.config import Config\n"
      "e = os.environ\n"
      "s3 = boto3.client('s3', endpoint_url=e['BFS_ENDPOINT'], region_name='us-east-1',\n"
      "    aws_access_key_id=e['BFS_ACCESS'], aws_secret_access_key=e['BFS_SECRET'],\n"
      "    config=Config(s3={'addressing_style': 'path'}, retries={'max_attempts': 1}))\n"
      "bucket = e['BFS_BUCKET']\n";
  // Debian's python3 (with python3-boto3), not whatever python3 is first on PATH.
  CommandResult r = RunCommand(
      fmt::format("env -u AWS_CA_BUNDLE BFS_ENDPOINT={} BFS_ACCESS={} BFS_SECRET={} "
                  "BFS_BUCKET={} /usr/bin/python3 -c {}",
                  ShellQuote(server_->endpoint), ShellQuote(server_->access_key),
                  ShellQuote(server_->secret_key), ShellQuote(bucket_),
                  ShellQuote(prelude + script)));
  EXPECT_EQ(r.exit_code, 0) << "boto3 script failed:\n" << script << "\n" << r.output;
  return r.output;
}

}  // namespace bucketfs::testing
