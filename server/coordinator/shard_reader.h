#ifndef RINGATTN_SERVER_COORDINATOR_SHARD_READER_H_
#define RINGATTN_SERVER_COORDINATOR_SHARD_READER_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "attention/v1/tensor.pb.h"
#include "server/coordinator/rank_call.h"

// Reads the tensors a rank answers with, in their order, as byte runs, so
// they can be gathered into the client's stream without holding any of them
// whole. Every piece is checked against what the rank must send: the next
// expected tensor, its dtype and shape, in order, never past its end.

namespace ringattn::coordinator {

struct ExpectedTensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
};

class ShardReader {
 public:
  ShardReader(RankCall& rank, std::vector<ExpectedTensor> expected);

  // Waits for the rank's first piece: OK once it has started to answer (its
  // ring step succeeded), else the error it ended with.
  absl::Status Start();
  // Passes the next `n` bytes of the current tensor to `sink` as runs (a
  // false from sink stops it: CANCELLED). `whole` is set when the run is a
  // whole piece as the rank sent it: sink may take its bytes. Moves on to
  // the next tensor once one is read.
  using Sink = absl::FunctionRef<bool(std::span<const std::byte> run, std::string* whole)>;
  absl::Status Read(uint64_t n, Sink sink);
  absl::Status Skip(uint64_t n);

 private:
  absl::Status Fill();  // Makes the current piece non-empty.

  RankCall& rank_;
  const std::vector<ExpectedTensor> expected_;
  std::vector<uint64_t> bytes_;  // Size of each expected tensor.
  size_t tensor_ = 0;            // Index of the tensor being read.
  uint64_t consumed_ = 0;        // Bytes of it read so far.
  attention::v1::TensorChunk piece_;
  size_t size_ = 0;  // Bytes of piece_ (its data may have been taken).
  size_t at_ = 0;    // Bytes of piece_ read so far.
};

}  // namespace ringattn::coordinator

#endif  // RINGATTN_SERVER_COORDINATOR_SHARD_READER_H_
