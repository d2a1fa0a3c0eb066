"""The one place a SparkSession is built."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator

from pyspark import SparkConf, SparkContext, StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

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
        # Adaptive execution replaces a finished stage whose output is empty by an empty relation,
        # and with it any CollectMetrics node inside: Spark then never fulfils that Observation
        # and Observation.get waits for ever (SPARK-54620; clean hung on every log without a bad
        # row, its quarantine side being empty). Observed counts are read with a bound anyway
        # (waits.observed); without this rule they also arrive when a side is empty.
        "spark.sql.adaptive.optimizer.excludedRules":
            "org.apache.spark.sql.execution.adaptive.AQEPropagateEmptyRelation",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Parquet written here is read by Petastorm / pyarrow: no INT96 timestamps.
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        # A window buffers one partition group (clean: a user-day) on the heap up to this many
        # rows, then in a spillable sorter that is much slower to fill and read: at the default
        # 4096, users with more events in a day slowed clean's window stage down. 256K rows of
        # ~200 bytes each.
        "spark.sql.windowExec.buffer.in.memory.threshold": "262144",
        # Input splits of at most 64 MB (Spark's default: 128 MB): a stage ends with its last
        # task, and smaller tasks leave less of it alone on one core.
        "spark.sql.files.maxPartitionBytes": "64m",
        # Checkpointed and cached blocks (clean's parsed rows) are written and read with Kryo,
        # faster to read back than Java serialization.
        "spark.serializer": "org.apache.spark.serializer.KryoSerializer",
        # The throughput collector for the driver JVM, which is the whole of Spark under a local
        # master: clean's parse and checkpoint ran faster with it than with G1.
        # Each setting's figures: benchmarks/RESULTS.md, "Measurements behind code choices".
        # It takes effect where get_session starts the JVM (the recsys CLI, tests, notebooks);
        # under spark-submit, pass --driver-java-options instead.
        "spark.driver.extraJavaOptions": "-XX:+UseParallelGC",
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
    # Connect to spark-submit's JVM first: without it SparkConf() is a Python-only dict and
    # misses the spark.* system properties that hold the command line's settings.
    SparkContext._ensure_initialized()
    return {k for k, _ in SparkConf().getAll()}


@contextmanager
def materialised(df: DataFrame) -> Iterator[DataFrame]:
    """``df`` computed once, by a job run now, onto the executors' local disk, with its
    partitioning known to the planner; its blocks are released when the block ends.

    A local checkpoint: the rows are stored as rows and readers do not recompute ``df``. It is
    cheaper than ``persist``, which also builds compressed columnar batches. Its blocks go to
    local disk only (the OS page cache keeps recent ones in memory): held on the heap as row
    objects, clean's parsed rows cost garbage collection to store and left too little memory
    for the sorts that read them, which spilled (figures: benchmarks/RESULTS.md, "Measurements
    behind code choices"). The checkpoint's plan runs without adaptive execution: a frame
    cached or checkpointed from an adaptive plan reports no partitioning, so every later
    join, aggregate or window on the same keys would shuffle it again. Unlike ``persist`` it
    keeps no lineage: an executor lost while the block runs fails the job instead of
    recomputing its part.
    """
    spark = df.sparkSession
    persistent = spark.sparkContext._jsc.getPersistentRDDs
    before = set(persistent().keys())
    adaptive = spark.conf.get("spark.sql.adaptive.enabled")
    spark.conf.set("spark.sql.adaptive.enabled", "false")
    try:
        out = df.localCheckpoint(eager=True, storageLevel=StorageLevel.DISK_ONLY)
    finally:
        spark.conf.set("spark.sql.adaptive.enabled", adaptive)
    # The checkpoint's own blocks, taken now: what the block's body persists is not ours to free.
    own = [rdd for rdd_id, rdd in persistent().items() if rdd_id not in before]
    try:
        yield out
    finally:
        for rdd in own:
            rdd.unpersist(False)


# ----------------------------------------------------------------------------- partitioning


def spread_key(key: Column, partitions: int) -> Column:
    """An int column that sends rows with ``key`` k to partition ``k mod partitions`` when a
    frame is hash-partitioned on it alone (``repartition(partitions, column)``).

    Hash partitioning puts a row in ``pmod(murmur3(value), partitions)``: with few keys (clean's
    30 days x 2 buckets over 8 partitions) collisions make some partitions several times larger
    than others, and the largest decides the stage's time (10M lines: 0.34M to 2.05M rows per
    partition). Here each residue class of ``key`` gets a value that hashes to its own
    partition, so consecutive keys fill consecutive partitions. The value is a function of
    ``key``: grouping by it with the columns that make ``key`` changes no group.
    """
    values = F.array(*[F.lit(v) for v in _partition_values(partitions)])
    return F.element_at(values, (F.pmod(key, F.lit(partitions)) + 1).cast("int"))


def _partition_values(partitions: int) -> list[int]:
    """For each partition p, the smallest int v >= 0 with pmod(murmur3(v, 42), partitions) == p."""
    found: dict[int, int] = {}
    v = 0
    while len(found) < partitions:
        found.setdefault(_murmur3_int(v) % partitions, v)
        v += 1
    return [found[p] for p in range(partitions)]


def _murmur3_int(value: int, seed: int = 42) -> int:
    """Spark's Murmur3_x86_32.hashInt (the hash of HashPartitioning and F.hash), signed."""
    mask = 0xFFFFFFFF

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (32 - r))) & mask

    k1 = rotl((value & mask) * 0xCC9E2D51 & mask, 15) * 0x1B873593 & mask
    h1 = (rotl(seed ^ k1, 13) * 5 + 0xE6546B64) & mask
    h1 ^= 4
    h1 ^= h1 >> 16
    h1 = h1 * 0x85EBCA6B & mask
    h1 ^= h1 >> 13
    h1 = h1 * 0xC2B2AE35 & mask
    h1 ^= h1 >> 16
    return h1 - (1 << 32) if h1 & 0x80000000 else h1
