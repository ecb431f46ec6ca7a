#include "server/ring/transports/gloo_transport.h"

#include <chrono>
#include <exception>
#include <mutex>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gloo/rendezvous/context.h"
#include "gloo/rendezvous/prefix_store.h"
#include "gloo/rendezvous/store.h"
#include "gloo/transport/pair.h"
#include "gloo/transport/tcp/device.h"
#include "gloo/transport/unbound_buffer.h"

namespace ringattn::ring {
namespace {

std::chrono::milliseconds Millis(absl::Duration d) {
  return std::chrono::milliseconds(absl::ToInt64Milliseconds(d));
}

// Presents the project's store to Gloo's rendezvous.
class GlooStoreAdapter : public gloo::rendezvous::Store {
 public:
  GlooStoreAdapter(ring::Store& store, absl::Duration timeout) : store_(store), timeout_(timeout) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    const absl::Status s = store_.Set(key, data);
    if (!s.ok()) throw std::runtime_error(s.ToString());
  }
  std::vector<char> get(const std::string& key) override {
    wait({key});
    absl::StatusOr<std::vector<char>> v = store_.Get(key);
    if (!v.ok()) throw std::runtime_error(v.status().ToString());
    return *std::move(v);
  }
  void wait(const std::vector<std::string>& keys) override { wait(keys, Millis(timeout_)); }
  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override {
    const absl::Status s = store_.Wait(keys, absl::FromChrono(timeout));
    if (!s.ok()) throw std::runtime_error(s.ToString());
  }

 private:
  ring::Store& store_;
  absl::Duration timeout_;
};

absl::Status FromException(const std::exception& e, absl::string_view what) {
  const absl::string_view msg = e.what();
  if (absl::StrContains(msg, "Timed out") || absl::StrContains(msg, "timed out")) {
    return absl::DeadlineExceededError(absl::StrCat(what, ": ", msg));
  }
  return absl::UnavailableError(absl::StrCat(what, ": ", msg));
}

// The operations in flight on one transport, so that an abort from another
// thread can wake their waits: dropping the context alone would not, since
// every buffer keeps Gloo's context alive.
struct InFlight {
  std::mutex mu;
  bool aborted = false;                             // Guarded by mu.
  std::set<gloo::transport::UnboundBuffer*> sends;  // Guarded by mu.
  std::set<gloo::transport::UnboundBuffer*> recvs;  // Guarded by mu.
};

class GlooOp : public PendingOp {
 public:
  // Requires `in_flight->mu`: registered before an abort can miss it.
  GlooOp(std::unique_ptr<gloo::transport::UnboundBuffer> buffer, bool is_send, int peer,
         std::shared_ptr<InFlight> in_flight)
      : buffer_(std::move(buffer)),
        is_send_(is_send),
        peer_(peer),
        in_flight_(std::move(in_flight)) {
    (is_send_ ? in_flight_->sends : in_flight_->recvs).insert(buffer_.get());
  }
  ~GlooOp() override {
    std::lock_guard<std::mutex> lock(in_flight_->mu);
    (is_send_ ? in_flight_->sends : in_flight_->recvs).erase(buffer_.get());
  }

  absl::Status Wait(absl::Duration timeout) override {
    try {
      const bool done =
          is_send_ ? buffer_->waitSend(Millis(timeout)) : buffer_->waitRecv(Millis(timeout));
      if (!done) return absl::UnavailableError("transport aborted");
      return absl::OkStatus();
    } catch (const std::exception& e) {
      return FromException(e, absl::StrCat(is_send_ ? "send to" : "receive from", " rank ", peer_));
    }
  }

 private:
  std::unique_ptr<gloo::transport::UnboundBuffer> buffer_;
  bool is_send_;
  int peer_;
  std::shared_ptr<InFlight> in_flight_;
};

class GlooTransport : public Transport {
 public:
  explicit GlooTransport(std::shared_ptr<gloo::rendezvous::Context> context)
      : context_(std::move(context)), rank_(context_->rank), size_(context_->size) {}

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  absl::StatusOr<std::unique_ptr<PendingOp>> Send(int peer, uint64_t tag,
                                                  std::span<const std::byte> data) override {
    return Start(peer, tag, const_cast<std::byte*>(data.data()), data.size(), true);
  }

  absl::StatusOr<std::unique_ptr<PendingOp>> Recv(int peer, uint64_t tag,
                                                  std::span<std::byte> data) override {
    return Start(peer, tag, data.data(), data.size(), false);
  }

  // May come from another thread while the ring waits: wakes every wait in
  // flight here, then closes every pair so that peers blocked on this rank
  // see the connection go and fail at once (a closed pair alone does not
  // wake this side's waits on it).
  void Abort() override {
    std::lock_guard<std::mutex> lock(mu_);
    {
      std::lock_guard<std::mutex> ops(in_flight_->mu);
      if (in_flight_->aborted) return;
      in_flight_->aborted = true;
      for (gloo::transport::UnboundBuffer* b : in_flight_->sends) b->abortWaitSend();
      for (gloo::transport::UnboundBuffer* b : in_flight_->recvs) b->abortWaitRecv();
    }
    if (!context_) return;
    for (int peer = 0; peer < size_; ++peer) {
      if (peer == rank_) continue;
      try {
        if (std::unique_ptr<gloo::transport::Pair>& pair = context_->getPair(peer)) pair->close();
      } catch (const std::exception&) {
        // Already broken: nothing left to close.
      }
    }
    context_.reset();
  }

 private:
  absl::StatusOr<std::unique_ptr<PendingOp>> Start(int peer, uint64_t tag, std::byte* data,
                                                   size_t size, bool is_send) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!context_) return absl::UnavailableError("transport aborted");
    if (peer < 0 || peer >= size_) {
      return absl::InvalidArgumentError(absl::StrCat("no rank ", peer));
    }
    try {
      // Gloo's buffers only read from `data` on send; its API is not const.
      auto buffer = context_->createUnboundBuffer(data, size);
      if (is_send) {
        buffer->send(peer, tag);
      } else {
        buffer->recv(peer, tag);
      }
      std::lock_guard<std::mutex> ops(in_flight_->mu);
      return std::unique_ptr<PendingOp>(
          std::make_unique<GlooOp>(std::move(buffer), is_send, peer, in_flight_));
    } catch (const std::exception& e) {
      return FromException(e, absl::StrCat(is_send ? "send to" : "receive from", " rank ", peer));
    }
  }

  std::mutex mu_;
  std::shared_ptr<gloo::rendezvous::Context> context_;  // Null once aborted. Guarded by mu_.
  const std::shared_ptr<InFlight> in_flight_ = std::make_shared<InFlight>();
  const int rank_;
  const int size_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Transport>> ConnectGloo(Store& store, const GlooOptions& options) {
  if (options.size < 1 || options.rank < 0 || options.rank >= options.size) {
    return absl::InvalidArgumentError(
        absl::StrCat("gloo rank ", options.rank, " is not in [0, ", options.size, ")"));
  }
  try {
    gloo::transport::tcp::attr attr;
    attr.hostname = options.hostname;
    auto device = gloo::transport::tcp::CreateDevice(attr);
    GlooStoreAdapter adapter(store, options.timeout);
    gloo::rendezvous::PrefixStore prefixed(absl::StrCat("ring-gen-", options.generation), adapter);
    auto context = std::make_shared<gloo::rendezvous::Context>(options.rank, options.size);
    context->setTimeout(Millis(options.timeout));
    context->connectFullMesh(prefixed, device);
    return std::unique_ptr<Transport>(std::make_unique<GlooTransport>(std::move(context)));
  } catch (const std::exception& e) {
    return FromException(e, absl::StrCat("gloo rendezvous of rank ", options.rank));
  }
}

}  // namespace ringattn::ring
