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
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/device_footprint.h"
#include "kernels/cuda/device_launch.h"
#include "kernels/cuda/launch_plan.h"
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

// Bytes copied each way, read by metrics threads while a call runs.
struct Traffic {
  std::atomic<int64_t> host_to_device{0};
  std::atomic<int64_t> device_to_host{0};
};

absl::Status Upload(DeviceBuffer& dst, const void* src, size_t bytes, cudaStream_t stream,
                    Traffic& traffic) {
  RINGATTN_RETURN_IF_ERROR(dst.Reserve(bytes));
  RINGATTN_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(dst.data(), src, bytes, cudaMemcpyHostToDevice, stream));
  traffic.host_to_device += static_cast<int64_t>(bytes);
  return absl::OkStatus();
}

// tokens: B * L of the slice.
absl::StatusOr<DeviceMeta> UploadMeta(MetaBuffers& dst, const MetaPtrs& src, int64_t tokens,
                                      cudaStream_t stream, Traffic& traffic) {
  const size_t n = static_cast<size_t>(tokens);
  RINGATTN_RETURN_IF_ERROR(Upload(dst.doc, src.doc, n * sizeof(int32_t), stream, traffic));
  RINGATTN_RETURN_IF_ERROR(Upload(dst.vision, src.vision, n * sizeof(int32_t), stream, traffic));
  RINGATTN_RETURN_IF_ERROR(Upload(dst.padding, src.padding, n * sizeof(uint8_t), stream, traffic));
  return DeviceMeta{dst.doc.as<const int32_t>(), dst.vision.as<const int32_t>(),
                    dst.padding.as<const uint8_t>(), src.start};
}

// Device copies of the inputs forward and backward share.
struct InputBuffers {
  DeviceBuffer q, k, v;  // dtype, [B, H, Lq, D] / [B, Hkv, Lk, D]
  MetaBuffers q_meta, kv_meta;
};

// Uploads q, k, v and both metadata slices of `args` (validated into `p`)
// and points `d` (Forward- or BackwardDeviceParams) at them, with the
// problem's shape, mask and scale.
template <typename ChunkArgs, typename DeviceParams>
absl::Status UploadInputs(InputBuffers& in, const ChunkArgs& args, const ChunkProblem& p,
                          cudaStream_t stream, Traffic& traffic, DeviceParams& d) {
  RINGATTN_RETURN_IF_ERROR(Upload(in.q, args.q.data, args.q.size_bytes, stream, traffic));
  RINGATTN_RETURN_IF_ERROR(Upload(in.k, args.k.data, args.k.size_bytes, stream, traffic));
  RINGATTN_RETURN_IF_ERROR(Upload(in.v, args.v.data, args.v.size_bytes, stream, traffic));
  RINGATTN_ASSIGN_OR_RETURN(
      d.q_meta, UploadMeta(in.q_meta, p.q_meta, p.shape.batch * p.shape.q_len, stream, traffic));
  RINGATTN_ASSIGN_OR_RETURN(d.kv_meta, UploadMeta(in.kv_meta, p.kv_meta,
                                                  p.shape.batch * p.shape.kv_len, stream, traffic));
  d.shape = p.shape;
  d.q = in.q.data();
  d.k = in.k.data();
  d.v = in.v.data();
  d.mask = p.mask;
  d.scale = p.scale;
  return absl::OkStatus();
}

absl::Status Download(void* dst, const DeviceBuffer& src, size_t bytes, cudaStream_t stream,
                      Traffic& traffic) {
  RINGATTN_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(dst, src.data(), bytes, cudaMemcpyDeviceToHost, stream));
  traffic.device_to_host += static_cast<int64_t>(bytes);
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

// Makes `device` current for a scope and restores the caller's device, so
// a call on this backend leaves the calling thread as it found it.
class ScopedDevice {
 public:
  static absl::StatusOr<ScopedDevice> Enter(int device) {
    int previous = 0;
    RINGATTN_CUDA_RETURN_IF_ERROR(cudaGetDevice(&previous));
    RINGATTN_CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
    return ScopedDevice(previous);
  }
  ScopedDevice(ScopedDevice&& other) noexcept : previous_(std::exchange(other.previous_, -1)) {}
  ScopedDevice& operator=(ScopedDevice&&) = delete;
  ~ScopedDevice() {
    if (previous_ >= 0) (void)cudaSetDevice(previous_);
  }

 private:
  explicit ScopedDevice(int previous) : previous_(previous) {}
  int previous_;
};

}  // namespace

struct CudaBackend::Impl {
  Impl(int device, std::string name, DeviceCaps caps, CudaStream stream)
      : device(device), name(std::move(name)), caps(caps), stream(std::move(stream)) {}
  // Members are freed after this body runs, on the backend's device.
  ~Impl() { (void)cudaSetDevice(device); }

  int device;
  std::string name;
  DeviceCaps caps;
  CudaStream stream;
  InputBuffers in;          // q, k, v and their metadata
  DeviceBuffer out, dout;   // forward: out fp32; backward: out, dout dtype
  DeviceBuffer lse;         // [B, H, Lq] fp32
  DeviceBuffer dq, dk, dv;  // fp32 gradients
  DeviceBuffer workspace;   // LaunchPlan workspace
  Traffic traffic;
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
    RINGATTN_RETURN_IF_ERROR(UploadInputs(m.in, args, fp.problem, stream, m.traffic, d));
    RINGATTN_RETURN_IF_ERROR(m.out.Reserve(out_bytes));
    RINGATTN_RETURN_IF_ERROR(m.lse.Reserve(lse_bytes));
    RINGATTN_RETURN_IF_ERROR(m.workspace.Reserve(plan.forward_workspace_bytes));
    d.out = m.out.as<float>();
    d.lse = m.lse.as<float>();
    d.workspace = m.workspace.data();
    d.workspace_bytes = static_cast<int64_t>(m.workspace.capacity());
    RINGATTN_RETURN_IF_ERROR(LaunchForward(d, plan, stream));
    RINGATTN_RETURN_IF_ERROR(Download(args.out.data(), m.out, out_bytes, stream, m.traffic));
    return Download(args.lse.data(), m.lse, lse_bytes, stream, m.traffic);
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
    RINGATTN_RETURN_IF_ERROR(UploadInputs(m.in, args, bp.problem, stream, m.traffic, d));
    RINGATTN_RETURN_IF_ERROR(Upload(m.out, args.out.data, args.out.size_bytes, stream, m.traffic));
    RINGATTN_RETURN_IF_ERROR(
        Upload(m.dout, args.dout.data, args.dout.size_bytes, stream, m.traffic));
    RINGATTN_RETURN_IF_ERROR(
        Upload(m.lse, args.lse.data(), args.lse.size() * sizeof(float), stream, m.traffic));
    // The kernels add to what the caller already holds, as the CPU ones do.
    RINGATTN_RETURN_IF_ERROR(Upload(m.dq, args.dq.data(), dq_bytes, stream, m.traffic));
    RINGATTN_RETURN_IF_ERROR(Upload(m.dk, args.dk.data(), dk_bytes, stream, m.traffic));
    RINGATTN_RETURN_IF_ERROR(Upload(m.dv, args.dv.data(), dv_bytes, stream, m.traffic));
    RINGATTN_RETURN_IF_ERROR(m.workspace.Reserve(plan.backward_workspace_bytes));
    d.out = m.out.data();
    d.dout = m.dout.data();
    d.lse = m.lse.as<const float>();
    d.dq = m.dq.as<float>();
    d.dk = m.dk.as<float>();
    d.dv = m.dv.as<float>();
    d.workspace = m.workspace.data();
    d.workspace_bytes = static_cast<int64_t>(m.workspace.capacity());
    RINGATTN_RETURN_IF_ERROR(LaunchBackward(d, plan, stream));
    RINGATTN_RETURN_IF_ERROR(Download(args.dq.data(), m.dq, dq_bytes, stream, m.traffic));
    RINGATTN_RETURN_IF_ERROR(Download(args.dk.data(), m.dk, dk_bytes, stream, m.traffic));
    return Download(args.dv.data(), m.dv, dv_bytes, stream, m.traffic);
  });
  m.UpdateHeld();
  return status;
}

absl::Status CudaBackend::Reserve(const AttentionShape& shape, bool backward) {
  RINGATTN_ASSIGN_OR_RETURN(const LaunchPlan plan, MakeLaunchPlan(shape, impl_->caps));
  RINGATTN_ASSIGN_OR_RETURN(const ScopedDevice on_device, ScopedDevice::Enter(impl_->device));
  Impl& m = *impl_;
  const auto wants = m.Wants(StepDeviceFootprint(shape, plan, backward), shape);
  // Buffers only grow: what a buffer already holds counts toward its want.
  int64_t needed = 0;
  for (const auto& [buffer, bytes] : wants) {
    needed += std::max<int64_t>(0, bytes - static_cast<int64_t>(buffer->capacity()));
  }
  size_t free_bytes = 0, total_bytes = 0;
  RINGATTN_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
  m.free_bytes = static_cast<int64_t>(free_bytes);
  m.total_bytes = static_cast<int64_t>(total_bytes);
  RINGATTN_RETURN_IF_ERROR(CheckDeviceFits(needed, static_cast<int64_t>(free_bytes),
                                           static_cast<int64_t>(total_bytes), m.name));
  absl::Status status = absl::OkStatus();
  for (const auto& [buffer, bytes] : wants) {
    status = buffer->Reserve(static_cast<size_t>(bytes));
    if (!status.ok()) break;
  }
  m.UpdateHeld();
  return status;
}

BackendMemory CudaBackend::memory() const {
  const Impl& m = *impl_;
  BackendMemory r;
  r.device_bytes_held = m.held;
  r.device_bytes_free = m.free_bytes;
  r.device_bytes_total = m.total_bytes;
  r.host_to_device_bytes = m.traffic.host_to_device;
  r.device_to_host_bytes = m.traffic.device_to_host;
  return r;
}

}  // namespace ringattn::kernels::cuda
