#ifndef RINGATTN_PROTO_WIRE_CLUSTER_SECRET_H_
#define RINGATTN_PROTO_WIRE_CLUSTER_SECRET_H_

// The secret one cluster's daemons share, in every security mode: each call
// of the internal APIs (the worker API, and the coordinator's worker control
// and store) carries it in `ringattn-cluster-secret` metadata, and the
// handlers refuse calls without it, so no process that lacks it can join
// the ring, read its store or drive a worker. It is the cluster token
// (--cluster_token_file) when one is configured; otherwise the coordinator
// generates one at start and leaves it in a file only its user can read
// (LocalClusterSecretPath), where workers on its host find it.

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/channel_arguments.h"

namespace ringattn::wire {

inline constexpr char kClusterSecretMetadata[] = "ringattn-cluster-secret";

// OK when the call carries `secret` (compared in constant time), or when
// the server's token check proved the cluster token (TLS with
// --cluster_token_file); UNAUTHENTICATED otherwise, and always when
// `secret` is empty.
absl::Status CheckClusterSecret(const grpc::ServerContextBase& context, const std::string& secret);

// A channel to `target` whose every call carries `secret` (none when empty).
std::shared_ptr<grpc::Channel> CreateChannelWithSecret(
    const std::string& target, const std::shared_ptr<grpc::ChannelCredentials>& creds,
    const grpc::ChannelArguments& args, const std::string& secret);

// 128 bits from the operating system's random source, as 32 hex digits.
absl::StatusOr<std::string> NewClusterSecret();

// Where a coordinator serving on `port` keeps a generated secret for the
// workers on its host: $XDG_RUNTIME_DIR/ringattn/cluster-<port>.secret when
// that folder is writable, else /tmp/ringattn-<uid>/cluster-<port>.secret.
// The folder is 0700, the file 0600.
std::string LocalClusterSecretPath(int port);

// The secret at LocalClusterSecretPath(port). NOT_FOUND when there is none;
// FAILED_PRECONDITION when the folder or file is another user's or open to
// others (then it is no secret).
absl::StatusOr<std::string> ReadLocalClusterSecret(int port);

// Writes `secret` there (atomically; the folder made 0700 when missing).
absl::Status WriteLocalClusterSecret(int port, const std::string& secret);

}  // namespace ringattn::wire

#endif  // RINGATTN_PROTO_WIRE_CLUSTER_SECRET_H_
