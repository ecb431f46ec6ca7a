#include "server/ring/transports/in_process_transport.h"

#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace ringattn::ring {

class InProcessRecv : public PendingOp {
 public:
  InProcessRecv(InProcessHub* hub, int source, int dest, uint64_t tag, std::span<std::byte> data)
      : hub_(hub), key_(source, dest, tag), data_(data) {}

  absl::Status Wait(absl::Duration timeout) override {
    std::unique_lock<std::mutex> lock(hub_->mu_);
    const auto deadline = std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(timeout);
    const int source = std::get<0>(key_);
    const int dest = std::get<1>(key_);
    while (true) {
      if (hub_->dead_[dest]) return absl::UnavailableError("transport aborted");
      auto it = hub_->mailboxes_.find(key_);
      if (it != hub_->mailboxes_.end()) {
        if (it->second.size() != data_.size()) {
          return absl::InternalError(absl::StrCat("message from rank ", source, " has ",
                                                  it->second.size(), " bytes, expected ",
                                                  data_.size()));
        }
        std::memcpy(data_.data(), it->second.data(), data_.size());
        hub_->mailboxes_.erase(it);
        return absl::OkStatus();
      }
      if (hub_->dead_[source]) {
        return absl::UnavailableError(absl::StrCat("rank ", source, " is gone"));
      }
      if (hub_->cv_.wait_until(lock, deadline) == std::cv_status::timeout) {
        return absl::DeadlineExceededError(absl::StrCat("no message from rank ", source, " within ",
                                                        absl::FormatDuration(timeout)));
      }
    }
  }

 private:
  InProcessHub* hub_;
  InProcessHub::Key key_;
  std::span<std::byte> data_;
};

namespace {

class DoneOp : public PendingOp {
 public:
  absl::Status Wait(absl::Duration /*timeout*/) override { return absl::OkStatus(); }
};

}  // namespace

class InProcessTransport : public Transport {
 public:
  InProcessTransport(InProcessHub* hub, int rank) : hub_(hub), rank_(rank) {}

  int rank() const override { return rank_; }
  int size() const override { return hub_->size(); }

  absl::StatusOr<std::unique_ptr<PendingOp>> Send(int peer, uint64_t tag,
                                                  std::span<const std::byte> data) override {
    if (peer < 0 || peer >= size()) {
      return absl::InvalidArgumentError(absl::StrCat("no rank ", peer));
    }
    {
      std::lock_guard<std::mutex> lock(hub_->mu_);
      if (hub_->dead_[rank_]) return absl::UnavailableError("transport aborted");
      hub_->mailboxes_[{rank_, peer, tag}].assign(data.begin(), data.end());
    }
    hub_->cv_.notify_all();
    return std::make_unique<DoneOp>();
  }

  absl::StatusOr<std::unique_ptr<PendingOp>> Recv(int peer, uint64_t tag,
                                                  std::span<std::byte> data) override {
    if (peer < 0 || peer >= size()) {
      return absl::InvalidArgumentError(absl::StrCat("no rank ", peer));
    }
    return std::make_unique<InProcessRecv>(hub_, peer, rank_, tag, data);
  }

  void Abort() override { hub_->Kill(rank_); }

 private:
  InProcessHub* hub_;
  int rank_;
};

InProcessHub::InProcessHub(int size) : dead_(size, false), size_(size) {}

std::unique_ptr<Transport> InProcessHub::Connect(int rank) {
  return std::make_unique<InProcessTransport>(this, rank);
}

void InProcessHub::Kill(int rank) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    dead_[rank] = true;
    for (auto it = mailboxes_.begin(); it != mailboxes_.end();) {
      it = std::get<0>(it->first) == rank ? mailboxes_.erase(it) : std::next(it);
    }
  }
  cv_.notify_all();
}

}  // namespace ringattn::ring
