#include "tests/server/ring/testing/ring_harness.h"

#include <algorithm>
#include <thread>

#include "absl/status/status.h"
#include "kernels/backends.h"
#include "kernels/convert.h"
#include "server/ring/transports/in_process_transport.h"

namespace ringattn::ring::testing {

using kernels::reference::Encode;
using kernels::reference::SyntheticBatch;

ShardRef ShardData::Ref(const SyntheticBatch& batch, int64_t shard_len) const {
  const auto& sh = batch.shape;
  ShardRef ref;
  ref.shape = {batch.dtype, sh.batch, sh.heads, sh.kv_heads, shard_len, shard_len, sh.head_dim};
  ref.q = std::as_bytes(std::span(q));
  ref.k = std::as_bytes(std::span(k));
  ref.v = std::as_bytes(std::span(v));
  ref.doc = doc;
  ref.vision = vision;
  ref.padding = padding;
  return ref;
}

namespace {

// t [outer, S, inner] at rank r's positions, in its local order.
template <typename T>
std::vector<T> Gather(const std::vector<T>& t, int64_t outer, int64_t seq_len, int64_t inner,
                      const std::vector<batch::Segment>& segments) {
  std::vector<T> out;
  for (int64_t o = 0; o < outer; ++o) {
    for (const batch::Segment& s : segments) {
      out.insert(out.end(), t.begin() + (o * seq_len + s.start) * inner,
                 t.begin() + (o * seq_len + s.start + s.len) * inner);
    }
  }
  return out;
}

// Writes `part` [outer, L, inner] in rank r's local order into t.
template <typename T>
void Scatter(const std::vector<T>& part, int64_t outer, int64_t seq_len, int64_t inner,
             const std::vector<batch::Segment>& segments, std::vector<T>& t) {
  size_t at = 0;
  for (int64_t o = 0; o < outer; ++o) {
    for (const batch::Segment& s : segments) {
      for (int64_t i = 0; i < s.len * inner; ++i) {
        t[(o * seq_len + s.start) * inner + i] = part[at++];
      }
    }
  }
}

}  // namespace

ShardData SliceShard(const SyntheticBatch& batch, const batch::ShardLayout& layout, int rank) {
  const auto& sh = batch.shape;
  const std::vector<batch::Segment>& segs = layout.Segments(rank);
  ShardData d;
  d.q = Encode(Gather(batch.q, sh.batch * sh.heads, sh.seq_len, sh.head_dim, segs), batch.dtype);
  d.k = Encode(Gather(batch.k, sh.batch * sh.kv_heads, sh.seq_len, sh.head_dim, segs), batch.dtype);
  d.v = Encode(Gather(batch.v, sh.batch * sh.kv_heads, sh.seq_len, sh.head_dim, segs), batch.dtype);
  d.dout =
      Encode(Gather(batch.dout, sh.batch * sh.heads, sh.seq_len, sh.head_dim, segs), batch.dtype);
  d.doc = Gather(batch.doc, sh.batch, sh.seq_len, 1, segs);
  d.vision = Gather(batch.vision, sh.batch, sh.seq_len, 1, segs);
  d.padding = Gather(batch.padding, sh.batch, sh.seq_len, 1, segs);
  return d;
}

ShardData SliceShard(const SyntheticBatch& batch, int cp, int rank) {
  return SliceShard(batch, batch::ShardLayout(batch.shape.seq_len, batch.shape.seq_len / cp, cp),
                    rank);
}

kernels::reference::RowLayout RingTestLayout(int64_t row) {
  kernels::reference::RowLayout layout;
  layout.doc_lengths = row == 0 ? std::vector<int64_t>{80, 60} : std::vector<int64_t>{30, 100};
  layout.images = {{40, 60}, {62, 70}, {90, 100}};
  return layout;
}

bool BatchHasVision(const SyntheticBatch& batch) {
  return std::any_of(batch.vision.begin(), batch.vision.end(), [](int32_t v) { return v >= 0; });
}

absl::StatusOr<RingRunResult> RunInProcessRing(const SyntheticBatch& batch,
                                               const kernels::LayerConfig& layer, int cp,
                                               int threads_per_rank, batch::LayoutKind kind,
                                               bool halo_exchange) {
  if (cp < 1) return absl::InvalidArgumentError("cp < 1");
  InProcessHub hub(cp);
  return RunRing(
      batch, layer, cp,
      [&hub](int rank) -> absl::StatusOr<std::unique_ptr<Transport>> { return hub.Connect(rank); },
      threads_per_rank, kind, halo_exchange);
}

absl::StatusOr<RingRunResult> RunRing(const SyntheticBatch& batch,
                                      const kernels::LayerConfig& layer, int cp,
                                      const ConnectFn& connect, int threads_per_rank,
                                      batch::LayoutKind kind, bool halo_exchange) {
  return RunRingOn(
      batch, layer, cp, connect,
      [threads_per_rank](int) { return kernels::MakeCpuBackend(threads_per_rank); }, kind,
      halo_exchange);
}

absl::StatusOr<RingRunResult> RunRingOn(const SyntheticBatch& batch,
                                        const kernels::LayerConfig& layer, int cp,
                                        const ConnectFn& connect, const BackendFn& make_backend,
                                        batch::LayoutKind kind, bool halo_exchange) {
  const auto& sh = batch.shape;
  if (cp < 1 || sh.seq_len % cp != 0) return absl::InvalidArgumentError("S % cp != 0");
  const int64_t L = sh.seq_len / cp;
  absl::StatusOr<batch::ShardLayout> layout = batch::ShardLayout::Make(kind, sh.seq_len, L, cp);
  if (!layout.ok()) return layout.status();
  std::vector<absl::StatusOr<RingForwardResult>> fwd(cp, absl::UnknownError("not run"));
  std::vector<absl::StatusOr<RingBackwardResult>> bwd(cp, absl::UnknownError("not run"));
  std::vector<ShardData> shards;
  for (int r = 0; r < cp; ++r) shards.push_back(SliceShard(batch, *layout, r));
  RingCall call;
  call.layout = kind;
  call.halo_exchange = halo_exchange;
  call.layer = layer;
  call.batch_has_vision = BatchHasVision(batch);
  call.generation = 3;
  call.sequence = 11;
  call.timeout = absl::Seconds(60);
  std::vector<std::thread> threads;
  for (int r = 0; r < cp; ++r) {
    threads.emplace_back([&, r] {
      absl::StatusOr<std::unique_ptr<kernels::ChunkBackend>> made = make_backend(r);
      if (!made.ok()) {
        fwd[r] = made.status();
        return;
      }
      kernels::ChunkBackend& backend = **made;
      absl::StatusOr<std::unique_ptr<Transport>> transport = connect(r);
      if (!transport.ok()) {
        fwd[r] = transport.status();
        return;
      }
      const ShardRef ref = shards[r].Ref(batch, L);
      fwd[r] = RingForward(**transport, backend, ref, call);
      if (!fwd[r].ok()) return;
      bwd[r] = RingBackward(**transport, backend, ref, fwd[r]->out,
                            std::as_bytes(std::span(shards[r].dout)), fwd[r]->lse, call);
    });
  }
  for (auto& t : threads) t.join();

  RingRunResult result;
  auto& whole = result.whole;
  whole.out.assign(sh.batch * sh.heads * sh.seq_len * sh.head_dim, 0.0f);
  whole.lse.assign(sh.batch * sh.heads * sh.seq_len, 0.0f);
  whole.dq.assign(whole.out.size(), 0.0f);
  whole.dk.assign(sh.batch * sh.kv_heads * sh.seq_len * sh.head_dim, 0.0f);
  whole.dv.assign(whole.dk.size(), 0.0f);
  for (int r = 0; r < cp; ++r) {
    if (!fwd[r].ok()) return fwd[r].status();
    if (!bwd[r].ok()) return bwd[r].status();
    const std::vector<batch::Segment>& segs = layout->Segments(r);
    std::vector<float> out(fwd[r]->out.size() / kernels::DTypeSize(batch.dtype));
    kernels::ToF32(batch.dtype, fwd[r]->out.data(), static_cast<int64_t>(out.size()), out.data());
    const int64_t bh = sh.batch * sh.heads, bk = sh.batch * sh.kv_heads;
    Scatter(out, bh, sh.seq_len, sh.head_dim, segs, whole.out);
    Scatter(fwd[r]->lse, bh, sh.seq_len, 1, segs, whole.lse);
    Scatter(bwd[r]->dq, bh, sh.seq_len, sh.head_dim, segs, whole.dq);
    Scatter(bwd[r]->dk, bk, sh.seq_len, sh.head_dim, segs, whole.dk);
    Scatter(bwd[r]->dv, bk, sh.seq_len, sh.head_dim, segs, whole.dv);
    result.forward_stats.push_back(fwd[r]->stats);
    result.backward_stats.push_back(bwd[r]->stats);
  }
  return result;
}

}  // namespace ringattn::ring::testing
