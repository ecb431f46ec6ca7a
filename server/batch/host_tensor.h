#ifndef RINGATTN_SERVER_BATCH_HOST_TENSOR_H_
#define RINGATTN_SERVER_BATCH_HOST_TENSOR_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

// A dense row-major tensor in host memory, of any element type a batch
// carries (token ids, masks, embeddings, Q/K/V), with the sequence
// operations batch preparation needs: pad and slice along one dimension.

namespace ringattn::batch {

enum class ElemType : uint8_t { kI64, kI32, kU8, kF32, kBF16, kF16 };

size_t ElemSize(ElemType type);
// The wire dtype name (INT64, INT32, BOOL, FP32, BF16, FP16), and back.
absl::string_view ElemName(ElemType type);
std::optional<ElemType> ParseElemType(absl::string_view name);
bool IsIntegerType(ElemType type);  // I64, I32, U8

struct HostTensor {
  ElemType type = ElemType::kI64;
  std::vector<int64_t> shape;
  std::vector<std::byte> data;

  static HostTensor Zeros(ElemType type, std::vector<int64_t> shape);
  template <typename T>
  static HostTensor From(ElemType type, std::vector<int64_t> shape, const std::vector<T>& values) {
    HostTensor t = Zeros(type, std::move(shape));
    std::memcpy(t.data.data(), values.data(), t.data.size());
    return t;
  }

  int64_t NumElements() const;
  int64_t Dim(size_t i) const { return shape[i]; }

  // Element i (row-major) as an integer / a double; integer types only for
  // the first, float types converted for the second.
  int64_t IntAt(int64_t i) const;
  double FloatAt(int64_t i) const;
  void SetInt(int64_t i, int64_t value);

  template <typename T>
  std::vector<T> ToVector() const {
    std::vector<T> out(data.size() / sizeof(T));
    std::memcpy(out.data(), data.data(), data.size());
    return out;
  }
};

// "[2,3]".
std::string ShapeString(const std::vector<int64_t>& shape);

// INVALID_ARGUMENT naming the field `name` when `t` is not of shape `want`
// or holds a byte count its shape does not.
absl::Status ExpectShape(absl::string_view name, const HostTensor& t,
                         const std::vector<int64_t>& want);
// INVALID_ARGUMENT naming `name` when `t` is not an integer tensor.
absl::Status ExpectInteger(absl::string_view name, const HostTensor& t);

// Pads dimension `dim` on the right to `new_len`; every new element is the
// bit pattern of `fill` converted to the element type (0 for floats).
absl::StatusOr<HostTensor> PadDim(const HostTensor& t, size_t dim, int64_t new_len, int64_t fill);

// Elements [begin, end) of dimension `dim`.
absl::StatusOr<HostTensor> SliceDim(const HostTensor& t, size_t dim, int64_t begin, int64_t end);

// Concatenation along `dim`; every other dimension must agree.
absl::StatusOr<HostTensor> ConcatDim(const std::vector<HostTensor>& parts, size_t dim);

}  // namespace ringattn::batch

#endif  // RINGATTN_SERVER_BATCH_HOST_TENSOR_H_
