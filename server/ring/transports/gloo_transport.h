#ifndef RINGATTN_SERVER_RING_TRANSPORTS_GLOO_TRANSPORT_H_
#define RINGATTN_SERVER_RING_TRANSPORTS_GLOO_TRANSPORT_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/ring/store.h"
#include "server/ring/transport.h"

namespace ringattn::ring {

struct GlooOptions {
  int rank = 0;
  int size = 1;
  uint64_t generation = 0;                     // Keys the rendezvous, so a rebuilt ring never
                                               // meets the addresses of an old one.
  std::string hostname = "127.0.0.1";          // Address this rank listens on.
  absl::Duration timeout = absl::Seconds(60);  // Rendezvous and connect bound.
};

// Gloo TCP between processes: a full mesh of pairs, connected through the
// store, with tagged point-to-point sends and receives.
absl::StatusOr<std::unique_ptr<Transport>> ConnectGloo(Store& store, const GlooOptions& options);

}  // namespace ringattn::ring

#endif  // RINGATTN_SERVER_RING_TRANSPORTS_GLOO_TRANSPORT_H_
