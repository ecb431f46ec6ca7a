#include "server/coordinator/shard_reader.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "proto/wire/tensor_stream.h"

namespace ringattn::coordinator {

ShardReader::ShardReader(RankCall& rank, std::vector<ExpectedTensor> expected)
    : rank_(rank), expected_(std::move(expected)) {
  for (const ExpectedTensor& t : expected_) {
    uint64_t n = wire::WireDTypeSize(t.dtype);
    for (int64_t d : t.shape) n *= static_cast<uint64_t>(d);
    bytes_.push_back(n);
  }
}

absl::Status ShardReader::Start() {
  // A rank with nothing to answer (it wrote every output into a region):
  // done once its stream ended well.
  if (expected_.empty()) return rank_.Finish();
  return Fill();
}

absl::Status ShardReader::Fill() {
  if (at_ < size_) return absl::OkStatus();
  // The tensor being read this far in the rank's stream (the order is fixed).
  while (tensor_ < expected_.size() && consumed_ == bytes_[tensor_]) {
    ++tensor_;
    consumed_ = 0;
  }
  if (tensor_ == expected_.size()) {
    return absl::InternalError(absl::StrCat("rank ", rank_.rank(), " was read past its answer"));
  }
  const ExpectedTensor& want = expected_[tensor_];
  std::optional<attention::v1::TensorChunk> next = rank_.Next();
  if (!next) {
    absl::Status s = rank_.Finish();
    if (!s.ok()) return s;
    return absl::InternalError(absl::StrCat("rank ", rank_.rank(), " ended its answer with ",
                                            consumed_, " of ", bytes_[tensor_], " bytes of ",
                                            want.name));
  }
  const std::vector<int64_t> shape(next->shape().begin(), next->shape().end());
  if (next->name() != want.name || next->dtype() != want.dtype || shape != want.shape ||
      next->offset() != consumed_ || next->data().size() > bytes_[tensor_] - consumed_ ||
      next->data().empty()) {
    return absl::InternalError(absl::StrCat("rank ", rank_.rank(), " answered badly: piece of '",
                                            next->name(), "' at byte ", next->offset(), " where ",
                                            want.name, " at byte ", consumed_, " was due"));
  }
  piece_ = std::move(*next);
  size_ = piece_.data().size();
  at_ = 0;
  return absl::OkStatus();
}

absl::Status ShardReader::Read(uint64_t n, Sink sink) {
  while (n > 0) {
    if (absl::Status s = Fill(); !s.ok()) return s;
    const uint64_t left_in_tensor = bytes_[tensor_] - consumed_;
    const auto take = std::min<uint64_t>({n, size_ - at_, left_in_tensor});
    const auto* p = reinterpret_cast<const std::byte*>(piece_.data().data()) + at_;
    const bool whole = at_ == 0 && take == size_;
    if (!sink({p, static_cast<size_t>(take)}, whole ? piece_.mutable_data() : nullptr)) {
      return absl::CancelledError("the receiver left");
    }
    at_ += take;
    consumed_ += take;
    n -= take;
  }
  return absl::OkStatus();
}

absl::Status ShardReader::Skip(uint64_t n) {
  return Read(n, [](std::span<const std::byte>, std::string*) { return true; });
}

}  // namespace ringattn::coordinator
