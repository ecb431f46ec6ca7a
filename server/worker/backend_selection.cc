#include "server/worker/backend_selection.h"

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace ringattn::worker {
namespace {

std::string Visible(const Capabilities& caps) {
  return caps.cuda_visible_devices.empty()
             ? std::string("CUDA_VISIBLE_DEVICES unset")
             : absl::StrCat("CUDA_VISIBLE_DEVICES=", caps.cuda_visible_devices);
}

// Why no GPU can be used, or "" when one can.
std::string NoGpuReason(const Capabilities& caps) {
  if (!caps.cuda_built) return "this worker was built without the CUDA backend";
  if (!caps.cuda_unusable.empty()) return caps.cuda_unusable;
  if (caps.cuda_devices < 1) {
    return absl::StrCat("no CUDA device is visible (", Visible(caps), "; no GPU or no driver)");
  }
  return "";
}

}  // namespace

absl::StatusOr<DeviceFlag> ParseDeviceFlag(absl::string_view text) {
  DeviceFlag f;
  if (text == "auto") return f;
  if (text == "cpu") {
    f.kind = DeviceFlag::Kind::kCpu;
    return f;
  }
  if (text == "cuda") {
    f.kind = DeviceFlag::Kind::kCuda;
    return f;
  }
  if (absl::StartsWith(text, "cuda:")) {
    int index = -1;
    if (absl::SimpleAtoi(text.substr(5), &index) && index >= 0) {
      f.kind = DeviceFlag::Kind::kCuda;
      f.index = index;
      return f;
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--device='", text, "': expected auto, cpu, cuda or cuda:N (N >= 0)"));
}

absl::StatusOr<TransportFlag> ParseTransportFlag(absl::string_view text) {
  TransportFlag f;
  if (text == "auto") return f;
  if (text == "gloo") {
    f.kind = TransportFlag::Kind::kGloo;
    return f;
  }
  if (text == "shm") {
    f.kind = TransportFlag::Kind::kShm;
    return f;
  }
  if (text == "nccl") {
    f.kind = TransportFlag::Kind::kNccl;
    return f;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--transport='", text, "': expected auto, gloo, shm or nccl"));
}

absl::StatusOr<Selection> SelectBackend(const DeviceFlag& device, const TransportFlag& transport,
                                        const Capabilities& caps) {
  Selection s;
  const std::string no_gpu = NoGpuReason(caps);
  switch (device.kind) {
    case DeviceFlag::Kind::kAuto:
      if (no_gpu.empty()) {
        s.backend = BackendKind::kCuda;
        s.device = 0;
        s.reason = absl::StrCat("--device=auto: CUDA device 0 of ", caps.cuda_devices, " (",
                                Visible(caps), ")");
      } else {
        s.fell_back = true;
        s.reason = absl::StrCat("--device=auto: running on the CPU because ", no_gpu);
      }
      break;
    case DeviceFlag::Kind::kCpu:
      s.reason = "--device=cpu";
      break;
    case DeviceFlag::Kind::kCuda:
      if (!no_gpu.empty()) {
        return absl::FailedPreconditionError(
            absl::StrCat("--device=cuda:", device.index, " was asked for, but ", no_gpu));
      }
      if (device.index >= caps.cuda_devices) {
        return absl::FailedPreconditionError(
            absl::StrCat("--device=cuda:", device.index, " was asked for, but only ",
                         caps.cuda_devices, " CUDA device(s) are visible (", Visible(caps), ")"));
      }
      s.backend = BackendKind::kCuda;
      s.device = device.index;
      s.reason = absl::StrCat("--device=cuda:", device.index);
      break;
  }

  switch (transport.kind) {
    case TransportFlag::Kind::kAuto:
      if (s.backend == BackendKind::kCuda && caps.nccl_built) {
        s.transport = TransportKind::kNccl;
      } else {
        s.transport = TransportKind::kShm;
        if (s.backend == BackendKind::kCuda) {
          absl::StrAppend(&s.reason,
                          "; ring over shared memory or Gloo: this worker was built without NCCL");
        }
      }
      break;
    case TransportFlag::Kind::kGloo:
      s.transport = TransportKind::kGloo;
      break;
    case TransportFlag::Kind::kShm:
      s.transport = TransportKind::kShm;
      break;
    case TransportFlag::Kind::kNccl:
      if (!caps.nccl_built) {
        return absl::FailedPreconditionError(
            "--transport=nccl was asked for, but this worker was built without NCCL");
      }
      if (caps.cuda_devices < 1) {
        return absl::FailedPreconditionError(absl::StrCat(
            "--transport=nccl was asked for, but no CUDA device is visible (", Visible(caps), ")"));
      }
      s.transport = TransportKind::kNccl;
      if (s.backend == BackendKind::kCpu) {
        // CPU compute, GPU exchange: the device named by --device=cuda:N is
        // not the backend's here, so only auto/cpu reach this; use GPU 0.
        s.device = 0;
      }
      break;
  }
  return s;
}

std::string BackendLabel(const Selection& s) {
  return s.backend == BackendKind::kCuda ? absl::StrCat("cuda:", s.device) : std::string("cpu");
}

std::string TransportLabel(const Selection& s) {
  switch (s.transport) {
    case TransportKind::kNccl:
      return "nccl";
    case TransportKind::kShm:
      return "shm";
    case TransportKind::kGloo:
      break;
  }
  return "gloo";
}

}  // namespace ringattn::worker
