#!/usr/bin/env bash
# Create or reuse .venv-airflow (Airflow and its Spark provider, for dags/recsys_daily.py) from
# the pins in requirements/airflow*.txt. Its own environment: Airflow's pins clash with the
# pipeline's (see requirements/airflow.txt). The DAG's spark-submit jobs use .venv.
# Idempotent: when nothing it depends on changed, it returns in well under a second.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-airflow"
STAMP="$VENV/.recsys-installed"
HASH="$(cat "$ROOT/requirements/airflow.txt" "$ROOT/requirements/airflow-lock.txt" \
        "$ROOT/scripts/bootstrap_airflow.sh" | sha256sum | cut -d' ' -f1)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" && -x "$VENV/bin/airflow" ]]; then
    exit 0
fi

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if ! "$PYTHON" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 13))'; then
    echo "bootstrap_airflow: need Python 3.10-3.13 for Airflow 3.3, found $("$PYTHON" --version 2>&1) at $PYTHON (set PYTHON=...)" >&2
    exit 1
fi

echo "bootstrap_airflow: setting up $VENV (first time: about a minute)"
started=$SECONDS
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
# Thousands of files that must never be committed, whatever the repository's .gitignore says.
echo "*" > "$VENV/.gitignore"
VPY="$VENV/bin/python"
export PIP_CONSTRAINT="$ROOT/requirements/airflow-lock.txt" PIP_DISABLE_PIP_VERSION_CHECK=1
# pip, quiet, without the machine's notes about unused local index folders.
pipq() { "$VPY" -m pip "$@" -q 2> >(grep -v "is ignored: it is neither" >&2); }
PIP_CONSTRAINT= pipq install -U pip
pipq install -r "$ROOT/requirements/airflow.txt"
"$VPY" -c "import airflow.sdk, airflow.providers.apache.spark.operators.spark_submit" \
    || { echo "bootstrap_airflow: the environment is incomplete" >&2; exit 1; }
echo "$HASH" > "$STAMP"
echo "bootstrap_airflow: ready in $((SECONDS - started))s (apache-airflow $("$VPY" -c 'import airflow; print(airflow.__version__)'))"
