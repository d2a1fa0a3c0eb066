"""The main suite's door to the DAG's tests: they run in Airflow's own environment, .venv-airflow
(`make airflow-env`; `make test` installs it first), with the jobs run by this Python."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.e2e

AIRFLOW_PYTHON = REPO / ".venv-airflow" / "bin" / "python"


def test_dag_tests_pass_in_the_airflow_environment():
    assert AIRFLOW_PYTHON.exists(), f"{AIRFLOW_PYTHON} is missing: run `make airflow-env` (scripts/bootstrap_airflow.sh)"
    env = {**os.environ, "RECSYS_MAIN_PYTHON": sys.executable}
    out = subprocess.run(
        [str(AIRFLOW_PYTHON), "-m", "pytest", "tests/airflow", "-q", "-p", "no:cacheprovider", "-m", "not gpu"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=2400,
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert " passed" in out.stdout.splitlines()[-1] and "failed" not in out.stdout.splitlines()[-1], out.stdout[-1000:]
