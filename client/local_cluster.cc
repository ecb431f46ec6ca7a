#include "client/local_cluster.h"

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client/attention_client.h"

extern char** environ;

namespace ringattn::client {
namespace {

absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = -1;
  if (const int err = posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ);
      err != 0) {
    return absl::UnavailableError(absl::StrCat("cannot start ", args[0], ": ", strerror(err)));
  }
  return pid;
}

std::string SelfDir() {
  return std::filesystem::read_symlink("/proc/self/exe").parent_path().string();
}

// Exit status of pid, waiting at most `timeout`; -1 if still running.
int WaitExit(pid_t pid, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    if (absl::Now() > deadline) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// Reads the number a daemon wrote to `path` once serving; 0 while absent.
int ReadPortFile(const std::string& path) {
  int port = 0;
  std::ifstream in(path);
  if (!(in >> port)) port = 0;
  return port;
}

// The TLS and token flags of one daemon.
std::vector<std::string> SecurityFlags(const LocalClusterOptions& o, bool coordinator) {
  std::vector<std::string> flags;
  auto add = [&](const char* name, const std::string& value) {
    if (!value.empty()) flags.push_back(absl::StrCat("--", name, "=", value));
  };
  add("tls_cert_file", o.tls_cert_file);
  add("tls_key_file", o.tls_key_file);
  add("tls_ca_file", o.tls_ca_file);
  if (!o.tls_require_client_cert) flags.push_back("--tls_require_client_cert=false");
  add("cluster_token_file", o.cluster_token_file);
  if (coordinator) add("auth_token_file", o.auth_token_file);
  return flags;
}

}  // namespace

absl::Status LocalCluster::StartCoordinator(int port) {
  const std::string port_file = dir_ + "/port";
  const std::string metrics_file = dir_ + "/coordinator.metrics";
  std::filesystem::remove(port_file);
  std::filesystem::remove(metrics_file);
  std::vector<std::string> args = {
      bin_ + "/ringattn-coordinator",
      absl::StrCat("--port=", port),
      "--port_file=" + port_file,
      "--metrics_port=0",
      "--metrics_port_file=" + metrics_file,
      "--cp=" + std::to_string(options_.cp),
      absl::StrCat("--ring_timeout_seconds=", options_.ring_timeout_seconds)};
  for (std::string& flag : SecurityFlags(options_, true)) args.push_back(std::move(flag));
  args.insert(args.end(), options_.coordinator_flags.begin(), options_.coordinator_flags.end());
  absl::StatusOr<pid_t> coordinator = Spawn(args);
  if (!coordinator.ok()) return coordinator.status();
  coordinator_ = *coordinator;
  const absl::Time deadline = absl::Now() + options_.start_timeout;
  int bound = 0, metrics = 0;
  while ((bound = ReadPortFile(port_file)) == 0 || (metrics = ReadPortFile(metrics_file)) == 0) {
    if (WaitExit(coordinator_, absl::ZeroDuration()) >= 0) {
      coordinator_ = -1;
      return absl::UnavailableError("the coordinator exited while starting");
    }
    if (absl::Now() > deadline) return absl::DeadlineExceededError("coordinator did not start");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  address_ = absl::StrCat("127.0.0.1:", bound);
  coordinator_metrics_ = absl::StrCat("127.0.0.1:", metrics);
  return absl::OkStatus();
}

absl::Status LocalCluster::StartWorker(int rank) {
  if (rank < 0 || rank >= options_.cp) return absl::InvalidArgumentError("no such rank");
  if (workers_[rank] > 0) return absl::FailedPreconditionError("that worker is running");
  const std::string metrics_file = absl::StrCat(dir_, "/worker", rank, ".metrics");
  std::filesystem::remove(metrics_file);
  std::vector<std::string> args = {bin_ + "/ringattn-worker",
                                   "--coordinator=" + address_,
                                   "--port=0",
                                   absl::StrCat("--rank=", rank),
                                   "--metrics_port=0",
                                   "--metrics_port_file=" + metrics_file,
                                   "--threads=" + std::to_string(options_.worker_threads)};
  for (std::string& flag : SecurityFlags(options_, false)) args.push_back(std::move(flag));
  args.insert(args.end(), options_.worker_flags.begin(), options_.worker_flags.end());
  if (auto it = options_.rank_worker_flags.find(rank); it != options_.rank_worker_flags.end()) {
    args.insert(args.end(), it->second.begin(), it->second.end());
  }
  absl::StatusOr<pid_t> w = Spawn(args);
  if (!w.ok()) return w.status();
  workers_[rank] = *w;
  return absl::OkStatus();
}

absl::Status LocalCluster::KillWorker(int rank) {
  if (rank < 0 || rank >= options_.cp || workers_[rank] <= 0) {
    return absl::FailedPreconditionError("that worker is not running");
  }
  kill(workers_[rank], SIGKILL);
  WaitExit(workers_[rank], absl::Seconds(10));  // Reap it.
  workers_[rank] = -1;
  return absl::OkStatus();
}

absl::Status LocalCluster::RestartCoordinator() {
  const int port = std::stoi(address_.substr(address_.rfind(':') + 1));
  if (coordinator_ > 0) {
    kill(coordinator_, SIGKILL);
    WaitExit(coordinator_, absl::Seconds(10));
    coordinator_ = -1;
  }
  if (absl::Status s = StartCoordinator(port); !s.ok()) return s;
  return WaitReady();
}

absl::Status LocalCluster::WaitReady() {
  const absl::Time deadline = absl::Now() + options_.start_timeout;
  absl::StatusOr<std::unique_ptr<AttentionClient>> connected =
      AttentionClient::Connect(address_, client_security_);
  if (!connected.ok()) return connected.status();
  std::unique_ptr<AttentionClient> client = *std::move(connected);
  while (true) {
    absl::StatusOr<attention::v1::ClusterStatusResponse> s = client->Status();
    if (s.ok() && s->ring_ready()) return absl::OkStatus();
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "the ring did not come up within ", absl::FormatDuration(options_.start_timeout)));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

std::vector<std::string> LocalCluster::worker_metrics_addresses() const {
  std::vector<std::string> out;
  for (int r = 0; r < options_.cp; ++r) {
    const int port = ReadPortFile(absl::StrCat(dir_, "/worker", r, ".metrics"));
    out.push_back(port == 0 ? "" : absl::StrCat("127.0.0.1:", port));
  }
  return out;
}

absl::StatusOr<std::unique_ptr<LocalCluster>> LocalCluster::Start(
    const LocalClusterOptions& options) {
  std::unique_ptr<LocalCluster> c(new LocalCluster());
  c->options_ = options;
  c->bin_ = options.bin_dir.empty() ? SelfDir() : options.bin_dir;
  c->client_security_.tls = !options.tls_cert_file.empty();
  c->client_security_.ca_file = options.tls_ca_file;
  c->client_security_.cert_file = options.tls_cert_file;
  c->client_security_.key_file = options.tls_key_file;
  if (!options.auth_token_file.empty()) {
    absl::StatusOr<std::string> token = wire::ReadFirstToken(options.auth_token_file);
    if (!token.ok()) return token.status();
    c->client_security_.token = *std::move(token);
  }
  char tmpl[] = "/tmp/ringattn_cluster_XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return absl::InternalError("cannot make a temp dir");
  c->dir_ = tmpl;
  if (absl::Status s = c->StartCoordinator(0); !s.ok()) return s;
  c->workers_.assign(options.cp, -1);
  for (int r = 0; r < options.cp; ++r) {
    if (absl::Status s = c->StartWorker(r); !s.ok()) return s;
  }
  if (absl::Status s = c->WaitReady(); !s.ok()) return s;
  return c;
}

absl::Status LocalCluster::Stop() {
  absl::Status result;
  std::vector<pid_t> all = workers_;
  if (coordinator_ > 0) all.push_back(coordinator_);
  for (pid_t pid : all) {
    if (pid > 0) kill(pid, SIGTERM);
  }
  for (pid_t pid : all) {
    if (pid <= 0) continue;
    int code = WaitExit(pid, absl::Seconds(40));
    if (code < 0) {
      kill(pid, SIGKILL);
      WaitExit(pid, absl::Seconds(10));  // Reap it.
      result = absl::DeadlineExceededError(absl::StrCat("process ", pid, " did not stop"));
    } else if (code != 0 && result.ok()) {
      result = absl::InternalError(absl::StrCat("process ", pid, " exited with ", code));
    }
  }
  workers_.clear();
  coordinator_ = -1;
  if (!dir_.empty()) std::filesystem::remove_all(dir_);
  dir_.clear();
  return result;
}

LocalCluster::~LocalCluster() { (void)Stop(); }

}  // namespace ringattn::client
