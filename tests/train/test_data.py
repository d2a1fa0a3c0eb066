"""Per-rank training data (Petastorm shards), evaluation rows, item features (train/data.py)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recsys_spark import schema
from recsys_spark.errors import DataQualityError, InputError
from recsys_spark.train import data

pytestmark = pytest.mark.unit

# Spark writes ArrayType(IntegerType, containsNull=False) as list<int32 not null>.
INT_LIST = pa.list_(pa.field("element", pa.int32(), nullable=False))


FIRST_TARGET = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


def write_features(root: Path, n_windows: int = 200, num_items: int = 32, seq_len: int = 8,
                   n_validation: int = 24, seed: int = 0, first_target: dt.datetime = FIRST_TARGET) -> dict:
    """A tiny featurised dataset as the featurize stage lays it out, written with pyarrow.

    Windows walk the catalogue in steps of 2 (item i is followed by i + 2, wrapping), so the
    next item is learnable; 2 training files with row groups of 25 windows. Window w's last
    target is at ``first_target`` + w minutes.

    Returns:
        the metadata dict (also written to metadata.json).
    """
    rng = np.random.default_rng(seed)
    real = np.arange(schema.FIRST_ITEM_INDEX, num_items)

    def walk(length: int) -> list[int]:
        start = int(rng.integers(0, len(real)))
        return [int(real[(start + 2 * i) % len(real)]) for i in range(length)]

    windows = []
    for _ in range(n_windows):
        n = int(rng.integers(3, seq_len + 2))
        pad = [schema.PAD_INDEX] * (seq_len + 1 - n)
        events = rng.integers(1, 5, n).tolist()
        gaps = [0] + rng.integers(1, 10, n - 1).tolist()
        windows.append((pad + walk(n), pad + events, pad + gaps))
    (root / "train").mkdir(parents=True)
    half = n_windows // 2
    for f, part in enumerate((windows[:half], windows[half:])):
        columns = (schema.ITEM_SEQ, schema.EVENT_SEQ, schema.GAP_SEQ)
        table = pa.table({name: pa.array([w[i] for w in part], INT_LIST) for i, name in enumerate(columns)})
        offset = f * half
        times = [first_target + dt.timedelta(minutes=offset + w) for w in range(len(part))]
        table = table.append_column(schema.TARGET_TIME, pa.array(times, pa.timestamp("us", tz="UTC")))
        pq.write_table(table, root / "train" / f"part-{f:05d}.parquet", row_group_size=25)

    rows = []
    for u in range(n_validation):
        steps = walk(seq_len)
        hist = steps[: seq_len - 2]
        rows.append({
            schema.USER_ID: f"u{u}",
            schema.HIST_ITEMS: [0, 0] + hist,
            schema.HIST_EVENTS: [0, 0] + [1] * len(hist),
            schema.HIST_GAPS: [0, 0, 0] + [3] * (len(hist) - 1),
            schema.SEEN_ITEMS: hist,
            schema.TARGET_ITEMS: steps[seq_len - 2:],
            schema.TARGET_EVENTS: [1, 1],
        })
    (root / "validation").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), root / "validation" / "part-00000.parquet")

    (root / "item_vocab").mkdir()
    vocab = pa.table({
        schema.ITEM_IDX: pa.array(real, pa.int32()),
        schema.PRODUCT_ID: pa.array(1000 + real, pa.int64()),
        schema.CATEGORY_IDX: pa.array(real % 4, pa.int32()),
        schema.BRAND_IDX: pa.array(real % 3, pa.int32()),
        schema.PRICE_BUCKET: pa.array(1 + real % 3, pa.int32()),
        schema.TRAIN_COUNT: pa.array(real, pa.int64()),
        schema.PRETEST_COUNT: pa.array(real + 1, pa.int64()),
    })
    pq.write_table(vocab, root / "item_vocab" / "part-00000.parquet")
    metadata = {
        "num_items": num_items, "num_categories": 4, "num_brands": 3, "num_price_buckets": 4,
        "num_event_codes": schema.NUM_EVENT_CODES, "num_gap_buckets": schema.NUM_GAP_BUCKETS, "max_seq_len": seq_len,
        "counts": {"train": n_windows, "validation": n_validation},
    }
    (root / schema.FEATURE_METADATA).write_text(json.dumps(metadata))
    return metadata


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("features")
    write_features(root)
    return root


def read_shard(features: Path, rank: int, size: int, seed: int = 1) -> list[tuple[int, ...]]:
    rows = []
    path = str(features / "train")
    with data.train_batches(path, rank, size, batch_size=16, seed=seed, shuffle_buffer=32) as batches:
        for items, events, gaps in batches:
            assert items.dtype == events.dtype == gaps.dtype == torch.int64
            assert items.shape[1] == events.shape[1] == gaps.shape[1] == 9
            assert items.shape[0] <= 16
            rows.extend(tuple(r) for r in items.tolist())
    return rows


def test_two_shards_split_the_windows_between_them(features):
    everything = pq.read_table(features / "train").column(schema.ITEM_SEQ).to_pylist()
    shard0, shard1 = read_shard(features, 0, 2), read_shard(features, 1, 2)
    # Row groups of 25 windows: 8 in all, 4 per shard.
    assert len(shard0) == len(shard1) == 100
    assert sorted(shard0 + shard1) == sorted(tuple(r) for r in everything)
    assert sorted(read_shard(features, 0, 1)) == sorted(tuple(r) for r in everything)


def test_a_different_seed_gives_a_different_order_of_the_same_rows(features):
    first, second = read_shard(features, 0, 2, seed=1), read_shard(features, 0, 2, seed=2)
    assert sorted(first) == sorted(second) and first != second


def test_eval_rows_are_sliced_by_rank(features):
    table = pq.read_table(features / "validation").to_pylist()
    part = data.read_eval_rows(str(features / "validation"), rank=1, size=3)
    expected = table[1::3]
    assert len(part) == len(expected) == 8
    assert part.hist_items.shape == (8, 8) and part.hist_items.dtype == np.int64
    assert part.hist_items.tolist() == [r[schema.HIST_ITEMS] for r in expected]
    assert [t.tolist() for t in part.target_items] == [r[schema.TARGET_ITEMS] for r in expected]
    assert [s.tolist() for s in part.seen_items] == [r[schema.SEEN_ITEMS] for r in expected]
    with pytest.raises(InputError, match="nowhere"):
        data.read_eval_rows(str(features / "nowhere"))


def test_a_validation_sample_is_the_same_on_every_rank_and_split_between_them(features):
    table = pq.read_table(features / "validation").to_pylist()
    whole = data.read_eval_rows(str(features / "validation"), limit=10, seed=3)
    assert len(whole) == 10 < len(table)
    parts = [data.read_eval_rows(str(features / "validation"), rank, 2, limit=10, seed=3) for rank in (0, 1)]
    assert parts[0].hist_items.tolist() + parts[1].hist_items.tolist() != [] and sorted(
        parts[0].hist_items.tolist() + parts[1].hist_items.tolist()) == sorted(whole.hist_items.tolist())
    assert data.read_eval_rows(str(features / "validation"), limit=10, seed=4).hist_items.tolist() != \
        whole.hist_items.tolist()
    assert len(data.read_eval_rows(str(features / "validation"), limit=1000)) == len(table)


def test_metadata_and_item_features(features):
    assert data.read_metadata(str(features))["num_items"] == 32
    with pytest.raises(InputError, match="metadata"):
        data.read_metadata(str(features / "missing"))
    vocab = pd.DataFrame({
        schema.ITEM_IDX: [3, 2], schema.PRODUCT_ID: [30, 20], schema.CATEGORY_IDX: [1, 2], schema.BRAND_IDX: [0, 5],
        schema.PRICE_BUCKET: [4, 1], schema.TRAIN_COUNT: [7, 9], schema.PRETEST_COUNT: [8, 9],
    })
    arrays = data.item_feature_arrays(vocab, num_items=5)
    assert arrays[schema.CATEGORY_IDX].tolist() == [0, 0, 2, 1, 0]
    assert arrays[schema.BRAND_IDX].tolist() == [0, 0, 5, 0, 0]
    assert arrays[schema.PRICE_BUCKET].tolist() == [0, 0, 1, 4, 0]
    assert arrays[schema.TRAIN_COUNT].tolist() == [0, 0, 9, 7, 0]
    with pytest.raises(DataQualityError, match="outside"):
        data.item_feature_arrays(vocab, num_items=3)
    with pytest.raises(DataQualityError, match="more than once"):
        data.item_feature_arrays(pd.concat([vocab, vocab]), num_items=5)
