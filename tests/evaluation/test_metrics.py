"""Ranking metrics against hand-computed values and an independent pandas implementation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from recsys_spark.evaluation import metrics as M

pytestmark = pytest.mark.unit

G2 = 1 / math.log2(3)  # the gain of a hit at rank 2
G3 = 1 / math.log2(4)  # ... at rank 3 (= 0.5)

# Four users, ks = [2, 3]. -1 is an empty slot (the catalogue ran out).
RANKED = np.array([[5, 7, 9], [4, 6, 8], [2, 3, 11], [9, -1, -1]])
TARGETS = [np.array([7]), np.array([4, 8, 10]), np.array([12]), np.array([9, 13])]
EXPECTED = {
    # user 0: one target, found at rank 2.
    0: {"recall@2": 1.0, "ndcg@2": G2 / 1, "hitrate@2": 1.0,
        "recall@3": 1.0, "ndcg@3": G2 / 1, "hitrate@3": 1.0, "mrr": 1 / 2},
    # user 1: three targets, hits at ranks 1 and 3; IDCG@2 covers 2 positions, IDCG@3 three.
    1: {"recall@2": 1 / 3, "ndcg@2": 1 / (1 + G2), "hitrate@2": 1.0,
        "recall@3": 2 / 3, "ndcg@3": (1 + G3) / (1 + G2 + G3), "hitrate@3": 1.0, "mrr": 1.0},
    # user 2: no hit.
    2: {"recall@2": 0.0, "ndcg@2": 0.0, "hitrate@2": 0.0,
        "recall@3": 0.0, "ndcg@3": 0.0, "hitrate@3": 0.0, "mrr": 0.0},
    # user 3: two targets, one hit at rank 1; IDCG covers min(K, 2) = 2 positions for both K.
    3: {"recall@2": 1 / 2, "ndcg@2": 1 / (1 + G2), "hitrate@2": 1.0,
        "recall@3": 1 / 2, "ndcg@3": 1 / (1 + G2), "hitrate@3": 1.0, "mrr": 1.0},
}


def test_metric_names_are_ordered_by_k():
    assert M.metric_names([20, 10]) == [
        "recall@10", "ndcg@10", "hitrate@10", "recall@20", "ndcg@20", "hitrate@20", "mrr"
    ]


def test_batch_metrics_match_hand_computed_values():
    got = M.batch_metrics(RANKED, TARGETS, [2, 3])
    assert set(got) == set(M.metric_names([2, 3]))
    for user, expected in EXPECTED.items():
        for name, value in expected.items():
            assert got[name][user] == pytest.approx(value, abs=1e-12), (user, name)


def test_user_metrics_match_hand_computed_values():
    for user, expected in EXPECTED.items():
        got = M.user_metrics(RANKED[user], TARGETS[user], [2, 3])
        assert got == pytest.approx(expected, abs=1e-12)


def test_mrr_only_looks_within_the_longest_k():
    # The only hit is at rank 3, beyond max(ks) = 2.
    assert M.user_metrics([1, 2, 3], [3], [1, 2])["mrr"] == 0.0
    assert M.user_metrics([1, 2, 3], [3], [3])["mrr"] == pytest.approx(1 / 3)


def test_hit_matrix_matches_each_row_only_against_its_own_targets():
    hits = M.hit_matrix(np.array([[3, 4], [3, 4]]), [np.array([4]), np.array([3])])
    np.testing.assert_array_equal(hits, [[False, True], [True, False]])


def test_coverage_counts_distinct_items_in_the_top_k():
    # top-1: {5, 4, 2, 9} -> 4 items; top-2: adds 7, 6, 3 -> 7 items (the -1 slot does not count).
    assert M.coverage(RANKED, 1, 20) == pytest.approx(4 / 20)
    assert M.coverage(RANKED, 2, 20) == pytest.approx(7 / 20)


def test_users_without_targets_and_short_rankings_are_rejected():
    with pytest.raises(ValueError, match="at least one target"):
        M.batch_metrics(np.array([[2, 3]]), [np.array([], dtype=np.int64)], [2])
    with pytest.raises(ValueError, match="fewer than K"):
        M.batch_metrics(np.array([[2, 3]]), [np.array([2])], [5])


def pandas_reference(ranked: np.ndarray, targets: list[np.ndarray], ks: list[int]) -> pd.DataFrame:
    """The same metrics by joins and group-bys, one column per metric, one row per user."""
    users = np.arange(len(targets))
    recs = pd.DataFrame(
        {"user": np.repeat(users, ranked.shape[1]), "rank": np.tile(np.arange(1, ranked.shape[1] + 1), len(users)),
         "item": ranked.ravel()}
    )
    truth = pd.DataFrame({"user": np.repeat(users, [len(t) for t in targets]), "item": np.concatenate(targets)})
    truth["hit"] = True
    joined = recs.merge(truth, on=["user", "item"], how="left")
    joined["hit"] = joined["hit"].fillna(False).astype(bool)
    joined["gain"] = joined["hit"] / np.log2(joined["rank"] + 1)
    n_targets = pd.Series([len(t) for t in targets], index=users)
    out = pd.DataFrame(index=users)
    for k in ks:
        top = joined[joined["rank"] <= k].groupby("user")
        ideal = n_targets.clip(upper=k).map(lambda n: sum(1 / math.log2(r + 1) for r in range(1, n + 1)))
        out[f"recall@{k}"] = top["hit"].sum() / n_targets
        out[f"ndcg@{k}"] = top["gain"].sum() / ideal
        out[f"hitrate@{k}"] = top["hit"].any().astype(float)
    first = joined[joined["hit"] & (joined["rank"] <= max(ks))].groupby("user")["rank"].min()
    out["mrr"] = (1 / first).reindex(users, fill_value=0.0)
    return out


def random_case(rng: np.random.Generator, users: int, items: int, k: int):
    ranked = np.stack([rng.permutation(np.arange(2, items))[:k] for _ in range(users)])
    ranked[rng.random(ranked.shape) < 0.05] = -1  # a few empty slots, placed anywhere
    targets = [rng.choice(np.arange(2, items), size=rng.integers(1, 8), replace=False) for _ in range(users)]
    return ranked, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_metrics_agree_with_a_pandas_reference(seed):
    ranked, targets = random_case(np.random.default_rng(seed), users=60, items=30, k=12)
    ks = [1, 5, 12]
    got = M.batch_metrics(ranked, targets, ks)
    expected = pandas_reference(ranked, targets, ks)
    assert 0 < expected["hitrate@12"].mean() < 1  # the case exercises both hits and misses
    for name in M.metric_names(ks):
        np.testing.assert_allclose(got[name], expected[name].to_numpy(), rtol=1e-12, err_msg=name)
