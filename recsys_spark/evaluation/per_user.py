"""Per-user metrics: every test (or validation) user's catalogue ranked by every ranker and
measured, overall and per segment (cold / warm users, head / tail targets, view / cart /
purchase targets); their means, the per-user values on the driver and their Parquet table, and
the bootstrap comparison of rankers on the same users.

Metric definitions: :mod:`recsys_spark.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark import io, schema
from recsys_spark.config import EvaluateConfig
from recsys_spark.evaluation.intervals import Interval, by_user, compare
from recsys_spark.metrics import (
    AUC,
    MRR,
    auc,
    batch_metrics,
    coverage_names,
    head_items,
    list_metric_names,
    list_metrics,
    metric_names,
    self_information,
)
from recsys_spark.models.rankers import Ranker, vocab_column
from recsys_spark.models.ranking import int_arrays
from recsys_spark.schema import EXCLUDE_ITEMS, NUM_TARGETS, RANKER, SEGMENT, TOP_ITEMS, USERS


# Rankers of the test comparison.
MODEL, CHAMPION, POPULARITY, COOCCURRENCE, ALS, EASE = "model", "champion", "popularity", "cooccurrence", "als", "ease"
# The baselines fitted on the training windows and tuned on validation (popularity is not).
TUNED_BASELINES = (COOCCURRENCE, ALS, EASE)

# Segments: every user; users by history size; targets by popularity and by strongest event.
ALL = "all"
COLD_USERS, WARM_USERS = "cold_users", "warm_users"
HEAD_TARGETS, TAIL_TARGETS = "head_targets", "tail_targets"
TARGET_EVENT_SEGMENTS = {
    "view_targets": (schema.EVENT_CODE["view"],),
    "cart_targets": (schema.EVENT_CODE["cart"], schema.EVENT_CODE["remove_from_cart"]),
    "purchase_targets": (schema.EVENT_CODE["purchase"],),
}
SEGMENTS = (ALL, COLD_USERS, WARM_USERS, HEAD_TARGETS, TAIL_TARGETS, *TARGET_EVENT_SEGMENTS)


def all_metric_names(ks: Sequence[int]) -> list[str]:
    """The per-user metrics: accuracy from the top K (metric_names), AUC from the whole ranking,
    then the list metrics (list_metric_names)."""
    return metric_names(ks) + [AUC] + list_metric_names(ks)


def headline_metrics(primary: str, ks: Sequence[int]) -> list[str]:
    """The metrics of the stage's summary and of a tuning grid's rows: the primary metric,
    then every metric at its K (the largest K for MRR and AUC), MRR and AUC."""
    _, _, k = primary.partition("@")
    k = int(k) if k else max(ks)
    names = [primary] + [f"{m}@{k}" for m in ("recall", "ndcg", "map", "hitrate", "precision", "f1", "coverage")]
    names += [MRR, AUC] + list_metric_names([k])
    return list(dict.fromkeys(names))


def per_user_schema(ks: Sequence[int]) -> T.StructType:
    """The per-user metrics table (schema.per_user_metrics_schema) with the metrics at ``ks``."""
    return schema.per_user_metrics_schema(all_metric_names(ks))


# ----------------------------------------------------------------------------- per item, per user


@dataclass(frozen=True)
class ItemStats:
    """What the list metrics and the head / tail segments need, per item index.

    Args:
        self_info: float64 [N], -log2 of the item's share of interactions before the cutoff.
        is_head: bool [N], head items (see metrics.head_items).
        categories: int64 [N], category_idx (0 = unknown, itself one category).
    """

    self_info: np.ndarray
    is_head: np.ndarray
    categories: np.ndarray

    @classmethod
    def from_vocab(cls, vocab: pd.DataFrame, count_column: str, num_items: int, head_share: float) -> "ItemStats":
        """Args: vocab rows of schema.ITEM_VOCAB_SCHEMA; count_column, the interactions before
        the evaluated split's cutoff (train_count for validation, pretest_count for test)."""
        counts, _ = vocab_column(vocab, count_column, num_items)
        categories, _ = vocab_column(vocab, schema.CATEGORY_IDX, num_items)
        return cls(self_information(counts), head_items(counts, head_share), categories)


def segments_of(
    targets: Sequence[np.ndarray],
    target_events: Sequence[np.ndarray],
    history_sizes: np.ndarray,
    is_head: np.ndarray,
    cold_user_threshold: int,
) -> dict[str, tuple[np.ndarray, list[np.ndarray]]]:
    """The users and targets of every segment.

    A user segment keeps its users with all their targets; a target segment keeps every user
    with at least one target of that kind, with only those targets (the others count as
    misses there, like any other item).

    Args:
        targets: B int arrays of target items (each non-empty).
        target_events: B int arrays, the strongest event code on each target.
        history_sizes: int [B], distinct items each user had before the cutoff.
        is_head: bool [N].
        cold_user_threshold: users with fewer items than this are cold.

    Returns:
        {segment: (row indices int [b], b target arrays)} for every name of SEGMENTS.
    """
    rows = np.arange(len(targets))
    out: dict[str, tuple[np.ndarray, list[np.ndarray]]] = {ALL: (rows, list(targets))}
    cold = np.asarray(history_sizes) < cold_user_threshold
    for name, mask in ((COLD_USERS, cold), (WARM_USERS, ~cold)):
        out[name] = (rows[mask], [targets[i] for i in rows[mask]])
    keeps = {
        HEAD_TARGETS: [is_head[t] for t in targets],
        TAIL_TARGETS: [~is_head[t] for t in targets],
        **{
            name: [np.isin(np.asarray(e), codes) for e in target_events]
            for name, codes in TARGET_EVENT_SEGMENTS.items()
        },
    }
    for name, masks in keeps.items():
        chosen = [i for i in rows if masks[i].any()]
        out[name] = (np.asarray(chosen, dtype=np.int64), [targets[i][masks[i]] for i in chosen])
    return out


def segment_ranks(targets: Sequence[np.ndarray], ranks: Sequence[np.ndarray], index: np.ndarray,
                  segment_targets: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The ranks of a segment's targets (see :func:`segments_of`): row ``index[j]`` keeps the
    ranks of its targets that are in ``segment_targets[j]``, a subset of ``targets[index[j]]``.

    Args:
        targets: B int arrays, every row's targets; ranks: B float arrays, their ranks.
        index: int [b], the segment's rows; segment_targets: b int arrays.

    Returns:
        b float arrays.
    """
    out = []
    for row, kept in zip(index, segment_targets):
        whole = len(kept) == len(targets[row])  # a subset as large as the set is the set
        out.append(ranks[row] if whole else ranks[row][np.isin(targets[row], kept)])
    return out


def per_user_metrics(
    rows: DataFrame,
    rankers: Mapping[str, Callable[[], Ranker]],
    ks: Sequence[int],
    block_size: int,
    stats: ItemStats,
    cold_user_threshold: int = 0,
    segments: bool = True,
) -> DataFrame:
    """Rank every row's catalogue with every ranker and measure it, overall and per segment:
    the top-K metrics from each top K, AUC from where the targets stand in the same scores.

    Args:
        rows: schema.EVAL_SCHEMA rows, each with at least one target item, optionally with an
            ``exclude_items`` int array column (what to leave out instead of seen_items).
        rankers: name -> a function that builds the ranker; called once per Spark task, so
            it should read large state (weights, item vectors) from broadcast variables.
        ks: cut-offs; the top max(ks) items are ranked.
        block_size: users scored at once inside a task.
        stats: per-item statistics for the list metrics and the head / tail segments.
        cold_user_threshold: see :func:`segments_of`.
        segments: measure every segment (else only ``all``).

    Returns:
        one row per (ranker, segment, user): ranker, segment, user_id, num_targets, every
        metric of all_metric_names(ks) and top_items (segment ``all`` only: the max(ks) ranked
        item indices, -1 in empty slots; empty elsewhere).
    """
    k_max = max(ks)
    accuracy_names = metric_names(ks) + [AUC]
    has_exclude = EXCLUDE_ITEMS in rows.columns

    def measure(batches):
        built = {name: make() for name, make in rankers.items()}
        for batch in batches:
            if batch.empty:
                continue
            targets = int_arrays(batch[schema.TARGET_ITEMS])
            parts = segments_of(
                targets,
                int_arrays(batch[schema.TARGET_EVENTS]),
                np.fromiter((len(s) for s in int_arrays(batch[schema.SEEN_ITEMS])), dtype=np.int64, count=len(batch)),
                stats.is_head,
                cold_user_threshold,
            )
            if not segments:
                parts = {ALL: parts[ALL]}
            exclude = int_arrays(batch[EXCLUDE_ITEMS]) if has_exclude else None
            users = batch[schema.USER_ID].to_numpy()
            for name, ranker in built.items():
                top, ranks, eligible = ranker.rank_targets(batch, k_max, targets, block_size, exclude)
                lists = list_metrics(top, ks, stats.self_info, stats.is_head, stats.categories)
                for segment, (index, segment_targets) in parts.items():
                    if len(index) == 0:
                        continue
                    values = batch_metrics(top[index], segment_targets, ks)
                    values[AUC] = auc(segment_ranks(targets, ranks, index, segment_targets), eligible[index])
                    yield pd.DataFrame(
                        {
                            RANKER: name,
                            SEGMENT: segment,
                            schema.USER_ID: users[index],
                            NUM_TARGETS: np.fromiter((len(t) for t in segment_targets), np.int32, len(index)),
                            **{metric: values[metric] for metric in accuracy_names},
                            **{metric: column[index] for metric, column in lists.items()},
                            TOP_ITEMS: top[index].tolist() if segment == ALL else [[] for _ in index],
                        }
                    )

    return rows.mapInPandas(measure, per_user_schema(ks))


def average_metrics(per_user: DataFrame, ks: Sequence[int], catalogue_size: int) -> dict[str, dict[str, dict[str, float]]]:
    """Average the per-user metrics of each ranker and segment; measure catalogue coverage.

    Args:
        per_user: the output of :func:`per_user_metrics` (read twice: persist it first).
        ks: the cut-offs it was computed with.
        catalogue_size: items that could be recommended (the vocabulary's size).

    Returns:
        {ranker: {segment: {"users": n, metric: mean over its users}}}; segment ``all`` also
        holds "coverage@K": distinct items in any top K / catalogue_size.
    """
    names = all_metric_names(ks)
    means = per_user.groupBy(RANKER, SEGMENT).agg(
        F.count(F.lit(1)).alias(USERS), *[F.avg(F.col(f"`{name}`")).alias(name) for name in names]
    )
    position, item = "position", "item"
    ranked = (
        per_user.where(F.col(SEGMENT) == ALL)
        .select(RANKER, F.posexplode(TOP_ITEMS).alias(position, item))
        .where(F.col(item) >= schema.FIRST_ITEM_INDEX)
    )
    distinct = ranked.groupBy(RANKER).agg(
        *[F.countDistinct(F.when(F.col(position) < k, F.col(item))).alias(f"distinct@{k}") for k in sorted(ks)]
    )
    out: dict[str, dict[str, dict[str, float]]] = {}
    for row in means.collect():
        values = {USERS: int(row[USERS]), **{name: float(row[name]) for name in names}}
        out.setdefault(row[RANKER], {})[row[SEGMENT]] = values
    for ranker in out:
        if ALL in out[ranker]:
            out[ranker][ALL].update({name: 0.0 for name in coverage_names(ks)})
    for row in distinct.collect():
        for k, name in zip(sorted(ks), coverage_names(ks)):
            out[row[RANKER]][ALL][name] = row[f"distinct@{k}"] / catalogue_size if catalogue_size else 0.0
    return out


def per_user_values(per_user: DataFrame, names: Sequence[str]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The per-user values of segment ``all`` on the driver: only these columns, as numpy.

    Args:
        per_user: the output of :func:`per_user_metrics` (persist it first).
        names: the metric columns to collect (of all_metric_names(ks)).

    Returns:
        (user ids [U] sorted, ranker names [R] sorted, float64 [U, R, M] in the order of
        ``names``, NaN where a ranker has no row for a user); see intervals.by_user.
    """
    frame = (
        per_user.where(F.col(SEGMENT) == ALL)
        .select(RANKER, schema.USER_ID, *[F.col(f"`{name}`") for name in names])
        .toPandas()
    )
    return by_user(frame[schema.USER_ID].to_numpy(), frame[RANKER].to_numpy(),
                     frame[list(names)].to_numpy(dtype=np.float64).reshape(len(frame), len(names)))


def write_per_user(spark: SparkSession, path: str, users: np.ndarray, rankers: Sequence[str], values: np.ndarray,
                   names: Sequence[str]) -> None:
    """Write the per-user values behind the report (:func:`per_user_values`' output) as Parquet.

    Args:
        path: the table's folder (replaced).
        users: [U] user ids; rankers: [R] names; values: float [U, R, M] (NaN: no row), M = names.
    """
    rows = [
        pd.DataFrame({schema.USER_ID: users, RANKER: ranker, **{name: values[:, r, m] for m, name in enumerate(names)}})
        .dropna(subset=list(names), how="all")
        for r, ranker in enumerate(rankers)
    ]
    frame = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=[schema.USER_ID, RANKER, *names])
    io.write_table(spark.createDataFrame(frame.astype({schema.USER_ID: str})).coalesce(1), path)


# ----------------------------------------------------------------------------- rankers compared


def pair_name(a: str, b: str) -> str:
    """The name of the paired comparison a - b in the report and MLflow: ``model_vs_als``."""
    return f"{a}_vs_{b}"


def compare_rankers(
    values: np.ndarray, rankers: Sequence[str], ks: Sequence[int], primary: str, ec: EvaluateConfig
) -> tuple[dict[str, dict[str, Interval]], dict[str, dict[str, Interval]]]:
    """Every per-user metric of every ranker with its bootstrap interval, and the paired
    differences model - champion and model - each baseline, all from the same resamples.

    Args:
        values: float [U, R, M] from :func:`per_user_values` with M = all_metric_names(ks).
        rankers: the R ranker names of axis 1.
        ks, primary: the cut-offs and the primary metric; the pairs are compared on the
            headline metrics that are means over users (coverage@K is not).
        ec: bootstrap_samples, bootstrap_seed, confidence.

    Returns:
        ({ranker: {metric: Interval}}, {"model_vs_<other>": {metric: Interval}}), the champion
        first among the others.
    """
    names = all_metric_names(ks)
    paired_metrics = [name for name in headline_metrics(primary, ks) if name in names]
    others = sorted((r for r in rankers if r != MODEL), key=lambda r: (r != CHAMPION, r))
    pairs = [(MODEL, other) for other in others] if MODEL in rankers else []
    singles, paired = compare(values, rankers, names, pairs, paired_metrics,
                                ec.bootstrap_samples, ec.bootstrap_seed, ec.confidence)
    return singles, {pair_name(a, b): found for (a, b), found in paired.items()}


def paired_primary(values: np.ndarray, rankers: Sequence[str], a: str, b: str, ks: Sequence[int],
                   ec: EvaluateConfig) -> Interval | None:
    """a - b on ``evaluate.primary_metric``, paired per user, from the resamples of
    :func:`compare_rankers` (the same users and seed draw the same ones).

    Args:
        values: float [U, R, M] from :func:`per_user_values` with M = all_metric_names(ks).
        rankers: the R ranker names of axis 1.

    Returns:
        the Interval, or None when a or b was not ranked or the primary metric is no mean over
        users (coverage@K).
    """
    names, primary = all_metric_names(ks), ec.primary_metric
    if a not in rankers or b not in rankers or primary not in names:
        return None
    column = values[:, :, [names.index(primary)]]
    _, paired = compare(column, rankers, [primary], [(a, b)], [primary], ec.bootstrap_samples, ec.bootstrap_seed,
                        ec.confidence)
    return paired[(a, b)][primary]
