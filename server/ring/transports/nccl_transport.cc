#include "server/ring/transports/nccl_transport.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <chrono>
#include <cstring>
#include <map>
#include <optional>
#include <span>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"
#include "server/ring/transports/nccl_check.h"
#include "server/ring/transports/nccl_op_batcher.h"

namespace ringattn::ring {
namespace {

using Clock = std::chrono::steady_clock;

// Makes `device` current for a scope and restores the caller's: ring calls
// run on gRPC threads that may also serve other devices' work.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    status_ = RINGATTN_CUDA_STATUS(cudaGetDevice(&previous_));
    if (status_.ok() && previous_ != device) {
      status_ = RINGATTN_CUDA_STATUS(cudaSetDevice(device));
    }
  }
  ~DeviceScope() {
    if (status_.ok()) nccl_check::Report(RINGATTN_CUDA_STATUS(cudaSetDevice(previous_)));
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

  const absl::Status& status() const { return status_; }

 private:
  int previous_ = 0;
  absl::Status status_;
};

struct CudaFreeHost {
  void operator()(std::byte* p) const { nccl_check::Report(RINGATTN_CUDA_STATUS(cudaFreeHost(p))); }
};
struct CudaFree {
  void operator()(std::byte* p) const { nccl_check::Report(RINGATTN_CUDA_STATUS(cudaFree(p))); }
};

// A pinned host buffer and a device buffer of the same size: host spans go
// through them, so the copies are truly asynchronous (a copy from pageable
// memory may wait for the stream, and so for the peers).
struct Staging {
  size_t size = 0;
  std::unique_ptr<std::byte, CudaFreeHost> host;
  std::unique_ptr<std::byte, CudaFree> device;
};

// Keeps staging buffers for reuse: the ring sends the same sizes every step
// and every call, and pinned allocations cost milliseconds.
class StagingPool {
 public:
  absl::StatusOr<Staging> Take(size_t size) {
    if (auto it = free_.find(size); it != free_.end() && !it->second.empty()) {
      Staging s = std::move(it->second.back());
      it->second.pop_back();
      cached_bytes_ -= size;
      return s;
    }
    Staging s;
    s.size = size;
    void* host = nullptr;
    void* device = nullptr;
    RINGATTN_RETURN_IF_ERROR(RINGATTN_CUDA_STATUS(cudaMallocHost(&host, size)));
    s.host.reset(static_cast<std::byte*>(host));
    RINGATTN_RETURN_IF_ERROR(RINGATTN_CUDA_STATUS(cudaMalloc(&device, size)));
    s.device.reset(static_cast<std::byte*>(device));
    return s;
  }

  void Give(Staging s) {
    if (cached_bytes_ + s.size > kMaxCachedBytes || free_[s.size].size() >= kMaxPerSize) return;
    cached_bytes_ += s.size;
    free_[s.size].push_back(std::move(s));
  }

  void Clear() {
    free_.clear();
    cached_bytes_ = 0;
  }

 private:
  static constexpr size_t kMaxCachedBytes = size_t{4} << 30;  // Pinned host memory is scarce.
  static constexpr size_t kMaxPerSize = 8;
  std::map<size_t, std::vector<Staging>> free_;
  size_t cached_bytes_ = 0;
};

// One rank's communicator, stream and buffers. The batcher calls into it
// with its lock held, so nothing here needs a lock of its own.
struct Communicator {
  int rank = 0;
  int size = 0;
  int device = 0;
  uint64_t generation = 0;
  absl::Duration timeout;  // Bound on waiting for the communicator to be ready.
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  StagingPool pool;

  absl::Status AsyncState(ncclResult_t& state) const {
    return RINGATTN_NCCL_STATUS(ncclCommGetAsyncError(comm, &state));
  }

  absl::Status AsyncError(ncclResult_t state) const {
    const absl::Status s = nccl_check::Nccl(state, __FILE__, __LINE__, "ncclCommGetAsyncError");
    return absl::Status(
        s.code(), absl::StrCat("NCCL communicator of rank ", rank, " (generation ", generation,
                               "): ", ncclGetErrorString(state), ": ", ncclGetLastError(comm)));
  }

  // A non-blocking communicator takes no new call while an earlier one is
  // in progress; waits (bounded) until it is ready.
  absl::Status Ready() const {
    const auto deadline = Clock::now() + absl::ToChronoNanoseconds(timeout);
    for (ncclResult_t state = ncclInProgress;;) {
      RINGATTN_RETURN_IF_ERROR(AsyncState(state));
      if (state == ncclSuccess) return absl::OkStatus();
      if (state != ncclInProgress) return AsyncError(state);
      if (Clock::now() >= deadline) {
        return absl::DeadlineExceededError(absl::StrCat(
            "NCCL communicator of rank ", rank, " busy for ", absl::FormatDuration(timeout)));
      }
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }

  void Abort() {
    if (comm == nullptr) return;
    const DeviceScope scope(device);
    nccl_check::Report(RINGATTN_NCCL_STATUS(ncclCommAbort(comm)));
    comm = nullptr;
  }

  ~Communicator() {
    const DeviceScope scope(device);
    if (comm != nullptr) {
      // Finalize flushes sends whose kernels are done but whose data may
      // still be on its way; if that does not settle in time, abort.
      absl::Status s = RINGATTN_NCCL_STATUS(ncclCommFinalize(comm));
      ncclResult_t state = ncclInProgress;
      const auto deadline = Clock::now() + std::chrono::seconds(10);
      while (s.ok() && state == ncclInProgress && Clock::now() < deadline) {
        s = AsyncState(state);
        if (state == ncclInProgress) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      if (s.ok() && state == ncclSuccess) {
        nccl_check::Report(RINGATTN_NCCL_STATUS(ncclCommDestroy(comm)));
        comm = nullptr;
      } else {
        Abort();
      }
    }
    if (stream != nullptr) {
      nccl_check::Report(RINGATTN_CUDA_STATUS(cudaStreamSynchronize(stream)));
      pool.Clear();
      nccl_check::Report(RINGATTN_CUDA_STATUS(cudaStreamDestroy(stream)));
    }
  }
};

absl::StatusOr<bool> IsDeviceMemory(const void* p, int device) {
  cudaPointerAttributes attr{};
  RINGATTN_RETURN_IF_ERROR(RINGATTN_CUDA_STATUS(cudaPointerGetAttributes(&attr, p)));
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged) return false;
  if (attr.device != device) {
    return absl::InvalidArgumentError(absl::StrCat("buffer is on CUDA device ", attr.device,
                                                   ", the NCCL transport on device ", device));
  }
  return true;
}

// One issued group. Lifecycle: H2D copies of staged sends and the tag
// headers, then the NCCL group; once NCCL reports the group enqueued
// (non-blocking communicators may take a while, e.g. to connect to a peer),
// the D2H copies of staged receives and an event; done when the event is.
class NcclGroup : public LaunchedGroup {
 public:
  NcclGroup(Communicator& c, std::span<const P2pOp> ops) : c_(c), ops_(ops.begin(), ops.end()) {}

  ~NcclGroup() override {
    const DeviceScope scope(c_.device);
    // Only after an abort (the batcher aborts before dropping a group in
    // flight), so the stream drains.
    if (!complete_) nccl_check::Report(RINGATTN_CUDA_STATUS(cudaStreamSynchronize(c_.stream)));
    if (event_ != nullptr) nccl_check::Report(RINGATTN_CUDA_STATUS(cudaEventDestroy(event_)));
    for (auto& s : staging_) {
      if (s) c_.pool.Give(*std::move(s));
    }
    if (tags_) c_.pool.Give(*std::move(tags_));
  }

  absl::Status Launch() {
    const DeviceScope scope(c_.device);
    RINGATTN_RETURN_IF_ERROR(scope.status());
    if (c_.comm == nullptr) return absl::UnavailableError("NCCL communicator aborted");
    RINGATTN_RETURN_IF_ERROR(c_.Ready());
    RINGATTN_RETURN_IF_ERROR(
        RINGATTN_CUDA_STATUS(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming)));
    const size_t n = ops_.size();
    RINGATTN_ASSIGN_OR_RETURN(tags_, c_.pool.Take(n * sizeof(uint64_t)));
    auto* host_tags = reinterpret_cast<uint64_t*>(tags_->host.get());
    auto* device_tags = reinterpret_cast<uint64_t*>(tags_->device.get());
    staging_.resize(n);
    buffers_.resize(n);
    for (size_t i = 0; i < n; ++i) {
      const P2pOp& op = ops_[i];
      host_tags[i] = op.kind == P2pOp::Kind::kSend ? op.tag : 0;
      buffers_[i] = op.data;
      if (op.size == 0) continue;
      RINGATTN_ASSIGN_OR_RETURN(const bool on_device, IsDeviceMemory(op.data, c_.device));
      if (on_device) continue;
      RINGATTN_ASSIGN_OR_RETURN(staging_[i], c_.pool.Take(op.size));
      buffers_[i] = staging_[i]->device.get();
      if (op.kind == P2pOp::Kind::kSend) {
        std::memcpy(staging_[i]->host.get(), op.data, op.size);
        RINGATTN_RETURN_IF_ERROR(RINGATTN_CUDA_STATUS(cudaMemcpyAsync(
            buffers_[i], staging_[i]->host.get(), op.size, cudaMemcpyHostToDevice, c_.stream)));
      }
    }
    RINGATTN_RETURN_IF_ERROR(RINGATTN_CUDA_STATUS(cudaMemcpyAsync(
        device_tags, host_tags, n * sizeof(uint64_t), cudaMemcpyHostToDevice, c_.stream)));

    // One group: NCCL pairs each header and payload with the peer's by order.
    absl::Status posted = RINGATTN_NCCL_STATUS(ncclGroupStart());
    if (!posted.ok()) return posted;
    for (size_t i = 0; i < n && posted.ok(); ++i) {
      const P2pOp& op = ops_[i];
      if (op.kind == P2pOp::Kind::kSend) {
        posted = RINGATTN_NCCL_STATUS(
            ncclSend(device_tags + i, 1, ncclUint64, op.peer, c_.comm, c_.stream));
        if (posted.ok() && op.size > 0) {
          posted = RINGATTN_NCCL_STATUS(
              ncclSend(buffers_[i], op.size, ncclUint8, op.peer, c_.comm, c_.stream));
        }
      } else {
        posted = RINGATTN_NCCL_STATUS(
            ncclRecv(device_tags + i, 1, ncclUint64, op.peer, c_.comm, c_.stream));
        if (posted.ok() && op.size > 0) {
          posted = RINGATTN_NCCL_STATUS(
              ncclRecv(buffers_[i], op.size, ncclUint8, op.peer, c_.comm, c_.stream));
        }
      }
    }
    // The group is closed even when a call in it failed.
    const absl::Status ended = RINGATTN_NCCL_STATUS(ncclGroupEnd());
    RINGATTN_RETURN_IF_ERROR(posted);
    RINGATTN_RETURN_IF_ERROR(ended);
    return Advance().status();
  }

  absl::StatusOr<bool> Poll() override {
    const DeviceScope scope(c_.device);
    RINGATTN_RETURN_IF_ERROR(scope.status());
    return Advance();
  }

  uint64_t ReceivedTag(size_t index) const override {
    return reinterpret_cast<const uint64_t*>(tags_->host.get())[index];
  }

 private:
  // Moves the group along as far as it goes without blocking; true when done.
  absl::StatusOr<bool> Advance() {
    if (complete_) return true;
    if (c_.comm == nullptr) return absl::UnavailableError("NCCL communicator aborted");
    ncclResult_t state = ncclSuccess;
    RINGATTN_RETURN_IF_ERROR(c_.AsyncState(state));
    if (state != ncclSuccess && state != ncclInProgress) return c_.AsyncError(state);
    if (!tail_enqueued_) {
      // Until NCCL has enqueued the group, nothing may be put behind it.
      if (state == ncclInProgress) return false;
      for (size_t i = 0; i < ops_.size(); ++i) {
        if (ops_[i].kind != P2pOp::Kind::kRecv || !staging_[i]) continue;
        RINGATTN_RETURN_IF_ERROR(
            RINGATTN_CUDA_STATUS(cudaMemcpyAsync(staging_[i]->host.get(), buffers_[i], ops_[i].size,
                                                 cudaMemcpyDeviceToHost, c_.stream)));
      }
      RINGATTN_RETURN_IF_ERROR(RINGATTN_CUDA_STATUS(
          cudaMemcpyAsync(tags_->host.get(), tags_->device.get(), ops_.size() * sizeof(uint64_t),
                          cudaMemcpyDeviceToHost, c_.stream)));
      RINGATTN_RETURN_IF_ERROR(RINGATTN_CUDA_STATUS(cudaEventRecord(event_, c_.stream)));
      tail_enqueued_ = true;
    }
    const cudaError_t q = cudaEventQuery(event_);
    if (q == cudaErrorNotReady) return false;
    RINGATTN_RETURN_IF_ERROR(RINGATTN_CUDA_STATUS(q));
    for (size_t i = 0; i < ops_.size(); ++i) {
      if (ops_[i].kind != P2pOp::Kind::kRecv || !staging_[i]) continue;
      std::memcpy(ops_[i].data, staging_[i]->host.get(), ops_[i].size);
    }
    complete_ = true;
    return true;
  }

  Communicator& c_;
  std::vector<P2pOp> ops_;
  std::vector<std::optional<Staging>> staging_;  // Per op; empty: used in place.
  std::vector<std::byte*> buffers_;              // Per op: what NCCL reads or writes.
  std::optional<Staging> tags_;                  // [ops] one 8-byte tag header each.
  cudaEvent_t event_ = nullptr;
  bool tail_enqueued_ = false;
  bool complete_ = false;
};

class NcclTransport final : public BatchedTransport {
 public:
  explicit NcclTransport(std::unique_ptr<Communicator> c)
      : BatchedTransport(c->rank, c->size, HooksFor(*c), /*device_memory=*/true),
        c_(std::move(c)) {}

  // The batcher goes first: it aborts groups in flight and drops them, and
  // only then may the communicator and its stream go.
  ~NcclTransport() override { batcher().Shutdown(); }

 private:
  static OpBatcherHooks HooksFor(Communicator& c) {
    OpBatcherHooks hooks;
    hooks.launch =
        [&c](std::span<const P2pOp> ops) -> absl::StatusOr<std::unique_ptr<LaunchedGroup>> {
      auto group = std::make_unique<NcclGroup>(c, ops);
      if (absl::Status s = group->Launch(); !s.ok()) {
        c.Abort();  // Part of the group may be queued: drain it before it goes.
        return s;
      }
      return std::unique_ptr<LaunchedGroup>(std::move(group));
    };
    hooks.abort = [&c] { c.Abort(); };
    return hooks;
  }

  std::unique_ptr<Communicator> c_;
};

absl::StatusOr<ncclUniqueId> Rendezvous(Store& store, const NcclOptions& o) {
  const std::string key = NcclUniqueIdKey(o.generation);
  ncclUniqueId id{};
  if (o.rank == 0) {
    RINGATTN_RETURN_IF_ERROR(RINGATTN_NCCL_STATUS(ncclGetUniqueId(&id)));
    const auto* bytes = reinterpret_cast<const char*>(&id);
    RINGATTN_RETURN_IF_ERROR(store.Set(key, std::vector<char>(bytes, bytes + sizeof(id))));
    return id;
  }
  if (absl::Status s = store.Wait({key}, o.timeout); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("rank ", o.rank,
                                               " waiting for the NCCL unique id of "
                                               "ring generation ",
                                               o.generation, " from rank 0: ", s.message()));
  }
  RINGATTN_ASSIGN_OR_RETURN(const std::vector<char> value, store.Get(key));
  if (value.size() != sizeof(id)) {
    return absl::InternalError(absl::StrCat("NCCL unique id under '", key, "' has ", value.size(),
                                            " bytes, expected ", sizeof(id)));
  }
  std::memcpy(&id, value.data(), sizeof(id));
  return id;
}

}  // namespace

int NcclDeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // Clears the sticky "no device" error.
    return 0;
  }
  return n;
}

std::string NcclUniqueIdKey(uint64_t generation) {
  return absl::StrCat("nccl-gen-", generation, "/unique-id");
}

absl::StatusOr<std::unique_ptr<Transport>> ConnectNccl(Store& store, const NcclOptions& o) {
  if (o.size < 1 || o.rank < 0 || o.rank >= o.size) {
    return absl::InvalidArgumentError(
        absl::StrCat("NCCL rank ", o.rank, " is not in [0, ", o.size, ")"));
  }
  const int devices = NcclDeviceCount();
  if (o.device < 0 || o.device >= devices) {
    return absl::FailedPreconditionError(
        absl::StrCat("NCCL transport: no CUDA device ", o.device, " (", devices, " visible)"));
  }
  const DeviceScope scope(o.device);
  RINGATTN_RETURN_IF_ERROR(scope.status());
  RINGATTN_ASSIGN_OR_RETURN(const ncclUniqueId id, Rendezvous(store, o));

  auto c = std::make_unique<Communicator>();
  c->rank = o.rank;
  c->size = o.size;
  c->device = o.device;
  c->generation = o.generation;
  c->timeout = o.timeout;
  RINGATTN_RETURN_IF_ERROR(
      RINGATTN_CUDA_STATUS(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  RINGATTN_RETURN_IF_ERROR(
      RINGATTN_NCCL_STATUS(ncclCommInitRankConfig(&c->comm, o.size, id, o.rank, &config)));
  // Non-blocking: poll until every rank has joined, or give up (and abort,
  // so the ranks that did join fail too).
  const auto deadline = Clock::now() + absl::ToChronoNanoseconds(o.timeout);
  for (ncclResult_t state = ncclInProgress;;) {
    RINGATTN_RETURN_IF_ERROR(c->AsyncState(state));
    if (state == ncclSuccess) break;
    if (state != ncclInProgress) {
      const absl::Status s = c->AsyncError(state);
      c->Abort();
      return s;
    }
    if (Clock::now() >= deadline) {
      c->Abort();
      return absl::DeadlineExceededError(absl::StrCat(
          "NCCL communicator of ring generation ", o.generation, ": rank ", o.rank, " of ", o.size,
          " not connected within ", absl::FormatDuration(o.timeout), " (a rank is missing?)"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return std::unique_ptr<Transport>(std::make_unique<NcclTransport>(std::move(c)));
}

}  // namespace ringattn::ring
