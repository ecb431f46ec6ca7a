#ifndef RINGATTN_SERVER_COMMON_FINITE_SCAN_H_
#define RINGATTN_SERVER_COMMON_FINITE_SCAN_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kernels/dtype.h"

// Q, K, V and dO must be finite. A NaN or Inf would not stay in its own
// rows: masked keys still enter a tile's products with weight 0, and
// 0 * NaN is NaN, so one NaN in a document's V reaches other documents'
// outputs in the same tile, depending on tiling and sharding. The
// coordinator checks what streams through it; a worker checks the slices
// it reads from a client's region itself.

namespace ringattn::server {

// `elements`: whole elements of `dtype`, the first at flat index `first` of
// the row-major tensor `name` of `shape`. INVALID_ARGUMENT naming the index
// of the first NaN or Inf among them.
absl::Status CheckFinite(const std::string& name, kernels::DType dtype,
                         std::span<const int64_t> shape, int64_t first,
                         std::span<const std::byte> elements);

// CheckFinite over a tensor's bytes as they stream in: an element may
// straddle two pieces.
class FiniteScan {
 public:
  // shape: the whole tensor's, row-major, for naming the element found.
  FiniteScan(std::string name, kernels::DType dtype, std::vector<int64_t> shape);

  // The next bytes of the tensor.
  absl::Status Add(std::span<const std::byte> piece);

 private:
  absl::Status Check(std::span<const std::byte> elements);

  const std::string name_;
  const std::vector<int64_t> shape_;
  const kernels::DType dtype_;
  const size_t size_;
  std::array<std::byte, 4> carry_{};
  size_t carried_ = 0;
  int64_t index_ = 0;  // Elements checked so far.
};

}  // namespace ringattn::server

#endif  // RINGATTN_SERVER_COMMON_FINITE_SCAN_H_
