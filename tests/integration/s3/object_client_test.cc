// The libcurl object client against a real S3 server (Ceph RGW started by the ctest
// fixture), with what it writes and reads checked by boto3 as an independent client.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <sstream>
#include <fstream>
#include <random>
#include <thread>

#include "s3/crypto.h"
#include "tests/support/s3_test_env.h"

namespace bucketfs::s3 {
namespace {

using testing::S3IntegrationTest;

std::string RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string out(n, '\0');
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    std::memcpy(out.data() + i, &v, std::min<size_t>(8, n - i));
  }
  return out;
}

std::string Md5Hex(const std::string& s) { return HexLower(Md5({s.data(), s.size()})); }

std::span<const char> AsSpan(const std::string& s) { return {s.data(), s.size()}; }

// A TCP socket bound to a free loopback port; listening or not. Returns the fd and port.
std::pair<int, int> LoopbackSocket(bool listening) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  if (listening) {
    EXPECT_EQ(::listen(fd, 16), 0);
  }
  EXPECT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  return {fd, ntohs(addr.sin_port)};
}

class ObjectClientTest : public S3IntegrationTest {
 protected:
  std::string Put(const std::string& key, const std::string& body, UserMetadata md = {}) {
    PutRequest req;
    req.key = key;
    req.body = AsSpan(body);
    req.metadata = std::move(md);
    auto r = client_->Put(req);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? r->etag : "";
  }

  std::string GetAll(const std::string& key) {
    auto head = client_->Head({key, ""});
    EXPECT_TRUE(head.ok()) << head.status().ToString();
    if (!head.ok()) return "";
    std::string out(head->size, '\0');
    auto r = client_->Get({key, std::nullopt, head->etag}, {out.data(), out.size()});
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return out;
  }

  // Access keys of the RGW user, added and removed as a rotation does (rgw.sh add-key/rm-key).
  std::string Rgw() const { return std::string(BUCKETFS_SOURCE_DIR) + "/tests/s3server/rgw.sh"; }
  void AddKey(std::string* access, std::string* secret) {
    auto added = testing::RunCommand(Rgw() + " add-key " + server_->state_dir);
    ASSERT_EQ(added.exit_code, 0) << added.output;
    std::istringstream words(added.output);
    words >> *access >> *secret;
    ASSERT_FALSE(secret->empty()) << added.output;
  }
  void RemoveKey(const std::string& access) {
    auto removed = testing::RunCommand(Rgw() + " rm-key " + server_->state_dir + " " + access);
    ASSERT_EQ(removed.exit_code, 0) << removed.output;
  }
  // Writes a credentials file beside `path` and renames it into place, as a kubelet updates
  // a mounted Secret.
  static void WriteCredentialsFile(const std::filesystem::path& path, const std::string& access,
                                   const std::string& secret) {
    const auto beside = path.string() + ".new";
    std::ofstream(beside) << "S3_ACCESS_KEY=" << access << "\nS3_SECRET_KEY=" << secret << "\n";
    std::filesystem::rename(beside, path);
  }
};

TEST_F(ObjectClientTest, PutThenBoto3ReadsTheSameBytes) {
  std::string body = RandomBytes(300'000, 1);
  std::string etag = Put("data/blob.bin", body);
  EXPECT_EQ(etag, Md5Hex(body));  // Single-part ETag is the body's MD5.
  std::string out = Boto3(
      "o = s3.get_object(Bucket=bucket, Key='data/blob.bin')\n"
      "print(hashlib.md5(o['Body'].read()).hexdigest(), o['ContentLength'])\n");
  EXPECT_EQ(out, Md5Hex(body) + " 300000\n");
}

TEST_F(ObjectClientTest, Boto3PutThenGetReadsTheSameBytes) {
  Boto3("s3.put_object(Bucket=bucket, Key='from-boto3', Body=bytes(range(256))*1000,\n"
        "              Metadata={'mode': '33188', 'uid': '1000'})\n");
  std::string expected;
  for (int r = 0; r < 1000; ++r) {
    for (int i = 0; i < 256; ++i) expected.push_back(static_cast<char>(i));
  }
  EXPECT_EQ(GetAll("from-boto3"), expected);
  auto head = client_->Head({"from-boto3", ""});
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(head->size, 256000u);
  EXPECT_EQ(head->metadata.at("mode"), "33188");
  EXPECT_EQ(head->metadata.at("uid"), "1000");
  EXPECT_GT(head->last_modified.time_since_epoch().count(), 0);
}

TEST_F(ObjectClientTest, MetadataWrittenIsSeenByBoto3) {
  Put("meta", "x", {{"mode", "0644"}, {"mtime", "1700000000"}});
  EXPECT_EQ(Boto3("m = s3.head_object(Bucket=bucket, Key='meta')['Metadata']\n"
                  "print(m['mode'], m['mtime'])\n"),
            "0644 1700000000\n");
}

TEST_F(ObjectClientTest, RangedGetsAtEveryBoundary) {
  std::string body = RandomBytes(10'000, 2);
  Put("r", body);
  struct Case {
    uint64_t offset, length;
    size_t expect;
  };
  for (Case c : {Case{0, 1, 1}, Case{0, 10'000, 10'000}, Case{4095, 2, 2}, Case{9'999, 1, 1},
                 Case{9'990, 100, 10}}) {
    std::string buf(c.length, '\0');
    auto r = client_->Get({"r", ByteRange{c.offset, c.length}, ""}, {buf.data(), buf.size()});
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->bytes_read, c.expect);
    EXPECT_EQ(r->info.size, 10'000u);  // Whole object size from Content-Range.
    EXPECT_EQ(buf.substr(0, c.expect), body.substr(c.offset, c.expect));
  }
  std::string buf(10, '\0');
  auto past = client_->Get({"r", ByteRange{10'000, 10}, ""}, {buf.data(), buf.size()});
  ASSERT_FALSE(past.ok());
  EXPECT_EQ(past.status().code(), ErrorCode::kInvalidRange);
}

TEST_F(ObjectClientTest, TooSmallBufferIsAnErrorNotAnOverflow) {
  Put("big", RandomBytes(5000, 3));
  std::string buf(100, '\0');
  auto r = client_->Get({"big", std::nullopt, ""}, {buf.data(), buf.size()});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kInternal);
}

TEST_F(ObjectClientTest, IfMatchPinsTheVersionSeenAtOpen) {
  std::string etag1 = Put("pinned", "version one");
  std::string etag2 = Put("pinned", "version two!");
  ASSERT_NE(etag1, etag2);
  std::string buf(64, '\0');
  auto stale = client_->Get({"pinned", std::nullopt, etag1}, {buf.data(), buf.size()});
  ASSERT_FALSE(stale.ok());
  EXPECT_EQ(stale.status().code(), ErrorCode::kPreconditionFailed);
  EXPECT_EQ(stale.status().http_status(), 412);
  auto fresh = client_->Get({"pinned", std::nullopt, etag2}, {buf.data(), buf.size()});
  ASSERT_TRUE(fresh.ok());
  EXPECT_EQ(buf.substr(0, fresh->bytes_read), "version two!");
  auto head = client_->Head({"pinned", etag1});
  ASSERT_FALSE(head.ok());
  EXPECT_EQ(head.status().code(), ErrorCode::kPreconditionFailed);
}

TEST_F(ObjectClientTest, ConditionalPutsCreateOnlyAndIfMatch) {
  PutRequest req;
  req.key = "cond";
  std::string body = "first";
  req.body = AsSpan(body);
  req.condition = WriteCondition::CreateOnly();
  auto first = client_->Put(req);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  auto second = client_->Put(req);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), ErrorCode::kPreconditionFailed);

  std::string body2 = "second";
  req.body = AsSpan(body2);
  req.condition = WriteCondition::IfMatch("0123456789abcdef0123456789abcdef");
  auto wrong = client_->Put(req);
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.status().code(), ErrorCode::kPreconditionFailed);
  req.condition = WriteCondition::IfMatch(first->etag);
  auto right = client_->Put(req);
  ASSERT_TRUE(right.ok()) << right.status().ToString();
  EXPECT_EQ(Boto3("print(s3.get_object(Bucket=bucket, Key='cond')['Body'].read().decode())"),
            "second\n");
}

TEST_F(ObjectClientTest, HeadAndGetOfMissingKeyAreNotFound) {
  auto head = client_->Head({"nope", ""});
  ASSERT_FALSE(head.ok());
  EXPECT_EQ(head.status().code(), ErrorCode::kNotFound);
  std::string buf(8, '\0');
  auto get = client_->Get({"nope", std::nullopt, ""}, {buf.data(), buf.size()});
  ASSERT_FALSE(get.ok());
  EXPECT_EQ(get.status().code(), ErrorCode::kNotFound);
  EXPECT_FALSE(get.status().request_id().empty());
}

TEST_F(ObjectClientTest, CopyKeepsOrReplacesMetadata) {
  Put("src", "payload", {{"mode", "0600"}});
  CopyRequest keep;
  keep.source_key = "src";
  keep.dest_key = "dst-keep";
  ASSERT_TRUE(client_->Copy(keep).ok());
  CopyRequest replace = keep;
  replace.dest_key = "dst-replace";
  replace.directive = CopyRequest::MetadataDirective::kReplace;
  replace.metadata = {{"mode", "0755"}};
  auto r = client_->Copy(replace);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->etag, Md5Hex("payload"));
  EXPECT_EQ(Boto3("for k in ['dst-keep', 'dst-replace']:\n"
                  "  o = s3.get_object(Bucket=bucket, Key=k)\n"
                  "  print(o['Body'].read().decode(), o['Metadata']['mode'])\n"),
            "payload 0600\npayload 0755\n");
  // Copy onto itself with new metadata is how chmod persists (s3fs convention).
  CopyRequest self = replace;
  self.dest_key = "src";
  self.metadata = {{"mode", "0700"}};
  ASSERT_TRUE(client_->Copy(self).ok());
  EXPECT_EQ(client_->Head({"src", ""})->metadata.at("mode"), "0700");
  // x-amz-copy-source-if-match is sent (CurlClientScriptedTest checks the header), but
  // Ceph RGW 16 ignores it on CopyObject, so it cannot be checked against this server;
  // docs/S3-COMPATIBILITY.md records it, and callers HEAD the source when it matters.
}

TEST_F(ObjectClientTest, DeleteAndDeleteMany) {
  Put("one", "1");
  EXPECT_TRUE(client_->Delete("one").ok());
  EXPECT_TRUE(client_->Delete("one").ok());  // Deleting a missing key succeeds, as in S3.
  EXPECT_EQ(client_->Head({"one", ""}).status().code(), ErrorCode::kNotFound);

  std::vector<std::string> keys;
  for (int i = 0; i < 120; ++i) {
    keys.push_back(fmt::format("many/{:03}", i));
    Put(keys.back(), "x");
  }
  keys.push_back("many/never-existed");
  // Keys XML cannot carry (RGW answers a batch naming U+FFFF with 400): deleted singly.
  for (const std::string& odd : {std::string("many/bell\x07"), std::string("many/x\xEF\xBF\xBF")}) {
    Put(odd, "x");
    keys.push_back(odd);
  }
  auto r = client_->DeleteMany(keys);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->errors.size(), 0u);
  EXPECT_EQ(r->deleted.size(), keys.size());
  EXPECT_EQ(Boto3("print(s3.list_objects_v2(Bucket=bucket, Prefix='many/')['KeyCount'])"), "0\n");
  std::vector<std::string> too_many(1001, "k");
  EXPECT_EQ(client_->DeleteMany(too_many).status().code(), ErrorCode::kInvalidArgument);
}

TEST_F(ObjectClientTest, ListPagesWithDelimiterPrefixAndStartAfter) {
  for (int i = 0; i < 25; ++i) Put(fmt::format("dir/f{:02}", i), "x");
  Put("dir/sub1/a", "x");
  Put("dir/sub2/b", "x");
  Put("other", "x");

  std::vector<std::string> keys, prefixes;
  ListRequest req{.prefix = "dir/", .delimiter = "/", .max_keys = 7};
  int pages = 0;
  for (;;) {
    auto page = client_->List(req);
    ASSERT_TRUE(page.ok()) << page.status().ToString();
    ++pages;
    for (const auto& o : page->objects) {
      keys.push_back(o.key);
      EXPECT_EQ(o.size, 1u);
      EXPECT_EQ(o.etag, Md5Hex("x"));
    }
    for (const auto& p : page->common_prefixes) prefixes.push_back(p);
    if (!page->is_truncated) break;
    req.continuation_token = page->next_continuation_token;
  }
  EXPECT_EQ(pages, 4);  // 25 keys + 2 prefixes, 7 a page.
  ASSERT_EQ(keys.size(), 25u);
  EXPECT_EQ(keys.front(), "dir/f00");
  EXPECT_EQ(keys.back(), "dir/f24");
  EXPECT_EQ(prefixes, (std::vector<std::string>{"dir/sub1/", "dir/sub2/"}));

  auto after = client_->List({.prefix = "dir/", .start_after = "dir/f22"});
  ASSERT_TRUE(after.ok());
  ASSERT_EQ(after->objects.size(), 4u);
  EXPECT_EQ(after->objects[0].key, "dir/f23");
  EXPECT_EQ(after->objects[3].key, "dir/sub2/b");
}

TEST_F(ObjectClientTest, AwkwardKeysRoundTripExactly) {
  const std::vector<std::string> keys = {
      "with space",  "plus+sign",        "percent%41",     "tilde~",     "equals=sign",
      "amp&query?x#frag", "unicodé/日本語", "double//slash", "a/./b/../c", "star*paren()",
      "quote\"apos'",  "lt<gt>",           "trailing/",      "colon:semi;", "comma,at@dollar$",
  };
  for (const auto& k : keys) {
    Put(k, "body of " + k);
    EXPECT_EQ(GetAll(k), "body of " + k) << k;
  }
  // Our listing and boto3's list exactly these keys, byte for byte.
  std::vector<std::string> sorted_keys = keys;
  std::sort(sorted_keys.begin(), sorted_keys.end());
  auto ours = client_->List({});
  ASSERT_TRUE(ours.ok()) << ours.status().ToString();
  std::vector<std::string> our_keys;
  for (const auto& o : ours->objects) our_keys.push_back(o.key);
  EXPECT_EQ(our_keys, sorted_keys);
  std::string listed = Boto3(
      "r = s3.list_objects_v2(Bucket=bucket)\n"
      "print(json.dumps(sorted(o['Key'] for o in r['Contents'])))\n");
  EXPECT_EQ(nlohmann::json::parse(listed).get<std::vector<std::string>>(), sorted_keys);
}

TEST_F(ObjectClientTest, MultipartUploadAssemblesPartsThatBoto3Reads) {
  std::string part1 = RandomBytes(kMinPartSize, 10);
  std::string part2 = RandomBytes(kMinPartSize + 1, 11);
  std::string part3 = RandomBytes(1, 12);
  auto id = client_->CreateMultipart({"mp/object", "application/octet-stream", {{"mode", "0640"}}});
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  std::vector<PartInfo> parts;
  int n = 1;
  for (const std::string* p : {&part1, &part2, &part3}) {
    auto r = client_->UploadPart({"mp/object", *id, n++, AsSpan(*p)});
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->etag, Md5Hex(*p));
    parts.push_back(*r);
  }
  auto listed = client_->ListParts({"mp/object", *id});
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  ASSERT_EQ(listed->parts.size(), 3u);
  EXPECT_EQ(listed->parts[1].size, kMinPartSize + 1);
  EXPECT_EQ(listed->parts[2].etag, parts[2].etag);

  auto uploads = client_->ListMultipartUploads({.prefix = "mp/"});
  ASSERT_TRUE(uploads.ok());
  ASSERT_EQ(uploads->uploads.size(), 1u);
  EXPECT_EQ(uploads->uploads[0].upload_id, *id);

  auto done = client_->CompleteMultipart({"mp/object", *id, parts, {}});
  ASSERT_TRUE(done.ok()) << done.status().ToString();
  EXPECT_TRUE(done->etag.ends_with("-3")) << done->etag;
  std::string whole = part1 + part2 + part3;
  EXPECT_EQ(Boto3("o = s3.get_object(Bucket=bucket, Key='mp/object')\n"
                  "print(hashlib.md5(o['Body'].read()).hexdigest(), o['Metadata']['mode'])\n"),
            Md5Hex(whole) + " 0640\n");
  EXPECT_EQ(client_->ListParts({"mp/object", *id}).status().code(), ErrorCode::kNoSuchUpload);
}

TEST_F(ObjectClientTest, UndersizedPartIsEntityTooSmall) {
  auto id = client_->CreateMultipart({"small", "", {}});
  ASSERT_TRUE(id.ok());
  std::string small = "tiny part", last = "last";
  auto p1 = client_->UploadPart({"small", *id, 1, AsSpan(small)});
  auto p2 = client_->UploadPart({"small", *id, 2, AsSpan(last)});
  ASSERT_TRUE(p1.ok() && p2.ok());
  auto done = client_->CompleteMultipart({"small", *id, {*p1, *p2}, {}});
  ASSERT_FALSE(done.ok());
  EXPECT_EQ(done.status().code(), ErrorCode::kEntityTooSmall) << done.status().ToString();
}

TEST_F(ObjectClientTest, AbortRemovesTheUpload) {
  auto id = client_->CreateMultipart({"aborted", "", {}});
  ASSERT_TRUE(id.ok());
  std::string body = RandomBytes(1000, 5);
  ASSERT_TRUE(client_->UploadPart({"aborted", *id, 1, AsSpan(body)}).ok());
  ASSERT_TRUE(client_->AbortMultipart("aborted", *id).ok());
  auto uploads = client_->ListMultipartUploads({});
  ASSERT_TRUE(uploads.ok());
  EXPECT_TRUE(uploads->uploads.empty());
  EXPECT_EQ(client_->AbortMultipart("aborted", *id).code(), ErrorCode::kNoSuchUpload);
  EXPECT_EQ(client_->Head({"aborted", ""}).status().code(), ErrorCode::kNotFound);
}

TEST_F(ObjectClientTest, UploadPartCopyKeepsRangesServerSide) {
  std::string original = RandomBytes(2 * kMinPartSize, 20);
  std::string etag = Put("base", original);
  auto id = client_->CreateMultipart({"edited", "", {}});
  ASSERT_TRUE(id.ok());
  // New object = first 5 MiB of base (copied server-side) + a new tail.
  auto copied = client_->UploadPartCopy(
      {"edited", *id, 1, "base", ByteRange{0, kMinPartSize}, etag});
  ASSERT_TRUE(copied.ok()) << copied.status().ToString();
  std::string tail = "new tail bytes";
  auto uploaded = client_->UploadPart({"edited", *id, 2, AsSpan(tail)});
  ASSERT_TRUE(uploaded.ok());
  auto done = client_->CompleteMultipart({"edited", *id, {*copied, *uploaded}, {}});
  ASSERT_TRUE(done.ok()) << done.status().ToString();
  std::string expected = original.substr(0, kMinPartSize) + tail;
  EXPECT_EQ(Boto3("print(hashlib.md5(s3.get_object(Bucket=bucket, Key='edited')['Body'].read())"
                  ".hexdigest())"),
            Md5Hex(expected) + "\n");
  auto stale = client_->UploadPartCopy(
      {"edited", *id, 1, "base", ByteRange{0, 10}, "0123456789abcdef0123456789abcdef"});
  EXPECT_FALSE(stale.ok());
}

TEST_F(ObjectClientTest, WrongSecretIsInvalidCredentialsWithAdvice) {
  auto bad = MakeClient(std::make_shared<StaticCredentialsProvider>(
      Credentials{server_->access_key, "not-the-secret", ""}));
  auto r = bad->Head({"anything", ""});
  ASSERT_FALSE(r.ok());
  // HEAD has no body: 403 alone. GET has the S3 error code.
  std::string buf(4, '\0');
  auto g = bad->Get({"anything", std::nullopt, ""}, {buf.data(), buf.size()});
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), ErrorCode::kInvalidCredentials) << g.status().ToString();
  EXPECT_EQ(g.status().server_code(), "SignatureDoesNotMatch");
  EXPECT_NE(g.status().message().find("S3_SECRET_KEY"), std::string::npos);
  EXPECT_EQ(g.status().message().find("not-the-secret"), std::string::npos);

  auto unknown = MakeClient(std::make_shared<StaticCredentialsProvider>(
      Credentials{"NO-SUCH-ACCESS-KEY", "whatever", ""}));
  auto u = unknown->List({});
  ASSERT_FALSE(u.ok());
  EXPECT_EQ(u.status().code(), ErrorCode::kInvalidCredentials) << u.status().ToString();
  EXPECT_EQ(u.status().server_code(), "InvalidAccessKeyId");
}

TEST_F(ObjectClientTest, MissingBucketIsNoSuchBucket) {
  ClientConfig config = BaseConfig();
  config.bucket = "bfs-it-does-not-exist";
  auto other = MakeClient(nullptr, config);
  auto r = other->List({});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kNoSuchBucket);
}

// Virtual-host addressing (bucket in the Host name): RGW serves it under its
// `rgw dns name = localhost`, and curl resolves *.localhost to the loopback address.
TEST_F(ObjectClientTest, VirtualHostAddressingReachesTheSameBucket) {
  ClientConfig config = BaseConfig();
  auto pos = config.endpoint.find("127.0.0.1");
  ASSERT_NE(pos, std::string::npos);
  config.endpoint.replace(pos, 9, "localhost");
  config.addressing = Addressing::kVirtualHost;
  auto vhost = MakeClient(nullptr, config);
  std::string body = "virtual host";
  PutRequest req;
  req.key = "vhost/key with space";
  req.body = AsSpan(body);
  auto put = vhost->Put(req);
  ASSERT_TRUE(put.ok()) << put.status().ToString();
  EXPECT_EQ(GetAll("vhost/key with space"), body);  // Read back path-style.
  auto listed = vhost->List({.prefix = "vhost/"});
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  ASSERT_EQ(listed->objects.size(), 1u);
  EXPECT_EQ(listed->objects[0].key, "vhost/key with space");
}

// A port with nothing listening stands for a stopped server: the call retries, then fails
// with a Network error within its deadline.
TEST_F(ObjectClientTest, StoppedServerGivesNetworkErrorWithinDeadline) {
  auto [fd, port] = LoopbackSocket(/*listening=*/false);
  ::close(fd);  // Nothing listens there now.
  ClientConfig config = BaseConfig();
  config.endpoint = fmt::format("http://127.0.0.1:{}", port);
  auto dead = MakeClient(nullptr, config);
  auto start = std::chrono::steady_clock::now();
  auto deadline = start + std::chrono::seconds(3);
  auto r = dead->Head({"k", ""}, {deadline});
  auto elapsed = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(r.status().code() == ErrorCode::kNetwork || r.status().code() == ErrorCode::kTimeout)
      << r.status().ToString();
  EXPECT_NE(r.status().message().find("127.0.0.1"), std::string::npos);
  EXPECT_GT(dead->stats().retries, 0u);
  EXPECT_LT(elapsed, std::chrono::seconds(3) + config.connect_timeout);
}

// A server that accepts the connection and never answers: the deadline ends the call.
TEST_F(ObjectClientTest, SilentServerTimesOutAtTheDeadline) {
  auto [fd, port] = LoopbackSocket(/*listening=*/true);
  ClientConfig config = BaseConfig();
  config.endpoint = fmt::format("http://127.0.0.1:{}", port);
  auto silent = MakeClient(nullptr, config);
  auto start = std::chrono::steady_clock::now();
  auto r = silent->Head({"k", ""}, {start + std::chrono::milliseconds(1500)});
  auto elapsed = std::chrono::steady_clock::now() - start;
  ::close(fd);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kTimeout) << r.status().ToString();
  EXPECT_GE(elapsed, std::chrono::milliseconds(1400));
  EXPECT_LT(elapsed, std::chrono::milliseconds(4000));
}

TEST_F(ObjectClientTest, PresignedUrlServesTheObjectToPlainHttp) {
  Put("shared/report.txt", "shareable contents");
  auto url = client_->PresignGet("shared/report.txt", 900);
  ASSERT_TRUE(url.ok()) << url.status().ToString();
  EXPECT_NE(url->find("X-Amz-Expires=900"), std::string::npos);
  auto fetched = testing::RunCommand("curl -sS --fail '" + *url + "'");
  EXPECT_EQ(fetched.exit_code, 0) << fetched.output;
  EXPECT_EQ(fetched.output, "shareable contents");
  // A tampered URL is refused by the server.
  std::string tampered = *url;
  tampered.replace(tampered.find("report"), 6, "REPORT");
  EXPECT_NE(testing::RunCommand("curl -sS --fail '" + tampered + "'").exit_code, 0);
  EXPECT_EQ(client_->PresignGet("k", 0).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(client_->PresignGet("k", 604801).status().code(), ErrorCode::kInvalidArgument);
}

TEST_F(ObjectClientTest, UnsignedPayloadModeAlsoWorks) {
  ClientConfig config = BaseConfig();
  config.payload_signing = PayloadSigning::kUnsigned;
  auto unsigned_client = MakeClient(nullptr, config);
  std::string body = RandomBytes(100'000, 7);
  PutRequest req;
  req.key = "unsigned";
  req.body = AsSpan(body);
  ASSERT_TRUE(unsigned_client->Put(req).ok());
  EXPECT_EQ(GetAll("unsigned"), body);
}

TEST_F(ObjectClientTest, ConcurrentCallersShareTheClient) {
  constexpr int kThreads = 8, kPerThread = 12;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        std::string key = fmt::format("conc/{}/{}", t, i);
        std::string body = RandomBytes(1000 + static_cast<size_t>(t * 100 + i), static_cast<uint64_t>(t * 1000 + i));
        PutRequest req;
        req.key = key;
        req.body = AsSpan(body);
        if (!client_->Put(req).ok()) ++failures;
        std::string buf(body.size(), '\0');
        auto r = client_->Get({key, std::nullopt, ""}, {buf.data(), buf.size()});
        if (!r.ok() || buf != body) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(Boto3("print(s3.list_objects_v2(Bucket=bucket, Prefix='conc/')['KeyCount'])"),
            fmt::format("{}\n", kThreads * kPerThread));
}

TEST_F(ObjectClientTest, LargeObjectRoundTripIsByteExact) {
  std::string body = RandomBytes(48u << 20, 99);
  Put("large.bin", body);
  std::string out(body.size(), '\0');
  auto r = client_->Get({"large.bin", std::nullopt, ""}, {out.data(), out.size()});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(out == body);
  EXPECT_EQ(Boto3("print(hashlib.md5(s3.get_object(Bucket=bucket, Key='large.bin')['Body']"
                  ".read()).hexdigest())"),
            Md5Hex(body) + "\n");
}

// Rotation as an operator does it: a new key is created for the user, the credentials file
// is switched to it, the old key is removed — the same client keeps working, no restart.
TEST_F(ObjectClientTest, RotatedKeyInCredentialsFileTakesEffectWithoutRestart) {
  ASSERT_FALSE(server_->state_dir.empty());
  auto dir = std::filesystem::temp_directory_path() / testing::UniqueBucketName("rot");
  std::filesystem::create_directories(dir);
  auto path = dir / "credentials";

  std::string old_access, old_secret, new_access, new_secret;
  ASSERT_NO_FATAL_FAILURE(AddKey(&old_access, &old_secret));
  WriteCredentialsFile(path, old_access, old_secret);
  auto provider = std::make_shared<FileCredentialsProvider>(path.string(), "default", RealClock());
  auto rotating = MakeClient(provider);
  std::string before = "before rotation";
  PutRequest req;
  req.key = "rot";
  req.body = AsSpan(before);
  ASSERT_TRUE(rotating->Put(req).ok());

  ASSERT_NO_FATAL_FAILURE(AddKey(&new_access, &new_secret));
  WriteCredentialsFile(path, new_access, new_secret);
  ASSERT_TRUE(provider->Reload().ok());  // What `bucketfs reload` does.
  ASSERT_NO_FATAL_FAILURE(RemoveKey(old_access));

  std::string after = "after rotation";
  req.body = AsSpan(after);
  auto put = rotating->Put(req);
  EXPECT_TRUE(put.ok()) << put.status().ToString();
  EXPECT_EQ(GetAll("rot"), "after rotation");

  // The old key really is gone: a client still holding it is refused.
  auto stale = MakeClient(std::make_shared<StaticCredentialsProvider>(
      Credentials{old_access, old_secret, ""}));
  auto refused = stale->List({});
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), ErrorCode::kInvalidCredentials)
      << refused.status().ToString();

  RemoveKey(new_access);
  std::filesystem::remove_all(dir);
}

// The key is removed on the server before the watch sees the rewritten file (its clock here
// never advances, so only a reload can): the refused request re-reads the file and is sent
// again with the new key. Both a PUT (an error body says InvalidAccessKeyId) and a HEAD (a
// bare 403) go through, and nothing was reloaded by hand.
TEST_F(ObjectClientTest, ARequestRefusedForAKeyRotatedAwayIsSentAgainWithTheNewKey) {
  ASSERT_FALSE(server_->state_dir.empty());
  auto dir = std::filesystem::temp_directory_path() / testing::UniqueBucketName("rot");
  std::filesystem::create_directories(dir);
  auto path = dir / "credentials";

  std::string key1, secret1, key2, secret2, key3, secret3;
  ASSERT_NO_FATAL_FAILURE(AddKey(&key1, &secret1));
  WriteCredentialsFile(path, key1, secret1);
  FakeClock frozen;
  auto provider = std::make_shared<FileCredentialsProvider>(path.string(), "default", frozen);
  auto client = MakeClient(provider);
  std::string body = "written with the second key";
  PutRequest req;
  req.key = "rotated-away";
  req.body = AsSpan(body);

  ASSERT_NO_FATAL_FAILURE(AddKey(&key2, &secret2));
  WriteCredentialsFile(path, key2, secret2);
  ASSERT_NO_FATAL_FAILURE(RemoveKey(key1));
  auto put = client->Put(req);
  EXPECT_TRUE(put.ok()) << put.status().ToString();
  EXPECT_EQ(GetAll("rotated-away"), body);

  ASSERT_NO_FATAL_FAILURE(AddKey(&key3, &secret3));
  WriteCredentialsFile(path, key3, secret3);
  ASSERT_NO_FATAL_FAILURE(RemoveKey(key2));
  auto head = client->Head({"rotated-away", ""});
  ASSERT_TRUE(head.ok()) << head.status().ToString();
  EXPECT_EQ(head->size, body.size());

  RemoveKey(key3);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace bucketfs::s3
