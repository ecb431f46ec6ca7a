#ifndef RINGATTN_SERVER_COMMON_REQUEST_METRICS_H_
#define RINGATTN_SERVER_COMMON_REQUEST_METRICS_H_

#include <memory>

#include "grpcpp/support/server_interceptor.h"
#include "server/common/service_metrics.h"

namespace ringattn::server {

// Counts every RPC of the project's own services (not health checks or
// reflection) in ringattn_requests_total by method and status code, at the
// one place every status passes: whatever path a handler returns through,
// it is counted once.
std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> RequestCounter(
    ServiceMetrics& metrics);

}  // namespace ringattn::server

#endif  // RINGATTN_SERVER_COMMON_REQUEST_METRICS_H_
