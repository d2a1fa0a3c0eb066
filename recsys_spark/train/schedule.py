"""The learning-rate schedule of a training run and the recipe its ``auto`` settings resolve to.

The schedule's state (``plateau`` in :mod:`~recsys_spark.train.loop`) is a plain dict, saved in
every checkpoint: wsd's cool-down (where it starts, how long it lasts, what started it) and the
plateau scale of cosine/constant.
"""

from __future__ import annotations

import math
from typing import Any

from recsys_spark.config import TrainConfig
from recsys_spark.errors import InputError
from recsys_spark.train.loss import resolve_loss


def lr_factor(step: int, tc: TrainConfig, total_steps: int, state: dict[str, Any] | None = None) -> float:
    """The learning rate of optimizer step ``step`` (0-based) as a share of the peak.

    A linear warm-up over ``tc.warmup_steps``; then
      "constant": 1;
      "cosine": a half cosine from 1 down to ``tc.min_lr_ratio`` at ``total_steps`` (it stays
        there if more steps run);
      "wsd": 1 until the cool-down starts (``state["cooldown_start"]``, set by a plateau or the
        budget: :func:`start_cooldown`), then linear down to ``tc.min_lr_ratio`` over
        ``state["cooldown_steps"]`` steps.
    """
    if step < tc.warmup_steps:
        return (step + 1) / tc.warmup_steps
    if tc.lr_schedule == "constant":
        return 1.0
    if tc.lr_schedule == "wsd":
        start = -1 if state is None else state["cooldown_start"]
        if start < 0 or step < start:
            return 1.0
        progress = min(1.0, (step - start) / max(1, state["cooldown_steps"]))
        return 1.0 - (1.0 - tc.min_lr_ratio) * progress
    progress = min(1.0, (step - tc.warmup_steps) / max(1, total_steps - tc.warmup_steps))
    return tc.min_lr_ratio + (1.0 - tc.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def start_cooldown(state: dict[str, Any], step: int, length: int, total_steps: int, by: str = "validation") -> None:
    """Start wsd's cool-down at ``step`` for ``length`` steps, never past ``total_steps``."""
    state["cooldown_start"] = step
    state["cooldown_steps"] = max(0, min(length, total_steps - step))
    state["cooldown_by"] = by


def budget_cooldown(state: dict[str, Any], step: int, share: float, total_steps: int) -> bool:
    """Start the cool-down when the budget's last ``share`` begins and none has started; True if it did."""
    length = math.ceil(share * total_steps)
    if state["cooldown_start"] >= 0 or step < total_steps - length:
        return False
    start_cooldown(state, step, total_steps - step, total_steps, by="budget")
    return True


def cooldown_done(state: dict[str, Any], step: int) -> bool:
    """Whether a cool-down has started and run its course by ``step``."""
    return state["cooldown_start"] >= 0 and step >= state["cooldown_start"] + state["cooldown_steps"]


def resolve_recipe(tc: TrainConfig, num_items: int, size: int) -> dict[str, Any]:
    """What the ``auto`` settings become on this catalogue and this world size.

    Returns:
        {"loss": "full" | "sampled", "target_horizon": int, "rank_batch": windows per rank and step}.

    Raises:
        InputError: ``train.batch_size`` is not a multiple of the world size.
    """
    if tc.batch_size % size:
        raise InputError(f"train.batch_size ({tc.batch_size}) is the batch over all ranks: it must be a multiple of "
                         f"the {size} training processes")
    return {"loss": resolve_loss(tc.loss, num_items, tc.full_softmax_max_items),
            "target_horizon": tc.target_horizon, "rank_batch": tc.batch_size // size}
