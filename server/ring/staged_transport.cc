#include "server/ring/staged_transport.h"

#include <utility>

#include "kernels/status_macros.h"

namespace ringattn::ring {
namespace {

// A posted operation on the inner transport with the host copy it reads or
// writes; a receive's copy goes up into `device` once it has arrived.
class StagedOp final : public PendingOp {
 public:
  StagedOp(std::unique_ptr<std::byte[]> host, std::unique_ptr<PendingOp> inner,
           kernels::MemorySpace* space, std::span<std::byte> device)
      : host_(std::move(host)), inner_(std::move(inner)), space_(space), device_(device) {}

  absl::Status Wait(absl::Duration timeout) override {
    RINGATTN_RETURN_IF_ERROR(inner_->Wait(timeout));
    if (space_ == nullptr) return absl::OkStatus();
    return space_->Upload(device_, {host_.get(), device_.size()});
  }

 private:
  std::unique_ptr<std::byte[]> host_;
  std::unique_ptr<PendingOp> inner_;
  kernels::MemorySpace* space_;  // Receives only.
  std::span<std::byte> device_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<PendingOp>> StagedTransport::Send(int peer, uint64_t tag,
                                                                 std::span<const std::byte> data) {
  auto host = std::make_unique_for_overwrite<std::byte[]>(data.size());
  RINGATTN_RETURN_IF_ERROR(space_.Download({host.get(), data.size()}, data));
  RINGATTN_ASSIGN_OR_RETURN(std::unique_ptr<PendingOp> op,
                            inner_.Send(peer, tag, {host.get(), data.size()}));
  return std::make_unique<StagedOp>(std::move(host), std::move(op), nullptr,
                                    std::span<std::byte>());
}

absl::StatusOr<std::unique_ptr<PendingOp>> StagedTransport::Recv(int peer, uint64_t tag,
                                                                 std::span<std::byte> data) {
  auto host = std::make_unique_for_overwrite<std::byte[]>(data.size());
  RINGATTN_ASSIGN_OR_RETURN(std::unique_ptr<PendingOp> op,
                            inner_.Recv(peer, tag, {host.get(), data.size()}));
  return std::make_unique<StagedOp>(std::move(host), std::move(op), &space_, data);
}

}  // namespace ringattn::ring
