#include "server/common/security_flags.h"

#include <string>

#include "absl/flags/flag.h"

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
          "worker API and worker control, and sent on this daemon's own calls. Needs TLS.");

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

}  // namespace ringattn::server
