#include "common/metrics.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

namespace bucketfs {
namespace {

// The exposition format's escaping: backslash and newline, and in label values the quote.
std::string Escape(std::string_view v, bool quote) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (quote && c == '"') {
      out += "\\\"";
    } else {
      out += c;
    }
  }
  return out;
}

const char* TypeName(MetricType type) {
  switch (type) {
    case MetricType::kCounter:
      return "counter";
    case MetricType::kGauge:
      return "gauge";
    case MetricType::kHistogram:
      return "histogram";
  }
  return "untyped";
}

MetricLabels Zip(const std::vector<std::string>& names, const std::vector<std::string>& values) {
  MetricLabels labels;
  labels.reserve(names.size());
  for (size_t i = 0; i < names.size(); ++i) labels.emplace_back(names[i], values[i]);
  return labels;
}

}  // namespace

std::string FormatMetricValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  // Integers (counters, byte gauges) print without an exponent up to 2^53.
  if (value == std::floor(value) && std::fabs(value) < 9007199254740992.0) {
    return fmt::format("{}", static_cast<int64_t>(value));
  }
  return fmt::format("{}", value);
}

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)),
      buckets_(std::make_unique<std::atomic<uint64_t>[]>(bounds_.size() + 1)) {
  if (!std::is_sorted(bounds_.begin(), bounds_.end())) std::abort();  // A programming error.
}

void Histogram::Observe(double value) {
  // The first bound >= value: Prometheus buckets are "less than or equal".
  const size_t i = static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), value) -
                                       bounds_.begin());
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::Snap() const {
  Snapshot s;
  s.upper_bounds = bounds_;
  uint64_t running = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    running += buckets_[i].load(std::memory_order_relaxed);
    s.cumulative.push_back(running);
  }
  // _count is the +Inf bucket, so that the two always agree within one scrape.
  s.count = running;
  s.sum = sum_.load(std::memory_order_relaxed);
  return s;
}

const std::vector<double>& LatencyBuckets() {
  static const std::vector<double> kBuckets = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                               0.01,   0.025,   0.05,   0.1,   0.25,   0.5,
                                               1,      2.5,     5,      10,    30,     60};
  return kBuckets;
}

// ---- MetricsWriter ----------------------------------------------------------------------

void MetricsWriter::Header(std::string_view name, std::string_view help, MetricType type) {
  if (last_header_ == name) return;
  last_header_ = std::string(name);
  // A name headed twice (two collectors, or a collector and a family, writing one name) is a
  // programming error that the tests' strict scrape catches; in a running daemon a scrape
  // must never take the mount down, so the second header is left out.
  if (!headed_.insert(last_header_).second) return;
  out_ +=
      fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, Escape(help, false), name, TypeName(type));
}

void MetricsWriter::Sample(std::string_view name, const MetricLabels& labels, double value,
                           std::string_view extra_label, std::string_view extra_value) {
  out_ += name;
  if (!labels.empty() || !extra_label.empty()) {
    out_ += '{';
    bool first = true;
    for (const auto& [label, v] : labels) {
      if (!first) out_ += ',';
      first = false;
      out_ += fmt::format("{}=\"{}\"", label, Escape(v, true));
    }
    if (!extra_label.empty()) {
      if (!first) out_ += ',';
      out_ += fmt::format("{}=\"{}\"", extra_label, extra_value);
    }
    out_ += '}';
  }
  out_ += ' ';
  out_ += FormatMetricValue(value);
  out_ += '\n';
}

void MetricsWriter::Counter(std::string_view name, std::string_view help, double value,
                            const MetricLabels& labels) {
  Header(name, help, MetricType::kCounter);
  Sample(name, labels, value);
}

void MetricsWriter::Gauge(std::string_view name, std::string_view help, double value,
                          const MetricLabels& labels) {
  Header(name, help, MetricType::kGauge);
  Sample(name, labels, value);
}

void MetricsWriter::HistogramSamples(std::string_view name, std::string_view help,
                                     const Histogram::Snapshot& snap, const MetricLabels& labels) {
  Header(name, help, MetricType::kHistogram);
  const std::string bucket = std::string(name) + "_bucket";
  for (size_t i = 0; i < snap.upper_bounds.size(); ++i) {
    Sample(bucket, labels, static_cast<double>(snap.cumulative[i]), "le",
           FormatMetricValue(snap.upper_bounds[i]));
  }
  Sample(bucket, labels, static_cast<double>(snap.count), "le", "+Inf");
  Sample(std::string(name) + "_sum", labels, snap.sum);
  Sample(std::string(name) + "_count", labels, static_cast<double>(snap.count));
}

// ---- MetricsRegistry --------------------------------------------------------------------

MetricsRegistry::~MetricsRegistry() = default;

template <typename T>
Family<T>& MetricsRegistry::FindOrAdd(std::string name, std::string help, MetricType type,
                                      std::vector<std::string> label_names,
                                      std::function<std::unique_ptr<T>()> make) {
  std::lock_guard lock(mu_);
  for (Entry& e : entries_) {
    if (e.name != name) continue;
    // One name, one meaning: a clash is a programming error (see the contract).
    if (e.type != type || e.label_names != label_names) std::abort();
    return *static_cast<Family<T>*>(e.family.get());
  }
  auto family = std::shared_ptr<Family<T>>(new Family<T>(label_names, std::move(make)));
  Entry e{name, help, type, label_names, family, {}};
  Family<T>* raw = family.get();
  e.render = [raw, name, help, type](MetricsWriter& w) {
    // Children are never removed: copy the list under the lock, format outside it, so that
    // a scrape never holds up an update that creates a child.
    std::vector<std::pair<std::vector<std::string>, const T*>> children;
    {
      std::lock_guard family_lock(raw->mu_);
      for (const auto& [values, child] : raw->children_) children.emplace_back(values, child.get());
    }
    if (children.empty()) {
      // Declared but never used: the header alone says the metric exists.
      w.Header(name, help, type);
      return;
    }
    for (const auto& [values, child] : children) {
      const MetricLabels labels = Zip(raw->label_names_, values);
      if constexpr (std::is_same_v<T, bucketfs::Counter>) {
        w.Counter(name, help, static_cast<double>(child->Value()), labels);
      } else if constexpr (std::is_same_v<T, bucketfs::Gauge>) {
        w.Gauge(name, help, child->Value(), labels);
      } else {
        w.HistogramSamples(name, help, child->Snap(), labels);
      }
    }
  };
  entries_.push_back(std::move(e));
  return *raw;
}

Family<Counter>& MetricsRegistry::CounterFamily(std::string name, std::string help,
                                                std::vector<std::string> label_names) {
  return FindOrAdd<Counter>(std::move(name), std::move(help), MetricType::kCounter,
                            std::move(label_names), [] { return std::make_unique<Counter>(); });
}

Family<Gauge>& MetricsRegistry::GaugeFamily(std::string name, std::string help,
                                            std::vector<std::string> label_names) {
  return FindOrAdd<Gauge>(std::move(name), std::move(help), MetricType::kGauge,
                          std::move(label_names), [] { return std::make_unique<Gauge>(); });
}

Family<Histogram>& MetricsRegistry::HistogramFamily(std::string name, std::string help,
                                                    std::vector<std::string> label_names,
                                                    std::vector<double> upper_bounds) {
  return FindOrAdd<Histogram>(
      std::move(name), std::move(help), MetricType::kHistogram, std::move(label_names),
      [bounds = std::move(upper_bounds)] { return std::make_unique<Histogram>(bounds); });
}

MetricsRegistry::CollectorHandle& MetricsRegistry::CollectorHandle::operator=(
    CollectorHandle&& other) noexcept {
  if (this != &other) {
    Reset();
    registry_ = std::exchange(other.registry_, nullptr);
    id_ = std::exchange(other.id_, 0);
  }
  return *this;
}

void MetricsRegistry::CollectorHandle::Reset() {
  if (registry_ != nullptr) registry_->RemoveCollector(id_);
  registry_ = nullptr;
  id_ = 0;
}

MetricsRegistry::CollectorHandle MetricsRegistry::AddCollector(
    std::function<void(MetricsWriter&)> collect) {
  std::lock_guard lock(mu_);
  CollectorHandle handle;
  handle.registry_ = this;
  handle.id_ = next_collector_id_++;
  collectors_.emplace(handle.id_, std::move(collect));
  return handle;
}

void MetricsRegistry::RemoveCollector(uint64_t id) {
  {
    std::lock_guard lock(mu_);
    collectors_.erase(id);
  }
  // A scrape that copied the collector before the erase is still running it: wait for it.
  std::lock_guard wait(scrape_mu_);
}

std::string MetricsRegistry::Render() const {
  std::lock_guard scrape(scrape_mu_);
  std::vector<std::function<void(MetricsWriter&)>> renders;
  {
    std::lock_guard lock(mu_);
    for (const Entry& e : entries_) renders.push_back(e.render);
    for (const auto& [id, collect] : collectors_) renders.push_back(collect);
  }
  MetricsWriter writer;
  for (const auto& render : renders) render(writer);
  return std::move(writer.text());
}

MetricsRegistry& Metrics() {
  // Never destroyed: counters are bumped by threads that may outlive main's locals.
  static auto* registry = new MetricsRegistry();
  return *registry;
}

}  // namespace bucketfs
