// A worker daemon: one per GPU, or per CPU process. Registers with the
// coordinator, joins the ring when told, and runs ring attention on its
// shard.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "kernels/backends.h"
#include "kernels/chunk_backend.h"
#include "server/common/flag_help.h"
#include "server/common/malloc_tuning.h"
#include "server/common/metrics_server.h"
#include "server/common/request_metrics.h"
#include "server/common/security_flags.h"
#include "server/common/serve.h"
#include "server/shm/shm_file.h"
#include "server/worker/backend_selection.h"
#include "server/worker/registration.h"
#include "server/worker/worker_metrics.h"
#include "server/worker/worker_service.h"
#if RINGATTN_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif
#if RINGATTN_HAVE_NCCL
#include "server/ring/transports/nccl_transport.h"
#endif

ABSL_FLAG(std::string, coordinator, "127.0.0.1:50051", "Coordinator address (host:port).");
ABSL_FLAG(std::string, host, "127.0.0.1", "Address to listen on.");
ABSL_FLAG(std::string, advertise_host, "",
          "Host name the coordinator and the ring's peers reach this worker by (its pod's DNS "
          "name, say); empty: --host.");
ABSL_FLAG(int, rank, -1,
          "The rank this worker must hold (a StatefulSet pod's ordinal); -1: any free one.");
ABSL_FLAG(int, port, 0, "gRPC port; 0 picks a free one.");
ABSL_FLAG(int, threads, 0, "CPU kernel threads; 0 = one per core.");
ABSL_FLAG(std::string, device, "auto",
          "Compute backend: auto (the first visible GPU, else the CPU), cpu, cuda or cuda:N "
          "(N counts the GPUs CUDA_VISIBLE_DEVICES leaves visible).");
ABSL_FLAG(std::string, transport, "auto",
          "Ring transport: auto (NCCL with a CUDA backend; else shared memory when every rank "
          "is on this host, Gloo TCP when not), gloo, shm (shared memory or fail) or nccl.");
ABSL_FLAG(int64_t, max_call_bytes, int64_t{4} << 30, "Largest total tensor bytes of one call.");
ABSL_FLAG(double, register_timeout_seconds, 60, "Give up registering after this long.");
ABSL_FLAG(double, heartbeat_seconds, 1,
          "Re-register this often, so a restarted coordinator learns its workers again.");
ABSL_FLAG(int, metrics_port, 9465,
          "Prometheus /metrics port (on --host); 0 picks a free one, -1 turns it off.");
ABSL_FLAG(std::string, metrics_port_file, "", "Write the bound metrics port to this file.");
ABSL_FLAG(double, ring_stall_timeout_seconds, 15,
          "Fail a ring call whose wait on a peer makes no progress this long; 0: only the "
          "coordinator's --ring_timeout_seconds bounds it.");
ABSL_FLAG(bool, shm_regions, true,
          "Read and write clients' shared-memory regions when this worker shares /dev/shm with "
          "the coordinator (same host); false: their tensors are streamed to it.");

namespace {

constexpr char kUsage[] =
    "ringattn-worker: holds one rank's shard and runs ring attention forward and backward\n"
    "(CPU or CUDA backend, Gloo or NCCL ring).\n"
    "\n"
    "usage: ringattn-worker --coordinator=HOST:PORT [--rank=R] [flags]";

// What --help lists: every flag of this file and of server/common's
// security flags, and nothing linked in from libraries.
const std::vector<ringattn::server::FlagGroup>& FlagGroups() {
  static const auto* groups = new std::vector<ringattn::server::FlagGroup>{
      {"Ring",
       {"coordinator", "rank", "register_timeout_seconds", "heartbeat_seconds",
        "ring_stall_timeout_seconds"}},
      {"Serving", {"host", "port", "advertise_host", "max_call_bytes", "shm_regions"}},
      {"Compute", {"device", "transport", "threads"}},
      {"Metrics", {"metrics_port", "metrics_port_file"}},
      {"Security",
       {"tls_cert_file", "tls_key_file", "tls_ca_file", "tls_require_client_cert",
        "cluster_token_file"}},
  };
  return *groups;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  if (ringattn::server::HelpRequested(argc, argv)) {
    std::fputs(ringattn::server::FlagHelp(kUsage, FlagGroups()).c_str(), stdout);
    return 0;
  }
  absl::ParseCommandLine(argc, argv);
  using namespace ringattn;  // NOLINT(google-build-using-namespace)
  server::BlockShutdownSignals();
  server::TuneMallocForLargeBuffers();
  absl::StatusOr<server::DaemonSecurity> security =
      server::LoadDaemonSecurity(server::SecurityOptionsFromFlags());
  if (!security.ok()) {
    std::fprintf(stderr, "error: %s\n", security.status().ToString().c_str());
    return 2;
  }
  {
    const std::string coordinator = absl::GetFlag(FLAGS_coordinator);
    int coordinator_port = 0;
    if (!absl::SimpleAtoi(coordinator.substr(coordinator.rfind(':') + 1), &coordinator_port)) {
      std::fprintf(stderr, "error: --coordinator must be host:port, got '%s'\n",
                   coordinator.c_str());
      return 2;
    }
    const absl::Duration wait =
        std::min(absl::Seconds(absl::GetFlag(FLAGS_register_timeout_seconds)), absl::Seconds(10));
    if (absl::Status s =
            server::ResolveClusterSecret(*security, /*coordinator=*/false, coordinator_port, wait);
        !s.ok()) {
      std::fprintf(stderr, "error: cluster secret: %s\n", s.ToString().c_str());
      return 1;
    }
  }
  // Backend and transport: the flags against this machine and build.
  const absl::StatusOr<worker::DeviceFlag> device_flag =
      worker::ParseDeviceFlag(absl::GetFlag(FLAGS_device));
  const absl::StatusOr<worker::TransportFlag> transport_flag =
      worker::ParseTransportFlag(absl::GetFlag(FLAGS_transport));
  if (!device_flag.ok() || !transport_flag.ok()) {
    const absl::Status& s = device_flag.ok() ? transport_flag.status() : device_flag.status();
    std::fprintf(stderr, "error: %s\n", s.ToString().c_str());
    return 2;
  }
  worker::Capabilities caps;
  if (const char* visible = std::getenv("CUDA_VISIBLE_DEVICES"))
    caps.cuda_visible_devices = visible;
#if RINGATTN_HAVE_CUDA
  caps.cuda_built = true;
  caps.cuda_devices = kernels::cuda::CudaDeviceCount();
#endif
#if RINGATTN_HAVE_NCCL
  caps.nccl_built = true;
  if (!caps.cuda_built) caps.cuda_devices = ring::NcclDeviceCount();
#endif
  absl::StatusOr<worker::Selection> selection =
      worker::SelectBackend(*device_flag, *transport_flag, caps);
  if (!selection.ok()) {
    std::fprintf(stderr, "error: %s\n", selection.status().ToString().c_str());
    return 2;
  }
  std::unique_ptr<kernels::ChunkBackend> backend;
  int cpu_threads = 0;  // Of the CPU backend; 0 with another one.
#if RINGATTN_HAVE_CUDA
  if (selection->backend == worker::BackendKind::kCuda) {
    auto cuda = kernels::cuda::CudaBackend::Create(selection->device);
    if (cuda.ok()) {
      backend = *std::move(cuda);
    } else if (device_flag->kind == worker::DeviceFlag::Kind::kAuto) {
      // Present but unusable (no memory, wrong architecture): auto falls back.
      caps.cuda_unusable = absl::StrCat("CUDA device ", selection->device,
                                        " is not usable: ", cuda.status().message());
      selection = worker::SelectBackend(*device_flag, *transport_flag, caps);
      if (!selection.ok()) {
        std::fprintf(stderr, "error: %s\n", selection.status().ToString().c_str());
        return 2;
      }
    } else {
      std::fprintf(stderr, "error: %s\n", cuda.status().ToString().c_str());
      return 1;
    }
  }
#endif
  if (!backend) {
    const int threads = absl::GetFlag(FLAGS_threads);
    auto cpu = kernels::MakeCpuBackend(threads);
    if (!cpu.ok()) {
      std::fprintf(stderr, "error: %s\n", cpu.status().ToString().c_str());
      return 1;
    }
    backend = *std::move(cpu);
    // The pool's size when the flag leaves it to the machine.
    cpu_threads =
        threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  }
  worker::TransportFactory connect = worker::GlooTransportFactory();
  if (selection->transport == worker::TransportKind::kShm) {
    connect = worker::SharedMemoryTransportFactory(
        /*fall_back_to_gloo=*/transport_flag->kind != worker::TransportFlag::Kind::kShm);
  }
#if RINGATTN_HAVE_NCCL
  if (selection->transport == worker::TransportKind::kNccl) {
    connect = [device = selection->device](ring::Store& store, const worker::RingJoin& join) {
      ring::NcclOptions options;
      options.rank = join.rank;
      options.size = join.size;
      options.device = device;
      options.generation = join.generation;
      return ring::ConnectNccl(store, options);
    };
  }
#endif
  // One line that says what runs, and why when auto fell back to the CPU.
  std::fprintf(stderr, "worker: %sbackend %s, ring transport %s: %s\n",
               selection->fell_back ? "warning: " : "", backend->name().c_str(),
               worker::TransportLabel(*selection).c_str(), selection->reason.c_str());
  auto registry = std::make_shared<prometheus::Registry>();
  worker::WorkerMetrics metrics(*registry, worker::BackendLabel(*selection));
  const std::string host = absl::GetFlag(FLAGS_host);
  std::unique_ptr<server::MetricsServer> metrics_server;
  if (absl::GetFlag(FLAGS_metrics_port) >= 0) {
    auto m = server::MetricsServer::Start(host, absl::GetFlag(FLAGS_metrics_port), registry);
    if (!m.ok()) {
      std::fprintf(stderr, "error: %s\n", m.status().ToString().c_str());
      return 1;
    }
    metrics_server = *std::move(m);
    server::WritePortFile(absl::GetFlag(FLAGS_metrics_port_file), metrics_server->port());
  }
  worker::WorkerServiceImpl service(
      *backend, static_cast<uint64_t>(absl::GetFlag(FLAGS_max_call_bytes)), metrics, security->peer,
      std::move(connect), absl::Seconds(absl::GetFlag(FLAGS_ring_stall_timeout_seconds)),
      absl::GetFlag(FLAGS_shm_regions));
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(server::RequestCounter(metrics.service));
  auto started = server::StartServer(host, absl::GetFlag(FLAGS_port), {&service},
                                     std::move(interceptors), security->server);
  if (!started.ok()) {
    std::fprintf(stderr, "error: %s\n", started.status().ToString().c_str());
    return 1;
  }
  const std::string advertise =
      absl::GetFlag(FLAGS_advertise_host).empty() ? host : absl::GetFlag(FLAGS_advertise_host);
  const std::string address = absl::StrCat(advertise, ":", started->port);
  const std::string threads = cpu_threads > 0 ? absl::StrCat(", ", cpu_threads, " threads") : "";
  std::fprintf(stderr, "worker: serving on %s (backend %s%s, ring over %s), metrics on port %d\n",
               address.c_str(), backend->name().c_str(), threads.c_str(),
               worker::TransportLabel(*selection).c_str(),
               metrics_server ? metrics_server->port() : -1);

  worker::RegistrationOptions reg;
  reg.coordinator = absl::GetFlag(FLAGS_coordinator);
  reg.address = address;
  if (absl::GetFlag(FLAGS_rank) >= 0) reg.rank = absl::GetFlag(FLAGS_rank);
  reg.first_timeout = absl::Seconds(absl::GetFlag(FLAGS_register_timeout_seconds));
  reg.heartbeat = absl::Seconds(absl::GetFlag(FLAGS_heartbeat_seconds));
  reg.credentials = security->peer_credentials;
  reg.cluster_secret = security->peer.cluster_secret;
  if (absl::GetFlag(FLAGS_shm_regions)) reg.shm_host_id = shm::ShmHostId();
  auto registration = worker::Registration::Start(reg);
  if (!registration.ok()) {
    std::fprintf(stderr, "error: %s\n", registration.status().ToString().c_str());
    return 1;
  }
  const int sig = server::WaitForShutdownSignal();
  std::fprintf(stderr, "worker: signal %d, draining\n", sig);
  registration->reset();  // No heartbeats while draining.
  started->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(30));
  return 0;
}
