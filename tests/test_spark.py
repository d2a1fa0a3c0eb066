"""The Spark helpers: a materialised frame keeps its partitioning and frees its blocks."""

from __future__ import annotations

from pyspark.sql import Window
from pyspark.sql import functions as F

from recsys_spark.spark import materialised


def _plan(df) -> str:
    return df._jdf.queryExecution().executedPlan().toString()


def test_materialised_frame_is_read_without_recomputing_or_reshuffling(spark):
    partitions = int(spark.conf.get("spark.sql.shuffle.partitions"))
    df = spark.range(40).select((F.col("id") % 3).alias("day"), (F.col("id") % 5).alias("user"), "id")
    shuffled = df.repartition(partitions, "day")
    adaptive = spark.conf.get("spark.sql.adaptive.enabled")
    persistent = spark.sparkContext._jsc.getPersistentRDDs
    before = set(persistent().keys())
    with materialised(shuffled) as kept:
        # Windows on keys that include the partitioning keys need no exchange.
        by_user = Window.partitionBy("day", "user").orderBy("id")
        by_day = Window.partitionBy("day").orderBy("id")
        windowed = kept.select("*", F.row_number().over(by_user).alias("a")).select(
            "*", F.row_number().over(by_day).alias("b"))
        plan = _plan(windowed)
        assert "Exchange" not in plan
        assert "ExistingRDD" in plan  # read from the checkpoint, not from range()
        rows = windowed.where((F.col("day") == 1) & (F.col("user") == 1)).orderBy("id").collect()
        assert [(r.id, r.a) for r in rows] == [(1, 1), (16, 2), (31, 3)]
        assert windowed.count() == 40
        assert spark.conf.get("spark.sql.adaptive.enabled") == adaptive  # restored at once
        held = set(persistent().keys()) - before
        assert held
        other = spark.range(5).rdd.persist()  # persisted inside the block, by someone else
    assert not held & set(persistent().keys())
    assert other.id() in set(persistent().keys())  # not the block's to free
    other.unpersist()
