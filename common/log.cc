#include "common/log.h"

#include <spdlog/sinks/stdout_sinks.h>

#include <mutex>
#include <sstream>

namespace bucketfs {

std::shared_ptr<spdlog::logger> Logger(const std::string& component) {
  static std::mutex mu;
  std::lock_guard lock(mu);
  if (auto existing = spdlog::get(component)) return existing;
  auto logger = spdlog::stderr_logger_mt(component);
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ [%n] %v");
  logger->set_level(spdlog::get_level());
  return logger;
}

void ConfigureLogging(const std::string& spec) {
  std::stringstream in(spec);
  std::string item;
  while (std::getline(in, item, ',')) {
    auto eq = item.find('=');
    if (eq == std::string::npos) {
      spdlog::set_level(spdlog::level::from_str(item));
      spdlog::apply_all([&](const std::shared_ptr<spdlog::logger>& l) {
        l->set_level(spdlog::level::from_str(item));
      });
    } else {
      Logger(item.substr(0, eq))->set_level(spdlog::level::from_str(item.substr(eq + 1)));
    }
  }
}

}  // namespace bucketfs
