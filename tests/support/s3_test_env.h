// Integration-test support: the real S3 server that the ctest `rgw` fixture started
// (tests/s3server/rgw.sh), a fresh bucket per test, and an independent client (boto3 from
// Debian's python3-boto3) to check what bucketfs wrote.
//
// Contract: a test using S3IntegrationTest runs against a real server or fails; it is
// skipped only when BUCKETFS_TEST_S3=off says so explicitly, and the skip says why.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "s3/curl_client.h"

namespace bucketfs::testing {

struct S3Server {
  std::string endpoint;
  std::string region;
  std::string access_key;
  std::string secret_key;
  std::string state_dir;  // For rgw.sh add-key / rm-key.
};

// Reads the server description from $BUCKETFS_RGW_ENV_FILE. Empty optional + reason when
// the tier is disabled; a test failure when it should be there and is not.
const S3Server* TestServer(std::string* skip_reason);

// A bucket name unique to this process and call ("bfs-it-<pid>-<n>-<suffix>").
std::string UniqueBucketName(const std::string& suffix);

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr.
};
CommandResult RunCommand(const std::string& command);

class S3IntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;

  // A client for the test's bucket; config tweaks applied on top of the server's.
  std::unique_ptr<s3::CurlObjectClient> MakeClient(
      std::shared_ptr<s3::CredentialsProvider> creds = nullptr, s3::ClientConfig config = {});
  s3::ClientConfig BaseConfig() const;

  // Runs Python with boto3 and `s3` (a client for the server) and `bucket` defined. Returns
  // stdout; the test fails if the script fails.
  std::string Boto3(const std::string& script);

  const S3Server* server_ = nullptr;
  std::string bucket_;
  std::unique_ptr<s3::CurlObjectClient> client_;
};

}  // namespace bucketfs::testing
