// Logging: one spdlog logger per component ("s3", "cache", "fuse", "mountd"), all writing to
// stderr with the same pattern. Contract: credentials, signatures and presigned URLs never
// appear in any log line at any level; callers log keys, request ids and latencies only.
#pragma once

#include <spdlog/spdlog.h>

#include <memory>
#include <string>

namespace bucketfs {

// Returns the logger for a component, creating it on first use. Thread-safe.
std::shared_ptr<spdlog::logger> Logger(const std::string& component);

// Sets the level for all components ("trace".."off"), or one ("s3=debug,fuse=info").
void ConfigureLogging(const std::string& spec);

}  // namespace bucketfs
