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
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import mlflow
from pyspark.sql import Column, DataFrame, Observation, SparkSession, Window
from pyspark.sql import functions as F

from recsys_spark import io, product_ids, tracking, waits
from recsys_spark import schema
from recsys_spark.config import CleanConfig, Config
from recsys_spark.errors import DataQualityError, relax_hint
from recsys_spark.etl import adapters, feedback, publish
from recsys_spark.etl.pseudonym import (
    hmac_sha256_hex, pseudonym_key, pseudonym_or_empty, redact_csv_line, redact_json_line, with_key,
    KEY_IPAD, KEY_OPAD,
)
from recsys_spark.etl.validate import (
    BUCKET, IN_WINDOW, MICROS, ORIGINAL, PRODUCT_TEXT, EventWindow, Rules, offending_field, parse_events, valid_events,
)
from recsys_spark.spark import materialised, spread_key

log = logging.getLogger(__name__)

REPORT_FILE = "clean_report.json"
# Above this share of the rows read rejected (and at most clean.max_rejected_share), clean warns.
REJECTED_WARN_SHARE = 0.01
# How many distinct offending values the rejection gate shows, and at most how many characters each.
_SAMPLE_VALUES = 3
_SAMPLE_CHARS = 60
_SESSION_HEX_CHARS = 32
_MICROS_PER_SECOND = 1_000_000
_MICROS_PER_MINUTE = 60 * _MICROS_PER_SECOND
# Per-row flags of the clean pipeline (dropped before writing).
_DUP, _NEAR, _DISTINCT, _SOURCE_START, _BOT = "_dup", "_near", "_distinct_items", "_source_start", "_bot"
_FIRST = "_first_of_day"


@dataclass(frozen=True)
class BehaviourRules:
    """The parameters of the rules that look at several rows: CleanConfig's, checked there
    (defaults are its defaults)."""

    near_duplicate_seconds: int = CleanConfig.near_duplicate_seconds
    bot_max_events_per_minute: int = CleanConfig.bot_max_events_per_minute
    bot_max_distinct_items_per_session: int = CleanConfig.bot_max_distinct_items_per_session
    session_gap_minutes: int = CleanConfig.session_gap_minutes
    max_session_minutes: int = CleanConfig.max_session_minutes

    @classmethod
    def from_config(cls, cc: CleanConfig) -> "BehaviourRules":
        return cls(cc.near_duplicate_seconds, cc.bot_max_events_per_minute, cc.bot_max_distinct_items_per_session,
                   cc.session_gap_minutes, cc.max_session_minutes)


# ----------------------------------------------------------------------------- transforms
# All windows partition by (event_date, _bucket, user_id, ...): the input is hash-partitioned
# on _bucket once (see run and materialised), so no window needs another shuffle. Each
# transform sorts its input once, explicitly, on the longest key its windows need, so that
# every window finds its order already there however the optimizer arranges them (Spark
# sorts again for a window placed below one with a longer key), and the last sort starts
# with event_date, so the partitioned write needs no sort of its own.
#
# The first sort (every valid row) leads with _user_key, a 64-bit hash of the user-day: Spark
# compares rows by an 8-byte prefix of the first sort key and falls back to comparing whole
# keys on ties. Led by event_date, whose few values per partition tie nearly always, every
# comparison went the slow way (a sort of synthetic rows was slower led by the date; within the
# noise of whole clean runs). The hash only groups rows; the user-day
# columns stay in the key, so a collision merges nothing.
_USER_DAY = [schema.EVENT_DATE, BUCKET, schema.USER_ID]
_USER_KEY = "_user_key"
_KEYED_USER_DAY = [_USER_KEY, *_USER_DAY]
_DETAIL = [schema.CATEGORY_ID, schema.CATEGORY_CODE, schema.BRAND, schema.PRICE]


def flag_duplicates(events: DataFrame, near_duplicate_seconds: int) -> DataFrame:
    """Flag exact duplicates and near-duplicates; count distinct items per source session.

    Adds ``_user_key`` (the user-day's hash, see above), ``_dup`` (identical to an earlier
    row in every contract field), ``_near`` (not a duplicate, same user, source session, item
    and type, at most ``near_duplicate_seconds`` after the previous such row),
    ``_distinct_items`` (distinct items of the row's source session in the day; events
    without a source session count as one session here) and ``_source_start`` (the first
    event time of that source session in the day, micros).
    One sort and one window pass.
    """
    by_session = [*_KEYED_USER_DAY, schema.USER_SESSION]
    kind = [schema.PRODUCT_ID, schema.EVENT_TYPE]
    # One window group per source session, its rows ordered by item and type, then time: the
    # previous row is the previous event of the same item and type when those two match. (A
    # group per session, item and type split the same rows into more, smaller groups, and
    # each group costs the window operator a buffer and a frame set-up.)
    in_session = Window.partitionBy(*by_session).orderBy(*kind, MICROS, *_DETAIL)
    whole_session = in_session.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    identity = F.struct(*kind, MICROS, *_DETAIL)
    previous = F.col("_previous")
    same_kind = F.coalesce(previous[schema.PRODUCT_ID].eqNullSafe(F.col(schema.PRODUCT_ID))
                           & previous[schema.EVENT_TYPE].eqNullSafe(F.col(schema.EVENT_TYPE)), F.lit(False))
    is_dup = identity.eqNullSafe(previous)
    is_near = ~is_dup & same_kind & (F.col(MICROS) - previous[MICROS] <= near_duplicate_seconds * _MICROS_PER_SECOND)
    keyed = events.withColumn(_USER_KEY, F.xxhash64(schema.EVENT_DATE, schema.USER_ID))
    ordered = keyed.sortWithinPartitions(*by_session, *kind, MICROS, *_DETAIL)
    windowed = ordered.select(
        "*",
        F.lag(identity).over(in_session).alias("_previous"),
        F.size(F.collect_set(schema.PRODUCT_ID).over(whole_session)).alias(_DISTINCT),
        F.min(MICROS).over(whole_session).alias(_SOURCE_START),
    )
    return windowed.select("*", is_dup.alias(_DUP), F.coalesce(is_near, F.lit(False)).alias(_NEAR)).drop("_previous")


def sessionise_and_flag_bots(events: DataFrame, rules: BehaviourRules) -> DataFrame:
    """Sessions by inactivity for events without a source session, overlong sessions split,
    and the bot flag of each user-day.

    Args:
        events: de-duplicated output of :func:`flag_duplicates`.

    Returns:
        ``events`` with ``_session_start`` (micros: the start of the row's session before
        splitting), ``_piece`` (0 for the first ``max_session_minutes`` of a session, 1 for the
        next, ...) and ``_bot`` (the user-day has more than ``bot_max_events_per_minute`` events
        in some 60 seconds or more than ``bot_max_distinct_items_per_session`` items in a session)
        and ``_first_of_day`` (the user-day's first row in time order). One sort and two window
        passes.
    """
    order = [MICROS, schema.PRODUCT_ID, schema.EVENT_TYPE, schema.USER_SESSION, *_DETAIL]
    in_time = Window.partitionBy(*_USER_DAY).orderBy(*order)
    before = in_time.rowsBetween(Window.unboundedPreceding, -1)
    so_far = in_time.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    # The whole user-day, on in_time's order: computed in the same pass as so_far's window.
    user_day = in_time.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)

    missing = F.col(schema.USER_SESSION).isNull()
    previous_missing = F.last(F.when(missing, F.col(MICROS)), ignorenulls=True).over(before)
    starts = missing & F.coalesce(F.col(MICROS) - previous_missing > rules.session_gap_minutes * _MICROS_PER_MINUTE,
                                  F.lit(True))
    # More than N events in some 60 s (N = bot_max_events_per_minute) if and only if some event
    # has its N-th predecessor in time order less than 60 s before it: a lag in the same pass
    # as previous_missing, where a count over a 60 s range frame needed a window pass of its own.
    limit = rules.bot_max_events_per_minute
    too_fast = F.coalesce(F.lag(MICROS, limit).over(in_time) > F.col(MICROS) - _MICROS_PER_MINUTE, F.lit(False))
    ordered = events.sortWithinPartitions(*_USER_DAY, *order)
    rated = ordered.select("*", starts.alias("_starts"), too_fast.alias("_too_fast"))
    generated_start = F.last(F.when(F.col("_starts"), F.col(MICROS)), ignorenulls=True).over(so_far)
    bot = F.max("_too_fast").over(user_day) | (
        F.max(_DISTINCT).over(user_day) > rules.bot_max_distinct_items_per_session
    )
    sessions = rated.select(
        "*", F.when(missing, generated_start).otherwise(F.col(_SOURCE_START)).alias("_session_start"), bot.alias(_BOT),
        (F.row_number().over(in_time) == 1).alias(_FIRST))
    piece = F.floor((F.col(MICROS) - F.col("_session_start")) / (rules.max_session_minutes * _MICROS_PER_MINUTE))
    return sessions.select("*", piece.cast("int").alias("_piece")).drop("_too_fast", "_starts")


def session_ids(events: DataFrame) -> Column:
    """``session_id``: the source session, or the first 32 hex characters of SHA-256 of
    (pseudonymous user, session start in microseconds), plus ``~<piece>`` after a split.
    Needs the pseudonymised user_id."""
    generated = F.substring(
        F.sha2(F.concat_ws("|", F.col(schema.USER_ID), F.col("_session_start").cast("string")), 256), 1, _SESSION_HEX_CHARS)
    base = F.coalesce(F.col(schema.USER_SESSION), generated)
    return F.when(F.col("_piece") > 0, F.concat(base, F.lit("~"), F.col("_piece").cast("string"))).otherwise(base)


@dataclass(frozen=True)
class _Counted:
    """One observed frame of :func:`clean_events`: its observation and, to count the same rows
    directly when Spark does not report it, the frame and the aggregates."""

    observation: Observation
    frame: DataFrame
    aggregates: tuple[Column, ...]

    def counts(self, timeout_s: float) -> dict[str, int]:
        values = waits.observed(self.observation, timeout_s)
        if values is None:
            values = self.frame.agg(*self.aggregates).first().asDict()
        return {k: int(v or 0) for k, v in values.items()}


@dataclass(frozen=True)
class Fates:
    """The counts :func:`clean_events` observes while its frame is written."""

    counted: tuple[_Counted, ...]

    def counts(self, timeout_s: float) -> dict[str, int]:
        """``valid``, ``duplicates``, ``near_duplicates``, ``user_days`` (of the de-duplicated rows),
        ``item_bot_rows`` and ``item_bot_days`` (user-days with a session of too many items),
        ``rate_bot_rows`` and ``rate_bot_days`` (user-days over the events-per-minute rule),
        ``bot_rows`` (both) and ``kept``. Call it
        after an action has computed the frame; an observation Spark does not report within
        ``timeout_s`` is counted again from its frame (SPARK-54620, see waits.py).
        """
        counts = {k: v for c in self.counted for k, v in c.counts(timeout_s).items()}
        counts["bot_rows"] = counts["item_bot_rows"] + counts["rate_bot_rows"]
        return counts


def _observe(frame: DataFrame, name: str, *aggregates: Column) -> tuple[DataFrame, _Counted]:
    observation = Observation(name)
    return frame.observe(observation, *aggregates), _Counted(observation, frame, aggregates)


def clean_events(valid: DataFrame, key: bytes, rules: BehaviourRules) -> tuple[DataFrame, Fates]:
    """Valid rows of :func:`parse_events` to clean events.

    Args:
        valid: :func:`valid_events` output, best hash-partitioned on _bucket (or with it).
        key: the pseudonymisation key.
        rules: the duplicate, bot and session rules.

    Returns:
        (CLEAN_SCHEMA columns with user_id the keyed pseudonym, sorted by event_date within
        each partition; the :class:`Fates` whose counts are read once the frame has been
        computed by an action).
    """
    # event_time is _micros as a timestamp: the sorts and windows carry only _micros, and
    # event_time is made again from it for the output.
    flagged, counted = _observe(
        flag_duplicates(valid.drop(schema.EVENT_TIME), rules.near_duplicate_seconds), "clean_duplicates",
        F.count(F.lit(1)).alias("valid"),
        F.count(F.when(F.col(_DUP), 1)).alias("duplicates"),
        F.count(F.when(F.col(_NEAR), 1)).alias("near_duplicates"),
    )
    # User-days with a session of too many items are bots whatever their timing: they leave
    # before the sort in time order, on flag_duplicates' order (keyed user-day first, so no sort).
    # Every session keeps its first row through de-duplication, so the maximum is the same.
    # One window on flag_duplicates' order (keyed user-day first, so no sort): the item rule's
    # maximum, and each user-day's first row, which counts the user-day once.
    in_day = Window.partitionBy(*_KEYED_USER_DAY).orderBy(schema.USER_SESSION, schema.PRODUCT_ID, schema.EVENT_TYPE, MICROS, *_DETAIL)
    item_bot = F.max(_DISTINCT).over(in_day.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing))
    deduplicated, many_items = _observe(
        flagged.where(~F.col(_DUP) & ~F.col(_NEAR)).select(
            "*", (item_bot > rules.bot_max_distinct_items_per_session).alias("_item_bot"),
            (F.row_number().over(in_day) == 1).alias(_FIRST)),
        "clean_item_bots",
        F.count(F.when(F.col(_FIRST), 1)).alias("user_days"),
        F.count(F.when(F.col("_item_bot"), 1)).alias("item_bot_rows"),
        F.count(F.when(F.col("_item_bot") & F.col(_FIRST), 1)).alias("item_bot_days"),
    )
    behaviour, fates = _observe(
        sessionise_and_flag_bots(deduplicated.where(~F.col("_item_bot")).drop("_item_bot", _USER_KEY, _FIRST), rules),
        "clean_bots",
        F.count(F.when(F.col(_BOT), 1)).alias("rate_bot_rows"),
        F.count(F.when(F.col(_BOT) & F.col(_FIRST), 1)).alias("rate_bot_days"),
        F.count(F.when(~F.col(_BOT), 1)).alias("kept"),
    )
    keyed = with_key(behaviour.where(~F.col(_BOT)), key)
    pseudonymous = keyed.withColumn(schema.USER_ID, hmac_sha256_hex(F.col(schema.USER_ID)))
    out = pseudonymous.select(
        "*", session_ids(pseudonymous).alias(schema.SESSION_ID), F.timestamp_micros(MICROS).alias(schema.EVENT_TIME)
    ).drop(KEY_IPAD, KEY_OPAD)
    return schema.conform(out, schema.CLEAN_SCHEMA), Fates((counted, many_items, fates))


def product_id_pairs(parsed: DataFrame) -> DataFrame:
    """Under string product ids: the distinct (key, original id, event date) of the valid rows of
    :func:`parse_events`, as schema.PRODUCT_IDS_SCHEMA (the rows later dropped as duplicates or
    bots included: a key's original id is a function of the key, so extra pairs are harmless)."""
    valid = parsed.where(F.col(schema.REASON).isNull() & F.col(IN_WINDOW))
    pairs = valid.select(schema.PRODUCT_ID, F.col(PRODUCT_TEXT).alias(schema.ORIGINAL_ID), schema.EVENT_DATE).distinct()
    return schema.conform(pairs, schema.PRODUCT_IDS_SCHEMA)


def quarantine_rows(rejected: DataFrame, key: bytes, layout: str, fmt: str) -> DataFrame:
    """Rejected rows of :func:`parse_events` as QUARANTINE_SCHEMA plus ``load_date``.

    ``raw_record`` is the original line of a malformed row, else a JSON object of the row's
    text fields (in the contract layout, untrimmed). In both, the user id is replaced by its
    pseudonym: the JSON's user_id field, or the field at the user id's position of a
    malformed CSV line (whole or cut short), or the ``user_id`` value of a malformed JSON line.
    """
    keyed = with_key(rejected, key)
    original = F.col(ORIGINAL)
    fields = [pseudonym_or_empty(original[c]).alias(c) if c == schema.USER_ID else original[c].alias(c)
              for c in schema.RAW_COLUMNS]
    as_json = F.to_json(F.struct(*fields), {"ignoreNullFields": "false"})
    line = F.col(schema.CORRUPT_RECORD)
    as_csv = redact_csv_line(line, adapters.USER_FIELD[layout])
    if layout == "rees46" and fmt == "json":
        redacted = F.when(F.ltrim(line).startswith("{"), redact_json_line(line)).otherwise(as_csv)
    else:
        redacted = as_csv
    record = F.when(line.isNotNull(), redacted).otherwise(as_json)
    return keyed.select(
        F.col(schema.REASON), record.alias(schema.RAW_RECORD), F.col(schema.SOURCE_FILE), F.col(schema.LOAD_DATE)
    )


# ----------------------------------------------------------------------------- reconciliation


@dataclass(frozen=True)
class Outcome:
    """What happened to the rows read: the terms of the reconciliation."""

    rows_read: int
    rows_kept: int
    duplicates: int
    near_duplicates: int = 0
    bot_rows: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    # Rows of undated files dated outside the processed window: other runs' rows, not read here.
    outside_window: int = 0

    def check(self) -> None:
        """Raise DataQualityError unless read = kept + rejected + duplicates + near-duplicates + bots."""
        rejected = sum(self.rejected.values())
        accounted = self.rows_kept + rejected + self.duplicates + self.near_duplicates + self.bot_rows
        if self.rows_read != accounted:
            raise DataQualityError(
                f"clean does not reconcile: read {self.rows_read} != kept {self.rows_kept} + rejected {rejected} "
                f"{self.rejected} + duplicates {self.duplicates} + near-duplicates {self.near_duplicates} "
                f"+ bot rows {self.bot_rows} (off by {self.rows_read - accounted})"
            )


# ----------------------------------------------------------------------------- the stage


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
    raw_path = cfg.paths.resolve("raw")
    clean_path = cfg.paths.resolve("clean")
    quarantine_path = cfg.paths.resolve("quarantine")
    report_path = cfg.paths.resolve("reports").rstrip("/") + "/" + REPORT_FILE
    rules = Rules.from_config(cc)
    behaviour = BehaviourRules.from_config(cc)
    key = pseudonym_key(cc.pseudonym_key_env, cc.allow_dev_key)
    window = EventWindow.from_config(cc.start_date, cc.end_date, dt.datetime.now(dt.timezone.utc))
    files = adapters.in_window(adapters.list_input_files(spark, raw_path), window.start, window.end)
    raw = adapters.read_files(spark, files, cc.input_layout, cc.input_format, cc.id_types)
    run_id = uuid.uuid4().hex
    staged_clean = publish.staging_path(clean_path, run_id)
    staged_quarantine = publish.staging_path(quarantine_path, run_id)
    partitions = int(spark.conf.get("spark.sql.shuffle.partitions"))
    string_products = product_ids.is_string(cc.id_types[schema.PRODUCT_ID])
    ids_path = cfg.paths.resolve("product_ids")
    staged_ids = publish.staging_path(ids_path, run_id)
    tables = (clean_path, quarantine_path, *([ids_path] if string_products else []))

    with tracking.stage_run(cfg, "clean"):
        for table in tables:
            publish.clear_leftovers(spark, table)
        log.info("clean: %d file(s) of %s (%s layout) for dates %s..%s", len(files), raw_path, cc.input_layout,
                 window.start or "first", window.end or "last")
        # One parse and one shuffle: the quarantine and the clean events are both written
        # from this materialised frame, hash-partitioned on the (day, bucket) spread below.
        log.info("clean: parsing and validating")
        # event_time is _micros as a timestamp (clean_events makes it again): not shuffled.
        # Each (day, bucket) goes to a partition of its own, round robin, rather than where its
        # hash falls: the window stage waits for its largest partition (10M lines, 8 partitions:
        # 0.34M to 2.05M rows each by hash). _bucket becomes that spread value: still one
        # value per (day, user bucket), so it still names one output file per task and day.
        day_bucket = F.unix_date(F.col(schema.EVENT_DATE)) * rules.files_per_day + F.col(BUCKET)
        parsed = (parse_events(raw, window, rules).drop(schema.EVENT_TIME)
                  .withColumn(BUCKET, spread_key(day_bucket, partitions)).repartition(partitions, BUCKET))
        # The quarantine's write runs on a thread beside the clean events' write: its small jobs
        # fill the cores that the window stage leaves idle in its last tasks and between jobs.
        # The pool is left (its write waited for) before the parsed rows are released.
        with materialised(parsed) as parsed, ThreadPoolExecutor(1, thread_name_prefix="quarantine") as pool:
            in_window = F.col(IN_WINDOW)
            observed, read = _observe(
                parsed, "clean_read",
                F.count(F.when(in_window, 1)).alias("rows_read"),
                F.count(F.when(~in_window, 1)).alias("outside_window"),
                F.count(F.when(in_window & F.col(schema.LOAD_DATE).isNull(), 1)).alias("undated"),
            )
            # The counts by reason over the rejected rows only: a few in a hundred, where nine
            # conditional counts over every row read took seconds at 10M lines. On a log without
            # a single bad row this side is empty (see waits.observed).
            rejected, rejections = _observe(
                observed.where(in_window & F.col(schema.REASON).isNotNull()), "clean_rejected",
                *[F.count(F.when(F.col(schema.REASON) == code, 1)).alias(code) for code in schema.REASON_CODES],
            )
            quarantine = quarantine_rows(rejected, key, cc.input_layout, cc.input_format)
            log.info("clean: writing the quarantine; de-duplicating, sessionising and writing the clean events")
            quarantined = pool.submit(
                io.write_partitioned, quarantine.repartition(schema.LOAD_DATE), staged_quarantine, schema.LOAD_DATE)
            events, fates = clean_events(valid_events(parsed), key, behaviour)
            io.write_partitioned(events, staged_clean, schema.EVENT_DATE)
            if string_products:
                io.write_partitioned(product_id_pairs(parsed), staged_ids, schema.EVENT_DATE)
            waits.result(quarantined, cfg.spark.stage_timeout_minutes * 60, "the quarantine's write",
                         "spark.stage_timeout_minutes")
            # Read while the parsed rows exist: a count Spark did not report is taken from them.
            timeout_s = cfg.spark.observation_timeout_s
            counts = {**read.counts(timeout_s), **rejections.counts(timeout_s)}
            fate = fates.counts(timeout_s)
            rejected_by = {code: counts[code] for code in schema.REASON_CODES}
            top = top_reason(rejected_by)
            shown = (offending_sample(parsed.where(in_window & (F.col(schema.REASON) == top)), top, key, rules,
                                      cc.input_layout, cc.input_format)
                     if sum(rejected_by.values()) > min(REJECTED_WARN_SHARE, cc.max_rejected_share) * counts["rows_read"]
                     else [])

        outcome = Outcome(
            rows_read=counts["rows_read"],
            rows_kept=fate["kept"],
            duplicates=fate["duplicates"],
            near_duplicates=fate["near_duplicates"],
            bot_rows=fate["bot_rows"],
            rejected={code: counts[code] for code in schema.REASON_CODES},
            outside_window=counts["outside_window"],
        )
        outcome.check()
        bots = bot_report(fate, behaviour)
        rejections = rejection_report(outcome, shown)
        aside = publish.stopped_path(quarantine_path, run_id)
        try:
            check_rejected_share(rejections, cc, aside)
            check_bot_share(bots, cc)
            check_kept(outcome)
            if string_products:
                live = [product_ids.read_table(spark, ids_path)] if io.holds_data(spark, ids_path) else []
                staged = [spark.read.schema(schema.PRODUCT_IDS_SCHEMA).parquet(staged_ids)]
                product_ids.check_collisions(functools.reduce(DataFrame.unionByName, [
                    t.select(schema.PRODUCT_ID, schema.ORIGINAL_ID) for t in live + staged]))
        except DataQualityError:
            # Nothing is published: the live tables stay as they were, consistent with each other.
            # This run's rejected rows are kept apart, where the message says (see publish.set_aside).
            publish.set_aside(spark, staged_quarantine, quarantine_path, run_id)
            for table in (clean_path, *([ids_path] if string_products else [])):
                publish.clear_leftovers(spark, table)
            raise
        written = spark.read.schema(schema.CLEAN_SCHEMA).parquet(staged_clean).count() if io.exists(spark, staged_clean) else 0
        if written != outcome.rows_kept:
            raise DataQualityError(f"clean wrote {written} rows to {staged_clean} but kept {outcome.rows_kept}")

        # A closed window replaces each of its dates (a date without rows now loses its old
        # partition); an open one the dates found in the input.
        closed = window.dates()
        dates = [d.isoformat() for d in closed] if closed is not None else sorted(
            set(publish.staged_values(spark, staged_clean, schema.EVENT_DATE))
            | set(publish.staged_values(spark, staged_quarantine, schema.LOAD_DATE)))
        publish.swap_partitions(spark, staged_clean, clean_path, schema.EVENT_DATE, list(dates), run_id)
        if string_products:
            publish.swap_partitions(spark, staged_ids, ids_path, schema.EVENT_DATE, list(dates), run_id)
        undated = [None] if int(counts["undated"]) or any(f.load_date is None for f in files) else []
        publish.swap_partitions(spark, staged_quarantine, quarantine_path, schema.LOAD_DATE, [*dates, *undated], run_id)
        # The shop's feedback on served recommendations, if any (etl/feedback.py): published on its own.
        fed_back = feedback.clean_feedback(spark, cfg)

        report = build_report(outcome, dates, clean_path, quarantine_path, bots, fed_back, rejections)
        io.write_json(spark, report_path, report)
        tracking.log_json(report, REPORT_FILE)
        metrics = {f"clean.{k}": v for k, v in report.items() if isinstance(v, int)}
        metrics.update({f"clean.rejected.{code}": n for code, n in outcome.rejected.items()})
        metrics.update({f"clean.bots.{rule}.{k}": v for rule, figures in bots["rules"].items()
                        for k, v in figures.items()})
        metrics["clean.bots.row_share"] = bots["row_share"]
        metrics["clean.rejected_share"] = rejections["share"]
        metrics.update(feedback.feedback_metrics(fed_back))
        mlflow.log_metrics(metrics)
        if report.get("warning"):
            mlflow.set_tag("clean.warning", report["warning"][:5000])
            log.warning("clean: %s", report["warning"])

    log.info("clean: kept %d of %d rows (%d rejected, %d duplicates, %d near-duplicates, %d bot rows) over %d "
             "date(s)", outcome.rows_kept, outcome.rows_read, sum(outcome.rejected.values()), outcome.duplicates,
             outcome.near_duplicates, outcome.bot_rows, len(dates))
    return {**report, "report_path": report_path}


def build_report(outcome: Outcome, dates: list[str], clean_path: str, quarantine_path: str,
                 bots: dict[str, Any], fed_back: dict[str, Any] | None = None,
                 rejections: dict[str, Any] | None = None) -> dict[str, Any]:
    """The contents of clean_report.json (and the stage's summary: a warning is printed with it);
    ``feedback``: :func:`feedback.clean_feedback`'s counts, when given; ``rejections``:
    :func:`rejection_report`'s, when given. ``warning``: the rejections' and the bots' warnings."""
    report = {
        "rows_read": outcome.rows_read,
        "rows_kept": outcome.rows_kept,
        "rejected": dict(outcome.rejected),
        "duplicates": outcome.duplicates,
        "near_duplicates": outcome.near_duplicates,
        "bot_rows": outcome.bot_rows,
        "outside_window": outcome.outside_window,
        "bots": bots,
        "dates": list(dates),
        "clean_path": clean_path,
        "quarantine_path": quarantine_path,
    }
    if fed_back is not None:
        report["feedback"] = fed_back
    if rejections is not None:
        report["rejections"] = rejections
    warnings = [w for w in ((rejections or {}).get("warning"), bots["warning"]) if w]
    if warnings:
        report["warning"] = " | ".join(warnings)
    return report


# ----------------------------------------------------------------------------- the rejection gate


def top_reason(rejected: dict[str, int]) -> str:
    """The reason that rejected the most rows (the first in schema.REASON_CODES on a tie)."""
    return max(schema.REASON_CODES, key=lambda code: (rejected.get(code, 0), -schema.REASON_CODES.index(code)))


def offending_sample(rows: DataFrame, reason: str, key: bytes, rules: Rules, layout: str, fmt: str,
                     limit: int = _SAMPLE_VALUES) -> list[list[str]]:
    """A few distinct values that got rows rejected for ``reason``, safe to show.

    Args:
        rows: rejected rows of :func:`parse_events`, all of ``reason``.
        key: the pseudonymisation key: a user id is shown as its pseudonym, never raw.

    Returns:
        up to ``limit`` [field, value] pairs, sorted (value cut to 60 characters); the field of a
        malformed line is "line" and its value the line as quarantined (user id pseudonymised).
    """
    if reason == schema.REASON_MALFORMED:
        shown = quarantine_rows(rows, key, layout, fmt).select(
            F.lit("line").alias("field"), F.col(schema.RAW_RECORD).alias("value"))
    else:
        keyed = with_key(rows.select(ORIGINAL), key)
        field_ = offending_field(reason, rules)
        named = keyed.select(field_.alias("field"), F.col(ORIGINAL).alias("o"), KEY_IPAD, KEY_OPAD)
        value = F.coalesce(*[F.when(F.col("field") == c, F.col("o")[c]) for c in schema.RAW_COLUMNS])
        hidden = F.when(F.col("field") == schema.USER_ID, pseudonym_or_empty(value)).otherwise(value)
        shown = named.select("field", F.coalesce(hidden, F.lit("")).alias("value"))
    cut = F.substring(F.col("value"), 1, _SAMPLE_CHARS)
    return [[r["field"], r["value"]] for r in shown.select("field", cut.alias("value")).distinct()
            .orderBy("field", "value").limit(limit).collect()]


def rejection_report(outcome: Outcome, sample: list[list[str]]) -> dict[str, Any]:
    """What the validation rules rejected, for the gate and the report.

    Returns:
        ``rows`` and ``share`` (of the rows read) rejected, the ``top_reason`` and its ``top_rows``,
        ``sample`` (:func:`offending_sample` of the top reason; empty at or below 1%) and
        ``warning`` (filled in by :func:`check_rejected_share`, empty here).
    """
    rejected = sum(outcome.rejected.values())
    top = top_reason(outcome.rejected)
    return {"rows": rejected, "share": round(rejected / outcome.rows_read, 6) if outcome.rows_read else 0.0,
            "top_reason": top, "top_rows": outcome.rejected.get(top, 0), "sample": sample, "warning": ""}


def check_rejected_share(rejections: dict[str, Any], cc: CleanConfig, aside: str) -> None:
    """Above ``clean.max_rejected_share`` of the rows read rejected: a DataQualityError (one line:
    the share, the top reason with its count, a sample of its values, the key to raise). Above
    REJECTED_WARN_SHARE (1%): a warning in ``rejections`` (the report, the run summary, MLflow).

    Args:
        aside: where the stopped run's rejected rows are kept (publish.set_aside), for the message.
    """
    share = rejections["share"]
    if share <= min(REJECTED_WARN_SHARE, cc.max_rejected_share) or rejections["rows"] == 0:
        return
    values = ", ".join(f"{field} {value!r}" for field, value in rejections["sample"])
    pseudonymised = " (user ids pseudonymised)" if any(f == schema.USER_ID for f, _ in rejections["sample"]) else ""
    found = (f"{share:.1%} of the rows read were rejected ({rejections['rows']:,}); top reason "
             f"{rejections['top_reason']}: {rejections['top_rows']:,} rows" + (f", e.g. {values}{pseudonymised}" if values else ""))
    ids = sorted({f for f, _ in rejections["sample"] if f in cc.id_types and cc.id_types[f] == schema.ID_INTEGER})
    if rejections["top_reason"] == schema.REASON_BAD_ID and ids:
        found += ("; if the ids are not whole numbers (UUIDs, SKUs, zero-padded codes), set "
                  + " ".join(f"clean.id_types.{f}={schema.ID_STRING}" for f in ids))
    if share <= cc.max_rejected_share:
        rejections["warning"] = (f"{found}; more than {REJECTED_WARN_SHARE:.0%}, at most "
                                 f"clean.max_rejected_share={cc.max_rejected_share:g}: see the quarantine")
        return
    accept = min(1.0, math.ceil(share * 1000) / 1000 + (0.001 if math.ceil(share * 1000) / 1000 < share else 0.0))
    raise DataQualityError(
        f"clean: {found}; more than clean.max_rejected_share={cc.max_rejected_share:g}, so nothing was "
        f"published (this run's rejected rows are in {aside}) {relax_hint('clean.max_rejected_share', accept)}")


def check_kept(outcome: Outcome) -> None:
    """No clean run succeeds having kept no rows: DataQualityError naming where the rows went."""
    if outcome.rows_kept > 0:
        return
    rejected = sum(outcome.rejected.values())
    raise DataQualityError(
        f"clean: kept none of the {outcome.rows_read:,} rows read ({rejected:,} rejected, {outcome.duplicates:,} "
        f"duplicates, {outcome.near_duplicates:,} near-duplicates, {outcome.bot_rows:,} bot rows): nothing to "
        f"publish; check paths.raw, clean.start_date / clean.end_date and the bot rules (clean.bot_*)")


# ----------------------------------------------------------------------------- the bot rules' report

# rule -> (prefix of its counts in Fates.counts, its limit: a field of BehaviourRules and CleanConfig)
BOT_RULES = {
    "items_per_session": ("item_bot", "bot_max_distinct_items_per_session"),
    "events_per_minute": ("rate_bot", "bot_max_events_per_minute"),
}


def bot_report(fate: dict[str, int], rules: BehaviourRules) -> dict[str, Any]:
    """What each bot rule flagged, so that a user sees at once whether the rules fit the data.

    Args:
        fate: :meth:`Fates.counts`.

    Returns:
        ``rules``: per rule, the user-days and rows it flagged and their shares of the user-days
        and of the de-duplicated rows that met the rules (the items rule is applied first: a
        user-day that breaks both counts under it); ``row_share`` of both; ``warning`` (filled in
        by :func:`check_bot_share`, empty here).
    """
    rows = fate["valid"] - fate["duplicates"] - fate["near_duplicates"]
    days = fate["user_days"]
    out: dict[str, Any] = {"rows": rows, "user_days": days, "rules": {}}
    for rule, (prefix, limit) in BOT_RULES.items():
        flagged_rows, flagged_days = fate[f"{prefix}_rows"], fate[f"{prefix}_days"]
        out["rules"][rule] = {
            "limit": getattr(rules, limit),
            "user_days": flagged_days,
            "rows": flagged_rows,
            "user_day_share": round(flagged_days / days, 6) if days else 0.0,
            "row_share": round(flagged_rows / rows, 6) if rows else 0.0,
        }
    out["row_share"] = round(fate["bot_rows"] / rows, 6) if rows else 0.0
    out["warning"] = ""
    return out


def check_bot_share(bots: dict[str, Any], cc: CleanConfig) -> None:
    """Above ``clean.bot_max_row_share`` of the rows flagged as bots: a warning in ``bots`` (the
    report, the run summary, MLflow), or, with ``clean.bot_share_action=stop``, a
    DataQualityError before anything is published.
    """
    if bots["row_share"] <= cc.bot_max_row_share:
        return
    detail = ", ".join(f"{rule} over clean.{BOT_RULES[rule][1]}={f['limit']}: {f['row_share']:.1%} of rows in "
                       f"{f['user_days']} user-day(s)" for rule, f in bots["rules"].items() if f["rows"])
    message = (f"the bot rules flagged {bots['row_share']:.1%} of the rows ({detail}), more than "
               f"clean.bot_max_row_share={cc.bot_max_row_share:g}: they may not fit this data (a ratings-like or "
               f"bulk log); raise the rule's limit, or {relax_hint('clean.bot_max_row_share', 1.0)}")
    if cc.bot_share_action == "stop":
        raise DataQualityError(f"clean: {message}")
    bots["warning"] = message
