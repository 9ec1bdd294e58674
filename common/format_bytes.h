// FormatBytes: a byte count for people ("1.5 MiB", "1023 B"), in binary units, for messages,
// logs and `bucketfs status`. Pure; used by every layer.
#pragma once

#include <cstdint>
#include <string>

namespace bucketfs {

std::string FormatBytes(uint64_t bytes);

}  // namespace bucketfs
