"""Two Horovod ranks on gloo inside Spark tasks: shards of different sizes."""

from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest

from recsys_spark.config import load_config
from recsys_spark.train.runner import check_ranks, launch

from tests.train.test_data import write_features

pytestmark = pytest.mark.distributed

BATCH = 16


def config(root, features, **train):
    values = {
        "launcher": "horovod_spark", "num_proc": 2, "batch_size": BATCH, "embedding_dim": 16, "num_layers": 1,
        "uniform_negatives": 16, "lr": 0.01, "warmup_steps": 0, "lr_schedule": "constant", "dropout": 0.1,
        "patience": 0, "eval_every_steps": 0, "device": "cpu", **train,
    }
    return load_config(None, [f"paths.root={root}", f"paths.features={features}",
                              *[f"train.{k}={v}" for k, v in values.items()]])


def test_uneven_shards_stop_every_rank_when_the_first_runs_out(spark, tmp_path):
    features = tmp_path / "features"
    # 2 files of 90 windows in row groups of 25 (25, 25, 25, 15 each): Petastorm gives rank r
    # the row groups i with i % 2 == r, so rank 0 holds 25 + 25 + 25 + 25 = 100 windows and
    # rank 1 holds 25 + 15 + 25 + 15 = 80.
    write_features(features, n_windows=180)
    groups = [pq.ParquetFile(path).metadata.row_group(g).num_rows
              for path in sorted((features / "train").glob("*.parquet"))
              for g in range(pq.ParquetFile(path).metadata.num_row_groups)]
    shard_rows = [sum(groups[rank::2]) for rank in (0, 1)]
    assert shard_rows[0] != shard_rows[1]
    # train.batch_size is the batch over both ranks: each takes BATCH / 2 windows a step.
    per_pass = min(math.ceil(rows / (BATCH // 2)) for rows in shard_rows)

    main = check_ranks(launch(spark, config(tmp_path / "run", features, epochs=2), None, None))

    # Both ranks stopped each pass at the shorter shard's last batch, with the same weights.
    assert [h["step"] for h in main["history"]] == [per_pass, 2 * per_pass]
    assert len(set(main["rank_checksums"])) == 1


def test_two_ranks_resume_to_the_weights_of_an_uninterrupted_run(spark, tmp_path):
    features = tmp_path / "features"
    write_features(features, n_windows=180)
    # A warm-up longer than a pass (5 steps): the learning rate changes at every step, across
    # the resume too. (A cosine's horizon would depend on train.epochs, which differs below.)
    schedule = {"lr_schedule": "constant", "warmup_steps": 8}
    whole = check_ranks(launch(spark, config(tmp_path / "whole", features, epochs=3, **schedule), None, None))

    # The same run stopped after its first pass (train.epochs=1), then resumed from that pass's
    # checkpoint to the third.
    first = check_ranks(launch(spark, config(tmp_path / "resumed", features, epochs=1, **schedule), None, None))
    assert first["steps"] < whole["steps"]
    resumed = check_ranks(launch(spark, config(tmp_path / "resumed", features, epochs=3, resume="true", **schedule),
                                 None, None))

    assert resumed["resumed_from"] == 1
    assert resumed["steps"] == whole["steps"]
    assert resumed["rank_checksums"] == whole["rank_checksums"]  # every rank's weights, bit for bit
    assert [h["val_ndcg_at_20"] for h in resumed["history"]] == [h["val_ndcg_at_20"] for h in whole["history"]]
