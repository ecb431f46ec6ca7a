#ifndef RINGATTN_TESTS_SERVER_TESTING_SERVICE_CHECKS_H_
#define RINGATTN_TESTS_SERVER_TESTING_SERVICE_CHECKS_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kernels/layer_config.h"
#include "kernels/reference/dense_attention.h"
#include "kernels/reference/synthetic_batch.h"

// What the fuzz test and the soak check about the service from outside:
// results against the fp64 oracle (computed once per distinct input) and
// the health of the daemons' processes.

namespace ringattn::server::testing {

// The fp64 oracle's answer for one problem, kept to check many calls.
struct OracleResult {
  kernels::reference::DenseProblem problem;
  kernels::reference::DenseOutput forward;
  kernels::reference::DenseGrads grads;  // Empty unless asked for.
};

OracleResult ComputeOracle(const kernels::reference::SyntheticBatch& batch,
                           const kernels::LayerConfig& layer, bool backward);

// Empty when O (raw bytes in the batch's dtype) and LSE are within the
// stated tolerances of kernels/reference/compare.h, else what is off.
std::string ForwardMismatch(const kernels::reference::SyntheticBatch& batch,
                            const OracleResult& want, std::span<const std::byte> out,
                            std::span<const float> lse);

// The reference for dQ, dK, dV of a backward that read `out` (the O the
// forward returned, in the batch's dtype) for delta = rowsum(dO * O), as
// the API specifies. For bf16/fp16 the oracle's dQ and dK are moved to that
// rounded O: the rounding of O alone can exceed the stated gradient
// tolerance when the true gradients are small (short rows; seen 28x at
// S = 4 in bf16, no service involved). fp32: the oracle's gradients.
kernels::reference::DenseGrads GradientsAt(const kernels::reference::SyntheticBatch& batch,
                                           const OracleResult& want,
                                           std::span<const std::byte> out);

// Empty when dQ, dK, dV are within the stated gradient tolerance of `want`.
std::string BackwardMismatch(const kernels::reference::SyntheticBatch& batch,
                             const kernels::reference::DenseGrads& want, std::span<const float> dq,
                             std::span<const float> dk, std::span<const float> dv);
// The same against GradientsAt(batch, want, out).
std::string BackwardMismatch(const kernels::reference::SyntheticBatch& batch,
                             const OracleResult& want, std::span<const std::byte> out,
                             std::span<const float> dq, std::span<const float> dk,
                             std::span<const float> dv);

// True while `pid` (a child of this process) has not exited; does not reap
// it, so LocalCluster::Stop still sees its exit status.
bool ChildRunning(pid_t pid);

// VmRSS and VmHWM of a process in KiB from /proc/<pid>/status; -1 if gone.
int64_t RssKiB(pid_t pid);
int64_t PeakRssKiB(pid_t pid);

}  // namespace ringattn::server::testing

#endif  // RINGATTN_TESTS_SERVER_TESTING_SERVICE_CHECKS_H_
