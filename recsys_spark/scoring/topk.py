"""The score stage's list rules, as steps after the shared top K: a per-category cap and
exploration slots.

Pure numpy / torch, no Spark and no model: the score stage calls these inside its Spark
tasks on a [block, items] score matrix, the benchmark and the tests call them directly.
Conventions are :mod:`recsys_spark.models.ranking`'s (whose top K this builds on): an item is a
column of the score matrix; an excluded item scores -inf; an empty slot holds
``schema.EMPTY_SLOT`` (empty slots only ever trail).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from recsys_spark.models.ranking import NEG_INF, top_k_of_scores
from recsys_spark.schema import EMPTY_SLOT
# With a category cap, the greedy pass first looks this many times K deep; rows it cannot fill
# from there (one category dominates the top) are redone over the whole catalogue.
CAP_DEPTH = 4

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def uniforms(keys: np.ndarray, count: int, offset: int = 0) -> np.ndarray:
    """Reproducible uniform draws in [0, 1): ``count`` per key, a pure function of (key, offset + j).

    SplitMix64 of ``key + (offset + j + 1) * golden ratio``: the draws of a user depend on its
    key only, never on which task or batch it lands in, so a re-run gives the same output.

    Args:
        keys: int64 [B] (e.g. a hash of the user, the seed and the run date).
        count: draws per key.
        offset: first stream index (use disjoint ranges for independent draws).

    Returns:
        float64 [B, count].
    """
    with np.errstate(over="ignore"):
        streams = np.arange(offset + 1, offset + count + 1, dtype=np.uint64) * _GOLDEN
        x = keys.astype(np.int64).view(np.uint64)[:, None] + streams[None, :]
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def occurrence(codes: np.ndarray) -> np.ndarray:
    """How many earlier entries of the same row hold the same code.

    Args:
        codes: int64 [B, C], non-negative.

    Returns:
        int64 [B, C]; e.g. row [7, 3, 7, 7] -> [0, 0, 1, 2].
    """
    rows, width = codes.shape
    if codes.size == 0:
        return np.zeros_like(codes)
    span = int(codes.max()) + 1
    keys = (np.arange(rows, dtype=np.int64)[:, None] * span + codes).ravel()
    order = np.argsort(keys, kind="stable")  # stable: equal keys keep their column order
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(keys)]))
    out = np.empty(len(keys), dtype=np.int64)
    out[order] = np.arange(len(keys), dtype=np.int64) - group_start
    return out.reshape(rows, width)


def first_n(values: np.ndarray, keep: np.ndarray, n: np.ndarray | int, width: int) -> np.ndarray:
    """The first ``n`` kept values of every row, left-aligned, padded with -1.

    Args:
        values: int64 [B, C]; keep: bool [B, C]; n: int or int [B]; width: output columns.

    Returns:
        int64 [B, width].
    """
    rank = np.cumsum(keep, axis=1)
    keep = keep & (rank <= np.broadcast_to(np.asarray(n)[..., None] if np.ndim(n) else n, rank.shape))
    order = np.argsort(~keep, axis=1, kind="stable")[:, :width]
    out = np.take_along_axis(values, order, axis=1)
    out[~np.take_along_axis(keep, order, axis=1)] = EMPTY_SLOT
    if out.shape[1] < width:
        out = np.pad(out, ((0, 0), (0, width - out.shape[1])), constant_values=EMPTY_SLOT)
    return out


def draw_explore(scores: Tensor, pool: np.ndarray, slots: np.ndarray, draws: np.ndarray,
                 owner: np.ndarray | None = None) -> np.ndarray:
    """Uniform picks from an exploration pool, one per exploration slot of each user.

    A pick is valid when the user may get the item (its score is finite: not excluded) and
    was not picked before for that user; each slot takes the next valid pick, so a user may
    end with fewer picks than slots when the pool is small.

    Args:
        scores: Tensor[B, N], -inf where the item is excluded for the user.
        pool: int64 [P], item indices to explore.
        slots: bool [R, k], True at each exploration position.
        draws: float64 [R, D] in [0, 1), D >= k: the random picks.
        owner: int64 [R], the row of ``scores`` of each draw row (several draws of one user);
            None = row r is user r (R = B).

    Returns:
        int64 [R, k]: the picks, left-aligned, -1 padded.
    """
    if len(pool) == 0 or not slots.any():
        return np.full(slots.shape, EMPTY_SLOT, dtype=np.int64)
    picks = pool[np.minimum((draws * len(pool)).astype(np.int64), len(pool) - 1)]
    return take_picks(scores, picks, slots, owner)


def take_picks(scores: Tensor, tries: np.ndarray, slots: np.ndarray, owner: np.ndarray | None = None) -> np.ndarray:
    """The first valid candidates of each row, one per exploration slot (see :func:`draw_explore`).

    Args:
        scores: Tensor[B, N], -inf where excluded.
        tries: int64 [R, D] item indices in the order they are tried, -1 for none.
        slots: bool [R, k]; owner: int64 [R] or None, as in :func:`draw_explore`.

    Returns:
        int64 [R, k]: the picks, left-aligned, -1 padded.
    """
    k = slots.shape[1]
    rows = torch.arange(scores.shape[0]) if owner is None else torch.from_numpy(owner)
    present = tries >= 0
    allowed = present & torch.isfinite(scores[rows[:, None], torch.from_numpy(np.maximum(tries, 0))]).numpy()
    keep = allowed & (occurrence(np.where(present, tries + 1, 0)) == 0)
    return first_n(tries, keep, slots.sum(axis=1), k)


@dataclass
class Ranked:
    """One block's lists. items int64 [B, k] (-1 trailing empties), scores float32 [B, k],
    explore bool [B, k] (True where the item came from the exploration pool)."""

    items: np.ndarray
    scores: np.ndarray
    explore: np.ndarray


def rank(
    scores: Tensor,
    k: int,
    categories: np.ndarray | None = None,
    cap: int = 0,
    explore: np.ndarray | None = None,
    slots: np.ndarray | None = None,
) -> Ranked:
    """Each row's best K items, at most ``cap`` per category, exploration picks in their slots.

    Greedy and exact: the list is the best-scoring items in order, skipping an item whose
    category already holds ``cap`` items of the list (exploration picks count first).
    Exploration picks go to the row's first exploration slots (one per pick); the model's
    items fill the other positions in score order.

    Args:
        scores: Tensor[B, N], -inf where excluded. Changed in place (picks are masked).
        k: list length.
        categories: int64 [N] dense category code of each item, -1 unknown (never capped).
        cap: most items of one category per list; 0 = no cap.
        explore: int64 [B, k] exploration picks (see :func:`draw_explore`), or None.
        slots: bool [B, k] exploration positions, or None.

    Returns:
        :class:`Ranked`; an item scored -inf is never returned.
    """
    num_rows, num_items = scores.shape
    if explore is None or slots is None:
        explore = np.full((num_rows, 0), EMPTY_SLOT, dtype=np.int64)
        slots = np.zeros((num_rows, k), dtype=bool)
    if cap < 0 or k < 1:
        raise ValueError(f"k ({k}) must be positive and cap ({cap}) non-negative")
    if cap == 0 and not (explore >= 0).any():
        top, values = top_k_of_scores(scores, k)
        return Ranked(top.numpy(), values.float().numpy(), np.zeros(top.shape, dtype=bool))

    rows = torch.arange(num_rows)[:, None]
    picked = torch.from_numpy(np.maximum(explore, 0))
    pick_scores = scores[rows, picked].numpy().copy()
    # Mask the picks only: writing the empties' item 0 back could undo the mask of a pick of item 0.
    pick_rows, pick_cols = np.nonzero(explore >= 0)
    scores[torch.from_numpy(pick_rows), torch.from_numpy(explore[pick_rows, pick_cols])] = NEG_INF

    codes = categories if categories is not None and cap > 0 else np.full(num_items, -1, dtype=np.int64)
    depth = min(num_items, k if cap == 0 else CAP_DEPTH * k)
    items, values, is_pick = _greedy(scores, depth, explore, pick_scores, codes, cap, k)
    # Rows left short while deeper items exist: redo them over the whole catalogue (exact).
    filled = (items >= 0).sum(axis=1)
    deeper = torch.isfinite(scores).sum(dim=1).numpy() > depth
    redo = np.flatnonzero((filled < k) & deeper & (depth < num_items))
    if len(redo):
        sub = _greedy(scores[redo], num_items, explore[redo], pick_scores[redo], codes, cap, k)
        items[redo], values[redo], is_pick[redo] = sub
    return _place(items, values, is_pick, slots, k)


def _greedy(scores, depth, explore, pick_scores, codes, cap, k):
    """Candidates (picks first, then the top ``depth`` by score) filtered by the cap; first k kept."""
    top, values = (t.numpy() for t in top_k_of_scores(scores, depth))
    cand = np.concatenate([explore, top], axis=1)
    cand_values = np.concatenate([pick_scores, values], axis=1)
    is_pick = np.zeros(cand.shape, dtype=bool)
    is_pick[:, : explore.shape[1]] = True
    return _keep_first(cand, cand_values, is_pick, cand >= 0, codes, cap, k)


def _keep_first(cand, cand_values, is_pick, valid, codes, cap, k):
    """The first k valid candidates of each row that the category cap lets through."""
    keep = valid
    if cap > 0:
        cat = np.where(valid, codes[np.maximum(cand, 0)], -1)
        # Unknown categories (and empty slots) share code 0 here but are never capped.
        seen = occurrence(np.where(cat >= 0, cat + 1, 0))
        keep = valid & ((cat < 0) | (seen < cap))
    order = first_n(np.arange(cand.shape[1])[None, :].repeat(len(cand), 0), keep, k, k)
    taken = order >= 0
    safe = np.maximum(order, 0)
    items = np.where(taken, np.take_along_axis(cand, safe, 1), EMPTY_SLOT)
    vals = np.where(taken, np.take_along_axis(cand_values, safe, 1), NEG_INF).astype(np.float32)
    picks = taken & np.take_along_axis(is_pick, safe, 1)
    return items, vals, picks


@dataclass
class Candidates:
    """Each user's best items, deep enough for any list of K with up to K exploration picks.

    items int64 [B, T] (-1 trailing), scores float32 [B, T], finite int64 [B] (how many items
    the user may get at all: a list that the top T cannot fill is redone when there are more).
    """

    items: np.ndarray
    scores: np.ndarray
    finite: np.ndarray


def best_items(scores: Tensor, k: int, cap: int = 0) -> Candidates:
    """The top T of every row of a masked score block: T = 2K without a cap (K picks may take
    K of them), (CAP_DEPTH + 1) K with one (as :func:`rank`'s first pass, plus the picks)."""
    depth = min(scores.shape[1], k + (k if cap == 0 else CAP_DEPTH * k))
    if depth == 0:
        empty = np.zeros((scores.shape[0], 0))
        return Candidates(empty.astype(np.int64), empty.astype(np.float32), np.zeros(scores.shape[0], np.int64))
    top, values = top_k_of_scores(scores, depth)
    return Candidates(top.numpy(), values.float().numpy(), torch.isfinite(scores).sum(dim=1).numpy().astype(np.int64))


def rank_rows(
    scores: Tensor,
    top: Candidates,
    owner: np.ndarray,
    k: int,
    categories: np.ndarray | None = None,
    cap: int = 0,
    explore: np.ndarray | None = None,
    slots: np.ndarray | None = None,
    chunk: int = 256,
) -> Ranked:
    """:func:`rank` of many draws per user at once, from the users' precomputed top T.

    The same lists as :func:`rank` (the greedy walk keeps the first K items its cap lets
    through, so a prefix of the score order that fills the list decides it): row r is user
    ``owner[r]``'s list with the picks ``explore[r]`` in the slots ``slots[r]``. A row the top T
    cannot fill while the user has more items is redone by :func:`rank` over the whole
    catalogue, ``chunk`` rows at a time (memory chunk x N).

    Args:
        scores: Tensor[B, N], -inf where excluded; not changed.
        top: :func:`best_items` of ``scores``.
        owner: int64 [R], the user (row of ``scores``) of each row.
        explore: int64 [R, k] picks (see :func:`take_picks`), or None; slots: bool [R, k] or None.

    Returns:
        :class:`Ranked` of R rows.
    """
    rows = len(owner)
    if explore is None or slots is None:
        explore = np.full((rows, k), EMPTY_SLOT, dtype=np.int64)
        slots = np.zeros((rows, k), dtype=bool)
    codes = categories if categories is not None and cap > 0 else np.full(scores.shape[1], -1, dtype=np.int64)
    pick_scores = scores[torch.from_numpy(owner)[:, None], torch.from_numpy(np.maximum(explore, 0))].numpy()
    cand = np.concatenate([explore, top.items[owner]], axis=1)
    cand_values = np.concatenate([np.where(explore >= 0, pick_scores, NEG_INF), top.scores[owner]], axis=1)
    is_pick = np.zeros(cand.shape, dtype=bool)
    is_pick[:, : explore.shape[1]] = True
    present = cand >= 0
    # A top item already picked for the row is not a model candidate (rank() masks it).
    valid = present & (occurrence(np.where(present, cand + 1, 0)) == 0)
    items, values, picks = _keep_first(cand, cand_values, is_pick, valid, codes, cap, k)
    out = _place(items, values, picks, slots, k)
    redo = np.flatnonzero(((items >= 0).sum(axis=1) < k) & (top.finite[owner] > top.items.shape[1]))
    for start in range(0, len(redo), chunk):
        part = redo[start : start + chunk]
        sub = rank(scores[torch.from_numpy(owner[part])], k, categories, cap, explore[part], slots[part])
        out.items[part], out.scores[part], out.explore[part] = sub.items, sub.scores, sub.explore
    return out


def _place(items, values, is_pick, slots, k) -> Ranked:
    """Put each row's picks in its first exploration slots and its other items in order."""
    picks = is_pick.sum(axis=1)
    # The first `picks` exploration slots of each row; the rest go to the model's items.
    pick_slot = slots & (np.cumsum(slots, axis=1) <= picks[:, None])
    model_order = np.argsort(is_pick, axis=1, kind="stable")  # model items first, in order
    pick_order = np.argsort(~is_pick, axis=1, kind="stable")
    pick_rank = np.clip(np.cumsum(pick_slot, axis=1) - 1, 0, None)
    model_rank = np.clip(np.cumsum(~pick_slot, axis=1) - 1, 0, None)
    source = np.where(pick_slot, np.take_along_axis(pick_order, pick_rank, 1), np.take_along_axis(model_order, model_rank, 1))
    out_items = np.take_along_axis(items, source, 1)
    out_values = np.take_along_axis(values, source, 1)
    out_pick = np.take_along_axis(is_pick, source, 1) & pick_slot
    # Model items may run out before the picks' slots: move the empties to the end.
    order = np.argsort(out_items < 0, axis=1, kind="stable")
    return Ranked(
        np.take_along_axis(out_items, order, 1),
        np.take_along_axis(out_values, order, 1),
        np.take_along_axis(out_pick, order, 1),
    )
