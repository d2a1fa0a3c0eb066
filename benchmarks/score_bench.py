"""Batch scoring throughput and memory: the score stage's Spark path against a single-process
torch matrix multiply + top-k on the same vectors (the machine's limit).

    .venv/bin/python benchmarks/score_bench.py            # 10k and 100k items, top-100
    .venv/bin/python benchmarks/score_bench.py --items 10000 --users 4000 --repeats 1

Both sides rank random vectors of the model's size (dim 64 + the item-bias component) with the
same block size. The Spark side is the job's own code path: the user vectors travel in a
DataFrame column, the item vectors in the broadcast ScoringPlan, and Spark tasks
(one torch thread each, ``mapInArrow``) run ``Recommender.blocks`` (blocked matmul + ``torch.topk``
+ exclusion masking), and Spark explodes the lists into ranked rows, written to the ``noop`` sink. The reference
keeps its results as tensors. Figures are users/s; each side is measured ``--repeats`` times,
alternating, and the best run is reported (the machine may be shared).

Memory: the peak RSS growth of the Python worker inside a task (``/proc/self/clear_refs``
resets the high-water mark at the task's start), for two user counts and two block sizes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recsys_spark import schema  # noqa: E402
from recsys_spark.schema import EXCLUDE_PRODUCTS, USER_CATEGORY, USER_KEY, USER_VECTOR  # noqa: E402
from recsys_spark.scoring.recommender import ItemSpace, ListRules, ScoringPlan, VectorEncoder  # noqa: E402
from recsys_spark.scoring.recommender import task_recommender  # noqa: E402
from recsys_spark.scoring.score import recommend  # noqa: E402

DIM = 65  # TwoTowerModel's default: embedding_dim 64 + the item-bias component


def reference(users: torch.Tensor, items: torch.Tensor, k: int, block_size: int) -> float:
    """Single-process blocked matmul + top-k with all of torch's threads. Returns: seconds."""
    start = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, len(users), block_size):
            torch.topk(users[lo : lo + block_size] @ items.T, k, dim=1)
    return time.perf_counter() - start


def make_plan(items: np.ndarray, k: int, block_size: int) -> ScoringPlan:
    n = len(items)
    model_items = ItemSpace(np.arange(n, dtype=np.int64), np.full(n, -1, np.int64), vectors=items)
    fallback = ItemSpace(np.zeros(0, np.int64), np.zeros(0, np.int64), popularity=np.zeros(0, np.float32))
    return ScoringPlan(VectorEncoder(), model_items, fallback, np.zeros(0, np.int64), np.zeros(0, np.int64),
                       ListRules(k=k, block_size=block_size))


def user_frame(spark, vectors: np.ndarray, partitions: int):
    from pyspark.sql import types as T

    struct = T.StructType([
        T.StructField(schema.USER_ID, T.StringType()),
        T.StructField(USER_VECTOR, T.ArrayType(T.FloatType())),
        T.StructField(EXCLUDE_PRODUCTS, T.ArrayType(T.LongType())),
        T.StructField(USER_CATEGORY, T.LongType()),
        T.StructField(USER_KEY, T.LongType()),
    ])
    frame = pd.DataFrame({
        schema.USER_ID: [f"u{i}" for i in range(len(vectors))],
        USER_VECTOR: list(vectors),
        EXCLUDE_PRODUCTS: [np.zeros(0, np.int64)] * len(vectors),
        USER_CATEGORY: pd.array([None] * len(vectors), dtype="Int64"),
        USER_KEY: np.arange(len(vectors), dtype=np.int64),
    })
    df = spark.createDataFrame(frame, struct).repartition(partitions).cache()
    df.count()
    return df


def spark_run(df, plan_bc) -> float:
    start = time.perf_counter()
    recommend(df, plan_bc).write.format("noop").mode("overwrite").save()
    return time.perf_counter() - start


def peak_memory(df, plan_bc):
    """Per task: users scored and the worker's peak RSS growth (MiB) while scoring them."""
    from pyspark.sql import types as T

    def probe(batches):
        recommender = task_recommender(plan_bc)  # built before the reset: a task's fixed cost
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        base = _status_kb("VmRSS")
        users = 0
        for batch in batches:
            for block in recommender.blocks(batch):  # what score_partition yields to Spark
                users += block.num_rows
        yield pa.RecordBatch.from_pydict({"users": [users], "peak_mib": [(_status_kb("VmHWM") - base) / 1024]})

    struct = T.StructType([T.StructField("users", T.LongType()), T.StructField("peak_mib", T.DoubleType())])
    return df.mapInArrow(probe, struct).toPandas()


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--users", type=int, nargs="+", default=None,
                        help="users per catalogue size (default 20000 at 10k items, 4000 at 100k)")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--memory-users", type=int, nargs=2, default=[1_000, 8_000])
    parser.add_argument("--memory-blocks", type=int, nargs=2, default=[64, 256])
    args = parser.parse_args(argv)
    users_for = dict(zip(args.items, args.users or [20_000 if n <= 10_000 else 4_000 for n in args.items]))

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from recsys_spark.config import SparkConfig
    from recsys_spark.spark import get_session

    spark = get_session(SparkConfig(master=args.master, app_name="score_bench", driver_memory="4g",
                                    show_progress=False, conf={"spark.ui.enabled": "false"}))
    cores = spark.sparkContext.defaultParallelism
    rng = np.random.default_rng(0)
    print(f"score_bench: top-{args.k}, dim {DIM}, block {args.block_size}, Spark {args.master} ({cores} task slots, "
          f"1 torch thread each), reference: 1 process, {torch.get_num_threads()} torch threads")
    print(f"{'items':>8} {'users':>7} {'reference users/s':>18} {'spark users/s':>14} {'ratio':>6}")
    for n in args.items:
        items = rng.standard_normal((n, DIM), dtype=np.float32)
        vectors = rng.standard_normal((users_for[n], DIM), dtype=np.float32)
        plan_bc = spark.sparkContext.broadcast(make_plan(items, args.k, args.block_size))
        df = user_frame(spark, vectors, 2 * cores)
        spark_run(df, plan_bc)  # warm-up: start every worker, import torch, load the broadcast
        ref_s, spark_s = [], []
        for _ in range(args.repeats):
            ref_s.append(reference(torch.from_numpy(vectors), torch.from_numpy(items), args.k, args.block_size))
            spark_s.append(spark_run(df, plan_bc))
        ref, ours = len(vectors) / min(ref_s), len(vectors) / min(spark_s)
        print(f"{n:>8} {len(vectors):>7} {ref:>18,.0f} {ours:>14,.0f} {ours / ref:>6.2f}")
        df.unpersist()
        plan_bc.destroy()

    n = max(args.items)
    items = rng.standard_normal((n, DIM), dtype=np.float32)
    print(f"\npeak RSS growth of a Python worker while scoring one task ({n:,} items, top-{args.k}; "
          f"one partition per run; score block = block x items x 4 bytes):")
    print(f"{'block':>6} {'users/task':>10} {'peak MiB':>9} {'score block MiB':>16}")
    for block in args.memory_blocks:
        plan_bc = spark.sparkContext.broadcast(make_plan(items, args.k, block))
        for users in args.memory_users:
            df = user_frame(spark, rng.standard_normal((users, DIM), dtype=np.float32), 1)
            row = peak_memory(df, plan_bc).iloc[0]
            print(f"{block:>6} {int(row['users']):>10} {row['peak_mib']:>9.0f} {block * n * 4 / 2**20:>16.0f}")
            df.unpersist()
        plan_bc.destroy()
    spark.stop()


if __name__ == "__main__":
    main()
