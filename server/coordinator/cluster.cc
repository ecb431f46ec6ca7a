#include "server/coordinator/cluster.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "proto/wire/grpc_status.h"

namespace ringattn::server {

Cluster::Cluster(int cp, std::string store_address, absl::Duration join_timeout)
    : cp_(cp), store_address_(std::move(store_address)), join_timeout_(join_timeout) {}

Cluster::~Cluster() {
  if (builder_.joinable()) builder_.join();
}

absl::Status Cluster::AddWorker(const std::string& address) {
  std::vector<std::string> build;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (std::find(addresses_.begin(), addresses_.end(), address) != addresses_.end()) {
      return absl::OkStatus();
    }
    if (static_cast<int>(addresses_.size()) >= cp_) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the ring already has its ", cp_, " workers"));
    }
    addresses_.push_back(address);
    std::fprintf(stderr, "coordinator: worker %zu/%d registered at %s\n", addresses_.size(), cp_,
                 address.c_str());
    if (static_cast<int>(addresses_.size()) == cp_ && !building_) {
      building_ = true;
      build = addresses_;
    }
  }
  if (!build.empty()) {
    if (builder_.joinable()) builder_.join();
    builder_ = std::thread([this, build] { BuildRing(build); });
  }
  return absl::OkStatus();
}

void Cluster::BuildRing(std::vector<std::string> addresses) {
  uint64_t generation;
  {
    std::lock_guard<std::mutex> lock(mu_);
    generation = ++generation_;
  }
  std::vector<std::shared_ptr<worker::v1::WorkerService::StubInterface>> stubs;
  for (const std::string& a : addresses) {
    stubs.push_back(worker::v1::WorkerService::NewStub(
        grpc::CreateChannel(a, grpc::InsecureChannelCredentials())));
  }
  // Every worker must be joining at once: Gloo's rendezvous waits for all.
  std::vector<grpc::Status> status(addresses.size());
  std::vector<std::thread> joins;
  for (size_t r = 0; r < addresses.size(); ++r) {
    joins.emplace_back([&, r] {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + absl::ToChronoNanoseconds(join_timeout_));
      worker::v1::JoinRingRequest req;
      req.set_rank(static_cast<int>(r));
      req.set_cp(cp_);
      req.set_generation(generation);
      req.set_store_address(store_address_);
      req.set_listen_host("127.0.0.1");
      worker::v1::JoinRingResponse resp;
      status[r] = stubs[r]->JoinRing(&ctx, req, &resp);
    });
  }
  for (auto& t : joins) t.join();
  std::lock_guard<std::mutex> lock(mu_);
  building_ = false;
  for (size_t r = 0; r < status.size(); ++r) {
    if (!status[r].ok()) {
      last_error_ = absl::StrCat("rank ", r, " at ", addresses[r],
                                 " could not join the ring: ", status[r].error_message());
      std::fprintf(stderr, "coordinator: %s\n", last_error_.c_str());
      cv_.notify_all();
      return;
    }
  }
  stubs_ = std::move(stubs);
  ready_ = true;
  sequence_ = 0;
  std::fprintf(stderr, "coordinator: ring generation %llu ready with %d workers\n",
               static_cast<unsigned long long>(generation), cp_);
  cv_.notify_all();
}

absl::Status Cluster::WaitReady(absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout),
               [&] { return ready_ || (!building_ && !last_error_.empty()); });
  if (ready_) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat("the ring is not ready: ", addresses_.size(), " of ",
                                             cp_, " workers registered",
                                             last_error_.empty() ? "" : "; ", last_error_));
}

bool Cluster::ready() {
  std::lock_guard<std::mutex> lock(mu_);
  return ready_;
}

uint64_t Cluster::generation() {
  std::lock_guard<std::mutex> lock(mu_);
  return generation_;
}

std::vector<std::shared_ptr<worker::v1::WorkerService::StubInterface>> Cluster::workers() {
  std::lock_guard<std::mutex> lock(mu_);
  return stubs_;
}

std::vector<std::string> Cluster::addresses() {
  std::lock_guard<std::mutex> lock(mu_);
  return addresses_;
}

uint64_t Cluster::NextSequence() {
  std::lock_guard<std::mutex> lock(mu_);
  return ++sequence_;
}

}  // namespace ringattn::server
