// PrepareBatch through a real coordinator and worker processes on
// 127.0.0.1 and the C++ client: what it answers is the batch library's
// PrepareBatch and ShardFor, byte for byte, and bad input is
// INVALID_ARGUMENT naming the field.
#include "server/coordinator/prepare_batch.h"

#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/attention_client.h"
#include "client/local_cluster.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/batch/batch_prep.h"

namespace ringattn::coordinator {
namespace {

using batch::ElemType;
using batch::HostTensor;
using ::testing::HasSubstr;

HostTensor Ints(ElemType type, std::vector<int64_t> shape, const std::vector<int64_t>& values) {
  HostTensor t = HostTensor::Zeros(type, std::move(shape));
  for (size_t i = 0; i < values.size(); ++i) t.SetInt(static_cast<int64_t>(i), values[i]);
  return t;
}

HostTensor Counting(ElemType type, std::vector<int64_t> shape, int64_t first) {
  HostTensor t = HostTensor::Zeros(type, std::move(shape));
  for (int64_t i = 0; i < t.NumElements(); ++i) t.SetInt(i, first + i);
  return t;
}

client::TensorView View(const HostTensor& t) {
  return {std::string(batch::ElemName(t.type)), t.shape, t.data};
}

void ExpectSame(const client::Tensor& got, const HostTensor& want, const std::string& what) {
  EXPECT_EQ(got.dtype, batch::ElemName(want.type)) << what;
  EXPECT_EQ(got.shape, want.shape) << what;
  EXPECT_EQ(got.data, want.data) << what;
}

// Every tensor of a prepared batch by the name PrepareBatch gives it.
std::map<std::string, const HostTensor*> Named(const batch::PreparedBatch& b) {
  std::map<std::string, const HostTensor*> out = {{"position_ids", &b.position_ids},
                                                  {"padding_mask", &b.padding_mask},
                                                  {"doc_ids", &b.doc_ids},
                                                  {"vision_groups", &b.vision_groups}};
  for (const auto& [name, t] : {std::pair{"input_ids", &b.input_ids},
                                {"inputs_embeds", &b.inputs_embeds},
                                {"labels", &b.labels},
                                {"loss_mask", &b.loss_mask},
                                {"mm_token_type_ids", &b.mm_token_type_ids}}) {
    if (t->has_value()) out[name] = &**t;
  }
  return out;
}

class PrepareBatchTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    client::LocalClusterOptions options;
    options.cp = 3;
    options.bin_dir = RINGATTN_BIN_DIR;
    auto started = client::LocalCluster::Start(options);
    ASSERT_TRUE(started.ok()) << started.status();
    cluster_ = started->release();
  }
  static void TearDownTestSuite() {
    if (cluster_ != nullptr) {
      EXPECT_TRUE(cluster_->Stop().ok());
    }
    delete cluster_;
    cluster_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(cluster_, nullptr);
    c_ = client::AttentionClient::Connect(cluster_->address());
  }

  // The service's answer, expected to equal the library's for `in`.
  void ExpectLibraryAnswer(const batch::BatchInputs& in, client::PrepareBatchInputs req, int cp) {
    req.include_shards = true;
    req.pad_token_id = in.pad_token_id;
    absl::StatusOr<client::PrepareBatchOutputs> got = c_->PrepareBatch(req);
    ASSERT_TRUE(got.ok()) << got.status();
    absl::StatusOr<batch::PreparedBatch> want = batch::PrepareBatch(in, cp);
    ASSERT_TRUE(want.ok()) << want.status();
    EXPECT_EQ(got->info.cp(), cp);
    EXPECT_EQ(got->info.batch(), want->batch);
    EXPECT_EQ(got->info.seq_len(), want->seq_len);
    EXPECT_EQ(got->info.padded_len(), want->padded_len);
    EXPECT_EQ(got->info.shard_len(), want->padded_len / cp);
    const auto named = Named(*want);
    ASSERT_EQ(got->tensors.size(), named.size());
    for (const auto& [name, t] : named) {
      ASSERT_TRUE(got->tensors.contains(name)) << name;
      ExpectSame(got->tensors.at(name), *t, name);
    }
    ASSERT_EQ(got->shards.size(), static_cast<size_t>(cp));
    for (int r = 0; r < cp; ++r) {
      absl::StatusOr<batch::PreparedBatch> shard = batch::ShardFor(*want, r);
      ASSERT_TRUE(shard.ok());
      const auto shard_named = Named(*shard);
      ASSERT_EQ(got->shards[r].size(), shard_named.size());
      for (const auto& [name, t] : shard_named) {
        ASSERT_TRUE(got->shards[r].contains(name)) << name;
        ExpectSame(got->shards[r].at(name), *t, absl::StrCat("rank ", r, " ", name));
      }
    }
  }

  absl::Status Prepare(const std::map<std::string, HostTensor>& tensors, int cp = 0) {
    client::PrepareBatchInputs req;
    for (const auto& [name, t] : tensors) req.tensors[name] = View(t);
    req.cp = cp;
    return c_->PrepareBatch(req).status();
  }

  static client::LocalCluster* cluster_;
  std::unique_ptr<client::AttentionClient> c_;
};

client::LocalCluster* PrepareBatchTest::cluster_ = nullptr;

// A padded, packed multimodal batch with RoPE [3, B, S] positions: S = 10
// pads to 12 on the ring's 3 ranks, 16 for cp = 4.
TEST_F(PrepareBatchTest, AnswerIsTheLibrarysPaddedBatchAndShards) {
  batch::BatchInputs in;
  in.input_ids = Counting(ElemType::kI64, {2, 10}, 100);
  in.labels = Counting(ElemType::kI32, {2, 10}, 7);
  in.loss_mask = Ints(ElemType::kU8, {2, 10}, std::vector<int64_t>(20, 1));
  in.attention_mask =
      Ints(ElemType::kI64, {2, 10}, {1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1});
  in.mm_token_type_ids =
      Ints(ElemType::kI64, {2, 10}, {0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 0, 1, 1, 0});
  in.packed_seq_ids =
      Ints(ElemType::kI64, {2, 10}, {1, 1, 1, 1, 2, 2, 2, 2, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1});
  in.position_ids = Counting(ElemType::kI64, {3, 2, 10}, 0);
  in.pad_token_id = 5;
  client::PrepareBatchInputs req;
  for (const auto& [name, t] : {std::pair{"input_ids", &in.input_ids},
                                {"labels", &in.labels},
                                {"loss_mask", &in.loss_mask},
                                {"attention_mask", &in.attention_mask},
                                {"mm_token_type_ids", &in.mm_token_type_ids},
                                {"packed_seq_ids", &in.packed_seq_ids},
                                {"position_ids", &in.position_ids}}) {
    req.tensors[name] = View(**t);
  }
  ExpectLibraryAnswer(in, req, 3);
  req.cp = 4;
  ExpectLibraryAnswer(in, req, 4);

  // Hand-checked against SPEC §1 for the ring's cp: P = 12, rank 2 holds
  // [8, 12) of every row.
  absl::StatusOr<client::PrepareBatchOutputs> got = c_->PrepareBatch(
      {.tensors = req.tensors, .pad_token_id = 5, .cp = 0, .include_shards = true});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->info.padded_len(), 12);
  const client::Tensor& labels = got->shards[2].at("labels");
  std::vector<int32_t> l(labels.data.size() / 4);
  std::memcpy(l.data(), labels.data.data(), labels.data.size());
  EXPECT_EQ(l, (std::vector<int32_t>{15, 16, -100, -100, 25, 26, -100, -100}));
  const client::Tensor& vision = got->tensors.at("vision_groups");
  std::vector<int32_t> g(vision.data.size() / 4);
  std::memcpy(g.data(), vision.data.data(), vision.data.size());
  EXPECT_EQ(g, (std::vector<int32_t>{-1, 0,  0,  -1, -1, -1, -1, -1, -1, -1, -1, -1,  //
                                     -1, -1, -1, 0,  0,  0,  -1, 1,  1,  -1, -1, -1}));
}

TEST_F(PrepareBatchTest, EmbeddingsAndAFourDimensionalMask) {
  batch::BatchInputs in;
  HostTensor embeds = HostTensor::Zeros(ElemType::kF32, {1, 4, 3});
  for (int64_t i = 0; i < 12; ++i) {
    const float v = 0.5f * static_cast<float>(i);
    std::memcpy(embeds.data.data() + i * 4, &v, 4);
  }
  in.inputs_embeds = embeds;
  in.loss_mask = Ints(ElemType::kI64, {1, 4}, {1, 1, 1, 0});
  // Two documents of two tokens, causal.
  in.attention_mask =
      Ints(ElemType::kU8, {1, 1, 4, 4}, {1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 1, 1});
  client::PrepareBatchInputs req;
  req.tensors["inputs_embeds"] = View(*in.inputs_embeds);
  req.tensors["loss_mask"] = View(*in.loss_mask);
  req.tensors["attention_mask"] = View(*in.attention_mask);
  ExpectLibraryAnswer(in, req, 3);
  absl::StatusOr<client::PrepareBatchOutputs> got = c_->PrepareBatch(req);
  ASSERT_TRUE(got.ok()) << got.status();
  const client::Tensor& docs = got->tensors.at("doc_ids");
  std::vector<int32_t> d(docs.data.size() / 4);
  std::memcpy(d.data(), docs.data.data(), docs.data.size());
  EXPECT_EQ(d, (std::vector<int32_t>{1, 1, 2, 2, 0, 0}));
}

TEST_F(PrepareBatchTest, BadInputIsInvalidArgumentNamingTheField) {
  const HostTensor ids = Counting(ElemType::kI64, {2, 5}, 1);
  const HostTensor labels = Counting(ElemType::kI64, {2, 5}, 1);
  struct Case {
    std::map<std::string, HostTensor> tensors;
    int cp;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{{"labels", labels}}, 0, "one of input_ids or inputs_embeds is required"},
      {{{"input_ids", ids},
        {"inputs_embeds", HostTensor::Zeros(ElemType::kF32, {2, 5, 2})},
        {"labels", labels}},
       0,
       "give input_ids or inputs_embeds, not both"},
      {{{"input_ids", ids}}, 0, "neither labels nor loss_mask is given"},
      {{{"input_ids", ids}, {"labels", Counting(ElemType::kI64, {2, 4}, 1)}},
       0,
       "labels has shape [2,4], expected [2,5]"},
      {{{"input_ids", HostTensor::Zeros(ElemType::kF32, {2, 5})}, {"labels", labels}},
       0,
       "input_ids.dtype is 'FP32', expected one of INT32, INT64"},
      {{{"input_ids", Counting(ElemType::kI64, {10}, 1)}, {"labels", labels}},
       0,
       "input_ids has 1 dimensions; expected 2"},
      {{{"input_ids", ids}, {"labels", labels}, {"q", ids}}, 0, "unexpected tensor 'q'"},
      {{{"input_ids", ids},
        {"labels", labels},
        {"position_ids", Counting(ElemType::kI64, {2, 2, 5}, 0)}},
       0,
       "position_ids has shape [2,2,5], expected [3,2,5]"},
      {{{"input_ids", ids}, {"labels", labels}}, -1, "cp must be 0 (the ring's) or in [1, 4096]"},
      {{{"input_ids", ids},
        {"labels", labels},
        {"mm_token_type_ids", Ints(ElemType::kI64, {2, 5}, {0, 0, 4})}},
       0,
       "mm_token_type_ids[0,2] is 4"},
  };
  for (const Case& c : cases) {
    const absl::Status s = Prepare(c.tensors, c.cp);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.message << ": " << s;
    EXPECT_THAT(s.message(), HasSubstr(c.message));
  }
  // The same service still answers.
  EXPECT_TRUE(Prepare({{"input_ids", ids}, {"labels", labels}}).ok());
}

}  // namespace
}  // namespace ringattn::coordinator
