#include "kernels/cpu/thread_pool.h"

#include <algorithm>

namespace ringattn::kernels::cpu {

ThreadPool::ThreadPool(int num_threads) {
  if (num_threads <= 0) {
    num_threads = std::max(1u, std::thread::hardware_concurrency());
  }
  threads_.reserve(num_threads - 1);
  for (int w = 1; w < num_threads; ++w) {
    threads_.emplace_back([this, w] { WorkerLoop(w); });
  }
}

ThreadPool::~ThreadPool() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  for (std::thread& t : threads_) t.join();
}

void ThreadPool::RunTasks(int worker, absl::FunctionRef<void(int64_t, int)> fn,
                          int64_t num_tasks) {
  for (int64_t task = next_task_.fetch_add(1, std::memory_order_relaxed);
       task < num_tasks;
       task = next_task_.fetch_add(1, std::memory_order_relaxed)) {
    fn(task, worker);
  }
}

void ThreadPool::ParallelFor(int64_t num_tasks,
                             absl::FunctionRef<void(int64_t task, int worker)> fn) {
  if (num_tasks <= 0) return;
  absl::MutexLock call_lock(&call_mu_);
  if (threads_.empty() || num_tasks == 1) {
    for (int64_t task = 0; task < num_tasks; ++task) fn(task, 0);
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    job_ = &fn;
    num_tasks_ = num_tasks;
    next_task_.store(0, std::memory_order_relaxed);
    busy_workers_ = static_cast<int>(threads_.size());
    ++generation_;
  }
  RunTasks(0, fn, num_tasks);
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](int* busy) { return *busy == 0; }, &busy_workers_));
  job_ = nullptr;
}

void ThreadPool::WorkerLoop(int worker) {
  uint64_t seen = 0;
  while (true) {
    const absl::FunctionRef<void(int64_t, int)>* job;
    int64_t num_tasks;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this, seen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stop_ || generation_ != seen;
      };
      mu_.Await(absl::Condition(&ready));
      if (stop_) return;
      seen = generation_;
      job = job_;
      num_tasks = num_tasks_;
    }
    RunTasks(worker, *job, num_tasks);
    absl::MutexLock lock(&mu_);
    --busy_workers_;
  }
}

}  // namespace ringattn::kernels::cpu
