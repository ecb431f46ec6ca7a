#!/usr/bin/env bash
# The Python tests' environment: a fresh venv that sees the system's packages
# (Debian's numpy, grpcio, protobuf, torch, pytest, cryptography), with the
# ringattn wheel built from client/python and installed like a user would,
# plus the pinned grpcio-tools the stub drift check needs.
#   make_venv.sh VENV_DIR SOURCE_DIR
set -euo pipefail
venv="$1"
src="$2/client/python"
tools="$(sed -n 's/^GRPCIO_TOOLS_VERSION = "\(.*\)"$/\1/p' "$src/gen_protos.py")"
rm -rf "$venv"
# No pip of its own: the system pip, seen through the system packages, installs into it.
/usr/bin/python3 -m venv --system-site-packages --without-pip "$venv"
# A copy, so the build leaves nothing behind in the source tree.
stage="$venv/stage"
mkdir -p "$stage"
cp -r "$src/pyproject.toml" "$src/README.md" "$src/src" "$stage/"
pip=("$venv/bin/python" -m pip -q --disable-pip-version-check)
"${pip[@]}" wheel --no-deps --no-build-isolation -w "$venv/dist" "$stage"
"${pip[@]}" install "$venv"/dist/ringattn-*.whl "grpcio-tools==$tools"
"$venv/bin/python" -c "import ringattn, ringattn.client; print('ringattn', ringattn.__version__, 'at', ringattn.__file__)"
