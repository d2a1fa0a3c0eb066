"""The one ranking path: a history scored against the item vectors, exclusions masked, top K.

Evaluation (through :mod:`recsys_spark.models.rankers`), scoring
(:mod:`recsys_spark.scoring.recommender`, whose category cap and exploration are steps after
this top K), the MLflow pyfunc (:mod:`recsys_spark.models.pyfunc`) and validation during
training (:mod:`recsys_spark.train.validation`) all rank through these functions, so they agree on
what a user vector is, which items a user may get, and how ties and empty slots come out.

Conventions: an item is a column of a score matrix (its index in an item space: the model's
vocabulary, or a subset of it); an excluded item scores -inf and is never returned; a list with
fewer eligible items than K ends in empty slots (``schema.EMPTY_SLOT``, score -inf), which only
ever trail.

User vectors (``user_vector`` of :class:`~recsys_spark.models.two_tower.TwoTowerModel`): the
model gives one vector after every step of a history (``sequence_vectors``); a mode turns them
into item scores:

- "last": the vector after the last step (as SASRec), one dot product per item;
- "mean": the mean of the vectors after every real step, one dot product per item;
- "mixture": each real step's vector defines a softmax over the candidate items (its prediction
  of what comes next), and an item's score is the log of their mean probability: a user with
  several interests keeps each of them, where the mean vector blurs them into one.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from recsys_spark import schema
from recsys_spark.errors import DataQualityError

USER_VECTORS = ("last", "mean", "mixture")
NEG_INF = float("-inf")
# Most float32 logits a "mixture" score computes at once (users x steps x items): 64 MiB.
MIXTURE_CHUNK_LOGITS = 1 << 24
# Users scored at once by default: memory is BLOCK_USERS x catalogue scores.
BLOCK_USERS = 1024

Pairs = tuple[np.ndarray, np.ndarray]
# (rows of the block, exclusion mask of the block [b, N]) -> scores [b, N]
BlockScorer = Callable[[slice, Tensor], Tensor]
# (first row of the block, its masked scores [b, N]) -> None
ScoreObserver = Callable[[int, Tensor], None]


def int_matrix(column: pd.Series | Sequence) -> np.ndarray:
    """Args: a column of equal-length int lists (B rows; Spark may hand them over as floats).
    Returns: int64 array [B, L]."""
    if len(column) == 0:
        return np.zeros((0, 0), dtype=np.int64)
    return np.stack([np.asarray(v).astype(np.int64) for v in column])


def int_arrays(column: pd.Series | Sequence) -> list[np.ndarray]:
    """Args: a column of int lists (None as empty). Returns: B int64 arrays."""
    return [np.asarray(v if v is not None else [], dtype=np.int64) for v in column]


def history_tensors(frame: pd.DataFrame) -> list[Tensor]:
    """The left-padded histories of a pandas batch (hist_items, hist_events, hist_gaps columns)
    as LongTensor[B, L] each, in the order the model takes them."""
    return [torch.from_numpy(int_matrix(frame[c])) for c in (schema.HIST_ITEMS, schema.HIST_EVENTS, schema.HIST_GAPS)]


def pairs_of(lists: Sequence[np.ndarray]) -> Pairs:
    """(row int64 [n], item int64 [n]): every entry of every row's list, for one scatter."""
    lengths = [len(items) for items in lists]
    items = np.concatenate([np.asarray(x, dtype=np.int64) for x in lists] + [np.zeros(0, np.int64)])
    return np.repeat(np.arange(len(lists), dtype=np.int64), lengths), items


def blocked_items(num_items: int, allowed: Tensor | np.ndarray | None = None) -> Tensor:
    """BoolTensor[N]: True for pad, OOV and every item not in ``allowed`` (never recommended)."""
    blocked = torch.zeros(num_items, dtype=torch.bool)
    blocked[: schema.FIRST_ITEM_INDEX] = True
    if allowed is not None:
        blocked |= ~torch.as_tensor(allowed, dtype=torch.bool)
    return blocked


def mask_pairs(target: Tensor, rows: np.ndarray, items: np.ndarray, value: float | bool = NEG_INF) -> None:
    """Set ``target[row, item] = value`` for every pair, in place; items outside [0, N) are ignored."""
    keep = (items >= 0) & (items < target.shape[1])
    if keep.any():
        target[torch.from_numpy(rows[keep]), torch.from_numpy(items[keep])] = value


def exclusion_mask(num_users: int, num_items: int, excluded: Pairs | None = None, blocked: Tensor | None = None) -> Tensor:
    """BoolTensor[B, N]: True where user b never gets item i (``blocked`` items, or a pair of ``excluded``).

    Args:
        excluded: (row, item) pairs (see :func:`pairs_of`), rows in [0, B); or None.
        blocked: BoolTensor[N] (see :func:`blocked_items`), or None for none.
    """
    if blocked is None:
        mask = torch.zeros(num_users, num_items, dtype=torch.bool)
    else:
        mask = blocked[None, :].repeat(num_users, 1)
    if excluded is not None:
        mask_pairs(mask, *excluded, value=True)
    return mask


def block_pairs(excluded: Pairs, start: int, end: int) -> Pairs:
    """The pairs of rows [start, end), renumbered from 0 (``excluded`` sorted by row)."""
    rows, items = excluded
    lo, hi = np.searchsorted(rows, [start, end])
    return rows[lo:hi] - start, items[lo:hi]


def user_vectors(model: torch.nn.Module, items: Tensor, events: Tensor, gaps: Tensor, mode: str | None = None) -> Tensor:
    """One vector per history: the last position's ("last"), else the mean over real steps.

    Args:
        model: a TwoTowerModel (anything with ``sequence_vectors`` and ``user_vector``).
        items, events, gaps: LongTensor[B, L], left-padded.
        mode: a USER_VECTORS entry; None = the model's own ``user_vector``.

    Returns:
        Tensor[B, d + 1]. An all-pad history gets its last position's vector. Under "mixture"
        this is the mean: what an approximate-nearest-neighbour index can use; exact scores
        come from :func:`score_items`.
    """
    vectors = model.sequence_vectors(items, events, gaps)
    if _mode(model, mode) == "last":
        return vectors[:, -1]
    real = (items != schema.PAD_INDEX).to(vectors.dtype)[..., None]
    count = real.sum(dim=1)
    mean = (vectors * real).sum(dim=1) / count.clamp_min(1.0)
    return torch.where(count > 0, mean, vectors[:, -1])


def score_items(model: torch.nn.Module, items: Tensor, events: Tensor, gaps: Tensor, item_vecs: Tensor,
                excluded: Tensor | None = None, mode: str | None = None) -> Tensor:
    """The score of every candidate item for each history (higher = recommend first).

    Args:
        model: a TwoTowerModel.
        items, events, gaps: LongTensor[B, L], left-padded histories.
        item_vecs: Tensor[N, d + 1], the candidates' vectors (rows of ``model.item_vectors()``,
            all of them or a subset).
        excluded: BoolTensor[B, N], True for a candidate the user is never shown (see
            :func:`exclusion_mask`), or None. Only "mixture" reads it: each step's softmax is
            taken over the candidates left, so no probability goes to items the user cannot
            get. Excluded candidates still get a finite score (masking is the caller's step).
        mode: a USER_VECTORS entry; None = the model's own ``user_vector``.

    Returns:
        FloatTensor[B, N]. "last" and "mean": the dot product with :func:`user_vectors`.
        "mixture": log((1 / T) sum_t softmax_t(i)) over the T real steps t of the history,
        softmax_t over the candidates not excluded, of the dot products with the vector after
        step t (an all-pad history uses its last position).
    """
    mode = _mode(model, mode)
    if mode != "mixture":
        return (user_vectors(model, items, events, gaps, mode) @ item_vecs.T).float()
    vectors = model.sequence_vectors(items, events, gaps)
    real = items != schema.PAD_INDEX
    last = torch.arange(items.shape[1], device=items.device) == items.shape[1] - 1
    real = torch.where(real.any(dim=1, keepdim=True), real, last)
    log_weight = torch.log(real.float() / real.sum(dim=1, keepdim=True))  # -inf at pad steps
    chunk = max(1, MIXTURE_CHUNK_LOGITS // max(1, items.shape[1] * item_vecs.shape[0]))
    parts = []
    for start in range(0, items.shape[0], chunk):
        rows = slice(start, start + chunk)
        logits = torch.einsum("bld,nd->bln", vectors[rows], item_vecs).float()
        allowed = logits if excluded is None else logits.masked_fill(excluded[rows, None, :], NEG_INF)
        norm = torch.logsumexp(allowed, dim=2, keepdim=True)
        norm = torch.where(torch.isfinite(norm), norm, torch.zeros_like(norm))  # nothing left: no renormalising
        parts.append(torch.logsumexp(logits - norm + log_weight[rows, :, None], dim=1))
    return torch.cat(parts) if parts else torch.zeros(0, item_vecs.shape[0], device=item_vecs.device)


def top_k_of_scores(scores: Tensor, k: int, excluded: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The K best items of each row of a score block, after masking.

    Args:
        scores: Tensor[B, N]; changed in place when ``excluded`` is given (masked entries
            become -inf).
        k: items per row.
        excluded: BoolTensor[B, N], True where the row never gets the item, or None when the
            scores are masked already.

    Returns:
        (indices LongTensor[B, k], scores Tensor[B, k]), best first; EMPTY_SLOT / -inf in empty
        slots (fewer than k items with a finite score).
    """
    if k < 1:
        raise ValueError(f"k ({k}) must be positive")
    num_users, num_items = scores.shape
    if excluded is not None:
        scores.masked_fill_(excluded, NEG_INF)
    width = min(k, num_items)
    values, top = torch.topk(scores, width, dim=1)
    top[values == NEG_INF] = schema.EMPTY_SLOT
    indices = torch.full((num_users, k), schema.EMPTY_SLOT, dtype=torch.long)
    out = torch.full((num_users, k), NEG_INF, dtype=scores.dtype)
    indices[:, :width] = top
    out[:, :width] = values
    return indices, out


def rank(score_block: BlockScorer, num_users: int, num_items: int, k: int, excluded: Pairs | None = None,
         blocked: Tensor | None = None, block_size: int = BLOCK_USERS, name: str = "model",
         on_scores: ScoreObserver | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every user's top K, exact over the N items, ``block_size`` users at a time.

    Args:
        score_block: (rows slice, exclusion mask BoolTensor[b, N]) -> scores Tensor[b, N] of
            those users (on the CPU); the mask is for scorers that read it (the "mixture" mode);
            masking is done here, whatever the scores of excluded items are.
        num_users, num_items: B and N.
        k: items per user.
        excluded: (row, item) pairs, rows in [0, B) sorted (see :func:`pairs_of`), or None.
        blocked: BoolTensor[N] never recommended (see :func:`blocked_items`), or None.
        block_size: users scored at once: memory is block_size x N.
        name: the ranker, for the error message.
        on_scores: called with each block's first row and its scores Tensor[b, N], -inf for
            the items a user never gets, before they are dropped: for what needs the whole
            ranking, not only its top K (evaluation's AUC); or None.

    Returns:
        (item indices int64 [B, k], scores float32 [B, k]); EMPTY_SLOT / -inf in empty slots.

    Raises:
        DataQualityError: a NaN or infinite score.
    """
    if k < 1 or block_size < 1:
        raise ValueError(f"k ({k}) and block_size ({block_size}) must be positive")
    indices = np.full((num_users, k), schema.EMPTY_SLOT, dtype=np.int64)
    values = np.full((num_users, k), NEG_INF, dtype=np.float32)
    for start in range(0, num_users, block_size):
        end = min(start + block_size, num_users)
        pairs = block_pairs(excluded, start, end) if excluded is not None else None
        mask = exclusion_mask(end - start, num_items, pairs, blocked)
        with torch.no_grad():
            scores = score_block(slice(start, end), mask)
        if not bool(torch.isfinite(scores).all()):
            raise DataQualityError(f"the {name} ranker produced NaN or infinite scores")
        top, best = top_k_of_scores(scores, k, mask)
        if on_scores is not None:
            on_scores(start, scores)
        indices[start:end] = top.numpy()
        values[start:end] = best.float().numpy()
    return indices, values


def rank_histories(model: torch.nn.Module, history: Sequence[np.ndarray | Tensor], item_vecs: Tensor, k: int,
                   excluded: Pairs | None = None, blocked: Tensor | None = None, block_size: int = BLOCK_USERS,
                   mode: str | None = None, device: torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`rank` with the model's own scores (:func:`score_items`) of left-padded histories.

    Args:
        model: a TwoTowerModel in eval mode, on ``device``.
        history: items, events, gaps: int [B, L] arrays or LongTensors.
        item_vecs: Tensor[N, d + 1] on ``device``.
        mode: a USER_VECTORS entry; None = the model's own.
        device: where the model lives (CPU when None); scores come back to the CPU.
        Others as in :func:`rank`.
    """
    device = device or torch.device("cpu")
    tensors = [torch.as_tensor(h, dtype=torch.long) for h in history]

    def score_block(rows: slice, mask: Tensor) -> Tensor:
        inputs = [t[rows].to(device) for t in tensors]
        return score_items(model, *inputs, item_vecs, mask.to(device), mode).float().cpu()

    return rank(score_block, len(tensors[0]), item_vecs.shape[0], k, excluded, blocked, block_size)


def top_k(user_vecs: Tensor, item_vecs: Tensor, k: int, exclude: Sequence[np.ndarray] | None = None,
          block_size: int = BLOCK_USERS, allowed: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The K best items of every user by dot product of given vectors (see :func:`rank`).

    Args:
        user_vecs: Tensor[B, d]; item_vecs: Tensor[N, d], row i is item index i.
        exclude: B int arrays of item indices to leave out for that user (indices outside
            [0, N) are ignored), or None.
        allowed: BoolTensor[N], False for items never to recommend, or None.

    Returns:
        (indices LongTensor[B, k], scores Tensor[B, k]), best first; EMPTY_SLOT / -inf in empty slots.
    """
    if exclude is not None and len(exclude) != user_vecs.shape[0]:
        raise ValueError(f"exclude holds {len(exclude)} lists for {user_vecs.shape[0]} users")
    if not bool(torch.isfinite(user_vecs).all()) or not bool(torch.isfinite(item_vecs).all()):
        raise DataQualityError("user or item vectors hold NaN or infinite values")
    indices, values = rank(lambda rows, mask: user_vecs[rows] @ item_vecs.T, user_vecs.shape[0], item_vecs.shape[0],
                           k, pairs_of(exclude) if exclude is not None else None,
                           blocked_items(item_vecs.shape[0], allowed), block_size)
    return torch.from_numpy(indices), torch.from_numpy(values).to(user_vecs.dtype)


def _mode(model: torch.nn.Module, mode: str | None) -> str:
    mode = mode or model.user_vector
    if mode not in USER_VECTORS:
        raise ValueError(f"user_vector must be one of {', '.join(USER_VECTORS)}, got {mode!r}")
    return mode
