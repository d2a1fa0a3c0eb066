#!/usr/bin/env bash
# Create or reuse .venv in the repository and install the pinned stack, Horovod included.
# Idempotent: when nothing it depends on changed, it returns in well under a second.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.recsys-installed"
HASH="$(cat "$ROOT/requirements/constraints.txt" "$ROOT/setup.cfg" "$ROOT/scripts/bootstrap.sh" \
        "$ROOT/scripts/build_horovod.sh" | sha256sum | cut -d' ' -f1)"

# A Redis server for `recsys publish` / `recsys serve` and the tests that use a real one. Checked
# on every run (the check costs nothing): a machine can lose it while the venv stays as it is.
if ! command -v redis-server >/dev/null 2>&1; then
    SUDO=""
    [[ "$(id -u)" -eq 0 ]] || SUDO="sudo -n"
    if command -v apt-get >/dev/null 2>&1 && { [[ -z "$SUDO" ]] || sudo -n true 2>/dev/null; }; then
        echo "bootstrap: installing redis-server (apt-get)"
        $SUDO apt-get install -y -q redis-server >/dev/null \
            || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q redis-server >/dev/null; } \
            || { echo "bootstrap: apt-get could not install redis-server" >&2; exit 1; }
    else
        echo "bootstrap: redis-server is not on PATH and cannot be installed here (not root, no apt-get or" \
             "no password-less sudo): install it (apt-get install redis-server, brew install redis) before" \
             "\`make serve\` or \`make test\`" >&2
    fi
fi

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" && -x "$VENV/bin/recsys" ]]; then
    exit 0
fi

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "bootstrap: need Python 3.11, found $("$PYTHON" --version 2>&1) at $PYTHON (set PYTHON=...)" >&2
    exit 1
fi
if ! java -version >/dev/null 2>&1; then
    echo "bootstrap: need Java 17+ on PATH for Spark (e.g. apt-get install openjdk-17-jre-headless)" >&2
    exit 1
fi

echo "bootstrap: setting up $VENV (first time: ~10 min, most of it building Horovod)"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
VPY="$VENV/bin/python"
export PIP_CONSTRAINT="$ROOT/requirements/constraints.txt" PIP_DISABLE_PIP_VERSION_CHECK=1
# pip, quiet, without the machine's notes about unused local index folders.
pipq() { "$VPY" -m pip "$@" -q 2> >(grep -v "is ignored: it is neither" >&2); }
pipq install -U pip setuptools wheel
# torch first and alone: a CPU wheel of exactly this version; Horovod compiles against it.
pipq install "torch==2.13.0"
"$VPY" -c "import torch" || { echo "bootstrap: torch install failed" >&2; exit 1; }
# Horovod's build needs its own runtime dependencies present (no build isolation).
pipq install cloudpickle psutil pyyaml packaging cffi
PIP_CONSTRAINT= PYTHON="$VPY" bash "$ROOT/scripts/build_horovod.sh"
pipq install -e "$ROOT[dev]"
"$VPY" -c "import recsys_spark, pyspark, petastorm, mlflow, horovod.torch" \
    || { echo "bootstrap: the environment is incomplete" >&2; exit 1; }
echo "$HASH" > "$STAMP"
echo "bootstrap: ready ($("$VPY" -c 'import torch, pyspark, mlflow, horovod; print(f"torch {torch.__version__}, pyspark {pyspark.__version__}, mlflow {mlflow.__version__}, horovod {horovod.__version__}")'))"
