"""The ``clean`` stage: raw events to validated, de-duplicated, sessionised, pseudonymised events.

Reads ``paths.raw`` (``clean.input_layout``: the REES46 contract, RetailRocket or YOOCHOOSE)
and writes
  ``paths.clean``       CLEAN_SCHEMA, partitioned by event_date,
  ``paths.quarantine``  QUARANTINE_SCHEMA partitioned by load_date: each rejected row, its
                        reason and its original content with the user id replaced by its
                        pseudonym (the raw user id appears in no output),
  ``paths.reports``/clean_report.json  the reconciliation, also logged to MLflow,
  ``paths.product_ids`` under ``clean.id_types.product_id=string`` only: each product's 63-bit
                        key (its product_id in the clean events) and its id as it came in, by
                        event_date (product_ids.py).
It also validates the shop's logged feedback, ``paths.feedback`` when present, into
``paths.clean_feedback`` and ``paths.feedback_quarantine`` (feedback.py; its counts under
``feedback`` in the report).

What happens to a row, in this order (each row has exactly one fate):
  rejected (a reason code, see validate.py) > exact duplicate > near-duplicate (same user,
  item, event type and source session, at most ``near_duplicate_seconds`` after the previous
  one: the first of a burst is kept) > bot (the user-day breaks a rate threshold) > kept.
Every rule that looks at several rows works inside one UTC day of one user, so the output of a
date depends only on that date's input rows: re-running any date range gives the same rows.
Sessions: the source's user_session, else a new session after ``session_gap_minutes`` of
inactivity (sessions end at midnight UTC); a session longer than ``max_session_minutes`` is
split into pieces (``<id>~1``, ``<id>~2``, ...).

The run's dates (``clean.start_date..end_date``, else every date read) are written to a
staging folder, reconciled (rows read = kept + rejected by reason + duplicates +
near-duplicates + bot rows, else DataQualityError and nothing is replaced), and only then
swapped into the live tables partition by partition (see publish.py for the guarantee).

The rules that look at several rows are in rules.py, the quarantine's records in quarantine.py,
the reconciliation, its report and its gates in reconciliation.py; this module is the stage.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import io, product_ids, tracking, waits
from recsys_spark import schema
from recsys_spark.config import CleanConfig, Config
from recsys_spark.errors import DataQualityError
from recsys_spark.etl import adapters, feedback, publish
from recsys_spark.etl.counts import observe
from recsys_spark.etl.pseudonym import pseudonym_key
from recsys_spark.etl.quarantine import offending_sample, quarantine_rows
from recsys_spark.etl.reconciliation import (
    REJECTED_WARN_SHARE, Outcome, bot_report, build_report, check_bot_share, check_kept, check_rejected_share,
    rejection_report, report_metrics, top_reason,
)
from recsys_spark.etl.rules import BehaviourRules, clean_events
from recsys_spark.etl.validate import BUCKET, IN_WINDOW, PRODUCT_TEXT, EventWindow, Rules, parse_events, valid_events
from recsys_spark.spark import materialised, spread_key

log = logging.getLogger(__name__)

REPORT_FILE = "clean_report.json"


def product_id_pairs(parsed: DataFrame) -> DataFrame:
    """Under string product ids: the distinct (key, original id, event date) of the valid rows of
    :func:`parse_events`, as schema.PRODUCT_IDS_SCHEMA (the rows later dropped as duplicates or
    bots included: a key's original id is a function of the key, so extra pairs are harmless)."""
    valid = parsed.where(F.col(schema.REASON).isNull() & F.col(IN_WINDOW))
    pairs = valid.select(schema.PRODUCT_ID, F.col(PRODUCT_TEXT).alias(schema.ORIGINAL_ID), schema.EVENT_DATE).distinct()
    return schema.conform(pairs, schema.PRODUCT_IDS_SCHEMA)


# ----------------------------------------------------------------------------- the stage


@dataclass(frozen=True)
class Tables:
    """Where a clean run reads and writes: ``paths.raw``, the live tables, this run's staging
    folders (under its ``run_id``) and the report."""

    raw: str
    clean: str
    quarantine: str
    report: str
    product_ids: str
    string_products: bool
    run_id: str

    @classmethod
    def from_config(cls, cfg: Config) -> "Tables":
        paths = cfg.paths
        return cls(raw=paths.resolve("raw"), clean=paths.resolve("clean"), quarantine=paths.resolve("quarantine"),
                   report=paths.resolve("reports").rstrip("/") + "/" + REPORT_FILE,
                   product_ids=paths.resolve("product_ids"),
                   string_products=product_ids.is_string(cfg.clean.id_types[schema.PRODUCT_ID]),
                   run_id=uuid.uuid4().hex)

    def live(self) -> tuple[str, ...]:
        """The tables this run publishes into: clean, quarantine and, under string ids, product_ids."""
        return (self.clean, self.quarantine, *([self.product_ids] if self.string_products else []))

    def staged(self, table: str) -> str:
        return publish.staging_path(table, self.run_id)


@dataclass(frozen=True)
class Staged:
    """What :func:`write_staged` counted while it wrote: the rows read (``rows_read``,
    ``outside_window``, ``undated``) and rejected by reason, the fates of the valid rows
    (:meth:`Fates.counts`), and the sample of offending values the rejection gate shows."""

    counts: dict[str, int]
    fate: dict[str, int]
    shown: list[list[str]]

    def outcome(self) -> Outcome:
        return Outcome(
            rows_read=self.counts["rows_read"],
            rows_kept=self.fate["kept"],
            duplicates=self.fate["duplicates"],
            near_duplicates=self.fate["near_duplicates"],
            bot_rows=self.fate["bot_rows"],
            rejected={code: self.counts[code] for code in schema.REASON_CODES},
            outside_window=self.counts["outside_window"],
        )


def partitioned_rows(raw: DataFrame, window: EventWindow, rules: Rules, partitions: int) -> DataFrame:
    """:func:`parse_events` of ``raw``, hash-partitioned on the (day, bucket) spread over
    ``partitions``: one parse and one shuffle, from which the quarantine and the clean events
    are both written."""
    # event_time is _micros as a timestamp (clean_events makes it again): not shuffled.
    # Each (day, bucket) goes to a partition of its own, round robin, rather than where its
    # hash falls: the window stage waits for its largest partition (10M lines, 8 partitions:
    # 0.34M to 2.05M rows each by hash). _bucket becomes that spread value: still one
    # value per (day, user bucket), so it still names one output file per task and day.
    day_bucket = F.unix_date(F.col(schema.EVENT_DATE)) * rules.files_per_day + F.col(BUCKET)
    return (parse_events(raw, window, rules).drop(schema.EVENT_TIME)
            .withColumn(BUCKET, spread_key(day_bucket, partitions)).repartition(partitions, BUCKET))


def write_staged(parsed: DataFrame, tables: Tables, cfg: Config, rules: Rules, behaviour: BehaviourRules,
                 key: bytes) -> Staged:
    """Write the quarantine, the clean events and (under string ids) the product ids of
    ``parsed`` (:func:`partitioned_rows`) to this run's staging folders, counting as they go."""
    cc = cfg.clean
    # The quarantine's write runs on a thread beside the clean events' write: its small jobs
    # fill the cores that the window stage leaves idle in its last tasks and between jobs.
    # The pool is left (its write waited for) before the parsed rows are released.
    with materialised(parsed) as parsed, ThreadPoolExecutor(1, thread_name_prefix="quarantine") as pool:
        in_window = F.col(IN_WINDOW)
        observed, read = observe(
            parsed, "clean_read",
            F.count(F.when(in_window, 1)).alias("rows_read"),
            F.count(F.when(~in_window, 1)).alias("outside_window"),
            F.count(F.when(in_window & F.col(schema.LOAD_DATE).isNull(), 1)).alias("undated"),
        )
        # The counts by reason over the rejected rows only: a few in a hundred, where nine
        # conditional counts over every row read took seconds at 10M lines. On a log without
        # a single bad row this side is empty (see waits.observed).
        rejected, rejections = observe(
            observed.where(in_window & F.col(schema.REASON).isNotNull()), "clean_rejected",
            *[F.count(F.when(F.col(schema.REASON) == code, 1)).alias(code) for code in schema.REASON_CODES],
        )
        quarantine = quarantine_rows(rejected, key, cc.input_layout, cc.input_format)
        log.info("clean: writing the quarantine; de-duplicating, sessionising and writing the clean events")
        quarantined = pool.submit(
            io.write_partitioned, quarantine.repartition(schema.LOAD_DATE), tables.staged(tables.quarantine),
            schema.LOAD_DATE)
        events, fates = clean_events(valid_events(parsed), key, behaviour)
        io.write_partitioned(events, tables.staged(tables.clean), schema.EVENT_DATE)
        if tables.string_products:
            io.write_partitioned(product_id_pairs(parsed), tables.staged(tables.product_ids), schema.EVENT_DATE)
        waits.result(quarantined, cfg.spark.stage_timeout_minutes * 60, "the quarantine's write",
                     "spark.stage_timeout_minutes")
        # Read while the parsed rows exist: a count Spark did not report is taken from them.
        timeout_s = cfg.spark.observation_timeout_s
        counts = {**read.counts(timeout_s), **rejections.counts(timeout_s)}
        fate = fates.counts(timeout_s)
        return Staged(counts, fate, rejection_sample(parsed, counts, key, rules, cc))


def rejection_sample(parsed: DataFrame, counts: dict[str, int], key: bytes, rules: Rules,
                     cc: CleanConfig) -> list[list[str]]:
    """:func:`offending_sample` of the top reason, when more than min(REJECTED_WARN_SHARE,
    ``clean.max_rejected_share``) of the rows read were rejected; else empty."""
    rejected_by = {code: counts[code] for code in schema.REASON_CODES}
    top = top_reason(rejected_by)
    if sum(rejected_by.values()) <= min(REJECTED_WARN_SHARE, cc.max_rejected_share) * counts["rows_read"]:
        return []
    return offending_sample(parsed.where(F.col(IN_WINDOW) & (F.col(schema.REASON) == top)), top, key, rules,
                            cc.input_layout, cc.input_format)


def check_staged(spark: SparkSession, tables: Tables, outcome: Outcome, bots: dict[str, Any],
                 rejections: dict[str, Any], cc: CleanConfig) -> None:
    """The gates before anything is published: the rejected and bot shares, rows kept, and (under
    string ids) no two product ids with one key. A DataQualityError sets this run's rejected
    rows aside and clears the staged tables; the live tables stay as they were."""
    aside = publish.stopped_path(tables.quarantine, tables.run_id)
    try:
        check_rejected_share(rejections, cc, aside)
        check_bot_share(bots, cc)
        check_kept(outcome)
        if tables.string_products:
            live = [product_ids.read_table(spark, tables.product_ids)] if io.holds_data(spark, tables.product_ids) else []
            staged = [spark.read.schema(schema.PRODUCT_IDS_SCHEMA).parquet(tables.staged(tables.product_ids))]
            product_ids.check_collisions(functools.reduce(DataFrame.unionByName, [
                t.select(schema.PRODUCT_ID, schema.ORIGINAL_ID) for t in live + staged]))
    except DataQualityError:
        # Nothing is published: the live tables stay as they were, consistent with each other.
        # This run's rejected rows are kept apart, where the message says (see publish.set_aside).
        publish.set_aside(spark, tables.staged(tables.quarantine), tables.quarantine, tables.run_id)
        for table in (tables.clean, *([tables.product_ids] if tables.string_products else [])):
            publish.clear_leftovers(spark, table)
        raise
    staged_clean = tables.staged(tables.clean)
    written = spark.read.schema(schema.CLEAN_SCHEMA).parquet(staged_clean).count() if io.exists(spark, staged_clean) else 0
    if written != outcome.rows_kept:
        raise DataQualityError(f"clean wrote {written} rows to {staged_clean} but kept {outcome.rows_kept}")


def publish_staged(spark: SparkSession, tables: Tables, window: EventWindow, undated: bool) -> list[str]:
    """Swap the staged partitions into the live tables.

    A closed window replaces each of its dates (a date without rows now loses its old
    partition); an open one the dates found in the input. ``undated``: the quarantine's
    partition of rows without a date is replaced too.

    Returns:
        the ISO dates published.
    """
    staged_clean, staged_quarantine = tables.staged(tables.clean), tables.staged(tables.quarantine)
    closed = window.dates()
    dates = [d.isoformat() for d in closed] if closed is not None else sorted(
        set(publish.staged_values(spark, staged_clean, schema.EVENT_DATE))
        | set(publish.staged_values(spark, staged_quarantine, schema.LOAD_DATE)))
    publish.swap_partitions(spark, staged_clean, tables.clean, schema.EVENT_DATE, list(dates), tables.run_id)
    if tables.string_products:
        publish.swap_partitions(spark, tables.staged(tables.product_ids), tables.product_ids, schema.EVENT_DATE,
                                list(dates), tables.run_id)
    publish.swap_partitions(spark, staged_quarantine, tables.quarantine, schema.LOAD_DATE,
                            [*dates, *([None] if undated else [])], tables.run_id)
    return dates


def log_report(report: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Log the report's metrics to the stage's MLflow run, and its warning (tag and log line)."""
    warning = report.get("warning")
    tracking.log_results(metrics, {}, {"clean.warning": warning[:5000]} if warning else {})
    if warning:
        log.warning("clean: %s", warning)


def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Clean the run's dates of ``paths.raw`` into ``paths.clean`` and ``paths.quarantine``.

    Returns:
        the report (the reconciliation's counts, dates, paths) and the report's path.

    Raises:
        InputError: ``paths.raw`` is missing or empty for the window, a CSV header does not
            match the layout, no pseudonymisation key is set, or ``paths.feedback`` lacks a
            column (the events are published by then).
        ConfigError: a bad window, threshold, alias or files per day.
        DataQualityError: the counts do not reconcile (nothing is replaced then).
    """
    cc = cfg.clean
    tables = Tables.from_config(cfg)
    rules, behaviour = Rules.from_config(cc), BehaviourRules.from_config(cc)
    key = pseudonym_key(cc.pseudonym_key_env, cc.allow_dev_key)
    window = EventWindow.from_config(cc.start_date, cc.end_date, dt.datetime.now(dt.timezone.utc))
    files = adapters.in_window(adapters.list_input_files(spark, tables.raw), window.start, window.end)
    raw = adapters.read_files(spark, files, cc.input_layout, cc.input_format, cc.id_types)
    partitions = int(spark.conf.get("spark.sql.shuffle.partitions"))

    with tracking.stage_run(cfg, "clean"):
        for table in tables.live():
            publish.clear_leftovers(spark, table)
        log.info("clean: %d file(s) of %s (%s layout) for dates %s..%s", len(files), tables.raw, cc.input_layout,
                 window.start or "first", window.end or "last")
        log.info("clean: parsing and validating")
        staged = write_staged(partitioned_rows(raw, window, rules, partitions), tables, cfg, rules, behaviour, key)
        outcome = staged.outcome()
        outcome.check()
        bots, rejections = bot_report(staged.fate, behaviour), rejection_report(outcome, staged.shown)
        check_staged(spark, tables, outcome, bots, rejections, cc)
        undated = bool(int(staged.counts["undated"])) or any(f.load_date is None for f in files)
        dates = publish_staged(spark, tables, window, undated)
        # The shop's feedback on served recommendations, if any (etl/feedback.py): published on its own.
        fed_back = feedback.clean_feedback(spark, cfg)

        report = build_report(outcome, dates, tables.clean, tables.quarantine, bots, fed_back, rejections)
        io.write_json(spark, tables.report, report)
        tracking.log_json(report, REPORT_FILE)
        log_report(report, {**report_metrics(report, outcome, bots, rejections), **feedback.feedback_metrics(fed_back)})

    log.info("clean: kept %d of %d rows (%d rejected, %d duplicates, %d near-duplicates, %d bot rows) over %d "
             "date(s)", outcome.rows_kept, outcome.rows_read, sum(outcome.rejected.values()), outcome.duplicates,
             outcome.near_duplicates, outcome.bot_rows, len(dates))
    return {**report, "report_path": tables.report}
