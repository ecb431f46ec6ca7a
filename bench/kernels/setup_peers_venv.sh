#!/usr/bin/env bash
# Creates the benchmark-only virtual environment bench/kernels/peers.py runs
# in (build/peers-venv, CPU-only PyTorch). Never run by the README commands
# or CI: peers.py is a by-hand benchmark.
#
#   bench/kernels/setup_peers_venv.sh [venv dir]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${1:-${root}/build/peers-venv}"
python3 -m venv "${venv}"
"${venv}/bin/pip" install --upgrade pip >/dev/null
# The CPU wheel index first (no CUDA libraries to download); PyPI otherwise.
"${venv}/bin/pip" install --retries 1 --timeout 15 --index-url https://download.pytorch.org/whl/cpu torch ||
  "${venv}/bin/pip" install torch
"${venv}/bin/python" -c 'import torch; print("torch", torch.__version__)'
