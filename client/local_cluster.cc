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

}  // namespace

absl::StatusOr<std::unique_ptr<LocalCluster>> LocalCluster::Start(
    const LocalClusterOptions& options) {
  std::unique_ptr<LocalCluster> c(new LocalCluster());
  const std::string bin = options.bin_dir.empty() ? SelfDir() : options.bin_dir;
  char tmpl[] = "/tmp/ringattn_cluster_XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return absl::InternalError("cannot make a temp dir");
  c->dir_ = tmpl;
  const absl::Time deadline = absl::Now() + options.start_timeout;

  std::vector<std::string> args = {
      bin + "/ringattn-coordinator", "--port=0", "--port_file=" + c->dir_ + "/port",
      "--cp=" + std::to_string(options.cp),
      absl::StrCat("--ring_timeout_seconds=", options.ring_timeout_seconds)};
  args.insert(args.end(), options.coordinator_flags.begin(), options.coordinator_flags.end());
  absl::StatusOr<pid_t> coordinator = Spawn(args);
  if (!coordinator.ok()) return coordinator.status();
  c->coordinator_ = *coordinator;
  int port = 0;
  while (port == 0) {
    std::ifstream in(c->dir_ + "/port");
    if (!(in >> port)) port = 0;
    if (port == 0) {
      if (WaitExit(c->coordinator_, absl::ZeroDuration()) >= 0) {
        c->coordinator_ = -1;
        return absl::UnavailableError("the coordinator exited while starting");
      }
      if (absl::Now() > deadline) return absl::DeadlineExceededError("coordinator did not start");
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  c->address_ = absl::StrCat("127.0.0.1:", port);
  for (int r = 0; r < options.cp; ++r) {
    absl::StatusOr<pid_t> w =
        Spawn({bin + "/ringattn-worker", "--coordinator=" + c->address_, "--port=0",
               "--threads=" + std::to_string(options.worker_threads)});
    if (!w.ok()) return w.status();
    c->workers_.push_back(*w);
  }
  std::unique_ptr<AttentionClient> client = AttentionClient::Connect(c->address_);
  while (true) {
    absl::StatusOr<attention::v1::ClusterStatusResponse> s = client->Status();
    if (s.ok() && s->ring_ready()) break;
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat("the ring did not come up within ",
                                                      absl::FormatDuration(options.start_timeout)));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
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
