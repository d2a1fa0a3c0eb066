"""Validation during training: ranking values of the validation rows, plateaus (train/validation.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from recsys_spark.train import data
from recsys_spark.train.validation import ranking_values

pytestmark = pytest.mark.unit


class FixedScores(nn.Module):
    """Stand-in model: user vector = one-hot of the row's last history item; items score = table."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table  # [users, items]: scores of each user (picked by last hist item)

    def item_vectors(self) -> torch.Tensor:
        return torch.eye(self.table.shape[1])

    user_vector = "last"

    def sequence_vectors(self, items, events, gaps) -> torch.Tensor:
        return self.table[items]


def test_ranking_sums_match_hand_computed_ndcg_and_recall():
    # 6 item indices (0 pad, 1 OOV, real 2..5); k = 2.
    table = torch.tensor([
        [9.0, 9.0, 4.0, 3.0, 2.0, 1.0],  # user 0: ranking 2, 3, 4, 5 (pad, OOV never ranked)
        [0.0, 0.0, 1.0, 2.0, 3.0, 4.0],  # user 1: ranking 5, 4, 3, 2 but 5 was seen -> 4, 3, 2
        [0.0, 0.0, 1.0, 2.0, 3.0, 4.0],  # user 2: no targets, not counted
    ])
    rows = data.EvalRows(
        hist_items=np.array([[0, 0], [0, 1], [1, 2]]),
        hist_events=np.zeros((3, 2), dtype=np.int64),
        hist_gaps=np.zeros((3, 2), dtype=np.int64),
        seen_items=[np.array([], dtype=np.int64), np.array([5]), np.array([], dtype=np.int64)],
        target_items=[np.array([3, 5]), np.array([3]), np.array([], dtype=np.int64)],
    )
    values = ranking_values(FixedScores(table), rows, k=2)  # the rows with a target only
    ndcg_sum, recall_sum, counted = values["ndcg"].sum(), values["recall"].sum(), len(values["ndcg"])
    # user 0: top-2 = [2, 3]; hit at rank 2: DCG = 1/log2(3); IDCG (2 targets) = 1 + 1/log2(3)
    #   NDCG = 0.63093 / 1.63093 = 0.386853; recall = 1/2
    # user 1: top-2 = [4, 3]; hit at rank 2: DCG = 1/log2(3); IDCG (1 target) = 1 -> 0.630930; recall 1
    assert counted == 2
    assert ndcg_sum == pytest.approx(0.386853 + 0.630930, abs=1e-6)
    assert recall_sum == pytest.approx(1.5)


def test_a_plateau_needs_patience_and_either_enough_steps_or_a_decline_beyond_the_noise():
    from recsys_spark.config import TrainConfig
    from recsys_spark.train.validation import plateau_reached

    tc = TrainConfig(patience=3, patience_steps=100)
    best = {"ndcg": 0.30, "step": 200, "bad_evaluations": 3}
    assert plateau_reached(tc, best, 300, 0.30, 0.01)  # 100 steps since the best
    assert not plateau_reached(tc, best, 250, 0.295, 0.01)  # 50 steps, a drop of 0.005 within the noise
    assert plateau_reached(tc, best, 250, 0.285, 0.01)  # 50 steps, a drop of 0.015 beyond it
    assert not plateau_reached(tc, best, 250, 0.285, float("nan"))  # no width: no decline
    assert not plateau_reached(tc, {**best, "bad_evaluations": 2}, 400, 0.1, 0.01)  # patience first
    assert not plateau_reached(TrainConfig(patience=0), best, 400, 0.1, 0.01)  # 0: never
