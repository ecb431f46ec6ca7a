#include "kernels/memory_space.h"

#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/convert.h"
#include "kernels/merge.h"
#include "kernels/status_macros.h"

namespace ringattn::kernels {

SpaceBuffer::SpaceBuffer(SpaceBuffer&& other) noexcept
    : space_(std::exchange(other.space_, nullptr)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

SpaceBuffer& SpaceBuffer::operator=(SpaceBuffer&& other) noexcept {
  if (this != &other) {
    SpaceBuffer old(std::move(*this));
    space_ = std::exchange(other.space_, nullptr);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

SpaceBuffer::~SpaceBuffer() {
  if (data_ != nullptr) space_->FreeBytes(data_, size_);
}

namespace {

absl::Status SameSize(const char* op, size_t dst, size_t src) {
  if (dst == src) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(op, ": destination has ", dst, " bytes, source ", src));
}

}  // namespace

absl::StatusOr<SpaceBuffer> MemorySpace::Allocate(size_t bytes) {
  if (bytes == 0) return SpaceBuffer();
  RINGATTN_ASSIGN_OR_RETURN(std::byte * data, AllocateBytes(bytes));
  return SpaceBuffer(this, data, bytes);
}

absl::Status MemorySpace::Upload(std::span<std::byte> dst, std::span<const std::byte> src) {
  RINGATTN_RETURN_IF_ERROR(SameSize("Upload", dst.size(), src.size()));
  return dst.empty() ? absl::OkStatus() : DoUpload(dst.data(), src.data(), dst.size());
}

absl::Status MemorySpace::Download(std::span<std::byte> dst, std::span<const std::byte> src) {
  RINGATTN_RETURN_IF_ERROR(SameSize("Download", dst.size(), src.size()));
  return dst.empty() ? absl::OkStatus() : DoDownload(dst.data(), src.data(), dst.size());
}

absl::Status MemorySpace::Copy(std::span<std::byte> dst, std::span<const std::byte> src) {
  RINGATTN_RETURN_IF_ERROR(SameSize("Copy", dst.size(), src.size()));
  return dst.empty() ? absl::OkStatus() : DoCopy(dst.data(), src.data(), dst.size());
}

absl::Status MemorySpace::Zero(std::span<std::byte> dst) {
  return dst.empty() ? absl::OkStatus() : DoZero(dst.data(), dst.size());
}

absl::Status MemorySpace::Add(std::span<float> dst, int64_t dst_stride, std::span<const float> src,
                              int64_t src_stride, int64_t rows, int64_t cols) {
  // The last row need only reach its last column.
  const auto reach = [&](int64_t stride) { return rows == 0 ? 0 : (rows - 1) * stride + cols; };
  if (rows < 0 || cols < 0 || dst_stride < cols || src_stride < cols ||
      static_cast<int64_t>(dst.size()) < reach(dst_stride) ||
      static_cast<int64_t>(src.size()) < reach(src_stride)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Add: ", rows, " rows of ", cols, " over strides ", dst_stride, "/", src_stride,
        " do not fit destination and source of ", dst.size(), "/", src.size(), " elements"));
  }
  if (rows == 0 || cols == 0) return absl::OkStatus();
  return DoAdd(dst.data(), dst_stride, src.data(), src_stride, rows, cols);
}

absl::Status MemorySpace::Merge(std::span<float> out, std::span<float> lse,
                                std::span<const float> o_s, std::span<const float> lse_s,
                                int64_t head_dim) {
  RINGATTN_RETURN_IF_ERROR(
      CheckMergeSizes(out.size(), lse.size(), o_s.size(), lse_s.size(), head_dim));
  if (lse.empty()) return absl::OkStatus();
  return DoMerge(out.data(), lse.data(), o_s.data(), lse_s.data(), static_cast<int64_t>(lse.size()),
                 head_dim);
}

absl::Status MemorySpace::FromF32(DType dtype, std::span<const float> src,
                                  std::span<std::byte> dst) {
  RINGATTN_RETURN_IF_ERROR(SameSize("FromF32", dst.size(), src.size() * DTypeSize(dtype)));
  if (src.empty()) return absl::OkStatus();
  return DoFromF32(dtype, src.data(), static_cast<int64_t>(src.size()), dst.data());
}

absl::StatusOr<std::byte*> HostMemorySpace::AllocateBytes(size_t bytes) {
  // calloc: large blocks come as fresh zero pages, not written here.
  void* p = std::calloc(bytes, 1);
  if (p == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("host memory: cannot allocate ", bytes, " bytes"));
  }
  return static_cast<std::byte*>(p);
}

void HostMemorySpace::FreeBytes(std::byte* data, size_t /*bytes*/) { std::free(data); }

absl::Status HostMemorySpace::DoUpload(std::byte* dst, const std::byte* src, size_t bytes) {
  std::memcpy(dst, src, bytes);
  return absl::OkStatus();
}

absl::Status HostMemorySpace::DoDownload(std::byte* dst, const std::byte* src, size_t bytes) {
  std::memcpy(dst, src, bytes);
  return absl::OkStatus();
}

absl::Status HostMemorySpace::DoCopy(std::byte* dst, const std::byte* src, size_t bytes) {
  std::memmove(dst, src, bytes);
  return absl::OkStatus();
}

absl::Status HostMemorySpace::DoZero(std::byte* dst, size_t bytes) {
  std::memset(dst, 0, bytes);
  return absl::OkStatus();
}

absl::Status HostMemorySpace::DoAdd(float* dst, int64_t dst_stride, const float* src,
                                    int64_t src_stride, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    float* d = dst + r * dst_stride;
    const float* s = src + r * src_stride;
    for (int64_t c = 0; c < cols; ++c) d[c] += s[c];
  }
  return absl::OkStatus();
}

absl::Status HostMemorySpace::DoMerge(float* out, float* lse, const float* o_s, const float* lse_s,
                                      int64_t rows, int64_t head_dim) {
  const auto n = static_cast<size_t>(rows);
  const size_t elems = n * static_cast<size_t>(head_dim);
  return MergePartial({out, elems}, {lse, n}, {o_s, elems}, {lse_s, n}, head_dim);
}

absl::Status HostMemorySpace::DoFromF32(DType dtype, const float* src, int64_t n, std::byte* dst) {
  kernels::FromF32(dtype, src, n, dst);
  return absl::OkStatus();
}

}  // namespace ringattn::kernels
