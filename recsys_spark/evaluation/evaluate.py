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
   bound of model - baseline below 0; :func:`~recsys_spark.evaluation.gate.choose_on_validation`)
   under ``score.ranker=auto``: then that baseline, as fitted and tuned, is registered as a
   version of its own (:class:`~recsys_spark.models.bundle.BaselineBundle`, the same pyfunc) and
   gated in its place.
4. The report: ``evaluation.json`` and ``evaluation.html`` under ``paths.reports``, both logged
   to the MLflow run with the headline metrics.
5. Off-policy: with ``paths.clean_feedback``, the challenger under ``cfg.score`` is valued on the
   last ``evaluate.ope_days`` logged run dates (:mod:`~recsys_spark.evaluation.offpolicy`;
   report key "off_policy", MLflow ``ope.<estimator>.clicks_per_list`` / ``.low`` / ``.high`` / ``.ess``).

Where the parts live: the per-user metrics, segments and paired comparisons in
:mod:`~recsys_spark.evaluation.per_user`, the baseline tuning in
:mod:`~recsys_spark.evaluation.tuning`, the challenger's choice and the gate's inputs in
:mod:`~recsys_spark.evaluation.gate`, what goes to MLflow in
:mod:`~recsys_spark.evaluation.tracked`, the exclusions in :mod:`~recsys_spark.scoring.exclusions`.
Metric definitions: :mod:`recsys_spark.metrics`.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import io, product_ids, schema, tracking
from recsys_spark.config import Config
from recsys_spark.errors import InputError
from recsys_spark.evaluation import offpolicy
from recsys_spark.evaluation.gate import (
    apply_gate,
    champion,
    check_same_vocabulary,
    choose_on_validation,
    gate,
    validation_metrics,
)
from recsys_spark.evaluation.intervals import Interval, as_bounds, as_differences
from recsys_spark.evaluation.per_user import (
    ALL,
    CHAMPION,
    MODEL,
    POPULARITY,
    TUNED_BASELINES,
    ItemStats,
    all_metric_names,
    average_metrics,
    compare_rankers,
    headline_metrics,
    per_user_metrics,
    per_user_values,
    write_per_user,
)
from recsys_spark.evaluation.report import DEFINITIONS, SPLITS, render_html
from recsys_spark.evaluation.tracked import REPORT_FILE, log_run
from recsys_spark.evaluation.tuning import tune_baselines
from recsys_spark.metrics import AUC, MRR
from recsys_spark.models import bundle as bundles
from recsys_spark.models.bundle import BaselineBundle, ModelBundle, ranker_label
from recsys_spark.models.rankers import ModelRanker, PopularityRanker, Ranker, vocab_column
from recsys_spark.schema import USERS
from recsys_spark.scoring.exclusions import excluded_items, with_exclusions

log = logging.getLogger(__name__)

HTML_FILE = "evaluation.html"
# Under paths.reports: each test user's metrics per ranker (user_id, ranker, one column per metric),
# the values behind the report's means and intervals, for pairing two runs on the same users.
PER_USER_TABLE = "per_user_metrics"


@dataclass(frozen=True)
class Features:
    """What the stage reads of ``paths.features``: its folder and metadata, the item vocabulary
    (as a DataFrame and on the driver), the test rows, and which item indices may be ranked."""

    root: str
    metadata: Mapping[str, Any]
    num_items: int
    vocab_df: DataFrame
    vocab: pd.DataFrame
    test: DataFrame
    present: np.ndarray


@dataclass(frozen=True)
class Comparison:
    """The rankers measured on the test users.

    Args:
        users: test users, with or without a target item.
        stats: the list metrics' item statistics before the test cutoff.
        results: {ranker: {segment: {"users": n, metric: mean}}} (per_user.average_metrics).
        user_ids, rankers, values: [U] user ids, [R] ranker names, float [U, R, M] per-user values
            of all_metric_names(ks) (per_user.per_user_values).
        intervals, paired: per_user.compare_rankers's output.
    """

    users: int
    stats: ItemStats
    results: dict[str, dict[str, dict[str, float]]]
    user_ids: np.ndarray
    rankers: list[str]
    values: np.ndarray
    intervals: dict[str, dict[str, Interval]]
    paired: dict[str, dict[str, Interval]]


# ----------------------------------------------------------------------------- the stage


def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Tune the baselines on validation, compare model, champion and baselines on test, run
    the registry gate and write the report.

    Every per-user metric of every ranker gets a bootstrap interval over the test users, and
    the model is compared with the champion and each baseline by paired differences (see
    :func:`~recsys_spark.evaluation.per_user.compare_rankers`); the gate reads the lower bound
    of challenger - champion, the challenger being the model or the tuned baseline that beat it
    on validation.

    Returns:
        the flat summary of :func:`summarize`.
    """
    ec, ks = cfg.evaluate, sorted(set(cfg.evaluate.ks))
    features = read_features(spark, cfg)
    bundle, version = load_challenger(cfg, features)
    champion_bundle, champion_version, champion_note = champion(cfg, ec, version, features.vocab, features.num_items)
    rankers = rankers_to_compare(spark.sparkContext, cfg, features, bundle, champion_bundle)
    with tracking.stage_run(cfg, "evaluate") as active:
        run_id = active.info.run_id
        tuning, fitted, choice = tune_and_choose(spark, cfg, ks, features, rankers)
        test = measure_test(spark, cfg, ks, features, rankers)
        challenger_version = register_challenger(cfg, features, choice, tuning, fitted, version, run_id)
        decision, serving = gate(ec, ks, choice, challenger_version, champion_version, champion_note,
                                 champion_bundle.ranker_name if champion_bundle else None, test.results, test.values,
                                 test.rankers, test.paired)
        report = build_report(cfg, ks, features, test, version, champion_version, tuning, decision,
                              {**choice.as_dict(), "version": challenger_version}, serving, run_id,
                              off_policy(spark, cfg, bundle, features.vocab, version))
        log_run(report, decision)
        paths = write_reports(spark, cfg, ks, report, test)
        apply_gate(cfg, decision, choice, version, challenger_version, champion_version, test.results, run_id,
                   test.intervals, test.paired)
    log.info(
        "evaluate: model version %s on %d users\n%s\ngate: %s (%s)\nserving: %s",
        version, report["users_with_targets"], table(report["rankers"], ks, test.intervals, ec.primary_metric),
        decision.verdict, "; ".join(decision.reasons), serving,
    )
    return summarize(report, ks, test, decision, challenger_version, champion_version, paths)


def read_features(spark: SparkSession, cfg: Config) -> Features:
    """Read what the stage needs of ``paths.features`` (the vocabulary onto the driver)."""
    root = cfg.paths.resolve("features")
    metadata = io.read_feature_metadata(spark, root)
    num_items = int(metadata["num_items"])
    vocab_df = io.read_features(spark, root, "item_vocab")
    vocab = vocab_df.toPandas()
    test = io.read_features(spark, root, "test")
    _, present = vocab_column(vocab, schema.PRETEST_COUNT, num_items)
    return Features(root, metadata, num_items, vocab_df, vocab, test, present)


def load_challenger(cfg: Config, features: Features) -> tuple[ModelBundle, str]:
    """The model version ``evaluate.model_alias`` names, checked to be a trained model on the
    features' item vocabulary (else InputError)."""
    # Here, not at the top: the registry brings mlflow (2 s), kept out of the Spark executors that import this module.
    from recsys_spark.models import registry

    ec = cfg.evaluate
    bundle, version = registry.load_bundle(cfg, alias=ec.model_alias)
    if not isinstance(bundle, ModelBundle):
        raise InputError(f"evaluate.model_alias={ec.model_alias!r} names version {version}, a tuned baseline the gate "
                         "registered, not a trained model: point it at a version `recsys train` registered")
    check_same_vocabulary(bundle, features.vocab, features.num_items, version)
    return bundle, version


def rankers_to_compare(context, cfg: Config, features: Features, bundle,
                       champion_bundle) -> dict[str, Callable[[], Ranker]]:
    """Builders of the model, the champion (when there is one to compare with) and popularity
    (when ``evaluate.baselines`` names it), their large state broadcast through ``context``."""
    rankers: dict[str, Callable[[], Ranker]] = {MODEL: _broadcast_model(context, bundle)}
    if champion_bundle is not None:
        rankers[CHAMPION] = _broadcast_model(context, champion_bundle)
    if POPULARITY in cfg.evaluate.baselines:
        counts = vocab_column(features.vocab, schema.PRETEST_COUNT, features.num_items)[0]
        rankers[POPULARITY] = functools.partial(_popularity_ranker, counts, features.present)
    return rankers


def tune_and_choose(spark: SparkSession, cfg: Config, ks: Sequence[int], features: Features,
                    rankers: dict[str, Callable[[], Ranker]]):
    """Tune the baselines ``evaluate.baselines`` names on validation (adding them to ``rankers``)
    and choose the challenger there (:func:`~recsys_spark.evaluation.gate.choose_on_validation`).

    Returns:
        (the report's tuning section, {family: fit}, registry.RankerChoice), as
        :func:`~recsys_spark.evaluation.tuning.tune_baselines` returns the first two.
    """
    # Here, not at the top: the registry brings mlflow (2 s), kept out of the Spark executors that import this module.
    from recsys_spark.models import registry

    ec, root = cfg.evaluate, features.root
    choice = registry.choose_ranker(None, None, cfg.score.ranker)
    if not set(TUNED_BASELINES) & set(ec.baselines):
        return {}, {}, choice
    validation = with_exclusions(io.read_features(spark, root, "validation"),
                                 _exclusions(spark, cfg, features.vocab_df, schema.VALIDATION_AT))
    train = io.read_features(spark, root, "train")
    tuned, tuning, fitted = tune_baselines(spark, ec, ks, train, validation, features.vocab, features.num_items,
                                           features.present)
    rankers.update(tuned)
    stats = ItemStats.from_vocab(features.vocab, schema.TRAIN_COUNT, features.num_items, ec.head_share)
    choice = choose_on_validation(validation, rankers[MODEL], tuned, ks, stats, ec, cfg.score.ranker)
    return tuning, fitted, choice


def measure_test(spark: SparkSession, cfg: Config, ks: Sequence[int], features: Features,
                 rankers: Mapping[str, Callable[[], Ranker]]) -> Comparison:
    """Rank the test users with every ranker, average per segment, and compare the rankers
    per user with bootstrap intervals (see :func:`~recsys_spark.evaluation.per_user.compare_rankers`)."""
    ec = cfg.evaluate
    stats = ItemStats.from_vocab(features.vocab, schema.PRETEST_COUNT, features.num_items, ec.head_share)
    excluded = _exclusions(spark, cfg, features.vocab_df, schema.TEST_AT)
    users_total = features.test.count()
    log.info("evaluate: ranking %d test users with %s", users_total, ", ".join(rankers))
    rows = with_exclusions(features.test.where(F.size(schema.TARGET_ITEMS) > 0), excluded)
    per_user = per_user_metrics(rows, rankers, ks, ec.block_size, stats, ec.cold_user_threshold).persist()
    results = average_metrics(per_user, ks, catalogue_size=len(features.vocab))
    user_ids, ranker_names, user_values = per_user_values(per_user, all_metric_names(ks))
    per_user.unpersist()
    if MODEL not in results:
        raise InputError(f"{io.feature_path(features.root, 'test')} holds no user with a target item")
    intervals, paired = compare_rankers(user_values, ranker_names, ks, ec.primary_metric, ec)
    log.info("evaluate: %.0f%% bootstrap intervals over %d users (%d resamples)",
             100 * ec.confidence, user_values.shape[0], ec.bootstrap_samples)
    return Comparison(users_total, stats, results, user_ids, ranker_names, user_values, intervals, paired)


def register_challenger(cfg: Config, features: Features, choice, tuning: Mapping[str, Any],
                        fitted: Mapping[str, Callable[[], dict[str, np.ndarray]]], version: str, run_id: str) -> str:
    """The challenger's version: the model's, or, when a tuned baseline beat it on validation,
    that baseline registered now (its fit and settings as tuned) so that the gate, score and
    lineage treat it as a version."""
    # Here, not at the top: the registry brings mlflow (2 s), kept out of the Spark executors that import this module.
    from recsys_spark.models import registry

    candidate = choice.ranker
    if candidate == MODEL:
        return version
    served = BaselineBundle(candidate, tuning[candidate]["chosen"], fitted[candidate](), features.vocab,
                            {"num_items": features.num_items, "max_seq_len": int(features.metadata["max_seq_len"])},
                            cfg.to_dict(), validation_metrics(choice, cfg.evaluate.primary_metric))
    challenger_version = registry.register_baseline(cfg, served, choice.reason, version, run_id, cfg.score.top_k)
    log.info("evaluate: registered %s as version %s", ranker_label(candidate), challenger_version)
    return challenger_version


def build_report(cfg: Config, ks: Sequence[int], features: Features, test: Comparison, version: str,
                 champion_version: str | None, tuning: Mapping[str, Any], decision, ranker_choice: Mapping[str, Any],
                 serving: str, run_id: str, off_policy_section: Mapping[str, Any]) -> dict[str, Any]:
    """The report (``evaluation.json``; :func:`~recsys_spark.evaluation.report.render_html` draws it)."""
    ec, metadata, results = cfg.evaluate, features.metadata, test.results
    return {
        "registered_model": cfg.mlflow.registered_model,
        "model_alias": ec.model_alias,
        "model_version": version,
        "champion_alias": ec.champion_alias,
        "champion_version": champion_version,
        "ks": ks,
        "primary_metric": ec.primary_metric,
        "protocol": metadata.get("protocol", "temporal"),
        "protocol_reason": metadata.get("protocol_reason", ""),
        "users": test.users,
        "users_with_targets": results[MODEL][ALL][USERS],
        "users_evaluated": int(test.values.shape[0]),
        "catalogue_size": len(features.vocab),
        "head_items": int(test.stats.is_head.sum()),
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
        "intervals": as_bounds(test.intervals),
        "paired": as_differences(test.paired),
        "gate": decision.as_dict(),
        "ranker_choice": ranker_choice,
        "serving": serving,
        "mlflow_run_id": run_id,
        "off_policy": off_policy_section,
    }


def write_reports(spark: SparkSession, cfg: Config, ks: Sequence[int], report: Mapping[str, Any],
                  test: Comparison) -> tuple[str, str]:
    """Write ``evaluation.json``, ``evaluation.html`` and the per-user table under ``paths.reports``;
    log the HTML to the run.

    Returns:
        (the JSON report's path, the HTML report's path).
    """
    reports = cfg.paths.resolve("reports").rstrip("/")
    report_path, html_path = f"{reports}/{REPORT_FILE}", f"{reports}/{HTML_FILE}"
    html = render_html(report)
    io.write_json(spark, report_path, report)
    io.write_text(spark, html_path, html)
    write_per_user(spark, f"{reports}/{PER_USER_TABLE}", test.user_ids, test.rankers, test.values, all_metric_names(ks))
    tracking.log_text(html, HTML_FILE)
    return report_path, html_path


def summarize(report: Mapping[str, Any], ks: Sequence[int], test: Comparison, decision, challenger_version: str,
              champion_version: str | None, paths: tuple[str, str]) -> dict[str, Any]:
    """The stage's flat summary.

    Returns:
        model_version, ``<ranker>.<metric>`` for every ranker and the metrics at the primary
        metric's K (e.g. ``model.ndcg@20``, ``als.recall@20``; every K is in the report and
        MLflow), ``<ranker>.<primary>.interval`` and ``model_vs_<other>.<primary>`` (e.g.
        ``"+0.0123 [+0.0040, +0.0200] (1,168 users)"``), the gate's verdict, the champion's
        version, ``serving`` (which ranker holds the champion alias now, and why), users,
        users_evaluated, the report paths.
    """
    primary = report["primary_metric"]
    summary: dict[str, Any] = {"model_version": report["model_version"], "protocol": report["protocol"]}
    for ranker, metrics in report["rankers"].items():
        for name in headline_metrics(primary, ks):
            summary[f"{ranker}.{name}"] = metrics[name]
        if primary in test.intervals.get(ranker, {}):
            summary[f"{ranker}.{primary}.interval"] = test.intervals[ranker][primary].describe()
    for pair, differences in test.paired.items():
        if primary in differences:
            summary[f"{pair}.{primary}"] = differences[primary].describe(signed=True)
    summary.update(
        {
            "gate": decision.verdict,
            "champion_version": challenger_version if decision.promote else champion_version,
            "serving": report["serving"],
            "users": report["users_with_targets"],
            "users_evaluated": report["users_evaluated"],
            "report": paths[0],
            "html_report": paths[1],
        }
    )
    return summary


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


# ----------------------------------------------------------------------------- rankers in Spark tasks


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
