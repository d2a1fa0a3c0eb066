"""Exact top-K over the whole catalogue, and the rankers that evaluation and scoring share.

Every ranker scores an item as the dot product of a user vector and an item vector, so one
blocked :func:`top_k` serves them all: the trained two-tower model (its towers' vectors) and
the popularity baseline (a user vector of 1 against each item's log popularity).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from recsys_spark import schema as S
from recsys_spark.errors import DataQualityError

EMPTY_SLOT = -1
NEG_INF = float("-inf")


def top_k(
    user_vecs: Tensor,
    item_vecs: Tensor,
    k: int,
    exclude: Sequence[np.ndarray] | None = None,
    block_size: int = 1024,
    allowed: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The K best items of every user by dot product, exact, over every item.

    Users are scored ``block_size`` rows at a time, so memory is bounded by block_size x N,
    not by the number of users. Pad and OOV rows (item indices 0 and 1), items not in
    ``allowed`` and each user's excluded items score -inf and are never returned.

    Args:
        user_vecs: Tensor[B, d].
        item_vecs: Tensor[N, d], row i is item index i.
        k: how many items per user.
        exclude: B int arrays of item indices to leave out for that user (indices outside
            [0, N) are ignored), or None.
        block_size: users scored at once.
        allowed: BoolTensor[N], False for items never to recommend (e.g. absent from the
            vocabulary), or None.

    Returns:
        (indices LongTensor[B, k], scores Tensor[B, k]), best first. When fewer than k items
        are eligible, the remaining slots hold index -1 and score -inf.
    """
    if k < 1 or block_size < 1:
        raise ValueError(f"k ({k}) and block_size ({block_size}) must be positive")
    num_users, num_items = user_vecs.shape[0], item_vecs.shape[0]
    if exclude is not None and len(exclude) != num_users:
        raise ValueError(f"exclude holds {len(exclude)} lists for {num_users} users")
    if not bool(torch.isfinite(user_vecs).all()) or not bool(torch.isfinite(item_vecs).all()):
        raise DataQualityError("user or item vectors hold NaN or infinite values")
    blocked = blocked_items(num_items, allowed)
    indices = torch.full((num_users, k), EMPTY_SLOT, dtype=torch.long)
    scores = torch.full((num_users, k), NEG_INF, dtype=user_vecs.dtype)
    with torch.no_grad():
        for start in range(0, num_users, block_size):
            end = min(start + block_size, num_users)
            block_exclude = exclude[start:end] if exclude is not None else None
            excluded = exclusion_mask(end - start, num_items, block_exclude, blocked)
            top, values = top_k_of_scores(user_vecs[start:end] @ item_vecs.T, k, excluded)
            indices[start:end] = top
            scores[start:end] = values
    return indices, scores


def blocked_items(num_items: int, allowed: Tensor | None = None) -> Tensor:
    """BoolTensor[N]: True for pad, OOV and every item not in ``allowed`` (never recommended)."""
    blocked = torch.zeros(num_items, dtype=torch.bool)
    blocked[: S.FIRST_ITEM_INDEX] = True
    if allowed is not None:
        blocked |= ~allowed.to(torch.bool)
    return blocked


def exclusion_mask(num_users: int, num_items: int, exclude: Sequence[np.ndarray] | None, blocked: Tensor) -> Tensor:
    """BoolTensor[B, N]: True where row b never gets item i (``blocked`` items, or in ``exclude[b]``)."""
    mask = blocked[None, :].repeat(num_users, 1)
    if exclude is not None:
        mask[_pairs(exclude, num_items)] = True
    return mask


def top_k_of_scores(scores: Tensor, k: int, excluded: Tensor) -> tuple[Tensor, Tensor]:
    """The K best items of each row of a score block, after masking.

    Args:
        scores: Tensor[B, N], changed in place (masked entries become -inf).
        k: items per row.
        excluded: BoolTensor[B, N], True where the row never gets the item (see
            :func:`exclusion_mask`).

    Returns:
        (indices LongTensor[B, k], scores Tensor[B, k]), best first; -1 / -inf in empty slots.
    """
    num_users, num_items = scores.shape
    scores.masked_fill_(excluded, NEG_INF)
    width = min(k, num_items)
    values, top = torch.topk(scores, width, dim=1)
    top[values == NEG_INF] = EMPTY_SLOT
    indices = torch.full((num_users, k), EMPTY_SLOT, dtype=torch.long)
    out = torch.full((num_users, k), NEG_INF, dtype=scores.dtype)
    indices[:, :width] = top
    out[:, :width] = values
    return indices, out


def _pairs(lists: Sequence[np.ndarray], num_items: int) -> tuple[Tensor, Tensor]:
    """(row, item) index pairs of every in-range item of every list, for one scatter."""
    lengths = [len(items) for items in lists]
    items = np.concatenate([np.asarray(x, dtype=np.int64) for x in lists] + [np.zeros(0, np.int64)])
    rows = np.repeat(np.arange(len(lists), dtype=np.int64), lengths)
    keep = (items >= 0) & (items < num_items)
    return torch.from_numpy(rows[keep]), torch.from_numpy(items[keep])


def int_matrix(column: pd.Series) -> np.ndarray:
    """Args: a column of equal-length int lists (B rows). Returns: int64 array [B, L]."""
    return np.stack([np.asarray(v, dtype=np.int64) for v in column])


def int_arrays(column: pd.Series) -> list[np.ndarray]:
    """Args: a column of int lists (None as empty). Returns: B int64 arrays."""
    return [np.asarray(v if v is not None else [], dtype=np.int64) for v in column]


class Ranker(ABC):
    """Scores every item for the users of a pandas batch of history rows (schema.HISTORY_FIELDS).

    Args:
        item_vecs: Tensor[N, d], row i is item index i.
        allowed: BoolTensor[N], False for items never to recommend, or None for all.
    """

    name = "ranker"

    def __init__(self, item_vecs: Tensor, allowed: Tensor | None = None):
        self.item_vecs = item_vecs
        self.allowed = allowed

    @property
    def num_items(self) -> int:
        return int(self.item_vecs.shape[0])

    @abstractmethod
    def user_vectors(self, batch: pd.DataFrame) -> Tensor:
        """Args: batch of B history rows. Returns: Tensor[B, d]."""

    def score_block(self, batch: pd.DataFrame, excluded: Tensor | None = None) -> Tensor:
        """Args: batch of B history rows; excluded, BoolTensor[B, N], True for the items each
        row is never shown (its seen items, pad, OOV and blocked items), or None.

        Returns: Tensor[B, N], the score of every item. A dot product of user and item vectors;
        rankers that are no dot product (e.g. item-item co-occurrence) override this instead
        of :meth:`user_vectors`. Scores of excluded items are masked afterwards, whatever they are.
        """
        return self.user_vectors(batch) @ self.item_vecs.T

    def recommend(
        self,
        batch: pd.DataFrame,
        k: int,
        exclude_seen: bool = True,
        block_size: int = 1024,
        exclude: Sequence[np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-K items of every row of ``batch``, ``block_size`` users at a time.

        Args:
            batch: B rows with hist_items, hist_events, hist_gaps and seen_items.
            k: items per user.
            exclude_seen: leave each row's items out: ``exclude`` when given, else seen_items.
            block_size: users scored at once.
            exclude: B int arrays of item indices to leave out instead of seen_items (e.g.
                only the purchased ones), or None.

        Returns:
            (item indices int64 [B, k], scores float32 [B, k]); -1 / -inf in empty slots.
        """
        if k < 1 or block_size < 1:
            raise ValueError(f"k ({k}) and block_size ({block_size}) must be positive")
        if exclude is not None and len(exclude) != len(batch):
            raise ValueError(f"exclude holds {len(exclude)} lists for {len(batch)} users")
        blocked = blocked_items(self.num_items, self.allowed)
        parts = [(np.zeros((0, k), np.int64), np.zeros((0, k), np.float32))]
        for start in range(0, len(batch), block_size):
            block = batch.iloc[start : start + block_size]
            excluded = None
            if exclude_seen:
                excluded = exclude[start : start + block_size] if exclude is not None else int_arrays(block[S.SEEN_ITEMS])
            mask = exclusion_mask(len(block), self.num_items, excluded, blocked)
            with torch.no_grad():
                scores = self.score_block(block, mask)
            if not bool(torch.isfinite(scores).all()):
                raise DataQualityError(f"the {self.name} ranker produced NaN or infinite scores")
            top, values = top_k_of_scores(scores, k, mask)
            parts.append((top.numpy(), values.float().numpy()))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


class ModelRanker(Ranker):
    """A two-tower model: anything with ``user_vectors(items, events, gaps)`` and ``item_vectors()``.

    Args:
        module: the model in eval mode (e.g. ``ModelBundle.build_module()``).
        item_vecs: Tensor[N, d] computed once elsewhere, or None to compute them here.
        allowed: BoolTensor[N] or None.
    """

    name = "model"

    def __init__(self, module: torch.nn.Module, item_vecs: Tensor | None = None, allowed: Tensor | None = None):
        self.module = module.eval()
        if item_vecs is None:
            with torch.no_grad():
                item_vecs = self.module.item_vectors()
        super().__init__(item_vecs, allowed)

    @classmethod
    def from_bundle(cls, bundle, item_vecs: Tensor | None = None) -> "ModelRanker":
        """Args: bundle, a ModelBundle; item_vecs as in the constructor. Only vocabulary items are allowed."""
        allowed = torch.from_numpy(bundle.product_ids() >= 0)
        return cls(bundle.build_module(), item_vecs, allowed)

    def user_vectors(self, batch: pd.DataFrame) -> Tensor:
        return self.module.user_vectors(*self._history(batch))

    def score_block(self, batch: pd.DataFrame, excluded: Tensor | None = None) -> Tensor:
        """The model's own scores (``score_items``): a dot product, or its mixture over steps."""
        return self.module.score_items(*self._history(batch), self.item_vecs, excluded)

    @staticmethod
    def _history(batch: pd.DataFrame) -> list[Tensor]:
        return [torch.from_numpy(int_matrix(batch[c])) for c in (S.HIST_ITEMS, S.HIST_EVENTS, S.HIST_GAPS)]


class PopularityRanker(Ranker):
    """The same list for everyone: score = log(1 + pretest_count), events before the test cutoff.

    Args:
        counts: int array [N], the pretest_count of every item index.
        allowed: BoolTensor[N] or None.
    """

    name = "popularity"

    def __init__(self, counts: np.ndarray, allowed: Tensor | None = None):
        item_vecs = torch.from_numpy(np.log1p(np.asarray(counts, dtype=np.float64)).astype(np.float32))[:, None]
        super().__init__(item_vecs, allowed)

    @classmethod
    def from_vocab(cls, item_vocab: pd.DataFrame, num_items: int) -> "PopularityRanker":
        """Args: item_vocab rows of schema.ITEM_VOCAB_SCHEMA; num_items N. Only its items are allowed."""
        counts, allowed = vocab_column(item_vocab, S.PRETEST_COUNT, num_items)
        return cls(counts, torch.from_numpy(allowed))

    def user_vectors(self, batch: pd.DataFrame) -> Tensor:
        return torch.ones(len(batch), 1)


def vocab_column(item_vocab: pd.DataFrame, column: str, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """A vocabulary column as a dense array indexed by item_idx.

    Returns:
        (values int64 [num_items], 0 where absent; present bool [num_items]).
    """
    idx = item_vocab[S.ITEM_IDX].to_numpy(dtype=np.int64)
    if len(idx) and (idx.min() < S.FIRST_ITEM_INDEX or idx.max() >= num_items):
        raise DataQualityError(f"item_vocab holds item_idx outside [{S.FIRST_ITEM_INDEX}, {num_items})")
    values = np.zeros(num_items, dtype=np.int64)
    present = np.zeros(num_items, dtype=bool)
    values[idx] = item_vocab[column].to_numpy(dtype=np.int64)
    present[idx] = True
    return values, present
