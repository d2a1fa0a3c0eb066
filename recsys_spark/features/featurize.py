"""The ``featurize`` stage: clean events to vocabularies, features, training windows and
evaluation rows.

Reads ``paths.clean`` and, when clean wrote it, ``paths.clean_feedback`` (the exposures and
clicks per item of ``feedback_counts``); writes under ``paths.features`` the tables of
schema.FEATURE_TABLES and ``metadata.json`` (the sizes a model is built with, the vocabulary
versions, the cutoffs and the counts), and the data-quality report under ``paths.reports``.
Nothing is written under ``paths.features`` until the data-quality checks and the leakage
guard have passed.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import io, tracking
from recsys_spark import schema
from recsys_spark.config import Config, EvaluateConfig, FeaturizeConfig
from recsys_spark.errors import ConfigError, DataQualityError, InputError, relax_hint
from recsys_spark.features import feedback, quality
from recsys_spark.features import vocab
from recsys_spark.features.layout import block_mb, plan_train_files, shuffle_for_training, window_bytes
from recsys_spark.features.leakage import check_no_leakage
from recsys_spark.features.sequences import (
    add_gap_buckets,
    collapse_steps,
    encode_items,
    eval_rows,
    history_rows,
    train_windows,
)
from recsys_spark.features.sequences import STEP_POS, STEP_TIME
from recsys_spark.features.snapshots import item_features, snapshot_times, user_features
from recsys_spark.features.split import (
    AUTO,
    LEAVE_LAST_OUT,
    TEMPORAL,
    Split,
    before,
    compute_cutoffs,
    data_range,
    leave_last_out_split,
    temporal_eval_users,
    temporal_split,
)

log = logging.getLogger(__name__)

__all__ = ["run", "build_vocabs", "load_vocabs", "extend_vocabs", "build_metadata", "shuffle_for_training"]


def build_vocabs(steps: DataFrame, events: DataFrame, split: Split, fc: FeaturizeConfig) -> dict[str, DataFrame]:
    """Build the four vocabularies from the training part.

    Args:
        steps, events: frames the split is attached to (``split.attach``).

    Returns:
        {"item", "category", "brand", "user"}: frames of vocab.SPECS' schemas.
    """
    train_events = events.where(before(F.col(schema.EVENT_TIME), split.validation))
    category = vocab.build_value_vocab(train_events, vocab.CATEGORY, fc.min_category_count).persist()
    brand = vocab.build_value_vocab(train_events, vocab.BRAND, fc.min_brand_count).persist()
    user = vocab.build_value_vocab(train_events, vocab.USER, fc.min_user_count).persist()
    item = vocab.build_item_vocab(steps, events, split, fc.min_item_count, fc.price_buckets, category, brand)
    return {"item": item.persist(), "category": category, "brand": brand, "user": user}


def extend_vocabs(previous: dict[str, DataFrame], steps: DataFrame, events: DataFrame, split: Split,
                  fc: FeaturizeConfig) -> dict[str, DataFrame]:
    """``previous``' vocabularies grown append-only with this run's values (vocab.extend):
    categories, brands and users first, then the items, whose side features are looked up in
    the grown category and brand vocabularies. A model trained on ``previous`` keeps the
    meaning of every index it knows; its tables grow to the new sizes.

    Args:
        previous: {"item", "category", "brand", "user"} (see :func:`load_vocabs`).
        steps, events: frames the split is attached to (``split.attach``).

    Returns:
        {"item", "category", "brand", "user"}, persisted.
    """
    train_events = events.where(before(F.col(schema.EVENT_TIME), split.validation))
    minimum = {"category": fc.min_category_count, "brand": fc.min_brand_count, "user": fc.min_user_count}
    grown = {}
    for spec in (vocab.CATEGORY, vocab.BRAND, vocab.USER):
        fresh = vocab.build_value_vocab(train_events, spec, minimum[spec.kind])
        grown[spec.kind] = vocab.extend(previous[spec.kind], fresh, spec).localCheckpoint(eager=True)
    fresh_items = vocab.build_item_vocab(steps, events, split, fc.min_item_count, fc.price_buckets,
                                         grown["category"], grown["brand"])
    # The counts of every item, the carried-over ones included, come from this run's steps.
    items = vocab.recount_items(vocab.extend(previous["item"], fresh_items, vocab.ITEM), steps, split)
    return {**grown, "item": items.localCheckpoint(eager=True)}


def resolve_vocab_from(cfg: Config) -> str:
    """``featurize.vocab_from`` as a folder: ``@<alias>`` names the features folder the
    registered model at that alias was trained on (``@champion`` for daily incremental runs).

    Returns:
        the folder, or "" to build the vocabularies from this data (no vocab_from, or no model
        at the alias yet: a first run, said in a log line).
    """
    value = cfg.featurize.vocab_from
    if not value.startswith("@"):
        return value
    # Here, not at the top: the registry brings torch (2 s), which featurize needs only for a
    # vocabulary taken from a registered model.
    from recsys_spark.models import registry

    found = registry.training_features(cfg, value[1:])
    if found is None:
        log.warning("featurize.vocab_from=%s: %r has no such alias yet; building the vocabularies from this data",
                    value, cfg.mlflow.registered_model)
        return ""
    folder, version = found
    log.info("featurize.vocab_from=%s: version %s was trained on %s; %s its vocabularies", value, version, folder,
             "extending" if cfg.featurize.vocab_mode == "extend" else "reusing")
    return folder


def load_vocabs(spark: SparkSession, features_root: str, steps: DataFrame, split: Split) -> dict[str, DataFrame]:
    """The vocabularies saved under ``features_root`` (``featurize.vocab_from``), checked
    against the versions in its metadata.json; item counts are recounted on ``steps``.

    Raises:
        InputError: a missing table, or a metadata.json without vocabulary versions.
        DataQualityError: a table whose content does not match its recorded version.
    """
    key = "featurize.vocab_from"
    recorded = io.read_feature_metadata(spark, features_root, key).get("vocab")
    if not isinstance(recorded, dict):
        raise InputError(f"{io.feature_path(features_root, schema.FEATURE_METADATA)} records no vocabulary versions (config key {key}): re-run featurize there")
    vocabs = {}
    for spec in vocab.SPECS:
        path = io.feature_path(features_root, spec.table)
        # Materialised: the reused tables must not depend on files this run may overwrite.
        table = io.read_table(spark, path, spec.schema, key).localCheckpoint(eager=True)
        expected = recorded.get(spec.kind, {}).get("version")
        found = vocab.version(table, spec)["version"]
        if found != expected:
            raise DataQualityError(f"{path} has vocabulary version {found}, its metadata.json records {expected}")
        vocabs[spec.kind] = table
    vocabs["item"] = vocab.recount_items(vocabs["item"], steps, split).persist()
    return vocabs


def check_eval_users(counts: dict[str, int], split: Split, fc: FeaturizeConfig) -> None:
    """Stop, before anything is written or trained, when validation or test holds fewer than
    ``featurize.min_eval_users`` users with a new item: metrics averaged over a handful of users
    cannot tell one ranker from another, and early stopping on them is noise.

    Raises:
        DataQualityError: naming the period, its size, the keys that widen it and the override
            that accepts it (none when the period is empty: nothing could be evaluated).
    """
    for period in ("validation", "test"):
        users = counts[f"{period}_users"]
        if users >= fc.min_eval_users:
            continue
        accept = f" {relax_hint('featurize.min_eval_users', users)}" if users else ""
        if split.per_user:
            where = (f"featurize: under evaluate.protocol=leave_last_out, {users} user(s) have a {period} target "
                     f"(a new item in the vocabulary after at least two others)")
            widen = "more data"
        else:
            key, days = (("featurize.validation_days", fc.validation_days) if period == "validation"
                         else ("featurize.test_days", fc.test_days))
            start = split.cutoffs.validation if period == "validation" else split.cutoffs.test
            where = (f"featurize: the {period} period ({days} day(s) from {start.date().isoformat()}) holds "
                     f"{users} user(s) with a new item")
            widen = f"more days ({key}={days * 2}), evaluate.protocol=leave_last_out or more data"
        raise DataQualityError(
            f"{where}, fewer than featurize.min_eval_users={fc.min_eval_users}: metrics over so few users "
            f"say nothing; give it {widen}{accept}"
        )


# Above this share of the training steps in no training window (and at most
# featurize.max_unused_step_share), featurize warns in the run summary.
UNUSED_STEPS_WARN_SHARE = 0.1


def unused_training_steps(steps: DataFrame, split: Split, fc: FeaturizeConfig) -> dict[str, int]:
    """The steps before each user's validation cutoff that no training window holds: a user's
    only such step (a window needs two), or steps older than the user's
    ``featurize.max_windows_per_user`` windows (see sequences.train_windows: together its
    windows cover the last min(n, windows x max_seq_len + 1) of a user's n steps).

    Returns:
        {"training_steps", "unused_training_steps"}.
    """
    n = F.col("n")
    windows = F.least(F.lit(fc.max_windows_per_user), F.floor((n - 2) / fc.max_seq_len).cast("int") + 1)
    covered = F.when(n >= 2, F.least(n, windows * fc.max_seq_len + 1)).otherwise(F.lit(0))
    per_user = steps.where(before(F.col(STEP_TIME), split.validation)).groupBy(schema.USER_ID).agg(
        F.count(F.lit(1)).alias("n"))
    row = per_user.agg(F.coalesce(F.sum(n), F.lit(0)), F.coalesce(F.sum(n - covered), F.lit(0))).first()
    return {"training_steps": int(row[0]), "unused_training_steps": int(row[1])}


def check_training_steps(counts: dict[str, int], fc: FeaturizeConfig) -> str:
    """No training window at all, or more than ``featurize.max_unused_step_share`` of the training
    steps in none: DataQualityError (nothing is written). Above UNUSED_STEPS_WARN_SHARE: a warning.

    Returns:
        the warning, or "".
    """
    steps, unused = counts["training_steps"], counts["unused_training_steps"]
    if counts["train_windows"] == 0:
        raise DataQualityError(
            f"featurize: no training window: none of the {counts['users']:,} users has two steps before the "
            f"validation cutoff ({steps:,} training steps): give it more days or evaluate.protocol=leave_last_out")
    share = unused / steps if steps else 0.0
    if share <= UNUSED_STEPS_WARN_SHARE:
        return ""
    found = (f"{share:.1%} of the {steps:,} training steps are in no training window ({unused:,}: a user's only "
             f"step before the validation cutoff, or steps older than featurize.max_windows_per_user="
             f"{fc.max_windows_per_user} windows of featurize.max_seq_len={fc.max_seq_len})")
    if share > fc.max_unused_step_share:
        accept = min(1.0, math.ceil(share * 100) / 100)
        raise DataQualityError(f"featurize: {found}, more than featurize.max_unused_step_share="
                               f"{fc.max_unused_step_share:g}: the model would learn from little of the log "
                               f"{relax_hint('featurize.max_unused_step_share', accept)}")
    return f"{found}; the stop is at featurize.max_unused_step_share={fc.max_unused_step_share:g}"


def choose_split(steps: DataFrame, events: DataFrame, fc: FeaturizeConfig, ec: EvaluateConfig) -> Split:
    """The split of ``evaluate.protocol``; under "auto", temporal when its periods each hold at
    least max(featurize.min_eval_users, featurize.min_eval_user_share x users) users with a new
    item (an upper bound, counted before any table is built), else leave_last_out.

    Raises:
        InputError: ``temporal`` on data that leaves no training period (naming the keys).
        DataQualityError: ``temporal`` whose periods hold too few users (naming
            evaluate.protocol); leave_last_out's own minimum is checked on the built tables.
    """
    start, end = data_range(events)
    if ec.protocol == LEAVE_LAST_OUT:
        return leave_last_out_split(steps, start, end, STEP_POS, STEP_TIME, "evaluate.protocol=leave_last_out")
    try:
        cutoffs = compute_cutoffs(start, end, fc.validation_days, fc.test_days)
    except InputError as exc:
        if ec.protocol == TEMPORAL:
            raise
        reason = f"evaluate.protocol=auto chose leave_last_out: {str(exc).removeprefix('featurize: ')}"
        return leave_last_out_split(steps, start, end, STEP_POS, STEP_TIME, reason)
    found = temporal_eval_users(steps, cutoffs, STEP_TIME)
    needed = max(fc.min_eval_users, math.ceil(fc.min_eval_user_share * found["users"]))
    short = [period for period in ("validation", "test") if found[f"{period}_users"] < needed]
    if not short:
        return temporal_split(cutoffs, f"evaluate.protocol={ec.protocol}: validation and test hold "
                                       f"{found['validation_users']:,} and {found['test_users']:,} users")
    held = ", ".join(f"{period} {found[f'{period}_users']:,}" for period in short)
    measured = (f"the temporal split's periods hold too few users with a new item ({held} of {found['users']:,} "
                f"users; at least {needed:,} needed: featurize.min_eval_users={fc.min_eval_users}, "
                f"featurize.min_eval_user_share={fc.min_eval_user_share})")
    if ec.protocol == TEMPORAL:
        raise DataQualityError(f"featurize: {measured}: set evaluate.protocol=leave_last_out (or auto), "
                               "or give the periods more days")
    return leave_last_out_split(steps, start, end, STEP_POS, STEP_TIME,
                                f"evaluate.protocol=auto chose leave_last_out: {measured}")


def combined_version(versions: dict[str, dict[str, Any]]) -> str:
    """One id for all four vocabularies (16 hex digits)."""
    text = ",".join(f"{kind}={versions[kind]['version']}" for kind in sorted(versions))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_metadata(
    versions: dict[str, dict[str, Any]], split: Split, price_buckets: int, max_seq_len: int,
    counts: dict[str, int], extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The contents of metadata.json: embedding table sizes, vocabulary versions, the protocol
    and its cutoffs (ISO; null under leave_last_out, whose cutoffs are per user in user_split)
    and counts.

    Args:
        versions: {kind: vocab.version(...)} for the four vocabularies.
        split, price_buckets, max_seq_len: as configured / computed.
        counts: row counts.
        extra: further keys (snapshots, train_files, quality report path).
    """
    return {
        "num_items": versions["item"]["num_indices"],
        "num_categories": versions["category"]["num_indices"],
        "num_brands": versions["brand"]["num_indices"],
        "num_users": versions["user"]["num_indices"],
        "num_price_buckets": price_buckets + 1,
        "num_event_codes": schema.NUM_EVENT_CODES,
        "num_gap_buckets": schema.NUM_GAP_BUCKETS,
        "max_seq_len": max_seq_len,
        "vocab": versions,
        "vocab_version": combined_version(versions),
        **split.as_dict(),
        "counts": counts,
        **(extra or {}),
    }


def _snapshots(events: DataFrame, split: Split, fc: FeaturizeConfig, vocabs: dict[str, DataFrame]):
    """Item and user snapshots "train", "test", "serve" (see snapshots.snapshot_times): each from
    the events before its instant, and under leave_last_out from the events of the split's part
    (before each user's validation target, before the test target, all)."""
    times = snapshot_times(split)
    parts = {"train": split.validation, "test": split.test, "serve": None}
    past = {name: events if cutoff is None else events.where(before(F.col(schema.EVENT_TIME), cutoff))
            for name, cutoff in parts.items()} if split.per_user else {name: events for name in times}
    items = [item_features(past[name], name, as_of, fc.popularity_days, fc.price_buckets, vocabs)
             for name, as_of in times.items()]
    users = [user_features(past[name], name, as_of, vocabs["user"]) for name, as_of in times.items()]
    return _union(items).persist(), _union(users).persist(), times


def _union(frames: list[DataFrame]) -> DataFrame:
    return functools.reduce(DataFrame.unionByName, frames)


def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Featurize ``paths.clean`` into ``paths.features``.

    Returns:
        the paths written, the cutoffs, the vocabulary version and the counts of metadata.json.

    Raises:
        DataQualityError: a data-quality threshold is breached, or the leakage guard finds a
            row that depends on an event at or after its cutoff (nothing is written then).
    """
    fc = cfg.featurize
    clean_path = cfg.paths.resolve("clean")
    io.require_input(spark, clean_path, "paths.clean")
    root = cfg.paths.resolve("features")
    vocab_from = resolve_vocab_from(cfg)
    if vocab_from:
        if fc.vocab_from.startswith("@") and vocab_from.rstrip("/") == root.rstrip("/"):  # a folder: Config's check
            raise ConfigError(f"featurize.vocab_from ({vocab_from}) must differ from paths.features: "
                              "copy the vocabularies elsewhere first")
        io.require_input(spark, vocab_from, "featurize.vocab_from")
    clock = Clock()

    with tracking.stage_run(cfg, "featurize"):
        inputs = prepare(spark, io.read_clean(spark, clean_path), cfg, vocab_from, clock)
        report_path = check_quality(spark, cfg, inputs, vocab_from, clock)
        tables = build_tables(inputs, fc)
        counts = checked_counts(inputs, tables, fc, clock)
        unused_warning = check_training_steps(counts, fc)
        files = plan_train_files(counts["train_windows"], window_bytes(fc.max_seq_len), fc.row_group_mb,
                                 fc.train_files, max(1, cfg.train.num_proc))
        paths = write_tables(spark, cfg, root, inputs, tables, files)
        clock.progress(f"wrote {len(paths)} tables under {root}")
        metadata_path = io.feature_path(root, schema.FEATURE_METADATA)
        metadata = write_metadata(spark, metadata_path, inputs, tables, counts, fc, clock, extra={
            "train_files": files, "quality_report": report_path, "vocab_from": vocab_from,
            "vocab_mode": fc.vocab_mode if vocab_from else "build"})
        release(inputs, tables)

    log.info("featurize: wrote %s in %.0f s (protocol %s, vocab %s, %s)", root, clock.elapsed(),
             inputs.split.protocol, metadata["vocab_version"], counts)
    summary = {"features": root, **paths, "metadata": metadata_path, "quality_report": report_path,
               "vocab_version": metadata["vocab_version"], **inputs.split.as_dict(), **counts}
    return with_warnings(summary, inputs.split, cfg.evaluate, unused_warning)


class Clock:
    """The time since featurize started, and its progress lines."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def progress(self, step: str) -> None:
        log.info("featurize: %s (%.0f s)", step, self.elapsed())


@dataclass(frozen=True)
class Inputs:
    """What every table is built from: the clean events and their collapsed steps (both with
    the split attached), the split and the vocabularies with their versions."""

    events: DataFrame
    collapsed: DataFrame  # the steps before the split is attached (persisted)
    steps: DataFrame
    split: Split
    vocabs: dict[str, DataFrame]
    versions: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Tables:
    """The feature tables built from :class:`Inputs` and checked by the leakage guard."""

    train: DataFrame
    validation: DataFrame
    test: DataFrame
    user_history: DataFrame
    items: DataFrame
    users: DataFrame
    times: dict[str, dt.datetime]  # snapshot name -> its as_of


def prepare(spark: SparkSession, events: DataFrame, cfg: Config, vocab_from: str, clock: Clock) -> Inputs:
    """Collapse the clean events into steps, choose the split and attach it, and build (or
    load, or extend) the vocabularies."""
    fc = cfg.featurize
    # Every table is built from the steps: collapse them once. Vocabularies are small and
    # broadcast into each table's plan; the checked frames are written as they were checked.
    collapsed = add_gap_buckets(collapse_steps(events)).persist()
    split = choose_split(collapsed, events, fc, cfg.evaluate)
    if split.per_user:
        log.warning("featurize: %s", split.reason)
    clock.progress(f"split {split.as_dict()} ({split.reason})")
    # Under leave_last_out every event and step carries its user's cutoffs from here on.
    events, raw_steps = split.attach(events), split.attach(collapsed)
    if split.per_user:
        raw_steps = raw_steps.persist()
    if vocab_from:
        vocabs = load_vocabs(spark, vocab_from, raw_steps, split)
        if fc.vocab_mode == "extend":
            vocabs = extend_vocabs(vocabs, raw_steps, events, split, fc)
    else:
        vocabs = build_vocabs(raw_steps, events, split, fc)
    versions = {spec.kind: vocab.version(vocabs[spec.kind], spec) for spec in vocab.SPECS}
    clock.progress("vocabularies " + ", ".join(f"{kind} {v['size']}" for kind, v in versions.items()))
    return Inputs(events, collapsed, raw_steps, split, vocabs, versions)


def check_quality(spark: SparkSession, cfg: Config, inputs: Inputs, vocab_from: str, clock: Clock) -> str:
    """Measure the data quality, write and log its report, and stop on a breached threshold:
    before the expensive tables are built.

    Returns:
        the report's path.
    """
    fc, split = cfg.featurize, inputs.split
    report = quality.quality_report(inputs.events, inputs.steps, inputs.vocabs["item"], split, fc.dq_popularity_top_k)
    checks = quality.evaluate_checks(report, {
        "dq_max_null_rate": fc.dq_max_null_rate, "dq_max_event_mix_psi": fc.dq_max_event_mix_psi,
        "dq_max_popularity_psi": fc.dq_max_popularity_psi, "dq_max_oov_rate": fc.dq_max_oov_rate,
        "dq_min_drift_events": fc.dq_min_drift_events, "per_user_split": split.per_user,
        "min_item_count": None if vocab_from else fc.min_item_count,
    })
    report = {**report, "cutoffs": split.as_dict(), "checks": checks,
              "passed": all(c["passed"] for c in checks)}
    report_path = cfg.paths.resolve("reports").rstrip("/") + "/" + schema.FEATURE_QUALITY_REPORT
    io.write_json(spark, report_path, report)
    tracking.log_json(report, schema.FEATURE_QUALITY_REPORT)
    tracking.log_results({f"dq.{c['check']}": float(c["value"]) for c in checks}, {}, {})
    quality.raise_on_failure(checks, report_path)
    clock.progress(f"data quality: {len(checks)} checks passed")
    return report_path


def build_tables(inputs: Inputs, fc: FeaturizeConfig) -> Tables:
    """The training windows, evaluation rows, latest histories and feature snapshots (lazy;
    the windows, evaluation rows and snapshots persisted)."""
    split, length = inputs.split, fc.max_seq_len
    steps = encode_items(inputs.steps, inputs.vocabs["item"])
    train = train_windows(steps, split.validation, length, fc.max_windows_per_user).persist()
    validation = eval_rows(steps, split.validation, split.test, length).persist()
    test = eval_rows(steps, split.test, None, length).persist()
    user_history = history_rows(steps, None, length)
    items, users, times = _snapshots(inputs.events, split, fc, inputs.vocabs)
    return Tables(train, validation, test, user_history, items, users, times)


def checked_counts(inputs: Inputs, tables: Tables, fc: FeaturizeConfig, clock: Clock) -> dict[str, int]:
    """Run the leakage guard and count the steps, users and unused training steps; stop when
    validation or test holds too few users (:func:`check_eval_users`).

    Returns:
        the counts of metadata.json.
    """
    split = inputs.split
    counts = check_no_leakage(
        train=tables.train, item_vocab=inputs.vocabs["item"], steps=inputs.steps, validation=tables.validation,
        test=tables.test, cutoffs=split, item_features=tables.items, user_features=tables.users,
        events=inputs.events, popularity_days=fc.popularity_days, train_as_of=tables.times["train"],
    )
    totals = inputs.steps.agg(F.count("*"), F.countDistinct(schema.USER_ID)).first()
    counts = {"steps": int(totals[0]), "users": int(totals[1]), **counts,
              **unused_training_steps(inputs.steps, split, fc)}
    clock.progress(f"leakage guard passed {counts}")
    check_eval_users(counts, split, fc)
    return counts


def write_tables(spark: SparkSession, cfg: Config, root: str, inputs: Inputs, tables: Tables,
                 files: int) -> dict[str, str]:
    """Write every table of schema.FEATURE_TABLES under ``root`` (the training windows
    shuffled into ``files`` files).

    Returns:
        {table: its path}.
    """
    fc = cfg.featurize
    paths = {name: io.feature_path(root, name) for name in schema.FEATURE_TABLES}
    for spec in vocab.SPECS:
        table = schema.conform(inputs.vocabs[spec.kind], spec.schema).repartition(1).sortWithinPartitions(spec.index)
        io.write_table(table, paths[spec.table])
    io.write_table(
        schema.conform(shuffle_for_training(tables.train, files, fc.shuffle_seed), schema.TRAIN_TABLE_SCHEMA),
        paths["train"],
        block_mb(fc.row_group_mb),
    )
    io.write_table(schema.conform(tables.validation, schema.EVAL_SCHEMA), paths["validation"])
    io.write_table(schema.conform(tables.test, schema.EVAL_SCHEMA), paths["test"])
    io.write_table(schema.conform(tables.user_history, schema.USER_HISTORY_SCHEMA), paths["user_history"])
    io.write_table(tables.items, paths["item_features"])
    io.write_table(tables.users, paths["user_features"])
    io.write_table(schema.conform(inputs.split.user_table(inputs.steps), schema.USER_SPLIT_SCHEMA), paths["user_split"])
    io.write_table(feedback.feedback_counts(spark, cfg, tables.times["serve"]), paths["feedback_counts"])
    return paths


def write_metadata(spark: SparkSession, path: str, inputs: Inputs, tables: Tables, counts: dict[str, int],
                   fc: FeaturizeConfig, clock: Clock, extra: dict[str, Any]) -> dict[str, Any]:
    """Write metadata.json to ``path`` and log it, with the vocabulary versions (params), the
    counts (metrics) and the protocol (tag), to the stage's run.

    Args:
        extra: further keys of metadata.json, after the snapshots' as_of.

    Returns:
        the metadata.
    """
    split, versions = inputs.split, inputs.versions
    extra = {"snapshots": {name: as_of.isoformat() for name, as_of in tables.times.items()}, **extra,
             "protocol_reason": split.reason}
    metadata = build_metadata(versions, split, fc.price_buckets, fc.max_seq_len, counts, extra)
    io.write_json(spark, path, metadata)
    tracking.log_json(metadata, schema.FEATURE_METADATA)
    tracking.log_results(
        {**counts, "featurize_s": clock.elapsed()},
        {"vocab_version": metadata["vocab_version"], **{f"vocab.{kind}.version": v["version"] for kind, v in versions.items()}},
        {"protocol": split.protocol},
    )
    return metadata


def release(inputs: Inputs, tables: Tables) -> None:
    """Unpersist the frames featurize persisted."""
    for df in (inputs.collapsed, inputs.steps, tables.train, tables.validation, tables.test, tables.items,
               tables.users, *inputs.vocabs.values()):
        df.unpersist()


def with_warnings(summary: dict[str, Any], split: Split, ec: EvaluateConfig, unused_warning: str) -> dict[str, Any]:
    """``summary`` with its ``warning``, when there is one: ``evaluate.protocol=auto`` switched to
    leave_last_out, or many training steps are in no training window."""
    warnings = [split.reason] if ec.protocol == AUTO and split.protocol == LEAVE_LAST_OUT else []  # switched
    warnings += [unused_warning] if unused_warning else []
    if warnings:
        summary["warning"] = " | ".join(warnings)
    return summary
