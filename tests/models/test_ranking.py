"""The one ranking path (models/ranking.py): user-vector modes, exclusions, the blocked top K,
and the agreement of its four callers: evaluation, scoring, the pyfunc and training's validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_spark import schema
from recsys_spark.config import ScoreConfig
from recsys_spark.errors import DataQualityError
from recsys_spark.models.rankers import ModelRanker
from recsys_spark.models import ranking
from recsys_spark.models.pyfunc import RecommenderPyfunc
from recsys_spark.models.two_tower import TwoTowerModel
from recsys_spark.schema import EXCLUDE_PRODUCTS, USER_CATEGORY, USER_KEY
from recsys_spark.scoring.recommender import Recommender
from recsys_spark.scoring.score import build_plan
from recsys_spark.train import data
from recsys_spark.train.validation import validation_lists

from tests.models.test_two_tower import make_model
from tests.scoring.tiny import NUM_ITEMS, PRODUCT, tiny_bundle

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

NEG_INF = float("-inf")


def brute_force(user_vecs: np.ndarray, item_vecs: np.ndarray, k: int, exclude: list[list[int]]) -> np.ndarray:
    scores = user_vecs @ item_vecs.T
    scores[:, : schema.FIRST_ITEM_INDEX] = -np.inf
    for row, items in enumerate(exclude):
        scores[row, items] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def test_top_k_equals_a_brute_force_argsort_for_any_block_size():
    rng = np.random.default_rng(3)
    users, items = rng.normal(size=(7, 4)), rng.normal(size=(15, 4))
    exclude = [rng.choice(np.arange(15), size=rng.integers(0, 5), replace=False).tolist() for _ in range(7)]
    expected = brute_force(users, items, 5, exclude)
    for block_size in (1, 3, 7, 100):
        indices, scores = ranking.top_k(
            torch.from_numpy(users), torch.from_numpy(items), 5, [np.array(e) for e in exclude], block_size
        )
        np.testing.assert_array_equal(indices.numpy(), expected)
        np.testing.assert_allclose(scores.numpy(), np.take_along_axis(users @ items.T, expected, axis=1))


def test_pad_oov_excluded_and_disallowed_items_are_never_returned():
    # Item vectors along one axis: the user's scores are the items' values, pad/OOV the best.
    values = torch.tensor([[9.0], [8.0], [1.0], [5.0], [4.0], [3.0], [2.0]])
    user = torch.ones(1, 1)
    indices, _ = ranking.top_k(user, values, 3)
    assert indices.tolist() == [[3, 4, 5]]
    indices, _ = ranking.top_k(user, values, 3, exclude=[np.array([3, 99, -4])])  # out-of-range entries ignored
    assert indices.tolist() == [[4, 5, 6]]
    allowed = torch.tensor([True, True, True, True, False, True, True])
    indices, _ = ranking.top_k(user, values, 3, exclude=[np.array([3])], allowed=allowed)
    assert indices.tolist() == [[5, 6, 2]]


def test_top_k_leaves_empty_slots_when_the_catalogue_runs_out():
    values = torch.tensor([[0.0], [0.0], [1.0], [2.0], [3.0]])
    indices, scores = ranking.top_k(torch.ones(2, 1), values, 6, exclude=[np.array([4]), np.array([], dtype=np.int64)])
    assert indices.tolist() == [[3, 2, -1, -1, -1, -1], [4, 3, 2, -1, -1, -1]]
    assert scores.tolist() == [[2.0, 1.0] + [NEG_INF] * 4, [3.0, 2.0, 1.0] + [NEG_INF] * 3]


def test_top_k_rejects_non_finite_vectors_and_bad_arguments():
    with pytest.raises(DataQualityError, match="NaN"):
        ranking.top_k(torch.tensor([[float("nan")]]), torch.ones(4, 1), 2)
    with pytest.raises(ValueError, match="exclude"):
        ranking.top_k(torch.ones(2, 1), torch.ones(4, 1), 2, exclude=[np.array([2])])
    with pytest.raises(ValueError, match="positive"):
        ranking.top_k(torch.ones(2, 1), torch.ones(4, 1), 0)


def test_mean_user_vector_averages_the_real_positions_only():
    last = make_model()
    mean = make_model()
    mean.load_state_dict(last.state_dict())
    mean.user_vector = "mean"
    items = torch.tensor([[0, 0, 5, 6, 7], [0, 0, 0, 0, 0]])
    events = torch.tensor([[0, 0, 1, 1, 2], [0, 0, 0, 0, 0]])
    gaps = torch.tensor([[0, 0, 0, 3, 4], [0, 0, 0, 0, 0]])
    with torch.no_grad():
        seq = last.sequence_vectors(items, events, gaps)
        torch.testing.assert_close(ranking.user_vectors(last, items, events, gaps), seq[:, -1])
        got = ranking.user_vectors(mean, items, events, gaps)
    # Row 0: the mean over its three real steps (pad positions 0 and 1 left out); row 1 has no
    # real step and falls back to its last position.
    torch.testing.assert_close(got[0], seq[0, 2:].mean(dim=0))
    torch.testing.assert_close(got[1], seq[1, -1])
    assert float(got[0, -1]) == pytest.approx(1.0)  # the item bias's weight stays 1
    with pytest.raises(ValueError, match="user_vector"):
        TwoTowerModel(num_items=10, num_categories=2, num_brands=2, num_price_buckets=2, num_event_codes=5,
                      num_gap_buckets=4, max_seq_len=5, user_vector="max")


def test_mixture_scores_are_the_log_mean_softmax_over_steps_of_the_items_left(monkeypatch):
    model = make_model()
    model.user_vector = "mixture"
    items = torch.tensor([[0, 0, 5, 6, 7], [0, 0, 0, 0, 0]])
    events = torch.tensor([[0, 0, 1, 1, 2], [0, 0, 0, 0, 0]])
    gaps = torch.tensor([[0, 0, 0, 3, 4], [0, 0, 0, 0, 0]])
    candidates = torch.tensor([2, 3, 4, 8, 9])
    exclude = torch.tensor([[False, True, False, False, True], [False] * 5])
    with torch.no_grad():
        seq = model.sequence_vectors(items, events, gaps)
        vecs = model.item_vectors()[candidates]
        got = ranking.score_items(model, items, events, gaps, vecs, exclude)
        unmasked = ranking.score_items(model, items, events, gaps, vecs)
    # By hand, row 0: its three real steps t = 2, 3, 4, each a softmax over candidates 2, 4, 8
    # (3 and 9 are excluded from the normaliser but still scored), averaged.
    logits = seq[0, 2:] @ vecs.T  # [3 steps, 5 candidates]
    norm = torch.logsumexp(logits[:, [0, 2, 3]], dim=1, keepdim=True)
    expected = torch.log(torch.exp(logits - norm).mean(dim=0))
    torch.testing.assert_close(got[0], expected)
    # The kept candidates' probabilities sum to 1; the excluded ones are finite.
    assert float(got[0, [0, 2, 3]].exp().sum()) == pytest.approx(1.0, abs=1e-5)
    assert bool(torch.isfinite(got).all())
    # Row 1 (no real step) uses its last position alone; nothing excluded: a plain log-softmax.
    torch.testing.assert_close(got[1], torch.log_softmax(seq[1, -1] @ vecs.T, dim=0))
    torch.testing.assert_close(unmasked[0], torch.log(torch.softmax(logits, dim=1).mean(dim=0)))
    # Chunked over users (one at a time), the same scores.
    monkeypatch.setattr(ranking, "MIXTURE_CHUNK_LOGITS", 1)
    with torch.no_grad():
        torch.testing.assert_close(ranking.score_items(model, items, events, gaps, vecs, exclude), got)
    # "last" and "mean" score by the dot product and ignore the exclusions.
    model.user_vector = "mean"
    with torch.no_grad():
        torch.testing.assert_close(ranking.score_items(model, items, events, gaps, vecs, exclude),
                                   ranking.user_vectors(model, items, events, gaps) @ vecs.T)


@pytest.mark.parametrize("mode", ranking.USER_VECTORS)
def test_evaluation_scoring_the_pyfunc_and_validation_return_the_same_lists(mode):
    k, users = 5, 24
    bundle = tiny_bundle(seed=4, user_vector=mode)
    rng = np.random.default_rng(0)
    # Left-padded histories of 1-4 real steps over items 2..9, OOV (1) mixed in; each user's
    # seen items are its history's real items plus one more, so exclusions differ from the history.
    hist = np.zeros((users, 4), dtype=np.int64)
    seen = []
    for u in range(users):
        length = rng.integers(1, 5)
        hist[u, 4 - length:] = rng.integers(1, NUM_ITEMS, size=length)
        hist[u, -1] = rng.integers(2, NUM_ITEMS)  # at least one known item: scoring uses the model
        extra = rng.integers(2, NUM_ITEMS)
        seen.append(sorted({int(i) for i in hist[u] if i >= schema.FIRST_ITEM_INDEX} | {int(extra)}))
    events = np.where(hist > 0, rng.integers(1, 4, size=hist.shape), 0)
    gaps = np.where(hist > 0, rng.integers(1, schema.NUM_GAP_BUCKETS, size=hist.shape), 0)
    frame = pd.DataFrame({
        schema.USER_ID: [f"u{u}" for u in range(users)],
        schema.HIST_ITEMS: list(hist), schema.HIST_EVENTS: list(events), schema.HIST_GAPS: list(gaps), schema.SEEN_ITEMS: seen,
    })
    product_ids = bundle.product_ids()

    def as_products(top: np.ndarray) -> list[list[int]]:
        return [[int(product_ids[i]) for i in row if i != schema.EMPTY_SLOT] for row in top]

    evaluation, _ = ModelRanker.from_bundle(bundle).recommend(frame, k, block_size=7)
    expected = as_products(evaluation)
    lengths = {len(row) for row in expected}
    assert k in lengths and min(lengths) < k  # full lists, and lists with empty slots (most items seen)
    assert len({tuple(row) for row in expected}) > 1  # lists differ between users: the test can fail

    pyfunc = RecommenderPyfunc.from_bundle(bundle).predict(None, frame, {"k": k})
    assert pyfunc["item_ids"].tolist() == expected

    rows = data.EvalRows(hist, events, gaps, [np.array(s) for s in seen], [np.array([2])] * users)
    assert as_products(validation_lists(bundle.build_module(), rows, k)) == expected

    with torch.no_grad():
        vectors = bundle.build_module().item_vectors().numpy()
    stats = pd.DataFrame({schema.PRODUCT_ID: PRODUCT + np.arange(2, NUM_ITEMS), schema.CATEGORY_ID: pd.array([None] * 8, "Int64"),
                          "recent_users": np.ones(8), "all_users": np.ones(8)})
    plan = build_plan(bundle, vectors, bundle.item_vocab, stats, np.zeros(0, np.int64),
                      ScoreConfig(top_k=k, block_size=5, explore_share=0.0, category_cap=0))
    batch = frame.assign(**{EXCLUDE_PRODUCTS: [[PRODUCT + i for i in s] for s in seen],
                            USER_CATEGORY: pd.array([None] * users, "Int64"),
                            USER_KEY: np.arange(users, dtype=np.int64)})
    out = Recommender(plan).recommend(batch)
    assert set(out[schema.SOURCE]) == {"model"}
    scored = out.sort_values([schema.USER_ID, schema.RANK]).groupby(schema.USER_ID, sort=False)[schema.ITEM_ID].apply(list)
    assert [scored[f"u{u}"] for u in range(users)] == expected
