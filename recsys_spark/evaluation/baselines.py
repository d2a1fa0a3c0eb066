"""The baselines a model must beat: item-item co-occurrence, implicit ALS (Spark MLlib) and EASE.

All learn from the training windows only (``features/train``: what the model learns from),
and all rank the whole catalogue through :class:`~recsys_spark.evaluation.rankers.Ranker`, so
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

EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019): X has one row
per training window, as ALS's users (the windows carry no user id), and one column per item
with training interactions. ``B = -P / diag(P)`` with ``P = (X'X + lambda I)^-1`` and
``diag(B) = 0``; a user's scores are ``x_u B``. Recency, the same on both sides: an entry
weighs ``decay**age``, age the steps from the end of the window (X) or of the user's history
(x_u) to the item's latest step, so decay 1.0 is plain, binary EASE. Steps, not time: the
training windows hold gap buckets, not timestamps.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from torch import Tensor

from recsys_spark import schema
from recsys_spark.config import COOCCURRENCE_SIMILARITIES
from recsys_spark.evaluation.rankers import Ranker
from recsys_spark.models.ranking import int_arrays, int_matrix

log = logging.getLogger(__name__)

SIMILARITIES = COOCCURRENCE_SIMILARITIES

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
    seq = F.col(schema.ITEM_SEQ)
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
        (F.col(_A) >= schema.FIRST_ITEM_INDEX) & (F.col(_B) >= schema.FIRST_ITEM_INDEX) & (F.col(_A) != F.col(_B))
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
        items = int_matrix(batch[schema.HIST_ITEMS])  # [B, L], left-padded: the latest step is last
        length = items.shape[1]
        weights = np.power(float(self.decay), np.arange(length - 1, -1, -1, dtype=np.float64))
        weights = np.where(items >= schema.FIRST_ITEM_INDEX, weights[None, :], 0.0)
        return torch.from_numpy(self.matrix.weighted_rows(weights, items))


# ----------------------------------------------------------------------------- ALS

ALS_USER, ALS_ITEM, ALS_RATING = "window_id", "item", "rating"


def als_interactions(train: DataFrame) -> DataFrame:
    """One row per (training window, distinct real item in it), rating 1.0.

    Returns:
        window_id (int, 0..windows - 1), item (int), rating (float).
    """
    indexed = train.select(schema.ITEM_SEQ).rdd.zipWithIndex().map(lambda pair: (pair[1], pair[0][0]))
    struct = T.StructType(
        [T.StructField(ALS_USER, T.LongType(), False), T.StructField(schema.ITEM_SEQ, T.ArrayType(T.IntegerType()), True)]
    )
    windows = train.sparkSession.createDataFrame(indexed, struct)
    items = F.array_distinct(F.filter(schema.ITEM_SEQ, lambda i: i >= schema.FIRST_ITEM_INDEX))
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
        seen = int_arrays(batch[schema.SEEN_ITEMS])
        return torch.from_numpy(fold_in(self.item_vecs.numpy(), seen, self.reg_param, self.alpha))


# ----------------------------------------------------------------------------- EASE

EASE_A, EASE_B = "item_a", "item_b"


def ease_items(train_counts: np.ndarray, max_items: int) -> np.ndarray | None:
    """The items EASE models: those with interactions in the training period.

    Args:
        train_counts: int [N], the train_count of every item index (0 where absent).
        max_items: the largest catalogue whose items x items inverse is computed.

    Returns:
        int64 [n], the modelled item indices in increasing order, or None (and a log line)
        when n > max_items.
    """
    items = np.flatnonzero(np.asarray(train_counts) > 0).astype(np.int64)
    n = len(items)
    if n > max_items:
        log.warning("evaluate: EASE skipped: %d items > evaluate.ease_max_items=%d (an %d x %d inverse)",
                    n, max_items, n, n)
        return None
    return items


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


def ease_gram_entries(train: DataFrame, columns: np.ndarray, decays: Sequence[float]) -> DataFrame:
    """The entries of G = X'X for each decay, X having one row per training window.

    ``X[w, i] = decay**age`` with age the steps from the end of window w to its latest step
    of item i (:func:`recency_entries`), 0 if the window lacks i: decay 1.0 gives the binary
    X of plain EASE (ALS's interactions: each window a user, its distinct items).

    Args:
        train: training windows (schema.TRAIN_SCHEMA; item_seq is used).
        columns: int64 [N] from :func:`ease_columns`.
        decays: the decays, each in (0, 1].

    Returns:
        item_a <= item_b (EASE columns) and one double column ``g<j>`` per decays[j]: the sum
        over windows of X[w, a] * X[w, b] (only nonzero entries of the upper triangle).
    """
    n = int(columns.max(initial=-1)) + 1
    struct = T.StructType(
        [T.StructField(EASE_A, T.IntegerType(), False), T.StructField(EASE_B, T.IntegerType(), False)]
        + [T.StructField(f"g{j}", T.DoubleType(), False) for j in range(len(decays))]
    )
    chunk = 1024  # windows at once: chunk x (L + 1)^2 candidate pairs

    def pair_sums(batches):
        for batch in batches:
            for start in range(0, len(batch), chunk):
                rows, cols, ages = recency_entries(int_matrix(batch[schema.ITEM_SEQ].iloc[start : start + chunk]), columns)
                if len(rows) == 0:
                    continue
                a, b, age_sums = _pairs_within_rows(rows, cols, ages)
                keys, inverse = np.unique(a * n + b, return_inverse=True)
                yield pd.DataFrame(
                    {
                        EASE_A: (keys // n).astype(np.int32),
                        EASE_B: (keys % n).astype(np.int32),
                        **{f"g{j}": np.bincount(inverse, weights=np.power(float(d), age_sums), minlength=len(keys))
                           for j, d in enumerate(decays)},
                    }
                )

    entries = train.select(schema.ITEM_SEQ).mapInPandas(pair_sums, struct)
    return entries.groupBy(EASE_A, EASE_B).agg(*[F.sum(f"g{j}").alias(f"g{j}") for j in range(len(decays))])


def _pairs_within_rows(rows: np.ndarray, cols: np.ndarray, ages: np.ndarray):
    """Every pair (a, b), a <= b, of entries of the same row, and the sum of their ages.

    Args: rows, cols, ages from :func:`recency_entries` (sorted by row, distinct cols per row).
    Returns: (a, b, age_sum), int64 [p] each.
    """
    counts = np.bincount(rows)
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    width = int(counts.max())
    padded_cols = np.full((len(counts), width), -1, dtype=np.int64)
    padded_ages = np.zeros((len(counts), width), dtype=np.int64)
    padded_cols[rows, slot], padded_ages[rows, slot] = cols, ages
    a, b = padded_cols[:, :, None], padded_cols[:, None, :]
    keep = (a >= 0) & (a <= b)  # b >= a >= 0
    age_sums = padded_ages[:, :, None] + padded_ages[:, None, :]
    return (np.broadcast_to(a, keep.shape)[keep], np.broadcast_to(b, keep.shape)[keep], age_sums[keep])


def gram_matrix(entries: pd.DataFrame, decay_no: int, size: int) -> np.ndarray:
    """G of one decay as a dense symmetric matrix.

    Args:
        entries: :func:`ease_gram_entries` rows (collected to the driver).
        decay_no: j of the ``g<j>`` column.
        size: n, the number of EASE columns.

    Returns:
        float64 [n, n].
    """
    gram = np.zeros((size, size), dtype=np.float64)
    a, b = entries[EASE_A].to_numpy(dtype=np.int64), entries[EASE_B].to_numpy(dtype=np.int64)
    values = entries[f"g{decay_no}"].to_numpy(dtype=np.float64)
    gram[a, b] = values
    gram[b, a] = values
    return gram


def fit_ease(gram: np.ndarray, lam: float) -> np.ndarray:
    """The EASE item-item weights (Steck 2019): ``P = (G + lam I)^-1``, ``B = -P / diag(P)``
    (column j divided by P[j, j]), ``diag(B) = 0``.

    The inverse is computed in float64; peak memory is about 3 x 8 n^2 bytes (G, G + lam I, P).

    Args:
        gram: float64 [n, n], G = X'X (see :func:`gram_matrix`); not modified.
        lam: the L2 weight, > 0 (G + lam I is then positive definite).

    Returns:
        float32 [n, n], B; a user's scores are ``x_u @ B``.
    """
    regularised = torch.from_numpy(np.asarray(gram, dtype=np.float64)).clone()
    regularised.diagonal().add_(float(lam))
    weights = torch.linalg.inv(regularised)
    del regularised
    weights.div_(-weights.diagonal().clone()[None, :])
    weights.diagonal().zero_()
    return weights.float().numpy()


class EaseRanker(Ranker):
    """EASE: a user's scores are ``x_u @ B``, x_u their recency-weighted items.

    ``x_u[i] = decay**age`` of the latest step of item i in hist_items (age 0 = the last
    step, as in :func:`recency_entries`); items of seen_items older than the history weigh
    ``decay**L``. Decay 1.0 gives the binary x_u of plain EASE (every item before the cutoff).

    Args:
        items: int64 [n], the item index of every EASE column (see :func:`ease_items`).
        weights: float32 [n, n], B from :func:`fit_ease`.
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


# ----------------------------------------------------------------------------- grids


def grid(**values: Sequence[Any]) -> list[dict[str, Any]]:
    """Every combination of the given settings, in order: grid(a=[1, 2], b=[3]) -> [{a:1,b:3}, {a:2,b:3}]."""
    keys = list(values)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(values[k] for k in keys))]


def grid_label(family: str, params: dict[str, Any]) -> str:
    """A ranker name for one grid point: ``als[rank=32,reg_param=0.1,alpha=10.0]``."""
    return f"{family}[" + ",".join(f"{k}={v}" for k, v in params.items()) + "]"
