#include "server/worker/grpc_store.h"

#include <chrono>

#include "grpcpp/client_context.h"
#include "proto/wire/grpc_status.h"

namespace ringattn::worker {

absl::Status GrpcStore::Set(absl::string_view key, const std::vector<char>& value) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  worker::v1::StoreSetRequest req;
  req.set_key(std::string(key));
  req.set_value(value.data(), value.size());
  worker::v1::StoreSetResponse resp;
  return wire::FromGrpc(stub_->StoreSet(&ctx, req, &resp));
}

absl::StatusOr<std::vector<char>> GrpcStore::GetWaiting(absl::string_view key,
                                                        absl::Duration wait) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + absl::ToChronoNanoseconds(wait) +
                   std::chrono::seconds(10));
  worker::v1::StoreGetRequest req;
  req.set_key(std::string(key));
  req.set_wait_seconds(absl::ToDoubleSeconds(wait));
  worker::v1::StoreGetResponse resp;
  const grpc::Status s = stub_->StoreGet(&ctx, req, &resp);
  if (!s.ok()) return wire::FromGrpc(s);
  return std::vector<char>(resp.value().begin(), resp.value().end());
}

absl::StatusOr<std::vector<char>> GrpcStore::Get(absl::string_view key) {
  return GetWaiting(key, absl::ZeroDuration());
}

absl::Status GrpcStore::Wait(const std::vector<std::string>& keys, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  for (const std::string& key : keys) {
    absl::StatusOr<std::vector<char>> v =
        GetWaiting(key, std::max(absl::ZeroDuration(), deadline - absl::Now()));
    if (!v.ok()) return v.status();
  }
  return absl::OkStatus();
}

}  // namespace ringattn::worker
