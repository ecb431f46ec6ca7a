#ifndef RINGATTN_KERNELS_CPU_IMPL_ISA_DISPATCH_H_
#define RINGATTN_KERNELS_CPU_IMPL_ISA_DISPATCH_H_

// The boundary between the dispatcher (plain C++, built for the baseline
// CPU) and the per-instruction-set kernels. The dispatcher validates, plans
// the tiles and allocates every buffer; the kernels only compute.

#include <cstdint>

#include "kernels/block_classification.h"
#include "kernels/chunk_params.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/thread_pool.h"

namespace ringattn::kernels::cpu {

// Query and key tile sizes. Both are multiples of every ISA's kMr and kNr.
inline constexpr int64_t kBq = 64;
inline constexpr int64_t kBk = 64;
// Head dims are zero-padded to a multiple of this (the widest kNr).
inline constexpr int64_t kHeadDimAlign = 32;

inline constexpr int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

struct TilePlan {
  int64_t head_dim_padded = 0;                // Dp
  int64_t q_tiles = 0;                        // ceil(Lq / kBq)
  int64_t kv_tiles = 0;                       // ceil(Lk / kBk)
  const TileSummary* q_summaries = nullptr;   // [B, q_tiles]
  const TileSummary* kv_summaries = nullptr;  // [B, kv_tiles]
};

// All buffers are zero-filled when handed over. Lkp = kv_tiles * kBk,
// Lqp = q_tiles * kBq.
struct ForwardWorkspace {
  float* k_t = nullptr;      // [B, Hkv, kv_tiles, Dp, kBk] K^T per key tile
  float* v = nullptr;        // [B, Hkv, Lkp, Dp]
  float* scratch = nullptr;  // [num_threads, ForwardScratchPerWorker]
};

struct BackwardWorkspace {
  float* q = nullptr;        // [B, H, Lqp, Dp]
  float* dout = nullptr;     // [B, H, Lqp, Dp]
  float* lse = nullptr;      // [B, H, Lqp], -inf past Lq
  float* delta = nullptr;    // [B, H, Lqp] rowsum(dO * O)
  float* k = nullptr;        // [B, Hkv, Lkp, Dp]
  float* k_t = nullptr;      // [B, Hkv, kv_tiles, Dp, kBk] K^T per key tile
  float* v_t = nullptr;      // [B, Hkv, kv_tiles, Dp, kBk] V^T per key tile
  float* scratch = nullptr;  // [num_threads, BackwardScratchPerWorker]
};

inline constexpr int64_t ForwardScratchPerWorker(int64_t dp) {
  return 2 * kBq * dp + kBq * kBk + 2 * kBq + dp;
}

inline constexpr int64_t BackwardScratchPerWorker(int64_t dp) {
  return 3 * kBq * kBk + 2 * kBk * dp + 2 * dp;
}

#define RINGATTN_DECLARE_ISA_KERNELS(ns)                                                         \
  namespace ns {                                                                                 \
  void Forward(const ForwardParams& params, const TilePlan& plan, const ForwardWorkspace& ws,    \
               ThreadPool& pool);                                                                \
  void Backward(const BackwardParams& params, const TilePlan& plan, const BackwardWorkspace& ws, \
                ThreadPool& pool);                                                               \
  }

RINGATTN_DECLARE_ISA_KERNELS(generic)
RINGATTN_DECLARE_ISA_KERNELS(avx2)
RINGATTN_DECLARE_ISA_KERNELS(avx512)

#undef RINGATTN_DECLARE_ISA_KERNELS

// The kernels built for one instruction set.
struct IsaKernels {
  void (*forward)(const ForwardParams&, const TilePlan&, const ForwardWorkspace&, ThreadPool&);
  void (*backward)(const BackwardParams&, const TilePlan&, const BackwardWorkspace&, ThreadPool&);
};

const IsaKernels& KernelsFor(Isa isa);

}  // namespace ringattn::kernels::cpu

#endif  // RINGATTN_KERNELS_CPU_IMPL_ISA_DISPATCH_H_
