#ifndef RINGATTN_SERVER_COMMON_STATUS_CONVERT_H_
#define RINGATTN_SERVER_COMMON_STATUS_CONVERT_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace ringattn::server {

// The one place where engine errors become gRPC status codes and back.
grpc::Status ToGrpc(const absl::Status& status);
absl::Status FromGrpc(const grpc::Status& status);

}  // namespace ringattn::server

#endif  // RINGATTN_SERVER_COMMON_STATUS_CONVERT_H_
