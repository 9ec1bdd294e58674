#include "common/metrics.h"

#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <future>
#include <limits>
#include <thread>
#include <vector>

#include "common/metrics_endpoint.h"

namespace bucketfs {
namespace {

TEST(MetricsTest, CounterFamilyRendersHelpTypeAndOneLinePerLabelTuple) {
  MetricsRegistry registry;
  auto& requests = registry.CounterFamily("t_requests_total", "Requests sent", {"op", "status"});
  requests.With({"GET", "200"}).Add(3);
  requests.With({"GET", "503"}).Add();
  requests.With({"GET", "200"}).Add(2);
  EXPECT_EQ(registry.Render(),
            "# HELP t_requests_total Requests sent\n"
            "# TYPE t_requests_total counter\n"
            "t_requests_total{op=\"GET\",status=\"200\"} 5\n"
            "t_requests_total{op=\"GET\",status=\"503\"} 1\n");
}

TEST(MetricsTest, AskingTwiceForANameGivesTheSameFamily) {
  MetricsRegistry registry;
  auto& a = registry.CounterFamily("t_total", "help", {"x"});
  auto& b = registry.CounterFamily("t_total", "help", {"x"});
  EXPECT_EQ(&a, &b);
  a.With({"1"}).Add();
  EXPECT_EQ(b.With({"1"}).Value(), 1u);
}

TEST(MetricsDeathTest, OneNameWithTwoMeaningsAborts) {
  MetricsRegistry registry;
  registry.CounterFamily("t_total", "help", {"x"});
  EXPECT_DEATH(registry.GaugeFamily("t_total", "help", {"x"}), "");
  EXPECT_DEATH(registry.CounterFamily("t_total", "help", {"y"}), "");
}

TEST(MetricsTest, LabelValuesAndHelpAreEscaped) {
  MetricsRegistry registry;
  registry.GaugeFamily("t_gauge", "back\\slash and\nnewline", {"path"})
      .With({"a\"b\\c\nd"})
      .Set(-2.5);
  EXPECT_EQ(registry.Render(),
            "# HELP t_gauge back\\\\slash and\\nnewline\n"
            "# TYPE t_gauge gauge\n"
            "t_gauge{path=\"a\\\"b\\\\c\\nd\"} -2.5\n");
}

TEST(MetricsTest, AFamilyNeverUsedStillDeclaresItself) {
  MetricsRegistry registry;
  registry.CounterFamily("t_unused_total", "Never bumped", {"op"});
  EXPECT_EQ(registry.Render(),
            "# HELP t_unused_total Never bumped\n# TYPE t_unused_total counter\n");
}

TEST(MetricsTest, HistogramBucketsAreCumulativeAndInclusive) {
  MetricsRegistry registry;
  auto& h = registry.HistogramFamily("t_seconds", "Latency", {"op"}, {0.1, 1, 10}).With({"r"});
  h.Observe(0.05);
  h.Observe(0.1);  // Equal to a bound: counted in that bucket ("le").
  h.Observe(0.5);
  h.Observe(100);  // Above every bound: only +Inf.
  const auto snap = h.Snap();
  EXPECT_EQ(snap.cumulative, (std::vector<uint64_t>{2, 3, 3, 4}));
  EXPECT_EQ(snap.count, 4u);
  EXPECT_DOUBLE_EQ(snap.sum, 100.65);
  EXPECT_EQ(registry.Render(),
            "# HELP t_seconds Latency\n"
            "# TYPE t_seconds histogram\n"
            "t_seconds_bucket{op=\"r\",le=\"0.1\"} 2\n"
            "t_seconds_bucket{op=\"r\",le=\"1\"} 3\n"
            "t_seconds_bucket{op=\"r\",le=\"10\"} 3\n"
            "t_seconds_bucket{op=\"r\",le=\"+Inf\"} 4\n"
            "t_seconds_sum{op=\"r\"} 100.65\n"
            "t_seconds_count{op=\"r\"} 4\n");
}

TEST(MetricsTest, LatencyBucketsSpanACachedReadToASlowUpload) {
  const auto& b = LatencyBuckets();
  ASSERT_FALSE(b.empty());
  EXPECT_LE(b.front(), 0.0001);
  EXPECT_GE(b.back(), 60);
  EXPECT_TRUE(std::is_sorted(b.begin(), b.end()));
}

TEST(MetricsTest, ValuesAreFormattedForTheExpositionFormat) {
  EXPECT_EQ(FormatMetricValue(0), "0");
  EXPECT_EQ(FormatMetricValue(42), "42");
  EXPECT_EQ(FormatMetricValue(-7), "-7");
  EXPECT_EQ(FormatMetricValue(0.25), "0.25");
  EXPECT_EQ(FormatMetricValue(1099511627776.0), "1099511627776");
  EXPECT_EQ(FormatMetricValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(FormatMetricValue(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(FormatMetricValue(std::nan("")), "NaN");
  // Past 2^53 a double is not an exact integer: written as a double, still parseable.
  EXPECT_EQ(std::stod(FormatMetricValue(1e20)), 1e20);
}

TEST(MetricsTest, ConcurrentUpdatesAreAllCounted) {
  MetricsRegistry registry;
  auto& family = registry.CounterFamily("t_total", "help", {"thread"});
  auto& hist = registry.HistogramFamily("t_seconds", "help").Get();
  constexpr int kThreads = 8;
  constexpr int kEach = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        family.With({t % 2 == 0 ? "even" : "odd"}).Add();
        hist.Observe(0.001);
        if (i % 1000 == 0) (void)registry.Render();  // Scrapes race with the updates.
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(family.With({"even"}).Value() + family.With({"odd"}).Value(),
            uint64_t{kThreads} * kEach);
  EXPECT_EQ(hist.Snap().count, uint64_t{kThreads} * kEach);
}

TEST(MetricsTest, CollectorsWriteAtScrapeTimeAndStopWhenTheirHandleGoes) {
  MetricsRegistry registry;
  std::atomic<int> state{7};
  auto handle = registry.AddCollector([&](MetricsWriter& w) {
    w.Gauge("t_state", "A state read at scrape time", state.load());
    w.Counter("t_things_total", "Things", 1, {{"kind", "a"}});
    w.Counter("t_things_total", "Things", 2, {{"kind", "b"}});
  });
  EXPECT_EQ(registry.Render(),
            "# HELP t_state A state read at scrape time\n# TYPE t_state gauge\nt_state 7\n"
            "# HELP t_things_total Things\n# TYPE t_things_total counter\n"
            "t_things_total{kind=\"a\"} 1\nt_things_total{kind=\"b\"} 2\n");
  state = 9;
  EXPECT_NE(registry.Render().find("t_state 9\n"), std::string::npos);
  handle.Reset();
  EXPECT_EQ(registry.Render(), "");
}

TEST(MetricsTest, DroppingACollectorWaitsForTheScrapeRunningIt) {
  MetricsRegistry registry;
  std::promise<void> entered;
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<bool> collector_done{false};
  auto handle = std::make_unique<MetricsRegistry::CollectorHandle>(
      registry.AddCollector([&](MetricsWriter& w) {
        entered.set_value();
        released.wait();
        w.Gauge("t_x", "x", 1);
        collector_done = true;
      }));
  std::thread scrape([&] { (void)registry.Render(); });
  entered.get_future().wait();
  std::atomic<bool> dropping{false};
  std::atomic<bool> dropped{false};
  std::thread drop([&] {
    dropping = true;
    handle.reset();
    dropped = true;
  });
  while (!dropping.load()) std::this_thread::yield();
  // The drop is under way; give it time to finish if it (wrongly) does not wait.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_FALSE(dropped.load()) << "the handle went while its collector was still running";
  release.set_value();
  drop.join();
  scrape.join();
  EXPECT_TRUE(collector_done.load());
  EXPECT_TRUE(dropped.load());
}

TEST(MetricsTest, TheProcessRegistryIsOne) { EXPECT_EQ(&Metrics(), &Metrics()); }

TEST(MetricsEndpointTest, ParsesHostAndPort) {
  auto v4 = ParseHostPort("127.0.0.1:9464");
  ASSERT_TRUE(v4.ok()) << v4.status().ToString();
  EXPECT_EQ(v4->first, "127.0.0.1");
  EXPECT_EQ(v4->second, 9464);
  auto v6 = ParseHostPort("[::1]:0");
  ASSERT_TRUE(v6.ok()) << v6.status().ToString();
  EXPECT_EQ(v6->first, "::1");
  EXPECT_EQ(v6->second, 0);
  for (const char* bad : {"9464", ":9464", "127.0.0.1:", "127.0.0.1:x", "127.0.0.1:65536",
                          "::1:9464", "127.0.0.1:-1"}) {
    auto r = ParseHostPort(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument) << bad;
    EXPECT_NE(r.status().ToString().find("HOST:PORT"), std::string::npos) << bad;
  }
}

TEST(MetricsEndpointTest, ServesTheRegistryAtSlashMetricsOnly) {
  MetricsRegistry registry;
  auto& c = registry.CounterFamily("t_served_total", "Served").Get();
  c.Add(5);
  auto endpoint = MetricsEndpoint::Start("127.0.0.1:0", registry);
  ASSERT_TRUE(endpoint.ok()) << endpoint.status().ToString();
  ASSERT_GT((*endpoint)->port(), 0);
  EXPECT_EQ((*endpoint)->url(),
            "http://127.0.0.1:" + std::to_string((*endpoint)->port()) + "/metrics");

  httplib::Client client("127.0.0.1", (*endpoint)->port());
  auto res = client.Get("/metrics");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_NE(res->body.find("t_served_total 5\n"), std::string::npos) << res->body;

  c.Add();  // Every scrape renders anew.
  res = client.Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_NE(res->body.find("t_served_total 6\n"), std::string::npos) << res->body;

  auto other = client.Get("/");
  ASSERT_TRUE(other);
  EXPECT_EQ(other->status, 404);
  auto post = client.Post("/metrics", "", "text/plain");
  ASSERT_TRUE(post);
  EXPECT_NE(post->status, 200);
}

TEST(MetricsEndpointTest, ABusyPortIsRefusedWithTheAddressAndTheReason) {
  MetricsRegistry registry;
  auto first = MetricsEndpoint::Start("127.0.0.1:0", registry);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  const std::string address = "127.0.0.1:" + std::to_string((*first)->port());
  auto second = MetricsEndpoint::Start(address, registry);
  ASSERT_FALSE(second.ok()) << "two endpoints bound one port";
  const std::string message = second.status().ToString();
  EXPECT_NE(message.find(address), std::string::npos) << message;
  EXPECT_NE(message.find("in use"), std::string::npos) << message;
  EXPECT_NE(message.find("--metrics-address"), std::string::npos) << message;
}

TEST(MetricsEndpointTest, AnAddressThatIsNotLocalIsRefused) {
  MetricsRegistry registry;
  // TEST-NET-1 (RFC 5737): never assigned to this machine.
  auto r = MetricsEndpoint::Start("192.0.2.1:9464", registry);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().ToString().find("192.0.2.1:9464"), std::string::npos)
      << r.status().ToString();
}

TEST(MetricsEndpointTest, StopsPromptlyWhenDestroyed) {
  MetricsRegistry registry;
  auto endpoint = MetricsEndpoint::Start("127.0.0.1:0", registry);
  ASSERT_TRUE(endpoint.ok()) << endpoint.status().ToString();
  const int port = (*endpoint)->port();
  const auto start = std::chrono::steady_clock::now();
  endpoint->reset();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(std::chrono::seconds(1));
  EXPECT_FALSE(client.Get("/metrics")) << "still serving after destruction";
}

}  // namespace
}  // namespace bucketfs
