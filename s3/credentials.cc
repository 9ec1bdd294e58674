#include "s3/credentials.h"

#include <fmt/format.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

namespace bucketfs::s3 {
namespace {

std::string Trim(std::string s) {
  const char* ws = " \t\r\n";
  s.erase(0, s.find_first_not_of(ws));
  auto end = s.find_last_not_of(ws);
  s.erase(end == std::string::npos ? 0 : end + 1);
  if (s.size() >= 2 && (s.front() == '"' || s.front() == '\'') && s.back() == s.front()) {
    s = s.substr(1, s.size() - 2);
  }
  return s;
}

}  // namespace

std::string Credentials::Redacted() const {
  if (access_key.size() <= 8) return "(access key hidden, secret hidden)";
  return fmt::format("{}…{} (secret hidden)", access_key.substr(0, 4),
                     access_key.substr(access_key.size() - 4));
}

StaticCredentialsProvider::StaticCredentialsProvider(Credentials creds, std::string description)
    : creds_(std::move(creds)), description_(std::move(description)) {}

Result<Credentials> StaticCredentialsProvider::Current() {
  std::lock_guard lock(mu_);
  if (creds_.empty()) {
    return Status(ErrorCode::kInvalidCredentials,
                  fmt::format("no S3 credentials from {}: set S3_ACCESS_KEY and S3_SECRET_KEY "
                              "(or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
                              description_));
  }
  return creds_;
}

void StaticCredentialsProvider::Set(Credentials creds) {
  std::lock_guard lock(mu_);
  creds_ = std::move(creds);
}

EnvLookup ProcessEnvironment() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());  // NOLINT(concurrency-mt-unsafe)
    if (v == nullptr || *v == '\0') return std::nullopt;
    return std::string(v);
  };
}

Result<Credentials> ParseCredentialsFile(const std::string& text, const std::string& profile) {
  Credentials creds;
  std::istringstream in(text);
  std::string line;
  std::string section;
  bool saw_sections = false;
  while (std::getline(in, line)) {
    line = Trim(line);
    if (line.empty() || line[0] == '#' || line[0] == ';') continue;
    if (line.front() == '[' && line.back() == ']') {
      section = Trim(line.substr(1, line.size() - 2));
      if (section.rfind("profile ", 0) == 0) section = Trim(section.substr(8));
      saw_sections = true;
      continue;
    }
    if (saw_sections && section != profile) continue;
    if (line.rfind("export ", 0) == 0) line = Trim(line.substr(7));
    auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    std::string name = Trim(line.substr(0, eq));
    std::string value = Trim(line.substr(eq + 1));
    for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (name == "aws_access_key_id" || name == "s3_access_key") creds.access_key = value;
    if (name == "aws_secret_access_key" || name == "s3_secret_key") creds.secret_key = value;
    if (name == "aws_session_token" || name == "s3_session_token") creds.session_token = value;
  }
  if (creds.empty()) {
    return Status(ErrorCode::kInvalidCredentials,
                  saw_sections
                      ? fmt::format("profile [{}] has no aws_access_key_id/aws_secret_access_key",
                                    profile)
                      : std::string("no S3_ACCESS_KEY/S3_SECRET_KEY (or aws_access_key_id/"
                                    "aws_secret_access_key) lines found"));
  }
  return creds;
}

FileCredentialsProvider::FileCredentialsProvider(std::string path, std::string profile,
                                                 Clock& clock)
    : path_(std::move(path)), profile_(std::move(profile)), clock_(clock) {}

std::string FileCredentialsProvider::Describe() const {
  return fmt::format("credentials file {} (profile {})", path_, profile_);
}

FileCredentialsProvider::FileStamp FileCredentialsProvider::StampOf(const struct stat& st) {
  return FileStamp{static_cast<long long>(st.st_mtim.tv_sec) * 1'000'000'000LL +
                       st.st_mtim.tv_nsec,
                   static_cast<long long>(st.st_size), static_cast<long long>(st.st_ino)};
}

Status FileCredentialsProvider::ReloadLocked() {
  struct stat st {};
  if (::stat(path_.c_str(), &st) != 0) {
    return Status(ErrorCode::kInvalidCredentials,
                  fmt::format("cannot read {}: {}", Describe(), std::strerror(errno)));
  }
  std::ifstream f(path_);
  std::stringstream text;
  text << f.rdbuf();
  if (!f) {
    return Status(ErrorCode::kInvalidCredentials, fmt::format("cannot read {}", Describe()));
  }
  auto parsed = ParseCredentialsFile(text.str(), profile_);
  if (!parsed.ok()) return Status(parsed.status()).Annotate(Describe());
  creds_ = std::move(parsed).value();
  stamp_ = StampOf(st);
  return Status::Ok();
}

Status FileCredentialsProvider::Reload() {
  std::lock_guard lock(mu_);
  return ReloadLocked();
}

Result<Credentials> FileCredentialsProvider::Current() {
  std::lock_guard lock(mu_);
  MonoTime now = clock_.Now();
  if (!creds_ || now >= next_check_) {
    next_check_ = now + std::chrono::seconds(1);
    struct stat st {};
    FileStamp current;
    if (::stat(path_.c_str(), &st) == 0) {
      current = StampOf(st);
    }
    if (!creds_ || !(current == stamp_)) {
      Status s = ReloadLocked();
      // A file caught half-written keeps the previous credentials; retry next second.
      if (!s.ok() && !creds_) return s;
    }
  }
  return *creds_;
}

}  // namespace bucketfs::s3
