"""Where the pipeline runs and keeps its data: the Spark session, the storage layout, MLflow."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from recsys_spark.config.base import _bounded_waits

URI_SCHEMES = ("hdfs://", "s3a://", "s3://", "gs://", "abfss://", "wasbs://", "dbfs:/", "file:/")


def is_uri(path: str) -> bool:
    return path.startswith(URI_SCHEMES)


@dataclass(frozen=True)
class SparkConfig:
    master: str = "local[2]"
    app_name: str = "recsys_spark"
    driver_memory: str = "4g"
    shuffle_partitions: int = 8
    log_level: str = "WARN"
    show_progress: bool = True
    # Any further spark.* settings, passed through verbatim (e.g. executor resources).
    conf: dict[str, str] = field(default_factory=dict)
    # No stage runs longer than this: past it, its Spark jobs are cancelled and it stops with an
    # error naming this key, before it publishes anything.
    stage_timeout_minutes: float = 720.0
    # How long a stage waits for Spark to report an observed count after its action ended
    # (normally milliseconds); past it the stage counts the rows directly instead.
    observation_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        _bounded_waits("spark", self, ("stage_timeout_minutes", "observation_timeout_s"))


@dataclass(frozen=True)
class PathsConfig:
    """Storage layout. Relative entries are resolved under ``root``; URIs pass through."""

    root: str = "work"
    raw: str = "raw"
    clean: str = "clean"
    quarantine: str = "quarantine"
    features: str = "features"
    checkpoints: str = "checkpoints"
    recommendations: str = "recommendations"
    reports: str = "reports"
    # The shop's log of the recommendations it showed (schema.FEEDBACK_SCHEMA, Parquet; optional:
    # clean skips it when absent), its valid rows by run_date, and its rejected rows with a reason
    # (a table apart from quarantine: a sub-folder would break reading that partitioned table).
    feedback: str = "feedback"
    clean_feedback: str = "clean_feedback"
    feedback_quarantine: str = "feedback_quarantine"
    # Under clean.id_types.product_id=string: each product's 63-bit key and its id as it came in
    # (schema.PRODUCT_IDS_SCHEMA, by event_date), written by clean, read by score (product_ids.py).
    product_ids: str = "product_ids"

    def resolve(self, name: str) -> str:
        value = getattr(self, name)
        if is_uri(value) or os.path.isabs(value):
            return value
        if is_uri(self.root):
            return self.root.rstrip("/") + "/" + value
        return str(Path(self.root) / value)


@dataclass(frozen=True)
class MlflowConfig:
    # Empty means a local store under paths.root: sqlite:///<root>/mlflow/mlflow.db
    tracking_uri: str = ""
    experiment: str = "recsys_spark"
    registered_model: str = "recsys_two_tower"
    alias: str = "challenger"
