"""The rankers: the trained model, popularity and the baselines (co-occurrence, ALS, EASE).

Each ranker scores every item for a batch of history rows; listing the top K, with each user's
exclusions and the blocked items masked, is :func:`recsys_spark.models.ranking.rank`'s, the one
ranking path that scoring, the pyfunc and training's validation share. The model ranks by its
own scores (:func:`~recsys_spark.models.ranking.score_items`), popularity as the dot product of a
user vector of 1 with each item's log popularity. The baselines score as
:mod:`recsys_spark.evaluation.baselines` describes, which fits and tunes them; a bundle
(models/bundle.py) rebuilds any of them with ``ranker()``, for evaluation, scoring and the pyfunc.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from recsys_spark import metrics
from recsys_spark import schema
from recsys_spark.errors import DataQualityError
from recsys_spark.models import ranking
from recsys_spark.models.ranking import int_arrays, int_matrix


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
        on_scores: ranking.ScoreObserver | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-K items of every row of ``batch``, ``block_size`` users at a time.

        Args:
            batch: B rows with hist_items, hist_events, hist_gaps and seen_items.
            k: items per user.
            exclude_seen: leave each row's items out: ``exclude`` when given, else seen_items.
            block_size: users scored at once.
            exclude: B int arrays of item indices to leave out instead of seen_items (e.g.
                only the purchased ones), or None.
            on_scores: sees every block's masked scores (see ``ranking.rank``), or None.

        Returns:
            (item indices int64 [B, k], scores float32 [B, k]); -1 / -inf in empty slots.
        """
        if exclude is not None and len(exclude) != len(batch):
            raise ValueError(f"exclude holds {len(exclude)} lists for {len(batch)} users")
        excluded = None
        if exclude_seen:
            excluded = ranking.pairs_of(exclude if exclude is not None else ranking.int_arrays(batch[schema.SEEN_ITEMS]))
        return ranking.rank(lambda rows, mask: self.score_block(batch.iloc[rows], mask), len(batch), self.num_items,
                            k, excluded, ranking.blocked_items(self.num_items, self.allowed), block_size, self.name,
                            on_scores)

    def rank_targets(
        self,
        batch: pd.DataFrame,
        k: int,
        targets: Sequence[np.ndarray],
        block_size: int = 1024,
        exclude: Sequence[np.ndarray] | None = None,
    ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
        """:meth:`recommend`'s top K (seen items excluded), and where each target stands in the
        same full ranking, from the same scores: what evaluation's AUC needs.

        Args:
            targets: B int arrays of target items; the rest as in :meth:`recommend`.

        Returns:
            (item indices int64 [B, k]; B float64 arrays, each target's rank among its row's
            eligible items; eligible items per row int64 [B]), see ``metrics.target_ranks``.
        """
        if len(targets) != len(batch):
            raise ValueError(f"targets holds {len(targets)} lists for {len(batch)} users")
        ranks: list[np.ndarray] = []
        eligible = np.zeros(len(batch), dtype=np.int64)

        def observe(start: int, scores: Tensor) -> None:
            end = start + scores.shape[0]
            block_ranks, block_eligible = metrics.target_ranks(scores.float().numpy(), targets[start:end])
            ranks.extend(block_ranks)
            eligible[start:end] = block_eligible

        top, _ = self.recommend(batch, k, True, block_size, exclude, observe)
        return top, ranks, eligible


class ModelRanker(Ranker):
    """A two-tower model: anything with ``sequence_vectors(items, events, gaps)``, ``item_vectors()``
    and ``user_vector`` (see models.ranking).

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
        return ranking.user_vectors(self.module, *ranking.history_tensors(batch))

    def score_block(self, batch: pd.DataFrame, excluded: Tensor | None = None) -> Tensor:
        """The model's own scores (``ranking.score_items``): a dot product, or its mixture over steps."""
        return ranking.score_items(self.module, *ranking.history_tensors(batch), self.item_vecs, excluded)


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
        counts, allowed = vocab_column(item_vocab, schema.PRETEST_COUNT, num_items)
        return cls(counts, torch.from_numpy(allowed))

    def user_vectors(self, batch: pd.DataFrame) -> Tensor:
        return torch.ones(len(batch), 1)


def vocab_column(item_vocab: pd.DataFrame, column: str, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """A vocabulary column as a dense array indexed by item_idx.

    Returns:
        (values int64 [num_items], 0 where absent; present bool [num_items]).
    """
    idx = item_vocab[schema.ITEM_IDX].to_numpy(dtype=np.int64)
    if len(idx) and (idx.min() < schema.FIRST_ITEM_INDEX or idx.max() >= num_items):
        raise DataQualityError(f"item_vocab holds item_idx outside [{schema.FIRST_ITEM_INDEX}, {num_items})")
    values = np.zeros(num_items, dtype=np.int64)
    present = np.zeros(num_items, dtype=bool)
    values[idx] = item_vocab[column].to_numpy(dtype=np.int64)
    present[idx] = True
    return values, present


# ----------------------------------------------------------------------------- co-occurrence


@dataclass(frozen=True)
class SparseRows:
    """A square matrix in compressed sparse row form (numpy only, cheap to broadcast).

    Args:
        indptr: int64 [N + 1]; row r's entries are ``indices[indptr[r]:indptr[r + 1]]``.
        indices: int64 [nnz], column of each entry.
        data: float32 [nnz], value of each entry.
    """

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray

    @property
    def size(self) -> int:
        return len(self.indptr) - 1

    @classmethod
    def from_pairs(cls, rows: np.ndarray, cols: np.ndarray, values: np.ndarray, size: int) -> "SparseRows":
        """Build from (row, col, value) triplets; duplicate (row, col) pairs are summed."""
        rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        keys, inverse = np.unique(rows * size + cols, return_inverse=True)
        data = np.bincount(inverse, weights=np.asarray(values, dtype=np.float64), minlength=len(keys))
        indptr = np.searchsorted(keys // size, np.arange(size + 1)).astype(np.int64)
        return cls(indptr, (keys % size).astype(np.int64), data.astype(np.float32))

    def dense(self) -> np.ndarray:
        """Returns: float32 [N, N] (for tests and small catalogues)."""
        out = np.zeros((self.size, self.size), dtype=np.float32)
        rows = np.repeat(np.arange(self.size), np.diff(self.indptr))
        out[rows, self.indices] = self.data
        return out

    def weighted_rows(self, weights: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``weights @ M[items]`` per user, without building M densely.

        Args:
            weights: float [B, L], weight of each history position (0 for padding).
            items: int [B, L], the row (item index) of each history position.

        Returns:
            float32 [B, N].
        """
        batch, length = items.shape
        user = np.repeat(np.arange(batch), length)
        rows, w = items.ravel(), weights.ravel()
        keep = (w != 0) & (rows >= 0) & (rows < self.size)
        user, rows, w = user[keep], rows[keep], w[keep]
        starts, lengths = self.indptr[rows], self.indptr[rows + 1] - self.indptr[rows]
        # Positions of every entry of every selected row, as one flat index array.
        offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        cell = np.repeat(user, lengths) * self.size + self.indices[offsets]
        value = np.repeat(w, lengths) * self.data[offsets]
        return np.bincount(cell, weights=value, minlength=batch * self.size).reshape(batch, self.size).astype(
            np.float32
        )


class CooccurrenceRanker(Ranker):
    """Scores items by their similarity to the user's recent history items.

    Args:
        matrix: SparseRows [N, N], item-item similarity (see ``evaluation.baselines.similarity_matrix``).
        decay: weight ``decay**t`` of the t-th latest history step (t = 0 is the latest).
        allowed: BoolTensor[N] or None.
    """

    name = "cooccurrence"

    def __init__(self, matrix: SparseRows, decay: float, allowed: Tensor | None = None):
        super().__init__(torch.zeros(matrix.size, 0), allowed)
        self.matrix = matrix
        self.decay = decay

    def user_vectors(self, batch: pd.DataFrame) -> Tensor:
        """The user's weights over items (an N-wide vector; the item side is the identity)."""
        return self.score_block(batch)

    def score_block(self, batch: pd.DataFrame, excluded: Tensor | None = None) -> Tensor:
        items = int_matrix(batch[schema.HIST_ITEMS])  # [B, L], left-padded: the latest step is last
        length = items.shape[1]
        weights = np.power(float(self.decay), np.arange(length - 1, -1, -1, dtype=np.float64))
        weights = np.where(items >= schema.FIRST_ITEM_INDEX, weights[None, :], 0.0)
        return torch.from_numpy(self.matrix.weighted_rows(weights, items))


# ----------------------------------------------------------------------------- ALS


def fold_in(item_factors: np.ndarray, seen: Sequence[np.ndarray], reg_param: float, alpha: float) -> np.ndarray:
    """The implicit-ALS user vectors of users given their items, with item factors fixed.

    Solves ``(Y'Y + alpha * Y_u'Y_u + reg_param * n_u * I) x_u = (1 + alpha) * Y_u' 1`` for
    every user u, with Y_u the factors of u's n_u items: the user step of Spark's implicit ALS
    for ratings of 1 (n_u floored at 1 so that a user without items gets a zero vector).

    Args:
        item_factors: float [N, r].
        seen: B int arrays of item indices (out-of-range entries ignored).
        reg_param, alpha: the ALS settings the factors were fitted with.

    Returns:
        float32 [B, r].
    """
    factors = torch.from_numpy(np.asarray(item_factors, dtype=np.float64))
    num_items, rank = factors.shape
    lists = [np.unique(s[(s >= 0) & (s < num_items)]) for s in seen]
    longest = max([len(s) for s in lists] + [1])
    index = np.zeros((len(lists), longest), dtype=np.int64)
    mask = np.zeros((len(lists), longest), dtype=np.float64)
    for row, items in enumerate(lists):
        index[row, : len(items)] = items
        mask[row, : len(items)] = 1.0
    ys = factors[torch.from_numpy(index)] * torch.from_numpy(mask)[:, :, None]  # [B, m, r]
    counts = torch.from_numpy(np.maximum(mask.sum(axis=1), 1.0))
    gram = factors.T @ factors
    lhs = gram[None] + alpha * torch.einsum("bmr,bms->brs", ys, ys)
    lhs = lhs + reg_param * counts[:, None, None] * torch.eye(rank, dtype=torch.float64)[None]
    rhs = (1.0 + alpha) * ys.sum(dim=1)
    return torch.linalg.solve(lhs, rhs).float().numpy()


class AlsRanker(Ranker):
    """Implicit ALS: fitted item factors, user vectors folded in from each user's seen_items.

    Args:
        item_factors: float32 [N, r] (see ``evaluation.baselines.fit_als``).
        reg_param, alpha: the settings they were fitted with.
        allowed: BoolTensor[N] or None.
    """

    name = "als"

    def __init__(self, item_factors: np.ndarray, reg_param: float, alpha: float, allowed: Tensor | None = None):
        super().__init__(torch.from_numpy(np.asarray(item_factors, dtype=np.float32)), allowed)
        self.reg_param = reg_param
        self.alpha = alpha

    def user_vectors(self, batch: pd.DataFrame) -> Tensor:
        seen = int_arrays(batch[schema.SEEN_ITEMS])
        return torch.from_numpy(fold_in(self.item_vecs.numpy(), seen, self.reg_param, self.alpha))


# ----------------------------------------------------------------------------- EASE


def ease_columns(items: np.ndarray, num_items: int) -> np.ndarray:
    """int64 [N]: the EASE row / column of every item index, -1 for items it does not model."""
    columns = np.full(num_items, -1, dtype=np.int64)
    columns[items] = np.arange(len(items))
    return columns


def recency_entries(
    items: np.ndarray, columns: np.ndarray, older: Sequence[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct modelled items of each row, with the age of their latest step.

    The age of a step is its distance in steps from the row's last step (0 = the last one);
    an item met several times takes its latest step. Items of ``older`` not among the steps
    get age L (older than every step).

    Args:
        items: int [B, L], step items left-padded (the last column is the latest step).
        columns: int64 [N] from :func:`ease_columns`.
        older: B int arrays of earlier items of each row (e.g. seen_items), or None.

    Returns:
        (rows, cols, ages), int64 [m] each, sorted by (row, col): one entry per row and
        distinct modelled item, ``cols`` in EASE columns.
    """
    batch, length = items.shape
    inside = (items >= 0) & (items < len(columns))
    cols = np.where(inside, columns[np.where(inside, items, 0)], -1).ravel()
    rows = np.repeat(np.arange(batch, dtype=np.int64), length)
    ages = np.tile(np.arange(length - 1, -1, -1, dtype=np.int64), batch)
    if older is not None:
        extra = np.concatenate([np.asarray(o, dtype=np.int64) for o in older] + [np.zeros(0, np.int64)])
        extra_rows = np.repeat(np.arange(batch, dtype=np.int64), [len(o) for o in older])
        ok = (extra >= 0) & (extra < len(columns))
        rows = np.concatenate([rows, extra_rows[ok]])
        cols = np.concatenate([cols, columns[extra[ok]]])
        ages = np.concatenate([ages, np.full(int(ok.sum()), length, dtype=np.int64)])
    keep = cols >= 0
    rows, cols, ages = rows[keep], cols[keep], ages[keep]
    order = np.lexsort((ages, cols, rows))
    rows, cols, ages = rows[order], cols[order], ages[order]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
    return rows[first], cols[first], ages[first]


class EaseRanker(Ranker):
    """EASE: a user's scores are ``x_u @ B``, x_u their recency-weighted items.

    ``x_u[i] = decay**age`` of the latest step of item i in hist_items (age 0 = the last
    step, as in :func:`recency_entries`); items of seen_items older than the history weigh
    ``decay**L``. Decay 1.0 gives the binary x_u of plain EASE (every item before the cutoff).

    Args:
        items: int64 [n], the item index of every EASE column (see ``evaluation.baselines.ease_items``).
        weights: float32 [n, n], B from ``evaluation.baselines.fit_ease``.
        decay: in (0, 1], the decay the weights were fitted with.
        num_items: N.
        allowed: BoolTensor[N] or None.
    """

    name = "ease"

    def __init__(self, items: np.ndarray, weights: np.ndarray, decay: float, num_items: int,
                 allowed: Tensor | None = None):
        super().__init__(torch.zeros(num_items, 0), allowed)
        self.items = torch.from_numpy(np.asarray(items, dtype=np.int64))
        self.columns = ease_columns(np.asarray(items, dtype=np.int64), num_items)
        self.weights = torch.from_numpy(np.asarray(weights, dtype=np.float32))
        self.decay = decay

    def user_vectors(self, batch: pd.DataFrame) -> Tensor:
        """The user's weights over items (an N-wide vector; the item side is the identity)."""
        return self.score_block(batch)

    def score_block(self, batch: pd.DataFrame, excluded: Tensor | None = None) -> Tensor:
        rows, cols, ages = recency_entries(int_matrix(batch[schema.HIST_ITEMS]), self.columns,
                                           int_arrays(batch[schema.SEEN_ITEMS]))
        history = torch.sparse_coo_tensor(
            torch.from_numpy(np.stack([rows, cols])),
            torch.from_numpy(np.power(float(self.decay), ages).astype(np.float32)),
            (len(batch), len(self.items)),
            is_coalesced=True,  # recency_entries: sorted by (row, col), no duplicates
            check_invariants=False,
        )
        scores = torch.zeros(len(batch), self.num_items)
        scores[:, self.items] = torch.sparse.mm(history, self.weights)
        return scores
