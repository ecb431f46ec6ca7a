#include "tests/server/testing/service_checks.h"

#include <sys/wait.h>

#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/convert.h"
#include "kernels/reference/compare.h"

namespace ringattn::server::testing {
namespace {

using kernels::reference::Compare;
using kernels::reference::ErrorStats;

// Appends "name: ..." to `report` when `got` is not within `tolerance`.
void Check(const char* name, std::span<const float> got, std::span<const double> want,
           double tolerance, std::string& report) {
  if (got.size() != want.size()) {
    absl::StrAppend(&report, name, ": ", got.size(), " values, expected ", want.size(), "; ");
    return;
  }
  const ErrorStats e = Compare(got, want);
  if (!e.Within(tolerance)) {
    absl::StrAppend(
        &report, absl::StrFormat("%s: rel err %.3g (tol %.2g), %d NaN, %d mismatched inf; ", name,
                                 e.relative(), tolerance, e.nans, e.mismatched_infinities));
  }
}

int64_t StatusFieldKiB(pid_t pid, const std::string& field) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string key;
  while (in >> key) {
    if (key == field + ":") {
      int64_t kib = -1;
      in >> kib;
      return kib;
    }
    in.ignore(1 << 12, '\n');
  }
  return -1;
}

}  // namespace

OracleResult ComputeOracle(const kernels::reference::SyntheticBatch& batch,
                           const kernels::LayerConfig& layer, bool backward) {
  OracleResult r;
  r.problem = kernels::reference::ToDenseProblem(batch, layer);
  r.forward = kernels::reference::DenseForward(r.problem);
  if (backward) {
    const std::vector<double> dout(batch.dout.begin(), batch.dout.end());
    r.grads = kernels::reference::DenseBackward(r.problem, dout);
  }
  return r;
}

namespace {

std::vector<float> ToF32(kernels::DType dtype, std::span<const std::byte> bytes) {
  std::vector<float> out(bytes.size() / kernels::DTypeSize(dtype));
  kernels::ToF32(dtype, bytes.data(), static_cast<int64_t>(out.size()), out.data());
  return out;
}

}  // namespace

std::string ForwardMismatch(const kernels::reference::SyntheticBatch& batch,
                            const OracleResult& want, std::span<const std::byte> out,
                            std::span<const float> lse) {
  if (out.size() % kernels::DTypeSize(batch.dtype) != 0) {
    return absl::StrCat("O: ", out.size(), " bytes");
  }
  std::string report;
  Check("O", ToF32(batch.dtype, out), want.forward.out,
        kernels::reference::OutputTolerance(batch.dtype), report);
  Check("LSE", lse, want.forward.lse, 1e-5, report);
  return report;
}

kernels::reference::DenseGrads GradientsAt(const kernels::reference::SyntheticBatch& batch,
                                           const OracleResult& want,
                                           std::span<const std::byte> out) {
  if (batch.dtype == kernels::DType::kF32) return want.grads;
  const std::vector<float> o = ToF32(batch.dtype, out);
  if (o.size() != want.forward.out.size()) return want.grads;  // ForwardMismatch says so.
  return kernels::reference::GradsAtGivenOutput(want.problem, want.forward, want.grads, batch.dout,
                                                o);
}

std::string BackwardMismatch(const kernels::reference::SyntheticBatch& batch,
                             const kernels::reference::DenseGrads& want, std::span<const float> dq,
                             std::span<const float> dk, std::span<const float> dv) {
  const double tol = kernels::reference::GradientTolerance(batch.dtype);
  std::string report;
  Check("dQ", dq, want.dq, tol, report);
  Check("dK", dk, want.dk, tol, report);
  Check("dV", dv, want.dv, tol, report);
  return report;
}

std::string BackwardMismatch(const kernels::reference::SyntheticBatch& batch,
                             const OracleResult& want, std::span<const std::byte> out,
                             std::span<const float> dq, std::span<const float> dk,
                             std::span<const float> dv) {
  return BackwardMismatch(batch, GradientsAt(batch, want, out), dq, dk, dv);
}

bool ChildRunning(pid_t pid) {
  if (pid <= 0) return false;
  siginfo_t info{};
  // WNOWAIT leaves an exited child waitable for whoever reaps it later.
  if (waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0) return false;
  return info.si_pid == 0;
}

int64_t RssKiB(pid_t pid) { return StatusFieldKiB(pid, "VmRSS"); }

int64_t PeakRssKiB(pid_t pid) { return StatusFieldKiB(pid, "VmHWM"); }

}  // namespace ringattn::server::testing
