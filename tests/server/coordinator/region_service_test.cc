// Shared-memory regions end to end: a real coordinator and worker processes
// on 127.0.0.1, and a client on their host whose tensors lie in a POSIX
// shared-memory object it registered. Results are checked against the fp64
// oracle, for every mix of streamed and region tensors tried, and the
// daemons' byte counters show what crossed gRPC.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/attention_client.h"
#include "client/local_cluster.h"
#include "client/shared_region.h"
#include "client/synthetic_inputs.h"
#include "gtest/gtest.h"
#include "kernels/reference/synthetic_batch.h"
#include "server/batch/shard_layout.h"
#include "tests/proto/wire/testing/test_pki.h"
#include "tests/server/testing/metrics_scrape.h"
#include "tests/server/testing/service_checks.h"

namespace ringattn::coordinator {
namespace {

using client::RegionRef;
using kernels::reference::SyntheticBatch;
using server::testing::OracleResult;

constexpr char kRegion[] = "batch";

std::unique_ptr<client::LocalCluster> StartCluster(client::LocalClusterOptions options) {
  options.bin_dir = RINGATTN_BIN_DIR;
  options.ring_timeout_seconds = 30;
  auto cluster = client::LocalCluster::Start(options);
  EXPECT_TRUE(cluster.ok()) << cluster.status();
  return cluster.ok() ? *std::move(cluster) : nullptr;
}

std::unique_ptr<client::LocalCluster> StartCluster(int cp) {
  client::LocalClusterOptions options;
  options.cp = cp;
  return StartCluster(options);
}

// Tensor bytes a daemon has counted on a channel ("api": client <->
// coordinator, "shard": coordinator <-> workers), both ways.
double TensorBytes(const std::string& metrics_address, const std::string& channel) {
  double total = 0;
  for (const char* name : {"ringattn_received_bytes_total", "ringattn_sent_bytes_total"}) {
    total += server::testing::Scrape(metrics_address, name, {{"channel", channel}}).value_or(-1e18);
  }
  return total;
}

// Every tensor of one forward and backward of `b`, laid out in one region
// (64-byte aligned), the inputs copied in.
class RegionBatch {
 public:
  RegionBatch(const SyntheticBatch& b, const client::EncodedBatch& e) : e_(e) {
    const auto& s = b.shape;
    const uint64_t q = e.q.size(), kv = e.k.size(), tokens = s.batch * s.seq_len;
    const uint64_t f32_q = static_cast<uint64_t>(s.batch * s.heads * s.seq_len * s.head_dim) * 4;
    const uint64_t f32_kv =
        static_cast<uint64_t>(s.batch * s.kv_heads * s.seq_len * s.head_dim) * 4;
    for (auto [name, bytes] : std::initializer_list<std::pair<const char*, uint64_t>>{
             {"q", q},
             {"k", kv},
             {"v", kv},
             {"doc_ids", tokens * 4},
             {"vision_groups", tokens * 4},
             {"padding_mask", tokens},
             {"dout", e.dout.size()},
             {"out", q},
             {"lse", static_cast<uint64_t>(s.batch * s.heads * s.seq_len) * 4},
             {"dq", f32_q},
             {"dk", f32_kv},
             {"dv", f32_kv}}) {
      at_[name] = RegionRef{kRegion, size_, bytes};
      size_ += (bytes + 63) / 64 * 64;
    }
    absl::StatusOr<std::unique_ptr<client::SharedRegion>> r =
        client::SharedRegion::CreateUnique("region_service_test", size_);
    EXPECT_TRUE(r.ok()) << r.status();
    region_ = *std::move(r);
    Put("q", std::as_bytes(std::span(e.q)));
    Put("k", std::as_bytes(std::span(e.k)));
    Put("v", std::as_bytes(std::span(e.v)));
    Put("dout", std::as_bytes(std::span(e.dout)));
    if (e.in.doc_ids) Put("doc_ids", std::as_bytes(*e.in.doc_ids));
    if (e.in.vision_groups) Put("vision_groups", std::as_bytes(*e.in.vision_groups));
    if (e.in.padding_mask) Put("padding_mask", std::as_bytes(*e.in.padding_mask));
  }

  client::SharedRegion& region() { return *region_; }
  uint64_t size() const { return size_; }
  const RegionRef& at(const std::string& name) const { return at_.at(name); }
  std::span<std::byte> Bytes(const std::string& name) {
    return region_->bytes().subspan(at_.at(name).offset, at_.at(name).byte_size);
  }
  template <typename T>
  std::vector<T> As(const std::string& name) {
    std::vector<T> v(at_.at(name).byte_size / sizeof(T));
    std::memcpy(v.data(), Bytes(name).data(), v.size() * sizeof(T));
    return v;
  }

  // Forward inputs with `in_region` named in the region, the rest streamed,
  // and `out_region` of out/lse written there.
  client::ForwardInputs Forward(const std::set<std::string>& in_region,
                                const std::set<std::string>& out_region) const {
    client::ForwardInputs in = e_.in;
    for (const std::string& n : in_region) in.input_regions[n] = at_.at(n);
    for (const std::string& n : out_region) in.output_regions[n] = at_.at(n);
    return in;
  }
  client::BackwardRegions Backward(bool dout, const std::set<std::string>& out_region) const {
    client::BackwardRegions r;
    if (dout) r.dout = at_.at("dout");
    for (const std::string& n : out_region) r.outputs[n] = at_.at(n);
    return r;
  }

 private:
  void Put(const std::string& name, std::span<const std::byte> data) {
    ASSERT_EQ(data.size(), at_[name].byte_size) << name;
    std::memcpy(Bytes(name).data(), data.data(), data.size());
  }

  const client::EncodedBatch& e_;
  std::map<std::string, RegionRef> at_;
  uint64_t size_ = 0;
  std::unique_ptr<client::SharedRegion> region_;
};

// Which tensors of a forward + backward go through the region.
struct Mix {
  std::set<std::string> forward_in, forward_out;
  bool dout = false;
  std::set<std::string> backward_out;
};

const Mix kAll{{"q", "k", "v", "doc_ids", "vision_groups", "padding_mask"},
               {"out", "lse"},
               true,
               {"dq", "dk", "dv"}};
const Mix kMixed{{"q", "v", "doc_ids"}, {"out"}, true, {"dq", "dv"}};
const Mix kMixedOther{{"k", "padding_mask", "vision_groups"}, {"lse"}, false, {"dk"}};

// Runs forward + backward with `mix`, checks both against the oracle.
void ExpectParity(client::AttentionClient& c, const SyntheticBatch& b,
                  const client::EncodedBatch& e, const kernels::LayerConfig& layer, const Mix& mix,
                  attention::v1::ShardLayout layout = attention::v1::SHARD_LAYOUT_AUTO) {
  RegionBatch rb(b, e);
  ASSERT_TRUE(c.RegisterRegion(kRegion, rb.region().shm_name(), rb.size()).ok());
  const OracleResult want = server::testing::ComputeOracle(b, layer, /*backward=*/true);
  client::ForwardInputs in = rb.Forward(mix.forward_in, mix.forward_out);
  in.layer = client::ToWire(layer);
  in.layout = layout;
  absl::StatusOr<client::ForwardOutputs> f = c.Forward(in);
  ASSERT_TRUE(f.ok()) << f.status();
  if (layout != attention::v1::SHARD_LAYOUT_AUTO) {
    EXPECT_EQ(f->session.layout(), layout);
  }
  const std::vector<std::byte> out =
      mix.forward_out.contains("out")
          ? std::vector<std::byte>(rb.Bytes("out").begin(), rb.Bytes("out").end())
          : f->out;
  const std::vector<float> lse = mix.forward_out.contains("lse") ? rb.As<float>("lse") : f->lse;
  EXPECT_EQ(f->out.empty(), mix.forward_out.contains("out"));
  EXPECT_EQ(server::testing::ForwardMismatch(b, want, out, lse), "");
  absl::StatusOr<client::BackwardOutputs> g =
      c.Backward(e.in, f->session.handle(), std::as_bytes(std::span(e.dout)),
                 rb.Backward(mix.dout, mix.backward_out));
  ASSERT_TRUE(g.ok()) << g.status();
  auto grad = [&](const char* name, const std::vector<float>& streamed) {
    return mix.backward_out.contains(name) ? rb.As<float>(name) : streamed;
  };
  EXPECT_EQ(server::testing::BackwardMismatch(b, want, out, grad("dq", g->dq), grad("dk", g->dk),
                                              grad("dv", g->dv)),
            "");
  EXPECT_TRUE(c.Release(f->session.handle()).ok());
  EXPECT_TRUE(c.UnregisterRegion(kRegion).ok());
}

kernels::LayerConfig Sliding(int64_t window) {
  kernels::LayerConfig layer;
  layer.kind = kernels::LayerKind::kSliding;
  layer.window = window;
  layer.scale = 0.125f;
  return layer;
}

class RegionParityTest : public ::testing::TestWithParam<int> {};

// S = 200 is not a multiple of 2 * cp for cp = 3 and 4: padding and the
// cut to S are on the path, in both directions.
TEST_P(RegionParityTest, ForwardAndBackwardThroughRegionsMatchTheOracle) {
  const int cp = GetParam();
  auto cluster = StartCluster(cp);
  ASSERT_NE(cluster, nullptr);
  auto c = client::AttentionClient::Connect(cluster->address());
  const SyntheticBatch b = kernels::reference::MakeSyntheticBatch(
      {2, 4, 2, 200, 32},
      {kernels::reference::GemmaLikeLayout(200), kernels::reference::GemmaLikeLayout(160)},
      kernels::DType::kBF16, 70 + cp);
  const auto e = client::EncodeBatch(b, Sliding(48));
  kernels::LayerConfig full;
  full.scale = 0.125f;
  // Everything by region: no tensor byte crosses gRPC on the client's hop;
  // on the workers' hop only the metadata the coordinator padded (doc ids,
  // vision groups, padding mask: 9 bytes a position of [B, P]).
  const double api0 = TensorBytes(cluster->coordinator_metrics_address(), "api");
  const double shard0 = TensorBytes(cluster->coordinator_metrics_address(), "shard");
  ExpectParity(*c, b, *e, full, kAll);
  EXPECT_EQ(TensorBytes(cluster->coordinator_metrics_address(), "api"), api0);
  const double padded = static_cast<double>(batch::PaddedLength(200, cp));
  EXPECT_EQ(TensorBytes(cluster->coordinator_metrics_address(), "shard"), shard0 + 2 * padded * 9);
  ExpectParity(*c, b, *e, Sliding(48), kMixed);
  ExpectParity(*c, b, *e, Sliding(48), kMixedOther);
  c.reset();
  EXPECT_TRUE(cluster->Stop().ok());
}

INSTANTIATE_TEST_SUITE_P(Cp, RegionParityTest, ::testing::Values(1, 2, 3, 4),
                         [](const auto& info) { return "Cp" + std::to_string(info.param); });

// Rank 1 does not read regions (as a worker on another host would not): its
// slices are streamed to it and its answers written into the region by the
// coordinator, while ranks 0 and 2 read and write the region themselves.
TEST(RegionServiceTest, MixedPlacementStreamsToTheWorkerThatCannotReadRegions) {
  client::LocalClusterOptions options;
  options.cp = 3;
  options.rank_worker_flags[1] = {"--shm_regions=false"};
  auto cluster = StartCluster(options);
  ASSERT_NE(cluster, nullptr);
  auto c = client::AttentionClient::Connect(cluster->address());
  const SyntheticBatch b = kernels::reference::MakeSyntheticBatch(
      {1, 4, 4, 150, 32}, {kernels::reference::GemmaLikeLayout(150)}, kernels::DType::kF32, 5);
  const auto e = client::EncodeBatch(b, Sliding(40));
  const std::vector<std::string> workers = cluster->worker_metrics_addresses();
  const double rank0 = TensorBytes(workers[0], "shard"), rank1 = TensorBytes(workers[1], "shard");
  ExpectParity(*c, b, *e, Sliding(40), kAll);
  // Rank 0 reads and writes the region itself: only its metadata slice
  // (9 bytes a position, L = 50) comes over gRPC.
  EXPECT_EQ(TensorBytes(workers[0], "shard"), rank0 + 50 * 9) << "rank 0 reads the region itself";
  EXPECT_GT(TensorBytes(workers[1], "shard"), rank1) << "rank 1 has its slices streamed";
  ExpectParity(*c, b, *e, Sliding(40), kMixed);
  c.reset();
  EXPECT_TRUE(cluster->Stop().ok());
}

// Zigzag shards through regions: rank 0 holds chunks 0 and 3, the last cut
// by the padding (S = 98, P = 100), and cannot read regions, so the
// coordinator scatters its two segments into the region and writes its
// answers back segment by segment; rank 1 reads its one run itself.
TEST(RegionServiceTest, ZigzagSegmentsGoToTheirPlacesInTheRegion) {
  client::LocalClusterOptions options;
  options.cp = 2;
  options.rank_worker_flags[0] = {"--shm_regions=false"};
  auto cluster = StartCluster(options);
  ASSERT_NE(cluster, nullptr);
  auto c = client::AttentionClient::Connect(cluster->address());
  const SyntheticBatch b = kernels::reference::MakeSyntheticBatch(
      {2, 4, 2, 98, 32}, {kernels::reference::GemmaLikeLayout(98)}, kernels::DType::kF32, 12);
  const auto e = client::EncodeBatch(b, Sliding(40));
  kernels::LayerConfig full;
  full.scale = 0.125f;
  for (const Mix& mix : {kAll, kMixed, kMixedOther}) {
    ExpectParity(*c, b, *e, full, mix, attention::v1::SHARD_LAYOUT_ZIGZAG);
  }
  c.reset();
  EXPECT_TRUE(cluster->Stop().ok());
}

class BadRegionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    cluster_ = StartCluster(2);
    ASSERT_NE(cluster_, nullptr);
    c_ = client::AttentionClient::Connect(cluster_->address());
    b_ = kernels::reference::MakeSyntheticBatch(
        {1, 2, 2, 64, 32}, {kernels::reference::GemmaLikeLayout(64)}, kernels::DType::kF32, 9);
    e_ = client::EncodeBatch(b_, Sliding(16));
    rb_ = std::make_unique<RegionBatch>(b_, *e_);
    ASSERT_TRUE(c_->RegisterRegion(kRegion, rb_->region().shm_name(), rb_->size()).ok());
  }
  void TearDown() override {
    // Every bad call failed alone: the service still answers a good one.
    if (cluster_ == nullptr) return;
    ASSERT_TRUE(cluster_->WaitReady().ok());
    RegionBatch fresh(b_, *e_);
    (void)c_->UnregisterRegion(kRegion);
    ExpectParity(*c_, b_, *e_, Sliding(16), kAll);
    EXPECT_TRUE(server::testing::ChildRunning(cluster_->coordinator_pid()));
    c_.reset();
    EXPECT_TRUE(cluster_->Stop().ok());
  }

  absl::StatusCode ForwardCode(client::ForwardInputs in) {
    absl::StatusOr<client::ForwardOutputs> f = c_->Forward(in, absl::Seconds(60));
    if (f.ok()) (void)c_->Release(f->session.handle());
    last_ = f.status();
    return f.status().code();
  }

  std::unique_ptr<client::LocalCluster> cluster_;
  std::unique_ptr<client::AttentionClient> c_;
  SyntheticBatch b_;
  std::unique_ptr<client::EncodedBatch> e_;
  std::unique_ptr<RegionBatch> rb_;
  absl::Status last_;
};

TEST_F(BadRegionTest, ReferencesOutsideTheRegionOrOfTheWrongSizeAreInvalid) {
  client::ForwardInputs in = rb_->Forward({"q"}, {});
  in.input_regions["q"].offset = rb_->size() - 16;  // Runs past the registered bytes.
  EXPECT_EQ(ForwardCode(in), absl::StatusCode::kInvalidArgument) << last_;
  in = rb_->Forward({"q"}, {});
  in.input_regions["q"].byte_size -= 4;
  EXPECT_EQ(ForwardCode(in), absl::StatusCode::kInvalidArgument) << last_;
  in = rb_->Forward({}, {"out"});
  in.output_regions["out"].offset = ~uint64_t{0} - 8;  // Overflows.
  EXPECT_EQ(ForwardCode(in), absl::StatusCode::kInvalidArgument) << last_;
  in = rb_->Forward({}, {});
  in.output_regions["dq"] = rb_->at("dq");  // Not an output of forward.
  EXPECT_EQ(ForwardCode(in), absl::StatusCode::kInvalidArgument) << last_;
  in = rb_->Forward({"q"}, {});
  in.input_regions["q"].region = "nobody";
  EXPECT_EQ(ForwardCode(in), absl::StatusCode::kNotFound) << last_;
}

// Only the worker that reads a slice sees its bytes: it names the element
// by its index in the client's whole tensor [B, heads, S, D], and the call
// is withdrawn before the ring runs, so the ring is not rebuilt.
TEST_F(BadRegionTest, NonFiniteInputsInARegionAreRefusedLikeStreamedOnes) {
  const uint64_t generation = c_->Status()->ring_generation();
  const float nan = std::nanf(""), inf = INFINITY;
  // Rank 0's half of v, then the last element of q: rank 1's half, its
  // second head. Each call is refused alone; the element is put back after.
  for (auto [name, at, bad, named] :
       {std::tuple{"v", size_t{40}, nan, "v holds a NaN or Inf at [0, 0, 1, 8]"},
        std::tuple{"q", rb_->Bytes("q").size() / 4 - 1, inf,
                   "q holds a NaN or Inf at [0, 1, 63, 31]"}}) {
    std::byte* p = rb_->Bytes(name).data() + at * 4;
    std::array<std::byte, 4> good;
    std::memcpy(good.data(), p, 4);
    std::memcpy(p, &bad, 4);
    EXPECT_EQ(ForwardCode(rb_->Forward({"q", "k", "v"}, {"out", "lse"})),
              absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(last_.message()).find(named), std::string::npos) << last_;
    std::memcpy(p, good.data(), 4);
  }
  EXPECT_EQ(c_->Status()->ring_generation(), generation);
}

TEST_F(BadRegionTest, RegistrationErrorsAreClear) {
  EXPECT_EQ(c_->RegisterRegion(kRegion, rb_->region().shm_name(), 16).code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(c_->RegisterRegion("other", "/ringattn_no_such_object", 16).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(c_->RegisterRegion("other", rb_->region().shm_name(), rb_->size() + 1).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c_->UnregisterRegion("other").code(), absl::StatusCode::kNotFound);
  absl::StatusOr<attention::v1::ListRegionsResponse> list = c_->ListRegions();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->regions_size(), 1);
  EXPECT_EQ(list->regions(0).name(), kRegion);
  EXPECT_EQ(list->regions(0).byte_size(), rb_->size());
}

// The owner shrinks its object (ftruncate) before and during calls: a call
// whose bytes are gone fails with FAILED_PRECONDITION (or, when a rank
// found out after the ring ran, the ring is rebuilt and the call fails
// UNAVAILABLE); no daemon crashes (a mapping would have been SIGBUS).
TEST_F(BadRegionTest, AShrunkRegionFailsItsCallsCleanly) {
  const int fd = shm_open(rb_->region().shm_name().c_str(), O_RDWR, 0);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, static_cast<off_t>(rb_->at("k").offset)), 0);  // q survives.
  EXPECT_EQ(ForwardCode(rb_->Forward({"q", "k", "v"}, {})), absl::StatusCode::kFailedPrecondition)
      << last_;
  EXPECT_NE(std::string(last_.message()).find("shrunk"), std::string::npos) << last_;
  ASSERT_EQ(ftruncate(fd, static_cast<off_t>(rb_->size())), 0);
  // Back to its size, its bytes zeros now: restore them for the last check.
  RegionBatch again(b_, *e_);
  std::memcpy(rb_->region().bytes().data(), again.region().bytes().data(), rb_->size());
  // Shrinking and growing while calls run: each call ends one of the ways
  // above, within its deadline.
  std::atomic<bool> stop{false};
  std::thread flipper([&] {
    for (int i = 0; i < 400 && !stop; ++i) {
      (void)ftruncate(fd, static_cast<off_t>(i % 2 ? rb_->size() : rb_->at("out").offset));
      std::this_thread::sleep_for(std::chrono::milliseconds(3));
    }
  });
  std::map<absl::StatusCode, int> seen;
  for (int i = 0; i < 12; ++i) {
    ++seen[ForwardCode(rb_->Forward({"q", "k", "v"}, {"out", "lse"}))];
    if (!last_.ok() && last_.code() != absl::StatusCode::kFailedPrecondition &&
        last_.code() != absl::StatusCode::kUnavailable) {
      ADD_FAILURE() << last_;
    }
    if (absl::IsUnavailable(last_)) (void)cluster_->WaitReady();
  }
  stop = true;
  flipper.join();
  ASSERT_EQ(ftruncate(fd, static_cast<off_t>(rb_->size())), 0);
  close(fd);
  for (pid_t w : cluster_->worker_pids()) EXPECT_TRUE(server::testing::ChildRunning(w));
  for (const auto& [code, n] : seen)
    std::printf("  %s: %d\n", absl::StatusCodeToString(code).c_str(), n);
}

// Regions belong to the identity that registered them (here: tokens).
TEST(RegionOwnerTest, AnotherIdentitysRegionIsPermissionDenied) {
  char tmpl[] = "/tmp/ringattn_region_owner_XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  absl::StatusOr<wire::testing::TestPki> pki = wire::testing::MakeTestPki(dir);
  ASSERT_TRUE(pki.ok()) << pki.status();
  const std::string alice = "alice-token-0123456789abcdef", bob = "bob-token-0123456789abcdef";
  ASSERT_TRUE(wire::testing::WriteSecretFile(dir + "/tokens",
                                             absl::StrCat("alice:", alice, "\nbob:", bob, "\n"))
                  .ok());
  ASSERT_TRUE(
      wire::testing::WriteSecretFile(dir + "/cluster", "cluster-token-0123456789abcdef\n").ok());
  client::LocalClusterOptions o;
  o.cp = 2;
  o.tls_cert_file = pki->node_cert;
  o.tls_key_file = pki->node_key;
  o.tls_ca_file = pki->ca_cert;
  o.tls_require_client_cert = false;
  o.auth_token_file = dir + "/tokens";
  o.cluster_token_file = dir + "/cluster";
  auto cluster = StartCluster(o);
  ASSERT_NE(cluster, nullptr);
  auto connect = [&](const std::string& token) {
    wire::ChannelSecurity s;
    s.ca_file = pki->ca_cert;
    s.token = token;
    auto c = client::AttentionClient::Connect(cluster->address(), s);
    EXPECT_TRUE(c.ok()) << c.status();
    return *std::move(c);
  };
  auto a = connect(alice), bb = connect(bob);
  const SyntheticBatch b = kernels::reference::MakeSyntheticBatch(
      {1, 2, 2, 64, 32}, {kernels::reference::GemmaLikeLayout(64)}, kernels::DType::kF32, 3);
  const auto e = client::EncodeBatch(b, Sliding(16));
  RegionBatch rb(b, *e);
  ASSERT_TRUE(a->RegisterRegion(kRegion, rb.region().shm_name(), rb.size()).ok());
  absl::StatusOr<client::ForwardOutputs> f = bb->Forward(rb.Forward({"q"}, {}));
  EXPECT_EQ(f.status().code(), absl::StatusCode::kPermissionDenied) << f.status();
  f = bb->Forward(rb.Forward({}, {"out"}));
  EXPECT_EQ(f.status().code(), absl::StatusCode::kPermissionDenied) << f.status();
  EXPECT_EQ(bb->UnregisterRegion(kRegion).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(bb->RegisterRegion(kRegion, rb.region().shm_name(), 16).code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(bb->ListRegions()->regions_size(), 0);
  EXPECT_EQ(a->ListRegions()->regions_size(), 1);
  // The owner's call works.
  f = a->Forward(rb.Forward({"q", "k", "v"}, {"out", "lse"}));
  EXPECT_TRUE(f.ok()) << f.status();
  a.reset();
  bb.reset();
  EXPECT_TRUE(cluster->Stop().ok());
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace ringattn::coordinator
