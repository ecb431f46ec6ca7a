#include "server/coordinator/cluster.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "proto/wire/cluster_secret.h"

namespace ringattn::coordinator {
namespace {

// The host part of "host:port" (the worker's advertised name, which its
// ring endpoint binds too).
std::string HostOf(const std::string& address) {
  const size_t colon = address.rfind(':');
  return colon == std::string::npos ? address : address.substr(0, colon);
}

bool Healthy(grpc::Channel& channel, absl::Duration timeout) {
  grpc::health::v1::Health::Stub health(
      std::shared_ptr<grpc::Channel>(&channel, [](grpc::Channel*) {}));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + absl::ToChronoNanoseconds(timeout));
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse resp;
  return health.Check(&ctx, req, &resp).ok() &&
         resp.status() == grpc::health::v1::HealthCheckResponse::SERVING;
}

}  // namespace

Cluster::Cluster(ClusterOptions options, CoordinatorMetrics& metrics)
    : options_(std::move(options)), metrics_(metrics), slots_(options_.cp) {
  metrics_.ring_size.Set(options_.cp);
  monitor_ = std::thread([this] { Monitor(); });
}

Cluster::~Cluster() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  monitor_.join();
  if (builder_.joinable()) builder_.join();
}

absl::StatusOr<int> Cluster::Register(const std::string& address, std::optional<int> rank,
                                      const std::string& incarnation,
                                      const std::string& shm_host_id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (rank && (*rank < 0 || *rank >= options_.cp)) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", *rank, " is outside this ring of ", options_.cp));
  }
  auto known = std::find_if(slots_.begin(), slots_.end(),
                            [&](const Slot& s) { return s.address == address; });
  int r = -1;
  if (known != slots_.end() && (!rank || *rank == known - slots_.begin())) {
    r = static_cast<int>(known - slots_.begin());
  } else if (rank) {
    const Slot& held = slots_[*rank];
    if (!held.address.empty() && held.up && held.address != address) {
      return absl::AlreadyExistsError(absl::StrCat("rank ", *rank, " is held by the worker at ",
                                                   held.address, ", which is up"));
    }
    r = *rank;
  } else {
    auto free =
        std::find_if(slots_.begin(), slots_.end(), [](const Slot& s) { return s.address.empty(); });
    if (free == slots_.end()) {
      free = std::find_if(slots_.begin(), slots_.end(), [](const Slot& s) { return !s.up; });
    }
    if (free == slots_.end()) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the ring already has its ", options_.cp, " workers, all up"));
    }
    r = static_cast<int>(free - slots_.begin());
  }
  if (known != slots_.end() && known - slots_.begin() != r) *known = Slot{};  // It moved.
  Slot& slot = slots_[r];
  const bool same = slot.address == address && slot.incarnation == incarnation;
  if (!same) {
    const bool replacing = !slot.address.empty();
    std::fprintf(stderr, "coordinator: worker at %s %s rank %d\n", address.c_str(),
                 replacing ? "takes over" : "registered as", r);
    slot = Slot{};
    slot.address = address;
    slot.incarnation = incarnation;
    auto creds = options_.worker_credentials ? options_.worker_credentials
                                             : grpc::InsecureChannelCredentials();
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(8 << 20);
    args.SetMaxSendMessageSize(8 << 20);
    slot.channel = wire::CreateChannelWithSecret(address, creds, args, options_.cluster_secret);
    slot.stub = worker::v1::WorkerService::NewStub(slot.channel);
    // A new process at a rank of the ring: the ring's transport on it is gone.
    if (ready_) {
      ready_ = false;
      ring_.clear();
      last_error_ = absl::StrCat("rank ", r, " restarted (", address, ")");
    }
    next_build_ = absl::InfinitePast();
  }
  slot.up = true;  // It just called us.
  slot.shm_host_id = shm_host_id;
  PublishLocked();
  MaybeBuildLocked();
  return r;
}

void Cluster::PublishLocked() {
  int registered = 0, up = 0;
  for (const Slot& s : slots_) {
    registered += s.address.empty() ? 0 : 1;
    up += s.up ? 1 : 0;
  }
  metrics_.workers_registered.Set(registered);
  metrics_.workers_up.Set(up);
  metrics_.service.ring_generation.Set(static_cast<double>(generation_));
}

void Cluster::MaybeBuildLocked() {
  if (ready_ || building_ || stopping_ || absl::Now() < next_build_) return;
  for (const Slot& s : slots_) {
    if (s.address.empty() || !s.up) return;
  }
  building_ = true;
  const uint64_t generation = ++generation_;
  if (generation > 1) metrics_.ring_rebuilds_total.Increment();
  PublishLocked();
  // building_ was false, so the last builder has left its locked section and
  // only returns now: joining it here cannot wait on mu_.
  if (builder_.joinable()) builder_.join();
  builder_ = std::thread([this, generation, slots = slots_] { BuildRing(generation, slots); });
}

void Cluster::BuildRing(uint64_t generation, std::vector<Slot> slots) {
  std::fprintf(stderr, "coordinator: building ring generation %llu with %d workers\n",
               static_cast<unsigned long long>(generation), options_.cp);
  // Every worker must be joining at once: Gloo's rendezvous waits for all.
  std::vector<grpc::Status> status(slots.size());
  std::vector<grpc::ClientContext> contexts(slots.size());
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (grpc::ClientContext& ctx : contexts) joining_.push_back(&ctx);
  }
  std::vector<std::thread> joins;
  for (size_t r = 0; r < slots.size(); ++r) {
    joins.emplace_back([&, r] {
      grpc::ClientContext& ctx = contexts[r];
      ctx.set_deadline(std::chrono::system_clock::now() +
                       absl::ToChronoNanoseconds(options_.join_timeout));
      worker::v1::JoinRingRequest req;
      req.set_rank(static_cast<int>(r));
      req.set_cp(options_.cp);
      req.set_generation(generation);
      req.set_store_address(options_.store_address);
      req.set_listen_host(HostOf(slots[r].address));
      req.set_coordinator_id(options_.coordinator_id);
      worker::v1::JoinRingResponse resp;
      status[r] = slots[r].stub->JoinRing(&ctx, req, &resp);
    });
  }
  for (auto& t : joins) t.join();
  {
    std::lock_guard<std::mutex> lock(mu_);
    joining_.clear();
    building_ = false;
    std::string error;
    for (size_t r = 0; r < status.size(); ++r) {
      if (!status[r].ok()) {
        error = absl::StrCat("rank ", r, " at ", slots[r].address,
                             " could not join the ring: ", status[r].error_message());
        break;
      }
    }
    // A worker may have been replaced while the ring was being built.
    for (size_t r = 0; error.empty() && r < slots.size(); ++r) {
      if (slots_[r].incarnation != slots[r].incarnation || slots_[r].address != slots[r].address) {
        error = absl::StrCat("rank ", r, " changed while the ring was being built");
      }
    }
    if (!error.empty()) {
      last_error_ = error;
      next_build_ = absl::Now() + absl::Seconds(1);  // Don't spin on a worker that can't join.
      std::fprintf(stderr, "coordinator: %s\n", error.c_str());
    } else if (generation == generation_) {
      for (const Slot& s : slots) ring_.push_back(s.stub);
      ready_ = true;
      sequence_ = 0;
      last_error_.clear();
      std::fprintf(stderr, "coordinator: ring generation %llu ready with %d workers\n",
                   static_cast<unsigned long long>(generation), options_.cp);
    }
    PublishLocked();
  }
  cv_.notify_all();
}

std::vector<bool> Cluster::ProbeAll(const std::vector<std::shared_ptr<grpc::Channel>>& channels,
                                    absl::Duration timeout) {
  // In parallel: one hung rank must not delay the verdict on the others.
  std::vector<char> healthy(channels.size(), 0);
  std::vector<std::thread> probes;
  probes.reserve(channels.size());
  for (size_t r = 0; r < channels.size(); ++r) {
    if (channels[r] == nullptr) continue;
    probes.emplace_back([&, r] { healthy[r] = Healthy(*channels[r], timeout) ? 1 : 0; });
  }
  for (std::thread& t : probes) t.join();
  return std::vector<bool>(healthy.begin(), healthy.end());
}

void Cluster::Monitor() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    cv_.wait_for(lock, absl::ToChronoNanoseconds(options_.health_interval));
    if (stopping_) break;
    std::vector<std::shared_ptr<grpc::Channel>> check;
    for (const Slot& s : slots_) check.push_back(s.channel);
    lock.unlock();
    const std::vector<bool> up = ProbeAll(check, options_.health_timeout);
    lock.lock();
    for (size_t r = 0; r < check.size(); ++r) {
      Slot& s = slots_[r];
      if (check[r] == nullptr || s.channel != check[r]) continue;  // Empty, or replaced.
      if (s.up && !up[r]) {
        MarkDownLocked(static_cast<int>(r), "its health check failed");
      } else {
        s.up = up[r];
      }
    }
    PublishLocked();
    MaybeBuildLocked();
    cv_.notify_all();
  }
}

void Cluster::MarkDownLocked(int r, const std::string& why) {
  Slot& s = slots_[r];
  if (!s.up) return;
  s.up = false;
  std::fprintf(stderr, "coordinator: rank %d at %s is down (%s)\n", r, s.address.c_str(),
               why.c_str());
  const std::string down = absl::StrCat("rank ", r, " at ", s.address, " is down");
  for (const auto& [id, on_down] : down_watches_) on_down(down);
  if (ready_) {
    ready_ = false;
    ring_.clear();
    last_error_ = absl::StrCat("rank ", r, " at ", s.address, " is down");
  }
  // The others would wait in the rendezvous for this rank until the join
  // timeout; a new build starts once it is back.
  for (grpc::ClientContext* ctx : joining_) ctx->TryCancel();
  PublishLocked();
  cv_.notify_all();
}

Cluster::DownWatch Cluster::WatchDown(std::function<void(const std::string&)> on_down) {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t id = ++next_watch_;
  down_watches_.emplace(id, std::move(on_down));
  return DownWatch(this, id);
}

Cluster::DownWatch::~DownWatch() {
  if (cluster_ == nullptr) return;
  std::lock_guard<std::mutex> lock(cluster_->mu_);
  cluster_->down_watches_.erase(id_);
}

void Cluster::RingFailed(uint64_t generation, const std::string& reason) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (generation != generation_ || !ready_) return;
    ready_ = false;
    ring_.clear();
    last_error_ = reason;
    std::fprintf(stderr, "coordinator: ring generation %llu broke: %s\n",
                 static_cast<unsigned long long>(generation), reason.c_str());
    MaybeBuildLocked();
  }
  cv_.notify_all();
}

std::string Cluster::CheckRanksNow() {
  std::vector<std::string> addresses;
  std::vector<std::shared_ptr<grpc::Channel>> check;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const Slot& s : slots_) {
      addresses.push_back(s.address);
      check.push_back(s.channel);
    }
  }
  const std::vector<bool> healthy = ProbeAll(check, options_.health_timeout);
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t r = 0; r < check.size(); ++r) {
      if (!healthy[r] && check[r] && slots_[r].channel == check[r]) {
        MarkDownLocked(static_cast<int>(r), "a ring call failed and it does not answer");
      }
    }
  }
  std::vector<std::string> down;
  for (size_t r = 0; r < check.size(); ++r) {
    if (!healthy[r]) {
      down.push_back(addresses[r].empty()
                         ? absl::StrCat("rank ", r, " has no worker")
                         : absl::StrCat("rank ", r, " at ", addresses[r], " is down"));
    }
  }
  return absl::StrJoin(down, "; ");
}

absl::Status Cluster::WaitReady(absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  auto missing = [&] {
    std::vector<std::string> out;
    for (size_t r = 0; r < slots_.size(); ++r) {
      if (slots_[r].address.empty()) {
        out.push_back(absl::StrCat("rank ", r, " has no worker"));
      } else if (!slots_[r].up) {
        out.push_back(absl::StrCat("rank ", r, " at ", slots_[r].address, " is down"));
      }
    }
    return out;
  };
  cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout), [&] {
    // Only a build can make the ring ready; without every worker up there is none.
    return ready_ || stopping_ || (!building_ && !missing().empty() && generation_ > 0);
  });
  if (ready_) return absl::OkStatus();
  std::vector<std::string> why = missing();
  if (!last_error_.empty()) why.push_back(last_error_);
  return absl::UnavailableError(
      absl::StrCat("the ring is not ready", why.empty() ? "" : ": ", absl::StrJoin(why, "; "),
                   why.empty() || generation_ == 0 ? "" : "; it is rebuilt when they are back"));
}

Cluster::RingView Cluster::View() {
  std::lock_guard<std::mutex> lock(mu_);
  RingView v;
  v.ready = ready_;
  v.generation = generation_;
  if (ready_) v.stubs = ring_;
  for (const Slot& s : slots_) v.workers.push_back({s.address, s.up});
  return v;
}

absl::StatusOr<Cluster::Ticket> Cluster::NextCall() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!ready_) {
    return absl::UnavailableError(
        absl::StrCat("the ring is being rebuilt", last_error_.empty() ? "" : ": ", last_error_));
  }
  Ticket ticket{generation_, ring_, {}};
  for (const Slot& slot : slots_) ticket.shm_host_ids.push_back(slot.shm_host_id);
  return ticket;
}

absl::StatusOr<uint64_t> Cluster::Commit(uint64_t generation) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!ready_ || generation != generation_) {
    return absl::UnavailableError("the ring was rebuilt while the call was being dispatched");
  }
  return ++sequence_;
}

}  // namespace ringattn::coordinator
