"""The Spark helpers: a materialised frame keeps its partitioning and frees its blocks; spread_key
sends each key to the partition its residue names."""

from __future__ import annotations

from pyspark.sql import Window
from pyspark.sql import functions as F

from recsys_spark.spark import _murmur3_int, materialised, spread_key


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


def test_murmur3_matches_sparks_hash(spark):
    values = [0, 1, -1, 7, 42, 2**31 - 1, -(2**31), 123456789, -987654321]
    df = spark.createDataFrame([(v,) for v in values], "v int")
    assert [r.h for r in df.select(F.hash("v").alias("h")).collect()] == [_murmur3_int(v) for v in values]


def test_spread_key_sends_each_key_to_its_residues_partition(spark):
    # 3 days x 2 buckets over 4 partitions: by hash several keys can share a partition and
    # leave another empty; spread, key k lands in partition k mod 4 (keys 0..5 -> 0,1,2,3,0,1).
    df = spark.createDataFrame([(d, b, u) for d in range(3) for b in range(2) for u in range(3)],
                               "day int, bucket int, user int")
    key = F.col("day") * 2 + F.col("bucket")
    spread = df.withColumn("part", spread_key(key, 4)).repartition(4, "part")
    rows = spread.select(key.alias("k"), "part", F.spark_partition_id().alias("p")).collect()
    assert len(rows) == 18
    assert all(r.p == r.k % 4 for r in rows)
    # One value per key: grouping by it with the key's columns changes no group.
    assert {(r.k, r.part) for r in rows} == {(k, spread.select(spread_key(F.lit(k), 4)).first()[0]) for k in range(6)}
    assert len({r.part for r in rows}) == 4
