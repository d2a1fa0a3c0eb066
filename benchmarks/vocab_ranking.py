"""Vocabulary ranking: the parallel two-pass row numbers of ``features/row_numbers.py`` against the
global ``row_number().over(Window.orderBy(...))`` it replaced (all rows in one task).

    .venv/bin/python benchmarks/vocab_ranking.py --rows 2000000 --master 'local[2]'

Prints the seconds of each (best of ``--repeat``), rows/s, the ratio, and checks that both
give the same number to every key.
"""

from __future__ import annotations

import argparse
import time

from pyspark.sql import Window
from pyspark.sql import functions as F

from recsys_spark.config import SparkConfig
from recsys_spark.features.row_numbers import row_numbers
from recsys_spark.spark import get_session


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="distinct keys to rank")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)

    spark = get_session(SparkConfig(master=args.master, shuffle_partitions=8, show_progress=False,
                                    driver_memory="3g", conf={"spark.ui.enabled": "false"}))
    spark.sparkContext.setLogLevel("ERROR")  # the global window warns once per batch
    # Keys with skewed counts and many ties, like item or user event counts.
    counts = (
        spark.range(args.rows)
        .select(F.col("id").alias("key"), (F.pmod(F.xxhash64("id"), F.lit(1000)) ** 2 / 1000).cast("long").alias("n"))
        .localCheckpoint(eager=True)
    )
    order = [F.desc("n"), F.asc("key")]

    def ours():
        return row_numbers(counts, order, "idx", start=2)

    def global_window():
        return counts.withColumn("idx", F.row_number().over(Window.orderBy(*order)) + 1)

    timings = {}
    for name, build in (("two-pass (ours)", ours), ("Window.orderBy (reference)", global_window)):
        best = float("inf")
        for _ in range(args.repeat):
            start = time.perf_counter()
            build().write.format("noop").mode("overwrite").save()
            best = min(best, time.perf_counter() - start)
        timings[name] = best

    mismatches = (
        ours().alias("a").join(global_window().alias("b"), "key")
        .where(F.col("a.idx") != F.col("b.idx")).count()
    )
    for name, seconds in timings.items():
        print(f"{name:28s} {seconds:8.2f} s  {args.rows / seconds:12,.0f} rows/s")
    ref, new = timings["Window.orderBy (reference)"], timings["two-pass (ours)"]
    print(f"ratio reference / ours: {ref / new:.2f}x  ({args.rows:,} keys, {args.master}; "
          f"keys numbered differently: {mismatches})")
    spark.stop()


if __name__ == "__main__":
    main()
