#include "server/ring/chunk_message.h"

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/dtype.h"

namespace ringattn::ring {
namespace {

using kernels::DType;

size_t Align8(size_t n) { return (n + 7) / 8 * 8; }

// One rank's shard with distinct, recognizable bytes in every part; owns
// what `ref` views.
struct OwnedShard {
  std::vector<std::byte> q, k, v;
  std::vector<int32_t> doc, vision;
  std::vector<uint8_t> padding;
  ShardRef ref;
};

OwnedShard MakeShard(DType dtype, int64_t b, int64_t h, int64_t hkv, int64_t l, int64_t d,
                     int seed) {
  OwnedShard s;
  const size_t width = kernels::DTypeSize(dtype);
  const size_t tokens = static_cast<size_t>(b * l);
  s.q.resize(static_cast<size_t>(b * h * l * d) * width);
  s.k.resize(static_cast<size_t>(b * hkv * l * d) * width);
  s.v.resize(s.k.size());
  for (size_t i = 0; i < s.q.size(); ++i) s.q[i] = static_cast<std::byte>(i * 3 + seed);
  for (size_t i = 0; i < s.k.size(); ++i) s.k[i] = static_cast<std::byte>(i * 5 + seed + 1);
  for (size_t i = 0; i < s.v.size(); ++i) s.v[i] = static_cast<std::byte>(i * 7 + seed + 2);
  for (size_t i = 0; i < tokens; ++i) {
    s.doc.push_back(static_cast<int32_t>(i / 2 + 1 + seed * 100));
    s.vision.push_back(i % 3 == 0 ? -1 : static_cast<int32_t>(i + seed * 1000));
    s.padding.push_back(static_cast<uint8_t>((i + seed) % 2));
  }
  s.ref.shape = {dtype, b, h, hkv, l, l, d};
  s.ref.q = s.q;
  s.ref.k = s.k;
  s.ref.v = s.v;
  s.ref.doc = s.doc;
  s.ref.vision = s.vision;
  s.ref.padding = s.padding;
  return s;
}

std::vector<std::byte> BytesOf(const void* p, size_t n) {
  const auto* b = static_cast<const std::byte*>(p);
  return std::vector<std::byte>(b, b + n);
}

template <typename T>
std::vector<T> Copy(std::span<const T> s) {
  return std::vector<T>(s.begin(), s.end());
}

// Expects the views of `msg` under `layout` to hold exactly `want`'s K, V
// and metadata, shaped as `want` says.
void ExpectViewsHold(const ChunkLayout& layout, std::span<const std::byte> msg,
                     const OwnedShard& want, int64_t start) {
  const ShardRef& s = want.ref;
  const std::array<int64_t, 4> kv_shape = {s.shape.batch, s.shape.kv_heads, s.shape.q_len,
                                           s.shape.head_dim};
  const auto k = layout.K(msg);
  EXPECT_EQ(k.dtype, s.shape.dtype);
  EXPECT_EQ(k.shape, kv_shape);
  ASSERT_EQ(k.size_bytes, want.k.size());
  EXPECT_EQ(BytesOf(k.data, k.size_bytes), want.k);
  const auto v = layout.V(msg);
  EXPECT_EQ(v.dtype, s.shape.dtype);
  EXPECT_EQ(v.shape, kv_shape);
  ASSERT_EQ(v.size_bytes, want.v.size());
  EXPECT_EQ(BytesOf(v.data, v.size_bytes), want.v);
  const auto meta = layout.Meta(msg, start);
  EXPECT_EQ(meta.start, start);
  EXPECT_EQ(Copy(meta.doc), want.doc);
  EXPECT_EQ(Copy(meta.vision), want.vision);
  EXPECT_EQ(Copy(meta.padding), want.padding);
}

struct LayoutCase {
  std::string name;
  DType dtype;
  int64_t b, h, hkv, l, d;
};

class ChunkLayoutTest : public ::testing::TestWithParam<LayoutCase> {};

TEST_P(ChunkLayoutTest, SizeIsEveryPartRoundedUpToEightBytes) {
  const LayoutCase& c = GetParam();
  const OwnedShard s = MakeShard(c.dtype, c.b, c.h, c.hkv, c.l, c.d, 1);
  const size_t kv = static_cast<size_t>(c.b * c.hkv * c.l * c.d) * kernels::DTypeSize(c.dtype);
  const size_t tokens = static_cast<size_t>(c.b * c.l);
  const ChunkLayout layout(s.ref);
  EXPECT_EQ(layout.size(), 2 * Align8(kv) + 2 * Align8(4 * tokens) + Align8(tokens));
  EXPECT_EQ(layout.size() % 8, 0u);
  EXPECT_EQ(layout.Pack(s.ref).size(), layout.size());
}

TEST_P(ChunkLayoutTest, PackedMessageViewsAsTheShardsOwnTensors) {
  const LayoutCase& c = GetParam();
  const OwnedShard s = MakeShard(c.dtype, c.b, c.h, c.hkv, c.l, c.d, 2);
  const ChunkLayout layout(s.ref);
  const std::vector<std::byte> msg = layout.Pack(s.ref);
  ExpectViewsHold(layout, msg, s, /*start=*/c.l * 3);
}

// What the ring does: a rank packs its chunk, the bytes travel, and the
// receiver views them with the layout of its own shard (same shapes,
// different data).
TEST_P(ChunkLayoutTest, ReceiverViewsASendersMessageWithItsOwnLayout) {
  const LayoutCase& c = GetParam();
  const OwnedShard sender = MakeShard(c.dtype, c.b, c.h, c.hkv, c.l, c.d, 3);
  const OwnedShard receiver = MakeShard(c.dtype, c.b, c.h, c.hkv, c.l, c.d, 4);
  ASSERT_NE(sender.k, receiver.k);
  ASSERT_NE(sender.doc, receiver.doc);
  const ChunkLayout send_layout(sender.ref);
  const ChunkLayout recv_layout(receiver.ref);
  ASSERT_EQ(send_layout.size(), recv_layout.size());
  const std::vector<std::byte> sent = send_layout.Pack(sender.ref);
  std::vector<std::byte> received(recv_layout.size());  // As a transport receives into it.
  std::memcpy(received.data(), sent.data(), sent.size());
  ExpectViewsHold(recv_layout, received, sender, /*start=*/0);
}

// Views lie inside the message, never overlap, start at 8-byte offsets, and
// the int32 metadata is aligned for its type.
TEST_P(ChunkLayoutTest, PartsAreDisjointAlignedAndInsideTheMessage) {
  const LayoutCase& c = GetParam();
  const OwnedShard s = MakeShard(c.dtype, c.b, c.h, c.hkv, c.l, c.d, 5);
  const ChunkLayout layout(s.ref);
  const std::vector<std::byte> msg = layout.Pack(s.ref);
  const auto* base = msg.data();
  const auto k = layout.K(msg);
  const auto v = layout.V(msg);
  const auto meta = layout.Meta(msg, 0);
  const std::vector<std::pair<size_t, size_t>> parts = {
      {static_cast<const std::byte*>(k.data) - base, k.size_bytes},
      {static_cast<const std::byte*>(v.data) - base, v.size_bytes},
      {reinterpret_cast<const std::byte*>(meta.doc.data()) - base, meta.doc.size_bytes()},
      {reinterpret_cast<const std::byte*>(meta.vision.data()) - base, meta.vision.size_bytes()},
      {reinterpret_cast<const std::byte*>(meta.padding.data()) - base, meta.padding.size_bytes()},
  };
  size_t end = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    const auto [at, size] = parts[i];
    EXPECT_EQ(at % 8, 0u) << "part " << i;
    EXPECT_GE(at, end) << "part " << i << " overlaps the one before";
    end = at + size;
    EXPECT_LE(end, msg.size()) << "part " << i;
  }
  EXPECT_EQ(reinterpret_cast<uintptr_t>(meta.doc.data()) % alignof(int32_t), 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(meta.vision.data()) % alignof(int32_t), 0u);
}

// The gaps between parts are zero: a message's bytes depend only on the
// shard, so nothing uninitialized travels.
TEST_P(ChunkLayoutTest, GapsBetweenPartsAreZeroAndPackingIsDeterministic) {
  const LayoutCase& c = GetParam();
  const OwnedShard s = MakeShard(c.dtype, c.b, c.h, c.hkv, c.l, c.d, 6);
  const ChunkLayout layout(s.ref);
  const std::vector<std::byte> a = layout.Pack(s.ref);
  const std::vector<std::byte> b = layout.Pack(s.ref);
  EXPECT_EQ(a, b);
  std::vector<bool> covered(a.size(), false);
  const auto mark = [&](const void* p, size_t n) {
    const size_t at = static_cast<const std::byte*>(p) - a.data();
    for (size_t i = at; i < at + n && i < a.size(); ++i) covered[i] = true;
  };
  const auto k = layout.K(a);
  const auto v = layout.V(a);
  const auto meta = layout.Meta(a, 0);
  mark(k.data, k.size_bytes);
  mark(v.data, v.size_bytes);
  mark(meta.doc.data(), meta.doc.size_bytes());
  mark(meta.vision.data(), meta.vision.size_bytes());
  mark(meta.padding.data(), meta.padding.size_bytes());
  for (size_t i = 0; i < a.size(); ++i) {
    if (!covered[i]) {
      EXPECT_EQ(a[i], std::byte{0}) << "gap byte " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, ChunkLayoutTest,
                         ::testing::Values(
                             // Every part a multiple of 8 bytes: no gaps.
                             LayoutCase{"F32_B2_H4_Hkv2_L8_D16", DType::kF32, 2, 4, 2, 8, 16},
                             // K/V of 6 bytes, 3 tokens: every part needs padding to 8.
                             LayoutCase{"BF16_B1_H1_Hkv1_L3_D1", DType::kBF16, 1, 1, 1, 3, 1},
                             LayoutCase{"F16_B3_H2_Hkv1_L5_D3", DType::kF16, 3, 2, 1, 5, 3},
                             LayoutCase{"F32_B1_H8_Hkv8_L1_D7", DType::kF32, 1, 8, 8, 1, 7},
                             LayoutCase{"BF16_B2_H8_Hkv2_L33_D64", DType::kBF16, 2, 8, 2, 33, 64}),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace ringattn::ring
