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
//
// bf16 inputs on an instruction set with bf16 dot products
// (IsaKernels::bf16_matrix) stay bf16, packed for the matrix units instead of
// widened: the fp32 packs are then null and the bf16 ones set. A "pairs"
// pack is the B operand of a bf16 dot product: B(k, n) at
// [k / 2][n][k % 2], so each 32-bit word holds the two products one lane
// sums. dim pairs pair head dims (B = X^T), row pairs pair rows (B = X).
struct ForwardWorkspace {
  float* k_t = nullptr;          // [B, Hkv, kv_tiles, Dp, kBk] K^T per key tile, in panels
  float* v = nullptr;            // [B, Hkv, Lkp, Dp] V per key tile, in panels
  uint16_t* k_dpairs = nullptr;  // [B, Hkv, kv_tiles, Dp / 2, kBk, 2] bf16
  uint16_t* v_rpairs = nullptr;  // [B, Hkv, kv_tiles, kBk / 2, Dp, 2] bf16
  float* scratch = nullptr;      // [num_threads, ForwardScratchPerWorker]
};

// The bf16 operands of the backward, each packed the ways its products read
// it (see ForwardWorkspace).
struct Bf16BackwardPacks {
  uint16_t* q = nullptr;            // [B, H, Lqp, Dp]
  uint16_t* q_dpairs = nullptr;     // [B, H, q_tiles, Dp / 2, kBq, 2]
  uint16_t* q_rpairs = nullptr;     // [B, H, q_tiles, kBq / 2, Dp, 2]
  uint16_t* dout = nullptr;         // [B, H, Lqp, Dp]
  uint16_t* dout_dpairs = nullptr;  // [B, H, q_tiles, Dp / 2, kBq, 2]
  uint16_t* dout_rpairs = nullptr;  // [B, H, q_tiles, kBq / 2, Dp, 2]
  uint16_t* k = nullptr;            // [B, Hkv, Lkp, Dp]
  uint16_t* k_dpairs = nullptr;     // [B, Hkv, kv_tiles, Dp / 2, kBk, 2]
  uint16_t* k_rpairs = nullptr;     // [B, Hkv, kv_tiles, kBk / 2, Dp, 2]
  uint16_t* v = nullptr;            // [B, Hkv, Lkp, Dp]
  uint16_t* v_dpairs = nullptr;     // [B, Hkv, kv_tiles, Dp / 2, kBk, 2]
};
// How many q-sized ([B, H, Lqp, Dp]) and kv-sized packs Bf16BackwardPacks holds.
inline constexpr int64_t kBf16BackwardQPacks = 6;
inline constexpr int64_t kBf16BackwardKvPacks = 5;

struct BackwardWorkspace {
  float* q = nullptr;        // [B, H, Lqp, Dp]
  float* dout = nullptr;     // [B, H, Lqp, Dp]
  float* lse = nullptr;      // [B, H, Lqp], -inf past Lq
  float* delta = nullptr;    // [B, H, Lqp] rowsum(dO * O)
  float* k = nullptr;        // [B, Hkv, Lkp, Dp] K per key tile, in panels
  float* k_t = nullptr;      // [B, Hkv, kv_tiles, Dp, kBk] K^T per key tile, in panels
  float* v_t = nullptr;      // [B, Hkv, kv_tiles, Dp, kBk] V^T per key tile, in panels
  Bf16BackwardPacks bf16;    // Set instead of q, dout, k, k_t, v_t for bf16.
  float* dq = nullptr;       // [B, H, Lqp, Dp]: set for the one-pass backward.
  float* scratch = nullptr;  // [num_threads, BackwardScratchPerWorker]
};

// The forward's tasks are groups of up to kMaxQueryGroup consecutive query
// tiles of one head, which walk the key tiles in aligned blocks of
// kKeyRun: each block's K and V are read from memory once for the whole
// group and then stay in cache, and within a block each query tile takes
// its meeting key tiles in runs, with one softmax update and one P V
// product per run, so the row reductions, the rescaling of the output and
// (on the bf16 path) the loads and stores of the output tiles are paid once
// per run instead of once per tile.
inline constexpr int64_t kMaxQueryGroup = 8;
inline constexpr int64_t kKeyRun = 4;

// Query tiles per forward task: kMaxQueryGroup, halved while that leaves
// fewer than 8 tasks a thread (causal tasks differ in size, and more,
// smaller ones balance). The grouping never changes a bit of the result:
// each query tile walks the same key blocks in the same order whatever
// group it is in.
inline constexpr int64_t ForwardQueryGroup(int64_t batch_heads, int64_t q_tiles,
                                           int64_t num_threads) {
  int64_t g = kMaxQueryGroup;
  while (g > 1 && batch_heads * ((q_tiles + g - 1) / g) < 8 * num_threads) g /= 2;
  return g;
}

// Scores and the bf16 parts of P for one run, then per query tile of the
// group its packed rows, running output, max and sum.
inline constexpr int64_t ForwardQueryStateSize(int64_t dp) { return 2 * kBq * dp + 2 * kBq; }
inline constexpr int64_t ForwardScratchPerWorker(int64_t dp) {
  return 2 * kBq * kKeyRun * kBk + kMaxQueryGroup * ForwardQueryStateSize(dp) + dp;
}

// The backward runs in one pass over the tile pairs, one task per (batch,
// kv head), when those tasks keep the threads about as busy as the two
// passes would (which split the work finer but compute S, P and dS twice,
// about 1.4x the work); otherwise in two. Both sum every product in the same
// order, so the choice, and the thread count it depends on, never changes a
// bit of the result.
inline constexpr bool OnePassBackward(int64_t batch_kv_heads, int64_t num_threads) {
  const int64_t rounds = (batch_kv_heads + num_threads - 1) / num_threads;
  return 10 * rounds * num_threads <= 14 * batch_kv_heads;
}

inline constexpr int64_t BackwardScratchPerWorker(int64_t dp) {
  return 3 * kBq * kBk + 2 * kBk * dp + 2 * dp + 2 * kBq * dp;
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
RINGATTN_DECLARE_ISA_KERNELS(avx512bf16)
RINGATTN_DECLARE_ISA_KERNELS(amx)

#undef RINGATTN_DECLARE_ISA_KERNELS

// The kernels built for one instruction set.
struct IsaKernels {
  void (*forward)(const ForwardParams&, const TilePlan&, const ForwardWorkspace&, ThreadPool&);
  void (*backward)(const BackwardParams&, const TilePlan&, const BackwardWorkspace&, ThreadPool&);
  // bf16 inputs run on bf16 dot products (the bf16 workspace packs).
  bool bf16_matrix;
};

const IsaKernels& KernelsFor(Isa isa);

}  // namespace ringattn::kernels::cpu

#endif  // RINGATTN_KERNELS_CPU_IMPL_ISA_DISPATCH_H_
