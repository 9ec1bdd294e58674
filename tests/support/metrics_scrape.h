// Test support: scrapes a bucketfs metrics endpoint and parses the exposition with Python's
// prometheus_client, an independent parser (a malformed exposition fails the test).
#pragma once

#include <map>
#include <string>

namespace bucketfs::testing {

// Samples of one scrape: "name{label=value,...}" (labels sorted by name) -> value. Samples
// whose value is not finite are left out.
using MetricSamples = std::map<std::string, double>;

// GETs `url` (no proxy), checks the content type, parses it; fails the test on any error.
MetricSamples ScrapeMetrics(const std::string& url);

// The sum of the samples named `name` whose labels include every pair of `want`.
double SumSamples(const MetricSamples& samples, const std::string& name,
                  const std::map<std::string, std::string>& want = {});

}  // namespace bucketfs::testing
