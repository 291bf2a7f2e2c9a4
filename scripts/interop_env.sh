#!/usr/bin/env bash
# Create .venv-interop for tests/interop: MLServer, its scikit-learn runtime and the Triton
# gRPC client. Separate from .venv because their pins (protobuf, grpcio) may clash with ours.
#
# Idempotent: does nothing when the venv's stamp exists; a half-built venv is completed.
# Usage: bash scripts/interop_env.sh      (env: PYTHON=python3.11, INTEROP_VENV=.venv-interop)
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1

PYTHON="${PYTHON:-python3}"
VENV="${INTEROP_VENV:-.venv-interop}"
STAMP="$VENV/.installed"
# Pinned to the versions the interop test was written against (update together).
PACKAGES=(mlserver==1.7.1 mlserver-sklearn==1.7.1 scikit-learn==1.9.1 "tritonclient[grpc]==2.73.0")

if [ -f "$STAMP" ]; then
    echo "interop venv $VENV is ready"
    exit 0
fi
start=$(date +%s)
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "${PACKAGES[@]}"
# Fail here, not in the test, when something is missing. mlserver and tritonclient each
# register inference.* protos in the default pool, so they are imported in separate processes.
"$VENV/bin/mlserver" --help >/dev/null
"$VENV/bin/python" -c "import sklearn, mlserver_sklearn"
"$VENV/bin/python" -c "import tritonclient.grpc"
touch "$STAMP"
echo "interop venv $VENV built in $(( $(date +%s) - start ))s, $(du -sh "$VENV" | cut -f1)"
