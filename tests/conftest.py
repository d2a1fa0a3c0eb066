"""Shared fixtures: one local[2] Spark session for the whole run, temp dirs, tiny configs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Spark's Python workers must run this interpreter (torch, horovod live in it).
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("RECSYS_PSEUDONYM_KEY", "test-key-not-secret")


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


@pytest.fixture
def tiny_overrides(tmp_path) -> list[str]:
    """Overrides for a whole-pipeline run on a tiny sample under tmp_path (seconds, not minutes)."""
    return [
        f"paths.root={tmp_path / 'work'}",
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
