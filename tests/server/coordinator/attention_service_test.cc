// The service end to end: a real coordinator and worker processes on
// 127.0.0.1 ephemeral ports, driven through the C++ client.
#include "server/coordinator/attention_service.h"

#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "client/attention_client.h"
#include "client/local_cluster.h"
#include "client/synthetic_inputs.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "kernels/backends.h"
#include "kernels/convert.h"
#include "kernels/reference/chunked_attention.h"
#include "kernels/reference/compare.h"
#include "tests/kernels/testing/attention_case.h"

namespace ringattn::coordinator {
namespace {

using kernels::reference::SyntheticBatch;

std::unique_ptr<client::LocalCluster> StartCluster(int cp, std::vector<std::string> flags = {}) {
  client::LocalClusterOptions options;
  options.cp = cp;
  options.bin_dir = RINGATTN_BIN_DIR;
  options.ring_timeout_seconds = 30;
  options.coordinator_flags = std::move(flags);
  auto cluster = client::LocalCluster::Start(options);
  EXPECT_TRUE(cluster.ok()) << cluster.status();
  return cluster.ok() ? *std::move(cluster) : nullptr;
}

using client::EncodeBatch;

// Forward and backward through the service, as a whole-sequence result.
absl::StatusOr<kernels::reference::ChunkedResult> RunThroughService(
    client::AttentionClient& c, const SyntheticBatch& b, const kernels::LayerConfig& layer,
    bool backward = true, attention::v1::ShardLayout layout = attention::v1::SHARD_LAYOUT_AUTO,
    attention::v1::ShardLayout* ran_with = nullptr) {
  auto e = EncodeBatch(b, layer);
  e->in.layout = layout;
  absl::StatusOr<client::ForwardOutputs> f = c.Forward(e->in);
  if (!f.ok()) return f.status();
  if (f->session.layout() != f->metrics.layout()) {
    return absl::InternalError("the session and the metrics name different layouts");
  }
  if (ran_with != nullptr) *ran_with = f->session.layout();
  kernels::reference::ChunkedResult r;
  r.out.resize(f->out.size() / kernels::DTypeSize(b.dtype));
  kernels::ToF32(b.dtype, f->out.data(), static_cast<int64_t>(r.out.size()), r.out.data());
  r.lse = f->lse;
  if (backward) {
    absl::StatusOr<client::BackwardOutputs> g =
        c.Backward(e->in, f->session.handle(), std::as_bytes(std::span(e->dout)));
    if (!g.ok()) return g.status();
    r.dq = g->dq;
    r.dk = g->dk;
    r.dv = g->dv;
  }
  if (absl::Status s = c.Release(f->session.handle()); !s.ok()) return s;
  return r;
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

class ServiceParityTest : public ::testing::TestWithParam<int> {};

// S = 200 is not a multiple of 2 * cp for cp = 4 (and 3 * 2 ...), so the
// coordinator's padding and stripping are on the path.
TEST_P(ServiceParityTest, ForwardAndBackwardMatchTheOracle) {
  const int cp = GetParam();
  auto cluster = StartCluster(cp);
  ASSERT_NE(cluster, nullptr);
  auto c = client::AttentionClient::Connect(cluster->address());
  // Every layout gives the oracle's result; auto picks contiguous for the
  // sliding layer (W = 32 fits in a shard) and zigzag for the full causal
  // one on a ring.
  for (const kernels::LayerConfig& layer : {Sliding(32), Full()}) {
    const SyntheticBatch b = kernels::reference::MakeSyntheticBatch(
        {2, 4, 2, 200, 64},
        {kernels::reference::GemmaLikeLayout(200), kernels::reference::GemmaLikeLayout(160)},
        kernels::DType::kF32, 40 + cp);
    for (attention::v1::ShardLayout layout :
         {attention::v1::SHARD_LAYOUT_AUTO, attention::v1::SHARD_LAYOUT_CONTIGUOUS,
          attention::v1::SHARD_LAYOUT_ZIGZAG}) {
      SCOPED_TRACE(attention::v1::ShardLayout_Name(layout));
      attention::v1::ShardLayout ran_with = attention::v1::SHARD_LAYOUT_AUTO;
      absl::StatusOr<kernels::reference::ChunkedResult> got =
          RunThroughService(*c, b, layer, true, layout, &ran_with);
      ASSERT_TRUE(got.ok()) << got.status();
      kernels::testing::ExpectResultMatchesOracle(b, layer, *got, /*backward=*/true);
      attention::v1::ShardLayout want = layout;
      if (layout == attention::v1::SHARD_LAYOUT_AUTO) {
        const bool zigzag = cp > 1 && layer.kind == kernels::LayerKind::kFull;
        want = zigzag ? attention::v1::SHARD_LAYOUT_ZIGZAG : attention::v1::SHARD_LAYOUT_CONTIGUOUS;
      }
      EXPECT_EQ(ran_with, want);
    }
  }
  // Metrics: one entry per rank, each with its ring steps (cp for a full
  // causal layer; the backward's last entry is the gradients' trip home).
  const SyntheticBatch b = kernels::reference::MakeSyntheticBatch(
      {1, 2, 1, 64, 32}, {kernels::testing::SingleDocument(64)}, kernels::DType::kF32, 2);
  auto e = EncodeBatch(b, Full());
  e->in.layout = attention::v1::SHARD_LAYOUT_CONTIGUOUS;
  absl::StatusOr<client::ForwardOutputs> f = c->Forward(e->in);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->metrics.layout(), attention::v1::SHARD_LAYOUT_CONTIGUOUS);
  ASSERT_EQ(f->metrics.ranks_size(), cp);
  for (const auto& rank : f->metrics.ranks()) {
    ASSERT_EQ(rank.steps_size(), cp) << "rank " << rank.rank();
    int computed = 0;
    for (const auto& step : rank.steps()) computed += step.computed() ? 1 : 0;
    EXPECT_EQ(computed, rank.rank() + 1) << "causal: rank r computes r + 1 chunks";
    EXPECT_EQ(rank.steps(0).chunk_owner(), rank.rank());
  }
  EXPECT_GT(f->metrics.flops_per_second(), 0.0);
  ASSERT_TRUE(c->Release(f->session.handle()).ok());
  // Zigzag: every rank computes on every chunk (its second half sees them
  // all), and the step stats count the same pairs on every rank.
  e->in.layout = attention::v1::SHARD_LAYOUT_ZIGZAG;
  f = c->Forward(e->in);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->metrics.layout(), attention::v1::SHARD_LAYOUT_ZIGZAG);
  for (const auto& rank : f->metrics.ranks()) {
    int computed = 0;
    for (const auto& step : rank.steps()) computed += step.computed() ? 1 : 0;
    EXPECT_EQ(computed, cp) << "rank " << rank.rank();
  }
  ASSERT_TRUE(c->Release(f->session.handle()).ok());
  c.reset();
  EXPECT_TRUE(cluster->Stop().ok());
}

INSTANTIATE_TEST_SUITE_P(Cp, ServiceParityTest, ::testing::Values(1, 2, 4),
                         [](const auto& info) { return "Cp" + std::to_string(info.param); });

TEST(ServiceTest, ConcurrentClientsAndSessionsGetTheirOwnResults) {
  auto cluster = StartCluster(2);
  ASSERT_NE(cluster, nullptr);
  std::vector<SyntheticBatch> batches;
  for (int i = 0; i < 3; ++i) {
    batches.push_back(kernels::reference::MakeSyntheticBatch(
        {1, 2, 1, 96, 32}, {kernels::reference::GemmaLikeLayout(96)},
        i == 1 ? kernels::DType::kBF16 : kernels::DType::kF32, 100 + i));
  }
  std::vector<absl::StatusOr<kernels::reference::ChunkedResult>> got(3,
                                                                     absl::UnknownError("not run"));
  std::vector<std::thread> clients;
  for (int i = 0; i < 3; ++i) {
    clients.emplace_back([&, i] {
      auto c = client::AttentionClient::Connect(cluster->address());
      for (int rep = 0; rep < 2; ++rep) got[i] = RunThroughService(*c, batches[i], Sliding(24));
    });
  }
  for (auto& t : clients) t.join();
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(got[i].ok()) << got[i].status();
    kernels::testing::ExpectResultMatchesOracle(batches[i], Sliding(24), *got[i], true);
  }
}

// Q/K/V of 4.7 MiB each (several stream pieces) and of over 64 MiB: the
// service's result equals the in-process chunked computation.
TEST(ServiceTest, LargeTensorsCrossTheWireIntact) {
  auto cluster = StartCluster(2);
  ASSERT_NE(cluster, nullptr);
  auto c = client::AttentionClient::Connect(cluster->address());
  auto cpu = kernels::MakeCpuBackend();
  ASSERT_TRUE(cpu.ok());
  for (int64_t S : {int64_t{4800}, int64_t{16512}}) {
    const int64_t H = S > 10000 ? 8 : 4;
    const int64_t D = S > 10000 ? 128 : 64;
    kernels::reference::RowLayout layout;
    layout.doc_lengths = {S - 100};
    const SyntheticBatch b = kernels::reference::MakeSyntheticBatch({1, H, H / 2, S, D}, {layout},
                                                                    kernels::DType::kF32, 7);
    ASSERT_GT(b.q.size() * 4, S > 10000 ? (64u << 20) : (4u << 20));
    const kernels::LayerConfig layer = Sliding(64);
    const bool backward = S < 10000;
    absl::StatusOr<kernels::reference::ChunkedResult> got =
        RunThroughService(*c, b, layer, backward);
    ASSERT_TRUE(got.ok()) << got.status();
    absl::StatusOr<kernels::reference::ChunkedResult> want =
        kernels::reference::RunChunked(b, layer, 1, **cpu, backward);
    ASSERT_TRUE(want.ok());
    const std::vector<double> out(want->out.begin(), want->out.end());
    EXPECT_TRUE(kernels::reference::Compare(got->out, out).Within(1e-5)) << "S=" << S;
    if (backward) {
      const std::vector<double> dk(want->dk.begin(), want->dk.end());
      EXPECT_TRUE(kernels::reference::Compare(got->dk, dk).Within(1e-5));
    }
  }
}

grpc::Status RawForward(const std::string& address,
                        const std::vector<attention::v1::ForwardRequest>& msgs) {
  auto stub = attention::v1::AttentionService::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto stream = stub->Forward(&ctx);
  for (const auto& m : msgs) stream->Write(m);
  stream->WritesDone();
  attention::v1::ForwardResponse resp;
  while (stream->Read(&resp)) {
  }
  return stream->Finish();
}

attention::v1::ForwardRequest Header(int64_t H, int64_t Hkv, int64_t S, int64_t D,
                                     float dropout = 0.0f) {
  attention::v1::ForwardRequest r;
  auto* h = r.mutable_header();
  h->set_dtype("FP32");
  h->set_batch(1);
  h->set_heads(H);
  h->set_kv_heads(Hkv);
  h->set_seq_len(S);
  h->set_head_dim(D);
  h->mutable_layer()->set_dropout(dropout);
  return r;
}

attention::v1::ForwardRequest Chunk(const std::string& name, const std::string& dtype,
                                    std::vector<int64_t> shape, size_t bytes) {
  attention::v1::ForwardRequest r;
  auto* c = r.mutable_chunk();
  c->set_name(name);
  c->set_dtype(dtype);
  for (int64_t d : shape) c->add_shape(d);
  c->set_data(std::string(bytes, '\0'));
  return r;
}

void ExpectError(const grpc::Status& s, grpc::StatusCode code, const std::string& needle) {
  EXPECT_EQ(s.error_code(), code) << s.error_message();
  EXPECT_NE(s.error_message().find(needle), std::string::npos) << s.error_message();
}

TEST(ServiceTest, BadCallsGetActionableErrorsAndTheClusterKeepsServing) {
  auto cluster = StartCluster(2, {"--max_call_bytes=2000000", "--memory_budget_bytes=300000"});
  ASSERT_NE(cluster, nullptr);
  const std::string& a = cluster->address();
  using grpc::StatusCode;
  ExpectError(RawForward(a, {Header(3, 2, 8, 16)}), StatusCode::INVALID_ARGUMENT, "kv_heads");
  ExpectError(RawForward(a, {Header(2, 1, 8, 16, 0.1f)}), StatusCode::INVALID_ARGUMENT, "dropout");
  ExpectError(RawForward(a, {Header(2, 1, 8, 600)}), StatusCode::INVALID_ARGUMENT, "head_dim");
  ExpectError(RawForward(a, {Header(2, 1, -8, 16)}), StatusCode::INVALID_ARGUMENT, "seq_len");
  // Declared dtype and shape disagree with the tensors sent.
  ExpectError(RawForward(a, {Header(2, 1, 8, 16), Chunk("q", "BF16", {1, 2, 8, 16}, 512)}),
              StatusCode::INVALID_ARGUMENT, "q.dtype");
  ExpectError(RawForward(a, {Header(2, 1, 8, 16), Chunk("q", "FP32", {1, 2, 9, 16}, 1152)}),
              StatusCode::INVALID_ARGUMENT, "q.shape");
  // Byte count short of the shape.
  ExpectError(RawForward(a, {Header(2, 1, 8, 16), Chunk("q", "FP32", {1, 2, 8, 16}, 1000),
                             Chunk("k", "FP32", {1, 1, 8, 16}, 512),
                             Chunk("v", "FP32", {1, 1, 8, 16}, 512)}),
              StatusCode::INVALID_ARGUMENT, "q is incomplete");
  // Over the per-call tensor limit: refused from the header alone.
  ExpectError(RawForward(a, {Header(8, 8, 4096, 64)}), StatusCode::RESOURCE_EXHAUSTED, "limit");
  auto c = client::AttentionClient::Connect(a);
  const absl::Status unknown = c->Release("no-such-handle");
  EXPECT_EQ(unknown.code(), absl::StatusCode::kNotFound);
  client::ForwardInputs shapes;
  std::vector<float> dout(16);
  const auto bwd = c->Backward(shapes, "no-such-handle", std::as_bytes(std::span(dout)));
  EXPECT_EQ(bwd.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(bwd.status().message().find("no-such-handle"), absl::string_view::npos);

  // Memory budget: sessions are held until released.
  const SyntheticBatch b = kernels::reference::MakeSyntheticBatch(
      {1, 2, 1, 256, 32}, {kernels::testing::SingleDocument(256)}, kernels::DType::kF32, 3);
  auto e = EncodeBatch(b, Full());
  absl::StatusOr<client::ForwardOutputs> first = c->Forward(e->in);
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<client::ForwardOutputs> second = c->Forward(e->in);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kResourceExhausted) << second.status();
  EXPECT_NE(second.status().message().find("memory budget"), absl::string_view::npos);
  ASSERT_TRUE(c->Release(first->session.handle()).ok());
  // After all of it, a good call still works and is right.
  absl::StatusOr<kernels::reference::ChunkedResult> got = RunThroughService(*c, b, Full());
  ASSERT_TRUE(got.ok()) << got.status();
  kernels::testing::ExpectResultMatchesOracle(b, Full(), *got, true);
  c.reset();  // An open client channel holds the coordinator's drain for seconds.
  EXPECT_TRUE(cluster->Stop().ok());
}

TEST(ServiceTest, ExpiredSessionIsNotFound) {
  auto cluster = StartCluster(1, {"--session_ttl_seconds=0.3"});
  ASSERT_NE(cluster, nullptr);
  auto c = client::AttentionClient::Connect(cluster->address());
  const SyntheticBatch b = kernels::reference::MakeSyntheticBatch(
      {1, 2, 1, 64, 32}, {kernels::testing::SingleDocument(64)}, kernels::DType::kF32, 5);
  auto e = EncodeBatch(b, Full());
  absl::StatusOr<client::ForwardOutputs> f = c->Forward(e->in);
  ASSERT_TRUE(f.ok()) << f.status();
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  const auto g = c->Backward(e->in, f->session.handle(), std::as_bytes(std::span(e->dout)));
  EXPECT_EQ(g.status().code(), absl::StatusCode::kNotFound) << g.status();
  EXPECT_NE(g.status().message().find("expired"), absl::string_view::npos);
  c.reset();
  EXPECT_TRUE(cluster->Stop().ok());
}

// One client may not hold more than its share: a session count and a byte
// limit per client, both answered with RESOURCE_EXHAUSTED naming the limit,
// and both freed by a release.
TEST(ServiceTest, PerClientLimitsOnSessionsAndHeldState) {
  const SyntheticBatch b = kernels::reference::MakeSyntheticBatch(
      {1, 2, 1, 64, 32}, {kernels::testing::SingleDocument(64)}, kernels::DType::kF32, 9);
  auto e = EncodeBatch(b, Full());
  // Session bytes of this batch (cp = 1, no padding): Q, K, V, O and dO in
  // fp32, plus LSE and the token metadata.
  const int64_t one = 64 * 32 * (2 * 2 + 2 * 1) * 4 + 64 * (2 * 4 + 9);
  for (const auto& [flag, limit_words] :
       {std::pair<std::string, std::string>{"--max_sessions_per_client=2", "sessions open"},
        {absl::StrCat("--max_client_memory_bytes=", 2 * one + one / 2), "bytes of session"}}) {
    auto cluster = StartCluster(1, {flag});
    ASSERT_NE(cluster, nullptr);
    auto c = client::AttentionClient::Connect(cluster->address());
    std::vector<std::string> handles;
    for (int i = 0; i < 2; ++i) {
      absl::StatusOr<client::ForwardOutputs> f = c->Forward(e->in);
      ASSERT_TRUE(f.ok()) << flag << ": " << f.status();
      handles.push_back(f->session.handle());
    }
    // A second connection from the same host is the same client.
    auto other = client::AttentionClient::Connect(cluster->address());
    const absl::Status over = other->Forward(e->in).status();
    EXPECT_EQ(over.code(), absl::StatusCode::kResourceExhausted) << flag << ": " << over;
    EXPECT_NE(over.message().find(limit_words), absl::string_view::npos) << over;
    ASSERT_TRUE(c->Release(handles[0]).ok());
    absl::StatusOr<client::ForwardOutputs> again = other->Forward(e->in);
    EXPECT_TRUE(again.ok()) << flag << ": " << again.status();
    c.reset();
    other.reset();
    EXPECT_TRUE(cluster->Stop().ok());
  }
}

// The budget fills as bytes arrive: a header alone holds nothing, and a
// stream that sent part of its inputs and went quiet holds its part until
// --stream_idle_timeout_seconds cancels it; then others get it.
TEST(ServiceTest, AQuietStreamHoldsWhatItSentUntilItIsCancelled) {
  const SyntheticBatch b = kernels::reference::MakeSyntheticBatch(
      {1, 2, 1, 64, 32}, {kernels::testing::SingleDocument(64)}, kernels::DType::kF32, 9);
  auto e = EncodeBatch(b, Full());
  const int64_t one = 64 * 32 * (2 * 2 + 2 * 1) * 4 + 64 * (2 * 4 + 9);  // As above.
  auto cluster = StartCluster(1, {absl::StrCat("--memory_budget_bytes=", one + one / 4),
                                  "--stream_idle_timeout_seconds=2"});
  ASSERT_NE(cluster, nullptr);
  auto c = client::AttentionClient::Connect(cluster->address());
  auto stub = attention::v1::AttentionService::NewStub(
      grpc::CreateChannel(cluster->address(), grpc::InsecureChannelCredentials()));
  const auto open_quiet = [&](grpc::ClientContext& ctx, bool with_q) {
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    auto stream = stub->Forward(&ctx);
    EXPECT_TRUE(stream->Write(Header(2, 1, 64, 32)));
    // q is half of Q, K and V here: half the session's bytes.
    if (with_q) {
      EXPECT_TRUE(stream->Write(Chunk("q", "FP32", {1, 2, 64, 32}, 64 * 32 * 2 * 4)));
    }
    return stream;
  };
  grpc::ClientContext header_ctx;
  auto header_only = open_quiet(header_ctx, false);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // Read by now.
  absl::StatusOr<client::ForwardOutputs> fits = c->Forward(e->in);
  ASSERT_TRUE(fits.ok()) << "a header alone took budget: " << fits.status();
  ASSERT_TRUE(c->Release(fits->session.handle()).ok());

  grpc::ClientContext half_ctx;
  auto half = open_quiet(half_ctx, true);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const absl::Time t0 = absl::Now();
  const absl::Status held = c->Forward(e->in).status();
  EXPECT_EQ(held.code(), absl::StatusCode::kResourceExhausted) << held;
  EXPECT_NE(held.message().find("memory budget"), absl::string_view::npos) << held;
  // Cancelled two seconds after it went quiet, as is the header-only one.
  attention::v1::ForwardResponse resp;
  while (half->Read(&resp)) {
  }
  const grpc::Status ended = half->Finish();
  EXPECT_FALSE(ended.ok());
  EXPECT_LT(absl::Now() - t0, absl::Seconds(10)) << ended.error_message();
  while (header_only->Read(&resp)) {
  }
  EXPECT_FALSE(header_only->Finish().ok());
  // The client hears of the cancel before the handler has unwound: the
  // reservation is back a moment later.
  absl::StatusOr<client::ForwardOutputs> after = c->Forward(e->in);
  for (int i = 0; i < 100 && !after.ok(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    after = c->Forward(e->in);
  }
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_TRUE(c->Release(after->session.handle()).ok());
  c.reset();
  EXPECT_TRUE(cluster->Stop().ok());
}

}  // namespace
}  // namespace ringattn::coordinator
