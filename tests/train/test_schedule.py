"""The learning-rate schedule (train/schedule.py)."""

from __future__ import annotations

import pytest

from recsys_spark.config import TrainConfig
from recsys_spark.train.schedule import lr_factor

pytestmark = pytest.mark.unit


def test_lr_factor_warms_up_then_follows_a_half_cosine_to_the_floor():
    tc = TrainConfig(warmup_steps=4, lr_schedule="cosine", min_lr_ratio=0.1)
    total = 14  # 10 steps of decay after the warm-up
    factors = [lr_factor(step, tc, total) for step in range(16)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factors[4] == pytest.approx(1.0)
    # Halfway through the decay (step 9): the midpoint of 1 and the floor.
    assert factors[9] == pytest.approx(0.1 + 0.9 * 0.5)
    assert factors[14] == pytest.approx(0.1) and factors[15] == pytest.approx(0.1)  # stays at the floor
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))
    constant = TrainConfig(warmup_steps=0, lr_schedule="constant")
    assert [lr_factor(step, constant, total) for step in (0, 7, 20)] == [1.0, 1.0, 1.0]
