"""Full-ranking metrics with binary relevance, as pure numpy functions.

A ranking is a row of item indices, best first; ``-1`` marks an empty slot (fewer eligible
items than K) and never counts as a hit. Targets are the items to find; a user with no
target has no defined Recall, so callers leave such users out.

  Recall@K   hits in the top K / |targets|
  NDCG@K     DCG of the top K / IDCG, IDCG over min(K, |targets|) positions, gain 1/log2(rank+1)
  HitRate@K  1 if any hit in the top K, else 0
  MRR        1 / rank of the first hit within the longest K, else 0
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

EMPTY_SLOT = -1
MRR = "mrr"


def metric_names(ks: Sequence[int]) -> list[str]:
    """Args: ks, e.g. [10, 20]. Returns: ["recall@10", "ndcg@10", "hitrate@10", ..., "mrr"]."""
    names = [f"{metric}@{k}" for k in sorted(ks) for metric in ("recall", "ndcg", "hitrate")]
    return names + [MRR]


def hit_matrix(ranked: np.ndarray, targets: Sequence[np.ndarray]) -> np.ndarray:
    """Which ranked items are targets of their row.

    Args:
        ranked: int array [B, K], item indices best first (-1 = empty slot).
        targets: B int arrays of target item indices (>= 0).

    Returns:
        bool array [B, K].
    """
    ranked = np.asarray(ranked, dtype=np.int64)
    if ranked.ndim != 2 or ranked.shape[0] != len(targets):
        raise ValueError(f"ranked has shape {ranked.shape}, expected ({len(targets)}, K)")
    lengths = np.fromiter((len(t) for t in targets), dtype=np.int64, count=len(targets))
    flat_targets = np.concatenate([np.asarray(t, dtype=np.int64) for t in targets] + [np.zeros(0, np.int64)])
    # Encode (row, item) pairs as one integer so a single np.isin matches every row at once.
    width = int(max(ranked.max(initial=0), flat_targets.max(initial=0))) + 2
    rows = np.arange(len(targets), dtype=np.int64)
    target_keys = np.repeat(rows, lengths) * width + flat_targets
    ranked_keys = rows[:, None] * width + ranked
    return np.isin(ranked_keys, target_keys) & (ranked != EMPTY_SLOT)


def metrics_from_hits(hits: np.ndarray, num_targets: np.ndarray, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-user metrics from a hit matrix.

    Args:
        hits: bool array [B, Kmax], Kmax >= max(ks).
        num_targets: int array [B], each >= 1.
        ks: cut-offs.

    Returns:
        {metric name (see :func:`metric_names`): float64 array [B]}.
    """
    hits = np.asarray(hits, dtype=bool)
    num_targets = np.asarray(num_targets, dtype=np.int64)
    if hits.shape[1] < max(ks):
        raise ValueError(f"rankings hold {hits.shape[1]} items, fewer than K = {max(ks)}")
    if num_targets.shape != (hits.shape[0],) or (num_targets < 1).any():
        raise ValueError("every user needs at least one target")
    discounts = 1.0 / np.log2(np.arange(2, hits.shape[1] + 2))
    ideal = np.cumsum(discounts)
    out: dict[str, np.ndarray] = {}
    for k in sorted(ks):
        top = hits[:, :k]
        found = top.sum(axis=1)
        out[f"recall@{k}"] = found / num_targets
        out[f"ndcg@{k}"] = (top * discounts[:k]).sum(axis=1) / ideal[np.minimum(k, num_targets) - 1]
        out[f"hitrate@{k}"] = (found > 0).astype(np.float64)
    top = hits[:, : max(ks)]
    first = top.argmax(axis=1)
    out[MRR] = np.where(top.any(axis=1), 1.0 / (first + 1), 0.0)
    return out


def batch_metrics(ranked: np.ndarray, targets: Sequence[np.ndarray], ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-user metrics of a batch of rankings.

    Args:
        ranked: int array [B, Kmax] of item indices, best first (-1 = empty slot).
        targets: B non-empty int arrays of distinct target items.
        ks: cut-offs, each <= Kmax.

    Returns:
        {metric name: float64 array [B]}.
    """
    num_targets = np.fromiter((len(t) for t in targets), dtype=np.int64, count=len(targets))
    return metrics_from_hits(hit_matrix(ranked, targets), num_targets, ks)


def user_metrics(ranked: Sequence[int], targets: Sequence[int], ks: Sequence[int]) -> dict[str, float]:
    """The metrics of one user.

    Args:
        ranked: item indices, best first, at least max(ks) of them (-1 = empty slot).
        targets: the distinct items to find, at least one.
        ks: cut-offs.

    Returns:
        {metric name: value}.
    """
    batch = batch_metrics(np.asarray([ranked], dtype=np.int64), [np.asarray(targets, dtype=np.int64)], ks)
    return {name: float(values[0]) for name, values in batch.items()}


def coverage(ranked: np.ndarray, k: int, catalogue_size: int) -> float:
    """Catalogue coverage@K: distinct items in anyone's top K / items in the catalogue.

    Args:
        ranked: int array [B, Kmax] (-1 = empty slot).
        k: the cut-off.
        catalogue_size: number of recommendable items.

    Returns:
        a fraction in [0, 1].
    """
    top = np.asarray(ranked)[:, :k]
    distinct = np.unique(top[top != EMPTY_SLOT]).size
    return distinct / catalogue_size if catalogue_size else 0.0
