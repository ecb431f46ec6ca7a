#include "client/attention_client.h"

#include <chrono>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "proto/wire/grpc_status.h"
#include "proto/wire/tensor_stream.h"

namespace ringattn::client {
namespace {

void SetDeadline(grpc::ClientContext& ctx, absl::Duration timeout) {
  ctx.set_deadline(std::chrono::system_clock::now() + absl::ToChronoNanoseconds(timeout));
}

attention::v1::TensorRef ToProto(const std::string& name, const RegionRef& r) {
  attention::v1::TensorRef ref;
  ref.set_name(name);
  ref.set_region(r.region);
  ref.set_offset(r.offset);
  ref.set_byte_size(r.byte_size);
  return ref;
}

}  // namespace

AttentionClient::AttentionClient(std::shared_ptr<grpc::Channel> channel)
    : stub_(attention::v1::AttentionService::NewStub(std::move(channel))) {}

std::unique_ptr<AttentionClient> AttentionClient::Connect(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(8 << 20);
  args.SetMaxSendMessageSize(8 << 20);
  return std::make_unique<AttentionClient>(
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
}

absl::StatusOr<std::unique_ptr<AttentionClient>> AttentionClient::Connect(
    const std::string& address, const wire::ChannelSecurity& security) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(8 << 20);
  args.SetMaxSendMessageSize(8 << 20);
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      wire::CreateChannel(address, security, std::move(args));
  if (!channel.ok()) return channel.status();
  return std::make_unique<AttentionClient>(*std::move(channel));
}

AttentionClient::Tracked::Tracked(AttentionClient& c, grpc::ClientContext& ctx) : c_(c), ctx_(ctx) {
  std::lock_guard<std::mutex> lock(c_.mu_);
  c_.in_flight_.insert(&ctx_);
}

AttentionClient::Tracked::~Tracked() {
  std::lock_guard<std::mutex> lock(c_.mu_);
  c_.in_flight_.erase(&ctx_);
}

void AttentionClient::CancelAll() {
  std::lock_guard<std::mutex> lock(mu_);
  for (grpc::ClientContext* ctx : in_flight_) ctx->TryCancel();
}

absl::StatusOr<ForwardOutputs> AttentionClient::Forward(const ForwardInputs& in,
                                                        absl::Duration timeout) {
  grpc::ClientContext ctx;
  Tracked tracked(*this, ctx);
  SetDeadline(ctx, timeout);
  auto stream = stub_->Forward(&ctx);
  attention::v1::ForwardRequest req;
  attention::v1::ForwardHeader* h = req.mutable_header();
  *h->mutable_layer() = in.layer;
  h->set_dtype(in.dtype);
  h->set_batch(in.batch);
  h->set_heads(in.heads);
  h->set_kv_heads(in.kv_heads);
  h->set_seq_len(in.seq_len);
  h->set_head_dim(in.head_dim);
  for (const auto& [name, r] : in.output_regions) *h->add_outputs() = ToProto(name, r);
  h->set_layout(in.layout);
  bool ok = stream->Write(req);
  auto send = [&](const std::string& name, const std::string& dtype,
                  const std::vector<int64_t>& shape, std::span<const std::byte> data) {
    if (!ok) return;
    if (auto it = in.input_regions.find(name); it != in.input_regions.end()) {
      attention::v1::ForwardRequest r;
      *r.mutable_tensor_ref() = ToProto(name, it->second);
      ok = stream->Write(r);
      return;
    }
    wire::SplitTensor(name, dtype, shape, data, [&](attention::v1::TensorChunk& c) {
      attention::v1::ForwardRequest r;
      *r.mutable_chunk() = std::move(c);
      ok = stream->Write(r);
      return ok;
    });
  };
  const std::vector<int64_t> q_shape = {in.batch, in.heads, in.seq_len, in.head_dim};
  const std::vector<int64_t> kv_shape = {in.batch, in.kv_heads, in.seq_len, in.head_dim};
  const std::vector<int64_t> tokens = {in.batch, in.seq_len};
  send("q", in.dtype, q_shape, in.q);
  send("k", in.dtype, kv_shape, in.k);
  send("v", in.dtype, kv_shape, in.v);
  auto has = [&](const auto& field, const char* name) {
    return field.has_value() || in.input_regions.contains(name);
  };
  auto bytes_of = [](const auto& field) {
    return field ? std::as_bytes(*field) : std::span<const std::byte>();
  };
  if (has(in.doc_ids, "doc_ids")) send("doc_ids", "INT32", tokens, bytes_of(in.doc_ids));
  if (has(in.vision_groups, "vision_groups")) {
    send("vision_groups", "INT32", tokens, bytes_of(in.vision_groups));
  }
  if (has(in.padding_mask, "padding_mask")) {
    send("padding_mask", "BOOL", tokens, bytes_of(in.padding_mask));
  }
  for (const auto& [name, t] : {std::pair{"attention_mask", &in.attention_mask},
                                {"mm_token_type_ids", &in.mm_token_type_ids},
                                {"packed_seq_ids", &in.packed_seq_ids}}) {
    if (t->has_value()) send(name, (*t)->dtype, (*t)->shape, (*t)->data);
  }
  stream->WritesDone();

  ForwardOutputs out;
  wire::TensorAssembler assembler(uint64_t{1} << 40);
  if (!in.output_regions.contains("out")) assembler.Expect("out", in.dtype, q_shape, true);
  if (!in.output_regions.contains("lse")) {
    assembler.Expect("lse", "FP32", {in.batch, in.heads, in.seq_len}, true);
  }
  attention::v1::ForwardResponse resp;
  absl::Status bad;
  bool has_session = false;
  while (stream->Read(&resp)) {
    if (resp.has_session()) {
      out.session = resp.session();
      has_session = true;
    }
    if (resp.has_metrics()) out.metrics = resp.metrics();
    if (resp.has_chunk() && bad.ok()) bad = assembler.Add(resp.chunk());
  }
  if (absl::Status s = wire::FromGrpc(stream->Finish()); !s.ok()) return s;
  if (bad.ok()) bad = assembler.Finish();
  // Without a session there is no handle for Backward or Release.
  if (bad.ok() && !has_session) bad = absl::InvalidArgumentError("no session in the answer");
  if (!bad.ok()) return absl::InternalError(absl::StrCat("bad response: ", bad.message()));
  out.out = assembler.Take("out");
  out.lse = wire::BytesAs<float>(assembler.Take("lse"));
  return out;
}

absl::StatusOr<BackwardOutputs> AttentionClient::Backward(const ForwardInputs& shapes,
                                                          const std::string& handle,
                                                          std::span<const std::byte> dout,
                                                          absl::Duration timeout) {
  return Backward(shapes, handle, dout, BackwardRegions{}, timeout);
}

absl::StatusOr<BackwardOutputs> AttentionClient::Backward(const ForwardInputs& shapes,
                                                          const std::string& handle,
                                                          std::span<const std::byte> dout,
                                                          const BackwardRegions& regions,
                                                          absl::Duration timeout) {
  grpc::ClientContext ctx;
  Tracked tracked(*this, ctx);
  SetDeadline(ctx, timeout);
  auto stream = stub_->Backward(&ctx);
  attention::v1::BackwardRequest req;
  req.mutable_header()->set_handle(handle);
  // The service checks a stated kv_heads against the session before any work.
  if (shapes.kv_heads > 0) req.mutable_header()->set_kv_heads(shapes.kv_heads);
  for (const auto& [name, r] : regions.outputs) {
    *req.mutable_header()->add_outputs() = ToProto(name, r);
  }
  bool ok = stream->Write(req);
  const std::vector<int64_t> q_shape = {shapes.batch, shapes.heads, shapes.seq_len,
                                        shapes.head_dim};
  if (ok && regions.dout) {
    attention::v1::BackwardRequest r;
    *r.mutable_tensor_ref() = ToProto("dout", *regions.dout);
    ok = stream->Write(r);
  } else if (ok) {
    wire::SplitTensor("dout", shapes.dtype, q_shape, dout, [&](attention::v1::TensorChunk& c) {
      attention::v1::BackwardRequest r;
      *r.mutable_chunk() = std::move(c);
      ok = stream->Write(r);
      return ok;
    });
  }
  stream->WritesDone();
  BackwardOutputs out;
  wire::TensorAssembler assembler(uint64_t{1} << 40);
  if (!regions.outputs.contains("dq")) assembler.Expect("dq", "FP32", q_shape, true);
  // dK and dV [B, Hkv, S, D]; without a stated Hkv, the session's, as the
  // first of their pieces declares it (or a region's size says).
  auto expect_kv = [&](int64_t kv_heads) {
    out.kv_heads = kv_heads;
    const std::vector<int64_t> kv_shape = {shapes.batch, kv_heads, shapes.seq_len, shapes.head_dim};
    for (const char* name : {"dk", "dv"}) {
      if (!regions.outputs.contains(name)) assembler.Expect(name, "FP32", kv_shape, true);
    }
  };
  int64_t kv_heads = shapes.kv_heads;
  if (auto it = regions.outputs.find("dk"); kv_heads <= 0 && it != regions.outputs.end()) {
    const auto per_head =
        static_cast<uint64_t>(shapes.batch * shapes.seq_len * shapes.head_dim) * 4;
    if (per_head > 0) kv_heads = static_cast<int64_t>(it->second.byte_size / per_head);
  }
  if (kv_heads > 0) expect_kv(kv_heads);
  attention::v1::BackwardResponse resp;
  absl::Status bad;
  while (stream->Read(&resp)) {
    if (resp.has_metrics()) out.metrics = resp.metrics();
    if (!resp.has_chunk() || !bad.ok()) continue;
    const attention::v1::TensorChunk& c = resp.chunk();
    if (out.kv_heads == 0 && (c.name() == "dk" || c.name() == "dv")) {
      expect_kv(c.shape_size() == 4 && c.shape(1) > 0 ? c.shape(1) : -1);
    }
    bad = assembler.Add(c);
  }
  if (absl::Status s = wire::FromGrpc(stream->Finish()); !s.ok()) return s;
  if (bad.ok() && out.kv_heads == 0) bad = absl::InvalidArgumentError("no dk in the answer");
  if (bad.ok()) bad = assembler.Finish();
  if (!bad.ok()) return absl::InternalError(absl::StrCat("bad response: ", bad.message()));
  out.dq = wire::BytesAs<float>(assembler.Take("dq"));
  out.dk = wire::BytesAs<float>(assembler.Take("dk"));
  out.dv = wire::BytesAs<float>(assembler.Take("dv"));
  return out;
}

absl::StatusOr<PrepareBatchOutputs> AttentionClient::PrepareBatch(const PrepareBatchInputs& in,
                                                                  absl::Duration timeout) {
  grpc::ClientContext ctx;
  Tracked tracked(*this, ctx);
  SetDeadline(ctx, timeout);
  auto stream = stub_->PrepareBatch(&ctx);
  attention::v1::PrepareBatchRequest req;
  req.mutable_header()->set_pad_token_id(in.pad_token_id);
  req.mutable_header()->set_cp(in.cp);
  req.mutable_header()->set_include_shards(in.include_shards);
  bool ok = stream->Write(req);
  for (const auto& [name, t] : in.tensors) {
    if (!ok) break;
    wire::SplitTensor(name, t.dtype, t.shape, t.data, [&](attention::v1::TensorChunk& c) {
      attention::v1::PrepareBatchRequest r;
      *r.mutable_chunk() = std::move(c);
      ok = stream->Write(r);
      return ok;
    });
  }
  stream->WritesDone();

  PrepareBatchOutputs out;
  // Shapes depend on the batch: each tensor's first piece declares its own.
  wire::TensorAssembler assembler(uint64_t{1} << 40);
  std::vector<std::string> names;
  attention::v1::PrepareBatchResponse resp;
  absl::Status bad;
  bool has_info = false;
  while (stream->Read(&resp)) {
    if (resp.has_info()) {
      out.info = resp.info();
      has_info = true;
    }
    if (!resp.has_chunk() || !bad.ok()) continue;
    const attention::v1::TensorChunk& c = resp.chunk();
    if (!assembler.Has(c.name()) && c.offset() == 0) {
      assembler.Expect(c.name(), c.dtype(), {c.shape().begin(), c.shape().end()}, true);
      names.push_back(c.name());
    }
    bad = assembler.Add(c);
  }
  if (absl::Status s = wire::FromGrpc(stream->Finish()); !s.ok()) return s;
  if (bad.ok() && !has_info) bad = absl::InvalidArgumentError("no batch info in the answer");
  if (bad.ok()) bad = assembler.Finish();
  if (bad.ok()) out.shards.resize(static_cast<size_t>(in.include_shards ? out.info.cp() : 0));
  for (const std::string& name : names) {
    if (!bad.ok()) break;
    Tensor t{assembler.DTypeOf(name), assembler.ShapeOf(name), assembler.Take(name)};
    // "rank<r>/<name>": rank r's shard.
    const size_t slash = name.find('/');
    if (slash == std::string::npos) {
      out.tensors[name] = std::move(t);
      continue;
    }
    size_t rank = 0;
    if (!absl::SimpleAtoi(name.substr(4, slash - 4), &rank) || name.rfind("rank", 0) != 0 ||
        rank >= out.shards.size()) {
      bad = absl::InvalidArgumentError(absl::StrCat("unexpected tensor '", name, "'"));
      break;
    }
    out.shards[rank][name.substr(slash + 1)] = std::move(t);
  }
  if (!bad.ok()) return absl::InternalError(absl::StrCat("bad response: ", bad.message()));
  return out;
}

absl::Status AttentionClient::RegisterRegion(const std::string& name, const std::string& shm_name,
                                             uint64_t byte_size) {
  grpc::ClientContext ctx;
  SetDeadline(ctx, absl::Seconds(30));
  attention::v1::RegisterRegionRequest req;
  req.set_name(name);
  req.set_shm_name(shm_name);
  req.set_byte_size(byte_size);
  attention::v1::RegisterRegionResponse resp;
  return wire::FromGrpc(stub_->RegisterRegion(&ctx, req, &resp));
}

absl::Status AttentionClient::UnregisterRegion(const std::string& name) {
  grpc::ClientContext ctx;
  SetDeadline(ctx, absl::Seconds(30));
  attention::v1::UnregisterRegionRequest req;
  req.set_name(name);
  attention::v1::UnregisterRegionResponse resp;
  return wire::FromGrpc(stub_->UnregisterRegion(&ctx, req, &resp));
}

absl::StatusOr<attention::v1::ListRegionsResponse> AttentionClient::ListRegions() {
  grpc::ClientContext ctx;
  SetDeadline(ctx, absl::Seconds(30));
  attention::v1::ListRegionsRequest req;
  attention::v1::ListRegionsResponse resp;
  if (absl::Status s = wire::FromGrpc(stub_->ListRegions(&ctx, req, &resp)); !s.ok()) return s;
  return resp;
}

absl::Status AttentionClient::Release(const std::string& handle) {
  grpc::ClientContext ctx;
  SetDeadline(ctx, absl::Seconds(30));
  attention::v1::ReleaseRequest req;
  req.set_handle(handle);
  attention::v1::ReleaseResponse resp;
  return wire::FromGrpc(stub_->Release(&ctx, req, &resp));
}

absl::StatusOr<attention::v1::ClusterStatusResponse> AttentionClient::Status() {
  grpc::ClientContext ctx;
  SetDeadline(ctx, absl::Seconds(10));
  attention::v1::ClusterStatusRequest req;
  attention::v1::ClusterStatusResponse resp;
  if (absl::Status s = wire::FromGrpc(stub_->ClusterStatus(&ctx, req, &resp)); !s.ok()) return s;
  return resp;
}

}  // namespace ringattn::client
