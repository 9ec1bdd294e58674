#include "fuse/directory_listing.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "common/clock.h"
#include "s3/fake_client.h"
#include "s3/fault_client.h"

namespace bucketfs::fs {
namespace {

using namespace std::chrono_literals;

class DirectoryListingTest : public ::testing::Test {
 protected:
  std::shared_ptr<const DirectoryListing> List(const std::string& dir) {
    auto r = ListDirectory(server_, dir, clock_.Now(), PageDeadline(), problems_);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : std::make_shared<const DirectoryListing>();
  }
  // 60 s for each page, from when it is sent.
  std::function<MonoTime()> PageDeadline() {
    return [this] { return clock_.Now() + 60s; };
  }
  static std::vector<std::string> Names(const DirectoryListing& l) {
    std::vector<std::string> v;
    for (const auto& e : l.entries) v.push_back(e.name);
    return v;
  }

  FakeClock clock_;
  s3::FakeObjectClient server_{clock_};
  OnceLog problems_;
};

TEST_F(DirectoryListingTest, FilesPrefixesAndMarkers) {
  const std::string etag = server_.PutDirect("a.txt", "abc");
  server_.PutDirect("b/c.txt", "1");
  server_.PutDirect("b/d/e", "2");
  server_.PutDirect("b/", "");  // s3fs-style marker of b.
  server_.PutDirect("m/", "");  // A marker-only directory.
  server_.PutDirect("z", "zz");

  auto root = List("");
  EXPECT_TRUE(root->exists);
  EXPECT_EQ(Names(*root), (std::vector<std::string>{"a.txt", "b", "m", "z"}));
  const ListedEntry* a = root->Find("a.txt");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->type, FileType::kRegular);
  EXPECT_EQ(a->size, 3u);
  EXPECT_EQ(a->etag, etag);
  EXPECT_EQ(a->mtime, clock_.WallNow());
  EXPECT_EQ(root->Find("b")->type, FileType::kDirectory);
  EXPECT_EQ(root->Find("m")->type, FileType::kDirectory);
  EXPECT_EQ(root->Find("z")->type, FileType::kRegular);
  EXPECT_EQ(root->Find("nope"), nullptr);
  EXPECT_EQ(root->fetched_at, clock_.Now());

  auto b = List("b");
  EXPECT_TRUE(b->exists);
  EXPECT_EQ(Names(*b), (std::vector<std::string>{"c.txt", "d"})) << "b/ itself is no entry";
  EXPECT_EQ(b->Find("d")->type, FileType::kDirectory);

  auto m = List("m");
  EXPECT_TRUE(m->exists) << "a marker alone makes the directory exist";
  EXPECT_TRUE(m->entries.empty());
  EXPECT_EQ(problems_.reported(), 0u);
}

TEST_F(DirectoryListingTest, ImplicitDirectoriesNeedNoMarker) {
  server_.PutDirect("x/y/z.bin", "data");
  auto root = List("");
  EXPECT_EQ(Names(*root), (std::vector<std::string>{"x"}));
  auto x = List("x");
  EXPECT_TRUE(x->exists);
  EXPECT_EQ(Names(*x), (std::vector<std::string>{"y"}));
  EXPECT_EQ(x->Find("y")->type, FileType::kDirectory);
  auto y = List("x/y");
  EXPECT_EQ(Names(*y), (std::vector<std::string>{"z.bin"}));
  EXPECT_EQ(y->Find("z.bin")->size, 4u);
}

TEST_F(DirectoryListingTest, FileAndDirectoryClashShowsTheDirectoryOnce) {
  server_.PutDirect("clash", "file");
  server_.PutDirect("clash/inner", "x");
  server_.PutDirect("other", "o");
  auto root = List("");
  EXPECT_EQ(Names(*root), (std::vector<std::string>{"clash", "other"}));
  EXPECT_EQ(root->Find("clash")->type, FileType::kDirectory);
  EXPECT_EQ(problems_.reported(), 1u);
  List("");
  EXPECT_EQ(problems_.reported(), 1u) << "reported once";
}

TEST_F(DirectoryListingTest, UnusableNamesAndReservedKeysAreHidden) {
  server_.PutDirect("a//b", "empty component");
  server_.PutDirect("a/ok", "fine");
  server_.PutDirect("./x", "dot");
  server_.PutDirect("../y", "dotdot");
  server_.PutDirect("/lead", "leading slash");
  server_.PutDirect(std::string(300, 'n'), "long file");
  server_.PutDirect(std::string(300, 'd') + "/f", "long dir");
  server_.PutDirect(".bucketfs/lease", "lease");
  server_.PutDirect(".bucketfsx", "not reserved");
  server_.PutDirect("sub/.bucketfs/lease", "only reserved at the root");
  server_.PutDirect("visible", "v");

  auto root = List("");
  EXPECT_EQ(Names(*root), (std::vector<std::string>{".bucketfsx", "a", "sub", "visible"}));
  auto a = List("a");
  EXPECT_EQ(Names(*a), (std::vector<std::string>{"ok"})) << "'a//b' is hidden";
  auto sub = List("sub");
  EXPECT_EQ(Names(*sub), (std::vector<std::string>{".bucketfs"}));
  EXPECT_GE(problems_.reported(), 5u) << "the odd keys are reported (the reserved one is not)";
  // The objects themselves are untouched.
  EXPECT_TRUE(server_.Exists("a//b"));
  EXPECT_TRUE(server_.Exists(".bucketfs/lease"));
}

TEST_F(DirectoryListingTest, FakeClientPagesWithMaxKeysAndContinuationTokens) {
  for (int i = 0; i < 25; ++i) {
    char name[32];
    std::snprintf(name, sizeof(name), "p/k%03d", i);
    server_.PutDirect(name, "x");
  }
  s3::ListRequest req;
  req.prefix = "p/";
  req.delimiter = "/";
  req.max_keys = 10;
  std::vector<std::string> keys;
  int pages = 0;
  for (;;) {
    auto page = server_.List(req);
    ASSERT_TRUE(page.ok()) << page.status().ToString();
    ++pages;
    EXPECT_LE(page->objects.size(), 10u);
    for (const auto& o : page->objects) keys.push_back(o.key);
    if (!page->is_truncated) break;
    ASSERT_FALSE(page->next_continuation_token.empty());
    req.continuation_token = page->next_continuation_token;
  }
  EXPECT_EQ(pages, 3);
  EXPECT_EQ(keys.size(), 25u);
  EXPECT_EQ(keys.front(), "p/k000");
  EXPECT_EQ(keys.back(), "p/k024");
}

TEST_F(DirectoryListingTest, ListingFollowsContinuationTokensPastAThousandEntries) {
  std::set<std::string> expected;
  for (int i = 0; i < 1500; ++i) {
    char name[32];
    std::snprintf(name, sizeof(name), "big/f%05d", i);
    server_.PutDirect(name, "x");
    expected.insert(name + 4);
  }
  for (int i = 0; i < 1100; ++i) {  // Common prefixes count toward pages too.
    char name[32];
    std::snprintf(name, sizeof(name), "big/d%05d/x", i);
    server_.PutDirect(name, "x");
    expected.insert(std::string(name + 4, 6));
  }
  server_.ResetCounters();
  auto big = List("big");
  EXPECT_TRUE(big->exists);
  EXPECT_EQ(server_.calls(s3::Op::kList), 3u) << "2600 entries: pages of 1000";
  ASSERT_EQ(big->entries.size(), 2600u);
  std::vector<std::string> names = Names(*big);
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  EXPECT_EQ(std::set<std::string>(names.begin(), names.end()), expected);
  EXPECT_EQ(big->Find("d00000")->type, FileType::kDirectory);
  EXPECT_EQ(big->Find("f01499")->type, FileType::kRegular);
}

TEST_F(DirectoryListingTest, EmptyPrefixDoesNotExistButTheRootAlways) {
  server_.PutDirect("elsewhere", "x");
  auto gone = List("nothing");
  EXPECT_FALSE(gone->exists);
  EXPECT_TRUE(gone->entries.empty());
  // A prefix that only matches as a string prefix ("else" of "elsewhere") is no directory.
  EXPECT_FALSE(List("else")->exists);

  s3::FakeObjectClient empty_server(clock_);
  auto r = ListDirectory(empty_server, "", clock_.Now(), PageDeadline(), problems_);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE((*r)->exists);
  EXPECT_TRUE((*r)->entries.empty());
}

TEST_F(DirectoryListingTest, ListErrorsAreReturned) {
  auto r = ListDirectory(server_, "", clock_.Now(), [&] { return clock_.Now() - 1s; }, problems_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kTimeout);
}

TEST_F(DirectoryListingTest, EachPageHasItsOwnDeadlineSoALongListingCompletes) {
  for (int i = 0; i < 2500; ++i) server_.PutDirect(fmt::format("big/{:05}", i), "x");
  // Three pages of 1,000, each answered in 40 s: 120 s in all, each page inside its 60 s.
  s3::FaultInjectingClient slow(server_, clock_);
  slow.DelayNext(s3::Op::kList, 3, 40s);
  auto r = ListDirectory(slow, "big", clock_.Now(), PageDeadline(), problems_);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)->entries.size(), 2500u);
  EXPECT_EQ(slow.calls(s3::Op::kList), 3u);
}

TEST(DirectoryListingSetTest, SetInsertsReplacesAndRemovesKeepingTheOrder) {
  DirectoryListing l;
  ListedEntry b{"b", FileType::kRegular, 2};
  ListedEntry a{"a", FileType::kRegular, 1};
  ListedEntry c{"c", FileType::kDirectory};
  l.Set("b", &b);
  l.Set("c", &c);
  l.Set("a", &a);
  ASSERT_EQ(l.entries.size(), 3u);
  EXPECT_EQ(l.entries[0].name, "a");
  EXPECT_EQ(l.entries[2].name, "c");
  ListedEntry b2{"b", FileType::kRegular, 20};
  l.Set("b", &b2);
  EXPECT_EQ(l.Find("b")->size, 20u);
  EXPECT_EQ(l.entries.size(), 3u);
  l.Set("a", nullptr);
  l.Set("zz", nullptr);  // Not there: nothing happens.
  ASSERT_EQ(l.entries.size(), 2u);
  EXPECT_EQ(l.entries[0].name, "b");
}

}  // namespace
}  // namespace bucketfs::fs
