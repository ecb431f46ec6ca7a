#ifndef RINGATTN_PROTO_WIRE_GRPC_STATUS_H_
#define RINGATTN_PROTO_WIRE_GRPC_STATUS_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace ringattn::wire {

// The one place where absl::Status becomes a gRPC status and back, for the
// service and the client alike.
grpc::Status ToGrpc(const absl::Status& status);
absl::Status FromGrpc(const grpc::Status& status);

}  // namespace ringattn::wire

#endif  // RINGATTN_PROTO_WIRE_GRPC_STATUS_H_
