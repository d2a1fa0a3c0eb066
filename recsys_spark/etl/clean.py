"""The ``clean`` stage: raw events to validated, de-duplicated, sessionised, pseudonymised events.

Reads ``paths.raw`` (CSV, JSON lines or Parquet in the REES46 contract) and writes
  ``paths.clean``       CLEAN_SCHEMA, partitioned by event_date (re-running replaces those dates),
  ``paths.quarantine``  QUARANTINE_SCHEMA: each rejected row with its reason,
  ``paths.reports``/clean_report.json  the reconciliation of the counts, also logged to MLflow.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recsys_spark import io, tracking
from recsys_spark import schema as S
from recsys_spark.config import Config
from recsys_spark.errors import ConfigError, DataQualityError
from recsys_spark.etl.pseudonym import pseudonym_key, pseudonymise
from recsys_spark.etl.validate import EventWindow, parse_events, quarantine_rows, valid_events

log = logging.getLogger(__name__)

REPORT_FILE = "clean_report.json"
# The fields that make two events the same event (the whole typed contract).
IDENTITY_COLUMNS = list(S.RAW_COLUMNS)
_SESSION_HEX_CHARS = 32


def drop_exact_duplicates(events: DataFrame) -> DataFrame:
    """Keep one of each group of events identical in every contract field (after parsing)."""
    return events.dropDuplicates(IDENTITY_COLUMNS)


def assign_sessions(events: DataFrame, gap_minutes: int) -> DataFrame:
    """Add ``session_id``: the source's ``user_session`` when present, else one made by inactivity gap.

    Events of a user without a ``user_session`` are ordered by time; a gap of more than
    ``gap_minutes`` (exactly the gap stays in the session) starts a new session, whose id is
    the SHA-256 of (user, session start in microseconds), so re-runs give the same ids.

    Args:
        events: USER_ID (already pseudonymised: it goes into generated ids), EVENT_TIME,
            USER_SESSION (null when missing) and any other columns, kept as they are.

    Returns:
        ``events`` with SESSION_ID (string, never null) added.
    """
    missing = F.col(S.USER_SESSION).isNull()
    by_time = Window.partitionBy(S.USER_ID, missing).orderBy(S.EVENT_TIME)
    gap = F.unix_micros(F.col(S.EVENT_TIME)) - F.unix_micros(F.lag(S.EVENT_TIME).over(by_time))
    starts = F.coalesce(gap > gap_minutes * 60 * 1_000_000, F.lit(True)).cast("int")
    session_no = F.sum(starts).over(by_time)
    with_no = events.withColumn("_session_no", session_no)
    start = F.min(S.EVENT_TIME).over(Window.partitionBy(S.USER_ID, missing, "_session_no"))
    generated = F.substring(
        F.sha2(F.concat_ws("|", F.col(S.USER_ID), F.unix_micros(start).cast("string")), 256), 1, _SESSION_HEX_CHARS
    )
    return with_no.withColumn(S.SESSION_ID, F.when(missing, generated).otherwise(F.col(S.USER_SESSION))).drop(
        "_session_no"
    )


def layout_by_day(events: DataFrame, n_dates: int, files_per_day: int) -> DataFrame:
    """Repartition so that a partitioned write makes at most ``files_per_day`` files per event_date.

    Each (date, salt) key lands in one task, so a date is written by at most ``files_per_day``
    tasks; rows are sorted by date, user and time inside each file. The salt is a hash of the
    row, so the layout of a re-run is the same.
    """
    salt = F.pmod(F.xxhash64(S.USER_ID, S.EVENT_TIME, S.PRODUCT_ID, S.EVENT_TYPE), F.lit(files_per_day))
    return events.repartition(max(1, n_dates * files_per_day), F.col(S.EVENT_DATE), salt).sortWithinPartitions(
        S.EVENT_DATE, S.USER_ID, S.EVENT_TIME
    )


def clean_events(parsed: DataFrame, key: bytes, gap_minutes: int) -> DataFrame:
    """Valid rows of :func:`parse_events`, de-duplicated, pseudonymised and sessionised.

    Returns:
        CLEAN_SCHEMA columns (types as there, user_id the keyed pseudonym).
    """
    events = drop_exact_duplicates(valid_events(parsed))
    return S.conform(assign_sessions(pseudonymise(events, S.USER_ID, key), gap_minutes), S.CLEAN_SCHEMA)


@dataclass(frozen=True)
class Outcome:
    """What happened to the rows read: the counts of the reconciliation."""

    rows_read: int
    rows_kept: int
    duplicates: int
    rejected: dict[str, int] = field(default_factory=dict)

    def check(self) -> None:
        """Raise DataQualityError unless rows_read == rows_kept + rejected + duplicates."""
        rejected = sum(self.rejected.values())
        if self.rows_read != self.rows_kept + rejected + self.duplicates:
            raise DataQualityError(
                f"clean does not reconcile: read {self.rows_read} != kept {self.rows_kept} + rejected {rejected} "
                f"{self.rejected} + duplicates {self.duplicates} "
                f"(off by {self.rows_read - self.rows_kept - rejected - self.duplicates})"
            )


def count_parsed(parsed: DataFrame) -> tuple[int, dict[str, int], int, list[dt.date]]:
    """One aggregation over :func:`parse_events` output.

    Returns:
        (rows read, rejected rows by reason (every code, 0 included), exact duplicates among
        the valid rows, the sorted distinct event dates of the valid rows).
    """
    valid = F.col(S.REASON).isNull()
    row = parsed.agg(
        F.count(F.lit(1)).alias("read"),
        F.count(F.when(valid, 1)).alias("valid"),
        F.count_distinct(F.when(valid, F.struct(*IDENTITY_COLUMNS))).alias("distinct"),
        F.array_sort(F.collect_set(F.when(valid, F.col(S.EVENT_DATE)))).alias("dates"),
        *[F.count(F.when(F.col(S.REASON) == code, 1)).alias(code) for code in S.REASON_CODES],
    ).first()
    rejected = {code: int(row[code]) for code in S.REASON_CODES}
    return int(row["read"]), rejected, int(row["valid"]) - int(row["distinct"]), list(row["dates"])


def build_report(outcome: Outcome, dates: list[dt.date], clean_path: str, quarantine_path: str) -> dict[str, Any]:
    """The contents of clean_report.json."""
    return {
        "rows_read": outcome.rows_read,
        "rows_kept": outcome.rows_kept,
        "rejected": dict(outcome.rejected),
        "duplicates": outcome.duplicates,
        "dates": [d.isoformat() for d in dates],
        "clean_path": clean_path,
        "quarantine_path": quarantine_path,
    }


def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Clean ``paths.raw`` into ``paths.clean`` and ``paths.quarantine``; reconcile the counts.

    Returns:
        the report (counts, dates, paths) and the report's path.

    Raises:
        InputError: ``paths.raw`` is missing, or no pseudonymisation key is set.
        ConfigError: a bad processed window, files per day or session gap.
        DataQualityError: the counts do not reconcile.
    """
    import mlflow

    cc = cfg.clean
    raw_path = cfg.paths.resolve("raw")
    io.require_input(spark, raw_path, "paths.raw")
    clean_path = cfg.paths.resolve("clean")
    quarantine_path = cfg.paths.resolve("quarantine")
    report_path = cfg.paths.resolve("reports").rstrip("/") + "/" + REPORT_FILE
    if cc.output_files_per_day < 1 or cc.session_gap_minutes < 0:
        raise ConfigError("clean.output_files_per_day must be at least 1 and clean.session_gap_minutes "
                          f"at least 0, got {cc.output_files_per_day} and {cc.session_gap_minutes}")
    key = pseudonym_key(cc.pseudonym_key_env, cc.allow_dev_key)
    window = EventWindow.from_config(cc.start_date, cc.end_date, dt.datetime.now(dt.timezone.utc))

    with tracking.stage_run(cfg, "clean"):
        # Persisted before anything else reads it: the CSV parser only flags a malformed line
        # when every column is parsed, and Spark refuses queries on the corrupt column alone.
        parsed = parse_events(io.read_raw(spark, raw_path, cc.input_format), window, cc.max_price)
        parsed = parsed.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            rows_read, rejected, duplicates, dates = count_parsed(parsed)
            if dates:
                events = clean_events(parsed, key, cc.session_gap_minutes)
                io.write_partitioned(layout_by_day(events, len(dates), cc.output_files_per_day), clean_path,
                                     S.EVENT_DATE)
            io.write_table(quarantine_rows(parsed).repartition(1), quarantine_path)
        finally:
            parsed.unpersist()

        # Counted from what is on disk: dynamic overwrite replaced exactly these dates.
        rows_kept = io.read_clean(spark, clean_path).where(F.col(S.EVENT_DATE).isin(dates)).count() if dates else 0
        outcome = Outcome(rows_read=rows_read, rows_kept=rows_kept, duplicates=duplicates, rejected=rejected)
        outcome.check()

        report = build_report(outcome, dates, clean_path, quarantine_path)
        io.write_json(spark, report_path, report)
        tracking.log_json(report, REPORT_FILE)
        metrics = {"clean.rows_read": rows_read, "clean.rows_kept": rows_kept, "clean.duplicates": duplicates}
        metrics.update({f"clean.rejected.{code}": n for code, n in rejected.items()})
        mlflow.log_metrics(metrics)

    log.info("clean: kept %d of %d rows (%d rejected, %d duplicates) over %d dates", rows_kept, rows_read,
             sum(rejected.values()), duplicates, len(dates))
    return {**report, "report_path": report_path}

