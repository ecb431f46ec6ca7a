#!/bin/sh
# Copies binaries and the shared libraries they load into DEST/bin and
# DEST/lib, for a runtime image without the build's -dev packages. Leaves
# out what every runtime image already has or must not carry: the C
# library, the C++ runtime, the CUDA toolkit's libraries (from the CUDA
# runtime image) and the driver's (mounted by the NVIDIA container runtime).
#   collect-runtime-libs.sh DEST BINARY...
set -eu
dest="$1"
shift
mkdir -p "$dest/bin" "$dest/lib"
for bin in "$@"; do
  cp "$bin" "$dest/bin/"
  if ldd "$bin" | grep -q 'not found'; then
    echo "collect-runtime-libs: $bin has unresolved libraries:" >&2
    ldd "$bin" | grep 'not found' >&2
    exit 1
  fi
  ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | while read -r lib; do
    case "${lib##*/}" in
      libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|libresolv.so.*|ld-linux*) continue ;;
      libstdc++.so.*|libgcc_s.so.*) continue ;;
      libcuda.so.*|libnvidia-*) continue ;;
    esac
    case "$lib" in /usr/local/cuda*) continue ;; esac
    cp -L "$lib" "$dest/lib/"
  done
done
