#!/usr/bin/env bash
# Build Horovod 0.28.1 against the torch in the active environment (CPU, gloo).
# Horovod's last release asks CMake for C++14; torch >= 2.1 headers need C++17. The same
# one-line change was merged upstream after 0.28.1 but never released.
# On a GPU cluster, export HOROVOD_GPU_OPERATIONS=NCCL first (needs CUDA and NCCL headers).
set -euo pipefail
PY=${PYTHON:-python}
if "$PY" -c "import horovod.torch" 2>/dev/null; then
    echo "horovod already built: $("$PY" -c 'import horovod; print(horovod.__version__)')"
    exit 0
fi
B=$(mktemp -d)
trap 'rm -rf "$B"' EXIT
"$PY" -m pip download -q --no-deps --no-binary :all: -d "$B" horovod==0.28.1
tar xzf "$B"/horovod-0.28.1.tar.gz -C "$B"
sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' \
    "$B"/horovod-0.28.1/CMakeLists.txt "$B"/horovod-0.28.1/horovod/torch/CMakeLists.txt
echo "building horovod 0.28.1 against torch $("$PY" -c 'import torch; print(torch.__version__)') (4-6 min on 2 cores)..."
HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 MAKEFLAGS=-j"$(nproc)" \
    "$PY" -m pip install -q --no-build-isolation --no-cache-dir "$B"/horovod-0.28.1
"$PY" -c "import horovod.torch as hvd; print('horovod', hvd.__version__ if hasattr(hvd, '__version__') else '', 'gloo built:', hvd.gloo_built())"
