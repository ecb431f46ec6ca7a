#include "server/coordinator/session_table.h"

#include <optional>
#include <random>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/status_macros.h"

namespace ringattn::coordinator {
namespace {

// Sessions opened under a proven identity are that client's alone; without
// one (no tokens, no client certificates) the handle is the capability.
bool MayUse(const std::string& owner, const std::string& caller) {
  return !absl::StartsWith(owner, "id:") || owner == caller;
}

}  // namespace

SessionTable::Reservation::Reservation(Reservation&& other) noexcept
    : table_(std::exchange(other.table_, nullptr)),
      handle_(std::move(other.handle_)),
      client_(std::move(other.client_)),
      bytes_(other.bytes_) {}

SessionTable::Reservation::~Reservation() {
  if (table_ != nullptr) table_->Unreserve(client_, bytes_);
}

SessionTable::SessionTable(SessionLimits limits, CoordinatorMetrics& metrics,
                           ReleaseOnWorkers release)
    : limits_(limits), metrics_(metrics), release_(std::move(release)) {
  metrics_.memory_budget_bytes.Set(static_cast<double>(limits_.memory_budget_bytes));
}

absl::StatusOr<SessionTable::Reservation> SessionTable::Reserve(const std::string& client,
                                                                uint64_t bytes) {
  std::vector<std::string> expired;
  absl::StatusOr<Reservation> reserved = [&]() -> absl::StatusOr<Reservation> {
    std::lock_guard<std::mutex> lock(mu_);
    expired = DropExpiredLocked();
    const ClientUsage usage = clients_.contains(client) ? clients_[client] : ClientUsage{};
    if (limits_.max_sessions_per_client > 0 && usage.sessions >= limits_.max_sessions_per_client) {
      return absl::ResourceExhaustedError(absl::StrCat("client '", client, "' has ", usage.sessions,
                                                       " sessions open, its limit; release some "
                                                       "first"));
    }
    RINGATTN_RETURN_IF_ERROR(FitsLocked(client, usage, bytes));
    ClientUsage& mine = clients_[client];
    ++mine.sessions;
    mine.bytes += bytes;
    bytes_held_ += bytes;
    PublishLocked();
    // 128 bits from the OS's random source: without tokens or client
    // certificates a handle is the only key to its session, so it must not
    // be guessable from others (the counter only orders them in logs).
    std::random_device rd;
    return Reservation(
        this, absl::StrFormat("s%d-%08x%08x%08x%08x", ++next_session_, rd(), rd(), rd(), rd()),
        client, bytes);
  }();
  release_(expired);
  return reserved;
}

absl::Status SessionTable::FitsLocked(const std::string& client, const ClientUsage& usage,
                                      uint64_t bytes) const {
  if (bytes_held_ + bytes > limits_.memory_budget_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "memory budget exceeded: this session needs ", bytes, " more bytes, ", bytes_held_, " of ",
        limits_.memory_budget_bytes, " are held; release sessions or lower the batch"));
  }
  if (limits_.max_client_memory_bytes > 0 &&
      usage.bytes + bytes > limits_.max_client_memory_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("client '", client, "' holds ", usage.bytes, " bytes of session state; ",
                     bytes, " more would pass its limit of ", limits_.max_client_memory_bytes,
                     "; release sessions first"));
  }
  return absl::OkStatus();
}

absl::Status SessionTable::Reservation::Grow(uint64_t bytes) {
  if (table_ == nullptr || bytes == 0) return absl::OkStatus();
  std::lock_guard<std::mutex> lock(table_->mu_);
  ClientUsage& mine = table_->clients_[client_];
  RINGATTN_RETURN_IF_ERROR(table_->FitsLocked(client_, mine, bytes));
  mine.bytes += bytes;
  table_->bytes_held_ += bytes;
  bytes_ += bytes;
  table_->PublishLocked();
  return absl::OkStatus();
}

void SessionTable::Open(Reservation reservation, Session session) {
  std::lock_guard<std::mutex> lock(mu_);
  reservation.table_ = nullptr;  // Its bytes are the session's now.
  sessions_.insert_or_assign(
      reservation.handle_, Entry{std::move(session), reservation.bytes_, absl::Now() + limits_.ttl,
                                 reservation.client_});
  PublishLocked();
}

absl::StatusOr<Session> SessionTable::Find(const std::string& handle, const std::string& caller) {
  std::optional<Session> found;
  std::vector<std::string> expired;
  {
    std::lock_guard<std::mutex> lock(mu_);
    expired = DropExpiredLocked();
    auto it = sessions_.find(handle);
    if (it != sessions_.end() && MayUse(it->second.client, caller)) found = it->second.session;
  }
  release_(expired);
  if (!found) {
    return absl::NotFoundError(
        absl::StrCat("session handle '", handle, "' is unknown, released or expired"));
  }
  return *std::move(found);
}

absl::Status SessionTable::Release(const std::string& handle, const std::string& caller) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sessions_.find(handle);
    if (it == sessions_.end() || !MayUse(it->second.client, caller)) {
      return absl::NotFoundError(absl::StrCat("session handle '", handle, "' is unknown"));
    }
    EraseLocked(it);
  }
  release_({handle});
  return absl::OkStatus();
}

void SessionTable::Drop(const std::string& handle) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = sessions_.find(handle); it != sessions_.end()) EraseLocked(it);
  }
  release_({handle});
}

int SessionTable::Count() {
  std::vector<std::string> expired;
  int count = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    expired = DropExpiredLocked();
    count = static_cast<int>(sessions_.size());
  }
  release_(expired);
  return count;
}

void SessionTable::Unreserve(const std::string& client, uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  ForgetLocked(bytes, client);
}

void SessionTable::PublishLocked() {
  metrics_.service.sessions_open.Set(static_cast<double>(sessions_.size()));
  metrics_.service.memory_held_bytes.Set(static_cast<double>(bytes_held_));
}

void SessionTable::ForgetLocked(uint64_t bytes, const std::string& client) {
  bytes_held_ -= bytes;
  auto it = clients_.find(client);
  if (it != clients_.end()) {
    it->second.bytes -= bytes;
    if (--it->second.sessions <= 0) clients_.erase(it);
  }
  PublishLocked();
}

SessionTable::Entries::iterator SessionTable::EraseLocked(Entries::iterator it) {
  const uint64_t bytes = it->second.bytes;
  const std::string client = it->second.client;
  it = sessions_.erase(it);
  ForgetLocked(bytes, client);
  return it;
}

std::vector<std::string> SessionTable::DropExpiredLocked() {
  const absl::Time now = absl::Now();
  std::vector<std::string> expired;
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    if (it->second.expires < now) {
      expired.push_back(it->first);
      it = EraseLocked(it);
    } else {
      ++it;
    }
  }
  return expired;
}

}  // namespace ringattn::coordinator
