// Forward with Hugging Face metadata (attention_mask 2-D and 4-D,
// mm_token_type_ids, packed_seq_ids) through a real coordinator and worker
// processes on 127.0.0.1: the same answer, bit for bit, as the explicit
// metadata the coordinator derives, and the fp64 oracle's.
#include "server/coordinator/forward_metadata.h"

#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/attention_client.h"
#include "client/local_cluster.h"
#include "client/synthetic_inputs.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/convert.h"
#include "kernels/mask.h"
#include "kernels/reference/chunked_attention.h"
#include "tests/kernels/testing/attention_case.h"

namespace ringattn::coordinator {
namespace {

using kernels::reference::SyntheticBatch;
using ::testing::HasSubstr;

std::unique_ptr<client::LocalCluster> StartCluster(int cp) {
  client::LocalClusterOptions options;
  options.cp = cp;
  options.bin_dir = RINGATTN_BIN_DIR;
  options.ring_timeout_seconds = 30;
  auto cluster = client::LocalCluster::Start(options);
  EXPECT_TRUE(cluster.ok()) << cluster.status();
  return cluster.ok() ? *std::move(cluster) : nullptr;
}

kernels::LayerConfig Sliding(int64_t window) {
  kernels::LayerConfig layer;
  layer.kind = kernels::LayerKind::kSliding;
  layer.window = window;
  layer.scale = 0.125f;
  return layer;
}

kernels::LayerConfig Full() {
  kernels::LayerConfig layer;
  layer.scale = 0.125f;
  return layer;
}

// A batch's metadata as a Hugging Face batch carries it.
struct HfBatch {
  std::vector<int64_t> attention_mask;     // [B, S] 1 = real
  std::vector<int64_t> mm_token_type_ids;  // [B, S] 1 = image
  std::vector<int64_t> packed_seq_ids;     // [B, S]
  std::vector<uint8_t> dense;              // [B, 1, S, S] the layer's mask, 1 = attend
};

HfBatch ToHf(const SyntheticBatch& b, const kernels::LayerConfig& layer) {
  const int64_t B = b.shape.batch, S = b.shape.seq_len;
  HfBatch hf;
  for (int64_t i = 0; i < B * S; ++i) {
    hf.attention_mask.push_back(b.padding[i] != 0 ? 0 : 1);
    hf.mm_token_type_ids.push_back(b.vision[i] >= 0 ? 1 : 0);
    hf.packed_seq_ids.push_back(b.doc[i]);
  }
  // The 4-D mask written out from SPEC §2, as a caller would build it.
  const kernels::MaskRule rule = kernels::MaskRuleFor(layer);
  hf.dense.resize(static_cast<size_t>(B * S * S));
  for (int64_t r = 0; r < B; ++r) {
    auto info = [&](int64_t i) {
      return kernels::TokenInfo{i, b.doc[r * S + i], b.vision[r * S + i],
                                b.padding[r * S + i] != 0};
    };
    for (int64_t q = 0; q < S; ++q) {
      for (int64_t k = 0; k < S; ++k) {
        hf.dense[(r * S + q) * S + k] = kernels::Allowed(rule, info(q), info(k)) ? 1 : 0;
      }
    }
  }
  return hf;
}

client::TensorView View(const std::string& dtype, std::vector<int64_t> shape,
                        std::span<const std::byte> data) {
  return {dtype, std::move(shape), data};
}

struct Answer {
  std::vector<std::byte> out;
  std::vector<float> lse, dq, dk, dv;
};

absl::StatusOr<Answer> RunCall(client::AttentionClient& c, const client::ForwardInputs& in,
                               std::span<const uint8_t> dout) {
  absl::StatusOr<client::ForwardOutputs> f = c.Forward(in);
  if (!f.ok()) return f.status();
  absl::StatusOr<client::BackwardOutputs> g =
      c.Backward(in, f->session.handle(), std::as_bytes(dout));
  if (!g.ok()) return g.status();
  if (absl::Status s = c.Release(f->session.handle()); !s.ok()) return s;
  return Answer{f->out, f->lse, g->dq, g->dk, g->dv};
}

void ExpectSameBits(const Answer& a, const Answer& b, const std::string& what) {
  EXPECT_EQ(a.out, b.out) << what << ": out";
  auto same = [](const std::vector<float>& x, const std::vector<float>& y) {
    return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * 4) == 0;
  };
  EXPECT_TRUE(same(a.lse, b.lse)) << what << ": lse";
  EXPECT_TRUE(same(a.dq, b.dq)) << what << ": dq";
  EXPECT_TRUE(same(a.dk, b.dk)) << what << ": dk";
  EXPECT_TRUE(same(a.dv, b.dv)) << what << ": dv";
}

class HfMetadataServiceTest : public ::testing::TestWithParam<int> {};

// Two packed documents, an image block, right padding (S = 52 is a
// multiple of 2 * cp only for cp = 1, 2), on a sliding and a full layer.
TEST_P(HfMetadataServiceTest, SameBitsAsExplicitMetadataAndTheOracle) {
  const int cp = GetParam();
  auto cluster = StartCluster(cp);
  ASSERT_NE(cluster, nullptr);
  auto c = client::AttentionClient::Connect(cluster->address());
  for (const kernels::LayerConfig& layer : {Sliding(8), Full()}) {
    const SyntheticBatch b = kernels::reference::MakeSyntheticBatch(
        {2, 2, 1, 52, 16},
        {kernels::reference::GemmaLikeLayout(52), kernels::reference::GemmaLikeLayout(40)},
        kernels::DType::kF32, 7 + cp);
    auto explicit_in = client::EncodeBatch(b, layer);
    absl::StatusOr<Answer> want = RunCall(*c, explicit_in->in, explicit_in->dout);
    ASSERT_TRUE(want.ok()) << want.status();

    const HfBatch hf = ToHf(b, layer);
    const std::vector<int64_t> bs = {b.shape.batch, b.shape.seq_len};
    const auto mask2 = View("INT64", bs, std::as_bytes(std::span(hf.attention_mask)));
    const auto types = View("INT64", bs, std::as_bytes(std::span(hf.mm_token_type_ids)));
    const auto packed = View("INT64", bs, std::as_bytes(std::span(hf.packed_seq_ids)));
    const auto mask4 = View("BOOL", {b.shape.batch, 1, b.shape.seq_len, b.shape.seq_len},
                            std::as_bytes(std::span(hf.dense)));
    auto hf_in = client::EncodeBatch(b, layer, /*with_metadata=*/false);
    struct Variant {
      const char* what;
      std::optional<client::TensorView> mask, types, packed;
      bool with_explicit;
    };
    const Variant variants[] = {
        {"2-D mask, token types, packed ids", mask2, types, packed, false},
        {"4-D mask and token types", mask4, types, std::nullopt, false},
        {"4-D mask, token types, packed ids", mask4, types, packed, false},
        {"HF and explicit together", mask2, types, packed, true},
    };
    for (const Variant& v : variants) {
      client::ForwardInputs in = v.with_explicit ? explicit_in->in : hf_in->in;
      in.attention_mask = v.mask;
      in.mm_token_type_ids = v.types;
      in.packed_seq_ids = v.packed;
      absl::StatusOr<Answer> got = RunCall(*c, in, hf_in->dout);
      ASSERT_TRUE(got.ok()) << v.what << ": " << got.status();
      ExpectSameBits(*got, *want, v.what);
    }
    // And the oracle's answer.
    kernels::reference::ChunkedResult r;
    r.out.resize(want->out.size() / 4);
    std::memcpy(r.out.data(), want->out.data(), want->out.size());
    r.lse = want->lse;
    r.dq = want->dq;
    r.dk = want->dk;
    r.dv = want->dv;
    kernels::testing::ExpectResultMatchesOracle(b, layer, r, /*backward=*/true);
  }
  c.reset();
  EXPECT_TRUE(cluster->Stop().ok());
}

INSTANTIATE_TEST_SUITE_P(Cp, HfMetadataServiceTest, ::testing::Values(1, 2, 3, 4),
                         [](const auto& info) { return "Cp" + std::to_string(info.param); });

TEST(HfMetadataServiceTest, BadMetadataIsInvalidArgumentNamingTheFieldAndTheClusterServes) {
  auto cluster = StartCluster(2);
  ASSERT_NE(cluster, nullptr);
  auto c = client::AttentionClient::Connect(cluster->address());
  const kernels::LayerConfig layer = Full();
  const SyntheticBatch b = kernels::reference::MakeSyntheticBatch(
      {1, 2, 1, 24, 16}, {kernels::reference::GemmaLikeLayout(24)}, kernels::DType::kF32, 3);
  const HfBatch hf = ToHf(b, layer);
  const std::vector<int64_t> bs = {1, 24};
  auto e = client::EncodeBatch(b, layer);

  auto expect_invalid = [&](client::ForwardInputs in, const std::string& what) {
    absl::StatusOr<client::ForwardOutputs> f = c->Forward(in);
    ASSERT_FALSE(f.ok()) << what;
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument) << f.status();
    EXPECT_THAT(f.status().message(), HasSubstr(what));
  };
  // Conflicting duplicates.
  std::vector<int64_t> other_docs = hf.packed_seq_ids;
  other_docs[1] = other_docs[1] + 1;
  client::ForwardInputs in = e->in;
  in.packed_seq_ids = View("INT64", bs, std::as_bytes(std::span(other_docs)));
  expect_invalid(in, "doc_ids and packed_seq_ids disagree at [0,1]");
  // A 4-D mask the layer's rules do not give: one cross-document entry.
  std::vector<uint8_t> dense = hf.dense;
  int64_t q = 0;
  while (b.doc[q] != 2) ++q;  // The second document's first token.
  dense[q * 24 + 0] = 1;
  auto bare = client::EncodeBatch(b, layer, false);
  in = bare->in;
  in.attention_mask = View("BOOL", {1, 1, 24, 24}, std::as_bytes(std::span(dense)));
  in.packed_seq_ids = View("INT64", bs, std::as_bytes(std::span(hf.packed_seq_ids)));
  expect_invalid(in, absl::StrCat("attention_mask[0,0,", q, ",0] attends"));
  // Wrong dtype and shape.
  in = bare->in;
  in.mm_token_type_ids = View("FP32", bs, std::as_bytes(std::span(hf.dense).first(24 * 4)));
  expect_invalid(in, "mm_token_type_ids.dtype is 'FP32', expected one of INT32, INT64");
  in = bare->in;
  in.attention_mask = View("INT64", {1, 23}, std::as_bytes(std::span(hf.attention_mask).first(23)));
  expect_invalid(in, "attention_mask.shape is [1,23], expected [1,24] or [1,1,24,24]");
  // Out-of-range token type.
  std::vector<int64_t> bad_types = hf.mm_token_type_ids;
  bad_types[5] = 7;
  in = bare->in;
  in.mm_token_type_ids = View("INT64", bs, std::as_bytes(std::span(bad_types)));
  expect_invalid(in, "mm_token_type_ids[0,5] is 7");
  // Still serving.
  absl::StatusOr<Answer> ok = RunCall(*c, e->in, e->dout);
  EXPECT_TRUE(ok.ok()) << ok.status();
  absl::StatusOr<attention::v1::ClusterStatusResponse> st = c->Status();
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->open_sessions(), 0);
  c.reset();
  EXPECT_TRUE(cluster->Stop().ok());
}

}  // namespace
}  // namespace ringattn::coordinator
