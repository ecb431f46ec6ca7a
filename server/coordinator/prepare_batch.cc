#include "server/coordinator/prepare_batch.h"

#include <algorithm>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/status_macros.h"
#include "proto/wire/tensor_stream.h"
#include "server/batch/batch_prep.h"
#include "server/batch/host_tensor.h"

namespace ringattn::coordinator {
namespace {

using attention::v1::PrepareBatchRequest;
using attention::v1::PrepareBatchResponse;
using attention::v1::TensorChunk;

constexpr int kMaxCp = 4096;
constexpr int64_t kMaxDim = int64_t{1} << 31;

// What each input of a PrepareBatch stream may be.
struct InputKind {
  std::vector<std::string> dtypes;
  std::vector<size_t> ranks;
};

const std::map<std::string, InputKind>& Inputs() {
  static const auto* inputs = new std::map<std::string, InputKind>{
      {"input_ids", {{"INT32", "INT64"}, {2}}},
      {"inputs_embeds", {{"FP32", "BF16", "FP16"}, {3}}},
      {"labels", {{"INT32", "INT64"}, {2}}},
      {"loss_mask", {{"BOOL", "INT32", "INT64", "FP32", "BF16", "FP16"}, {2}}},
      {"position_ids", {{"INT32", "INT64"}, {2, 3}}},
      {"attention_mask", {{"BOOL", "INT32", "INT64", "FP32", "BF16", "FP16"}, {2, 4}}},
      {"mm_token_type_ids", {{"INT32", "INT64"}, {2}}},
      {"packed_seq_ids", {{"INT32", "INT64"}, {2}}},
  };
  return *inputs;
}

// The first piece of input `chunk.name()` declares its dtype and shape:
// checked against what the input may be before anything is sized by it.
absl::Status Declare(const TensorChunk& chunk, wire::TensorAssembler& assembler) {
  const std::string& name = chunk.name();
  auto it = Inputs().find(name);
  if (it == Inputs().end()) {
    std::vector<std::string> names;
    for (const auto& [n, kind] : Inputs()) names.push_back(n);
    return absl::InvalidArgumentError(absl::StrCat(
        "unexpected tensor '", name, "'; PrepareBatch takes ", absl::StrJoin(names, ", ")));
  }
  const InputKind& kind = it->second;
  const std::vector<int64_t> shape(chunk.shape().begin(), chunk.shape().end());
  if (std::find(kind.ranks.begin(), kind.ranks.end(), shape.size()) == kind.ranks.end()) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, " has ", shape.size(), " dimensions; expected ", absl::StrJoin(kind.ranks, " or ")));
  }
  for (int64_t d : shape) {
    if (d < 1 || d > kMaxDim) {
      return absl::InvalidArgumentError(absl::StrCat(name, ".shape ", batch::ShapeString(shape),
                                                     ": every dimension must be in [1, 2^31]"));
    }
  }
  if (std::find(kind.dtypes.begin(), kind.dtypes.end(), chunk.dtype()) == kind.dtypes.end()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ".dtype is '", chunk.dtype(),
                                                   "', expected one of ",
                                                   absl::StrJoin(kind.dtypes, ", ")));
  }
  assembler.Expect(name, chunk.dtype(), shape, false);
  return absl::OkStatus();
}

// Writes `t` as the pieces of tensor `name`. CANCELLED when the client left.
absl::Status Emit(PrepareBatchStream& stream, const std::string& name, const batch::HostTensor& t) {
  bool ok = true;
  wire::SplitTensor(name, std::string(batch::ElemName(t.type)), t.shape, t.data,
                    [&](TensorChunk& chunk) {
                      PrepareBatchResponse resp;
                      *resp.mutable_chunk() = std::move(chunk);
                      ok = stream.Write(resp);
                      return ok;
                    });
  return ok ? absl::OkStatus() : absl::CancelledError("the client went away");
}

// Every tensor of `b`, named with `prefix`.
absl::Status EmitBatch(PrepareBatchStream& stream, const std::string& prefix,
                       const batch::PreparedBatch& b) {
  const std::pair<const char*, const std::optional<batch::HostTensor>*> optional[] = {
      {"input_ids", &b.input_ids},
      {"inputs_embeds", &b.inputs_embeds},
      {"labels", &b.labels},
      {"loss_mask", &b.loss_mask},
      {"mm_token_type_ids", &b.mm_token_type_ids}};
  for (const auto& [name, t] : optional) {
    if (t->has_value()) RINGATTN_RETURN_IF_ERROR(Emit(stream, prefix + name, **t));
  }
  const std::pair<const char*, const batch::HostTensor*> always[] = {
      {"position_ids", &b.position_ids},
      {"padding_mask", &b.padding_mask},
      {"doc_ids", &b.doc_ids},
      {"vision_groups", &b.vision_groups}};
  for (const auto& [name, t] : always) RINGATTN_RETURN_IF_ERROR(Emit(stream, prefix + name, *t));
  return absl::OkStatus();
}

}  // namespace

absl::Status RunPrepareBatch(PrepareBatchStream& stream, int ring_cp, uint64_t max_call_bytes) {
  PrepareBatchRequest req;
  if (!stream.Read(&req) || !req.has_header()) {
    return absl::InvalidArgumentError("a PrepareBatch stream must start with its header");
  }
  const attention::v1::PrepareBatchHeader header = req.header();
  const int cp = header.cp() == 0 ? ring_cp : header.cp();
  if (cp < 1 || cp > kMaxCp) {
    return absl::InvalidArgumentError(
        absl::StrCat("cp must be 0 (the ring's) or in [1, ", kMaxCp, "], got ", header.cp()));
  }
  wire::TensorAssembler assembler(max_call_bytes);
  while (stream.Read(&req)) {
    if (!req.has_chunk()) {
      return absl::InvalidArgumentError("a PrepareBatch stream has one header, then tensors");
    }
    if (!assembler.Has(req.chunk().name()) && req.chunk().offset() == 0) {
      RINGATTN_RETURN_IF_ERROR(Declare(req.chunk(), assembler));
    }
    RINGATTN_RETURN_IF_ERROR(assembler.Add(req.chunk()));
  }
  RINGATTN_RETURN_IF_ERROR(assembler.Finish());

  auto take = [&](const char* name) -> std::optional<batch::HostTensor> {
    if (!assembler.Has(name)) return std::nullopt;
    return batch::HostTensor{*batch::ParseElemType(assembler.DTypeOf(name)),
                             assembler.ShapeOf(name), assembler.Take(name)};
  };
  batch::BatchInputs in{.input_ids = take("input_ids"),
                        .inputs_embeds = take("inputs_embeds"),
                        .attention_mask = take("attention_mask"),
                        .position_ids = take("position_ids"),
                        .labels = take("labels"),
                        .loss_mask = take("loss_mask"),
                        .packed_seq_ids = take("packed_seq_ids"),
                        .mm_token_type_ids = take("mm_token_type_ids"),
                        .pad_token_id = header.pad_token_id()};
  if (in.input_ids && in.input_ids->type == batch::ElemType::kI32 &&
      (in.pad_token_id < std::numeric_limits<int32_t>::min() ||
       in.pad_token_id > std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError(
        absl::StrCat("pad_token_id ", in.pad_token_id, " does not fit the INT32 input_ids"));
  }
  RINGATTN_ASSIGN_OR_RETURN(const batch::PreparedBatch prepared, batch::PrepareBatch(in, cp));

  PrepareBatchResponse resp;
  attention::v1::PreparedBatchInfo* info = resp.mutable_info();
  info->set_batch(prepared.batch);
  info->set_seq_len(prepared.seq_len);
  info->set_padded_len(prepared.padded_len);
  info->set_cp(cp);
  info->set_shard_len(prepared.padded_len / cp);
  if (!stream.Write(resp)) return absl::CancelledError("the client went away");
  RINGATTN_RETURN_IF_ERROR(EmitBatch(stream, "", prepared));
  if (header.include_shards()) {
    for (int r = 0; r < cp; ++r) {
      RINGATTN_ASSIGN_OR_RETURN(const batch::PreparedBatch shard, batch::ShardFor(prepared, r));
      RINGATTN_RETURN_IF_ERROR(EmitBatch(stream, absl::StrCat("rank", r, "/"), shard));
    }
  }
  return absl::OkStatus();
}

}  // namespace ringattn::coordinator
