"""The ``evaluate`` stage: full-ranking metrics of the registered model against baselines, and
the registry gate.

1. The baselines (co-occurrence and implicit ALS; see :mod:`~recsys_spark.evaluation.baselines`)
   are fitted on the training windows, every point of their small grids is ranked on the
   *validation* users, and the best point of each by ``evaluate.primary_metric`` is kept.
2. On the *test* users, the challenger (``evaluate.model_alias``), the current champion
   (``evaluate.champion_alias``, when another version holds it), popularity and the tuned
   baselines each rank the whole catalogue inside Spark tasks (never sampled), with each
   user's already-seen items excluded; per-user metrics are averaged in Spark, overall and per
   segment (cold / warm users, head / tail, view / cart / purchase targets).
3. The gate (:func:`recsys_spark.models.registry.decide`) compares challenger and champion on
   that same data and moves the champion alias or not; the decision and its reasons go to the
   log, the report, the MLflow run and the challenger's model version tags. The challenger is
   the model, unless the best tuned baseline beats it on the *validation* users (paired, upper
   bound of model - baseline below 0; :func:`choose_on_validation`) under ``score.ranker=auto``:
   then that baseline, as fitted and tuned, is registered as a version of its own
   (:class:`~recsys_spark.models.bundle.BaselineBundle`, the same pyfunc) and gated in its place.
4. The report: ``evaluation.json`` and ``evaluation.html`` under ``paths.reports``, both logged
   to the MLflow run with the headline metrics.
5. Off-policy: with ``paths.clean_feedback``, the challenger under ``cfg.score`` is valued on the
   last ``evaluate.ope_days`` logged run dates (:mod:`~recsys_spark.evaluation.offpolicy`;
   report key "off_policy", MLflow ``ope.<estimator>.clicks_per_list`` / ``.low`` / ``.high`` / ``.ess``).

Metric definitions: :mod:`recsys_spark.metrics`.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark import io, product_ids, tracking
from recsys_spark import schema
from recsys_spark.config import Config, EvaluateConfig
from recsys_spark.errors import InputError
from recsys_spark.evaluation import baselines, offpolicy
from recsys_spark.evaluation.intervals import Interval, as_bounds, as_differences, by_user, compare
from recsys_spark.evaluation.report import DEFINITIONS, SPLITS, figures, grid_table, render_html
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
from recsys_spark.models import bundle as bundles
from recsys_spark.models.rankers import (
    AlsRanker,
    CooccurrenceRanker,
    EaseRanker,
    ModelRanker,
    PopularityRanker,
    Ranker,
    SparseRows,
    ease_columns,
    vocab_column,
)
from recsys_spark.models.bundle import BaselineBundle, ModelBundle, ranker_label
from recsys_spark.models.ranking import int_arrays
from recsys_spark.features.split import before

log = logging.getLogger(__name__)

# Columns of the per-user metrics table (metric columns are named as all_metric_names(ks)).
RANKER = "ranker"
SEGMENT = "segment"
NUM_TARGETS = "num_targets"
TOP_ITEMS = "top_items"
EXCLUDE_ITEMS = "exclude_items"
USERS = "users"
REPORT_FILE = "evaluation.json"
HTML_FILE = "evaluation.html"
# Under paths.reports: each test user's metrics per ranker (user_id, ranker, one column per metric),
# the values behind the report's means and intervals, for pairing two runs on the same users.
PER_USER_TABLE = "per_user_metrics"

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


def mlflow_key(name: str) -> str:
    """MLflow metric and tag names may not hold '@': ``model.ndcg@10`` -> ``model.ndcg_at_10``."""
    return name.replace("@", "_at_")


def per_user_schema(ks: Sequence[int]) -> T.StructType:
    return T.StructType(
        [
            T.StructField(RANKER, T.StringType(), False),
            T.StructField(SEGMENT, T.StringType(), False),
            T.StructField(schema.USER_ID, T.StringType(), False),
            T.StructField(NUM_TARGETS, T.IntegerType(), False),
            *[T.StructField(name, T.DoubleType(), False) for name in all_metric_names(ks)],
            T.StructField(TOP_ITEMS, T.ArrayType(T.IntegerType(), False), False),
        ]
    )


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


def choose_on_validation(validation: DataFrame, model: Callable[[], Ranker], tuned: Mapping[str, Callable[[], Ranker]],
                         ks: Sequence[int], stats: ItemStats, ec: EvaluateConfig, mode: str):
    """What the gate weighs against the champion (see registry.choose_ranker), decided on the
    validation users, never on test: the model and every tuned baseline rank them, the baseline
    with the best mean of the primary metric is the one to beat, and model - it is paired per
    user with its bootstrap interval, as on test.

    Args:
        validation: schema.EVAL_SCHEMA rows as the baselines were tuned on (with exclude_items
            when evaluate.exclude_seen_event_types asks for them).
        model, tuned: builders of the model's ranker and of each tuned baseline's ({family: builder}).
        stats: the list metrics' item statistics before the validation cutoff.
        mode: score.ranker.

    Returns:
        registry.RankerChoice.
    """
    # Here, not at the top: the registry brings mlflow (2 s), kept out of the Spark executors that import this module.
    from recsys_spark.models import registry

    primary = ec.primary_metric
    if not tuned or primary not in all_metric_names(ks):  # coverage@K: no per-user values to pair
        return registry.choose_ranker(None, None, mode, ec.confidence)
    rows = validation.where(F.size(schema.TARGET_ITEMS) > 0)
    log.info("evaluate: ranking validation users with the model and the tuned %s", ", ".join(tuned))
    per_user = per_user_metrics(rows, {MODEL: model, **tuned}, ks, ec.block_size, stats, segments=False).persist()
    _, names, values = per_user_values(per_user, [primary])
    per_user.unpersist()
    singles, paired = compare(values, names, [primary], [(MODEL, family) for family in tuned], [primary],
                              ec.bootstrap_samples, ec.bootstrap_seed, ec.confidence)
    best = max(tuned, key=lambda family: singles[family][primary].mean)  # first wins ties: TUNED_BASELINES order
    choice = registry.choose_ranker(best, paired[(MODEL, best)][primary], mode, ec.confidence)
    log.info("evaluate: %s", choice.reason)
    return choice


def validation_metrics(choice, primary: str) -> dict[str, float]:
    """A served baseline's bundle metrics: model - it on validation (``validation.model_vs_<family>.<primary>``
    and its ``.low``, ``.high``, ``.users``), what it was served for."""
    key = mlflow_key(f"validation.{pair_name(MODEL, choice.baseline)}.{primary}")
    diff, low, high, users = choice.difference
    return {key: diff, f"{key}.low": low, f"{key}.high": high, f"{key}.users": users}


def serving_line(decision, choice, champion_ranker: str | None, champion_alias: str) -> str:
    """The run summary's answer to "which ranker is served now, and why".

    Args:
        decision: the gate's registry.GateDecision on the challenger (its own reasons only).
        choice: the registry.RankerChoice that made the challenger the model or a baseline.
        champion_ranker: what the champion it was compared with is ("model", "ease", ...), or None.
        champion_alias: the serving alias.
    """
    if decision.promote:
        why = choice.reason or "no tuned baseline was ranked on validation"
        return f"{ranker_label(choice.ranker)}, version {decision.challenger_version}: {why}"
    if decision.champion_version is None:
        return f"nothing (no version holds @{champion_alias}): {decision.reasons[0]}"
    kept = ranker_label(champion_ranker) if champion_ranker else "the champion"
    return f"{kept}, version {decision.champion_version} (@{champion_alias}, kept): {decision.reasons[0]}"


def excluded_items(events: DataFrame, item_vocab: DataFrame, cutoff: dt.datetime | Column,
                   event_types: Sequence[str]) -> DataFrame:
    """Per user, the vocabulary items they had one of ``event_types`` on before ``cutoff``.

    Args:
        events: clean events (schema.CLEAN_SCHEMA), with the cutoff column when it is one.
        item_vocab: schema.ITEM_VOCAB_SCHEMA (small, broadcast).
        cutoff: aware datetime, or a timestamp column (each user's); events strictly before it count.
        event_types: e.g. ["purchase"].

    Returns:
        user_id, exclude_items (sorted distinct item_idx).
    """
    index = F.broadcast(item_vocab.select(schema.PRODUCT_ID, schema.ITEM_IDX))
    return (
        events.where(before(F.col(schema.EVENT_TIME), cutoff) & F.col(schema.EVENT_TYPE).isin(list(event_types)))
        .join(index, schema.PRODUCT_ID)
        .groupBy(schema.USER_ID)
        .agg(F.array_sort(F.collect_set(F.col(schema.ITEM_IDX).cast("int"))).alias(EXCLUDE_ITEMS))
    )


def with_exclusions(rows: DataFrame, excluded: DataFrame | None) -> DataFrame:
    """``rows`` with an ``exclude_items`` column (empty for users without any), or unchanged
    when ``excluded`` is None (seen_items are excluded)."""
    if excluded is None:
        return rows
    empty = F.array().cast(T.ArrayType(T.IntegerType()))
    joined = rows.join(excluded, schema.USER_ID, "left")
    return joined.withColumn(EXCLUDE_ITEMS, F.coalesce(F.col(EXCLUDE_ITEMS), empty))


# ----------------------------------------------------------------------------- the stage


def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Tune the baselines on validation, compare model, champion and baselines on test, run
    the registry gate and write the report.

    Every per-user metric of every ranker gets a bootstrap interval over the test users, and
    the model is compared with the champion and each baseline by paired differences (see
    :func:`compare_rankers`); the gate reads the lower bound of challenger - champion, the
    challenger being the model or the tuned baseline that beat it on validation.

    Returns:
        a flat summary: model_version, ``<ranker>.<metric>`` for every ranker and the metrics
        at the primary metric's K (e.g. ``model.ndcg@20``, ``als.recall@20``; every K is in
        the report and MLflow), ``<ranker>.<primary>.interval`` and ``model_vs_<other>.<primary>``
        (e.g. ``"+0.0123 [+0.0040, +0.0200] (1,168 users)"``), the gate's verdict, the champion's
        version, ``serving`` (which ranker holds the champion alias now, and why), users,
        users_evaluated, the report paths.
    """
    # Here, not at the top: mlflow (2 s), which the registry brings too, stays out of the Spark
    # executors that import this module.
    import mlflow

    from recsys_spark.models import registry

    ec = cfg.evaluate
    ks = sorted(set(ec.ks))
    root = cfg.paths.resolve("features")
    metadata = io.read_feature_metadata(spark, root)
    num_items = int(metadata["num_items"])
    vocab_df = io.read_features(spark, root, "item_vocab")
    vocab = vocab_df.toPandas()
    test = io.read_features(spark, root, "test")
    _, present = vocab_column(vocab, schema.PRETEST_COUNT, num_items)

    bundle, version = registry.load_bundle(cfg, alias=ec.model_alias)
    if not isinstance(bundle, ModelBundle):
        raise InputError(f"evaluate.model_alias={ec.model_alias!r} names version {version}, a tuned baseline the gate "
                         "registered, not a trained model: point it at a version `recsys train` registered")
    check_same_vocabulary(bundle, vocab, num_items, version)
    champion_bundle, champion_version, champion_note = _champion(cfg, ec, version, vocab, num_items)

    context = spark.sparkContext
    rankers: dict[str, Callable[[], Ranker]] = {MODEL: _broadcast_model(context, bundle)}
    if champion_bundle is not None:
        rankers[CHAMPION] = _broadcast_model(context, champion_bundle)
    if POPULARITY in ec.baselines:
        rankers[POPULARITY] = functools.partial(_popularity_ranker, vocab_column(vocab, schema.PRETEST_COUNT, num_items)[0], present)

    with tracking.stage_run(cfg, "evaluate") as active:
        tuning: dict[str, Any] = {}
        choice = registry.choose_ranker(None, None, cfg.score.ranker)
        if set(TUNED_BASELINES) & set(ec.baselines):
            validation = with_exclusions(io.read_features(spark, root, "validation"),
                                         _exclusions(spark, cfg, vocab_df, schema.VALIDATION_AT))
            train = io.read_features(spark, root, "train")
            tuned, tuning, fitted = tune_baselines(spark, ec, ks, train, validation, vocab, num_items, present)
            rankers.update(tuned)
            choice = choose_on_validation(validation, rankers[MODEL], tuned, ks,
                                          ItemStats.from_vocab(vocab, schema.TRAIN_COUNT, num_items, ec.head_share), ec,
                                          cfg.score.ranker)

        stats = ItemStats.from_vocab(vocab, schema.PRETEST_COUNT, num_items, ec.head_share)
        excluded = _exclusions(spark, cfg, vocab_df, schema.TEST_AT)
        users_total = test.count()
        log.info("evaluate: ranking %d test users with %s", users_total, ", ".join(rankers))
        rows = with_exclusions(test.where(F.size(schema.TARGET_ITEMS) > 0), excluded)
        per_user = per_user_metrics(rows, rankers, ks, ec.block_size, stats, ec.cold_user_threshold).persist()
        results = average_metrics(per_user, ks, catalogue_size=len(vocab))
        user_ids, ranker_names, user_values = per_user_values(per_user, all_metric_names(ks))
        per_user.unpersist()
        if MODEL not in results:
            raise InputError(f"{io.feature_path(root, 'test')} holds no user with a target item")

        primary = ec.primary_metric
        intervals, paired = compare_rankers(user_values, ranker_names, ks, primary, ec)
        log.info("evaluate: %.0f%% bootstrap intervals over %d users (%d resamples)",
                 100 * ec.confidence, user_values.shape[0], ec.bootstrap_samples)
        # The challenger is the model, or the tuned baseline that beat it on validation, registered
        # now (its fit and settings as tuned) so that the gate, score and lineage treat it as a version.
        candidate, candidate_version = choice.ranker, version
        if candidate != MODEL:
            served = BaselineBundle(candidate, tuning[candidate]["chosen"], fitted[candidate](), vocab,
                                    {"num_items": num_items, "max_seq_len": int(metadata["max_seq_len"])},
                                    cfg.to_dict(), validation_metrics(choice, primary))
            candidate_version = registry.register_baseline(cfg, served, choice.reason, version, active.info.run_id,
                                                           cfg.score.top_k)
            log.info("evaluate: registered %s as version %s", ranker_label(candidate), candidate_version)
        decision = registry.decide(
            challenger_version=candidate_version,
            challenger=results[candidate][ALL],
            champion_version=champion_version,
            champion=results.get(CHAMPION, {}).get(ALL),
            primary_metric=primary,
            coverage_metric=gate_coverage_metric(primary, ks),
            min_improvement=ec.gate_min_improvement,
            max_coverage_loss=ec.gate_max_coverage_loss,
            promotion=ec.promotion,
            champion_note=champion_note,
            difference=(paired.get(pair_name(MODEL, CHAMPION), {}).get(primary) if candidate == MODEL
                        else paired_primary(user_values, ranker_names, candidate, CHAMPION, ks, ec)),
            confidence=ec.confidence,
        )
        serving = serving_line(decision, choice, champion_bundle.ranker_name if champion_bundle else None,
                               ec.champion_alias)
        if choice.reason:  # first when it decided that a baseline is the challenger, else last
            reasons = (choice.reason, *decision.reasons) if candidate != MODEL else (*decision.reasons, choice.reason)
            decision = replace(decision, reasons=reasons)
        log.info("evaluate: gate %s version %s: %s", decision.verdict, candidate_version, "; ".join(decision.reasons))

        report = {
            "registered_model": cfg.mlflow.registered_model,
            "model_alias": ec.model_alias,
            "model_version": version,
            "champion_alias": ec.champion_alias,
            "champion_version": champion_version,
            "ks": ks,
            "primary_metric": primary,
            "protocol": metadata.get("protocol", "temporal"),
            "protocol_reason": metadata.get("protocol_reason", ""),
            "users": users_total,
            "users_with_targets": results[MODEL][ALL][USERS],
            "users_evaluated": int(user_values.shape[0]),
            "catalogue_size": len(vocab),
            "head_items": int(stats.is_head.sum()),
            "definitions": DEFINITIONS | {
                "split": SPLITS.get(metadata.get("protocol", "temporal"), ""),
                "head": f"the most popular items that make up {ec.head_share:.0%} of interactions before the cutoff",
                "cold_users": f"fewer than {ec.cold_user_threshold} distinct items before the cutoff",
                "excluded": f"items the user had {'/'.join(ec.exclude_seen_event_types) or 'no'} events on",
                "intervals": f"{ec.confidence:.0%} percentile bootstrap over the test users ({ec.bootstrap_samples} "
                             f"resamples, seed {ec.bootstrap_seed}); coverage@K has none",
            },
            "rankers": {ranker: values[ALL] for ranker, values in results.items()},
            "segments": results,
            "baselines": tuning,
            "bootstrap": {"samples": ec.bootstrap_samples, "seed": ec.bootstrap_seed, "confidence": ec.confidence},
            "intervals": as_bounds(intervals),
            "paired": as_differences(paired),
            "gate": decision.as_dict(),
            "ranker_choice": {**choice.as_dict(), "version": candidate_version},
            "serving": serving,
            "mlflow_run_id": active.info.run_id,
            "off_policy": off_policy(spark, cfg, bundle, vocab, version),
        }
        _log_to_mlflow(report, decision, ks)
        reports = cfg.paths.resolve("reports").rstrip("/")
        report_path, html_path = f"{reports}/{REPORT_FILE}", f"{reports}/{HTML_FILE}"
        html = render_html(report)
        io.write_json(spark, report_path, report)
        io.write_text(spark, html_path, html)
        write_per_user(spark, f"{reports}/{PER_USER_TABLE}", user_ids, ranker_names, user_values, all_metric_names(ks))
        mlflow.log_text(html, HTML_FILE)
        registry.apply_decision(cfg, decision, ec.champion_alias, active.info.run_id)
        _tag_model_version(cfg, version, results[MODEL][ALL], results, primary, active.info.run_id,
                           intervals, paired)
        if candidate != MODEL:  # the model was not gated: the baseline went in its place, and says so
            registry.apply_decision(cfg, registry.GateDecision(False, (choice.reason,), version, champion_version),
                                    ec.champion_alias, active.info.run_id)
            _tag_model_version(cfg, candidate_version, results[candidate][ALL], results, primary, active.info.run_id,
                               intervals, ranker=candidate)

    log.info(
        "evaluate: model version %s on %d users\n%s\ngate: %s (%s)\nserving: %s",
        version, report["users_with_targets"], table(report["rankers"], ks, intervals, primary), decision.verdict,
        "; ".join(decision.reasons), serving,
    )
    summary: dict[str, Any] = {"model_version": version, "protocol": report["protocol"]}
    for ranker, metrics in report["rankers"].items():
        for name in headline_metrics(primary, ks):
            summary[f"{ranker}.{name}"] = metrics[name]
        if primary in intervals.get(ranker, {}):
            summary[f"{ranker}.{primary}.interval"] = intervals[ranker][primary].describe()
    for pair, differences in paired.items():
        if primary in differences:
            summary[f"{pair}.{primary}"] = differences[primary].describe(signed=True)
    summary.update(
        {
            "gate": decision.verdict,
            "champion_version": candidate_version if decision.promote else champion_version,
            "serving": serving,
            "users": report["users_with_targets"],
            "users_evaluated": report["users_evaluated"],
            "report": report_path,
            "html_report": html_path,
        }
    )
    return summary


def tune_baselines(
    spark: SparkSession,
    ec: EvaluateConfig,
    ks: Sequence[int],
    train: DataFrame,
    validation: DataFrame,
    vocab: pd.DataFrame,
    num_items: int,
    allowed: np.ndarray,
) -> tuple[dict[str, Callable[[], Ranker]], dict[str, Any], dict[str, Callable[[], dict[str, np.ndarray]]]]:
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
    candidates: dict[str, Callable[[], Ranker]] = {}
    points: dict[str, tuple[str, dict[str, Any]]] = {}
    fits: dict[str, Callable[[], dict[str, np.ndarray]]] = {}

    if COOCCURRENCE in ec.baselines:
        log.info("evaluate: counting co-occurrences within %s steps", ec.cooccurrence_windows)
        pairs = baselines.cooccurrence_pairs(train, ec.cooccurrence_windows).toPandas()
        matrices = {
            (window, similarity): baselines.similarity_matrix(pairs, window, similarity, num_items)
            for window in ec.cooccurrence_windows
            for similarity in ec.cooccurrence_similarities
        }
        matrices_bc = context.broadcast(matrices)
        for params in baselines.grid(window=ec.cooccurrence_windows, decay=ec.cooccurrence_decays,
                             similarity=ec.cooccurrence_similarities):
            label = baselines.grid_label(COOCCURRENCE, params)
            candidates[label] = functools.partial(
                _cooccurrence_ranker, matrices_bc, (params["window"], params["similarity"]), params["decay"], allowed
            )
            points[label] = (COOCCURRENCE, params)
            fits[label] = functools.partial(_similarity_arrays, matrices[(params["window"], params["similarity"])])

    if ALS in ec.baselines:
        interactions = baselines.als_interactions(train).persist()
        als_grid = baselines.grid(rank=ec.als_ranks, reg_param=ec.als_reg_params, alpha=ec.als_alphas)
        factors = {}
        for i, params in enumerate(als_grid, start=1):
            label = baselines.grid_label(ALS, params)
            log.info("evaluate: fitting ALS %d/%d: %s", i, len(als_grid), label)
            factors[label] = baselines.fit_als(interactions, num_items, params["rank"], params["reg_param"], params["alpha"],
                                       ec.als_max_iter, ec.als_seed)
        interactions.unpersist()
        factors_bc = context.broadcast(factors)
        for params in als_grid:
            label = baselines.grid_label(ALS, params)
            candidates[label] = functools.partial(
                _als_ranker, factors_bc, label, params["reg_param"], params["alpha"], allowed
            )
            points[label] = (ALS, params)
            fits[label] = functools.partial(dict, item_factors=factors[label])

    ease_passes: list[list[dict[str, Any]]] = []
    if EASE in ec.baselines:
        items = baselines.ease_items(vocab_column(vocab, schema.TRAIN_COUNT, num_items)[0], ec.ease_max_items)
        if items is not None:
            log.info("evaluate: EASE: X'X of %d items for decays %s", len(items), ec.ease_decays)
            entries = baselines.ease_gram_entries(train, ease_columns(items, num_items), ec.ease_decays).toPandas()
            ease_grid = baselines.grid(**{"lambda": ec.ease_lambdas, "decay": ec.ease_decays})
            per_pass = max(1, ec.ease_max_items ** 2 // max(len(items), 1) ** 2)
            ease_passes = [ease_grid[i : i + per_pass] for i in range(0, len(ease_grid), per_pass)]
    if not candidates and not ease_passes:
        return {}, {}, {}

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

    chosen: dict[str, Callable[[], Ranker]] = {}
    tuning: dict[str, Any] = {}
    fitted: dict[str, Callable[[], dict[str, np.ndarray]]] = {}
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


def headline_metrics(primary: str, ks: Sequence[int]) -> list[str]:
    """The metrics of the stage's summary and of a tuning grid's rows: the primary metric,
    then every metric at its K (the largest K for MRR and AUC), MRR and AUC."""
    _, _, k = primary.partition("@")
    k = int(k) if k else max(ks)
    names = [primary] + [f"{m}@{k}" for m in ("recall", "ndcg", "map", "hitrate", "precision", "f1", "coverage")]
    names += [MRR, AUC] + list_metric_names([k])
    return list(dict.fromkeys(names))


def gate_coverage_metric(primary: str, ks: Sequence[int]) -> str:
    """coverage@K for the primary metric's K (the largest K for MRR)."""
    _, _, k = primary.partition("@")
    return f"coverage@{k}" if k else f"coverage@{max(ks)}"


def check_same_vocabulary(bundle, vocab: pd.DataFrame, num_items: int, version: str) -> None:
    """Raise InputError unless the model was trained on the item vocabulary of ``paths.features``."""
    features_ids = np.full(num_items, -1, dtype=np.int64)
    features_ids[vocab[schema.ITEM_IDX].to_numpy(dtype=np.int64)] = vocab[schema.PRODUCT_ID].to_numpy()
    if bundle.model_args["num_items"] != num_items or not np.array_equal(bundle.product_ids(), features_ids):
        raise InputError(
            f"model version {version} was trained on another item vocabulary than paths.features "
            f"({bundle.model_args['num_items']} vs {num_items} item indices); re-run `recsys train`"
        )


def off_policy(spark: SparkSession, cfg: Config, bundle, vocab: pd.DataFrame, version: str) -> dict[str, Any]:
    """The report's "off_policy" section: the challenger under ``cfg.score`` valued on the last
    ``evaluate.ope_days`` run dates of ``paths.clean_feedback`` (see
    :func:`recsys_spark.evaluation.offpolicy.evaluate_target`), or one line saying there is none."""
    path = cfg.paths.resolve("clean_feedback")
    id_type = cfg.clean.id_types[schema.PRODUCT_ID]
    feedback = io.read_clean_feedback(spark, path, id_type)
    if feedback is not None and product_ids.is_string(id_type):  # the shop's ids -> the keys inside
        feedback = feedback.withColumn(schema.ITEM_ID, product_ids.keys(F.col(schema.ITEM_ID), id_type))
    if feedback is None or feedback.isEmpty():
        log.info("evaluate: no clean feedback at %s: off-policy evaluation skipped", path)
        return offpolicy.no_feedback(path)
    days = cfg.evaluate.ope_days
    if days:
        dates = [r[0] for r in feedback.select(schema.RUN_DATE).distinct().orderBy(F.desc(schema.RUN_DATE)).limit(days)
                 .collect()]
        feedback = feedback.where(F.col(schema.RUN_DATE).isin(dates))
    section = offpolicy.evaluate_target(spark, cfg, bundle, feedback, vocab, version)
    for name, found in section.get("estimates", {}).items():
        log.info("evaluate: off-policy %s: %s", name, found["value"] if found["value"] is not None else found["reason"])
    return section


def _champion(cfg: Config, ec: EvaluateConfig, challenger: str, vocab: pd.DataFrame, num_items: int):
    """(bundle or None, version or None, note): the champion to compare with, when there is one
    other than the challenger, it was trained on the current vocabulary and it may be served (a
    tuned baseline may not under score.ranker=model)."""
    # Here, not at the top: the registry brings mlflow (2 s), kept out of the Spark executors that import this module.
    from recsys_spark.models import registry

    version = registry.alias_version(cfg, ec.champion_alias)
    if version is None or version == challenger:
        return None, version, ""
    bundle, _ = registry.load_bundle(cfg, version=int(version))
    if isinstance(bundle, BaselineBundle) and cfg.score.ranker == "model":
        return None, version, f"it is {ranker_label(bundle.ranker_name)} and score.ranker=model serves the deep model"
    try:
        check_same_vocabulary(bundle, vocab, num_items, version)
    except InputError as exc:
        log.warning("evaluate: %s", exc)
        return None, version, "it was trained on another item vocabulary than paths.features"
    return bundle, version, ""


def _exclusions(spark: SparkSession, cfg: Config, vocab_df: DataFrame, cutoff_column: str):
    """user_id -> exclude_items before each user's cutoff (``cutoff_column`` of the features'
    user_split table: validation_at or test_at), or None when every event type is excluded (the
    features' seen_items are exactly that)."""
    types = cfg.evaluate.exclude_seen_event_types
    if set(types) == set(schema.EVENT_TYPES):
        return None
    cutoffs = io.read_features(spark, cfg.paths.resolve("features"), "user_split").select(schema.USER_ID, cutoff_column)
    events = io.read_clean(spark, cfg.paths.resolve("clean")).join(cutoffs, schema.USER_ID)
    return excluded_items(events, vocab_df, F.col(cutoff_column), types)


def _log_to_mlflow(report: Mapping[str, Any], decision, ks: Sequence[int]) -> None:
    """Headline metrics of every ranker (overall; the primary metric per segment), their
    intervals (``<ranker>.<metric>.ci_low`` / ``.ci_high``), the paired differences
    (``paired.<a>_vs_<b>.<metric>.diff`` / ``.low`` / ``.high`` / ``.users``),
    ``users_evaluated``, the tuned baseline settings as params, the gate as tags, the JSON
    report and the figures."""
    # Here, not at the top: mlflow (2 s) stays out of the Spark executors that import this module.
    import mlflow

    primary = report["primary_metric"]
    metrics = {
        mlflow_key(f"{ranker}.{name}"): value
        for ranker, values in report["rankers"].items()
        for name, value in values.items()
    }
    for ranker, segments in report["segments"].items():
        for segment, values in segments.items():
            if segment != ALL:
                metrics[mlflow_key(f"{ranker}.{segment}.{primary}")] = values[primary]
                metrics[f"{ranker}.{segment}.users"] = values[USERS]
    for ranker, bounds in report.get("intervals", {}).items():
        for name, (low, high) in bounds.items():
            metrics[mlflow_key(f"{ranker}.{name}.ci_low")] = low
            metrics[mlflow_key(f"{ranker}.{name}.ci_high")] = high
    for pair, differences in report.get("paired", {}).items():
        for name, found in differences.items():
            for field in ("diff", "low", "high", "users"):
                metrics[mlflow_key(f"paired.{pair}.{name}.{field}")] = found[field]
    if "users_evaluated" in report:
        metrics["users_evaluated"] = report["users_evaluated"]
    metrics.update(offpolicy.mlflow_metrics(report.get("off_policy", {})))
    mlflow.log_metrics(metrics)
    params = {
        f"baseline.{family}.{key}": value
        for family, tuned in report["baselines"].items()
        for key, value in tuned["chosen"].items()
    }
    params.update({"gate.champion_version": str(decision.champion_version), "gate.decision": decision.verdict})
    mlflow.log_params(params)
    mlflow.set_tags({"gate.decision": decision.verdict, "gate.reasons": " | ".join(decision.reasons)[:5000],
                     "model_version": report["model_version"], "gate.ranker": report["ranker_choice"]["ranker"],
                     "gate.ranker_version": report["ranker_choice"]["version"], "serving": report["serving"][:5000]})
    tracking.log_json(report, REPORT_FILE)
    for name, figure in figures(report).items():
        tracking.log_figure(figure, f"{name}.png")


def _tag_model_version(cfg: Config, version: str, model: Mapping[str, float], results: Mapping, primary: str,
                       run_id: str, intervals: Mapping[str, Mapping[str, Interval]] | None = None,
                       paired: Mapping[str, Mapping[str, Interval]] | None = None, ranker: str = MODEL) -> None:
    """Tag the evaluated version with its primary metric and the baselines' on the same data,
    its interval and users (``eval.<primary>.ci_low`` / ``.ci_high``, ``eval.users``) and the
    paired differences on it (``eval.model_vs_<other>.<primary>``: "+0.0123 [..] (n users)").
    ``ranker``: what the version is among the evaluated rankers (a served baseline's family)."""
    # Here, not at the top: mlflow (2 s) stays out of the Spark executors that import this module.
    from mlflow import MlflowClient

    client = MlflowClient()
    name = cfg.mlflow.registered_model
    client.set_model_version_tag(name, version, mlflow_key(f"eval.{primary}"), f"{model[primary]:.6f}")
    found = (intervals or {}).get(ranker, {}).get(primary)
    if found is not None:
        client.set_model_version_tag(name, version, mlflow_key(f"eval.{primary}.ci_low"), f"{found.low:.6f}")
        client.set_model_version_tag(name, version, mlflow_key(f"eval.{primary}.ci_high"), f"{found.high:.6f}")
        client.set_model_version_tag(name, version, "eval.users", str(found.users))
    for pair, differences in (paired or {}).items():
        if primary in differences:
            client.set_model_version_tag(name, version, mlflow_key(f"eval.{pair}.{primary}"),
                                         differences[primary].describe(signed=True))
    for other, values in results.items():
        if other != ranker:
            client.set_model_version_tag(name, version, mlflow_key(f"eval.{other}.{primary}"),
                                         f"{values[ALL][primary]:.6f}")
    client.set_model_version_tag(name, version, "eval.run_id", run_id)


def _broadcast_model(context, bundle) -> Callable[[], Ranker]:
    if isinstance(bundle, BaselineBundle):  # a champion the gate served: rebuilt from its file in each task
        return functools.partial(_bundle_ranker, context.broadcast(bundle.to_bytes()))
    with torch.no_grad():
        item_vecs = bundle.build_module().item_vectors().numpy()
    return functools.partial(_model_ranker, context.broadcast(bundle.to_bytes()), context.broadcast(item_vecs))


def _bundle_ranker(bundle_bc) -> Ranker:
    return bundles.read(bundle_bc.value).ranker()


def _model_ranker(bundle_bc, vectors_bc) -> ModelRanker:
    bundle = ModelBundle.from_bytes(bundle_bc.value)
    return ModelRanker.from_bundle(bundle, torch.from_numpy(vectors_bc.value))


def _popularity_ranker(counts: np.ndarray, present: np.ndarray) -> PopularityRanker:
    return PopularityRanker(counts, torch.from_numpy(present))


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


def table(results: Mapping[str, Mapping[str, float]], ks: Sequence[int],
          intervals: Mapping[str, Mapping[str, Interval]] | None = None, primary: str | None = None) -> str:
    """The headline numbers of every ranker (overall) as a small fixed-width text table, then
    its users and, given ``intervals`` ({ranker: {metric: Interval}}), the interval of ``primary``."""
    columns = [c for k in sorted(ks)
               for c in (f"recall@{k}", f"ndcg@{k}", f"map@{k}", f"precision@{k}", f"f1@{k}", f"coverage@{k}")]
    columns += [MRR, AUC]
    with_interval = intervals is not None and primary is not None
    lines = [f"{'ranker':<13}" + "".join(f"{c:>13}" for c in columns) + f"{USERS:>9}"
             + (f"  {primary} interval" if with_interval else "")]
    for ranker, values in results.items():
        line = f"{ranker:<13}" + "".join(f"{values[c]:>13.4f}" for c in columns) + f"{values.get(USERS, ''):>9}"
        found = intervals.get(ranker, {}).get(primary) if with_interval else None
        if found is not None:
            line += f"  [{found.low:.4f}, {found.high:.4f}]"
        lines.append(line)
    return "\n".join(lines)
