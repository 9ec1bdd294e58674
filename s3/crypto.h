// Hashes and MACs the S3 protocol needs (SHA-256, HMAC-SHA-256, MD5), on OpenSSL.
// Contract: pure functions, thread-safe; OpenSSL never appears outside s3/*.cc.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace bucketfs::s3 {

using Sha256Digest = std::array<uint8_t, 32>;
using Md5Digest = std::array<uint8_t, 16>;

Sha256Digest Sha256(std::span<const char> data);
Sha256Digest HmacSha256(std::span<const uint8_t> key, std::string_view data);
Md5Digest Md5(std::span<const char> data);

std::string HexLower(std::span<const uint8_t> bytes);
// The bytes `hex` spells (either case); nullopt if it has an odd length or a non-hex digit.
std::optional<std::string> HexDecode(std::string_view hex);
std::string Base64(std::span<const uint8_t> bytes);

inline std::string Sha256Hex(std::string_view data) {
  return HexLower(Sha256({data.data(), data.size()}));
}

}  // namespace bucketfs::s3
