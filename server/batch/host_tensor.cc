#include "server/batch/host_tensor.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/convert.h"
#include "kernels/dtype.h"

namespace ringattn::batch {
namespace {

// Splits the shape around `dim`: outer elements before it, inner after.
void Split(const HostTensor& t, size_t dim, int64_t& outer, int64_t& inner) {
  outer = 1;
  inner = 1;
  for (size_t i = 0; i < dim; ++i) outer *= t.shape[i];
  for (size_t i = dim + 1; i < t.shape.size(); ++i) inner *= t.shape[i];
}

absl::Status CheckDim(const HostTensor& t, size_t dim) {
  if (dim >= t.shape.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("dimension ", dim, " out of range for a rank-", t.shape.size(), " tensor"));
  }
  return absl::OkStatus();
}

}  // namespace

size_t ElemSize(ElemType type) {
  switch (type) {
    case ElemType::kI64:
      return 8;
    case ElemType::kI32:
    case ElemType::kF32:
      return 4;
    case ElemType::kBF16:
    case ElemType::kF16:
      return 2;
    case ElemType::kU8:
      return 1;
  }
  return 1;
}

absl::string_view ElemName(ElemType type) {
  switch (type) {
    case ElemType::kI64:
      return "INT64";
    case ElemType::kI32:
      return "INT32";
    case ElemType::kU8:
      return "BOOL";
    case ElemType::kF32:
      return kernels::DTypeName(kernels::DType::kF32);
    case ElemType::kBF16:
      return kernels::DTypeName(kernels::DType::kBF16);
    case ElemType::kF16:
      return kernels::DTypeName(kernels::DType::kF16);
  }
  return "UNKNOWN";
}

std::optional<ElemType> ParseElemType(absl::string_view name) {
  for (ElemType t : {ElemType::kI64, ElemType::kI32, ElemType::kU8, ElemType::kF32, ElemType::kBF16,
                     ElemType::kF16}) {
    if (ElemName(t) == name) return t;
  }
  return std::nullopt;
}

bool IsIntegerType(ElemType t) {
  return t == ElemType::kI64 || t == ElemType::kI32 || t == ElemType::kU8;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

absl::Status ExpectShape(absl::string_view name, const HostTensor& t,
                         const std::vector<int64_t>& want) {
  if (t.shape != want) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " has shape ", ShapeString(t.shape), ", expected ", ShapeString(want)));
  }
  if (t.data.size() != static_cast<size_t>(t.NumElements()) * ElemSize(t.type)) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " holds ", t.data.size(), " bytes, which does not match its shape"));
  }
  return absl::OkStatus();
}

absl::Status ExpectInteger(absl::string_view name, const HostTensor& t) {
  if (!IsIntegerType(t.type)) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " must be an integer tensor, got ", ElemName(t.type)));
  }
  return absl::OkStatus();
}

HostTensor HostTensor::Zeros(ElemType type, std::vector<int64_t> shape) {
  HostTensor t;
  t.type = type;
  t.shape = std::move(shape);
  t.data.assign(static_cast<size_t>(t.NumElements()) * ElemSize(type), std::byte{0});
  return t;
}

int64_t HostTensor::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t HostTensor::IntAt(int64_t i) const {
  const std::byte* p = data.data() + i * static_cast<int64_t>(ElemSize(type));
  switch (type) {
    case ElemType::kI64: {
      int64_t v;
      std::memcpy(&v, p, 8);
      return v;
    }
    case ElemType::kI32: {
      int32_t v;
      std::memcpy(&v, p, 4);
      return v;
    }
    case ElemType::kU8:
      return static_cast<int64_t>(static_cast<uint8_t>(*p));
    default:
      return static_cast<int64_t>(FloatAt(i));
  }
}

double HostTensor::FloatAt(int64_t i) const {
  const std::byte* p = data.data() + i * static_cast<int64_t>(ElemSize(type));
  uint16_t h;
  switch (type) {
    case ElemType::kF32: {
      float v;
      std::memcpy(&v, p, 4);
      return v;
    }
    case ElemType::kBF16:
      std::memcpy(&h, p, 2);
      return kernels::Bf16ToF32(h);
    case ElemType::kF16:
      std::memcpy(&h, p, 2);
      return kernels::F16ToF32(h);
    default:
      return static_cast<double>(IntAt(i));
  }
}

void HostTensor::SetInt(int64_t i, int64_t value) {
  std::byte* p = data.data() + i * static_cast<int64_t>(ElemSize(type));
  switch (type) {
    case ElemType::kI64:
      std::memcpy(p, &value, 8);
      return;
    case ElemType::kI32: {
      const auto v = static_cast<int32_t>(value);
      std::memcpy(p, &v, 4);
      return;
    }
    case ElemType::kU8:
      *p = static_cast<std::byte>(value);
      return;
    case ElemType::kF32: {
      const auto v = static_cast<float>(value);
      std::memcpy(p, &v, 4);
      return;
    }
    case ElemType::kBF16: {
      const uint16_t v = kernels::F32ToBf16(static_cast<float>(value));
      std::memcpy(p, &v, 2);
      return;
    }
    case ElemType::kF16: {
      const uint16_t v = kernels::F32ToF16(static_cast<float>(value));
      std::memcpy(p, &v, 2);
      return;
    }
  }
}

absl::StatusOr<HostTensor> PadDim(const HostTensor& t, size_t dim, int64_t new_len, int64_t fill) {
  if (absl::Status s = CheckDim(t, dim); !s.ok()) return s;
  const int64_t old_len = t.shape[dim];
  if (new_len < old_len) {
    return absl::InvalidArgumentError(absl::StrCat("cannot pad length ", old_len, " to ", new_len));
  }
  std::vector<int64_t> shape = t.shape;
  shape[dim] = new_len;
  HostTensor out = HostTensor::Zeros(t.type, shape);
  int64_t outer, inner;
  Split(t, dim, outer, inner);
  const size_t es = ElemSize(t.type);
  for (int64_t o = 0; o < outer; ++o) {
    std::memcpy(out.data.data() + o * new_len * inner * es,
                t.data.data() + o * old_len * inner * es, old_len * inner * es);
    for (int64_t i = old_len * inner; i < new_len * inner; ++i) {
      out.SetInt(o * new_len * inner + i, fill);
    }
  }
  return out;
}

absl::StatusOr<HostTensor> SliceDim(const HostTensor& t, size_t dim, int64_t begin, int64_t end) {
  if (absl::Status s = CheckDim(t, dim); !s.ok()) return s;
  const int64_t len = t.shape[dim];
  if (begin < 0 || end > len || begin > end) {
    return absl::InvalidArgumentError(
        absl::StrCat("slice [", begin, ", ", end, ") out of range for length ", len));
  }
  std::vector<int64_t> shape = t.shape;
  shape[dim] = end - begin;
  HostTensor out = HostTensor::Zeros(t.type, shape);
  int64_t outer, inner;
  Split(t, dim, outer, inner);
  const size_t es = ElemSize(t.type);
  for (int64_t o = 0; o < outer; ++o) {
    std::memcpy(out.data.data() + o * (end - begin) * inner * es,
                t.data.data() + (o * len + begin) * inner * es, (end - begin) * inner * es);
  }
  return out;
}

absl::StatusOr<HostTensor> ConcatDim(const std::vector<HostTensor>& parts, size_t dim) {
  if (parts.empty()) return absl::InvalidArgumentError("nothing to concatenate");
  if (absl::Status s = CheckDim(parts[0], dim); !s.ok()) return s;
  std::vector<int64_t> shape = parts[0].shape;
  shape[dim] = 0;
  for (const HostTensor& p : parts) {
    std::vector<int64_t> a = p.shape, b = parts[0].shape;
    if (a.size() != b.size() || p.type != parts[0].type) {
      return absl::InvalidArgumentError("concatenated parts differ in rank or type");
    }
    a[dim] = b[dim] = 0;
    if (a != b) return absl::InvalidArgumentError("concatenated parts differ in shape");
    shape[dim] += p.shape[dim];
  }
  HostTensor out = HostTensor::Zeros(parts[0].type, shape);
  int64_t outer, inner;
  Split(out, dim, outer, inner);
  const size_t es = ElemSize(out.type);
  for (int64_t o = 0; o < outer; ++o) {
    int64_t at = 0;
    for (const HostTensor& p : parts) {
      const int64_t len = p.shape[dim];
      std::memcpy(out.data.data() + (o * shape[dim] + at) * inner * es,
                  p.data.data() + o * len * inner * es, len * inner * es);
      at += len;
    }
  }
  return out;
}

}  // namespace ringattn::batch
