// A worker daemon: one per GPU, or per CPU process. Registers with the
// coordinator, joins the ring when told, and runs ring attention on its
// shard.

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "kernels/cpu/cpu_context.h"
#include "server/common/malloc_tuning.h"
#include "server/common/serve.h"
#include "server/worker/worker_service.h"

ABSL_FLAG(std::string, coordinator, "127.0.0.1:50051", "Coordinator address (host:port).");
ABSL_FLAG(std::string, host, "127.0.0.1", "Address to listen on and to advertise.");
ABSL_FLAG(int, port, 0, "gRPC port; 0 picks a free one.");
ABSL_FLAG(int, threads, 0, "Kernel threads; 0 = one per core.");
ABSL_FLAG(int64_t, max_call_bytes, int64_t{4} << 30, "Largest total tensor bytes of one call.");
ABSL_FLAG(double, register_timeout_seconds, 60, "Give up registering after this long.");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "ringattn worker: holds one rank's shard and runs ring attention forward and backward "
      "(CPU backend).");
  absl::ParseCommandLine(argc, argv);
  using namespace ringattn;  // NOLINT(google-build-using-namespace)
  server::BlockShutdownSignals();
  server::TuneMallocForLargeBuffers();
  auto ctx = kernels::cpu::CpuContext::Create({absl::GetFlag(FLAGS_threads), std::nullopt});
  if (!ctx.ok()) {
    std::fprintf(stderr, "error: %s\n", ctx.status().ToString().c_str());
    return 1;
  }
  server::WorkerServiceImpl service(**ctx,
                                    static_cast<uint64_t>(absl::GetFlag(FLAGS_max_call_bytes)));
  const std::string host = absl::GetFlag(FLAGS_host);
  auto started = server::StartServer(host, absl::GetFlag(FLAGS_port), {&service});
  if (!started.ok()) {
    std::fprintf(stderr, "error: %s\n", started.status().ToString().c_str());
    return 1;
  }
  const std::string address = absl::StrCat(host, ":", started->port);
  std::fprintf(stderr, "worker: serving on %s (CPU backend, %s, %d threads)\n", address.c_str(),
               std::string(kernels::cpu::IsaName((*ctx)->isa())).c_str(),
               (*ctx)->pool().num_threads());

  auto stub = worker::v1::CoordinatorControl::NewStub(
      grpc::CreateChannel(absl::GetFlag(FLAGS_coordinator), grpc::InsecureChannelCredentials()));
  const auto give_up = std::chrono::steady_clock::now() +
                       std::chrono::duration<double>(absl::GetFlag(FLAGS_register_timeout_seconds));
  while (true) {
    grpc::ClientContext rctx;
    rctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    worker::v1::RegisterRequest req;
    req.set_address(address);
    worker::v1::RegisterResponse resp;
    const grpc::Status s = stub->Register(&rctx, req, &resp);
    if (s.ok()) {
      std::fprintf(stderr, "worker: registered with %s (ring of %d)\n",
                   absl::GetFlag(FLAGS_coordinator).c_str(), resp.cp());
      break;
    }
    if (std::chrono::steady_clock::now() > give_up) {
      std::fprintf(stderr, "error: cannot register with %s: %s\n",
                   absl::GetFlag(FLAGS_coordinator).c_str(), s.error_message().c_str());
      return 1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  const int sig = server::WaitForShutdownSignal();
  std::fprintf(stderr, "worker: signal %d, draining\n", sig);
  started->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(30));
  return 0;
}
