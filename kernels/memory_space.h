#ifndef RINGATTN_KERNELS_MEMORY_SPACE_H_
#define RINGATTN_KERNELS_MEMORY_SPACE_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/dtype.h"

// Where a backend's tensors live, and the few element-wise operations the
// ring runs on them between chunk kernels (merging partials, adding
// gradient accumulators, the final conversion). The ring keeps everything it
// computes on in its backend's space for the whole call: host memory for the
// CPU backend, device memory for a GPU backend, so a GPU ring moves no
// tensor byte across PCIe between the upload of its shard and the download
// of its answer.
//
// Spans handed to an operation point into this space unless named host
// memory; host code must never read or write device memory itself. Every
// operation is complete when it returns and is ordered after the backend's
// kernels that came before it (one stream per backend).

namespace ringattn::kernels {

enum class MemoryKind : uint8_t { kHost, kDevice };

class MemorySpace;

// Zero-filled bytes in one memory space, given back to it on destruction.
class SpaceBuffer {
 public:
  SpaceBuffer() = default;
  SpaceBuffer(SpaceBuffer&& other) noexcept;
  SpaceBuffer& operator=(SpaceBuffer&& other) noexcept;
  SpaceBuffer(const SpaceBuffer&) = delete;
  SpaceBuffer& operator=(const SpaceBuffer&) = delete;
  ~SpaceBuffer();

  std::span<std::byte> bytes() const { return {data_, size_}; }
  // The buffer as elements of T (its size must be a multiple of sizeof(T)).
  template <typename T>
  std::span<T> as() const {
    return {reinterpret_cast<T*>(data_), size_ / sizeof(T)};
  }

 private:
  friend class MemorySpace;
  SpaceBuffer(MemorySpace* space, std::byte* data, size_t size)
      : space_(space), data_(data), size_(size) {}

  MemorySpace* space_ = nullptr;
  std::byte* data_ = nullptr;
  size_t size_ = 0;
};

// Bytes copied between host and device memory since the space was made.
struct MemoryTraffic {
  int64_t host_to_device = 0;
  int64_t device_to_host = 0;
  int64_t total() const { return host_to_device + device_to_host; }
};

// The public operations check their arguments (sizes, counts) and return
// INVALID_ARGUMENT on a mismatch; the implementations behind them trust them.
class MemorySpace {
 public:
  virtual ~MemorySpace() = default;

  virtual MemoryKind kind() const = 0;
  virtual std::string name() const = 0;  // For errors and logs: "host", "cuda:0".

  // OK when `bytes` more fit; RESOURCE_EXHAUSTED naming the bytes needed and
  // free otherwise. Allocates nothing: a caller asks before its first buffer.
  virtual absl::Status CheckFits(int64_t bytes) {
    (void)bytes;
    return absl::OkStatus();
  }

  // `bytes` zero-filled bytes (0 is allowed).
  absl::StatusOr<SpaceBuffer> Allocate(size_t bytes);

  // dst (this space) = src (host memory), and the reverse.
  absl::Status Upload(std::span<std::byte> dst, std::span<const std::byte> src);
  absl::Status Download(std::span<std::byte> dst, std::span<const std::byte> src);
  // dst = src, both in this space.
  absl::Status Copy(std::span<std::byte> dst, std::span<const std::byte> src);
  absl::Status Zero(std::span<std::byte> dst);
  // dst[r * dst_stride + c] += src[r * src_stride + c] in fp32, for r < rows
  // and c < cols; dst: [rows, dst_stride], src: [rows, src_stride].
  absl::Status Add(std::span<float> dst, int64_t dst_stride, std::span<const float> src,
                   int64_t src_stride, int64_t rows, int64_t cols);
  // MergePartial (kernels/merge.h) in this space, with its rules and
  // roundings: out, o_s: [rows, head_dim]; lse, lse_s: [rows].
  absl::Status Merge(std::span<float> out, std::span<float> lse, std::span<const float> o_s,
                     std::span<const float> lse_s, int64_t head_dim);
  // dst: [n] elements of `dtype` = src: [n] fp32, rounded as FromF32
  // (kernels/convert.h) rounds.
  absl::Status FromF32(DType dtype, std::span<const float> src, std::span<std::byte> dst);

  virtual MemoryTraffic traffic() const { return {}; }

 protected:
  // Zero-filled; RESOURCE_EXHAUSTED when the space is full.
  virtual absl::StatusOr<std::byte*> AllocateBytes(size_t bytes) = 0;
  virtual void FreeBytes(std::byte* data, size_t bytes) = 0;

  virtual absl::Status DoUpload(std::byte* dst, const std::byte* src, size_t bytes) = 0;
  virtual absl::Status DoDownload(std::byte* dst, const std::byte* src, size_t bytes) = 0;
  virtual absl::Status DoCopy(std::byte* dst, const std::byte* src, size_t bytes) = 0;
  virtual absl::Status DoZero(std::byte* dst, size_t bytes) = 0;
  virtual absl::Status DoAdd(float* dst, int64_t dst_stride, const float* src, int64_t src_stride,
                             int64_t rows, int64_t cols) = 0;
  virtual absl::Status DoMerge(float* out, float* lse, const float* o_s, const float* lse_s,
                               int64_t rows, int64_t head_dim) = 0;
  virtual absl::Status DoFromF32(DType dtype, const float* src, int64_t n, std::byte* dst) = 0;

 private:
  friend class SpaceBuffer;
};

// Host memory, operated on by host code: the CPU backend's space. Also the
// implementation a test's emulated device space runs its operations with.
class HostMemorySpace : public MemorySpace {
 public:
  MemoryKind kind() const override { return MemoryKind::kHost; }
  std::string name() const override { return "host"; }

 protected:
  absl::StatusOr<std::byte*> AllocateBytes(size_t bytes) override;
  void FreeBytes(std::byte* data, size_t bytes) override;
  absl::Status DoUpload(std::byte* dst, const std::byte* src, size_t bytes) override;
  absl::Status DoDownload(std::byte* dst, const std::byte* src, size_t bytes) override;
  absl::Status DoCopy(std::byte* dst, const std::byte* src, size_t bytes) override;
  absl::Status DoZero(std::byte* dst, size_t bytes) override;
  absl::Status DoAdd(float* dst, int64_t dst_stride, const float* src, int64_t src_stride,
                     int64_t rows, int64_t cols) override;
  absl::Status DoMerge(float* out, float* lse, const float* o_s, const float* lse_s, int64_t rows,
                       int64_t head_dim) override;
  absl::Status DoFromF32(DType dtype, const float* src, int64_t n, std::byte* dst) override;
};

}  // namespace ringattn::kernels

#endif  // RINGATTN_KERNELS_MEMORY_SPACE_H_
