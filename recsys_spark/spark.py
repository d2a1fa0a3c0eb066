"""The one place a SparkSession is built."""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

from recsys_spark.config import SparkConfig


def get_session(cfg: SparkConfig) -> SparkSession:
    """Get or create the session described by ``cfg``.

    Under ``spark-submit`` the master and resources given on its command line win: a
    setting already present in the submitted SparkConf is left as it is.
    """
    # Executors must run the same interpreter as the driver (torch, horovod, mlflow live
    # there); a cluster sets PYSPARK_PYTHON itself, e.g. to a shipped virtual environment.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

    submitted = _submitted_conf()
    builder = SparkSession.builder
    settings = {
        "spark.master": cfg.master,
        "spark.app.name": cfg.app_name,
        "spark.driver.memory": cfg.driver_memory,
        "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.showConsoleProgress": str(cfg.show_progress).lower(),
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Parquet written here is read by Petastorm / pyarrow: no INT96 timestamps.
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        **cfg.conf,
    }
    for key, value in settings.items():
        if key in submitted:
            continue
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.log_level)
    return spark


def _submitted_conf() -> set[str]:
    """Keys that spark-submit already set (it passes them as spark.* system properties)."""
    if "SPARK_SUBMIT" not in os.environ and "PYSPARK_GATEWAY_PORT" not in os.environ:
        return set()
    from pyspark import SparkConf, SparkContext

    # Connect to spark-submit's JVM first: without it SparkConf() is a Python-only dict and
    # misses the spark.* system properties that hold the command line's settings.
    SparkContext._ensure_initialized()
    return {k for k, _ in SparkConf().getAll()}
