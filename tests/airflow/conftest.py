"""The DAG's tests need Airflow, which lives in its own environment (.venv-airflow, `make
airflow-env`). The main suite collects only test_airflow_env.py here, which runs the others
with that environment's Python; that environment collects only the others.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

IN_AIRFLOW_ENV = importlib.util.find_spec("airflow") is not None
if IN_AIRFLOW_ENV:
    collect_ignore = ["test_airflow_env.py"]
else:
    collect_ignore_glob = ["test_dag*.py"]

DAGS = REPO / "dags"
# The pipeline's Python (pyspark, torch, ...): it runs the jobs, and its bin holds spark-submit.
MAIN_PYTHON = Path(os.environ.get("RECSYS_MAIN_PYTHON", REPO / ".venv" / "bin" / "python"))


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory) -> Path:
    """A fresh Airflow home with a migrated sqlite database, set before Airflow is imported."""
    home = tmp_path_factory.mktemp("airflow_home")
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        }
    )
    if "airflow" in sys.modules:
        raise RuntimeError("airflow was imported before its home was set; import it inside tests only")
    out = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return home


def load_dag(variables: dict[str, str] | None = None):
    """Parse dags/ as the DAG processor does, with Airflow Variables given as AIRFLOW_VAR_*.

    Returns:
        the ``recsys_daily`` DAG.
    """
    from airflow.dag_processing.dagbag import DagBag

    saved = dict(os.environ)
    os.environ.update({f"AIRFLOW_VAR_{k.upper()}": v for k, v in (variables or {}).items()})
    try:
        bag = DagBag(str(DAGS))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert bag.import_errors == {}, bag.import_errors
    return bag.dags["recsys_daily"]
