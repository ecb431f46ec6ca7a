#ifndef RINGATTN_SERVER_WORKER_REGION_SLICE_IO_H_
#define RINGATTN_SERVER_WORKER_REGION_SLICE_IO_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "server/shm/shm_file.h"
#include "worker/v1/worker_service.pb.h"

// A shard's tensor in a client's shared-memory region (worker.v1
// RegionSlice): opened and checked before any byte moves, then read into
// the shard's buffer or written from it, run by run. Every offset is checked
// against the shard, the tensor and the object's size; the object must be
// the one the coordinator opened. FAILED_PRECONDITION for an object this
// worker cannot open or that changed (unlinked, made again, shrunk).

namespace ringattn::worker {

class RegionSliceIo {
 public:
  // `shard_bytes`: the size the shard's tensor must have (rows *
  // shard_row_bytes).
  static absl::StatusOr<RegionSliceIo> Open(const worker::v1::RegionSlice& slice,
                                            uint64_t shard_bytes);

  // Sees each piece of the tensor as it is read, while it is in cache:
  // `offset` is where the piece lies in the tensor, in bytes.
  using Check = absl::FunctionRef<absl::Status(uint64_t offset, std::span<const std::byte> piece)>;

  // The shard's tensor, zeros where no run covers it; the first error of
  // `check` instead.
  absl::StatusOr<std::vector<std::byte>> Read(Check check) const;
  absl::StatusOr<std::vector<std::byte>> Read() const;
  // Writes the runs of `shard` (shard_bytes) into the region.
  absl::Status Write(std::span<const std::byte> shard) const;

 private:
  // One copy between the tensor (at `region`, in the object) and the shard.
  struct Span {
    uint64_t region = 0, shard = 0, bytes = 0;
  };
  RegionSliceIo(shm::ShmFile file, uint64_t base, std::vector<Span> spans, uint64_t shard_bytes)
      : file_(std::move(file)), base_(base), spans_(std::move(spans)), shard_bytes_(shard_bytes) {}

  shm::ShmFile file_;
  uint64_t base_;            // Where the tensor begins in the object.
  std::vector<Span> spans_;  // Adjacent runs merged.
  uint64_t shard_bytes_;
};

}  // namespace ringattn::worker

#endif  // RINGATTN_SERVER_WORKER_REGION_SLICE_IO_H_
