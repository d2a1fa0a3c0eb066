"""The MLflow UI's view of a training run: a real ``mlflow server`` on loopback (sqlite backend,
proxied artifacts), training logging to it over HTTP, everything checked through its REST API."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml

from recsys_spark import tracking
from recsys_spark.config import load_config
from recsys_spark.train import runner
from recsys_spark.train.validation import metric_key

from tests.train.test_data import write_features

pytestmark = pytest.mark.e2e

MLFLOW = Path(sys.executable).parent / "mlflow"
RUN_DATE = "2019-10-13"
EPOCHS = 2
# The server's start (MLflow's ~60 sqlite migrations, each fsynced, then uvicorn importing the
# app) took 28-94 s on an idle 2-core VM and more than 180 s in one CI run on a busy one.
SERVER_START_S = 600


class Server:
    """Talks to the server's REST API (``/api/2.0/mlflow/...``) with the standard library."""

    def __init__(self, url: str, artifacts: Path):
        self.url = url
        self.artifacts = artifacts

    def get(self, endpoint: str, **params: Any) -> dict[str, Any]:
        query = urllib.parse.urlencode(params)
        return json.loads(self._read(f"{self.url}/api/2.0/mlflow/{endpoint}?{query}"))

    def post(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(f"{self.url}/api/2.0/mlflow/{endpoint}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        return json.loads(self._read(request))

    def artifact(self, run_id: str, path: str) -> bytes:
        """An artifact's bytes, as the UI downloads it."""
        query = urllib.parse.urlencode({"path": path, "run_uuid": run_id})
        return self._read(f"{self.url}/get-artifact?{query}")

    @staticmethod
    def _read(request: str | urllib.request.Request) -> bytes:
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{exc.code} from {exc.url}: {exc.read()[:500]!r}") from None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """``mlflow server`` on a free loopback port; stopped (its whole process group) afterwards."""
    port = free_port()
    artifacts = tmp_path / "server" / "artifacts"
    artifacts.mkdir(parents=True)
    log = tmp_path / "server" / "server.log"
    cmd = [str(MLFLOW), "server",
           "--backend-store-uri", f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}",
           "--artifacts-destination", str(artifacts),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if process.poll() is not None:
                raise AssertionError(f"mlflow server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            if time.monotonic() > deadline:
                raise AssertionError(f"mlflow server not up after {SERVER_START_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield Server(url, artifacts)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_training_over_http_shows_up_in_the_mlflow_server(spark, tmp_path, mlflow_server, monkeypatch):
    server = mlflow_server
    write_features(tmp_path / "features")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # tracking.setup sets it; restored after the test
    monkeypatch.setenv(tracking.RUN_DATE_ENV, RUN_DATE)
    monkeypatch.setenv(tracking.GIT_COMMIT_ENV, "0badc0ffee12")
    previous_uri = mlflow.get_tracking_uri()
    cfg = load_config(None, [
        f"paths.root={tmp_path}", f"mlflow.tracking_uri={server.url}", "mlflow.experiment=ui-check",
        "train.launcher=local", f"train.epochs={EPOCHS}", "train.patience=0", "train.batch_size=32",
        "train.embedding_dim=16", "train.num_layers=1", "train.uniform_negatives=16", "train.warmup_steps=3",
    ])
    try:
        summary = runner.run(spark, cfg)
    finally:
        mlflow.set_tracking_uri(previous_uri)
    ndcg = metric_key("val_ndcg", cfg.train.eval_k)

    # The experiment, with its description, and the run in it, named after the stage and date.
    experiment = server.get("experiments/get-by-name", experiment_name="ui-check")["experiment"]
    assert experiment["artifact_location"].startswith("mlflow-artifacts:")  # served by the server
    assert {t["key"]: t["value"] for t in experiment["tags"]}[tracking.TAG_NOTE] == tracking.EXPERIMENT_NOTE
    runs = server.post("runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    assert len(runs) == 1
    run = server.get("runs/get", run_id=summary["run_id"])["run"]
    assert run["info"]["run_name"] == f"train-{RUN_DATE}"
    assert run["info"]["status"] == "FINISHED"
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags[tracking.TAG_STAGE] == "train"
    assert tags[tracking.TAG_RUN_DATE] == RUN_DATE
    assert tags[tracking.TAG_GIT_COMMIT] == "0badc0ffee12"
    assert tags["spark.app_id"] == spark.sparkContext.applicationId
    assert tags[tracking.TAG_NOTE].startswith("`recsys train`")
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["train.epochs"] == str(EPOCHS) and params["mlflow.tracking_uri"] == server.url

    # Metrics: one validation NDCG point per evaluation (here one per pass), logged by the
    # training process at its optimiser step.
    history = server.get("metrics/get-history", run_id=summary["run_id"], metric_key=ndcg)["metrics"]
    steps = sorted(m["step"] for m in history)
    assert len(steps) == EPOCHS and steps[-1] == summary["steps"] and len(set(steps)) == EPOCHS
    assert all(0.0 <= m["value"] <= 1.0 for m in history)

    # Artifacts: the config, the training history and its curve, the model; proxied by the server
    # into --artifacts-destination.
    listed = server.get("artifacts/list", run_id=summary["run_id"], path="training")
    assert {f["path"] for f in listed["files"]} >= {"training/history.json", "training/curve.png"}
    assert server.artifact(summary["run_id"], "training/curve.png").startswith(b"\x89PNG\r\n\x1a\n")
    logged = json.loads(server.artifact(summary["run_id"], "training/history.json"))
    assert [h["epoch"] for h in logged["history"]] == list(range(1, EPOCHS + 1))
    assert yaml.safe_load(server.artifact(summary["run_id"], "config.yaml"))["mlflow"]["experiment"] == "ui-check"
    stored = list(server.artifacts.rglob("curve.png"))
    assert len(stored) == 1 and summary["run_id"] in stored[0].parts

    # The registered model: version 1 from this run, described, behind the configured alias.
    name, alias = cfg.mlflow.registered_model, cfg.mlflow.alias
    version = server.get("registered-models/alias", name=name, alias=alias)["model_version"]
    assert version["version"] == "1" and version["run_id"] == summary["run_id"]
    assert version["status"] == "READY"
    assert summary["run_id"] in version["description"] and f"NDCG@{cfg.train.eval_k}" in version["description"]
    model = server.get("registered-models/get", name=name)["registered_model"]
    assert {"alias": alias, "version": "1"} in model["aliases"]
