"""Ranking metrics against hand-computed values and an independent pandas implementation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from recsys_spark import metrics

pytestmark = pytest.mark.unit

G2 = 1 / math.log2(3)  # the gain of a hit at rank 2
G3 = 1 / math.log2(4)  # ... at rank 3 (= 0.5)

# Four users, ks = [2, 3]. -1 is an empty slot (the catalogue ran out).
RANKED = np.array([[5, 7, 9], [4, 6, 8], [2, 3, 11], [9, -1, -1]])
TARGETS = [np.array([7]), np.array([4, 8, 10]), np.array([12]), np.array([9, 13])]
EXPECTED = {
    # user 0: one target, found at rank 2.
    # AP: precision 1/2 at the hit, over min(K, 1) = 1.
    # precision: 1 hit / K; F1 = 2PR / (P + R) with R = 1.
    0: {"recall@2": 1.0, "ndcg@2": G2 / 1, "hitrate@2": 1.0, "map@2": 1 / 2,
        "recall@3": 1.0, "ndcg@3": G2 / 1, "hitrate@3": 1.0, "map@3": 1 / 2, "mrr": 1 / 2,
        "precision@2": 1 / 2, "f1@2": 2 / 3, "precision@3": 1 / 3, "f1@3": 1 / 2},
    # user 1: three targets, hits at ranks 1 and 3; IDCG@2 covers 2 positions, IDCG@3 three.
    # AP@2: precision 1 at rank 1, over min(2, 3) = 2; AP@3: (1 + 2/3) over 3.
    1: {"recall@2": 1 / 3, "ndcg@2": 1 / (1 + G2), "hitrate@2": 1.0, "map@2": 1 / 2,
        "recall@3": 2 / 3, "ndcg@3": (1 + G3) / (1 + G2 + G3), "hitrate@3": 1.0, "map@3": (1 + 2 / 3) / 3,
        "mrr": 1.0, "precision@2": 1 / 2, "f1@2": 2 / 5, "precision@3": 2 / 3, "f1@3": 2 / 3},
    # user 2: no hit (F1 is 0, not 0 / 0).
    2: {"recall@2": 0.0, "ndcg@2": 0.0, "hitrate@2": 0.0, "map@2": 0.0,
        "recall@3": 0.0, "ndcg@3": 0.0, "hitrate@3": 0.0, "map@3": 0.0, "mrr": 0.0,
        "precision@2": 0.0, "f1@2": 0.0, "precision@3": 0.0, "f1@3": 0.0},
    # user 3: two targets, one hit at rank 1; IDCG covers min(K, 2) = 2 positions for both K.
    # Precision divides by K although only one item was listed: 1/2, 1/3 (not 1).
    3: {"recall@2": 1 / 2, "ndcg@2": 1 / (1 + G2), "hitrate@2": 1.0, "map@2": 1 / 2,
        "recall@3": 1 / 2, "ndcg@3": 1 / (1 + G2), "hitrate@3": 1.0, "map@3": 1 / 2, "mrr": 1.0,
        "precision@2": 1 / 2, "f1@2": 1 / 2, "precision@3": 1 / 3, "f1@3": 2 / 5},
}


def test_metric_names_are_ordered_by_k():
    assert metrics.metric_names([20, 10]) == [
        "recall@10", "ndcg@10", "map@10", "hitrate@10", "precision@10", "f1@10",
        "recall@20", "ndcg@20", "map@20", "hitrate@20", "precision@20", "f1@20", "mrr",
    ]
    assert metrics.list_metric_names([20, 10]) == [
        "novelty@10", "diversity@10", "head_share@10", "novelty@20", "diversity@20", "head_share@20"
    ]


def test_batch_metrics_match_hand_computed_values():
    got = metrics.batch_metrics(RANKED, TARGETS, [2, 3])
    assert set(got) == set(metrics.metric_names([2, 3]))
    for user, expected in EXPECTED.items():
        for name, value in expected.items():
            assert got[name][user] == pytest.approx(value, abs=1e-12), (user, name)


def test_user_metrics_match_hand_computed_values():
    for user, expected in EXPECTED.items():
        got = metrics.user_metrics(RANKED[user], TARGETS[user], [2, 3])
        assert got == pytest.approx(expected, abs=1e-12)


def test_mrr_only_looks_within_the_longest_k():
    # The only hit is at rank 3, beyond max(ks) = 2.
    assert metrics.user_metrics([1, 2, 3], [3], [1, 2])["mrr"] == 0.0
    assert metrics.user_metrics([1, 2, 3], [3], [3])["mrr"] == pytest.approx(1 / 3)


def test_hit_matrix_matches_each_row_only_against_its_own_targets():
    hits = metrics.hit_matrix(np.array([[3, 4], [3, 4]]), [np.array([4]), np.array([3])])
    np.testing.assert_array_equal(hits, [[False, True], [True, False]])


def test_coverage_counts_distinct_items_in_the_top_k():
    # top-1: {5, 4, 2, 9} -> 4 items; top-2: adds 7, 6, 3 -> 7 items (the -1 slot does not count).
    assert metrics.coverage(RANKED, 1, 20) == pytest.approx(4 / 20)
    assert metrics.coverage(RANKED, 2, 20) == pytest.approx(7 / 20)


def test_users_without_targets_and_short_rankings_are_rejected():
    with pytest.raises(ValueError, match="at least one target"):
        metrics.batch_metrics(np.array([[2, 3]]), [np.array([], dtype=np.int64)], [2])
    with pytest.raises(ValueError, match="fewer than K"):
        metrics.batch_metrics(np.array([[2, 3]]), [np.array([2])], [5])


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
        # AP@K: precision at each hit's rank (hits so far / rank), summed, over min(K, |targets|)
        hits_so_far = top["hit"].cumsum()
        precision = joined.loc[joined["rank"] <= k].assign(p=hits_so_far / joined["rank"])
        out[f"map@{k}"] = precision[precision["hit"]].groupby("user")["p"].sum().reindex(users, fill_value=0.0) / (
            n_targets.clip(upper=k)
        )
        out[f"precision@{k}"] = top["hit"].sum() / k
        p, r = out[f"precision@{k}"], out[f"recall@{k}"]
        out[f"f1@{k}"] = (2 * p * r / (p + r)).fillna(0.0)
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
    got = metrics.batch_metrics(ranked, targets, ks)
    expected = pandas_reference(ranked, targets, ks)
    assert 0 < expected["hitrate@12"].mean() < 1  # the case exercises both hits and misses
    for name in metrics.metric_names(ks):
        np.testing.assert_allclose(got[name], expected[name].to_numpy(), rtol=1e-12, err_msg=name)


@pytest.mark.parametrize("seed", [0, 1])
def test_precision_and_f1_agree_with_scikit_learn_on_binary_vectors(seed):
    from sklearn.metrics import f1_score, precision_score

    rng = np.random.default_rng(seed)
    items = 30
    ranked, targets = random_case(rng, users=40, items=items, k=10)
    ks = [1, 4, 10]
    got = metrics.batch_metrics(ranked, targets, ks)
    for user in range(len(targets)):
        for k in ks:
            # One position per item, and one per empty slot: listed (predicted) but never a target,
            # so that sklearn divides by K as RecBole and Microsoft Recommenders do.
            listed = ranked[user, :k]
            empty = int((listed == -1).sum())
            truth = np.concatenate([np.isin(np.arange(items), targets[user]), np.zeros(empty, dtype=bool)])
            predicted = np.concatenate([np.isin(np.arange(items), listed), np.ones(empty, dtype=bool)])
            assert predicted.sum() == k
            precision = precision_score(truth, predicted, zero_division=0.0)
            f1 = f1_score(truth, predicted, zero_division=0.0)
            assert got[f"precision@{k}"][user] == pytest.approx(precision, abs=1e-12), (user, k)
            assert got[f"f1@{k}"][user] == pytest.approx(f1, abs=1e-12), (user, k)
    assert 0 < got["f1@10"].mean() and (got["f1@10"] == 0).any()  # both hits and misses


# ----------------------------------------------------------------------- AUC, from the whole ranking

NO = -np.inf  # an item the user may not get (pad, OOV, seen, blocked)
# Items 0..7; 0 and 1 are pad and OOV.
SCORES = np.array([
    [NO, NO, 0.9, 0.5, 0.5, 0.1, NO, 0.3],  # eligible 2, 3, 4, 5, 7 (n = 5); 6 is seen
    [NO, NO, 0.2, 0.4, 0.6, 0.8, 1.0, NO],  # eligible 2..6 (n = 5); 7 is excluded
    [NO, NO, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # eligible 2..7 (n = 6)
    [NO, NO, 1.0, NO, NO, NO, NO, NO],  # eligible 2 only (n = 1)
])
AUC_TARGETS = [np.array([4, 7]), np.array([6, 7]), np.array([2]), np.array([2])]


def test_target_ranks_count_higher_eligible_items_and_half_the_ties():
    ranks, eligible = metrics.target_ranks(SCORES, AUC_TARGETS)
    assert eligible.tolist() == [5, 5, 6, 1]
    # row 0: item 4 (0.5) has one item above (2) and ties with 3: 1 + 1 + 1/2; item 7 (0.3) has 2, 3, 4 above.
    # row 1: item 6 is the best; item 7 is not eligible. row 2: item 2 is the worst of six. row 3: alone.
    expected = [[2.5, 4.0], [1.0, np.inf], [6.0], [1.0]]
    assert [r.tolist() for r in ranks] == expected


def test_target_ranks_give_the_same_answer_a_few_targets_at_a_time(monkeypatch):
    monkeypatch.setattr(metrics, "RANK_CHUNK_SCORES", 1)  # one target per step
    ranks, eligible = metrics.target_ranks(SCORES, AUC_TARGETS)
    assert [r.tolist() for r in ranks] == [[2.5, 4.0], [1.0, np.inf], [6.0], [1.0]]
    assert eligible.tolist() == [5, 5, 6, 1]


def test_auc_matches_hand_computed_values():
    got = metrics.auc(*metrics.target_ranks(SCORES, AUC_TARGETS))
    # row 0: non-targets 2 (0.9), 3 (0.5), 5 (0.1). Item 4 is above 5 and ties 3: 1.5 / 3;
    #        item 7 is above 5 only: 1 / 3. Mean (1.5 + 1) / 6.
    # row 1: item 6 is above all four non-targets (1); item 7, never listed, counts as below them (0).
    # row 2: the target is below all five others. row 3: no non-target to rank against: 0.5.
    np.testing.assert_allclose(got, [2.5 / 6, 0.5, 0.0, 0.5], rtol=1e-12)
    with pytest.raises(ValueError, match="at least one target"):
        metrics.auc([np.array([])], np.array([3]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_agrees_with_scikit_learn_per_user(seed):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    users, items = 50, 40
    # Scores from a few values, so that ties (which count half) are common; some items excluded.
    scores = rng.integers(0, 6, size=(users, items)).astype(np.float32)
    scores[:, :2] = NO
    scores[rng.random((users, items)) < 0.2] = NO
    targets = []
    for row in scores:
        eligible = np.flatnonzero(np.isfinite(row))
        targets.append(rng.choice(eligible, size=rng.integers(1, 6), replace=False))
    got = metrics.auc(*metrics.target_ranks(scores, targets))
    for user in range(users):
        eligible = np.isfinite(scores[user])
        truth = np.isin(np.arange(items), targets[user])[eligible]
        expected = roc_auc_score(truth, scores[user][eligible])
        assert got[user] == pytest.approx(expected, abs=1e-12), user
    assert got.min() < 0.5 < got.max()


# ----------------------------------------------------------------------- beyond accuracy

# Items 2..7; counts 8, 4, 2, 1, 1, 0 of 16 interactions; categories 1, 1, 2, 2, 3, 0.
COUNTS = np.array([0, 0, 8, 4, 2, 1, 1, 0])
CATEGORIES = np.array([0, 0, 1, 1, 2, 2, 3, 0])
LISTS = np.array([[2, 3, 4], [4, 5, 6], [7, -1, -1], [-1, -1, -1]])


def test_self_information_is_minus_log2_of_the_share_with_counts_floored_at_one():
    info = metrics.self_information(COUNTS)
    np.testing.assert_allclose(info[[2, 3, 4, 5, 7]], [1.0, 2.0, 3.0, 4.0, 4.0])  # 8/16, 4/16, ..., 1/16


def test_head_items_are_the_most_popular_up_to_the_share_of_interactions():
    # 20% of 16 = 3.2: item 2 alone (8) crosses the line.
    np.testing.assert_array_equal(np.flatnonzero(metrics.head_items(COUNTS, 0.2)), [2])
    # 60% = 9.6: item 2 (8 before it: 0) and item 3 (8 before it, < 9.6).
    np.testing.assert_array_equal(np.flatnonzero(metrics.head_items(COUNTS, 0.6)), [2, 3])
    # Every item with interactions, never one without.
    np.testing.assert_array_equal(np.flatnonzero(metrics.head_items(COUNTS, 1.0)), [2, 3, 4, 5, 6])
    assert not metrics.head_items(np.zeros(4), 0.2).any()


def test_list_metrics_match_hand_computed_values():
    info = metrics.self_information(COUNTS)
    head = metrics.head_items(COUNTS, 0.6)  # {2, 3}
    got = metrics.list_metrics(LISTS, [1, 3], info, head, CATEGORIES)
    assert set(got) == set(metrics.list_metric_names([1, 3]))
    # row 0: [2, 3, 4] info 1, 2, 3; categories 1, 1, 2 -> 4 of 6 ordered pairs differ; 2 head items
    # row 1: [4, 5, 6] info 3, 4, 4; categories 2, 2, 3 -> 4 of 6 differ; no head item
    # row 2: [7] only -> one item, no pair; row 3: empty -> zeros
    np.testing.assert_allclose(got["novelty@1"], [1, 3, 4, 0])
    np.testing.assert_allclose(got["novelty@3"], [2, 11 / 3, 4, 0])
    np.testing.assert_allclose(got["diversity@1"], [0, 0, 0, 0])
    np.testing.assert_allclose(got["diversity@3"], [4 / 6, 4 / 6, 0, 0])
    np.testing.assert_allclose(got["head_share@1"], [1, 0, 0, 0])
    np.testing.assert_allclose(got["head_share@3"], [2 / 3, 0, 0, 0])


def pandas_list_reference(ranked, ks, info, head, categories) -> pd.DataFrame:
    """The list metrics by a long table, a self-merge for the pairs and group-bys."""
    users = np.arange(ranked.shape[0])
    long = pd.DataFrame({"user": np.repeat(users, ranked.shape[1]),
                         "rank": np.tile(np.arange(1, ranked.shape[1] + 1), len(users)), "item": ranked.ravel()})
    long = long[long["item"] >= 0]
    long = long.assign(info=info[long["item"]], head=head[long["item"]], cat=categories[long["item"]])
    out = pd.DataFrame(index=users)
    for k in ks:
        top = long[long["rank"] <= k]
        out[f"novelty@{k}"] = top.groupby("user")["info"].mean().reindex(users, fill_value=0.0)
        out[f"head_share@{k}"] = top.groupby("user")["head"].mean().reindex(users, fill_value=0.0)
        pairs = top.merge(top, on="user")
        pairs = pairs[pairs["rank_x"] != pairs["rank_y"]]
        out[f"diversity@{k}"] = (
            (pairs["cat_x"] != pairs["cat_y"]).groupby(pairs["user"]).mean().reindex(users, fill_value=0.0)
        )
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_list_metrics_agree_with_a_pandas_reference(seed):
    rng = np.random.default_rng(seed)
    ranked, _ = random_case(rng, users=40, items=30, k=10)
    counts = rng.integers(0, 50, size=30)
    categories = rng.integers(0, 4, size=30)
    info, head = metrics.self_information(counts), metrics.head_items(counts, 0.2)
    ks = [1, 4, 10]
    got = metrics.list_metrics(ranked, ks, info, head, categories)
    expected = pandas_list_reference(ranked, ks, info, head, categories)
    assert 0 < expected["head_share@10"].mean() < 1
    for name in metrics.list_metric_names(ks):
        np.testing.assert_allclose(got[name], expected[name].to_numpy(), rtol=1e-12, err_msg=name)
