// Seeded fuzzing of the internal APIs (the worker API and the coordinator's
// worker control and store) against a real local cluster on 127.0.0.1.
// Without the cluster secret, every call of every method, however formed,
// is UNAUTHENTICATED and changes nothing. With it (a daemon's view), random
// uncommitted worker streams (shard calls, tensor pieces and region slices
// with random fields) each end within their deadline with a clear error,
// never OK, UNKNOWN or a hang. Afterwards the ring is the same one and
// computes what it computed before the run, bit for bit.
//
// Environment: RINGATTN_FUZZ_SEED (printed; replays a run),
// RINGATTN_FUZZ_ITERATIONS (default 120), RINGATTN_FUZZ_SECONDS (default 20),
// RINGATTN_FUZZ_VERBOSE (print every outcome).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/attention_client.h"
#include "client/local_cluster.h"
#include "client/synthetic_inputs.h"
#include "grpcpp/client_context.h"
#include "gtest/gtest.h"
#include "proto/wire/cluster_secret.h"
#include "proto/wire/security.h"
#include "worker/v1/worker_service.grpc.pb.h"

namespace ringattn::worker {
namespace {

using Rng = std::mt19937_64;

int64_t EnvInt(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::strtoll(v, nullptr, 10) : fallback;
}

std::chrono::system_clock::time_point In(int seconds) {
  return std::chrono::system_clock::now() + std::chrono::seconds(seconds);
}

std::string RandomText(Rng& rng, size_t max_len) {
  static const std::string kChars = "abcdefghijklmnopqrstuvwxyz0123456789_/-.:";
  std::string s(rng() % (max_len + 1), 'x');
  for (char& c : s) c = kChars[rng() % kChars.size()];
  return s;
}

// A number that is sometimes sensible, sometimes extreme.
int64_t RandomDim(Rng& rng) {
  switch (rng() % 5) {
    case 0:
      return 0;
    case 1:
      return -static_cast<int64_t>(rng() % 100);
    case 2:
      return int64_t{1} << (rng() % 62);
    default:
      return 1 + static_cast<int64_t>(rng() % 64);
  }
}

worker::v1::ShardRequest RandomPart(Rng& rng) {
  static const std::vector<std::string> kNames = {
      "q", "k", "v", "dout", "doc_ids", "vision_groups", "padding_mask", "zz"};
  static const std::vector<std::string> kDtypes = {"FP32", "BF16", "FP16", "INT32", "BOOL", "F64"};
  worker::v1::ShardRequest r;
  switch (rng() % 3) {
    case 0: {
      worker::v1::ShardCall* c = r.mutable_call();
      c->set_session(RandomText(rng, 40));
      c->set_dtype(kDtypes[rng() % kDtypes.size()]);
      c->set_batch(RandomDim(rng));
      c->set_heads(RandomDim(rng));
      c->set_kv_heads(RandomDim(rng));
      c->set_shard_len(RandomDim(rng));
      c->set_head_dim(RandomDim(rng));
      c->set_timeout_seconds(static_cast<double>(rng() % 5));
      c->set_generation(rng() % 4);
      c->mutable_layer()->set_window(static_cast<int32_t>(RandomDim(rng)));
      c->set_layout(static_cast<attention::v1::ShardLayout>(rng() % 4));
      break;
    }
    case 1: {
      attention::v1::TensorChunk* c = r.mutable_chunk();
      c->set_name(kNames[rng() % kNames.size()]);
      c->set_dtype(kDtypes[rng() % kDtypes.size()]);
      for (int d = 0, n = static_cast<int>(rng() % 5); d < n; ++d) c->add_shape(RandomDim(rng));
      c->set_offset(rng() % 3 == 0 ? rng() : rng() % 64);
      c->set_data(std::string(rng() % 512, static_cast<char>(rng())));
      break;
    }
    default: {
      worker::v1::RegionSlice* s = r.mutable_region();
      s->set_name(kNames[rng() % kNames.size()]);
      s->set_shm_name(rng() % 2 == 0 ? "/" + RandomText(rng, 20) : RandomText(rng, 20));
      s->set_device(rng());
      s->set_inode(rng());
      s->set_base(rng() % 2 == 0 ? rng() : rng() % 4096);
      s->set_rows(rng() % 2 == 0 ? rng() : rng() % 16);
      s->set_row_bytes(rng() % 4096);
      s->set_shard_row_bytes(rng() % 4096);
      for (int i = 0, n = static_cast<int>(rng() % 3); i < n; ++i) {
        auto* run = s->add_runs();
        run->set_tensor_offset(rng() % 2 == 0 ? rng() : rng() % 4096);
        run->set_shard_offset(rng() % 4096);
        run->set_bytes(rng() % 2 == 0 ? rng() : rng() % 4096);
      }
      break;
    }
  }
  return r;
}

// A worker stream of random parts, never committed.
grpc::Status WorkerStream(worker::v1::WorkerService::Stub& stub, bool forward,
                          const std::vector<worker::v1::ShardRequest>& parts) {
  grpc::ClientContext ctx;
  ctx.set_deadline(In(20));
  auto stream = forward ? stub.Forward(&ctx) : stub.Backward(&ctx);
  for (const auto& p : parts) {
    if (!stream->Write(p)) break;
  }
  stream->WritesDone();
  worker::v1::ShardResponse resp;
  while (stream->Read(&resp)) {
  }
  return stream->Finish();
}

// One random call of any internal method; `unary_only_safe`: leave out the
// methods a trusted daemon may use to change the ring (join, register, set).
// `generation`: the ring's, for well-formed shard calls.
grpc::Status RandomInternalCall(Rng& rng, worker::v1::WorkerService::Stub& worker,
                                worker::v1::CoordinatorControl::Stub& control, uint64_t generation,
                                bool unary_only_safe, std::string* method) {
  const int pick = static_cast<int>(rng() % (unary_only_safe ? 4 : 7));
  grpc::ClientContext ctx;
  ctx.set_deadline(In(20));
  switch (pick) {
    case 0:
    case 1: {
      *method = pick == 0 ? "Worker.Forward" : "Worker.Backward";
      std::vector<worker::v1::ShardRequest> parts;
      if (rng() % 2 == 0) {  // A well-formed call, so what follows is read too.
        worker::v1::ShardCall* c = parts.emplace_back().mutable_call();
        c->set_session(RandomText(rng, 20));
        c->set_dtype("FP32");
        c->set_batch(1);
        c->set_heads(2);
        c->set_kv_heads(1);
        c->set_shard_len(32);
        c->set_head_dim(16);
        c->set_timeout_seconds(5);
        c->set_generation(generation);
        c->mutable_layer()->set_window(512);
      }
      for (int i = 0, n = 1 + static_cast<int>(rng() % 6); i < n; ++i) {
        parts.push_back(RandomPart(rng));
      }
      return WorkerStream(worker, pick == 0, parts);
    }
    case 2: {
      *method = "Worker.Release";
      worker::v1::WorkerReleaseRequest req;
      req.set_session(RandomText(rng, 40));
      worker::v1::WorkerReleaseResponse resp;
      return worker.Release(&ctx, req, &resp);
    }
    case 3: {
      *method = "Control.StoreGet";
      worker::v1::StoreGetRequest req;
      req.set_key(RandomText(rng, 30));
      worker::v1::StoreGetResponse resp;
      return control.StoreGet(&ctx, req, &resp);
    }
    case 4: {
      *method = "Worker.JoinRing";
      worker::v1::JoinRingRequest req;
      req.set_rank(static_cast<int32_t>(RandomDim(rng)));
      req.set_cp(static_cast<int32_t>(RandomDim(rng)));
      req.set_generation(rng());
      req.set_store_address("127.0.0.1:1");
      worker::v1::JoinRingResponse resp;
      return worker.JoinRing(&ctx, req, &resp);
    }
    case 5: {
      *method = "Control.Register";
      worker::v1::RegisterRequest req;
      req.set_address(absl::StrCat("127.0.0.1:", 1 + rng() % 60000));
      req.set_rank(static_cast<int32_t>(rng() % 3));
      req.set_incarnation(RandomText(rng, 16));
      worker::v1::RegisterResponse resp;
      return control.Register(&ctx, req, &resp);
    }
    default: {
      *method = "Control.StoreSet";
      worker::v1::StoreSetRequest req;
      req.set_key(RandomText(rng, 30));
      req.set_value(RandomText(rng, 30));
      worker::v1::StoreSetResponse resp;
      return control.StoreSet(&ctx, req, &resp);
    }
  }
}

std::shared_ptr<grpc::Channel> ChannelTo(const std::string& address, const std::string& secret) {
  wire::ChannelSecurity s;
  s.cluster_secret = secret;
  absl::StatusOr<std::shared_ptr<grpc::Channel>> c = wire::CreateChannel(address, s);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : nullptr;
}

TEST(InternalApiFuzzTest, NothingGetsInWithoutTheSecretAndGarbageWithItIsRefusedCleanly) {
  const auto seed = static_cast<uint64_t>(EnvInt("RINGATTN_FUZZ_SEED", 20261203));
  const int64_t iterations = EnvInt("RINGATTN_FUZZ_ITERATIONS", 120);
  const int64_t seconds = EnvInt("RINGATTN_FUZZ_SECONDS", 20);
  std::printf("internal API fuzz: seed %llu, at most %lld cases in %lld s\n",
              static_cast<unsigned long long>(seed), static_cast<long long>(iterations),
              static_cast<long long>(seconds));
  client::LocalClusterOptions options;
  options.cp = 2;
  options.bin_dir = RINGATTN_BIN_DIR;
  options.ring_timeout_seconds = 20;
  absl::StatusOr<std::unique_ptr<client::LocalCluster>> cluster =
      client::LocalCluster::Start(options);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  const std::string address = (*cluster)->address();
  auto c = client::AttentionClient::Connect(address);
  absl::StatusOr<attention::v1::ClusterStatusResponse> before = c->Status();
  ASSERT_TRUE(before.ok()) << before.status();
  ASSERT_TRUE(before->ring_ready());

  const kernels::reference::SyntheticBatch batch = kernels::reference::MakeSyntheticBatch(
      {1, 2, 1, 64, 16}, {kernels::reference::GemmaLikeLayout(64)}, kernels::DType::kF32, 5);
  kernels::LayerConfig layer;
  layer.scale = 0.25f;
  auto encoded = client::EncodeBatch(batch, layer);
  absl::StatusOr<client::ForwardOutputs> first = c->Forward(encoded->in);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(c->Release(first->session.handle()).ok());

  const int port = std::stoi(address.substr(address.rfind(':') + 1));
  absl::StatusOr<std::string> secret = wire::ReadLocalClusterSecret(port);
  ASSERT_TRUE(secret.ok()) << secret.status();
  Rng rng(seed);
  std::map<std::string, std::map<std::string, int>> outcomes;  // Method -> code -> count.
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < iterations; ++i) {
    if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(seconds)) break;
    const std::string& worker_address = before->workers(static_cast<int>(rng() % 2)).address();
    const bool with_secret = rng() % 2 == 0;
    // Without: sometimes a wrong secret instead of none.
    const std::string presented =
        with_secret ? *secret : (rng() % 2 == 0 ? std::string() : RandomText(rng, 32));
    auto worker = worker::v1::WorkerService::NewStub(ChannelTo(worker_address, presented));
    auto control = worker::v1::CoordinatorControl::NewStub(ChannelTo(address, presented));
    std::string method;
    const auto call_start = std::chrono::steady_clock::now();
    const grpc::Status s = RandomInternalCall(rng, *worker, *control, before->ring_generation(),
                                              /*unary_only_safe=*/with_secret, &method);
    const double took =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - call_start).count();
    outcomes[absl::StrCat(with_secret ? "secret " : "stranger ", method)]
            [absl::StrCat(s.error_code())]++;
    const std::string where =
        absl::StrCat("case ", i, " (seed ", seed, "): ", method, with_secret ? " with" : " without",
                     " the secret: ", s.error_code(), " ", s.error_message());
    if (std::getenv("RINGATTN_FUZZ_VERBOSE") != nullptr) std::printf("%s\n", where.c_str());
    if (!with_secret) {
      EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << where;
      continue;
    }
    EXPECT_NE(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << where;
    EXPECT_NE(s.error_code(), grpc::StatusCode::UNKNOWN) << where;
    EXPECT_NE(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << where;
    EXPECT_LT(took, 15.0) << where;
    // Only a release of an unknown session may succeed: it is a no-op.
    if (method != "Worker.Release") {
      EXPECT_FALSE(s.ok()) << where;
    }
  }
  for (const auto& [method, codes] : outcomes) {
    std::string line;
    for (const auto& [code, n] : codes) absl::StrAppend(&line, " code ", code, " x", n);
    std::printf("  %s:%s\n", method.c_str(), line.c_str());
  }

  // The same ring, computing what it computed before.
  absl::StatusOr<attention::v1::ClusterStatusResponse> after = c->Status();
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_TRUE(after->ring_ready());
  EXPECT_EQ(after->ring_generation(), before->ring_generation());
  EXPECT_EQ(after->open_sessions(), 0);
  absl::StatusOr<client::ForwardOutputs> again = c->Forward(encoded->in);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->out, first->out);
  EXPECT_EQ(again->lse, first->lse);
  ASSERT_TRUE(c->Release(again->session.handle()).ok());
  c.reset();
  EXPECT_TRUE((*cluster)->Stop().ok());
}

}  // namespace
}  // namespace ringattn::worker
