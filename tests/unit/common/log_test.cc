#include "common/log.h"

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>

#include <chrono>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace bucketfs {
namespace {

using nlohmann::ordered_json;

// "2026-11-23T01:02:03.456 " in front of every text line.
const std::regex kTextTimestamp(R"(^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} )");
constexpr size_t kTextTimestampBytes = 24;

// Each test logs through its own loggers into `out_`: their stderr sink is swapped for a
// stream, and ConfigureLogFormat() puts the bucketfs formatter on that stream too (it
// applies to every registered logger's sinks). The loggers are dropped afterwards, since
// their sink points into this fixture.
class LogTest : public ::testing::Test {
 protected:
  void TearDown() override {
    for (const std::string& name : names_) spdlog::drop(name);
    SetLogContext("bucket", "");
    SetLogContext("holder", "");
    EXPECT_TRUE(ConfigureLogFormat("text").ok());
  }

  std::shared_ptr<spdlog::logger> Capture(const std::string& name, std::string_view format) {
    auto logger = Logger(name);
    names_.push_back(name);
    logger->sinks().clear();
    logger->sinks().push_back(sink_);
    logger->set_level(spdlog::level::trace);
    EXPECT_TRUE(ConfigureLogFormat(format).ok());
    return logger;
  }

  std::vector<std::string> Lines() {
    std::vector<std::string> lines;
    std::istringstream in(out_.str());
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    out_.str("");
    return lines;
  }

  // The only line logged since the last call, without its local-time timestamp.
  std::string TextLine() {
    std::vector<std::string> lines = Lines();
    if (lines.size() != 1) {
      ADD_FAILURE() << "expected one line, got " << lines.size() << ": "
                    << ::testing::PrintToString(lines);
      return {};
    }
    EXPECT_TRUE(std::regex_search(lines[0], kTextTimestamp)) << lines[0];
    return lines[0].substr(std::min(kTextTimestampBytes, lines[0].size()));
  }

  ordered_json JsonLine() {
    std::vector<std::string> lines = Lines();
    if (lines.size() != 1) {
      ADD_FAILURE() << "expected one line, got " << lines.size() << ": "
                    << ::testing::PrintToString(lines);
      return {};
    }
    EXPECT_TRUE(ordered_json::accept(lines[0])) << lines[0];
    return ordered_json::parse(lines[0], nullptr, false);
  }

  std::ostringstream out_;
  std::shared_ptr<spdlog::sinks::ostream_sink_mt> sink_ =
      std::make_shared<spdlog::sinks::ostream_sink_mt>(out_);
  std::vector<std::string> names_;
};

std::vector<std::string> Keys(const ordered_json& j) {
  std::vector<std::string> keys;
  for (const auto& item : j.items()) keys.push_back(item.key());
  return keys;
}

TEST_F(LogTest, TextLineIsThePatternThenTheFieldsThenTheContext) {
  auto log = Capture("logtest-text", "text");
  SetLogContext("bucket", "data");
  const std::string key = "a b.bin";
  LogEvent(
      *log, spdlog::level::debug, "request done",
      {{"op", "GET"}, {"key", key}, {"status", 200}, {"request_id", "tx00"}, {"latency_ms", 12}});
  EXPECT_EQ(TextLine(),
            "debug [logtest-text] request done op=GET key=\"a b.bin\" status=200 "
            "request_id=tx00 latency_ms=12 bucket=data");
}

TEST_F(LogTest, TextWritesEveryValueTypeExactly) {
  auto log = Capture("logtest-types", "text");
  const std::string s = "str";
  const std::string_view sv = "view";
  LogEvent(*log, spdlog::level::info, "types",
           {{"u64max", std::numeric_limits<uint64_t>::max()},
            {"i64min", std::numeric_limits<int64_t>::min()},
            {"neg", -42},
            {"i8", int8_t{-7}},
            {"u8", uint8_t{250}},
            {"size", size_t{4096}},
            {"d", 12.5},
            {"small", 0.1},
            {"f", 2.5f},
            {"yes", true},
            {"no", false},
            {"s", s},
            {"sv", sv},
            {"lit", "x"},
            {"null", static_cast<const char*>(nullptr)}});
  EXPECT_EQ(TextLine(),
            "info [logtest-types] types u64max=18446744073709551615 i64min=-9223372036854775808 "
            "neg=-42 i8=-7 u8=250 size=4096 d=12.5 small=0.1 f=2.5 yes=true no=false s=str "
            "sv=view lit=x null=\"\"");
}

TEST_F(LogTest, TextQuotesAndEscapesValuesThatNeedIt) {
  auto log = Capture("logtest-quote", "text");
  LogEvent(*log, spdlog::level::info, "q",
           {{"bare", "dir/a-b_c.bin"},
            {"utf8", "caf\xc3\xa9"},
            {"empty", ""},
            {"space", "a b"},
            {"quote", "a\"b"},
            {"eq", "a=b"},
            {"backslash", "a\\b"},
            {"newline", "a\nb"},
            {"tab", "a\tb"},
            {"cr", "a\rb"},
            {"ctrl", "a\x01z"},
            {"del", "a\x7fz"}});
  EXPECT_EQ(TextLine(),
            "info [logtest-quote] q bare=dir/a-b_c.bin utf8=caf\xc3\xa9 empty=\"\" "
            "space=\"a b\" quote=\"a\\\"b\" eq=\"a=b\" backslash=\"a\\\\b\" "
            "newline=\"a\\nb\" tab=\"a\\tb\" cr=\"a\\rb\" ctrl=\"a\\u0001z\" "
            "del=\"a\\u007fz\"");
}

TEST_F(LogTest, OrdinaryLinesKeepTheirShapeAndGetTheContext) {
  auto log = Capture("logtest-plain", "text");
  log->info("mounted {} at {}", "b", "/mnt");
  EXPECT_EQ(TextLine(), "info [logtest-plain] mounted b at /mnt");
  SetLogContext("bucket", "data");
  log->warn("plain");
  EXPECT_EQ(TextLine(), "warning [logtest-plain] plain bucket=data");
}

TEST_F(LogTest, FieldsBelongToTheirEventOnly) {
  auto log = Capture("logtest-once", "text");
  LogEvent(*log, spdlog::level::info, "with", {{"key", "k"}});
  log->info("without");
  std::vector<std::string> lines = Lines();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_TRUE(lines[0].ends_with("with key=k")) << lines[0];
  EXPECT_TRUE(lines[1].ends_with("without")) << lines[1];
}

TEST_F(LogTest, ContextIsOnEveryLineOfEveryLoggerAndCanBeReplacedOrRemoved) {
  auto a = Capture("logtest-ctx-a", "text");
  auto b = Capture("logtest-ctx-b", "text");
  SetLogContext("bucket", "one");
  SetLogContext("holder", "pod-1");
  a->info("x");
  LogEvent(*b, spdlog::level::info, "y", {{"n", 1}});
  SetLogContext("bucket", "two");  // Replaced in place: the order stays.
  a->info("z");
  SetLogContext("holder", "");  // Removed.
  b->info("w");
  std::vector<std::string> lines = Lines();
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_TRUE(lines[0].ends_with("[logtest-ctx-a] x bucket=one holder=pod-1")) << lines[0];
  EXPECT_TRUE(lines[1].ends_with("[logtest-ctx-b] y n=1 bucket=one holder=pod-1")) << lines[1];
  EXPECT_TRUE(lines[2].ends_with("[logtest-ctx-a] z bucket=two holder=pod-1")) << lines[2];
  EXPECT_TRUE(lines[3].ends_with("[logtest-ctx-b] w bucket=two")) << lines[3];
}

TEST_F(LogTest, AnEventFieldHidesTheContextFieldOfItsName) {
  auto log = Capture("logtest-hide", "text");
  SetLogContext("bucket", "data");
  LogEvent(*log, spdlog::level::info, "copy", {{"bucket", "other"}});
  EXPECT_EQ(TextLine(), "info [logtest-hide] copy bucket=other");
  ASSERT_TRUE(ConfigureLogFormat("json").ok());
  LogEvent(*log, spdlog::level::info, "copy", {{"bucket", "other"}});
  ordered_json j = JsonLine();
  EXPECT_EQ(j, ordered_json::parse(R"({"ts":")" + j.value("ts", "") +
                                   R"(","level":"info","component":"logtest-hide",)"
                                   R"("msg":"copy","bucket":"other"})"));
}

TEST_F(LogTest, DisabledLevelWritesNothing) {
  auto log = Capture("logtest-off", "text");
  log->set_level(spdlog::level::info);
  LogEvent(*log, spdlog::level::debug, "hidden", {{"key", "k"}});
  log->debug("hidden too");
  EXPECT_TRUE(out_.str().empty()) << out_.str();
  ASSERT_TRUE(ConfigureLogFormat("json").ok());
  LogEvent(*log, spdlog::level::trace, "hidden", {{"key", "k"}});
  EXPECT_TRUE(out_.str().empty()) << out_.str();
}

TEST_F(LogTest, JsonLineParsesBackWithExactFieldsAndTypes) {
  auto log = Capture("logtest-json", "json");
  SetLogContext("bucket", "data");
  LogEvent(*log, spdlog::level::debug, "request done",
           {{"op", "GET"},
            {"key", "a b.bin"},
            {"status", 200},
            {"u64max", std::numeric_limits<uint64_t>::max()},
            {"neg", int64_t{-5}},
            {"latency_ms", 12.5},
            {"retried", false},
            {"empty", ""}});
  ordered_json j = JsonLine();
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(Keys(j), (std::vector<std::string>{"ts", "level", "component", "msg", "op", "key",
                                               "status", "u64max", "neg", "latency_ms", "retried",
                                               "empty", "bucket"}));
  EXPECT_EQ(j["level"], "debug");
  EXPECT_EQ(j["component"], "logtest-json");
  EXPECT_EQ(j["msg"], "request done");
  EXPECT_EQ(j["op"], "GET");
  EXPECT_EQ(j["key"], "a b.bin");
  ASSERT_TRUE(j["status"].is_number_integer());
  EXPECT_EQ(j["status"].get<int64_t>(), 200);
  ASSERT_TRUE(j["u64max"].is_number_unsigned());
  EXPECT_EQ(j["u64max"].get<uint64_t>(), std::numeric_limits<uint64_t>::max());
  ASSERT_TRUE(j["neg"].is_number_integer());
  EXPECT_EQ(j["neg"].get<int64_t>(), -5);
  ASSERT_TRUE(j["latency_ms"].is_number_float());
  EXPECT_EQ(j["latency_ms"].get<double>(), 12.5);
  ASSERT_TRUE(j["retried"].is_boolean());
  EXPECT_FALSE(j["retried"].get<bool>());
  EXPECT_EQ(j["empty"], "");
  EXPECT_EQ(j["bucket"], "data");
  EXPECT_TRUE(std::regex_match(j["ts"].get<std::string>(),
                               std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)")))
      << j["ts"];
}

TEST_F(LogTest, JsonTimestampIsUtcWithMilliseconds) {
  Capture("logtest-ts", "json");
  // 2026-11-23T01:02:03.456Z, handed to the sink directly to fix the time.
  const spdlog::log_clock::time_point when{std::chrono::milliseconds(1795395723456)};
  sink_->log(spdlog::details::log_msg(when, spdlog::source_loc{}, "logtest-ts", spdlog::level::info,
                                      "at a known time"));
  ordered_json j = JsonLine();
  EXPECT_EQ(j.value("ts", ""), "2026-11-23T01:02:03.456Z");
  EXPECT_EQ(j.value("msg", ""), "at a known time");
}

TEST_F(LogTest, JsonOrdinaryLineHasTheEnvelopeAndNoColorMarkers) {
  auto log = Capture("logtest-jplain", "json");
  log->error("it broke: {}", 42);
  std::string raw = out_.str();
  EXPECT_EQ(raw.find('\x1b'), std::string::npos);
  ordered_json j = JsonLine();
  EXPECT_EQ(Keys(j), (std::vector<std::string>{"ts", "level", "component", "msg"}));
  EXPECT_EQ(j["level"], "error");
  EXPECT_EQ(j["msg"], "it broke: 42");
}

TEST_F(LogTest, JsonSurvivesInvalidUtf8AndControlCharacters) {
  auto log = Capture("logtest-utf8", "json");
  const std::string key = "bad\xff\xfe-key\n\"q\"";
  LogEvent(*log, spdlog::level::warn, "odd key \xc3", {{"key", key}, {"k\xff", 1}});
  ordered_json j = JsonLine();
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j["key"], "bad\xef\xbf\xbd\xef\xbf\xbd-key\n\"q\"");
  EXPECT_EQ(j["msg"], "odd key \xef\xbf\xbd");
  EXPECT_EQ(j["k\xef\xbf\xbd"], 1);
}

TEST_F(LogTest, JsonFieldsNamedLikeTheEnvelopeAreRenamed) {
  auto log = Capture("logtest-clash", "json");
  LogEvent(*log, spdlog::level::info, "real message",
           {{"msg", "fake"}, {"ts", 1}, {"level", "x"}, {"component", "y"}, {"n", 1}, {"n", 2}});
  ordered_json j = JsonLine();
  EXPECT_EQ(Keys(j), (std::vector<std::string>{"ts", "level", "component", "msg", "_msg", "_ts",
                                               "_level", "_component", "n"}));
  EXPECT_EQ(j["msg"], "real message");
  EXPECT_EQ(j["level"], "info");
  EXPECT_EQ(j["component"], "logtest-clash");
  EXPECT_EQ(j["_msg"], "fake");
  EXPECT_EQ(j["_ts"], 1);
  EXPECT_EQ(j["n"], 2);  // The later of two fields of one name.
}

TEST_F(LogTest, FormatAppliesToLoggersMadeLater) {
  ASSERT_TRUE(ConfigureLogFormat("json").ok());
  names_.push_back("logtest-later");
  ::testing::internal::CaptureStderr();
  LogEvent(*Logger("logtest-later"), spdlog::level::warn, "later", {{"n", 3}});
  const std::string err = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(ordered_json::accept(err)) << err;
  ordered_json j = ordered_json::parse(err);
  EXPECT_EQ(j["component"], "logtest-later");
  EXPECT_EQ(j["n"], 3);
}

TEST_F(LogTest, ConcurrentEventsKeepTheirOwnFields) {
  auto log = Capture("logtest-threads", "text");
  constexpr int kThreads = 4, kLines = 200;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kLines; ++i) {
        LogEvent(*log, spdlog::level::info, "e", {{"thread", t}, {"i", i}, {"again", t}});
        if (i % 10 == 0) log->info("plain");
      }
    });
  }
  for (auto& th : threads) th.join();
  const std::regex event(R"( e thread=(\d) i=\d+ again=(\d)$)");
  const std::regex plain(R"( plain$)");
  int events = 0;
  for (const std::string& line : Lines()) {
    std::smatch m;
    if (std::regex_search(line, m, event)) {
      EXPECT_EQ(m[1], m[2]) << line;
      ++events;
    } else {
      EXPECT_TRUE(std::regex_search(line, plain)) << line;
    }
  }
  EXPECT_EQ(events, kThreads * kLines);
}

TEST(LogFormatTest, RejectsAnUnknownFormatNamingTheChoices) {
  Status s = ConfigureLogFormat("xml");
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(s.message().find("xml"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("text"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("json"), std::string::npos) << s.message();
  EXPECT_EQ(ConfigureLogFormat("JSON").code(), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(ConfigureLogFormat("text").ok());
}

TEST(LogLevelTest, AnUnknownLevelOrComponentIsRefusedAndChangesNothing) {
  ASSERT_TRUE(ConfigureLogging("info").ok());
  // spdlog reads an unknown level name as "off": a typo must not silence the log.
  for (const char* spec : {"INFO", "verbose", "", "info,s3=loud", "s4=debug", "s3=debug,=info"}) {
    Status s = ConfigureLogging(spec);
    EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << spec;
    EXPECT_EQ(spdlog::get_level(), spdlog::level::info) << spec;
    EXPECT_EQ(Logger("s3")->level(), spdlog::level::info) << spec;
  }
  Status s = ConfigureLogging("Debug");
  EXPECT_NE(s.message().find("'Debug'"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("trace, debug, info, warn, error"), std::string::npos) << s.message();
  s = ConfigureLogging("s4=debug");
  EXPECT_NE(s.message().find("'s4'"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("writeback"), std::string::npos) << s.message();
}

TEST(LogLevelTest, LevelsApplyToEveryComponentOrOneInTheOrderGiven) {
  ASSERT_TRUE(ConfigureLogging("warn,s3=debug").ok());
  EXPECT_EQ(Logger("fuse")->level(), spdlog::level::warn);
  EXPECT_EQ(Logger("s3")->level(), spdlog::level::debug);
  ASSERT_TRUE(ConfigureLogging(" error , fuse = trace ").ok());
  EXPECT_EQ(Logger("s3")->level(), spdlog::level::err);
  EXPECT_EQ(Logger("fuse")->level(), spdlog::level::trace);
  ASSERT_TRUE(ConfigureLogging("warning,s3=err").ok());  // spdlog's spellings too.
  EXPECT_EQ(Logger("fuse")->level(), spdlog::level::warn);
  EXPECT_EQ(Logger("s3")->level(), spdlog::level::err);
  ASSERT_TRUE(ConfigureLogging("info").ok());
  EXPECT_EQ(Logger("fuse")->level(), spdlog::level::info);
}

TEST(DebugLevelSpecTest, AllOrNothingMeansEveryComponent) {
  for (std::string_view in : {"", "all", "  ", " all ", "s3,all"}) {
    Result<std::string> spec = DebugLevelSpec(in);
    ASSERT_TRUE(spec.ok()) << in << ": " << spec.status().ToString();
    EXPECT_EQ(*spec, "debug") << in;
  }
}

TEST(DebugLevelSpecTest, ListedComponentsGetDebug) {
  Result<std::string> spec = DebugLevelSpec("s3,fuse");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(*spec, "s3=debug,fuse=debug");
  spec = DebugLevelSpec(" s3 , fuse ");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(*spec, "s3=debug,fuse=debug");
  spec = DebugLevelSpec("writeback,s3,writeback");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(*spec, "writeback=debug,s3=debug");
  for (const std::string& c : LogComponents()) {
    spec = DebugLevelSpec(c);
    ASSERT_TRUE(spec.ok()) << c;
    EXPECT_EQ(*spec, c + "=debug");
  }
}

TEST(DebugLevelSpecTest, UnknownOrEmptyNamesAreRejectedListingTheKnownOnes) {
  for (std::string_view in : {"s4", "s3,bogus", "S3", "s3,,fuse", "s3,", "all,nope"}) {
    Result<std::string> spec = DebugLevelSpec(in);
    ASSERT_FALSE(spec.ok()) << in;
    EXPECT_EQ(spec.status().code(), ErrorCode::kInvalidArgument) << in;
    const std::string& message = spec.status().message();
    EXPECT_NE(message.find("s3, cache, writeback, fuse, mountd, control, metrics"), std::string::npos)
        << message;
  }
  EXPECT_NE(DebugLevelSpec("s3,bogus").status().message().find("'bogus'"), std::string::npos);
}

TEST(LogComponentsTest, NamesEveryComponent) {
  EXPECT_EQ(LogComponents(),
            (std::vector<std::string>{"s3", "cache", "writeback", "fuse", "mountd", "control", "metrics"}));
}

}  // namespace
}  // namespace bucketfs
