// The C++ client against an in-process fake of the public AttentionService
// on 127.0.0.1 (what it sends, and how it reads well-formed, malformed and
// truncated answers), and against a real local cluster (handles, release,
// the server's errors as they reach a caller).
#include "client/attention_client.h"

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/local_cluster.h"
#include "client/synthetic_inputs.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "grpcpp/server_context.h"
#include "gtest/gtest.h"
#include "kernels/reference/synthetic_batch.h"
#include "proto/wire/tensor_stream.h"
#include "tests/kernels/testing/attention_case.h"
#include "tests/server/testing/service_checks.h"

namespace ringattn::client {
namespace {

namespace v1 = attention::v1;
using ForwardStream = grpc::ServerReaderWriter<v1::ForwardResponse, v1::ForwardRequest>;
using BackwardStream = grpc::ServerReaderWriter<v1::BackwardResponse, v1::BackwardRequest>;

// --- The fake service ------------------------------------------------------

// Each RPC runs the test's handler; what the client sent is kept (under a
// lock: handlers run on the server's threads).
class FakeAttentionService final : public v1::AttentionService::Service {
 public:
  std::function<grpc::Status(grpc::ServerContext*, ForwardStream*)> forward;
  std::function<grpc::Status(grpc::ServerContext*, BackwardStream*)> backward;
  std::function<grpc::Status(const v1::ReleaseRequest&)> release;
  std::function<grpc::Status(v1::ClusterStatusResponse*)> cluster_status;

  grpc::Status Forward(grpc::ServerContext* ctx, ForwardStream* stream) override {
    return forward ? forward(ctx, stream) : grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "");
  }
  grpc::Status Backward(grpc::ServerContext* ctx, BackwardStream* stream) override {
    return backward ? backward(ctx, stream) : grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "");
  }
  grpc::Status Release(grpc::ServerContext*, const v1::ReleaseRequest* req,
                       v1::ReleaseResponse*) override {
    return release ? release(*req) : grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "");
  }
  grpc::Status ClusterStatus(grpc::ServerContext*, const v1::ClusterStatusRequest*,
                             v1::ClusterStatusResponse* resp) override {
    return cluster_status ? cluster_status(resp)
                          : grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "");
  }
};

// Every request of a stream, until the client is done writing.
template <typename Request, typename Stream>
std::vector<Request> ReadAll(Stream* stream) {
  std::vector<Request> all;
  Request r;
  while (stream->Read(&r)) all.push_back(r);
  return all;
}

// Waits, bounded, until the client cancels the call or gives up on it.
grpc::Status BlockUntilCancelled(grpc::ServerContext* ctx, std::atomic<bool>& entered) {
  entered = true;
  for (int i = 0; i < 3000 && !ctx->IsCancelled(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return grpc::Status(grpc::StatusCode::ABORTED, "the fake gave up waiting");
}

v1::TensorChunk Piece(const std::string& name, const std::string& dtype,
                      const std::vector<int64_t>& shape, uint64_t offset, std::string data) {
  v1::TensorChunk c;
  c.set_name(name);
  c.set_dtype(dtype);
  for (int64_t d : shape) c.add_shape(d);
  c.set_offset(offset);
  c.set_data(std::move(data));
  return c;
}

// `bytes` as consecutive pieces of the sizes in `sizes` (repeated as needed).
std::vector<v1::TensorChunk> Pieces(const std::string& name, const std::string& dtype,
                                    const std::vector<int64_t>& shape, const std::string& bytes,
                                    const std::vector<size_t>& sizes) {
  std::vector<v1::TensorChunk> out;
  size_t at = 0;
  for (size_t i = 0; at < bytes.size() || out.empty(); ++i) {
    const size_t n = std::min(sizes[i % sizes.size()], bytes.size() - at);
    out.push_back(Piece(name, dtype, shape, at, bytes.substr(at, n)));
    at += n;
  }
  return out;
}

std::string Pattern(size_t n, int seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 7 + seed) % 253);
  return s;
}

std::string Str(std::span<const std::byte> b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

// Reassembles the pieces of one tensor from requests in stream order,
// expecting each well formed: the tensor's dtype and whole shape on every
// piece, offsets that tile it, none over the wire's piece size.
template <typename Request>
std::string Collect(const std::vector<Request>& reqs, const std::string& name,
                    const std::string& dtype, const std::vector<int64_t>& shape,
                    int* pieces = nullptr) {
  std::string all;
  int n = 0;
  for (const Request& r : reqs) {
    if (!r.has_chunk() || r.chunk().name() != name) continue;
    const v1::TensorChunk& c = r.chunk();
    EXPECT_EQ(c.dtype(), dtype) << name;
    EXPECT_EQ(std::vector<int64_t>(c.shape().begin(), c.shape().end()), shape) << name;
    EXPECT_EQ(c.offset(), all.size()) << name << " piece " << n;
    EXPECT_LE(c.data().size(), wire::kChunkBytes) << name << " piece " << n;
    all += c.data();
    ++n;
  }
  if (pieces != nullptr) *pieces = n;
  return all;
}

// Names of the tensors in the order their first pieces came.
template <typename Request>
std::vector<std::string> TensorOrder(const std::vector<Request>& reqs) {
  std::vector<std::string> names;
  for (const Request& r : reqs) {
    if (r.has_chunk() && (names.empty() || names.back() != r.chunk().name())) {
      names.push_back(r.chunk().name());
    }
  }
  return names;
}

// Client inputs that own their bytes.
struct Inputs {
  std::string q, k, v;
  std::vector<int32_t> doc, vision;
  std::vector<uint8_t> padding;
  ForwardInputs in;

  std::vector<int64_t> QShape() const { return {in.batch, in.heads, in.seq_len, in.head_dim}; }
  std::vector<int64_t> KvShape() const { return {in.batch, in.kv_heads, in.seq_len, in.head_dim}; }
  std::vector<int64_t> LseShape() const { return {in.batch, in.heads, in.seq_len}; }
  size_t Width() const { return wire::WireDTypeSize(in.dtype); }
  size_t QBytes() const {
    return static_cast<size_t>(in.batch * in.heads * in.seq_len * in.head_dim) * Width();
  }
  size_t KvBytes() const {
    return static_cast<size_t>(in.batch * in.kv_heads * in.seq_len * in.head_dim) * Width();
  }
  size_t LseBytes() const { return static_cast<size_t>(in.batch * in.heads * in.seq_len) * 4; }
};

std::unique_ptr<Inputs> MakeInputs(const std::string& dtype, int64_t b, int64_t h, int64_t hkv,
                                   int64_t s, int64_t d, bool metadata) {
  auto x = std::make_unique<Inputs>();
  x->in.dtype = dtype;
  x->in.batch = b;
  x->in.heads = h;
  x->in.kv_heads = hkv;
  x->in.seq_len = s;
  x->in.head_dim = d;
  x->q = Pattern(x->QBytes(), 1);
  x->k = Pattern(x->KvBytes(), 2);
  x->v = Pattern(x->KvBytes(), 3);
  x->in.q = std::as_bytes(std::span(x->q.data(), x->q.size()));
  x->in.k = std::as_bytes(std::span(x->k.data(), x->k.size()));
  x->in.v = std::as_bytes(std::span(x->v.data(), x->v.size()));
  if (metadata) {
    for (int64_t i = 0; i < b * s; ++i) {
      x->doc.push_back(static_cast<int32_t>(1 + i / 5));
      x->vision.push_back(i % 4 == 1 ? static_cast<int32_t>(i) : -1);
      x->padding.push_back(static_cast<uint8_t>(i % 3 == 0));
    }
    x->in.doc_ids = std::span<const int32_t>(x->doc);
    x->in.vision_groups = std::span<const int32_t>(x->vision);
    x->in.padding_mask = std::span<const uint8_t>(x->padding);
  }
  x->in.layer.set_kind(v1::LayerConfig::KIND_SLIDING);
  x->in.layer.set_window(17);
  x->in.layer.set_scale(0.25f);
  x->in.layer.set_causal(false);
  return x;
}

template <typename T>
std::string BytesOfVector(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

void ExpectStatus(const absl::Status& s, absl::StatusCode code, const std::string& needle) {
  EXPECT_EQ(s.code(), code) << s;
  EXPECT_NE(s.message().find(needle), absl::string_view::npos)
      << "'" << s.message() << "' does not name '" << needle << "'";
}

class AttentionClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.SetMaxReceiveMessageSize(8 << 20);
    builder.SetMaxSendMessageSize(8 << 20);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);
    client_ = AttentionClient::Connect(Address());
  }

  void TearDown() override {
    client_.reset();
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  }

  std::string Address() const { return absl::StrCat("127.0.0.1:", port_); }

  // A forward handler that keeps the requests and answers with `answer`
  // (session first), then `status`.
  void AnswerForward(std::vector<v1::ForwardResponse> answer,
                     grpc::Status status = grpc::Status::OK) {
    service_.forward = [this, answer = std::move(answer), status](grpc::ServerContext*,
                                                                  ForwardStream* s) {
      std::vector<v1::ForwardRequest> reqs = ReadAll<v1::ForwardRequest>(s);
      {
        std::lock_guard<std::mutex> lock(mu_);
        forward_requests_ = std::move(reqs);
      }
      for (const v1::ForwardResponse& r : answer) s->Write(r);
      return status;
    };
  }

  void AnswerBackward(std::vector<v1::BackwardResponse> answer,
                      grpc::Status status = grpc::Status::OK) {
    service_.backward = [this, answer = std::move(answer), status](grpc::ServerContext*,
                                                                   BackwardStream* s) {
      std::vector<v1::BackwardRequest> reqs = ReadAll<v1::BackwardRequest>(s);
      {
        std::lock_guard<std::mutex> lock(mu_);
        backward_requests_ = std::move(reqs);
      }
      for (const v1::BackwardResponse& r : answer) s->Write(r);
      return status;
    };
  }

  std::vector<v1::ForwardRequest> ForwardRequests() {
    std::lock_guard<std::mutex> lock(mu_);
    return forward_requests_;
  }
  std::vector<v1::BackwardRequest> BackwardRequests() {
    std::lock_guard<std::mutex> lock(mu_);
    return backward_requests_;
  }

  FakeAttentionService service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::unique_ptr<AttentionClient> client_;
  std::mutex mu_;
  std::vector<v1::ForwardRequest> forward_requests_;    // Guarded by mu_.
  std::vector<v1::BackwardRequest> backward_requests_;  // Guarded by mu_.
};

v1::ForwardResponse Session(const std::string& handle) {
  v1::ForwardResponse r;
  r.mutable_session()->set_handle(handle);
  r.mutable_session()->set_padded_len(64);
  r.mutable_session()->set_cp(2);
  r.mutable_session()->set_ring_generation(9);
  return r;
}

v1::ForwardResponse ForwardChunk(v1::TensorChunk c) {
  v1::ForwardResponse r;
  *r.mutable_chunk() = std::move(c);
  return r;
}

v1::ForwardResponse ForwardMetrics(double seconds) {
  v1::ForwardResponse r;
  r.mutable_metrics()->set_seconds(seconds);
  r.mutable_metrics()->add_ranks()->set_rank(1);
  return r;
}

v1::BackwardResponse BackwardChunk(v1::TensorChunk c) {
  v1::BackwardResponse r;
  *r.mutable_chunk() = std::move(c);
  return r;
}

// A well-formed forward answer for `x`: session, out and lse in pieces of
// odd sizes, interleaved, then metrics.
std::vector<v1::ForwardResponse> GoodForwardAnswer(const Inputs& x, const std::string& out,
                                                   const std::string& lse) {
  std::vector<v1::ForwardResponse> a = {Session("s1-abc")};
  const auto out_pieces = Pieces("out", x.in.dtype, x.QShape(), out, {7, 1, 4093});
  const auto lse_pieces = Pieces("lse", "FP32", x.LseShape(), lse, {5, 3});
  for (size_t i = 0; i < std::max(out_pieces.size(), lse_pieces.size()); ++i) {
    if (i < out_pieces.size()) a.push_back(ForwardChunk(out_pieces[i]));
    if (i < lse_pieces.size()) a.push_back(ForwardChunk(lse_pieces[i]));
  }
  a.push_back(ForwardMetrics(1.5));
  return a;
}

// --- Forward: what the client sends ----------------------------------------

TEST_F(AttentionClientTest, ForwardSendsTheHeaderThenQKVAndMetadataAsWellFormedPieces) {
  // q of 4.1 MiB: two pieces of the wire's size and a rest.
  auto x = MakeInputs("FP32", 2, 4, 2, 2100, 64, /*metadata=*/true);
  ASSERT_GT(x->QBytes(), 2 * wire::kChunkBytes);
  AnswerForward(GoodForwardAnswer(*x, Pattern(x->QBytes(), 9), Pattern(x->LseBytes(), 8)));
  absl::StatusOr<ForwardOutputs> got = client_->Forward(x->in, absl::Seconds(60));
  ASSERT_TRUE(got.ok()) << got.status();

  const std::vector<v1::ForwardRequest> reqs = ForwardRequests();
  ASSERT_FALSE(reqs.empty());
  ASSERT_TRUE(reqs[0].has_header());
  const v1::ForwardHeader& h = reqs[0].header();
  EXPECT_EQ(h.dtype(), "FP32");
  EXPECT_EQ(h.batch(), 2);
  EXPECT_EQ(h.heads(), 4);
  EXPECT_EQ(h.kv_heads(), 2);
  EXPECT_EQ(h.seq_len(), 2100);
  EXPECT_EQ(h.head_dim(), 64);
  EXPECT_EQ(h.layer().kind(), v1::LayerConfig::KIND_SLIDING);
  EXPECT_EQ(h.layer().window(), 17);
  EXPECT_EQ(h.layer().scale(), 0.25f);
  ASSERT_TRUE(h.layer().has_causal());
  EXPECT_FALSE(h.layer().causal());
  EXPECT_FALSE(h.layer().has_vision_bidirectional());
  for (size_t i = 1; i < reqs.size(); ++i) EXPECT_TRUE(reqs[i].has_chunk()) << "request " << i;

  EXPECT_EQ(TensorOrder(reqs),
            (std::vector<std::string>{"q", "k", "v", "doc_ids", "vision_groups", "padding_mask"}));
  int q_pieces = 0;
  EXPECT_EQ(Collect(reqs, "q", "FP32", x->QShape(), &q_pieces), x->q);
  EXPECT_EQ(q_pieces, 3);
  EXPECT_EQ(Collect(reqs, "k", "FP32", x->KvShape()), x->k);
  EXPECT_EQ(Collect(reqs, "v", "FP32", x->KvShape()), x->v);
  const std::vector<int64_t> tokens = {2, 2100};
  EXPECT_EQ(Collect(reqs, "doc_ids", "INT32", tokens), BytesOfVector(x->doc));
  EXPECT_EQ(Collect(reqs, "vision_groups", "INT32", tokens), BytesOfVector(x->vision));
  EXPECT_EQ(Collect(reqs, "padding_mask", "BOOL", tokens), BytesOfVector(x->padding));
}

TEST_F(AttentionClientTest, ForwardWithoutMetadataSendsOnlyQKV) {
  auto x = MakeInputs("BF16", 1, 2, 1, 8, 4, /*metadata=*/false);
  AnswerForward(GoodForwardAnswer(*x, Pattern(x->QBytes(), 4), Pattern(x->LseBytes(), 5)));
  ASSERT_TRUE(client_->Forward(x->in, absl::Seconds(30)).ok());
  const std::vector<v1::ForwardRequest> reqs = ForwardRequests();
  EXPECT_EQ(TensorOrder(reqs), (std::vector<std::string>{"q", "k", "v"}));
  EXPECT_EQ(Collect(reqs, "q", "BF16", x->QShape()), x->q);
  EXPECT_EQ(Collect(reqs, "k", "BF16", x->KvShape()), x->k);
}

TEST_F(AttentionClientTest, ForwardOfEmptyTensorsStillSendsOneEmptyPieceEach) {
  // The client does not check sizes; what it sends says what it was given.
  auto x = MakeInputs("FP32", 1, 1, 1, 4, 4, /*metadata=*/false);
  x->in.q = {};
  x->in.k = {};
  x->in.v = {};
  AnswerForward({}, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "q is incomplete"));
  const absl::Status s = client_->Forward(x->in, absl::Seconds(30)).status();
  ExpectStatus(s, absl::StatusCode::kInvalidArgument, "q is incomplete");
  const std::vector<v1::ForwardRequest> reqs = ForwardRequests();
  ASSERT_EQ(reqs.size(), 4u);
  for (int i = 1; i < 4; ++i) {
    EXPECT_TRUE(reqs[i].chunk().data().empty());
    EXPECT_EQ(reqs[i].chunk().offset(), 0u);
  }
}

// --- Forward: how the client reads the answer ------------------------------

TEST_F(AttentionClientTest, ForwardReassemblesOutAndLseFromOddPiecesWithSessionAndMetrics) {
  for (const char* dtype : {"FP32", "BF16", "FP16"}) {
    SCOPED_TRACE(dtype);
    auto x = MakeInputs(dtype, 1, 2, 1, 300, 8, false);
    const std::string out = Pattern(x->QBytes(), 11);
    std::vector<float> lse(x->LseBytes() / 4);
    for (size_t i = 0; i < lse.size(); ++i) lse[i] = -1.5f * static_cast<float>(i);
    AnswerForward(GoodForwardAnswer(*x, out, BytesOfVector(lse)));
    absl::StatusOr<ForwardOutputs> got = client_->Forward(x->in, absl::Seconds(30));
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(Str(got->out), out);
    EXPECT_EQ(got->lse, lse);
    EXPECT_EQ(got->session.handle(), "s1-abc");
    EXPECT_EQ(got->session.padded_len(), 64);
    EXPECT_EQ(got->session.cp(), 2);
    EXPECT_EQ(got->session.ring_generation(), 9u);
    EXPECT_EQ(got->metrics.seconds(), 1.5);
    ASSERT_EQ(got->metrics.ranks_size(), 1);
    EXPECT_EQ(got->metrics.ranks(0).rank(), 1);
  }
}

struct BadAnswer {
  std::string name;
  // Builds the answer for inputs (FP32, B=1, H=2, S=6, D=4: out 192 bytes,
  // lse 48).
  std::function<std::vector<v1::ForwardResponse>(const Inputs&)> answer;
  std::string needle;  // What the client's error names.
};

std::vector<BadAnswer> BadForwardAnswers() {
  auto out = [](const Inputs& x) { return Pattern(x.QBytes(), 1); };
  auto lse = [](const Inputs& x) { return Pattern(x.LseBytes(), 2); };
  auto lse_chunk = [lse](const Inputs& x) {
    return ForwardChunk(Piece("lse", "FP32", x.LseShape(), 0, lse(x)));
  };
  auto whole_out = [out](const Inputs& x) {
    return ForwardChunk(Piece("out", "FP32", x.QShape(), 0, out(x)));
  };
  return {
      {"OutInAnotherDType",
       [=](const Inputs& x) {
         return std::vector{Session("h"),
                            ForwardChunk(Piece("out", "FP16", x.QShape(), 0, out(x).substr(96))),
                            lse_chunk(x)};
       },
       "out.dtype is 'FP16', expected FP32"},
      {"OutOfAnotherShape",
       [=](const Inputs& x) {
         return std::vector{Session("h"),
                            ForwardChunk(Piece("out", "FP32", {1, 2, 4, 6}, 0, out(x))),
                            lse_chunk(x)};
       },
       "out.shape is [1,2,4,6], expected [1,2,6,4]"},
      {"OutPieceAfterAGap",
       [=](const Inputs& x) {
         return std::vector{
             Session("h"), ForwardChunk(Piece("out", "FP32", x.QShape(), 0, out(x).substr(0, 64))),
             ForwardChunk(Piece("out", "FP32", x.QShape(), 80, out(x).substr(80))), lse_chunk(x)};
       },
       "out piece at byte 80 is out of order (expected 64)"},
      {"OutPieceOverlapping",
       [=](const Inputs& x) {
         return std::vector{
             Session("h"), ForwardChunk(Piece("out", "FP32", x.QShape(), 0, out(x).substr(0, 100))),
             ForwardChunk(Piece("out", "FP32", x.QShape(), 96, out(x).substr(96))), lse_chunk(x)};
       },
       "out piece at byte 96 is out of order (expected 100)"},
      {"OutSentTwice",
       [=](const Inputs& x) {
         return std::vector{Session("h"), whole_out(x), whole_out(x), lse_chunk(x)};
       },
       "out piece at byte 0 is out of order (expected 192)"},
      {"OutLongerThanItsShape",
       [=](const Inputs& x) {
         return std::vector{Session("h"),
                            ForwardChunk(Piece("out", "FP32", x.QShape(), 0, out(x) + "x")),
                            lse_chunk(x)};
       },
       "out has more than the 192 bytes its shape holds"},
      {"OutTruncated",
       [=](const Inputs& x) {
         return std::vector{
             Session("h"), ForwardChunk(Piece("out", "FP32", x.QShape(), 0, out(x).substr(0, 191))),
             lse_chunk(x)};
       },
       "out is incomplete: got 191 of 192 bytes"},
      {"LseMissing",
       [=](const Inputs& x) {
         return std::vector{Session("h"), whole_out(x)};
       },
       "lse is incomplete: got 0 of 48 bytes"},
      {"NoTensorsAtAll", [=](const Inputs&) { return std::vector{Session("h")}; }, "is incomplete"},
      {"EmptyStream", [=](const Inputs&) { return std::vector<v1::ForwardResponse>{}; },
       "bad response"},
      {"UnexpectedTensor",
       [=](const Inputs& x) {
         return std::vector{Session("h"), whole_out(x), lse_chunk(x),
                            ForwardChunk(Piece("dq", "FP32", x.QShape(), 0, out(x)))};
       },
       "unexpected tensor 'dq'"},
      // Tensors complete, but no session: there is no handle to go on with.
      {"NoSession",
       [=](const Inputs& x) {
         return std::vector{whole_out(x), lse_chunk(x)};
       },
       "session"},
  };
}

class AttentionClientBadForwardTest : public AttentionClientTest,
                                      public ::testing::WithParamInterface<BadAnswer> {};

TEST_P(AttentionClientBadForwardTest, MalformedAnswerIsInternalNamingWhatIsWrong) {
  auto x = MakeInputs("FP32", 1, 2, 1, 6, 4, false);
  AnswerForward(GetParam().answer(*x));
  const absl::StatusOr<ForwardOutputs> got = client_->Forward(x->in, absl::Seconds(30));
  ASSERT_FALSE(got.ok()) << "a malformed answer was taken";
  ExpectStatus(got.status(), absl::StatusCode::kInternal, GetParam().needle);
  EXPECT_EQ(got.status().message().rfind("bad response: ", 0), 0u) << got.status();
}

INSTANTIATE_TEST_SUITE_P(Answers, AttentionClientBadForwardTest,
                         ::testing::ValuesIn(BadForwardAnswers()),
                         [](const auto& info) { return info.param.name; });

// --- Forward: the server's errors, deadlines, cancellation -----------------

TEST_F(AttentionClientTest, ForwardSurfacesTheServersCodeAndMessage) {
  auto x = MakeInputs("FP32", 1, 2, 1, 6, 4, false);
  for (const auto& [code, want] :
       {std::pair{grpc::StatusCode::INVALID_ARGUMENT, absl::StatusCode::kInvalidArgument},
        {grpc::StatusCode::NOT_FOUND, absl::StatusCode::kNotFound},
        {grpc::StatusCode::RESOURCE_EXHAUSTED, absl::StatusCode::kResourceExhausted},
        {grpc::StatusCode::UNAVAILABLE, absl::StatusCode::kUnavailable},
        {grpc::StatusCode::FAILED_PRECONDITION, absl::StatusCode::kFailedPrecondition}}) {
    const std::string message = absl::StrCat("kv_heads must divide heads (code ", code, ")");
    AnswerForward({}, grpc::Status(code, message));
    const absl::Status s = client_->Forward(x->in, absl::Seconds(30)).status();
    EXPECT_EQ(s.code(), want) << s;
    EXPECT_EQ(s.message(), message);
  }
}

// A server error wins over whatever the stream held before it.
TEST_F(AttentionClientTest, ForwardReturnsTheServersErrorOverAMalformedOrCompleteAnswer) {
  auto x = MakeInputs("FP32", 1, 2, 1, 6, 4, false);
  AnswerForward({Session("h"), ForwardChunk(Piece("out", "BF16", {1}, 5, "zz"))},
                grpc::Status(grpc::StatusCode::UNAVAILABLE, "worker 1 is gone"));
  ExpectStatus(client_->Forward(x->in, absl::Seconds(30)).status(), absl::StatusCode::kUnavailable,
               "worker 1 is gone");
  AnswerForward(GoodForwardAnswer(*x, Pattern(x->QBytes(), 1), Pattern(x->LseBytes(), 1)),
                grpc::Status(grpc::StatusCode::DATA_LOSS, "late failure"));
  ExpectStatus(client_->Forward(x->in, absl::Seconds(30)).status(), absl::StatusCode::kDataLoss,
               "late failure");
}

// The server refuses after the header while the client still has about
// 24 MiB to stream: the client stops and returns the refusal promptly.
TEST_F(AttentionClientTest, ForwardRefusedAfterTheHeaderReturnsTheRefusalWithoutSendingItAll) {
  auto x = MakeInputs("FP32", 1, 8, 8, 4096, 64, false);
  std::atomic<int> read{0};
  service_.forward = [&read](grpc::ServerContext*, ForwardStream* s) {
    v1::ForwardRequest r;
    if (s->Read(&r)) ++read;
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "over the limit per call");
  };
  const absl::Time start = absl::Now();
  const absl::Status s = client_->Forward(x->in, absl::Seconds(60)).status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(20));
  ExpectStatus(s, absl::StatusCode::kResourceExhausted, "over the limit per call");
  EXPECT_EQ(read, 1);
}

TEST_F(AttentionClientTest, ForwardPastItsTimeoutIsDeadlineExceeded) {
  std::atomic<bool> entered{false};
  service_.forward = [&](grpc::ServerContext* ctx, ForwardStream*) {
    return BlockUntilCancelled(ctx, entered);
  };
  auto x = MakeInputs("FP32", 1, 2, 1, 6, 4, false);
  const absl::Time start = absl::Now();
  const absl::Status s = client_->Forward(x->in, absl::Milliseconds(300)).status();
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_GE(took, absl::Milliseconds(250));
  EXPECT_LT(took, absl::Seconds(10));
}

TEST_F(AttentionClientTest, CancelAllEndsAForwardInFlightAsCancelled) {
  std::atomic<bool> entered{false};
  service_.forward = [&](grpc::ServerContext* ctx, ForwardStream*) {
    return BlockUntilCancelled(ctx, entered);
  };
  client_->CancelAll();  // Nothing in flight: nothing happens.
  auto x = MakeInputs("FP32", 1, 2, 1, 6, 4, false);
  absl::Status s = absl::UnknownError("not run");
  std::thread call([&] { s = client_->Forward(x->in, absl::Seconds(60)).status(); });
  for (int i = 0; i < 1000 && !entered; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(entered) << "the call never reached the server";
  const absl::Time cancelled = absl::Now();
  client_->CancelAll();
  call.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
  EXPECT_LT(absl::Now() - cancelled, absl::Seconds(10));

  // The finished call is no longer tracked: a later call is not cancelled.
  AnswerForward(GoodForwardAnswer(*x, Pattern(x->QBytes(), 1), Pattern(x->LseBytes(), 1)));
  client_->CancelAll();
  EXPECT_TRUE(client_->Forward(x->in, absl::Seconds(30)).ok());
}

TEST_F(AttentionClientTest, CancelAllEndsABackwardInFlightAsCancelled) {
  std::atomic<bool> entered{false};
  service_.backward = [&](grpc::ServerContext* ctx, BackwardStream*) {
    return BlockUntilCancelled(ctx, entered);
  };
  auto x = MakeInputs("FP32", 1, 2, 1, 6, 4, false);
  absl::Status s = absl::UnknownError("not run");
  std::thread call([&] { s = client_->Backward(x->in, "h", x->in.q, absl::Seconds(60)).status(); });
  for (int i = 0; i < 1000 && !entered; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(entered);
  client_->CancelAll();
  call.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
}

TEST(AttentionClientNoServerTest, ForwardToAClosedPortIsUnavailable) {
  // A port that was just free: a server started and stopped on it.
  int port = 0;
  {
    FakeAttentionService service;
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&service);
    std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
    ASSERT_NE(server, nullptr);
    server->Shutdown(std::chrono::system_clock::now());
  }
  auto client = AttentionClient::Connect(absl::StrCat("127.0.0.1:", port));
  auto x = MakeInputs("FP32", 1, 2, 1, 6, 4, false);
  const absl::Time start = absl::Now();
  const absl::Status s = client->Forward(x->in, absl::Seconds(20)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_LT(absl::Now() - start, absl::Seconds(15));
  EXPECT_EQ(client->Release("h").code(), absl::StatusCode::kUnavailable);
}

// --- Backward ----------------------------------------------------------------

std::vector<v1::BackwardResponse> GoodBackwardAnswer(const Inputs& x, const std::string& dq,
                                                     const std::string& dk, const std::string& dv) {
  std::vector<v1::BackwardResponse> a;
  for (auto& c : Pieces("dq", "FP32", x.QShape(), dq, {13, 3})) a.push_back(BackwardChunk(c));
  for (auto& c : Pieces("dk", "FP32", x.KvShape(), dk, {1, 100})) a.push_back(BackwardChunk(c));
  for (auto& c : Pieces("dv", "FP32", x.KvShape(), dv, {64})) a.push_back(BackwardChunk(c));
  v1::BackwardResponse m;
  m.mutable_metrics()->set_flops(123.0);
  a.push_back(m);
  return a;
}

std::vector<float> Floats(size_t n, float scale) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = scale * static_cast<float>(i) - 3.0f;
  return v;
}

TEST_F(AttentionClientTest, BackwardSendsTheHandleThenDoutAndReadsDqDkDv) {
  auto x = MakeInputs("BF16", 1, 4, 2, 300, 16, false);
  const std::string dout = Pattern(x->QBytes(), 21);
  const std::vector<float> dq = Floats(x->QBytes() / 2, 0.5f);
  const std::vector<float> dk = Floats(x->KvBytes() / 2, -0.25f);
  const std::vector<float> dv = Floats(x->KvBytes() / 2, 2.0f);
  AnswerBackward(GoodBackwardAnswer(*x, BytesOfVector(dq), BytesOfVector(dk), BytesOfVector(dv)));
  absl::StatusOr<BackwardOutputs> got = client_->Backward(
      x->in, "s7-handle", std::as_bytes(std::span(dout.data(), dout.size())), absl::Seconds(30));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->dq, dq);
  EXPECT_EQ(got->dk, dk);
  EXPECT_EQ(got->dv, dv);
  EXPECT_EQ(got->metrics.flops(), 123.0);

  const std::vector<v1::BackwardRequest> reqs = BackwardRequests();
  ASSERT_FALSE(reqs.empty());
  ASSERT_TRUE(reqs[0].has_header());
  EXPECT_EQ(reqs[0].header().handle(), "s7-handle");
  EXPECT_EQ(TensorOrder(reqs), std::vector<std::string>{"dout"});
  EXPECT_EQ(Collect(reqs, "dout", "BF16", x->QShape()), dout);
}

TEST_F(AttentionClientTest, BackwardWithMalformedGradientsIsInternal) {
  auto x = MakeInputs("FP32", 1, 2, 1, 6, 4, false);
  const std::string dq = Pattern(x->QBytes(), 1), kv = Pattern(x->KvBytes(), 2);
  struct Case {
    std::string name;
    std::vector<v1::BackwardResponse> answer;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {"DkShapedLikeQ",
       {BackwardChunk(Piece("dq", "FP32", x->QShape(), 0, dq)),
        BackwardChunk(Piece("dk", "FP32", x->QShape(), 0, dq)),
        BackwardChunk(Piece("dv", "FP32", x->KvShape(), 0, kv))},
       "dk.shape is [1,2,6,4], expected [1,1,6,4]"},
      {"DqInBF16",
       {BackwardChunk(Piece("dq", "BF16", x->QShape(), 0, dq.substr(0, 96)))},
       "dq.dtype is 'BF16', expected FP32"},
      {"DvMissing",
       {BackwardChunk(Piece("dq", "FP32", x->QShape(), 0, dq)),
        BackwardChunk(Piece("dk", "FP32", x->KvShape(), 0, kv))},
       "dv is incomplete: got 0 of 96 bytes"},
      {"DkTruncated",
       {BackwardChunk(Piece("dq", "FP32", x->QShape(), 0, dq)),
        BackwardChunk(Piece("dk", "FP32", x->KvShape(), 0, kv.substr(0, 95))),
        BackwardChunk(Piece("dv", "FP32", x->KvShape(), 0, kv))},
       "dk is incomplete: got 95 of 96 bytes"},
      {"DqPieceOutOfOrder",
       {BackwardChunk(Piece("dq", "FP32", x->QShape(), 4, dq.substr(4)))},
       "dq piece at byte 4 is out of order (expected 0)"},
      {"ForwardTensorInABackward",
       {BackwardChunk(Piece("out", "FP32", x->QShape(), 0, dq))},
       "unexpected tensor 'out'"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    AnswerBackward(c.answer);
    const absl::Status s = client_->Backward(x->in, "h", x->in.q, absl::Seconds(30)).status();
    ExpectStatus(s, absl::StatusCode::kInternal, c.needle);
    EXPECT_EQ(s.message().rfind("bad response: ", 0), 0u) << s;
  }
}

TEST_F(AttentionClientTest, BackwardSurfacesTheServersCodeAndMessage) {
  auto x = MakeInputs("FP32", 1, 2, 1, 6, 4, false);
  AnswerBackward({}, grpc::Status(grpc::StatusCode::NOT_FOUND, "session 'gone' has expired"));
  const absl::Status s = client_->Backward(x->in, "gone", x->in.q, absl::Seconds(30)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_EQ(s.message(), "session 'gone' has expired");
}

// --- Release and ClusterStatus -----------------------------------------------

TEST_F(AttentionClientTest, ReleaseSendsTheHandleAndSurfacesTheServersAnswer) {
  std::mutex mu;
  std::vector<std::string> handles;
  service_.release = [&](const v1::ReleaseRequest& req) {
    std::lock_guard<std::mutex> lock(mu);
    handles.push_back(req.handle());
    return handles.size() == 1
               ? grpc::Status::OK
               : grpc::Status(grpc::StatusCode::NOT_FOUND, "no session '" + req.handle() + "'");
  };
  EXPECT_TRUE(client_->Release("s1-0000abcd").ok());
  const absl::Status again = client_->Release("s1-0000abcd");
  EXPECT_EQ(again.code(), absl::StatusCode::kNotFound) << again;
  EXPECT_EQ(again.message(), "no session 's1-0000abcd'");
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(handles, (std::vector<std::string>{"s1-0000abcd", "s1-0000abcd"}));
}

TEST_F(AttentionClientTest, StatusReturnsTheClusterStatusOrTheServersError) {
  service_.cluster_status = [](v1::ClusterStatusResponse* resp) {
    resp->set_cp(3);
    resp->set_ring_ready(true);
    resp->set_ring_generation(4);
    resp->set_open_sessions(2);
    v1::WorkerStatus* w = resp->add_workers();
    w->set_rank(2);
    w->set_address("127.0.0.1:5");
    w->set_up(true);
    return grpc::Status::OK;
  };
  absl::StatusOr<v1::ClusterStatusResponse> got = client_->Status();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->cp(), 3);
  EXPECT_TRUE(got->ring_ready());
  EXPECT_EQ(got->ring_generation(), 4u);
  EXPECT_EQ(got->open_sessions(), 2);
  ASSERT_EQ(got->workers_size(), 1);
  EXPECT_EQ(got->workers(0).address(), "127.0.0.1:5");

  service_.cluster_status = [](v1::ClusterStatusResponse*) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "no token");
  };
  const absl::Status s = client_->Status().status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << s;
  EXPECT_EQ(s.message(), "no token");
}

// --- Against a real cluster --------------------------------------------------

kernels::LayerConfig FullLayer() {
  kernels::LayerConfig layer;
  layer.scale = 0.125f;
  return layer;
}

class AttentionClientClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    LocalClusterOptions options;
    options.cp = 2;
    options.bin_dir = RINGATTN_BIN_DIR;
    options.ring_timeout_seconds = 30;
    absl::StatusOr<std::unique_ptr<LocalCluster>> c = LocalCluster::Start(options);
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = std::move(*c).release();
  }
  static void TearDownTestSuite() {
    if (cluster_ == nullptr) return;
    EXPECT_TRUE(cluster_->Stop().ok());
    delete cluster_;
    cluster_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(cluster_, nullptr) << "the cluster did not start";
    client_ = AttentionClient::Connect(cluster_->address());
  }

  static LocalCluster* cluster_;
  std::unique_ptr<AttentionClient> client_;
};

LocalCluster* AttentionClientClusterTest::cluster_ = nullptr;

TEST_F(AttentionClientClusterTest, Cp2_ForwardBackwardMatchTheOracleAndReleaseEndsTheHandle) {
  const kernels::reference::SyntheticBatch b = kernels::reference::MakeSyntheticBatch(
      {1, 4, 2, 80, 32}, {kernels::reference::GemmaLikeLayout(80)}, kernels::DType::kF32, 23);
  const server::testing::OracleResult want =
      server::testing::ComputeOracle(b, FullLayer(), /*backward=*/true);
  auto e = EncodeBatch(b, FullLayer());
  absl::StatusOr<ForwardOutputs> f = client_->Forward(e->in, absl::Seconds(60));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_FALSE(f->session.handle().empty());
  EXPECT_EQ(f->session.cp(), 2);
  EXPECT_EQ(server::testing::ForwardMismatch(b, want, f->out, f->lse), "");
  absl::StatusOr<BackwardOutputs> g = client_->Backward(
      e->in, f->session.handle(), std::as_bytes(std::span(e->dout)), absl::Seconds(60));
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(server::testing::BackwardMismatch(b, want, f->out, g->dq, g->dk, g->dv), "");

  ASSERT_TRUE(client_->Release(f->session.handle()).ok());
  ExpectStatus(client_->Release(f->session.handle()), absl::StatusCode::kNotFound,
               f->session.handle());
  ExpectStatus(client_
                   ->Backward(e->in, f->session.handle(), std::as_bytes(std::span(e->dout)),
                              absl::Seconds(60))
                   .status(),
               absl::StatusCode::kNotFound, f->session.handle());
}

TEST_F(AttentionClientClusterTest, Cp2_TwoForwardsGetDistinctHandles) {
  const kernels::reference::SyntheticBatch b = kernels::reference::MakeSyntheticBatch(
      {1, 2, 1, 32, 16}, {kernels::testing::SingleDocument(32)}, kernels::DType::kF32, 3);
  auto e = EncodeBatch(b, FullLayer());
  absl::StatusOr<ForwardOutputs> f1 = client_->Forward(e->in, absl::Seconds(60));
  absl::StatusOr<ForwardOutputs> f2 = client_->Forward(e->in, absl::Seconds(60));
  ASSERT_TRUE(f1.ok() && f2.ok()) << f1.status() << " " << f2.status();
  EXPECT_NE(f1->session.handle(), f2->session.handle());
  EXPECT_TRUE(client_->Release(f1->session.handle()).ok());
  EXPECT_TRUE(client_->Release(f2->session.handle()).ok());
}

// The client checks nothing itself: a q shorter than its shape and a head
// dim the service does not take reach the server, and its refusal comes back
// with its code and message.
TEST_F(AttentionClientClusterTest, Cp2_ServerRefusalsComeBackWithTheirCodeAndMessage) {
  const kernels::reference::SyntheticBatch b = kernels::reference::MakeSyntheticBatch(
      {1, 2, 1, 32, 16}, {kernels::testing::SingleDocument(32)}, kernels::DType::kF32, 4);
  auto e = EncodeBatch(b, FullLayer());
  ForwardInputs short_q = e->in;
  short_q.q = short_q.q.first(short_q.q.size() - 4);
  ExpectStatus(client_->Forward(short_q, absl::Seconds(60)).status(),
               absl::StatusCode::kInvalidArgument, "q is incomplete");
  ForwardInputs bad_dim = e->in;
  bad_dim.head_dim = 100000;
  ExpectStatus(client_->Forward(bad_dim, absl::Seconds(60)).status(),
               absl::StatusCode::kInvalidArgument, "head_dim");
  ExpectStatus(client_->Release("no-such-handle"), absl::StatusCode::kNotFound, "no-such-handle");
}

TEST_F(AttentionClientClusterTest, Cp2_StatusShowsTheRing) {
  absl::StatusOr<v1::ClusterStatusResponse> s = client_->Status();
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->cp(), 2);
  EXPECT_TRUE(s->ring_ready());
  ASSERT_EQ(s->workers_size(), 2);
  for (const v1::WorkerStatus& w : s->workers()) EXPECT_TRUE(w.up()) << w.rank();
}

}  // namespace
}  // namespace ringattn::client
