#!/usr/bin/env bash
# The main job: installs what is missing, builds, and runs the kernel demo (a
# Gemma-4-like batch through a sliding and a full layer, forward and
# backward, checked against the fp64 oracle). Extra arguments go to the demo;
# see `build/release/kernels/ringattn_kernel_demo --help`.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="$(nproc)"

scripts/setup_deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$jobs" --target ringattn_kernel_demo
exec build/release/kernels/ringattn_kernel_demo "$@"
