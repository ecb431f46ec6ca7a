#ifndef RINGATTN_KERNELS_CPU_WORKSPACE_ARENA_H_
#define RINGATTN_KERNELS_CPU_WORKSPACE_ARENA_H_

#include <cstddef>
#include <initializer_list>
#include <mutex>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/cpu/float_buffer.h"

namespace ringattn::kernels::cpu {

// The workspace of one kernel call, carved from memory the arena keeps
// between calls. A ring calls the kernels with the same shapes step after
// step; fresh pages for every call cost page faults worth a tenth of a short
// call (a sliding-window layer, a small chunk). Calls too large for the
// cache get memory of their own, as they would without it: they are long
// enough for the faults not to matter, and the cache does not hold their
// size for the life of the process.
class WorkspaceArena {
 public:
  // The most bytes kept between calls.
  static constexpr size_t kMaxCachedBytes = size_t{256} << 20;

  // Buffers handed out by Carve, zero-filled and 64-byte aligned. Holds the
  // arena (the next Carve waits) until destroyed.
  class Lease {
   public:
    float* operator[](size_t i) const { return parts_[i]; }
    Lease(Lease&&) = default;
    Lease& operator=(Lease&&) = default;

   private:
    friend class WorkspaceArena;
    static constexpr size_t kMaxParts = 16;
    explicit Lease(std::unique_lock<std::mutex> lock) : lock_(std::move(lock)) {}
    std::unique_lock<std::mutex> lock_;
    FloatBuffer own_;  // Set when the call is too large for the cache.
    float* parts_[kMaxParts] = {};
  };

  WorkspaceArena() = default;
  WorkspaceArena(const WorkspaceArena&) = delete;
  WorkspaceArena& operator=(const WorkspaceArena&) = delete;

  // One buffer per entry of `sizes` (floats each; 0 gives nullptr), at most
  // Lease::kMaxParts. RESOURCE_EXHAUSTED naming `what` if the memory cannot
  // be had.
  absl::StatusOr<Lease> Carve(std::initializer_list<size_t> sizes, absl::string_view what);

 private:
  std::mutex mu_;
  FloatBuffer cached_;  // Guarded by mu_ (held through each Lease).
};

}  // namespace ringattn::kernels::cpu

#endif  // RINGATTN_KERNELS_CPU_WORKSPACE_ARENA_H_
