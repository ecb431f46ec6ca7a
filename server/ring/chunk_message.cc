#include "server/ring/chunk_message.h"

#include <cstring>

namespace ringattn::ring {
namespace {

size_t Align8(size_t n) { return (n + 7) / 8 * 8; }

}  // namespace

ChunkLayout::ChunkLayout(const ShardRef& shard)
    : dtype_(shard.shape.dtype),
      kv_shape_{shard.shape.batch, shard.shape.kv_heads, shard.shape.q_len, shard.shape.head_dim},
      kv_bytes_(static_cast<size_t>(shard.shape.batch * shard.shape.kv_heads * shard.shape.q_len *
                                    shard.shape.head_dim) *
                kernels::DTypeSize(shard.shape.dtype)),
      tokens_(static_cast<size_t>(shard.shape.batch * shard.shape.q_len)) {
  v_at_ = Align8(kv_bytes_);
  doc_at_ = v_at_ + Align8(kv_bytes_);
  vision_at_ = doc_at_ + Align8(tokens_ * sizeof(int32_t));
  padding_at_ = vision_at_ + Align8(tokens_ * sizeof(int32_t));
  size_ = padding_at_ + Align8(tokens_);
}

std::vector<std::byte> ChunkLayout::Pack(const ShardRef& shard) const {
  std::vector<std::byte> msg(size_);
  PackInto(shard, msg);
  return msg;
}

void ChunkLayout::PackInto(const ShardRef& shard, std::span<std::byte> msg) const {
  std::memcpy(msg.data(), shard.k.data(), kv_bytes_);
  std::memcpy(msg.data() + v_at_, shard.v.data(), kv_bytes_);
  std::memcpy(msg.data() + doc_at_, shard.doc.data(), tokens_ * sizeof(int32_t));
  std::memcpy(msg.data() + vision_at_, shard.vision.data(), tokens_ * sizeof(int32_t));
  std::memcpy(msg.data() + padding_at_, shard.padding.data(), tokens_);
}

kernels::TensorRef ChunkLayout::K(std::span<const std::byte> msg) const {
  return {dtype_, kv_shape_, msg.data(), kv_bytes_};
}

kernels::TensorRef ChunkLayout::V(std::span<const std::byte> msg) const {
  return {dtype_, kv_shape_, msg.data() + v_at_, kv_bytes_};
}

kernels::TokenMetaRef ChunkLayout::Meta(std::span<const std::byte> msg, int64_t start) const {
  // The offsets are 8-byte aligned in a buffer from operator new, so the
  // int32 views are aligned.
  const auto* doc = reinterpret_cast<const int32_t*>(msg.data() + doc_at_);
  const auto* vision = reinterpret_cast<const int32_t*>(msg.data() + vision_at_);
  const auto* padding = reinterpret_cast<const uint8_t*>(msg.data() + padding_at_);
  return {std::span(doc, tokens_), std::span(vision, tokens_), std::span(padding, tokens_), start};
}

kernels::TensorRef ChunkLayout::K(std::span<const std::byte> msg, int64_t local,
                                  int64_t len) const {
  const size_t row = static_cast<size_t>(kv_shape_[3]) * kernels::DTypeSize(dtype_);
  const size_t outer = static_cast<size_t>(kv_shape_[0] * kv_shape_[1]);
  return {dtype_,
          {kv_shape_[0], kv_shape_[1], len, kv_shape_[3]},
          msg.data() + outer * static_cast<size_t>(local) * row,
          outer * static_cast<size_t>(len) * row};
}

kernels::TensorRef ChunkLayout::V(std::span<const std::byte> msg, int64_t local,
                                  int64_t len) const {
  return K(msg.subspan(v_at_), local, len);
}

kernels::TokenMetaRef ChunkLayout::Meta(std::span<const std::byte> msg, int64_t local, int64_t len,
                                        int64_t start) const {
  return Segment(Meta(msg, start), local, len);
}

kernels::TokenMetaRef ChunkLayout::Segment(const kernels::TokenMetaRef& all, int64_t local,
                                           int64_t len) const {
  const auto at = static_cast<size_t>(kv_shape_[0] * local);
  const auto n = static_cast<size_t>(kv_shape_[0] * len);
  return {all.doc.subspan(at, n), all.vision.subspan(at, n), all.padding.subspan(at, n), all.start};
}

kernels::TensorRef ChunkLayout::K(const ShardRef& shard, int64_t local, int64_t len) const {
  return K(shard.k, local, len);  // The message's K part begins the message.
}

kernels::TensorRef ChunkLayout::V(const ShardRef& shard, int64_t local, int64_t len) const {
  return K(shard.v, local, len);
}

kernels::TokenMetaRef ChunkLayout::Meta(const ShardRef& shard, int64_t local, int64_t len,
                                        int64_t start) const {
  return Segment({shard.doc, shard.vision, shard.padding, start}, local, len);
}

}  // namespace ringattn::ring
