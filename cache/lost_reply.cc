#include "cache/lost_reply.h"

#include "common/log.h"
#include "s3/crypto.h"

namespace bucketfs::cache {

std::string SinglePutEtag(std::span<const char> body) { return s3::HexLower(s3::Md5(body)); }

std::string MultipartEtag(const std::vector<s3::PartInfo>& parts) {
  std::string digests;
  for (const auto& p : parts) {
    // A part ETag that is not an MD5 in hex (some servers, SSE-C): no ETag can be
    // predicted, and an empty one matches nothing.
    auto digest = p.etag.size() == 32 ? s3::HexDecode(p.etag) : std::nullopt;
    if (!digest) return "";
    digests += *digest;
  }
  return s3::HexLower(s3::Md5({digests.data(), digests.size()})) + "-" +
         std::to_string(parts.size());
}

namespace {

bool CarriesAll(const s3::ObjectInfo& object, const s3::UserMetadata& metadata) {
  for (const auto& [name, value] : metadata) {
    auto it = object.metadata.find(name);
    if (it == object.metadata.end() || it->second != value) return false;
  }
  return true;
}

}  // namespace

std::optional<std::string> LandedAs(s3::ObjectClient& client, const std::string& key,
                                    const std::string& expected_etag,
                                    const s3::UserMetadata& metadata, MonoTime deadline) {
  if (expected_etag.empty()) return std::nullopt;
  auto head = client.Head({key, ""}, {deadline});
  if (!head.ok() || head->etag != expected_etag || !CarriesAll(*head, metadata)) {
    return std::nullopt;
  }
  Logger("writeback")->info("'{}': a retried write found its first attempt had landed", key);
  return head->etag;
}

std::optional<std::string> LandedWithMetadata(s3::ObjectClient& client, const std::string& key,
                                              uint64_t size, const s3::UserMetadata& metadata,
                                              MonoTime deadline) {
  auto head = client.Head({key, ""}, {deadline});
  if (!head.ok() || head->size != size || !CarriesAll(*head, metadata)) return std::nullopt;
  Logger("writeback")->info("'{}': a retried metadata copy found its first attempt had landed",
                            key);
  return head->etag;
}

}  // namespace bucketfs::cache
