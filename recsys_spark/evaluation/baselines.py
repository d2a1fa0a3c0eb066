"""The baselines a model must beat: item-item co-occurrence, implicit ALS (Spark MLlib) and EASE.

All learn from the training windows only (``features/train``: what the model learns from),
and all rank the whole catalogue through :class:`~recsys_spark.models.rankers.Ranker`, so
they are measured by exactly the code that measures the model. This module fits and tunes them;
their rankers (how a fit scores a user) are in :mod:`recsys_spark.models.rankers`, where a
registered baseline's bundle rebuilds them.

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
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark import schema
from recsys_spark.config import COOCCURRENCE_SIMILARITIES
# The fits' rankers (how a fit scores a user) live with the model's, where a registered baseline's
# bundle rebuilds them; the tests and benchmarks also know them by this module.
from recsys_spark.models.rankers import (  # noqa: F401
    AlsRanker,
    CooccurrenceRanker,
    EaseRanker,
    SparseRows,
    ease_columns,
    fold_in,
    recency_entries,
)
from recsys_spark.models.ranking import int_matrix

log = logging.getLogger(__name__)

SIMILARITIES = COOCCURRENCE_SIMILARITIES

_A, _B, _D = "item_a", "item_b", "distance"


# ----------------------------------------------------------------------------- co-occurrence


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
    # Here, not at the top: only the driver fits ALS; the Spark executors that import this
    # module for the co-occurrence and EASE tasks need no pyspark.ml.
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


def ease_gram_entries(train: DataFrame, columns: np.ndarray, decays: Sequence[float]) -> DataFrame:
    """The entries of G = X'X for each decay, X having one row per training window.

    ``X[w, i] = decay**age`` with age the steps from the end of window w to its latest step
    of item i (:func:`recency_entries`), 0 if the window lacks i: decay 1.0 gives the binary
    X of plain EASE (ALS's interactions: each window a user, its distinct items).

    Args:
        train: training windows (schema.TRAIN_SCHEMA; item_seq is used).
        columns: int64 [N] from :func:`~recsys_spark.models.rankers.ease_columns`.
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


# ----------------------------------------------------------------------------- grids


def grid(**values: Sequence[Any]) -> list[dict[str, Any]]:
    """Every combination of the given settings, in order: grid(a=[1, 2], b=[3]) -> [{a:1,b:3}, {a:2,b:3}]."""
    keys = list(values)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(values[k] for k in keys))]


def grid_label(family: str, params: dict[str, Any]) -> str:
    """A ranker name for one grid point: ``als[rank=32,reg_param=0.1,alpha=10.0]``."""
    return f"{family}[" + ",".join(f"{k}={v}" for k, v in params.items()) + "]"
