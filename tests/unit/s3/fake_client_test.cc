#include "s3/fake_client.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "s3/crypto.h"

namespace bucketfs::s3 {
namespace {

using ::testing::Test;

std::string Md5Hex(std::string_view s) { return HexLower(Md5({s.data(), s.size()})); }

// S3's multipart ETag, computed independently of the fake: MD5 of the binary part MD5s.
std::string MultipartEtag(const std::vector<std::string>& parts) {
  std::string digests;
  for (const std::string& p : parts) {
    const Md5Digest d = Md5({p.data(), p.size()});
    digests.append(reinterpret_cast<const char*>(d.data()), d.size());
  }
  return Md5Hex(digests) + "-" + std::to_string(parts.size());
}

class FakeObjectClientTest : public Test {
 protected:
  explicit FakeObjectClientTest(uint64_t min_part_size = 4)
      : client_(FakeObjectClientOptions{"test-bucket", min_part_size}, clock_) {}

  Result<PutResult> Put(const std::string& key, const std::string& body,
                        WriteCondition cond = WriteCondition::None(), UserMetadata metadata = {},
                        std::string content_type = {}) {
    PutRequest req;
    req.key = key;
    req.body = body;
    req.content_type = std::move(content_type);
    req.metadata = std::move(metadata);
    req.condition = std::move(cond);
    return client_.Put(req);
  }

  // The whole body, or the error's code name.
  std::string GetAll(const std::string& key) {
    std::string buf(1 << 16, '\0');
    Result<GetResult> r = client_.Get({key, std::nullopt, {}}, buf);
    if (!r.ok()) return "<" + std::string(ErrorCodeName(r.status().code())) + ">";
    buf.resize(r->bytes_read);
    return buf;
  }

  Result<GetResult> GetRange(const std::string& key, uint64_t offset, uint64_t length,
                             std::string* out) {
    out->assign(64, '\0');
    Result<GetResult> r = client_.Get({key, ByteRange{offset, length}, {}}, *out);
    if (r.ok()) out->resize(r->bytes_read);
    return r;
  }

  std::string Create(const std::string& key, std::string content_type = {},
                     UserMetadata metadata = {}) {
    Result<std::string> id =
        client_.CreateMultipart({key, std::move(content_type), std::move(metadata)});
    EXPECT_TRUE(id.ok()) << id.status().ToString();
    return id.ok() ? *id : std::string();
  }

  PartInfo Part(const std::string& key, const std::string& id, int n, const std::string& body) {
    Result<PartInfo> p = client_.UploadPart({key, id, n, body});
    EXPECT_TRUE(p.ok()) << p.status().ToString();
    return p.ok() ? *p : PartInfo{};
  }

  Result<PutResult> Complete(const std::string& key, const std::string& id,
                             std::vector<PartInfo> parts,
                             WriteCondition cond = WriteCondition::None()) {
    return client_.CompleteMultipart({key, id, std::move(parts), std::move(cond)});
  }

  // Every key and common prefix of a listing, page by page, as "o:key" / "p:prefix".
  std::vector<std::vector<std::string>> ListPages(ListRequest req) {
    std::vector<std::vector<std::string>> pages;
    for (int guard = 0; guard < 100; ++guard) {
      Result<ListPage> page = client_.List(req);
      EXPECT_TRUE(page.ok()) << page.status().ToString();
      if (!page.ok()) break;
      std::vector<std::string> entries;
      // Merge objects and prefixes in key order, as they were produced.
      size_t o = 0;
      size_t p = 0;
      while (o < page->objects.size() || p < page->common_prefixes.size()) {
        if (p == page->common_prefixes.size() ||
            (o < page->objects.size() && page->objects[o].key < page->common_prefixes[p])) {
          entries.push_back("o:" + page->objects[o++].key);
        } else {
          entries.push_back("p:" + page->common_prefixes[p++]);
        }
      }
      pages.push_back(entries);
      EXPECT_EQ(page->is_truncated, !page->next_continuation_token.empty());
      if (!page->is_truncated) break;
      req.continuation_token = page->next_continuation_token;
    }
    return pages;
  }

  FakeClock clock_;
  FakeObjectClient client_;
};

class FakeObjectClientDefaultPartSizeTest : public FakeObjectClientTest {
 protected:
  FakeObjectClientDefaultPartSizeTest() : FakeObjectClientTest(kMinPartSize) {}
};

// --- Objects --------------------------------------------------------------------------

TEST_F(FakeObjectClientTest, PutThenGetReturnsBodyAndMd5Etag) {
  Result<PutResult> put = Put("a/hello.txt", "hello");
  ASSERT_TRUE(put.ok()) << put.status().ToString();
  EXPECT_EQ(put->etag, "5d41402abc4b2a76b9719d911017c592");
  EXPECT_EQ(GetAll("a/hello.txt"), "hello");
  EXPECT_EQ(client_.bucket(), "test-bucket");
}

TEST_F(FakeObjectClientTest, EmptyObjectHasMd5OfNothingAndSizeZero) {
  Result<PutResult> put = Put("empty", "");
  ASSERT_TRUE(put.ok());
  EXPECT_EQ(put->etag, "d41d8cd98f00b204e9800998ecf8427e");
  Result<ObjectInfo> head = client_.Head({"empty", {}});
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(head->size, 0u);
  EXPECT_EQ(GetAll("empty"), "");
}

TEST_F(FakeObjectClientTest, HeadReturnsMetadataContentTypeAndLastModifiedFromClock) {
  const WallTime start = clock_.WallNow();
  ASSERT_TRUE(Put("k", "12345", WriteCondition::None(), {{"Mode", "0644"}}, "text/plain").ok());
  Result<ObjectInfo> head = client_.Head({"k", {}});
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(head->key, "k");
  EXPECT_EQ(head->size, 5u);
  EXPECT_EQ(head->etag, Md5Hex("12345"));
  EXPECT_EQ(head->content_type, "text/plain");
  EXPECT_EQ(head->metadata, (UserMetadata{{"mode", "0644"}}));  // Names lower-cased.
  EXPECT_EQ(head->last_modified, start);
  EXPECT_TRUE(head->storage_class.empty());

  clock_.Advance(std::chrono::milliseconds(1500));
  ASSERT_TRUE(Put("k", "6").ok());
  head = client_.Head({"k", {}});
  ASSERT_TRUE(head.ok());
  // Whole seconds, like S3's Last-Modified header.
  EXPECT_EQ(head->last_modified, start + std::chrono::seconds(1));
}

TEST_F(FakeObjectClientTest, EmptyContentTypeIsStoredAsBinaryOctetStream) {
  ASSERT_TRUE(Put("k", "x").ok());
  Result<ObjectInfo> head = client_.Head({"k", {}});
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(head->content_type, "binary/octet-stream");
}

TEST_F(FakeObjectClientTest, HeadAndGetOfMissingKeyAreNotFound) {
  Result<ObjectInfo> head = client_.Head({"missing", {}});
  ASSERT_FALSE(head.ok());
  EXPECT_EQ(head.status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(head.status().http_status(), 404);
  char buf[8];
  Result<GetResult> get = client_.Get({"missing", std::nullopt, {}}, buf);
  ASSERT_FALSE(get.ok());
  EXPECT_EQ(get.status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(get.status().server_code(), "NoSuchKey");
  EXPECT_NE(get.status().message().find("missing"), std::string::npos);
}

TEST_F(FakeObjectClientTest, HeadIfMatchMismatchIsPreconditionFailed) {
  Result<PutResult> put = Put("k", "v1");
  ASSERT_TRUE(put.ok());
  Result<ObjectInfo> ok = client_.Head({"k", put->etag});
  EXPECT_TRUE(ok.ok());
  Result<ObjectInfo> stale = client_.Head({"k", Md5Hex("other")});
  ASSERT_FALSE(stale.ok());
  EXPECT_EQ(stale.status().code(), ErrorCode::kPreconditionFailed);
  EXPECT_EQ(stale.status().http_status(), 412);
}

TEST_F(FakeObjectClientTest, GetIfMatchMismatchIsPreconditionFailedWithHttp412) {
  Result<PutResult> put = Put("k", "v1");
  ASSERT_TRUE(put.ok());
  const std::string old_etag = put->etag;
  ASSERT_TRUE(Put("k", "v2").ok());  // Someone replaced it.
  char buf[8];
  Result<GetResult> get = client_.Get({"k", std::nullopt, old_etag}, buf);
  ASSERT_FALSE(get.ok());
  EXPECT_EQ(get.status().code(), ErrorCode::kPreconditionFailed);
  EXPECT_EQ(get.status().http_status(), 412);
  EXPECT_EQ(get.status().server_code(), "PreconditionFailed");
  Result<GetResult> current = client_.Get({"k", std::nullopt, Md5Hex("v2")}, buf);
  ASSERT_TRUE(current.ok());
  EXPECT_EQ(std::string(buf, current->bytes_read), "v2");
}

TEST_F(FakeObjectClientTest, GetRangeReturnsSliceAndWholeObjectSize) {
  ASSERT_TRUE(Put("k", "0123456789").ok());
  std::string out;
  Result<GetResult> r = GetRange("k", 2, 3, &out);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(out, "234");
  EXPECT_EQ(r->bytes_read, 3u);
  EXPECT_EQ(r->info.size, 10u);
  EXPECT_EQ(r->info.etag, Md5Hex("0123456789"));
}

TEST_F(FakeObjectClientTest, GetRangeRunningPastEndIsClipped) {
  ASSERT_TRUE(Put("k", "0123456789").ok());
  std::string out;
  Result<GetResult> r = GetRange("k", 7, 100, &out);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(out, "789");
  r = GetRange("k", 9, 1, &out);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(out, "9");
}

TEST_F(FakeObjectClientTest, GetRangeStartingAtOrPastEndIsInvalidRange) {
  ASSERT_TRUE(Put("k", "0123456789").ok());
  std::string out;
  for (uint64_t offset : {10u, 11u, 1000u}) {
    Result<GetResult> r = GetRange("k", offset, 1, &out);
    ASSERT_FALSE(r.ok()) << offset;
    EXPECT_EQ(r.status().code(), ErrorCode::kInvalidRange);
    EXPECT_EQ(r.status().http_status(), 416);
  }
}

TEST_F(FakeObjectClientTest, AnyRangeOfEmptyObjectIsInvalidRangeButWholeGetSucceeds) {
  ASSERT_TRUE(Put("empty", "").ok());
  std::string out;
  Result<GetResult> r = GetRange("empty", 0, 1, &out);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidRange);
  Result<GetResult> whole = client_.Get({"empty", std::nullopt, {}}, std::span<char>());
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ(whole->bytes_read, 0u);
}

TEST_F(FakeObjectClientTest, ZeroLengthRangeIsInvalidArgument) {
  ASSERT_TRUE(Put("k", "abc").ok());
  std::string out;
  Result<GetResult> r = GetRange("k", 0, 0, &out);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
}

TEST_F(FakeObjectClientTest, GetIntoTooSmallBufferIsInternalAndWritesNothing) {
  ASSERT_TRUE(Put("k", "0123456789").ok());
  std::string buf(9, '#');
  Result<GetResult> r = client_.Get({"k", std::nullopt, {}}, buf);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kInternal);
  EXPECT_EQ(buf, "#########");
  // A range that fits the buffer is fine.
  r = client_.Get({"k", ByteRange{1, 9}, {}}, buf);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(buf, "123456789");
}

TEST_F(FakeObjectClientTest, InvalidKeysAreRejected) {
  Result<PutResult> empty = Put("", "x");
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.status().code(), ErrorCode::kInvalidArgument);
  Result<PutResult> longest = Put(std::string(1024, 'k'), "x");
  EXPECT_TRUE(longest.ok());
  Result<PutResult> too_long = Put(std::string(1025, 'k'), "x");
  ASSERT_FALSE(too_long.ok());
  EXPECT_EQ(too_long.status().code(), ErrorCode::kBadRequest);
  EXPECT_EQ(too_long.status().server_code(), "KeyTooLongError");
}

TEST_F(FakeObjectClientTest, MetadataOver2KiBIsRejected) {
  Result<PutResult> big = Put("k", "x", WriteCondition::None(), {{"big", std::string(2046, 'v')}});
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.status().code(), ErrorCode::kBadRequest);
  EXPECT_EQ(big.status().server_code(), "MetadataTooLarge");
  EXPECT_FALSE(client_.Exists("k"));
  EXPECT_TRUE(Put("k", "x", WriteCondition::None(), {{"big", std::string(2045, 'v')}}).ok());
}

// --- Write conditions -----------------------------------------------------------------

TEST_F(FakeObjectClientTest, CreateOnlyPutSucceedsWhenKeyIsAbsent) {
  Result<PutResult> put = Put("lease", "mine", WriteCondition::CreateOnly());
  ASSERT_TRUE(put.ok());
  EXPECT_EQ(client_.ObjectBody("lease"), "mine");
}

TEST_F(FakeObjectClientTest, CreateOnlyPutOnExistingKeyIsPreconditionFailedAndKeepsObject) {
  ASSERT_TRUE(Put("lease", "first").ok());
  Result<PutResult> put = Put("lease", "second", WriteCondition::CreateOnly());
  ASSERT_FALSE(put.ok());
  EXPECT_EQ(put.status().code(), ErrorCode::kPreconditionFailed);
  EXPECT_EQ(put.status().http_status(), 412);
  EXPECT_EQ(client_.ObjectBody("lease"), "first");
}

TEST_F(FakeObjectClientTest, IfMatchPutWithCurrentEtagReplacesObject) {
  Result<PutResult> first = Put("lease", "v1");
  ASSERT_TRUE(first.ok());
  Result<PutResult> second = Put("lease", "v2", WriteCondition::IfMatch(first->etag));
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_EQ(second->etag, Md5Hex("v2"));
  EXPECT_EQ(client_.ObjectBody("lease"), "v2");
}

TEST_F(FakeObjectClientTest, IfMatchPutWithStaleEtagIsPreconditionFailed) {
  Result<PutResult> first = Put("lease", "v1");
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(Put("lease", "other pod").ok());
  Result<PutResult> mine = Put("lease", "v2", WriteCondition::IfMatch(first->etag));
  ASSERT_FALSE(mine.ok());
  EXPECT_EQ(mine.status().code(), ErrorCode::kPreconditionFailed);
  EXPECT_EQ(client_.ObjectBody("lease"), "other pod");
}

TEST_F(FakeObjectClientTest, IfMatchPutOnMissingKeyIsNotFoundLikeAws) {
  Result<PutResult> put = Put("lease", "v", WriteCondition::IfMatch(Md5Hex("old")));
  ASSERT_FALSE(put.ok());
  EXPECT_EQ(put.status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(put.status().http_status(), 404);
  EXPECT_EQ(put.status().server_code(), "NoSuchKey");
  EXPECT_FALSE(client_.Exists("lease"));
}

TEST_F(FakeObjectClientTest, ConcurrentCreateOnlyPutsHaveExactlyOneWinner) {
  constexpr int kThreads = 8;
  for (int round = 0; round < 20; ++round) {
    const std::string key = "race/" + std::to_string(round);
    std::atomic<int> winners{0};
    std::atomic<int> precondition_failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        Result<PutResult> r = Put(key, "writer " + std::to_string(t), WriteCondition::CreateOnly());
        if (r.ok()) {
          winners.fetch_add(1);
        } else if (r.status().code() == ErrorCode::kPreconditionFailed) {
          precondition_failures.fetch_add(1);
        }
      });
    }
    for (std::thread& t : threads) t.join();
    EXPECT_EQ(winners.load(), 1) << key;
    EXPECT_EQ(precondition_failures.load(), kThreads - 1) << key;
  }
}

// --- Copy -----------------------------------------------------------------------------

TEST_F(FakeObjectClientTest, CopyWithCopyDirectiveKeepsSourceMetadataAndContentType) {
  ASSERT_TRUE(Put("src", "data", WriteCondition::None(), {{"mode", "0600"}}, "text/x").ok());
  CopyRequest req;
  req.source_key = "src";
  req.dest_key = "dst";
  req.metadata = {{"ignored", "1"}};  // Only used with kReplace.
  Result<PutResult> copy = client_.Copy(req);
  ASSERT_TRUE(copy.ok()) << copy.status().ToString();
  EXPECT_EQ(copy->etag, Md5Hex("data"));
  Result<ObjectInfo> head = client_.Head({"dst", {}});
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(head->metadata, (UserMetadata{{"mode", "0600"}}));
  EXPECT_EQ(head->content_type, "text/x");
  EXPECT_EQ(client_.ObjectBody("dst"), "data");
  EXPECT_EQ(client_.ObjectBody("src"), "data");
}

TEST_F(FakeObjectClientTest, CopyWithReplaceDirectiveSetsRequestMetadata) {
  ASSERT_TRUE(Put("src", "data", WriteCondition::None(), {{"mode", "0600"}}, "text/x").ok());
  CopyRequest req;
  req.source_key = "src";
  req.dest_key = "dst";
  req.directive = CopyRequest::MetadataDirective::kReplace;
  req.metadata = {{"mode", "0644"}, {"uid", "7"}};
  req.content_type = "application/json";
  ASSERT_TRUE(client_.Copy(req).ok());
  Result<ObjectInfo> head = client_.Head({"dst", {}});
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(head->metadata, (UserMetadata{{"mode", "0644"}, {"uid", "7"}}));
  EXPECT_EQ(head->content_type, "application/json");
}

TEST_F(FakeObjectClientTest, CopyOntoItselfWithCopyDirectiveIsBadRequest) {
  ASSERT_TRUE(Put("k", "data").ok());
  CopyRequest req;
  req.source_key = "k";
  req.dest_key = "k";
  Result<PutResult> copy = client_.Copy(req);
  ASSERT_FALSE(copy.ok());
  EXPECT_EQ(copy.status().code(), ErrorCode::kBadRequest);
  EXPECT_EQ(copy.status().http_status(), 400);
  EXPECT_EQ(copy.status().server_code(), "InvalidRequest");
  EXPECT_NE(copy.status().message().find("copy an object to itself"), std::string::npos);
}

TEST_F(FakeObjectClientTest, CopyOntoItselfWithReplaceDirectiveUpdatesMetadata) {
  ASSERT_TRUE(Put("k", "data", WriteCondition::None(), {{"mode", "0600"}}).ok());
  CopyRequest req;
  req.source_key = "k";
  req.dest_key = "k";
  req.directive = CopyRequest::MetadataDirective::kReplace;
  req.metadata = {{"mode", "0755"}};
  ASSERT_TRUE(client_.Copy(req).ok());
  Result<ObjectInfo> head = client_.Head({"k", {}});
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(head->metadata, (UserMetadata{{"mode", "0755"}}));
  EXPECT_EQ(client_.ObjectBody("k"), "data");
}

TEST_F(FakeObjectClientTest, CopyOfMissingSourceIsNotFound) {
  CopyRequest req;
  req.source_key = "nope";
  req.dest_key = "dst";
  Result<PutResult> copy = client_.Copy(req);
  ASSERT_FALSE(copy.ok());
  EXPECT_EQ(copy.status().code(), ErrorCode::kNotFound);
  EXPECT_FALSE(client_.Exists("dst"));
}

TEST_F(FakeObjectClientTest, CopySourceIfMatchMismatchIsPreconditionFailed) {
  ASSERT_TRUE(Put("src", "data").ok());
  CopyRequest req;
  req.source_key = "src";
  req.dest_key = "dst";
  req.source_if_match = Md5Hex("older data");
  Result<PutResult> copy = client_.Copy(req);
  ASSERT_FALSE(copy.ok());
  EXPECT_EQ(copy.status().code(), ErrorCode::kPreconditionFailed);
  EXPECT_FALSE(client_.Exists("dst"));
  req.source_if_match = Md5Hex("data");
  EXPECT_TRUE(client_.Copy(req).ok());
}

TEST_F(FakeObjectClientTest, CopyHonoursDestinationWriteCondition) {
  ASSERT_TRUE(Put("src", "new").ok());
  ASSERT_TRUE(Put("dst", "old").ok());
  CopyRequest req;
  req.source_key = "src";
  req.dest_key = "dst";
  req.condition = WriteCondition::CreateOnly();
  Result<PutResult> create_only = client_.Copy(req);
  ASSERT_FALSE(create_only.ok());
  EXPECT_EQ(create_only.status().code(), ErrorCode::kPreconditionFailed);
  EXPECT_EQ(client_.ObjectBody("dst"), "old");

  req.condition = WriteCondition::IfMatch(Md5Hex("old"));
  ASSERT_TRUE(client_.Copy(req).ok());
  EXPECT_EQ(client_.ObjectBody("dst"), "new");

  req.dest_key = "absent";
  Result<PutResult> missing = client_.Copy(req);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), ErrorCode::kNotFound);
  EXPECT_FALSE(client_.Exists("absent"));
}

TEST_F(FakeObjectClientTest, CopyOfMultipartObjectGetsPlainMd5Etag) {
  const std::string id = Create("mp");
  PartInfo p1 = Part("mp", id, 1, "aaaa");
  PartInfo p2 = Part("mp", id, 2, "bb");
  Result<PutResult> done = Complete("mp", id, {p1, p2});
  ASSERT_TRUE(done.ok());
  CopyRequest req;
  req.source_key = "mp";
  req.dest_key = "copy";
  Result<PutResult> copy = client_.Copy(req);
  ASSERT_TRUE(copy.ok());
  EXPECT_EQ(copy->etag, Md5Hex("aaaabb"));
  EXPECT_NE(copy->etag, done->etag);
}

// --- Delete ---------------------------------------------------------------------------

TEST_F(FakeObjectClientTest, DeleteRemovesObjectAndMissingKeyIsOk) {
  ASSERT_TRUE(Put("k", "v").ok());
  EXPECT_TRUE(client_.Delete("k").ok());
  EXPECT_FALSE(client_.Exists("k"));
  EXPECT_TRUE(client_.Delete("k").ok());
  EXPECT_TRUE(client_.Delete("never-existed").ok());
}

TEST_F(FakeObjectClientTest, DeleteManyReportsEveryKeyAsDeletedIncludingMissingOnes) {
  ASSERT_TRUE(Put("a", "1").ok());
  ASSERT_TRUE(Put("b", "2").ok());
  ASSERT_TRUE(Put("keep", "3").ok());
  Result<DeleteManyResult> r = client_.DeleteMany({"a", "b", "missing"});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->deleted, (std::vector<std::string>{"a", "b", "missing"}));
  EXPECT_TRUE(r->errors.empty());
  EXPECT_EQ(client_.Keys(), std::vector<std::string>{"keep"});
}

TEST_F(FakeObjectClientTest, DeleteManyRejectsMoreThan1000KeysAndDeletesNothing) {
  std::vector<std::string> keys;
  for (int i = 0; i < 1001; ++i) {
    keys.push_back("k" + std::to_string(i));
    client_.PutDirect(keys.back(), "x");
  }
  Result<DeleteManyResult> r = client_.DeleteMany(keys);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(client_.Keys().size(), 1001u);
  keys.pop_back();
  r = client_.DeleteMany(keys);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->deleted.size(), 1000u);
  EXPECT_EQ(client_.Keys().size(), 1u);
}

TEST_F(FakeObjectClientTest, DeleteManyReportsEmptyKeyAsPerKeyError) {
  ASSERT_TRUE(Put("a", "1").ok());
  Result<DeleteManyResult> r = client_.DeleteMany({"a", ""});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->deleted, std::vector<std::string>{"a"});
  ASSERT_EQ(r->errors.size(), 1u);
  EXPECT_EQ(r->errors[0].code, "UserKeyMustBeSpecified");
}

// --- List -----------------------------------------------------------------------------

TEST_F(FakeObjectClientTest, ListReturnsKeysInByteOrder) {
  const std::vector<std::string> keys = {"b",        "a0",  "a/",   "a", "B",
                                         "\xc3\xa9", "a/b", "\x7f", "~", "a-"};
  for (const std::string& k : keys) client_.PutDirect(k, "x");
  Result<ListPage> page = client_.List({});
  ASSERT_TRUE(page.ok());
  std::vector<std::string> listed;
  for (const ObjectInfo& o : page->objects) listed.push_back(o.key);
  // Unsigned byte order: 'B' < 'a' < "a-" < "a/" < "a0" < 'b' < '~' < 0x7f < 0xc3.
  EXPECT_EQ(listed, (std::vector<std::string>{"B", "a", "a-", "a/", "a/b", "a0", "b", "~", "\x7f",
                                              "\xc3\xa9"}));
  EXPECT_FALSE(page->is_truncated);
}

TEST_F(FakeObjectClientTest, ListReturnsSizeEtagAndStorageClassButNoMetadata) {
  ASSERT_TRUE(Put("k", "12345", WriteCondition::None(), {{"mode", "1"}}, "text/plain").ok());
  Result<ListPage> page = client_.List({});
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->objects.size(), 1u);
  const ObjectInfo& o = page->objects[0];
  EXPECT_EQ(o.size, 5u);
  EXPECT_EQ(o.etag, Md5Hex("12345"));
  EXPECT_EQ(o.storage_class, "STANDARD");
  EXPECT_EQ(o.last_modified, clock_.WallNow());
  EXPECT_TRUE(o.metadata.empty());
  EXPECT_TRUE(o.content_type.empty());
}

TEST_F(FakeObjectClientTest, ListFiltersByPrefix) {
  for (const char* k : {"data/1", "data/2", "database", "dat", "logs/1"}) client_.PutDirect(k, "");
  ListRequest req;
  req.prefix = "data";
  EXPECT_EQ(ListPages(req),
            (std::vector<std::vector<std::string>>{{"o:data/1", "o:data/2", "o:database"}}));
  req.prefix = "nothing";
  EXPECT_EQ(ListPages(req), (std::vector<std::vector<std::string>>{{}}));
}

TEST_F(FakeObjectClientTest, ListWithDelimiterRollsUpCommonPrefixes) {
  for (const char* k : {"a/1", "a/2", "b", "c/d/e", "c/f", "dir/"}) client_.PutDirect(k, "");
  ListRequest req;
  req.delimiter = "/";
  EXPECT_EQ(ListPages(req),
            (std::vector<std::vector<std::string>>{{"p:a/", "o:b", "p:c/", "p:dir/"}}));
}

TEST_F(FakeObjectClientTest, ListWithPrefixAndDelimiterListsOneDirectoryLevel) {
  for (const char* k : {"dir/", "dir/f1", "dir/sub/x", "dir/sub/y/z", "dir/t", "dirx"}) {
    client_.PutDirect(k, "");
  }
  ListRequest req;
  req.prefix = "dir/";
  req.delimiter = "/";
  // The directory marker itself is an object of the listing, as in S3.
  EXPECT_EQ(
      ListPages(req),
      (std::vector<std::vector<std::string>>{{"o:dir/", "o:dir/f1", "p:dir/sub/", "o:dir/t"}}));
  req.prefix = "dir/sub/";
  EXPECT_EQ(ListPages(req),
            (std::vector<std::vector<std::string>>{{"o:dir/sub/x", "p:dir/sub/y/"}}));
}

TEST_F(FakeObjectClientTest, ListWithMultiCharacterDelimiter) {
  for (const char* k : {"x--1", "x--2--3", "y-z"}) client_.PutDirect(k, "");
  ListRequest req;
  req.delimiter = "--";
  EXPECT_EQ(ListPages(req), (std::vector<std::vector<std::string>>{{"p:x--", "o:y-z"}}));
}

TEST_F(FakeObjectClientTest, CommonPrefixesCountTowardMaxKeysAndPagingSkipsRolledUpKeys) {
  for (const char* k : {"a/1", "a/2", "a/3", "a/4", "a/5", "b", "c/1", "c/2", "d"}) {
    client_.PutDirect(k, "");
  }
  ListRequest req;
  req.delimiter = "/";
  req.max_keys = 2;
  EXPECT_EQ(ListPages(req),
            (std::vector<std::vector<std::string>>{{"p:a/", "o:b"}, {"p:c/", "o:d"}}));
  req.max_keys = 1;
  EXPECT_EQ(ListPages(req),
            (std::vector<std::vector<std::string>>{{"p:a/"}, {"o:b"}, {"p:c/"}, {"o:d"}}));
}

TEST_F(FakeObjectClientTest, ListPagingVisitsEveryKeyExactlyOnceAndLastPageIsNotTruncated) {
  std::vector<std::string> expected;
  for (int i = 0; i < 25; ++i) {
    char key[16];
    std::snprintf(key, sizeof(key), "k%02d", i);
    client_.PutDirect(key, "");
    expected.push_back(std::string("o:") + key);
  }
  ListRequest req;
  req.max_keys = 7;
  std::vector<std::vector<std::string>> pages = ListPages(req);
  ASSERT_EQ(pages.size(), 4u);
  EXPECT_EQ(pages[0].size(), 7u);
  EXPECT_EQ(pages[3].size(), 4u);
  std::vector<std::string> all;
  for (const auto& p : pages) all.insert(all.end(), p.begin(), p.end());
  EXPECT_EQ(all, expected);
}

TEST_F(FakeObjectClientTest, ListOfExactlyOneFullPageIsNotTruncated) {
  for (const char* k : {"1", "2", "3"}) client_.PutDirect(k, "");
  ListRequest req;
  req.max_keys = 3;
  Result<ListPage> page = client_.List(req);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->objects.size(), 3u);
  EXPECT_FALSE(page->is_truncated);
  EXPECT_TRUE(page->next_continuation_token.empty());
}

TEST_F(FakeObjectClientTest, ListStartAfterSkipsKeysUpToAndIncludingIt) {
  for (const char* k : {"a", "b", "c", "d"}) client_.PutDirect(k, "");
  ListRequest req;
  req.start_after = "b";
  EXPECT_EQ(ListPages(req), (std::vector<std::vector<std::string>>{{"o:c", "o:d"}}));
  req.start_after = "bb";  // Need not be a key.
  EXPECT_EQ(ListPages(req), (std::vector<std::vector<std::string>>{{"o:c", "o:d"}}));
  req.start_after = "0";  // Before everything.
  EXPECT_EQ(ListPages(req).front().size(), 4u);
}

TEST_F(FakeObjectClientTest, ListStartAfterBeforePrefixStartsAtPrefix) {
  for (const char* k : {"a", "p/1", "p/2", "z"}) client_.PutDirect(k, "");
  ListRequest req;
  req.prefix = "p/";
  req.start_after = "a";
  EXPECT_EQ(ListPages(req), (std::vector<std::vector<std::string>>{{"o:p/1", "o:p/2"}}));
}

TEST_F(FakeObjectClientTest, ListContinuationTokenTakesPrecedenceOverStartAfter) {
  for (const char* k : {"a", "b", "c", "d"}) client_.PutDirect(k, "");
  ListRequest req;
  req.max_keys = 2;
  Result<ListPage> first = client_.List(req);
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(first->is_truncated);
  req.continuation_token = first->next_continuation_token;
  req.start_after = "a";  // Ignored: the token says where to resume.
  Result<ListPage> second = client_.List(req);
  ASSERT_TRUE(second.ok());
  ASSERT_EQ(second->objects.size(), 2u);
  EXPECT_EQ(second->objects[0].key, "c");
  EXPECT_EQ(second->objects[1].key, "d");
}

TEST_F(FakeObjectClientTest, ListMaxKeysZeroReturnsEmptyUntruncatedPage) {
  client_.PutDirect("a", "");
  ListRequest req;
  req.max_keys = 0;
  Result<ListPage> page = client_.List(req);
  ASSERT_TRUE(page.ok());
  EXPECT_TRUE(page->objects.empty());
  EXPECT_TRUE(page->common_prefixes.empty());
  EXPECT_FALSE(page->is_truncated);
}

TEST_F(FakeObjectClientTest, ListMaxKeysAbove1000IsClampedTo1000) {
  for (int i = 0; i < 1005; ++i) client_.PutDirect("k" + std::to_string(i), "");
  ListRequest req;
  req.max_keys = 5000;
  Result<ListPage> page = client_.List(req);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->objects.size(), 1000u);
  EXPECT_TRUE(page->is_truncated);
}

TEST_F(FakeObjectClientTest, ListRejectsForeignContinuationTokenAndNegativeMaxKeys) {
  ListRequest req;
  req.continuation_token = "not-a-token";
  Result<ListPage> bad_token = client_.List(req);
  ASSERT_FALSE(bad_token.ok());
  EXPECT_EQ(bad_token.status().code(), ErrorCode::kBadRequest);
  ListRequest negative;
  negative.max_keys = -1;
  Result<ListPage> bad_max = client_.List(negative);
  ASSERT_FALSE(bad_max.ok());
  EXPECT_EQ(bad_max.status().code(), ErrorCode::kInvalidArgument);
}

TEST_F(FakeObjectClientTest, ListContinuesCorrectlyAfterKeysChangeBetweenPages) {
  for (const char* k : {"a", "b", "c", "d"}) client_.PutDirect(k, "");
  ListRequest req;
  req.max_keys = 2;
  Result<ListPage> first = client_.List(req);
  ASSERT_TRUE(first.ok());
  client_.DeleteDirect("b");  // The last key returned disappears.
  client_.PutDirect("bb", "");
  req.continuation_token = first->next_continuation_token;
  Result<ListPage> second = client_.List(req);
  ASSERT_TRUE(second.ok());
  ASSERT_EQ(second->objects.size(), 2u);
  EXPECT_EQ(second->objects[0].key, "bb");
  EXPECT_EQ(second->objects[1].key, "c");
}

// --- Multipart ------------------------------------------------------------------------

TEST_F(FakeObjectClientTest, MultipartUploadAssemblesPartsWithS3Etag) {
  const std::string id = Create("big", "video/mp4", {{"Mode", "0644"}});
  PartInfo p1 = Part("big", id, 1, "aaaa");
  PartInfo p2 = Part("big", id, 2, "bbbb");
  PartInfo p3 = Part("big", id, 3, "cc");
  EXPECT_EQ(p1.etag, Md5Hex("aaaa"));
  EXPECT_EQ(p1.size, 4u);
  EXPECT_EQ(p1.part_number, 1);
  EXPECT_FALSE(client_.Exists("big"));  // Invisible until completed.
  Result<PutResult> done = Complete("big", id, {p1, p2, p3});
  ASSERT_TRUE(done.ok()) << done.status().ToString();
  EXPECT_EQ(done->etag, MultipartEtag({"aaaa", "bbbb", "cc"}));
  EXPECT_EQ(done->etag.substr(done->etag.size() - 2), "-3");
  EXPECT_EQ(client_.ObjectBody("big"), "aaaabbbbcc");
  Result<ObjectInfo> head = client_.Head({"big", {}});
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(head->etag, done->etag);
  EXPECT_EQ(head->content_type, "video/mp4");
  EXPECT_EQ(head->metadata, (UserMetadata{{"mode", "0644"}}));
  EXPECT_EQ(client_.PendingUploads(), 0u);
}

TEST_F(FakeObjectClientTest, SinglePartMultipartEtagEndsInDashOne) {
  const std::string id = Create("k");
  PartInfo p1 = Part("k", id, 1, "x");
  Result<PutResult> done = Complete("k", id, {p1});
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->etag, MultipartEtag({"x"}));
  EXPECT_NE(done->etag, Md5Hex("x"));
}

TEST_F(FakeObjectClientDefaultPartSizeTest, CompleteAcceptsFiveMiBPartsAndSmallLastPart) {
  const std::string part1(kMinPartSize, 'a');
  const std::string id = Create("k");
  PartInfo p1 = Part("k", id, 1, part1);
  PartInfo p2 = Part("k", id, 2, "tail");
  Result<PutResult> done = Complete("k", id, {p1, p2});
  ASSERT_TRUE(done.ok()) << done.status().ToString();
  EXPECT_EQ(done->etag, MultipartEtag({part1, "tail"}));
  Result<ObjectInfo> head = client_.Head({"k", {}});
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(head->size, kMinPartSize + 4);
}

TEST_F(FakeObjectClientDefaultPartSizeTest, CompleteRejectsUndersizedMiddlePart) {
  const std::string id = Create("k");
  PartInfo p1 = Part("k", id, 1, std::string(kMinPartSize - 1, 'a'));
  PartInfo p2 = Part("k", id, 2, "tail");
  Result<PutResult> done = Complete("k", id, {p1, p2});
  ASSERT_FALSE(done.ok());
  EXPECT_EQ(done.status().code(), ErrorCode::kEntityTooSmall);
  EXPECT_EQ(done.status().server_code(), "EntityTooSmall");
  EXPECT_FALSE(client_.Exists("k"));
  EXPECT_EQ(client_.PendingUploads(), 1u);  // The upload survives a failed Complete.
}

TEST_F(FakeObjectClientTest, ConfigurableMinimumPartSizeAppliesToAllButLastPart) {
  // The fixture's minimum is 4 bytes.
  const std::string id = Create("k");
  PartInfo small = Part("k", id, 1, "abc");
  PartInfo last = Part("k", id, 2, "d");
  Result<PutResult> done = Complete("k", id, {small, last});
  ASSERT_FALSE(done.ok());
  EXPECT_EQ(done.status().code(), ErrorCode::kEntityTooSmall);
  PartInfo ok = Part("k", id, 1, "abcd");
  EXPECT_TRUE(Complete("k", id, {ok, last}).ok());
  EXPECT_EQ(client_.ObjectBody("k"), "abcdd");
}

TEST_F(FakeObjectClientTest, CompleteRejectsPartsNotInStrictlyAscendingOrder) {
  const std::string id = Create("k");
  PartInfo p1 = Part("k", id, 1, "aaaa");
  PartInfo p2 = Part("k", id, 2, "bbbb");
  Result<PutResult> reversed = Complete("k", id, {p2, p1});
  ASSERT_FALSE(reversed.ok());
  EXPECT_EQ(reversed.status().code(), ErrorCode::kBadRequest);
  EXPECT_EQ(reversed.status().server_code(), "InvalidPartOrder");
  Result<PutResult> duplicate = Complete("k", id, {p1, p1});
  ASSERT_FALSE(duplicate.ok());
  EXPECT_EQ(duplicate.status().server_code(), "InvalidPartOrder");
}

TEST_F(FakeObjectClientTest, CompleteRejectsMissingPartOrWrongEtagAsInvalidPart) {
  const std::string id = Create("k");
  PartInfo p1 = Part("k", id, 1, "aaaa");
  PartInfo ghost{2, Md5Hex("never uploaded"), 4};
  Result<PutResult> missing = Complete("k", id, {p1, ghost});
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), ErrorCode::kBadRequest);
  EXPECT_EQ(missing.status().server_code(), "InvalidPart");
  PartInfo wrong = p1;
  wrong.etag = Md5Hex("other");
  Result<PutResult> bad_etag = Complete("k", id, {wrong});
  ASSERT_FALSE(bad_etag.ok());
  EXPECT_EQ(bad_etag.status().server_code(), "InvalidPart");
  PartInfo quoted = p1;
  quoted.etag = "\"" + p1.etag + "\"";  // ETags travel without quotes in this interface.
  EXPECT_FALSE(Complete("k", id, {quoted}).ok());
}

TEST_F(FakeObjectClientTest, CompleteWithNoPartsIsMalformed) {
  const std::string id = Create("k");
  Result<PutResult> done = Complete("k", id, {});
  ASSERT_FALSE(done.ok());
  EXPECT_EQ(done.status().code(), ErrorCode::kBadRequest);
  EXPECT_EQ(done.status().server_code(), "MalformedXML");
}

TEST_F(FakeObjectClientTest, CompleteUsesOnlyTheListedParts) {
  const std::string id = Create("k");
  PartInfo p1 = Part("k", id, 1, "aaaa");
  Part("k", id, 2, "bbbb");
  PartInfo p3 = Part("k", id, 3, "cc");
  Result<PutResult> done = Complete("k", id, {p1, p3});
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(client_.ObjectBody("k"), "aaaacc");
  EXPECT_EQ(done->etag, MultipartEtag({"aaaa", "cc"}));
}

TEST_F(FakeObjectClientTest, ReuploadingPartNumberReplacesIt) {
  const std::string id = Create("k");
  PartInfo old_part = Part("k", id, 1, "old!");
  PartInfo new_part = Part("k", id, 1, "new!");
  EXPECT_NE(old_part.etag, new_part.etag);
  Result<ListPartsPage> parts = client_.ListParts({"k", id, 0, 1000});
  ASSERT_TRUE(parts.ok());
  ASSERT_EQ(parts->parts.size(), 1u);
  EXPECT_EQ(parts->parts[0].etag, new_part.etag);
  Result<PutResult> stale = Complete("k", id, {old_part});
  ASSERT_FALSE(stale.ok());
  EXPECT_EQ(stale.status().server_code(), "InvalidPart");
  ASSERT_TRUE(Complete("k", id, {new_part}).ok());
  EXPECT_EQ(client_.ObjectBody("k"), "new!");
}

TEST_F(FakeObjectClientTest, UploadPartRejectsPartNumbersOutside1To10000) {
  const std::string id = Create("k");
  for (int n : {0, -1, 10001}) {
    Result<PartInfo> p = client_.UploadPart({"k", id, n, std::string("x")});
    ASSERT_FALSE(p.ok()) << n;
    EXPECT_EQ(p.status().code(), ErrorCode::kInvalidArgument) << n;
    Result<PartInfo> pc = client_.UploadPartCopy({"k", id, n, "src", std::nullopt, {}});
    ASSERT_FALSE(pc.ok()) << n;
    EXPECT_EQ(pc.status().code(), ErrorCode::kInvalidArgument) << n;
  }
  EXPECT_TRUE(client_.UploadPart({"k", id, 10000, std::string("x")}).ok());
  EXPECT_TRUE(client_.UploadPart({"k", id, 1, std::string("x")}).ok());
}

TEST_F(FakeObjectClientTest, UploadIsGoneAfterComplete) {
  const std::string id = Create("k");
  PartInfo p1 = Part("k", id, 1, "data");
  ASSERT_TRUE(Complete("k", id, {p1}).ok());
  Result<PutResult> again = Complete("k", id, {p1});
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), ErrorCode::kNoSuchUpload);
  EXPECT_EQ(again.status().http_status(), 404);
  Result<PartInfo> part = client_.UploadPart({"k", id, 2, std::string("x")});
  ASSERT_FALSE(part.ok());
  EXPECT_EQ(part.status().code(), ErrorCode::kNoSuchUpload);
  Result<ListPartsPage> parts = client_.ListParts({"k", id, 0, 1000});
  ASSERT_FALSE(parts.ok());
  EXPECT_EQ(parts.status().code(), ErrorCode::kNoSuchUpload);
  Status abort = client_.AbortMultipart("k", id);
  EXPECT_EQ(abort.code(), ErrorCode::kNoSuchUpload);
}

TEST_F(FakeObjectClientTest, AbortDiscardsUploadAndLaterCallsAreNoSuchUpload) {
  const std::string id = Create("k");
  PartInfo p1 = Part("k", id, 1, "data");
  EXPECT_EQ(client_.PendingUploads(), 1u);
  ASSERT_TRUE(client_.AbortMultipart("k", id).ok());
  EXPECT_EQ(client_.PendingUploads(), 0u);
  EXPECT_FALSE(client_.Exists("k"));
  Result<PutResult> done = Complete("k", id, {p1});
  ASSERT_FALSE(done.ok());
  EXPECT_EQ(done.status().code(), ErrorCode::kNoSuchUpload);
  EXPECT_EQ(client_.AbortMultipart("k", id).code(), ErrorCode::kNoSuchUpload);
}

TEST_F(FakeObjectClientTest, AbortOfUnknownUploadIdIsNoSuchUpload) {
  Status abort = client_.AbortMultipart("k", "no-such-id");
  EXPECT_EQ(abort.code(), ErrorCode::kNoSuchUpload);
  EXPECT_EQ(abort.server_code(), "NoSuchUpload");
}

TEST_F(FakeObjectClientTest, UploadIdUsedWithAnotherKeyIsNoSuchUpload) {
  const std::string id = Create("k");
  Result<PartInfo> p = client_.UploadPart({"other", id, 1, std::string("x")});
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), ErrorCode::kNoSuchUpload);
  EXPECT_EQ(client_.AbortMultipart("other", id).code(), ErrorCode::kNoSuchUpload);
  EXPECT_EQ(client_.PendingUploads(), 1u);
}

TEST_F(FakeObjectClientTest, CompleteHonoursWriteConditions) {
  ASSERT_TRUE(Put("k", "existing").ok());
  const std::string id = Create("k");
  PartInfo p1 = Part("k", id, 1, "new");
  Result<PutResult> create_only = Complete("k", id, {p1}, WriteCondition::CreateOnly());
  ASSERT_FALSE(create_only.ok());
  EXPECT_EQ(create_only.status().code(), ErrorCode::kPreconditionFailed);
  EXPECT_EQ(client_.ObjectBody("k"), "existing");
  EXPECT_EQ(client_.PendingUploads(), 1u);

  Result<PutResult> stale = Complete("k", id, {p1}, WriteCondition::IfMatch(Md5Hex("older")));
  ASSERT_FALSE(stale.ok());
  EXPECT_EQ(stale.status().code(), ErrorCode::kPreconditionFailed);

  Result<PutResult> current = Complete("k", id, {p1}, WriteCondition::IfMatch(Md5Hex("existing")));
  ASSERT_TRUE(current.ok()) << current.status().ToString();
  EXPECT_EQ(client_.ObjectBody("k"), "new");

  const std::string id2 = Create("fresh");
  PartInfo q1 = Part("fresh", id2, 1, "x");
  Result<PutResult> missing = Complete("fresh", id2, {q1}, WriteCondition::IfMatch(Md5Hex("x")));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), ErrorCode::kNotFound);
  EXPECT_TRUE(Complete("fresh", id2, {q1}, WriteCondition::CreateOnly()).ok());
}

TEST_F(FakeObjectClientTest, UploadPartCopyCopiesRangeOfExistingObject) {
  ASSERT_TRUE(Put("src", "0123456789").ok());
  const std::string id = Create("dst");
  Result<PartInfo> p1 = client_.UploadPartCopy({"dst", id, 1, "src", ByteRange{2, 5}, {}});
  ASSERT_TRUE(p1.ok()) << p1.status().ToString();
  EXPECT_EQ(p1->etag, Md5Hex("23456"));
  EXPECT_EQ(p1->size, 5u);
  Result<PartInfo> p2 = client_.UploadPartCopy({"dst", id, 2, "src", std::nullopt, {}});
  ASSERT_TRUE(p2.ok());
  EXPECT_EQ(p2->size, 10u);
  ASSERT_TRUE(Complete("dst", id, {*p1, *p2}).ok());
  EXPECT_EQ(client_.ObjectBody("dst"), "234560123456789");
}

TEST_F(FakeObjectClientTest, UploadPartCopySendsNoBodyBytes) {
  ASSERT_TRUE(Put("src", "0123456789").ok());
  const std::string id = Create("dst");
  const uint64_t before = client_.bytes_sent();
  ASSERT_TRUE(client_.UploadPartCopy({"dst", id, 1, "src", std::nullopt, {}}).ok());
  EXPECT_EQ(client_.bytes_sent(), before);
}

TEST_F(FakeObjectClientTest, UploadPartCopyRangeOutsideSourceIsInvalidRange) {
  ASSERT_TRUE(Put("src", "0123456789").ok());
  const std::string id = Create("dst");
  for (ByteRange r : {ByteRange{10, 1}, ByteRange{5, 6}, ByteRange{0, 0}}) {
    Result<PartInfo> p = client_.UploadPartCopy({"dst", id, 1, "src", r, {}});
    ASSERT_FALSE(p.ok()) << r.offset << "+" << r.length;
    EXPECT_EQ(p.status().code(), ErrorCode::kInvalidRange);
  }
  EXPECT_TRUE(client_.UploadPartCopy({"dst", id, 1, "src", ByteRange{5, 5}, {}}).ok());
}

TEST_F(FakeObjectClientTest, UploadPartCopyChecksSourceExistsAndSourceIfMatch) {
  const std::string id = Create("dst");
  Result<PartInfo> missing = client_.UploadPartCopy({"dst", id, 1, "src", std::nullopt, {}});
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), ErrorCode::kNotFound);
  ASSERT_TRUE(Put("src", "v2").ok());
  Result<PartInfo> stale =
      client_.UploadPartCopy({"dst", id, 1, "src", std::nullopt, Md5Hex("v1")});
  ASSERT_FALSE(stale.ok());
  EXPECT_EQ(stale.status().code(), ErrorCode::kPreconditionFailed);
  EXPECT_TRUE(client_.UploadPartCopy({"dst", id, 1, "src", std::nullopt, Md5Hex("v2")}).ok());
  Result<PartInfo> no_upload = client_.UploadPartCopy({"dst", "bogus", 1, "src", std::nullopt, {}});
  ASSERT_FALSE(no_upload.ok());
  EXPECT_EQ(no_upload.status().code(), ErrorCode::kNoSuchUpload);
}

TEST_F(FakeObjectClientTest, ListPartsPagesWithPartNumberMarker) {
  const std::string id = Create("k");
  std::vector<PartInfo> uploaded;
  for (int n : {5, 1, 3, 2, 4}) uploaded.push_back(Part("k", id, n, std::string(n, 'x')));
  Result<ListPartsPage> page = client_.ListParts({"k", id, 0, 2});
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->parts.size(), 2u);
  EXPECT_EQ(page->parts[0].part_number, 1);
  EXPECT_EQ(page->parts[0].size, 1u);
  EXPECT_EQ(page->parts[0].etag, Md5Hex("x"));
  EXPECT_EQ(page->parts[1].part_number, 2);
  EXPECT_TRUE(page->is_truncated);
  EXPECT_EQ(page->next_part_number_marker, 2);

  page = client_.ListParts({"k", id, page->next_part_number_marker, 2});
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->parts.size(), 2u);
  EXPECT_EQ(page->parts[0].part_number, 3);
  EXPECT_EQ(page->parts[1].part_number, 4);
  EXPECT_TRUE(page->is_truncated);

  page = client_.ListParts({"k", id, page->next_part_number_marker, 2});
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->parts.size(), 1u);
  EXPECT_EQ(page->parts[0].part_number, 5);
  EXPECT_EQ(page->parts[0].size, 5u);
  EXPECT_FALSE(page->is_truncated);
}

TEST_F(FakeObjectClientTest, ListMultipartUploadsFiltersByPrefixAndPagesWithMarkers) {
  const std::string a1 = Create("a");
  const std::string b = Create("b");
  const std::string a2 = Create("a");  // A second upload of the same key, listed after a1.
  const std::string cx = Create("c/x");

  ListUploadsRequest req;
  req.max_uploads = 2;
  Result<ListUploadsPage> page = client_.ListMultipartUploads(req);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->uploads.size(), 2u);
  EXPECT_EQ(page->uploads[0].key, "a");
  EXPECT_EQ(page->uploads[0].upload_id, a1);
  EXPECT_EQ(page->uploads[1].upload_id, a2);
  EXPECT_EQ(page->uploads[0].initiated, clock_.WallNow());
  EXPECT_TRUE(page->is_truncated);
  EXPECT_EQ(page->next_key_marker, "a");
  EXPECT_EQ(page->next_upload_id_marker, a2);

  req.key_marker = page->next_key_marker;
  req.upload_id_marker = page->next_upload_id_marker;
  page = client_.ListMultipartUploads(req);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->uploads.size(), 2u);
  EXPECT_EQ(page->uploads[0].upload_id, b);
  EXPECT_EQ(page->uploads[1].upload_id, cx);
  EXPECT_FALSE(page->is_truncated);

  // Resuming in the middle of one key's uploads.
  req.upload_id_marker = a1;
  page = client_.ListMultipartUploads(req);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->uploads.size(), 2u);
  EXPECT_EQ(page->uploads[0].upload_id, a2);
  EXPECT_EQ(page->uploads[1].upload_id, b);

  // A key marker alone skips every upload of that key.
  ListUploadsRequest after_a;
  after_a.key_marker = "a";
  page = client_.ListMultipartUploads(after_a);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->uploads.size(), 2u);
  EXPECT_EQ(page->uploads[0].key, "b");

  ListUploadsRequest by_prefix;
  by_prefix.prefix = "c/";
  page = client_.ListMultipartUploads(by_prefix);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->uploads.size(), 1u);
  EXPECT_EQ(page->uploads[0].upload_id, cx);

  ASSERT_TRUE(client_.AbortMultipart("b", b).ok());
  page = client_.ListMultipartUploads({});
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->uploads.size(), 3u);
}

// --- Counters, deadlines, direct access -----------------------------------------------

TEST_F(FakeObjectClientTest, CountsCallsPerOperationAndBodyBytes) {
  ASSERT_TRUE(Put("k", "12345").ok());
  EXPECT_EQ(GetAll("k"), "12345");
  EXPECT_EQ(GetAll("missing"), "<NotFound>");  // Failed calls count too.
  ASSERT_TRUE(client_.Head({"k", {}}).ok());
  EXPECT_EQ(client_.calls(Op::kPut), 1u);
  EXPECT_EQ(client_.calls(Op::kGet), 2u);
  EXPECT_EQ(client_.calls(Op::kHead), 1u);
  EXPECT_EQ(client_.calls(Op::kList), 0u);
  EXPECT_EQ(client_.total_calls(), 4u);
  EXPECT_EQ(client_.bytes_sent(), 5u);
  EXPECT_EQ(client_.bytes_received(), 5u);

  const std::string id = Create("m");
  Part("m", id, 1, "abc");
  EXPECT_EQ(client_.calls(Op::kCreateMultipart), 1u);
  EXPECT_EQ(client_.calls(Op::kUploadPart), 1u);
  EXPECT_EQ(client_.bytes_sent(), 8u);

  client_.ResetCounters();
  EXPECT_EQ(client_.total_calls(), 0u);
  EXPECT_EQ(client_.bytes_sent(), 0u);
  EXPECT_EQ(client_.bytes_received(), 0u);
}

TEST_F(FakeObjectClientTest, DirectAccessorsBypassCounters) {
  const std::string etag = client_.PutDirect("k", "body", {{"Mode", "0644"}}, "text/plain");
  EXPECT_EQ(etag, Md5Hex("body"));
  EXPECT_TRUE(client_.Exists("k"));
  EXPECT_EQ(client_.ObjectBody("k"), "body");
  EXPECT_EQ(client_.ObjectBody("missing"), std::nullopt);
  std::optional<ObjectInfo> info = client_.ObjectInfoDirect("k");
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->metadata, (UserMetadata{{"mode", "0644"}}));
  EXPECT_EQ(info->content_type, "text/plain");
  client_.DeleteDirect("k");
  EXPECT_FALSE(client_.Exists("k"));
  EXPECT_EQ(client_.total_calls(), 0u);
  EXPECT_EQ(client_.bytes_sent(), 0u);
}

TEST_F(FakeObjectClientTest, PutDirectReplacementMakesPinnedEtagReadsFail) {
  Result<PutResult> put = Put("k", "mine");
  ASSERT_TRUE(put.ok());
  client_.PutDirect("k", "theirs");  // Another writer replaces the object.
  char buf[16];
  Result<GetResult> get = client_.Get({"k", std::nullopt, put->etag}, buf);
  ASSERT_FALSE(get.ok());
  EXPECT_EQ(get.status().code(), ErrorCode::kPreconditionFailed);
}

TEST_F(FakeObjectClientTest, ExpiredDeadlineIsTimeoutAndChangesNothing) {
  CallOptions expired;
  expired.deadline = clock_.Now();
  PutRequest req;
  req.key = "k";
  const std::string body = "v";
  req.body = body;
  Result<PutResult> put = client_.Put(req, expired);
  ASSERT_FALSE(put.ok());
  EXPECT_EQ(put.status().code(), ErrorCode::kTimeout);
  EXPECT_FALSE(client_.Exists("k"));
  EXPECT_EQ(client_.calls(Op::kPut), 1u);

  char buf[4];
  EXPECT_EQ(client_.Get({"k", std::nullopt, {}}, buf, expired).status().code(),
            ErrorCode::kTimeout);
  EXPECT_EQ(client_.Delete("k", expired).code(), ErrorCode::kTimeout);
  EXPECT_EQ(client_.List({}, expired).status().code(), ErrorCode::kTimeout);
  EXPECT_EQ(client_.CreateMultipart({"k", {}, {}}, expired).status().code(), ErrorCode::kTimeout);
  EXPECT_EQ(client_.PendingUploads(), 0u);

  CallOptions future;
  future.deadline = clock_.Now() + std::chrono::seconds(1);
  EXPECT_TRUE(client_.Put(req, future).ok());
  clock_.Advance(std::chrono::seconds(1));
  EXPECT_EQ(client_.Head({"k", {}}, future).status().code(), ErrorCode::kTimeout);
}

// --- Concurrency (run under TSan: -DBUCKETFS_SANITIZE=thread) --------------------------

TEST_F(FakeObjectClientTest, ConcurrentPutsAndGetsOfDistinctKeysDoNotInterfere) {
  constexpr int kThreads = 8;
  constexpr int kOps = 200;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kOps; ++i) {
        const std::string key = "t" + std::to_string(t) + "/k" + std::to_string(i % 10);
        const std::string body = key + "#" + std::to_string(i);
        Result<PutResult> put = Put(key, body);
        if (!put.ok() || put->etag != Md5Hex(body)) failures.fetch_add(1);
        if (GetAll(key) != body) failures.fetch_add(1);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(client_.Keys().size(), static_cast<size_t>(kThreads * 10));
  EXPECT_EQ(client_.calls(Op::kPut), static_cast<uint64_t>(kThreads * kOps));
}

TEST_F(FakeObjectClientTest, ConcurrentWritersOfOneKeyNeverExposeTornObjects) {
  constexpr int kWriters = 4;
  constexpr int kReaders = 4;
  constexpr int kOps = 300;
  std::atomic<int> torn{0};
  std::atomic<bool> stop{false};
  ASSERT_TRUE(Put("same", std::string(4096, 'w')).ok());
  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      for (int i = 0; i < kOps; ++i) {
        ASSERT_TRUE(Put("same", std::string(4096, static_cast<char>('a' + w))).ok());
      }
    });
  }
  for (int r = 0; r < kReaders; ++r) {
    threads.emplace_back([&] {
      std::string buf(8192, '\0');
      while (!stop.load()) {
        Result<GetResult> get = client_.Get({"same", std::nullopt, {}}, buf);
        if (!get.ok()) {
          torn.fetch_add(1);
          continue;
        }
        const std::string body = buf.substr(0, get->bytes_read);
        // One writer's body, whole, with that body's ETag.
        if (body.size() != 4096 || body.find_first_not_of(body[0]) != std::string::npos ||
            get->info.etag != Md5Hex(body)) {
          torn.fetch_add(1);
        }
      }
    });
  }
  for (int w = 0; w < kWriters; ++w) threads[w].join();
  stop.store(true);
  for (size_t i = kWriters; i < threads.size(); ++i) threads[i].join();
  EXPECT_EQ(torn.load(), 0);
}

TEST_F(FakeObjectClientTest, ConcurrentMultipartUploadsListingsAndDeletesAreSafe) {
  constexpr int kThreads = 6;
  std::atomic<int> failures{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 30; ++i) {
        const std::string key = "mp/" + std::to_string(t) + "/" + std::to_string(i);
        Result<std::string> id = client_.CreateMultipart({key, {}, {}});
        if (!id.ok()) {
          failures.fetch_add(1);
          continue;
        }
        std::vector<PartInfo> parts;
        for (int n = 1; n <= 3; ++n) {
          Result<PartInfo> p =
              client_.UploadPart({key, *id, n, std::string(4, static_cast<char>('a' + n))});
          if (p.ok()) parts.push_back(*p);
        }
        // Replace part 2 before completing.
        Result<PartInfo> again = client_.UploadPart({key, *id, 2, std::string(4, 'z')});
        if (!again.ok() || parts.size() != 3) {
          failures.fetch_add(1);
          continue;
        }
        parts[1] = *again;
        if (!Complete(key, *id, parts).ok()) failures.fetch_add(1);
        if (GetAll(key) != "bbbbzzzzdddd") failures.fetch_add(1);
        if (i % 3 == 0 && !client_.DeleteMany({key}).ok()) failures.fetch_add(1);
      }
    });
  }
  threads.emplace_back([&] {
    while (!stop.load()) {
      ListRequest req;
      req.prefix = "mp/";
      req.delimiter = "/";
      req.max_keys = 2;
      std::set<std::string> seen;
      for (;;) {
        Result<ListPage> page = client_.List(req);
        if (!page.ok()) {
          failures.fetch_add(1);
          break;
        }
        for (const std::string& p : page->common_prefixes) {
          if (!seen.insert(p).second) failures.fetch_add(1);  // Never listed twice.
        }
        if (!page->is_truncated) break;
        req.continuation_token = page->next_continuation_token;
      }
      if (!client_.ListMultipartUploads({}).ok()) failures.fetch_add(1);
    }
  });
  for (int t = 0; t < kThreads; ++t) threads[t].join();
  stop.store(true);
  threads.back().join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(client_.PendingUploads(), 0u);
  EXPECT_EQ(client_.Keys().size(), static_cast<size_t>(kThreads * 20));
}

}  // namespace
}  // namespace bucketfs::s3
