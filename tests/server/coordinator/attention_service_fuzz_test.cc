// Bad-input fuzzing of the public API: a seeded random harness sends valid
// and mutated Forward/Backward streams through the raw generated stub to a
// real local cluster (a coordinator and two worker processes on 127.0.0.1).
// Every call has a deadline; each outcome must be the status code its
// mutation calls for, and every success is checked against the fp64 oracle.
// After the run the daemons must still be up, hold no session, and serve a
// valid call correctly, and the coordinator's peak RSS must show that no
// declared size was allocated before it was checked.
//
// Environment (CI uses the defaults: at most 30 s of calls):
//   RINGATTN_FUZZ_SEED        seed of the whole run (printed; replays it)
//   RINGATTN_FUZZ_ITERATIONS  most cases to run (default 400)
//   RINGATTN_FUZZ_SECONDS     stop starting cases after this long (default 30)
//   RINGATTN_FUZZ_VERBOSE     print every call's outcome
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "attention/v1/attention_service.grpc.pb.h"
#include "client/local_cluster.h"
#include "client/shared_region.h"
#include "client/synthetic_inputs.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "kernels/reference/synthetic_batch.h"
#include "proto/wire/tensor_stream.h"
#include "tests/server/testing/service_checks.h"

namespace ringattn::coordinator {
namespace {

using attention::v1::BackwardRequest;
using attention::v1::BackwardResponse;
using attention::v1::ForwardRequest;
using attention::v1::ForwardResponse;
using attention::v1::TensorChunk;
using grpc::StatusCode;
using kernels::reference::SyntheticBatch;
using Rng = std::mt19937_64;

// Limits of the fuzzed coordinator: small, so that limits are reachable.
constexpr int64_t kMaxCallBytes = 6'000'000;
constexpr int64_t kMemoryBudgetBytes = 3'000'000;
constexpr double kRingTimeoutSeconds = 10;
// Long enough for any case; short enough to wait out at the end.
constexpr double kSessionTtlSeconds = 15;
constexpr auto kCallDeadline = std::chrono::seconds(30);

struct FuzzConfig {
  uint64_t seed = 20250611;
  int64_t iterations = 400;
  double seconds = 30;
};

FuzzConfig ConfigFromEnv() {
  FuzzConfig c;
  if (const char* s = std::getenv("RINGATTN_FUZZ_SEED")) c.seed = std::strtoull(s, nullptr, 10);
  if (const char* s = std::getenv("RINGATTN_FUZZ_ITERATIONS")) c.iterations = std::atoll(s);
  if (const char* s = std::getenv("RINGATTN_FUZZ_SECONDS")) c.seconds = std::atof(s);
  return c;
}

int64_t Uniform(Rng& rng, int64_t lo, int64_t hi) {  // [lo, hi]
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}
bool Chance(Rng& rng, double p) { return std::bernoulli_distribution(p)(rng); }
template <typename T>
const T& Pick(Rng& rng, const std::vector<T>& v) {
  return v[Uniform(rng, 0, static_cast<int64_t>(v.size()) - 1)];
}

// ---------------------------------------------------------------------------
// A valid problem and its messages.

struct Problem {
  SyntheticBatch batch;  // Values and the metadata the service will use.
  kernels::LayerConfig layer;
  attention::v1::LayerConfig wire_layer;
  bool send_doc = true, send_vision = true, send_padding = true;
  std::vector<uint8_t> q, k, v, dout;  // Encoded in the batch's dtype.
};

std::string DTypeName(const Problem& p) { return kernels::DTypeName(p.batch.dtype); }

attention::v1::ForwardHeader HeaderOf(const Problem& p) {
  attention::v1::ForwardHeader h;
  *h.mutable_layer() = p.wire_layer;
  h.set_dtype(DTypeName(p));
  h.set_batch(p.batch.shape.batch);
  h.set_heads(p.batch.shape.heads);
  h.set_kv_heads(p.batch.shape.kv_heads);
  h.set_seq_len(p.batch.shape.seq_len);
  h.set_head_dim(p.batch.shape.head_dim);
  return h;
}

kernels::reference::RowLayout RandomLayout(Rng& rng, int64_t S) {
  kernels::reference::RowLayout l;
  const int64_t real = S - Uniform(rng, 0, S / 4);
  for (int64_t pos = 0; pos < real && l.doc_lengths.size() < 4;) {
    const int64_t len = Uniform(rng, 1, real - pos);
    l.doc_lengths.push_back(len);
    pos += len;
  }
  for (int i = Uniform(rng, 0, 2); i > 0; --i) {
    const int64_t b = Uniform(rng, 0, S - 1);
    l.images.push_back({b, Uniform(rng, b + 1, S)});
  }
  return l;
}

// Window choices for sliding layers, from one token to "no limit at all".
int64_t RandomWindow(Rng& rng, int64_t S) {
  switch (Uniform(rng, 0, 5)) {
    case 0:
      return 1;
    case 1:
      return std::numeric_limits<int64_t>::max();
    case 2:
      return int64_t{1} << Uniform(rng, 31, 62);
    default:
      return Uniform(rng, 1, S + 8);
  }
}

// Metadata values beyond what a well-behaved client sends: the mask rules
// (doc <= 0 and padding != 0 mean padding, vision < 0 means text) define
// the result for every int32 and byte, and the oracle applies the same rules.
void ExtremeMetadata(Rng& rng, SyntheticBatch& b) {
  constexpr int32_t kMin = std::numeric_limits<int32_t>::min();
  constexpr int32_t kMax = std::numeric_limits<int32_t>::max();
  const std::vector<int32_t> docs = {kMin, -1, 0, 1, 1, 1, 2, 2, 3, kMax};
  const std::vector<int32_t> visions = {kMin, -7, -1, -1, -1, 0, 0, 1, kMax};
  const std::vector<uint8_t> pads = {0, 0, 0, 0, 1, 2, 255};
  for (size_t i = 0; i < b.doc.size(); ++i) {
    b.doc[i] = Pick(rng, docs);
    b.vision[i] = Pick(rng, visions);
    b.padding[i] = Pick(rng, pads);
  }
}

Problem RandomProblem(Rng& rng, bool extreme_metadata, bool extreme_window) {
  Problem p;
  const kernels::DType dtype =
      Pick(rng, std::vector<kernels::DType>{kernels::DType::kF32, kernels::DType::kBF16,
                                            kernels::DType::kF16});
  kernels::reference::BatchShape shape;
  shape.batch = Uniform(rng, 1, 2);
  shape.kv_heads = Uniform(rng, 1, 2);
  shape.heads = shape.kv_heads * Uniform(rng, 1, 3);
  shape.seq_len = Chance(rng, 0.1) ? Uniform(rng, 1, 4) : Uniform(rng, 5, 96);
  shape.head_dim = Pick(rng, std::vector<int64_t>{1, 3, 16, 32, 64, 80});
  std::vector<kernels::reference::RowLayout> layouts;
  for (int64_t b = 0; b < shape.batch; ++b) layouts.push_back(RandomLayout(rng, shape.seq_len));

  kernels::LayerConfig& layer = p.layer;
  layer.kind = Chance(rng, 0.5) ? kernels::LayerKind::kSliding : kernels::LayerKind::kFull;
  layer.window =
      layer.kind == kernels::LayerKind::kSliding
          ? (extreme_window ? RandomWindow(rng, shape.seq_len) : Uniform(rng, 1, shape.seq_len + 8))
          : (extreme_window
                 ? Pick(rng, std::vector<int64_t>{std::numeric_limits<int64_t>::min(), -1, 0})
                 : 512);
  layer.causal = Chance(rng, 0.8);
  layer.vision_bidirectional = Chance(rng, 0.7);
  const bool default_scale = Chance(rng, 0.5);
  layer.scale = default_scale ? 1.0f / std::sqrt(static_cast<float>(shape.head_dim))
                              : std::uniform_real_distribution<float>(0.05f, 0.4f)(rng);
  p.wire_layer = client::ToWire(layer);
  if (default_scale) p.wire_layer.clear_scale();
  if (layer.causal && Chance(rng, 0.5)) p.wire_layer.clear_causal();
  if (layer.vision_bidirectional && Chance(rng, 0.5)) p.wire_layer.clear_vision_bidirectional();

  p.batch = kernels::reference::MakeSyntheticBatch(shape, layouts, dtype, rng());
  if (extreme_metadata) ExtremeMetadata(rng, p.batch);
  p.send_doc = Chance(rng, 0.8);
  p.send_vision = Chance(rng, 0.8);
  p.send_padding = Chance(rng, 0.8);
  // What the service assumes for fields not sent (the API's defaults).
  for (size_t i = 0; i < p.batch.doc.size(); ++i) {
    if (!p.send_padding) p.batch.padding[i] = 0;
    if (!p.send_doc) p.batch.doc[i] = p.batch.padding[i] != 0 ? 0 : 1;
    if (!p.send_vision) p.batch.vision[i] = -1;
  }
  p.q = kernels::reference::Encode(p.batch.q, dtype);
  p.k = kernels::reference::Encode(p.batch.k, dtype);
  p.v = kernels::reference::Encode(p.batch.v, dtype);
  p.dout = kernels::reference::Encode(p.batch.dout, dtype);
  return p;
}

// One tensor of a request stream, before it is cut into pieces.
struct WireTensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

std::string AsString(const void* data, size_t n) {
  return std::string(static_cast<const char*>(data), n);
}

std::vector<WireTensor> ForwardTensors(const Problem& p) {
  const auto& s = p.batch.shape;
  const std::string dt = DTypeName(p);
  std::vector<WireTensor> t = {
      {"q", dt, {s.batch, s.heads, s.seq_len, s.head_dim}, AsString(p.q.data(), p.q.size())},
      {"k", dt, {s.batch, s.kv_heads, s.seq_len, s.head_dim}, AsString(p.k.data(), p.k.size())},
      {"v", dt, {s.batch, s.kv_heads, s.seq_len, s.head_dim}, AsString(p.v.data(), p.v.size())}};
  if (p.send_doc) {
    t.push_back({"doc_ids",
                 "INT32",
                 {s.batch, s.seq_len},
                 AsString(p.batch.doc.data(), p.batch.doc.size() * 4)});
  }
  if (p.send_vision) {
    t.push_back({"vision_groups",
                 "INT32",
                 {s.batch, s.seq_len},
                 AsString(p.batch.vision.data(), p.batch.vision.size() * 4)});
  }
  if (p.send_padding) {
    t.push_back({"padding_mask",
                 "BOOL",
                 {s.batch, s.seq_len},
                 AsString(p.batch.padding.data(), p.batch.padding.size())});
  }
  return t;
}

WireTensor DoutTensor(const Problem& p) {
  const auto& s = p.batch.shape;
  return {"dout",
          DTypeName(p),
          {s.batch, s.heads, s.seq_len, s.head_dim},
          AsString(p.dout.data(), p.dout.size())};
}

// A request stream as a list of messages; `piece_of[i]` names the tensor of
// message i ("" for a header or an empty message).
struct Stream {
  std::vector<TensorChunk> pieces;  // Only meaningful where piece_of[i] != "".
  std::vector<std::string> piece_of;
  std::vector<bool> is_header;
};

// Pieces of random size (the API allows any split, even mid-element, and
// empty pieces), interleaved across tensors at random but in order within
// each tensor: all of it valid.
void AppendPieces(Rng& rng, const std::vector<WireTensor>& tensors, bool empty_pieces,
                  Stream& out) {
  std::vector<std::vector<TensorChunk>> queues;
  for (const WireTensor& t : tensors) {
    std::vector<TensorChunk> q;
    const size_t n = t.bytes.size();
    const size_t piece = Chance(rng, 0.4)
                             ? std::max<size_t>(n, 1)
                             : Uniform(rng, std::max<size_t>(1, n / 40), std::max<size_t>(1, n));
    size_t at = 0;
    do {
      TensorChunk c;
      c.set_name(t.name);
      c.set_dtype(t.dtype);
      for (int64_t d : t.shape) c.add_shape(d);
      c.set_offset(at);
      const size_t len = std::min(piece, n - at);
      c.set_data(t.bytes.substr(at, len));
      at += len;
      q.push_back(std::move(c));
      if (empty_pieces && Chance(rng, 0.3)) {
        TensorChunk e = q.back();
        e.set_offset(at);
        e.clear_data();
        q.push_back(std::move(e));
      }
    } while (at < n);
    queues.push_back(std::move(q));
  }
  const bool interleave = Chance(rng, 0.5);
  std::vector<size_t> next(queues.size(), 0);
  for (size_t left = tensors.size(); left > 0;) {
    size_t i = 0;
    if (interleave) {
      i = Uniform(rng, 0, static_cast<int64_t>(queues.size()) - 1);
    }
    while (next[i] == queues[i].size()) i = (i + 1) % queues.size();
    out.pieces.push_back(queues[i][next[i]]);
    out.piece_of.push_back(queues[i][next[i]].name());
    out.is_header.push_back(false);
    if (++next[i] == queues[i].size()) --left;
  }
}

void AppendHeader(Stream& s) {
  s.pieces.emplace_back();
  s.piece_of.emplace_back();
  s.is_header.push_back(true);
}

// Indices of the messages carrying pieces of `name`.
std::vector<size_t> PiecesOf(const Stream& s, const std::string& name) {
  std::vector<size_t> idx;
  for (size_t i = 0; i < s.pieces.size(); ++i) {
    if (s.piece_of[i] == name) idx.push_back(i);
  }
  return idx;
}

void Erase(Stream& s, size_t i) {
  s.pieces.erase(s.pieces.begin() + i);
  s.piece_of.erase(s.piece_of.begin() + i);
  s.is_header.erase(s.is_header.begin() + i);
}

void Insert(Stream& s, size_t at, const TensorChunk& c, const std::string& of, bool header) {
  s.pieces.insert(s.pieces.begin() + at, c);
  s.piece_of.insert(s.piece_of.begin() + at, of);
  s.is_header.insert(s.is_header.begin() + at, header);
}

// ---------------------------------------------------------------------------
// Calls through the raw stub.

enum class Ending {
  kWritesDone,  // The normal end of a request stream.
  kCancel,      // The client cancels after writing what it had.
  kStall,       // The client stops writing but keeps the stream open.
  kCancelSoon,  // The client half-closes, then cancels within a few ms.
};

struct Reply {
  grpc::Status status;
  double seconds = 0;
  std::string handle;
  std::vector<std::byte> out;
  std::vector<float> lse, dq, dk, dv;
  std::string malformed;  // What is wrong with a successful response stream.
};

// Pieces for the request type: a header message is built by `header`.
template <typename Request>
std::vector<Request> Messages(const Stream& s, const std::function<Request()>& header) {
  std::vector<Request> msgs;
  for (size_t i = 0; i < s.pieces.size(); ++i) {
    if (s.is_header[i]) {
      msgs.push_back(header());
    } else if (s.piece_of[i].empty()) {
      msgs.emplace_back();  // A message with no part set.
    } else {
      Request r;
      *r.mutable_chunk() = s.pieces[i];
      msgs.push_back(std::move(r));
    }
  }
  return msgs;
}

template <typename Request, typename Response>
grpc::Status Drive(grpc::ClientContext& ctx, grpc::ClientReaderWriter<Request, Response>& stream,
                   const std::vector<Request>& msgs, Ending ending, int64_t cancel_after_us,
                   const std::function<void(const Response&)>& on_response) {
  for (const Request& m : msgs) {
    if (!stream.Write(m)) break;  // The server ended the call early.
  }
  if (ending == Ending::kWritesDone || ending == Ending::kCancelSoon) stream.WritesDone();
  if (ending == Ending::kCancelSoon) {
    // Lands anywhere from before the ring call is dispatched to after it ran.
    std::this_thread::sleep_for(std::chrono::microseconds(cancel_after_us));
  }
  if (ending == Ending::kCancel || ending == Ending::kCancelSoon) ctx.TryCancel();
  Response resp;
  while (stream.Read(&resp)) on_response(resp);
  return stream.Finish();
}

void SetDeadline(grpc::ClientContext& ctx, Ending ending) {
  ctx.set_deadline(std::chrono::system_clock::now() +
                   (ending == Ending::kStall ? std::chrono::milliseconds(1500)
                                             : std::chrono::milliseconds(kCallDeadline)));
}

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// `in_region`: outputs the call writes into a region (not streamed back).
Reply CallForward(attention::v1::AttentionService::Stub& stub, const Problem& p,
                  const std::vector<ForwardRequest>& msgs, Ending ending,
                  int64_t cancel_after_us = 0, const std::set<std::string>& in_region = {}) {
  const auto t0 = std::chrono::steady_clock::now();
  grpc::ClientContext ctx;
  SetDeadline(ctx, ending);
  auto stream = stub.Forward(&ctx);
  const auto& s = p.batch.shape;
  wire::TensorAssembler assembler(uint64_t{1} << 32);
  if (!in_region.contains("out")) {
    assembler.Expect("out", DTypeName(p), {s.batch, s.heads, s.seq_len, s.head_dim}, true);
  }
  if (!in_region.contains("lse"))
    assembler.Expect("lse", "FP32", {s.batch, s.heads, s.seq_len}, true);
  Reply r;
  int index = 0;
  bool metrics = false;
  r.status = Drive<ForwardRequest, ForwardResponse>(
      ctx, *stream, msgs, ending, cancel_after_us, [&](const ForwardResponse& resp) {
        // The API: the session first, then tensor pieces, metrics last.
        if (metrics) r.malformed += "a message after the metrics; ";
        if (resp.has_session()) {
          if (index != 0) r.malformed += "session not first; ";
          r.handle = resp.session().handle();
        } else if (resp.has_chunk()) {
          if (absl::Status st = assembler.Add(resp.chunk()); !st.ok() && r.malformed.empty()) {
            r.malformed = std::string(st.message());
          }
        } else if (resp.has_metrics()) {
          metrics = true;
          if (resp.metrics().ranks_size() < 1) r.malformed += "metrics without ranks; ";
        }
        ++index;
      });
  r.seconds = SecondsSince(t0);
  if (!r.status.ok()) return r;
  if (absl::Status st = assembler.Finish(); !st.ok()) r.malformed += std::string(st.message());
  if (r.handle.empty()) r.malformed += "no session handle; ";
  if (!metrics) r.malformed += "no metrics; ";
  if (r.malformed.empty()) {
    if (!in_region.contains("out")) r.out = assembler.Take("out");
    if (!in_region.contains("lse")) r.lse = wire::BytesAs<float>(assembler.Take("lse"));
  }
  return r;
}

Reply CallBackward(attention::v1::AttentionService::Stub& stub, const Problem& p,
                   const std::vector<BackwardRequest>& msgs, Ending ending,
                   int64_t cancel_after_us = 0) {
  const auto t0 = std::chrono::steady_clock::now();
  grpc::ClientContext ctx;
  SetDeadline(ctx, ending);
  auto stream = stub.Backward(&ctx);
  const auto& s = p.batch.shape;
  wire::TensorAssembler assembler(uint64_t{1} << 32);
  assembler.Expect("dq", "FP32", {s.batch, s.heads, s.seq_len, s.head_dim}, true);
  assembler.Expect("dk", "FP32", {s.batch, s.kv_heads, s.seq_len, s.head_dim}, true);
  assembler.Expect("dv", "FP32", {s.batch, s.kv_heads, s.seq_len, s.head_dim}, true);
  Reply r;
  bool metrics = false;
  r.status = Drive<BackwardRequest, BackwardResponse>(
      ctx, *stream, msgs, ending, cancel_after_us, [&](const BackwardResponse& resp) {
        if (metrics) r.malformed += "a message after the metrics; ";
        if (resp.has_chunk()) {
          if (absl::Status st = assembler.Add(resp.chunk()); !st.ok() && r.malformed.empty()) {
            r.malformed = std::string(st.message());
          }
        } else if (resp.has_metrics()) {
          metrics = true;
        }
      });
  r.seconds = SecondsSince(t0);
  if (!r.status.ok()) return r;
  if (absl::Status st = assembler.Finish(); !st.ok()) r.malformed += std::string(st.message());
  if (!metrics) r.malformed += "no metrics; ";
  if (r.malformed.empty()) {
    r.dq = wire::BytesAs<float>(assembler.Take("dq"));
    r.dk = wire::BytesAs<float>(assembler.Take("dk"));
    r.dv = wire::BytesAs<float>(assembler.Take("dv"));
  }
  return r;
}

grpc::Status CallRelease(attention::v1::AttentionService::Stub& stub, const std::string& handle) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kCallDeadline);
  attention::v1::ReleaseRequest req;
  req.set_handle(handle);
  attention::v1::ReleaseResponse resp;
  return stub.Release(&ctx, req, &resp);
}

// ---------------------------------------------------------------------------
// Mutations. Each turns a valid stream into one the API must refuse with
// `code` (or, for the valid_* ones, accept).

struct Mutation {
  std::string category;
  StatusCode code = StatusCode::OK;
  Ending ending = Ending::kWritesDone;
  int64_t cut = -1;    // Send only the first `cut` messages.
  bool or_ok = false;  // OK is right too (a cancel that came too late).
  int64_t cancel_after_us = 0;
};

// Bit patterns of NaN, +Inf and -Inf in each dtype.
std::string NonFinite(kernels::DType dtype, int which) {
  if (dtype == kernels::DType::kF32) {
    const uint32_t bits[] = {0x7fc00001u, 0x7f800000u, 0xff800000u};
    return AsString(&bits[which], 4);
  }
  const uint16_t bf16[] = {0x7fc1, 0x7f80, 0xff80};
  const uint16_t f16[] = {0x7e01, 0x7c00, 0xfc00};
  return AsString(dtype == kernels::DType::kBF16 ? &bf16[which] : &f16[which], 2);
}

// Overwrites element `elem` of the tensor spread over `idx` pieces.
void PoisonElement(Stream& s, const std::vector<size_t>& idx, size_t elem_bytes, size_t elem,
                   const std::string& value) {
  size_t at = elem * elem_bytes;
  for (size_t i : idx) {
    TensorChunk& c = s.pieces[i];
    for (size_t b = 0; b < value.size(); ++b) {
      const size_t pos = at + b;
      if (pos >= c.offset() && pos < c.offset() + c.data().size()) {
        (*c.mutable_data())[pos - c.offset()] = value[b];
      }
    }
  }
}

// Tensor-piece mutations shared by Forward (q, k, v, metadata) and
// Backward (dout). `required` are the names whose absence is an error.
// Returns false when the stream offers nothing to mutate this way.
bool MutatePieces(Rng& rng, const std::string& kind, Stream& s,
                  const std::vector<std::string>& names, const std::vector<std::string>& required,
                  kernels::DType dtype, Mutation& m) {
  const std::string name = Pick(rng, names);
  std::vector<size_t> idx = PiecesOf(s, name);
  // Pieces with data (empty pieces move nothing).
  std::vector<size_t> full;
  for (size_t i : idx) {
    if (!s.pieces[i].data().empty()) full.push_back(i);
  }
  m.code = StatusCode::INVALID_ARGUMENT;
  if (kind == "piece_out_of_order") {
    if (full.size() < 2) return false;
    const size_t a = Uniform(rng, 0, full.size() - 2);
    const size_t b = Uniform(rng, a + 1, full.size() - 1);
    std::swap(s.pieces[full[a]], s.pieces[full[b]]);
  } else if (kind == "piece_missing") {
    // Without its only piece an optional tensor is simply absent (valid).
    const bool optional = std::find(required.begin(), required.end(), name) == required.end();
    if (full.empty() || (optional && full.size() < 2)) return false;
    Erase(s, Pick(rng, full));
  } else if (kind == "piece_duplicate") {
    if (full.empty()) return false;
    const size_t i = Pick(rng, full);
    Insert(s, i + 1, s.pieces[i], s.piece_of[i], false);
  } else if (kind == "piece_overlap") {
    if (full.size() < 2) return false;
    TensorChunk& c = s.pieces[full[Uniform(rng, 1, full.size() - 1)]];
    c.set_offset(c.offset() - Uniform(rng, 1, std::min<int64_t>(c.offset(), 64)));
  } else if (kind == "piece_offset_past_end") {
    TensorChunk& c = s.pieces[Pick(rng, idx)];
    uint64_t total = wire::WireDTypeSize(c.dtype());
    for (int64_t d : c.shape()) total *= d;
    c.set_offset(Chance(rng, 0.5) ? total + Uniform(rng, 1, 1 << 20)
                                  : std::numeric_limits<uint64_t>::max() - Uniform(rng, 0, 7));
  } else if (kind == "piece_extra_bytes") {
    s.pieces[idx.back()].mutable_data()->append(Uniform(rng, 1, 9), '\x01');
  } else if (kind == "piece_short") {
    if (full.empty()) return false;
    std::string* d = s.pieces[full.back()].mutable_data();
    d->resize(d->size() - Uniform(rng, 1, d->size()));
  } else if (kind == "piece_shape_mismatch") {
    TensorChunk& c = s.pieces[Pick(rng, idx)];
    const std::vector<int64_t> was(c.shape().begin(), c.shape().end());
    switch (Uniform(rng, 0, 4)) {
      case 0:
        c.mutable_shape()->Set(Uniform(rng, 0, c.shape_size() - 1), Uniform(rng, 1, 200));
        break;
      case 1:
        c.mutable_shape()->RemoveLast();
        break;
      case 2:
        c.add_shape(1);
        break;
      case 3:
        c.mutable_shape()->Set(0, -c.shape(0));
        break;
      default:  // 2^40 elements declared on the piece.
        c.mutable_shape()->Set(0, int64_t{1} << 40);
        break;
    }
    if (std::vector<int64_t>(c.shape().begin(), c.shape().end()) == was) {
      c.mutable_shape()->Set(0, was[0] + 1);
    }
  } else if (kind == "piece_dtype_mismatch") {
    TensorChunk& c = s.pieces[Pick(rng, idx)];
    const std::vector<std::string> others = {"FP32", "BF16", "FP16", "INT32", "INT64",
                                             "BOOL", "",     "fp32", "FP64"};
    std::string d;
    do {
      d = Pick(rng, others);
    } while (d == c.dtype());
    c.set_dtype(d);
  } else if (kind == "tensor_missing") {
    const std::string req = Pick(rng, required);
    for (size_t i : [&] {
           auto v = PiecesOf(s, req);
           std::reverse(v.begin(), v.end());
           return v;
         }()) {
      Erase(s, i);
    }
  } else if (kind == "tensor_unknown_name") {
    const std::string bad = Pick(
        rng, std::vector<std::string>{"Q", "", "qq", "out", "lse", "dq", std::string("q\0x", 3),
                                      "doc_ids ", "kv", std::string(20000, 'n')});
    for (size_t i : idx) s.pieces[i].set_name(bad);
  } else if (kind == "tensor_twice") {
    const size_t end = idx.back() + 1;
    for (size_t j = 0; j < idx.size(); ++j) {
      Insert(s, end + j, s.pieces[idx[j]], name, false);
    }
  } else if (kind == "nan_inf") {
    const std::string t = Pick(rng, required);  // Only float tensors are required.
    const std::vector<size_t> ti = PiecesOf(s, t);
    uint64_t total = 1;
    for (int64_t d : s.pieces[ti.front()].shape()) total *= d;
    PoisonElement(s, ti, kernels::DTypeSize(dtype), Uniform(rng, 0, total - 1),
                  NonFinite(dtype, Uniform(rng, 0, 2)));
  } else if (kind == "message_without_part") {
    Insert(s, Uniform(rng, 1, s.pieces.size()), TensorChunk(), "", false);
  } else if (kind == "header_twice") {
    Insert(s, Uniform(rng, 1, s.pieces.size()), TensorChunk(), "", true);
  } else if (kind == "missing_header") {
    Erase(s, 0);
  } else if (kind == "empty_stream") {
    s = Stream();
  } else if (kind == "all_data_then_stall") {
    // Every byte sent, but the stream never half-closed: the server cannot
    // tell this from a slow client until the deadline cancels the call.
    m.ending = Ending::kStall;
    m.code = StatusCode::DEADLINE_EXCEEDED;
  } else if (kind == "cancel_after_writes_done") {
    m.ending = Ending::kCancelSoon;
    m.code = StatusCode::CANCELLED;
    m.or_ok = true;
    m.cancel_after_us = Uniform(rng, 0, 20000);
  } else if (kind == "truncated_writes_done" || kind == "truncated_cancel" ||
             kind == "truncated_stall") {
    // Cut before the last piece with data of some required tensor.
    size_t last_required = 0;
    for (const std::string& r : required) {
      for (size_t i : PiecesOf(s, r)) {
        if (!s.pieces[i].data().empty()) last_required = std::max(last_required, i);
      }
    }
    m.cut = Uniform(rng, 1, last_required);
    if (kind == "truncated_cancel") {
      m.ending = Ending::kCancel;
      m.code = StatusCode::CANCELLED;
    } else if (kind == "truncated_stall") {
      m.ending = Ending::kStall;
      m.code = StatusCode::DEADLINE_EXCEEDED;
    }
  } else {
    ADD_FAILURE() << "unknown mutation " << kind;
    return false;
  }
  return true;
}

const std::vector<std::string>& PieceMutations() {
  static const auto* kinds = new std::vector<std::string>{"piece_out_of_order",
                                                          "piece_missing",
                                                          "piece_duplicate",
                                                          "piece_overlap",
                                                          "piece_offset_past_end",
                                                          "piece_extra_bytes",
                                                          "piece_short",
                                                          "piece_shape_mismatch",
                                                          "piece_dtype_mismatch",
                                                          "tensor_missing",
                                                          "tensor_unknown_name",
                                                          "tensor_twice",
                                                          "nan_inf",
                                                          "message_without_part",
                                                          "header_twice",
                                                          "missing_header",
                                                          "empty_stream",
                                                          "truncated_writes_done",
                                                          "truncated_cancel",
                                                          "truncated_stall",
                                                          "all_data_then_stall",
                                                          "cancel_after_writes_done"};
  return *kinds;
}

// Header mutations: the header alone decides the outcome.
void MutateHeader(Rng& rng, const std::string& kind, attention::v1::ForwardHeader& h, Mutation& m) {
  m.code = StatusCode::INVALID_ARGUMENT;
  auto dim = [&](int i) -> void (attention::v1::ForwardHeader::*)(int64_t) {
    using H = attention::v1::ForwardHeader;
    static constexpr void (H::*setters[])(int64_t) = {
        &H::set_batch, &H::set_heads, &H::set_kv_heads, &H::set_seq_len, &H::set_head_dim};
    return setters[i];
  };
  if (kind == "header_dim_nonpositive") {
    (h.*
     dim(Uniform(rng, 0, 4)))(Pick(rng, std::vector<int64_t>{0, -1, -Uniform(rng, 2, 1 << 20),
                                                             std::numeric_limits<int64_t>::min()}));
  } else if (kind == "header_dim_over_2^31") {
    (h.*dim(Uniform(rng, 0, 4)))(
        Pick(rng, std::vector<int64_t>{(int64_t{1} << 31) + 1, int64_t{1} << 40,
                                       std::numeric_limits<int64_t>::max()}));
  } else if (kind == "header_huge_product") {
    // Each dim legal, their product 2^40 elements or more: refused from the
    // header, before any buffer is sized by it.
    h.set_batch(int64_t{1} << Uniform(rng, 0, 10));
    h.set_kv_heads(Pick(rng, std::vector<int64_t>{1, 2, 4}));
    h.set_heads(h.kv_heads() * Uniform(rng, 1, 4));
    h.set_head_dim(Uniform(rng, 1, 512));
    h.set_seq_len(int64_t{1} << Uniform(rng, 28, 31));
    if (Chance(rng, 0.3)) {
      h.set_seq_len(1 << 20);
      h.set_batch(1 << 20);
    }
    m.code = StatusCode::RESOURCE_EXHAUSTED;
  } else if (kind == "header_bad_dtype") {
    h.set_dtype(Pick(rng, std::vector<std::string>{"", "FP64", "INT32", "BOOL", "fp32", "FP32 ",
                                                   "BF16\n", std::string(20000, 'F'),
                                                   std::string("FP\0"
                                                               "32",
                                                               5)}));
  } else if (kind == "header_heads_not_multiple") {
    h.set_kv_heads(Uniform(rng, 2, 5));
    h.set_heads(h.kv_heads() * Uniform(rng, 1, 3) + Uniform(rng, 1, h.kv_heads() - 1));
  } else if (kind == "header_head_dim_over_512") {
    h.set_head_dim(Pick(rng, std::vector<int64_t>{513, 520, 1024, 4096, int64_t{1} << 31}));
  } else if (kind == "header_heads_over_limit") {
    // Tiny tensors, absurd head counts: the coordinator must refuse what
    // its workers would.
    h.set_batch(1);
    h.set_seq_len(Uniform(rng, 1, 4));
    h.set_head_dim(1);
    h.set_kv_heads(Pick(rng, std::vector<int64_t>{4097, 8192, 65536}));
    h.set_heads(h.kv_heads());
  } else if (kind == "header_batch_over_limit") {
    h.set_batch((int64_t{1} << 20) + Uniform(rng, 1, 1000));
    h.set_heads(1);
    h.set_kv_heads(1);
    h.set_seq_len(1);
    h.set_head_dim(1);
  } else if (kind == "layer_bad") {
    attention::v1::LayerConfig* l = h.mutable_layer();
    switch (Uniform(rng, 0, 4)) {
      case 0:
        l->set_kind(attention::v1::LayerConfig::KIND_SLIDING);
        l->set_window(Pick(rng, std::vector<int64_t>{0, -1, std::numeric_limits<int64_t>::min()}));
        break;
      case 1:
        l->set_dropout(Pick(rng, std::vector<float>{0.1f, -0.5f, 1.0f, std::nanf(""),
                                                    std::numeric_limits<float>::infinity(),
                                                    std::numeric_limits<float>::denorm_min()}));
        break;
      case 2:
        l->set_scale(Pick(rng, std::vector<float>{0.0f, -0.0f, -0.125f, std::nanf(""),
                                                  std::numeric_limits<float>::infinity(),
                                                  -std::numeric_limits<float>::infinity()}));
        break;
      default:
        l->set_kind(static_cast<attention::v1::LayerConfig::Kind>(
            Pick(rng, std::vector<int>{2, 3, 99, -1, std::numeric_limits<int>::max()})));
        break;
    }
  } else if (kind == "over_call_limit") {
    // Legal dims whose tensors exceed this coordinator's --max_call_bytes.
    h.set_batch(1);
    h.set_heads(8);
    h.set_kv_heads(8);
    h.set_head_dim(64);
    h.set_seq_len(Uniform(rng, kMaxCallBytes / (24 * 64 * 2) + 1, 1 << 20));
    m.code = StatusCode::RESOURCE_EXHAUSTED;
  } else {
    ADD_FAILURE() << "unknown header mutation " << kind;
  }
}

const std::vector<std::string>& HeaderMutations() {
  static const auto* kinds = new std::vector<std::string>{
      "header_dim_nonpositive",  "header_dim_over_2^31",      "header_huge_product",
      "header_bad_dtype",        "header_heads_not_multiple", "header_head_dim_over_512",
      "header_heads_over_limit", "header_batch_over_limit",   "layer_bad",
      "over_call_limit"};
  return *kinds;
}

// ---------------------------------------------------------------------------
// The run.

struct Tally {
  std::map<std::string, int64_t> tried;                         // By category.
  std::map<std::string, std::map<std::string, int64_t>> codes;  // Category -> code -> count.
  std::map<std::string, int64_t> by_code;
  int64_t calls = 0, verified = 0;
  int64_t may_orphan = 0;  // Cancels that may have left a session to its TTL.
  std::vector<std::string> failures;
  double slowest_refusal = 0;  // Seconds, over calls refused with a 4xx-like code.
};

std::string CodeName(StatusCode c) {
  switch (c) {
    case StatusCode::OK:
      return "OK";
    case StatusCode::CANCELLED:
      return "CANCELLED";
    case StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case StatusCode::INTERNAL:
      return "INTERNAL";
    default:
      return absl::StrCat("CODE_", static_cast<int>(c));
  }
}

class Fuzzer {
 public:
  Fuzzer(const std::string& address, uint64_t seed) : rng_(seed) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(16 << 20);
    args.SetMaxSendMessageSize(-1);  // Let oversized messages reach the server.
    stub_ = attention::v1::AttentionService::NewStub(
        grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
  }

  // One case: a forward (valid or mutated), and for a valid one, backward
  // calls (valid or mutated) and releases on its session.
  void RunCase(int64_t iteration) {
    iteration_ = iteration;
    const double r = std::uniform_real_distribution<double>(0, 1)(rng_);
    if (r < 0.22) {
      ValidForwardAndBackward("valid", false, false);
    } else if (r < 0.30) {
      ValidForwardAndBackward("valid_metadata_extremes", true, false);
    } else if (r < 0.38) {
      ValidForwardAndBackward("valid_window_extremes", false, true);
    } else if (r < 0.58) {
      ForwardPieceMutation(Pick(rng_, PieceMutations()));
    } else if (r < 0.78) {
      ForwardHeaderMutation(Pick(rng_, HeaderMutations()));
    } else if (r < 0.80) {
      OversizedMessage();
    } else if (r < 0.82) {
      OverMemoryBudget();
    } else if (r < 0.90) {
      RegionForward(Pick(rng_, RegionMutations()));
    } else {
      BackwardMutations();
    }
  }

  Tally& tally() { return tally_; }
  attention::v1::AttentionService::Stub& stub() { return *stub_; }

  // A valid forward and backward whose results must match the oracle.
  bool ValidForwardAndBackward(const std::string& category, bool extreme_metadata,
                               bool extreme_window) {
    Problem p = RandomProblem(rng_, extreme_metadata, extreme_window);
    const std::string handle = ValidForward(category, p);
    if (handle.empty()) return false;
    const bool ok = ValidBackward(category + "_backward", p, handle);
    Expect(category + "_release", CallRelease(*stub_, handle), StatusCode::OK, 0);
    return ok;
  }

 private:
  std::string Context(const std::string& category) const {
    return absl::StrCat("case ", iteration_, " [", category, "]");
  }

  // Records the outcome; true if it was the expected code.
  bool Expect(const std::string& category, const grpc::Status& s, StatusCode want, double seconds) {
    if (verbose_) {
      std::printf("%s: %s %.3f s %s\n", Context(category).c_str(), CodeName(s.error_code()).c_str(),
                  seconds, s.error_message().substr(0, 160).c_str());
    }
    ++tally_.calls;
    ++tally_.tried[category];
    ++tally_.codes[category][CodeName(s.error_code())];
    ++tally_.by_code[CodeName(s.error_code())];
    if (s.error_code() != StatusCode::OK && s.error_code() != StatusCode::CANCELLED &&
        s.error_code() != StatusCode::DEADLINE_EXCEEDED) {
      tally_.slowest_refusal = std::max(tally_.slowest_refusal, seconds);
    }
    if (s.error_code() == want && (want == StatusCode::OK || !s.error_message().empty())) {
      return true;
    }
    Fail(category, absl::StrCat("got ", CodeName(s.error_code()), " '", s.error_message(),
                                "', expected ", CodeName(want)));
    return false;
  }

  void Fail(const std::string& category, const std::string& what) {
    tally_.failures.push_back(absl::StrCat(Context(category), ": ", what));
  }

  Stream ForwardStream(const Problem& p, bool empty_pieces) {
    Stream s;
    AppendHeader(s);
    AppendPieces(rng_, ForwardTensors(p), empty_pieces, s);
    return s;
  }

  std::string ValidForward(const std::string& category, const Problem& p) {
    const Stream s = ForwardStream(p, Chance(rng_, 0.2));
    const attention::v1::ForwardHeader h = HeaderOf(p);
    const Reply r = CallForward(*stub_, p,
                                Messages<ForwardRequest>(s,
                                                         [&] {
                                                           ForwardRequest req;
                                                           *req.mutable_header() = h;
                                                           return req;
                                                         }),
                                Ending::kWritesDone);
    if (!Expect(category, r.status, StatusCode::OK, r.seconds)) return "";
    if (!r.malformed.empty()) {
      Fail(category, "response stream: " + r.malformed);
      return r.handle;
    }
    oracle_ = server::testing::ComputeOracle(p.batch, p.layer, true);
    out_ = r.out;
    if (const std::string bad = server::testing::ForwardMismatch(p.batch, oracle_, r.out, r.lse);
        !bad.empty()) {
      Fail(category, absl::StrCat("forward result: ", bad, Describe(p)));
    } else {
      ++tally_.verified;
    }
    return r.handle;
  }

  Stream BackwardStream(const Problem& p) {
    Stream s;
    AppendHeader(s);
    AppendPieces(rng_, {DoutTensor(p)}, Chance(rng_, 0.2), s);
    return s;
  }

  std::vector<BackwardRequest> BackwardMessages(const Stream& s, const std::string& handle) {
    return Messages<BackwardRequest>(s, [&] {
      BackwardRequest req;
      req.mutable_header()->set_handle(handle);
      return req;
    });
  }

  bool ValidBackward(const std::string& category, const Problem& p, const std::string& handle) {
    const Reply r =
        CallBackward(*stub_, p, BackwardMessages(BackwardStream(p), handle), Ending::kWritesDone);
    if (!Expect(category, r.status, StatusCode::OK, r.seconds)) return false;
    if (!r.malformed.empty()) {
      Fail(category, "response stream: " + r.malformed);
      return false;
    }
    if (const std::string bad = server::testing::BackwardMismatch(
            p.batch, server::testing::GradientsAt(p.batch, oracle_, out_), r.dq, r.dk, r.dv);
        !bad.empty()) {
      Fail(category, absl::StrCat("backward result: ", bad, Describe(p)));
      return false;
    }
    ++tally_.verified;
    return true;
  }

  static std::string Describe(const Problem& p) {
    const auto& s = p.batch.shape;
    return absl::StrCat(" (", kernels::DTypeName(p.batch.dtype), " B=", s.batch, " H=", s.heads,
                        " Hkv=", s.kv_heads, " S=", s.seq_len, " D=", s.head_dim, " layer ",
                        p.wire_layer.ShortDebugString(), ")");
  }

  void ForwardPieceMutation(const std::string& kind) {
    Problem p = RandomProblem(rng_, false, false);
    Stream s = ForwardStream(p, false);
    std::vector<std::string> names = {"q", "k", "v"};
    for (const char* n : {"doc_ids", "vision_groups", "padding_mask"}) {
      if (!PiecesOf(s, n).empty()) names.push_back(n);
    }
    Mutation m{kind};
    if (!MutatePieces(rng_, kind, s, names, {"q", "k", "v"}, p.batch.dtype, m)) return;
    const attention::v1::ForwardHeader h = HeaderOf(p);
    std::vector<ForwardRequest> msgs = Messages<ForwardRequest>(s, [&] {
      ForwardRequest req;
      *req.mutable_header() = h;
      return req;
    });
    if (m.cut >= 0) msgs.resize(std::min<size_t>(m.cut, msgs.size()));
    const Reply r = CallForward(*stub_, p, msgs, m.ending, m.cancel_after_us);
    Expect("fwd_" + kind, r.status, m.or_ok && r.status.ok() ? StatusCode::OK : m.code, r.seconds);
    if (!r.handle.empty()) {
      CallRelease(*stub_, r.handle);  // OK, or NOT_FOUND if a cancel released it.
    } else if (m.ending == Ending::kCancelSoon && !r.status.ok()) {
      // The server may have finished the call (and opened the session)
      // before the cancel, whose handle never reached the client: only the
      // TTL can close it.
      ++tally_.may_orphan;
    }
  }

  void ForwardHeaderMutation(const std::string& kind) {
    Problem p = RandomProblem(rng_, false, false);
    attention::v1::ForwardHeader h = HeaderOf(p);
    Mutation m{kind};
    MutateHeader(rng_, kind, h, m);
    // Tensors that fit the mutated header when it is small enough to send
    // them (so the refusal cannot come from a shape mismatch), else the
    // valid problem's; the refusal must come from the header either way.
    Stream s;
    AppendHeader(s);
    const size_t elem = wire::WireDTypeSize(h.dtype());
    const bool positive =
        h.batch() > 0 && h.heads() > 0 && h.kv_heads() > 0 && h.seq_len() > 0 && h.head_dim() > 0;
    const long double bytes = static_cast<long double>(h.batch()) * h.seq_len() * h.head_dim() *
                              (h.heads() + 2.0L * h.kv_heads()) * elem;
    if (elem > 0 && positive && bytes <= (1 << 20)) {
      const std::vector<int64_t> q = {h.batch(), h.heads(), h.seq_len(), h.head_dim()};
      const std::vector<int64_t> kv = {h.batch(), h.kv_heads(), h.seq_len(), h.head_dim()};
      const size_t kv_bytes = h.batch() * h.kv_heads() * h.seq_len() * h.head_dim() * elem;
      AppendPieces(rng_,
                   {{"q", h.dtype(), q,
                     std::string(h.batch() * h.heads() * h.seq_len() * h.head_dim() * elem, '\0')},
                    {"k", h.dtype(), kv, std::string(kv_bytes, '\0')},
                    {"v", h.dtype(), kv, std::string(kv_bytes, '\0')}},
                   false, s);
    } else {
      AppendPieces(rng_, ForwardTensors(p), false, s);
      if (Chance(rng_, 0.5)) {
        const size_t keep = 1 + Uniform(rng_, 0, 1);
        s.pieces.resize(keep);
        s.piece_of.resize(keep);
        s.is_header.resize(keep);
      }
    }
    const Reply r = CallForward(*stub_, p,
                                Messages<ForwardRequest>(s,
                                                         [&] {
                                                           ForwardRequest req;
                                                           *req.mutable_header() = h;
                                                           return req;
                                                         }),
                                Ending::kWritesDone);
    Expect(kind, r.status, m.code, r.seconds);
    if (r.status.ok() && !r.handle.empty()) CallRelease(*stub_, r.handle);
  }

  // A single message over the service's 8 MiB message limit.
  void OversizedMessage() {
    Problem p = RandomProblem(rng_, false, false);
    Stream s;
    AppendHeader(s);
    TensorChunk c;
    c.set_name("q");
    c.set_dtype(DTypeName(p));
    c.add_shape(p.batch.shape.batch);
    c.add_shape(p.batch.shape.heads);
    c.add_shape(p.batch.shape.seq_len);
    c.add_shape(p.batch.shape.head_dim);
    c.set_data(std::string((9 << 20) + Uniform(rng_, 0, 1024), '\0'));
    s.pieces.push_back(c);
    s.piece_of.push_back("q");
    s.is_header.push_back(false);
    const attention::v1::ForwardHeader h = HeaderOf(p);
    const Reply r = CallForward(*stub_, p,
                                Messages<ForwardRequest>(s,
                                                         [&] {
                                                           ForwardRequest req;
                                                           *req.mutable_header() = h;
                                                           return req;
                                                         }),
                                Ending::kWritesDone);
    Expect("oversized_message", r.status, StatusCode::RESOURCE_EXHAUSTED, r.seconds);
  }

  // Tensors within --max_call_bytes whose session state (inputs, outputs
  // and dO kept for backward) is over --memory_budget_bytes.
  void OverMemoryBudget() {
    Problem p;
    p.batch.shape = {1, 8, 8, Uniform(rng_, 800, 1000), 32};
    p.batch.dtype = kernels::DType::kF32;
    p.layer = kernels::LayerConfig();
    p.wire_layer = client::ToWire(p.layer);
    p.send_doc = p.send_vision = p.send_padding = false;
    const auto& sh = p.batch.shape;
    p.q.assign(sh.batch * sh.heads * sh.seq_len * sh.head_dim * 4, 0);
    p.k.assign(sh.batch * sh.kv_heads * sh.seq_len * sh.head_dim * 4, 0);
    p.v = p.k;
    const Stream s = ForwardStream(p, false);
    const attention::v1::ForwardHeader h = HeaderOf(p);
    const Reply r = CallForward(*stub_, p,
                                Messages<ForwardRequest>(s,
                                                         [&] {
                                                           ForwardRequest req;
                                                           *req.mutable_header() = h;
                                                           return req;
                                                         }),
                                Ending::kWritesDone);
    Expect("over_memory_budget", r.status, StatusCode::RESOURCE_EXHAUSTED, r.seconds);
    if (r.status.ok()) CallRelease(*stub_, r.handle);
  }

  // A valid forward, then a few bad backward calls on its session (each
  // must leave the session usable), a valid backward, and the release.
  void BackwardMutations() {
    Problem p = RandomProblem(rng_, false, false);
    const std::string handle = ValidForward("valid_for_backward", p);
    if (handle.empty()) return;
    for (int n = Uniform(rng_, 1, 3); n > 0; --n) {
      const int64_t kind = Uniform(rng_, 0, 3);
      if (kind == 0) {
        const std::string bogus = Pick(
            rng_, std::vector<std::string>{"", "no-such-handle", handle + "x", handle.substr(1),
                                           std::string(10000, 's'), std::string("s1\0", 3)});
        const Reply r = CallBackward(*stub_, p, BackwardMessages(BackwardStream(p), bogus),
                                     Ending::kWritesDone);
        Expect("bwd_unknown_handle", r.status, StatusCode::NOT_FOUND, r.seconds);
      } else {
        Stream s = BackwardStream(p);
        const std::string what = Pick(rng_, PieceMutations());
        Mutation m{what};
        if (!MutatePieces(rng_, what, s, {"dout"}, {"dout"}, p.batch.dtype, m)) continue;
        std::vector<BackwardRequest> msgs = BackwardMessages(s, handle);
        if (m.cut >= 0) msgs.resize(std::min<size_t>(m.cut, msgs.size()));
        const Reply r = CallBackward(*stub_, p, msgs, m.ending, m.cancel_after_us);
        Expect("bwd_" + what, r.status, m.or_ok && r.status.ok() ? StatusCode::OK : m.code,
               r.seconds);
      }
    }
    ValidBackward("valid_backward_after_bad", p, handle);
    if (Chance(rng_, 0.3)) ValidBackward("valid_backward_again", p, handle);
    Expect("release", CallRelease(*stub_, handle), StatusCode::OK, 0);
    if (Chance(rng_, 0.5)) {
      Expect("release_twice", CallRelease(*stub_, handle), StatusCode::NOT_FOUND, 0);
    } else {
      const Reply r =
          CallBackward(*stub_, p, BackwardMessages(BackwardStream(p), handle), Ending::kWritesDone);
      Expect("bwd_released_handle", r.status, StatusCode::NOT_FOUND, r.seconds);
    }
  }

  // Shared-memory references, valid and mutated: the tensors of a forward
  // placed at random offsets of one registered region, a random subset of
  // inputs and outputs named by reference and the rest streamed.
  static const std::vector<std::string>& RegionMutations() {
    static const auto* kinds = new std::vector<std::string>{
        "valid",          "past_region_end", "wrong_byte_size", "offset_overflows",
        "no_such_region", "unexpected_name", "ref_and_chunks",  "ref_twice",
        "not_an_output",  "output_twice"};
    return *kinds;
  }

  void RegionForward(const std::string& kind) {
    constexpr uint64_t kRegionBytes = 8 << 20;
    if (region_ == nullptr) {
      absl::StatusOr<std::unique_ptr<client::SharedRegion>> r =
          client::SharedRegion::CreateUnique("fuzz", kRegionBytes);
      if (!r.ok()) return Fail("region", std::string(r.status().message()));
      region_ = *std::move(r);
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + kCallDeadline);
      attention::v1::RegisterRegionRequest req;
      req.set_name("fuzz");
      req.set_shm_name(region_->shm_name());
      req.set_byte_size(kRegionBytes);
      attention::v1::RegisterRegionResponse resp;
      Expect("region_register", stub_->RegisterRegion(&ctx, req, &resp), StatusCode::OK, 0);
    }
    Problem p = RandomProblem(rng_, false, false);
    const auto& sh = p.batch.shape;
    std::vector<WireTensor> streamed;
    std::vector<attention::v1::TensorRef> refs;
    uint64_t at = static_cast<uint64_t>(Uniform(rng_, 0, 100));
    auto place = [&](const std::string& name, uint64_t bytes) -> std::optional<uint64_t> {
      if (at + bytes > kRegionBytes) return std::nullopt;
      const uint64_t offset = at;
      at += bytes + static_cast<uint64_t>(Uniform(rng_, 0, 100));
      attention::v1::TensorRef ref;
      ref.set_name(name);
      ref.set_region("fuzz");
      ref.set_offset(offset);
      ref.set_byte_size(bytes);
      refs.push_back(ref);
      return offset;
    };
    for (WireTensor& t : ForwardTensors(p)) {
      if (Chance(rng_, 0.6)) {
        if (std::optional<uint64_t> o = place(t.name, t.bytes.size())) {
          std::memcpy(region_->bytes().data() + *o, t.bytes.data(), t.bytes.size());
          continue;
        }
      }
      streamed.push_back(std::move(t));
    }
    const size_t inputs = refs.size();
    std::map<std::string, uint64_t> outputs;  // Name -> offset in the region.
    const uint64_t tokens = static_cast<uint64_t>(sh.batch * sh.heads * sh.seq_len);
    for (auto [name, bytes] :
         {std::pair<std::string, uint64_t>{"out", p.q.size()}, {"lse", tokens * 4}}) {
      if (!Chance(rng_, 0.5)) continue;
      if (std::optional<uint64_t> o = place(name, bytes)) outputs[name] = *o;
    }
    std::vector<attention::v1::TensorRef> out_refs(refs.begin() + inputs, refs.end());
    refs.resize(inputs);
    StatusCode want = StatusCode::OK;
    auto pick = [&](std::vector<attention::v1::TensorRef>& v) -> attention::v1::TensorRef* {
      return v.empty() ? nullptr : &v[Uniform(rng_, 0, static_cast<int64_t>(v.size()) - 1)];
    };
    attention::v1::TensorRef* target =
        pick(kind == "not_an_output" || kind == "output_twice" ? out_refs : refs);
    if (kind != "valid" && kind != "not_an_output" && target == nullptr) return;
    if (kind == "past_region_end") {
      target->set_offset(kRegionBytes - target->byte_size() + Uniform(rng_, 1, 64));
      want = StatusCode::INVALID_ARGUMENT;
    } else if (kind == "wrong_byte_size") {
      target->set_byte_size(target->byte_size() + (Chance(rng_, 0.5) ? 1 : -1));
      want = StatusCode::INVALID_ARGUMENT;
    } else if (kind == "offset_overflows") {
      target->set_offset(~uint64_t{0} - static_cast<uint64_t>(Uniform(rng_, 0, 1000)));
      want = StatusCode::INVALID_ARGUMENT;
    } else if (kind == "no_such_region") {
      target->set_region(Chance(rng_, 0.5) ? "" : "fuzz-other");
      want = StatusCode::NOT_FOUND;
    } else if (kind == "unexpected_name") {
      target->set_name(Pick(rng_, std::vector<std::string>{"dout", "out", "qq", ""}));
      want = StatusCode::INVALID_ARGUMENT;
    } else if (kind == "ref_and_chunks") {
      // A tensor both by reference and streamed.
      for (const WireTensor& t : ForwardTensors(p)) {
        if (t.name == target->name()) streamed.push_back(t);
      }
      want = StatusCode::INVALID_ARGUMENT;
    } else if (kind == "ref_twice") {
      refs.push_back(*target);
      want = StatusCode::INVALID_ARGUMENT;
    } else if (kind == "not_an_output") {
      attention::v1::TensorRef r;
      r.set_name(Pick(rng_, std::vector<std::string>{"q", "dq", "dk", "x"}));
      r.set_region("fuzz");
      r.set_byte_size(16);
      out_refs.push_back(r);
      want = StatusCode::INVALID_ARGUMENT;
    } else if (kind == "output_twice") {
      out_refs.push_back(*target);
      want = StatusCode::INVALID_ARGUMENT;
    }
    Stream st;
    AppendHeader(st);
    if (!streamed.empty()) AppendPieces(rng_, streamed, false, st);
    attention::v1::ForwardHeader h = HeaderOf(p);
    for (const auto& r : out_refs) *h.add_outputs() = r;
    std::vector<ForwardRequest> msgs = Messages<ForwardRequest>(st, [&] {
      ForwardRequest req;
      *req.mutable_header() = h;
      return req;
    });
    for (const auto& r : refs) {
      ForwardRequest req;
      *req.mutable_tensor_ref() = r;
      msgs.insert(msgs.begin() + Uniform(rng_, 1, static_cast<int64_t>(msgs.size())), req);
    }
    std::set<std::string> in_region;
    for (const auto& [name, offset] : outputs) in_region.insert(name);
    const std::string category = "region_" + kind;
    const Reply r = CallForward(*stub_, p, msgs, Ending::kWritesDone, 0, in_region);
    if (!r.handle.empty()) CallRelease(*stub_, r.handle);
    if (!Expect(category, r.status, want, r.seconds) || want != StatusCode::OK) return;
    if (!r.malformed.empty()) return Fail(category, "response stream: " + r.malformed);
    std::vector<std::byte> out = r.out;
    std::vector<float> lse = r.lse;
    if (outputs.contains("out")) {
      const auto* o = region_->bytes().data() + outputs["out"];
      out.assign(o, o + p.q.size());
    }
    if (outputs.contains("lse")) {
      lse = wire::BytesAs<float>(region_->bytes().subspan(outputs["lse"], tokens * 4));
    }
    const server::testing::OracleResult want_result =
        server::testing::ComputeOracle(p.batch, p.layer, false);
    if (const std::string bad = server::testing::ForwardMismatch(p.batch, want_result, out, lse);
        !bad.empty()) {
      Fail(category, absl::StrCat("forward result: ", bad, Describe(p)));
    } else {
      ++tally_.verified;
    }
  }

  Rng rng_;
  std::unique_ptr<attention::v1::AttentionService::Stub> stub_;
  std::unique_ptr<client::SharedRegion> region_;
  Tally tally_;
  int64_t iteration_ = 0;
  const bool verbose_ = std::getenv("RINGATTN_FUZZ_VERBOSE") != nullptr;
  server::testing::OracleResult oracle_;  // Of the last valid forward,
  std::vector<std::byte> out_;            // and the O it returned.
};

std::string FigureName(const std::string& s) {
  std::string out;
  for (char c : s) out += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  return out;
}

TEST(ServiceFuzzTest, MutatedStreamsGetClearStatusesAndTheClusterSurvives) {
  const FuzzConfig config = ConfigFromEnv();
  std::printf("fuzz seed %llu (replay: RINGATTN_FUZZ_SEED=%llu), at most %lld cases, %.0f s\n",
              static_cast<unsigned long long>(config.seed),
              static_cast<unsigned long long>(config.seed),
              static_cast<long long>(config.iterations), config.seconds);
  client::LocalClusterOptions options;
  options.cp = 2;
  options.bin_dir = RINGATTN_BIN_DIR;
  options.ring_timeout_seconds = kRingTimeoutSeconds;
  options.coordinator_flags = {absl::StrCat("--max_call_bytes=", kMaxCallBytes),
                               absl::StrCat("--memory_budget_bytes=", kMemoryBudgetBytes),
                               absl::StrCat("--session_ttl_seconds=", kSessionTtlSeconds)};
  auto cluster = client::LocalCluster::Start(options);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  std::vector<pid_t> pids = (*cluster)->worker_pids();
  pids.insert(pids.begin(), (*cluster)->coordinator_pid());

  Fuzzer fuzzer((*cluster)->address(), config.seed);
  const auto t0 = std::chrono::steady_clock::now();
  int64_t cases = 0;
  for (; cases < config.iterations && SecondsSince(t0) < config.seconds; ++cases) {
    fuzzer.RunCase(cases);
    bool up = true;
    for (pid_t pid : pids) up = up && server::testing::ChildRunning(pid);
    if (!up) {
      ADD_FAILURE() << "a daemon died during case " << cases;
      break;
    }
    if (fuzzer.tally().failures.size() >= 20) break;
  }
  const double seconds = SecondsSince(t0);

  // After all of it: every daemon up, no session left behind but those a
  // late cancel may have orphaned, none at all once the TTL has passed (the
  // budget is whole again), and a valid call still right.
  for (pid_t pid : pids) EXPECT_TRUE(server::testing::ChildRunning(pid)) << "pid " << pid;
  auto open_sessions = [&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + kCallDeadline);
    attention::v1::ClusterStatusResponse status;
    EXPECT_TRUE(
        fuzzer.stub().ClusterStatus(&ctx, attention::v1::ClusterStatusRequest(), &status).ok());
    EXPECT_TRUE(status.ring_ready());
    return status.open_sessions();
  };
  const int open_at_end = open_sessions();
  EXPECT_LE(open_at_end, fuzzer.tally().may_orphan)
      << "sessions left behind by refused or failed calls";
  if (open_at_end > 0) {
    // Orphans expire at most one TTL after the last case; asking closes them.
    const auto give_up =
        std::chrono::steady_clock::now() + std::chrono::duration<double>(kSessionTtlSeconds + 2);
    int open = open_at_end;
    while (open > 0 && std::chrono::steady_clock::now() < give_up) {
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
      open = open_sessions();
    }
    EXPECT_EQ(open, 0) << "sessions outlived their TTL";
  }
  EXPECT_TRUE(fuzzer.ValidForwardAndBackward("final_valid", false, false))
      << "a valid call failed after the fuzz run";

  Tally& t = fuzzer.tally();
  for (const std::string& f : t.failures) ADD_FAILURE() << f;

  // No declared size was allocated before it was checked: the coordinator
  // never came near what the huge headers asked for (2^40 elements and up).
  const int64_t peak_kib = server::testing::PeakRssKiB((*cluster)->coordinator_pid());
  EXPECT_LT(peak_kib, int64_t{1} << 20) << "coordinator peak RSS " << peak_kib << " KiB";

  std::printf("fuzz: %lld cases, %lld calls in %.1f s (seed %llu)\n", static_cast<long long>(cases),
              static_cast<long long>(t.calls), seconds,
              static_cast<unsigned long long>(config.seed));
  for (const auto& [category, n] : t.tried) {
    std::vector<std::string> codes;
    for (const auto& [code, k] : t.codes[category]) codes.push_back(absl::StrCat(code, "=", k));
    std::printf("  %-36s %5lld  %s\n", category.c_str(), static_cast<long long>(n),
                absl::StrJoin(codes, " ").c_str());
  }
  std::printf("figure: fuzz_seed %llu\n", static_cast<unsigned long long>(config.seed));
  std::printf("figure: fuzz_seconds %.1f\n", seconds);
  std::printf("figure: fuzz_cases %lld\n", static_cast<long long>(cases));
  std::printf("figure: fuzz_calls %lld\n", static_cast<long long>(t.calls));
  std::printf("figure: fuzz_results_verified %lld\n", static_cast<long long>(t.verified));
  for (const auto& [code, n] : t.by_code) {
    std::printf("figure: fuzz_calls_%s %lld\n", code.c_str(), static_cast<long long>(n));
  }
  for (const auto& [category, n] : t.tried) {
    std::printf("figure: fuzz_tried_%s %lld\n", FigureName(category).c_str(),
                static_cast<long long>(n));
  }
  std::printf("figure: fuzz_unexpected_outcomes %zu\n", t.failures.size());
  std::printf("figure: fuzz_sessions_open_at_end %d\n", open_at_end);
  std::printf("figure: fuzz_slowest_refusal_seconds %.3f\n", t.slowest_refusal);
  std::printf("figure: fuzz_coordinator_peak_rss_kib %lld\n", static_cast<long long>(peak_kib));
  EXPECT_TRUE((*cluster)->Stop().ok()) << "a daemon did not exit cleanly";
}

}  // namespace
}  // namespace ringattn::coordinator
