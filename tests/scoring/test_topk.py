"""Blocked exact top-K, the category cap and exploration slots, on hand-checked examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys_spark.scoring import topk

pytestmark = pytest.mark.unit

NEG_INF = float("-inf")

# 3 users x 5 items in 2 dimensions; scores (user @ item) worked out by hand:
#            i0   i1   i2   i3   i4
#   u0:       1    0    2    4    3
#   u1:       4    2    3    0    1
#   u2:       9    4    8    4    5
USERS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 2.0]])
ITEMS = torch.tensor([[1.0, 4.0], [0.0, 2.0], [2.0, 3.0], [4.0, 0.0], [3.0, 1.0]])


def test_the_example_scores_are_what_the_comment_says():
    assert (USERS @ ITEMS.T).tolist() == [[1, 0, 2, 4, 3], [4, 2, 3, 0, 1], [9, 4, 8, 4, 5]]


def test_rank_without_rules_is_the_plain_top_k():
    ranked = topk.rank(USERS @ ITEMS.T, 2)
    assert ranked.items.tolist() == [[3, 4], [0, 2], [0, 2]]
    assert ranked.scores.tolist() == [[4, 3], [4, 3], [9, 8]]
    assert not ranked.explore.any()
    # Asking for more than the catalogue pads with empties.
    ranked = topk.rank(torch.tensor([[1.0, NEG_INF, 3.0]]), 4)
    assert ranked.items.tolist() == [[2, 0, -1, -1]]
    assert ranked.scores.tolist() == [[3.0, 1.0, NEG_INF, NEG_INF]]


def test_category_cap_skips_items_of_a_full_category():
    scores = torch.tensor([[9.0, 8.0, 7.0, 6.0, 5.0, 4.0]])
    categories = np.array([0, 0, 0, 1, -1, 1])  # -1: unknown, never capped
    assert topk.rank(scores.clone(), 4, categories, cap=2).items.tolist() == [[0, 1, 3, 4]]
    assert topk.rank(scores.clone(), 5, categories, cap=1).items.tolist() == [[0, 3, 4, -1, -1]]
    assert topk.rank(scores.clone(), 3, categories, cap=0).items.tolist() == [[0, 1, 2]]


def test_category_cap_looks_past_the_first_candidates_when_one_category_dominates():
    # The 10 best items share category 0; with k = 2 the greedy pass first looks 8 deep,
    # finds one item, and must go on to item 10, the best of category 1.
    scores = torch.arange(12, 0, -1, dtype=torch.float32)[None].repeat(2, 1)
    categories = np.array([0] * 10 + [1, 1])
    ranked = topk.rank(scores, 2, categories, cap=1)
    assert ranked.items.tolist() == [[0, 10], [0, 10]]
    assert ranked.scores.tolist() == [[12.0, 2.0], [12.0, 2.0]]


def test_exploration_picks_take_their_slots_and_the_model_fills_the_rest_in_order():
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    slots = np.array([[False, True, False, True], [True, False, False, False]])
    picks = np.array([[5, 4, -1, -1], [0, -1, -1, -1]])
    ranked = topk.rank(scores, 4, explore=picks, slots=slots)
    # u0: picks 5 and 4 at positions 2 and 4 (1-based), the model's best (0, 1) around them.
    assert ranked.items.tolist() == [[0, 5, 1, 4], [0, 5, 4, 3]]
    assert ranked.explore.tolist() == [[False, True, False, True], [True, False, False, False]]
    assert ranked.scores.tolist() == [[5.0, 0.0, 4.0, 1.0], [0.0, 5.0, 4.0, 3.0]]


def test_fewer_picks_than_slots_leave_the_other_slots_to_the_model():
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0]])
    ranked = topk.rank(scores, 3, explore=np.array([[3, -1, -1]]), slots=np.array([[True, True, True]]))
    assert ranked.items.tolist() == [[3, 0, 1]]
    assert ranked.explore.tolist() == [[True, False, False]]


@pytest.mark.timeout(60)
def test_a_pick_of_the_first_item_is_not_repeated_by_the_model():
    # Item 0 is picked and the second slot has no pick: the model must not give item 0 again.
    scores = torch.tensor([[9.0, 8.0, 7.0]])
    ranked = topk.rank(scores, 3, explore=np.array([[0, -1, -1]]), slots=np.array([[True, True, False]]))
    assert ranked.items.tolist() == [[0, 1, 2]]
    assert ranked.explore.tolist() == [[True, False, False]]


def test_exploration_picks_count_against_the_category_cap():
    scores = torch.tensor([[9.0, 8.0, 7.0, 6.0]])
    categories = np.array([0, 0, 1, 0])
    ranked = topk.rank(scores, 3, categories, cap=1, explore=np.array([[3, -1, -1]]),
                       slots=np.array([[False, False, True]]))
    # The pick (item 3, category 0) fills category 0, so the model skips items 0 and 1.
    assert ranked.items.tolist() == [[2, 3, -1]]
    assert ranked.explore.tolist() == [[False, True, False]]


def test_draw_explore_skips_excluded_and_repeated_picks():
    scores = torch.tensor([[1.0, NEG_INF, 1.0, 1.0, 1.0]])
    pool = np.array([1, 2, 3])
    # Draws land on pool positions 0 (item 1, excluded), 1 (item 2), 1 again, 2 (item 3).
    draws = np.array([[0.1, 0.5, 0.4, 0.9, 0.0, 0.0]])
    picks = topk.draw_explore(scores, pool, np.array([[True, False, True]]), draws)
    assert picks.tolist() == [[2, 3, -1]]
    one_slot = topk.draw_explore(scores, pool, np.array([[False, True, False]]), draws)
    assert one_slot.tolist() == [[2, -1, -1]]
    assert topk.draw_explore(scores, np.zeros(0, np.int64), np.array([[True] * 3]), draws).tolist() == [[-1] * 3]


def test_uniforms_are_a_reproducible_function_of_the_key():
    keys = np.array([3, -7, 2**62], dtype=np.int64)
    first = topk.uniforms(keys, 5)
    assert np.array_equal(first, topk.uniforms(keys, 5))
    assert np.array_equal(first[:, 2:], topk.uniforms(keys, 3, offset=2))
    assert np.array_equal(first[1], topk.uniforms(keys[1:2], 5)[0])  # independent of the batch
    assert ((first >= 0) & (first < 1)).all()
    many = topk.uniforms(np.arange(20_000, dtype=np.int64), 4)
    # Uniform on [0, 1): mean 1/2 and quartiles 1/4 apart (standard error about 0.002).
    assert abs(many.mean() - 0.5) < 0.01
    assert np.allclose(np.quantile(many, [0.25, 0.5, 0.75]), [0.25, 0.5, 0.75], atol=0.01)


def test_occurrence_counts_earlier_equal_codes_per_row():
    codes = np.array([[7, 3, 7, 7], [1, 1, 2, 1]])
    assert topk.occurrence(codes).tolist() == [[0, 0, 1, 2], [0, 1, 0, 2]]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="cap"):
        topk.rank(USERS @ ITEMS.T, 2, cap=-1)
