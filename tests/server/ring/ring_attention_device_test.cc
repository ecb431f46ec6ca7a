// The ring on a device backend, without a GPU: every rank computes in a
// FakeDeviceSpace (host memory that host code cannot touch, so any host
// read or write of "device" memory faults) with the CPU kernels, and its
// messages travel over the fake NCCL hub, which, like NCCL, moves device
// memory in place. The results must equal a CPU ring's to the bit (the
// same kernels and merge), and no step may copy between host and device.

#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backends.h"
#include "kernels/reference/dense_attention.h"
#include "server/ring/chunk_message.h"
#include "server/ring/ring_attention.h"
#include "server/ring/transports/in_process_transport.h"
#include "tests/kernels/testing/attention_case.h"
#include "tests/kernels/testing/fake_device.h"
#include "tests/server/ring/testing/fake_nccl.h"
#include "tests/server/ring/testing/ring_harness.h"

namespace ringattn::ring {
namespace {

using kernels::LayerConfig;
using kernels::LayerKind;
using kernels::testing::FakeDeviceBackend;
using kernels::testing::FakeDeviceSpace;
using testing::FakeNcclHub;

// One fake device per rank, and the backends that compute on them.
class FakeDevices {
 public:
  explicit FakeDevices(int cp) {
    for (int r = 0; r < cp; ++r) spaces_.push_back(std::make_unique<FakeDeviceSpace>());
  }

  testing::BackendFn Backends() {
    return [this](int rank) -> absl::StatusOr<std::unique_ptr<kernels::ChunkBackend>> {
      auto cpu = kernels::MakeCpuBackend(1);
      if (!cpu.ok()) return cpu.status();
      return std::make_unique<FakeDeviceBackend>(*std::move(cpu), *spaces_[rank]);
    };
  }

  // What the fake NCCL hub moves messages with: a peer-to-peer copy, with
  // every device open for it (sender and receiver may be any two).
  FakeNcclHub::CopyFn PeerCopy() {
    return [this](std::byte* dst, const std::byte* src, size_t bytes) {
      std::vector<std::unique_ptr<FakeDeviceSpace::Access>> open;
      for (auto& s : spaces_) open.push_back(std::make_unique<FakeDeviceSpace::Access>(*s));
      std::memcpy(dst, src, bytes);
    };
  }

  FakeDeviceSpace& space(int rank) { return *spaces_[rank]; }
  int size() const { return static_cast<int>(spaces_.size()); }

 private:
  std::vector<std::unique_ptr<FakeDeviceSpace>> spaces_;
};

// "Full": a full causal layer; "SlidingW10": a window of 10 with
// bidirectional images; "SlidingW10CausalImages": the same window with
// causal images, whose contiguous rings exchange only a halo.
LayerConfig TestLayer(const std::string& kind) {
  LayerConfig layer;
  layer.kind = kind == "Full" ? LayerKind::kFull : LayerKind::kSliding;
  layer.window = kind == "Full" ? 512 : 10;
  layer.vision_bidirectional = kind != "SlidingW10CausalImages";
  layer.scale = 0.125f;
  return layer;
}

struct DeviceCase {
  std::string name;
  int cp;
  LayerConfig layer;
  batch::LayoutKind layout;
};

void PrintTo(const DeviceCase& c, std::ostream* os) { *os << c.name; }

std::vector<DeviceCase> DeviceCases() {
  std::vector<DeviceCase> cases;
  for (int cp : {1, 2, 3, 4, 8}) {
    // Full causal layers and a window smaller than a shard (cp 8: L = 24):
    // with bidirectional images (the batch holds some, so whole chunks
    // travel) and with causal ones, which take the halo exchange on
    // contiguous shards.
    for (const std::string kind : {"Full", "SlidingW10", "SlidingW10CausalImages"}) {
      for (batch::LayoutKind layout :
           {batch::LayoutKind::kContiguous, batch::LayoutKind::kZigzag}) {
        cases.push_back(
            {kind + "_Cp" + std::to_string(cp) + "_" + std::string(batch::LayoutName(layout)), cp,
             TestLayer(kind), layout});
      }
    }
  }
  return cases;
}

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

void ExpectBitEqual(const std::vector<float>& got, const std::vector<float>& want,
                    const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(Bits(got[i]), Bits(want[i])) << what << "[" << i << "]";
  }
}

void ExpectSameResult(const testing::RingRunResult& got, const testing::RingRunResult& want) {
  ExpectBitEqual(got.whole.out, want.whole.out, "out");
  ExpectBitEqual(got.whole.lse, want.whole.lse, "lse");
  ExpectBitEqual(got.whole.dq, want.whole.dq, "dq");
  ExpectBitEqual(got.whole.dk, want.whole.dk, "dk");
  ExpectBitEqual(got.whole.dv, want.whole.dv, "dv");
}

kernels::reference::SyntheticBatch DeviceBatch(kernels::DType dtype, uint32_t seed) {
  return kernels::reference::MakeSyntheticBatch(
      {2, 4, 2, 192, 64}, {testing::RingTestLayout(0), testing::RingTestLayout(1)}, dtype, seed);
}

class RingDeviceTest : public ::testing::TestWithParam<DeviceCase> {};

// The device-resident ring against the oracle and, bit for bit, against the
// CPU ring; no step copies between host and device, and every device
// buffer is freed when the calls end.
TEST_P(RingDeviceTest, DeviceResidentRingMatchesTheCpuRingAndCopiesNothingPerStep) {
  const DeviceCase& c = GetParam();
  const auto batch = DeviceBatch(kernels::DType::kF32, 21 + c.cp);
  FakeDevices devices(c.cp);
  FakeNcclHub hub(c.cp);
  hub.CarryDeviceMemory(devices.PeerCopy());
  absl::StatusOr<testing::RingRunResult> got = testing::RunRingOn(
      batch, c.layer, c.cp,
      [&hub](int rank) -> absl::StatusOr<std::unique_ptr<Transport>> { return hub.Connect(rank); },
      devices.Backends(), c.layout);
  ASSERT_TRUE(got.ok()) << got.status();
  kernels::testing::ExpectResultMatchesOracle(batch, c.layer, got->whole, /*backward=*/true);
  absl::StatusOr<testing::RingRunResult> cpu =
      testing::RunInProcessRing(batch, c.layer, c.cp, 1, c.layout);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  ExpectSameResult(*got, *cpu);

  for (int r = 0; r < c.cp; ++r) {
    for (const auto* stats : {&got->forward_stats[r], &got->backward_stats[r]}) {
      for (const StepStats& s : stats->steps) {
        EXPECT_EQ(s.host_device_bytes, 0) << "rank " << r << " step " << s.step;
      }
      // The shard went up and the answer came down, once.
      EXPECT_GT(stats->host_device_bytes, 0) << "rank " << r;
    }
    EXPECT_EQ(devices.space(r).buffers_held(), 0) << "rank " << r;
    EXPECT_EQ(devices.space(r).bytes_held(), 0) << "rank " << r;
    EXPECT_GT(devices.space(r).allocations(), 0) << "rank " << r;
  }
  // The CPU ring copies nothing at all.
  for (const RingStats& s : cpu->forward_stats) EXPECT_EQ(s.host_device_bytes, 0);
}

INSTANTIATE_TEST_SUITE_P(Matrix, RingDeviceTest, ::testing::ValuesIn(DeviceCases()),
                         [](const auto& info) { return info.param.name; });

// bf16 inputs: the device ring's final conversion (FromF32 in the space)
// rounds as the CPU ring's does.
TEST(RingDeviceTest, Bf16DeviceRingMatchesTheCpuRing) {
  LayerConfig layer;
  layer.kind = LayerKind::kSliding;
  layer.window = 40;
  layer.scale = 0.125f;
  const auto batch = DeviceBatch(kernels::DType::kBF16, 9);
  FakeDevices devices(4);
  FakeNcclHub hub(4);
  hub.CarryDeviceMemory(devices.PeerCopy());
  absl::StatusOr<testing::RingRunResult> got = testing::RunRingOn(
      batch, layer, 4,
      [&hub](int rank) -> absl::StatusOr<std::unique_ptr<Transport>> { return hub.Connect(rank); },
      devices.Backends());
  ASSERT_TRUE(got.ok()) << got.status();
  absl::StatusOr<testing::RingRunResult> cpu = testing::RunInProcessRing(batch, layer, 4);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  ExpectSameResult(*got, *cpu);
  kernels::testing::ExpectResultMatchesOracle(batch, layer, got->whole, true);
}

// A device backend on a transport of host memory (a GPU worker on Gloo):
// every message is staged through host memory, and the per-step counters
// say so, byte for byte; the results stay those of the CPU ring.
TEST(RingDeviceTest, HostMemoryTransportStagesEveryMessageAndCountsIt) {
  int64_t sent[2] = {0, 0};  // All ranks' bytes, whole chunks and halo.
  for (const bool halo : {false, true}) {
    const LayerConfig layer = TestLayer("SlidingW10CausalImages");
    const int cp = 4;
    const auto batch = DeviceBatch(kernels::DType::kF32, 33);
    FakeDevices devices(cp);
    InProcessHub hub(cp);
    absl::StatusOr<testing::RingRunResult> got = testing::RunRingOn(
        batch, layer, cp,
        [&hub](int rank) -> absl::StatusOr<std::unique_ptr<Transport>> {
          return hub.Connect(rank);
        },
        devices.Backends(), batch::LayoutKind::kContiguous, halo);
    ASSERT_TRUE(got.ok()) << got.status();
    absl::StatusOr<testing::RingRunResult> cpu =
        testing::RunInProcessRing(batch, layer, cp, 1, batch::LayoutKind::kContiguous, halo);
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    ExpectSameResult(*got, *cpu);
    int64_t staged = 0;
    for (int r = 0; r < cp; ++r) {
      for (const auto* stats : {&got->forward_stats[r], &got->backward_stats[r]}) {
        for (const StepStats& s : stats->steps) {
          // Each byte sent came down first; each byte received went up after.
          EXPECT_EQ(s.host_device_bytes, s.bytes_sent + s.bytes_received)
              << "halo " << halo << " rank " << r << " step " << s.step;
          staged += s.host_device_bytes;
          sent[halo ? 1 : 0] += s.bytes_sent;
        }
      }
    }
    EXPECT_GT(staged, 0);
  }
  // The halo run sent only halos.
  EXPECT_LT(sent[1], sent[0] / 2);
}

// A forward that keeps its state on the device answers as one that keeps
// nothing and hands its state to its backward, which then uploads only dout
// and downloads only dQ/dK/dV; the results are those of a backward that
// uploads everything again; with a halo exchange too, where the kept own
// chunk is read where it lies. A host backend keeps nothing, and a residue
// is refused by a backward of another shard shape.
TEST(RingDeviceTest, KeptForwardStateServesTheBackwardWithOnlyDoutUploaded) {
  for (const std::string kind : {"Full", "SlidingW10", "SlidingW10CausalImages"}) {
    const LayerConfig layer = TestLayer(kind);
    const bool halo = kind == "SlidingW10CausalImages";
    const int cp = 4;
    const auto batch = DeviceBatch(kernels::DType::kBF16, 12);
    const int64_t L = batch.shape.seq_len / cp;
    FakeDevices devices(cp);
    testing::FakeNcclHub hub(cp);
    hub.CarryDeviceMemory(devices.PeerCopy());
    std::vector<testing::ShardData> shards;
    for (int r = 0; r < cp; ++r) shards.push_back(testing::SliceShard(batch, cp, r));
    RingCall call;
    call.layer = layer;
    call.batch_has_vision = testing::BatchHasVision(batch);
    call.sequence = 5;
    std::vector<absl::Status> status(cp);
    std::vector<std::vector<float>> kept_dq(cp), plain_dq(cp), kept_dk(cp), plain_dk(cp);
    std::vector<std::vector<std::byte>> plain_out(cp);
    std::vector<std::vector<float>> plain_lse(cp);
    std::vector<int64_t> kept_bytes(cp), want_bytes(cp), first_sent(cp), chunk_bytes(cp);
    std::vector<std::unique_ptr<kernels::ChunkBackend>> backends(cp);
    std::vector<absl::StatusOr<RingForwardResult>> forwards(cp, absl::UnknownError("not run"));
    std::vector<std::thread> threads;
    const testing::BackendFn make_backend = devices.Backends();
    for (int r = 0; r < cp; ++r) {
      threads.emplace_back([&, r] {
        absl::StatusOr<std::unique_ptr<kernels::ChunkBackend>> backend = make_backend(r);
        if (!backend.ok()) {
          status[r] = backend.status();
          return;
        }
        backends[r] = *std::move(backend);
        std::unique_ptr<Transport> t = hub.Connect(r);
        const ShardRef ref = shards[r].Ref(batch, L);
        const std::span<const std::byte> dout = std::as_bytes(std::span(shards[r].dout));
        RingCall mine = call;
        forwards[r] = RingForward(*t, *backends[r], ref, mine, true);
        const absl::StatusOr<RingForwardResult>& f = forwards[r];
        if (!f.ok() || f->residue == nullptr) {
          status[r] = f.ok() ? absl::InternalError("no residue") : f.status();
          return;
        }
        first_sent[r] = f->stats.steps.at(0).bytes_sent;
        chunk_bytes[r] = static_cast<int64_t>(ChunkLayout(ref).size());
        mine.sequence = 6;
        absl::StatusOr<RingBackwardResult> kept =
            RingBackward(*t, *backends[r], ref, f->out, dout, f->lse, mine, f->residue.get());
        mine.sequence = 7;
        absl::StatusOr<RingBackwardResult> plain =
            RingBackward(*t, *backends[r], ref, f->out, dout, f->lse, mine);
        if (!kept.ok() || !plain.ok()) {
          status[r] = kept.ok() ? plain.status() : kept.status();
          return;
        }
        mine.sequence = 8;
        absl::StatusOr<RingForwardResult> plain_forward =
            RingForward(*t, *backends[r], ref, mine, false);
        if (!plain_forward.ok()) {
          status[r] = plain_forward.status();
          return;
        }
        plain_out[r] = plain_forward->out;
        plain_lse[r] = plain_forward->lse;
        kept_dq[r] = kept->dq;
        plain_dq[r] = plain->dq;
        kept_dk[r] = kept->dk;
        plain_dk[r] = plain->dk;
        kept_bytes[r] = kept->stats.host_device_bytes;
        want_bytes[r] = static_cast<int64_t>(
            dout.size() + (kept->dq.size() + kept->dk.size() + kept->dv.size()) * sizeof(float));
      });
    }
    for (auto& th : threads) th.join();
    for (int r = 0; r < cp; ++r) {
      ASSERT_TRUE(status[r].ok()) << "rank " << r << ": " << status[r];
      // Whole chunks travel unless the layer takes the halo exchange.
      if (halo) {
        EXPECT_LT(first_sent[r], chunk_bytes[r] / 2) << kind << " rank " << r;
      } else {
        EXPECT_EQ(first_sent[r], chunk_bytes[r]) << kind << " rank " << r;
      }
      EXPECT_TRUE(forwards[r]->out == plain_out[r]) << "rank " << r << ": out";
      ExpectBitEqual(forwards[r]->lse, plain_lse[r], "lse");
      ExpectBitEqual(kept_dq[r], plain_dq[r], "dq");
      ExpectBitEqual(kept_dk[r], plain_dk[r], "dk");
      EXPECT_EQ(kept_bytes[r], want_bytes[r]) << "rank " << r;
    }
    // Another shard shape may not take a residue; refused before any
    // message is posted, so one rank alone sees it.
    testing::FakeNcclHub lone(cp);
    const RingForwardResult& f = *forwards[1];
    ShardRef other = shards[1].Ref(batch, L);
    other.shape.heads = 2;
    other.q = other.q.first(other.q.size() / 2);
    const std::span<const std::byte> half = std::span(f.out).first(f.out.size() / 2);
    absl::StatusOr<RingBackwardResult> refused =
        RingBackward(*lone.Connect(1), *backends[1], other, half, half,
                     std::span(f.lse).first(f.lse.size() / 2), call, f.residue.get());
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  }
  // A host backend keeps nothing.
  InProcessHub hub(1);
  auto cpu = kernels::MakeCpuBackend(1);
  ASSERT_TRUE(cpu.ok());
  const auto batch = DeviceBatch(kernels::DType::kF32, 2);
  testing::ShardData shard = testing::SliceShard(batch, 1, 0);
  RingCall call;
  call.layer.scale = 0.125f;
  absl::StatusOr<RingForwardResult> f =
      RingForward(*hub.Connect(0), **cpu, shard.Ref(batch, batch.shape.seq_len), call, true);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->residue, nullptr);
}

// A call that cannot fit its device fails before it allocates anything, on
// every rank, naming the bytes it needed.
TEST(RingDeviceTest, CallThatDoesNotFitTheDeviceFailsBeforeAllocating) {
  LayerConfig layer;
  layer.scale = 0.125f;
  const auto batch = DeviceBatch(kernels::DType::kF32, 3);
  const int cp = 2;
  FakeDevices devices(cp);
  for (int r = 0; r < cp; ++r) devices.space(r).set_capacity(64 << 10);
  FakeNcclHub hub(cp);
  hub.CarryDeviceMemory(devices.PeerCopy());
  absl::StatusOr<testing::RingRunResult> got = testing::RunRingOn(
      batch, layer, cp,
      [&hub](int rank) -> absl::StatusOr<std::unique_ptr<Transport>> { return hub.Connect(rank); },
      devices.Backends());
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kResourceExhausted) << got.status();
  EXPECT_NE(got.status().message().find("bytes needed"), absl::string_view::npos) << got.status();
  for (int r = 0; r < cp; ++r) EXPECT_EQ(devices.space(r).allocations(), 0) << "rank " << r;
}

}  // namespace
}  // namespace ringattn::ring
