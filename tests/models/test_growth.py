"""Warm starts: the parent's rows carried unchanged into a model of a grown vocabulary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys_spark import schema
from recsys_spark.errors import InputError
from recsys_spark.models import growth, ranking
from recsys_spark.models.two_tower import TwoTowerModel

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

ARGS = dict(num_items=6, num_categories=4, num_brands=3, num_price_buckets=3, num_event_codes=schema.NUM_EVENT_CODES,
            num_gap_buckets=schema.NUM_GAP_BUCKETS, max_seq_len=4, dim=8, num_layers=1, num_heads=2, dropout=0.0,
            use_user_features=False, use_interest_pooling=False, user_vector="last")
# Parent items 2..5 in categories 2, 2, 3, 0 (unknown); three new items 6, 7, 8 in category 2
# (which has parent items), 4 (new) and 0.
PARENT_CATEGORY = [0, 0, 2, 2, 3, 0]
CHILD_CATEGORY = PARENT_CATEGORY + [2, 4, 0]


def trained_parent() -> TwoTowerModel:
    torch.manual_seed(0)
    model = TwoTowerModel(**ARGS)
    model.set_item_features(torch.tensor(PARENT_CATEGORY), torch.tensor([0, 0, 1, 2, 1, 1]), torch.tensor([0, 0, 1, 2, 1, 2]))
    with torch.no_grad():  # "trained": biases that differ per item
        model.item_bias.weight.copy_(torch.arange(6, dtype=torch.float32)[:, None] / 10)
    return model.eval()


def test_old_rows_are_unchanged_and_new_items_start_from_their_categorys_mean():
    parent = trained_parent()
    child_args = {**ARGS, "num_items": 9, "num_categories": 5, "num_brands": 4, "dropout": 0.2}
    grown = growth.grow_state(parent.state_dict(), ARGS, child_args, np.array(CHILD_CATEGORY), seed=3)
    child = TwoTowerModel(**child_args)
    child.load_state_dict(grown)
    child.set_item_features(torch.tensor(CHILD_CATEGORY), torch.tensor([0, 0, 1, 2, 1, 1, 3, 1, 0]),
                            torch.tensor([0, 0, 1, 2, 1, 2, 1, 1, 0]))
    child.eval()
    parent_ids, child_ids = parent.item_tower.id_embedding.weight, child.item_tower.id_embedding.weight
    assert torch.equal(child_ids[:6], parent_ids)
    assert torch.equal(child.item_tower.category_embedding.weight[:4], parent.item_tower.category_embedding.weight)
    assert torch.equal(child.item_tower.brand_embedding.weight[:3], parent.item_tower.brand_embedding.weight)
    # Item 6 (category 2): the mean of parent items 2 and 3; bias (0.2 + 0.3) / 2.
    torch.testing.assert_close(child_ids[6], (parent_ids[2] + parent_ids[3]) / 2)
    assert float(child.item_bias.weight[6].detach()) == pytest.approx(0.25)
    # Items 7 (a new category) and 8 (no category): a fresh model's rows for the same seed.
    torch.manual_seed(3)
    fresh = TwoTowerModel(**child_args)
    assert torch.equal(child_ids[7:], fresh.item_tower.id_embedding.weight[7:])
    assert torch.equal(child.item_bias.weight[7:], fresh.item_bias.weight[7:])
    # What the parent recommends from is unchanged: every old item's vector, and a user's vector.
    with torch.no_grad():
        torch.testing.assert_close(child.item_vectors()[:6], parent.item_vectors(), rtol=0, atol=0)
        history = (torch.tensor([[0, 2, 3, 4]]), torch.tensor([[0, 1, 1, 2]]), torch.tensor([[0, 1, 2, 3]]))
        torch.testing.assert_close(ranking.user_vectors(child, *history), ranking.user_vectors(parent, *history),
                                   rtol=0, atol=0)


@pytest.mark.parametrize("change, message", [
    ({"dim": 16}, "dim is 16 here, 8 in the parent model"),
    ({"num_layers": 2}, "num_layers is 2 here, 1 in the parent model"),
    ({"max_seq_len": 6}, "max_seq_len is 6 here, 4 in the parent model"),
    ({"num_items": 5}, "num_items shrank from 6 to 5"),
])
def test_a_parent_of_another_shape_is_refused_naming_what_differs(change, message):
    assert growth.incompatibility(ARGS, {**ARGS, "dropout": 0.3}) is None
    with pytest.raises(InputError, match=f"cannot warm-start from the parent model: {message}"):
        growth.grow_state(trained_parent().state_dict(), ARGS, {**ARGS, **change}, np.zeros(9, np.int64))
