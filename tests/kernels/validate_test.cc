// Bad arguments to the chunk kernels return a clear INVALID_ARGUMENT that
// names the field, through the public entry points, and never crash.
#include "kernels/validate.h"

#include <functional>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/chunk_backend.h"
#include "tests/kernels/testing/attention_case.h"

namespace ringattn::kernels {
namespace {

constexpr int64_t B = 1, H = 4, Hkv = 2, L = 8, D = 64;

struct Fixture {
  std::vector<float> q = std::vector<float>(B * H * L * D, 0.5f);
  std::vector<float> kv = std::vector<float>(B * Hkv * L * D, 0.25f);
  std::vector<int32_t> doc = std::vector<int32_t>(B * L, 1);
  std::vector<int32_t> vision = std::vector<int32_t>(B * L, -1);
  std::vector<uint8_t> padding = std::vector<uint8_t>(B * L, 0);
  std::vector<float> out = std::vector<float>(B * H * L * D);
  std::vector<float> lse = std::vector<float>(B * H * L);
  std::vector<float> dkv = std::vector<float>(B * Hkv * L * D);

  TensorRef Q() { return {DType::kF32, {B, H, L, D}, q.data(), q.size() * 4}; }
  TensorRef KV() { return {DType::kF32, {B, Hkv, L, D}, kv.data(), kv.size() * 4}; }
  TokenMetaRef Meta() { return {doc, vision, padding, 0}; }

  ForwardChunkArgs Forward() {
    return ForwardChunkArgs{Q(), KV(), KV(), Meta(), Meta(), LayerConfig{}, out, lse};
  }
  BackwardChunkArgs Backward() {
    BackwardChunkArgs a;
    a.q = a.out = a.dout = Q();
    a.k = a.v = KV();
    a.lse = lse;
    a.q_meta = a.kv_meta = Meta();
    a.dq = out;
    a.dk = a.dv = dkv;
    return a;
  }
};

struct BadCase {
  std::string name;
  std::function<void(ForwardChunkArgs&)> mutate;
  std::string expected_in_message;
};

TEST(ValidateTest, ValidArgumentsPass) {
  Fixture f;
  auto backend = testing::MakeCpuBackend();
  EXPECT_TRUE(backend->Forward(f.Forward()).ok());
  EXPECT_TRUE(backend->Backward(f.Backward()).ok());
}

TEST(ValidateTest, BadForwardArgumentsAreClearErrors) {
  std::vector<float> big(B * H * L * 1024);
  std::vector<float> wide_q(B * H * L * 520);
  std::vector<float> short_out(3);
  std::vector<int32_t> short_doc(3);
  const std::vector<BadCase> cases = {
      {"batch mismatch",
       [](ForwardChunkArgs& a) {
         a.k.shape[0] = 2;
         a.k.size_bytes *= 2;
       },
       "k.shape[0]"},
      {"head dim mismatch",
       [](ForwardChunkArgs& a) {
         a.k.shape[3] = 32;
         a.k.size_bytes /= 2;
       },
       "head dim"},
      {"k and v differ",
       [](ForwardChunkArgs& a) {
         a.v.shape[2] = 4;
         a.v.size_bytes /= 2;
       },
       "v.shape"},
      {"byte count", [](ForwardChunkArgs& a) { a.q.size_bytes -= 4; }, "q holds"},
      {"dtype mismatch",
       [](ForwardChunkArgs& a) {
         a.k.dtype = DType::kBF16;
         a.k.size_bytes /= 2;
       },
       "k.dtype"},
      {"heads not a multiple",
       [](ForwardChunkArgs& a) {
         a.k.shape[1] = 3;
         a.v.shape[1] = 3;
         a.k.size_bytes = a.v.size_bytes = 3 * L * D * 4;
       },
       "multiple of key/value heads"},
      {"unsupported head dim",
       [&](ForwardChunkArgs& a) {
         a.q = {DType::kF32, {B, H, L, 520}, wide_q.data(), wide_q.size() * 4};
         a.k = a.v = {DType::kF32, {B, Hkv, L, 520}, wide_q.data(), Hkv * L * 520 * 4};
       },
       "head dim 520 is not supported"},
      {"dropout", [](ForwardChunkArgs& a) { a.layer.dropout = 0.1f; }, "dropout"},
      {"window",
       [](ForwardChunkArgs& a) {
         a.layer.kind = LayerKind::kSliding;
         a.layer.window = 0;
       },
       "layer.window"},
      {"scale", [](ForwardChunkArgs& a) { a.layer.scale = NAN; }, "layer.scale"},
      {"null data", [](ForwardChunkArgs& a) { a.v.data = nullptr; }, "v.data"},
      {"negative dim", [](ForwardChunkArgs& a) { a.q.shape[2] = -8; }, "non-positive"},
      {"huge shape",
       [](ForwardChunkArgs& a) {
         a.q.shape = {1 << 20, 1 << 20, 1 << 20, 64};
       },
       "too large"},
      {"metadata size", [&](ForwardChunkArgs& a) { a.kv_meta.doc = short_doc; }, "kv_meta.doc"},
      {"negative start", [](ForwardChunkArgs& a) { a.q_meta.start = -1; }, "q_meta.start"},
      {"output size", [&](ForwardChunkArgs& a) { a.out = short_out; }, "out has"},
      {"lse size", [&](ForwardChunkArgs& a) { a.lse = short_out; }, "lse has"},
  };
  auto backend = testing::MakeCpuBackend();
  for (const BadCase& c : cases) {
    Fixture f;
    ForwardChunkArgs args = f.Forward();
    c.mutate(args);
    const absl::Status s = backend->Forward(args);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.name << ": " << s;
    EXPECT_NE(s.message().find(c.expected_in_message), absl::string_view::npos)
        << c.name << ": " << s.message();
  }
}

TEST(ValidateTest, BadBackwardArgumentsAreClearErrors) {
  auto backend = testing::MakeCpuBackend();
  std::vector<float> short_grad(5);
  {
    Fixture f;
    BackwardChunkArgs a = f.Backward();
    a.dout.shape[2] = 4;
    a.dout.size_bytes /= 2;
    const absl::Status s = backend->Backward(a);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("dout.shape"), absl::string_view::npos) << s;
  }
  {
    Fixture f;
    BackwardChunkArgs a = f.Backward();
    a.dk = short_grad;
    const absl::Status s = backend->Backward(a);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("dk has"), absl::string_view::npos) << s;
  }
  {
    Fixture f;
    BackwardChunkArgs a = f.Backward();
    a.layer.dropout = 0.5f;
    EXPECT_EQ(backend->Backward(a).code(), absl::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace ringattn::kernels
