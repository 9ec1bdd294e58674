#include "cache/lost_reply.h"

#include "common/log.h"
#include "s3/crypto.h"

namespace bucketfs::cache {

std::string SinglePutEtag(std::span<const char> body) { return s3::HexLower(s3::Md5(body)); }

namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::string MultipartEtag(const std::vector<s3::PartInfo>& parts) {
  std::string digests;
  for (const auto& p : parts) {
    // A part ETag that is not 32 hex digits is no MD5 (some servers, SSE-C): no ETag can
    // be predicted, and an empty one matches nothing.
    if (p.etag.size() != 32) return "";
    for (size_t i = 0; i < p.etag.size(); i += 2) {
      const int hi = HexValue(p.etag[i]), lo = HexValue(p.etag[i + 1]);
      if (hi < 0 || lo < 0) return "";
      digests.push_back(static_cast<char>(hi * 16 + lo));
    }
  }
  return s3::HexLower(s3::Md5({digests.data(), digests.size()})) + "-" +
         std::to_string(parts.size());
}

std::optional<std::string> LandedAs(s3::ObjectClient& client, const std::string& key,
                                    const std::string& expected_etag, MonoTime deadline) {
  if (expected_etag.empty()) return std::nullopt;
  auto head = client.Head({key, ""}, {deadline});
  if (!head.ok() || head->etag != expected_etag) return std::nullopt;
  Logger("writeback")->info("'{}': a retried write found its first attempt had landed", key);
  return head->etag;
}

std::optional<std::string> LandedWithMetadata(s3::ObjectClient& client, const std::string& key,
                                              uint64_t size, const s3::UserMetadata& metadata,
                                              MonoTime deadline) {
  auto head = client.Head({key, ""}, {deadline});
  if (!head.ok() || head->size != size) return std::nullopt;
  for (const auto& [name, value] : metadata) {
    auto it = head->metadata.find(name);
    if (it == head->metadata.end() || it->second != value) return std::nullopt;
  }
  Logger("writeback")->info("'{}': a retried metadata copy found its first attempt had landed",
                            key);
  return head->etag;
}

}  // namespace bucketfs::cache
