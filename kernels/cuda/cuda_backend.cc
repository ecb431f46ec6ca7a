#include "kernels/cuda/cuda_backend.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/chunk_params.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_memory_space.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/device_footprint.h"
#include "kernels/cuda/device_launch.h"
#include "kernels/cuda/launch_plan.h"
#include "kernels/cuda/scoped_device.h"
#include "kernels/status_macros.h"
#include "kernels/validate.h"

namespace ringattn::kernels::cuda {
namespace {

// Device copies of one metadata slice.
struct MetaBuffers {
  DeviceBuffer doc;      // [B, L] int32
  DeviceBuffer vision;   // [B, L] int32
  DeviceBuffer padding;  // [B, L] uint8
};

// Where the kernels read an argument: in place when it is the device's
// memory (what the ring passes), else a copy staged into `dst`.
absl::StatusOr<const void*> Stage(DeviceBuffer& dst, const void* src, size_t bytes,
                                  cudaStream_t stream, CudaMemorySpace& space) {
  if (bytes == 0) return src;
  RINGATTN_ASSIGN_OR_RETURN(const bool in_place, IsDeviceMemory(src, space.device()));
  if (in_place) return src;
  RINGATTN_RETURN_IF_ERROR(dst.Reserve(bytes));
  RINGATTN_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(dst.data(), src, bytes, cudaMemcpyHostToDevice, stream));
  space.CountUpload(static_cast<int64_t>(bytes));
  return static_cast<const void*>(dst.data());
}

// An output (or accumulated) argument: where the kernels write it, and
// whether it must be copied back to host memory afterwards.
struct Placed {
  void* device = nullptr;
  bool staged = false;
};

// `accumulate`: the kernels add to the caller's values, so a staged copy
// starts from them.
absl::StatusOr<Placed> PlaceOutput(DeviceBuffer& buffer, void* dst, size_t bytes, bool accumulate,
                                   cudaStream_t stream, CudaMemorySpace& space) {
  if (bytes == 0) return Placed{dst, false};
  RINGATTN_ASSIGN_OR_RETURN(const bool in_place, IsDeviceMemory(dst, space.device()));
  if (in_place) return Placed{dst, false};
  RINGATTN_RETURN_IF_ERROR(buffer.Reserve(bytes));
  if (accumulate) {
    RINGATTN_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(buffer.data(), dst, bytes, cudaMemcpyHostToDevice, stream));
    space.CountUpload(static_cast<int64_t>(bytes));
  }
  return Placed{buffer.data(), true};
}

absl::Status Download(void* dst, const Placed& src, size_t bytes, cudaStream_t stream,
                      CudaMemorySpace& space) {
  if (!src.staged) return absl::OkStatus();
  RINGATTN_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(dst, src.device, bytes, cudaMemcpyDeviceToHost, stream));
  space.CountDownload(static_cast<int64_t>(bytes));
  return absl::OkStatus();
}

// tokens: B * L of the slice.
absl::StatusOr<DeviceMeta> StageMeta(MetaBuffers& dst, const MetaPtrs& src, int64_t tokens,
                                     cudaStream_t stream, CudaMemorySpace& space) {
  const auto n = static_cast<size_t>(tokens);
  DeviceMeta d;
  d.start = src.start;
  RINGATTN_ASSIGN_OR_RETURN(const void* doc,
                            Stage(dst.doc, src.doc, n * sizeof(int32_t), stream, space));
  RINGATTN_ASSIGN_OR_RETURN(const void* vision,
                            Stage(dst.vision, src.vision, n * sizeof(int32_t), stream, space));
  RINGATTN_ASSIGN_OR_RETURN(const void* padding,
                            Stage(dst.padding, src.padding, n * sizeof(uint8_t), stream, space));
  d.doc = static_cast<const int32_t*>(doc);
  d.vision = static_cast<const int32_t*>(vision);
  d.padding = static_cast<const uint8_t*>(padding);
  return d;
}

// Device copies of the inputs forward and backward share, used only for
// arguments in host memory.
struct InputBuffers {
  DeviceBuffer q, k, v;  // dtype, [B, H, Lq, D] / [B, Hkv, Lk, D]
  MetaBuffers q_meta, kv_meta;
};

// Points `d` (Forward- or BackwardDeviceParams) at q, k, v and both
// metadata slices of `args` (validated into `p`), staged where they are host
// memory, with the problem's shape, mask and scale.
template <typename ChunkArgs, typename DeviceParams>
absl::Status StageInputs(InputBuffers& in, const ChunkArgs& args, const ChunkProblem& p,
                         cudaStream_t stream, CudaMemorySpace& space, DeviceParams& d) {
  RINGATTN_ASSIGN_OR_RETURN(d.q, Stage(in.q, args.q.data, args.q.size_bytes, stream, space));
  RINGATTN_ASSIGN_OR_RETURN(d.k, Stage(in.k, args.k.data, args.k.size_bytes, stream, space));
  RINGATTN_ASSIGN_OR_RETURN(d.v, Stage(in.v, args.v.data, args.v.size_bytes, stream, space));
  RINGATTN_ASSIGN_OR_RETURN(
      d.q_meta, StageMeta(in.q_meta, p.q_meta, p.shape.batch * p.shape.q_len, stream, space));
  RINGATTN_ASSIGN_OR_RETURN(
      d.kv_meta, StageMeta(in.kv_meta, p.kv_meta, p.shape.batch * p.shape.kv_len, stream, space));
  d.shape = p.shape;
  d.mask = p.mask;
  d.scale = p.scale;
  return absl::OkStatus();
}

// The first error of `body`, or of waiting for the stream: a call never
// returns while its copies may still read or write the caller's memory.
template <typename Body>
absl::Status RunSynchronously(cudaStream_t stream, Body&& body) {
  absl::Status status = body();
  const cudaError_t sync = cudaStreamSynchronize(stream);
  if (status.ok() && sync != cudaSuccess) {
    status = ToStatus(CudaStatus{sync, __FILE__ ": cudaStreamSynchronize"});
  }
  return status;
}

}  // namespace

struct CudaBackend::Impl {
  Impl(int device, std::string name, DeviceCaps caps, CudaStream stream)
      : device(device),
        name(std::move(name)),
        caps(caps),
        stream(std::move(stream)),
        space(device, this->stream.get()) {}
  // Members are freed after this body runs, on the backend's device.
  ~Impl() { (void)cudaSetDevice(device); }

  int device;
  std::string name;
  DeviceCaps caps;
  CudaStream stream;
  // Declared after the stream it runs on; its buffers are the ring's, which
  // are gone before the backend is.
  CudaMemorySpace space;
  // Staging for arguments in host memory (tests, benches; never the ring).
  InputBuffers in;          // q, k, v and their metadata
  DeviceBuffer out, dout;   // forward: out fp32; backward: out, dout dtype
  DeviceBuffer lse;         // [B, H, Lq] fp32
  DeviceBuffer dq, dk, dv;  // fp32 gradients
  DeviceBuffer workspace;   // LaunchPlan workspace
  // Sum of the buffers' capacities, after the last call that grew one.
  std::atomic<int64_t> held{0};
  std::atomic<int64_t> free_bytes{0}, total_bytes{0};  // At the last Reserve

  // Every buffer, with what steps of a footprint need of it.
  std::vector<std::pair<DeviceBuffer*, int64_t>> Wants(const StepFootprint& f,
                                                       const AttentionShape& s) {
    const int64_t q_tokens = s.batch * s.q_len, kv_tokens = s.batch * s.kv_len;
    const int64_t ints = sizeof(int32_t);
    return {{&in.q, f.q},
            {&in.k, f.k},
            {&in.v, f.v},
            {&in.q_meta.doc, q_tokens * ints},
            {&in.q_meta.vision, q_tokens * ints},
            {&in.q_meta.padding, q_tokens},
            {&in.kv_meta.doc, kv_tokens * ints},
            {&in.kv_meta.vision, kv_tokens * ints},
            {&in.kv_meta.padding, kv_tokens},
            {&out, f.out},
            {&dout, f.dout},
            {&lse, f.lse},
            {&dq, f.dq},
            {&dk, f.dk},
            {&dv, f.dv},
            {&workspace, f.workspace}};
  }

  void UpdateHeld() {
    int64_t sum = 0;
    // Only the buffers of the list matter here, not what a shape wants.
    for (const auto& [buffer, unused] : Wants(StepFootprint{}, AttentionShape{})) {
      sum += static_cast<int64_t>(buffer->capacity());
    }
    held = sum;
  }
};

int CudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(int device) {
  int count = 0;
  if (const cudaError_t e = cudaGetDeviceCount(&count); e != cudaSuccess) {
    (void)cudaGetLastError();
    return absl::FailedPreconditionError(absl::StrCat(
        "CUDA device ", device, " is not usable: no CUDA device (", cudaGetErrorString(e), ")"));
  }
  if (device < 0 || device >= count) {
    return absl::FailedPreconditionError(absl::StrCat(
        "CUDA device ", device, " does not exist: ", count, " CUDA device(s) visible"));
  }
  if (const cudaError_t e = cudaSetDevice(device); e != cudaSuccess) {
    (void)cudaGetLastError();
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA device ", device, " is not usable: ", cudaGetErrorString(e)));
  }
  cudaDeviceProp prop{};
  if (const cudaError_t e = cudaGetDeviceProperties(&prop, device); e != cudaSuccess) {
    (void)cudaGetLastError();
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA device ", device, " is not usable: ", cudaGetErrorString(e)));
  }
  const DeviceCaps caps{prop.major, prop.minor, static_cast<int64_t>(prop.sharedMemPerBlockOptin)};
  if (caps.sm_major < 8) {
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA device ", device, " (", prop.name, ") has compute capability ",
                     prop.major, ".", prop.minor, "; the kernels need 8.0 or newer"));
  }
  absl::StatusOr<CudaStream> stream = CudaStream::Create();
  if (!stream.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA device ", device, " is not usable: ", stream.status().message()));
  }
  auto impl = std::make_unique<Impl>(device, absl::StrCat("cuda:", device, " (", prop.name, ")"),
                                     caps, std::move(*stream));
  return std::unique_ptr<CudaBackend>(new CudaBackend(std::move(impl)));
}

CudaBackend::CudaBackend(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

CudaBackend::~CudaBackend() = default;

std::string CudaBackend::name() const { return impl_->name; }

int CudaBackend::device() const { return impl_->device; }

MemorySpace& CudaBackend::space() { return impl_->space; }

absl::Status CudaBackend::Forward(const ForwardChunkArgs& args) {
  RINGATTN_ASSIGN_OR_RETURN(const ForwardParams fp, MakeForwardParams(args));
  RINGATTN_ASSIGN_OR_RETURN(const LaunchPlan plan, MakeLaunchPlan(fp.problem.shape, impl_->caps));
  RINGATTN_ASSIGN_OR_RETURN(const ScopedDevice on_device, ScopedDevice::Enter(impl_->device));
  Impl& m = *impl_;
  const cudaStream_t stream = m.stream.get();
  const size_t out_bytes = args.out.size() * sizeof(float);
  const size_t lse_bytes = args.lse.size() * sizeof(float);
  absl::Status status = RunSynchronously(stream, [&]() -> absl::Status {
    ForwardDeviceParams d;
    RINGATTN_RETURN_IF_ERROR(StageInputs(m.in, args, fp.problem, stream, m.space, d));
    RINGATTN_ASSIGN_OR_RETURN(
        const Placed out, PlaceOutput(m.out, args.out.data(), out_bytes, false, stream, m.space));
    RINGATTN_ASSIGN_OR_RETURN(
        const Placed lse, PlaceOutput(m.lse, args.lse.data(), lse_bytes, false, stream, m.space));
    RINGATTN_RETURN_IF_ERROR(m.workspace.Reserve(plan.forward_workspace_bytes));
    d.out = static_cast<float*>(out.device);
    d.lse = static_cast<float*>(lse.device);
    d.workspace = m.workspace.data();
    d.workspace_bytes = static_cast<int64_t>(m.workspace.capacity());
    RINGATTN_RETURN_IF_ERROR(LaunchForward(d, plan, stream));
    RINGATTN_RETURN_IF_ERROR(Download(args.out.data(), out, out_bytes, stream, m.space));
    return Download(args.lse.data(), lse, lse_bytes, stream, m.space);
  });
  m.UpdateHeld();
  return status;
}

absl::Status CudaBackend::Backward(const BackwardChunkArgs& args) {
  RINGATTN_ASSIGN_OR_RETURN(const BackwardParams bp, MakeBackwardParams(args));
  RINGATTN_ASSIGN_OR_RETURN(const LaunchPlan plan, MakeLaunchPlan(bp.problem.shape, impl_->caps));
  RINGATTN_ASSIGN_OR_RETURN(const ScopedDevice on_device, ScopedDevice::Enter(impl_->device));
  Impl& m = *impl_;
  const cudaStream_t stream = m.stream.get();
  const size_t dq_bytes = args.dq.size() * sizeof(float);
  const size_t dk_bytes = args.dk.size() * sizeof(float);
  const size_t dv_bytes = args.dv.size() * sizeof(float);
  absl::Status status = RunSynchronously(stream, [&]() -> absl::Status {
    BackwardDeviceParams d;
    RINGATTN_RETURN_IF_ERROR(StageInputs(m.in, args, bp.problem, stream, m.space, d));
    RINGATTN_ASSIGN_OR_RETURN(d.out,
                              Stage(m.out, args.out.data, args.out.size_bytes, stream, m.space));
    RINGATTN_ASSIGN_OR_RETURN(d.dout,
                              Stage(m.dout, args.dout.data, args.dout.size_bytes, stream, m.space));
    RINGATTN_ASSIGN_OR_RETURN(
        const void* lse,
        Stage(m.lse, args.lse.data(), args.lse.size() * sizeof(float), stream, m.space));
    d.lse = static_cast<const float*>(lse);
    // The kernels add to what the caller already holds, as the CPU ones do.
    RINGATTN_ASSIGN_OR_RETURN(const Placed dq,
                              PlaceOutput(m.dq, args.dq.data(), dq_bytes, true, stream, m.space));
    RINGATTN_ASSIGN_OR_RETURN(const Placed dk,
                              PlaceOutput(m.dk, args.dk.data(), dk_bytes, true, stream, m.space));
    RINGATTN_ASSIGN_OR_RETURN(const Placed dv,
                              PlaceOutput(m.dv, args.dv.data(), dv_bytes, true, stream, m.space));
    RINGATTN_RETURN_IF_ERROR(m.workspace.Reserve(plan.backward_workspace_bytes));
    d.dq = static_cast<float*>(dq.device);
    d.dk = static_cast<float*>(dk.device);
    d.dv = static_cast<float*>(dv.device);
    d.workspace = m.workspace.data();
    d.workspace_bytes = static_cast<int64_t>(m.workspace.capacity());
    RINGATTN_RETURN_IF_ERROR(LaunchBackward(d, plan, stream));
    RINGATTN_RETURN_IF_ERROR(Download(args.dq.data(), dq, dq_bytes, stream, m.space));
    RINGATTN_RETURN_IF_ERROR(Download(args.dk.data(), dk, dk_bytes, stream, m.space));
    return Download(args.dv.data(), dv, dv_bytes, stream, m.space);
  });
  m.UpdateHeld();
  return status;
}

absl::Status CudaBackend::Reserve(const AttentionShape& shape, bool backward) {
  RINGATTN_ASSIGN_OR_RETURN(const LaunchPlan plan, MakeLaunchPlan(shape, impl_->caps));
  RINGATTN_ASSIGN_OR_RETURN(const ScopedDevice on_device, ScopedDevice::Enter(impl_->device));
  Impl& m = *impl_;
  // The ring passes space memory, so of the backend's own buffers a step
  // needs only the workspace; the ring asks its space for the rest.
  const int64_t want = StepDeviceFootprint(shape, plan, backward).workspace;
  const int64_t needed = std::max<int64_t>(0, want - static_cast<int64_t>(m.workspace.capacity()));
  size_t free_bytes = 0, total_bytes = 0;
  RINGATTN_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
  m.free_bytes = static_cast<int64_t>(free_bytes);
  m.total_bytes = static_cast<int64_t>(total_bytes);
  RINGATTN_RETURN_IF_ERROR(CheckDeviceFits(needed, static_cast<int64_t>(free_bytes),
                                           static_cast<int64_t>(total_bytes), m.name));
  absl::Status status = m.workspace.Reserve(static_cast<size_t>(want));
  m.UpdateHeld();
  return status;
}

BackendMemory CudaBackend::memory() const {
  const Impl& m = *impl_;
  BackendMemory r;
  r.device_bytes_held = m.held + m.space.bytes_held();
  r.device_bytes_free = m.free_bytes;
  r.device_bytes_total = m.total_bytes;
  const MemoryTraffic traffic = m.space.traffic();
  r.host_to_device_bytes = traffic.host_to_device;
  r.device_to_host_bytes = traffic.device_to_host;
  return r;
}

}  // namespace ringattn::kernels::cuda
