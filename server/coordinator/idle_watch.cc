#include "server/coordinator/idle_watch.h"

namespace ringattn::coordinator {

IdleWatch::IdleWatch(grpc::ServerContext& context, absl::Duration idle)
    : context_(context), idle_(idle) {
  if (idle_ > absl::ZeroDuration()) thread_ = std::thread([this] { Run(); });
}

IdleWatch::~IdleWatch() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void IdleWatch::Waiting(bool waiting) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    waiting_ = waiting;
    since_ = absl::Now();
  }
  cv_.notify_all();
}

bool IdleWatch::fired() {
  std::lock_guard<std::mutex> lock(mu_);
  return fired_;
}

void IdleWatch::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    if (!waiting_) {
      cv_.wait(lock);
      continue;
    }
    const absl::Time due = since_ + idle_;
    if (absl::Now() >= due) {
      fired_ = true;
      context_.TryCancel();  // The blocked read returns false.
      return;
    }
    cv_.wait_until(lock, absl::ToChronoTime(due));
  }
}

}  // namespace ringattn::coordinator
