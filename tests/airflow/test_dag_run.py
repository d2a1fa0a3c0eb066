"""The DAG's tasks, in order, for one date, with dag.test(): real spark-submits of the packaged
project on local Spark, the jobs running with the pipeline's Python, on a tiny generated sample."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.airflow.conftest import MAIN_PYTHON, REPO, load_dag

pytestmark = pytest.mark.e2e

RUN_DATE = dt.date(2019, 10, 12)  # the last day of the 12 generated from 2019-10-01


def write_config(path: Path, overrides: list[str]) -> Path:
    """A YAML profile over conf/local.yaml holding ``section.key=value`` overrides."""
    sections: dict[str, dict] = {}
    for item in overrides:
        key, _, value = item.partition("=")
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump({"extends": str(REPO / "conf" / "local.yaml"), **sections}))
    return path


def recsys(*args: str, cwd: Path) -> None:
    """Run a stage with the pipeline's Python, as a user does."""
    out = subprocess.run([str(MAIN_PYTHON), "-m", "recsys_spark", *args], capture_output=True, text=True, cwd=cwd,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]


def day_files(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_dag_runs_one_date_end_to_end(airflow_home, tmp_path, tiny_overrides, monkeypatch, redis_server):
    redis_server.start()
    redis_server.flush()
    config = write_config(
        tmp_path / "tiny.yaml",
        [*tiny_overrides, "generate.start_date=2019-10-01", "train.launcher=local", "evaluate.baselines=[popularity]",
         f"serve.redis_url={redis_server.url}"],
    )
    root = tmp_path / "work"
    # The days before the run date exist already, as after the DAG's earlier runs.
    recsys("generate", "--config", str(config), cwd=tmp_path)
    recsys("clean", "--config", str(config), f"clean.end_date={RUN_DATE - dt.timedelta(days=1)}", cwd=tmp_path)
    zip_path = tmp_path / "dist" / "recsys_spark.zip"
    recsys_zip = subprocess.run([str(MAIN_PYTHON), "-m", "recsys_spark.packaging", str(zip_path)],
                                capture_output=True, text=True, cwd=REPO, timeout=300)
    assert recsys_zip.returncode == 0, recsys_zip.stderr
    clean = root / "clean"
    before = {d: day_files(clean / f"event_date={d}") for d in ("2019-10-01", "2019-10-11")}
    assert not (clean / f"event_date={RUN_DATE}").exists()

    # How a worker is set up: spark-submit on the PATH, Spark's Python, the master in a connection.
    monkeypatch.setenv("PATH", f"{MAIN_PYTHON.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYSPARK_PYTHON", str(MAIN_PYTHON))
    monkeypatch.setenv("PYSPARK_DRIVER_PYTHON", str(MAIN_PYTHON))
    monkeypatch.setenv("AIRFLOW_CONN_RECSYS_TEST_SPARK", json.dumps({"conn_type": "spark", "host": "local[2]"}))
    monkeypatch.chdir(tmp_path)
    dag = load_dag({"recsys_config": str(config), "recsys_py_files": str(zip_path),
                    "recsys_spark_conn_id": "recsys_test_spark"})

    run = dag.test(logical_date=dt.datetime.combine(RUN_DATE, dt.time(), dt.timezone.utc))

    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert states == dict.fromkeys(["clean", "featurize", "train", "evaluate", "score", "publish"], "success"), states
    assert str(run.state) == "success"

    # clean wrote exactly the run's date and left the days before it as they were.
    assert any(p.suffix == ".parquet" for p in (clean / f"event_date={RUN_DATE}").iterdir())
    assert {d: day_files(clean / f"event_date={d}") for d in before} == before
    report = json.loads((root / "reports" / "clean_report.json").read_text())
    assert report["dates"] == [RUN_DATE.isoformat()]

    # The model was trained, evaluated against the baseline, and scored for the run's date.
    evaluation = json.loads((root / "reports" / "evaluation.json").read_text())
    assert "popularity" in json.dumps(evaluation)
    recs = pq.read_table(root / "recommendations" / f"run_date={RUN_DATE}").to_pandas()
    assert len(recs) > 0 and recs["user_id"].nunique() * 10 == len(recs)
    assert [p.name for p in (root / "recommendations").iterdir() if p.name.startswith("run_date=")] == [
        f"run_date={RUN_DATE}"
    ]
    # publish served that date's lists.
    version = redis_server.get("recsys:current")
    assert version is not None and version.startswith(f"{RUN_DATE}-")
    user = recs["user_id"].iloc[0]
    served = json.loads(redis_server.get(f"recsys:v:{version}:u:{user}"))  # the response's items, by slot
    mine = recs[recs["user_id"] == user].sort_values("slot")
    assert [e["item_id"] for e in served] == mine["item_id"].tolist()
    assert [e["slot"] for e in served] == mine["slot"].tolist()
