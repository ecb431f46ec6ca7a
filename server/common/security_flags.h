#ifndef RINGATTN_SERVER_COMMON_SECURITY_FLAGS_H_
#define RINGATTN_SERVER_COMMON_SECURITY_FLAGS_H_

#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "proto/wire/security.h"

namespace ringattn::server {

// The TLS and cluster-token flags both daemons take (--tls_cert_file,
// --tls_key_file, --tls_ca_file, --tls_require_client_cert,
// --cluster_token_file); --auth_token_file is the coordinator's own and is
// left empty here.
wire::SecurityOptions SecurityOptionsFromFlags();

// A daemon's credentials, every file loaded and checked at start.
struct DaemonSecurity {
  std::shared_ptr<grpc::ServerCredentials> server;             // What it serves with.
  wire::ChannelSecurity peer;                                  // How it calls its peers...
  std::shared_ptr<grpc::ChannelCredentials> peer_credentials;  // ...as credentials.
};
absl::StatusOr<DaemonSecurity> LoadDaemonSecurity(const wire::SecurityOptions& options);

// Fills in the cluster secret (peer.cluster_secret) when no cluster token
// was configured. A coordinator serving on `port` takes the secret its host
// keeps for that port (a restarted coordinator keeps its workers) or
// generates one and leaves it there. A worker whose coordinator serves on
// `port` waits up to `wait` for that file; finding none (its coordinator is
// on another host) it goes on without, and its registration is refused.
absl::Status ResolveClusterSecret(DaemonSecurity& security, bool coordinator, int port,
                                  absl::Duration wait);

}  // namespace ringattn::server

#endif  // RINGATTN_SERVER_COMMON_SECURITY_FLAGS_H_
