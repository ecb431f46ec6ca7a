#ifndef RINGATTN_KERNELS_CPU_CPU_CONTEXT_H_
#define RINGATTN_KERNELS_CPU_CPU_CONTEXT_H_

#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/cpu/workspace_arena.h"

namespace ringattn::kernels::cpu {

// What the CPU kernels run on: a thread pool and an instruction set. One per
// worker process (or per in-process rank); kernels calls on one context are
// serialized by its pool.
class CpuContext {
 public:
  struct Options {
    int num_threads = 0;     // 0: one per core.
    std::optional<Isa> isa;  // Unset: the best the CPU supports.
  };

  // Fails if the requested instruction set is not supported here.
  static absl::StatusOr<std::unique_ptr<CpuContext>> Create(const Options& options);

  ThreadPool& pool() { return pool_; }
  Isa isa() const { return isa_; }
  // The kernels' workspaces; a call holds it while it runs.
  WorkspaceArena& workspace() { return workspace_; }

 private:
  CpuContext(int num_threads, Isa isa) : pool_(num_threads), isa_(isa) {}

  ThreadPool pool_;
  Isa isa_;
  WorkspaceArena workspace_;
};

}  // namespace ringattn::kernels::cpu

#endif  // RINGATTN_KERNELS_CPU_CPU_CONTEXT_H_
