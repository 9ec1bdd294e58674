#include "tests/support/metrics_scrape.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tests/support/s3_test_env.h"

namespace bucketfs::testing {
namespace {

// Reads the exposition at argv[1] and prints its samples as one JSON object.
constexpr char kScraper[] = R"PY(
import json, math, sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
resp = opener.open(sys.argv[1], timeout=10)
assert resp.headers['Content-Type'].startswith('text/plain; version=0.0.4'), \
    resp.headers['Content-Type']
text = resp.read().decode()
# Stricter than the parser: one TYPE line per name, and each name's samples in one block.
types = [line.split()[2] for line in text.splitlines() if line.startswith('# TYPE ')]
assert len(types) == len(set(types)), 'a metric declared twice'
out = {}
for family in text_string_to_metric_families(text):
    for s in family.samples:
        labels = ','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))
        if math.isfinite(s.value):
            out[s.name + '{' + labels + '}'] = s.value
print(json.dumps(out))
)PY";

}  // namespace

MetricSamples ScrapeMetrics(const std::string& url) {
  // Written once per test process, and removed when it exits (a static's destructor).
  struct ScraperFile {
    std::string path = fmt::format("/tmp/bfs-scrape-{}.py", getpid());
    ScraperFile() { std::ofstream(path) << kScraper; }
    ~ScraperFile() { std::remove(path.c_str()); }
  };
  static const ScraperFile script;
  // Debian's python3 (with python3-prometheus-client), not whatever is first on PATH.
  CommandResult r = RunCommand(fmt::format("/usr/bin/python3 {} '{}'", script.path, url));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  MetricSamples out;
  const nlohmann::json j = nlohmann::json::parse(r.output, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    ADD_FAILURE() << "the scrape of " << url << " gave no samples: " << r.output;
    return out;
  }
  for (const auto& [k, v] : j.items()) out[k] = v.get<double>();
  return out;
}

double SumSamples(const MetricSamples& samples, const std::string& name,
                  const std::map<std::string, std::string>& want) {
  double total = 0;
  for (const auto& [id, value] : samples) {
    const size_t brace = id.find('{');
    if (brace == std::string::npos || id.compare(0, brace, name) != 0 || brace != name.size()) {
      continue;
    }
    const std::string labels = id.substr(brace + 1, id.size() - brace - 2);
    bool match = true;
    for (const auto& [k, v] : want) {
      std::stringstream in(labels);
      std::string item;
      bool found = false;
      while (std::getline(in, item, ',')) found = found || item == k + "=" + v;
      match = match && found;
    }
    if (match) total += value;
  }
  return total;
}

}  // namespace bucketfs::testing
