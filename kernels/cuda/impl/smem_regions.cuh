#ifndef RINGATTN_KERNELS_CUDA_IMPL_SMEM_REGIONS_CUH_
#define RINGATTN_KERNELS_CUDA_IMPL_SMEM_REGIONS_CUH_

// The named regions of a kernel's dynamic shared memory, as typed pointers,
// from its (dtype, head-dim bucket) tile config. The byte offsets come from
// ForwardSmemLayout / BackwardSmemLayout in tile_config.h, the same calls on
// the same tile table that the host launch plan sizes the launch with, and
// the launchers check the plan's bytes against kBytes here. So the carving
// and the size can only disagree if the plan and the kernels were built from
// different tables, and no kernel repeats the offset arithmetic.

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/tile_config.h"
#include "kernels/mask.h"

namespace ringattn::kernels::cuda::impl {

// The block's dynamic shared memory, sized by the launch. 128-byte aligned
// because every region offset is (AlignSmem), which covers WMMA's 32 bytes
// and the 16-byte vector stores of LoadTile.
// Regions below are constant expressions of it, spelled out rather than
// passed through a helper that takes the offset: with such a helper nvcc
// unrolled one of the forward's GEMM loops differently.
extern __shared__ __align__(128) unsigned char smem[];

// ForwardKernel<T, kBucket>. Leading dimensions are those of tile_config.h
// (LdInput, LdAcc, LdScore, LdProb).
template <typename T, int kBucket>
struct ForwardSmemRegions {
  static constexpr TileShape kTiles = ForwardTiles(sizeof(T), kBucket);
  static constexpr int64_t kBytes = ForwardSmemLayout(sizeof(T), kBucket, kTiles).total;
  static_assert(kBytes <= kSm80MaxSmemPerBlock, "the tile table must fit every supported GPU");

  T* q;              // [bq, LdInput]
  T* kv;             // [bk, LdInput]: K, then V of the same key tile
  float* o;          // [bq, LdAcc] running output
  float* s;          // [bq, LdScore] scores
  T* p;              // [bq, LdProb] probabilities
  float* m;          // [bq] running max
  float* l;          // [bq] running sum
  float* alpha;      // [bq] rescale factor of the running output, this key tile
  TokenInfo* q_tok;  // [bq]
  TokenInfo* k_tok;  // [bk]

  __device__ __forceinline__ ForwardSmemRegions() {
    constexpr ForwardSmem kAt = ForwardSmemLayout(sizeof(T), kBucket, kTiles);
    q = reinterpret_cast<T*>(smem + kAt.q);
    kv = reinterpret_cast<T*>(smem + kAt.kv);
    o = reinterpret_cast<float*>(smem + kAt.o);
    s = reinterpret_cast<float*>(smem + kAt.s);
    p = reinterpret_cast<T*>(smem + kAt.p);
    m = reinterpret_cast<float*>(smem + kAt.m);
    l = reinterpret_cast<float*>(smem + kAt.l);
    alpha = reinterpret_cast<float*>(smem + kAt.alpha);
    q_tok = reinterpret_cast<TokenInfo*>(smem + kAt.q_tok);
    k_tok = reinterpret_cast<TokenInfo*>(smem + kAt.k_tok);
  }
};

// BackwardDkDvKernel<T, kBucket> (kDkDv) and BackwardDqKernel<T, kBucket>:
// one layout for both, so the query-side and key-side loads serve both.
// In the dQ kernel acc2 aliases acc and p aliases s (neither is used there).
template <typename T, int kBucket, bool kDkDv>
struct BackwardSmemRegions {
  static constexpr TileShape kTiles = BackwardTiles(sizeof(T), kBucket);
  static constexpr int64_t kBytes = BackwardSmemLayout(sizeof(T), kBucket, kTiles, kDkDv).total;
  static_assert(kBytes <= kSm80MaxSmemPerBlock, "the tile table must fit every supported GPU");

  T* q;              // [bq, LdInput]
  T* dout;           // [bq, LdInput]
  T* k;              // [bk, LdInput]
  T* v;              // [bk, LdInput]
  float* acc;        // [bk, LdAcc] dK, or [bq, LdAcc] dQ
  float* acc2;       // [bk, LdAcc] dV
  float* s;          // [bq, LdScore] scores
  float* dp;         // [bq, LdScore] dO V^T
  T* p;              // [bq, LdProb] probabilities
  T* ds;             // [bq, LdProb] score gradients
  float* lse;        // [bq] final log-sum-exp
  float* delta;      // [bq] rowsum(dO * O)
  TokenInfo* q_tok;  // [bq]
  TokenInfo* k_tok;  // [bk]

  __device__ __forceinline__ BackwardSmemRegions() {
    constexpr BackwardSmem kAt = BackwardSmemLayout(sizeof(T), kBucket, kTiles, kDkDv);
    q = reinterpret_cast<T*>(smem + kAt.q);
    dout = reinterpret_cast<T*>(smem + kAt.dout);
    k = reinterpret_cast<T*>(smem + kAt.k);
    v = reinterpret_cast<T*>(smem + kAt.v);
    acc = reinterpret_cast<float*>(smem + kAt.acc);
    acc2 = reinterpret_cast<float*>(smem + kAt.acc2);
    s = reinterpret_cast<float*>(smem + kAt.s);
    dp = reinterpret_cast<float*>(smem + kAt.dp);
    p = reinterpret_cast<T*>(smem + kAt.p);
    ds = reinterpret_cast<T*>(smem + kAt.ds);
    lse = reinterpret_cast<float*>(smem + kAt.lse);
    delta = reinterpret_cast<float*>(smem + kAt.delta);
    q_tok = reinterpret_cast<TokenInfo*>(smem + kAt.q_tok);
    k_tok = reinterpret_cast<TokenInfo*>(smem + kAt.k_tok);
  }
};

}  // namespace ringattn::kernels::cuda::impl

#endif  // RINGATTN_KERNELS_CUDA_IMPL_SMEM_REGIONS_CUH_
