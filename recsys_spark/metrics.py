"""Full-ranking metrics with binary relevance, as pure numpy functions.

A ranking is a row of item indices, best first; ``-1`` marks an empty slot (fewer eligible
items than K) and never counts as a hit. Targets are the items to find; a user with no
target has no defined Recall, so callers leave such users out.

  Recall@K   hits in the top K / |targets|
  NDCG@K     DCG of the top K / IDCG, IDCG over min(K, |targets|) positions, gain 1/log2(rank+1)
  MAP@K      sum over hits in the top K of precision@rank, / min(K, |targets|) (so a perfect
             ranking scores 1, as with NDCG)
  HitRate@K  1 if any hit in the top K, else 0
  Precision@K hits in the top K / K (K even when fewer than K items were listed, as RecBole and
             Microsoft Recommenders divide)
  F1@K       2 Precision@K Recall@K / (Precision@K + Recall@K), 0 when both are 0
  MRR        1 / rank of the first hit within the longest K, else 0

From the whole ranking rather than its top K (see target_ranks):

  AUC        the probability that a random target is ranked above a random eligible item that is
             no target, ties counting 1/2; eligible = every item the user may get (not pad, OOV,
             blocked or excluded). From the targets' ranks r_t among the n eligible items:
             (sum_t (n - r_t) - T (T - 1) / 2) / (T (n - T)) (Mann-Whitney)

Beyond accuracy, from the list alone (no targets), averaged over users like the above:

  Novelty@K     mean self-information -log2(p(i)) of the top-K items, p(i) = the item's share
                of the interactions before the cutoff (count floored at 1)
  Diversity@K   intra-list diversity by category: the share of ordered pairs of top-K items
                in different categories (0 with fewer than 2 items)
  HeadShare@K   popularity bias: the share of top-K items that are head items (see head_items)

and over all users: Coverage@K, the distinct items in anyone's top K / catalogue size.
Empty slots count as misses in the accuracy metrics and are left out of the list metrics.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from recsys_spark.schema import EMPTY_SLOT

MRR = "mrr"
AUC = "auc"
ACCURACY_METRICS = ("recall", "ndcg", "map", "hitrate", "precision", "f1")
LIST_METRICS = ("novelty", "diversity", "head_share")
# Most scores target_ranks compares at once (targets x items): 1 Mi, 4 MiB of float32, which stays
# in cache (a 16 Mi chunk ran 2-3 times slower).
RANK_CHUNK_SCORES = 1 << 20


def metric_names(ks: Sequence[int]) -> list[str]:
    """Args: ks, e.g. [10, 20]. Returns: ["recall@10", "ndcg@10", "map@10", "hitrate@10",
    "precision@10", "f1@10", ..., "mrr"]: what :func:`batch_metrics` measures from a top K."""
    names = [f"{metric}@{k}" for k in sorted(ks) for metric in ACCURACY_METRICS]
    return names + [MRR]


def coverage_names(ks: Sequence[int]) -> list[str]:
    """Args: ks. Returns: ["coverage@10", ...] (catalogue metrics, one value per ranker, no per-user value)."""
    return [f"coverage@{k}" for k in sorted(ks)]


def list_metric_names(ks: Sequence[int]) -> list[str]:
    """Args: ks, e.g. [10]. Returns: ["novelty@10", "diversity@10", "head_share@10"]."""
    return [f"{metric}@{k}" for k in sorted(ks) for metric in LIST_METRICS]


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
    # precision at each rank where there is a hit, 0 elsewhere: the terms of average precision
    ranks = np.arange(1, hits.shape[1] + 1)
    precision_at_hits = np.where(hits, np.cumsum(hits, axis=1) / ranks, 0.0)
    out: dict[str, np.ndarray] = {}
    for k in sorted(ks):
        top = hits[:, :k]
        found = top.sum(axis=1)
        out[f"recall@{k}"] = found / num_targets
        out[f"ndcg@{k}"] = (top * discounts[:k]).sum(axis=1) / ideal[np.minimum(k, num_targets) - 1]
        out[f"map@{k}"] = precision_at_hits[:, :k].sum(axis=1) / np.minimum(k, num_targets)
        out[f"hitrate@{k}"] = (found > 0).astype(np.float64)
        precision, recall = found / k, out[f"recall@{k}"]
        out[f"precision@{k}"] = precision
        out[f"f1@{k}"] = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(recall),
                                   where=found > 0)
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


def target_ranks(scores: np.ndarray, targets: Sequence[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """Where each target stands in its row's full ranking.

    Args:
        scores: float array [B, N], the score of every item for each row; -inf for the items
            the row never gets (pad, OOV, blocked, excluded): the others are its eligible items.
        targets: B int arrays of target items (indices outside [0, N) are not eligible).

    Returns:
        (B float64 arrays, the rank of each target among its row's eligible items, 1 = best:
        1 + the eligible items scored strictly higher + half the other eligible items scored
        the same; +inf for a target that is not eligible. int64 [B], each row's eligible items.)
    """
    scores = np.asarray(scores)
    num_rows, num_items = scores.shape
    if len(targets) != num_rows:
        raise ValueError(f"scores has {num_rows} rows for {len(targets)} target lists")
    lengths = np.fromiter((len(t) for t in targets), dtype=np.int64, count=num_rows)
    rows = np.repeat(np.arange(num_rows), lengths)
    items = np.concatenate([np.asarray(t, dtype=np.int64) for t in targets] + [np.zeros(0, np.int64)])
    inside = (items >= 0) & (items < num_items)
    own = np.where(inside, scores[rows, np.where(inside, items, 0)], -np.inf)
    higher = np.zeros(len(items), dtype=np.int64)
    same = np.zeros(len(items), dtype=np.int64)
    # One row of scores per target, compared with the target's own score: a few of them at a time.
    chunk = max(1, RANK_CHUNK_SCORES // max(num_items, 1))
    for start in range(0, len(items), chunk):
        part = slice(start, start + chunk)
        row_scores, own_score = scores[rows[part]], own[part, None]
        higher[part] = (row_scores > own_score).sum(axis=1)
        same[part] = (row_scores == own_score).sum(axis=1)
    ranks = np.where(np.isfinite(own), 1 + higher + (same - 1) / 2, np.inf)
    return np.split(ranks, np.cumsum(lengths)[:-1]), np.isfinite(scores).sum(axis=1)


def auc(ranks: Sequence[np.ndarray], eligible: np.ndarray) -> np.ndarray:
    """Per-user AUC over the full catalogue, from the targets' ranks.

    The probability that a random target is ranked above a random eligible non-target, ties
    counting 1/2: (sum_t (n - r_t) - E (E - 1) / 2) / (T (n - E)) over the E eligible targets
    t of rank r_t, T targets in all and n eligible items. A target that is not eligible counts
    as ranked below every eligible item (0, as it counts as a miss in Recall). A user whose
    eligible items are all targets has no non-target to rank against and gets 0.5.

    Args:
        ranks: B non-empty float arrays, each target's rank (see :func:`target_ranks`).
        eligible: int array [B], n of each user.

    Returns:
        float64 array [B], in [0, 1].
    """
    eligible = np.asarray(eligible, dtype=np.float64)
    num_targets = np.fromiter((len(r) for r in ranks), dtype=np.float64, count=len(ranks))
    if num_targets.shape != eligible.shape or (num_targets < 1).any():
        raise ValueError("every user needs at least one target")
    ranked = [r[np.isfinite(r)] for r in ranks]
    found = np.fromiter((len(r) for r in ranked), dtype=np.float64, count=len(ranks))
    rank_sums = np.fromiter((r.sum() for r in ranked), dtype=np.float64, count=len(ranks))
    # (n - r_t) counts the eligible items below target t, other targets too: the E (E - 1) / 2
    # pairs of targets take those back out.
    below = found * eligible - rank_sums - found * (found - 1) / 2
    others = eligible - found
    return np.divide(below, num_targets * others, out=np.full(len(ranks), 0.5), where=others > 0)


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


def self_information(counts: np.ndarray) -> np.ndarray:
    """-log2 of each item's share of all interactions.

    Args:
        counts: int array [N], interactions per item index before the cutoff (0 for pad, OOV
            and absent items). Each count is floored at 1 (not the total), so an item never
            seen has the largest finite value.

    Returns:
        float64 array [N].
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = max(counts.sum(), 1.0)
    return -np.log2(np.maximum(counts, 1.0) / total)


def head_items(counts: np.ndarray, share: float) -> np.ndarray:
    """The head of the popularity curve: the most popular items that together make up ``share``
    of all interactions.

    Items are taken by descending count (ties by item index) until their cumulative count
    reaches ``share`` of the total; the item that crosses the line is in the head.

    Args:
        counts: int array [N], interactions per item index.
        share: in (0, 1], e.g. 0.2.

    Returns:
        bool array [N], True for head items (none when every count is 0).
    """
    counts = np.asarray(counts, dtype=np.int64)
    out = np.zeros(counts.shape[0], dtype=bool)
    total = counts.sum()
    if total <= 0:
        return out
    order = np.argsort(-counts, kind="stable")
    before = np.cumsum(counts[order]) - counts[order]  # interactions of the more popular items
    out[order[(before < share * total) & (counts[order] > 0)]] = True
    return out


def list_metrics(
    ranked: np.ndarray,
    ks: Sequence[int],
    self_info: np.ndarray,
    is_head: np.ndarray,
    categories: np.ndarray,
) -> dict[str, np.ndarray]:
    """Per-user novelty, intra-list diversity and head share of each top K.

    Args:
        ranked: int array [B, Kmax] of item indices, best first (-1 = empty slot).
        ks: cut-offs, each <= Kmax.
        self_info: float array [N], see :func:`self_information`.
        is_head: bool array [N], see :func:`head_items`.
        categories: int array [N], each item's category (equal values = same category).

    Returns:
        {name of :func:`list_metric_names`: float64 array [B]}.
    """
    ranked = np.asarray(ranked, dtype=np.int64)
    if ranked.ndim != 2 or ranked.shape[1] < max(ks):
        raise ValueError(f"ranked has shape {ranked.shape}, expected (B, >= {max(ks)})")
    filled = ranked != EMPTY_SLOT
    safe = np.where(filled, ranked, 0)
    info = np.where(filled, np.asarray(self_info, dtype=np.float64)[safe], 0.0)
    head = filled & np.asarray(is_head, dtype=bool)[safe]
    cats = np.asarray(categories, dtype=np.int64)[safe]
    out: dict[str, np.ndarray] = {}
    for k in sorted(ks):
        n = filled[:, :k].sum(axis=1)
        some = np.maximum(n, 1)
        out[f"novelty@{k}"] = info[:, :k].sum(axis=1) / some
        # Pairs (i, j), i != j, both filled, in different categories, over n (n - 1) such pairs.
        both = filled[:, :k, None] & filled[:, None, :k]
        differ = (cats[:, :k, None] != cats[:, None, :k]) & both
        pairs = n * (n - 1)
        out[f"diversity@{k}"] = np.where(pairs > 0, differ.sum(axis=(1, 2)) / np.maximum(pairs, 1), 0.0)
        out[f"head_share@{k}"] = head[:, :k].sum(axis=1) / some
    return out
