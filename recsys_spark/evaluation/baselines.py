"""The baselines a model must beat: item-item co-occurrence and implicit ALS (Spark MLlib).

Both learn from the training windows only (``features/train``: what the model learns from),
and both rank the whole catalogue through :class:`~recsys_spark.evaluation.ranking.Ranker`, so
they are measured by exactly the code that measures the model.

Co-occurrence: two steps of one training window, ``d`` steps apart with ``1 <= d <= window``,
count once for the pair of their items (both ways, distinct items only). Similarity is that
count, or the count / sqrt(row sum a * row sum b) ("cosine"). A user's score of item i is
``sum_t decay**t * sim(h_t, i)`` over the history items h_0 (latest), h_1, ...

ALS: ``pyspark.ml.recommendation.ALS(implicitPrefs=True)`` with each training window as a user
and the distinct items in it as interactions of strength 1. Evaluated users are folded in:
their vector is the ALS user update of Spark's implicit solver (Hu, Koren & Volinsky 2008;
regularisation scaled by the user's number of items, as Spark does) given their items before
the cutoff and the fitted item factors.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from torch import Tensor

from recsys_spark import schema as S
from recsys_spark.evaluation.ranking import Ranker, int_arrays, int_matrix

SIMILARITIES = ("count", "cosine")

_A, _B, _D = "item_a", "item_b", "distance"


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


def cooccurrence_pairs(train: DataFrame, windows: Sequence[int]) -> DataFrame:
    """Count, for every pair of distinct items, how often they occur within each window.

    Args:
        train: training windows (schema.TRAIN_SCHEMA; item_seq is used).
        windows: the distances to count for, e.g. [1, 3, 10].

    Returns:
        item_a < item_b (ints >= FIRST_ITEM_INDEX) and one long column ``w<window>`` per window:
        the number of step pairs of the pair at distance <= window.
    """
    widest = max(windows)
    seq = F.col(S.ITEM_SEQ)
    # For every distance d and position p: (seq[p], seq[p + d], d) as a struct (1-based slices).
    pairs = F.flatten(
        F.transform(
            F.sequence(F.lit(1), F.least(F.lit(widest), F.greatest(F.size(seq) - 1, F.lit(1)))),
            lambda d: F.transform(
                F.sequence(F.lit(1), F.greatest(F.size(seq) - d, F.lit(1))),
                lambda p: F.struct(
                    F.element_at(seq, p).alias(_A), F.element_at(seq, p + d).alias(_B), d.alias(_D)
                ),
            ),
        )
    )
    steps = train.select(F.explode(pairs).alias("pair")).select("pair.*")
    steps = steps.where(
        (F.col(_A) >= S.FIRST_ITEM_INDEX) & (F.col(_B) >= S.FIRST_ITEM_INDEX) & (F.col(_A) != F.col(_B))
    )
    canonical = steps.select(
        F.least(_A, _B).alias(_A), F.greatest(_A, _B).alias(_B), F.col(_D)
    )
    return canonical.groupBy(_A, _B).agg(
        *[F.sum(F.when(F.col(_D) <= w, 1).otherwise(0)).cast("long").alias(f"w{w}") for w in windows]
    )


def similarity_matrix(pairs: pd.DataFrame, window: int, similarity: str, num_items: int) -> SparseRows:
    """The symmetric item-item similarity of one window from :func:`cooccurrence_pairs` rows.

    Args:
        pairs: item_a, item_b and ``w<window>`` columns (collected to the driver).
        window: which count column to use.
        similarity: "count" or "cosine" (count / sqrt(row sum a * row sum b)).
        num_items: N.

    Returns:
        SparseRows [N, N], zero diagonal.
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity {similarity!r} is not one of {SIMILARITIES}")
    counts = pairs[f"w{window}"].to_numpy(dtype=np.float64)
    keep = counts > 0
    a, b, counts = pairs[_A].to_numpy()[keep], pairs[_B].to_numpy()[keep], counts[keep]
    if similarity == "cosine":
        totals = np.bincount(a, weights=counts, minlength=num_items) + np.bincount(b, weights=counts, minlength=num_items)
        counts = counts / np.sqrt(totals[a] * totals[b])
    return SparseRows.from_pairs(np.concatenate([a, b]), np.concatenate([b, a]), np.concatenate([counts, counts]),
                                 num_items)


class CooccurrenceRanker(Ranker):
    """Scores items by their similarity to the user's recent history items.

    Args:
        matrix: SparseRows [N, N], item-item similarity (see :func:`similarity_matrix`).
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
        items = int_matrix(batch[S.HIST_ITEMS])  # [B, L], left-padded: the latest step is last
        length = items.shape[1]
        weights = np.power(float(self.decay), np.arange(length - 1, -1, -1, dtype=np.float64))
        weights = np.where(items >= S.FIRST_ITEM_INDEX, weights[None, :], 0.0)
        return torch.from_numpy(self.matrix.weighted_rows(weights, items))


# ----------------------------------------------------------------------------- ALS

ALS_USER, ALS_ITEM, ALS_RATING = "window_id", "item", "rating"


def als_interactions(train: DataFrame) -> DataFrame:
    """One row per (training window, distinct real item in it), rating 1.0.

    Returns:
        window_id (int, 0..windows - 1), item (int), rating (float).
    """
    indexed = train.select(S.ITEM_SEQ).rdd.zipWithIndex().map(lambda pair: (pair[1], pair[0][0]))
    schema = T.StructType(
        [T.StructField(ALS_USER, T.LongType(), False), T.StructField(S.ITEM_SEQ, T.ArrayType(T.IntegerType()), True)]
    )
    windows = train.sparkSession.createDataFrame(indexed, schema)
    items = F.array_distinct(F.filter(S.ITEM_SEQ, lambda i: i >= S.FIRST_ITEM_INDEX))
    return windows.select(
        F.col(ALS_USER).cast("int").alias(ALS_USER), F.explode(items).alias(ALS_ITEM), F.lit(1.0).alias(ALS_RATING)
    )


def fit_als(interactions: DataFrame, num_items: int, rank: int, reg_param: float, alpha: float, max_iter: int,
            seed: int) -> np.ndarray:
    """Fit implicit ALS and return its item factors.

    Args:
        interactions: :func:`als_interactions` rows (persist it when fitting several times).
        num_items: N.
        rank, reg_param, alpha, max_iter, seed: ``pyspark.ml.recommendation.ALS`` settings.

    Returns:
        float32 [N, rank]: row i is item i's factors (0 for items without interactions).
    """
    from pyspark.ml.recommendation import ALS

    # One block per task slot rather than MLlib's default of 10: every ALS iteration runs a few
    # stages over all blocks, and on a small cluster the per-task overhead dominates the fit.
    blocks = max(1, interactions.sparkSession.sparkContext.defaultParallelism)
    als = ALS(
        rank=rank, regParam=reg_param, alpha=alpha, maxIter=max_iter, seed=seed, implicitPrefs=True,
        userCol=ALS_USER, itemCol=ALS_ITEM, ratingCol=ALS_RATING, coldStartStrategy="drop",
        numUserBlocks=blocks, numItemBlocks=blocks,
    )
    model = als.fit(interactions)
    factors = model.itemFactors.toPandas()
    out = np.zeros((num_items, rank), dtype=np.float32)
    if len(factors):
        out[factors["id"].to_numpy(dtype=np.int64)] = np.stack(factors["features"].to_numpy()).astype(np.float32)
    return out


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
        item_factors: float32 [N, r] (see :func:`fit_als`).
        reg_param, alpha: the settings they were fitted with.
        allowed: BoolTensor[N] or None.
    """

    name = "als"

    def __init__(self, item_factors: np.ndarray, reg_param: float, alpha: float, allowed: Tensor | None = None):
        super().__init__(torch.from_numpy(np.asarray(item_factors, dtype=np.float32)), allowed)
        self.reg_param = reg_param
        self.alpha = alpha

    def user_vectors(self, batch: pd.DataFrame) -> Tensor:
        seen = int_arrays(batch[S.SEEN_ITEMS])
        return torch.from_numpy(fold_in(self.item_vecs.numpy(), seen, self.reg_param, self.alpha))


# ----------------------------------------------------------------------------- grids


def grid(**values: Sequence[Any]) -> list[dict[str, Any]]:
    """Every combination of the given settings, in order: grid(a=[1, 2], b=[3]) -> [{a:1,b:3}, {a:2,b:3}]."""
    keys = list(values)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(values[k] for k in keys))]


def grid_label(family: str, params: dict[str, Any]) -> str:
    """A ranker name for one grid point: ``als[rank=32,reg_param=0.1,alpha=10.0]``."""
    return f"{family}[" + ",".join(f"{k}={v}" for k, v in params.items()) + "]"
