"""Per-user metrics, segments and the rankers compared per user (evaluation/per_user.py)."""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import pytest
import torch
from pyspark.sql import functions as F

from recsys_spark import schema
from recsys_spark.config import EvaluateConfig
# The tests read per_user's names through evaluate, which imports them for the stage.
from recsys_spark.evaluation import evaluate
from recsys_spark.evaluation import intervals
from recsys_spark.evaluation.per_user import SEGMENTS, per_user_schema, segments_of
from recsys_spark.models.rankers import PopularityRanker, vocab_column

from tests.evaluation.kit import KS, POPULARITY, eval_rows
from tests.evaluation.test_rankers import NUM_ITEMS, tiny_bundle


@pytest.mark.unit
def test_segments_split_users_by_history_and_targets_by_popularity_and_event():
    targets = [np.array([3]), np.array([4, 7]), np.array([4, 2]), np.array([6])]
    events = [np.array([1]), np.array([1, 1]), np.array([4, 1]), np.array([2])]
    is_head = np.zeros(8, dtype=bool)
    is_head[2] = True
    parts = segments_of(targets, events, np.array([1, 0, 1, 3]), is_head, cold_user_threshold=2)
    assert set(parts) == set(SEGMENTS)
    got = {name: (index.tolist(), [t.tolist() for t in kept]) for name, (index, kept) in parts.items()}
    assert got["all"] == ([0, 1, 2, 3], [[3], [4, 7], [4, 2], [6]])
    assert got["cold_users"] == ([0, 1, 2], [[3], [4, 7], [4, 2]])
    assert got["warm_users"] == ([3], [[6]])
    assert got["head_targets"] == ([2], [[2]])
    assert got["tail_targets"] == ([0, 1, 2, 3], [[3], [4, 7], [4], [6]])
    assert got["view_targets"] == ([0, 1, 2], [[3], [4, 7], [2]])
    assert got["cart_targets"] == ([3], [[6]])
    assert got["purchase_targets"] == ([2], [[4]])


def test_per_user_metrics_measure_auc_in_every_segment_from_the_whole_ranking(spark):
    counts, present = vocab_column(tiny_bundle().item_vocab, schema.PRETEST_COUNT, NUM_ITEMS)
    stats = evaluate.ItemStats.from_vocab(tiny_bundle().item_vocab, schema.PRETEST_COUNT, NUM_ITEMS, 0.2)
    rows = spark.createDataFrame(eval_rows(), schema.EVAL_SCHEMA).where(F.size(schema.TARGET_ITEMS) > 0)
    rankers = {"popularity": functools.partial(PopularityRanker, counts, torch.from_numpy(present))}
    per_user = evaluate.per_user_metrics(rows, rankers, KS, 3, stats, cold_user_threshold=2).toPandas()
    got = {segment: dict(zip(part[schema.USER_ID], part["auc"])) for segment, part in per_user.groupby("segment")}
    # By hand (see POPULARITY): each user's AUC over the items not seen, targets of the segment only.
    assert got["all"] == pytest.approx({"u1": 1.0, "u2": 1 / 4, "u3": 1.0, "u4": 1 / 2}, abs=1e-12)
    assert got["tail_targets"] == pytest.approx({"u1": 1.0, "u2": 1 / 4, "u3": 3 / 4, "u4": 1 / 2}, abs=1e-12)
    assert got["head_targets"] == pytest.approx({"u3": 1.0}, abs=1e-12)
    assert got["cart_targets"] == pytest.approx({"u4": 1 / 2}, abs=1e-12)
    overall = per_user[per_user["segment"] == "all"].mean(numeric_only=True)
    for name in ("precision@1", "precision@2", "f1@1", "f1@2", "auc"):
        assert overall[name] == pytest.approx(POPULARITY[name], abs=1e-12), name


def test_per_user_values_collect_segment_all_by_user_and_ranker(spark):
    def row(ranker, segment, user, value):
        names = evaluate.all_metric_names(KS)
        return (ranker, segment, user, 1, *[value + i for i in range(len(names))], [2, 3])

    rows = [row("model", "all", "u2", 0.5), row("model", "all", "u1", 0.25), row("popularity", "all", "u1", 1.0),
            row("model", "cold_users", "u1", 9.0)]  # other segments are left out
    per_user = spark.createDataFrame(rows, per_user_schema(KS))
    users, rankers, values = evaluate.per_user_values(per_user, ["ndcg@2", "mrr"])
    names = evaluate.all_metric_names(KS)
    assert users.tolist() == ["u1", "u2"] and rankers == ["model", "popularity"]
    ndcg, mrr = names.index("ndcg@2"), names.index("mrr")
    assert values[:, 0].tolist() == [[0.25 + ndcg, 0.25 + mrr], [0.5 + ndcg, 0.5 + mrr]]
    assert values[0, 1].tolist() == [1.0 + ndcg, 1.0 + mrr] and np.isnan(values[1, 1]).all()


@pytest.mark.unit
def test_compare_rankers_pairs_the_model_with_the_champion_and_every_baseline():
    names = evaluate.all_metric_names(KS)
    rng = np.random.default_rng(0)
    values = rng.random((6, 4, len(names)))
    rankers = ["als", "champion", "model", "popularity"]
    ec = replace(EvaluateConfig(), bootstrap_samples=200)
    singles, paired = evaluate.compare_rankers(values, rankers, KS, "ndcg@2", ec)
    assert set(singles) == set(rankers) and all(set(m) == set(names) for m in singles.values())
    assert list(paired) == ["model_vs_champion", "model_vs_als", "model_vs_popularity"]
    assert list(paired["model_vs_als"]) == [n for n in evaluate.headline_metrics("ndcg@2", KS) if n != "coverage@2"]
    ndcg = names.index("ndcg@2")
    assert singles["als"]["ndcg@2"] == intervals.mean_interval(values[:, 0, ndcg], 200, ec.bootstrap_seed, ec.confidence)
    assert paired["model_vs_als"]["ndcg@2"] == intervals.mean_interval(values[:, 2, ndcg] - values[:, 0, ndcg], 200,
                                                               ec.bootstrap_seed, ec.confidence)
    # Without the model (it never happens in run) there is nothing to pair.
    assert evaluate.compare_rankers(values[:, :2], rankers[:2], KS, "ndcg@2", ec)[1] == {}
