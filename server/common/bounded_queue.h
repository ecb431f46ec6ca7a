#ifndef RINGATTN_SERVER_COMMON_BOUNDED_QUEUE_H_
#define RINGATTN_SERVER_COMMON_BOUNDED_QUEUE_H_

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <mutex>
#include <optional>
#include <utility>

// A blocking queue of at most `capacity` items between one producer and one
// consumer thread: the producer waits while it is full (so a fast sender is
// held to the pace of a slow receiver, and memory stays bounded), the
// consumer waits while it is empty. Either side can end it: Close (no more
// items; the rest is still delivered) or Cancel (the consumer left; pending
// and later items are dropped, and a blocked producer is released).
// std::mutex, not absl::Mutex: the ring tests run under TSan, and Debian's
// Abseil is not instrumented.

namespace ringattn::server {

template <typename T>
class BoundedQueue {
 public:
  explicit BoundedQueue(size_t capacity) : capacity_(capacity < 1 ? 1 : capacity) {}
  BoundedQueue(const BoundedQueue&) = delete;
  BoundedQueue& operator=(const BoundedQueue&) = delete;

  // False if the queue was cancelled or closed: the item is dropped.
  bool Push(T item) {
    std::unique_lock<std::mutex> lock(mu_);
    not_full_.wait(lock, [&] { return items_.size() < capacity_ || cancelled_ || closed_; });
    if (cancelled_ || closed_) return false;
    items_.push_back(std::move(item));
    not_empty_.notify_one();
    return true;
  }

  // The next item; nullopt once the queue is closed and drained, or cancelled.
  std::optional<T> Pop() {
    std::unique_lock<std::mutex> lock(mu_);
    not_empty_.wait(lock, [&] { return !items_.empty() || cancelled_ || closed_; });
    if (cancelled_ || items_.empty()) return std::nullopt;
    T item = std::move(items_.front());
    items_.pop_front();
    not_full_.notify_one();
    return item;
  }

  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    not_empty_.notify_all();
    not_full_.notify_all();
  }

  void Cancel() {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
    items_.clear();
    not_empty_.notify_all();
    not_full_.notify_all();
  }

 private:
  const size_t capacity_;
  std::mutex mu_;
  std::condition_variable not_full_, not_empty_;
  std::deque<T> items_;     // Guarded by mu_.
  bool closed_ = false;     // Guarded by mu_.
  bool cancelled_ = false;  // Guarded by mu_.
};

}  // namespace ringattn::server

#endif  // RINGATTN_SERVER_COMMON_BOUNDED_QUEUE_H_
