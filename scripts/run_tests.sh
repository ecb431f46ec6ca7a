#!/usr/bin/env bash
# Installs what is missing, builds and runs the test suite.
#   scripts/run_tests.sh          optimized build (preset "release")
#   scripts/run_tests.sh asan     AddressSanitizer + UndefinedBehaviorSanitizer
#   scripts/run_tests.sh tsan     ThreadSanitizer
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${1:-release}"
case "$preset" in
  release|asan|tsan|debug) ;;
  *) echo "usage: $0 [release|asan|tsan|debug]" >&2; exit 2 ;;
esac
jobs="$(nproc)"
# Paths relative to the checkout, so ccache hits across clones.
export CCACHE_BASEDIR="$PWD"

scripts/setup_deps.sh
echo "== configure ($preset)"
cmake --preset "$preset" >/dev/null
echo "== build ($preset, $jobs jobs)"
cmake --build --preset "$preset" -j "$jobs"
echo "== test ($preset)"
ctest --preset "$preset" -j "$jobs"
