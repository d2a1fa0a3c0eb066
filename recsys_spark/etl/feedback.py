"""Logged feedback: what the shop reports back about the recommendations it showed.

The contract is schema.FEEDBACK_SCHEMA (one row per exposure: a served item shown to a user,
with the served row's key and propensity as served, and whether the user clicked or bought),
written by the shop as Parquet under ``paths.feedback`` (only Parquet is read: the shop writes
typed columns, so the text formats of ``clean.input_format`` are not accepted here).

``clean`` (:func:`clean_feedback`) validates it: every row of the run's window (``run_date``
inside ``clean.start_date..end_date``; a row without a run_date is in every window) gets the
first reason of ``schema.FEEDBACK_REASON_CODES`` it breaks, the checks against
``paths.recommendations`` included (the key must name a served row and the propensity must be
the served one, to 1e-9 relative), and of several valid rows of one exposure one is kept. The
served rows are the recommendations and the lists the service answered in real time or from the
fallback (``{paths.feedback}/_served_lists``, written by serving/exposures.py, hidden from the
readers of paths.feedback by its leading ``_``); a key served by both carries both propensities,
and an exposure is valid when its propensity is one of them.
Valid rows go to ``paths.clean_feedback`` (CLEAN_FEEDBACK_SCHEMA, by run_date), the others to
``paths.feedback_quarantine`` (QUARANTINE_SCHEMA by run_date, a null run_date in Spark's null
partition). Both are staged, reconciled (rows read = kept + quarantined, else DataQualityError
and nothing is replaced) and then swapped in as clean's events are (publish.py): a closed window
replaces each of its dates, an open one the dates found; the null partition of the quarantine is
always replaced (every run reads every row without a run_date). Absent or empty feedback is
skipped and nothing is touched.

``featurize`` counts the clean feedback per item into the feature table ``feedback_counts``
(features/feedback.py).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recsys_spark import io
from recsys_spark import schema
from recsys_spark.config import Config
from recsys_spark.errors import DataQualityError, InputError
from recsys_spark.etl import publish
from recsys_spark.etl.validate import EventWindow
from recsys_spark.spark import materialised

log = logging.getLogger(__name__)

# The largest relative difference between a logged propensity and the served one.
PROPENSITY_RTOL = 1e-9
# Columns of flag_feedback beside the contract's (dropped before writing).
SERVED_PROPENSITY = "_served_propensity"
_SERVED_PROPENSITIES = "_served_propensities"
_SERVED = "_served"
_RAW = "_raw_"  # prefix of a column as read, kept when its type is not the contract's
_RANK = "_rank"


# ----------------------------------------------------------------------------- transforms


def typed_feedback(raw: DataFrame, path: str, id_type: str = schema.ID_INTEGER) -> DataFrame:
    """The rows of :func:`io.read_feedback` with FEEDBACK_SCHEMA's types (item_id a string under
    ``clean.id_types.product_id=string``, ``id_type``).

    A column of another type is converted value by value (``try_cast``: a value that does not
    convert becomes null, and is quarantined as missing) and kept as read in ``_raw_<name>`` for
    the quarantine's record.

    Raises:
        InputError: a column whose type cannot convert at all (naming it, the path and the key).
    """
    columns, originals = [], []
    for f in schema.with_product_ids(schema.FEEDBACK_SCHEMA, id_type).fields:
        found = raw.schema[f.name].dataType
        if found == f.dataType:
            columns.append(F.col(f.name))
            continue
        try:
            raw.select(F.col(f.name).try_cast(f.dataType))
        except AnalysisException:
            raise InputError(f"{path}: column {f.name} is {found.simpleString()}, which does not convert to "
                             f"{f.dataType.simpleString()} (config key paths.feedback)") from None
        columns.append(F.col(f.name).try_cast(f.dataType).alias(f.name))
        originals.append(F.col(f.name).alias(_RAW + f.name))
    return raw.select(*columns, *originals, schema.SOURCE_FILE)


def in_window(window: EventWindow) -> Column:
    """Rows of the run: run_date inside the window's dates (None = open), or no run_date."""
    run_date = F.col(schema.RUN_DATE)
    inside = F.lit(True)
    if window.start is not None:
        inside = inside & (run_date >= F.lit(window.start))
    if window.end is not None:
        inside = inside & (run_date <= F.lit(window.end))
    return run_date.isNull() | inside


def served_exposures(recommendations: DataFrame, served_lists: DataFrame | None = None) -> DataFrame:
    """The served rows' keys (schema.EXPOSURE_KEY), one row per key, with the smallest served
    propensity as ``_served_propensity`` and all of them (sorted, distinct) as
    ``_served_propensities``.

    Args:
        recommendations: the score stage's rows (RECOMMENDATION_SCHEMA; one per key).
        served_lists: the service's real-time and fallback lists (SERVED_LIST_SCHEMA), or None.
            A key of both (the cached list and a real-time one of the same date) then carries
            several propensities, each of them a served one.
    """
    rows = recommendations.select(*schema.EXPOSURE_KEY, schema.PROPENSITY)
    if served_lists is not None:
        rows = rows.unionByName(served_lists.select(*schema.EXPOSURE_KEY, schema.PROPENSITY))
    return rows.groupBy(*schema.EXPOSURE_KEY).agg(
        F.min(schema.PROPENSITY).alias(SERVED_PROPENSITY),
        F.array_sort(F.collect_set(schema.PROPENSITY)).alias(_SERVED_PROPENSITIES))


def differs_from_served(propensity: Column, served: Column) -> Column:
    """Whether the logged ``propensity`` differs from every served propensity in the array
    ``served`` by more than PROPENSITY_RTOL relative (an exposure is valid when it matches one)."""
    return F.forall(served, lambda p: F.abs(propensity - p) > PROPENSITY_RTOL * p)


def flag_feedback(feedback: DataFrame, served: DataFrame) -> DataFrame:
    """Give every row that breaks a rule its reason; of the valid rows of one exposure, flag all
    but one as duplicates.

    Args:
        feedback: :func:`typed_feedback` rows (FEEDBACK_SCHEMA columns, any others carried).
        served: :func:`served_exposures` (its keys and served propensities).

    Returns:
        ``feedback`` with ``_served_propensity`` (null for an unknown exposure) and ``reason``
        (null for a kept row): the first of schema.FEEDBACK_REASON_CODES that applies. Of the
        valid rows of one key the earliest shown_at is kept (nulls last; ties: a click, then a
        purchase first, then the other columns, so a re-run keeps the same row).
    """
    user, item, run_date, slot = (F.col(c) for c in schema.EXPOSURE_KEY)
    propensity = F.col(schema.PROPENSITY)
    broken = {
        schema.REASON_NULL_USER: user.isNull(),
        schema.FEEDBACK_NULL_ITEM: item.isNull(),
        schema.FEEDBACK_NULL_RUN_DATE: run_date.isNull(),
        schema.FEEDBACK_NULL_SLOT: slot.isNull(),
        schema.FEEDBACK_NEGATIVE_SLOT: slot < 0,
        schema.FEEDBACK_NULL_PROPENSITY: propensity.isNull() | F.isnan(propensity),
        schema.FEEDBACK_NONPOSITIVE_PROPENSITY: propensity <= 0,
        schema.FEEDBACK_PROPENSITY_ABOVE_ONE: propensity > 1,
        schema.FEEDBACK_NULL_CLICKED: F.col(schema.CLICKED).isNull(),
        schema.FEEDBACK_UNKNOWN_EXPOSURE: F.col(_SERVED).isNull(),
        schema.FEEDBACK_PROPENSITY_DIFFERS: differs_from_served(propensity, F.col(_SERVED_PROPENSITIES)),
    }
    reason = None
    for code in schema.FEEDBACK_REASON_CODES:  # one CASE WHEN in rule order: the first rule broken wins
        if code in broken:
            condition = F.coalesce(broken[code], F.lit(False))
            reason = F.when(condition, F.lit(code)) if reason is None else reason.when(condition, F.lit(code))
    marked = served.select("*", F.lit(True).alias(_SERVED))
    joined = feedback.join(marked, on=schema.EXPOSURE_KEY, how="left")
    reasoned = joined.select("*", reason.alias(schema.REASON))
    # Valid rows first in each key, so that they hold ranks 1..n: rank 1 is kept.
    order = [F.col(schema.REASON).isNotNull(), F.col(schema.SHOWN_AT).asc_nulls_last(),
             F.col(schema.CLICKED).desc_nulls_last(), F.col(schema.PURCHASED).desc_nulls_last(),
             *[F.col(c).asc_nulls_last() for c in (schema.PROPENSITY, schema.POLICY, schema.POLICY_VERSION,
                                                   schema.SOURCE_FILE)]]
    ranked = reasoned.select("*", F.row_number().over(Window.partitionBy(*schema.EXPOSURE_KEY).orderBy(*order))
                             .alias(_RANK))
    duplicate = F.col(schema.REASON).isNull() & (F.col(_RANK) > 1)
    out = ranked.withColumn(schema.REASON, F.when(duplicate, F.lit(schema.FEEDBACK_DUPLICATE))
                            .otherwise(F.col(schema.REASON)))
    return out.drop(_SERVED, _SERVED_PROPENSITIES, _RANK)


def kept_feedback(flagged: DataFrame, id_type: str = schema.ID_INTEGER) -> DataFrame:
    """The rows of :func:`flag_feedback` without a reason, as CLEAN_FEEDBACK_SCHEMA (with_product_ids)."""
    return schema.conform(flagged.where(F.col(schema.REASON).isNull()),
                          schema.with_product_ids(schema.CLEAN_FEEDBACK_SCHEMA, id_type))


def quarantined_feedback(flagged: DataFrame) -> DataFrame:
    """The rows of :func:`flag_feedback` with a reason, as schema.FEEDBACK_QUARANTINE_SCHEMA:
    ``raw_record`` is a JSON object of the row's contract columns as read (user_id is already
    the pseudonym)."""
    fields = [F.col(_RAW + c if _RAW + c in flagged.columns else c).alias(c) for c in schema.FEEDBACK_SCHEMA.names]
    record = F.to_json(F.struct(*fields), {"ignoreNullFields": "false"})
    return flagged.where(F.col(schema.REASON).isNotNull()).select(
        F.col(schema.REASON), record.alias(schema.RAW_RECORD), F.col(schema.SOURCE_FILE), F.col(schema.RUN_DATE))


# ----------------------------------------------------------------------------- reconciliation


@dataclass(frozen=True)
class FeedbackOutcome:
    """What happened to the feedback rows of the run: the terms of the reconciliation."""

    rows_read: int = 0
    rows_kept: int = 0
    quarantined: dict[str, int] = field(default_factory=lambda: {code: 0 for code in schema.FEEDBACK_REASON_CODES})

    def check(self) -> None:
        """Raise DataQualityError unless read = kept + quarantined."""
        quarantined = sum(self.quarantined.values())
        if self.rows_read != self.rows_kept + quarantined:
            raise DataQualityError(
                f"clean feedback does not reconcile: read {self.rows_read} != kept {self.rows_kept} + quarantined "
                f"{quarantined} {self.quarantined} (off by {self.rows_read - self.rows_kept - quarantined})")


def feedback_report(outcome: FeedbackOutcome, found: bool, dates: list[str]) -> dict[str, Any]:
    """The feedback part of clean's report and summary (no paths: they are the config's, and a
    report of the same input elsewhere is the same); ``warning`` when rows were read and none kept."""
    report = {"found": found, "rows_read": outcome.rows_read, "rows_kept": outcome.rows_kept,
              "quarantined": dict(outcome.quarantined), "dates": list(dates)}
    if outcome.rows_read and not outcome.rows_kept:
        reason, rows = max(outcome.quarantined.items(), key=lambda kv: kv[1])
        report["warning"] = (f"none of the {outcome.rows_read} feedback rows was kept (most: {rows} {reason}; "
                             "see paths.feedback_quarantine)")
    return report


def feedback_metrics(report: dict[str, Any]) -> dict[str, int]:
    """clean's MLflow metrics of :func:`feedback_report`."""
    return {"clean.feedback.rows_read": report["rows_read"], "clean.feedback.rows_kept": report["rows_kept"],
            **{f"clean.feedback.quarantined.{code}": n for code, n in report["quarantined"].items()}}


# ----------------------------------------------------------------------------- the stages' parts


def clean_feedback(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Validate ``paths.feedback`` of clean's window into ``paths.clean_feedback`` and
    ``paths.feedback_quarantine`` (see the module's docstring). Called by clean's ``run``.

    Returns:
        :func:`feedback_report`: found (false: no feedback, nothing touched), rows_read,
        rows_kept, quarantined (by reason) and dates (replaced).

    Raises:
        InputError: a column of the contract is missing or of a type that does not convert.
        ConfigError: a bad clean window.
        DataQualityError: the counts do not reconcile (nothing is replaced then).
    """
    cc = cfg.clean
    source = cfg.paths.resolve("feedback")
    clean_path = cfg.paths.resolve("clean_feedback")
    quarantine_path = cfg.paths.resolve("feedback_quarantine")
    window = EventWindow.from_config(cc.start_date, cc.end_date, dt.datetime.now(dt.timezone.utc))
    raw = io.read_feedback(spark, source)
    if raw is None:
        log.info("clean: no feedback at %s (paths.feedback): skipped", source)
        return feedback_report(FeedbackOutcome(), False, [])

    for table in (clean_path, quarantine_path):
        publish.clear_leftovers(spark, table)
    id_type = cc.id_types[schema.PRODUCT_ID]
    feedback = typed_feedback(raw, source, id_type).where(in_window(window))
    recommendations = io.read_recommendations(spark, cfg.paths.resolve("recommendations"), id_type)
    # The service's real-time and fallback lists are served rows too (absent: the batch's alone).
    served_lists = io.read_served_lists(spark, source, id_type)
    if recommendations is None:
        if served_lists is None:
            log.warning("clean: no recommendations at %s and no served lists under %s: every feedback row is "
                        "an unknown exposure", cfg.paths.resolve("recommendations"), source)
        recommendations = spark.createDataFrame([], schema.with_product_ids(schema.RECOMMENDATION_SCHEMA, id_type))
    if served_lists is not None:
        served_lists = served_lists.where(in_window(window))
    served = served_exposures(recommendations.where(in_window(window)), served_lists)
    run_id = uuid.uuid4().hex
    staged_clean = publish.staging_path(clean_path, run_id)
    staged_quarantine = publish.staging_path(quarantine_path, run_id)
    log.info("clean: validating the feedback of %s for run dates %s..%s", source, window.start or "first",
             window.end or "last")
    with materialised(flag_feedback(feedback, served)) as flagged:
        # Each date as at most clean.output_files_per_day files, as clean's events.
        kept = kept_feedback(flagged, id_type)
        bucket = F.pmod(F.xxhash64(schema.USER_ID), F.lit(cc.output_files_per_day))
        io.write_partitioned(kept.repartition(schema.RUN_DATE, bucket), staged_clean, schema.RUN_DATE)
        io.write_partitioned(quarantined_feedback(flagged).repartition(schema.RUN_DATE), staged_quarantine,
                             schema.RUN_DATE)

    # Counted from the input and from the files written.
    by_reason = {r[0]: r[1] for r in spark.read.schema(schema.FEEDBACK_QUARANTINE_SCHEMA).parquet(staged_quarantine)
                 .groupBy(schema.REASON).count().collect()}
    outcome = FeedbackOutcome(
        rows_read=feedback.count(),
        rows_kept=spark.read.schema(schema.with_product_ids(schema.CLEAN_FEEDBACK_SCHEMA, id_type))
        .parquet(staged_clean).count(),
        quarantined={code: by_reason.get(code, 0) for code in schema.FEEDBACK_REASON_CODES},
    )
    outcome.check()

    closed = window.dates()
    dates = [d.isoformat() for d in closed] if closed is not None else sorted(
        set(publish.staged_values(spark, staged_clean, schema.RUN_DATE))
        | set(publish.staged_values(spark, staged_quarantine, schema.RUN_DATE)))
    publish.swap_partitions(spark, staged_clean, clean_path, schema.RUN_DATE, list(dates), run_id)
    publish.swap_partitions(spark, staged_quarantine, quarantine_path, schema.RUN_DATE, [*dates, None], run_id)
    quarantined = sum(outcome.quarantined.values())
    log.info("clean: kept %d of %d feedback rows in %s (%d quarantined in %s%s) over %d run date(s)",
             outcome.rows_kept, outcome.rows_read, clean_path, quarantined, quarantine_path,
             ": " + ", ".join(f"{n} {code}" for code, n in outcome.quarantined.items() if n) if quarantined else "",
             len(dates))
    return feedback_report(outcome, True, dates)
