#include "kernels/cpu/workspace_arena.h"

#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

namespace ringattn::kernels::cpu {
namespace {
// Every part starts on a 64-byte boundary.
constexpr size_t kAlignFloats = 16;

// The floats a part of `size` takes, padding included.
constexpr size_t Padded(size_t size) {
  return (size + kAlignFloats - 1) / kAlignFloats * kAlignFloats;
}
}  // namespace

absl::StatusOr<WorkspaceArena::Lease> WorkspaceArena::Carve(std::initializer_list<size_t> sizes,
                                                            absl::string_view what) {
  if (sizes.size() > Lease::kMaxParts) {
    return absl::InternalError(absl::StrCat(what, ": more than ", Lease::kMaxParts, " parts"));
  }
  constexpr size_t kMaxFloats = SIZE_MAX / sizeof(float) / 2;
  size_t total = 0;
  for (size_t size : sizes) {
    if (size > kMaxFloats - total - kAlignFloats) {
      return absl::ResourceExhaustedError(absl::StrCat(what, ": size overflows"));
    }
    total += Padded(size);
  }
  Lease lease{std::unique_lock<std::mutex>(mu_)};
  float* base = nullptr;
  if (total * sizeof(float) > kMaxCachedBytes) {
    RINGATTN_ASSIGN_OR_RETURN(lease.own_, FloatBuffer::Allocate(total, what));
    base = lease.own_.data();
  } else {
    if (cached_.size() < total) {
      cached_ = FloatBuffer();  // Freed before the larger one is had.
      RINGATTN_ASSIGN_OR_RETURN(cached_, FloatBuffer::Allocate(total, what));
    } else {
      std::memset(cached_.data(), 0, total * sizeof(float));
    }
    base = cached_.data();
  }
  size_t i = 0, at = 0;
  for (size_t size : sizes) {
    lease.parts_[i++] = size == 0 ? nullptr : base + at;
    at += Padded(size);
  }
  return lease;
}

}  // namespace ringattn::kernels::cpu
