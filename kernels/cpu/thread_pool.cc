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
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (std::thread& t : threads_) t.join();
}

void ThreadPool::RunTasks(int worker, absl::FunctionRef<void(int64_t, int)> fn, int64_t num_tasks) {
  for (int64_t task = next_task_.fetch_add(1, std::memory_order_relaxed); task < num_tasks;
       task = next_task_.fetch_add(1, std::memory_order_relaxed)) {
    fn(task, worker);
  }
}

void ThreadPool::ParallelFor(int64_t num_tasks,
                             absl::FunctionRef<void(int64_t task, int worker)> fn) {
  if (num_tasks <= 0) return;
  std::lock_guard<std::mutex> call_lock(call_mu_);
  if (threads_.empty() || num_tasks == 1) {
    for (int64_t task = 0; task < num_tasks; ++task) fn(task, 0);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = &fn;
    num_tasks_ = num_tasks;
    next_task_.store(0, std::memory_order_relaxed);
    busy_workers_ = static_cast<int>(threads_.size());
    ++generation_;
  }
  work_cv_.notify_all();
  RunTasks(0, fn, num_tasks);
  std::unique_lock<std::mutex> lock(mu_);
  done_cv_.wait(lock, [this] { return busy_workers_ == 0; });
  job_ = nullptr;
}

void ThreadPool::WorkerLoop(int worker) {
  uint64_t seen = 0;
  while (true) {
    const absl::FunctionRef<void(int64_t, int)>* job;
    int64_t num_tasks;
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [this, seen] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      job = job_;
      num_tasks = num_tasks_;
    }
    RunTasks(worker, *job, num_tasks);
    bool last;
    {
      std::lock_guard<std::mutex> lock(mu_);
      last = --busy_workers_ == 0;
    }
    if (last) done_cv_.notify_one();
  }
}

}  // namespace ringattn::kernels::cpu
