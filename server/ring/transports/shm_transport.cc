#include "server/ring/transports/shm_transport.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <csignal>
#include <cstring>
#include <deque>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/status_macros.h"

namespace ringattn::ring {
namespace {

constexpr uint64_t kMagic = 0x316d6873676e6972;  // "ringshm1"
constexpr size_t kFrameBytes = 16;               // Tag and byte count.
// How often a progress thread with work in flight checks that its peers
// are alive, and its longest sleep when nothing moves.
constexpr absl::Duration kPeerCheck = absl::Milliseconds(100);
constexpr absl::Duration kIdleWait = absl::Milliseconds(50);

// The head of an inbox. Fields written after creation are only touched
// through std::atomic_ref: other processes read and write them.
struct InboxHeader {
  uint64_t magic;
  int64_t pid;
  uint64_t channel_bytes;
  int64_t size;
  alignas(64) uint32_t doorbell;  // Bumped by whoever gives the owner work.
  uint32_t aborted;               // Set by the owner when it aborts.
};

// One sender's ring buffer in an inbox: bytes [tail, head) are unread.
struct ChannelHeader {
  alignas(64) uint64_t head;  // Bytes ever written, by the sender.
  alignas(64) uint64_t tail;  // Bytes ever read, by the receiver.
};

constexpr size_t kHeaderBytes = (sizeof(InboxHeader) + 63) / 64 * 64;

size_t InboxBytes(int size, size_t channel_bytes) {
  return kHeaderBytes + static_cast<size_t>(size) * (sizeof(ChannelHeader) + channel_bytes);
}

template <typename T>
T Load(T& x) {
  return std::atomic_ref<T>(x).load(std::memory_order_acquire);
}
template <typename T>
void Publish(T& x, T v) {
  std::atomic_ref<T>(x).store(v, std::memory_order_release);
}

long Futex(uint32_t* addr, int op, uint32_t value, const timespec* timeout) {
  return syscall(SYS_futex, addr, op, value, timeout, nullptr, 0);
}

// A shared mapping of one inbox.
class Inbox {
 public:
  Inbox() = default;
  Inbox(std::byte* base, size_t bytes) : base_(base), bytes_(bytes) {}
  Inbox(Inbox&& o) noexcept
      : base_(std::exchange(o.base_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  Inbox& operator=(Inbox&& o) noexcept {
    std::swap(base_, o.base_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~Inbox() {
    if (base_ != nullptr) munmap(base_, bytes_);
  }

  InboxHeader& header() const { return *reinterpret_cast<InboxHeader*>(base_); }
  ChannelHeader& channel(int sender) const {
    return reinterpret_cast<ChannelHeader*>(base_ + kHeaderBytes)[sender];
  }
  std::byte* ring(int sender) const {
    const InboxHeader& h = header();
    return base_ + kHeaderBytes + static_cast<size_t>(h.size) * sizeof(ChannelHeader) +
           static_cast<size_t>(sender) * h.channel_bytes;
  }

  // Wakes the owner's progress thread.
  void Ring() const {
    std::atomic_ref<uint32_t>(header().doorbell).fetch_add(1, std::memory_order_acq_rel);
    Futex(&header().doorbell, FUTEX_WAKE, INT_MAX, nullptr);
  }

 private:
  std::byte* base_ = nullptr;
  size_t bytes_ = 0;
};

absl::StatusOr<Inbox> MapInbox(const std::string& name, int flags, size_t bytes) {
  const int fd = shm_open(name.c_str(), flags, 0600);
  if (fd < 0) {
    return absl::FailedPreconditionError(absl::StrCat("shm_open ", name, ": ", strerror(errno)));
  }
  absl::Status s = absl::OkStatus();
  if ((flags & O_CREAT) != 0) {
    // Reserve the pages now: a tmpfs that cannot hold them fails here, not
    // with SIGBUS halfway through a message.
    if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
      s = absl::FailedPreconditionError(absl::StrCat("ftruncate ", name, ": ", strerror(errno)));
    } else if (const int e = posix_fallocate(fd, 0, static_cast<off_t>(bytes)); e != 0) {
      s = absl::FailedPreconditionError(absl::StrCat(
          "cannot reserve ", bytes, " bytes of shared memory for ", name, ": ", strerror(e)));
    }
  } else {
    struct stat st {};
    if (fstat(fd, &st) != 0 || static_cast<size_t>(st.st_size) != bytes) {
      s = absl::FailedPreconditionError(
          absl::StrCat(name, " is not a ", bytes, "-byte ring inbox"));
    }
  }
  void* p = MAP_FAILED;
  if (s.ok()) {
    p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      s = absl::FailedPreconditionError(absl::StrCat("mmap ", name, ": ", strerror(errno)));
    }
  }
  close(fd);
  if (!s.ok()) {
    if ((flags & O_CREAT) != 0) shm_unlink(name.c_str());
    return s;
  }
  return Inbox(static_cast<std::byte*>(p), bytes);
}

// One posted send or receive. A message is its 16-byte frame and its bytes.
struct Op {
  bool send = false;
  int peer = 0;
  uint64_t tag = 0;
  std::byte* data = nullptr;
  size_t size = 0;
  std::byte frame[kFrameBytes] = {};  // Send: what goes first; receive: what came.
  size_t moved = 0;                   // Of kFrameBytes + size.
  bool busy = false;                  // The progress thread is copying.
  bool complete = false;
  absl::Status error;
};

// What the transport, its progress thread and its PendingOps share.
struct State {
  int rank = 0;
  int size = 1;
  bool check_pids = true;
  std::vector<Inbox> inboxes;  // By rank; this rank's is its own.

  std::mutex mu;
  std::condition_variable cv;
  // Per peer, in posting order. Guarded by mu.
  std::vector<std::deque<std::shared_ptr<Op>>> sends, recvs;
  absl::Status failure;  // Once set, every op fails with it. Guarded by mu.
  bool stop = false;     // Guarded by mu.

  Inbox& own() { return inboxes[rank]; }

  // Requires mu.
  void FailLocked(absl::Status s) {
    if (!failure.ok()) return;
    failure = std::move(s);
    Publish(own().header().aborted, uint32_t{1});
    for (auto* queues : {&sends, &recvs}) {
      for (auto& q : *queues) {
        for (auto& op : q) {
          if (!op->complete) op->error = failure;
        }
        q.clear();
      }
    }
    for (int p = 0; p < size; ++p) {
      if (p != rank) inboxes[p].Ring();
    }
    cv.notify_all();
  }
};

// Copies `n` bytes at stream position `pos` of a ring of `cap` bytes.
void ToRing(std::byte* ring, size_t cap, uint64_t pos, const std::byte* src, size_t n) {
  const size_t at = pos % cap;
  const size_t first = std::min(n, cap - at);
  std::memcpy(ring + at, src, first);
  std::memcpy(ring, src + first, n - first);
}
void FromRing(const std::byte* ring, size_t cap, uint64_t pos, std::byte* dst, size_t n) {
  const size_t at = pos % cap;
  const size_t first = std::min(n, cap - at);
  std::memcpy(dst, ring + at, first);
  std::memcpy(dst + first, ring, n - first);
}

// Moves what it can of the first op of `queue`; true if a byte moved.
// `move` copies up to its byte budget at a message offset and returns how
// many it moved, or an error.
template <typename Move>
bool Pump(State& st, std::deque<std::shared_ptr<Op>>& queue, Move move) {
  std::shared_ptr<Op> op;
  {
    std::lock_guard<std::mutex> lock(st.mu);
    if (queue.empty() || !st.failure.ok()) return false;
    op = queue.front();
    op->busy = true;
  }
  absl::StatusOr<size_t> moved = move(*op);
  std::lock_guard<std::mutex> lock(st.mu);
  op->busy = false;
  if (!moved.ok()) {
    st.FailLocked(moved.status());
    return true;
  }
  op->moved += *moved;
  if (op->moved == kFrameBytes + op->size && !op->complete) {
    op->complete = true;
    if (!queue.empty() && queue.front() == op) queue.pop_front();
  }
  st.cv.notify_all();
  return *moved > 0;
}

// The next piece of a send: frame first, then the bytes.
absl::StatusOr<size_t> MoveOut(State& st, Op& op) {
  Inbox& dst = st.inboxes[op.peer];
  ChannelHeader& ch = dst.channel(st.rank);
  const size_t cap = dst.header().channel_bytes;
  const uint64_t head = ch.head;  // Only this side writes it.
  const uint64_t tail = Load(ch.tail);
  size_t room = cap - static_cast<size_t>(head - tail);
  uint64_t pos = head;
  size_t moved = 0;
  while (room > 0 && op.moved + moved < kFrameBytes + op.size) {
    const size_t at = op.moved + moved;
    const std::byte* src = at < kFrameBytes ? op.frame + at : op.data + (at - kFrameBytes);
    const size_t left = at < kFrameBytes ? kFrameBytes - at : op.size - (at - kFrameBytes);
    const size_t n = std::min(room, left);
    ToRing(dst.ring(st.rank), cap, pos, src, n);
    pos += n;
    room -= n;
    moved += n;
  }
  if (moved > 0) {
    Publish(ch.head, pos);
    dst.Ring();
  }
  return moved;
}

// The next piece of a receive; the frame is checked once it is in.
absl::StatusOr<size_t> MoveIn(State& st, Op& op) {
  Inbox& own = st.own();
  ChannelHeader& ch = own.channel(op.peer);
  const size_t cap = own.header().channel_bytes;
  const uint64_t head = Load(ch.head);
  const uint64_t tail = ch.tail;  // Only this side writes it.
  size_t ready = static_cast<size_t>(head - tail);
  uint64_t pos = tail;
  size_t moved = 0;
  while (ready > 0 && op.moved + moved < kFrameBytes + op.size) {
    const size_t at = op.moved + moved;
    std::byte* dst = at < kFrameBytes ? op.frame + at : op.data + (at - kFrameBytes);
    const size_t left = at < kFrameBytes ? kFrameBytes - at : op.size - (at - kFrameBytes);
    const size_t n = std::min(ready, left);
    FromRing(own.ring(op.peer), cap, pos, dst, n);
    pos += n;
    ready -= n;
    moved += n;
    if (at + n == kFrameBytes) {
      uint64_t tag = 0, bytes = 0;
      std::memcpy(&tag, op.frame, 8);
      std::memcpy(&bytes, op.frame + 8, 8);
      if (tag != op.tag || bytes != op.size) {
        return absl::InternalError(absl::StrFormat(
            "message from rank %d has tag %#x and %u bytes; the receive posted here expects tag "
            "%#x and %u bytes (ranks posted in different orders)",
            op.peer, tag, bytes, op.tag, op.size));
      }
    }
  }
  if (moved > 0) {
    Publish(ch.tail, pos);
    st.inboxes[op.peer].Ring();  // Room for the sender.
  }
  return moved;
}

// A peer that aborted, or whose process is gone, fails the transport.
void CheckPeers(State& st) {
  for (int p = 0; p < st.size; ++p) {
    if (p == st.rank) continue;
    InboxHeader& h = st.inboxes[p].header();
    const bool aborted = Load(h.aborted) != 0;
    const bool gone = st.check_pids && kill(static_cast<pid_t>(h.pid), 0) != 0 && errno == ESRCH;
    if (aborted || gone) {
      std::lock_guard<std::mutex> lock(st.mu);
      st.FailLocked(absl::UnavailableError(
          aborted ? absl::StrCat("rank ", p, " aborted its transport")
                  : absl::StrCat("rank ", p, " (process ", h.pid, ") is gone")));
      return;
    }
  }
}

void ProgressLoop(State& st) {
  absl::Time next_check = absl::Now();
  for (;;) {
    const uint32_t seen = Load(st.own().header().doorbell);
    bool moved = false;
    bool pending = false;
    for (int p = 0; p < st.size; ++p) {
      moved |= Pump(st, st.sends[p], [&](Op& op) { return MoveOut(st, op); });
      moved |= Pump(st, st.recvs[p], [&](Op& op) { return MoveIn(st, op); });
    }
    {
      std::lock_guard<std::mutex> lock(st.mu);
      if (st.stop) return;
      for (int p = 0; p < st.size; ++p) pending |= !st.sends[p].empty() || !st.recvs[p].empty();
    }
    if (pending && absl::Now() >= next_check) {
      CheckPeers(st);
      next_check = absl::Now() + kPeerCheck;
    }
    if (!moved) {
      const timespec wait = absl::ToTimespec(kIdleWait);
      Futex(&st.own().header().doorbell, FUTEX_WAIT, seen, &wait);
    }
  }
}

class ShmOp final : public PendingOp {
 public:
  ShmOp(std::shared_ptr<State> st, std::shared_ptr<Op> op)
      : st_(std::move(st)), op_(std::move(op)) {}

  // An op dropped before it completed may be half-way through its
  // message: the stream with its peer is lost, so the transport fails.
  ~ShmOp() override {
    std::unique_lock<std::mutex> lock(st_->mu);
    st_->cv.wait(lock, [&] { return !op_->busy; });
    if (!op_->complete && op_->error.ok()) {
      st_->FailLocked(absl::UnavailableError(absl::StrCat(
          op_->send ? "a send to" : "a receive from", " rank ", op_->peer, " was abandoned")));
    }
  }

  absl::Status Wait(absl::Duration timeout) override {
    std::unique_lock<std::mutex> lock(st_->mu);
    const bool done = st_->cv.wait_for(lock, absl::ToChronoNanoseconds(timeout),
                                       [&] { return op_->complete || !op_->error.ok(); });
    if (op_->complete) return absl::OkStatus();
    if (!op_->error.ok()) return op_->error;
    (void)done;
    return absl::DeadlineExceededError(absl::StrCat(
        op_->send ? "send to" : "receive from", " rank ", op_->peer, " (", op_->moved, " of ",
        kFrameBytes + op_->size, " bytes moved) after ", absl::FormatDuration(timeout)));
  }

 private:
  std::shared_ptr<State> st_;
  std::shared_ptr<Op> op_;
};

class ShmTransport final : public Transport {
 public:
  explicit ShmTransport(std::shared_ptr<State> st) : st_(std::move(st)) {
    progress_ = std::thread([s = st_] { ProgressLoop(*s); });
  }
  ~ShmTransport() override {
    {
      std::lock_guard<std::mutex> lock(st_->mu);
      st_->stop = true;
    }
    st_->own().Ring();
    progress_.join();
  }

  int rank() const override { return st_->rank; }
  int size() const override { return st_->size; }

  absl::StatusOr<std::unique_ptr<PendingOp>> Send(int peer, uint64_t tag,
                                                  std::span<const std::byte> data) override {
    return Post(true, peer, tag, const_cast<std::byte*>(data.data()), data.size());
  }
  absl::StatusOr<std::unique_ptr<PendingOp>> Recv(int peer, uint64_t tag,
                                                  std::span<std::byte> data) override {
    return Post(false, peer, tag, data.data(), data.size());
  }

  void Abort() override {
    std::lock_guard<std::mutex> lock(st_->mu);
    st_->FailLocked(absl::UnavailableError("transport aborted"));
  }

 private:
  absl::StatusOr<std::unique_ptr<PendingOp>> Post(bool send, int peer, uint64_t tag,
                                                  std::byte* data, size_t size) {
    if (peer < 0 || peer >= st_->size) {
      return absl::InvalidArgumentError(absl::StrCat("no rank ", peer));
    }
    auto op = std::make_shared<Op>();
    op->send = send;
    op->peer = peer;
    op->tag = tag;
    op->data = data;
    op->size = size;
    const uint64_t bytes = size;
    std::memcpy(op->frame, &tag, 8);
    std::memcpy(op->frame + 8, &bytes, 8);
    {
      std::lock_guard<std::mutex> lock(st_->mu);
      if (!st_->failure.ok()) return st_->failure;
      (send ? st_->sends : st_->recvs)[peer].push_back(op);
    }
    st_->own().Ring();
    return std::unique_ptr<PendingOp>(std::make_unique<ShmOp>(st_, std::move(op)));
  }

  std::shared_ptr<State> st_;
  std::thread progress_;  // Last: starts once the rest is built.
};

std::string Key(const ShmOptions& o, absl::string_view what, int rank = -1) {
  std::string key = absl::StrCat("shm-gen-", o.generation, "/", what);
  if (rank >= 0) absl::StrAppend(&key, "/", rank);
  return key;
}

std::vector<std::string> AllKeys(const ShmOptions& o, absl::string_view what) {
  std::vector<std::string> keys;
  for (int r = 0; r < o.size; ++r) keys.push_back(Key(o, what, r));
  return keys;
}

std::vector<char> Chars(absl::string_view s) { return {s.begin(), s.end()}; }

}  // namespace

absl::StatusOr<std::unique_ptr<Transport>> ConnectShm(Store& store, const ShmOptions& options) {
  const ShmOptions& o = options;
  if (o.size < 1 || o.rank < 0 || o.rank >= o.size) {
    return absl::InvalidArgumentError(
        absl::StrCat("shm rank ", o.rank, " is not in [0, ", o.size, ")"));
  }
  if (o.channel_bytes < 4096) {
    return absl::InvalidArgumentError("shm channels need at least 4096 bytes");
  }
  if (o.rank == 0) {
    std::random_device rd;
    const uint64_t nonce = (uint64_t{rd()} << 32) ^ rd() ^ static_cast<uint64_t>(getpid());
    RINGATTN_RETURN_IF_ERROR(store.Set(Key(o, "nonce"), Chars(absl::StrFormat("%016x", nonce))));
  }
  RINGATTN_RETURN_IF_ERROR(store.Wait({Key(o, "nonce")}, o.timeout));
  RINGATTN_ASSIGN_OR_RETURN(const std::vector<char> nonce, store.Get(Key(o, "nonce")));
  auto name = [&](int r) {
    return absl::StrCat("/ringattn-", std::string(nonce.begin(), nonce.end()), "-", r);
  };
  const size_t bytes = InboxBytes(o.size, o.channel_bytes);

  auto st = std::make_shared<State>();
  st->rank = o.rank;
  st->size = o.size;
  st->inboxes.resize(o.size);
  st->sends.resize(o.size);
  st->recvs.resize(o.size);
  // Create this rank's inbox; a failure is a "no" vote, not an early
  // return, so the other ranks learn of it instead of timing out.
  absl::Status mine = absl::OkStatus();
  {
    absl::StatusOr<Inbox> own = MapInbox(name(o.rank), O_CREAT | O_EXCL | O_RDWR, bytes);
    if (own.ok()) {
      InboxHeader& h = own->header();
      h.pid = getpid();
      h.channel_bytes = o.channel_bytes;
      h.size = o.size;
      Publish(h.magic, kMagic);
      st->inboxes[o.rank] = *std::move(own);
    } else {
      mine = own.status();
    }
  }
  RINGATTN_RETURN_IF_ERROR(store.Set(Key(o, "created", o.rank), Chars("1")));
  absl::Status waited = store.Wait(AllKeys(o, "created"), o.timeout);
  for (int p = 0; p < o.size && mine.ok() && waited.ok(); ++p) {
    if (p == o.rank) continue;
    absl::StatusOr<Inbox> peer = MapInbox(name(p), O_RDWR, bytes);
    if (!peer.ok()) {
      mine = peer.status();
    } else if (Load(peer->header().magic) != kMagic ||
               peer->header().channel_bytes != o.channel_bytes || peer->header().size != o.size) {
      mine = absl::FailedPreconditionError(absl::StrCat(name(p), " is not rank ", p, "'s inbox"));
    } else {
      if (kill(static_cast<pid_t>(peer->header().pid), 0) != 0) st->check_pids = false;
      st->inboxes[p] = *std::move(peer);
    }
  }
  const std::string vote = mine.ok() ? "1" : std::string(mine.message());
  absl::Status s = waited.ok() ? store.Set(Key(o, "vote", o.rank), Chars(vote)) : waited;
  if (s.ok()) s = store.Wait(AllKeys(o, "vote"), o.timeout);
  // Every rank has mapped what it could: the names can go.
  shm_unlink(name(o.rank).c_str());
  RINGATTN_RETURN_IF_ERROR(s);
  for (int p = 0; p < o.size; ++p) {
    RINGATTN_ASSIGN_OR_RETURN(const std::vector<char> v, store.Get(Key(o, "vote", p)));
    if (v != Chars("1")) {
      return absl::FailedPreconditionError(
          absl::StrCat("the ring's ranks do not all share memory: rank ", p, ": ",
                       std::string(v.begin(), v.end())));
    }
  }
  return std::unique_ptr<Transport>(std::make_unique<ShmTransport>(std::move(st)));
}

}  // namespace ringattn::ring
