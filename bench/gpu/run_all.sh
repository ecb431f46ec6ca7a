#!/usr/bin/env bash
# Everything that needs a GPU, from a build made by scripts/run_tests.sh
# (build/release): the CUDA parity tests, our kernel benchmark, the PyTorch
# peers, and the NCCL ring check when bench/gpu/nccl_ring.sh exists. Every
# headline number is a "figure: <name> <value>" line; collect them with
#   bench/gpu/run_all.sh 2>&1 | tee gpu.log; grep '^figure:' gpu.log
# Without a GPU each step says so and the script exits 0.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${RINGATTN_BUILD_DIR:-${repo}/build/release}"
bench="${build}/bin/ringattn_gpu_attention_bench"
status=0

if [[ ! -d "${build}" ]]; then
  echo "no build at ${build}: run scripts/run_tests.sh first (or set RINGATTN_BUILD_DIR)" >&2
  exit 1
fi

echo "== CUDA parity tests"
ctest --test-dir "${build}" -R Cuda --output-on-failure || status=1

echo "== CUDA kernel benchmark"
ours="$(mktemp)"
trap 'rm -f "${ours}"' EXIT
if [[ -x "${bench}" ]]; then
  "${bench}" | tee "${ours}" || status=1
else
  echo "${bench} not built (no CUDA toolkit at configure time?)"
fi

echo "== PyTorch peers (SDPA flash, FlexAttention)"
python3 "${repo}/bench/gpu/peers.py" --ours "${ours}" || status=1

if [[ -f "${repo}/bench/gpu/nccl_ring.sh" ]]; then
  echo "== NCCL ring"
  bash "${repo}/bench/gpu/nccl_ring.sh" || status=1
fi

echo "== figures"
grep -h '^figure:' "${ours}" || true
exit "${status}"
