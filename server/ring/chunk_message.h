#ifndef RINGATTN_SERVER_RING_CHUNK_MESSAGE_H_
#define RINGATTN_SERVER_RING_CHUNK_MESSAGE_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "kernels/chunk_args.h"
#include "server/ring/ring_attention.h"

namespace ringattn::ring {

// One K/V chunk with its metadata as a single message buffer:
//   [ K | V | doc | vision | padding ], each part 8-byte aligned.
// Every rank derives the same layout from the shapes, so nothing but the
// bytes travel. Each part holds the shard in the order it was packed in; the
// ring packs segment-major shards, so each segment is a dense block.
class ChunkLayout {
 public:
  explicit ChunkLayout(const ShardRef& shard);

  size_t size() const { return size_; }

  // Copies the shard's own K, V and metadata into a new message buffer.
  std::vector<std::byte> Pack(const ShardRef& shard) const;
  // The same into `msg` (host memory of size() bytes, zeroed: the parts'
  // alignment gaps are not written).
  void PackInto(const ShardRef& shard, std::span<std::byte> msg) const;

  // Views of a message buffer as kernel arguments. start: global position of
  // the chunk's first token.
  kernels::TensorRef K(std::span<const std::byte> msg) const;
  kernels::TensorRef V(std::span<const std::byte> msg) const;
  kernels::TokenMetaRef Meta(std::span<const std::byte> msg, int64_t start) const;

  // Views of one segment of a message packed from a shard in segment-major
  // order (segment_order.h): the owner's local positions [local, local +
  // len), whose first is at global position `start`.
  kernels::TensorRef K(std::span<const std::byte> msg, int64_t local, int64_t len) const;
  kernels::TensorRef V(std::span<const std::byte> msg, int64_t local, int64_t len) const;
  kernels::TokenMetaRef Meta(std::span<const std::byte> msg, int64_t local, int64_t len,
                             int64_t start) const;
  // The same views of a segment-major shard's own tensors, where they lie:
  // what its message would hold, without packing one.
  kernels::TensorRef K(const ShardRef& shard, int64_t local, int64_t len) const;
  kernels::TensorRef V(const ShardRef& shard, int64_t local, int64_t len) const;
  kernels::TokenMetaRef Meta(const ShardRef& shard, int64_t local, int64_t len,
                             int64_t start) const;

 private:
  // The segment at local positions [local, local + len) of segment-major
  // metadata: its [B, len] block.
  kernels::TokenMetaRef Segment(const kernels::TokenMetaRef& all, int64_t local, int64_t len) const;

  kernels::DType dtype_;
  std::array<int64_t, 4> kv_shape_;
  size_t kv_bytes_ = 0;
  size_t tokens_ = 0;  // B * L
  size_t v_at_ = 0, doc_at_ = 0, vision_at_ = 0, padding_at_ = 0, size_ = 0;
};

}  // namespace ringattn::ring

#endif  // RINGATTN_SERVER_RING_CHUNK_MESSAGE_H_
