"""Per-rank training data (Petastorm shards), evaluation rows, item features, validation metrics."""

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
from torch import nn

from recsys_spark import schema
from recsys_spark.errors import DataQualityError, InputError
from recsys_spark.train import data
from recsys_spark.config import TrainConfig
from recsys_spark.train.checkpoint import save_checkpoint, state_checksum
from recsys_spark.train.schedule import lr_factor
from recsys_spark.train.validation import ranking_values

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


class FixedScores(nn.Module):
    """Stand-in model: user vector = one-hot of the row's last history item; items score = table."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table  # [users, items]: scores of each user (picked by last hist item)

    def item_vectors(self) -> torch.Tensor:
        return torch.eye(self.table.shape[1])

    user_vector = "last"

    def sequence_vectors(self, items, events, gaps) -> torch.Tensor:
        return self.table[items]


def test_ranking_sums_match_hand_computed_ndcg_and_recall():
    # 6 item indices (0 pad, 1 OOV, real 2..5); k = 2.
    table = torch.tensor([
        [9.0, 9.0, 4.0, 3.0, 2.0, 1.0],  # user 0: ranking 2, 3, 4, 5 (pad, OOV never ranked)
        [0.0, 0.0, 1.0, 2.0, 3.0, 4.0],  # user 1: ranking 5, 4, 3, 2 but 5 was seen -> 4, 3, 2
        [0.0, 0.0, 1.0, 2.0, 3.0, 4.0],  # user 2: no targets, not counted
    ])
    rows = data.EvalRows(
        hist_items=np.array([[0, 0], [0, 1], [1, 2]]),
        hist_events=np.zeros((3, 2), dtype=np.int64),
        hist_gaps=np.zeros((3, 2), dtype=np.int64),
        seen_items=[np.array([], dtype=np.int64), np.array([5]), np.array([], dtype=np.int64)],
        target_items=[np.array([3, 5]), np.array([3]), np.array([], dtype=np.int64)],
    )
    values = ranking_values(FixedScores(table), rows, k=2)  # the rows with a target only
    ndcg_sum, recall_sum, counted = values["ndcg"].sum(), values["recall"].sum(), len(values["ndcg"])
    # user 0: top-2 = [2, 3]; hit at rank 2: DCG = 1/log2(3); IDCG (2 targets) = 1 + 1/log2(3)
    #   NDCG = 0.63093 / 1.63093 = 0.386853; recall = 1/2
    # user 1: top-2 = [4, 3]; hit at rank 2: DCG = 1/log2(3); IDCG (1 target) = 1 -> 0.630930; recall 1
    assert counted == 2
    assert ndcg_sum == pytest.approx(0.386853 + 0.630930, abs=1e-6)
    assert recall_sum == pytest.approx(1.5)


def test_checkpoint_round_trip_and_checksum(tmp_path):
    state = {"w": torch.arange(4.0), "b": torch.ones(2)}
    path = save_checkpoint(str(tmp_path / "ckpt"), {"epoch": 3, "model": state})
    assert Path(path).name == "epoch_003.pt" and (tmp_path / "ckpt" / "last.pt").is_file()
    loaded = torch.load(path, weights_only=False)
    assert loaded["epoch"] == 3 and state_checksum(loaded["model"]) == state_checksum(state)
    assert state_checksum({"w": torch.arange(4.0), "b": torch.zeros(2)}) != state_checksum(state)


def test_lr_factor_warms_up_then_follows_a_half_cosine_to_the_floor():
    tc = TrainConfig(warmup_steps=4, lr_schedule="cosine", min_lr_ratio=0.1)
    total = 14  # 10 steps of decay after the warm-up
    factors = [lr_factor(step, tc, total) for step in range(16)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factors[4] == pytest.approx(1.0)
    # Halfway through the decay (step 9): the midpoint of 1 and the floor.
    assert factors[9] == pytest.approx(0.1 + 0.9 * 0.5)
    assert factors[14] == pytest.approx(0.1) and factors[15] == pytest.approx(0.1)  # stays at the floor
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))
    constant = TrainConfig(warmup_steps=0, lr_schedule="constant")
    assert [lr_factor(step, constant, total) for step in (0, 7, 20)] == [1.0, 1.0, 1.0]


class StubComm:
    """One rank of two: rank 0 records what it broadcasts, rank 1 receives ``received``."""

    def __init__(self, is_main: bool, received=None):
        self.is_main, self.received, self.sent = is_main, received, []

    def broadcast_object(self, obj):
        self.sent.append(obj)
        return obj if self.is_main else self.received


def test_a_read_that_fails_on_rank_0_fails_every_rank_instead_of_hanging_the_others():
    from recsys_spark.train.checkpoint import read_on_main

    def broken():
        raise InputError("checkpoint /x/last.pt cannot be read: truncated")

    main = StubComm(is_main=True)
    with pytest.raises(InputError, match="truncated"):
        read_on_main(main, broken)
    assert main.sent == [(False, "InputError: checkpoint /x/last.pt cannot be read: truncated")]  # rank 0 still broadcast
    other = StubComm(is_main=False, received=main.sent[0])
    with pytest.raises(InputError, match="rank 0 could not read its input: InputError: checkpoint /x/last.pt"):
        read_on_main(other, broken)  # rank 1 never reads
    assert read_on_main(StubComm(is_main=True), lambda: {"step": 3}) == {"step": 3}


@pytest.mark.parametrize("max_norm, expected", [(0.0, [-3.0, -4.0]), (1.0, [-0.6, -0.8])])
def test_grad_clip_zero_leaves_the_gradient_alone_and_a_positive_norm_clips_it(max_norm, expected):
    from recsys_spark.train.collective import clip_and_step

    param = torch.nn.Parameter(torch.zeros(2))
    param.grad = torch.tensor([3.0, 4.0])  # norm 5
    norm = clip_and_step(torch.optim.SGD([param], lr=1.0), [param], max_norm, None)
    assert norm == pytest.approx(5.0)
    torch.testing.assert_close(param.detach(), torch.tensor(expected))
    with pytest.raises(ValueError, match="grad_clip must be >= 0"):
        clip_and_step(torch.optim.SGD([param], lr=1.0), [param], -1.0, None)


def test_a_plateau_needs_patience_and_either_enough_steps_or_a_decline_beyond_the_noise():
    from recsys_spark.config import TrainConfig
    from recsys_spark.train.validation import plateau_reached

    tc = TrainConfig(patience=3, patience_steps=100)
    best = {"ndcg": 0.30, "step": 200, "bad_evaluations": 3}
    assert plateau_reached(tc, best, 300, 0.30, 0.01)  # 100 steps since the best
    assert not plateau_reached(tc, best, 250, 0.295, 0.01)  # 50 steps, a drop of 0.005 within the noise
    assert plateau_reached(tc, best, 250, 0.285, 0.01)  # 50 steps, a drop of 0.015 beyond it
    assert not plateau_reached(tc, best, 250, 0.285, float("nan"))  # no width: no decline
    assert not plateau_reached(tc, {**best, "bad_evaluations": 2}, 400, 0.1, 0.01)  # patience first
    assert not plateau_reached(TrainConfig(patience=0), best, 400, 0.1, 0.01)  # 0: never
