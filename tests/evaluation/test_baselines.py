"""The co-occurrence and ALS baselines on tiny hand-built training windows."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_spark import schema
from recsys_spark.evaluation import baselines

from tests.evaluation.test_rankers import history_rows

NUM_ITEMS = 8

# Training windows (L + 1 = 5, left-padded). 1 is OOV and 0 padding: they pair with nothing.
WINDOWS = [
    [0, 2, 3, 4, 2],
    [0, 0, 3, 5, 1],
]
# Pairs of distinct real items by hand. Distance 1: (2,3) (3,4) (4,2) | (3,5).
# Distance 2 adds: (2,4) [positions 2 and 4] and (3,2) [3 and 5]. Distance 3: (2,2), same item.
COUNTS_W1 = {(2, 3): 1, (2, 4): 1, (3, 4): 1, (3, 5): 1}
COUNTS_W2 = {(2, 3): 2, (2, 4): 2, (3, 4): 1, (3, 5): 1}


def train_frame(spark):
    rows = [(w, [1] * len(w), [0] * len(w)) for w in WINDOWS]
    return spark.createDataFrame(rows, schema.TRAIN_SCHEMA)


@pytest.fixture(scope="module")
def pairs(spark) -> pd.DataFrame:
    return baselines.cooccurrence_pairs(train_frame(spark), [1, 2, 3]).toPandas()


def test_cooccurrence_counts_pairs_within_each_window(pairs):
    got = {w: {(int(r.item_a), int(r.item_b)): int(getattr(r, f"w{w}")) for r in pairs.itertuples()
               if getattr(r, f"w{w}") > 0} for w in (1, 2, 3)}
    assert got[1] == COUNTS_W1
    assert got[2] == COUNTS_W2
    assert got[3] == COUNTS_W2  # the only pair at distance 3 is an item with itself


def test_similarity_matrices_are_symmetric_counts_or_cosine(pairs):
    counts = baselines.similarity_matrix(pairs, 2, "count", NUM_ITEMS).dense()
    expected = np.zeros((NUM_ITEMS, NUM_ITEMS), dtype=np.float32)
    for (a, b), n in COUNTS_W2.items():
        expected[a, b] = expected[b, a] = n
    np.testing.assert_array_equal(counts, expected)
    # Row sums: item 2: 4, item 3: 4, item 4: 3, item 5: 1.
    cosine = baselines.similarity_matrix(pairs, 2, "cosine", NUM_ITEMS).dense()
    assert cosine[2, 3] == cosine[3, 2] == pytest.approx(2 / math.sqrt(4 * 4))
    assert cosine[2, 4] == pytest.approx(2 / math.sqrt(4 * 3))
    assert cosine[3, 5] == pytest.approx(1 / math.sqrt(4 * 1))
    assert np.count_nonzero(cosine) == 8
    with pytest.raises(ValueError, match="similarity"):
        baselines.similarity_matrix(pairs, 2, "jaccard", NUM_ITEMS)


def test_sparse_rows_weighted_rows_equal_the_dense_product():
    rng = np.random.default_rng(0)
    dense = rng.random((6, 6)) * (rng.random((6, 6)) < 0.4)
    rows, cols = np.nonzero(dense)
    matrix = baselines.SparseRows.from_pairs(rows, cols, dense[rows, cols], 6)
    np.testing.assert_allclose(matrix.dense(), dense, rtol=1e-6)
    items = np.array([[0, 3, 5, 5], [2, 2, 1, 0]])
    weights = np.array([[0.0, 0.5, 1.0, 2.0], [1.0, 1.0, 0.25, 0.0]])
    expected = np.stack([weights[b] @ dense[items[b]] for b in range(2)])
    np.testing.assert_allclose(matrix.weighted_rows(weights, items), expected, rtol=1e-6)


def test_cooccurrence_ranker_sums_decayed_similarities_of_the_history(pairs):
    ranker = baselines.CooccurrenceRanker(baselines.similarity_matrix(pairs, 2, "count", NUM_ITEMS), decay=0.5)
    # Latest item 4 (weight 1), then 5 (weight 0.5): item 2: 2 * 1, item 3: 1 * 1 + 1 * 0.5.
    rows = history_rows([[5, 4]], seen=[[4, 5]])
    np.testing.assert_allclose(ranker.score_block(rows).numpy(), [[0, 0, 2, 1.5, 0, 0, 0, 0]])
    top, scores = ranker.recommend(rows, 2)
    assert top.tolist() == [[2, 3]]
    np.testing.assert_allclose(scores, [[2.0, 1.5]])
    # The same scores place the targets for AUC: eligible 2 (2), 3 (1.5), 6 (0), 7 (0); target 6 ties with 7.
    top, ranks, eligible = ranker.rank_targets(rows, 2, [np.array([3, 6])])
    assert top.tolist() == [[2, 3]] and ranks[0].tolist() == [2.0, 3.5] and eligible.tolist() == [4]


@pytest.mark.e2e
def test_als_runs_excludes_seen_items_and_fills_k(spark):
    interactions = baselines.als_interactions(train_frame(spark))
    got = sorted((r[baselines.ALS_USER], r[baselines.ALS_ITEM]) for r in interactions.collect())
    assert got == [(0, 2), (0, 3), (0, 4), (1, 3), (1, 5)]  # distinct real items per window
    factors = baselines.fit_als(interactions, NUM_ITEMS, rank=2, reg_param=0.1, alpha=1.0, max_iter=2, seed=1)
    assert factors.shape == (NUM_ITEMS, 2) and np.isfinite(factors).all()
    assert not factors[[0, 1, 6, 7]].any() and factors[[2, 3, 4, 5]].any()  # only items with interactions
    ranker = baselines.AlsRanker(factors, reg_param=0.1, alpha=1.0)
    rows = history_rows([[2, 3], [5]], seen=[[2, 3], [5]])
    top, scores = ranker.recommend(rows, 4)
    assert (top >= schema.FIRST_ITEM_INDEX).all()  # 6 items, at most 2 seen: K = 4 always fills
    assert not set(top[0]) & {2, 3} and not set(top[1]) & {5}
    assert (np.diff(scores, axis=1) <= 0).all()


def test_fold_in_solves_the_implicit_als_user_step():
    rng = np.random.default_rng(4)
    factors = rng.normal(size=(7, 3))
    seen = [np.array([2, 4, 4, 9]), np.array([], dtype=np.int64)]  # a duplicate and an out-of-range item
    got = baselines.fold_in(factors, seen, reg_param=0.5, alpha=3.0)
    ys = factors[[2, 4]]
    lhs = factors.T @ factors + 3.0 * ys.T @ ys + 0.5 * 2 * np.eye(3)
    np.testing.assert_allclose(got[0], np.linalg.solve(lhs, 4.0 * ys.sum(axis=0)), rtol=1e-5)
    np.testing.assert_array_equal(got[1], np.zeros(3))


def test_grid_lists_every_combination_in_order():
    assert baselines.grid(a=[1, 2], b=["x"]) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    assert baselines.grid_label("als", {"rank": 8, "alpha": 1.0}) == "als[rank=8,alpha=1.0]"


def test_rankers_never_return_pad_oov_or_disallowed_items(pairs):
    allowed = torch.ones(NUM_ITEMS, dtype=torch.bool)
    allowed[3] = False
    ranker = baselines.CooccurrenceRanker(baselines.similarity_matrix(pairs, 1, "count", NUM_ITEMS), decay=1.0, allowed=allowed)
    top, _ = ranker.recommend(history_rows([[2]], seen=[[2]]), 8)
    # 4 remaining real items (4, 5, 6, 7); item 4 co-occurs with 2, the rest score 0.
    assert top[0, 0] == 4 and sorted(top[0, :4]) == [4, 5, 6, 7] and (top[0, 4:] == -1).all()


# ----------------------------------------------------------------------------- EASE

# A tiny X by hand: 5 users (rows) x the 5 modelled items 2..6 (columns); items 0, 1 (pad,
# OOV) and 7 (no training interaction) are not modelled.
EASE_ITEMS = np.array([2, 3, 4, 5, 6])
EASE_X = np.array(
    [
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [0, 0, 1, 1, 1],
        [1, 0, 0, 1, 1],
    ],
    dtype=np.float64,
)


def ease_reference(x: np.ndarray, lam: float) -> np.ndarray:
    """Steck's closed form, plainly: P = (X'X + lam I)^-1, B = I - P diagMat(1 / diag(P))."""
    p = np.linalg.inv(x.T @ x + lam * np.eye(x.shape[1]))
    return np.eye(x.shape[1]) - p @ np.diag(1.0 / np.diag(p))


@pytest.mark.unit
@pytest.mark.parametrize("lam", [0.5, 10.0])
def test_ease_weights_equal_the_numpy_reference_with_a_zero_diagonal(lam):
    weights = baselines.fit_ease(EASE_X.T @ EASE_X, lam)
    assert weights.dtype == np.float32 and weights.shape == (5, 5)
    np.testing.assert_allclose(weights, ease_reference(EASE_X, lam), rtol=1e-5, atol=1e-7)
    assert (np.diag(weights) == 0).all()
    assert not np.allclose(weights, weights.T)  # columns scaled by 1 / P_jj: not symmetric


@pytest.mark.unit
def test_ease_ranker_scores_the_history_by_the_reference_and_excludes_seen_items():
    lam = 1.0
    ranker = baselines.EaseRanker(EASE_ITEMS, baselines.fit_ease(EASE_X.T @ EASE_X, lam), decay=1.0, num_items=NUM_ITEMS)
    # User 0 met 2 then 3 (and 1, OOV); user 1 met 5, with 4 seen before the history.
    rows = history_rows([[2, 1, 3], [5]], seen=[[1, 2, 3], [4, 5]])
    reference = np.zeros((2, NUM_ITEMS))
    reference[:, EASE_ITEMS] = np.array([[1, 1, 0, 0, 0], [0, 0, 1, 1, 0]]) @ ease_reference(EASE_X, lam)
    np.testing.assert_allclose(ranker.score_block(rows).numpy(), reference, rtol=1e-5, atol=1e-6)

    top, scores = ranker.recommend(rows, 4)
    for user, seen in enumerate([{1, 2, 3}, {4, 5}]):
        eligible = [i for i in range(schema.FIRST_ITEM_INDEX, NUM_ITEMS) if i not in seen]
        expected = sorted(eligible, key=lambda i: -reference[user, i])[:4]
        assert top[user].tolist() == expected
        np.testing.assert_allclose(scores[user], reference[user, expected], rtol=1e-5, atol=1e-6)


@pytest.mark.unit
def test_ease_recency_weights_the_latest_step_of_each_item_by_decay_to_its_age():
    weights = baselines.fit_ease(EASE_X.T @ EASE_X, 1.0)
    ranker = baselines.EaseRanker(EASE_ITEMS, weights, decay=0.5, num_items=NUM_ITEMS)
    # History (L = 4) 3, 5, 3, 4: 4 is the last step (age 0), 3 last met at age 1 (its step at
    # age 3 does not count), 5 at age 2; 2 is only in seen_items, older than the history: age 4.
    rows = history_rows([[3, 5, 3, 4]], seen=[[2, 3, 4, 5]])
    x = {2: 0.5 ** 4, 3: 0.5, 4: 1.0, 5: 0.25}  # by hand
    x_u = np.array([x.get(i, 0.0) for i in EASE_ITEMS])
    expected = np.zeros(NUM_ITEMS)
    expected[EASE_ITEMS] = x_u @ ease_reference(EASE_X, 1.0)
    np.testing.assert_allclose(ranker.score_block(rows).numpy()[0], expected, rtol=1e-5, atol=1e-6)


def test_ease_gram_weights_each_window_item_by_decay_to_the_age_of_its_latest_step(spark):
    items = np.array([2, 3, 4, 5])  # OOV (1) and pad (0) are not modelled
    entries = baselines.ease_gram_entries(train_frame(spark), baselines.ease_columns(items, NUM_ITEMS), [1.0, 0.5]).toPandas()
    assert (entries[baselines.EASE_A] <= entries[baselines.EASE_B]).all()
    # By hand. Window [0, 2, 3, 4, 2]: 2 at age 0 (its step at age 3 does not count), 4 at 1,
    # 3 at 2. Window [0, 0, 3, 5, 1]: 5 at age 1, 3 at age 2. Columns: items 2, 3, 4, 5.
    for j, x in enumerate(
        [
            np.array([[1, 1, 1, 0], [0, 1, 0, 1]], dtype=np.float64),  # decay 1.0: ALS's interactions
            np.array([[1, 0.25, 0.5, 0], [0, 0.25, 0, 0.5]]),
        ]
    ):
        np.testing.assert_allclose(baselines.gram_matrix(entries, j, len(items)), x.T @ x, rtol=1e-12)


@pytest.mark.unit
def test_ease_is_skipped_above_the_catalogue_cap_with_a_log_line(caplog):
    counts = np.array([0, 0, 5, 0, 1, 2, 0, 7])  # 4 items with training interactions
    np.testing.assert_array_equal(baselines.ease_items(counts, max_items=4), [2, 4, 5, 7])
    with caplog.at_level("WARNING", logger=baselines.__name__):
        assert baselines.ease_items(counts, max_items=3) is None
    assert caplog.messages == ["evaluate: EASE skipped: 4 items > evaluate.ease_max_items=3 (an 4 x 4 inverse)"]
    np.testing.assert_array_equal(baselines.ease_columns(np.array([2, 4, 5, 7]), 8), [-1, -1, 0, -1, 1, 2, -1, 3])
