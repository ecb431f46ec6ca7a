#include "server/batch/hf_metadata.h"

#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/convert.h"

namespace ringattn::batch {
namespace {

using ::testing::HasSubstr;

HostTensor Ints(ElemType type, std::vector<int64_t> shape, const std::vector<int64_t>& values) {
  HostTensor t = HostTensor::Zeros(type, std::move(shape));
  for (size_t i = 0; i < values.size(); ++i) t.SetInt(static_cast<int64_t>(i), values[i]);
  return t;
}

std::vector<int64_t> Values(const HostTensor& t) {
  std::vector<int64_t> v;
  for (int64_t i = 0; i < t.NumElements(); ++i) v.push_back(t.IntAt(i));
  return v;
}

// A [1, 1, S, S] BOOL mask from rows of '1' (attend) and '.' (masked).
HostTensor Dense(const std::vector<std::string>& rows) {
  const auto S = static_cast<int64_t>(rows.size());
  HostTensor t = HostTensor::Zeros(ElemType::kU8, {1, 1, S, S});
  for (int64_t q = 0; q < S; ++q) {
    for (int64_t k = 0; k < S; ++k) t.SetInt(q * S + k, rows[q][k] == '1' ? 1 : 0);
  }
  return t;
}

// The same mask as an additive FP32 one: 0 attends, the dtype's lowest masks.
HostTensor Additive(const HostTensor& bool_mask) {
  HostTensor t = HostTensor::Zeros(ElemType::kF32, bool_mask.shape);
  std::vector<float> v(bool_mask.NumElements());
  for (int64_t i = 0; i < bool_mask.NumElements(); ++i) {
    v[i] = bool_mask.IntAt(i) != 0 ? 0.0f : std::numeric_limits<float>::lowest();
  }
  std::memcpy(t.data.data(), v.data(), t.data.size());
  return t;
}

kernels::MaskRule Causal() { return kernels::MaskRule{}; }
kernels::MaskRule SlidingWithImages(int64_t window) {
  return {.causal = true, .windowed = true, .window = window, .vision_bidirectional = true};
}

// Two packed documents (0..2, 3..5), one padding token: what HF builds for
// packed sequences, block-diagonal and causal.
const std::vector<std::string> kPacked = {
    "1......",  //
    "11.....",  //
    "111....",  //
    "...1...",  //
    "...11..",  //
    "...111.",  //
    ".......",  // padding
};

TEST(HfMetadataTest, TwoDimensionalMaskZerosArePadding) {
  for (ElemType type : {ElemType::kI64, ElemType::kI32, ElemType::kU8, ElemType::kF32}) {
    absl::StatusOr<HostTensor> p =
        PaddingFromAttentionMask(Ints(type, {2, 3}, {1, 1, 0, 0, 1, 1}), 2, 3);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_EQ(Values(*p), (std::vector<int64_t>{0, 0, 1, 1, 0, 0}));
  }
}

TEST(HfMetadataTest, FourDimensionalMaskPaddingIsItsMaskedDiagonalBoolOrAdditive) {
  for (const HostTensor& mask : {Dense(kPacked), Additive(Dense(kPacked))}) {
    absl::StatusOr<HostTensor> p = PaddingFromAttentionMask(mask, 1, 7);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_EQ(Values(*p), (std::vector<int64_t>{0, 0, 0, 0, 0, 0, 1}));
  }
}

TEST(HfMetadataTest, AdditiveMaskWithABiasIsRejectedNamingTheElement) {
  HostTensor mask = Additive(Dense(kPacked));
  const float bias = -0.5f;
  std::memcpy(mask.data.data() + (4 * 7 + 3) * 4, &bias, 4);
  absl::StatusOr<AttentionMetadata> m = DeriveMetadata(1, 7, 8, {.attention_mask = mask});
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(m.status().message(), HasSubstr("attention_mask[0,0,4,3] is -0.5"));
}

TEST(HfMetadataTest, VisionGroupsAreRunsOfImageOrVideoTokensPerRowPaddingExcluded) {
  const HostTensor types = Ints(ElemType::kI64, {2, 6},
                                {0, 1, 1, 0, 2, 1,  //
                                 1, 1, 0, 0, 1, 1});
  const HostTensor padding = Ints(ElemType::kU8, {2, 6},
                                  {0, 0, 0, 0, 0, 0,  //
                                   0, 0, 0, 0, 1, 1});
  absl::StatusOr<HostTensor> g = VisionGroupsFromTokenTypes(types, padding);
  ASSERT_TRUE(g.ok()) << g.status();
  // Row 0: a video token right after an image is the same run.
  EXPECT_EQ(Values(*g), (std::vector<int64_t>{-1, 0, 0, -1, 1, 1,  //
                                              0, 0, -1, -1, -1, -1}));
  EXPECT_THAT(
      VisionGroupsFromTokenTypes(Ints(ElemType::kI32, {2, 6}, {0, 3}), padding).status().message(),
      HasSubstr("mm_token_type_ids[0,1] is 3"));
}

TEST(HfMetadataTest, DocumentsOfAPackedMaskAreItsDiagonalBlocks) {
  const HostTensor mask = Dense(kPacked);
  absl::StatusOr<AttentionMetadata> m = DeriveMetadata(1, 7, 8, {.attention_mask = mask});
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(Values(m->doc_ids), (std::vector<int64_t>{1, 1, 1, 2, 2, 2, 0, 0}));
  EXPECT_EQ(Values(m->padding_mask), (std::vector<int64_t>{0, 0, 0, 0, 0, 0, 1, 1}));
  EXPECT_TRUE(CheckDenseMask(mask, *m, Causal()).ok());
  // The additive form of the same mask says the same.
  absl::StatusOr<AttentionMetadata> a = DeriveMetadata(1, 7, 8, {.attention_mask = Additive(mask)});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(Values(a->doc_ids), Values(m->doc_ids));
  EXPECT_TRUE(CheckDenseMask(Additive(mask), *a, Causal()).ok());
}

TEST(HfMetadataTest, PackedSeqIdsAreTheDocumentsAndMustNotBeNegative) {
  absl::StatusOr<AttentionMetadata> m =
      DeriveMetadata(1, 4, 4, {.packed_seq_ids = Ints(ElemType::kI64, {1, 4}, {1, 1, 2, 0})});
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(Values(m->doc_ids), (std::vector<int64_t>{1, 1, 2, 0}));
  absl::StatusOr<AttentionMetadata> bad =
      DeriveMetadata(1, 4, 4, {.packed_seq_ids = Ints(ElemType::kI64, {1, 4}, {1, -1, 2, 0})});
  EXPECT_THAT(bad.status().message(), HasSubstr("packed_seq_ids[0,1] is -1"));
  absl::StatusOr<AttentionMetadata> shape =
      DeriveMetadata(1, 4, 4, {.packed_seq_ids = Ints(ElemType::kI64, {1, 3}, {1, 1, 2})});
  EXPECT_THAT(shape.status().message(), HasSubstr("packed_seq_ids has shape [1,3]"));
}

// Every Hugging Face input gives what its explicit counterpart does, and
// both together must agree.
TEST(HfMetadataTest, HfInputsMatchTheExplicitOnesAndConflictsAreErrors) {
  const int64_t B = 1, S = 6, P = 8;
  const HostTensor attention = Ints(ElemType::kI64, {B, S}, {1, 1, 1, 1, 1, 0});
  const HostTensor types = Ints(ElemType::kI64, {B, S}, {0, 1, 1, 0, 0, 0});
  const HostTensor packed = Ints(ElemType::kI32, {B, S}, {1, 1, 1, 2, 2, 0});
  const HostTensor padding = Ints(ElemType::kU8, {B, S}, {0, 0, 0, 0, 0, 1});
  const HostTensor groups = Ints(ElemType::kI32, {B, S}, {-1, 0, 0, -1, -1, -1});
  const HostTensor docs = Ints(ElemType::kI32, {B, S}, {1, 1, 1, 2, 2, 0});
  absl::StatusOr<AttentionMetadata> hf = DeriveMetadata(
      B, S, P, {.attention_mask = attention, .mm_token_type_ids = types, .packed_seq_ids = packed});
  absl::StatusOr<AttentionMetadata> explicit_ =
      DeriveMetadata(B, S, P, {.padding_mask = padding, .doc_ids = docs, .vision_groups = groups});
  absl::StatusOr<AttentionMetadata> both = DeriveMetadata(B, S, P,
                                                          {.padding_mask = padding,
                                                           .doc_ids = docs,
                                                           .vision_groups = groups,
                                                           .attention_mask = attention,
                                                           .mm_token_type_ids = types,
                                                           .packed_seq_ids = packed});
  for (const auto* m : {&hf, &explicit_, &both}) {
    ASSERT_TRUE(m->ok()) << m->status();
    EXPECT_EQ(Values((*m)->padding_mask), (std::vector<int64_t>{0, 0, 0, 0, 0, 1, 1, 1}));
    EXPECT_EQ(Values((*m)->doc_ids), (std::vector<int64_t>{1, 1, 1, 2, 2, 0, 0, 0}));
    EXPECT_EQ(Values((*m)->vision_groups), (std::vector<int64_t>{-1, 0, 0, -1, -1, -1, -1, -1}));
    EXPECT_TRUE((*m)->has_vision);
  }

  HostTensor other_padding = padding;
  other_padding.SetInt(4, 1);
  absl::StatusOr<AttentionMetadata> p =
      DeriveMetadata(B, S, P, {.padding_mask = other_padding, .attention_mask = attention});
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(p.status().message(), HasSubstr("padding_mask and attention_mask disagree at [0,4]"));
  HostTensor other_docs = docs;
  other_docs.SetInt(3, 1);
  absl::StatusOr<AttentionMetadata> d =
      DeriveMetadata(B, S, P, {.doc_ids = other_docs, .packed_seq_ids = packed});
  EXPECT_THAT(d.status().message(), HasSubstr("doc_ids and packed_seq_ids disagree at [0,3]"));
  HostTensor other_groups = groups;
  other_groups.SetInt(0, 0);
  absl::StatusOr<AttentionMetadata> g =
      DeriveMetadata(B, S, P, {.vision_groups = other_groups, .mm_token_type_ids = types});
  EXPECT_THAT(g.status().message(),
              HasSubstr("vision_groups and mm_token_type_ids disagree at [0,0]"));
}

// A sliding layer (window 2) with one bidirectional image block (tokens
// 1..3) in the first of two documents; token 6 is padding.
TEST(HfMetadataTest, DenseMaskOfSlidingDocumentsAndImagesIsAcceptedAndOneFlipIsNamed) {
  const std::vector<std::string> rows = {
      "1......",  //
      "1111...",  // image 1..3 sees itself whole
      ".111...",  //
      ".111...",  //
      "....1..",  // document 2
      "....11.",  //
      ".......",  // padding
  };
  const HostTensor types = Ints(ElemType::kI32, {1, 7}, {0, 1, 1, 1, 0, 0, 0});
  const HostTensor packed = Ints(ElemType::kI32, {1, 7}, {1, 1, 1, 1, 2, 2, 0});
  for (bool with_docs : {false, true}) {
    MetadataInputs in{.attention_mask = Dense(rows), .mm_token_type_ids = types};
    if (with_docs) in.packed_seq_ids = packed;
    absl::StatusOr<AttentionMetadata> m = DeriveMetadata(1, 7, 8, in);
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(Values(m->doc_ids), (std::vector<int64_t>{1, 1, 1, 1, 2, 2, 0, 0}));
    EXPECT_TRUE(CheckDenseMask(Dense(rows), *m, SlidingWithImages(2)).ok());
    // The same mask is not a full causal layer's (token 3 would see 0).
    EXPECT_THAT(CheckDenseMask(Dense(rows), *m, Causal()).message(),
                HasSubstr("attention_mask[0,0,1,2] attends but the layer's mask"));
  }
  std::vector<std::string> flipped = rows;
  flipped[5][3] = '1';  // Across documents.
  absl::StatusOr<AttentionMetadata> m = DeriveMetadata(
      1, 7, 8,
      {.attention_mask = Dense(flipped), .mm_token_type_ids = types, .packed_seq_ids = packed});
  ASSERT_TRUE(m.ok()) << m.status();
  const absl::Status s = CheckDenseMask(Dense(flipped), *m, SlidingWithImages(2));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("attention_mask[0,0,5,3] attends"));
  // Padding rows are not compared: the service answers them with zeros.
  std::vector<std::string> pad_row = rows;
  pad_row[6] = "111111.";
  absl::StatusOr<AttentionMetadata> p =
      DeriveMetadata(1, 7, 8, {.attention_mask = Dense(pad_row), .mm_token_type_ids = types});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(CheckDenseMask(Dense(pad_row), *p, SlidingWithImages(2)).ok());
}

TEST(HfMetadataTest, BidirectionalBlockWithoutTokenTypesSaysWhatIsMissing) {
  const std::vector<std::string> rows = {"11", "11"};
  absl::StatusOr<AttentionMetadata> m = DeriveMetadata(1, 2, 2, {.attention_mask = Dense(rows)});
  ASSERT_TRUE(m.ok()) << m.status();
  const absl::Status s = CheckDenseMask(Dense(rows), *m, SlidingWithImages(8));
  EXPECT_THAT(s.message(), HasSubstr("attention_mask[0,0,0,1] attends"));
  EXPECT_THAT(s.message(), HasSubstr("send mm_token_type_ids"));
  // Encoder-style (non-causal) layers do see the future.
  kernels::MaskRule encoder;
  encoder.causal = false;
  EXPECT_TRUE(CheckDenseMask(Dense(rows), *m, encoder).ok());
}

}  // namespace
}  // namespace ringattn::batch
