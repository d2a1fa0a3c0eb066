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


# pytest-xdist (`make test` runs two workers): a module's tests stay on one worker, so its module
# fixtures are built once; the modules below are exceptions.
SAME_WORKER = {"tests/test_e2e.py": "tiny_pipeline", "tests/test_notebooks.py": "tiny_pipeline"}  # one session fixture
EACH_TEST_ALONE = ("tests/test_shapes.py",)  # whole-pipeline runs that share only the Spark session


def test_block(nodeid: str) -> str:
    """The tests that must run on one worker with ``nodeid``, named: its module, its shared
    fixture's name, or the test itself."""
    path = nodeid.split("::", 1)[0]
    if path in EACH_TEST_ALONE:
        return nodeid
    return SAME_WORKER.get(path, path)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("timeout") is not None:
            continue
        limits = [s for marker, s in TIME_LIMITS_S.items() if item.get_closest_marker(marker) is not None]
        item.add_marker(pytest.mark.timeout(max(limits, default=DEFAULT_TIME_LIMIT_S)))
    items[:] = heaviest_first(items)


def heaviest_first(items: list) -> list:
    """The blocks of whole-pipeline and multi-process tests, then those that share a module fixture
    (one trains a model or runs Spark jobs for several tests), then the rest; each in collection order.

    Two workers then start on the long tests together and finish on short ones, instead of one
    worker idling while the other runs a five-minute test it drew last. A block (test_block) moves
    as one: its heaviest test decides.
    """
    rank: dict[str, int] = {}
    for item in items:
        block = test_block(item.nodeid)
        rank[block] = min(rank.get(block, 2), weight(item))
    return sorted(items, key=lambda item: rank[test_block(item.nodeid)])


def weight(item) -> int:
    """0: a whole pipeline or several processes; 1: shares a module or class fixture; 2: the rest."""
    if any(item.get_closest_marker(m) is not None for m in ("e2e", "distributed")):
        return 0
    definitions = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    if any(d.scope in ("module", "class") for defs in definitions.values() for d in defs):
        return 1
    return 2


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, absent from the Airflow environment
def pytest_xdist_make_scheduler(config, log):
    """Scopes of work by test_block, handed out in collection order (heaviest first)."""
    from xdist.scheduler import LoadScopeScheduling  # only where xdist runs the tests

    class BlockScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return test_block(nodeid)

    config.option.loadscopereorder = False  # keep heaviest_first's order
    return BlockScheduling(config, log)


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
