#ifndef RINGATTN_CLIENT_ATTENTION_CLIENT_H_
#define RINGATTN_CLIENT_ATTENTION_CLIENT_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "attention/v1/attention_service.grpc.pb.h"
#include "proto/wire/security.h"

// C++ client of the coordinator's public API. Tensors are raw row-major
// bytes of the stated dtype; the client splits and reassembles them.
// Glossary: B batch, H heads, Hkv kv heads, S sequence, D head dim.

namespace ringattn::client {

// A tensor the caller holds, sent as it lies: a wire dtype (FP32, BF16,
// FP16, INT32, INT64, BOOL), the shape, and row-major little-endian bytes.
struct TensorView {
  std::string dtype;
  std::vector<int64_t> shape;
  std::span<const std::byte> data;
};

// A tensor received.
struct Tensor {
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<std::byte> data;
};

// A tensor in a region registered with AttentionClient::RegisterRegion:
// its bytes at [offset, offset + byte_size), exactly the tensor's size.
struct RegionRef {
  std::string region;
  uint64_t offset = 0;
  uint64_t byte_size = 0;
};

struct ForwardInputs {
  std::string dtype = "FP32";  // FP32, BF16, FP16
  int64_t batch = 1, heads = 1, kv_heads = 1, seq_len = 1, head_dim = 1;
  std::span<const std::byte> q;                           // [B, H, S, D]
  std::span<const std::byte> k;                           // [B, Hkv, S, D]
  std::span<const std::byte> v;                           // [B, Hkv, S, D]
  std::optional<std::span<const int32_t>> doc_ids;        // [B, S]
  std::optional<std::span<const int32_t>> vision_groups;  // [B, S]
  std::optional<std::span<const uint8_t>> padding_mask;   // [B, S], 1 = padding
  // The same metadata as a Hugging Face batch has it, derived by the
  // coordinator (docs/batch.md); given with its explicit counterpart, both
  // must agree.
  std::optional<TensorView> attention_mask;     // [B, S] 1 = real, or [B, 1, S, S]
  std::optional<TensorView> mm_token_type_ids;  // [B, S] INT32/INT64, 0 text 1 image 2 video
  std::optional<TensorView> packed_seq_ids;     // [B, S] INT32/INT64, 1-based, 0 = padding
  attention::v1::LayerConfig layer;
  // Inputs named in regions instead of streamed (their spans above are not
  // read): any of q, k, v, doc_ids, vision_groups, padding_mask.
  std::map<std::string, RegionRef> input_regions;
  // Outputs written into regions instead of streamed back: out, lse (left
  // empty in ForwardOutputs).
  std::map<std::string, RegionRef> output_regions;
  // AUTO: the coordinator picks the shard layout per layer; else forced.
  attention::v1::ShardLayout layout = attention::v1::SHARD_LAYOUT_AUTO;
};

// A backward's tensors in regions: dout, and any of dq, dk, dv (left empty
// in BackwardOutputs).
struct BackwardRegions {
  std::optional<RegionRef> dout;
  std::map<std::string, RegionRef> outputs;
};

// A training batch for PrepareBatch (SPEC §1), by input name: input_ids
// [B, S] or inputs_embeds [B, S, E]; labels and/or loss_mask [B, S];
// optional position_ids [B, S] or [3, B, S], attention_mask,
// mm_token_type_ids, packed_seq_ids.
struct PrepareBatchInputs {
  std::map<std::string, TensorView> tensors;
  int64_t pad_token_id = 0;
  int cp = 0;  // 0: the ring's.
  bool include_shards = false;
};

struct PrepareBatchOutputs {
  attention::v1::PreparedBatchInfo info;
  // Padded to P: the inputs given, plus position_ids, padding_mask, doc_ids
  // and vision_groups.
  std::map<std::string, Tensor> tensors;
  // With include_shards: rank r's slices [r*L, (r+1)*L) of the same.
  std::vector<std::map<std::string, Tensor>> shards;
};

struct ForwardOutputs {
  attention::v1::SessionInfo session;
  std::vector<std::byte> out;  // [B, H, S, D] in the input dtype
  std::vector<float> lse;      // [B, H, S]
  attention::v1::CallMetrics metrics;
};

struct BackwardOutputs {
  std::vector<float> dq;  // [B, H, S, D]
  std::vector<float> dk;  // [B, Hkv, S, D]
  std::vector<float> dv;  // [B, Hkv, S, D]
  int64_t kv_heads = 0;   // Hkv: the caller's, or the session's when it passed 0.
  attention::v1::CallMetrics metrics;
};

class AttentionClient {
 public:
  explicit AttentionClient(std::shared_ptr<grpc::Channel> channel);
  // Insecure channel to host:port with message limits for 4 MiB pieces.
  static std::unique_ptr<AttentionClient> Connect(const std::string& address);
  // The same with TLS, a client certificate and a token as `security` says;
  // an error when one of its files cannot be used.
  static absl::StatusOr<std::unique_ptr<AttentionClient>> Connect(
      const std::string& address, const wire::ChannelSecurity& security);

  absl::StatusOr<ForwardOutputs> Forward(const ForwardInputs& in,
                                         absl::Duration timeout = absl::Minutes(10));
  // dout: [B, H, S, D] in the dtype of the session's forward. shapes.kv_heads
  // > 0 is checked by the service against the session before any work
  // (INVALID_ARGUMENT); 0 takes the session's from the answer.
  absl::StatusOr<BackwardOutputs> Backward(const ForwardInputs& shapes, const std::string& handle,
                                           std::span<const std::byte> dout,
                                           absl::Duration timeout = absl::Minutes(10));
  // The padded batch and its per-rank shards, so a loss and RoPE agree with
  // what the ring computes; runs no attention.
  absl::StatusOr<PrepareBatchOutputs> PrepareBatch(const PrepareBatchInputs& in,
                                                   absl::Duration timeout = absl::Minutes(10));

  // The same with tensors in regions (dout not read when regions.dout is set).
  absl::StatusOr<BackwardOutputs> Backward(const ForwardInputs& shapes, const std::string& handle,
                                           std::span<const std::byte> dout,
                                           const BackwardRegions& regions,
                                           absl::Duration timeout = absl::Minutes(10));

  // Shared-memory regions of this client's identity (see the service's
  // RegisterRegion): `shm_name` must be an object on the service's host.
  absl::Status RegisterRegion(const std::string& name, const std::string& shm_name,
                              uint64_t byte_size);
  absl::Status UnregisterRegion(const std::string& name);
  absl::StatusOr<attention::v1::ListRegionsResponse> ListRegions();
  absl::Status Release(const std::string& handle);
  absl::StatusOr<attention::v1::ClusterStatusResponse> Status();

  // Cancels every Forward and Backward of this client in flight (from
  // another thread); they return CANCELLED. The service frees what they held.
  void CancelAll();

 private:
  // Keeps a call's context in in_flight_ while it runs, for CancelAll.
  class Tracked {
   public:
    Tracked(AttentionClient& c, grpc::ClientContext& ctx);
    ~Tracked();
    Tracked(const Tracked&) = delete;
    Tracked& operator=(const Tracked&) = delete;

   private:
    AttentionClient& c_;
    grpc::ClientContext& ctx_;
  };

  std::unique_ptr<attention::v1::AttentionService::Stub> stub_;
  std::mutex mu_;
  std::set<grpc::ClientContext*> in_flight_;  // Guarded by mu_.
};

}  // namespace ringattn::client

#endif  // RINGATTN_CLIENT_ATTENTION_CLIENT_H_
