#ifndef RINGATTN_SERVER_COORDINATOR_PREPARE_BATCH_H_
#define RINGATTN_SERVER_COORDINATOR_PREPARE_BATCH_H_

#include <cstdint>

#include "absl/status/status.h"
#include "attention/v1/attention_service.grpc.pb.h"
#include "grpcpp/support/sync_stream.h"

// The PrepareBatch RPC: a whole training batch in, SPEC §1's padded
// tensors and per-rank shards out, by the batch library
// (server/batch/batch_prep.h) that the coordinator's own forward path
// shares, so what the caller gets is what the ring computes with.

namespace ringattn::coordinator {

using PrepareBatchStream = grpc::ServerReaderWriterInterface<attention::v1::PrepareBatchResponse,
                                                             attention::v1::PrepareBatchRequest>;

// Reads the header and the batch's tensors (each checked as it arrives,
// `max_call_bytes` in total), prepares the batch for the header's cp (0:
// `ring_cp`) and streams the answer. INVALID_ARGUMENT naming the field for
// bad input; RESOURCE_EXHAUSTED past the byte limit; CANCELLED when the
// client left.
absl::Status RunPrepareBatch(PrepareBatchStream& stream, int ring_cp, uint64_t max_call_bytes);

}  // namespace ringattn::coordinator

#endif  // RINGATTN_SERVER_COORDINATOR_PREPARE_BATCH_H_
