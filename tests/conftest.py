"""Shared fixtures: one local[2] Spark session for the whole run, temp dirs, tiny configs."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Spark's Python workers must run this interpreter (torch, horovod live in it).
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("RECSYS_PSEUDONYM_KEY", "test-key-not-secret")

# A hang fails one test, with its stack, instead of the CI run at 90 minutes: every test gets
# the time limit of its costliest marker (pytest-timeout; seconds, setup and teardown included,
# so the first test to build the session-wide Spark fixture has room for it). An explicit
# @pytest.mark.timeout(N) on a test wins.
TIME_LIMITS_S = {"gpu": 900, "e2e": 1800, "distributed": 900, "unit": 300}
DEFAULT_TIME_LIMIT_S = 600


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("timeout") is not None:
            continue
        limits = [s for marker, s in TIME_LIMITS_S.items() if item.get_closest_marker(marker) is not None]
        item.add_marker(pytest.mark.timeout(max(limits, default=DEFAULT_TIME_LIMIT_S)))


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from recsys_spark.config import SparkConfig
    from recsys_spark.spark import get_session

    warehouse = tmp_path_factory.mktemp("warehouse")
    session = get_session(
        SparkConfig(
            master="local[2]",
            app_name="recsys_spark-tests",
            driver_memory="2g",
            shuffle_partitions=2,
            show_progress=False,
            conf={
                "spark.ui.enabled": "false",
                "spark.sql.warehouse.dir": str(warehouse),
                "spark.default.parallelism": "2",
                "spark.driver.extraJavaOptions": f"-Djava.io.tmpdir={warehouse}",
            },
        )
    )
    yield session
    session.stop()


def tiny_overrides_at(folder: Path) -> list[str]:
    """Overrides for a whole-pipeline run on a tiny sample under folder/work (seconds, not minutes)."""
    return [
        f"paths.root={folder / 'work'}",
        "spark.shuffle_partitions=2",
        "spark.show_progress=false",
        "generate.n_users=300",
        "generate.n_items=200",
        "generate.n_categories=10",
        "generate.n_brands=20",
        "generate.days=12",
        "generate.n_bots=1",
        "clean.allow_dev_key=true",
        "featurize.validation_days=2",
        "featurize.test_days=2",
        "featurize.min_eval_users=1",  # a tiny sample: a few dozen users per period
        "featurize.max_seq_len=20",
        "featurize.train_files=2",
        "featurize.row_group_mb=1",
        "train.epochs=2",
        "train.batch_size=64",
        "train.embedding_dim=16",
        "train.num_layers=1",
        "train.uniform_negatives=32",
        "train.warmup_steps=5",
        "score.top_k=10",
    ]


@pytest.fixture
def tiny_overrides(tmp_path) -> list[str]:
    return tiny_overrides_at(tmp_path)


@dataclass(frozen=True)
class PipelineRun:
    """A finished ``recsys run``: its work directory and what it printed."""

    root: Path
    stdout: str


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> PipelineRun:
    """``recsys run`` on the tiny sample, two Horovod processes on gloo, as a user runs it.

    One run for the session: test_e2e checks what it wrote and test_notebooks reads it (a second
    whole-pipeline run cost 4-7 minutes of a CI run). Tests must not write under its root.
    """
    folder = tmp_path_factory.mktemp("tiny_pipeline")
    out = subprocess.run(
        [sys.executable, "-m", "recsys_spark", "run", "--config", str(REPO / "conf" / "local.yaml"),
         *tiny_overrides_at(folder), "train.launcher=horovod_spark", "train.num_proc=2"],
        capture_output=True, text=True, cwd=folder, timeout=1800,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return PipelineRun(root=folder / "work", stdout=out.stdout)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real ``redis-server`` for the session (tests/redis_server.py). A test that stops it must
    start it again; one that needs its own (to kill it) builds a RedisServer in its tmp_path."""
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    """The session's Redis, running and empty: its URL (redis://127.0.0.1:<port>/0)."""
    redis_server.start()
    redis_server.flush()
    return redis_server.url
