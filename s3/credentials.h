// Credentials and the providers that supply them, refreshable at run time (rotation).
//
// Contract:
//  - A CredentialsProvider is thread-safe. Current() is cheap (a snapshot under a lock) and
//    is called for every request, so a rotated key takes effect on the next request with
//    no restart and no remount.
//  - Reload() re-reads the source (environment, file) and swaps the snapshot atomically;
//    a failed reload keeps the previous credentials and returns why.
//  - FileCredentialsProvider also notices on its own that its file changed (mtime, size or
//    inode, checked at most once a second), so a mounted Kubernetes Secret that the kubelet
//    rewrites is picked up without any signal.
//  - Secrets never appear in messages or logs; Credentials::Redacted() is what to print.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "common/clock.h"
#include "common/status.h"

struct stat;  // <sys/stat.h>, used only by the .cc.

namespace bucketfs::s3 {

struct Credentials {
  std::string access_key;
  std::string secret_key;
  std::string session_token;  // Empty unless temporary credentials.

  bool empty() const { return access_key.empty() || secret_key.empty(); }
  bool operator==(const Credentials&) const = default;
  // "AKIA…1234 (secret hidden)" — safe to log.
  std::string Redacted() const;
};

class CredentialsProvider {
 public:
  virtual ~CredentialsProvider() = default;
  virtual Result<Credentials> Current() = 0;
  virtual Status Reload() = 0;
  // Where the credentials come from ("environment S3_ACCESS_KEY", "file /etc/…"), for
  // messages.
  virtual std::string Describe() const = 0;
};

// Fixed credentials; Set() replaces them (used by `bucketfs reload` over the control socket).
class StaticCredentialsProvider final : public CredentialsProvider {
 public:
  explicit StaticCredentialsProvider(Credentials creds, std::string description = "static");
  Result<Credentials> Current() override;
  Status Reload() override { return Status::Ok(); }
  std::string Describe() const override { return description_; }
  void Set(Credentials creds);

 private:
  std::mutex mu_;
  Credentials creds_;
  std::string description_;
};

// Reads an environment-like lookup (injected for tests) for an alias. Re-reads on Reload().
using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;
EnvLookup ProcessEnvironment();

// Reads credentials from a file, either AWS shared-credentials INI
// ([profile] aws_access_key_id = …) or KEY=VALUE lines with the platform's names
// (S3_ACCESS_KEY=…, S3_SECRET_KEY=…, optional S3_SESSION_TOKEN=…; AWS_* names too).
class FileCredentialsProvider final : public CredentialsProvider {
 public:
  FileCredentialsProvider(std::string path, std::string profile, Clock& clock);
  Result<Credentials> Current() override;
  Status Reload() override;
  std::string Describe() const override;

 private:
  struct FileStamp {
    long long mtime_ns = 0, size = -1, inode = 0;
    bool operator==(const FileStamp&) const = default;
  };
  static FileStamp StampOf(const struct stat& st);
  Status ReloadLocked();

  const std::string path_;
  const std::string profile_;
  Clock& clock_;
  std::mutex mu_;
  std::optional<Credentials> creds_;
  FileStamp stamp_;
  MonoTime next_check_{};
};

// Parses credentials-file text (see FileCredentialsProvider). Exposed for tests.
Result<Credentials> ParseCredentialsFile(const std::string& text, const std::string& profile);

}  // namespace bucketfs::s3
