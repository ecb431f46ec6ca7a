#ifndef RINGATTN_SERVER_RING_SPACE_TENSORS_H_
#define RINGATTN_SERVER_RING_SPACE_TENSORS_H_

#include <cstddef>
#include <span>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/memory_space.h"
#include "kernels/status_macros.h"

// The two ways a ring call's tensors cross between the caller's host memory
// and its backend's memory space (kernels/memory_space.h), each once per
// call: inputs go in before the first step, results come home after the
// last. On a host space neither copies anything, so the CPU ring reads and
// writes the caller's memory as it always did.

namespace ringattn::ring {

// A host tensor the ring reads in its space: the caller's memory itself on
// a host space, else an uploaded copy.
template <typename T>
class Resident {
 public:
  static absl::StatusOr<Resident> Make(kernels::MemorySpace& space, std::span<const T> host) {
    Resident r;
    if (space.kind() == kernels::MemoryKind::kHost) {
      r.view_ = host;
      return r;
    }
    RINGATTN_ASSIGN_OR_RETURN(r.owned_, space.Allocate(host.size_bytes()));
    RINGATTN_RETURN_IF_ERROR(space.Upload(r.owned_.bytes(), std::as_bytes(host)));
    r.view_ = std::span<const T>(r.owned_.template as<const T>().data(), host.size());
    return r;
  }

  std::span<const T> span() const { return view_; }

 private:
  kernels::SpaceBuffer owned_;  // Empty on a host space.
  std::span<const T> view_;
};

// A tensor the ring computes in its space and hands back: on a host space the
// result vector itself, so bringing it home moves it instead of copying.
template <typename T>
class Homebound {
 public:
  // n elements, each `fill`.
  static absl::StatusOr<Homebound> Make(kernels::MemorySpace& space, size_t n, T fill = T{}) {
    Homebound h;
    h.space_ = &space;
    if (space.kind() == kernels::MemoryKind::kHost) {
      h.host_.assign(n, fill);
      h.view_ = h.host_;
      return h;
    }
    RINGATTN_ASSIGN_OR_RETURN(h.owned_, space.Allocate(n * sizeof(T)));
    h.view_ = std::span<T>(h.owned_.template as<T>().data(), n);
    if (fill != T{}) {
      const std::vector<T> filled(n, fill);
      RINGATTN_RETURN_IF_ERROR(space.Upload(h.owned_.bytes(), std::as_bytes(std::span(filled))));
    }
    return h;
  }

  std::span<T> span() const { return view_; }

  // The tensor in host memory. On a device, `keep` (when given) takes the
  // device copy as well; on a host space there is only the one.
  absl::StatusOr<std::vector<T>> Home(kernels::SpaceBuffer* keep = nullptr) && {
    if (space_->kind() == kernels::MemoryKind::kHost) return std::move(host_);
    std::vector<T> host(view_.size());
    RINGATTN_RETURN_IF_ERROR(
        space_->Download(std::as_writable_bytes(std::span(host)), std::as_bytes(view_)));
    if (keep != nullptr) *keep = std::move(owned_);
    return host;
  }

 private:
  kernels::MemorySpace* space_ = nullptr;
  std::vector<T> host_;         // On a host space.
  kernels::SpaceBuffer owned_;  // On a device.
  std::span<T> view_;
};

}  // namespace ringattn::ring

#endif  // RINGATTN_SERVER_RING_SPACE_TENSORS_H_
