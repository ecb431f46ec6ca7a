#ifndef RINGATTN_CLIENT_REGION_STAGING_H_
#define RINGATTN_CLIENT_REGION_STAGING_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "client/attention_client.h"
#include "client/shared_region.h"

// Every tensor of one layer's forward and backward in one shared-memory
// region registered with the service: the inputs are put there once, and
// calls name them (and their outputs) by reference, so no tensor byte
// crosses gRPC. For a client on the service's host (the CLI's --shm, the
// benchmark); a training job would produce its tensors in such a region.

namespace ringattn::client {

class RegionStaging {
 public:
  // A region for the tensors of `shapes` (its dtype and sizes; spans not
  // read), created and registered with `client` as `name`.
  static absl::StatusOr<std::unique_ptr<RegionStaging>> Create(AttentionClient& client,
                                                               const ForwardInputs& shapes,
                                                               const std::string& name);
  // Unregisters the region (best effort); the object goes with it.
  ~RegionStaging();
  RegionStaging(const RegionStaging&) = delete;
  RegionStaging& operator=(const RegionStaging&) = delete;

  // Copies the inputs of `in` (q, k, v, any metadata) and `dout` (may be
  // empty) into the region.
  void Stage(const ForwardInputs& in, std::span<const std::byte> dout);
  // The forward and backward with every tensor by reference: outputs are
  // left in the region (Bytes), not in the returned structs.
  absl::StatusOr<ForwardOutputs> Forward(absl::Duration timeout = absl::Minutes(10));
  absl::StatusOr<BackwardOutputs> Backward(const std::string& handle,
                                           absl::Duration timeout = absl::Minutes(10));
  // Copies the outputs from the region into the structs, as a streamed
  // call would have filled them.
  void CopyOut(ForwardOutputs& f) const;
  void CopyOut(BackwardOutputs& g) const;

  // A tensor's bytes in the region: q, k, v, doc_ids, vision_groups,
  // padding_mask, dout, out, lse, dq, dk, dv.
  std::span<std::byte> Bytes(const std::string& name);
  std::span<const std::byte> Bytes(const std::string& name) const;

 private:
  RegionStaging(AttentionClient& client, ForwardInputs shapes, std::string name)
      : client_(client), shapes_(std::move(shapes)), name_(std::move(name)) {}

  AttentionClient& client_;
  ForwardInputs shapes_;  // Spans cleared; which metadata was staged.
  std::string name_;
  std::map<std::string, RegionRef> at_;
  std::unique_ptr<SharedRegion> region_;
  bool registered_ = false;
};

}  // namespace ringattn::client

#endif  // RINGATTN_CLIENT_REGION_STAGING_H_
