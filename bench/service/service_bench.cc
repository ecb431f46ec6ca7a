// Service benchmark, in one run:
//  1. raw gRPC loopback streaming: a sink/echo AttentionService in this
//     process, 2 MiB TensorChunk messages up and back (the baseline);
//  2. bytes/s through the real service (coordinator + 2 workers): a forward
//     with little compute and a lot of data (sliding W=16), bytes in + out
//     over the call's wall time, against the baseline;
//  3. the same forwards with every tensor in a shared-memory region (no
//     tensor byte on gRPC), against raw gRPC, against memcpy of the same
//     bytes in this process, and their CPU per byte against the streamed;
//  4. forward + backward step time through the service against the same
//     ring run in-process (threads over the in-process transport): the
//     service's overhead.
// Ends with `figure: <name> <value>` lines.
//
//   build/release/bench/ringattn_service_bench

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "attention/v1/attention_service.grpc.pb.h"
#include "client/attention_client.h"
#include "client/local_cluster.h"
#include "client/region_staging.h"
#include "client/synthetic_inputs.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "kernels/backends.h"
#include "kernels/reference/synthetic_batch.h"
#include "server/ring/ring_attention.h"
#include "server/ring/transports/in_process_transport.h"

ABSL_FLAG(int64_t, stream_mib, 512, "MiB each way for the raw streaming baseline.");
ABSL_FLAG(int, repeat, 3, "Repetitions of each measurement (best kept).");
ABSL_FLAG(bool, window_forward, true,
          "Measure the end-to-end forward (sliding W=16); false: the data plane only.");
ABSL_FLAG(std::string, worker_transport, "auto",
          "The workers' --transport: auto (shared memory between these co-located workers), "
          "shm or gloo (TCP loopback), to compare ring transports run against run.");
ABSL_FLAG(bool, step, true, "Also measure forward+backward step time against the in-process ring.");

namespace ringattn::bench {
namespace {

using Clock = std::chrono::steady_clock;
using attention::v1::ForwardRequest;
using attention::v1::ForwardResponse;

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// CPU seconds (user + system) this process has used.
double SelfCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

// CPU seconds (user + system) process `pid` has used, from /proc.
double ProcessCpuSeconds(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(stat, line);
  // Fields after the command name, which is in parentheses and may hold spaces.
  std::istringstream rest(line.substr(line.rfind(')') + 2));
  std::string field;
  double ticks = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14 || i == 15) ticks += std::stod(field);  // utime, stime
  }
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// CPU seconds used so far by this process and every daemon of the cluster.
double ClusterCpuSeconds(const client::LocalCluster& cluster) {
  double s = SelfCpuSeconds() + ProcessCpuSeconds(cluster.coordinator_pid());
  for (pid_t w : cluster.worker_pids()) s += ProcessCpuSeconds(w);
  return s;
}

// Reads every piece and streams the same number of bytes back.
class EchoService final : public attention::v1::AttentionService::Service {
  grpc::Status Forward(grpc::ServerContext*,
                       grpc::ServerReaderWriter<ForwardResponse, ForwardRequest>* stream) override {
    ForwardRequest req;
    uint64_t bytes = 0;
    attention::v1::TensorChunk last;
    while (stream->Read(&req)) {
      if (req.has_chunk()) {
        bytes += req.chunk().data().size();
        last = req.chunk();
      }
    }
    ForwardResponse resp;
    *resp.mutable_chunk() = last;
    for (uint64_t sent = 0; sent < bytes; sent += last.data().size()) stream->Write(resp);
    return grpc::Status::OK;
  }
};

struct Throughput {
  double bytes_per_second = 0.0;
  double cpu_seconds_per_byte = 0.0;  // Of the best run, every process counted.
};

Throughput RawStream(int64_t mib, int repeat) {
  EchoService service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(8 << 20);
  builder.SetMaxSendMessageSize(8 << 20);
  builder.RegisterService(&service);
  auto server = builder.BuildAndStart();
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(8 << 20);
  args.SetMaxSendMessageSize(8 << 20);
  auto stub = attention::v1::AttentionService::NewStub(grpc::CreateCustomChannel(
      "127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials(), args));
  ForwardRequest req;
  req.mutable_chunk()->set_name("q");
  req.mutable_chunk()->set_data(std::string(2 << 20, 'x'));
  Throughput best;
  for (int r = 0; r < repeat; ++r) {
    grpc::ClientContext ctx;
    const Clock::time_point t0 = Clock::now();
    const double cpu0 = SelfCpuSeconds();
    auto stream = stub->Forward(&ctx);
    for (int64_t i = 0; i < mib / 2; ++i) stream->Write(req);
    stream->WritesDone();
    ForwardResponse resp;
    uint64_t got = 0;
    while (stream->Read(&resp)) got += resp.chunk().data().size();
    stream->Finish();
    const double bytes = static_cast<double>(mib) * 1048576.0 + static_cast<double>(got);
    const double bps = bytes / Since(t0);
    if (bps > best.bytes_per_second) best = {bps, (SelfCpuSeconds() - cpu0) / bytes};
  }
  server->Shutdown();
  return best;
}

struct Problem {
  kernels::reference::SyntheticBatch batch;
  std::unique_ptr<client::EncodedBatch> encoded;
  client::ForwardInputs in;
};

// One document over the whole sequence, or (all_padding) no document: every
// token is padding and the metadata says so.
std::unique_ptr<Problem> MakeProblem(kernels::reference::BatchShape shape, int64_t window,
                                     bool all_padding = false) {
  auto p = std::make_unique<Problem>();
  kernels::reference::RowLayout layout;
  if (!all_padding) layout.doc_lengths = {shape.seq_len};
  p->batch = kernels::reference::MakeSyntheticBatch(shape, {layout}, kernels::DType::kF32, 9);
  kernels::LayerConfig layer;
  layer.kind = window > 0 ? kernels::LayerKind::kSliding : kernels::LayerKind::kFull;
  layer.window = window > 0 ? window : 512;
  p->encoded = client::EncodeBatch(p->batch, layer, /*with_metadata=*/all_padding);
  p->in = p->encoded->in;
  p->in.layer.clear_scale();  // The service's default, 1/sqrt(D).
  return p;
}

// Best of `repeat` forwards of `p` (released after each): bytes in and out
// over the client's wall time, and the CPU of every process per byte.
// `staging`: the tensors lie in that region (staged once, before), and the
// forward names them all by reference.
absl::StatusOr<Throughput> MeasureForward(client::AttentionClient& c,
                                          const client::LocalCluster& cluster, const Problem& p,
                                          int repeat, client::RegionStaging* staging = nullptr) {
  Throughput best;
  for (int r = 0; r < repeat; ++r) {
    const double cpu0 = ClusterCpuSeconds(cluster);
    const Clock::time_point t0 = Clock::now();
    absl::StatusOr<client::ForwardOutputs> f = staging ? staging->Forward() : c.Forward(p.in);
    const double s = Since(t0);
    const double cpu = ClusterCpuSeconds(cluster) - cpu0;
    if (!f.ok()) return f.status();
    (void)c.Release(f->session.handle());
    std::printf("  forward %.3f s: coordinator %.3f s", s, f->metrics.seconds());
    for (const auto& rk : f->metrics.ranks()) {
      std::printf(", rank %d ring %.3f s (compute %.3f)", rk.rank(), rk.total_seconds(),
                  rk.compute_seconds());
    }
    const size_t out_bytes = staging ? staging->Bytes("out").size() : f->out.size();
    const size_t lse_bytes = staging ? staging->Bytes("lse").size() : f->lse.size() * sizeof(float);
    double bytes =
        static_cast<double>(p.in.q.size() + p.in.k.size() + p.in.v.size() + out_bytes + lse_bytes);
    if (p.in.padding_mask) bytes += static_cast<double>(p.in.padding_mask->size());
    if (p.in.doc_ids) bytes += static_cast<double>(p.in.doc_ids->size_bytes());
    if (p.in.vision_groups) bytes += static_cast<double>(p.in.vision_groups->size_bytes());
    std::printf("; CPU %.2f s (%.2f s/GiB)\n", cpu, cpu / bytes * 1073741824.0);
    if (bytes / s > best.bytes_per_second) best = {bytes / s, cpu / bytes};
  }
  return best;
}

// Best of `repeat` copies of `bytes` from one buffer to another (both
// touched first, so page faults are not timed): the host's memcpy
// bandwidth, counted as bytes moved.
double MemcpyBytesPerSecond(size_t bytes, int repeat) {
  std::vector<std::byte> from(bytes, std::byte{1}), to(bytes, std::byte{0});
  double best = 0;
  for (int r = 0; r < repeat; ++r) {
    const Clock::time_point t0 = Clock::now();
    std::memcpy(to.data(), from.data(), bytes);
    best = std::max(best, static_cast<double>(bytes) / Since(t0));
  }
  return best;
}

// Forwards of `p` with every tensor in a shared-memory region (staged once).
absl::StatusOr<Throughput> MeasureShmForward(client::AttentionClient& c,
                                             const client::LocalCluster& cluster, const Problem& p,
                                             int repeat) {
  absl::StatusOr<std::unique_ptr<client::RegionStaging>> staging =
      client::RegionStaging::Create(c, p.in, "bench");
  if (!staging.ok()) return staging.status();
  (*staging)->Stage(p.in, {});
  return MeasureForward(c, cluster, p, repeat, staging->get());
}

// The same forward + backward as a ring of `cp` threads in this process.
double InProcessRingSeconds(const Problem& p, int cp, int64_t window) {
  using kernels::reference::SliceSequence;
  const auto& sh = p.batch.shape;
  const int64_t L = sh.seq_len / cp;
  ring::InProcessHub hub(cp);
  ring::RingCall call;
  call.layer.kind = window > 0 ? kernels::LayerKind::kSliding : kernels::LayerKind::kFull;
  call.layer.window = window > 0 ? window : 512;
  call.layer.scale = 1.0f / std::sqrt(static_cast<float>(sh.head_dim));
  std::vector<std::thread> threads;
  const Clock::time_point t0 = Clock::now();
  for (int r = 0; r < cp; ++r) {
    threads.emplace_back([&, r] {
      auto cpu = kernels::MakeCpuBackend(1);
      kernels::ChunkBackend& backend = **cpu;
      auto t = hub.Connect(r);
      const int64_t b = r * L, e = b + L;
      const auto enc = [&](const std::vector<float>& x, int64_t heads) {
        return kernels::reference::Encode(
            SliceSequence(x, sh.batch * heads, sh.seq_len, sh.head_dim, b, e),
            kernels::DType::kF32);
      };
      const auto q = enc(p.batch.q, sh.heads), k = enc(p.batch.k, sh.kv_heads),
                 v = enc(p.batch.v, sh.kv_heads), dout = enc(p.batch.dout, sh.heads);
      const auto doc = SliceSequence(p.batch.doc, sh.batch, sh.seq_len, 1, b, e);
      const auto vision = SliceSequence(p.batch.vision, sh.batch, sh.seq_len, 1, b, e);
      const auto padding = SliceSequence(p.batch.padding, sh.batch, sh.seq_len, 1, b, e);
      ring::ShardRef shard{
          {kernels::DType::kF32, sh.batch, sh.heads, sh.kv_heads, L, L, sh.head_dim},
          std::as_bytes(std::span(q)),
          std::as_bytes(std::span(k)),
          std::as_bytes(std::span(v)),
          doc,
          vision,
          padding};
      auto f = ring::RingForward(*t, backend, shard, call);
      if (f.ok()) {
        (void)ring::RingBackward(*t, backend, shard, f->out, std::as_bytes(std::span(dout)), f->lse,
                                 call);
      }
    });
  }
  for (auto& t : threads) t.join();
  return Since(t0);
}

int Main() {
  const int repeat = std::max(1, absl::GetFlag(FLAGS_repeat));
  const Throughput raw_run = RawStream(absl::GetFlag(FLAGS_stream_mib), repeat);
  const double raw = raw_run.bytes_per_second;
  std::printf(
      "raw gRPC loopback streaming (2 MiB messages, up and back): %.0f MiB/s, %.2f CPU s/GiB\n",
      raw / 1048576.0, raw_run.cpu_seconds_per_byte * 1073741824.0);

  client::LocalClusterOptions options;
  options.cp = 2;
  options.worker_flags.push_back("--transport=" + absl::GetFlag(FLAGS_worker_transport));
  auto cluster = client::LocalCluster::Start(options);
  if (!cluster.ok()) {
    std::fprintf(stderr, "error: %s\n", cluster.status().ToString().c_str());
    return 1;
  }
  auto c = client::AttentionClient::Connect((*cluster)->address());

  // Data-heavy forwards: 3 x 128 MiB in, 128 MiB + LSE out. End to end: one
  // document under a sliding window of 16 (little compute). Data plane: the
  // same tensors with every token padding, so every tile is skipped and what
  // is left is moving the bytes (client -> coordinator -> workers, the
  // ring's K/V exchange, and back).
  const kernels::reference::BatchShape heavy_shape{1, 8, 8, 32768, 128};
  auto heavy = MakeProblem(heavy_shape, 16, /*all_padding=*/false);
  const bool window_forward = absl::GetFlag(FLAGS_window_forward);
  absl::StatusOr<Throughput> service = window_forward
                                           ? MeasureForward(*c, **cluster, *heavy, repeat)
                                           : absl::StatusOr<Throughput>(Throughput{1.0, 1.0});
  heavy = MakeProblem(heavy_shape, 16, /*all_padding=*/true);
  absl::StatusOr<Throughput> plane = MeasureForward(*c, **cluster, *heavy, repeat);
  heavy.reset();
  if (!service.ok() || !plane.ok()) {
    std::fprintf(stderr, "error: %s\n",
                 (service.ok() ? plane.status() : service.status()).ToString().c_str());
    return 1;
  }
  // The same forwards with every tensor in a shared-memory region on this
  // host: no tensor byte on gRPC; against the same bytes memcpy'd here.
  std::printf("shared-memory regions:\n");
  heavy = MakeProblem(heavy_shape, 16, /*all_padding=*/false);
  absl::StatusOr<Throughput> shm_service = window_forward
                                               ? MeasureShmForward(*c, **cluster, *heavy, repeat)
                                               : absl::StatusOr<Throughput>(Throughput{1.0, 1.0});
  heavy = MakeProblem(heavy_shape, 16, /*all_padding=*/true);
  absl::StatusOr<Throughput> shm_plane = MeasureShmForward(*c, **cluster, *heavy, repeat);
  const size_t plane_bytes = heavy->in.q.size() * 2 + heavy->in.k.size() + heavy->in.v.size();
  heavy.reset();
  if (!shm_service.ok() || !shm_plane.ok()) {
    std::fprintf(stderr, "error: %s\n",
                 (shm_service.ok() ? shm_plane.status() : shm_service.status()).ToString().c_str());
    return 1;
  }
  const double memcpy_bps = MemcpyBytesPerSecond(plane_bytes, repeat);
  const double service_bps = service->bytes_per_second;
  constexpr double kMiB = 1048576.0, kGiB = 1073741824.0;
  // The end-to-end figures only where that forward ran (--window_forward).
  if (window_forward) {
    std::printf(
        "through the service (forward, S=32768 H=8 D=128 fp32, W=16): %.0f MiB/s, %.2f "
        "of raw\n",
        service_bps / kMiB, service_bps / raw);
  }
  std::printf("through the service, data plane (all padding): %.0f MiB/s, %.2f of raw\n",
              plane->bytes_per_second / kMiB, plane->bytes_per_second / raw);

  std::printf("\nfigure: grpc_loopback_stream_mib_per_s %.0f\n", raw / kMiB);
  if (window_forward) {
    std::printf("figure: service_forward_mib_per_s %.0f\n", service_bps / kMiB);
    std::printf("figure: service_bytes_per_s_vs_grpc_loopback %.2f\n", service_bps / raw);
  }
  std::printf("figure: service_data_plane_bytes_per_s_vs_grpc_loopback %.2f\n",
              plane->bytes_per_second / raw);
  // Bytes per CPU second against the baseline's: the service's efficiency
  // apart from how many cores this machine lends its processes (here the
  // client, coordinator and workers share them; deployed, each has its own).
  // Two gRPC hops cost at least twice the baseline's one: 0.5 is the bound.
  if (window_forward) {
    std::printf("figure: service_bytes_per_cpu_s_vs_grpc_loopback %.2f\n",
                raw_run.cpu_seconds_per_byte / service->cpu_seconds_per_byte);
  }
  std::printf("figure: service_data_plane_bytes_per_cpu_s_vs_grpc_loopback %.2f\n",
              raw_run.cpu_seconds_per_byte / plane->cpu_seconds_per_byte);
  if (window_forward) {
    std::printf(
        "shared memory, every tensor by reference: %.0f MiB/s end to end, %.2f of raw "
        "gRPC; CPU s/GiB %.2f (streamed %.2f)\n",
        shm_service->bytes_per_second / kMiB, shm_service->bytes_per_second / raw,
        shm_service->cpu_seconds_per_byte * kGiB, service->cpu_seconds_per_byte * kGiB);
  }
  std::printf(
      "shared memory, data plane: %.0f MiB/s, %.2f of memcpy (%.0f MiB/s); CPU s/GiB "
      "%.2f (streamed %.2f)\n",
      shm_plane->bytes_per_second / kMiB, shm_plane->bytes_per_second / memcpy_bps,
      memcpy_bps / kMiB, shm_plane->cpu_seconds_per_byte * kGiB,
      plane->cpu_seconds_per_byte * kGiB);
  std::printf("figure: memcpy_mib_per_s %.0f\n", memcpy_bps / kMiB);
  if (window_forward) {
    std::printf("figure: shm_forward_mib_per_s %.0f\n", shm_service->bytes_per_second / kMiB);
    std::printf("figure: shm_bytes_per_s_vs_grpc_loopback %.2f\n",
                shm_service->bytes_per_second / raw);
  }
  std::printf("figure: shm_data_plane_bytes_per_s_vs_memcpy %.2f\n",
              shm_plane->bytes_per_second / memcpy_bps);
  std::printf("figure: shm_data_plane_bytes_per_s_vs_grpc_loopback %.2f\n",
              shm_plane->bytes_per_second / raw);
  // CPU seconds per byte of the region path against the streamed one's
  // (lower is better).
  if (window_forward) {
    std::printf("figure: shm_cpu_s_per_byte_vs_streamed %.2f\n",
                shm_service->cpu_seconds_per_byte / service->cpu_seconds_per_byte);
  }
  std::printf("figure: shm_data_plane_cpu_s_per_byte_vs_streamed %.2f\n",
              shm_plane->cpu_seconds_per_byte / plane->cpu_seconds_per_byte);
  if (!absl::GetFlag(FLAGS_step)) {
    c.reset();
    return (*cluster)->Stop().ok() ? 0 : 1;
  }

  // Compute-bound forward + backward, service against in-process ring.
  auto problem = MakeProblem({1, 8, 4, 4096, 128}, 0);
  double service_step = 1e30, inproc_step = 1e30;
  for (int r = 0; r < repeat; ++r) {
    const Clock::time_point t0 = Clock::now();
    auto f = c->Forward(problem->in);
    if (!f.ok()) return 1;
    auto g = c->Backward(problem->in, f->session.handle(),
                         std::as_bytes(std::span(problem->encoded->dout)));
    if (!g.ok()) return 1;
    service_step = std::min(service_step, Since(t0));
    (void)c->Release(f->session.handle());
    inproc_step = std::min(inproc_step, InProcessRingSeconds(*problem, 2, 0));
  }
  c.reset();
  (void)(*cluster)->Stop();
  const double overhead = 100.0 * (service_step - inproc_step) / inproc_step;
  std::printf(
      "forward+backward, causal S=4096 H=8 Hkv=4 D=128, cp=2: service %.3f s, "
      "in-process ring %.3f s, overhead %.1f%%\n",
      service_step, inproc_step, overhead);
  std::printf("figure: service_step_seconds %.3f\n", service_step);
  std::printf("figure: in_process_ring_step_seconds %.3f\n", inproc_step);
  std::printf("figure: service_overhead_percent %.1f\n", overhead);
  return 0;
}

}  // namespace
}  // namespace ringattn::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Benchmarks bytes/s and step time through the ringattn service against raw gRPC "
      "streaming and an in-process ring.");
  absl::ParseCommandLine(argc, argv);
  return ringattn::bench::Main();
}
