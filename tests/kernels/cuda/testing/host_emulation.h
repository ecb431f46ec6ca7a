#ifndef RINGATTN_TESTS_KERNELS_CUDA_TESTING_HOST_EMULATION_H_
#define RINGATTN_TESTS_KERNELS_CUDA_TESTING_HOST_EMULATION_H_

// Runs the CUDA kernels of kernels/cuda/impl (forward_kernel.cuh,
// backward_kernels.cuh and the tile GEMM, tile I/O, online softmax and
// shared-memory pieces they are built from) on CPU threads, so their logic
// (indexing, tiling, masking, tile skipping, the online softmax, the
// barriers as written) is tested on machines without a GPU. Include this
// before the kernel headers, from a file the C++ compiler builds: it turns
// the CUDA keywords into plain C++, runs each block as blockDim.x
// std::threads with std::barrier for __syncthreads / __syncwarp, emulates
// __shfl_xor_sync through a per-warp exchange array, and implements the WMMA
// 16x16x16 API with its documented element mapping (each lane computes the
// whole fragment; one lane stores it), checking WMMA's pointer alignment and
// leading-dimension rules. Blocks run one after another and share one
// `smem` array. What it cannot show: real fragment hardware, timing, the
// GPU memory model.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>
#include <vector_functions.h>
#include <vector_types.h>

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>
#undef __global__
#define __global__
#undef __device__
#define __device__
#undef __host__
#define __host__
#undef __shared__
#define __shared__
#undef __launch_bounds__
#define __launch_bounds__(...)
#undef __forceinline__
#define __forceinline__ inline
#undef __align__
#define __align__(n)

struct EmuDim {
  unsigned x = 0, y = 0, z = 0;
};
inline thread_local EmuDim threadIdx;
inline EmuDim blockIdx;
inline EmuDim blockDim{0, 1, 1};
inline EmuDim gridDim{0, 1, 1};
inline std::barrier<>* g_block_barrier = nullptr;
inline constexpr int kMaxEmulatedWarps = 32;
inline std::barrier<>* g_warp_barrier[kMaxEmulatedWarps] = {};
inline float g_shfl[kMaxEmulatedWarps][32];

inline void __syncthreads() { g_block_barrier->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) {
  g_warp_barrier[threadIdx.x / 32]->arrive_and_wait();
}
inline float __shfl_xor_sync(unsigned, float x, int off) {
  const int w = threadIdx.x / 32, l = threadIdx.x % 32;
  g_shfl[w][l] = x;
  __syncwarp();
  const float y = g_shfl[w][l ^ off];
  __syncwarp();
  return y;
}
inline float __int_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float __expf(float x) { return std::exp(x); }
// Host float arithmetic rounds every operation; the build does not contract.
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }

inline float EmuToF(float x) { return x; }
inline float EmuToF(__half x) { return __half2float(x); }
inline float EmuToF(__nv_bfloat16 x) { return __bfloat162float(x); }

namespace nvcuda::wmma {
struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };

// Every lane holds the whole 16x16 tile: element e is (e / 16, e % 16).
template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  enum { num_elements = 256 };
  float x[num_elements];
};

[[noreturn]] inline void Fail(const char* what) {
  std::fprintf(stderr, "WMMA emulation: %s\n", what);
  std::abort();
}

// WMMA's rules: 256-bit aligned pointers, leading dimensions a multiple of
// 16 bytes (8 elements of 16 bits, 4 of fp32).
inline void CheckAlign(const void* p, unsigned ldm, size_t elem_size) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) Fail("pointer not 32-byte aligned");
  if ((ldm * elem_size) % 16 != 0) Fail("leading dimension not a multiple of 16 bytes");
}

template <class Use, class T, class Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
  static_assert(!std::is_same_v<T, float>);
  CheckAlign(p, ldm, sizeof(T));
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 16; ++j) {
      f.x[i * 16 + j] =
          std::is_same_v<Layout, row_major> ? EmuToF(p[i * ldm + j]) : EmuToF(p[i + j * ldm]);
    }
  }
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p,
                             unsigned ldm, layout_t l) {
  if (l != mem_row_major) Fail("only row-major accumulators are emulated");
  CheckAlign(p, ldm, 4);
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 16; ++j) f.x[i * 16 + j] = p[i * ldm + j];
  }
}

inline void fill_fragment(fragment<accumulator, 16, 16, 16, float>& f, float v) {
  for (float& e : f.x) e = v;
}

template <class T, class LA, class LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
              const fragment<matrix_a, 16, 16, 16, T, LA>& a,
              const fragment<matrix_b, 16, 16, 16, T, LB>& b,
              const fragment<accumulator, 16, 16, 16, float>& c) {
  float out[256];
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 16; ++j) {
      float s = c.x[i * 16 + j];
      for (int k = 0; k < 16; ++k) s += a.x[i * 16 + k] * b.x[k * 16 + j];
      out[i * 16 + j] = s;
    }
  }
  std::memcpy(d.x, out, sizeof(out));
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f,
                              unsigned ldm, layout_t l) {
  if (l != mem_row_major) Fail("only row-major accumulators are emulated");
  CheckAlign(p, ldm, 4);
  __syncwarp();  // Every lane has loaded C before one lane overwrites it.
  if (threadIdx.x % 32 == 0) {
    for (int i = 0; i < 16; ++i) {
      for (int j = 0; j < 16; ++j) p[i * ldm + j] = f.x[i * 16 + j];
    }
  }
  __syncwarp();
}
}  // namespace nvcuda::wmma

// Runs f() as every thread of a (gx, gy) grid of `threads`-thread blocks,
// one block at a time.
template <class F>
void EmuLaunch(unsigned gx, unsigned gy, unsigned threads, F f) {
  if (threads % 32 != 0 || threads / 32 > kMaxEmulatedWarps) {
    std::fprintf(stderr, "emulation: %u threads per block\n", threads);
    std::abort();
  }
  blockDim = {threads, 1, 1};
  gridDim = {gx, gy, 1};
  for (unsigned by = 0; by < gy; ++by) {
    for (unsigned bx = 0; bx < gx; ++bx) {
      blockIdx = {bx, by, 0};
      std::barrier<> block(threads);
      std::vector<std::unique_ptr<std::barrier<>>> warps;
      for (unsigned w = 0; w < threads / 32; ++w) {
        warps.push_back(std::make_unique<std::barrier<>>(32));
        g_warp_barrier[w] = warps.back().get();
      }
      g_block_barrier = &block;
      std::vector<std::thread> pool;
      for (unsigned t = 0; t < threads; ++t) {
        pool.emplace_back([t, &f] {
          threadIdx = {t, 0, 0};
          f();
        });
      }
      for (std::thread& th : pool) th.join();
    }
  }
}

#endif  // RINGATTN_TESTS_KERNELS_CUDA_TESTING_HOST_EMULATION_H_
