// The device merge and conversion kernels (merge_kernels.cuh) run on CPU
// threads (testing/host_emulation.h) against the host functions a CPU ring
// uses: kernels::MergePartial, with its -inf rules, and kernels::FromF32.
// Under emulation both sides call the same libm, so the merge must agree to
// the bit; on a GPU, expf and log1pf may differ by 2 ulp.

#include "tests/kernels/cuda/testing/host_emulation.h"
// The emulation must come first.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/convert.h"
#include "kernels/cuda/impl/merge_kernels.cuh"
#include "kernels/cuda/impl/merge_launch.h"
#include "kernels/memory_space.h"
#include "kernels/merge.h"

namespace ringattn::kernels::cuda::impl {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

struct Partials {
  std::vector<float> out, lse;  // [rows, D], [rows]: the running result
  std::vector<float> o_s, lse_s;
};

// Rows cycle through the four -inf cases: both finite, running empty,
// chunk empty, both empty (which must stay exactly 0 / -inf).
Partials MakePartials(int64_t rows, int64_t head_dim, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> value(-2.0f, 2.0f);
  std::uniform_real_distribution<float> lse(-30.0f, 30.0f);
  Partials p;
  p.out.resize(rows * head_dim);
  p.o_s.resize(rows * head_dim);
  p.lse.resize(rows);
  p.lse_s.resize(rows);
  for (int64_t r = 0; r < rows; ++r) {
    const int kind = static_cast<int>(r % 4);
    p.lse[r] = (kind == 1 || kind == 3) ? kNegInf : lse(rng);
    p.lse_s[r] = (kind == 2 || kind == 3) ? kNegInf : lse(rng);
    for (int64_t c = 0; c < head_dim; ++c) {
      p.out[r * head_dim + c] = p.lse[r] == kNegInf ? 0.0f : value(rng);
      p.o_s[r * head_dim + c] = p.lse_s[r] == kNegInf ? 0.0f : value(rng);
    }
  }
  return p;
}

void RunMergeKernel(Partials& p, int64_t rows, int64_t head_dim) {
  MergeArgs a;
  a.out = p.out.data();
  a.lse = p.lse.data();
  a.o_s = p.o_s.data();
  a.lse_s = p.lse_s.data();
  a.rows = rows;
  a.head_dim = head_dim;
  EmuLaunch(static_cast<unsigned>(MergeBlocks(rows)), 1, kThreads, [&] { MergePartialKernel(a); });
}

TEST(MergeKernelEmulationTest, MatchesHostMergeBitForBitWithEveryInfCase) {
  // Head dims below, at and above a warp's width; rows not a multiple of
  // the block's eight warps.
  for (const int64_t head_dim : {1, 32, 72, 128}) {
    const int64_t rows = 37;
    Partials device = MakePartials(rows, head_dim, 11 + static_cast<uint32_t>(head_dim));
    Partials host = device;
    RunMergeKernel(device, rows, head_dim);
    ASSERT_TRUE(MergePartial(host.out, host.lse, host.o_s, host.lse_s, head_dim).ok());
    for (int64_t r = 0; r < rows; ++r) {
      ASSERT_EQ(Bits(device.lse[r]), Bits(host.lse[r])) << "D=" << head_dim << " row " << r;
      for (int64_t c = 0; c < head_dim; ++c) {
        const int64_t i = r * head_dim + c;
        ASSERT_EQ(Bits(device.out[i]), Bits(host.out[i]))
            << "D=" << head_dim << " row " << r << " col " << c;
      }
    }
    // Both sides empty: exactly 0 / -inf, never NaN.
    EXPECT_EQ(device.lse[3], kNegInf);
    EXPECT_EQ(device.out[3 * head_dim], 0.0f);
  }
}

TEST(MergeKernelEmulationTest, FoldingChunksInAnyOrderGivesTheSameResultAsTheHost) {
  // A ring merges cp partials one after another; fold four, as a rank of a
  // four-rank ring does, and compare with the host fold.
  const int64_t rows = 16, head_dim = 40;
  Partials device = MakePartials(rows, head_dim, 5);
  Partials host = device;
  for (uint32_t step = 1; step < 4; ++step) {
    const Partials chunk = MakePartials(rows, head_dim, 100 + step);
    device.o_s = chunk.o_s;
    device.lse_s = chunk.lse_s;
    RunMergeKernel(device, rows, head_dim);
    ASSERT_TRUE(MergePartial(host.out, host.lse, chunk.o_s, chunk.lse_s, head_dim).ok());
  }
  for (int64_t i = 0; i < rows * head_dim; ++i) ASSERT_EQ(Bits(device.out[i]), Bits(host.out[i]));
  for (int64_t r = 0; r < rows; ++r) ASSERT_EQ(Bits(device.lse[r]), Bits(host.lse[r]));
}

TEST(MergeKernelEmulationTest, ConversionRoundsAsTheHostDoesIncludingSpecials) {
  std::vector<float> src = {0.0f,
                            -0.0f,
                            1.0f,
                            -1.5f,
                            1.0f + 0x1.0p-9f,  // A bf16 tie: rounds to even
                            65504.0f,          // fp16 max
                            65520.0f,          // rounds to fp16 inf
                            1e-8f,             // fp16 subnormal
                            0x1.0p-140f,       // fp32 subnormal
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN()};
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> value(-1e5f, 1e5f);
  // Three strides of a two-block grid, plus a ragged tail, so the
  // grid-stride loop wraps (the launcher caps grids at kMaxConvertBlocks).
  const unsigned blocks = 2;
  const int64_t n = 3 * blocks * kThreads + 17;
  while (static_cast<int64_t>(src.size()) < n) src.push_back(value(rng));
  for (const DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    const size_t bytes = src.size() * DTypeSize(dtype);
    std::vector<unsigned char> device(bytes), host(bytes);
    EmuLaunch(blocks, 1, kThreads, [&] { FromF32Kernel(src.data(), device.data(), n, dtype); });
    FromF32(dtype, src.data(), n, host.data());
    ASSERT_EQ(device, host) << DTypeName(dtype);
  }
  EXPECT_EQ(FromF32Blocks(1), 1);
  EXPECT_EQ(FromF32Blocks(int64_t{1} << 40), kMaxConvertBlocks);
  EXPECT_EQ(MergeBlocks(17), 3);  // Eight rows, one per warp, per block.
}

// The accumulator add: one row (dK/dV shares onto the travelling
// accumulator) and strided rows (a halo's gradients onto a shard's tail),
// against the host space's Add, to the bit, with the grid-stride loop
// wrapping and columns not a multiple of the block.
TEST(MergeKernelEmulationTest, AddMatchesTheHostSpaceOneRowAndStrided) {
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> value(-1e3f, 1e3f);
  struct Shape {
    int64_t rows, cols, dst_stride, src_stride;
  };
  for (const Shape& s : {Shape{1, 3 * 2 * kThreads + 5, 3 * 2 * kThreads + 5, 3 * 2 * kThreads + 5},
                         Shape{6, 100, 257, 100}, Shape{4, 33, 40, 35}}) {
    std::vector<float> src(s.rows * s.src_stride), device(s.rows * s.dst_stride);
    for (float& x : src) x = value(rng);
    for (float& x : device) x = value(rng);
    std::vector<float> host = device;
    EmuLaunch(2, 1, kThreads, [&] {
      AddKernel(device.data(), s.dst_stride, src.data(), s.src_stride, s.rows, s.cols);
    });
    HostMemorySpace space;
    ASSERT_TRUE(space.Add(host, s.dst_stride, src, s.src_stride, s.rows, s.cols).ok());
    for (size_t i = 0; i < host.size(); ++i) {
      ASSERT_EQ(Bits(device[i]), Bits(host[i])) << "rows " << s.rows << " at " << i;
    }
  }
}

}  // namespace
}  // namespace ringattn::kernels::cuda::impl
