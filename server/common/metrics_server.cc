#include "server/common/metrics_server.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <exception>
#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace ringattn::server {

namespace {

std::optional<std::string> ReadFile(const char* path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Seconds since the epoch at boot: the "btime" line of /proc/stat.
double BootTimeSeconds() {
  const std::optional<std::string> stat = ReadFile("/proc/stat");
  if (!stat) return 0;
  for (absl::string_view line : absl::StrSplit(*stat, '\n')) {
    double btime = 0;
    if (absl::ConsumePrefix(&line, "btime ") && absl::SimpleAtod(line, &btime)) return btime;
  }
  return 0;
}

int OpenFds() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return 0;
  int n = 0;
  while (const dirent* e = readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(dir);
  return n - 1;  // Less the descriptor reading the directory.
}

prometheus::MetricFamily One(const char* name, const char* help, prometheus::MetricType type,
                             double value) {
  prometheus::ClientMetric m;
  if (type == prometheus::MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  return {name, help, type, {m}};
}

}  // namespace

std::optional<ProcStat> ParseProcStat(absl::string_view text) {
  const size_t close = text.rfind(')');
  if (close == absl::string_view::npos) return std::nullopt;
  // After the name: field 3 (state) onwards, so field N is fields[N - 3].
  const std::vector<absl::string_view> fields =
      absl::StrSplit(text.substr(close + 1), ' ', absl::SkipEmpty());
  if (fields.size() < 22) return std::nullopt;
  ProcStat s;
  const bool ok = absl::SimpleAtod(fields[11], &s.utime_ticks) &&
                  absl::SimpleAtod(fields[12], &s.stime_ticks) &&
                  absl::SimpleAtod(fields[19], &s.start_ticks) &&
                  absl::SimpleAtod(fields[20], &s.vsize_bytes) &&
                  absl::SimpleAtod(fields[21], &s.rss_pages);
  if (!ok) return std::nullopt;
  return s;
}

ProcessMetrics::ProcessMetrics() {
  const std::optional<std::string> text = ReadFile("/proc/self/stat");
  const std::optional<ProcStat> stat = text ? ParseProcStat(*text) : std::nullopt;
  if (stat) {
    start_time_seconds_ =
        BootTimeSeconds() + stat->start_ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
  }
}

std::vector<prometheus::MetricFamily> ProcessMetrics::Collect() const {
  using prometheus::MetricType;
  std::vector<prometheus::MetricFamily> out;
  const std::optional<std::string> text = ReadFile("/proc/self/stat");
  const std::optional<ProcStat> stat = text ? ParseProcStat(*text) : std::nullopt;
  // Without /proc (not Linux) there is nothing true to report.
  if (!stat) return out;
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  out.push_back(One("process_cpu_seconds_total", "User and system CPU time spent in seconds.",
                    MetricType::Counter, (stat->utime_ticks + stat->stime_ticks) / ticks));
  out.push_back(One("process_resident_memory_bytes", "Resident memory size in bytes.",
                    MetricType::Gauge, stat->rss_pages * page));
  out.push_back(One("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                    MetricType::Gauge, stat->vsize_bytes));
  out.push_back(
      One("process_open_fds", "Number of open file descriptors.", MetricType::Gauge, OpenFds()));
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) {
    out.push_back(One("process_max_fds", "Maximum number of open file descriptors.",
                      MetricType::Gauge, static_cast<double>(limit.rlim_cur)));
  }
  out.push_back(One("process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.", MetricType::Gauge,
                    start_time_seconds_));
  return out;
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& host, int port, std::shared_ptr<prometheus::Registry> registry) {
  // civetweb takes "host:port"; an IPv6 literal would need brackets.
  const std::string bind = absl::StrCat(host, ":", port);
  std::unique_ptr<prometheus::Exposer> exposer;
  try {
    // One thread: a scrape is a few kilobytes every few seconds.
    exposer = std::make_unique<prometheus::Exposer>(bind, 1);
  } catch (const std::exception& e) {
    // civetweb reports a bind failure by throwing; the daemons speak Status.
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", bind, ": ", e.what()));
  }
  exposer->RegisterCollectable(registry);
  auto process = std::make_shared<ProcessMetrics>();
  exposer->RegisterCollectable(process);
  const std::vector<int> ports = exposer->GetListeningPorts();
  if (ports.empty())
    return absl::InternalError(absl::StrCat("metrics server on ", bind, " has no port"));
  const int bound = ports.front();
  return std::unique_ptr<MetricsServer>(
      new MetricsServer(std::move(exposer), std::move(registry), std::move(process), bound));
}

}  // namespace ringattn::server
