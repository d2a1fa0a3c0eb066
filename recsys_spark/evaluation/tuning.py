"""The baselines tuned on validation: every grid point of the co-occurrence, ALS and EASE
baselines (:mod:`~recsys_spark.evaluation.baselines`) is fitted on the training windows and
ranks the validation users, and the best point of each family by ``evaluate.primary_metric`` is
kept, with the fit a served baseline's bundle holds."""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import schema
from recsys_spark.config import EvaluateConfig
from recsys_spark.errors import InputError
from recsys_spark.evaluation import baselines
from recsys_spark.evaluation.per_user import (
    ALL,
    ALS,
    COOCCURRENCE,
    EASE,
    TUNED_BASELINES,
    ItemStats,
    average_metrics,
    headline_metrics,
    per_user_metrics,
)
from recsys_spark.evaluation.report import grid_table
from recsys_spark.models.rankers import (
    AlsRanker,
    CooccurrenceRanker,
    EaseRanker,
    Ranker,
    SparseRows,
    ease_columns,
    vocab_column,
)

log = logging.getLogger(__name__)

Builder = Callable[[], Ranker]
Fit = Callable[[], dict[str, np.ndarray]]
# label -> builder, label -> (family, params), label -> fit: the grid points of one or more families.
Points = tuple[dict[str, Builder], dict[str, tuple[str, dict[str, Any]]], dict[str, Fit]]


def tune_baselines(
    spark: SparkSession,
    ec: EvaluateConfig,
    ks: Sequence[int],
    train: DataFrame,
    validation: DataFrame,
    vocab: pd.DataFrame,
    num_items: int,
    allowed: np.ndarray,
) -> tuple[dict[str, Builder], dict[str, Any], dict[str, Fit]]:
    """Fit every grid point of the co-occurrence, ALS and EASE baselines on ``train``, rank the
    validation users with all of them in one pass, and keep the best of each family.

    EASE is skipped (with a log line) above ``evaluate.ease_max_items`` items. Each of its
    points is an n x n float32 matrix held by every Python worker that ranks it, so a pass
    holds at most ease_max_items^2 of those floats: all points go in the one pass while
    points x n^2 <= ease_max_items^2 (8 points: n <= 10,600 at the default cap), else the
    rest follow in further passes. After each pass only the best EASE point's weights are kept.

    Returns:
        ({"cooccurrence": builder, "als": builder, "ease": builder} for the chosen points
        (those in ec.baselines and not skipped), {family: {"chosen": params, "metric": primary,
        "grid": [{params..., metric values}]}}, {family: a function giving the chosen point's fit,
        the arrays of a models.bundle.BaselineBundle}: read only when that baseline is served).
    """
    context = spark.sparkContext
    grid: Points = ({}, {}, {})
    if COOCCURRENCE in ec.baselines:
        _add(grid, _cooccurrence_points(context, ec, train, num_items, allowed))
    if ALS in ec.baselines:
        _add(grid, _als_points(context, ec, train, num_items, allowed))
    ease = _ease_plan(ec, train, vocab, num_items) if EASE in ec.baselines else None
    if not grid[0] and (ease is None or not ease[2]):
        return {}, {}, {}

    results = _rank_on_validation(context, ec, ks, validation, vocab, num_items, allowed, grid, ease)
    return _choose(ec.primary_metric, ks, grid, results)


def _add(grid: Points, more: Points) -> None:
    """Add a family's grid points to ``grid`` (in place, after those already there)."""
    for into, found in zip(grid, more):
        into.update(found)


def _cooccurrence_points(context, ec: EvaluateConfig, train: DataFrame, num_items: int, allowed: np.ndarray) -> Points:
    """The co-occurrence grid: one similarity matrix per (window, similarity), broadcast once."""
    log.info("evaluate: counting co-occurrences within %s steps", ec.cooccurrence_windows)
    pairs = baselines.cooccurrence_pairs(train, ec.cooccurrence_windows).toPandas()
    matrices = {
        (window, similarity): baselines.similarity_matrix(pairs, window, similarity, num_items)
        for window in ec.cooccurrence_windows
        for similarity in ec.cooccurrence_similarities
    }
    matrices_bc = context.broadcast(matrices)
    candidates, points, fits = {}, {}, {}
    for params in baselines.grid(window=ec.cooccurrence_windows, decay=ec.cooccurrence_decays,
                                 similarity=ec.cooccurrence_similarities):
        label = baselines.grid_label(COOCCURRENCE, params)
        candidates[label] = functools.partial(
            _cooccurrence_ranker, matrices_bc, (params["window"], params["similarity"]), params["decay"], allowed
        )
        points[label] = (COOCCURRENCE, params)
        fits[label] = functools.partial(_similarity_arrays, matrices[(params["window"], params["similarity"])])
    return candidates, points, fits


def _als_points(context, ec: EvaluateConfig, train: DataFrame, num_items: int, allowed: np.ndarray) -> Points:
    """The ALS grid: every point fitted in Spark, the item factors broadcast once."""
    interactions = baselines.als_interactions(train).persist()
    als_grid = baselines.grid(rank=ec.als_ranks, reg_param=ec.als_reg_params, alpha=ec.als_alphas)
    factors = {}
    for i, params in enumerate(als_grid, start=1):
        label = baselines.grid_label(ALS, params)
        log.info("evaluate: fitting ALS %d/%d: %s", i, len(als_grid), label)
        factors[label] = baselines.fit_als(interactions, num_items, params["rank"], params["reg_param"],
                                           params["alpha"], ec.als_max_iter, ec.als_seed)
    interactions.unpersist()
    factors_bc = context.broadcast(factors)
    candidates, points, fits = {}, {}, {}
    for params in als_grid:
        label = baselines.grid_label(ALS, params)
        candidates[label] = functools.partial(
            _als_ranker, factors_bc, label, params["reg_param"], params["alpha"], allowed
        )
        points[label] = (ALS, params)
        fits[label] = functools.partial(dict, item_factors=factors[label])
    return candidates, points, fits


def _ease_plan(ec: EvaluateConfig, train: DataFrame, vocab: pd.DataFrame,
               num_items: int) -> tuple[np.ndarray, pd.DataFrame, list[list[dict[str, Any]]]] | None:
    """(the items EASE ranks, the entries of their X'X per decay, the grid in passes), or None
    when EASE is skipped (see baselines.ease_items)."""
    items = baselines.ease_items(vocab_column(vocab, schema.TRAIN_COUNT, num_items)[0], ec.ease_max_items)
    if items is None:
        return None
    log.info("evaluate: EASE: X'X of %d items for decays %s", len(items), ec.ease_decays)
    entries = baselines.ease_gram_entries(train, ease_columns(items, num_items), ec.ease_decays).toPandas()
    ease_grid = baselines.grid(**{"lambda": ec.ease_lambdas, "decay": ec.ease_decays})
    per_pass = max(1, ec.ease_max_items ** 2 // max(len(items), 1) ** 2)
    return items, entries, [ease_grid[i : i + per_pass] for i in range(0, len(ease_grid), per_pass)]


def _rank_on_validation(context, ec: EvaluateConfig, ks: Sequence[int], validation: DataFrame,
                        vocab: pd.DataFrame, num_items: int, allowed: np.ndarray, grid: Points,
                        ease) -> dict[str, dict[str, dict[str, float]]]:
    """Rank the validation users with every grid point: the others in the first pass, EASE's
    points in as many passes as ``ease`` (from :func:`_ease_plan`, or None) holds, each fitted
    just before its pass (added to ``grid``).

    Returns:
        {label: {"all": {metric: mean}}}, as :func:`average_metrics`.
    """
    candidates, points, fits = grid
    items, entries, ease_passes = ease if ease is not None else (None, None, [])
    stats = ItemStats.from_vocab(vocab, schema.TRAIN_COUNT, num_items, ec.head_share)
    rows = validation.where(F.size(schema.TARGET_ITEMS) > 0)
    primary = ec.primary_metric
    results: dict[str, dict[str, dict[str, float]]] = {}
    ease_bc: dict[str, Any] = {}
    for pass_no in range(max(1, len(ease_passes))):
        ranked = dict(candidates) if pass_no == 0 else {}
        for params in ease_passes[pass_no] if ease_passes else []:
            label = baselines.grid_label(EASE, params)
            log.info("evaluate: fitting EASE: %s", label)
            gram = baselines.gram_matrix(entries, ec.ease_decays.index(params["decay"]), len(items))
            ease_bc[label] = context.broadcast((items, baselines.fit_ease(gram, params["lambda"])))
            del gram
            ranked[label] = candidates[label] = functools.partial(_ease_ranker, ease_bc[label], params["decay"],
                                                                  allowed)
            points[label] = (EASE, params)
            fits[label] = functools.partial(_ease_arrays, ease_bc[label])
        log.info("evaluate: ranking validation users with %d baseline grid points", len(ranked))
        per_user = per_user_metrics(rows, ranked, ks, ec.block_size, stats, segments=False).persist()
        results.update(average_metrics(per_user, ks, catalogue_size=len(vocab)))
        per_user.unpersist()
        if not results:
            raise InputError("features/validation holds no user with a target item: cannot tune the baselines")
        if ease_bc:  # keep the weights of the best EASE point so far only (first wins ties: grid order)
            best = max(ease_bc, key=lambda label: results[label][ALL][primary])
            for label in [label for label in ease_bc if label != best]:
                ease_bc.pop(label).destroy()
    return results


def _choose(primary: str, ks: Sequence[int], grid: Points,
            results: dict[str, dict[str, dict[str, float]]]) -> tuple[dict[str, Builder], dict[str, Any],
                                                                      dict[str, Fit]]:
    """The best point of each family by ``primary`` (first wins ties: grid order): the builders,
    the report's tuning section and the fits, as :func:`tune_baselines` returns them."""
    candidates, points, fits = grid
    chosen: dict[str, Builder] = {}
    tuning: dict[str, Any] = {}
    fitted: dict[str, Fit] = {}
    for family in TUNED_BASELINES:
        labels = [label for label, (fam, _) in points.items() if fam == family]
        if not labels:
            continue
        grid_rows = [
            {**points[label][1], **{name: results[label][ALL][name] for name in headline_metrics(primary, ks)}}
            for label in labels
        ]
        best = max(labels, key=lambda label: results[label][ALL][primary])  # first wins ties: grid order
        chosen[family] = candidates[best]
        fitted[family] = fits[best]
        tuning[family] = {"chosen": points[best][1], "metric": primary, "split": "validation", "grid": grid_rows}
        log.info(
            "evaluate: %s tuned on validation: %s (%s %.4f)\n%s",
            family, points[best][1], primary, results[best][ALL][primary], grid_table(grid_rows, primary),
        )
    return chosen, tuning, fitted


# ----------------------------------------------------------------------------- rankers in Spark tasks


def _cooccurrence_ranker(matrices_bc, key, decay: float, present: np.ndarray) -> CooccurrenceRanker:
    return CooccurrenceRanker(matrices_bc.value[key], decay, torch.from_numpy(present))


def _als_ranker(factors_bc, label: str, reg_param: float, alpha: float, present: np.ndarray) -> AlsRanker:
    return AlsRanker(factors_bc.value[label], reg_param, alpha, torch.from_numpy(present))


def _ease_ranker(weights_bc, decay: float, present: np.ndarray) -> EaseRanker:
    items, weights = weights_bc.value
    return EaseRanker(items, weights, decay, len(present), torch.from_numpy(present))


# The fit of a chosen grid point as a BaselineBundle holds it (models.bundle.BaselineBundle.arrays).
def _similarity_arrays(matrix: SparseRows) -> dict[str, np.ndarray]:
    return {"indptr": matrix.indptr, "indices": matrix.indices, "data": matrix.data}


def _ease_arrays(weights_bc) -> dict[str, np.ndarray]:
    items, weights = weights_bc.value  # read back from the broadcast on the driver
    return {"items": items, "weights": weights}
