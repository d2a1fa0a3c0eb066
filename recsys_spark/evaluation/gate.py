"""What the registry gate weighs: the challenger (the model, or the tuned baseline that beat it
on the *validation* users, :func:`choose_on_validation`), the champion it is compared with
(:func:`champion`), the decision on the test users (:func:`gate`) and the line that says which
ranker is served now (:func:`serving_line`), then the alias moved and the versions tagged
(:func:`apply_gate`). The gate itself: :func:`recsys_spark.models.registry.decide`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark import schema
from recsys_spark.config import Config, EvaluateConfig
from recsys_spark.errors import InputError
from recsys_spark.evaluation.intervals import Interval, compare
from recsys_spark.evaluation.per_user import (
    ALL,
    CHAMPION,
    MODEL,
    ItemStats,
    all_metric_names,
    pair_name,
    paired_primary,
    per_user_metrics,
    per_user_values,
)
from recsys_spark.evaluation.tracked import mlflow_key, tag_version
from recsys_spark.models.bundle import BaselineBundle, ranker_label
from recsys_spark.models.rankers import Ranker

log = logging.getLogger(__name__)


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


def champion(cfg: Config, ec: EvaluateConfig, challenger: str, vocab: pd.DataFrame, num_items: int):
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


def gate(ec: EvaluateConfig, ks: Sequence[int], choice, challenger_version: str, champion_version: str | None,
         champion_note: str, champion_ranker: str | None, results: Mapping[str, Mapping[str, Mapping[str, float]]],
         user_values: np.ndarray, ranker_names: Sequence[str], paired: Mapping[str, Mapping[str, Interval]]):
    """The gate's decision on the challenger (``choice.ranker``, registered as
    ``challenger_version``) against the champion, on the test users, and the serving line.

    Args:
        choice: the registry.RankerChoice made on validation.
        champion_version, champion_note: from :func:`champion`; champion_ranker: what it is, or None.
        results: {ranker: {segment: {metric: mean}}} on test; user_values, ranker_names: the
            per-user values behind them (per_user.per_user_values); paired: model - every other
            ranker (per_user.compare_rankers).

    Returns:
        (registry.GateDecision, with the choice's reason first when it made a baseline the
        challenger, else last; :func:`serving_line`).
    """
    # Here, not at the top: the registry brings mlflow (2 s), kept out of the Spark executors that import this module.
    from recsys_spark.models import registry

    primary, candidate = ec.primary_metric, choice.ranker
    decision = registry.decide(
        challenger_version=challenger_version,
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
    serving = serving_line(decision, choice, champion_ranker, ec.champion_alias)
    if choice.reason:  # first when it decided that a baseline is the challenger, else last
        reasons = (choice.reason, *decision.reasons) if candidate != MODEL else (*decision.reasons, choice.reason)
        decision = replace(decision, reasons=reasons)
    log.info("evaluate: gate %s version %s: %s", decision.verdict, challenger_version, "; ".join(decision.reasons))
    return decision, serving


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


def apply_gate(cfg: Config, decision, choice, version: str, challenger_version: str, champion_version: str | None,
               results: Mapping[str, Mapping[str, Mapping[str, float]]], run_id: str,
               intervals: Mapping[str, Mapping[str, Interval]], paired: Mapping[str, Mapping[str, Interval]]) -> None:
    """Move the champion alias or not, and tag the evaluated versions: the model (``version``)
    and, when a tuned baseline went in its place as ``challenger_version``, that one too (the
    model then gets a decision of its own that says so)."""
    # Here, not at the top: the registry brings mlflow (2 s), kept out of the Spark executors that import this module.
    from recsys_spark.models import registry

    ec, primary, candidate = cfg.evaluate, cfg.evaluate.primary_metric, choice.ranker
    registry.apply_decision(cfg, decision, ec.champion_alias, run_id)
    tag_version(cfg, version, results[MODEL][ALL], results, primary, run_id, intervals, paired)
    if candidate != MODEL:  # the model was not gated: the baseline went in its place, and says so
        registry.apply_decision(cfg, registry.GateDecision(False, (choice.reason,), version, champion_version),
                                ec.champion_alias, run_id)
        tag_version(cfg, challenger_version, results[candidate][ALL], results, primary, run_id, intervals,
                    ranker=candidate)
