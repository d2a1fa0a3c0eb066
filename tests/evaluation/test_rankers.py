"""The rankers evaluation compares, ranking through models.ranking."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from recsys_spark import schema
from recsys_spark.errors import DataQualityError
from recsys_spark.models.rankers import ModelRanker, PopularityRanker, vocab_column
from recsys_spark.models import ranking

from tests.models.test_ranking import brute_force

pytestmark = pytest.mark.unit

NEG_INF = float("-inf")


def history_rows(last_items: list[list[int]], seen: list[list[int]], length: int = 4) -> pd.DataFrame:
    """History rows (schema.HISTORY_FIELDS) whose hist_items end with ``last_items``, left-padded."""
    items = [[schema.PAD_INDEX] * (length - len(h)) + h for h in last_items]
    return pd.DataFrame(
        {
            schema.USER_ID: [f"u{i}" for i in range(len(items))],
            schema.HIST_ITEMS: items,
            schema.HIST_EVENTS: [[1 if i else 0 for i in row] for row in items],
            schema.HIST_GAPS: [[0] * length for _ in items],
            schema.SEEN_ITEMS: seen,
        }
    )


class LastItemModel(nn.Module):
    """Stand-in for TwoTowerModel: the user vector is the vector of the last history item."""

    def __init__(self, item_vecs: torch.Tensor):
        super().__init__()
        self.vecs = item_vecs

    def item_vectors(self) -> torch.Tensor:
        return self.vecs

    user_vector = "last"

    def sequence_vectors(self, items, events, gaps) -> torch.Tensor:
        return self.vecs[items]


STAND_IN_VECS = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.2, 0.8]])


def test_model_ranker_ranks_by_dot_product_of_the_towers():
    ranker = ModelRanker(LastItemModel(STAND_IN_VECS))
    rows = history_rows([[2], [3, 4]], seen=[[2], [4, 5]])
    # u0 (last item 2): scores 2:1.0 3:0.9 4:0.0 5:0.2 -> seen 2 out -> 3, 5, 4.
    # u1 (last item 4): scores 2:0.0 3:0.1 4:1.0 5:0.8 -> seen 4, 5 out -> 3, 2, then nothing.
    for block_size in (1, 2):
        top, scores = ranker.recommend(rows, 3, exclude_seen=True, block_size=block_size)
        assert top.tolist() == [[3, 5, 4], [3, 2, -1]]
        np.testing.assert_allclose(scores, [[0.9, 0.2, 0.0], [0.1, 0.0, NEG_INF]], rtol=1e-6)
    top, _ = ranker.recommend(rows, 3, exclude_seen=False)
    assert top.tolist() == [[2, 3, 5], [4, 5, 3]]


class RecordingRanker(ModelRanker):
    """Records the exclusion mask the ranking path hands to the scorer (a "mixture" model reads it)."""

    def score_block(self, batch, excluded=None):
        self.exclude = excluded.clone()
        return super().score_block(batch, excluded)


def test_model_ranker_tells_the_model_what_each_user_may_not_get():
    ranker = RecordingRanker(LastItemModel(STAND_IN_VECS), allowed=torch.tensor([True, True, True, True, True, False]))
    rows = history_rows([[2], [3, 4]], seen=[[2], [4]])
    ranker.recommend(rows, 2, exclude_seen=True)
    # Pad and OOV, the blocked item 5, and each row's seen items.
    assert ranker.exclude.tolist() == [[True, True, True, False, False, True], [True, True, False, False, True, True]]
    ranker.recommend(rows, 2, exclude_seen=False)
    assert ranker.exclude.tolist() == [[True, True, False, False, False, True]] * 2


def test_popularity_ranker_gives_everyone_the_most_popular_unseen_items():
    vocab = pd.DataFrame({schema.ITEM_IDX: [2, 3, 4, 6], schema.PRETEST_COUNT: [5, 40, 12, 7]})
    ranker = PopularityRanker.from_vocab(vocab, num_items=7)  # index 5 is no vocabulary item
    rows = history_rows([[2], [3]], seen=[[], [3, 4]])
    top, scores = ranker.recommend(rows, 4, exclude_seen=True)
    assert top.tolist() == [[3, 4, 6, 2], [6, 2, -1, -1]]
    np.testing.assert_allclose(scores[0], [math.log(41), math.log(13), math.log(8), math.log(6)], rtol=1e-6)


def test_rank_targets_places_each_target_in_the_same_scores_as_the_top_k():
    ranker = ModelRanker(LastItemModel(STAND_IN_VECS))
    rows = history_rows([[2], [3, 4]], seen=[[2], [4, 5]])
    # u0: eligible 3 (0.9), 4 (0.0), 5 (0.2): target 5 is second, target 2 is seen (never ranked).
    # u1: eligible 2 (0.0), 3 (0.1): target 2 is second.
    for block_size in (1, 2):
        top, ranks, eligible = ranker.rank_targets(rows, 3, [np.array([5, 2]), np.array([2])], block_size)
        np.testing.assert_array_equal(top, ranker.recommend(rows, 3, block_size=block_size)[0])
        assert [r.tolist() for r in ranks] == [[2.0, math.inf], [2.0]]
        assert eligible.tolist() == [3, 2]
    with pytest.raises(ValueError, match="targets holds 1 lists for 2 users"):
        ranker.rank_targets(rows, 3, [np.array([5])])


def test_rank_targets_leave_blocked_items_out_and_split_ties():
    vocab = pd.DataFrame({schema.ITEM_IDX: [2, 3, 4, 6], schema.PRETEST_COUNT: [5, 5, 12, 7]})
    ranker = PopularityRanker.from_vocab(vocab, num_items=7)  # index 5 is no vocabulary item
    rows = history_rows([[2]], seen=[[]])
    # Eligible 2, 3 (tied), 4, 6. Item 2: 4 and 6 above, 3 tied -> 1 + 2 + 1/2; item 6: 4 above -> 2.
    _, ranks, eligible = ranker.rank_targets(rows, 2, [np.array([2, 6, 5])])
    assert ranks[0].tolist() == [3.5, 2.0, math.inf] and eligible.tolist() == [4]


def test_vocab_column_rejects_indices_outside_the_model():
    vocab = pd.DataFrame({schema.ITEM_IDX: [2, 9], schema.PRETEST_COUNT: [1, 1]})
    with pytest.raises(DataQualityError, match="item_idx"):
        vocab_column(vocab, schema.PRETEST_COUNT, num_items=5)


# ----------------------------------------------------------------------- with the real model

NUM_ITEMS = 8  # pad, OOV and six real items 2..7
MAX_SEQ_LEN = 4
PRETEST_COUNTS = [50, 40, 30, 20, 10, 5]  # items 2..7: popularity order is 2, 3, 4, 5, 6, 7


def tiny_bundle(seed: int = 0):
    """A randomly initialised TwoTowerModel bundle over six items (product_id = 1000 + item_idx)."""
    from recsys_spark.models.bundle import ModelBundle
    from recsys_spark.models.two_tower import TwoTowerModel

    torch.manual_seed(seed)
    args = dict(num_items=NUM_ITEMS, num_categories=3, num_brands=3, num_price_buckets=3,
                num_event_codes=schema.NUM_EVENT_CODES, num_gap_buckets=schema.NUM_GAP_BUCKETS, max_seq_len=MAX_SEQ_LEN,
                dim=8, num_layers=1, num_heads=2, dropout=0.0,
                use_user_features=False, use_interest_pooling=False, user_vector="last")
    model = TwoTowerModel(**args)
    idx = np.arange(2, NUM_ITEMS)
    vocab = pd.DataFrame(
        {
            schema.ITEM_IDX: idx.astype(np.int32),
            schema.PRODUCT_ID: 1000 + idx,
            schema.CATEGORY_IDX: (idx % 3).astype(np.int32),
            schema.BRAND_IDX: (idx % 2).astype(np.int32),
            schema.PRICE_BUCKET: (1 + idx % 2).astype(np.int32),
            schema.TRAIN_COUNT: np.array(PRETEST_COUNTS) - 1,
            schema.PRETEST_COUNT: np.array(PRETEST_COUNTS),
        }
    )
    return ModelBundle(model_args=args, state_dict=model.state_dict(), item_vocab=vocab, config={})


def test_model_ranker_on_the_real_model_agrees_with_brute_force_and_the_pyfunc():
    from recsys_spark.models.pyfunc import RecommenderPyfunc

    bundle = tiny_bundle()
    rows = history_rows([[2, 3], [1, 4, 5, 6], [7]], seen=[[2, 3], [4, 5, 6], [7]])
    top, _ = ModelRanker.from_bundle(bundle).recommend(rows, 3, exclude_seen=True, block_size=2)

    module = bundle.build_module()
    with torch.no_grad():
        users = ranking.user_vectors(module, *ranking.history_tensors(rows))
        items = module.item_vectors()
    expected = brute_force(users.double().numpy(), items.double().numpy(), 3, rows[schema.SEEN_ITEMS].tolist())
    np.testing.assert_array_equal(top, expected)

    predicted = RecommenderPyfunc.from_bundle(bundle).predict(None, rows, {"k": 3})
    assert predicted["item_ids"].tolist() == (1000 + top).tolist()
