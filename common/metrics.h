// Metrics: counters, gauges and histograms, rendered in Prometheus's text exposition
// format (version 0.0.4) for the daemon's metrics endpoint (common/metrics_endpoint.h).
//
// Contract:
//  - A family (one metric name, its help, type and label names) is created once in a
//    MetricsRegistry; the process-wide registry is Metrics(). Asking again for the same name
//    with the same type and label names returns the same family; anything else is a
//    programming error and aborts, because two meanings under one name would corrupt every
//    dashboard built on it.
//  - Updating is lock-free: Counter::Add, Gauge::Set/Add and Histogram::Observe are relaxed
//    atomics, cheap enough for every FUSE request and every HTTP attempt.
//  - A labeled child (Family::With) is found under the family's mutex and lives as long as
//    the registry: hot paths look it up once and keep the reference.
//  - State that lives elsewhere (the memory budget, the writeback queue, the lease) is not
//    copied into gauges on every change: a collector callback reads it at scrape time.
//    AddCollector() returns a handle whose destruction unregisters the callback and waits
//    for a scrape running it to finish, so a callback never outlives what it reads.
//  - Render() is consistent per sample, not across samples: a scrape running while the
//    counters move may see a histogram's _count one observation ahead of its buckets. That is
//    what every Prometheus client library does and what PromQL's rate() tolerates.
//  - Names follow Prometheus's conventions: `bucketfs_` prefix, base units (seconds, bytes),
//    `_total` on counters. Label values are escaped (\\, \", \n); help text likewise (\\, \n).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bucketfs {

enum class MetricType { kCounter, kGauge, kHistogram };

// Label name/value pairs of one sample, in the order they are written.
using MetricLabels = std::vector<std::pair<std::string, std::string>>;

class Counter {
 public:
  void Add(uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

class Gauge {
 public:
  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  void Add(double d) { value_.fetch_add(d, std::memory_order_relaxed); }
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

// Observations counted into fixed buckets chosen at construction (upper bounds, ascending;
// +Inf is implied).
class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void Observe(double value);

  struct Snapshot {
    std::vector<double> upper_bounds;
    std::vector<uint64_t> cumulative;  // One per bound, then the +Inf bucket (== count).
    uint64_t count = 0;
    double sum = 0;
  };
  Snapshot Snap() const;

 private:
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // bounds_.size() + 1, not cumulative.
  std::atomic<double> sum_{0};
};

// Bucket bounds for latencies, in seconds: 100 µs (a cached FUSE read) to 60 s (a large
// part upload on a slow link).
const std::vector<double>& LatencyBuckets();

// One metric name and its children, one per distinct tuple of label values.
template <typename T>
class Family {
 public:
  // The child for `values`, one per label name given at creation, created at first use.
  T& With(std::initializer_list<std::string_view> values);
  T& With(const std::vector<std::string>& values);
  // The unlabeled child (a family without label names).
  T& Get() { return With(std::vector<std::string>{}); }

 private:
  friend class MetricsRegistry;
  Family(std::vector<std::string> label_names, std::function<std::unique_ptr<T>()> make)
      : label_names_(std::move(label_names)), make_(std::move(make)) {}

  const std::vector<std::string> label_names_;
  const std::function<std::unique_ptr<T>()> make_;
  mutable std::mutex mu_;
  std::map<std::vector<std::string>, std::unique_ptr<T>> children_;  // Guarded by mu_.
};

// What a collector writes: samples grouped by name. Consecutive samples of one name share
// one HELP/TYPE header, so a collector writes all samples of a name together, and no name
// appears in two places (the exposition would be invalid; the second header is left out).
class MetricsWriter {
 public:
  void Counter(std::string_view name, std::string_view help, double value,
               const MetricLabels& labels = {});
  void Gauge(std::string_view name, std::string_view help, double value,
             const MetricLabels& labels = {});
  void HistogramSamples(std::string_view name, std::string_view help,
                        const Histogram::Snapshot& snap, const MetricLabels& labels = {});
  std::string& text() { return out_; }

 private:
  friend class MetricsRegistry;
  void Header(std::string_view name, std::string_view help, MetricType type);
  void Sample(std::string_view name, const MetricLabels& labels, double value,
              std::string_view extra_label = {}, std::string_view extra_value = {});

  std::string out_;
  std::string last_header_;
  std::set<std::string> headed_;  // Every name written so far.
};

class MetricsRegistry {
 public:
  MetricsRegistry() = default;
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;
  ~MetricsRegistry();

  Family<Counter>& CounterFamily(std::string name, std::string help,
                                 std::vector<std::string> label_names = {});
  Family<Gauge>& GaugeFamily(std::string name, std::string help,
                             std::vector<std::string> label_names = {});
  Family<Histogram>& HistogramFamily(std::string name, std::string help,
                                     std::vector<std::string> label_names = {},
                                     std::vector<double> upper_bounds = LatencyBuckets());

  // Unregisters its collector on destruction (waiting for a scrape that runs it).
  class CollectorHandle {
   public:
    CollectorHandle() = default;
    CollectorHandle(CollectorHandle&& other) noexcept { *this = std::move(other); }
    CollectorHandle& operator=(CollectorHandle&& other) noexcept;
    ~CollectorHandle() { Reset(); }
    void Reset();

   private:
    friend class MetricsRegistry;
    MetricsRegistry* registry_ = nullptr;
    uint64_t id_ = 0;
  };
  [[nodiscard]] CollectorHandle AddCollector(std::function<void(MetricsWriter&)> collect);

  // The whole exposition: families in registration order, then every collector's samples.
  std::string Render() const;

 private:
  struct Entry {
    std::string name, help;
    MetricType type;
    std::vector<std::string> label_names;
    std::shared_ptr<void> family;  // Family<Counter|Gauge|Histogram>.
    std::function<void(MetricsWriter&)> render;
  };
  template <typename T>
  Family<T>& FindOrAdd(std::string name, std::string help, MetricType type,
                       std::vector<std::string> label_names,
                       std::function<std::unique_ptr<T>()> make);
  void RemoveCollector(uint64_t id);

  mutable std::mutex mu_;      // Guards entries_ and collectors_.
  std::deque<Entry> entries_;  // Stable addresses; never shrinks.
  std::map<uint64_t, std::function<void(MetricsWriter&)>> collectors_;
  uint64_t next_collector_id_ = 1;
  // Held while collectors run (not mu_: a collector may create families). Unregistering
  // takes it too, which is how a handle waits for a running scrape.
  mutable std::mutex scrape_mu_;
};

// The process-wide registry that the daemon's endpoint serves.
MetricsRegistry& Metrics();

// Renders `value` the way the exposition format wants it (+Inf, -Inf, NaN, shortest
// round-trip otherwise). Exposed for tests.
std::string FormatMetricValue(double value);

// ---- Template implementation ------------------------------------------------------------

template <typename T>
T& Family<T>::With(std::initializer_list<std::string_view> values) {
  return With(std::vector<std::string>(values.begin(), values.end()));
}

template <typename T>
T& Family<T>::With(const std::vector<std::string>& values) {
  std::lock_guard lock(mu_);
  auto it = children_.find(values);
  if (it == children_.end()) {
    if (values.size() != label_names_.size()) std::abort();  // A programming error.
    it = children_.emplace(values, make_()).first;
  }
  return *it->second;
}

}  // namespace bucketfs
