#ifndef RINGATTN_SERVER_RING_STAGED_TRANSPORT_H_
#define RINGATTN_SERVER_RING_STAGED_TRANSPORT_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "absl/status/statusor.h"
#include "kernels/memory_space.h"
#include "server/ring/transport.h"

// A transport of host memory (Gloo, in-process) carrying a device space's
// memory: a send downloads its bytes into host memory when posted, a
// receive lands in host memory and is uploaded into its destination when
// waited for. The ring uses it only for a device backend on a host-memory
// transport (a GPU worker told --transport=gloo); every byte staged shows in
// the space's traffic(), so the per-step host<->device counters tell a
// staged ring from a device-resident one.

namespace ringattn::ring {

class StagedTransport final : public Transport {
 public:
  // Both must outlive this.
  StagedTransport(Transport& inner, kernels::MemorySpace& space) : inner_(inner), space_(space) {}

  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  absl::StatusOr<std::unique_ptr<PendingOp>> Send(int peer, uint64_t tag,
                                                  std::span<const std::byte> data) override;
  absl::StatusOr<std::unique_ptr<PendingOp>> Recv(int peer, uint64_t tag,
                                                  std::span<std::byte> data) override;
  absl::Status Flush() override { return inner_.Flush(); }
  bool accepts_device_memory() const override { return true; }
  void Abort() override { inner_.Abort(); }

 private:
  Transport& inner_;
  kernels::MemorySpace& space_;
};

}  // namespace ringattn::ring

#endif  // RINGATTN_SERVER_RING_STAGED_TRANSPORT_H_
