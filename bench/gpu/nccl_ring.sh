#!/usr/bin/env bash
# NCCL transport on the GPU: first its GPU tests (ctest -R Nccl: self
# exchange, grouped exchanges, timeouts, abort, a multi-GPU ring against the
# oracle), then self-exchange bandwidth and communication/compute overlap on
# one GPU, plus a 2-rank ring exchange with two or more GPUs. Prints
# `figure:` lines; on a machine without a GPU prints
# "no CUDA device: skipped" and exits 0.
#
#   bench/gpu/nccl_ring.sh [flags of ringattn_nccl_overlap_bench]
#
# RINGATTN_BUILD_DIR picks the build tree (default build/release); the bench
# is built there first if it is missing.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${RINGATTN_BUILD_DIR:-$root/build/release}
bin=$build/bin/ringattn_nccl_overlap_bench

have_gpu() {
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '
}

if ! have_gpu; then
  echo "no CUDA device: skipped"
  exit 0
fi
test_bin=$build/tests/server_ring_transports_nccl_transport_test
if [[ ! -x $bin || ! -x $test_bin ]]; then
  if [[ ! -f $build/CMakeCache.txt ]]; then
    cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DRINGATTN_BUILD_TESTS=ON -DRINGATTN_BUILD_BENCH=ON >/dev/null
  fi
  cmake --build "$build" --target ringattn_nccl_overlap_bench server_ring_transports_nccl_transport_test
fi
if [[ ! -x $bin ]]; then
  echo "ringattn_nccl_overlap_bench was not built (no CUDA toolkit or NCCL?)" >&2
  exit 1
fi
status=0
ctest --test-dir "$build" -R Nccl --output-on-failure || status=1
"$bin" "$@" || status=1
exit "$status"
