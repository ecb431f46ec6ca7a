#ifndef RINGATTN_SERVER_COORDINATOR_IDLE_WATCH_H_
#define RINGATTN_SERVER_COORDINATOR_IDLE_WATCH_H_

#include <condition_variable>
#include <mutex>
#include <thread>

#include "absl/time/time.h"
#include "grpcpp/server_context.h"

namespace ringattn::coordinator {

// Cancels a client's call whose request stream goes quiet: a stream that
// declared a large call and then sends nothing would otherwise hold its
// place in the memory budget (and a ring turn) for as long as it likes.
// Only time spent waiting in a read counts, so a coordinator slow to pass
// pieces on never cancels its own client.
class IdleWatch {
 public:
  // `idle` <= 0: never cancels (no thread is started).
  IdleWatch(grpc::ServerContext& context, absl::Duration idle);
  ~IdleWatch();
  IdleWatch(const IdleWatch&) = delete;
  IdleWatch& operator=(const IdleWatch&) = delete;

  // Brackets a blocking read: true before it, false after it returned.
  void Waiting(bool waiting);
  // Whether it cancelled the call.
  bool fired();

 private:
  void Run();

  grpc::ServerContext& context_;
  const absl::Duration idle_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool waiting_ = false;  // Guarded by mu_.
  absl::Time since_;      // When the current wait began. Guarded by mu_.
  bool stop_ = false;     // Guarded by mu_.
  bool fired_ = false;    // Guarded by mu_.
  std::thread thread_;    // Last: it starts once the rest is set.
};

}  // namespace ringattn::coordinator

#endif  // RINGATTN_SERVER_COORDINATOR_IDLE_WATCH_H_
