// One rank of a Gloo ring as its own process, for the multi-process tests:
// builds the shared synthetic batch from the seed, takes its shard, runs
// ring forward and backward over Gloo TCP on 127.0.0.1, and writes its
// results (O as fp32, LSE, dQ, dK, dV) to --out_file. Exits 3 with the error
// on stderr if the ring fails.

#include <cstdio>
#include <fstream>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "kernels/backends.h"
#include "kernels/convert.h"
#include "server/ring/transports/gloo_transport.h"
#include "tests/server/ring/testing/ring_harness.h"

ABSL_FLAG(std::string, store_dir, "", "Directory of the rendezvous file store.");
ABSL_FLAG(int, rank, 0, "This rank.");
ABSL_FLAG(int, cp, 2, "Ranks in the ring.");
ABSL_FLAG(int64_t, batch, 1, "Batch size.");
ABSL_FLAG(int64_t, seq_len, 192, "Padded sequence length (a multiple of cp).");
ABSL_FLAG(int64_t, heads, 4, "Query heads.");
ABSL_FLAG(int64_t, kv_heads, 2, "Key/value heads.");
ABSL_FLAG(int64_t, head_dim, 64, "Head dim.");
ABSL_FLAG(int64_t, window, 0, "Sliding window; 0 for a full layer.");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the synthetic batch (the same on every rank).");
ABSL_FLAG(std::string, out_file, "", "Where to write the results.");
ABSL_FLAG(double, stall_seconds, 0.0, "Sleep this long inside the ring (fault tests).");
ABSL_FLAG(double, timeout_seconds, 20.0, "Bound on every ring wait.");
ABSL_FLAG(int, repeat, 1, "Forward+backward calls to run (benchmarks).");

namespace ringattn::ring {
namespace {

void Append(std::ofstream& out, const std::vector<float>& v) {
  out.write(reinterpret_cast<const char*>(v.data()),
            static_cast<std::streamsize>(v.size() * sizeof(float)));
}

int Run() {
  const int cp = absl::GetFlag(FLAGS_cp);
  const int rank = absl::GetFlag(FLAGS_rank);
  kernels::reference::BatchShape shape{absl::GetFlag(FLAGS_batch), absl::GetFlag(FLAGS_heads),
                                       absl::GetFlag(FLAGS_kv_heads), absl::GetFlag(FLAGS_seq_len),
                                       absl::GetFlag(FLAGS_head_dim)};
  std::vector<kernels::reference::RowLayout> layouts;
  for (int64_t b = 0; b < shape.batch; ++b) layouts.push_back(testing::RingTestLayout(b));
  const auto batch = kernels::reference::MakeSyntheticBatch(shape, layouts, kernels::DType::kF32,
                                                            absl::GetFlag(FLAGS_seed));
  RingCall call;
  const int64_t window = absl::GetFlag(FLAGS_window);
  call.layer.kind = window > 0 ? kernels::LayerKind::kSliding : kernels::LayerKind::kFull;
  call.layer.window = window > 0 ? window : 512;
  call.layer.scale = 0.125f;
  call.batch_has_vision = testing::BatchHasVision(batch);
  call.generation = 1;
  call.timeout = absl::Seconds(absl::GetFlag(FLAGS_timeout_seconds));

  FileStore store(absl::GetFlag(FLAGS_store_dir));
  GlooOptions options;
  options.rank = rank;
  options.size = cp;
  options.generation = 1;
  options.timeout = call.timeout;
  absl::StatusOr<std::unique_ptr<Transport>> transport = ConnectGloo(store, options);
  if (!transport.ok()) {
    std::fprintf(stderr, "rank %d: %s\n", rank, transport.status().ToString().c_str());
    return 3;
  }
  auto cpu = kernels::MakeCpuBackend(1);
  kernels::ChunkBackend& backend = **cpu;
  const testing::ShardData shard = testing::SliceShard(batch, cp, rank);
  const ShardRef ref = shard.Ref(batch, shape.seq_len / cp);
  if (const double stall = absl::GetFlag(FLAGS_stall_seconds); stall > 0) {
    std::this_thread::sleep_for(std::chrono::duration<double>(stall));
  }
  absl::StatusOr<RingForwardResult> fwd = absl::UnknownError("not run");
  absl::StatusOr<RingBackwardResult> bwd = absl::UnknownError("not run");
  for (int i = 0; i < absl::GetFlag(FLAGS_repeat); ++i) {
    call.sequence = static_cast<uint64_t>(i);
    fwd = RingForward(**transport, backend, ref, call);
    if (fwd.ok()) {
      bwd = RingBackward(**transport, backend, ref, fwd->out, std::as_bytes(std::span(shard.dout)),
                         fwd->lse, call);
    }
    if (!fwd.ok() || !bwd.ok()) {
      const absl::Status s = fwd.ok() ? bwd.status() : fwd.status();
      std::fprintf(stderr, "rank %d: %s\n", rank, s.ToString().c_str());
      return 3;
    }
    std::printf(
        "rank %d call %d: forward %.3f s (compute %.3f, wait %.3f), backward %.3f s "
        "(compute %.3f, wait %.3f), sent %lld bytes\n",
        rank, i, fwd->stats.total_seconds, fwd->stats.compute_seconds, fwd->stats.wait_seconds,
        bwd->stats.total_seconds, bwd->stats.compute_seconds, bwd->stats.wait_seconds,
        static_cast<long long>(fwd->stats.bytes_sent + bwd->stats.bytes_sent));
  }
  std::vector<float> out(fwd->out.size() / sizeof(float));
  kernels::ToF32(kernels::DType::kF32, fwd->out.data(), static_cast<int64_t>(out.size()),
                 out.data());
  std::ofstream file(absl::GetFlag(FLAGS_out_file), std::ios::binary | std::ios::trunc);
  for (const auto* v : {&out, &fwd->lse, &bwd->dq, &bwd->dk, &bwd->dv}) Append(file, *v);
  return file ? 0 : 4;
}

}  // namespace
}  // namespace ringattn::ring

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "One rank of a Gloo ring-attention test: runs forward and backward on its shard of a "
      "seeded synthetic batch and writes the results.");
  absl::ParseCommandLine(argc, argv);
  return ringattn::ring::Run();
}
