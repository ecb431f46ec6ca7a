#include "server/worker/registration.h"

#include <chrono>
#include <cstdio>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "proto/wire/cluster_secret.h"
#include "proto/wire/grpc_status.h"

namespace ringattn::worker {
namespace {

std::string RandomId() {
  std::random_device rd;
  return absl::StrFormat("%08x%08x", rd(), rd());
}

}  // namespace

Registration::Registration(RegistrationOptions options)
    : options_(std::move(options)), incarnation_(RandomId()) {
  auto creds = options_.credentials ? options_.credentials : grpc::InsecureChannelCredentials();
  stub_ = worker::v1::CoordinatorControl::NewStub(wire::CreateChannelWithSecret(
      options_.coordinator, creds, grpc::ChannelArguments(), options_.cluster_secret));
}

absl::StatusOr<std::unique_ptr<Registration>> Registration::Start(RegistrationOptions options) {
  std::unique_ptr<Registration> r(new Registration(std::move(options)));
  const absl::Time give_up = absl::Now() + r->options_.first_timeout;
  while (true) {
    const absl::Status s = r->RegisterOnce();
    if (s.ok()) break;
    if (absl::Now() > give_up) {
      return absl::UnavailableError(
          absl::StrCat("cannot register with ", r->options_.coordinator, ": ", s.message()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  r->heartbeat_ = std::thread([p = r.get()] { p->Heartbeat(); });
  return r;
}

Registration::~Registration() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (heartbeat_.joinable()) heartbeat_.join();
}

absl::Status Registration::RegisterOnce() {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  worker::v1::RegisterRequest req;
  req.set_address(options_.address);
  if (options_.rank) req.set_rank(*options_.rank);
  req.set_incarnation(incarnation_);
  req.set_shm_host_id(options_.shm_host_id);
  worker::v1::RegisterResponse resp;
  const absl::Status s = wire::FromGrpc(stub_->Register(&ctx, req, &resp));
  if (!s.ok()) {
    if (connected_) {
      std::fprintf(stderr, "worker: lost the coordinator at %s: %s\n", options_.coordinator.c_str(),
                   std::string(s.message()).c_str());
    }
    connected_ = false;
    return s;
  }
  if (resp.coordinator_id() != coordinator_id_ || !connected_) {
    std::fprintf(stderr, "worker: registered with %s%s as rank %d of %d\n",
                 options_.coordinator.c_str(),
                 coordinator_id_.empty() || coordinator_id_ == resp.coordinator_id()
                     ? ""
                     : " (a restarted coordinator)",
                 resp.rank(), resp.cp());
  }
  coordinator_id_ = resp.coordinator_id();
  connected_ = true;
  return s;
}

void Registration::Heartbeat() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!cv_.wait_for(lock, absl::ToChronoNanoseconds(options_.heartbeat),
                       [&] { return stopping_; })) {
    lock.unlock();
    RegisterOnce().IgnoreError();  // Failures are logged once; the next beat tries again.
    lock.lock();
  }
}

}  // namespace ringattn::worker
