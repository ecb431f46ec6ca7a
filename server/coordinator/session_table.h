#ifndef RINGATTN_SERVER_COORDINATOR_SESSION_TABLE_H_
#define RINGATTN_SERVER_COORDINATOR_SESSION_TABLE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/batch/shard_layout.h"
#include "server/coordinator/coordinator_metrics.h"
#include "server/coordinator/request_convert.h"

namespace ringattn::coordinator {

// What a forward leaves for its backward.
struct Session {
  ForwardSpec spec;
  batch::ShardLayout layout;
  uint64_t generation = 0;  // The ring the ranks hold its state on.
  bool batch_has_vision = false;
};

struct SessionLimits {
  uint64_t memory_budget_bytes = 0;  // Session state held, in total.
  absl::Duration ttl;
  // Per client: sessions open at once, and session state held. 0: no limit.
  int max_sessions_per_client = 0;
  uint64_t max_client_memory_bytes = 0;
};

// The coordinator's open sessions and what they hold on the workers, with
// admission against the memory budget and per-client limits. A session's
// place is reserved when its forward starts, grows as the forward's bytes
// arrive, and becomes the session once the forward's ranks have answered. Sessions past their
// time to live are dropped whenever the table is used.
class SessionTable {
 public:
  // Frees sessions' state on every worker (best effort); called without the
  // table's lock held.
  using ReleaseOnWorkers = std::function<void(const std::vector<std::string>& handles)>;

  SessionTable(SessionLimits limits, CoordinatorMetrics& metrics, ReleaseOnWorkers release);
  SessionTable(const SessionTable&) = delete;
  SessionTable& operator=(const SessionTable&) = delete;

  // A session's place in the budget, under a new handle; un-reserved when
  // it goes out of scope unless it was opened.
  class Reservation {
   public:
    Reservation(Reservation&& other) noexcept;
    Reservation(const Reservation&) = delete;
    Reservation& operator=(const Reservation&) = delete;
    Reservation& operator=(Reservation&&) = delete;
    ~Reservation();

    const std::string& handle() const { return handle_; }
    // `bytes` more, as the session's inputs arrive; RESOURCE_EXHAUSTED (and
    // nothing taken) when they would pass the budget or the client's limit.
    absl::Status Grow(uint64_t bytes);
    uint64_t bytes() const { return bytes_; }

   private:
    friend class SessionTable;
    Reservation(SessionTable* table, std::string handle, std::string client, uint64_t bytes)
        : table_(table), handle_(std::move(handle)), client_(std::move(client)), bytes_(bytes) {}

    SessionTable* table_;  // Null once opened or moved from.
    std::string handle_;
    std::string client_;
    uint64_t bytes_;
  };

  // RESOURCE_EXHAUSTED when `bytes` more would pass the budget or the
  // client's limits.
  absl::StatusOr<Reservation> Reserve(const std::string& client, uint64_t bytes);
  // The reservation becomes the session, until its time to live passes.
  void Open(Reservation reservation, Session session);
  // The session under `handle`, if `caller` may use it; NOT_FOUND otherwise.
  absl::StatusOr<Session> Find(const std::string& handle, const std::string& caller);
  // Releases the session, here and on the workers; NOT_FOUND if `caller`
  // has none under `handle`.
  absl::Status Release(const std::string& handle, const std::string& caller);
  // Forgets the session (if still open) and frees whatever the workers hold
  // under its handle: for a forward nobody can use.
  void Drop(const std::string& handle);
  // Sessions open now.
  int Count();

 private:
  struct Entry {
    Session session;
    uint64_t bytes = 0;  // Held on the workers for backward.
    absl::Time expires;
    std::string client;  // Who opened it (per-client limits).
  };
  struct ClientUsage {
    int sessions = 0;  // Reserved or open.
    uint64_t bytes = 0;
  };
  using Entries = std::map<std::string, Entry>;

  // Drops expired sessions (requires mu_) and returns their handles, for
  // release_ once mu_ is released.
  std::vector<std::string> DropExpiredLocked();
  // Removes a session and un-reserves its bytes (requires mu_); returns the
  // entry after it.
  Entries::iterator EraseLocked(Entries::iterator it);
  // Un-reserves a session's bytes (requires mu_) and updates the gauges.
  void ForgetLocked(uint64_t bytes, const std::string& client);
  void PublishLocked();
  // OK when `bytes` more fit the budget and the client's limit (requires mu_).
  absl::Status FitsLocked(const std::string& client, const ClientUsage& usage,
                          uint64_t bytes) const;
  void Unreserve(const std::string& client, uint64_t bytes);

  const SessionLimits limits_;
  CoordinatorMetrics& metrics_;
  const ReleaseOnWorkers release_;
  std::mutex mu_;
  Entries sessions_;                            // Guarded by mu_.
  uint64_t bytes_held_ = 0;                     // Guarded by mu_.
  std::map<std::string, ClientUsage> clients_;  // Guarded by mu_.
  uint64_t next_session_ = 0;                   // Guarded by mu_.
};

}  // namespace ringattn::coordinator

#endif  // RINGATTN_SERVER_COORDINATOR_SESSION_TABLE_H_
