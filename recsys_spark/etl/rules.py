"""The rules of clean that look at several rows: exact and near-duplicates, sessions, bots.

Every rule works inside one UTC day of one user (see clean.py for the fate of a row). The
frames here are those of :func:`recsys_spark.etl.validate.valid_events`; :func:`clean_events`
chains the rules and pseudonymises the kept rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark import schema
from recsys_spark.config import CleanConfig
from recsys_spark.etl.counts import Counted, observe
from recsys_spark.etl.pseudonym import KEY_IPAD, KEY_OPAD, hmac_sha256_hex, with_key
from recsys_spark.etl.validate import BUCKET, MICROS

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
# on _bucket once (see clean.run and spark.materialised), so no window needs another shuffle. Each
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
class Fates:
    """The counts :func:`clean_events` observes while its frame is written."""

    counted: tuple[Counted, ...]

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
    flagged, counted = observe(
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
    deduplicated, many_items = observe(
        flagged.where(~F.col(_DUP) & ~F.col(_NEAR)).select(
            "*", (item_bot > rules.bot_max_distinct_items_per_session).alias("_item_bot"),
            (F.row_number().over(in_day) == 1).alias(_FIRST)),
        "clean_item_bots",
        F.count(F.when(F.col(_FIRST), 1)).alias("user_days"),
        F.count(F.when(F.col("_item_bot"), 1)).alias("item_bot_rows"),
        F.count(F.when(F.col("_item_bot") & F.col(_FIRST), 1)).alias("item_bot_days"),
    )
    behaviour, fates = observe(
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
