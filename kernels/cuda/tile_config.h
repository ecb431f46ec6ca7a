#ifndef RINGATTN_KERNELS_CUDA_TILE_CONFIG_H_
#define RINGATTN_KERNELS_CUDA_TILE_CONFIG_H_

#include <cstdint>

#include "kernels/host_device.h"
#include "kernels/mask.h"

// Tile sizes and shared-memory layouts of the CUDA kernels, as constexpr
// functions shared verbatim by the host launch plan (g++) and the kernels
// (nvcc): the bytes the plan asks for are the bytes the kernel carves.
//
// Every kernel stages its tiles in shared memory with padded leading
// dimensions (bank-conflict-free rows, and the 32-byte alignment and
// multiple-of-8 / multiple-of-4 leading dimensions WMMA loads need).

namespace ringattn::kernels::cuda {

// Threads per block of every attention kernel: eight warps, so a block
// has enough warps in flight to cover shared-memory latency at the one or
// two blocks per SM that its shared memory allows.
inline constexpr int kThreads = 256;

// The largest shared memory per block on sm80 (A100: 163 KiB opt-in). Every
// tile table entry fits it, so the same plan runs on sm80 and sm90.
inline constexpr int64_t kSm80MaxSmemPerBlock = 166912;

// Query tile rows (bq) and key tile rows (bk) of one kernel.
struct TileShape {
  int bq = 0;
  int bk = 0;
};

// Grid, block and shared memory of one kernel launch.
struct KernelLaunch {
  int64_t grid_x = 0;      // Tiles along the sequence
  int64_t grid_y = 0;      // B * H or B * Hkv
  int threads = kThreads;  // Per block
  int64_t smem_bytes = 0;  // Dynamic shared memory per block
};

// Head dims are rounded up to one of these template buckets; the tail
// columns are zero in shared memory.
RINGATTN_HOST_DEVICE constexpr int HeadDimBucket(int64_t head_dim) {
  if (head_dim < 1) return 0;
  if (head_dim <= 64) return 64;
  if (head_dim <= 128) return 128;
  if (head_dim <= 256) return 256;
  if (head_dim <= 512) return 512;
  return 0;
}

// elem_size: 4 (fp32, SIMT path) or 2 (bf16/fp16, tensor cores). Larger head
// dims take smaller tiles so the staged tiles fit kSm80MaxSmemPerBlock.
RINGATTN_HOST_DEVICE constexpr TileShape ForwardTiles(int elem_size, int bucket) {
  if (elem_size == 2) {
    if (bucket <= 128) return {64, 64};
    if (bucket == 256) return {64, 32};
    return {32, 32};
  }
  if (bucket == 64) return {64, 64};
  if (bucket == 128) return {64, 32};
  if (bucket == 256) return {32, 32};
  return {16, 32};
}

// Both backward kernels (dK/dV and dQ) use the same tiles, so they share one
// set of tile summaries.
RINGATTN_HOST_DEVICE constexpr TileShape BackwardTiles(int elem_size, int bucket) {
  if (elem_size == 2) {
    if (bucket == 64) return {64, 64};
    if (bucket == 128) return {32, 64};
    if (bucket == 256) return {32, 32};
    return {16, 16};
  }
  if (bucket == 64) return {32, 64};
  if (bucket == 128) return {32, 32};
  if (bucket == 256) return {32, 16};
  return {8, 8};
}

// Leading dimensions, in elements.
RINGATTN_HOST_DEVICE constexpr int LdInput(int bucket) { return bucket + 8; }  // dtype rows of D
RINGATTN_HOST_DEVICE constexpr int LdAcc(int bucket) { return bucket + 4; }    // fp32 rows of D
RINGATTN_HOST_DEVICE constexpr int LdScore(int bk) { return bk + 4; }          // fp32 rows of bk
RINGATTN_HOST_DEVICE constexpr int LdProb(int bk) { return bk + 8; }           // dtype rows of bk

RINGATTN_HOST_DEVICE constexpr int64_t AlignSmem(int64_t bytes) {
  return (bytes + 127) / 128 * 128;
}

// Hands out the regions of a kernel's dynamic shared memory one after the
// other, each aligned, so every layout below is carved the same way.
class SmemCarver {
 public:
  // The offset of a new region of `bytes`.
  RINGATTN_HOST_DEVICE constexpr int64_t Take(int64_t bytes) {
    const int64_t here = at_;
    at_ += AlignSmem(bytes);
    return here;
  }
  RINGATTN_HOST_DEVICE constexpr int64_t total() const { return at_; }

 private:
  int64_t at_ = 0;
};

// Byte offsets into the dynamic shared memory of the forward kernel.
struct ForwardSmem {
  int64_t q = 0;      // [bq, LdInput] dtype
  int64_t kv = 0;     // [bk, LdInput] dtype: K, then V of the same tile
  int64_t o = 0;      // [bq, LdAcc] fp32 running output
  int64_t s = 0;      // [bq, LdScore] fp32 scores
  int64_t p = 0;      // [bq, LdProb] dtype probabilities
  int64_t m = 0;      // [bq] fp32 running max
  int64_t l = 0;      // [bq] fp32 running sum
  int64_t alpha = 0;  // [bq] fp32 rescale factor of the running output, this key tile
  int64_t q_tok = 0;  // [bq] TokenInfo
  int64_t k_tok = 0;  // [bk] TokenInfo
  int64_t total = 0;
};

RINGATTN_HOST_DEVICE constexpr ForwardSmem ForwardSmemLayout(int elem_size, int bucket,
                                                             TileShape t) {
  ForwardSmem s;
  SmemCarver carve;
  s.q = carve.Take(int64_t{t.bq} * LdInput(bucket) * elem_size);
  s.kv = carve.Take(int64_t{t.bk} * LdInput(bucket) * elem_size);
  s.o = carve.Take(int64_t{t.bq} * LdAcc(bucket) * 4);
  s.s = carve.Take(int64_t{t.bq} * LdScore(t.bk) * 4);
  s.p = carve.Take(int64_t{t.bq} * LdProb(t.bk) * elem_size);
  s.m = carve.Take(int64_t{t.bq} * 4);
  s.l = carve.Take(int64_t{t.bq} * 4);
  s.alpha = carve.Take(int64_t{t.bq} * 4);
  s.q_tok = carve.Take(int64_t{t.bq} * static_cast<int64_t>(sizeof(TokenInfo)));
  s.k_tok = carve.Take(int64_t{t.bk} * static_cast<int64_t>(sizeof(TokenInfo)));
  s.total = carve.total();
  return s;
}

// Byte offsets into the dynamic shared memory of the two backward kernels.
// The dK/dV kernel keeps one key tile and walks query tiles (acc = dK and
// dV, [bk, LdAcc] each); the dQ kernel keeps one query tile and walks key
// tiles (acc = dQ, [bq, LdAcc]; acc2 unused).
struct BackwardSmem {
  int64_t q = 0;      // [bq, LdInput] dtype
  int64_t dout = 0;   // [bq, LdInput] dtype
  int64_t k = 0;      // [bk, LdInput] dtype
  int64_t v = 0;      // [bk, LdInput] dtype
  int64_t acc = 0;    // fp32 accumulator: dK ([bk, LdAcc]) or dQ ([bq, LdAcc])
  int64_t acc2 = 0;   // fp32 accumulator: dV ([bk, LdAcc]); dK/dV kernel only
  int64_t s = 0;      // [bq, LdScore] fp32 scores
  int64_t dp = 0;     // [bq, LdScore] fp32 dO V^T
  int64_t p = 0;      // [bq, LdProb] dtype probabilities; dK/dV kernel only
  int64_t ds = 0;     // [bq, LdProb] dtype score gradients
  int64_t lse = 0;    // [bq] fp32
  int64_t delta = 0;  // [bq] fp32
  int64_t q_tok = 0;  // [bq] TokenInfo
  int64_t k_tok = 0;  // [bk] TokenInfo
  int64_t total = 0;
};

RINGATTN_HOST_DEVICE constexpr BackwardSmem BackwardSmemLayout(int elem_size, int bucket,
                                                               TileShape t, bool dkdv) {
  BackwardSmem s;
  SmemCarver carve;
  s.q = carve.Take(int64_t{t.bq} * LdInput(bucket) * elem_size);
  s.dout = carve.Take(int64_t{t.bq} * LdInput(bucket) * elem_size);
  s.k = carve.Take(int64_t{t.bk} * LdInput(bucket) * elem_size);
  s.v = carve.Take(int64_t{t.bk} * LdInput(bucket) * elem_size);
  s.acc = carve.Take(int64_t{dkdv ? t.bk : t.bq} * LdAcc(bucket) * 4);
  s.acc2 = dkdv ? carve.Take(int64_t{t.bk} * LdAcc(bucket) * 4) : s.acc;
  s.s = carve.Take(int64_t{t.bq} * LdScore(t.bk) * 4);
  s.dp = carve.Take(int64_t{t.bq} * LdScore(t.bk) * 4);
  s.p = dkdv ? carve.Take(int64_t{t.bq} * LdProb(t.bk) * elem_size) : s.s;
  s.ds = carve.Take(int64_t{t.bq} * LdProb(t.bk) * elem_size);
  s.lse = carve.Take(int64_t{t.bq} * 4);
  s.delta = carve.Take(int64_t{t.bq} * 4);
  s.q_tok = carve.Take(int64_t{t.bq} * static_cast<int64_t>(sizeof(TokenInfo)));
  s.k_tok = carve.Take(int64_t{t.bk} * static_cast<int64_t>(sizeof(TokenInfo)));
  s.total = carve.total();
  return s;
}

}  // namespace ringattn::kernels::cuda

#endif  // RINGATTN_KERNELS_CUDA_TILE_CONFIG_H_
