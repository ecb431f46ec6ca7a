#include "server/ring/ring_attention.h"

#include <chrono>
#include <cmath>
#include <limits>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/convert.h"
#include "kernels/merge.h"
#include "kernels/status_macros.h"
#include "server/ring/chunk_message.h"
#include "server/ring/schedule.h"

namespace ringattn::ring {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::span<std::byte> Bytes(std::vector<float>& v) { return std::as_writable_bytes(std::span(v)); }

// Checks the shard against its own shapes, so that the kernels' errors can
// only be ones every rank hits alike.
absl::Status CheckShard(const ShardRef& s, const Transport& t) {
  if (s.shape.batch < 1 || s.shape.heads < 1 || s.shape.kv_heads < 1 || s.shape.q_len < 1 ||
      s.shape.head_dim < 1) {
    return absl::InvalidArgumentError("shard sizes must be positive");
  }
  if (s.shape.kv_len != s.shape.q_len) {
    return absl::InvalidArgumentError(absl::StrCat("a shard's kv_len (", s.shape.kv_len,
                                                   ") must equal its q_len (", s.shape.q_len, ")"));
  }
  const size_t esize = kernels::DTypeSize(s.shape.dtype);
  const auto q_bytes =
      static_cast<size_t>(s.shape.batch * s.shape.heads * s.shape.q_len * s.shape.head_dim) * esize;
  const auto kv_bytes =
      static_cast<size_t>(s.shape.batch * s.shape.kv_heads * s.shape.q_len * s.shape.head_dim) *
      esize;
  const auto tokens = static_cast<size_t>(s.shape.batch * s.shape.q_len);
  if (s.q.size() != q_bytes || s.k.size() != kv_bytes || s.v.size() != kv_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("shard tensors have ", s.q.size(), "/",
                                                   s.k.size(), "/", s.v.size(), " bytes, expected ",
                                                   q_bytes, "/", kv_bytes));
  }
  if (s.doc.size() != tokens || s.vision.size() != tokens || s.padding.size() != tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard metadata must have B * L = ", tokens, " entries"));
  }
  if (t.size() < 1 || t.rank() < 0 || t.rank() >= t.size()) {
    return absl::InvalidArgumentError("transport has no valid rank");
  }
  return absl::OkStatus();
}

// On error, aborts the transport so that peers blocked on this rank fail now
// rather than at their timeout.
template <typename T>
absl::StatusOr<T> AbortOnError(Transport& transport, absl::StatusOr<T> result) {
  if (!result.ok()) transport.Abort();
  return result;
}

// Waits for `op`, bounded by the call's timeout and by its stall bound; a
// wait that outlasts the stall bound fails as a stalled peer.
absl::Status WaitOp(PendingOp& op, const RingCall& call) {
  if (call.stall_timeout >= call.timeout) return op.Wait(call.timeout);
  const absl::Status s = op.Wait(call.stall_timeout);
  if (!absl::IsDeadlineExceeded(s)) return s;
  return absl::UnavailableError(absl::StrCat("no progress for ",
                                             absl::FormatDuration(call.stall_timeout),
                                             " (the ring stalled): ", s.message()));
}

// The K/V chunk exchange of one step: post the receive of the next chunk and
// the send of the current one, then (after compute) wait for both.
class KvExchange {
 public:
  KvExchange(Transport& t, const RingCall& call, MessageKind kind)
      : t_(t), call_(call), kind_(kind) {}

  absl::Status Post(int next_step, std::span<const std::byte> current, std::span<std::byte> next) {
    const uint64_t tag = MakeTag(call_.generation, call_.sequence, next_step, kind_);
    const int size = t_.size();
    RINGATTN_ASSIGN_OR_RETURN(recv_, t_.Recv((t_.rank() + size - 1) % size, tag, next));
    RINGATTN_ASSIGN_OR_RETURN(send_, t_.Send((t_.rank() + 1) % size, tag, current));
    bytes_ = static_cast<int64_t>(current.size());
    // Everything this step posted goes out now, as one group, so it travels
    // while the step computes.
    return t_.Flush();
  }

  // Waits for the posted pair (no-op when nothing was posted).
  absl::Status Wait(StepStats& stats) {
    if (!recv_) return absl::OkStatus();
    const Clock::time_point t0 = Clock::now();
    absl::Status s = WaitOp(*send_, call_);
    if (s.ok()) s = WaitOp(*recv_, call_);
    stats.wait_seconds += Since(t0);
    stats.bytes_sent += bytes_;
    stats.bytes_received += bytes_;
    send_.reset();
    recv_.reset();
    if (!s.ok()) {
      return absl::Status(s.code(), absl::StrCat("ring step ", stats.step, " on rank ", t_.rank(),
                                                 ": ", s.message()));
    }
    return absl::OkStatus();
  }

 private:
  Transport& t_;
  const RingCall& call_;
  MessageKind kind_;
  std::unique_ptr<PendingOp> send_, recv_;
  int64_t bytes_ = 0;
};

void Summarize(RingStats& stats, Clock::time_point t0) {
  stats.total_seconds = Since(t0);
  for (const StepStats& s : stats.steps) {
    stats.compute_seconds += s.compute_seconds;
    stats.wait_seconds += s.wait_seconds;
    stats.bytes_sent += s.bytes_sent;
    stats.bytes_received += s.bytes_received;
  }
}

absl::StatusOr<RingSchedule> ScheduleFor(const Transport& t, const ShardRef& shard,
                                         const RingCall& call) {
  ScheduleConfig config;
  config.cp = t.size();
  config.rank = t.rank();
  config.shard_len = shard.shape.q_len;
  config.layer = call.layer;
  config.batch_has_vision = call.batch_has_vision;
  return MakeSchedule(config);
}

kernels::TensorRef QueryRef(const ShardRef& s, std::span<const std::byte> bytes) {
  return {s.shape.dtype,
          {s.shape.batch, s.shape.heads, s.shape.q_len, s.shape.head_dim},
          bytes.data(),
          bytes.size()};
}

absl::StatusOr<RingForwardResult> Forward(Transport& t, kernels::ChunkBackend& backend,
                                          const ShardRef& shard, const RingCall& call) {
  const Clock::time_point t0 = Clock::now();
  RINGATTN_RETURN_IF_ERROR(CheckShard(shard, t));
  RINGATTN_ASSIGN_OR_RETURN(const RingSchedule schedule, ScheduleFor(t, shard, call));
  const ChunkLayout layout(shard);
  const int64_t rows = shard.shape.batch * shard.shape.heads * shard.shape.q_len;
  const int64_t elems = rows * shard.shape.head_dim;

  // Double buffering: compute on `current` while `next` arrives.
  std::vector<std::byte> current = layout.Pack(shard);
  std::vector<std::byte> next(layout.size());
  std::vector<float> acc(elems, 0.0f);
  std::vector<float> lse(rows, -std::numeric_limits<float>::infinity());
  std::vector<float> part(elems), part_lse(rows);
  const kernels::TokenMetaRef q_meta{shard.doc, shard.vision, shard.padding,
                                     t.rank() * shard.shape.q_len};
  RingForwardResult result;
  KvExchange exchange(t, call, MessageKind::kForwardKv);
  for (const RingStep& step : schedule.steps) {
    StepStats stats{step.step, step.chunk_owner, step.compute};
    stats.pairs = step.pairs * shard.shape.batch * shard.shape.heads;
    // Pass the held chunk on while computing on it (the last step keeps it).
    if (step.step < schedule.exchanges) {
      RINGATTN_RETURN_IF_ERROR(exchange.Post(step.step + 1, current, next));
    }
    if (step.compute) {
      const Clock::time_point c0 = Clock::now();
      kernels::ForwardChunkArgs args;
      args.q = QueryRef(shard, shard.q);
      args.k = layout.K(current);
      args.v = layout.V(current);
      args.q_meta = q_meta;
      args.kv_meta = layout.Meta(current, step.chunk_owner * shard.shape.q_len);
      args.layer = call.layer;
      args.out = part;
      args.lse = part_lse;
      RINGATTN_RETURN_IF_ERROR(backend.Forward(args));
      // Merge in fp32: lse = logaddexp(lse, lse_s), out rescaled to match.
      RINGATTN_RETURN_IF_ERROR(
          kernels::MergePartial(acc, lse, part, part_lse, shard.shape.head_dim));
      stats.compute_seconds = Since(c0);
    }
    RINGATTN_RETURN_IF_ERROR(exchange.Wait(stats));
    std::swap(current, next);
    result.stats.steps.push_back(stats);
  }
  result.out.resize(elems * kernels::DTypeSize(shard.shape.dtype));
  kernels::FromF32(shard.shape.dtype, acc.data(), elems, result.out.data());
  result.lse = std::move(lse);
  Summarize(result.stats, t0);
  return result;
}

absl::StatusOr<RingBackwardResult> Backward(Transport& t, kernels::ChunkBackend& backend,
                                            const ShardRef& shard, std::span<const std::byte> out,
                                            std::span<const std::byte> dout,
                                            std::span<const float> lse, const RingCall& call) {
  const Clock::time_point t0 = Clock::now();
  RINGATTN_RETURN_IF_ERROR(CheckShard(shard, t));
  if (out.size() != shard.q.size() || dout.size() != shard.q.size() ||
      static_cast<int64_t>(lse.size()) !=
          shard.shape.batch * shard.shape.heads * shard.shape.q_len) {
    return absl::InvalidArgumentError("out, dout and lse must match the query shard");
  }
  RINGATTN_ASSIGN_OR_RETURN(const RingSchedule schedule, ScheduleFor(t, shard, call));
  const ChunkLayout layout(shard);
  const int64_t kv_elems =
      shard.shape.batch * shard.shape.kv_heads * shard.shape.q_len * shard.shape.head_dim;
  const int size = t.size();
  const int prev = (t.rank() + size - 1) % size;
  const int next_rank = (t.rank() + 1) % size;

  std::vector<std::byte> current = layout.Pack(shard);
  std::vector<std::byte> next(layout.size());
  RingBackwardResult result;
  result.dq.assign(shard.shape.batch * shard.shape.heads * shard.shape.q_len * shard.shape.head_dim,
                   0.0f);
  // This rank's dK/dV of the held chunk ([dK | dV], fp32), and the two
  // accumulators that travel with the chunks, alternating so one can be
  // received into while the other is still being sent.
  std::vector<float> contrib(2 * kv_elems);
  std::vector<float> acc[2] = {std::vector<float>(2 * kv_elems), std::vector<float>(2 * kv_elems)};
  std::unique_ptr<PendingOp> acc_send[2];
  const kernels::TokenMetaRef q_meta{shard.doc, shard.vision, shard.padding,
                                     t.rank() * shard.shape.q_len};
  KvExchange exchange(t, call, MessageKind::kBackwardKv);
  auto wait = [&](std::unique_ptr<PendingOp>& op, StepStats& stats) -> absl::Status {
    if (!op) return absl::OkStatus();
    const Clock::time_point w0 = Clock::now();
    absl::Status s = WaitOp(*op, call);
    op.reset();
    stats.wait_seconds += Since(w0);
    if (!s.ok()) {
      return absl::Status(s.code(), absl::StrCat("ring backward step ", stats.step, " on rank ",
                                                 t.rank(), ": ", s.message()));
    }
    return absl::OkStatus();
  };

  for (const RingStep& step : schedule.steps) {
    const int i = step.step;
    StepStats stats{i, step.chunk_owner, step.compute};
    stats.pairs = step.pairs * shard.shape.batch * shard.shape.heads;
    std::vector<float>& cur_acc = acc[i % 2];
    // The accumulator of the held chunk arrives from the previous rank once
    // it has added its share; receive it into the buffer sent two steps ago.
    std::unique_ptr<PendingOp> acc_recv;
    if (i > 0) {
      RINGATTN_RETURN_IF_ERROR(wait(acc_send[i % 2], stats));
      RINGATTN_ASSIGN_OR_RETURN(
          acc_recv,
          t.Recv(prev, MakeTag(call.generation, call.sequence, i, MessageKind::kGradAccumulator),
                 Bytes(cur_acc)));
    }
    if (i < schedule.exchanges) {
      RINGATTN_RETURN_IF_ERROR(exchange.Post(i + 1, current, next));
    }
    std::fill(contrib.begin(), contrib.end(), 0.0f);
    if (step.compute) {
      const Clock::time_point c0 = Clock::now();
      kernels::BackwardChunkArgs args;
      args.q = QueryRef(shard, shard.q);
      args.k = layout.K(current);
      args.v = layout.V(current);
      args.out = QueryRef(shard, out);
      args.dout = QueryRef(shard, dout);
      args.lse = lse;
      args.q_meta = q_meta;
      args.kv_meta = layout.Meta(current, step.chunk_owner * shard.shape.q_len);
      args.layer = call.layer;
      args.dq = result.dq;  // dQ accumulates locally.
      args.dk = std::span(contrib).first(kv_elems);
      args.dv = std::span(contrib).subspan(kv_elems);
      RINGATTN_RETURN_IF_ERROR(backend.Backward(args));
      stats.compute_seconds = Since(c0);
    }
    // Add this rank's share to the chunk's accumulator (fp32) and pass it on.
    if (i > 0) {
      RINGATTN_RETURN_IF_ERROR(wait(acc_recv, stats));
      for (size_t j = 0; j < contrib.size(); ++j) cur_acc[j] += contrib[j];
      stats.bytes_received += static_cast<int64_t>(cur_acc.size() * sizeof(float));
    } else {
      cur_acc = contrib;
    }
    if (i < schedule.exchanges) {
      RINGATTN_ASSIGN_OR_RETURN(
          acc_send[i % 2],
          t.Send(next_rank,
                 MakeTag(call.generation, call.sequence, i + 1, MessageKind::kGradAccumulator),
                 Bytes(cur_acc)));
      stats.bytes_sent += static_cast<int64_t>(cur_acc.size() * sizeof(float));
    }
    RINGATTN_RETURN_IF_ERROR(exchange.Wait(stats));
    std::swap(current, next);
    result.stats.steps.push_back(stats);
  }

  // The last accumulator held is complete: send it home to the chunk's owner
  // and receive this rank's own from whoever holds it.
  std::vector<float>& last = acc[schedule.exchanges % 2];
  std::vector<float> own;
  StepStats home{schedule.exchanges + 1, t.rank(), false};
  if (schedule.exchanges == 0) {
    own = std::move(last);
  } else {
    own.resize(2 * kv_elems);
    const uint64_t tag = MakeTag(call.generation, call.sequence, 0, MessageKind::kGradHome);
    RINGATTN_ASSIGN_OR_RETURN(std::unique_ptr<PendingOp> recv,
                              t.Recv(schedule.grad_from, tag, Bytes(own)));
    RINGATTN_ASSIGN_OR_RETURN(std::unique_ptr<PendingOp> send,
                              t.Send(schedule.grad_home, tag, Bytes(last)));
    RINGATTN_RETURN_IF_ERROR(t.Flush());
    RINGATTN_RETURN_IF_ERROR(wait(send, home));
    RINGATTN_RETURN_IF_ERROR(wait(recv, home));
    for (auto& op : acc_send) RINGATTN_RETURN_IF_ERROR(wait(op, home));
    home.bytes_sent = home.bytes_received = static_cast<int64_t>(own.size() * sizeof(float));
  }
  result.stats.steps.push_back(home);
  result.dk.assign(own.begin(), own.begin() + kv_elems);
  result.dv.assign(own.begin() + kv_elems, own.end());
  Summarize(result.stats, t0);
  return result;
}

}  // namespace

absl::StatusOr<RingForwardResult> RingForward(Transport& transport, kernels::ChunkBackend& backend,
                                              const ShardRef& shard, const RingCall& call) {
  return AbortOnError(transport, Forward(transport, backend, shard, call));
}

absl::StatusOr<RingBackwardResult> RingBackward(Transport& transport,
                                                kernels::ChunkBackend& backend,
                                                const ShardRef& shard,
                                                std::span<const std::byte> out,
                                                std::span<const std::byte> dout,
                                                std::span<const float> lse, const RingCall& call) {
  return AbortOnError(transport, Backward(transport, backend, shard, out, dout, lse, call));
}

}  // namespace ringattn::ring
