#ifndef RINGATTN_KERNELS_HOST_DEVICE_H_
#define RINGATTN_KERNELS_HOST_DEVICE_H_

// Code in headers marked with this macro is shared verbatim by the CPU and
// CUDA backends, so the mask the GPU evaluates is the one the CPU tests prove.
#if defined(__CUDACC__)
#define RINGATTN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define RINGATTN_HOST_DEVICE inline
#endif

#endif  // RINGATTN_KERNELS_HOST_DEVICE_H_
