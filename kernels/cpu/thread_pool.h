#ifndef RINGATTN_KERNELS_CPU_THREAD_POOL_H_
#define RINGATTN_KERNELS_CPU_THREAD_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/functional/function_ref.h"

namespace ringattn::kernels::cpu {

// A fixed pool of threads for data-parallel loops. Tasks are handed out
// dynamically (one atomic counter), so uneven work such as causal rows
// balances itself. The calling thread works too.
class ThreadPool {
 public:
  // num_threads >= 1 counts the calling thread; 0 means one per core.
  explicit ThreadPool(int num_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(threads_.size()) + 1; }

  // Runs fn(task, worker) for every task in [0, num_tasks) and returns when
  // all are done. `worker` in [0, num_threads()) indexes per-thread scratch.
  // Concurrent calls are serialized.
  void ParallelFor(int64_t num_tasks, absl::FunctionRef<void(int64_t task, int worker)> fn);

 private:
  void WorkerLoop(int worker);
  void RunTasks(int worker, absl::FunctionRef<void(int64_t, int)> fn, int64_t num_tasks);

  // std::mutex rather than absl::Mutex: the distribution's Abseil is not
  // built with ThreadSanitizer, which then cannot see its synchronization.
  std::mutex call_mu_;  // Held for the whole of one ParallelFor.
  std::mutex mu_;
  std::condition_variable work_cv_;  // New job or stop, for the workers.
  std::condition_variable done_cv_;  // A worker finished, for the caller.
  // Guarded by mu_.
  const absl::FunctionRef<void(int64_t, int)>* job_ = nullptr;
  int64_t num_tasks_ = 0;
  uint64_t generation_ = 0;
  int busy_workers_ = 0;
  bool stop_ = false;
  std::atomic<int64_t> next_task_{0};
  std::vector<std::thread> threads_;
};

}  // namespace ringattn::kernels::cpu

#endif  // RINGATTN_KERNELS_CPU_THREAD_POOL_H_
