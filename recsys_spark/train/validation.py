"""Validation during training: each rank's top-K lists, the per-user ranking values, their
all-reduced means and intervals, the user-vector mode they choose, and when they have plateaued.

The lists go through ``models.ranking``, the path evaluation and scoring take, so validation
during training measures what will be served.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from recsys_spark.config import TrainConfig
from recsys_spark.metrics import batch_metrics
from recsys_spark.models import ranking
from recsys_spark.models.two_tower import TwoTowerModel
from recsys_spark.train import data
from recsys_spark.train.collective import Collective

EVAL_BLOCK_ROWS = 256
# z of a two-sided 95% normal interval: the half-widths each evaluation logs.
Z95 = 1.959964


def metric_key(name: str, k: int) -> str:
    """``val_ndcg_at_10``: MLflow metric names may not contain ``@``."""
    return f"{name}_at_{k}"


@torch.no_grad()
def validation_lists(model: TwoTowerModel, rows: data.EvalRows, k: int, device: torch.device | None = None,
                     mode: str | None = None) -> np.ndarray:
    """Every row's top k through ``models.ranking`` (the path evaluation and scoring take): all
    items ranked, pad, OOV and the row's seen items excluded.

    Args:
        device: where the model lives (CPU when None); scores are computed there.
        mode: a ``ranking.USER_VECTORS`` entry, or None for the model's own.

    Returns:
        int64 [R, k] item indices, best first, schema.EMPTY_SLOT in empty slots.
    """
    was_training = model.training
    model.eval()
    item_vecs = model.item_vectors()
    top, _ = ranking.rank_histories(model, [rows.hist_items, rows.hist_events, rows.hist_gaps], item_vecs, k,
                                    ranking.pairs_of(rows.seen_items), ranking.blocked_items(item_vecs.shape[0]),
                                    EVAL_BLOCK_ROWS, mode, device)
    model.train(was_training)
    return top


def ranking_values(model: TwoTowerModel, rows: data.EvalRows, k: int, device: torch.device | None = None,
                   mode: str | None = None) -> dict[str, np.ndarray]:
    """Per-user NDCG@k and Recall@k of :func:`validation_lists`, for the rows with a target.

    Returns:
        {"ndcg": float64 [R'], "recall": float64 [R']}, R' the rows with at least one target.
    """
    counted = np.flatnonzero([len(t) > 0 for t in rows.target_items])
    if len(counted) == 0:
        return {"ndcg": np.zeros(0), "recall": np.zeros(0)}
    # Only the rows with a target are ranked: the others would be ranked for nothing.
    targets = [rows.target_items[i] for i in counted]
    kept = data.EvalRows(rows.hist_items[counted], rows.hist_events[counted], rows.hist_gaps[counted],
                         [rows.seen_items[i] for i in counted], targets)
    per_user = batch_metrics(validation_lists(model, kept, k, device, mode), targets, [k])
    return {"ndcg": np.asarray(per_user[f"ndcg@{k}"], dtype=np.float64),
            "recall": np.asarray(per_user[f"recall@{k}"], dtype=np.float64)}


def validation_scores(model: TwoTowerModel, rows: data.EvalRows, k: int, comm: Collective,
                      device: torch.device | None, modes: tuple[str, ...],
                      best_ndcg: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """Validation NDCG@k and Recall@k over every rank's rows, in each user-vector mode.

    Args:
        best_ndcg: this rank's per-user NDCG of the best evaluation so far (same rows, same
            order), for the interval of the paired gain; None before the first.

    Returns:
        {mode: {"ndcg", "recall": means over all ranks' users; "half_width": the 95% normal
        half-width of the NDCG mean; "gain_half_width": that of the mean paired difference to
        ``best_ndcg`` (nan without one); "users": how many; "values": this rank's per-user NDCG}}.
    """
    values = {mode: ranking_values(model, rows, k, device, mode) for mode in modes}
    sums = []
    for mode in modes:
        ndcg = values[mode]["ndcg"]
        gain = ndcg - best_ndcg if best_ndcg is not None and len(best_ndcg) == len(ndcg) else np.zeros(0)
        sums += [ndcg.sum(), (ndcg ** 2).sum(), values[mode]["recall"].sum(), len(ndcg),
                 gain.sum(), (gain ** 2).sum(), len(gain)]
    totals = comm.allreduce(torch.tensor(sums, dtype=torch.float64)).numpy().reshape(len(modes), 7)
    out = {}
    for mode, (s, s2, r, n, g, g2, gn) in zip(modes, totals):
        out[mode] = {"ndcg": s / n if n else 0.0, "recall": r / n if n else 0.0, "users": int(n),
                     "half_width": half_width(s, s2, n), "gain_half_width": half_width(g, g2, gn),
                     "values": values[mode]["ndcg"]}
    return out


def half_width(total: float, squares: float, n: float) -> float:
    """Z95 x the standard error of a mean from its sum and sum of squares (nan below 2 values)."""
    if n < 2:
        return float("nan")
    variance = max(0.0, (squares - total * total / n) / (n - 1))
    return float(Z95 * math.sqrt(variance / n))


def plateau_reached(tc: TrainConfig, best: dict[str, Any], step: int, ndcg: float, gain_half_width: float) -> bool:
    """Whether validation has plateaued: ``tc.patience`` evaluations without a new best, and either
    ``tc.patience_steps`` steps since the best or this evaluation's NDCG below the best by more than
    the 95% half-width of their paired difference (a decline that is not noise: the model
    overfits, and waiting longer only wastes steps). A nan half-width never counts as a decline."""
    if tc.patience <= 0 or best["bad_evaluations"] < tc.patience:
        return False
    return step - best["step"] >= tc.patience_steps or ndcg < best["ndcg"] - gain_half_width


def user_vector_modes(tc: TrainConfig) -> tuple[str, ...]:
    """The user-vector modes each evaluation ranks in: under ``train.user_vector=auto`` every mode
    (the best (mode, step) is kept, so the checkpoint is chosen on the vector that will be served),
    else the one configured."""
    return ranking.USER_VECTORS if tc.user_vector == "auto" else (tc.user_vector,)


def best_mode(scores: dict[str, dict[str, Any]], modes: tuple[str, ...]) -> str:
    """The mode of :func:`validation_scores` with the highest NDCG (ties: the first of ``modes``)."""
    return max(modes, key=lambda m: scores[m]["ndcg"])
