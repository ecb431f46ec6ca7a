// The worker binary's --device / --transport handling, seen from outside:
// bad or unsatisfiable requests stop it at start with a message naming the
// flag; auto says in one line what it runs.
#include <sys/wait.h>

#include <cstdio>
#include <string>

#include "gtest/gtest.h"

namespace ringattn::worker {
namespace {

struct WorkerRun {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

// Runs the worker against a coordinator that is not there, so it stops
// right after start-up (registration fails within a second).
WorkerRun RunWorker(const std::string& flags) {
  const std::string cmd = std::string(RINGATTN_BIN_DIR) +
                          "/ringattn-worker --coordinator=127.0.0.1:1 "
                          "--register_timeout_seconds=1 --metrics_port=-1 " +
                          flags + " 2>&1";
  WorkerRun run;
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return run;
  char buf[512];
  while (fgets(buf, sizeof(buf), pipe) != nullptr) run.output += buf;
  const int status = pclose(pipe);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

TEST(WorkerMainTest, BadDeviceOrTransportFlagStopsTheWorkerAtStart) {
  for (const char* flags : {"--device=gpu", "--device=cuda:x", "--transport=mpi"}) {
    const WorkerRun r = RunWorker(flags);
    EXPECT_EQ(r.exit_code, 2) << flags << ": " << r.output;
    EXPECT_NE(r.output.find("INVALID_ARGUMENT"), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("serving on"), std::string::npos) << r.output;
  }
}

// No machine has 100 visible GPUs: an explicit request that cannot be met
// is refused, never quietly served on the CPU.
TEST(WorkerMainTest, UnsatisfiableCudaRequestStopsTheWorkerAtStart) {
  const WorkerRun r = RunWorker("--device=cuda:99");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("FAILED_PRECONDITION"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--device=cuda:99"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("serving on"), std::string::npos) << r.output;
}

TEST(WorkerMainTest, AutoSaysWhatItRunsInOneLine) {
  const WorkerRun r = RunWorker("--device=auto --transport=auto");
  const size_t line = r.output.find("worker: ");
  ASSERT_NE(line, std::string::npos) << r.output;
  EXPECT_NE(r.output.find("ring transport "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("serving on"), std::string::npos) << r.output;
  // Either a GPU with NCCL, or the CPU with a host transport (shared memory,
  // Gloo when the ranks do not share it) and a warning naming why.
  const bool cpu = r.output.find("backend cpu/") != std::string::npos;
  if (cpu) {
    EXPECT_NE(r.output.find("worker: warning: backend cpu/"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("ring transport shm"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("because"), std::string::npos) << r.output;
  } else {
    EXPECT_NE(r.output.find("backend cuda:0"), std::string::npos) << r.output;
  }
}

TEST(WorkerMainTest, ExplicitCpuRunsAHostTransportWithoutAWarning) {
  const WorkerRun r = RunWorker("--device=cpu");
  EXPECT_NE(r.output.find("worker: backend cpu/"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("ring transport shm"), std::string::npos) << r.output;
  EXPECT_NE(RunWorker("--device=cpu --transport=gloo").output.find("ring transport gloo"),
            std::string::npos);
  // (A warning that it found no cluster secret for its absent coordinator is due.)
  EXPECT_EQ(r.output.find("warning: backend"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace ringattn::worker
