#include "kernels/cpu/float_buffer.h"

#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace ringattn::kernels::cpu {
namespace {
constexpr size_t kAlignment = 64;
}  // namespace

absl::StatusOr<FloatBuffer> FloatBuffer::Allocate(size_t size, absl::string_view what) {
  if (size == 0) return FloatBuffer();
  if (size > (SIZE_MAX - kAlignment) / sizeof(float)) {
    return absl::ResourceExhaustedError(absl::StrCat(what, ": size overflows"));
  }
  const size_t bytes = (size * sizeof(float) + kAlignment - 1) / kAlignment * kAlignment;
  auto* data = static_cast<float*>(std::aligned_alloc(kAlignment, bytes));
  if (data == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat(what, ": cannot allocate ", bytes, " bytes"));
  }
  std::memset(data, 0, bytes);
  return FloatBuffer(data, size);
}

FloatBuffer::~FloatBuffer() { std::free(data_); }

FloatBuffer::FloatBuffer(FloatBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

FloatBuffer& FloatBuffer::operator=(FloatBuffer&& other) noexcept {
  if (this != &other) {
    std::free(data_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

}  // namespace ringattn::kernels::cpu
