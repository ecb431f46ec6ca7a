#ifndef RINGATTN_SERVER_WORKER_BACKEND_SELECTION_H_
#define RINGATTN_SERVER_WORKER_BACKEND_SELECTION_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

// Which compute backend and ring transport a worker runs, from its
// --device and --transport flags and what this machine and build have.
// A pure function of its inputs (the caller counts the devices), so every
// rule is tested without a GPU.

namespace ringattn::worker {

enum class BackendKind { kCpu, kCuda };
// kShm: shared memory when every rank of the ring shares this host's
// memory, else (under --transport=auto) Gloo TCP, decided by all ranks
// together at each ring's rendezvous.
enum class TransportKind { kGloo, kShm, kNccl };

// --device: auto | cpu | cuda | cuda:N.
struct DeviceFlag {
  enum class Kind { kAuto, kCpu, kCuda };
  Kind kind = Kind::kAuto;
  int index = 0;  // For kCuda: the ordinal after CUDA_VISIBLE_DEVICES ("cuda" is cuda:0).
};
absl::StatusOr<DeviceFlag> ParseDeviceFlag(absl::string_view text);

// --transport: auto | gloo | nccl.
// --transport: auto | gloo | shm | nccl.
struct TransportFlag {
  enum class Kind { kAuto, kGloo, kShm, kNccl };
  Kind kind = Kind::kAuto;
};
absl::StatusOr<TransportFlag> ParseTransportFlag(absl::string_view text);

// What the machine and the build offer.
struct Capabilities {
  bool cuda_built = false;           // The CUDA backend is compiled in.
  bool nccl_built = false;           // The NCCL transport is compiled in.
  int cuda_devices = 0;              // Visible devices (0 without a GPU or driver).
  std::string cuda_visible_devices;  // The variable's value, for messages; "" if unset.
  // Set when the backend on the chosen device failed to start (why); auto
  // then falls back to the CPU, as with no device.
  std::string cuda_unusable;
};

struct Selection {
  BackendKind backend = BackendKind::kCpu;
  int device = -1;  // CUDA ordinal of the backend, or of the transport; -1 for neither.
  TransportKind transport = TransportKind::kGloo;
  bool fell_back = false;  // --device=auto found no usable GPU and chose the CPU.
  std::string reason;      // Why, in a sentence, for the start-up log line.
};

// Rules: auto picks CUDA device 0 when the CUDA backend is built and a
// device is visible, else the CPU (fell_back, with the reason). An explicit
// cuda / cuda:N without the backend or the device is FAILED_PRECONDITION.
// Transport auto is NCCL with a CUDA backend (when built) and Gloo with the
// CPU; explicit nccl needs the NCCL build and a device (the CPU backend then
// exchanges through GPU 0, or cuda:N's device), else FAILED_PRECONDITION.
absl::StatusOr<Selection> SelectBackend(const DeviceFlag& device, const TransportFlag& transport,
                                        const Capabilities& caps);

// "cpu", "cuda:0", "gloo", "nccl": for logs and the build-info metric.
std::string BackendLabel(const Selection& s);
std::string TransportLabel(const Selection& s);

}  // namespace ringattn::worker

#endif  // RINGATTN_SERVER_WORKER_BACKEND_SELECTION_H_
