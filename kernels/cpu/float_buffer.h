#ifndef RINGATTN_KERNELS_CPU_FLOAT_BUFFER_H_
#define RINGATTN_KERNELS_CPU_FLOAT_BUFFER_H_

#include <cstddef>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ringattn::kernels::cpu {

// A zero-filled, 64-byte aligned fp32 workspace. Its members are defined out
// of line on purpose: the per-ISA kernel translation units are compiled with
// different instruction sets, and an inline library template instantiated
// there (std::vector's, say) could be merged by the linker into code run on
// a CPU without those instructions.
class FloatBuffer {
 public:
  // RESOURCE_EXHAUSTED naming `what` if the memory cannot be had.
  static absl::StatusOr<FloatBuffer> Allocate(size_t size, absl::string_view what);

  FloatBuffer() = default;
  ~FloatBuffer();
  FloatBuffer(FloatBuffer&& other) noexcept;
  FloatBuffer& operator=(FloatBuffer&& other) noexcept;
  FloatBuffer(const FloatBuffer&) = delete;
  FloatBuffer& operator=(const FloatBuffer&) = delete;

  float* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  FloatBuffer(float* data, size_t size) : data_(data), size_(size) {}

  float* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace ringattn::kernels::cpu

#endif  // RINGATTN_KERNELS_CPU_FLOAT_BUFFER_H_
