#include "fuse/inode_table.h"

#include <gtest/gtest.h>

#include <chrono>
#include <string>

namespace bucketfs::fs {
namespace {

using namespace std::chrono_literals;

const MonoTime kExpiry = MonoTime(std::chrono::hours(2000));

Attributes File(uint64_t size = 1) {
  Attributes a;
  a.type = FileType::kRegular;
  a.permissions = 0644;
  a.size = size;
  return a;
}

Attributes Dir() { return DirectoryAttributes(WallTime{}, AttributeDefaults{}); }

InodeTable Table() { return InodeTable(Dir(), 77); }

TEST(InodeTableTest, RootExistsAndIsADirectory) {
  InodeTable t = Table();
  EXPECT_EQ(t.size(), 1u);
  EXPECT_EQ(t.generation(), 77u);
  auto root = t.Get(kRootInode);
  ASSERT_TRUE(root.has_value());
  EXPECT_EQ(root->attr.type, FileType::kDirectory);
  EXPECT_EQ(root->attr.ino, kRootInode);
  EXPECT_EQ(root->path, "");
  EXPECT_EQ(t.GetByPath("")->ino, kRootInode);
}

TEST(InodeTableTest, UpsertThenForgetDropsTheNode) {
  InodeTable t = Table();
  Node n = t.Upsert("a.txt", File(5), "e1", kExpiry, 1);
  EXPECT_NE(n.ino, kRootInode);
  EXPECT_EQ(n.attr.ino, n.ino);
  EXPECT_EQ(n.nlookup, 1u);
  EXPECT_EQ(n.etag, "e1");
  EXPECT_EQ(n.attr_expiry, kExpiry);
  EXPECT_EQ(t.size(), 2u);
  EXPECT_EQ(t.GetByPath("a.txt")->ino, n.ino);
  t.Forget(n.ino, 1);
  EXPECT_FALSE(t.Get(n.ino).has_value());
  EXPECT_FALSE(t.GetByPath("a.txt").has_value());
  EXPECT_EQ(t.size(), 1u);
}

TEST(InodeTableTest, OwnEtagIsOnlyWhatThisMountStoredItself) {
  InodeTable t = Table();
  const uint64_t before = t.Tick();
  Node n = t.UpsertUnlessNewer("f", File(), "server-1", kExpiry, 1, before);
  EXPECT_EQ(n.own_etag, "") << "found on the server";
  n = t.Upsert("f", File(), "mine", kExpiry, 0);  // A commit of this mount.
  EXPECT_EQ(n.own_etag, "mine");
  n = t.UpsertUnlessNewer("f", File(), "server-2", kExpiry, 0, t.Tick());
  EXPECT_EQ(n.etag, "server-2");
  EXPECT_EQ(n.own_etag, "mine") << "a later server answer is not this mount's version";
  n = t.Upsert("f", File(), "", kExpiry, 0);  // Dirty again: no version yet.
  EXPECT_EQ(n.own_etag, "mine");
}

TEST(InodeTableTest, LookupsAddUpAndForgetsSubtract) {
  InodeTable t = Table();
  Node n = t.Upsert("f", File(), "e", kExpiry, 2);
  EXPECT_EQ(t.Upsert("f", File(), "e", kExpiry, 1).ino, n.ino) << "same path, same node";
  EXPECT_TRUE(t.AddLookups(n.ino, 2));
  EXPECT_EQ(t.Get(n.ino)->nlookup, 5u);
  t.Forget(n.ino, 4);
  ASSERT_TRUE(t.Get(n.ino).has_value());
  EXPECT_EQ(t.Get(n.ino)->nlookup, 1u);
  t.Forget(n.ino, 1);
  EXPECT_FALSE(t.Get(n.ino).has_value());
  EXPECT_FALSE(t.AddLookups(n.ino, 1)) << "a dropped node cannot be revived by number";
}

TEST(InodeTableTest, RootIsNeverDropped) {
  InodeTable t = Table();
  t.Forget(kRootInode, 1);
  t.Forget(kRootInode, 1000);
  t.DropIfUnused(kRootInode);
  ASSERT_TRUE(t.Get(kRootInode).has_value());
  EXPECT_EQ(t.size(), 1u);
  // Upserting the root's path keeps the root node and its attributes.
  Node r = t.Upsert("", File(), "x", kExpiry, 1);
  EXPECT_EQ(r.ino, kRootInode);
  EXPECT_EQ(r.attr.type, FileType::kDirectory);
}

TEST(InodeTableTest, OverForgetIsClampedAndUnknownForgetIgnored) {
  InodeTable t = Table();
  Node keep = t.Upsert("keep", File(), "e", kExpiry, 1);
  Node n = t.Upsert("f", File(), "e", kExpiry, 2);
  t.Forget(n.ino, 10);
  EXPECT_FALSE(t.Get(n.ino).has_value());
  t.Forget(n.ino, 1);      // Already gone.
  t.Forget(123456789, 1);  // Never existed.
  EXPECT_EQ(t.size(), 2u);
  EXPECT_EQ(t.Get(keep.ino)->nlookup, 1u) << "other nodes untouched";
}

TEST(InodeTableTest, OpenHandleKeepsTheNodeAliveAfterForget) {
  InodeTable t = Table();
  Node n = t.Upsert("f", File(), "e1", kExpiry, 1);
  t.OpenHandle(n.ino, "e1");
  t.Forget(n.ino, 5);  // Over-forget as well: clamped to 0.
  auto still = t.Get(n.ino);
  ASSERT_TRUE(still.has_value());
  EXPECT_EQ(still->nlookup, 0u);
  EXPECT_EQ(still->open_handles, 1u);
  t.CloseHandle(n.ino);
  EXPECT_FALSE(t.Get(n.ino).has_value());
  EXPECT_EQ(t.size(), 1u);
}

TEST(InodeTableTest, TypeChangeGetsANewInodeNumber) {
  InodeTable t = Table();
  Node file = t.Upsert("x", File(), "e", kExpiry, 1);
  Node dir = t.Upsert("x", Dir(), "", kExpiry, 1);
  EXPECT_NE(dir.ino, file.ino);
  EXPECT_EQ(dir.attr.type, FileType::kDirectory);
  EXPECT_EQ(t.GetByPath("x")->ino, dir.ino);
  // The old node stays, reachable by number only, until the kernel forgets it.
  auto old = t.Get(file.ino);
  ASSERT_TRUE(old.has_value());
  EXPECT_EQ(old->attr.type, FileType::kRegular);
  EXPECT_TRUE(old->path.empty());
  t.Forget(file.ino, 1);
  EXPECT_FALSE(t.Get(file.ino).has_value());
  EXPECT_EQ(t.GetByPath("x")->ino, dir.ino) << "forgetting the old node keeps the new path";
  EXPECT_EQ(t.size(), 2u);

  // A symlink found by HEAD where a file was listed: new number too.
  Node f2 = t.Upsert("y", File(), "e", kExpiry, 0);
  Attributes link = File();
  link.type = FileType::kSymlink;
  Node l = t.Upsert("y", link, "e", kExpiry, 1);
  EXPECT_NE(l.ino, f2.ino);
  EXPECT_FALSE(t.Get(f2.ino).has_value()) << "an old node without lookups goes at once";
}

// A stamp is when the node's data was known, not when it was stored: an answer to a request
// sent before a newer store loses to it, and one stored late keeps its early stamp.
TEST(InodeTableTest, StampsAreWhenTheDataWasTrueNotWhenItWasStored) {
  InodeTable t = Table();
  const uint64_t asked = t.Tick();            // A request goes out...
  Node committed = t.Upsert("f", File(9), "new", kExpiry, 1);  // ...a commit lands...
  EXPECT_GT(committed.stored, asked);
  Node kept = t.UpsertUnlessNewer("f", File(4), "old", kExpiry, 1, asked);  // ...it answers.
  EXPECT_EQ(kept.etag, "new");
  EXPECT_EQ(kept.attr.size, 9u);
  EXPECT_EQ(kept.nlookup, 2u) << "the lookup still counts";

  const uint64_t listed = t.Tick();
  Node stored = t.UpsertUnlessNewer("g", File(3), "v1", kExpiry, 0, listed);
  (void)t.Tick();
  EXPECT_EQ(stored.stored, listed) << "stored late, stamped with when it was true";
  Node newer = t.UpsertUnlessNewer("g", File(7), "v2", kExpiry, 0, t.Tick());
  EXPECT_EQ(newer.etag, "v2");
}

TEST(InodeTableTest, UpsertKeepingEtagKeepsTheCommittedEtag) {
  InodeTable t = Table();
  EXPECT_EQ(t.UpsertKeepingEtag("new", File(0), kExpiry, 1).etag, "");
  t.Upsert("f", File(4), "committed", kExpiry, 1);
  Node dirty = t.UpsertKeepingEtag("f", File(12), kExpiry, 0);
  EXPECT_EQ(dirty.etag, "committed");
  EXPECT_EQ(dirty.attr.size, 12u);
}

TEST(InodeTableTest, RenameStampsTheMovedNodesAnew) {
  InodeTable t = Table();
  Node a = t.Upsert("d/a", File(), "e", kExpiry, 1);
  const uint64_t before = t.Tick();
  t.Rename("d", "e");
  auto moved = t.GetByPath("e/a");
  ASSERT_TRUE(moved.has_value());
  EXPECT_EQ(moved->ino, a.ino);
  EXPECT_GT(moved->stored, before) << "newer than anything listed at e/ before the rename";
}

TEST(InodeTableTest, InodeNumbersAreNeverReused) {
  InodeTable t = Table();
  Node a = t.Upsert("f", File(), "e", kExpiry, 1);
  t.Forget(a.ino, 1);
  Node b = t.Upsert("f", File(), "e", kExpiry, 1);
  EXPECT_GT(b.ino, a.ino);
}

TEST(InodeTableTest, DropIfUnused) {
  InodeTable t = Table();
  Node unused = t.Upsert("u", File(), "e", kExpiry, 0);
  Node used = t.Upsert("v", File(), "e", kExpiry, 1);
  t.DropIfUnused(unused.ino);
  t.DropIfUnused(used.ino);
  EXPECT_FALSE(t.Get(unused.ino).has_value());
  EXPECT_TRUE(t.Get(used.ino).has_value());
}

TEST(InodeTableTest, OpenEtagsExpiryAndSymlinkTargets) {
  InodeTable t = Table();
  Node n = t.Upsert("f", File(), "e1", kExpiry, 1);
  EXPECT_EQ(t.PreviousOpenEtag(n.ino), "");
  t.OpenHandle(n.ino, "e1");
  EXPECT_EQ(t.PreviousOpenEtag(n.ino), "e1");
  t.CloseHandle(n.ino);
  EXPECT_EQ(t.PreviousOpenEtag(n.ino), "e1") << "remembered after close while looked up";

  t.Expire(n.ino);
  EXPECT_EQ(t.Get(n.ino)->attr_expiry, MonoTime::min());
  t.Expire(kRootInode);
  EXPECT_EQ(t.Get(kRootInode)->attr_expiry, MonoTime::max());

  t.SetSymlinkTarget(n.ino, "target");
  EXPECT_EQ(t.Get(n.ino)->symlink_target, "target");
  t.Upsert("f", File(), "e1", kExpiry, 0);
  EXPECT_EQ(t.Get(n.ino)->symlink_target, "target") << "same version keeps the target";
  t.Upsert("f", File(), "e2", kExpiry, 0);
  EXPECT_EQ(t.Get(n.ino)->symlink_target, "") << "a new version drops it";
}

TEST(InodeTableTest, MillionLookupsAndForgetsLeaveOnlyTheRoot) {
  InodeTable t = Table();
  std::vector<std::string> paths;
  for (int i = 0; i < 1000; ++i) paths.push_back("dir/file" + std::to_string(i));
  for (int i = 0; i < 1'000'000; ++i) {
    const std::string& p = paths[static_cast<size_t>(i) % paths.size()];
    Node n = t.Upsert(p, File(), "e", kExpiry, 1);
    if (i % 2 == 0) {
      t.Forget(n.ino, 1);
    } else {
      ASSERT_TRUE(t.AddLookups(n.ino, 1));
      t.Forget(n.ino, 2);
    }
  }
  EXPECT_EQ(t.size(), 1u);
  // And when lookups accumulate first and are forgotten later.
  std::vector<InodeId> inos;
  for (int round = 0; round < 3; ++round) {
    for (const auto& p : paths) inos.push_back(t.Upsert(p, File(), "e", kExpiry, 1).ino);
  }
  EXPECT_EQ(t.size(), 1001u);
  for (InodeId ino : inos) t.Forget(ino, 1);
  EXPECT_EQ(t.size(), 1u);
}

}  // namespace
}  // namespace bucketfs::fs
