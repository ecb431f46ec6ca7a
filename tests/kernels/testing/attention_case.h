#ifndef RINGATTN_TESTS_KERNELS_TESTING_ATTENTION_CASE_H_
#define RINGATTN_TESTS_KERNELS_TESTING_ATTENTION_CASE_H_

#include <cstdint>
#include <memory>
#include <ostream>
#include <span>
#include <string>
#include <vector>

#include "kernels/backends.h"
#include "kernels/chunk_backend.h"
#include "kernels/layer_config.h"
#include "kernels/reference/chunked_attention.h"
#include "kernels/reference/synthetic_batch.h"

namespace ringattn::kernels::testing {

// One attention problem checked against the fp64 oracle: a batch layout,
// a layer, a dtype and a number of contiguous chunks (ring ranks).
struct AttentionCase {
  reference::BatchShape shape;
  std::vector<reference::RowLayout> layouts;  // One per row, or one for all.
  LayerConfig layer;
  DType dtype = DType::kF32;
  int64_t chunks = 1;
  uint64_t seed = 1;
  double logit_std = 1.0;  // Of the scaled logits; sets the Q/K amplitude.
};

reference::SyntheticBatch MakeBatch(const AttentionCase& c);

// Runs the chunk kernels over the case and expects O, LSE (and with
// `backward`, dQ, dK, dV) within the stated tolerances of the oracle, with
// no NaN and -inf exactly where the oracle has it.
void ExpectMatchesOracle(const AttentionCase& c, ChunkBackend& backend, bool backward = true);

// Expects `got` within `tolerance` (relative to the oracle's largest
// magnitude) of `want`, with no NaN and -inf exactly where `want` has it.
void ExpectWithin(const char* what, std::span<const float> got, std::span<const double> want,
                  double tolerance);

// Expects `got` (a whole-sequence result, however computed) within the
// stated tolerances of the oracle for `batch` under `layer`.
void ExpectResultMatchesOracle(const reference::SyntheticBatch& batch, const LayerConfig& layer,
                               const reference::ChunkedResult& got, bool backward);

// Every instruction set this CPU supports, for tests parameterized on it.
std::vector<std::string> SupportedIsas();

// The CPU kernels; a failure to create them fails the test (null then).
std::unique_ptr<ChunkBackend> MakeCpuBackend(int num_threads = 0, const std::string& isa = "");

// A layout with one document covering the whole row: plain causal attention.
reference::RowLayout SingleDocument(int64_t seq_len);

}  // namespace ringattn::kernels::testing

namespace ringattn::kernels::testing {

struct NamedCase {
  std::string name;  // Spells the configuration, e.g. Sliding_W17_F32_D64_Cp3.
  AttentionCase c;
};

// gtest prints the name instead of the bytes of the case.
inline void PrintTo(const NamedCase& c, std::ostream* os) { *os << c.name; }

// The mask-feature matrix every kernel is checked on: each rule alone and
// combined, windows smaller and larger than a shard, image blocks across
// chunk and document boundaries, packed documents, an all-padding last
// chunk, GQA 8:2 and 8:1, odd lengths, every head dim and dtype.
std::vector<NamedCase> OracleCases();

}  // namespace ringattn::kernels::testing

#endif  // RINGATTN_TESTS_KERNELS_TESTING_ATTENTION_CASE_H_
