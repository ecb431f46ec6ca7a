#include "proto/wire/tensor_stream.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ringattn::wire {

size_t WireDTypeSize(const std::string& dtype) {
  if (dtype == "FP32" || dtype == "INT32") return 4;
  if (dtype == "BF16" || dtype == "FP16") return 2;
  if (dtype == "INT64") return 8;
  if (dtype == "BOOL") return 1;
  return 0;
}

PieceWriter::PieceWriter(const std::string& name, const std::string& dtype,
                         const std::vector<int64_t>& shape,
                         std::function<bool(attention::v1::TensorChunk&)> emit)
    : emit_(std::move(emit)) {
  chunk_.set_name(name);
  chunk_.set_dtype(dtype);
  for (int64_t d : shape) chunk_.add_shape(d);
}

bool PieceWriter::Flush() {
  const size_t n = chunk_.data().size();
  attention::v1::TensorChunk piece;
  piece.set_name(chunk_.name());
  piece.set_dtype(chunk_.dtype());
  *piece.mutable_shape() = chunk_.shape();
  piece.set_offset(offset_);
  piece.mutable_data()->swap(*chunk_.mutable_data());  // Moves the bytes, no copy.
  ok_ = emit_(piece);
  emitted_ = true;
  offset_ += n;
  return ok_;
}

bool PieceWriter::Append(std::span<const std::byte> run) {
  const auto* p = reinterpret_cast<const char*>(run.data());
  size_t left = run.size();
  while (ok_ && left > 0) {
    std::string* data = chunk_.mutable_data();
    if (data->empty()) data->reserve(kChunkBytes);
    const size_t n = std::min(left, kChunkBytes - data->size());
    data->append(p, n);
    p += n;
    left -= n;
    if (data->size() == kChunkBytes) Flush();
  }
  return ok_;
}

bool PieceWriter::Append(std::string&& run) {
  std::string* data = chunk_.mutable_data();
  if (!ok_ || !data->empty() || run.size() > kChunkBytes) {
    return Append(std::as_bytes(std::span(run.data(), run.size())));
  }
  data->swap(run);
  if (data->size() == kChunkBytes) Flush();
  return ok_;
}

bool PieceWriter::Finish() {
  if (ok_ && (!chunk_.data().empty() || !emitted_)) Flush();
  return ok_;
}

void SplitTensor(const std::string& name, const std::string& dtype,
                 const std::vector<int64_t>& shape, std::span<const std::byte> data,
                 absl::FunctionRef<bool(attention::v1::TensorChunk&)> emit) {
  PieceWriter writer(name, dtype, shape, emit);
  writer.Append(data);
  writer.Finish();
}

void TensorAssembler::Expect(const std::string& name, const std::string& dtype,
                             std::vector<int64_t> shape, bool required, bool keep) {
  Slot& slot = slots_[name];
  slot.required = required;
  slot.keep = keep;
  SetLayout(slot, dtype, std::move(shape));
}

void TensorAssembler::ExpectOneOf(const std::string& name, std::vector<std::string> dtypes,
                                  std::vector<std::vector<int64_t>> shapes, bool required) {
  Slot& slot = slots_[name];
  slot.required = required;
  slot.dtypes = std::move(dtypes);
  slot.shapes = std::move(shapes);
  // Until a piece picks one, the first choice stands (an absent required
  // tensor is reported with it).
  SetLayout(slot, slot.dtypes.empty() ? "" : slot.dtypes[0],
            slot.shapes.empty() ? std::vector<int64_t>{} : slot.shapes[0]);
}

void TensorAssembler::SetLayout(Slot& slot, const std::string& dtype, std::vector<int64_t> shape) {
  slot.dtype = dtype;
  slot.shape = std::move(shape);
  // A byte count past 64 bits saturates rather than wrap to a small size that
  // a short stream would complete.
  slot.bytes = WireDTypeSize(dtype);
  for (int64_t d : slot.shape) {
    const auto n = static_cast<uint64_t>(std::max<int64_t>(d, 0));
    if (__builtin_mul_overflow(slot.bytes, n, &slot.bytes)) {
      slot.bytes = std::numeric_limits<uint64_t>::max();
    }
  }
}

absl::Status TensorAssembler::Add(const attention::v1::TensorChunk& chunk) {
  auto it = slots_.find(chunk.name());
  if (it == slots_.end()) {
    return absl::InvalidArgumentError(absl::StrCat("unexpected tensor '", chunk.name(), "'"));
  }
  Slot& slot = it->second;
  const std::vector<int64_t> shape(chunk.shape().begin(), chunk.shape().end());
  if (!slot.started && !slot.dtypes.empty()) {
    if (std::find(slot.dtypes.begin(), slot.dtypes.end(), chunk.dtype()) == slot.dtypes.end()) {
      return absl::InvalidArgumentError(absl::StrCat(chunk.name(), ".dtype is '", chunk.dtype(),
                                                     "', expected one of ",
                                                     absl::StrJoin(slot.dtypes, ", ")));
    }
    if (std::find(slot.shapes.begin(), slot.shapes.end(), shape) == slot.shapes.end()) {
      std::vector<std::string> shapes;
      for (const auto& s : slot.shapes)
        shapes.push_back(absl::StrCat("[", absl::StrJoin(s, ","), "]"));
      return absl::InvalidArgumentError(absl::StrCat(chunk.name(), ".shape is [",
                                                     absl::StrJoin(shape, ","), "], expected ",
                                                     absl::StrJoin(shapes, " or ")));
    }
    SetLayout(slot, chunk.dtype(), shape);
  }
  if (chunk.dtype() != slot.dtype) {
    return absl::InvalidArgumentError(
        absl::StrCat(chunk.name(), ".dtype is '", chunk.dtype(), "', expected ", slot.dtype));
  }
  if (shape != slot.shape) {
    return absl::InvalidArgumentError(absl::StrCat(chunk.name(), ".shape is [",
                                                   absl::StrJoin(shape, ","), "], expected [",
                                                   absl::StrJoin(slot.shape, ","), "]"));
  }
  // Pieces arrive in order: this one starts where the last one ended.
  if (chunk.offset() != slot.received) {
    return absl::InvalidArgumentError(absl::StrCat(chunk.name(), " piece at byte ", chunk.offset(),
                                                   " is out of order (expected ", slot.received,
                                                   ")"));
  }
  if (slot.received + chunk.data().size() > slot.bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(chunk.name(), " has more than the ", slot.bytes, " bytes its shape holds"));
  }
  if (total_ + chunk.data().size() > max_total_bytes_) {
    return absl::ResourceExhaustedError(absl::StrCat("tensors of this call exceed the limit of ",
                                                     max_total_bytes_, " bytes at '", chunk.name(),
                                                     "'"));
  }
  // Sized up front only when the whole tensor fits in what the limit still
  // allows; one that does not is refused before it completes.
  if (!slot.started && slot.keep && slot.bytes <= max_total_bytes_ - total_) {
    slot.data.reserve(slot.bytes);
  }
  slot.started = true;
  if (slot.keep) {
    const auto* p = reinterpret_cast<const std::byte*>(chunk.data().data());
    slot.data.insert(slot.data.end(), p, p + chunk.data().size());
  }
  slot.received += chunk.data().size();
  total_ += chunk.data().size();
  return absl::OkStatus();
}

absl::Status TensorAssembler::AddWhole(const std::string& name, std::vector<std::byte> data) {
  auto it = slots_.find(name);
  if (it == slots_.end()) {
    return absl::InvalidArgumentError(absl::StrCat("unexpected tensor '", name, "'"));
  }
  Slot& slot = it->second;
  if (slot.started) return absl::InvalidArgumentError(absl::StrCat(name, " was sent twice"));
  if (slot.bytes == std::numeric_limits<uint64_t>::max() ||
      slot.bytes > max_total_bytes_ - total_) {
    return absl::ResourceExhaustedError(absl::StrCat("tensors of this call exceed the limit of ",
                                                     max_total_bytes_, " bytes at '", name, "'"));
  }
  if (slot.keep && data.size() != slot.bytes) {
    return absl::InternalError(
        absl::StrCat(name, ": ", data.size(), " bytes where ", slot.bytes, " are due"));
  }
  slot.started = true;
  if (slot.keep) slot.data = std::move(data);
  slot.received = slot.bytes;
  total_ += slot.bytes;
  return absl::OkStatus();
}

std::optional<uint64_t> TensorAssembler::ExpectedBytes(const std::string& name) const {
  auto it = slots_.find(name);
  if (it == slots_.end() || it->second.bytes == std::numeric_limits<uint64_t>::max()) {
    return std::nullopt;
  }
  return it->second.bytes;
}

absl::Status TensorAssembler::Finish() {
  for (const auto& [name, slot] : slots_) {
    if (!slot.started && !slot.required) continue;
    if (slot.received != slot.bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " is incomplete: got ", slot.received, " of ", slot.bytes, " bytes"));
    }
  }
  return absl::OkStatus();
}

bool TensorAssembler::Has(const std::string& name) const {
  auto it = slots_.find(name);
  return it != slots_.end() && it->second.started;
}

std::vector<std::byte> TensorAssembler::Take(const std::string& name) {
  return std::move(slots_[name].data);
}

const std::string& TensorAssembler::DTypeOf(const std::string& name) const {
  return slots_.at(name).dtype;
}

const std::vector<int64_t>& TensorAssembler::ShapeOf(const std::string& name) const {
  return slots_.at(name).shape;
}

}  // namespace ringattn::wire
