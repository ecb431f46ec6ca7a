#include "kernels/reference/chunked_attention.h"

#include <chrono>
#include <cmath>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/convert.h"
#include "kernels/merge.h"
#include "kernels/status_macros.h"

namespace ringattn::kernels::reference {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// One contiguous shard of every sequence tensor, in the kernels' layout.
struct Shard {
  int64_t begin = 0;
  int64_t len = 0;
  std::vector<uint8_t> q, k, v, dout;  // dtype bytes
  std::vector<int32_t> doc, vision;
  std::vector<uint8_t> padding;
  std::vector<uint8_t> out;  // dtype bytes, after forward
  std::vector<float> lse;    // after forward
};

TensorRef Ref(const std::vector<uint8_t>& bytes, DType dtype, int64_t b, int64_t h, int64_t l,
              int64_t d) {
  return TensorRef{dtype, {b, h, l, d}, bytes.data(), bytes.size()};
}

TokenMetaRef Meta(const Shard& s) { return TokenMetaRef{s.doc, s.vision, s.padding, s.begin}; }

}  // namespace

absl::StatusOr<ChunkedResult> RunChunked(const SyntheticBatch& batch, const LayerConfig& layer,
                                         int64_t num_chunks, ChunkBackend& backend, bool backward) {
  const BatchShape& sh = batch.shape;
  const int64_t B = sh.batch, H = sh.heads, Hkv = sh.kv_heads, S = sh.seq_len, D = sh.head_dim;
  if (num_chunks < 1 || S % num_chunks != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sequence length ", S, " is not a multiple of the chunk count ", num_chunks));
  }
  const int64_t L = S / num_chunks;
  const DType dt = batch.dtype;
  std::vector<Shard> shards(num_chunks);
  for (int64_t r = 0; r < num_chunks; ++r) {
    Shard& s = shards[r];
    s.begin = r * L;
    s.len = L;
    const int64_t end = s.begin + L;
    s.q = Encode(SliceSequence(batch.q, B * H, S, D, s.begin, end), dt);
    s.k = Encode(SliceSequence(batch.k, B * Hkv, S, D, s.begin, end), dt);
    s.v = Encode(SliceSequence(batch.v, B * Hkv, S, D, s.begin, end), dt);
    s.dout = Encode(SliceSequence(batch.dout, B * H, S, D, s.begin, end), dt);
    s.doc = SliceSequence(batch.doc, B, S, 1, s.begin, end);
    s.vision = SliceSequence(batch.vision, B, S, 1, s.begin, end);
    s.padding = SliceSequence(batch.padding, B, S, 1, s.begin, end);
  }

  ChunkedResult result;
  result.out.assign(B * H * S * D, 0.0f);
  result.lse.assign(B * H * S, 0.0f);
  const int64_t q_elems = B * H * L * D;
  const int64_t rows = B * H * L;

  // Forward: rank r meets the chunk of rank (r - i) mod cp at step i.
  const Clock::time_point fwd_start = Clock::now();
  for (int64_t r = 0; r < num_chunks; ++r) {
    Shard& s = shards[r];
    std::vector<float> acc(q_elems, 0.0f);
    std::vector<float> lse(rows, -std::numeric_limits<float>::infinity());
    std::vector<float> part(q_elems);
    std::vector<float> part_lse(rows);
    for (int64_t step = 0; step < num_chunks; ++step) {
      const Shard& kv = shards[(r - step + num_chunks) % num_chunks];
      ForwardChunkArgs args;
      args.q = Ref(s.q, dt, B, H, L, D);
      args.k = Ref(kv.k, dt, B, Hkv, L, D);
      args.v = Ref(kv.v, dt, B, Hkv, L, D);
      args.q_meta = Meta(s);
      args.kv_meta = Meta(kv);
      args.layer = layer;
      args.out = part;
      args.lse = part_lse;
      RINGATTN_RETURN_IF_ERROR(backend.Forward(args));
      RINGATTN_RETURN_IF_ERROR(MergePartial(acc, lse, part, part_lse, D));
    }
    s.out.resize(q_elems * DTypeSize(dt));
    FromF32(dt, acc.data(), q_elems, s.out.data());
    RoundTo(dt, acc.data(), q_elems);
    s.lse = lse;
    ScatterSequence(acc, B * H, S, D, s.begin, s.begin + L, result.out);
    ScatterSequence(lse, B * H, S, 1, s.begin, s.begin + L, result.lse);
  }
  result.forward_seconds = SecondsSince(fwd_start);
  if (!backward) return result;

  // Backward: dQ stays with the query shard; dK/dV go back to the owner.
  result.dq.assign(B * H * S * D, 0.0f);
  result.dk.assign(B * Hkv * S * D, 0.0f);
  result.dv.assign(B * Hkv * S * D, 0.0f);
  std::vector<std::vector<float>> dk(num_chunks, std::vector<float>(B * Hkv * L * D, 0.0f));
  std::vector<std::vector<float>> dv = dk;
  const Clock::time_point bwd_start = Clock::now();
  for (int64_t r = 0; r < num_chunks; ++r) {
    const Shard& s = shards[r];
    std::vector<float> dq(q_elems, 0.0f);
    for (int64_t step = 0; step < num_chunks; ++step) {
      const int64_t owner = (r - step + num_chunks) % num_chunks;
      const Shard& kv = shards[owner];
      BackwardChunkArgs args;
      args.q = Ref(s.q, dt, B, H, L, D);
      args.k = Ref(kv.k, dt, B, Hkv, L, D);
      args.v = Ref(kv.v, dt, B, Hkv, L, D);
      args.out = Ref(s.out, dt, B, H, L, D);
      args.dout = Ref(s.dout, dt, B, H, L, D);
      args.lse = s.lse;
      args.q_meta = Meta(s);
      args.kv_meta = Meta(kv);
      args.layer = layer;
      args.dq = dq;
      args.dk = dk[owner];
      args.dv = dv[owner];
      RINGATTN_RETURN_IF_ERROR(backend.Backward(args));
    }
    ScatterSequence(dq, B * H, S, D, s.begin, s.begin + L, result.dq);
  }
  for (int64_t r = 0; r < num_chunks; ++r) {
    ScatterSequence(dk[r], B * Hkv, S, D, r * L, (r + 1) * L, result.dk);
    ScatterSequence(dv[r], B * Hkv, S, D, r * L, (r + 1) * L, result.dv);
  }
  result.backward_seconds = SecondsSince(bwd_start);
  return result;
}

}  // namespace ringattn::kernels::reference
