#include "server/coordinator/shard_io.h"

#include <algorithm>
#include <span>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"
#include "proto/wire/dtype.h"

namespace ringattn::coordinator {

using attention::v1::TensorChunk;
using attention::v1::TensorRef;

ShardedInput::ShardedInput(const std::string& name, kernels::DType dtype,
                           const std::vector<int64_t>& shape, const batch::ShardLayout& layout,
                           RankCalls& calls)
    : name_(name),
      layout_(layout),
      outer_(shape[0] * shape[1]),
      position_bytes_(shape[3] * static_cast<int64_t>(kernels::DTypeSize(dtype))),
      calls_(calls),
      router_(outer_, layout, position_bytes_),
      scan_(name, dtype, shape),
      direct_(calls.ranks.size(), false) {
  const std::vector<int64_t> shard = {shape[0], shape[1], layout.shard_len(), shape[3]};
  for (auto& rank : calls.ranks) {
    writers_.push_back(std::make_unique<wire::PieceWriter>(
        name, wire::DTypeName(dtype), shard,
        [r = rank.get()](TensorChunk& chunk) { return r->Send(std::move(chunk)); }));
  }
}

absl::Status ShardedInput::Add(std::string&& piece) {
  const auto bytes = std::as_bytes(std::span(piece.data(), piece.size()));
  RINGATTN_RETURN_IF_ERROR(scan_.Add(bytes));
  const bool sent = router_.Add(bytes, [&](int rank, std::span<const std::byte> run) {
    if (direct_[rank]) return true;
    // The router is done with `piece` once it hands it out whole.
    if (run.data() == bytes.data() && run.size() == bytes.size()) {
      return writers_[rank]->Append(std::move(piece));
    }
    return writers_[rank]->Append(run);
  });
  return sent ? absl::OkStatus() : absl::UnavailableError("a rank stopped taking inputs");
}

absl::Status ShardedInput::AddRegion(const RegionTensor& tensor, const std::vector<bool>& direct) {
  bool streamed = false;
  for (size_t r = 0; r < calls_.ranks.size(); ++r) {
    if (!direct[r]) {
      streamed = true;
      continue;
    }
    direct_[r] = true;
    if (!calls_.ranks[r]->SendRegion(
            SliceOf(name_, tensor, outer_, position_bytes_, layout_, static_cast<int>(r)))) {
      return absl::UnavailableError("a rank stopped taking inputs");
    }
  }
  // The ranks that read their slices check them themselves (before they
  // answer the seal): with every rank reading, no byte of the tensor passes
  // through here. Otherwise it is read in pieces, as a stream would bring
  // them, each checked and sent on to the ranks that have theirs streamed.
  if (!streamed) return absl::OkStatus();
  constexpr uint64_t kPiece = wire::kChunkBytes;
  for (uint64_t at = 0; at < tensor.bytes;) {
    const uint64_t n = std::min(kPiece, tensor.bytes - at);
    std::string piece(n, '\0');
    RINGATTN_RETURN_IF_ERROR(tensor.region->file.Read(
        tensor.offset + at, std::as_writable_bytes(std::span(piece.data(), piece.size()))));
    RINGATTN_RETURN_IF_ERROR(Add(std::move(piece)));
    at += n;
  }
  return absl::OkStatus();
}

absl::Status ShardedInput::Finish() {
  for (size_t r = 0; r < writers_.size(); ++r) {
    if (!direct_[r] && !writers_[r]->Finish()) {
      return absl::UnavailableError("a rank stopped taking inputs");
    }
  }
  return absl::OkStatus();
}

worker::v1::RegionSlice SliceOf(const std::string& name, const RegionTensor& tensor, int64_t outer,
                                int64_t position_bytes, const batch::ShardLayout& layout,
                                int rank) {
  worker::v1::RegionSlice slice;
  slice.set_name(name);
  slice.set_shm_name(tensor.region->file.name());
  slice.set_device(tensor.region->file.device());
  slice.set_inode(tensor.region->file.inode());
  slice.set_base(tensor.offset);
  slice.set_rows(static_cast<uint64_t>(outer));
  slice.set_row_bytes(static_cast<uint64_t>(layout.seq_len() * position_bytes));
  slice.set_shard_row_bytes(static_cast<uint64_t>(layout.shard_len() * position_bytes));
  // One run per segment, cut at S: the rest of the shard is padding.
  int64_t local = 0;
  for (const batch::Segment& seg : layout.Segments(rank)) {
    const int64_t real = std::clamp<int64_t>(layout.seq_len() - seg.start, 0, seg.len);
    if (real > 0) {
      auto* run = slice.add_runs();
      run->set_tensor_offset(static_cast<uint64_t>(seg.start * position_bytes));
      run->set_shard_offset(static_cast<uint64_t>(local * position_bytes));
      run->set_bytes(static_cast<uint64_t>(real * position_bytes));
    }
    local += seg.len;
  }
  return slice;
}

void ClientInputs::Shard(const std::string& name, kernels::DType dtype,
                         const std::vector<int64_t>& shape, const batch::ShardLayout& layout,
                         RankCalls& calls) {
  assembler_.Expect(name, wire::DTypeName(dtype), shape, true, /*keep=*/false);
  sharded_.try_emplace(name, name, dtype, shape, layout, calls);
}

void ClientInputs::Keep(const std::string& name, const std::string& dtype,
                        std::vector<int64_t> shape) {
  assembler_.Expect(name, dtype, std::move(shape), false);
}

void ClientInputs::KeepOneOf(const std::string& name, std::vector<std::string> dtypes,
                             std::vector<std::vector<int64_t>> shapes) {
  assembler_.ExpectOneOf(name, std::move(dtypes), std::move(shapes), false);
}

absl::Status ClientInputs::Add(TensorChunk& chunk) {
  RINGATTN_RETURN_IF_ERROR(assembler_.Add(chunk));
  auto it = sharded_.find(chunk.name());
  if (it == sharded_.end()) return absl::OkStatus();
  return it->second.Add(std::move(*chunk.mutable_data()));
}

absl::Status ClientInputs::Finish() {
  RINGATTN_RETURN_IF_ERROR(assembler_.Finish());
  for (auto& [name, input] : sharded_) RINGATTN_RETURN_IF_ERROR(input.Finish());
  return absl::OkStatus();
}

absl::Status ClientInputs::AddRef(const TensorRef& ref) {
  if (regions_.table == nullptr) {
    return absl::FailedPreconditionError("this coordinator takes no shared-memory regions");
  }
  const std::optional<uint64_t> bytes = assembler_.ExpectedBytes(ref.name());
  if (!bytes)
    return absl::InvalidArgumentError(absl::StrCat("unexpected tensor '", ref.name(), "'"));
  RINGATTN_ASSIGN_OR_RETURN(const RegionTensor tensor,
                            regions_.table->Resolve(regions_.owner, ref, *bytes));
  auto it = sharded_.find(ref.name());
  if (it == sharded_.end()) {  // Kept whole (per-token metadata, small).
    std::vector<std::byte> data(tensor.bytes);
    RINGATTN_RETURN_IF_ERROR(tensor.region->file.Read(tensor.offset, data));
    return assembler_.AddWhole(ref.name(), std::move(data));
  }
  RINGATTN_RETURN_IF_ERROR(assembler_.AddWhole(ref.name()));
  return it->second.AddRegion(tensor, regions_.direct);
}

std::optional<std::vector<std::byte>> ClientInputs::Take(const std::string& name) {
  if (!assembler_.Has(name)) return std::nullopt;
  return assembler_.Take(name);
}

std::optional<batch::HostTensor> ClientInputs::TakeTensor(const std::string& name) {
  if (!assembler_.Has(name)) return std::nullopt;
  // Only dtypes HostTensor holds are ever expected.
  const std::optional<batch::ElemType> type = batch::ParseElemType(assembler_.DTypeOf(name));
  if (!type) return std::nullopt;
  return batch::HostTensor{*type, assembler_.ShapeOf(name), assembler_.Take(name)};
}

bool SendSlices(const std::string& name, const std::string& dtype, const batch::HostTensor& whole,
                const batch::ShardLayout& layout, RankCalls& calls) {
  const int64_t rows = whole.shape[0];
  const int64_t len = whole.shape[1];  // P
  const auto elem = static_cast<int64_t>(batch::ElemSize(whole.type));
  for (int r = 0; r < layout.cp(); ++r) {
    RankCall& rank = *calls.ranks[r];
    wire::PieceWriter writer(name, dtype, {rows, layout.shard_len()},
                             [&](TensorChunk& chunk) { return rank.Send(std::move(chunk)); });
    for (int64_t o = 0; o < rows; ++o) {
      for (const batch::Segment& s : layout.Segments(r)) {
        const std::byte* p = whole.data.data() + (o * len + s.start) * elem;
        if (!writer.Append({p, static_cast<size_t>(s.len * elem)})) return false;
      }
    }
    if (!writer.Finish()) return false;
  }
  return true;
}

absl::Status GatherAnswer(std::vector<ShardReader>& readers, const ExpectedTensor& shard,
                          const batch::ShardLayout& layout,
                          std::function<bool(TensorChunk&)> emit) {
  const int64_t outer = shard.shape[0] * shard.shape[1];
  int64_t inner = 1;
  for (size_t i = 3; i < shard.shape.size(); ++i) inner *= shard.shape[i];
  const auto row = static_cast<uint64_t>(inner) * wire::WireDTypeSize(shard.dtype);
  std::vector<int64_t> shape = shard.shape;
  shape[2] = layout.seq_len();
  bool client_ok = true;
  wire::PieceWriter writer(shard.name, shard.dtype, shape, [&](TensorChunk& chunk) {
    client_ok = emit(chunk);
    return client_ok;
  });
  const auto went_away = absl::CancelledError("the client went away");
  // Each row in global order: a layout's runs meet every rank's positions
  // in its local order, so every reader is read straight through.
  for (int64_t o = 0; o < outer; ++o) {
    for (const batch::Run& run : layout.Runs()) {
      ShardReader& reader = readers[run.rank];
      const int64_t rows = std::clamp<int64_t>(layout.seq_len() - run.start, 0, run.len);
      absl::Status s = absl::OkStatus();
      if (rows > 0) {
        s = reader.Read(static_cast<uint64_t>(rows) * row,
                        [&](std::span<const std::byte> piece, std::string* whole) {
                          return whole ? writer.Append(std::move(*whole)) : writer.Append(piece);
                        });
      }
      if (s.ok() && rows < run.len) {
        s = reader.Skip(static_cast<uint64_t>(run.len - rows) * row);
      }
      if (!s.ok()) return client_ok ? s : went_away;
    }
  }
  return writer.Finish() ? absl::OkStatus() : went_away;
}

}  // namespace ringattn::coordinator

namespace ringattn::coordinator {

absl::Status ScatterAnswer(std::vector<ShardReader>& readers, const ExpectedTensor& shard,
                           const batch::ShardLayout& layout, const RegionTensor& tensor,
                           const std::vector<bool>& direct) {
  const int64_t outer = shard.shape[0] * shard.shape[1];
  int64_t inner = 1;
  for (size_t i = 3; i < shard.shape.size(); ++i) inner *= shard.shape[i];
  const auto row = static_cast<uint64_t>(inner) * wire::WireDTypeSize(shard.dtype);
  const auto seq = static_cast<uint64_t>(layout.seq_len());
  // Row by row as the ranks send them, each reader in its local order.
  for (int64_t o = 0; o < outer; ++o) {
    for (size_t r = 0; r < readers.size(); ++r) {
      if (direct[r]) continue;
      for (const batch::Segment& seg : layout.Segments(static_cast<int>(r))) {
        const int64_t rows = std::clamp<int64_t>(layout.seq_len() - seg.start, 0, seg.len);
        uint64_t at = tensor.offset +
                      (static_cast<uint64_t>(o) * seq + static_cast<uint64_t>(seg.start)) * row;
        absl::Status wrote;
        absl::Status s = absl::OkStatus();
        if (rows > 0) {
          s = readers[r].Read(static_cast<uint64_t>(rows) * row,
                              [&](std::span<const std::byte> run, std::string*) {
                                wrote = tensor.region->file.Write(at, run);
                                at += run.size();
                                return wrote.ok();
                              });
        }
        if (!wrote.ok()) return wrote;
        if (s.ok() && rows < seg.len) {
          s = readers[r].Skip(static_cast<uint64_t>(seg.len - rows) * row);
        }
        if (!s.ok()) return s;
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace ringattn::coordinator
