#include "cache/upload_ledger.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "cache/spool.h"
#include "common/clock.h"
#include "s3/fake_client.h"
#include "s3/fault_client.h"

namespace bucketfs::cache {
namespace {

using namespace std::chrono_literals;
namespace stdfs = std::filesystem;

class UploadLedgerTest : public ::testing::Test {
 protected:
  UploadLedgerTest() {
    std::string tmpl = (stdfs::temp_directory_path() / "bucketfs-ledger-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) std::abort();
    root_ = tmpl;
    Reopen();
  }
  ~UploadLedgerTest() override {
    ledgered_.reset();
    spool_.reset();
    std::error_code ec;
    stdfs::remove_all(root_, ec);
  }

  // A new daemon on the same spool (the old one released it).
  void Reopen() {
    ledgered_.reset();
    spool_.reset();
    auto spool = Spool::Open(root_.string(), "bucket");
    ASSERT_TRUE(spool.ok()) << spool.status().ToString();
    spool_ = std::move(spool).value();
    ledgered_ = std::make_unique<LedgeredClient>(faulty_, *spool_);
  }

  std::string Create(const std::string& key) {
    auto id = ledgered_->CreateMultipart({key, "", {}}, {Deadline()});
    EXPECT_TRUE(id.ok()) << id.status().ToString();
    return id.ok() ? *id : std::string();
  }
  MonoTime Deadline() const { return clock_.Now() + 10s; }

  std::vector<std::string> NotedIds() const {
    std::vector<std::string> ids;
    for (const StartedUpload& u : spool_->NotedUploads()) ids.push_back(u.upload_id);
    std::sort(ids.begin(), ids.end());
    return ids;
  }

  FakeClock clock_;
  s3::FakeObjectClient fake_{clock_};
  s3::FaultInjectingClient faulty_{fake_, clock_};
  stdfs::path root_;
  std::unique_ptr<Spool> spool_;
  std::unique_ptr<LedgeredClient> ledgered_;
};

TEST_F(UploadLedgerTest, AStartedUploadIsNotedUntilItIsCompleted) {
  const std::string id = Create("big.bin");
  ASSERT_FALSE(id.empty());
  const auto noted = spool_->NotedUploads();
  ASSERT_EQ(noted.size(), 1u);
  EXPECT_EQ(noted[0].key, "big.bin");
  EXPECT_EQ(noted[0].upload_id, id);

  const std::string body(s3::kMinPartSize, 'x');
  auto part = ledgered_->UploadPart({"big.bin", id, 1, body}, {Deadline()});
  ASSERT_TRUE(part.ok()) << part.status().ToString();
  EXPECT_EQ(NotedIds(), std::vector<std::string>{id}) << "a part does not end the upload";
  auto done = ledgered_->CompleteMultipart({"big.bin", id, {*part}}, {Deadline()});
  ASSERT_TRUE(done.ok()) << done.status().ToString();
  EXPECT_TRUE(NotedIds().empty());
}

TEST_F(UploadLedgerTest, AnAbortedOrVanishedUploadIsForgottenAndAFailedAbortIsNot) {
  const std::string aborted = Create("a");
  const std::string vanished = Create("b");
  const std::string stuck = Create("c");
  EXPECT_EQ(NotedIds().size(), 3u);

  EXPECT_TRUE(ledgered_->AbortMultipart("a", aborted, {Deadline()}).ok());
  // Aborted behind our back (a lifecycle rule): completing it finds it gone.
  ASSERT_TRUE(fake_.AbortMultipart("b", vanished, {Deadline()}).ok());
  auto completed = ledgered_->CompleteMultipart({"b", vanished, {}}, {Deadline()});
  EXPECT_EQ(completed.status().code(), ErrorCode::kNoSuchUpload) << completed.status().ToString();
  // An abort the server does not answer leaves the note for the next daemon.
  faulty_.FailNext(s3::Op::kAbortMultipart, 1, s3::InjectedError(ErrorCode::kServerError));
  EXPECT_FALSE(ledgered_->AbortMultipart("c", stuck, {Deadline()}).ok());
  EXPECT_EQ(NotedIds(), std::vector<std::string>{stuck});
  EXPECT_EQ(fake_.PendingUploads(), 1u);
}

TEST_F(UploadLedgerTest, TheNextDaemonAbortsWhatAKilledOneLeftAndForgetsVanishedOnes) {
  Create("left-1");
  Create("left-2");
  const std::string gone = Create("gone");
  ASSERT_TRUE(fake_.AbortMultipart("gone", gone, {Deadline()}).ok());
  ASSERT_EQ(fake_.PendingUploads(), 2u);

  Reopen();  // The daemon was killed: nothing completed or aborted its uploads.
  EXPECT_EQ(AbortLeftoverUploads(*spool_, *ledgered_, Deadline()), 2u);
  EXPECT_EQ(fake_.PendingUploads(), 0u);
  EXPECT_TRUE(NotedIds().empty());
}

TEST_F(UploadLedgerTest, LeftoversTheServerWillNotAbortNowAreKeptForTheNextMount) {
  Create("left-1");
  Create("left-2");
  Reopen();
  faulty_.FailAlways(s3::Op::kAbortMultipart, s3::InjectedError(ErrorCode::kNetwork));
  EXPECT_EQ(AbortLeftoverUploads(*spool_, *ledgered_, Deadline()), 0u);
  EXPECT_EQ(NotedIds().size(), 2u);
  EXPECT_EQ(faulty_.calls(s3::Op::kAbortMultipart), 1u) << "stops at the first failure";

  faulty_.ClearRules();
  Reopen();
  EXPECT_EQ(AbortLeftoverUploads(*spool_, *ledgered_, Deadline()), 2u);
  EXPECT_EQ(fake_.PendingUploads(), 0u);
}

TEST_F(UploadLedgerTest, AnUploadIdOfAnyBytesRoundTripsAndATornNoteIsDropped) {
  spool_->NoteUpload({"dir/ключ with spaces", "2~/../\n\"odd\\id"});
  const auto noted = spool_->NotedUploads();
  ASSERT_EQ(noted.size(), 1u);
  EXPECT_EQ(noted[0].key, "dir/ключ with spaces");
  EXPECT_EQ(noted[0].upload_id, "2~/../\n\"odd\\id");
  // A note cut short by a crash names no upload: dropped, not an error.
  std::ofstream(root_ / "bucket" / "uploads" / "0000000000000000.json") << "{\"key\": \"x\", \"upl";
  EXPECT_EQ(spool_->NotedUploads().size(), 1u);
  EXPECT_FALSE(stdfs::exists(root_ / "bucket" / "uploads" / "0000000000000000.json"));
  spool_->ForgetUpload("2~/../\n\"odd\\id");
  EXPECT_TRUE(spool_->NotedUploads().empty());
}

}  // namespace
}  // namespace bucketfs::cache
