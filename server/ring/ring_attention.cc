#include "server/ring/ring_attention.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/convert.h"
#include "kernels/merge.h"
#include "kernels/status_macros.h"
#include "server/ring/chunk_message.h"
#include "server/ring/schedule.h"
#include "server/ring/segment_order.h"
#include "server/ring/space_tensors.h"
#include "server/ring/staged_transport.h"

namespace ringattn::ring {
namespace {

using Clock = std::chrono::steady_clock;
using kernels::MemorySpace;
using kernels::SpaceBuffer;

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Host<->device bytes of the call so far and since the last step.
class TrafficMeter {
 public:
  explicit TrafficMeter(const MemorySpace& space)
      : space_(space), start_(space.traffic().total()), last_(start_) {}
  int64_t Step() {
    const int64_t now = space_.traffic().total();
    return now - std::exchange(last_, now);
  }
  int64_t Total() const { return space_.traffic().total() - start_; }

 private:
  const MemorySpace& space_;
  const int64_t start_;
  int64_t last_;
};

// The transport a call sends its space's memory over: the ring's own, or a
// staging one over it when the space is a device's and the transport takes
// host memory only.
class SpaceLink {
 public:
  SpaceLink(Transport& t, MemorySpace& space) {
    if (space.kind() == kernels::MemoryKind::kDevice && !t.accepts_device_memory()) {
      staged_.emplace(t, space);
    }
    t_ = staged_ ? &*staged_ : &t;
  }
  Transport& get() { return *t_; }

 private:
  std::optional<StagedTransport> staged_;
  Transport* t_ = nullptr;
};

// The shard's own chunk message, packed into a new space buffer.
absl::StatusOr<SpaceBuffer> PackInSpace(MemorySpace& space, const ChunkLayout& layout,
                                        const ShardRef& shard) {
  RINGATTN_ASSIGN_OR_RETURN(SpaceBuffer msg, space.Allocate(layout.size()));
  if (space.kind() == kernels::MemoryKind::kHost) {
    layout.PackInto(shard, msg.bytes());
  } else {
    RINGATTN_RETURN_IF_ERROR(space.Upload(msg.bytes(), layout.Pack(shard)));
  }
  return msg;
}

template <typename T>
absl::StatusOr<std::vector<T>> DownloadVector(MemorySpace& space, std::span<const T> src) {
  std::vector<T> host(src.size());
  RINGATTN_RETURN_IF_ERROR(
      space.Download(std::as_writable_bytes(std::span(host)), std::as_bytes(src)));
  return host;
}

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
  config.layout = call.layout;
  config.halo_exchange = call.halo_exchange;
  return MakeSchedule(config);
}

// The call's layout; valid once ScheduleFor accepted it.
absl::StatusOr<batch::ShardLayout> LayoutFor(const Transport& t, const ShardRef& shard,
                                             const RingCall& call) {
  const int64_t L = shard.shape.q_len;
  return batch::ShardLayout::Make(call.layout, t.size() * L, L, t.size());
}

// Where one segment of a segment-major shard tensor lies.
struct SegmentPlace {
  batch::Segment global;  // Its global positions.
  int64_t local = 0;      // Its first local position.
};

std::vector<SegmentPlace> Places(const batch::ShardLayout& layout, int rank) {
  const std::vector<batch::Segment>& segments = layout.Segments(rank);
  const std::vector<int64_t> offsets = SegmentOffsets(segments);
  std::vector<SegmentPlace> places;
  for (size_t i = 0; i < segments.size(); ++i) places.push_back({segments[i], offsets[i]});
  return places;
}

// Points a chunk kernel's keys at segment `kp` of the chunk held: the
// shard's own segment-major tensors where they lie (`own`, read as its
// message would be), or else the message `held` laid out by `layout`.
template <typename ChunkArgs>
void PointAtKeys(ChunkArgs& args, const ShardRef* own, const ChunkLayout& layout,
                 std::span<const std::byte> held, const SegmentPlace& kp) {
  if (own != nullptr) {
    args.k = layout.K(*own, kp.local, kp.global.len);
    args.v = layout.V(*own, kp.local, kp.global.len);
    args.kv_meta = layout.Meta(*own, kp.local, kp.global.len, kp.global.start);
  } else {
    args.k = layout.K(held, kp.local, kp.global.len);
    args.v = layout.V(held, kp.local, kp.global.len);
    args.kv_meta = layout.Meta(held, kp.local, kp.global.len, kp.global.start);
  }
}

// This rank's shard in segment-major order: what its own chunk message is
// packed from and what its query segments are cut from. Spans of `shard`
// itself when it has one segment.
class MajorShard {
 public:
  MajorShard(const ShardRef& shard, const std::vector<batch::Segment>& segments)
      : B_(shard.shape.batch),
        H_(shard.shape.heads),
        D_(shard.shape.head_dim),
        esize_(static_cast<int64_t>(kernels::DTypeSize(shard.shape.dtype))),
        q_(shard.q, B_ * H_, D_ * esize_, segments),
        k_(shard.k, B_ * shard.shape.kv_heads, D_ * esize_, segments),
        v_(shard.v, B_ * shard.shape.kv_heads, D_ * esize_, segments),
        doc_(shard.doc, B_, 1, segments),
        vision_(shard.vision, B_, 1, segments),
        padding_(shard.padding, B_, 1, segments) {
    ref_ = shard;
    ref_.q = q_.span();
    ref_.k = k_.span();
    ref_.v = v_.span();
    ref_.doc = doc_.span();
    ref_.vision = vision_.span();
    ref_.padding = padding_.span();
  }

  const ShardRef& ref() const { return ref_; }

  // One query segment of a segment-major [B, H, L, D] tensor (q, out, dout).
  kernels::TensorRef Query(std::span<const std::byte> major, const SegmentPlace& p) const {
    const auto at = static_cast<size_t>(B_ * H_ * p.local * D_ * esize_);
    const auto n = static_cast<size_t>(B_ * H_ * p.global.len * D_ * esize_);
    return {ref_.shape.dtype, {B_, H_, p.global.len, D_}, major.data() + at, n};
  }
  // One query segment of the shard's metadata, as `meta` holds it (the
  // shard's own segment-major metadata, in host memory or a space).
  kernels::TokenMetaRef QueryMeta(const kernels::TokenMetaRef& meta, const SegmentPlace& p) const {
    const auto at = static_cast<size_t>(B_ * p.local);
    const auto n = static_cast<size_t>(B_ * p.global.len);
    return {meta.doc.subspan(at, n), meta.vision.subspan(at, n), meta.padding.subspan(at, n),
            p.global.start};
  }
  // Rows ([B, H, len]) and elements ([B, H, len, D]) of one query segment
  // of a segment-major fp32 tensor, and where they start.
  size_t RowsAt(const SegmentPlace& p) const { return static_cast<size_t>(B_ * H_ * p.local); }
  size_t Rows(const SegmentPlace& p) const { return static_cast<size_t>(B_ * H_ * p.global.len); }

 private:
  const int64_t B_, H_, D_, esize_;
  SegmentMajor<std::byte> q_, k_, v_;
  SegmentMajor<int32_t> doc_, vision_;
  SegmentMajor<uint8_t> padding_;
  ShardRef ref_;
};

// The shard's segment-major query tensor and metadata in the call's space.
struct ResidentQuery {
  static absl::StatusOr<ResidentQuery> Make(MemorySpace& space, const ShardRef& major) {
    ResidentQuery r;
    RINGATTN_ASSIGN_OR_RETURN(r.q, Resident<std::byte>::Make(space, major.q));
    RINGATTN_ASSIGN_OR_RETURN(r.doc, Resident<int32_t>::Make(space, major.doc));
    RINGATTN_ASSIGN_OR_RETURN(r.vision, Resident<int32_t>::Make(space, major.vision));
    RINGATTN_ASSIGN_OR_RETURN(r.padding, Resident<uint8_t>::Make(space, major.padding));
    return r;
  }
  kernels::TokenMetaRef meta() const { return {doc.span(), vision.span(), padding.span(), 0}; }

  Resident<std::byte> q;  // [B, H, L, D] dtype
  Resident<int32_t> doc, vision;
  Resident<uint8_t> padding;  // [B, L] each
};

// Bytes of a shard's segment-major query and metadata.
size_t QueryBytes(const ShardRef& s) { return s.q.size() + s.doc.size() * 8 + s.padding.size(); }

// A local-order copy of the segment-major tensor `major` [outer, L, row].
template <typename T>
std::vector<T> ToLocal(std::vector<T> major, int64_t outer, int64_t row,
                       const std::vector<batch::Segment>& segments) {
  if (segments.size() == 1) return major;
  std::vector<T> local(major.size());
  FromSegmentMajor<T>(major, local, outer, row, segments);
  return local;
}

// t [outer, L, row] at local positions [L - rows, L): the shard's tail.
template <typename T>
std::vector<T> Tail(std::span<const T> t, int64_t outer, int64_t L, int64_t row, int64_t rows) {
  std::vector<T> tail(static_cast<size_t>(outer * rows * row));
  for (int64_t o = 0; o < outer; ++o) {
    std::memcpy(tail.data() + o * rows * row, t.data() + (o * L + L - rows) * row,
                static_cast<size_t>(rows * row) * sizeof(T));
  }
  return tail;
}

ShardRef WithLength(ShardRef shard, int64_t len) {
  shard.shape.q_len = shard.shape.kv_len = len;
  return shard;
}

// The halo a contiguous shard sends its next rank: the K, V and metadata of
// its last `rows` positions as one chunk message.
class HaloChunk {
 public:
  HaloChunk(const ShardRef& shard, int64_t rows) : rows_(rows), layout_(WithLength(shard, rows)) {
    const int64_t L = shard.shape.q_len, B = shard.shape.batch;
    const int64_t kv_row =
        shard.shape.head_dim * static_cast<int64_t>(kernels::DTypeSize(shard.shape.dtype));
    const int64_t bkv = B * shard.shape.kv_heads;
    const std::vector<std::byte> k = Tail(shard.k, bkv, L, kv_row, rows);
    const std::vector<std::byte> v = Tail(shard.v, bkv, L, kv_row, rows);
    const std::vector<int32_t> doc = Tail(shard.doc, B, L, 1, rows);
    const std::vector<int32_t> vision = Tail(shard.vision, B, L, 1, rows);
    const std::vector<uint8_t> padding = Tail(shard.padding, B, L, 1, rows);
    ShardRef tail = WithLength(shard, rows);
    tail.k = k;
    tail.v = v;
    tail.doc = doc;
    tail.vision = vision;
    tail.padding = padding;
    msg_ = layout_.Pack(tail);
  }

  int64_t rows() const { return rows_; }
  const ChunkLayout& layout() const { return layout_; }
  std::span<const std::byte> msg() const { return msg_; }
  // Where the halo of `owner`'s shard lies: its one segment.
  std::vector<SegmentPlace> Places(int owner, int64_t L) const {
    return {{{owner * L + L - rows_, rows_}, 0}};
  }

 private:
  const int64_t rows_;
  const ChunkLayout layout_;
  std::vector<std::byte> msg_;
};

}  // namespace

class ForwardResidue {
 public:
  // Whose state this is: a backward takes it only on the same backend, rank
  // and shard.
  const MemorySpace* space = nullptr;
  kernels::AttentionShape shape;
  int rank = 0, size = 0;
  batch::LayoutKind layout = batch::LayoutKind::kContiguous;
  int64_t halo_rows = 0;

  ResidentQuery query;                      // q and metadata, segment-major
  SpaceBuffer own;                          // The shard's own chunk message
  std::optional<Resident<std::byte>> halo;  // Its halo message, if any
  SpaceBuffer out;                          // [B, H, L, D] dtype, segment-major
  SpaceBuffer lse;                          // [B, H, L] fp32, segment-major
};

namespace {

absl::StatusOr<RingForwardResult> Forward(Transport& transport, kernels::ChunkBackend& backend,
                                          const ShardRef& shard, const RingCall& call,
                                          bool keep_for_backward) {
  const Clock::time_point t0 = Clock::now();
  RINGATTN_RETURN_IF_ERROR(CheckShard(shard, transport));
  RINGATTN_ASSIGN_OR_RETURN(const RingSchedule schedule, ScheduleFor(transport, shard, call));
  RINGATTN_ASSIGN_OR_RETURN(const batch::ShardLayout shard_layout,
                            LayoutFor(transport, shard, call));
  const std::vector<batch::Segment>& mine = shard_layout.Segments(transport.rank());
  const std::vector<SegmentPlace> q_places = Places(shard_layout, transport.rank());
  const MajorShard major(shard, mine);
  const ChunkLayout layout(shard);
  const int64_t D = shard.shape.head_dim;
  const int64_t rows = shard.shape.batch * shard.shape.heads * shard.shape.q_len;
  const int64_t elems = rows * D;
  const size_t esize = kernels::DTypeSize(shard.shape.dtype);
  MemorySpace& space = backend.space();
  TrafficMeter meter(space);
  SpaceLink link(transport, space);
  Transport& t = link.get();
  // Halo exchange: the one exchange carries the shard's tail only.
  std::optional<HaloChunk> halo;
  if (schedule.halo_rows > 0) halo.emplace(shard, schedule.halo_rows);
  const size_t halo_bytes = halo ? halo->layout().size() : 0;

  // A host space has nothing to keep: the caller's memory is the state.
  const bool keep = keep_for_backward && space.kind() == kernels::MemoryKind::kDevice;

  // With a halo exchange the own chunk never travels: the first step reads
  // it where it lies (the kept copy, or on a host space the shard itself),
  // and no travelling chunk buffer is made.
  const bool own_in_place = halo && (keep || space.kind() == kernels::MemoryKind::kHost);
  // Everything below, asked for before the first allocation: the kept own
  // chunk, the travelling ones, the fp32 result and its partial.
  const size_t chunks = (keep ? 1 : 0) + (own_in_place ? 0 : 1) + (halo ? 0 : 1);
  const auto f32 = static_cast<size_t>(elems + rows) * sizeof(float);
  RINGATTN_RETURN_IF_ERROR(
      space.CheckFits(static_cast<int64_t>(QueryBytes(shard) + chunks * layout.size() + 2 * f32 +
                                           static_cast<size_t>(elems) * esize + 2 * halo_bytes)));
  RINGATTN_ASSIGN_OR_RETURN(ResidentQuery query, ResidentQuery::Make(space, major.ref()));
  // Double buffering: compute on `current` while `next` arrives.
  SpaceBuffer own;
  if (keep) {
    RINGATTN_ASSIGN_OR_RETURN(own, PackInSpace(space, layout, major.ref()));
  }
  SpaceBuffer current;
  if (!own_in_place) {
    if (keep) {
      RINGATTN_ASSIGN_OR_RETURN(current, space.Allocate(layout.size()));
      RINGATTN_RETURN_IF_ERROR(space.Copy(current.bytes(), own.bytes()));
    } else {
      RINGATTN_ASSIGN_OR_RETURN(current, PackInSpace(space, layout, major.ref()));
    }
  }
  const bool own_from_shard = own_in_place && !keep;
  const std::span<const std::byte> own_chunk = own_in_place && keep ? own.bytes() : current.bytes();
  RINGATTN_ASSIGN_OR_RETURN(SpaceBuffer next, space.Allocate(halo ? 0 : layout.size()));
  // The running result, segment-major like the query.
  RINGATTN_ASSIGN_OR_RETURN(const SpaceBuffer acc, space.Allocate(elems * sizeof(float)));
  RINGATTN_ASSIGN_OR_RETURN(
      Homebound<float> lse,
      Homebound<float>::Make(space, rows, -std::numeric_limits<float>::infinity()));
  // A query segment's first partial is written into the running result
  // itself (merging it into 0 / -inf would give it back bit for bit); the
  // later ones go through `part`, made when first needed.
  std::vector<bool> started(q_places.size(), false);
  SpaceBuffer part, part_lse;
  std::optional<Resident<std::byte>> halo_msg;
  if (halo) {
    RINGATTN_ASSIGN_OR_RETURN(halo_msg, Resident<std::byte>::Make(space, halo->msg()));
  }
  RINGATTN_ASSIGN_OR_RETURN(const SpaceBuffer halo_recv, space.Allocate(halo_bytes));
  RingForwardResult result;
  meter.Step();  // The upload is the call's, not a step's.

  KvExchange exchange(t, call, MessageKind::kForwardKv);
  for (const RingStep& step : schedule.steps) {
    StepStats stats{step.step, step.chunk_owner, step.compute};
    stats.pairs = step.pairs * shard.shape.batch * shard.shape.heads;
    // Pass the held chunk on while computing on it (the last step keeps it).
    if (step.step < schedule.exchanges) {
      RINGATTN_RETURN_IF_ERROR(
          halo ? exchange.Post(step.step + 1, halo_msg->span(), halo_recv.bytes())
               : exchange.Post(step.step + 1, current.bytes(), next.bytes()));
    }
    const bool in_halo = halo && step.step > 0;
    const std::span<const std::byte> held =
        in_halo ? halo_recv.bytes() : (step.step == 0 ? own_chunk : current.bytes());
    const ChunkLayout& held_layout = in_halo ? halo->layout() : layout;
    if (step.compute) {
      const Clock::time_point c0 = Clock::now();
      const std::vector<SegmentPlace> k_places =
          in_halo ? halo->Places(step.chunk_owner, shard.shape.q_len)
                  : Places(shard_layout, step.chunk_owner);
      for (const SubBlock& block : step.blocks) {
        const SegmentPlace& qp = q_places[block.q_segment];
        const SegmentPlace& kp = k_places[block.k_segment];
        const size_t at = major.RowsAt(qp), n = major.Rows(qp);
        kernels::ForwardChunkArgs args;
        args.q = major.Query(query.q.span(), qp);
        PointAtKeys(args, own_from_shard && !in_halo ? &major.ref() : nullptr, held_layout, held,
                    kp);
        args.q_meta = major.QueryMeta(query.meta(), qp);
        args.layer = call.layer;
        const std::span<float> acc_out = acc.as<float>().subspan(at * D, n * D);
        const std::span<float> acc_lse = lse.span().subspan(at, n);
        if (!started[block.q_segment]) {
          started[block.q_segment] = true;
          args.out = acc_out;
          args.lse = acc_lse;
          RINGATTN_RETURN_IF_ERROR(backend.Forward(args));
          continue;
        }
        if (part.bytes().empty()) {
          RINGATTN_ASSIGN_OR_RETURN(part, space.Allocate(elems * sizeof(float)));
          RINGATTN_ASSIGN_OR_RETURN(part_lse, space.Allocate(rows * sizeof(float)));
        }
        args.out = part.as<float>().first(n * D);
        args.lse = part_lse.as<float>().first(n);
        RINGATTN_RETURN_IF_ERROR(backend.Forward(args));
        // Merge in fp32: lse = logaddexp(lse, lse_s), out rescaled to match.
        RINGATTN_RETURN_IF_ERROR(space.Merge(acc_out, acc_lse, args.out, args.lse, D));
      }
      stats.compute_seconds = Since(c0);
    }
    RINGATTN_RETURN_IF_ERROR(exchange.Wait(stats));
    if (!halo) std::swap(current, next);
    stats.host_device_bytes = meter.Step();
    result.stats.steps.push_back(stats);
  }
  const int64_t bh = shard.shape.batch * shard.shape.heads;
  RINGATTN_ASSIGN_OR_RETURN(Homebound<std::byte> out,
                            Homebound<std::byte>::Make(space, elems * esize));
  RINGATTN_RETURN_IF_ERROR(space.FromF32(shard.shape.dtype, acc.as<const float>(), out.span()));
  std::shared_ptr<ForwardResidue> residue;
  if (keep) residue = std::make_shared<ForwardResidue>();
  RINGATTN_ASSIGN_OR_RETURN(std::vector<std::byte> out_major,
                            std::move(out).Home(residue ? &residue->out : nullptr));
  result.out = ToLocal(std::move(out_major), bh, D * static_cast<int64_t>(esize), mine);
  RINGATTN_ASSIGN_OR_RETURN(std::vector<float> lse_major,
                            std::move(lse).Home(residue ? &residue->lse : nullptr));
  result.lse = ToLocal(std::move(lse_major), bh, 1, mine);
  if (residue) {
    residue->space = &space;
    residue->shape = shard.shape;
    residue->rank = transport.rank();
    residue->size = transport.size();
    residue->layout = call.layout;
    residue->halo_rows = schedule.halo_rows;
    residue->query = std::move(query);
    residue->own = std::move(own);
    residue->halo = std::move(halo_msg);
    result.residue = std::move(residue);
  }
  Summarize(result.stats, t0);
  result.stats.host_device_bytes = meter.Total();
  return result;
}

// The residue a backward may take: its forward's, on the same backend,
// rank and shard.
absl::Status CheckResidue(const ForwardResidue& r, const MemorySpace& space, const Transport& t,
                          const ShardRef& shard, const RingCall& call, int64_t halo_rows) {
  if (r.space != &space || !(r.shape == shard.shape) || r.rank != t.rank() || r.size != t.size() ||
      r.layout != call.layout || r.halo_rows != halo_rows) {
    return absl::FailedPreconditionError(
        "the forward state kept on the device is not this backward's (another backend, rank, "
        "shape or layout)");
  }
  return absl::OkStatus();
}

absl::StatusOr<RingBackwardResult> Backward(Transport& transport, kernels::ChunkBackend& backend,
                                            const ShardRef& shard, std::span<const std::byte> out,
                                            std::span<const std::byte> dout,
                                            std::span<const float> lse, const RingCall& call,
                                            const ForwardResidue* residue) {
  const Clock::time_point t0 = Clock::now();
  RINGATTN_RETURN_IF_ERROR(CheckShard(shard, transport));
  if (out.size() != shard.q.size() || dout.size() != shard.q.size() ||
      static_cast<int64_t>(lse.size()) !=
          shard.shape.batch * shard.shape.heads * shard.shape.q_len) {
    return absl::InvalidArgumentError("out, dout and lse must match the query shard");
  }
  RINGATTN_ASSIGN_OR_RETURN(const RingSchedule schedule, ScheduleFor(transport, shard, call));
  RINGATTN_ASSIGN_OR_RETURN(const batch::ShardLayout shard_layout,
                            LayoutFor(transport, shard, call));
  const std::vector<batch::Segment>& mine = shard_layout.Segments(transport.rank());
  const std::vector<SegmentPlace> q_places = Places(shard_layout, transport.rank());
  const MajorShard major(shard, mine);
  const ChunkLayout layout(shard);
  const int64_t D = shard.shape.head_dim;
  const int64_t bh = shard.shape.batch * shard.shape.heads;
  const int64_t bkv = shard.shape.batch * shard.shape.kv_heads;
  const size_t esize = kernels::DTypeSize(shard.shape.dtype);
  const SegmentMajor<std::byte> out_major(out, bh, D * static_cast<int64_t>(esize), mine);
  const SegmentMajor<std::byte> dout_major(dout, bh, D * static_cast<int64_t>(esize), mine);
  const SegmentMajor<float> lse_major(lse, bh, 1, mine);
  const int64_t kv_elems = bkv * shard.shape.q_len * D;
  const int64_t q_elems = bh * shard.shape.q_len * D;
  MemorySpace& space = backend.space();
  TrafficMeter meter(space);
  SpaceLink link(transport, space);
  Transport& t = link.get();
  const int size = t.size();
  const int prev = (t.rank() + size - 1) % size;
  const int next_rank = (t.rank() + 1) % size;
  // Halo exchange: the one exchange carries the shard's tail only, and the
  // tail's dK/dV ([dK | dV] of the halo rows) go straight home after it;
  // this rank's own dK/dV stay here.
  std::optional<HaloChunk> halo;
  if (schedule.halo_rows > 0) halo.emplace(shard, schedule.halo_rows);
  const size_t halo_bytes = halo ? halo->layout().size() : 0;
  const int64_t halo_kv = halo ? bkv * halo->rows() * D : 0;

  if (residue != nullptr) {
    RINGATTN_RETURN_IF_ERROR(CheckResidue(*residue, space, t, shard, call, schedule.halo_rows));
  }

  // With a halo exchange the own chunk never travels and only one [dK | dV]
  // accumulator is made: the first step reads the chunk where it lies (the
  // kept one, or on a host space the shard itself) and writes this rank's
  // own dK/dV straight into that accumulator.
  const bool own_in_place =
      halo && (residue != nullptr || space.kind() == kernels::MemoryKind::kHost);
  // Everything below, asked for before the first allocation: the query side
  // (q, out, lse unless kept; dout, dq), the chunks, the dK/dV contribution,
  // the accumulators and the one coming home (or the halo's).
  const auto kv_pair = static_cast<size_t>(2 * kv_elems) * sizeof(float);
  const size_t inputs =
      residue != nullptr ? 0 : QueryBytes(shard) + out.size() + lse.size_bytes() + halo_bytes;
  const size_t chunks = (own_in_place ? 0 : 1) + (halo ? 0 : 1);
  const size_t kv_pairs = halo ? 1 : 4;  // contrib, two accumulators, the one coming home
  RINGATTN_RETURN_IF_ERROR(space.CheckFits(static_cast<int64_t>(
      inputs + dout.size() + static_cast<size_t>(q_elems) * sizeof(float) + chunks * layout.size() +
      kv_pairs * kv_pair + halo_bytes + static_cast<size_t>(4 * halo_kv) * sizeof(float))));
  // The shard and the forward's answer: kept on the device, or uploaded.
  ResidentQuery uploaded_query;
  Resident<std::byte> uploaded_out;
  Resident<float> uploaded_lse;
  if (residue == nullptr) {
    RINGATTN_ASSIGN_OR_RETURN(uploaded_query, ResidentQuery::Make(space, major.ref()));
    RINGATTN_ASSIGN_OR_RETURN(uploaded_out, Resident<std::byte>::Make(space, out_major.span()));
    RINGATTN_ASSIGN_OR_RETURN(uploaded_lse, Resident<float>::Make(space, lse_major.span()));
  }
  const ResidentQuery& query = residue != nullptr ? residue->query : uploaded_query;
  const std::span<const std::byte> out_in =
      residue != nullptr ? std::span<const std::byte>(residue->out.bytes()) : uploaded_out.span();
  const std::span<const float> lse_in =
      residue != nullptr ? residue->lse.as<const float>() : uploaded_lse.span();
  RINGATTN_ASSIGN_OR_RETURN(const Resident<std::byte> dout_in,
                            Resident<std::byte>::Make(space, dout_major.span()));
  SpaceBuffer current;
  if (!own_in_place) {
    if (residue != nullptr) {
      RINGATTN_ASSIGN_OR_RETURN(current, space.Allocate(layout.size()));
      RINGATTN_RETURN_IF_ERROR(space.Copy(current.bytes(), residue->own.bytes()));
    } else {
      RINGATTN_ASSIGN_OR_RETURN(current, PackInSpace(space, layout, major.ref()));
    }
  }
  const bool own_from_shard = own_in_place && residue == nullptr;
  const std::span<const std::byte> own_chunk =
      own_in_place && residue != nullptr ? residue->own.bytes() : current.bytes();
  RINGATTN_ASSIGN_OR_RETURN(SpaceBuffer next, space.Allocate(halo ? 0 : layout.size()));
  // Segment-major like the query until the end.
  RINGATTN_ASSIGN_OR_RETURN(Homebound<float> dq, Homebound<float>::Make(space, q_elems));
  // This rank's dK/dV of the held chunk ([dK | dV], fp32, each in the chunk
  // owner's segment-major order), and the two accumulators that travel with
  // the chunks, alternating so one can be received into while the other is
  // still being sent.
  RINGATTN_ASSIGN_OR_RETURN(const SpaceBuffer contrib, space.Allocate(halo ? 0 : kv_pair));
  SpaceBuffer acc[2];
  RINGATTN_ASSIGN_OR_RETURN(acc[0], space.Allocate(kv_pair));
  RINGATTN_ASSIGN_OR_RETURN(acc[1], space.Allocate(halo ? 0 : kv_pair));
  std::unique_ptr<PendingOp> acc_send[2];
  std::optional<Resident<std::byte>> uploaded_halo;
  if (halo && residue == nullptr) {
    RINGATTN_ASSIGN_OR_RETURN(uploaded_halo, Resident<std::byte>::Make(space, halo->msg()));
  }
  const std::optional<Resident<std::byte>>& halo_msg =
      residue != nullptr ? residue->halo : uploaded_halo;
  RINGATTN_ASSIGN_OR_RETURN(const SpaceBuffer halo_recv, space.Allocate(halo_bytes));
  const size_t halo_pair = static_cast<size_t>(2 * halo_kv) * sizeof(float);
  RINGATTN_ASSIGN_OR_RETURN(const SpaceBuffer halo_contrib, space.Allocate(halo_pair));
  RingBackwardResult result;
  meter.Step();  // The upload is the call's, not a step's.

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
    stats.pairs = step.pairs * bh;
    const SpaceBuffer& cur_acc = acc[i % 2];
    // The accumulator of the held chunk arrives from the previous rank once
    // it has added its share; receive it into the buffer sent two steps ago.
    std::unique_ptr<PendingOp> acc_recv;
    if (i > 0 && !halo) {
      RINGATTN_RETURN_IF_ERROR(wait(acc_send[i % 2], stats));
      RINGATTN_ASSIGN_OR_RETURN(
          acc_recv,
          t.Recv(prev, MakeTag(call.generation, call.sequence, i, MessageKind::kGradAccumulator),
                 cur_acc.bytes()));
    }
    if (i < schedule.exchanges) {
      RINGATTN_RETURN_IF_ERROR(halo ? exchange.Post(i + 1, halo_msg->span(), halo_recv.bytes())
                                    : exchange.Post(i + 1, current.bytes(), next.bytes()));
    }
    const bool in_halo = halo && i > 0;
    const std::span<const std::byte> held =
        in_halo ? halo_recv.bytes() : (i == 0 ? own_chunk : current.bytes());
    const ChunkLayout& held_layout = in_halo ? halo->layout() : layout;
    // Where this step's dK/dV go: [dK | dV] of the held chunk (or halo).
    const SpaceBuffer& sink_buffer = in_halo ? halo_contrib : (halo ? acc[0] : contrib);
    const std::span<float> sink = sink_buffer.as<float>();
    const int64_t sink_kv = in_halo ? halo_kv : kv_elems;
    // The first step's sink was just made, zero-filled.
    if (i > 0) RINGATTN_RETURN_IF_ERROR(space.Zero(std::as_writable_bytes(sink)));
    if (step.compute) {
      const Clock::time_point c0 = Clock::now();
      const std::vector<SegmentPlace> k_places =
          in_halo ? halo->Places(step.chunk_owner, shard.shape.q_len)
                  : Places(shard_layout, step.chunk_owner);
      for (const SubBlock& block : step.blocks) {
        const SegmentPlace& qp = q_places[block.q_segment];
        const SegmentPlace& kp = k_places[block.k_segment];
        const size_t at = major.RowsAt(qp), n = major.Rows(qp);
        const auto k_at = static_cast<size_t>(bkv * kp.local * D);
        const auto k_n = static_cast<size_t>(bkv * kp.global.len * D);
        kernels::BackwardChunkArgs args;
        args.q = major.Query(query.q.span(), qp);
        PointAtKeys(args, own_from_shard && !in_halo ? &major.ref() : nullptr, held_layout, held,
                    kp);
        args.out = major.Query(out_in, qp);
        args.dout = major.Query(dout_in.span(), qp);
        args.lse = lse_in.subspan(at, n);
        args.q_meta = major.QueryMeta(query.meta(), qp);
        args.layer = call.layer;
        args.dq = dq.span().subspan(at * D, n * D);  // dQ accumulates locally.
        args.dk = sink.subspan(k_at, k_n);
        args.dv = sink.subspan(static_cast<size_t>(sink_kv) + k_at, k_n);
        RINGATTN_RETURN_IF_ERROR(backend.Backward(args));
      }
      stats.compute_seconds = Since(c0);
    }
    if (!halo) {
      // Add this rank's share to the chunk's accumulator (fp32) and pass it on.
      if (i > 0) {
        RINGATTN_RETURN_IF_ERROR(wait(acc_recv, stats));
        const auto n = static_cast<int64_t>(2 * kv_elems);
        RINGATTN_RETURN_IF_ERROR(
            space.Add(cur_acc.as<float>(), n, contrib.as<const float>(), n, 1, n));
        stats.bytes_received += static_cast<int64_t>(kv_pair);
      } else {
        RINGATTN_RETURN_IF_ERROR(space.Copy(cur_acc.bytes(), contrib.bytes()));
      }
      if (i < schedule.exchanges) {
        RINGATTN_ASSIGN_OR_RETURN(
            acc_send[i % 2],
            t.Send(next_rank,
                   MakeTag(call.generation, call.sequence, i + 1, MessageKind::kGradAccumulator),
                   cur_acc.bytes()));
        stats.bytes_sent += static_cast<int64_t>(kv_pair);
      }
    }
    RINGATTN_RETURN_IF_ERROR(exchange.Wait(stats));
    if (!halo) std::swap(current, next);
    stats.host_device_bytes = meter.Step();
    result.stats.steps.push_back(stats);
  }

  // The last accumulator held is complete: send it home to the chunk's owner
  // and receive this rank's own from whoever holds it. With a halo, what goes
  // home is the halo's dK/dV, added to this rank's own tail.
  const SpaceBuffer& last = halo ? halo_contrib : acc[schedule.exchanges % 2];
  std::span<const float> own = last.as<const float>();
  SpaceBuffer back;
  StepStats home{schedule.exchanges + 1, t.rank(), false};
  if (schedule.exchanges > 0) {
    RINGATTN_ASSIGN_OR_RETURN(back, space.Allocate(last.bytes().size()));
    const uint64_t tag = MakeTag(call.generation, call.sequence, 0, MessageKind::kGradHome);
    RINGATTN_ASSIGN_OR_RETURN(std::unique_ptr<PendingOp> recv,
                              t.Recv(schedule.grad_from, tag, back.bytes()));
    RINGATTN_ASSIGN_OR_RETURN(std::unique_ptr<PendingOp> send,
                              t.Send(schedule.grad_home, tag, last.bytes()));
    RINGATTN_RETURN_IF_ERROR(t.Flush());
    RINGATTN_RETURN_IF_ERROR(wait(send, home));
    RINGATTN_RETURN_IF_ERROR(wait(recv, home));
    for (auto& op : acc_send) RINGATTN_RETURN_IF_ERROR(wait(op, home));
    home.bytes_sent = home.bytes_received = static_cast<int64_t>(back.bytes().size());
    if (halo) {
      // back: [dK | dV] of this shard's last rows, [bkv, rows, D] each, onto
      // the tails of [dK | dV] [2 * bkv, L, D].
      const int64_t L = shard.shape.q_len, rows = halo->rows();
      const std::span<float> tails = acc[0].as<float>().subspan((L - rows) * D);
      RINGATTN_RETURN_IF_ERROR(
          space.Add(tails, L * D, back.as<const float>(), rows * D, 2 * bkv, rows * D));
      own = acc[0].as<const float>();
    } else {
      own = back.as<const float>();
    }
  }
  home.host_device_bytes = meter.Step();
  result.stats.steps.push_back(home);
  RINGATTN_ASSIGN_OR_RETURN(std::vector<float> dq_major, std::move(dq).Home());
  result.dq = ToLocal(std::move(dq_major), bh, D, mine);
  RINGATTN_ASSIGN_OR_RETURN(std::vector<float> dk, DownloadVector(space, own.first(kv_elems)));
  RINGATTN_ASSIGN_OR_RETURN(std::vector<float> dv, DownloadVector(space, own.subspan(kv_elems)));
  result.dk = ToLocal(std::move(dk), bkv, D, mine);
  result.dv = ToLocal(std::move(dv), bkv, D, mine);
  Summarize(result.stats, t0);
  result.stats.host_device_bytes = meter.Total();
  return result;
}

}  // namespace

absl::StatusOr<RingForwardResult> RingForward(Transport& transport, kernels::ChunkBackend& backend,
                                              const ShardRef& shard, const RingCall& call,
                                              bool keep_for_backward) {
  return AbortOnError(transport, Forward(transport, backend, shard, call, keep_for_backward));
}

absl::StatusOr<RingBackwardResult> RingBackward(
    Transport& transport, kernels::ChunkBackend& backend, const ShardRef& shard,
    std::span<const std::byte> out, std::span<const std::byte> dout, std::span<const float> lse,
    const RingCall& call, const ForwardResidue* residue) {
  return AbortOnError(transport,
                      Backward(transport, backend, shard, out, dout, lse, call, residue));
}

}  // namespace ringattn::ring
