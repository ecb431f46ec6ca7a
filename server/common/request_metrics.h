#ifndef RINGATTN_SERVER_COMMON_REQUEST_METRICS_H_
#define RINGATTN_SERVER_COMMON_REQUEST_METRICS_H_

#include <memory>

#include "absl/strings/string_view.h"
#include "grpcpp/support/server_interceptor.h"
#include "server/common/service_metrics.h"

namespace ringattn::server {

// The plane of an RPC by its full path ("/package.Service/Method"): the
// coordinator's control service and WorkerService/JoinRing are control,
// everything else API.
Plane PlaneOf(absl::string_view path);

// Counts every RPC of the project's own services (not health checks or
// reflection) by method and status code, API calls in
// ringattn_requests_total and control calls in
// ringattn_control_requests_total, at the one place every status passes:
// whatever path a handler returns through, it is counted once.
std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> RequestCounter(
    ServiceMetrics& metrics);

}  // namespace ringattn::server

#endif  // RINGATTN_SERVER_COMMON_REQUEST_METRICS_H_
