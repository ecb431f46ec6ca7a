#include "server/common/security_flags.h"

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "proto/wire/cluster_secret.h"

ABSL_FLAG(std::string, tls_cert_file, "",
          "PEM certificate chain: serve TLS with it, and show it to the peers this daemon calls. "
          "Empty: plaintext.");
ABSL_FLAG(std::string, tls_key_file, "", "PEM private key of --tls_cert_file.");
ABSL_FLAG(std::string, tls_ca_file, "",
          "PEM CA certificates: verify the daemons this one calls and, with "
          "--tls_require_client_cert, every caller's client certificate (mutual TLS).");
ABSL_FLAG(bool, tls_require_client_cert, true,
          "With --tls_ca_file: refuse callers without a client certificate signed by it. False: "
          "TLS without client certificates (use tokens then).");
ABSL_FLAG(std::string, cluster_token_file, "",
          "File holding the token coordinator and workers share: required of callers of the "
          "worker API and worker control, and sent on this daemon's own calls (a bearer token "
          "over TLS; in clear text, the cluster secret). Empty: a secret the coordinator "
          "generates and keeps for workers on its host, in a file only its user can read.");

namespace ringattn::server {

wire::SecurityOptions SecurityOptionsFromFlags() {
  wire::SecurityOptions o;
  o.tls_cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  o.tls_key_file = absl::GetFlag(FLAGS_tls_key_file);
  o.tls_ca_file = absl::GetFlag(FLAGS_tls_ca_file);
  o.tls_require_client_cert = absl::GetFlag(FLAGS_tls_require_client_cert);
  o.cluster_token_file = absl::GetFlag(FLAGS_cluster_token_file);
  return o;
}

absl::StatusOr<DaemonSecurity> LoadDaemonSecurity(const wire::SecurityOptions& options) {
  DaemonSecurity d;
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> server =
      wire::ServerCredentials(options);
  if (!server.ok()) return server.status();
  d.server = *std::move(server);
  absl::StatusOr<wire::ChannelSecurity> peer = wire::PeerChannelSecurity(options);
  if (!peer.ok()) return peer.status();
  d.peer = *std::move(peer);
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> creds =
      wire::MakeChannelCredentials(d.peer);
  if (!creds.ok()) return creds.status();
  d.peer_credentials = *std::move(creds);
  return d;
}

absl::Status ResolveClusterSecret(DaemonSecurity& security, bool coordinator, int port,
                                  absl::Duration wait) {
  if (!security.peer.cluster_secret.empty()) return absl::OkStatus();
  absl::StatusOr<std::string> kept = wire::ReadLocalClusterSecret(port);
  if (coordinator) {
    if (!kept.ok() && !absl::IsNotFound(kept.status())) return kept.status();
    if (!kept.ok()) {
      kept = wire::NewClusterSecret();
      if (!kept.ok()) return kept.status();
      if (absl::Status s = wire::WriteLocalClusterSecret(port, *kept); !s.ok()) return s;
    }
    security.peer.cluster_secret = *std::move(kept);
    return absl::OkStatus();
  }
  const absl::Time give_up = absl::Now() + wait;
  while (absl::IsNotFound(kept.status()) && absl::Now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    kept = wire::ReadLocalClusterSecret(port);
  }
  if (!kept.ok() && !absl::IsNotFound(kept.status())) return kept.status();
  if (!kept.ok()) {
    std::fprintf(stderr,
                 "worker: warning: no --cluster_token_file and no cluster secret at %s (the "
                 "coordinator leaves one there on its host): registration will be refused\n",
                 wire::LocalClusterSecretPath(port).c_str());
    return absl::OkStatus();
  }
  security.peer.cluster_secret = *std::move(kept);
  return absl::OkStatus();
}

}  // namespace ringattn::server
