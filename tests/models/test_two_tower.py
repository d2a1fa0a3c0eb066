"""The two-tower model's shapes and masking, and the logQ-corrected sampled softmax."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_spark import schema
from recsys_spark.models import ranking
from recsys_spark.models.bundle import ModelBundle
from recsys_spark.models.two_tower import HistoryFeatures, TwoTowerModel
from recsys_spark.train.loss import (
    RetrievalTask, event_weight_table, fp32_logits, full_softmax_loss, horizon_index, popularity, resolve_loss,
    sampled_softmax_loss,
)

pytestmark = pytest.mark.unit

NUM_ITEMS, DIM, LENGTH = 12, 8, 5


def make_model(dropout: float = 0.0, user_features: bool = True, interest_pooling: bool = False) -> TwoTowerModel:
    torch.manual_seed(0)
    model = TwoTowerModel(
        num_items=NUM_ITEMS, num_categories=3, num_brands=4, num_price_buckets=3,
        num_event_codes=schema.NUM_EVENT_CODES, num_gap_buckets=schema.NUM_GAP_BUCKETS, max_seq_len=LENGTH,
        dim=DIM, num_layers=2, num_heads=2, dropout=dropout, use_user_features=user_features,
        use_interest_pooling=interest_pooling, user_vector="last",
    )
    model.set_item_features(
        torch.arange(NUM_ITEMS) % 3, torch.arange(NUM_ITEMS) % 4, torch.arange(NUM_ITEMS) % 3
    )
    return model.eval()


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    items = torch.tensor([[0, 0, 2, 3, 4], [5, 6, 7, 8, 9], [0, 0, 0, 0, 0]])
    events = torch.tensor([[0, 0, 1, 2, 4], [1, 1, 1, 1, 3], [0, 0, 0, 0, 0]])
    gaps = torch.tensor([[0, 0, 0, 3, 5], [0, 2, 2, 9, 1], [0, 0, 0, 0, 0]])
    return items, events, gaps


def test_output_shapes_and_user_vector_is_last_position():
    model = make_model()
    items, events, gaps = batch()
    with torch.no_grad():
        seq = model.sequence_vectors(items, events, gaps)
        users = ranking.user_vectors(model, items, events, gaps)
        catalogue = model.item_vectors()
    # d + 1: the last component carries the item bias (users: a constant 1).
    assert seq.shape == (3, LENGTH, DIM + 1)
    assert users.shape == (3, DIM + 1)
    assert catalogue.shape == (NUM_ITEMS, DIM + 1)
    assert torch.all(users[:, -1] == 1.0)
    torch.testing.assert_close(users, seq[:, -1])


def test_shorter_sequences_are_accepted_and_longer_ones_refused():
    model = make_model()
    items, events, gaps = batch()
    with torch.no_grad():
        assert ranking.user_vectors(model, items[:, 2:], events[:, 2:], gaps[:, 2:]).shape == (3, DIM + 1)
    too_long = torch.zeros(1, LENGTH + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="max_seq_len"):
        model.sequence_vectors(too_long, too_long, too_long)


@pytest.mark.parametrize("user_features,interest_pooling", [(True, False), (False, False), (True, True)])
def test_causal_mask_later_steps_do_not_change_earlier_positions(user_features, interest_pooling):
    model = make_model(user_features=user_features, interest_pooling=interest_pooling)
    items, events, gaps = batch()
    for step in (4, 2):  # the last step, then a middle one
        changed, changed_events, changed_gaps = items.clone(), events.clone(), gaps.clone()
        changed[:2, step] = 11  # a different item, event and gap at `step` in the real rows
        changed_events[:2, step] = schema.EVENT_CODE["purchase"] if step != 4 else schema.EVENT_CODE["cart"]
        changed_gaps[:2, step] = 20
        with torch.no_grad():
            before = model.sequence_vectors(items, events, gaps)
            after = model.sequence_vectors(changed, changed_events, changed_gaps)
        torch.testing.assert_close(before[:2, :step], after[:2, :step])
        assert not torch.allclose(before[:2, step], after[:2, step])


def test_history_features_match_a_hand_computation():
    # One row, left-padded: [pad, item 2 view, item 3 cart, item 2 purchase] with gap buckets 0, 4, 8.
    items = torch.tensor([[0, 2, 3, 2]])
    events = torch.tensor([[0, schema.EVENT_CODE["view"], schema.EVENT_CODE["cart"], schema.EVENT_CODE["purchase"]]])
    gaps = torch.tensor([[5, 0, 4, 8]])  # the pad step's gap (5) must be ignored
    feats = HistoryFeatures(schema.NUM_EVENT_CODES, schema.NUM_GAP_BUCKETS)(items, events, gaps)
    assert feats.shape == (1, 4, HistoryFeatures(schema.NUM_EVENT_CODES, schema.NUM_GAP_BUCKETS).size) == (1, 4, 11)
    top = schema.NUM_GAP_BUCKETS - 1
    # Columns: log1p(n) | shares of view, cart, remove, purchase | log1p counts of the same | mean gap | repeat share
    expected_last = [math.log(4), 1 / 3, 1 / 3, 0, 1 / 3, math.log(2), math.log(2), 0, math.log(2),
                     (0 + 4 + 8) / 3 / top, 1 / 3]
    expected_second = [math.log(2), 1, 0, 0, 0, math.log(2), 0, 0, 0, 0, 0]
    torch.testing.assert_close(feats[0, 3], torch.tensor(expected_last))
    torch.testing.assert_close(feats[0, 1], torch.tensor(expected_second))
    torch.testing.assert_close(feats[0, 0], torch.zeros(11))  # nothing seen yet at the pad step


def test_user_features_change_the_user_vector_and_old_bundles_rebuild_without_them():
    with_features, without = make_model(user_features=True), make_model(user_features=False)
    items, events, gaps = batch()
    more_purchases = events.clone()
    more_purchases[1, :4] = schema.EVENT_CODE["purchase"]
    with torch.no_grad():
        assert not torch.allclose(ranking.user_vectors(with_features, items, events, gaps)[1],
                                  ranking.user_vectors(with_features, items, more_purchases, gaps)[1])
    assert not any(k.startswith("user_feature_mlp") for k in without.state_dict())
    # A bundle saved before user features existed has no such key in model_args: built without.
    old_args = dict(num_items=NUM_ITEMS, num_categories=3, num_brands=4, num_price_buckets=3,
                    num_event_codes=schema.NUM_EVENT_CODES, num_gap_buckets=schema.NUM_GAP_BUCKETS,
                    max_seq_len=LENGTH, dim=DIM, num_layers=2, num_heads=2, dropout=0.0)
    vocab = pd.DataFrame({schema.ITEM_IDX: np.arange(2, NUM_ITEMS), schema.PRODUCT_ID: np.arange(2, NUM_ITEMS) + 1000})
    rebuilt = ModelBundle(model_args=old_args, state_dict=without.state_dict(), item_vocab=vocab,
                          config={}).build_module()
    assert rebuilt.history_features is None and rebuilt.user_vector == "last"


def test_padded_steps_are_ignored_by_the_user_vector():
    model = make_model()
    items, events, gaps = batch()
    noisy = items.clone()
    noisy[0, :2] = 0  # already pad; now change what a pad step would carry besides its index
    noisy_gaps = gaps.clone()
    noisy_gaps[0, :2] = 7
    with torch.no_grad():
        clean = ranking.user_vectors(model, items[:1], events[:1], gaps[:1])
        shifted = ranking.user_vectors(model, noisy[:1], events[:1], noisy_gaps[:1])
    torch.testing.assert_close(clean, shifted)


def test_all_pad_history_gives_finite_vectors_in_train_and_eval_mode():
    model = make_model(dropout=0.1)
    items, events, gaps = batch()
    for mode in (True, False):
        model.train(mode)
        out = model.sequence_vectors(items, events, gaps)
        assert torch.isfinite(out).all()


def test_item_features_change_item_vectors_and_are_checked():
    model = make_model()
    with torch.no_grad():
        before = model.item_vectors()
        model.set_item_features(torch.zeros(NUM_ITEMS), torch.arange(NUM_ITEMS) % 4, torch.arange(NUM_ITEMS) % 3)
        after = model.item_vectors()
    moved = (before - after).abs().sum(dim=1) > 0
    # Items whose category was already 0 (indices 0, 3, 6, 9) keep their vectors.
    assert moved.tolist() == [i % 3 != 0 for i in range(NUM_ITEMS)]
    with pytest.raises(ValueError, match="item_category"):
        model.set_item_features(torch.zeros(3), torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="item_brand"):
        model.set_item_features(torch.zeros(NUM_ITEMS), torch.full((NUM_ITEMS,), 4), torch.zeros(NUM_ITEMS))


# ----------------------------------------------------------------------------- loss


def test_popularity_and_event_weight_tables():
    torch.testing.assert_close(popularity(torch.tensor([9, 9, 1, 1, 2])), torch.tensor([0.0, 0.0, 0.25, 0.25, 0.5]))
    torch.testing.assert_close(popularity(torch.zeros(4)), torch.tensor([0.0, 0.0, 0.5, 0.5]))
    torch.testing.assert_close(
        event_weight_table({"view": 1.0, "purchase": 3.0, "cart": 2.0}), torch.tensor([0.0, 1.0, 2.0, 0.0, 3.0])
    )
    with pytest.raises(ValueError, match="click"):
        event_weight_table({"click": 1.0})


def test_sampled_softmax_with_logq_correction_matches_hand_computation():
    # Three real items 2, 3, 4 with training counts 1, 1, 2: p_pop = 0.25, 0.25, 0.5.
    # Two targets (n = 2): item 2 for user u0 = [1], item 3 for user u1 = [2]; one-dimensional
    # item vectors v2 = 1, v3 = 0, v4 = -1. Negatives (M = 2): items 4 and 3, drawn from 3 real
    # items, so P(an item among the negatives) = 1 - (2/3)^2 = 5/9.
    # Candidates: the union {2, 3, 4}, each once. Inclusion q = 1 - (1 - p)^n (4/9):
    #   q2 = q3 = 1 - 0.75^2 * 4/9 = 1 - 0.25 = 0.75, q4 = 1 - 0.5^2 * 4/9 = 8/9.
    # u0 (label item 2): logits [1 - ln 0.75, 0 - ln 0.75, -1 - ln 8/9]
    #   CE0 = -(1 - ln 0.75) + ln(e^(1 - ln .75) + e^(-ln .75) + e^(-1 - ln 8/9))
    # u1 (label item 3): logits [2 - ln 0.75, 0 - ln 0.75, -2 - ln 8/9]
    #   CE1 = -(0 - ln 0.75) + ln(e^(2 - ln .75) + e^(-ln .75) + e^(-2 - ln 8/9))
    # Item 3 is both u1's target and a negative: one column, no accidental hit to mask.
    # Weights 1 and 3: loss = (CE0 + 3 CE1) / 4
    item_vecs = torch.tensor([[0.0], [0.0], [1.0], [0.0], [-1.0]])
    loss = sampled_softmax_loss(
        user_vecs=torch.tensor([[1.0], [2.0]]),
        targets=torch.tensor([2, 3]),
        weights=torch.tensor([1.0, 3.0]),
        negatives=torch.tensor([4, 3]),
        item_vecs=item_vecs,
        item_tower=None,
        item_prob=popularity(torch.tensor([0, 0, 1, 1, 2])),
        num_items=5,
    )
    a, b = -math.log(0.75), -math.log(8 / 9)
    ce0 = -(1 + a) + math.log(math.exp(1 + a) + math.exp(a) + math.exp(-1 + b))
    ce1 = -a + math.log(math.exp(2 + a) + math.exp(a) + math.exp(-2 + b))
    assert ce0 == pytest.approx(0.393439, abs=1e-6) and ce1 == pytest.approx(2.140448, abs=1e-6)
    assert float(loss) == pytest.approx((ce0 + 3 * ce1) / 4, abs=1e-6)


def test_sampled_softmax_with_every_item_as_a_negative_is_the_full_softmax():
    torch.manual_seed(3)
    num_items, dim, targets_n = 9, 4, 6
    item_vecs = torch.randn(num_items, dim)
    user_vecs = torch.randn(targets_n, dim)
    targets = torch.tensor([2, 5, 5, 8, 3, 2])
    weights = torch.tensor([1.0, 2.0, 1.0, 3.0, 0.5, 1.0])
    every_item = torch.arange(schema.FIRST_ITEM_INDEX, num_items)
    sampled = sampled_softmax_loss(user_vecs, targets, weights, every_item, item_vecs, None,
                                   popularity(torch.arange(num_items)), num_items, negatives_inclusion=1.0)
    full = full_softmax_loss(user_vecs, targets, weights, item_vecs)
    # The reference: cross-entropy over the real items 2..8 only, by hand.
    logits = user_vecs @ item_vecs[2:].T
    per_target = torch.logsumexp(logits, dim=1) - logits[torch.arange(targets_n), targets - 2]
    reference = (weights * per_target).sum() / weights.sum()
    torch.testing.assert_close(full, reference)
    torch.testing.assert_close(sampled, full)


def test_full_softmax_logits_are_float32_under_autocast():
    user_vecs, item_vecs = torch.randn(3, 4).bfloat16(), torch.randn(6, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fp32_logits(user_vecs, item_vecs).dtype == torch.float32
        loss = full_softmax_loss(user_vecs, torch.tensor([2, 3, 5]), torch.ones(3), item_vecs)
    assert loss.dtype == torch.float32


def test_the_retrieval_task_with_the_full_loss_ranks_over_every_item():
    model = make_model()
    task = RetrievalTask(model, popularity(torch.ones(NUM_ITEMS)), event_weight_table({"view": 1.0}), 4, loss="full")
    items = torch.tensor([[0, 2, 3, 4, 5, 6]])
    events = torch.full_like(items, schema.EVENT_CODE["view"])
    gaps = torch.ones_like(items)
    with torch.no_grad():
        loss, n = task(items, events, gaps)
        seq = model.sequence_vectors(items[:, :-1], events[:, :-1], gaps[:, :-1])[0, 1:]
        expected = full_softmax_loss(seq, torch.tensor([3, 4, 5, 6]), torch.ones(4), model.item_vectors())
    assert n == 4 and float(loss) == pytest.approx(float(expected), abs=1e-6)
    assert resolve_loss("auto", 100, 100) == "full" and resolve_loss("auto", 101, 100) == "sampled"
    assert resolve_loss("sampled", 10, 100) == "sampled"


def test_item_tower_path_equals_table_lookup():
    model = make_model()
    args = dict(user_vecs=torch.randn(4, DIM + 1), targets=torch.tensor([2, 5, 5, 9]), weights=torch.ones(4),
                negatives=torch.tensor([3, 4, 10]), item_prob=popularity(torch.arange(NUM_ITEMS)), num_items=NUM_ITEMS)
    with torch.no_grad():
        via_table = sampled_softmax_loss(item_vecs=model.item_vectors(), item_tower=None, **args)
        via_tower = sampled_softmax_loss(item_vecs=None, item_tower=model.output_item_vectors, **args)
    torch.testing.assert_close(via_table, via_tower)


def retrieval_loss(event_weights: dict[str, float]) -> tuple[float, int]:
    model = make_model()
    task = RetrievalTask(model, popularity(torch.ones(NUM_ITEMS)), event_weight_table(event_weights), 4)
    # Inputs [0, 0, 5, 1, 6] -> targets [0, 5, 1, 6, 7]. Counted: 6 (a view, after OOV input 1)
    # and 7 (a purchase). Not counted: pad target 0, target 5 (its input is padding), OOV target 1.
    items = torch.tensor([[0, 0, 5, 1, 6, 7]])
    events = torch.tensor([[0, 0, 1, 1, schema.EVENT_CODE["view"], schema.EVENT_CODE["purchase"]]])
    gaps = torch.tensor([[0, 0, 0, 2, 2, 2]])
    with torch.no_grad():
        loss, n = task(items, events, gaps, generator=torch.Generator().manual_seed(3))
    return float(loss), n


def test_retrieval_task_counts_only_real_targets_and_weights_them_by_event():
    view_only, n_view = retrieval_loss({"view": 1.0})
    purchase_only, n_purchase = retrieval_loss({"purchase": 1.0})
    both, n_both = retrieval_loss({"view": 1.0, "purchase": 3.0})
    assert (n_view, n_purchase, n_both) == (1, 1, 2)
    # Same negatives in every call (same seed): the weighted mean of the two targets' losses.
    # (The logQ term depends on n, so the single-target losses are recomputed with n = 2.)
    model = make_model()
    with torch.no_grad():
        seq = model.sequence_vectors(
            torch.tensor([[0, 0, 5, 1, 6]]), torch.tensor([[0, 0, 1, 1, 1]]), torch.tensor([[0, 0, 0, 2, 2]])
        )[0, 3:]
        negatives = torch.randint(2, NUM_ITEMS, (4,), generator=torch.Generator().manual_seed(3))
        common = dict(user_vecs=seq, targets=torch.tensor([6, 7]), negatives=negatives, item_vecs=model.item_vectors(),
                      item_tower=None, item_prob=popularity(torch.ones(NUM_ITEMS)), num_items=NUM_ITEMS)
        ce_view = float(sampled_softmax_loss(weights=torch.tensor([1.0, 0.0]), **common))
        ce_purchase = float(sampled_softmax_loss(weights=torch.tensor([0.0, 1.0]), **common))
    assert both == pytest.approx((ce_view + 3 * ce_purchase) / 4, abs=1e-5)
    assert view_only != pytest.approx(purchase_only)


def test_gap_bucket_of_matches_the_feature_buckets():
    # 1 + floor(log2(1 + s)), capped: 0 s -> 1, 1 s -> 2, 3 s -> 3, 1800 s -> 11 (1024 <= 1801 < 2048).
    assert [schema.gap_bucket_of(s) for s in (0, 1, 2, 3, 1022, 1023, 1800, 10**9)] == [1, 2, 2, 3, 10, 11, 11, 23]
    with pytest.raises(ValueError, match="negative"):
        schema.gap_bucket_of(-1)


def test_next_visit_targets_start_at_the_next_visit():
    model = make_model()
    task = RetrievalTask(model, popularity(torch.ones(NUM_ITEMS)), event_weight_table({"view": 1.0}), 4,
                         visit_gap_bucket=11)
    # Steps 2, 3, 4 | 5, 6, 7: item 5 opens a new visit (gap bucket 12 >= 11). Positions 0..2
    # (inputs 2, 3, 4) predict 5, the first step of their next visit; positions 3 and 4 lie in
    # the last visit of the window and predict nothing.
    items = torch.tensor([[2, 3, 4, 5, 6, 7]])
    events = torch.full_like(items, schema.EVENT_CODE["view"])
    gaps = torch.tensor([[0, 1, 1, 12, 1, 1]])
    with torch.no_grad():
        loss, n = task(items, events, gaps, generator=torch.Generator().manual_seed(3))
        generator = torch.Generator().manual_seed(3)
        torch.rand((1, 5), generator=generator)  # the horizon draws (all offsets 0 at H = 1) come first
        negatives = torch.randint(2, NUM_ITEMS, (4,), generator=generator)
        seq = model.sequence_vectors(items[:, :-1], events[:, :-1], gaps[:, :-1])[0, :3]
        expected = sampled_softmax_loss(seq, torch.tensor([5, 5, 5]), torch.ones(3), negatives, model.item_vectors(),
                                        None, popularity(torch.ones(NUM_ITEMS)), NUM_ITEMS)
    assert n == 3
    assert float(loss) == pytest.approx(float(expected), abs=1e-6)


def test_retrieval_task_without_targets_gives_zero_loss_with_gradients():
    task = RetrievalTask(make_model(), popularity(torch.ones(NUM_ITEMS)), event_weight_table({"view": 1.0}), 4)
    items = torch.tensor([[0, 0, 0, 0, 5, 1]])  # target 5 has a pad input, target 1 is OOV
    loss, n = task(items, torch.ones_like(items), torch.zeros_like(items))
    loss.backward()
    assert n == 0 and float(loss.detach()) == 0.0
    assert all(p.grad is not None for p in task.parameters())


def test_horizon_targets_spread_over_the_steps_the_window_has_left():
    length, horizon, rows = 6, 4, 4000
    start = torch.arange(length)[None, :].expand(rows, length)
    index = horizon_index(start, horizon, torch.Generator().manual_seed(5))
    # Position 1 draws from steps 1..4, position 4 from 4..5 (two left), position 5 from 5 only.
    for position, allowed in ((1, [1, 2, 3, 4]), (4, [4, 5]), (5, [5])):
        counts = torch.bincount(index[:, position], minlength=length)[allowed].float()
        assert int(counts.sum()) == rows
        assert torch.allclose(counts / rows, torch.full_like(counts, 1 / len(allowed)), atol=0.03)
    # A position with no step left (start = length) is clipped to the last step.
    assert horizon_index(torch.tensor([[3, 3, 3]]), horizon).tolist() == [[2, 2, 2]]


