#include "cache/lost_reply.h"

#include <gtest/gtest.h>

#include "common/clock.h"
#include "s3/fake_client.h"

namespace bucketfs::cache {
namespace {

using namespace std::chrono_literals;

std::span<const char> Bytes(const std::string& s) { return {s.data(), s.size()}; }

TEST(LostReplyTest, SinglePutEtagIsTheMd5OfTheBody) {
  // RFC 1321's test vector for "abc".
  EXPECT_EQ(SinglePutEtag(Bytes("abc")), "900150983cd24fb0d6963f7d28e17f72");
}

TEST(LostReplyTest, MultipartEtagMatchesTheFakeServersAndRefusesNonMd5PartEtags) {
  FakeClock clock;
  s3::FakeObjectClient server(clock);
  auto upload = server.CreateMultipart({"k", "", {}}, {});
  ASSERT_TRUE(upload.ok());
  std::vector<s3::PartInfo> parts;
  const std::string one(5 << 20, 'a'), two = "tail";
  for (const auto& [n, body] : {std::pair{1, &one}, std::pair{2, &two}}) {
    auto part = server.UploadPart({"k", *upload, n, Bytes(*body)}, {});
    ASSERT_TRUE(part.ok()) << part.status().ToString();
    parts.push_back(*part);
  }
  auto done = server.CompleteMultipart({"k", *upload, parts, {}}, {});
  ASSERT_TRUE(done.ok()) << done.status().ToString();
  EXPECT_EQ(MultipartEtag(parts), done->etag);

  // A server whose part ETags are no MD5s: nothing can be predicted, and nothing throws.
  parts[0].etag = "not-an-md5-but-32-characters-zz!";
  EXPECT_EQ(MultipartEtag(parts), "");
  parts[0].etag = "abc";
  EXPECT_EQ(MultipartEtag(parts), "");
  EXPECT_EQ(LandedAs(server, "k", "", {}, clock.Now() + 1s), std::nullopt)
      << "an empty expectation matches nothing";
}

TEST(LostReplyTest, LandedAsWantsTheEtagAndEveryMetadataEntry) {
  FakeClock clock;
  s3::FakeObjectClient server(clock);
  const std::string etag = server.PutDirect("k", "", {{"mode", "33188"}, {"mtime", "17.5"}});
  const MonoTime deadline = clock.Now() + 1s;
  EXPECT_EQ(LandedAs(server, "k", etag, {{"mtime", "17.5"}}, deadline), etag);
  // Someone else's empty file (an O_EXCL lock file): same bytes, not our metadata.
  EXPECT_EQ(LandedAs(server, "k", etag, {{"mtime", "18.25"}}, deadline), std::nullopt);
  EXPECT_EQ(LandedAs(server, "k", "other", {}, deadline), std::nullopt);
}

TEST(LostReplyTest, LandedWithMetadataWantsTheSizeAndEveryEntry) {
  FakeClock clock;
  s3::FakeObjectClient server(clock);
  server.PutDirect("k", "body", {{"mode", "33188"}, {"mtime", "1700000000.5"}});
  const MonoTime deadline = clock.Now() + 1s;
  EXPECT_TRUE(LandedWithMetadata(server, "k", 4, {{"mode", "33188"}}, deadline).has_value());
  EXPECT_FALSE(LandedWithMetadata(server, "k", 5, {{"mode", "33188"}}, deadline).has_value());
  EXPECT_FALSE(LandedWithMetadata(server, "k", 4, {{"mode", "33261"}}, deadline).has_value());
  EXPECT_FALSE(LandedWithMetadata(server, "k", 4, {{"uid", "0"}}, deadline).has_value());
  EXPECT_FALSE(LandedWithMetadata(server, "gone", 4, {}, deadline).has_value());
}

}  // namespace
}  // namespace bucketfs::cache
