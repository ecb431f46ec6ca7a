#ifndef RINGATTN_SERVER_RING_TRANSPORTS_IN_PROCESS_TRANSPORT_H_
#define RINGATTN_SERVER_RING_TRANSPORTS_IN_PROCESS_TRANSPORT_H_

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "server/ring/transport.h"

namespace ringattn::ring {

// Ranks as threads of one process: a shared hub of mailboxes. Sends copy
// eagerly into the receiver's mailbox; receives wait (bounded) for a match.
// Used by the tests (also under ThreadSanitizer) and by in-process rings.
class InProcessHub {
 public:
  explicit InProcessHub(int size);

  int size() const { return size_; }

  // The transport of one rank; the hub must outlive it.
  std::unique_ptr<Transport> Connect(int rank);

  // Marks a rank dead, as if its process had died: its mailboxes are dropped
  // and every receive from it fails with UNAVAILABLE.
  void Kill(int rank);

 private:
  friend class InProcessTransport;
  friend class InProcessRecv;
  using Key = std::tuple<int, int, uint64_t>;  // (source, destination, tag)

  // Guarded by mu_. std::mutex so ThreadSanitizer sees the synchronization.
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<Key, std::vector<std::byte>> mailboxes_;
  std::vector<bool> dead_;
  const int size_;
};

}  // namespace ringattn::ring

#endif  // RINGATTN_SERVER_RING_TRANSPORTS_IN_PROCESS_TRANSPORT_H_
