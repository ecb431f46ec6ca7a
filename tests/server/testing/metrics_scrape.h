#ifndef RINGATTN_TESTS_SERVER_TESTING_METRICS_SCRAPE_H_
#define RINGATTN_TESTS_SERVER_TESTING_METRICS_SCRAPE_H_

#include <map>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

// Reads a daemon's Prometheus endpoint the way a scraper does: an HTTP GET
// over a real socket, then the text exposition format.

namespace ringattn::server::testing {

// GET http://<address><path> (address "host:port", IPv4); the body.
absl::StatusOr<std::string> HttpGet(const std::string& address, const std::string& path,
                                    absl::Duration timeout = absl::Seconds(5));

// The value of the sample `name` whose labels include `labels`, from a
// /metrics body; nullopt when there is none.
std::optional<double> SampleValue(const std::string& exposition, const std::string& name,
                                  const std::map<std::string, std::string>& labels = {});

// Scrapes `address` and returns the sample's value (nullopt on any error).
std::optional<double> Scrape(const std::string& address, const std::string& name,
                             const std::map<std::string, std::string>& labels = {});

}  // namespace ringattn::server::testing

#endif  // RINGATTN_TESTS_SERVER_TESTING_METRICS_SCRAPE_H_
