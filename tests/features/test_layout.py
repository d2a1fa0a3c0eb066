"""The training file layout: one row group per file, a multiple of the ranks, even shards."""

from __future__ import annotations

import warnings

import pyarrow.parquet as pq
import pytest

from recsys_spark import io
from recsys_spark import schema
from recsys_spark.features.layout import block_mb, plan_train_files, shuffle_for_training, window_bytes

pytestmark = pytest.mark.unit


def test_plan_train_files():
    assert window_bytes(3) == 3 * 4 * 6 + 16
    assert plan_train_files(rows=100, row_bytes=88, row_group_mb=1, min_files=3, shards=2) == 4
    # 10 MB of windows at 1 MiB per row group: 10 files, rounded up to a multiple of 4 ranks.
    assert plan_train_files(rows=10_000, row_bytes=1000, row_group_mb=1, min_files=2, shards=4) == 12
    # Never more files than rows (but at least one per shard).
    assert plan_train_files(rows=3, row_bytes=88, row_group_mb=1, min_files=8, shards=2) == 4
    assert plan_train_files(rows=0, row_bytes=88, row_group_mb=1, min_files=4, shards=2) == 2


def test_each_petastorm_shard_gets_an_even_share(spark, tmp_path):
    from petastorm import make_batch_reader

    rows = [(f"u{i % 5}", i // 5, [i, i + 1, i + 2, i + 3], [1, 1, 1, 1], [0, 1, 2, 3]) for i in range(21)]
    windows = spark.createDataFrame(rows, f"user_id string, window_no int, {schema.ITEM_SEQ} array<int>, "
                                          f"{schema.EVENT_SEQ} array<int>, {schema.GAP_SEQ} array<int>")
    path = str(tmp_path / "train")
    io.write_table(schema.conform(shuffle_for_training(windows, 4, seed=1), schema.TRAIN_SCHEMA), path, block_mb(1))

    files = sorted((tmp_path / "train").glob("*.parquet"))
    per_file = [pq.ParquetFile(f).metadata for f in files]
    assert len(files) == 4 and all(m.num_row_groups == 1 for m in per_file)
    sizes = [m.num_rows for m in per_file]
    assert sum(sizes) == 21 and max(sizes) - min(sizes) <= 2  # round robin from 2 input partitions

    warnings.filterwarnings("ignore", category=FutureWarning, module="petastorm")
    shard_rows = []
    for shard in range(2):
        with make_batch_reader(io.local_uri(path), schema_fields=[schema.ITEM_SEQ], cur_shard=shard, shard_count=2,
                               num_epochs=1, workers_count=1) as reader:
            shard_rows.append(sum(len(batch.item_seq) for batch in reader))
    assert sum(shard_rows) == 21
    # Two whole files (row groups) each, so the shards differ by at most one file's worth.
    pairs = {sizes[i] + sizes[j] for i in range(4) for j in range(i + 1, 4)}
    assert all(r in pairs for r in shard_rows)
    assert abs(shard_rows[0] - shard_rows[1]) <= min(sizes)
