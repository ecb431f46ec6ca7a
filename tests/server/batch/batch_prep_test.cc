#include "server/batch/batch_prep.h"

#include <vector>

#include "gtest/gtest.h"

namespace ringattn::batch {
namespace {

HostTensor Ids(int64_t B, int64_t S, int64_t first = 100) {
  std::vector<int64_t> v(B * S);
  for (int64_t i = 0; i < B * S; ++i) v[i] = first + i;
  return HostTensor::From(ElemType::kI64, {B, S}, v);
}

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

BatchInputs Basic(int64_t B = 1, int64_t S = 5) {
  BatchInputs in;
  in.input_ids = Ids(B, S);
  in.labels = Ids(B, S, 7);
  return in;
}

TEST(BatchPrepTest, PadsToTheNextMultipleOfTwiceCp) {
  EXPECT_EQ(PaddedLength(5, 2), 8);
  EXPECT_EQ(PaddedLength(8, 2), 8);  // Already a multiple: no padding.
  EXPECT_EQ(PaddedLength(1, 1), 2);
  EXPECT_EQ(PaddedLength(17, 4), 24);
  absl::StatusOr<PreparedBatch> p = PrepareBatch(Basic(1, 5), 2);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->padded_len, 8);
  EXPECT_EQ(p->input_ids->shape, (std::vector<int64_t>{1, 8}));
}

TEST(BatchPrepTest, TwoDimensionalAttentionMaskBecomesPaddingMask) {
  BatchInputs in = Basic(1, 4);
  in.attention_mask = Ints(ElemType::kI64, {1, 4}, {1, 1, 1, 0});
  absl::StatusOr<PreparedBatch> p = PrepareBatch(in, 1);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(Values(p->padding_mask), (std::vector<int64_t>{0, 0, 0, 1}));
}

TEST(BatchPrepTest, FourDimensionalMaskUsesItsDiagonal) {
  BatchInputs in = Basic(1, 3);
  // Causal [1,1,3,3] mask whose last token is padding (its diagonal is 0).
  in.attention_mask = Ints(ElemType::kU8, {1, 1, 3, 3}, {1, 0, 0, 1, 1, 0, 1, 1, 0});
  absl::StatusOr<PreparedBatch> p = PrepareBatch(in, 1);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(Values(p->padding_mask), (std::vector<int64_t>{0, 0, 1, 1}));
}

TEST(BatchPrepTest, ExactlyOnePrimaryTensor) {
  BatchInputs both = Basic();
  both.inputs_embeds = HostTensor::Zeros(ElemType::kF32, {1, 5, 3});
  const absl::Status s1 = PrepareBatch(both, 1).status();
  EXPECT_EQ(s1.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s1.message().find("not both"), absl::string_view::npos);
  BatchInputs neither = Basic();
  neither.input_ids.reset();
  const absl::Status s2 = PrepareBatch(neither, 1).status();
  EXPECT_EQ(s2.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s2.message().find("input_ids or inputs_embeds"), absl::string_view::npos);
}

TEST(BatchPrepTest, EmbeddingsDefineBatchAndSequenceAndPadWithZeros) {
  BatchInputs in;
  in.inputs_embeds = HostTensor::From<float>(ElemType::kF32, {1, 3, 2}, {1, 2, 3, 4, 5, 6});
  in.loss_mask = Ints(ElemType::kI64, {1, 3}, {1, 1, 1});
  absl::StatusOr<PreparedBatch> p = PrepareBatch(in, 1);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->inputs_embeds->shape, (std::vector<int64_t>{1, 4, 2}));
  EXPECT_EQ(p->inputs_embeds->ToVector<float>(), (std::vector<float>{1, 2, 3, 4, 5, 6, 0, 0}));
}

TEST(BatchPrepTest, PositionIdsInjectedAndContinuedThroughPadding) {
  absl::StatusOr<PreparedBatch> p = PrepareBatch(Basic(2, 3), 2);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(Values(p->position_ids), (std::vector<int64_t>{0, 1, 2, 3, 0, 1, 2, 3}));
}

TEST(BatchPrepTest, RopePositionIdsUseDimensionTwo) {
  BatchInputs in = Basic(1, 3);
  in.position_ids = Ints(ElemType::kI64, {3, 1, 3}, {0, 1, 2, 10, 11, 12, 5, 5, 9});
  absl::StatusOr<PreparedBatch> p = PrepareBatch(in, 2);  // P = 4
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->position_ids.shape, (std::vector<int64_t>{3, 1, 4}));
  EXPECT_EQ(Values(p->position_ids),
            (std::vector<int64_t>{0, 1, 2, 3, 10, 11, 12, 13, 5, 5, 9, 10}));
  // Sharding slices dimension 2 too.
  absl::StatusOr<PreparedBatch> s1 = ShardFor(*p, 1);
  ASSERT_TRUE(s1.ok());
  EXPECT_EQ(Values(s1->position_ids), (std::vector<int64_t>{2, 3, 12, 13, 9, 10}));
}

TEST(BatchPrepTest, LabelsFallBackToLossMaskAndNeitherIsAnError) {
  BatchInputs in = Basic();
  in.labels.reset();
  in.loss_mask = Ints(ElemType::kI64, {1, 5}, {1, 1, 0, 1, 1});
  absl::StatusOr<PreparedBatch> p = PrepareBatch(in, 1);
  ASSERT_TRUE(p.ok());
  EXPECT_FALSE(p->labels.has_value());
  EXPECT_EQ(Values(*p->loss_mask), (std::vector<int64_t>{1, 1, 0, 1, 1, 0}));
  in.loss_mask.reset();
  const absl::Status s = PrepareBatch(in, 1).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("labels"), absl::string_view::npos);
  EXPECT_NE(s.message().find("loss_mask"), absl::string_view::npos);
}

TEST(BatchPrepTest, DocumentIdsSynthesizedBeforePaddingAndKeptWhenPresent) {
  BatchInputs in = Basic(1, 5);
  in.attention_mask = Ints(ElemType::kI64, {1, 5}, {1, 1, 1, 1, 0});
  absl::StatusOr<PreparedBatch> p = PrepareBatch(in, 2);  // P = 8
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(Values(p->doc_ids), (std::vector<int64_t>{1, 1, 1, 1, 0, 0, 0, 0}));
  in.packed_seq_ids = Ints(ElemType::kI64, {1, 5}, {1, 1, 2, 2, 0});
  p = PrepareBatch(in, 2);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(Values(p->doc_ids), (std::vector<int64_t>{1, 1, 2, 2, 0, 0, 0, 0}));
}

TEST(BatchPrepTest, VisionGroupsAreRunsOnTheFullSequence) {
  BatchInputs in = Basic(2, 8);
  in.mm_token_type_ids =
      Ints(ElemType::kI64, {2, 8}, {0, 1, 1, 0, 2, 2, 1, 0, /*row 1*/ 1, 1, 0, 0, 0, 0, 2, 2});
  absl::StatusOr<PreparedBatch> p = PrepareBatch(in, 2);  // P = 8, L = 4
  ASSERT_TRUE(p.ok());
  // Image then video back to back form one run; numbering restarts per row.
  EXPECT_EQ(Values(p->vision_groups),
            (std::vector<int64_t>{-1, 0, 0, -1, 1, 1, 1, -1, 0, 0, -1, -1, -1, -1, 1, 1}));
  // Computed before sharding: rank 1's ids continue rank 0's numbering.
  absl::StatusOr<PreparedBatch> s1 = ShardFor(*p, 1);
  ASSERT_TRUE(s1.ok());
  EXPECT_EQ(Values(s1->vision_groups), (std::vector<int64_t>{1, 1, 1, -1, -1, -1, 1, 1}));
  in.mm_token_type_ids->SetInt(3, 7);
  EXPECT_EQ(PrepareBatch(in, 2).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(BatchPrepTest, EveryPadValue) {
  BatchInputs in = Basic(1, 3);
  in.pad_token_id = 99;
  in.loss_mask = Ints(ElemType::kI64, {1, 3}, {1, 1, 1});
  in.mm_token_type_ids = Ints(ElemType::kI64, {1, 3}, {1, 0, 0});
  absl::StatusOr<PreparedBatch> p = PrepareBatch(in, 2);  // P = 4
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->input_ids->IntAt(3), 99);
  EXPECT_EQ(p->labels->IntAt(3), -100);
  EXPECT_EQ(p->loss_mask->IntAt(3), 0);
  EXPECT_EQ(p->mm_token_type_ids->IntAt(3), 0);
  EXPECT_EQ(p->doc_ids.IntAt(3), 0);
  EXPECT_EQ(p->padding_mask.IntAt(3), 1);
  EXPECT_EQ(p->vision_groups.IntAt(3), -1);
  EXPECT_EQ(p->position_ids.IntAt(3), 3);
}

TEST(BatchPrepTest, ShardsAreContiguousSlicesAndReassembleExactly) {
  BatchInputs in = Basic(2, 13);
  in.mm_token_type_ids = HostTensor::Zeros(ElemType::kI64, {2, 13});
  const int cp = 4;
  absl::StatusOr<PreparedBatch> whole = PrepareBatch(in, cp);  // P = 16, L = 4
  ASSERT_TRUE(whole.ok());
  std::vector<PreparedBatch> shards;
  for (int r = 0; r < cp; ++r) {
    absl::StatusOr<PreparedBatch> s = ShardFor(*whole, r);
    ASSERT_TRUE(s.ok());
    EXPECT_EQ(s->input_ids->shape, (std::vector<int64_t>{2, 4}));
    EXPECT_EQ(s->input_ids->IntAt(0), whole->input_ids->IntAt(r * 4));
    EXPECT_EQ(s->input_ids->IntAt(4), whole->input_ids->IntAt(16 + r * 4));
    shards.push_back(*std::move(s));
  }
  absl::StatusOr<PreparedBatch> back = Reassemble(shards);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->rank, -1);
  EXPECT_EQ(back->input_ids->data, whole->input_ids->data);
  EXPECT_EQ(back->position_ids.data, whole->position_ids.data);
  EXPECT_EQ(back->padding_mask.data, whole->padding_mask.data);
  EXPECT_EQ(back->labels->data, whole->labels->data);
  EXPECT_EQ(back->vision_groups.data, whole->vision_groups.data);
  absl::StatusOr<HostTensor> stripped = StripPadding(*back->input_ids, 1, 13);
  ASSERT_TRUE(stripped.ok());
  EXPECT_EQ(stripped->data, in.input_ids->data);
  // Shards out of order or missing are errors.
  std::swap(shards[0], shards[1]);
  EXPECT_FALSE(Reassemble(shards).ok());
  shards.pop_back();
  EXPECT_FALSE(Reassemble(shards).ok());
}

TEST(BatchPrepTest, ShapeMismatchesNameTheField) {
  BatchInputs in = Basic(1, 5);
  in.labels = Ids(1, 4);
  const absl::Status s = PrepareBatch(in, 1).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("labels"), absl::string_view::npos) << s;
  in = Basic(1, 5);
  in.attention_mask = HostTensor::Zeros(ElemType::kI64, {1, 1, 5, 4});
  EXPECT_NE(PrepareBatch(in, 1).status().message().find("attention_mask"), absl::string_view::npos);
  in = Basic(1, 5);
  in.input_ids = HostTensor::Zeros(ElemType::kF32, {1, 5});
  EXPECT_NE(PrepareBatch(in, 1).status().message().find("integer"), absl::string_view::npos);
  EXPECT_FALSE(PrepareBatch(Basic(), 0).ok());
  absl::StatusOr<PreparedBatch> p = PrepareBatch(Basic(), 2);
  ASSERT_TRUE(p.ok());
  EXPECT_FALSE(ShardFor(*p, 2).ok());
}

}  // namespace
}  // namespace ringattn::batch
