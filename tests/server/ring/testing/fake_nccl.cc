#include "tests/server/ring/testing/fake_nccl.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace ringattn::ring::testing {

struct FakeNcclHub::Op {
  P2pOp op;
  Group* group = nullptr;
  bool done = false;
  uint64_t received_tag = 0;
};

struct FakeNcclHub::Group {
  int rank = 0;
  std::vector<Op> ops;
  size_t done = 0;
  absl::Status error;
};

class FakeNcclHub::Launched : public LaunchedGroup {
 public:
  Launched(FakeNcclHub* hub, std::shared_ptr<Group> group) : hub_(hub), group_(std::move(group)) {}

  absl::StatusOr<bool> Poll() override {
    std::lock_guard<std::mutex> lock(hub_->mu_);
    hub_->ProgressLocked();
    if (!group_->error.ok()) return group_->error;
    if (group_->done == group_->ops.size()) return true;
    for (const Op& op : group_->ops) {
      if (!op.done && (hub_->dead_[op.op.peer] || hub_->dead_[group_->rank])) {
        return absl::UnavailableError(absl::StrCat("fake NCCL: rank ", op.op.peer, " is gone"));
      }
    }
    return false;
  }

  uint64_t ReceivedTag(size_t index) const override {
    std::lock_guard<std::mutex> lock(hub_->mu_);
    return group_->ops[index].received_tag;
  }

 private:
  FakeNcclHub* hub_;
  std::shared_ptr<Group> group_;
};

FakeNcclHub::FakeNcclHub(int size)
    : size_(size),
      streams_(size),
      sends_(size, std::vector<std::deque<Op*>>(size)),
      recvs_(size, std::vector<std::deque<Op*>>(size)),
      dead_(size, false),
      aborts_(size, 0) {}

FakeNcclHub::~FakeNcclHub() = default;

OpBatcherHooks FakeNcclHub::Hooks(int rank) {
  OpBatcherHooks hooks;
  hooks.launch = [this, rank](std::span<const P2pOp> ops) { return Launch(rank, ops); };
  hooks.abort = [this, rank] {
    std::lock_guard<std::mutex> lock(mu_);
    ++aborts_[rank];
    dead_[rank] = true;
  };
  return hooks;
}

std::unique_ptr<Transport> FakeNcclHub::Connect(int rank) {
  std::lock_guard<std::mutex> lock(mu_);
  return std::make_unique<BatchedTransport>(rank, size_, Hooks(rank),
                                            /*device_memory=*/static_cast<bool>(copy_));
}

void FakeNcclHub::CarryDeviceMemory(CopyFn copy) {
  std::lock_guard<std::mutex> lock(mu_);
  copy_ = std::move(copy);
}

void FakeNcclHub::Kill(int rank) {
  std::lock_guard<std::mutex> lock(mu_);
  dead_[rank] = true;
}

int FakeNcclHub::aborts(int rank) const {
  std::lock_guard<std::mutex> lock(mu_);
  return aborts_[rank];
}

absl::StatusOr<std::unique_ptr<LaunchedGroup>> FakeNcclHub::Launch(int rank,
                                                                   std::span<const P2pOp> ops) {
  std::lock_guard<std::mutex> lock(mu_);
  if (dead_[rank]) return absl::UnavailableError("fake NCCL: communicator aborted");
  auto g = std::make_shared<Group>();
  g->rank = rank;
  g->ops.resize(ops.size());
  for (size_t i = 0; i < ops.size(); ++i) {
    g->ops[i].op = ops[i];
    g->ops[i].group = g.get();
    if (ops[i].peer < 0 || ops[i].peer >= size_) {
      return absl::InvalidArgumentError(absl::StrCat("fake NCCL: no rank ", ops[i].peer));
    }
  }
  for (Op& op : g->ops) {
    if (op.op.kind == P2pOp::Kind::kSend) {
      sends_[rank][op.op.peer].push_back(&op);
    } else {
      recvs_[rank][op.op.peer].push_back(&op);
    }
  }
  streams_[rank].push_back(g);
  ProgressLocked();
  return std::unique_ptr<LaunchedGroup>(std::make_unique<Launched>(this, std::move(g)));
}

bool FakeNcclHub::RunningLocked(const Group& g) const {
  const auto& stream = streams_[g.rank];
  return !stream.empty() && stream.front().get() == &g;
}

void FakeNcclHub::ProgressLocked() {
  for (bool moved = true; moved;) {
    moved = false;
    for (int a = 0; a < size_; ++a) {
      for (int b = 0; b < size_; ++b) {
        auto& sends = sends_[a][b];
        auto& recvs = recvs_[b][a];
        while (!sends.empty() && !recvs.empty() && RunningLocked(*sends.front()->group) &&
               RunningLocked(*recvs.front()->group)) {
          Op* s = sends.front();
          Op* r = recvs.front();
          sends.pop_front();
          recvs.pop_front();
          if (s->op.size != r->op.size) {
            // NCCL leaves this undefined; the fake reports it.
            const absl::Status e = absl::InternalError(
                absl::StrCat("fake NCCL: ", s->op.size, " bytes sent from rank ", a, " to ", b,
                             " where ", r->op.size, " are received"));
            s->group->error = e;
            r->group->error = e;
          } else if (s->op.size > 0) {
            if (copy_) {
              copy_(r->op.data, s->op.data, s->op.size);
            } else {
              std::memcpy(r->op.data, s->op.data, s->op.size);
            }
          }
          r->received_tag = s->op.tag;
          s->done = r->done = true;
          ++s->group->done;
          ++r->group->done;
          moved = true;
        }
      }
    }
    // A group whose operations are all done leaves its stream; the next runs.
    for (auto& stream : streams_) {
      while (!stream.empty() && stream.front()->done == stream.front()->ops.size()) {
        stream.pop_front();
        moved = true;
      }
    }
  }
}

}  // namespace ringattn::ring::testing
