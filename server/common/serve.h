#ifndef RINGATTN_SERVER_COMMON_SERVE_H_
#define RINGATTN_SERVER_COMMON_SERVE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/support/config.h"
#include "grpcpp/support/server_interceptor.h"

namespace grpc {
class Service;
}

namespace ringattn::server {

// Blocks SIGINT and SIGTERM in this thread and every thread it creates
// afterwards, so WaitForShutdownSignal can take them. Call first in main.
void BlockShutdownSignals();

// Waits for SIGINT or SIGTERM; returns the signal.
int WaitForShutdownSignal();

struct StartedServer {
  std::unique_ptr<grpc::Server> server;
  int port = 0;  // The bound port (the chosen one when 0 was asked for).
};

// Starts a gRPC server on host:port with the services, the standard health
// service and reflection, and message limits large enough for 4 MiB pieces.
// `interceptors` see every call (request metrics). `credentials` (from
// wire::ServerCredentials: TLS, client certificates, tokens); null: insecure.
absl::StatusOr<StartedServer> StartServer(
    const std::string& host, int port, const std::vector<grpc::Service*>& services,
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
        interceptors = {},
    std::shared_ptr<grpc::ServerCredentials> credentials = nullptr);

// Writes `port` to `path` (atomically), for launchers that asked for port 0.
void WritePortFile(const std::string& path, int port);

}  // namespace ringattn::server

#endif  // RINGATTN_SERVER_COMMON_SERVE_H_
