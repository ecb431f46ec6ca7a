#ifndef RINGATTN_PROTO_WIRE_SECURITY_H_
#define RINGATTN_PROTO_WIRE_SECURITY_H_

// TLS, mutual TLS and bearer tokens for every gRPC endpoint of the service:
// the public API, worker control and the coordinator's store. The one place
// where credentials are built, for the daemons and the C++ client alike.
//
// Who may call what, on a server with tokens configured:
//   grpc.health.v1.Health       anyone (probes)
//   ringattn.attention.v1.*     a client token (--auth_token_file)
//   ringattn.worker.v1.*        the cluster token (--cluster_token_file)
//   anything else (reflection)  either kind of token
// A client token never opens the worker API and the cluster token never
// opens the public API (PERMISSION_DENIED); a missing or unknown token is
// UNAUTHENTICATED. Tokens travel as `authorization: Bearer <token>` and only
// over TLS. Whatever the mode, the internal APIs also need the cluster secret
// (cluster_secret.h), which is the cluster token where one is configured.

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/channel_arguments.h"

namespace ringattn::wire {

// How a process reaches a gRPC server.
struct ChannelSecurity {
  bool tls = false;         // TLS; implied by any file below.
  std::string ca_file;      // PEM roots that verify the server; empty: the system's.
  std::string cert_file;    // PEM certificate chain shown to servers that require one (mTLS).
  std::string key_file;     // Its private key.
  std::string server_name;  // Name expected in the server's certificate; empty: the target's host.
  std::string token;        // Sent as `authorization: Bearer <token>` on every call; needs TLS.
  // Sent as the cluster secret on every call (cluster_secret.h); daemons only.
  std::string cluster_secret;

  bool UsesTls() const { return tls || !ca_file.empty() || !cert_file.empty(); }
};

// Credentials for `security`, files loaded and checked (INVALID_ARGUMENT or
// NOT_FOUND naming the file). server_name is not part of them: see
// CreateChannel, or set it in the channel's arguments yourself.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const ChannelSecurity& security);

// A channel to `target` with `security`; `args` carry the rest (message
// limits). Connects lazily, so a TLS or certificate mismatch surfaces on the
// first call (UNAVAILABLE).
absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateChannel(const std::string& target,
                                                             const ChannelSecurity& security,
                                                             grpc::ChannelArguments args = {});

// How a daemon serves, whom it lets in and how it calls its peers; the
// fields are its flags of the same names.
struct SecurityOptions {
  std::string tls_cert_file;  // PEM certificate chain: served, and shown to peers it calls.
  std::string tls_key_file;   // Its private key.
  // PEM roots: verify the peers this daemon calls and, with
  // tls_require_client_cert, the client certificates every caller must show.
  std::string tls_ca_file;
  bool tls_require_client_cert = true;
  std::string auth_token_file;     // Client tokens of the public API (see ReadTokenFile).
  std::string cluster_token_file;  // The token coordinator and workers share.

  bool UsesTls() const { return !tls_cert_file.empty(); }
};

// The server side of `options`: TLS (mutual when asked), and the token
// check when a token file is given. Insecure when no certificate is given;
// tokens without TLS are refused (FAILED_PRECONDITION), since a bearer token
// in clear text is anyone's.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(
    const SecurityOptions& options);

// How this daemon calls its peers (coordinator to workers, workers to the
// coordinator's control API): its certificate as client certificate, the
// CA, and the cluster token.
absl::StatusOr<ChannelSecurity> PeerChannelSecurity(const SecurityOptions& options);

// A token of the public API and the client it names.
struct NamedToken {
  std::string name;
  std::string token;
};

// One token per line, `token` or `name:token` (the name must not hold ':';
// unnamed tokens are named `client-<line>`). Blank lines and lines starting
// with '#' are skipped; tokens are at least 16 characters, without spaces,
// and unique.
absl::StatusOr<std::vector<NamedToken>> ReadTokenFile(const std::string& path);

// The first token of a token file: what a client or a daemon sends.
absl::StatusOr<std::string> ReadFirstToken(const std::string& path);

// Who is calling, for per-client limits and logs: the name of the client
// token the call carried ("cluster" for the cluster token), else the common
// name of its client certificate as "cert:<CN>", else its peer address.
std::string ClientIdentity(const grpc::ServerContextBase& context);

// Whether the server's token check found the cluster token on the call.
bool CarriesClusterToken(const grpc::ServerContextBase& context);

// The same when the caller proved it (a token or a client certificate);
// nullopt when only its address is known.
std::optional<std::string> ProvenClientIdentity(const grpc::ServerContextBase& context);

}  // namespace ringattn::wire

#endif  // RINGATTN_PROTO_WIRE_SECURITY_H_
