#include "common/log.h"

#include <fmt/format.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <ctime>
#include <iterator>
#include <mutex>
#include <nlohmann/json.hpp>
#include <span>
#include <sstream>
#include <utility>

namespace bucketfs {
namespace {

enum class LogFormat { kText, kJson };

using ContextFields = std::vector<std::pair<std::string, std::string>>;

// Serializes creating loggers with switching the format of all of them, so that a logger
// created during ConfigureLogFormat() cannot keep the old format.
std::mutex& LoggersMutex() {
  static std::mutex mu;
  return mu;
}
LogFormat g_format = LogFormat::kText;  // Guarded by LoggersMutex().

// The context is replaced whole, never changed in place: a line being formatted keeps the
// snapshot it took, and the lock is held only for the pointer copy.
std::mutex g_context_mu;
std::shared_ptr<const ContextFields> g_context;  // Guarded by g_context_mu; null: none.

std::shared_ptr<const ContextFields> ContextSnapshot() {
  std::lock_guard lock(g_context_mu);
  return g_context;
}

// The fields of the LogEvent() being logged on this thread; empty for ordinary calls.
thread_local std::span<const LogField> t_event_fields;

class EventFieldsScope {
 public:
  explicit EventFieldsScope(std::span<const LogField> fields)
      : saved_(std::exchange(t_event_fields, fields)) {}
  ~EventFieldsScope() { t_event_fields = saved_; }
  EventFieldsScope(const EventFieldsScope&) = delete;
  EventFieldsScope& operator=(const EventFieldsScope&) = delete;

 private:
  std::span<const LogField> saved_;
};

bool IsControl(unsigned char c) { return c < 0x20 || c == 0x7f; }

bool NeedsQuotes(std::string_view value) {
  if (value.empty()) return true;
  return std::any_of(value.begin(), value.end(), [](char ch) {
    const auto c = static_cast<unsigned char>(ch);
    return c == ' ' || c == '"' || c == '=' || c == '\\' || IsControl(c);
  });
}

void AppendText(std::string_view s, spdlog::memory_buf_t& dest) {
  dest.append(s.data(), s.data() + s.size());
}

// logfmt: see the header for when a value is quoted and how it is escaped.
void AppendTextValue(std::string_view value, spdlog::memory_buf_t& dest) {
  if (!NeedsQuotes(value)) return AppendText(value, dest);
  dest.push_back('"');
  for (char ch : value) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': AppendText("\\\"", dest); break;
      case '\\': AppendText("\\\\", dest); break;
      case '\n': AppendText("\\n", dest); break;
      case '\r': AppendText("\\r", dest); break;
      case '\t': AppendText("\\t", dest); break;
      default:
        if (IsControl(c)) {
          fmt::format_to(std::back_inserter(dest), "\\u{:04x}", c);
        } else {
          dest.push_back(ch);
        }
    }
  }
  dest.push_back('"');
}

void AppendTextField(std::string_view name, const LogField::Value& value,
                     spdlog::memory_buf_t& dest) {
  dest.push_back(' ');
  AppendText(name, dest);
  dest.push_back('=');
  std::visit(
      [&](const auto& v) {
        using V = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<V, std::string_view>) {
          AppendTextValue(v, dest);
        } else if constexpr (std::is_same_v<V, bool>) {
          AppendText(v ? "true" : "false", dest);
        } else {
          // Integers exactly; a double in the shortest form that reads back as the same
          // double ("nan" and "inf" need no quotes either).
          fmt::format_to(std::back_inserter(dest), "{}", v);
        }
      },
      value);
}

bool EventHasField(std::span<const LogField> fields, std::string_view name) {
  return std::any_of(fields.begin(), fields.end(),
                     [&](const LogField& f) { return f.name() == name; });
}

// The JSON envelope's own keys; fields of these names get a '_' in front.
std::string JsonFieldName(std::string_view name) {
  static constexpr std::array<std::string_view, 4> kReserved = {"ts", "level", "component",
                                                                 "msg"};
  std::string out;
  out.reserve(name.size() + 1);
  if (std::find(kReserved.begin(), kReserved.end(), name) != kReserved.end()) out.push_back('_');
  out.append(name);
  return out;
}

std::string UtcTimestamp(spdlog::log_clock::time_point time) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(time.time_since_epoch());
  auto seconds = static_cast<std::time_t>(ms.count() / 1000);
  auto millis = ms.count() % 1000;
  if (millis < 0) {  // Before 1970: keep the milliseconds positive.
    --seconds;
    millis += 1000;
  }
  std::tm tm{};
  ::gmtime_r(&seconds, &tm);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, millis);
}

std::string_view ToStd(spdlog::string_view_t s) { return {s.data(), s.size()}; }

// Formats every line of every bucketfs logger, in one of the two formats of the header.
// Runs on the logging thread, under the sink's lock, inside logger.log().
class FieldFormatter final : public spdlog::formatter {
 public:
  explicit FieldFormatter(LogFormat format)
      : format_(format),
        // No end of line: the fields go after the message.
        pattern_("%Y-%m-%dT%H:%M:%S.%e %^%l%$ [%n] %v", spdlog::pattern_time_type::local, "") {}

  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    const std::span<const LogField> fields = t_event_fields;
    const std::shared_ptr<const ContextFields> context = ContextSnapshot();
    if (format_ == LogFormat::kJson) {
      FormatJson(msg, fields, context.get(), dest);
    } else {
      FormatText(msg, fields, context.get(), dest);
    }
    AppendText(spdlog::details::os::default_eol, dest);
  }

  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<FieldFormatter>(format_);
  }

 private:
  void FormatText(const spdlog::details::log_msg& msg, std::span<const LogField> fields,
                  const ContextFields* context, spdlog::memory_buf_t& dest) {
    pattern_.format(msg, dest);  // Also sets the color range of the level, for color sinks.
    for (const LogField& f : fields) AppendTextField(f.name(), f.value(), dest);
    if (context == nullptr) return;
    for (const auto& [name, value] : *context) {
      if (!EventHasField(fields, name)) AppendTextField(name, std::string_view(value), dest);
    }
  }

  static void FormatJson(const spdlog::details::log_msg& msg, std::span<const LogField> fields,
                         const ContextFields* context, spdlog::memory_buf_t& dest) {
    // The log_msg is shared by all sinks of a logger: clear a range another sink's text
    // pattern set, so that no color escape lands inside the JSON.
    msg.color_range_start = 0;
    msg.color_range_end = 0;
    nlohmann::ordered_json line = nlohmann::ordered_json::object();
    line["ts"] = UtcTimestamp(msg.time);
    line["level"] = std::string(ToStd(spdlog::level::to_string_view(msg.level)));
    line["component"] = std::string(ToStd(msg.logger_name));
    line["msg"] = std::string(ToStd(msg.payload));
    for (const LogField& f : fields) {
      nlohmann::ordered_json& slot = line[JsonFieldName(f.name())];
      std::visit(
          [&](const auto& v) {
            using V = std::decay_t<decltype(v)>;
            if constexpr (std::is_same_v<V, std::string_view>) {
              slot = std::string(v);
            } else {
              slot = v;
            }
          },
          f.value());
    }
    if (context != nullptr) {
      for (const auto& [name, value] : *context) {
        if (!EventHasField(fields, name)) line[JsonFieldName(name)] = value;
      }
    }
    // replace: a key that is not UTF-8 (S3 allows any bytes) costs a U+FFFD, not the line.
    AppendText(line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), dest);
  }

  LogFormat format_;
  spdlog::pattern_formatter pattern_;
};

void InstallFormatter(spdlog::logger& logger, LogFormat format) {
  logger.set_formatter(std::make_unique<FieldFormatter>(format));
}

std::string_view Trim(std::string_view s) {
  constexpr std::string_view kBlanks = " \t\n\r\f\v";
  const size_t begin = s.find_first_not_of(kBlanks);
  if (begin == std::string_view::npos) return {};
  const size_t end = s.find_last_not_of(kBlanks);
  return s.substr(begin, end - begin + 1);
}

std::string KnownComponentsText() {
  std::string out;
  for (const std::string& c : LogComponents()) {
    if (!out.empty()) out += ", ";
    out += c;
  }
  return out;
}

}  // namespace

namespace log_internal {

void LogEventEnabled(spdlog::logger& logger, spdlog::level::level_enum level,
                     std::string_view message, std::initializer_list<LogField> fields) {
  EventFieldsScope scope(std::span<const LogField>(fields.begin(), fields.size()));
  logger.log(level, spdlog::string_view_t(message.data(), message.size()));
}

}  // namespace log_internal

std::shared_ptr<spdlog::logger> Logger(const std::string& component) {
  std::lock_guard lock(LoggersMutex());
  if (auto existing = spdlog::get(component)) return existing;
  auto logger = spdlog::stderr_logger_mt(component);
  InstallFormatter(*logger, g_format);
  logger->set_level(spdlog::get_level());
  return logger;
}

Status ConfigureLogging(const std::string& spec) {
  // spdlog's from_str() takes an unknown name for "off": a typo would silence the log.
  static const std::vector<std::string> kLevels = {"trace", "debug", "info",     "warn",
                                                   "error", "critical", "off"};
  // spdlog's own spellings, which earlier versions of bucketfs took as well.
  static const std::vector<std::string> kAliases = {"warning", "err"};
  struct Setting {
    std::string component;  // Empty: every component.
    spdlog::level::level_enum level;
  };
  std::vector<Setting> settings;
  std::stringstream in(spec);
  std::string item;
  while (std::getline(in, item, ',')) {
    const auto eq = item.find('=');
    const std::string component(eq == std::string::npos ? std::string_view()
                                                        : Trim(std::string_view(item).substr(0, eq)));
    const std::string level(Trim(eq == std::string::npos ? std::string_view(item)
                                                        : std::string_view(item).substr(eq + 1)));
    const auto& known = LogComponents();
    if (eq != std::string::npos && std::find(known.begin(), known.end(), component) == known.end()) {
      return Status(ErrorCode::kInvalidArgument,
                    fmt::format("--log-level: unknown component '{}' in '{}'; the components are {}",
                                component, spec, KnownComponentsText()));
    }
    if (std::find(kLevels.begin(), kLevels.end(), level) == kLevels.end() &&
        std::find(kAliases.begin(), kAliases.end(), level) == kAliases.end()) {
      return Status(ErrorCode::kInvalidArgument,
                    fmt::format("--log-level: unknown level '{}' in '{}'; the levels are {} (all "
                                "lowercase), for every component or one: s3=debug,fuse=info",
                                level, spec, fmt::join(kLevels, ", ")));
    }
    settings.push_back({component, spdlog::level::from_str(level)});
  }
  if (settings.empty()) {
    return Status(ErrorCode::kInvalidArgument,
                  "--log-level: empty; give a level (info) or component=level pairs");
  }
  for (const Setting& setting : settings) {
    if (!setting.component.empty()) {
      Logger(setting.component)->set_level(setting.level);
      continue;
    }
    spdlog::set_level(setting.level);
    spdlog::apply_all(
        [&](const std::shared_ptr<spdlog::logger>& l) { l->set_level(setting.level); });
  }
  return Status::Ok();
}

void SetLogContext(std::string_view name, std::string value) {
  std::lock_guard lock(g_context_mu);
  auto next = g_context ? std::make_shared<ContextFields>(*g_context)
                        : std::make_shared<ContextFields>();
  auto it = std::find_if(next->begin(), next->end(),
                         [&](const auto& field) { return field.first == name; });
  if (value.empty()) {
    if (it != next->end()) next->erase(it);
  } else if (it != next->end()) {
    it->second = std::move(value);
  } else {
    next->emplace_back(std::string(name), std::move(value));
  }
  g_context = std::move(next);
}

Status ConfigureLogFormat(std::string_view format) {
  LogFormat chosen;
  if (format == "text") {
    chosen = LogFormat::kText;
  } else if (format == "json") {
    chosen = LogFormat::kJson;
  } else {
    return Status(ErrorCode::kInvalidArgument,
                  fmt::format("unknown log format '{}': choose text or json", format));
  }
  std::lock_guard lock(LoggersMutex());
  g_format = chosen;
  // Every registered logger, the ones made outside Logger() (spdlog's default) included.
  spdlog::apply_all(
      [&](const std::shared_ptr<spdlog::logger>& l) { InstallFormatter(*l, chosen); });
  return Status::Ok();
}

Result<std::string> DebugLevelSpec(std::string_view components) {
  if (Trim(components).empty()) return std::string("debug");
  const auto& known = LogComponents();
  std::vector<std::string_view> names;
  bool all = false;
  size_t start = 0;
  while (true) {
    const size_t comma = components.find(',', start);
    const std::string_view name = Trim(components.substr(
        start, comma == std::string_view::npos ? std::string_view::npos : comma - start));
    if (name == "all") {
      all = true;
    } else if (std::find(known.begin(), known.end(), name) == known.end()) {
      return Status(ErrorCode::kInvalidArgument,
                    fmt::format("--debug: {} in '{}'; the components are {} (or all)",
                                name.empty() ? std::string("an empty component name")
                                             : fmt::format("unknown component '{}'", name),
                                components, KnownComponentsText()));
    } else if (std::find(names.begin(), names.end(), name) == names.end()) {
      names.push_back(name);
    }
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  if (all) return std::string("debug");
  std::string spec;
  for (std::string_view name : names) {
    if (!spec.empty()) spec += ',';
    spec.append(name);
    spec += "=debug";
  }
  return spec;
}

const std::vector<std::string>& LogComponents() {
  static const std::vector<std::string> kComponents = {"s3",   "cache",  "writeback",
                                                       "fuse", "mountd", "control", "metrics"};
  return kComponents;
}

}  // namespace bucketfs
