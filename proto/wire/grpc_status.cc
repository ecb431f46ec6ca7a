#include "proto/wire/grpc_status.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace ringattn::wire {

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // Messages may quote what a client sent (a handle, a tensor name) and
  // travel in the trailers, which a client refuses over 8 KiB by default:
  // the client would see RESOURCE_EXHAUSTED instead of the real error.
  constexpr size_t kMaxMessage = 1024;
  std::string message(status.message());
  if (message.size() > kMaxMessage) {
    message = absl::StrCat(message.substr(0, kMaxMessage), "... (", message.size(), " bytes)");
  }
  // absl and gRPC share the canonical code numbering.
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), message);
}

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

}  // namespace ringattn::wire
