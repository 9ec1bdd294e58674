// https endpoints: the client verifies the server against the system CAs or a given CA
// bundle (AWS_CA_BUNDLE / --ca-bundle), and a failed verification says what to do.
// The server is `openssl s_server` on 127.0.0.1 with a certificate made for this test.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "s3/curl_client.h"

namespace bucketfs::s3 {
namespace {

namespace fs = std::filesystem;

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::system("command -v openssl >/dev/null 2>&1") != 0) {
      GTEST_SKIP() << "the openssl command is not installed (scripts/setup-deps.sh installs it)";
    }
    dir_ = fs::temp_directory_path() / fmt::format("bfs-tls-{}", ::getpid());
    fs::create_directories(dir_);
    std::string make_cert = fmt::format(
        "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
        "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout {0}/key.pem "
        "-out {0}/cert.pem >/dev/null 2>&1",
        dir_.string());
    ASSERT_EQ(std::system(make_cert.c_str()), 0);
    port_ = 20000 + ::getpid() % 20000;
    pid_ = ::fork();
    if (pid_ == 0) {
      std::string accept = fmt::format("127.0.0.1:{}", port_);
      std::string cert = (dir_ / "cert.pem").string(), key = (dir_ / "key.pem").string();
      ::freopen("/dev/null", "w", stdout);
      ::freopen("/dev/null", "w", stderr);
      ::execlp("openssl", "openssl", "s_server", "-quiet", "-accept", accept.c_str(), "-cert",
               cert.c_str(), "-key", key.c_str(), "-www", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    // Wait until it listens.
    for (int i = 0; i < 100; ++i) {
      std::string probe = fmt::format("bash -c 'exec 3<>/dev/tcp/127.0.0.1/{}' 2>/dev/null", port_);
      if (std::system(probe.c_str()) == 0) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    FAIL() << "openssl s_server did not start on port " << port_;
  }

  void TearDown() override {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      ::waitpid(pid_, nullptr, 0);
    }
    if (!dir_.empty()) fs::remove_all(dir_);
  }

  std::unique_ptr<CurlObjectClient> Client(const std::string& ca_bundle) {
    ClientConfig config;
    config.endpoint = fmt::format("https://127.0.0.1:{}", port_);
    config.bucket = "b";
    config.ca_bundle = ca_bundle;
    config.request_timeout = std::chrono::seconds(10);
    auto c = CurlObjectClient::Create(
        config, std::make_shared<StaticCredentialsProvider>(Credentials{"AK", "SK", ""}));
    EXPECT_TRUE(c.ok());
    return std::move(c).value();
  }

  fs::path dir_;
  int port_ = 0;
  pid_t pid_ = -1;
};

TEST_F(TlsTest, GivenCaBundleVerifiesTheServer) {
  auto client = Client((dir_ / "cert.pem").string());
  auto r = client->List({});
  // s_server answers with an HTML status page, not S3 XML: the TLS part worked, and the
  // reply is then refused as malformed rather than trusted.
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kMalformedResponse) << r.status().ToString();
}

TEST_F(TlsTest, UnknownCaFailsWithAdviceAndIsNotRetried) {
  auto client = Client("");  // System CAs do not know this self-signed certificate.
  auto r = client->List({});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kNetwork) << r.status().ToString();
  EXPECT_FALSE(r.status().retryable());
  EXPECT_NE(r.status().message().find("AWS_CA_BUNDLE"), std::string::npos);
  EXPECT_EQ(client->stats().retries, 0u);
}

}  // namespace
}  // namespace bucketfs::s3
