"""The whole pipeline, spark-submitted to a real standalone cluster: a master and two workers
(separate JVMs on loopback), the package shipped as the --py-files zip, and Horovod's two
training processes started by Spark tasks inside the workers' executors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from recsys_spark import schema
from recsys_spark.packaging import build_zip

from tests.cluster.standalone import SPARK_HOME, HOST
from tests.conftest import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.distributed]

APP_NAME = "recsys_spark-cluster-test"
RUN_DATE = "2019-11-01"
RANK_LINE = re.compile(r"^\[(\d+)\]<std(?:out|err)>:", re.MULTILINE)


def test_pipeline_runs_on_a_standalone_cluster(standalone_cluster, tmp_path, tiny_overrides):
    cluster = standalone_cluster
    zip_path = build_zip(tmp_path / "dist" / "recsys_spark.zip")
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": HOST}
    cmd = [
        str(SPARK_HOME / "bin" / "spark-submit"),
        "--master", cluster.master_url,
        "--deploy-mode", "client",
        "--name", APP_NAME,
        "--driver-memory", "1g",
        "--executor-memory", "768m",
        "--total-executor-cores", "2",
        "--conf", "spark.ui.enabled=false",
        "--conf", f"spark.driver.host={HOST}",
        "--conf", f"spark.driver.bindAddress={HOST}",
        "--conf", "spark.dynamicAllocation.enabled=false",
        "--py-files", str(zip_path),
        str(REPO / "jobs" / "run.py"),
        "--config", str(REPO / "conf" / "local.yaml"),
        *tiny_overrides,
        # No spark.master here: spark-submit's --master and --name win over conf/local.yaml's.
        "train.launcher=horovod_spark",
        "train.num_proc=2",
        f"score.run_date={RUN_DATE}",
        "evaluate.baselines=[popularity]",  # the tuned ALS / co-occurrence grids are tested elsewhere
    ]
    driver_log = tmp_path / "driver.log"  # PythonRunner merges the driver's stderr into stdout
    with open(driver_log, "w") as log:
        out = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env, timeout=1800)
    printed = driver_log.read_text(errors="replace")
    assert out.returncode == 0, printed[-8000:]
    assert "== recsys run: done" in printed

    # What the pipeline wrote: K recommendations per user for the run date, a registered model.
    root = tmp_path / "work"
    recs = pq.read_table(root / "recommendations").to_pandas()
    assert set(schema.RECOMMENDATION_SCHEMA.fieldNames()) <= set(recs.columns)
    assert {str(d) for d in recs[schema.RUN_DATE].unique()} == {RUN_DATE}
    per_user = recs.groupby(schema.USER_ID)[schema.RANK].agg(["count", "min", "max"])
    assert len(per_user) > 0 and (per_user["count"] == 10).all() and (per_user["max"] == 10).all()
    assert "trained: models:/recsys_two_tower@challenger (version 1)" in printed
    assert "gate: promoted (champion: version 1)" in printed

    # The master ran the application to completion on both workers, with their 2 cores.
    state = cluster.state()
    apps = [a for a in state["completedapps"] if a["name"] == APP_NAME]
    assert len(apps) == 1, json.dumps(state)[:2000]
    app = apps[0]
    assert app["state"] == "FINISHED" and app["cores"] == 2, app
    assert state["activeapps"] == []

    # Each worker hosted one executor of the app, and each executor ran one Horovod rank: the
    # Horovod task inside a Spark task relays its training process's output into the
    # executor's log, prefixed "[<rank>]<stdout>:" / "[<rank>]<stderr>:".
    ranks_per_worker = []
    for i in range(cluster.workers):
        executors = [p for p in (cluster.worker_dir(i) / app["id"]).iterdir() if p.is_dir()]
        assert len(executors) == 1, f"worker {i}: {executors}"
        assert (executors[0] / zip_path.name).is_file()  # --py-files reached the executor
        log = "".join(p.read_text(errors="replace") for p in sorted(executors[0].glob("std*")))
        ranks_per_worker.append(set(RANK_LINE.findall(log)))
    assert ranks_per_worker in ([{"0"}, {"1"}], [{"1"}, {"0"}]), ranks_per_worker

    # MLflow: the pipeline's run holds the stages' runs; training saw a world of 2 processes.
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["recsys_spark"], output_format="list")
    parent = next(r for r in runs if r.data.tags.get("stage") == "pipeline")
    children = {r.data.tags["stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert {"clean", "featurize", "train", "evaluate", "score"} <= set(children)
    assert children["train"].data.tags["train.world_size"] == "2"
