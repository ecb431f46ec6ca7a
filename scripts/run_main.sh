#!/usr/bin/env bash
# The main job: installs what is missing, builds, starts a local cluster (one
# coordinator and 4 CPU worker processes on 127.0.0.1), sends a Gemma-4-like
# batch through a sliding and a full layer forward and backward, checks it
# against the fp64 oracle, prints errors, throughput and per-rank step times,
# and shuts the cluster down. Extra arguments go to `ringattn`; for example
# `scripts/run_main.sh serve` keeps a local cluster running, and
# `build/release/bin/ringattn --help` lists the flags.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="$(nproc)"
# Paths relative to the checkout, so ccache hits across clones.
export CCACHE_BASEDIR="$PWD"

scripts/setup_deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$jobs" --target ringattn_cli ringattn_coordinator_main \
  ringattn_worker_main
if [ $# -eq 0 ]; then set -- demo; fi
exec build/release/bin/ringattn "$@"
