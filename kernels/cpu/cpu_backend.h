#ifndef RINGATTN_KERNELS_CPU_CPU_BACKEND_H_
#define RINGATTN_KERNELS_CPU_CPU_BACKEND_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/chunk_backend.h"
#include "kernels/cpu/attention_backward.h"
#include "kernels/cpu/attention_forward.h"
#include "kernels/cpu/cpu_context.h"
#include "kernels/cpu/isa.h"

namespace ringattn::kernels::cpu {

// The chunk kernels of this directory behind the backend interface. Either
// borrows a context, which must outlive it, or owns one (MakeCpuBackend).
class CpuBackend final : public ChunkBackend {
 public:
  explicit CpuBackend(CpuContext& ctx) : ctx_(ctx) {}
  explicit CpuBackend(std::unique_ptr<CpuContext> ctx) : owned_(std::move(ctx)), ctx_(*owned_) {}

  std::string name() const override { return absl::StrCat("cpu/", IsaName(ctx_.isa())); }
  MemorySpace& space() override { return space_; }
  absl::Status Forward(const ForwardChunkArgs& args) override { return ForwardChunk(args, ctx_); }
  absl::Status Backward(const BackwardChunkArgs& args) override {
    return BackwardChunk(args, ctx_);
  }

 private:
  std::unique_ptr<CpuContext> owned_;
  CpuContext& ctx_;
  HostMemorySpace space_;
};

}  // namespace ringattn::kernels::cpu

#endif  // RINGATTN_KERNELS_CPU_CPU_BACKEND_H_
