// Logging: one spdlog logger per component (LogComponents(): "s3", "cache", "writeback",
// "fuse", "mountd", "control", "metrics"), all writing one line per event to stderr (which the service
// manager hands to journald, or the CLI points at --log-file).
//
// Contract: credentials, signatures and presigned URLs never appear in any log line at any
// level; callers log keys, request ids and latencies only.
//
// Structured lines: LogEvent() adds named fields (key, status, request id, latency...) after
// the message, and SetLogContext() adds fields to every line of every component (the daemon
// sets "bucket"). Ordinary `Logger("s3")->info(...)` calls keep working and carry the
// context fields too. Two formats, chosen once for the whole process by ConfigureLogFormat():
//
//  text (default):
//    2026-11-23T01:02:03.456 debug [s3] request done op=GET key="a b.bin" status=200 bucket=data
//    The timestamp is local time, as it always was (journald adds its own). Fields are
//    logfmt: `name=value`, the value bare unless it is empty or holds a space, '"', '=', '\'
//    or a control character (below 0x20, or 0x7f); then it is double-quoted, with '"' and '\'
//    backslash-escaped, \n \r \t as such, and any other control character as \u00XX (as in
//    JSON). Bytes of 0x80 and above are written as they are. The message itself is written as
//    it is, as before.
//  json:
//    {"ts":"2026-11-23T01:02:03.456Z","level":"debug","component":"s3","msg":"request done",
//     "op":"GET","key":"a b.bin","status":200,"bucket":"data"}
//    One object per line, keys in that order: ts (UTC, milliseconds), level, component, msg,
//    the event's fields, the context fields. Integers and doubles are JSON numbers (a NaN or
//    infinite double is null), bools are JSON bools, everything else is a string; bytes that
//    are not UTF-8 become U+FFFD instead of breaking the line.
//
// Field names: a field named ts, level, component or msg is written as _ts, _level...
// in json, so the envelope cannot be overwritten (text writes it unchanged). An event field
// hides a context field of the same name in both formats (a copy between buckets may log its
// own "bucket"); two event fields of the same name both appear in text, the later wins in json.
//
// Fields reach the formatter through a thread-local set around the logger's synchronous
// log() call: loggers must stay synchronous (Logger() makes them so); on an async logger the
// fields would be lost, never mixed up with another line's.
#pragma once

#include <spdlog/spdlog.h>

#include <concepts>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/status.h"

namespace bucketfs {

// Returns the logger for a component, creating it on first use with the format set by
// ConfigureLogFormat(). Thread-safe.
std::shared_ptr<spdlog::logger> Logger(const std::string& component);

// Sets the level for all components ("trace".."off"), or one ("s3=debug,fuse=info"), in
// the order given. An unknown level or component is kInvalidArgument naming the known ones,
// and then nothing is changed.
Status ConfigureLogging(const std::string& spec);

// One named value of a structured log line: `{"status", 200}`, `{"key", key}`.
// It only views its name and string value: build it in the LogEvent() call (a temporary
// lives until the call returns), never keep one.
class LogField {
 public:
  using Value = std::variant<std::string_view, int64_t, uint64_t, double, bool>;

  LogField(std::string_view name, std::string_view value) : name_(name), value_(value) {}
  // These two win over std::string_view's own conversions, so `{"key", key}` and
  // `{"op", "GET"}` are strings rather than ambiguous.
  LogField(std::string_view name, const std::string& value)
      : name_(name), value_(std::string_view(value)) {}
  LogField(std::string_view name, const char* value)  // nullptr: an empty value.
      : name_(name), value_(value ? std::string_view(value) : std::string_view()) {}
  // bool prints true/false; every other integer (char and int8_t included) as its exact
  // decimal value.
  template <std::integral T>
  LogField(std::string_view name, T value) : name_(name), value_(Convert(value)) {}
  LogField(std::string_view name, double value) : name_(name), value_(value) {}

  std::string_view name() const { return name_; }
  const Value& value() const { return value_; }

 private:
  template <std::integral T>
  static Value Convert(T value) {
    if constexpr (std::same_as<T, bool>) {
      return value;
    } else if constexpr (std::signed_integral<T>) {
      return static_cast<int64_t>(value);
    } else {
      return static_cast<uint64_t>(value);
    }
  }

  std::string_view name_;
  Value value_;
};

namespace log_internal {
void LogEventEnabled(spdlog::logger& logger, spdlog::level::level_enum level,
                     std::string_view message, std::initializer_list<LogField> fields);
}  // namespace log_internal

// Logs `message` at `level` on `logger` with `fields` after it. Costs nothing beyond the
// should_log() check when the level is off (the arguments are still evaluated: pass what
// is at hand, not what takes work to compute). Example:
//   LogEvent(*Logger("s3"), spdlog::level::debug, "request done",
//            {{"op", "GET"}, {"key", key}, {"status", 200}, {"request_id", id},
//             {"latency_ms", ms}});
inline void LogEvent(spdlog::logger& logger, spdlog::level::level_enum level,
                     std::string_view message, std::initializer_list<LogField> fields) {
  if (!logger.should_log(level)) return;
  log_internal::LogEventEnabled(logger, level, message, fields);
}

// Adds a field to every line from now on, of every component (the daemon sets "bucket"
// once). Setting a name again replaces its value in place; an empty value removes the field.
// Thread-safe.
void SetLogContext(std::string_view name, std::string value);

// "text" (the default) or "json"; anything else is kInvalidArgument naming the choices.
// Applies to all loggers, existing and future.
Status ConfigureLogFormat(std::string_view format);

// The spec for ConfigureLogging() of `--debug[=COMPONENTS]`: "" or "all" -> "debug";
// "s3,writeback" -> "s3=debug,writeback=debug". Names are trimmed of blanks (" s3 , fuse "
// is "s3,fuse"), a repeated name counts once, and "all" anywhere means every component.
// An unknown or empty name is kInvalidArgument listing the known ones.
Result<std::string> DebugLevelSpec(std::string_view components);

// The known component names, for help texts.
const std::vector<std::string>& LogComponents();

}  // namespace bucketfs
