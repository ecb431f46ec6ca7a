#include "server/worker/region_slice_io.h"

#include <algorithm>
#include <limits>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace ringattn::worker {
namespace {

constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();

// a * b, or nothing on overflow.
std::optional<uint64_t> Mul(uint64_t a, uint64_t b) {
  if (a != 0 && b > kMax / a) return std::nullopt;
  return a * b;
}

}  // namespace

absl::StatusOr<RegionSliceIo> RegionSliceIo::Open(const worker::v1::RegionSlice& s,
                                                  uint64_t shard_bytes) {
  const auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("region slice of '", s.name(), "': ", why));
  };
  const std::optional<uint64_t> shard_total = Mul(s.rows(), s.shard_row_bytes());
  if (!shard_total || *shard_total != shard_bytes) {
    return bad(absl::StrCat(s.rows(), " rows of ", s.shard_row_bytes(), " bytes are not the ",
                            shard_bytes, " bytes of the shard"));
  }
  const std::optional<uint64_t> tensor_total = Mul(s.rows(), s.row_bytes());
  if (!tensor_total || s.base() > kMax - *tensor_total) return bad("the tensor's size overflows");
  for (const auto& run : s.runs()) {
    if (run.tensor_offset() > s.row_bytes() || run.bytes() > s.row_bytes() - run.tensor_offset() ||
        run.shard_offset() > s.shard_row_bytes() ||
        run.bytes() > s.shard_row_bytes() - run.shard_offset()) {
      return bad("a run falls outside its row");
    }
  }
  absl::StatusOr<shm::ShmFile> file = shm::ShmFile::Open(s.shm_name());
  if (!file.ok()) {
    return absl::FailedPreconditionError(absl::StrCat("this worker cannot open the region of '",
                                                      s.name(), "': ", file.status().message()));
  }
  if (file->device() != s.device() || file->inode() != s.inode()) {
    return absl::FailedPreconditionError(
        absl::StrCat("shared-memory object '", s.shm_name(),
                     "' is not the one that was registered (unlinked and made again?)"));
  }
  absl::StatusOr<uint64_t> size = file->Size();
  if (!size.ok()) return size.status();
  if (*size < s.base() + *tensor_total) {
    return absl::FailedPreconditionError(absl::StrCat(
        "shared-memory region '", s.shm_name(), "' holds ", *size, " bytes, fewer than the ",
        s.base() + *tensor_total, " '", s.name(), "' needs (it was shrunk)"));
  }
  std::vector<Span> spans;
  for (uint64_t row = 0; row < s.rows(); ++row) {
    for (const auto& run : s.runs()) {
      if (run.bytes() == 0) continue;
      const Span next{s.base() + row * s.row_bytes() + run.tensor_offset(),
                      row * s.shard_row_bytes() + run.shard_offset(), run.bytes()};
      if (!spans.empty() && spans.back().region + spans.back().bytes == next.region &&
          spans.back().shard + spans.back().bytes == next.shard) {
        spans.back().bytes += next.bytes;
      } else {
        spans.push_back(next);
      }
    }
  }
  return RegionSliceIo(*std::move(file), s.base(), std::move(spans), shard_bytes);
}

absl::StatusOr<std::vector<std::byte>> RegionSliceIo::Read(Check check) const {
  // Pieces small enough to be checked while they are still in L2.
  constexpr uint64_t kPiece = uint64_t{1} << 20;
  std::vector<std::byte> shard(shard_bytes_);
  for (const Span& s : spans_) {
    for (uint64_t at = 0; at < s.bytes; at += kPiece) {
      const std::span<std::byte> piece =
          std::span(shard).subspan(s.shard + at, std::min(kPiece, s.bytes - at));
      if (absl::Status st = file_.Read(s.region + at, piece); !st.ok()) return st;
      if (absl::Status st = check(s.region + at - base_, piece); !st.ok()) return st;
    }
  }
  return shard;
}

absl::StatusOr<std::vector<std::byte>> RegionSliceIo::Read() const {
  return Read([](uint64_t, std::span<const std::byte>) { return absl::OkStatus(); });
}

absl::Status RegionSliceIo::Write(std::span<const std::byte> shard) const {
  if (shard.size() != shard_bytes_) {
    return absl::InternalError(
        absl::StrCat("a shard of ", shard.size(), " bytes where ", shard_bytes_, " are due"));
  }
  for (const Span& s : spans_) {
    if (absl::Status st = file_.Write(s.region, shard.subspan(s.shard, s.bytes)); !st.ok()) {
      return st;
    }
  }
  return absl::OkStatus();
}

}  // namespace ringattn::worker
