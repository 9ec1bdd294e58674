#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "s3/config.h"
#include "s3/credentials.h"

namespace bucketfs::s3 {
namespace {

EnvLookup FakeEnv(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

TEST(ConfigTest, PlatformVariablesMountS3Bucket) {
  auto r = ResolveBucket("", FakeEnv({{"S3_ENDPOINT", "http://host.docker.internal:9000"},
                                      {"S3_REGION", "eu-west-1"},
                                      {"S3_BUCKET", "org-1-data"},
                                      {"S3_ACCESS_KEY", "AK"},
                                      {"S3_SECRET_KEY", "SK"}}));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->config.bucket, "org-1-data");
  EXPECT_EQ(r->config.endpoint, "http://host.docker.internal:9000");
  EXPECT_EQ(r->config.region, "eu-west-1");
  EXPECT_EQ(r->credentials.access_key, "AK");
  EXPECT_EQ(r->credentials.secret_key, "SK");
  EXPECT_EQ(r->credentials_source, "S3_ACCESS_KEY");
}

TEST(ConfigTest, AliasPicksItsBucketAndScopedKeys) {
  auto env = FakeEnv({{"S3_BUCKET", "org-1-data"},
                      {"S3_ACCESS_KEY", "AK"},
                      {"S3_SECRET_KEY", "SK"},
                      {"S3_BUCKET_USER_UPLOADS", "org-1-user-uploads"},
                      {"S3_BUCKET_USER_UPLOADS_ACCESS_KEY", "AK2"},
                      {"S3_BUCKET_USER_UPLOADS_SECRET_KEY", "SK2"}});
  auto r = ResolveBucket("user-uploads", env);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->config.bucket, "org-1-user-uploads");
  EXPECT_EQ(r->alias, "user-uploads");
  EXPECT_EQ(r->credentials.access_key, "AK2");
  EXPECT_EQ(r->credentials.secret_key, "SK2");
  EXPECT_EQ(r->credentials_source, "S3_BUCKET_USER_UPLOADS_ACCESS_KEY");
}

TEST(ConfigTest, AliasWithoutScopedKeysFallsBackToDefaultKeys) {
  auto r = ResolveBucket("logs", FakeEnv({{"S3_BUCKET_LOGS", "org-1-logs"},
                                          {"S3_ACCESS_KEY", "AK"},
                                          {"S3_SECRET_KEY", "SK"}}));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->config.bucket, "org-1-logs");
  EXPECT_EQ(r->credentials.access_key, "AK");
}

TEST(ConfigTest, UnknownNameIsABucketName) {
  auto r = ResolveBucket("plain-bucket", FakeEnv({{"AWS_ACCESS_KEY_ID", "AK"},
                                                  {"AWS_SECRET_ACCESS_KEY", "SK"},
                                                  {"AWS_SESSION_TOKEN", "T"},
                                                  {"AWS_REGION", "ap-south-1"}}));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->config.bucket, "plain-bucket");
  EXPECT_EQ(r->credentials.session_token, "T");
  EXPECT_EQ(r->config.region, "ap-south-1");
  EXPECT_EQ(r->config.endpoint, "https://s3.ap-south-1.amazonaws.com");
}

TEST(ConfigTest, ASessionTokenGoesOnlyWithTheKeyOfItsOwnFamily) {
  // A shell with AWS SSO credentials exported, and the platform's static keys.
  auto r = ResolveBucket("b", FakeEnv({{"S3_ACCESS_KEY", "AK"},
                                       {"S3_SECRET_KEY", "SK"},
                                       {"AWS_ACCESS_KEY_ID", "ASIA"},
                                       {"AWS_SECRET_ACCESS_KEY", "AWSSK"},
                                       {"AWS_SESSION_TOKEN", "sso-token"}}));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->credentials, (Credentials{"AK", "SK", ""}));
  // An alias's keys with the default family's token: not mixed either.
  r = ResolveBucket("logs", FakeEnv({{"S3_BUCKET_LOGS", "org-1-logs"},
                                     {"S3_BUCKET_LOGS_ACCESS_KEY", "AK2"},
                                     {"S3_BUCKET_LOGS_SECRET_KEY", "SK2"},
                                     {"S3_SESSION_TOKEN", "T"}}));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->credentials, (Credentials{"AK2", "SK2", ""}));
  r = ResolveBucket("b", FakeEnv({{"S3_ACCESS_KEY", "AK"},
                                  {"S3_SECRET_KEY", "SK"},
                                  {"S3_SESSION_TOKEN", "T"}}));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->credentials, (Credentials{"AK", "SK", "T"}));
}

TEST(ConfigTest, AKeyWithoutItsSecretIsRefusedNamingBoth) {
  // Not completed from another family: S3_ACCESS_KEY with AWS_SECRET_ACCESS_KEY is no pair.
  auto r = ResolveBucket("b", FakeEnv({{"S3_ACCESS_KEY", "AK"},
                                       {"AWS_ACCESS_KEY_ID", "AWSAK"},
                                       {"AWS_SECRET_ACCESS_KEY", "AWSSK"}}));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidCredentials);
  EXPECT_NE(r.status().message().find("S3_ACCESS_KEY is set but S3_SECRET_KEY is not"),
            std::string::npos)
      << r.status().message();
  r = ResolveBucket("logs", FakeEnv({{"S3_BUCKET_LOGS", "org-1-logs"},
                                     {"S3_BUCKET_LOGS_SECRET_KEY", "SK2"},
                                     {"S3_ACCESS_KEY", "AK"},
                                     {"S3_SECRET_KEY", "SK"}}));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("S3_BUCKET_LOGS_ACCESS_KEY"), std::string::npos)
      << r.status().message();
}

TEST(ConfigTest, S3VariablesWinOverAwsAndFlagsWinOverBoth) {
  auto env = FakeEnv({{"S3_BUCKET", "b"},
                      {"S3_ENDPOINT", "http://s3:1"},
                      {"AWS_ENDPOINT_URL", "http://aws:2"},
                      {"S3_ACCESS_KEY", "AK"},
                      {"AWS_ACCESS_KEY_ID", "AWSAK"},
                      {"S3_SECRET_KEY", "SK"}});
  auto r = ResolveBucket("", env);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->config.endpoint, "http://s3:1");
  EXPECT_EQ(r->credentials.access_key, "AK");
  BucketOverrides o;
  o.endpoint = "http://flag:3";
  o.access_key = "FLAGAK";
  r = ResolveBucket("", env, o);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->config.endpoint, "http://flag:3");
  EXPECT_EQ(r->credentials.access_key, "FLAGAK");
}

TEST(ConfigTest, MissingBucketSaysWhichVariableToSet) {
  auto r = ResolveBucket("", FakeEnv({}));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("S3_BUCKET"), std::string::npos);
}

TEST(ConfigTest, BadEndpointIsRejectedWithReason) {
  auto r = ResolveBucket("b", FakeEnv({{"S3_ENDPOINT", "127.0.0.1:7480"}}));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("no scheme"), std::string::npos);
  EXPECT_FALSE(ParseEndpoint("http://h:99999").ok());
  EXPECT_FALSE(ParseEndpoint("ftp://h").ok());
  EXPECT_FALSE(ParseEndpoint("http://h/path").ok());
}

TEST(ConfigTest, EndpointHostHeaderOmitsDefaultPorts) {
  EXPECT_EQ(ParseEndpoint("http://127.0.0.1:7480")->HostHeader(), "127.0.0.1:7480");
  EXPECT_EQ(ParseEndpoint("http://h:80")->HostHeader(), "h");
  EXPECT_EQ(ParseEndpoint("https://h/")->HostHeader(), "h");
  EXPECT_EQ(ParseEndpoint("https://h:8443")->BaseUrl(), "https://h:8443");
}

TEST(ConfigTest, AliasVariableName) {
  EXPECT_EQ(AliasVariable("user-uploads"), "S3_BUCKET_USER_UPLOADS");
  EXPECT_EQ(AliasVariable("a.b"), "S3_BUCKET_A_B");
}

TEST(CredentialsTest, ParsesAwsIniProfiles) {
  std::string text =
      "[default]\naws_access_key_id = A1\naws_secret_access_key = S1\n"
      "[profile other]\naws_access_key_id=A2\naws_secret_access_key=S2\naws_session_token=T\n";
  auto d = ParseCredentialsFile(text, "default");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->access_key, "A1");
  auto o = ParseCredentialsFile(text, "other");
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->secret_key, "S2");
  EXPECT_EQ(o->session_token, "T");
  EXPECT_FALSE(ParseCredentialsFile(text, "missing").ok());
}

TEST(CredentialsTest, ParsesPlatformKeyValueLines) {
  auto c = ParseCredentialsFile("# rotated\nexport S3_ACCESS_KEY=\"AK\"\nS3_SECRET_KEY='SK'\n",
                                "default");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->access_key, "AK");
  EXPECT_EQ(c->secret_key, "SK");
}

TEST(CredentialsTest, RedactedNeverShowsTheSecret) {
  Credentials c{"AKIAEXAMPLEKEY1234", "supersecret", ""};
  EXPECT_EQ(c.Redacted().find("supersecret"), std::string::npos);
  EXPECT_EQ(c.Redacted().find("EXAMPLEKEY"), std::string::npos);
}

TEST(CredentialsTest, FileProviderPicksUpRotationWithoutReload) {
  FakeClock clock;
  auto dir = std::filesystem::temp_directory_path() /
             ("bfs-creds-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto path = dir / "creds";
  std::ofstream(path) << "S3_ACCESS_KEY=OLD\nS3_SECRET_KEY=S\n";
  FileCredentialsProvider p(path.string(), "default", clock);
  ASSERT_TRUE(p.Current().ok());
  EXPECT_EQ(p.Current()->access_key, "OLD");
  // Rotation: a new file moved into place (as a kubelet does), a different inode.
  std::ofstream(dir / "creds.new") << "S3_ACCESS_KEY=NEWKEY\nS3_SECRET_KEY=S2\n";
  std::filesystem::rename(dir / "creds.new", path);
  EXPECT_EQ(p.Current()->access_key, "OLD");  // Checked at most once a second.
  clock.Advance(std::chrono::seconds(2));
  EXPECT_EQ(p.Current()->access_key, "NEWKEY");
  // A broken file keeps the last good credentials.
  std::ofstream(path) << "garbage\n";
  clock.Advance(std::chrono::seconds(2));
  EXPECT_EQ(p.Current()->access_key, "NEWKEY");
  EXPECT_FALSE(p.Reload().ok());
  std::filesystem::remove_all(dir);
}

TEST(CredentialsTest, StaticProviderWithoutKeysExplainsWhatToSet) {
  StaticCredentialsProvider p({}, "environment");
  auto r = p.Current();
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("S3_ACCESS_KEY"), std::string::npos);
  p.Set({"A", "S", ""});
  EXPECT_EQ(p.Current()->access_key, "A");
}

}  // namespace
}  // namespace bucketfs::s3
