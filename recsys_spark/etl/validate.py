"""Parse the raw text contract into typed events, giving every rejected row one reason code.

A row gets the first reason of ``schema.REASON_CODES`` whose rule it breaks; a row with no
reason is a valid event. Parsing never raises on bad data (``try_*`` functions), so the
stage also runs under Spark's ANSI mode.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from recsys_spark import schema as S
from recsys_spark.errors import ConfigError

# The REES46 form, e.g. "2019-10-01 00:00:04 UTC", and ISO 8601 with an optional fraction and offset.
_UTC_FORM = r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) UTC$"
_ISO_PATTERN = "yyyy-MM-dd'T'HH:mm:ss[.SSS]XXX"
_HAS_OFFSET = r"(Z|[+-]\d{2}:\d{2})$"
_INTEGER = r"^[+-]?[0-9]+$"
_MICROS_PER_DAY = 86_400 * 1_000_000

# The typed columns of a valid event, in contract order, plus its UTC date.
EVENT_COLUMNS = [*S.RAW_COLUMNS, S.EVENT_DATE]


@dataclass(frozen=True)
class EventWindow:
    """The processed window: event dates ``start..end`` (inclusive, UTC; None = open) and
    event times no later than ``not_after`` (an aware datetime, normally "now")."""

    start: dt.date | None
    end: dt.date | None
    not_after: dt.datetime

    @classmethod
    def from_config(cls, start_date: str, end_date: str, now: dt.datetime) -> "EventWindow":
        """Build the window from ``clean.start_date`` / ``clean.end_date`` (ISO dates, "" = open).

        Raises:
            ConfigError: a date that is not ``YYYY-MM-DD``, start after end, or a naive ``now``.
        """
        if now.tzinfo is None:
            raise ConfigError("the processed window needs an aware 'now' (UTC), got a naive datetime")
        start = _iso_date("clean.start_date", start_date)
        end = _iso_date("clean.end_date", end_date)
        if start and end and start > end:
            raise ConfigError(f"clean.start_date {start} is after clean.end_date {end}")
        return cls(start, end, now)


def _iso_date(key: str, value: str) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{key}: {value!r} is not an ISO date (YYYY-MM-DD)") from None


def _text(column: str) -> Column:
    """Trimmed text; empty (CSV reads a quoted "" as empty, not null) becomes null."""
    trimmed = F.trim(F.col(column))
    return F.when(trimmed != "", trimmed)


def parse_event_time(text: Column) -> Column:
    """``yyyy-MM-dd HH:mm:ss 'UTC'`` or ISO ``yyyy-MM-dd'T'HH:mm:ss[.SSS][XXX]`` to a UTC timestamp.

    An ISO time without an offset is taken as UTC. Both forms are parsed with an explicit
    offset, so the result does not depend on the session time zone. Unparseable: null.
    """
    utc_form = F.regexp_extract(text, _UTC_FORM, 1)
    from_utc_form = F.when(utc_form != "", F.try_to_timestamp(F.concat(utc_form, F.lit("Z")),
                                                              F.lit("yyyy-MM-dd HH:mm:ssXXX")))
    iso = F.when(text.rlike(_HAS_OFFSET), text).otherwise(F.concat(text, F.lit("Z")))
    return F.coalesce(from_utc_form, F.try_to_timestamp(iso, F.lit(_ISO_PATTERN)))


def utc_date(timestamp: Column) -> Column:
    """The UTC calendar date of a timestamp, whatever the session time zone."""
    return F.date_from_unix_date(F.floor(F.unix_micros(timestamp) / _MICROS_PER_DAY).cast("int"))


def _as_long(text: Column) -> Column:
    return F.when(text.rlike(_INTEGER), text.try_cast("bigint"))


def parse_events(raw: DataFrame, window: EventWindow, max_price: float) -> DataFrame:
    """Type the raw text columns and attach a reason code to every row that breaks a rule.

    Args:
        raw: RAW_COLUMNS as strings, ``_corrupt_record`` and ``source_file`` (io.read_raw).
        window: the processed window; rows outside it are ``out_of_window``.
        max_price: prices above it (or negative, NaN, unparseable) are ``bad_price``; null is allowed.

    Returns:
        one row per raw row: EVENT_COLUMNS typed as in CLEAN_SCHEMA (user_id still the raw
        long, user_session trimmed text), ``reason`` (null when valid), ``raw_record`` (the
        original line if malformed, else a JSON object of the original text fields) and
        ``source_file``.
    """
    text = {c: _text(c) for c in S.RAW_COLUMNS}
    event_time = parse_event_time(text[S.EVENT_TIME])
    event_date = utc_date(event_time)
    event_type = F.lower(text[S.EVENT_TYPE])
    product_id = _as_long(text[S.PRODUCT_ID])
    category_id = _as_long(text[S.CATEGORY_ID])
    user_id = _as_long(text[S.USER_ID])
    price = text[S.PRICE].try_cast("double")

    outside = F.lit(False)
    if window.start is not None:
        outside = outside | (event_date < F.lit(window.start))
    if window.end is not None:
        outside = outside | (event_date > F.lit(window.end))
    outside = outside | (event_time > F.lit(window.not_after))

    broken = {
        S.REASON_MALFORMED: F.col(S.CORRUPT_RECORD).isNotNull(),
        S.REASON_BAD_TIME: event_time.isNull(),
        S.REASON_OUT_OF_WINDOW: outside,
        S.REASON_NULL_USER: text[S.USER_ID].isNull(),
        S.REASON_NULL_PRODUCT: text[S.PRODUCT_ID].isNull(),
        S.REASON_BAD_ID: (
            user_id.isNull() | product_id.isNull() | (text[S.CATEGORY_ID].isNotNull() & category_id.isNull())
        ),
        S.REASON_UNKNOWN_EVENT: event_type.isNull() | ~event_type.isin(S.EVENT_TYPES),
        S.REASON_BAD_PRICE: text[S.PRICE].isNotNull()
        & (price.isNull() | F.isnan(price) | (price < 0) | (price > F.lit(max_price))),
    }
    reason = None
    for code in S.REASON_CODES:  # one CASE WHEN in rule order: the first rule broken wins
        condition = F.coalesce(broken[code], F.lit(False))
        reason = F.when(condition, F.lit(code)) if reason is None else reason.when(condition, F.lit(code))

    original = F.to_json(F.struct(*[F.col(c) for c in S.RAW_COLUMNS]), {"ignoreNullFields": "false"})
    return raw.select(
        event_time.alias(S.EVENT_TIME),
        event_type.alias(S.EVENT_TYPE),
        product_id.alias(S.PRODUCT_ID),
        category_id.alias(S.CATEGORY_ID),
        text[S.CATEGORY_CODE].alias(S.CATEGORY_CODE),
        text[S.BRAND].alias(S.BRAND),
        price.alias(S.PRICE),
        user_id.alias(S.USER_ID),
        text[S.USER_SESSION].alias(S.USER_SESSION),
        event_date.alias(S.EVENT_DATE),
        reason.alias(S.REASON),
        F.coalesce(F.col(S.CORRUPT_RECORD), original).alias(S.RAW_RECORD),
        F.col(S.SOURCE_FILE),
    )


def valid_events(parsed: DataFrame) -> DataFrame:
    """The rows of :func:`parse_events` without a reason, as EVENT_COLUMNS."""
    return parsed.where(F.col(S.REASON).isNull()).select(*EVENT_COLUMNS)


def quarantine_rows(parsed: DataFrame) -> DataFrame:
    """The rejected rows of :func:`parse_events`, as QUARANTINE_SCHEMA."""
    return parsed.where(F.col(S.REASON).isNotNull()).select(*[f.name for f in S.QUARANTINE_SCHEMA.fields])
