#include "server/common/finite_scan.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/status_macros.h"

namespace ringattn::server {
namespace {

// Index of the first element of `data` whose exponent bits are all ones
// (Inf or NaN in every float format), or -1. Blocks are reduced without an
// early exit (a min over ~bits & exponent, 0 for such an element), so the
// loop vectorizes; only a block that holds one is searched.
template <typename Bits>
int64_t FirstNonFinite(std::span<const std::byte> data, Bits exponent) {
  constexpr int64_t kBlock = 1024;
  const auto n = static_cast<int64_t>(data.size() / sizeof(Bits));
  const auto at = [&](int64_t i) {
    Bits bits;
    std::memcpy(&bits, data.data() + i * sizeof(Bits), sizeof(Bits));
    return bits;
  };
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t end = std::min(n, b + kBlock);
    Bits least = exponent;
    for (int64_t i = b; i < end; ++i) least = std::min<Bits>(least, ~at(i) & exponent);
    if (least != 0) continue;
    for (int64_t i = b; i < end; ++i) {
      if ((at(i) & exponent) == exponent) return i;
    }
  }
  return -1;
}

}  // namespace

absl::Status CheckFinite(const std::string& name, kernels::DType dtype,
                         std::span<const int64_t> shape, int64_t first,
                         std::span<const std::byte> elements) {
  int64_t at = -1;
  switch (dtype) {
    case kernels::DType::kF32:
      at = FirstNonFinite<uint32_t>(elements, 0x7f800000u);
      break;
    case kernels::DType::kBF16:
      at = FirstNonFinite<uint16_t>(elements, 0x7f80u);
      break;
    case kernels::DType::kF16:
      at = FirstNonFinite<uint16_t>(elements, 0x7c00u);
      break;
  }
  if (at < 0) return absl::OkStatus();
  std::vector<int64_t> index(shape.size());
  for (size_t d = shape.size(), rest = static_cast<size_t>(first + at); d-- > 0;) {
    index[d] = static_cast<int64_t>(rest % shape[d]);
    rest /= shape[d];
  }
  return absl::InvalidArgumentError(absl::StrCat(name, " holds a NaN or Inf at [",
                                                 absl::StrJoin(index, ", "),
                                                 "]; q, k, v and dout must be finite"));
}

FiniteScan::FiniteScan(std::string name, kernels::DType dtype, std::vector<int64_t> shape)
    : name_(std::move(name)),
      shape_(std::move(shape)),
      dtype_(dtype),
      size_(kernels::DTypeSize(dtype)) {}

absl::Status FiniteScan::Add(std::span<const std::byte> piece) {
  if (carried_ > 0) {
    const size_t n = std::min(size_ - carried_, piece.size());
    std::memcpy(carry_.data() + carried_, piece.data(), n);
    carried_ += n;
    piece = piece.subspan(n);
    if (carried_ < size_) return absl::OkStatus();
    carried_ = 0;
    RINGATTN_RETURN_IF_ERROR(Check({carry_.data(), size_}));
  }
  const size_t whole = piece.size() / size_ * size_;
  RINGATTN_RETURN_IF_ERROR(Check(piece.first(whole)));
  carried_ = piece.size() - whole;
  std::memcpy(carry_.data(), piece.data() + whole, carried_);
  return absl::OkStatus();
}

absl::Status FiniteScan::Check(std::span<const std::byte> elements) {
  RINGATTN_RETURN_IF_ERROR(CheckFinite(name_, dtype_, shape_, index_, elements));
  index_ += static_cast<int64_t>(elements.size() / size_);
  return absl::OkStatus();
}

}  // namespace ringattn::server
